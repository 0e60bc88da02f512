//! Shared plumbing for every bpi-os crate: running external programs ([`cmd`]),
//! reporting progress ([`progress`]) and hashing files ([`digest`]).
//! Keeping these in one place gives one log format and one error style.

pub mod cmd;
pub mod digest;
pub mod host;
pub mod notify;
pub mod progress;

pub use cmd::{Cmd, CmdError};
pub use progress::Steps;
