//! A blocking client for threaded (non-tokio) programs, such as the proxy's `dfs://` origin.
//!
//! A [`Client`] owns a small tokio runtime (one worker thread, which drives the connection)
//! and blocks the calling thread until each call is done. It is `Clone`, `Send` and `Sync`,
//! and every method takes `&self`: one client (one HTTP/2 connection, calls multiplexed over
//! it) can serve all the threads of a program. A [`Watcher`] runs on a thread of its own.
//! Every call is bounded by the `timeout` given to [`Client::connect`] (a fetch: for each
//! chunk, so a large file may take longer in total as long as it keeps moving); a call that
//! runs out of time fails with [`Error::DeadlineExceeded`]. Call it from plain threads, not
//! from within a tokio runtime (blocking inside one panics).
//!
//! Paths may be given with or without a leading `/`; the server's answers (listings, watch
//! events) name them without it (`docs/readme.txt`). After a [`WatchKind::Disconnected`]
//! changes may have been missed: the listing that follows the reconnect (every file as a
//! `Create` with its checksum, every tombstone as a `Delete`, then `Synced`) is the state to
//! compare a cache against.
//!
//! ```no_run
//! use std::io::Read;
//! use std::time::Duration;
//!
//! let client = dfs::blocking::Client::connect("127.0.0.1:7070", Duration::from_secs(5))?;
//! let meta = client.stat("/docs/readme.txt")?;
//! let mut reader = client.fetch("/docs/readme.txt")?; // streams; not the whole file in memory
//! assert_eq!(reader.meta().size, meta.size);
//! let mut text = String::new();
//! reader.read_to_string(&mut text)?; // the checksum is verified at the end
//!
//! for event in client.watch() {
//!     // Create, Modify, Delete; Synced after each (re)connect's listing; Disconnected.
//!     println!("{:?} {}", event.kind, event.path);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::client::{self as async_client, Download};
use crate::error::{Error, Result};
use crate::proto::EventKind;
use crate::version::FileMeta;

/// A blocking connection to a gfdfs server. See the module docs.
#[derive(Clone)]
pub struct Client {
    runtime: Arc<Runtime>,
    inner: async_client::Client,
    addr: String,
    timeout: Duration,
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gfdfs-client")
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))
}

fn bounded<T>(
    runtime: &Runtime,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    runtime.block_on(async {
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded))
    })
}

impl Client {
    /// Connects to `addr` (`host:port`); `timeout` bounds the connect and every later call.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client> {
        let runtime = Arc::new(runtime()?);
        let inner = bounded(
            &runtime,
            timeout,
            async_client::Client::connect(addr, timeout),
        )?;
        Ok(Client {
            runtime,
            inner,
            addr: addr.to_string(),
            timeout,
        })
    }

    /// One file's size, mtime and checksum; [`Error::NotFound`] when missing.
    pub fn stat(&self, path: &str) -> Result<FileMeta> {
        let mut inner = self.inner.clone();
        bounded(&self.runtime, self.timeout, inner.stat(path))
    }

    /// Every file, by path (without a leading `/`).
    pub fn list(&self) -> Result<Vec<(String, FileMeta)>> {
        let mut inner = self.inner.clone();
        bounded(&self.runtime, self.timeout, inner.list())
    }

    /// Starts fetching `path`: the reader knows the version at once ([`FetchReader::meta`])
    /// and streams the data; at the end it checks size and checksum (a mismatch is an
    /// `InvalidData` read error).
    pub fn fetch(&self, path: &str) -> Result<FetchReader> {
        let mut inner = self.inner.clone();
        let download = bounded(&self.runtime, self.timeout, inner.fetch(path))?;
        Ok(FetchReader {
            runtime: self.runtime.clone(),
            timeout: self.timeout,
            download,
            chunk: prost::bytes::Bytes::new(),
            offset: 0,
            done: false,
        })
    }

    /// Follows the changes of the server at `addr` like [`Client::watch`], without connecting
    /// first: a server that is down now is followed once it is up (the proxy's `dfs://`
    /// origin starts before its server may be).
    pub fn watch_addr(addr: &str, timeout: Duration) -> Watcher {
        Watcher::start(addr.to_string(), timeout)
    }

    /// Follows the server's changes on a thread of its own, reconnecting with backoff (up to
    /// 2 s between tries) for as long as the [`Watcher`] lives.
    pub fn watch(&self) -> Watcher {
        Watcher::start(self.addr.clone(), self.timeout)
    }
}

/// A file being fetched. See [`Client::fetch`].
pub struct FetchReader {
    runtime: Arc<Runtime>,
    timeout: Duration,
    download: Download,
    chunk: prost::bytes::Bytes,
    offset: usize,
    done: bool,
}

impl FetchReader {
    /// The version being read (size, mtime, checksum).
    pub fn meta(&self) -> FileMeta {
        self.download.meta
    }
}

impl Read for FetchReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let next = bounded(&self.runtime, self.timeout, self.download.next_chunk());
            match next {
                Ok(Some(chunk)) => {
                    self.chunk = chunk;
                    self.offset = 0;
                }
                Ok(None) => self.done = true,
                Err(error) => return Err(io_error(error)),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.offset);
        buf[..n].copy_from_slice(&self.chunk[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

fn io_error(error: Error) -> std::io::Error {
    use std::io::ErrorKind;
    let kind = match &error {
        Error::Corrupt { .. } => ErrorKind::InvalidData,
        Error::DeadlineExceeded => ErrorKind::TimedOut,
        Error::NotFound(_) => ErrorKind::NotFound,
        _ => ErrorKind::Other,
    };
    std::io::Error::new(kind, error)
}

/// What happened, as a [`Watcher`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    /// A file exists: new, or part of the listing after each (re)connect.
    Create,
    /// A file's content changed.
    Modify,
    /// A file was deleted (`mtime` is the tombstone's time); also part of the listing.
    Delete,
    /// The listing after a (re)connect is complete: from here on, changes as they happen.
    Synced,
    /// The stream broke off; changes may be missed until the next listing, which the
    /// watcher fetches by itself.
    Disconnected,
}

/// One event of a [`Watcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchKind,
    /// The file (without a leading `/`; empty for Synced and Disconnected).
    pub path: String,
    /// Bytes (0 for a delete).
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// CRC-32C (0 for a delete).
    pub checksum: u32,
}

/// The server's changes, as an iterator (blocking) or with [`Watcher::recv_timeout`]. Dropping
/// it stops its thread.
pub struct Watcher {
    events: mpsc::Receiver<WatchEvent>,
    stop: Arc<AtomicBool>,
}

impl Watcher {
    fn start(addr: String, timeout: Duration) -> Watcher {
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("gfdfs-watch".into())
            .spawn(move || match runtime() {
                Ok(runtime) => runtime.block_on(follow(addr, timeout, tx, stopping)),
                Err(error) => tracing::warn!(%error, "watch runtime"),
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "watch thread");
        }
        Watcher { events, stop }
    }

    /// The next event within `timeout`, or `None`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<WatchEvent> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Iterator for Watcher {
    type Item = WatchEvent;
    fn next(&mut self) -> Option<WatchEvent> {
        self.events.recv().ok()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn marker(kind: WatchKind) -> WatchEvent {
    WatchEvent {
        kind,
        path: String::new(),
        size: 0,
        mtime: 0,
        checksum: 0,
    }
}

async fn follow(
    addr: String,
    timeout: Duration,
    tx: mpsc::Sender<WatchEvent>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(Ok(mut client)) =
            tokio::time::timeout(timeout, async_client::Client::connect(&addr, timeout)).await
        {
            if let Ok(mut stream) = client.watch().await {
                backoff = Duration::from_millis(50);
                if !relay(&mut stream, &tx, &stop).await {
                    return;
                }
                if tx.send(marker(WatchKind::Disconnected)).is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Relays one stream; false when the watcher is gone.
async fn relay(
    stream: &mut tonic::Streaming<crate::proto::WatchEvent>,
    tx: &mpsc::Sender<WatchEvent>,
    stop: &AtomicBool,
) -> bool {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) { return false; }
                continue;
            }
        };
        let Ok(Some(event)) = message else {
            return true;
        };
        let kind = match EventKind::try_from(event.kind) {
            Ok(EventKind::Create) => WatchKind::Create,
            Ok(EventKind::Modify) => WatchKind::Modify,
            Ok(EventKind::Delete) => WatchKind::Delete,
            Ok(EventKind::Synced) => WatchKind::Synced,
            _ => continue,
        };
        let relayed = WatchEvent {
            kind,
            path: event.path,
            size: event.size,
            mtime: event.mtime,
            checksum: event.checksum,
        };
        if tx.send(relayed).is_err() {
            return false;
        }
    }
}
