//! What the image build writes and the installer (and updates) read or lay
//! out again: the GPT ([`gpt`]), the image manifest ([`manifest`]), the one
//! definition of the /bpi namespace ([`layout`]) and the one set of unit
//! files ([`units`]), the A/B slots ([`slots`]) and update bundles'
//! metadata ([`update`]), the BIOS path's GRUB files ([`grub`]) and what
//! they take out of a UKI ([`uki`]).

pub mod gpt;
pub mod grub;
pub mod layout;
pub mod manifest;
pub mod slots;
pub mod uki;
pub mod units;
pub mod update;
