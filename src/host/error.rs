//! The engine's error type. Kinds a caller can match on; each message says
//! what failed and, where there is one, what to do next.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::abi::OperationError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found while validating a document, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Where: the file or document, then a JSON Pointer inside it
    /// (`plugin.json#/operations/linked/2`).
    pub at: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// A command (a `pg_*` tool, a shell command) that failed: everything a user
/// needs to see why.
#[derive(Debug, Clone)]
pub struct ProcessError {
    pub command: String,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` exited with code {}", self.command, self.exit_code)?;
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            write!(f, "\n--- stderr\n{stderr}")?;
        }
        let stdout = self.stdout.trim();
        if !stdout.is_empty() {
            write!(f, "\n--- stdout\n{stdout}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: a flag, a name, a file.
    #[error("{0}")]
    Usage(String),

    /// A document failed validation; every problem has its path.
    #[error("{what} is not valid:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        what: String,
        problems: Vec<Problem>,
    },

    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The request conflicts with the current state (in use, a downgrade...).
    #[error("{0}")]
    Conflict(String),

    /// The object's state refuses the change (a dSource to enable first,
    /// dependants to delete first).
    #[error("{0}")]
    Refused(String),

    /// A connector library could not be loaded or does not fit this host.
    #[error("cannot load connector library {}: {message}", .path.display())]
    Load { path: PathBuf, message: String },

    /// A connector operation failed.
    #[error("connector operation {operation} failed: {error}")]
    Operation {
        operation: String,
        error: OperationError,
    },

    /// A command failed.
    #[error("{0}")]
    Process(Box<ProcessError>),

    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("metadata store {}: {source}", .path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    pub fn store(path: &Path, source: rusqlite::Error) -> Self {
        Self::Store {
            path: path.to_owned(),
            source,
        }
    }

    pub fn load(path: &Path, message: impl Into<String>) -> Self {
        Self::Load {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, problems: Vec<Problem>) -> Self {
        Self::Invalid {
            what: what.into(),
            problems,
        }
    }

    /// The process exit code for this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::Invalid { .. } => 2,
            _ => 1,
        }
    }
}
