//! What the image build writes and the installer (and updates) read or lay
//! out again: the GPT ([`gpt`]), the image manifest ([`manifest`]), the one
//! definition of the /bpi namespace ([`layout`]) and the one set of unit
//! files ([`units`]), the A/B slots ([`slots`]) and update bundles'
//! metadata ([`update`]).

pub mod gpt;
pub mod layout;
pub mod manifest;
pub mod slots;
pub mod units;
pub mod update;
