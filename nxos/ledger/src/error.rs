//! The ledger's one error type. Every message says what failed and, where
//! there is one, what to do about it.

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The caller's input was refused; nothing was recorded.
    #[error("refused: {0}")]
    BadData(String),
    #[error("unknown category {category:?}; known categories: {known}")]
    UnknownCategory { category: String, known: String },
    #[error("the ledger at {path} is damaged at height {height}: {what} (run `bpi-os ledger verify --store {path}`)")]
    Damaged { path: String, height: u64, what: String },
    #[error("the ledger at {path} is in use by another writer ({holder}); append through `bpi-ledger.service` (omit --store) or stop it")]
    Busy { path: String, holder: String },
    #[error("the ledger writer failed earlier ({0}); restart it so it re-reads the store")]
    Poisoned(String),
    #[error("{0}")]
    NotFound(String),
    // The source is printed by the error chain (`{:#}`), not repeated here.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl LedgerError {
    /// The message with its causes, for callers that do not print error chains (D-Bus).
    pub fn full(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(&format!(": {c}"));
            cause = c.source();
        }
        s
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LedgerError::Io { context: context.into(), source }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// Adds a context line to I/O errors, as `anyhow::Context` does.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| LedgerError::io(context(), e))
    }
}
