//! System V shared memory and the gfcache segment protocol.
//!
//! API CONTRACT SKELETON — the public surface below is what proxy-core, cache-backends and
//! supervisor code against. The ipc implementer fills in the bodies (and private modules) and may
//! add items; changing a signature here must be agreed with the lead.
//!
//! Overview (see docs/ipc.md for the byte layout and the state machine):
//! - [`Region`]: one SysV shm object created `IPC_PRIVATE`, mode 0600, marked for removal at once
//!   (so it can never outlive its processes), attached by id ([`RegionId`]) by the children.
//!   It holds a control header, `segments` segment headers + data areas, the per-member state
//!   table and the stats area.
//! - Proxy side: [`Region::acquire`] a [`Lease`] on a free segment, then [`Lease::get`] or
//!   [`Lease::put`] for cache slot k.
//! - Cache side: [`Region::next_request`] for slot k gives a [`CacheRequest`].
//! - Hand-offs are futexes on 32-bit words inside the region, each wait with a timeout.
//! - [`Ledger`]: the run directory's lock and the record of created objects, and [`sweep`].
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Ids and indices

/// A SysV shared memory id (`shmid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmId(i32);
impl ShmId {
    /// Wraps a raw id.
    pub fn from_raw(raw: i32) -> Self {
        ShmId(raw)
    }
    /// The raw id.
    pub fn as_raw(self) -> i32 {
        self.0
    }
}

/// Index of a segment in the region, `0..segments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentIndex(u32);
impl SegmentIndex {
    /// Wraps a raw index.
    pub fn from_raw(raw: u32) -> Self {
        SegmentIndex(raw)
    }
    /// The raw index.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// The generation of one use of a segment; bumped on every acquire. Fences late peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation(u32);
impl Generation {
    /// Wraps a raw generation.
    pub fn from_raw(raw: u32) -> Self {
        Generation(raw)
    }
    /// The raw generation.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A cache process slot, `0..cache_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheSlot(u32);
impl CacheSlot {
    /// Wraps a raw slot number.
    pub fn from_raw(raw: u32) -> Self {
        CacheSlot(raw)
    }
    /// The raw slot number.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A proxy process slot, `0..proxy_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxySlot(u32);
impl ProxySlot {
    /// Wraps a raw slot number.
    pub fn from_raw(raw: u32) -> Self {
        ProxySlot(raw)
    }
    /// The raw slot number.
    pub fn as_raw(self) -> u32 {
        self.0
    }
}

/// A request id, unique within a region's life (a counter in the control header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);
impl RequestId {
    /// Wraps a raw id.
    pub fn from_raw(raw: u64) -> Self {
        RequestId(raw)
    }
    /// The raw id.
    pub fn as_raw(self) -> u64 {
        self.0
    }
}

/// What a child needs to attach the region: the shm id plus a random nonce stored in the header,
/// so that a reused shm id is never mistaken for ours. Text form `"<shmid>.<nonce-hex>"`
/// (`Display` / `FromStr`), for command lines and environment variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionId {
    /// The shm id.
    pub shm: ShmId,
    /// The nonce written in the control header at creation.
    pub nonce: u64,
}

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:016x}", self.shm.as_raw(), self.nonce)
    }
}

impl std::str::FromStr for RegionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadRegion(format!("{s:?} is not a region id (<shmid>.<nonce-hex>)"));
        let (id, nonce) = s.split_once('.').ok_or_else(bad)?;
        Ok(RegionId {
            shm: ShmId::from_raw(id.parse().map_err(|_| bad())?),
            nonce: u64::from_str_radix(nonce, 16).map_err(|_| bad())?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

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
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest path a segment header carries (GETFILE.md's limit).
pub const MAX_PATH_LEN: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The region

/// Sizes of a region, fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionConfig {
    /// Number of segments (>= 1).
    pub segments: u32,
    /// Data bytes per segment (even, >= 8 KiB, multiple of 4096); each half is one chunk.
    pub segment_size: usize,
    /// Number of cache slots (>= 1).
    pub cache_slots: u32,
    /// Number of proxy slots (>= 1).
    pub proxy_slots: u32,
}

/// A member of a run: who owns a stats block and a state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Member {
    /// A proxy process.
    Proxy(ProxySlot),
    /// A cache process.
    Cache(CacheSlot),
}

/// The state of a member, in its state word. Children write Starting/Ready/Draining; the
/// supervisor writes Down and Quarantined. The proxy routes only to Ready caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Not running.
    Down,
    /// Started, not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Finishing in-flight work before exit.
    Draining,
    /// Crash-looped; left down until revived.
    Quarantined,
}

/// Segment counts by state, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    /// In the free pool.
    pub free: u32,
    /// In a transfer.
    pub busy: u32,
    /// Waiting for a timed-out peer to answer or be reclaimed.
    pub quarantined: u32,
}

/// An attached region. `Send + Sync`: share it with `Arc`.
pub struct Region {
    _private: (),
}

impl Region {
    /// Creates a region: `shmget(IPC_PRIVATE, 0600)`, attach, write the header, `IPC_RMID` at
    /// once. If `ledger` is given the object is recorded there before `IPC_RMID`.
    pub fn create(_config: &RegionConfig, _ledger: Option<&mut Ledger>) -> Result<Region> {
        todo!()
    }
    /// Attaches an existing region and checks magic, version, nonce and sizes.
    pub fn attach(_id: RegionId) -> Result<Region> {
        todo!()
    }
    /// The id children attach with.
    pub fn id(&self) -> RegionId {
        todo!()
    }
    /// The sizes it was created with.
    pub fn config(&self) -> RegionConfig {
        todo!()
    }

    // -- proxy side --

    /// Takes a free segment out of the pool, waiting up to `timeout` for one.
    pub fn acquire(&self, _timeout: Duration) -> Result<Lease<'_>> {
        todo!()
    }

    // -- cache side --

    /// Claims the oldest pending request for `slot`, waiting up to `timeout`.
    /// `Ok(None)` on timeout, so that a worker loop can check for shutdown.
    pub fn next_request(&self, _slot: CacheSlot, _timeout: Duration) -> Result<Option<CacheRequest<'_>>> {
        todo!()
    }

    // -- members, supervisor side --

    /// The state word of a member.
    pub fn member_state(&self, _member: Member) -> MemberState {
        todo!()
    }
    /// Sets the state word of a member (and its pid, 0 for none); wakes nothing.
    pub fn set_member_state(&self, _member: Member, _state: MemberState, _pid: i32) {
        todo!()
    }
    /// The pid recorded with the member's state.
    pub fn member_pid(&self, _member: Member) -> i32 {
        todo!()
    }
    /// Returns every segment that process `pid` (known dead) was part of to the pool, or frees it
    /// from that side. Returns how many segments it touched.
    pub fn reclaim_dead(&self, _pid: i32) -> usize {
        todo!()
    }
    /// Segment counts by state.
    pub fn segment_counts(&self) -> SegmentCounts {
        todo!()
    }

    // -- stats --

    /// The stats block of a member, for writing.
    pub fn stats(&self, _member: Member) -> StatsBlock<'_> {
        todo!()
    }
    /// A consistent-enough copy of a member's stats.
    pub fn stats_snapshot(&self, _member: Member) -> StatsSnapshot {
        todo!()
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy side

/// A segment taken from the pool by a proxy. Dropping it returns it to the pool.
pub struct Lease<'r> {
    _region: &'r Region,
}

impl<'r> Lease<'r> {
    /// The segment this lease holds.
    pub fn segment(&self) -> SegmentIndex {
        todo!()
    }
    /// Asks cache `slot` for `path` and waits up to `timeout` for its answer (the status and the
    /// first chunk). On timeout the segment is quarantined and `Error::Timeout` returned.
    pub fn get(self, _slot: CacheSlot, _path: &str, _timeout: Duration) -> Result<GetStream<'r>> {
        todo!()
    }
    /// Offers cache `slot` a fill of `len` bytes for `path`. Returns at once; the cache's
    /// answer arrives through the stream (`Error::Declined` from `write` or `finish`).
    pub fn put(self, _slot: CacheSlot, _path: &str, _len: u64) -> Result<PutStream<'r>> {
        todo!()
    }
}

/// What the cache answered to a GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Found; this many bytes follow.
    Found {
        /// Total length.
        len: u64,
    },
    /// Not in this cache.
    NotFound,
    /// The cache failed (I/O error, corrupt object...).
    Error,
}

/// The reading end of a GET. Dropping it before the end aborts the transfer and frees (or
/// quarantines) the segment at once.
pub struct GetStream<'r> {
    _region: &'r Region,
}

impl<'r> GetStream<'r> {
    /// The cache's answer.
    pub fn lookup(&self) -> Lookup {
        todo!()
    }
    /// The next chunk, waiting up to `timeout`; `Ok(None)` after the last byte.
    pub fn next_chunk(&mut self, _timeout: Duration) -> Result<Option<Chunk<'_>>> {
        todo!()
    }
}

/// A published chunk in shared memory, readable until dropped (drop hands the half back to the
/// producer). No `&[u8]` to it is handed out: the bytes leave by syscall or by copy.
pub struct Chunk<'s> {
    _stream: std::marker::PhantomData<&'s ()>,
}

impl Chunk<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        todo!()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes the whole chunk to `fd` with write(2) straight from shared memory (loops on short
    /// writes and EINTR; EAGAIN from a send timeout is an error).
    pub fn write_all_to(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
        todo!()
    }
    /// Appends a copy of the chunk to `out`.
    pub fn append_to(&self, _out: &mut Vec<u8>) {
        todo!()
    }
}

/// The writing end of a PUT (proxy to cache). Dropping it without `finish` aborts the fill.
pub struct PutStream<'r> {
    _region: &'r Region,
}

impl PutStream<'_> {
    /// Copies `data` into the segment, publishing full halves; waits up to `timeout` for room.
    /// `Error::Declined` once the cache declined; `Error::Timeout` if the cache is too slow
    /// (the caller should drop the fill).
    pub fn write(&mut self, _data: &[u8], _timeout: Duration) -> Result<()> {
        todo!()
    }
    /// Publishes the rest and waits up to `timeout` for the cache to store it.
    /// Fails unless exactly `len` bytes were written.
    pub fn finish(self, _timeout: Duration) -> Result<()> {
        todo!()
    }
}

// ---------------------------------------------------------------------------------------------
// Cache side

/// A destination for object bytes that is not a Rust slice: a segment half in shared memory, or
/// a plain `Vec<u8>` in tests and benchmarks. Backends copy into it with one copy.
pub trait ChunkDest {
    /// Bytes that still fit.
    fn remaining(&self) -> usize;
    /// Appends `src` (`src.len() <= remaining()`, else `io::ErrorKind::InvalidInput`).
    fn put_slice(&mut self, src: &[u8]) -> io::Result<()>;
    /// Appends `len` bytes read from `file` at `offset` with pread(2); a short read is
    /// `io::ErrorKind::UnexpectedEof`.
    fn put_file_range(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()>;
}

impl ChunkDest for Vec<u8> {
    fn remaining(&self) -> usize {
        usize::MAX - self.len()
    }
    fn put_slice(&mut self, src: &[u8]) -> io::Result<()> {
        self.extend_from_slice(src);
        Ok(())
    }
    fn put_file_range(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let start = self.len();
        self.resize(start + len, 0);
        file.read_exact_at(&mut self[start..], offset)
    }
}

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send the object.
    Get,
    /// Store an object of this length.
    Put {
        /// Announced length.
        len: u64,
    },
}

/// A request claimed by a cache worker. Dropping it unanswered answers `Lookup::Error` (GET) or
/// declines (PUT).
pub struct CacheRequest<'r> {
    _region: &'r Region,
}

impl<'r> CacheRequest<'r> {
    /// GET or PUT.
    pub fn op(&self) -> Op {
        todo!()
    }
    /// The path, copied out of the header and checked (starts with '/', UTF-8, <= MAX_PATH_LEN).
    pub fn path(&self) -> &str {
        todo!()
    }
    /// The request id.
    pub fn id(&self) -> RequestId {
        todo!()
    }
    /// Answers a GET: not here.
    pub fn not_found(self) -> Result<()> {
        todo!()
    }
    /// Answers a GET: failed.
    pub fn error(self) -> Result<()> {
        todo!()
    }
    /// Answers a GET: found, `len` bytes will follow through the returned writer.
    pub fn found(self, _len: u64) -> Result<GetWriter<'r>> {
        todo!()
    }
    /// Answers a PUT: declined.
    pub fn decline(self) -> Result<()> {
        todo!()
    }
    /// Answers a PUT: accepted; read the bytes through the returned reader.
    pub fn accept(self) -> Result<PutReader<'r>> {
        todo!()
    }
}

/// The writing end of a GET on the cache side. Dropping it before `finish` aborts.
pub struct GetWriter<'r> {
    _region: &'r Region,
}

impl<'r> GetWriter<'r> {
    /// Bytes one chunk holds (half the segment).
    pub fn chunk_capacity(&self) -> usize {
        todo!()
    }
    /// Waits up to `timeout` for a free half and returns it to fill. `Error::Aborted` if the
    /// proxy went away.
    pub fn next_buf(&mut self, _timeout: Duration) -> Result<ChunkBuf<'_>> {
        todo!()
    }
    /// Checks that exactly the announced length was published and marks the cache side done.
    pub fn finish(self) -> Result<()> {
        todo!()
    }
}

/// A half of a segment being filled. `publish` hands it to the proxy; dropping it unpublished
/// publishes nothing.
pub struct ChunkBuf<'w> {
    _writer: std::marker::PhantomData<&'w ()>,
}

impl ChunkBuf<'_> {
    /// Hands the bytes written so far to the proxy.
    pub fn publish(self) -> Result<()> {
        todo!()
    }
}

impl ChunkDest for ChunkBuf<'_> {
    fn remaining(&self) -> usize {
        todo!()
    }
    fn put_slice(&mut self, _src: &[u8]) -> io::Result<()> {
        todo!()
    }
    fn put_file_range(&mut self, _file: &File, _offset: u64, _len: usize) -> io::Result<()> {
        todo!()
    }
}

/// The reading end of a PUT on the cache side.
pub struct PutReader<'r> {
    _region: &'r Region,
}

impl PutReader<'_> {
    /// The announced length.
    pub fn len(&self) -> u64 {
        todo!()
    }
    /// Whether the announced length is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The next chunk, waiting up to `timeout`; `Ok(None)` after the last byte.
    pub fn next_chunk(&mut self, _timeout: Duration) -> Result<Option<Chunk<'_>>> {
        todo!()
    }
    /// Tells the proxy whether the object was stored, and marks the cache side done.
    pub fn complete(self, _stored: bool) -> Result<()> {
        todo!()
    }
}

// ---------------------------------------------------------------------------------------------
// Stats

/// Monotonic counters, one set per member. Unused ones stay 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counter {
    /// Proxy: responses OK.
    RequestsOk,
    /// Proxy: responses FILE_NOT_FOUND.
    RequestsNotFound,
    /// Proxy: responses ERROR.
    RequestsError,
    /// Proxy: responses INVALID.
    RequestsInvalid,
    /// Proxy: connections closed after an OK header (short body).
    RequestsAborted,
    /// Proxy: cache lookups answered found.
    LookupHits,
    /// Proxy: cache lookups answered not found.
    LookupMisses,
    /// Proxy: cache lookups that failed or timed out, or skipped a down cache.
    LookupErrors,
    /// Proxy: origin fetches answered 200.
    OriginOk,
    /// Proxy: origin fetches answered 404/410.
    OriginNotFound,
    /// Proxy: origin fetches that failed.
    OriginError,
    /// Proxy: requests served by the origin because their cache was down or failed.
    Fallbacks,
    /// Proxy: requests that waited on another request's origin fetch.
    Collapsed,
    /// Proxy: body bytes sent to clients.
    ResponseBytes,
    /// Proxy: fills committed by the cache.
    FillsStored,
    /// Proxy: fills dropped (declined, too slow, too large, failed).
    FillsDropped,
    /// Cache: GETs served found.
    CacheHits,
    /// Cache: GETs answered not found.
    CacheMisses,
    /// Cache: GETs or PUTs that failed.
    CacheErrors,
    /// Cache: body bytes copied into segments.
    CacheBytesOut,
    /// Cache: PUTs stored.
    CachePutsStored,
}

/// Values set, not added (backend sizes, copied from the backend's stats periodically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Gauge {
    /// Backend: objects held.
    BackendObjects,
    /// Backend: bytes held.
    BackendBytes,
    /// Backend: capacity in bytes (0 = unbounded).
    BackendCapacity,
    /// Backend: evictions since the backend opened.
    BackendEvictions,
    /// Backend: inserts since the backend opened.
    BackendInserts,
    /// Requests in flight in this member.
    InFlight,
}

/// Latency histograms (fixed buckets, [`HISTOGRAM_BOUNDS_SECONDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Histogram {
    /// Proxy: whole request, served from a cache.
    RequestHit,
    /// Proxy: whole request, served from the origin.
    RequestMiss,
    /// Proxy: whole request, not found.
    RequestNotFound,
    /// Proxy: whole request, ERROR / INVALID / aborted.
    RequestFailed,
}

/// Upper bounds of the histogram buckets in seconds (the `+Inf` bucket is implied).
pub const HISTOGRAM_BOUNDS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Writing handle on one member's stats block (relaxed atomics, no locks).
pub struct StatsBlock<'r> {
    _region: &'r Region,
}

impl StatsBlock<'_> {
    /// Adds to a counter.
    pub fn add(&self, _counter: Counter, _n: u64) {
        todo!()
    }
    /// Sets a gauge.
    pub fn set(&self, _gauge: Gauge, _value: u64) {
        todo!()
    }
    /// Records one observation.
    pub fn observe(&self, _histogram: Histogram, _elapsed: Duration) {
        todo!()
    }
}

/// A copy of one member's stats.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    _private: (),
}

/// A copy of one histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Non-cumulative count per bucket, one per bound in [`HISTOGRAM_BOUNDS_SECONDS`] plus `+Inf`.
    pub buckets: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
}

impl StatsSnapshot {
    /// A counter's value.
    pub fn counter(&self, _counter: Counter) -> u64 {
        todo!()
    }
    /// A gauge's value.
    pub fn gauge(&self, _gauge: Gauge) -> u64 {
        todo!()
    }
    /// A histogram's value.
    pub fn histogram(&self, _histogram: Histogram) -> HistogramSnapshot {
        todo!()
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger

/// The kinds of SysV object a ledger records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpcKind {
    /// Shared memory.
    Shm,
    /// Message queue.
    MsgQueue,
    /// Semaphore set.
    SemSet,
}

/// One recorded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Its kind.
    pub kind: IpcKind,
    /// Its raw id.
    pub id: i32,
    /// The pid that created it (the kernel's cpid / sem creator check).
    pub creator_pid: i32,
    /// Its creation time as the kernel reports it (shm_ctime etc.), seconds since the epoch.
    pub created: i64,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects removed.
    pub removed: Vec<LedgerEntry>,
    /// Entries skipped because the id is gone or now names another object.
    pub skipped: Vec<LedgerEntry>,
}

/// The run directory's lock (flock on `run_dir/lock`, holding our pid) and ledger
/// (`run_dir/ledger`). Held for the life of the owner; `close` removes the ledger file.
pub struct Ledger {
    _private: (),
}

impl Ledger {
    /// Creates `run_dir` if needed and takes its lock without blocking; `Error::RunDirLocked` if
    /// a live process holds it. Does not sweep: call [`sweep`] first.
    pub fn open(_run_dir: &Path) -> Result<Ledger> {
        todo!()
    }
    /// Records an object (appended and fsynced before returning).
    pub fn record(&mut self, _kind: IpcKind, _id: i32) -> Result<()> {
        todo!()
    }
    /// The entries recorded so far.
    pub fn entries(&self) -> &[LedgerEntry] {
        todo!()
    }
    /// Removes every recorded object that still exists and is ours, deletes the ledger file
    /// and releases the lock.
    pub fn close(self) -> Result<SweepReport> {
        todo!()
    }
}

/// If no live process holds `run_dir`'s lock, removes the objects its ledger lists (each only if
/// it is still the recorded one: same creator pid and creation time) and deletes the ledger.
/// `Error::RunDirLocked` while the owner lives.
pub fn sweep(_run_dir: &Path) -> Result<SweepReport> {
    todo!()
}

/// The pid holding `run_dir`'s lock, if any process holds it.
pub fn lock_holder(_run_dir: &Path) -> Result<Option<i32>> {
    todo!()
}
