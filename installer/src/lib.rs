//! The bpi-os installer library. [`source`], [`target`] and [`disk`] plan and
//! carry out `bpi-os install --disk`; [`store`] makes and opens the encrypted
//! store. The /bpi layout and the unit set it lays out are
//! `bpi_formats::{layout, units}`, shared with the image build.

pub mod disk;
pub mod source;
pub mod store;
pub mod target;
