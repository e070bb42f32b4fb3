//! The crate's error type and its mapping to and from gRPC statuses.
use std::path::PathBuf;

use tonic::Code;

/// What went wrong in a gfdfs call, on either side of the wire.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path is not one a gfdfs server serves (`..`, NUL, an empty component, the
    /// server's own `.gfdfs` state, or a symlink leading out of the root).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No such file on the server.
    #[error("{0}: no such file")]
    NotFound(String),
    /// Another client holds the file's write lock.
    #[error("{0}: the write lock is held by another client")]
    LockHeld(String),
    /// A store without the caller holding the write lock.
    #[error("{0}: the caller does not hold the write lock")]
    LockNotHeld(String),
    /// The server holds a later version than the one offered.
    #[error("{0}: the server holds a later version")]
    Stale(String),
    /// The bytes received do not match the announced size or checksum.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: String,
        /// Which check failed.
        what: String,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The peer went away mid-call.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The server cannot be reached (or went away).
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// A local file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Any other gRPC status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The channel could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The local directory watch (inotify) failed.
    #[error("inotify: {0}")]
    Notify(#[from] notify::Error),
    /// A bad argument that is not a path (an address, a size).
    #[error("{0}")]
    Invalid(String),
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The gRPC code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidPath { .. } | Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::LockHeld(_) => Code::ResourceExhausted,
            Error::LockNotHeld(_) => Code::FailedPrecondition,
            Error::Stale(_) => Code::Aborted,
            Error::Corrupt { .. } => Code::DataLoss,
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Unavailable(_) | Error::Transport(_) => Code::Unavailable,
            Error::Io { .. } | Error::Notify(_) => Code::Internal,
            Error::Status(status) => status.code(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Status(status) => status,
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let message = status.message();
        // The server's message is this crate's own rendering: take the path back out of it.
        let path = |suffix: &str| message.strip_suffix(suffix).unwrap_or(message).to_string();
        match status.code() {
            Code::NotFound => Error::NotFound(path(": no such file")),
            Code::ResourceExhausted => {
                Error::LockHeld(path(": the write lock is held by another client"))
            }
            Code::DeadlineExceeded => Error::DeadlineExceeded,
            Code::Unavailable => Error::Unavailable(message.to_string()),
            _ => Error::Status(status),
        }
    }
}
