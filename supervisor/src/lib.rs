//! gfsupervisor: config, child lifecycle, restarts, reload, metrics and IPC cleanup.
//!
//! Brief overview:
//! - [`config`]: [`config::Config::parse`] reads each section of the TOML file into the type of
//!   the crate that owns it (`proxy_core::ProxySettings`, `cache_backends::CacheSettings`, and
//!   this crate's `[ipc]` and `[supervisor]` types), runs each owner's validator, and reports
//!   every problem at once with its key path and line ([`config::ConfigIssue`]);
//!   [`config::Config::load_checked`] adds the checks of the environment that `check-config`,
//!   `reload` and `start` share.
//! - [`supervise::start`] is `gfsupervisor start`: it sweeps a dead run's IPC objects, takes the
//!   run directory's lock ([`ipc::Ledger`]), creates the [`ipc::Region`], re-executes the binary
//!   once per child ([`role::run_role`] on the child side, settings passed as a
//!   [`role::ChildSpec`] in the environment), restarts dead children with backoff
//!   ([`backoff::RestartTracker`]), applies reloads one child at a time, writes
//!   [`status::StatusReport`] to `run_dir/status.json`, judges readiness ([`health`]: ready,
//!   degraded or not ready), serves [`metrics`] and, on SIGTERM or
//!   SIGINT, stops the proxies (they drain), then the caches, and removes every IPC object.
//! - [`commands`]: `stop`, `status`, `reload`, `cleanup`, `check-config` and `purge`, which find
//!   the running supervisor through the run directory's lock.
//! - [`purge`]: removes objects by path or prefix from every cache that is up, through the
//!   region's PURGE requests; `gfsupervisor purge` attaches the running region, HTTP `PURGE` on
//!   `metrics_listen` goes through [`purge::PurgeService`] (loopback only unless
//!   `supervisor.purge_from` names networks).
//!
//! ```
//! use supervisor::config::Config;
//! let text = r#"
//! [proxy]
//! listen = "127.0.0.1:10823"
//! [cache]
//! backend = "memory"
//! memory = { capacity = "64MiB" }
//! "#;
//! let dir = std::env::temp_dir();
//! let config = Config::parse(text, &dir.join("gf.toml"), &dir).map_err(|issues| format!("{issues:?}"))?;
//! assert_eq!(config.cache.backend_kind(), "memory");
//! assert_eq!(config.ipc.segment_size, 1 << 20);
//!
//! let bad = text.replace("64MiB", "lots");
//! let issues = Config::parse(&bad, &dir.join("gf.toml"), &dir).unwrap_err();
//! assert_eq!(issues[0].key, "cache.memory.capacity");
//! assert_eq!(issues[0].line, Some(6));
//! # Ok::<(), String>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::PathBuf;

pub mod backoff;
pub mod commands;
pub mod config;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod promtool;
pub mod purge;
pub mod role;
pub mod status;
pub mod supervise;

pub use config::{Config, ConfigError, ConfigIssue, DEFAULT_CONFIG_PATH};
pub use metrics::Role;

/// Errors of the supervisor and its commands.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another supervisor holds the run directory.
    #[error("refusing: run directory {} is in use by a running gfsupervisor (pid {pid}); use `gfsupervisor stop` or another supervisor.run_dir", dir.display())]
    AlreadyRunning {
        /// The run directory.
        dir: PathBuf,
        /// The running supervisor.
        pid: i32,
    },
    /// No supervisor holds the run directory.
    #[error("no gfsupervisor is running on run directory {}", dir.display())]
    NotRunning {
        /// The run directory.
        dir: PathBuf,
    },
    /// The run directory could not be created.
    #[error("run directory {}: {source}", dir.display())]
    RunDir {
        /// The run directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The ipc layer failed.
    #[error(transparent)]
    Ipc(#[from] ipc::Error),
    /// A cache backend failed (child side).
    #[error(transparent)]
    Backend(#[from] cache_backends::Error),
    /// The proxy failed (child side).
    #[error(transparent)]
    Proxy(#[from] proxy_core::Error),
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What was attempted.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics server could not start.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A role subcommand was started without its environment.
    #[error("child: {0}")]
    Child(String),
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// A purge was refused before anything was sent, or could not reach the caches.
    #[error(transparent)]
    Purge(#[from] purge::PurgeError),
}
