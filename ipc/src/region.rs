//! The region: one SysV shared memory object holding the control header, the request channels,
//! the member table, the stats area, the segment headers and the segment data.
//!
//! Every structure placed in shared memory is made of atomics only, so that a `&T` to it is
//! sound however other processes write it; the bulk bytes (paths, chunk data) are reached only
//! through raw pointers, copied in and out.

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::futex::Doorbell;
use crate::ids::{RegionId, ShmId};
use crate::ledger::{IpcKind, Ledger};
use crate::stats::StatsArea;
use crate::{sys, Error, Result};

/// "GFCACHE1" as a little-endian u64: the first word of every region.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"GFCACHE1");
/// Layout version; bumped on any change of the byte layout.
pub(crate) const VERSION: u32 = 5;
/// Bytes of the control header (one page).
pub(crate) const CONTROL_BYTES: usize = 4096;
/// Bytes of one request channel / member entry (one cache line each, no false sharing).
pub(crate) const LINE: usize = 64;
/// Bytes of one member's stats block.
pub(crate) const STATS_BLOCK_BYTES: usize = 2048;
/// Bytes of one segment header: one page of atomics, one page for the path.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 8192;
/// Offset of the path bytes inside a segment header.
pub(crate) const PATH_OFFSET: usize = 4096;
/// Where a segment header's object metadata starts (`MAX_META_LEN` bytes, up to the path).
pub(crate) const META_OFFSET: usize = 2048;
const PAGE: usize = 4096;

/// Limits on a configuration (keep the region a sane size and every count in 32 bits).
/// The most segments a region holds.
pub const MAX_SEGMENTS: u32 = 4096;
/// The most slots of each kind a region holds.
pub const MAX_SLOTS: u32 = 1024;
/// The smallest segment.
pub const MIN_SEGMENT_SIZE: usize = 8192;
/// The largest segment.
pub const MAX_SEGMENT_SIZE: usize = 1 << 30;

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

impl RegionConfig {
    /// Checks the limits (1..=4096 segments of 8 KiB..=1 GiB in multiples of 4096, 1..=1024 slots
    /// of each kind).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if self.segments == 0 || self.segments > MAX_SEGMENTS {
            return bad(format!("segments = {} (1..={MAX_SEGMENTS})", self.segments));
        }
        if self.segment_size < MIN_SEGMENT_SIZE
            || self.segment_size > MAX_SEGMENT_SIZE
            || !self.segment_size.is_multiple_of(PAGE)
        {
            return bad(format!(
                "segment_size = {} (a multiple of 4096 from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE})",
                self.segment_size
            ));
        }
        if self.cache_slots == 0 || self.cache_slots > MAX_SLOTS {
            return bad(format!(
                "cache_slots = {} (1..={MAX_SLOTS})",
                self.cache_slots
            ));
        }
        if self.proxy_slots == 0 || self.proxy_slots > MAX_SLOTS {
            return bad(format!(
                "proxy_slots = {} (1..={MAX_SLOTS})",
                self.proxy_slots
            ));
        }
        Layout::of(self).map(drop)
    }

    /// Bytes of shared memory a region of this configuration takes.
    pub fn region_bytes(&self) -> Result<usize> {
        self.validate()?;
        Layout::of(self).map(|layout| layout.total)
    }
}

/// A member of a run: who owns a stats block and a state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Member {
    /// A proxy process.
    Proxy(crate::ProxySlot),
    /// A cache process.
    Cache(crate::CacheSlot),
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
    /// Alive, but cannot answer (for example its backend's data is damaged): send its requests
    /// elsewhere. The member leaves this state by itself when it can answer again.
    Unavailable,
}

impl MemberState {
    fn to_word(self) -> u32 {
        match self {
            MemberState::Down => 0,
            MemberState::Starting => 1,
            MemberState::Ready => 2,
            MemberState::Draining => 3,
            MemberState::Quarantined => 4,
            MemberState::Unavailable => 5,
        }
    }
    /// Unknown words read as `Down`: the proxy then routes nothing to that member.
    fn from_word(word: u32) -> MemberState {
        match word {
            1 => MemberState::Starting,
            2 => MemberState::Ready,
            3 => MemberState::Draining,
            4 => MemberState::Quarantined,
            5 => MemberState::Unavailable,
            _ => MemberState::Down,
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Structures in shared memory

/// One cache line.
#[repr(C, align(64))]
pub(crate) struct Line<T>(pub T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The identity part of the control header, written once by the creator.
#[repr(C)]
pub(crate) struct Identity {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub control_bytes: AtomicU32,
    pub segments: AtomicU32,
    pub cache_slots: AtomicU32,
    pub proxy_slots: AtomicU32,
    pub creator_pid: AtomicI32,
    pub segment_size: AtomicU64,
    pub total_bytes: AtomicU64,
    pub nonce: AtomicU64,
}

/// The control header at offset 0.
#[repr(C)]
pub(crate) struct ControlHeader {
    pub identity: Line<Identity>,
    pub next_request_id: Line<AtomicU64>,
    pub pool: Line<Doorbell>,
    /// Advanced by whoever removed objects from a cache (see [`Region::advance_content_epoch`]).
    pub content_epoch: Line<AtomicU64>,
}

/// The purges that did not reach a member (see [`Region::note_missed_purge`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissedPurges {
    /// Purges counted as missed, ever (wrapping).
    pub missed: u32,
    /// The value of `missed` the member last made up for.
    pub made_up: u32,
}

impl MissedPurges {
    /// Whether a purge was missed since the member last made up for them.
    pub fn outstanding(&self) -> bool {
        self.missed != self.made_up
    }
}

/// A member's entry in the member table.
#[repr(C)]
pub(crate) struct MemberWord {
    pub state: AtomicU32,
    pub pid: AtomicI32,
    pub tag: AtomicU32,
    /// Purges the member was not reached by (counted by whoever purged).
    pub missed_purges: AtomicU32,
    /// How many of `missed_purges` the member has made up for.
    pub made_up_purges: AtomicU32,
}

/// Fields of a request, written by the proxy while it holds the segment Reserved.
#[repr(C)]
pub(crate) struct RequestFields {
    pub request_id: AtomicU64,
    /// PUT: the announced length.
    pub announced_len: AtomicU64,
    /// GET: the length of the object the cache found (the whole object, whatever the range).
    pub total_len: AtomicU64,
    pub op: AtomicU32,
    pub slot: AtomicU32,
    pub path_len: AtomicU32,
    /// The answer (see `segment::Status`).
    pub status: AtomicU32,
    pub proxy_pid: AtomicI32,
    /// GET: the first byte of the object wanted.
    pub range_offset: AtomicU64,
    /// GET: how many bytes from `range_offset` at most (`u64::MAX`: to the end).
    pub range_len: AtomicU64,
}

/// What the cache says of the object it found, beside its length.
#[repr(C)]
pub(crate) struct AnswerFields {
    /// The object's version (see `ipc::ObjectVersion`).
    pub object_version: AtomicU64,
    /// When the object was last modified, in seconds since the Unix epoch; 0 if unknown.
    pub modified_secs: AtomicU64,
    /// Bytes of object metadata at [`META_OFFSET`]: the GET answer's (cache), a PUT's or an
    /// UPDATE's (proxy, while Reserved).
    pub meta_len: AtomicU32,
    /// PURGE: 1 when the path is a prefix.
    pub command_flags: AtomicU32,
}

/// A segment header's atomics (the path follows at [`PATH_OFFSET`]).
#[repr(C)]
pub(crate) struct SegmentHeader {
    /// generation (high 32 bits) | phase, done bits, abort bit, holder pid (low 32 bits).
    pub control: Line<AtomicU64>,
    /// Chunks published by the producer, plus ABORT / FINAL / WAITERS bits.
    pub produced: Line<AtomicU32>,
    /// Chunks released by the consumer, plus ABORT / FINAL / WAITERS bits.
    pub consumed: Line<AtomicU32>,
    pub request: Line<RequestFields>,
    /// Bytes in each half, written by the producer before publishing it.
    pub half_len: Line<[AtomicU32; 2]>,
    pub answer: Line<AnswerFields>,
}

const _: () = assert!(size_of::<ControlHeader>() <= CONTROL_BYTES);
const _: () = assert!(size_of::<Line<Doorbell>>() == LINE);
const _: () = assert!(size_of::<Line<MemberWord>>() == LINE);
const _: () = assert!(size_of::<SegmentHeader>() <= META_OFFSET);
const _: () = assert!(META_OFFSET + crate::MAX_META_LEN <= PATH_OFFSET);
const _: () = assert!(size_of::<RequestFields>() <= LINE);
const _: () = assert!(size_of::<StatsArea>() <= STATS_BLOCK_BYTES);
const _: () = assert!(PATH_OFFSET + crate::MAX_PATH_LEN <= SEGMENT_HEADER_BYTES);

/// Byte offsets of the areas, all page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub requests: usize,
    pub members: usize,
    pub stats: usize,
    pub segment_headers: usize,
    pub data: usize,
    pub total: usize,
}

fn round_to_page(bytes: usize) -> Option<usize> {
    bytes.checked_add(PAGE - 1).map(|b| b / PAGE * PAGE)
}

impl Layout {
    pub(crate) fn of(config: &RegionConfig) -> Result<Layout> {
        let too_big = || Error::InvalidConfig(format!("{config:?} does not fit the address space"));
        let members = (config.cache_slots as usize)
            .checked_add(config.proxy_slots as usize)
            .ok_or_else(too_big)?;
        let area = |count: usize, each: usize| {
            count
                .checked_mul(each)
                .and_then(round_to_page)
                .ok_or_else(too_big)
        };
        let requests = CONTROL_BYTES;
        let member_table = requests
            .checked_add(area(config.cache_slots as usize, LINE)?)
            .ok_or_else(too_big)?;
        let stats = member_table
            .checked_add(area(members, LINE)?)
            .ok_or_else(too_big)?;
        let segment_headers = stats
            .checked_add(area(members, STATS_BLOCK_BYTES)?)
            .ok_or_else(too_big)?;
        let data = segment_headers
            .checked_add(area(config.segments as usize, SEGMENT_HEADER_BYTES)?)
            .ok_or_else(too_big)?;
        let total = data
            .checked_add(area(config.segments as usize, config.segment_size)?)
            .ok_or_else(too_big)?;
        Ok(Layout {
            requests,
            members: member_table,
            stats,
            segment_headers,
            data,
            total,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The region

/// An attached region. `Send + Sync`: share it with `Arc`.
pub struct Region {
    base: NonNull<u8>,
    id: RegionId,
    config: RegionConfig,
    layout: Layout,
    pid: i32,
}

// SAFETY: the mapping is shared memory reached only through atomics and through raw-pointer
// copies whose exclusivity the segment protocol guarantees; nothing in `Region` is tied to the
// thread that attached it.
unsafe impl Send for Region {}
// SAFETY: as above; every `&self` method is safe to call from several threads at once.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a region: `shmget(IPC_PRIVATE, 0600)`, attach, write the header, `IPC_RMID` at
    /// once. If `ledger` is given the object is recorded there before `IPC_RMID`.
    pub fn create(config: &RegionConfig, ledger: Option<&mut Ledger>) -> Result<Region> {
        config.validate()?;
        let layout = Layout::of(config)?;
        let shm = sys::shm_create(layout.total).map_err(Error::os("shmget"))?;
        if let Some(ledger) = ledger {
            if let Err(err) = ledger.record(IpcKind::Shm, shm) {
                remove_quietly(shm);
                return Err(err);
            }
        }
        let base = match sys::shm_attach(shm) {
            Ok(base) => base,
            Err(source) => {
                remove_quietly(shm);
                return Err(Error::Os {
                    op: "shmat",
                    source,
                });
            }
        };
        let pid = current_pid();
        let nonce = loop {
            let nonce = fastrand::u64(..);
            if nonce != 0 {
                break nonce;
            }
        };
        let region = Region {
            base,
            id: RegionId {
                shm: ShmId::from_raw(shm),
                nonce,
            },
            config: *config,
            layout,
            pid,
        };
        // From here on `region`'s Drop detaches.
        sys::shm_remove(shm).map_err(Error::os("shmctl IPC_RMID"))?;
        let identity = &region.control().identity;
        identity.version.store(VERSION, Ordering::Relaxed);
        identity
            .control_bytes
            .store(CONTROL_BYTES as u32, Ordering::Relaxed);
        identity.segments.store(config.segments, Ordering::Relaxed);
        identity
            .cache_slots
            .store(config.cache_slots, Ordering::Relaxed);
        identity
            .proxy_slots
            .store(config.proxy_slots, Ordering::Relaxed);
        identity.creator_pid.store(pid, Ordering::Relaxed);
        identity
            .segment_size
            .store(config.segment_size as u64, Ordering::Relaxed);
        identity
            .total_bytes
            .store(layout.total as u64, Ordering::Relaxed);
        identity.nonce.store(nonce, Ordering::Relaxed);
        region.control().next_request_id.store(1, Ordering::Relaxed);
        identity.magic.store(MAGIC, Ordering::Release);
        tracing::debug!(shm, bytes = layout.total, ?config, "created region");
        Ok(region)
    }

    /// Attaches an existing region and checks magic, version, nonce and sizes.
    pub fn attach(id: RegionId) -> Result<Region> {
        let shm = id.shm.as_raw();
        let bad = |what: String| Error::BadRegion(format!("shm {shm}: {what}"));
        let stat =
            sys::shm_stat(shm).map_err(|source| bad(format!("IPC_STAT failed: {source}")))?;
        if stat.uid != sys::effective_uid() || stat.mode & 0o777 != 0o600 {
            return Err(bad(format!(
                "owned by uid {} with mode {:o}, expected ours with 0600",
                stat.uid,
                stat.mode & 0o777
            )));
        }
        if stat.size < CONTROL_BYTES {
            return Err(bad(format!("{} bytes is too small", stat.size)));
        }
        let base = sys::shm_attach(shm).map_err(Error::os("shmat"))?;
        let placeholder = RegionConfig {
            segments: 0,
            segment_size: 0,
            cache_slots: 0,
            proxy_slots: 0,
        };
        let empty = Layout {
            requests: 0,
            members: 0,
            stats: 0,
            segment_headers: 0,
            data: 0,
            total: CONTROL_BYTES,
        };
        // A region that only knows its control header until the identity is checked; its Drop
        // detaches on every error path below.
        let mut region = Region {
            base,
            id,
            config: placeholder,
            layout: empty,
            pid: current_pid(),
        };
        let identity = &region.control().identity;
        if identity.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("no gfcache magic".into()));
        }
        let version = identity.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(bad(format!("layout version {version}, expected {VERSION}")));
        }
        if identity.nonce.load(Ordering::Relaxed) != id.nonce {
            return Err(bad("nonce mismatch (the id names another region)".into()));
        }
        let config = RegionConfig {
            segments: identity.segments.load(Ordering::Relaxed),
            segment_size: usize::try_from(identity.segment_size.load(Ordering::Relaxed))
                .unwrap_or(usize::MAX),
            cache_slots: identity.cache_slots.load(Ordering::Relaxed),
            proxy_slots: identity.proxy_slots.load(Ordering::Relaxed),
        };
        config
            .validate()
            .map_err(|err| bad(format!("header holds an invalid config: {err}")))?;
        let layout = Layout::of(&config)?;
        if layout.total > stat.size
            || identity.total_bytes.load(Ordering::Relaxed) != layout.total as u64
        {
            return Err(bad(format!(
                "{} bytes do not hold a region of {config:?}",
                stat.size
            )));
        }
        region.config = config;
        region.layout = layout;
        Ok(region)
    }

    /// The id children attach with.
    pub fn id(&self) -> RegionId {
        self.id
    }

    /// The sizes it was created with.
    pub fn config(&self) -> RegionConfig {
        self.config
    }

    /// The state word of a member.
    pub fn member_state(&self, member: Member) -> MemberState {
        self.member_word(member)
            .map(|word| MemberState::from_word(word.state.load(Ordering::Acquire)))
            .unwrap_or(MemberState::Down)
    }

    /// Sets the state word of a member (and its pid, 0 for none); wakes nothing.
    pub fn set_member_state(&self, member: Member, state: MemberState, pid: i32) {
        if let Some(word) = self.member_word(member) {
            word.pid.store(pid, Ordering::Relaxed);
            word.state.store(state.to_word(), Ordering::Release);
        }
    }

    /// An opaque word published about a member (ipc gives it no meaning; the supervisor and the
    /// proxy agree on its bits). It outlives the member's processes: a restart keeps it.
    pub fn member_tag(&self, member: Member) -> u32 {
        self.member_word(member)
            .map(|word| word.tag.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Sets a member's tag.
    pub fn set_member_tag(&self, member: Member, tag: u32) {
        if let Some(word) = self.member_word(member) {
            word.tag.store(tag, Ordering::Release);
        }
    }

    /// Counts a purge that did not reach `member` (it was not up, or did not answer). Like the
    /// tag it outlives the member's processes, so the next one can make up for it.
    pub fn note_missed_purge(&self, member: Member) {
        if let Some(word) = self.member_word(member) {
            word.missed_purges.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The purges that did not reach `member`, and how many of them it has made up for.
    pub fn missed_purges(&self, member: Member) -> MissedPurges {
        self.member_word(member)
            .map(|word| MissedPurges {
                missed: word.missed_purges.load(Ordering::SeqCst),
                made_up: word.made_up_purges.load(Ordering::SeqCst),
            })
            .unwrap_or_default()
    }

    /// Records that `member` made up for the first `missed` purges it missed.
    pub fn set_made_up_purges(&self, member: Member, missed: u32) {
        if let Some(word) = self.member_word(member) {
            word.made_up_purges.store(missed, Ordering::SeqCst);
        }
    }

    /// A counter that whoever removed objects from a cache advances once it is done, so that a
    /// copy of an object kept outside the caches (read before a removal began) can tell it may
    /// be gone: such a copy is good only while the epoch it read before its cache lookup is
    /// still the current one.
    pub fn content_epoch(&self) -> u64 {
        self.control().content_epoch.load(Ordering::SeqCst)
    }

    /// Advances [`content_epoch`](Region::content_epoch).
    pub fn advance_content_epoch(&self) {
        self.control().content_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The pid recorded with the member's state.
    pub fn member_pid(&self, member: Member) -> i32 {
        self.member_word(member)
            .map(|word| word.pid.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    // -- crate-internal accessors --

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// A `&T` at `offset` of the mapping.
    fn at<T>(&self, offset: usize) -> &T {
        assert!(
            offset.is_multiple_of(align_of::<T>())
                && offset
                    .checked_add(size_of::<T>())
                    .is_some_and(|end| end <= self.layout.total),
            "region offset {offset} out of layout"
        );
        // SAFETY: the range is inside the attached mapping (checked against the layout, which is
        // checked against the object's size at attach) and aligned (checked; the base is page
        // aligned). `T` is only ever a structure of atomics, valid for every bit pattern and
        // meant to be shared, and the mapping lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(offset).cast::<T>() }
    }

    /// A raw pointer `offset` bytes into the mapping, with `len` bytes in bounds.
    pub(crate) fn raw(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.layout.total),
            "region range {offset}+{len} out of layout"
        );
        // SAFETY: checked just above to stay inside the mapping.
        unsafe { self.base.as_ptr().add(offset) }
    }

    pub(crate) fn control(&self) -> &ControlHeader {
        self.at(0)
    }

    pub(crate) fn request_bell(&self, slot: u32) -> Option<&Doorbell> {
        (slot < self.config.cache_slots)
            .then(|| self.at::<Doorbell>(self.layout.requests + slot as usize * LINE))
    }

    fn member_index(&self, member: Member) -> Option<usize> {
        match member {
            Member::Proxy(slot) if slot.as_raw() < self.config.proxy_slots => {
                Some(slot.as_raw() as usize)
            }
            Member::Cache(slot) if slot.as_raw() < self.config.cache_slots => {
                Some(self.config.proxy_slots as usize + slot.as_raw() as usize)
            }
            _ => None,
        }
    }

    fn member_word(&self, member: Member) -> Option<&MemberWord> {
        self.member_index(member)
            .map(|index| self.at::<MemberWord>(self.layout.members + index * LINE))
    }

    pub(crate) fn stats_area(&self, member: Member) -> Option<&StatsArea> {
        self.member_index(member)
            .map(|index| self.at::<StatsArea>(self.layout.stats + index * STATS_BLOCK_BYTES))
    }

    pub(crate) fn segment_header(&self, index: u32) -> Option<&SegmentHeader> {
        (index < self.config.segments).then(|| {
            self.at::<SegmentHeader>(
                self.layout.segment_headers + index as usize * SEGMENT_HEADER_BYTES,
            )
        })
    }

    /// The path area of a segment (`MAX_PATH_LEN` bytes).
    pub(crate) fn path_area(&self, index: u32) -> *mut u8 {
        self.raw(
            self.layout.segment_headers + index as usize * SEGMENT_HEADER_BYTES + PATH_OFFSET,
            crate::MAX_PATH_LEN,
        )
    }

    /// The metadata area of a segment (`MAX_META_LEN` bytes).
    pub(crate) fn meta_area(&self, index: u32) -> *mut u8 {
        self.raw(
            self.layout.segment_headers + index as usize * SEGMENT_HEADER_BYTES + META_OFFSET,
            crate::MAX_META_LEN,
        )
    }

    /// Bytes in one half of a segment.
    pub(crate) fn half_size(&self) -> usize {
        self.config.segment_size / 2
    }

    /// The start of half `half` (0 or 1) of segment `index`'s data.
    pub(crate) fn half_area(&self, index: u32, half: u32) -> *mut u8 {
        let half_size = self.half_size();
        self.raw(
            self.layout.data
                + index as usize * self.config.segment_size
                + (half as usize & 1) * half_size,
            half_size,
        )
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base` came from shm_attach and is detached only here; every borrow of the
        // mapping is tied to `&self`, so none outlives this point.
        if let Err(err) = unsafe { sys::shm_detach(self.base) } {
            tracing::warn!(%err, shm = self.id.shm.as_raw(), "shmdt failed");
        }
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish()
    }
}

fn remove_quietly(shm: i32) {
    if let Err(err) = sys::shm_remove(shm) {
        tracing::warn!(%err, shm, "IPC_RMID after a failed creation");
    }
}

fn current_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    pub(crate) fn small_config() -> RegionConfig {
        RegionConfig {
            segments: 2,
            segment_size: 8192,
            cache_slots: 2,
            proxy_slots: 1,
        }
    }

    #[test]
    fn documented_offsets_hold() {
        assert_eq!(offset_of!(ControlHeader, next_request_id), 64);
        assert_eq!(offset_of!(ControlHeader, pool), 128);
        assert_eq!(offset_of!(ControlHeader, content_epoch), 192);
        assert_eq!(offset_of!(Identity, segment_size), 32);
        assert_eq!(offset_of!(Identity, nonce), 48);
        assert_eq!(offset_of!(SegmentHeader, produced), 64);
        assert_eq!(offset_of!(SegmentHeader, consumed), 128);
        assert_eq!(offset_of!(SegmentHeader, request), 192);
        assert_eq!(offset_of!(SegmentHeader, half_len), 256);
        assert_eq!(offset_of!(RequestFields, op), 24);
        assert_eq!(offset_of!(RequestFields, proxy_pid), 40);
        assert_eq!(offset_of!(RequestFields, range_offset), 48);
        assert_eq!(offset_of!(RequestFields, range_len), 56);
        assert_eq!(offset_of!(SegmentHeader, answer), 320);
        assert_eq!(offset_of!(AnswerFields, modified_secs), 8);
    }

    #[test]
    fn layout_of_a_typical_config() {
        let config = RegionConfig {
            segments: 16,
            segment_size: 1 << 20,
            cache_slots: 4,
            proxy_slots: 2,
        };
        let layout = Layout::of(&config).unwrap();
        assert_eq!(layout.requests, 4096);
        assert_eq!(layout.members, 8192);
        assert_eq!(layout.stats, 12288);
        assert_eq!(layout.segment_headers, 12288 + 6 * 2048);
        assert_eq!(layout.data, layout.segment_headers + 16 * 8192);
        assert_eq!(layout.total, layout.data + 16 * (1 << 20));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let good = small_config();
        assert!(good.validate().is_ok());
        for bad in [
            RegionConfig {
                segments: 0,
                ..good
            },
            RegionConfig {
                segment_size: 4096,
                ..good
            },
            RegionConfig {
                segment_size: 8192 + 100,
                ..good
            },
            RegionConfig {
                cache_slots: 0,
                ..good
            },
            RegionConfig {
                proxy_slots: 2000,
                ..good
            },
        ] {
            assert!(
                matches!(Region::create(&bad, None), Err(Error::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn create_attach_and_member_states() {
        let region = Region::create(&small_config(), None).unwrap();
        let stat = sys::shm_stat(region.id().shm.as_raw()).unwrap();
        assert_eq!(stat.mode & 0o777, 0o600);
        let other = Region::attach(region.id()).unwrap();
        assert_eq!(other.config(), region.config());
        let cache1 = Member::Cache(crate::CacheSlot::from_raw(1));
        assert_eq!(other.member_state(cache1), MemberState::Down);
        region.set_member_state(cache1, MemberState::Ready, 42);
        assert_eq!(other.member_state(cache1), MemberState::Ready);
        assert_eq!(other.member_pid(cache1), 42);
        let outside = Member::Cache(crate::CacheSlot::from_raw(7));
        region.set_member_state(outside, MemberState::Ready, 1);
        assert_eq!(region.member_state(outside), MemberState::Down);
        assert_eq!(region.member_pid(outside), 0);
    }

    #[test]
    fn create_with_a_ledger_records_the_object_before_removal() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let region = Region::create(&small_config(), Some(&mut ledger)).unwrap();
        let shm = region.id().shm.as_raw();
        let entries = ledger.entries().to_vec();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].kind, entries[0].id), (IpcKind::Shm, shm));
        assert_eq!(entries[0].creator_pid, current_pid());
        // Closing while attached is harmless: the object is already marked for removal.
        ledger.close().unwrap();
        assert!(Region::attach(region.id()).is_ok());
        drop(region);
        assert!(sys::shm_stat(shm).is_err());
    }

    #[test]
    fn attach_rejects_a_wrong_nonce() {
        let region = Region::create(&small_config(), None).unwrap();
        let wrong = RegionId {
            nonce: region.id().nonce ^ 1,
            ..region.id()
        };
        assert!(matches!(Region::attach(wrong), Err(Error::BadRegion(_))));
    }

    #[test]
    fn region_is_gone_after_the_last_detach() {
        let region = Region::create(&small_config(), None).unwrap();
        let shm = region.id().shm.as_raw();
        assert!(sys::shm_stat(shm).is_ok());
        drop(region);
        assert!(sys::shm_stat(shm).is_err());
    }
}
