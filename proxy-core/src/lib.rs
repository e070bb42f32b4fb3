//! The gfcache proxy.
//!
//! API CONTRACT SKELETON — [`ProxyConfig`] and [`run`] are what the supervisor codes against.
//! The proxy-core implementer fills them in and may add items (e.g. a `Proxy::start` for tests
//! that returns the bound address); changing these signatures must be agreed with the lead.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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
}

/// Settings of a proxy process (the `[proxy]` section, validated by the supervisor).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This process's slot (stats block and state word).
    pub slot: ipc::ProxySlot,
    /// Listen address; with `reuse_port` several proxy processes share it.
    pub listen: SocketAddr,
    /// Set SO_REUSEPORT.
    pub reuse_port: bool,
    /// Worker threads.
    pub threads: usize,
    /// Origin base URL (`http://` or `https://`); None: a miss is FILE_NOT_FOUND.
    pub origin: Option<String>,
    /// Connect timeout to the origin.
    pub origin_connect_timeout: Duration,
    /// Total timeout of one origin fetch.
    pub origin_timeout: Duration,
    /// Redirects followed at most.
    pub origin_max_redirects: usize,
    /// Objects larger than this are not filled (and bodies without Content-Length beyond it are
    /// ERROR).
    pub max_object_size: u64,
    /// How long to wait for a cache's answer (and for each chunk) before falling back.
    pub cache_timeout: Duration,
    /// How long a collapsed request waits for the leader before fetching on its own.
    pub collapse_timeout: Duration,
    /// Header read deadline for clients.
    pub header_timeout: Duration,
    /// On stop, how long in-flight transfers may take.
    pub shutdown_timeout: Duration,
}

/// Runs a proxy process on an attached region until `stop` is set (the caller wires
/// SIGTERM/SIGINT to it): marks its member state Starting, binds, marks Ready, serves, then stops
/// accepting, drains in-flight transfers up to `shutdown_timeout`, marks Down and returns.
pub fn run(
    _region: std::sync::Arc<ipc::Region>,
    _config: ProxyConfig,
    _stop: &AtomicBool,
) -> Result<(), Error> {
    todo!()
}
