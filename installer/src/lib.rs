//! The bpi-os installer library. [`layout`] is the one definition of the /bpi
//! namespace: the image build and `bpi-os install --root` both apply it.

pub mod layout;
