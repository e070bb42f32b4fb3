//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::MAX_PATH_LEN;

/// Errors of the ipc crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// The operation, e.g. "shmget", "futex wait".
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The peer did not answer in time. The segment is quarantined, never reused blindly.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited ("a free segment", "the cache to answer", "room", "data").
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// The peer aborted the transfer.
    #[error("the peer aborted the transfer")]
    Aborted,
    /// The cache declined a PUT (read-only backend, object too large, ...).
    #[error("the cache declined the fill")]
    Declined,
    /// The peer wrote something impossible into shared memory (a length out of range, ...).
    #[error("protocol violation in segment {segment}: {what}")]
    Protocol {
        /// The segment.
        segment: u32,
        /// What was wrong.
        what: String,
    },
    /// The region id does not name a live gfcache region of this version.
    #[error("bad region: {0}")]
    BadRegion(String),
    /// A region configuration out of range.
    #[error("invalid region config: {0}")]
    InvalidConfig(String),
    /// A path longer than [`MAX_PATH_LEN`] or containing a NUL.
    #[error("path of {len} bytes does not fit a segment header (max {MAX_PATH_LEN})")]
    PathTooLong {
        /// Its length.
        len: usize,
    },
    /// The run directory is locked by a live owner.
    #[error("run directory {dir} is in use by a running gfsupervisor (pid {pid})")]
    RunDirLocked {
        /// The run directory.
        dir: PathBuf,
        /// The lock holder, as written in the lock file.
        pid: i32,
    },
    /// The ledger file could not be read or written.
    #[error("ledger {path}: {reason}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// This side wrote (or announced) a different number of bytes than the transfer's length.
    #[error("transfer length mismatch: announced {announced} bytes, got {actual}")]
    LengthMismatch {
        /// The announced length.
        announced: u64,
        /// The bytes written so far (or attempted).
        actual: u64,
    },
}

impl Error {
    pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Os { op, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
