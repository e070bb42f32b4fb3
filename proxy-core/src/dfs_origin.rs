//! The gfdfs origin (`proxy.origin = "dfs://HOST:PORT"`): a miss fetches the file over gRPC
//! (`Fetch`, streamed), and the answer is made to look like an HTTP one so that the request
//! path, freshness and collapsing treat both origins alike: 200 with Content-Length, an ETag of
//! the file's CRC32C and size, its mtime as Last-Modified; a missing file is a 404. A
//! revalidation is a `Stat`: the same checksum is a 304.
//!
//! Invalidation comes from the server: [`follow_changes`] subscribes to `Watch` and purges every
//! created, modified or deleted path from the caches, so clients see a store or a delete within
//! the watch's delay. When the server is down the connection is retried on the next fetch, and
//! the cached copies keep being served (fresh, or stale-if-error).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfs::blocking::{Client, FetchReader, WatchEvent, WatchKind};
use ipc::Region;

use crate::error::Error;
use crate::origin::{OriginHeaders, Validators};
use crate::path::CanonicalPath;
use crate::purge::{purge_every_cache, PurgeKey};

/// The scheme of a gfdfs origin URL.
pub const SCHEME: &str = "dfs://";

/// How often the change follower looks at the stop flag.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// Checks a `dfs://HOST:PORT` origin and gives its `HOST:PORT`.
pub fn check_base(base: &str) -> Result<&str, String> {
    let addr = base
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("origin {base:?} is not a dfs:// URL"))?
        .trim_end_matches('/');
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !valid || addr.contains('/') || addr.contains('@') {
        return Err(format!(
            "origin {base:?}: expected dfs://HOST:PORT (a gfdfs server), nothing more"
        ));
    }
    Ok(addr)
}

/// A gfdfs server as an origin. Connects on first use and again after a failure, so a server
/// that is down at start or restarts costs failed fetches, not a proxy that cannot start.
pub struct DfsOrigin {
    addr: String,
    timeout: Duration,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for DfsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfsOrigin")
            .field("addr", &self.addr)
            .finish()
    }
}

/// What the gfdfs server answered.
pub enum DfsAnswer {
    /// The file: its length, its headers, and the bytes as they stream.
    Found {
        /// Bytes.
        len: u64,
        /// Its validators as HTTP headers.
        headers: OriginHeaders,
        /// The bytes.
        body: Box<FetchReader>,
    },
    /// The checksum matches the validator: unchanged.
    NotModified(OriginHeaders),
    /// No such file.
    NotFound(OriginHeaders),
}

impl DfsOrigin {
    /// An origin for the server at `base` (`dfs://HOST:PORT`); `timeout` bounds the connect and
    /// each call (each chunk of a fetch).
    pub fn new(base: &str, timeout: Duration) -> Result<DfsOrigin, Error> {
        let addr = check_base(base).map_err(Error::Config)?;
        Ok(DfsOrigin {
            addr: addr.to_owned(),
            timeout,
            client: Mutex::new(None),
        })
    }

    /// What bounds each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `dfs://` URL of `path`, for messages.
    pub fn url_for(&self, path: &CanonicalPath) -> String {
        format!("{SCHEME}{}{}", self.addr, path.as_str())
    }

    /// Fetches `path`; with validators, first asks whether the stored copy is still current.
    pub fn fetch(
        &self,
        path: &CanonicalPath,
        validators: Option<&Validators>,
    ) -> Result<DfsAnswer, Error> {
        let client = self.client()?;
        if let Some(etag) = validators.and_then(|v| v.etag.as_deref()) {
            match client.stat(path.as_str()) {
                Ok(meta) if etag_of(meta.checksum, meta.size) == etag => {
                    return Ok(DfsAnswer::NotModified(headers(
                        200,
                        meta.size,
                        meta.mtime,
                        meta.checksum,
                    )));
                }
                Ok(_) => {}
                Err(error) if names_no_file(&error) => return Ok(DfsAnswer::NotFound(not_found())),
                Err(error) => return Err(self.failed(path, error)),
            }
        }
        match client.fetch(path.as_str()) {
            Ok(body) => {
                let meta = body.meta();
                Ok(DfsAnswer::Found {
                    len: meta.size,
                    headers: headers(200, meta.size, meta.mtime, meta.checksum),
                    body: Box::new(body),
                })
            }
            Err(error) if names_no_file(&error) => Ok(DfsAnswer::NotFound(not_found())),
            Err(error) => Err(self.failed(path, error)),
        }
    }

    fn client(&self) -> Result<Client, Error> {
        let mut slot = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect(&self.addr, self.timeout)
            .map_err(|error| transport_error(format!("{SCHEME}{}", self.addr), error))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// A failed call. When the server could not be reached or did not answer, the connection
    /// is dropped (the next fetch connects again).
    fn failed(&self, path: &CanonicalPath, error: dfs::Error) -> Error {
        use dfs::StatusCode;
        let unreachable = matches!(
            error.code(),
            StatusCode::Unavailable
                | StatusCode::DeadlineExceeded
                | StatusCode::Unknown
                | StatusCode::Internal
        );
        if unreachable {
            *self
                .client
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
        transport_error(self.url_for(path), error)
    }

    /// Follows the server's changes on a thread of its own until `stop` is set, purging each
    /// changed or deleted path from every cache of `region`.
    pub fn follow_changes(
        &self,
        region: Arc<Region>,
        cache_timeout: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let addr = self.addr.clone();
        let timeout = self.timeout;
        std::thread::Builder::new()
            .name("gfproxy-dfs-watch".into())
            .spawn(move || follow_changes(&addr, timeout, &region, cache_timeout, &stop))
    }
}

/// A call to `url` that failed. Every origin reports running out of time as io's TimedOut
/// (see `Error::is_origin_timeout`), so an HTTP client gets 504 for it, as from an HTTP origin.
fn transport_error(url: String, error: dfs::Error) -> Error {
    let source: Box<dyn std::error::Error + Send + Sync> = match error.code() {
        dfs::StatusCode::DeadlineExceeded => {
            Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, error))
        }
        _ => Box::new(error),
    };
    Error::OriginTransport { url, source }
}

/// Whether the server said there is no such file: missing, or a path it refuses (a name gfdfs
/// reserves) that no client can store either.
fn names_no_file(error: &dfs::Error) -> bool {
    matches!(
        error.code(),
        dfs::StatusCode::NotFound | dfs::StatusCode::InvalidArgument
    )
}

/// The ETag of a gfdfs file: its checksum and size name its bytes.
fn etag_of(checksum: u32, size: u64) -> String {
    format!("\"{checksum:08x}-{size:x}\"")
}

fn headers(status: u16, size: u64, mtime_nanos: i64, checksum: u32) -> OriginHeaders {
    let mtime = u64::try_from(mtime_nanos)
        .map_or(UNIX_EPOCH, |nanos| UNIX_EPOCH + Duration::from_nanos(nanos));
    OriginHeaders {
        status,
        etag: Some(etag_of(checksum, size)),
        last_modified: Some(httpdate::fmt_http_date(mtime)),
        date: Some(httpdate::fmt_http_date(SystemTime::now())),
        ..OriginHeaders::default()
    }
}

fn not_found() -> OriginHeaders {
    OriginHeaders {
        status: 404,
        ..OriginHeaders::default()
    }
}

/// The watch loop: a connection that drops is followed again by the watcher itself, and the
/// listing after the reconnect names every file (and tombstone) once more; [`ChangeFilter`]
/// turns it into purges of what changed meanwhile, not of everything.
fn follow_changes(
    addr: &str,
    timeout: Duration,
    region: &Region,
    cache_timeout: Duration,
    stop: &AtomicBool,
) {
    let watcher = Client::watch_addr(addr, timeout);
    let mut changes = ChangeFilter::default();
    while !stop.load(Ordering::Acquire) {
        let Some(event) = watcher.recv_timeout(WATCH_POLL) else {
            continue;
        };
        match event.kind {
            WatchKind::Synced => tracing::debug!(server = addr, "dfs watch in sync"),
            WatchKind::Disconnected => {
                tracing::info!(server = addr, "dfs watch disconnected; reconnecting")
            }
            WatchKind::Create | WatchKind::Modify | WatchKind::Delete => {}
        }
        for path in changes.stale_keys(&event) {
            let key = PurgeKey {
                key: &path,
                prefix: false,
            };
            let removed: u64 = purge_every_cache(region, &[key], cache_timeout)
                .iter()
                .map(|report| report.answer.removed())
                .sum();
            tracing::debug!(key = %path, kind = ?event.kind, removed, "dfs change: purged");
        }
    }
}

/// A file's version as the Watch stream names it: a delete is a version too (its tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    deleted: bool,
    size: u64,
    mtime: i64,
    checksum: u32,
}

/// Decides which cache keys a Watch event makes stale. It remembers the version of every file
/// the stream named, so that the listing after a reconnect purges only the files that changed
/// while the stream was down (and, once the listing is complete, those it no longer names),
/// rather than emptying the caches of everything the DFS holds. The first listing purges
/// every file it names: the caches may hold copies older than this process.
#[derive(Debug)]
struct ChangeFilter {
    known: HashMap<String, FileVersion>,
    /// The files named since the last (re)connect, until its listing is complete.
    listing: Option<HashSet<String>>,
}

impl Default for ChangeFilter {
    fn default() -> ChangeFilter {
        ChangeFilter {
            known: HashMap::new(),
            listing: Some(HashSet::new()),
        }
    }
}

impl ChangeFilter {
    /// The cache keys to purge for `event`.
    fn stale_keys(&mut self, event: &WatchEvent) -> Vec<String> {
        match event.kind {
            WatchKind::Create | WatchKind::Modify | WatchKind::Delete => {
                let key = format!("/{}", event.path.trim_start_matches('/'));
                let version = FileVersion {
                    deleted: event.kind == WatchKind::Delete,
                    size: event.size,
                    mtime: event.mtime,
                    checksum: event.checksum,
                };
                if let Some(listing) = &mut self.listing {
                    listing.insert(key.clone());
                }
                match self.known.insert(key.clone(), version) == Some(version) {
                    true => Vec::new(),
                    false => vec![key],
                }
            }
            WatchKind::Disconnected => {
                self.listing = Some(HashSet::new());
                Vec::new()
            }
            WatchKind::Synced => {
                let Some(named) = self.listing.take() else {
                    return Vec::new();
                };
                let vanished: Vec<String> = self
                    .known
                    .keys()
                    .filter(|key| !named.contains(*key))
                    .cloned()
                    .collect();
                for key in &vanished {
                    self.known.remove(key);
                }
                vanished
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: WatchKind, path: &str, mtime: i64, checksum: u32) -> WatchEvent {
        WatchEvent {
            kind,
            path: path.into(),
            size: 10,
            mtime,
            checksum,
        }
    }

    fn marker(kind: WatchKind) -> WatchEvent {
        event(kind, "", 0, 0)
    }

    #[test]
    fn a_reconnect_purges_only_what_changed_or_vanished_meanwhile() {
        use WatchKind::{Create, Delete, Disconnected, Modify, Synced};
        let mut filter = ChangeFilter::default();
        // The first listing purges everything it names.
        assert_eq!(filter.stale_keys(&event(Create, "a", 1, 11)), ["/a"]);
        assert_eq!(filter.stale_keys(&event(Create, "b", 1, 22)), ["/b"]);
        assert_eq!(filter.stale_keys(&event(Create, "c", 1, 33)), ["/c"]);
        assert_eq!(filter.stale_keys(&event(Delete, "d", 5, 0)), ["/d"]);
        assert!(filter.stale_keys(&marker(Synced)).is_empty());
        // Live changes purge their file.
        assert_eq!(filter.stale_keys(&event(Modify, "a", 2, 12)), ["/a"]);
        // The stream breaks; meanwhile b changes, c goes without a tombstone, d stays deleted.
        assert!(filter.stale_keys(&marker(Disconnected)).is_empty());
        assert!(filter.stale_keys(&event(Create, "a", 2, 12)).is_empty());
        assert_eq!(filter.stale_keys(&event(Create, "b", 3, 23)), ["/b"]);
        assert!(filter.stale_keys(&event(Delete, "d", 5, 0)).is_empty());
        assert_eq!(filter.stale_keys(&event(Create, "e", 4, 44)), ["/e"]);
        assert_eq!(filter.stale_keys(&marker(Synced)), ["/c"]);
        // A file that comes back after vanishing is purged again (a negative entry may be
        // cached).
        assert_eq!(filter.stale_keys(&event(Create, "c", 1, 33)), ["/c"]);
        // A delete of a known file purges it.
        assert_eq!(filter.stale_keys(&event(Delete, "a", 6, 0)), ["/a"]);
    }

    #[test]
    fn a_dfs_origin_names_host_and_port_only() {
        assert_eq!(check_base("dfs://127.0.0.1:7070"), Ok("127.0.0.1:7070"));
        assert_eq!(
            check_base("dfs://dfs.internal:7070/"),
            Ok("dfs.internal:7070")
        );
        for bad in [
            "dfs://",
            "dfs://host",
            "dfs://host:0",
            "dfs://host:70000",
            "dfs://host:7070/dir",
            "dfs://user@host:7070",
            "http://host:7070",
        ] {
            assert!(check_base(bad).is_err(), "{bad}");
        }
    }
}
