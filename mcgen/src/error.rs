// SPDX-License-Identifier: Apache-2.0
//! What can go wrong while generating, and the exit code each maps to.

use kmod_day1_contract::{ConfigError, NameError};

/// A generation failure. Every message is one line that names the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec, a flag or a value in them is invalid (exit code 2).
    #[error("{0}")]
    Invalid(String),
    /// The generated object is larger than allowed (exit code 2).
    #[error("{0}")]
    TooLarge(String),
    /// A file could not be read or written (exit code 1).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "reading node binary /x/kmod-day1-pull".
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code for this error: 2 for bad input, 1 for the environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::TooLarge(_) => 2,
            Error::Io { .. } => 1,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Error::Invalid(e.to_string())
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Invalid(e.to_string())
    }
}
