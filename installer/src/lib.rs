//! The bpi-os installer library. [`install`] is `bpi-os install` (checked,
//! prepared, applied); [`source`], [`target`] and [`disk`] are its parts;
//! [`store`] makes and opens the encrypted store. The /bpi layout and the unit set it lays out are
//! `bpi_formats::{layout, units}`, shared with the image build.

pub mod disk;
pub mod install;
pub mod source;
pub mod store;
pub mod target;
