//! The exit codes every bpi-os command uses (docs/cli.md), in one place.
//! A command fails with [`Failure`] in its error chain to exit with a code
//! of its own; any other error exits 1, and clap's usage errors exit 2.

/// Success.
pub const OK: i32 = 0;
/// An error: bad input, a missing file, a failed operation.
pub const ERROR: i32 = 1;
/// The command line is wrong (clap's own code).
pub const USAGE: i32 = 2;
/// The command ran and its answer is "no": a check failed, a ledger is
/// tampered with, there is no path.
pub const CHECK_FAILED: i32 = 3;
/// Nothing can go on without a person: a confirmation, a key, a passphrase.
pub const NEEDS_PERSON: i32 = 4;

/// A failure whose exit code is not 1.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    CheckFailed(String),
    #[error("{0}")]
    NeedsPerson(String),
}

impl Failure {
    pub fn code(&self) -> i32 {
        match self {
            Failure::CheckFailed(_) => CHECK_FAILED,
            Failure::NeedsPerson(_) => NEEDS_PERSON,
        }
    }
}

/// The exit code for an error: a [`Failure`]'s anywhere in its chain, else 1.
pub fn code_of(e: &anyhow::Error) -> i32 {
    e.chain().find_map(|c| c.downcast_ref::<Failure>()).map_or(ERROR, Failure::code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_code_is_found_through_context() {
        let e = Err::<(), _>(Failure::CheckFailed("tampered".into())).context("verifying").unwrap_err();
        assert_eq!(code_of(&e), CHECK_FAILED);
        assert_eq!(format!("{e:#}"), "verifying: tampered");
        assert_eq!(code_of(&anyhow::Error::new(Failure::NeedsPerson("x".into()))), NEEDS_PERSON);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), ERROR);
    }
}
