//! The proxy's error type: what failed, on which side, and whether another source may succeed.

use std::io;

use crate::path::PathError;

/// Which party an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The GetFile client (bad path, went away).
    Client,
    /// A cache process or the shared-memory transport to it.
    Cache,
    /// The HTTP origin.
    Origin,
    /// The proxy itself (config, bind).
    Proxy,
}

/// Errors of the proxy.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GetFile server failed to bind or run.
    #[error(transparent)]
    Server(#[from] gfprotocol::Error),
    /// A bad proxy configuration.
    #[error("invalid proxy config: {0}")]
    Config(String),
    /// The request path was refused.
    #[error("bad request path: {0}")]
    Path(#[from] PathError),
    /// The client connection failed (it went away, or stalled past the write timeout).
    #[error("client connection: {0}")]
    Client(#[source] io::Error),
    /// A cache did not answer, answered nonsense, or reported a failure.
    #[error("cache slot {slot}: {source}")]
    Cache {
        /// The cache slot.
        slot: u32,
        /// What the transport reported.
        #[source]
        source: ipc::Error,
    },
    /// A cache answered that it failed to read the object.
    #[error("cache slot {slot} failed to read the object")]
    CacheFault {
        /// The cache slot.
        slot: u32,
    },
    /// A client-paced transfer found the object changed (another length or version) or gone
    /// between two of its ranges: the rest cannot be sent without mixing two versions.
    #[error("the object changed while a slow client read it ({what})")]
    ObjectChanged {
        /// What differed.
        what: String,
    },
    /// No free segment within the wait: every segment is busy.
    #[error("no free segment: {0}")]
    NoSegment(#[source] ipc::Error),
    /// The origin could not be reached, timed out or broke off.
    #[error("origin {url}: {source}")]
    OriginTransport {
        /// The URL fetched.
        url: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The origin answered a status other than 200, 404 and 410.
    #[error("origin {url} answered HTTP {status}")]
    OriginStatus {
        /// The URL fetched.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A body without Content-Length grew past `max_object_size`.
    #[error("origin {url} sent more than {limit} bytes without a Content-Length")]
    OriginTooLarge {
        /// The URL fetched.
        url: String,
        /// The limit.
        limit: u64,
    },
}

impl Error {
    /// The party the error came from.
    pub fn side(&self) -> Side {
        match self {
            Error::Server(_) | Error::Config(_) | Error::NoSegment(_) => Side::Proxy,
            Error::Path(_) | Error::Client(_) => Side::Client,
            Error::Cache { .. } | Error::CacheFault { .. } | Error::ObjectChanged { .. } => {
                Side::Cache
            }
            Error::OriginTransport { .. }
            | Error::OriginStatus { .. }
            | Error::OriginTooLarge { .. } => Side::Origin,
        }
    }

    /// Whether the origin did not answer in time (HTTP's 504 rather than 502).
    pub fn is_origin_timeout(&self) -> bool {
        let Error::OriginTransport { source, .. } = self else {
            return false;
        };
        // The origin client reports every timeout as an io::Error of kind TimedOut.
        source
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
    }

    /// Whether another source (the origin instead of a cache) or a later attempt may succeed:
    /// true for cache failures and transient origin failures, false for bad input, a client that
    /// left, a bad config or a definite origin answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Cache { .. } | Error::CacheFault { .. } | Error::NoSegment(_) => true,
            Error::OriginTransport { .. } => true,
            Error::OriginStatus { status, .. } => *status >= 500,
            Error::Server(_)
            | Error::Config(_)
            | Error::Path(_)
            | Error::Client(_)
            | Error::OriginTooLarge { .. }
            | Error::ObjectChanged { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_and_retry_classes() {
        let cache = Error::Cache {
            slot: 1,
            source: ipc::Error::Aborted,
        };
        assert_eq!(cache.side(), Side::Cache);
        assert!(cache.is_retryable());
        let path = Error::Path(PathError::EscapesRoot);
        assert_eq!(path.side(), Side::Client);
        assert!(!path.is_retryable());
        let status = Error::OriginStatus {
            url: "http://o/x".into(),
            status: 503,
        };
        assert_eq!(status.side(), Side::Origin);
        assert!(status.is_retryable());
        let forbidden = Error::OriginStatus {
            url: "http://o/x".into(),
            status: 403,
        };
        assert!(!forbidden.is_retryable());
    }
}
