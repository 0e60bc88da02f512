//! Shared plumbing for every bpi-os crate: running external programs ([`cmd`]),
//! reporting progress ([`progress`]), hashing files ([`digest`]) and tests that
//! need what a machine may lack ([`skip`]); for the D-Bus services, the caller
//! check and serve loop ([`dbus`]) and where changes are recorded ([`record`]).
//! Keeping these in one place gives one log format and one error style.

pub mod cmd;
pub mod config;
pub mod dbus;
pub mod digest;
pub mod exit;
pub mod fsmode;
pub mod host;
pub mod notify;
pub mod progress;
pub mod record;
pub mod skip;

pub use cmd::{Cmd, CmdError};
pub use progress::Steps;
