//! gfdfs: a weakly consistent distributed file system over gRPC.
//!
//! The wire contract is `proto/gfdfs/v1/dfs.proto` (package `gfdfs.v1`, service `Dfs`),
//! compiled at build time by protox (pure Rust, no protoc) into [`proto`]. Around it:
//!
//! - [`server`]: [`server::bind`] a [`ServerConfig`] and [`server::BoundServer::run`] it. It
//!   serves the files of a [`volume::Volume`] (a root directory, its index of versions,
//!   tombstones of deletes and the change broadcast behind `Watch`), guards writes with a
//!   [`locks::LockTable`] of leased write locks and counts in [`metrics::Metrics`].
//! - [`client::Client`]: the async client the `gfdfs` commands and the mount use.
//! - [`mount`]: the two-way sync of a local directory (inotify + the Watch stream).
//! - [`blocking::Client`]: a blocking client for threaded programs (stat, streaming fetch,
//!   a reconnecting watch).
//! - [`DfsPath`], [`Version`] and [`FileMeta`]: the vocabulary: contained paths, and versions
//!   ordered by (mtime, checksum), the later winning.
//!
//! Errors are one [`Error`], which maps to and from gRPC status codes.
//!
//! A round trip on `127.0.0.1:0`:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = tempfile::tempdir()?;
//! let runtime = tokio::runtime::Runtime::new()?;
//! let server = runtime.block_on(dfs::server::bind(dfs::ServerConfig {
//!     root: root.path().to_path_buf(),
//!     listen: "127.0.0.1:0".parse()?,
//!     metrics_listen: None,
//!     lock_lease: dfs::ServerConfig::DEFAULT_LOCK_LEASE,
//! }))?;
//! let addr = server.addr.to_string();
//! runtime.spawn(server.run(std::future::pending()));
//!
//! let local = root.path().join("..").join(format!("hello-{}", std::process::id()));
//! std::fs::write(&local, b"hello")?;
//! runtime.block_on(async {
//!     let mut client = dfs::client::Client::connect(&addr, std::time::Duration::from_secs(5)).await?;
//!     client.store_file(&local, "/greeting", Box::new(dfs::progress::NoProgress)).await?;
//!     Ok::<(), dfs::Error>(())
//! })?;
//! std::fs::remove_file(&local)?;
//!
//! let blocking = dfs::blocking::Client::connect(&addr, std::time::Duration::from_secs(5))?;
//! assert_eq!(blocking.stat("greeting")?.size, 5);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod blocking;
pub mod client;
pub mod commands;
mod error;
pub mod locks;
pub mod metrics;
pub mod mount;
mod path;
pub mod progress;
pub mod server;
mod version;
pub mod volume;
mod wire;

/// The messages and service generated from `proto/gfdfs/v1/dfs.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("gfdfs.v1");
}

pub use error::{Error, Result};
pub use path::{DfsPath, STATE_DIR};
pub use server::ServerConfig;
/// The gRPC status codes an [`Error::Status`] carries.
pub use tonic::Code as StatusCode;
pub use version::{file_meta, nanos_of, now_nanos, time_of, FileMeta, Version};
