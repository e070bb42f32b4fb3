//! System V shared memory and the gfcache segment protocol.
//!
//! Everything the proxy, the caches and the supervisor share lives in one SysV shared memory
//! object, the [`Region`]; every hand-off is a futex on a 32-bit word inside it, each wait with a
//! timeout (a waiter polls for up to about 50 us, spinning then yielding, before it sleeps).
//! There are no message queues and no semaphore sets (docs/ipc.md explains why).
//!
//! - [`Region`]: created by the supervisor with `shmget(IPC_PRIVATE, 0600)`, attached, and marked
//!   for removal (`IPC_RMID`) at once, so the kernel frees it when the last process detaches,
//!   even if every process is SIGKILLed. Children attach it by [`RegionId`] (shm id plus a nonce
//!   checked against the header, since the kernel reuses ids). It holds a control header, one
//!   request channel per cache slot, the member table ([`MemberState`] per slot), the stats area
//!   and `segments` segments (header with the path, plus two data halves).
//! - Proxy side: [`Region::acquire`] a [`Lease`] on a free segment, then [`Lease::get`] (read the
//!   object as [`Chunk`]s from a [`GetStream`]) or [`Lease::put`] (write it through a
//!   [`PutStream`]) for cache slot k.
//! - Cache side: [`Region::next_request`] for slot k gives a [`CacheRequest`]; answer a GET with
//!   [`CacheRequest::found`] and fill [`ChunkBuf`]s from a [`GetWriter`], or accept a PUT and read
//!   it from a [`PutReader`]. The producer fills one half while the consumer drains the other.
//! - Failures: every wait has a timeout; a side that times out or goes away sets an abort flag,
//!   and the segment stays quarantined until the peer answers or the supervisor calls
//!   [`Region::reclaim_dead`] with the dead peer's pid. A generation per use fences late peers.
//! - Stats: [`Region::stats`] gives a lock-free [`StatsBlock`] per [`Member`]; the supervisor reads
//!   [`Region::stats_snapshot`]. The blocks are indexed by slot, so counters survive restarts.
//!   A block holds [`COUNTER_SLOTS`] counters, [`GAUGE_SLOTS`] gauges and [`HISTOGRAM_SLOTS`]
//!   histograms, addressed by [`CounterId`], [`GaugeId`] and [`HistogramId`]; ipc names none of
//!   them. The owner of a block describes its cells with a [`Family`] schema.
//! - [`Ledger`]: the run directory's lock file (flock, held while the owner lives) and the record
//!   of created objects; [`sweep`] removes what a dead owner left, checking each object is still
//!   the recorded one. With the region `IPC_RMID`'d at creation the sweep normally finds nothing
//!   to do; it exists for any object that cannot be (see [`IpcObject`]).
//!
//! Who removes what: the region is removed by the kernel after the last detach (nothing to do,
//! nothing survives a crash); the ledger file is deleted by [`Ledger::close`] or by [`sweep`].
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use ipc::{CacheSlot, ChunkDest, Lookup, Region, RegionConfig};
//!
//! let config = RegionConfig { segments: 2, segment_size: 64 * 1024, cache_slots: 1, proxy_slots: 1 };
//! let region = Arc::new(Region::create(&config, None)?);
//! let timeout = Duration::from_secs(5);
//!
//! // A cache worker (normally another process that called Region::attach(region.id())).
//! let cache = {
//!     let region = Arc::clone(&region);
//!     std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!         let request = loop {
//!             if let Some(request) = region.next_request(CacheSlot::from_raw(0), timeout)? {
//!                 break request;
//!             }
//!         };
//!         assert_eq!(request.path(), "/hello");
//!         let mut writer = request.found(5)?;
//!         let mut buf = writer.next_buf(timeout)?;
//!         buf.put_slice(b"world")?;
//!         buf.publish()?;
//!         writer.finish()?;
//!         Ok(())
//!     })
//! };
//!
//! let mut stream = region.acquire(timeout)?.get(CacheSlot::from_raw(0), "/hello", timeout)?;
//! assert_eq!(stream.lookup(), Lookup::Found { len: 5 });
//! let mut body = Vec::new();
//! while let Some(chunk) = stream.next_chunk(timeout)? {
//!     chunk.append_to(&mut body);
//! }
//! assert_eq!(body, b"world");
//! cache.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! ```
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
mod futex;
mod ids;
mod ledger;
mod region;
mod schema;
mod segment;
mod stats;
mod sys;
#[doc(hidden)]
pub mod testkit;

// The public interface is:
pub use error::{Error, Result};
pub use ids::{
    ByteRange, CacheSlot, Generation, ObjectVersion, ProxySlot, RegionId, RequestId, SegmentIndex,
    ShmId,
};
pub use ledger::{
    lock_holder, object_info, sweep, IpcKind, IpcObject, Ledger, LedgerEntry, ObjectInfo,
    SweepReport,
};
pub use region::{
    Member, MemberState, Region, RegionConfig, SegmentCounts, MAX_SEGMENTS, MAX_SEGMENT_SIZE,
    MAX_SLOTS, MIN_SEGMENT_SIZE,
};
pub use schema::{schema_is_consistent, Cell, Family, Label, LabelValue, MetricKind, Series};
pub use segment::{
    CacheRequest, Chunk, ChunkBuf, ChunkDest, GetStream, GetWriter, Lease, Lookup, Op, PutReader,
    PutStream,
};
pub use stats::{
    CounterId, GaugeId, HistogramId, HistogramSnapshot, StatsBlock, StatsIndexError, StatsSnapshot,
    COUNTER_SLOTS, GAUGE_SLOTS, HISTOGRAM_BOUNDS_SECONDS, HISTOGRAM_SLOTS,
};

/// Longest path a segment header carries (GETFILE.md's limit).
pub const MAX_PATH_LEN: usize = 4096;

/// Most bytes of object metadata a segment header carries beside a GET answer, a PUT or an
/// UPDATE. ipc gives them no meaning: the cache backends and the proxy do.
pub const MAX_META_LEN: usize = 2048;
