//! The `gfdfs` commands as blocking functions: each builds its runtime, runs, and returns
//! what the binary prints. The binary only parses arguments and maps errors to
//! [`exit_code`]s.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::mount::MountConfig;
use crate::progress::{NoProgress, Progress, TerminalProgress};
use crate::proto::StoreOutcome;
use crate::server::ServerConfig;
use crate::version::{time_of, FileMeta};
use crate::DfsPath;

/// Exit codes of the client commands (documented in docs/dfs.md).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Any other failure (local I/O, corrupt data, an internal server error).
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// No such file on the server.
    pub const NOT_FOUND: u8 = 3;
    /// The path (or another argument) is invalid.
    pub const INVALID: u8 = 4;
    /// Another client holds the file's write lock.
    pub const LOCKED: u8 = 5;
    /// `--deadline` passed.
    pub const DEADLINE: u8 = 6;
    /// The server cannot be reached.
    pub const UNAVAILABLE: u8 = 7;
    /// The server holds a later version: the store or delete changed nothing.
    pub const STALE: u8 = 8;
}

/// The exit code for `error`.
pub fn exit_code(error: &Error) -> u8 {
    match error {
        Error::NotFound(_) => exit::NOT_FOUND,
        Error::InvalidPath { .. } | Error::Invalid(_) => exit::INVALID,
        Error::LockHeld(_) => exit::LOCKED,
        Error::DeadlineExceeded => exit::DEADLINE,
        Error::Unavailable(_) | Error::Transport(_) => exit::UNAVAILABLE,
        Error::Stale(_) => exit::STALE,
        Error::Status(status) => match status.code() {
            tonic::Code::InvalidArgument => exit::INVALID,
            tonic::Code::Aborted => exit::STALE,
            _ => exit::FAILURE,
        },
        _ => exit::FAILURE,
    }
}

/// Where a client command goes and how long it may take.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub server: String,
    /// The whole command's deadline (connect included).
    pub deadline: Option<Duration>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))
}

/// Runs `call` with a connected client under the target's deadline.
fn with_client<T>(target: &Target, call: impl AsyncFnOnce(&mut Client) -> Result<T>) -> Result<T> {
    let connect_timeout = target.deadline.unwrap_or(Duration::from_secs(10));
    runtime()?.block_on(async {
        let work = async {
            let mut client = Client::connect(&target.server, connect_timeout).await?;
            call(&mut client).await
        };
        match target.deadline {
            Some(deadline) => tokio::time::timeout(deadline, work)
                .await
                .unwrap_or(Err(Error::DeadlineExceeded)),
            None => work.await,
        }
    })
}

/// Waits for SIGINT or SIGTERM.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// `gfdfs server`: serves until SIGINT or SIGTERM; prints `listening on ADDR` (and
/// `metrics on ADDR`) on stdout once bound.
pub fn server(config: ServerConfig) -> Result<()> {
    runtime()?.block_on(async {
        let bound = crate::server::bind(config).await?;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on {}", bound.addr);
        if let Some(metrics) = bound.metrics_addr {
            let _ = writeln!(out, "metrics on {metrics}");
        }
        let _ = out.flush();
        tracing::info!(addr = %bound.addr, "serving");
        bound.run(terminated()).await
    })
}

/// `gfdfs mount`: syncs until SIGINT or SIGTERM.
pub fn mount(config: MountConfig) -> Result<()> {
    runtime()?.block_on(crate::mount::run(config, terminated()))
}

/// The remote path a `store LOCAL` without `--as` uses: the local file name.
pub fn default_remote_name(local: &Path) -> Result<String> {
    local
        .file_name()
        .and_then(|name| name.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no usable file name; give --as",
                local.display()
            ))
        })
}

/// `gfdfs store`: what happened, for the user.
pub fn store(target: &Target, local: &Path, remote: &str) -> Result<String> {
    let path = DfsPath::parse(remote)?;
    let size = std::fs::metadata(local)
        .map_err(|e| Error::io(local, e))?
        .len();
    let progress: Box<dyn Progress> = Box::new(TerminalProgress::new(path.as_str(), size));
    let (outcome, meta) = with_client(target, async |client| {
        client.store_file(local, path.as_str(), progress).await
    })?;
    match outcome {
        StoreOutcome::Stored => Ok(format!("stored {path} ({} bytes)", meta.size)),
        StoreOutcome::Unchanged => Ok(format!("unchanged {path} (same checksum, no data sent)")),
        _ => Err(Error::Stale(path.to_string())),
    }
}

/// Where `gfdfs fetch` writes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Standard output (`-o -`).
    Stdout,
    /// A file, replaced atomically.
    File(PathBuf),
}

/// `gfdfs fetch`.
pub fn fetch(target: &Target, remote: &str, output: &Output) -> Result<FileMeta> {
    let path = DfsPath::parse(remote)?;
    with_client(target, async |client| match output {
        Output::Stdout => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            client
                .fetch_to_writer(path.as_str(), &mut lock, &mut NoProgress)
                .await
        }
        Output::File(dest) => {
            let mut progress = TerminalProgress::new(path.as_str(), 0);
            client
                .fetch_to_file(path.as_str(), dest, &mut progress)
                .await
        }
    })
}

/// `gfdfs delete`.
pub fn delete(target: &Target, remote: &str) -> Result<()> {
    let path = DfsPath::parse(remote)?;
    let deleted = with_client(target, async |client| client.delete(path.as_str(), 0).await)?;
    if deleted {
        Ok(())
    } else {
        Err(Error::Stale(path.to_string()))
    }
}

/// `gfdfs list`: every file.
pub fn list(target: &Target) -> Result<Vec<(String, FileMeta)>> {
    with_client(target, async |client| client.list().await)
}

/// `gfdfs stat`.
pub fn stat(target: &Target, remote: &str) -> Result<FileMeta> {
    let path = DfsPath::parse(remote)?;
    with_client(target, async |client| client.stat(path.as_str()).await)
}

/// One file as a JSON object: `path`, `size`, `mtime` (ns since the epoch), `mtime_rfc3339`,
/// `checksum` (CRC-32C, a number).
pub fn entry_json(path: &str, meta: &FileMeta) -> serde_json::Value {
    serde_json::json!({
        "path": path,
        "size": meta.size,
        "mtime": meta.mtime,
        "mtime_rfc3339": humantime::format_rfc3339_nanos(time_of(meta.mtime)).to_string(),
        "checksum": meta.checksum,
    })
}

/// One file as a text line: size, mtime, checksum (hex), path.
pub fn entry_line(path: &str, meta: &FileMeta) -> String {
    format!(
        "{:>12} {} {:08x} {}",
        meta.size,
        humantime::format_rfc3339_nanos(time_of(meta.mtime)),
        meta.checksum,
        path
    )
}
