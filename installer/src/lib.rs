//! The bpi-os installer library. [`layout`] is the one definition of the /bpi
//! namespace and [`units`] the one set of unit files: the image build and
//! `bpi-os install --root` both apply them. [`source`], [`target`] and
//! [`disk`] plan and carry out `bpi-os install --disk`.

pub mod disk;
pub mod layout;
pub mod source;
pub mod store;
pub mod target;
pub mod units;
