//! What a check found, and where: `file:line: message`. Errors refuse the
//! whole provisioning; notes (ignored or unknown keys) are reported only.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Errors and notes about one document, collected as it is read.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub errors: Vec<Finding>,
    pub notes: Vec<Finding>,
}

impl Findings {
    pub fn error(&mut self, file: &str, line: usize, message: impl Into<String>) {
        self.errors.push(Finding { file: file.into(), line, message: message.into() });
    }
    pub fn note(&mut self, file: &str, line: usize, message: impl Into<String>) {
        self.notes.push(Finding { file: file.into(), line, message: message.into() });
    }
    pub fn extend(&mut self, other: Findings) {
        self.errors.extend(other.errors);
        self.notes.extend(other.notes);
    }
}
