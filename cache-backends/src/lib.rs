//! Cache backends and the cache process.
//!
//! A cache process serves one [`CacheBackend`]: it claims its slot's requests from the ipc
//! region, copies objects into shared-memory segments and stores origin fills.
//!
//! - [`CacheBackend`]: the trait every backend implements. Its contract:
//!   - [`CacheBackend::get`] returns a [`CachedObject`] for a path, or `None` when the backend
//!     does not hold it. The object keeps its bytes alive while it is held (an eviction or a
//!     replacement never frees or changes bytes a transfer is copying) and copies any byte range
//!     of itself into a [`ChunkDest`] with one copy ([`CachedObject::copy_to`]).
//!   - [`CacheBackend::put`] starts a [`Fill`] of an announced length, or declines (`None`) when
//!     the backend is read-only or the object is not storable. Only [`Fill::commit`] after
//!     exactly the announced bytes makes the object visible; a dropped fill leaves nothing.
//!   - [`CacheBackend::stats`] gives [`BackendStats`]. Every `get` that does not fail counts one
//!     hit or one miss.
//!   - [`CacheBackend::refresh`] says whether the backend can answer now ([`Availability`]); the
//!     cache process asks every 20 ms and marks its slot Unavailable while it cannot. Only the
//!     pack backend can become unavailable (its file damaged, changed or missing).
//!   - All backends are `Send + Sync` and safe under concurrent gets and puts.
//! - The backends: [`DirectoryBackend`] (files under a root or a listing, optionally writable
//!   with an LRU size bound), [`MemoryBackend`] (sharded LRU bounded in bytes) and
//!   [`PackBackend`] (a `gfpack` file, see [`pack`]); [`open_backend`] opens one from a
//!   [`BackendConfig`]; [`check_pack`] is the full check of a pack file (for `check-config`).
//! - [`run_cache_process`] is the cache process loop on an attached [`ipc::Region`];
//!   [`run_cache_slot`] attaches the region, opens the backend and runs it in one call (for a
//!   child given a region id); the `gfcache-cache` binary runs one standalone. It counts into its
//!   slot's block of the ipc stats area; [`metrics`] says what each cell means and gives the
//!   schema the supervisor publishes.
//!
//! Paths are GetFile paths. The directory and pack backends hold only canonical paths
//! ([`paths::relative_object_path`]): `/../x`, `//x` or `/a/../x` are simply not found.
//!
//! ```
//! use cache_backends::{BackendConfig, open_backend};
//!
//! let backend = open_backend(&BackendConfig::Memory { capacity: 1 << 20, max_object_size: 1 << 16 })?;
//! let mut fill = backend.put("/hello.txt", 5)?.expect("memory stores small objects");
//! fill.write(b"hello")?;
//! fill.commit()?;
//!
//! let object = backend.get("/hello.txt")?.expect("just stored");
//! let mut buffer = Vec::new();
//! object.copy_to(1, 3, &mut buffer)?;
//! assert_eq!(buffer, b"ell");
//! assert_eq!(backend.stats().hits, 1);
//! # Ok::<(), cache_backends::Error>(())
//! ```
//!
//! `unsafe` code: the crate denies it (`forbid` cannot be lifted locally) and allows it in
//! exactly one function, the read-only `mmap` of a pack file, whose SAFETY comment rests on packs
//! being write-once and on every read through the map being bracketed by checks that the file
//! did not change (docs/pack-format.md).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod directory;
mod memory;
pub mod meta;
pub mod metrics;
pub mod pack;
pub mod paths;
mod process;
mod retained;
pub mod settings;

pub use directory::{DirectoryBackend, DirectoryOptions, FILL_PREFIX};
pub use memory::{MemoryBackend, ENTRY_OVERHEAD, MAX_SHARDS, META_OVERHEAD};
pub use meta::{MetaError, ObjectMeta};
pub use pack::{
    build_pack, build_pack_with, check_pack, verify_pack, BuildOptions, BuildReport, PackBackend,
    VerifyReport,
};
pub use settings::{BackendKind, CacheSettings, DirectorySettings, MemorySettings, PackSettings};

use std::path::PathBuf;
use std::time::Duration;

pub use ipc::{ChunkDest, ObjectVersion};

/// A version from the facts that identify an object's bytes (a file's device, inode, size and
/// change time; a pack entry's offset and checksum...): a 64-bit mix of them, never 0.
pub fn object_version(facts: &[u64]) -> ObjectVersion {
    let mixed = facts.iter().fold(0x9e37_79b9_7f4a_7c15u64, |state, &fact| {
        let mut z = (state ^ fact).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    });
    ObjectVersion::from_raw(mixed.max(1))
}

/// Errors of the backends and the cache process.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on a backend file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A pack file is damaged or of another version.
    #[error("pack {path}: {what}")]
    CorruptPack {
        /// The pack file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A bad backend configuration.
    #[error("invalid backend config: {0}")]
    Config(String),
    /// The ipc layer failed.
    #[error(transparent)]
    Ipc(#[from] ipc::Error),
    /// A proxy sent object metadata that does not decode.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A copy asked for bytes beyond the end of an object.
    #[error("range {offset}+{len} is outside an object of {object_len} bytes")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// The object's length.
        object_len: u64,
    },
    /// A fill wrote more or fewer bytes than it announced.
    #[error("fill of {path}: announced {announced} bytes, got {written}")]
    FillLength {
        /// The object path.
        path: String,
        /// The announced length.
        announced: u64,
        /// The bytes written (so far, when too many).
        written: u64,
    },
    /// The destination buffer refused the bytes (a segment half too small, a closed segment).
    #[error("copy into the destination failed: {0}")]
    Dest(#[source] std::io::Error),
    /// A pack file that group or others may write: a pack must not change while it is served,
    /// so it is refused.
    #[error(
        "pack {path}: mode {mode:04o} lets group or others write it, and a pack must not change \
         while it is served; run `chmod go-w {path}`"
    )]
    PackWritable {
        /// The pack file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The pack file changed on disk (written, truncated, replaced, or its attributes changed)
    /// since it was verified: the transfer or lookup is abandoned and the pack re-verified.
    #[error(
        "pack {path} changed on disk while being served ({how}); not serving from it until it \
         is verified again"
    )]
    PackChanged {
        /// The pack file.
        path: PathBuf,
        /// What changed.
        how: String,
    },
    /// A file was written (or its attributes changed) while its bytes were being copied: the
    /// chunk may mix old and new bytes, so it is not published and the transfer ends short.
    #[error(
        "{path} was written while it was being sent: the transfer is cut short rather than mix \
         two versions (update served files by writing a new file and renaming it over the old)"
    )]
    ChangedMidTransfer {
        /// The file.
        path: PathBuf,
    },
    /// The pack cannot be served now (it did not open or verify when last tried).
    #[error("pack {path} is unavailable: {why}")]
    PackUnavailable {
        /// The pack file.
        path: PathBuf,
        /// Why, as the last attempt to open it said.
        why: String,
    },
}

/// Whether a backend can answer requests now (see [`CacheBackend::refresh`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// It can.
    Ready,
    /// It cannot (its file is damaged, changed or missing); why, naming the file.
    Unavailable(String),
}

/// Counters and sizes of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Objects held.
    pub objects: u64,
    /// Bytes held (for memory: payload, keys and bookkeeping).
    pub bytes: u64,
    /// Byte bound, if any.
    pub capacity: Option<u64>,
    /// `get` calls that found the object.
    pub hits: u64,
    /// `get` calls that did not.
    pub misses: u64,
    /// Objects stored by `put`.
    pub inserts: u64,
    /// Objects evicted.
    pub evictions: u64,
}

/// One object, ready to be copied out in ranges. Holding it keeps its bytes alive (an eviction
/// never frees bytes a transfer is still copying).
pub trait CachedObject: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The version of these bytes: another `get` of the same path (in this process or in another
    /// cache process over the same files) gives the same version only if it has the same bytes,
    /// so the proxy may serve one object in several ranges, each from a separate request. Never
    /// [`ObjectVersion::NONE`] for a backend's own objects. [`object_version`] makes one.
    fn version(&self) -> ObjectVersion;
    /// When these bytes were last modified (a file's mtime, a fill's time), if known: the HTTP
    /// front end's Last-Modified.
    fn modified(&self) -> Option<std::time::SystemTime>;
    /// Its [`ObjectMeta`] in wire form ([`ObjectMeta::encode`]), as the fill stored it or as the
    /// backend makes it up for content put in place (empty: none known).
    fn encoded_meta(&self) -> std::borrow::Cow<'_, [u8]>;
    /// Copies bytes `offset .. offset + len` into `dest` with one copy. On an error, whatever
    /// this call put into `dest` must be discarded (a pack object checks after the copy that
    /// its file did not change meanwhile).
    fn copy_to(&self, offset: u64, len: usize, dest: &mut dyn ChunkDest) -> Result<(), Error>;
    /// Whether holding it after its cache dropped it costs next to nothing (an open file,
    /// not bytes in memory beyond the cache's capacity): only such objects are kept for the
    /// next range of an unfinished transfer once their path changed.
    fn cheap_to_hold(&self) -> bool {
        false
    }
}

/// An origin fill in progress. Dropping it without `commit` discards it.
pub trait Fill: Send {
    /// Appends bytes.
    fn write(&mut self, data: &[u8]) -> Result<(), Error>;
    /// Makes the object visible to `get` (only if exactly the announced length was written).
    fn commit(self: Box<Self>) -> Result<(), Error>;
}

/// A cache backend: directory, memory or pack. Safe under concurrent gets and puts.
pub trait CacheBackend: Send + Sync {
    /// "directory", "memory" or "pack".
    fn kind(&self) -> &'static str;
    /// The object at `path` (a GetFile path, starting with '/'), if held.
    fn get(&self, path: &str) -> Result<Option<Box<dyn CachedObject>>, Error>;
    /// Starts storing an object of `len` bytes at `path` with its metadata, if any; `Ok(None)`
    /// declines (read-only, too large). The metadata becomes visible with the object, never
    /// apart.
    fn put_with_meta(
        &self,
        path: &str,
        len: u64,
        meta: Option<&ObjectMeta>,
    ) -> Result<Option<Box<dyn Fill>>, Error>;
    /// [`CacheBackend::put_with_meta`] without metadata.
    fn put(&self, path: &str, len: u64) -> Result<Option<Box<dyn Fill>>, Error> {
        self.put_with_meta(path, len, None)
    }
    /// Replaces the metadata of the object at `path` if it is still version `version` (an
    /// origin's 304 refreshed it); `Ok(false)` when it is not held, is another version, or the
    /// backend's metadata cannot change (read-only content).
    fn update_meta(
        &self,
        path: &str,
        version: ObjectVersion,
        meta: &ObjectMeta,
    ) -> Result<bool, Error> {
        let _ = (path, version, meta);
        Ok(false)
    }
    /// Removes the object at `path`, or with `prefix` every object whose path starts with
    /// `path`; returns how many went. Content put in place (a read-only directory, a pack) is
    /// never removed: 0.
    fn purge(&self, path: &str, prefix: bool) -> Result<u64, Error> {
        let _ = (path, prefix);
        Ok(0)
    }
    /// Current counters.
    fn stats(&self) -> BackendStats;
    /// Re-checks the backend's files and says whether it can answer now. The cache process
    /// calls it every 20 ms and marks its slot Unavailable while it cannot (the proxy then sends
    /// the slot's requests to the origin), so it must be cheap when nothing changed. A backend
    /// that can always answer keeps this default.
    fn refresh(&self) -> Availability {
        Availability::Ready
    }
}

/// Which backend to open, and its settings: the validated form of [`CacheSettings`]
/// ([`CacheSettings::backend_config`]), or built directly by tests and tools.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// Files under a root, or a course-format listing.
    Directory {
        /// The root directory (None with a listing).
        root: Option<PathBuf>,
        /// A `<path> <file>` listing instead of a root.
        content: Option<PathBuf>,
        /// Store fills under the root.
        writable: bool,
        /// Byte bound for a writable root (LRU eviction of stored files).
        max_size: Option<u64>,
        /// Freshness of the files put in place (`None`: never stale).
        ttl: Option<Duration>,
    },
    /// In-memory LRU.
    Memory {
        /// Byte bound (payload, keys and bookkeeping).
        capacity: u64,
        /// Larger objects are not stored.
        max_object_size: u64,
    },
    /// A pack file made by gfpack.
    Pack {
        /// The pack file.
        path: PathBuf,
    },
}

/// Opens a backend for a cache process. A pack is opened with
/// [`PackBackend::open_for_serving`], which does not fail on the file's contents: a pack that
/// is missing, damaged or writable by others leaves the backend Unavailable (and its cache
/// process up) until the file is fixed, so that a bad pack never crash-loops its cache. Use
/// [`check_pack`] to refuse such a pack up front.
pub fn open_backend(config: &BackendConfig) -> Result<Box<dyn CacheBackend>, Error> {
    match config {
        BackendConfig::Directory {
            root,
            content,
            writable,
            max_size,
            ttl,
        } => {
            let options = DirectoryOptions {
                writable: *writable,
                max_size: *max_size,
                ttl: *ttl,
            };
            let backend = match (root, content) {
                (Some(root), None) => DirectoryBackend::open(root, options)?,
                (None, Some(listing)) if !writable && max_size.is_none() => {
                    DirectoryBackend::open_listing(listing, *ttl)?
                }
                (None, Some(_)) => {
                    return Err(Error::Config(
                        "a directory listing (content) is read-only: writable and max_size \
                         need a root"
                            .into(),
                    ))
                }
                _ => {
                    return Err(Error::Config(
                        "a directory backend needs exactly one of root and content".into(),
                    ))
                }
            };
            Ok(Box::new(backend))
        }
        BackendConfig::Memory {
            capacity,
            max_object_size,
        } => Ok(Box::new(MemoryBackend::new(*capacity, *max_object_size)?)),
        BackendConfig::Pack { path } => Ok(Box::new(PackBackend::open_for_serving(path))),
    }
}

/// What one cache process runs with: its slot and drain limit (decided by whoever starts it)
/// and the worker settings of its [`CacheSettings`].
#[derive(Clone, Debug)]
pub struct CacheProcessConfig {
    /// The slot this process serves.
    pub slot: ipc::CacheSlot,
    /// Worker threads.
    pub workers: usize,
    /// How long a worker waits for the proxy (room, data) before aborting a transfer.
    pub transfer_timeout: Duration,
    /// On SIGTERM, how long in-flight transfers may take before they are aborted.
    pub shutdown_timeout: Duration,
}

impl CacheProcessConfig {
    /// The config of the process serving `slot` with `settings`.
    pub fn new(slot: ipc::CacheSlot, settings: &CacheSettings, shutdown_timeout: Duration) -> Self {
        CacheProcessConfig {
            slot,
            workers: settings.workers,
            transfer_timeout: settings.transfer_timeout,
            shutdown_timeout,
        }
    }
}

/// Runs a cache process on an attached region until `stop` is set (the caller wires
/// SIGTERM/SIGINT to it):
/// marks the slot Starting, opens nothing itself (the backend is given), marks it Ready, serves
/// its slot's requests with `workers` threads, copies the backend stats into the stats area,
/// then drains and marks the slot Down. Returns Ok after a clean drain.
///
/// Draining: once `stop` is set, no new request is taken (requests already queued for the slot
/// are answered error / declined at once); transfers in flight may finish until
/// `config.shutdown_timeout`, after which every transfer this process takes part in is aborted
/// with [`ipc::Region::abort_transfers_of`] and the workers release their segments. A test that
/// runs a proxy side in the same process should therefore let transfers finish before the
/// deadline. docs/backends.md describes the loop.
pub fn run_cache_process(
    region: &ipc::Region,
    backend: &dyn CacheBackend,
    config: &CacheProcessConfig,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    process::run(region, backend, config, stop)
}

/// A cache slot in one call: attaches the region `region_id`, opens the backend and runs
/// [`run_cache_process`] until `stop` is set. The caller wires SIGTERM/SIGINT to `stop`.
pub fn run_cache_slot(
    region_id: ipc::RegionId,
    backend: &BackendConfig,
    config: &CacheProcessConfig,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    let region = ipc::Region::attach(region_id)?;
    let backend = open_backend(backend)?;
    run_cache_process(&region, backend.as_ref(), config, stop)
}

/// Copies a whole object to `out` through a bounded buffer (for tools such as `gfpack get`).
pub fn write_object(object: &dyn CachedObject, out: &mut dyn std::io::Write) -> Result<(), Error> {
    const STEP: u64 = 1 << 20;
    let mut buffer = Vec::with_capacity(STEP as usize);
    let mut offset = 0;
    while offset < object.len() {
        let step = (object.len() - offset).min(STEP) as usize;
        buffer.clear();
        object.copy_to(offset, step, &mut buffer)?;
        out.write_all(&buffer).map_err(Error::Dest)?;
        offset += step as u64;
    }
    Ok(())
}
