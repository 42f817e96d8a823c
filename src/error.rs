//! Typed errors for the library. Each variant names the offending field or file and what would fix it.

use std::path::PathBuf;

/// Everything that can go wrong in groklens, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum GrokError {
    /// A configuration value is outside its allowed range.
    #[error("invalid config: `{field}` = {value}: {expected}")]
    Config {
        /// Dotted field name, e.g. `task.p`.
        field: String,
        /// The value that was given.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file involved.
        path: PathBuf,
        /// What went wrong and how to fix it.
        message: String,
    },
    /// A tensor has the wrong shape or dtype, or is missing.
    #[error("tensor `{name}`: {message}")]
    Tensor {
        /// Tensor name (TransformerLens state_dict name where applicable).
        name: String,
        /// What was expected.
        message: String,
    },
    /// A job would need more memory than the machine has (the estimate, its parts and the fix).
    #[error("not enough memory: {0}")]
    Resources(String),
    /// Training met a non-finite loss: an outcome of the settings, not a fault (exit code
    /// [`EXIT_DIVERGED`], which a sweep records as a diverged point).
    #[error("training diverged: {0}")]
    Diverged(String),
    /// SIGINT or SIGTERM stopped training after a checkpoint was written (exit code
    /// [`EXIT_INTERRUPTED`]).
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A command used wrongly (a missing or contradictory option), with what to type instead.
    #[error("{0}")]
    Usage(String),
    /// An error from the candle tensor library.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Exit code of `groklens train` when training diverged ([`GrokError::Diverged`]).
pub const EXIT_DIVERGED: u8 = 3;
/// Exit code of a command stopped by SIGINT or SIGTERM ([`GrokError::Interrupted`]), as shells use.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Result alias used throughout the library.
pub type Result<T> = std::result::Result<T, GrokError>;

impl GrokError {
    /// A config error for `field` holding `value`, explaining the allowed range.
    pub fn config(field: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> Self {
        GrokError::Config {
            field: field.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// A file error for `path`.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        GrokError::File {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The process exit code for this error: [`EXIT_DIVERGED`], [`EXIT_INTERRUPTED`] or 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            GrokError::Diverged(_) => EXIT_DIVERGED,
            GrokError::Interrupted(_) => EXIT_INTERRUPTED,
            _ => 1,
        }
    }

    /// A tensor error for `name`.
    pub fn tensor(name: &str, message: impl Into<String>) -> Self {
        GrokError::Tensor {
            name: name.to_string(),
            message: message.into(),
        }
    }
}
