//! Top-level error and the process exit codes (0 ok, 1 runtime failure, 64 usage, 78 config).

use std::path::PathBuf;

pub const EXIT_RUNTIME: u8 = 1;
/// `EX_USAGE` from sysexits.h.
pub const EXIT_USAGE: u8 = 64;
/// `EX_CONFIG` from sysexits.h.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Web(#[from] crate::web::Error),
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error(transparent)]
    Alert(#[from] crate::alert::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::BindError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Usage(_) => EXIT_USAGE,
            _ => EXIT_RUNTIME,
        }
    }
}
