//! The segment protocol: the proxy side ([`Lease`], [`GetStream`], [`PutStream`]) and the cache
//! side ([`CacheRequest`], [`GetWriter`], [`PutReader`]), plus pool reclamation.
//!
//! Ownership of a segment is one 64-bit control word per segment header, changed only by CAS:
//!
//! ```text
//!  63            32 31   27 26    25          24         23 22  21        0
//! +----------------+-------+-----+-----------+----------+------+-----------+
//! |   generation   |   0   |ABORT|CACHE_DONE |PROXY_DONE|phase | holder pid|
//! +----------------+-------+-----+-----------+----------+------+-----------+
//! ```
//!
//! phase: 0 Free, 1 Reserved, 2 Requested, 3 Active. The holder pid is the proxy's in Reserved
//! and Requested, the cache's in Active (the proxy's pid is then in the request fields, written
//! while Reserved). Whoever sets the second done bit returns the segment to Free. Every CAS
//! compares the generation too, so a late peer's transition on a reused segment fails; and a
//! segment with one done bit and ABORT is quarantined until the other side answers or is
//! reclaimed, so a late writer only ever writes into a segment nobody else uses.
//!
//! Data moves through two futex words per segment: `produced` (chunks published) and `consumed`
//! (chunks released). Chunk `n` lives in half `n % 2`; the producer may fill it once
//! `n - consumed < 2`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::futex::{self, deadline_after, ABORT, COUNT_MASK, FINAL};
use crate::ids::{CacheSlot, Generation, RequestId, SegmentIndex};
use crate::region::{Region, SegmentCounts, SegmentHeader};
use crate::{sys, Error, Result, MAX_PATH_LEN};

// ---------------------------------------------------------------------------------------------
// The control word

const PID_MASK: u64 = (1 << 22) - 1;
const PHASE_SHIFT: u32 = 22;
const PHASE_MASK: u64 = 3 << PHASE_SHIFT;
const PROXY_DONE: u64 = 1 << 24;
const CACHE_DONE: u64 = 1 << 25;
const SEG_ABORT: u64 = 1 << 26;

/// Where a segment is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// In the pool.
    Free,
    /// Leased by a proxy, no request sent yet.
    Reserved,
    /// Waiting for a worker of the addressed cache slot.
    Requested,
    /// Claimed by a cache worker; the transfer runs.
    Active,
}

impl Phase {
    fn bits(self) -> u64 {
        let raw: u64 = match self {
            Phase::Free => 0,
            Phase::Reserved => 1,
            Phase::Requested => 2,
            Phase::Active => 3,
        };
        raw << PHASE_SHIFT
    }
    fn of(word: u64) -> Phase {
        match (word & PHASE_MASK) >> PHASE_SHIFT {
            0 => Phase::Free,
            1 => Phase::Reserved,
            2 => Phase::Requested,
            _ => Phase::Active,
        }
    }
}

fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

fn holder_of(word: u64) -> i32 {
    (word & PID_MASK) as i32
}

fn control_word(generation: u32, phase: Phase, holder: i32) -> u64 {
    (u64::from(generation) << 32) | phase.bits() | (u64::try_from(holder).unwrap_or(0) & PID_MASK)
}

/// Which end of a transfer a handle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Proxy,
    Cache,
}

impl Side {
    fn done_bit(self) -> u64 {
        match self {
            Side::Proxy => PROXY_DONE,
            Side::Cache => CACHE_DONE,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request fields

const OP_GET: u32 = 1;
const OP_PUT: u32 = 2;

/// The `status` word of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Found,
    NotFound,
    Failed,
    Declined,
    Stored,
    NotStored,
}

impl Status {
    fn to_word(self) -> u32 {
        match self {
            Status::Pending => 0,
            Status::Found => 1,
            Status::NotFound => 2,
            Status::Failed => 3,
            Status::Declined => 4,
            Status::Stored => 5,
            Status::NotStored => 6,
        }
    }
    fn from_word(word: u32) -> Option<Status> {
        Some(match word {
            0 => Status::Pending,
            1 => Status::Found,
            2 => Status::NotFound,
            3 => Status::Failed,
            4 => Status::Declined,
            5 => Status::Stored,
            6 => Status::NotStored,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One segment, one generation

/// A segment as one side sees it during one generation.
struct Seg<'r> {
    region: &'r Region,
    index: u32,
    generation: u32,
    header: &'r SegmentHeader,
}

impl<'r> Seg<'r> {
    fn protocol(&self, what: impl Into<String>) -> Error {
        Error::Protocol {
            segment: self.index,
            what: what.into(),
        }
    }

    fn status(&self) -> Result<Status> {
        let word = self.header.request.status.load(Ordering::Acquire);
        Status::from_word(word).ok_or_else(|| self.protocol(format!("status word {word}")))
    }

    fn set_status(&self, status: Status) {
        self.header
            .request
            .status
            .store(status.to_word(), Ordering::Release);
    }

    /// Marks `side` done (with ABORT if `abort`), returning the segment to the pool when both
    /// sides are done. A proxy finishing before any cache claimed the request frees it at once.
    fn finish_side(&self, side: Side, abort: bool) {
        if abort {
            // Before the CAS: once both sides are done the next user resets these words.
            futex::raise_flag(&self.header.produced, ABORT, self.generation);
            futex::raise_flag(&self.header.consumed, ABORT, self.generation);
        }
        let control = &self.header.control;
        let mut current = control.load(Ordering::Acquire);
        loop {
            if generation_of(current) != self.generation {
                return; // reclaimed and reused: nothing of ours left to release
            }
            let next = match (Phase::of(current), side) {
                (Phase::Free, _) => return,
                (Phase::Reserved | Phase::Requested, Side::Proxy) => {
                    control_word(self.generation, Phase::Free, 0)
                }
                (Phase::Reserved | Phase::Requested, Side::Cache) => return,
                (Phase::Active, _) => {
                    let mut next = current | side.done_bit();
                    if abort {
                        next |= SEG_ABORT;
                    }
                    if next & (PROXY_DONE | CACHE_DONE) == PROXY_DONE | CACHE_DONE {
                        next = control_word(self.generation, Phase::Free, 0);
                    }
                    next
                }
            };
            if next == current {
                return;
            }
            match control.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if Phase::of(next) == Phase::Free {
                        self.region.control().pool.ring();
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// Progress of one end through the chunks of a transfer.
#[derive(Debug, Default)]
struct Cursor {
    /// Index of the next chunk to fill (producer) or read (consumer).
    next: u32,
    /// Bytes published or consumed.
    bytes: u64,
}

fn chunk_distance(later: u32, earlier: u32) -> u32 {
    later.wrapping_sub(earlier) & COUNT_MASK
}

fn bump_count(word: u32) -> u32 {
    (word & !COUNT_MASK) | (word.wrapping_add(1) & COUNT_MASK)
}

/// How a wait on a flag word ended.
enum Wake {
    Ready(u32),
    TimedOut,
}

fn wait_word(word: &AtomicU32, timeout: Duration, ready: impl Fn(u32) -> bool) -> Result<Wake> {
    match futex::wait_flag_word(word, deadline_after(timeout), ready)
        .map_err(Error::os("futex wait"))?
    {
        Some(value) => Ok(Wake::Ready(value)),
        None => Ok(Wake::TimedOut),
    }
}

// ---------------------------------------------------------------------------------------------
// Producer and consumer cores, shared by both directions

/// The filling end: GET on the cache side, PUT on the proxy side.
struct Producer<'r> {
    seg: Seg<'r>,
    total: u64,
    cursor: Cursor,
    /// Whether publishing answers a GET (sets FINAL on `produced`).
    answers: bool,
}

impl<'r> Producer<'r> {
    /// Waits until half `cursor.next % 2` is free, the peer aborted, or the peer completed early.
    fn wait_room(&self, timeout: Duration) -> Result<Wake> {
        let next = self.cursor.next;
        wait_word(&self.seg.header.consumed, timeout, |value| {
            value & (ABORT | FINAL) != 0 || chunk_distance(next, value) < 2
        })
    }

    fn check_room(&self, consumed: u32) -> Result<()> {
        let ahead = chunk_distance(self.cursor.next, consumed);
        if ahead > 2 {
            return Err(self.seg.protocol(format!(
                "consumer released {} chunks more than published",
                COUNT_MASK + 1 - ahead
            )));
        }
        Ok(())
    }

    fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.cursor.bytes)
    }

    fn chunk_room(&self) -> usize {
        usize::try_from(self.remaining())
            .unwrap_or(usize::MAX)
            .min(self.seg.region.half_size())
    }

    fn half_ptr(&self) -> *mut u8 {
        self.seg
            .region
            .half_area(self.seg.index, self.cursor.next & 1)
    }

    fn buf(&mut self) -> ChunkBuf<'_> {
        let capacity = self.chunk_room();
        let half = (self.cursor.next & 1) as usize;
        ChunkBuf {
            ptr: self.half_ptr(),
            capacity,
            filled: 0,
            half_len: &self.seg.header.half_len[half],
            produced: &self.seg.header.produced,
            cursor: &mut self.cursor,
            answers: self.answers,
        }
    }
}

/// Publishes `len` bytes of the current half; returns whether the peer had aborted.
fn publish_half(
    half_len: &AtomicU32,
    produced: &AtomicU32,
    cursor: &mut Cursor,
    len: usize,
    answers: bool,
) -> bool {
    half_len.store(len as u32, Ordering::Relaxed);
    let previous = futex::update_flag_word(produced, |value| {
        let value = bump_count(value);
        if answers {
            value | FINAL
        } else {
            value
        }
    });
    cursor.next = cursor.next.wrapping_add(1);
    cursor.bytes += len as u64;
    previous & ABORT != 0
}

/// The draining end: GET on the proxy side, PUT on the cache side.
struct Consumer<'r> {
    seg: Seg<'r>,
    total: u64,
    cursor: Cursor,
}

/// What a consumer's wait for data found.
enum Incoming {
    Chunk { ptr: *const u8, len: usize },
    End,
    Aborted,
    TimedOut,
}

impl<'r> Consumer<'r> {
    fn wait_chunk(&self, timeout: Duration) -> Result<Incoming> {
        if self.cursor.bytes >= self.total {
            return Ok(Incoming::End);
        }
        let next = self.cursor.next;
        let value = match wait_word(&self.seg.header.produced, timeout, |value| {
            value & ABORT != 0 || chunk_distance(value, next) != 0
        })? {
            Wake::TimedOut => return Ok(Incoming::TimedOut),
            Wake::Ready(value) => value,
        };
        if value & ABORT != 0 {
            return Ok(Incoming::Aborted);
        }
        let available = chunk_distance(value, next);
        if available > 2 {
            return Err(self
                .seg
                .protocol(format!("{available} chunks published ahead of the reader")));
        }
        let half = next & 1;
        let len = self.seg.header.half_len[half as usize].load(Ordering::Relaxed) as usize;
        let remaining = self.total - self.cursor.bytes;
        if len == 0 || len > self.seg.region.half_size() || len as u64 > remaining {
            return Err(self.seg.protocol(format!(
                "chunk of {len} bytes (half size {}, {remaining} bytes remaining)",
                self.seg.region.half_size()
            )));
        }
        let ptr = self.seg.region.half_area(self.seg.index, half).cast_const();
        Ok(Incoming::Chunk { ptr, len })
    }

    fn chunk(&mut self, ptr: *const u8, len: usize) -> Chunk<'_> {
        Chunk {
            ptr,
            len,
            consumed: &self.seg.header.consumed,
            cursor: &mut self.cursor,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy side

/// A segment taken from the pool by a proxy. Dropping it returns it to the pool.
pub struct Lease<'r> {
    seg: Option<Seg<'r>>,
}

impl Region {
    /// Takes a free segment out of the pool, waiting up to `timeout` for one.
    pub fn acquire(&self, timeout: Duration) -> Result<Lease<'_>> {
        let started = Instant::now();
        let deadline = deadline_after(timeout);
        let pool = &self.control().pool;
        loop {
            let seen = pool.seq.load(Ordering::SeqCst);
            if let Some(seg) = self.try_acquire() {
                return Ok(Lease { seg: Some(seg) });
            }
            if pool
                .sleep(seen, deadline)
                .map_err(Error::os("futex wait"))?
            {
                return match self.try_acquire() {
                    Some(seg) => Ok(Lease { seg: Some(seg) }),
                    None => Err(Error::Timeout {
                        what: "a free segment",
                        waited: started.elapsed(),
                    }),
                };
            }
        }
    }

    fn try_acquire(&self) -> Option<Seg<'_>> {
        for index in 0..self.config().segments {
            let header = self.segment_header(index)?;
            let current = header.control.load(Ordering::Relaxed);
            if Phase::of(current) != Phase::Free {
                continue;
            }
            let generation = generation_of(current).wrapping_add(1);
            let next = control_word(generation, Phase::Reserved, self.pid());
            if header
                .control
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Seg {
                    region: self,
                    index,
                    generation,
                    header,
                });
            }
        }
        None
    }

    /// Returns every segment that process `pid` (known dead) was part of to the pool, or frees it
    /// from that side. Returns how many segments it touched.
    pub fn reclaim_dead(&self, pid: i32) -> usize {
        if pid <= 0 {
            return 0;
        }
        let mut touched = 0;
        for index in 0..self.config().segments {
            let Some(header) = self.segment_header(index) else {
                break;
            };
            if self.reclaim_segment(header, pid) {
                touched += 1;
            }
        }
        if touched > 0 {
            tracing::info!(pid, touched, "reclaimed segments of a dead process");
        }
        touched
    }

    fn reclaim_segment(&self, header: &SegmentHeader, pid: i32) -> bool {
        let mut current = header.control.load(Ordering::Acquire);
        loop {
            let generation = generation_of(current);
            let next = match Phase::of(current) {
                Phase::Free => return false,
                Phase::Reserved | Phase::Requested => {
                    if holder_of(current) != pid {
                        return false;
                    }
                    control_word(generation, Phase::Free, 0)
                }
                Phase::Active => {
                    let mut bits = 0;
                    if holder_of(current) == pid && current & CACHE_DONE == 0 {
                        bits |= CACHE_DONE;
                    }
                    if header.request.proxy_pid.load(Ordering::Acquire) == pid
                        && current & PROXY_DONE == 0
                    {
                        bits |= PROXY_DONE;
                    }
                    if bits == 0 {
                        return false;
                    }
                    // Tell the surviving side (it sees ABORT at its next step).
                    futex::raise_flag(&header.produced, ABORT, generation);
                    futex::raise_flag(&header.consumed, ABORT, generation);
                    let next = current | bits | SEG_ABORT;
                    if next & (PROXY_DONE | CACHE_DONE) == PROXY_DONE | CACHE_DONE {
                        control_word(generation, Phase::Free, 0)
                    } else {
                        next
                    }
                }
            };
            match header.control.compare_exchange(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if Phase::of(next) == Phase::Free {
                        self.control().pool.ring();
                    }
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Segment counts by state.
    pub fn segment_counts(&self) -> SegmentCounts {
        let mut counts = SegmentCounts::default();
        for index in 0..self.config().segments {
            let Some(header) = self.segment_header(index) else {
                break;
            };
            let word = header.control.load(Ordering::Acquire);
            match Phase::of(word) {
                Phase::Free => counts.free += 1,
                _ if word & SEG_ABORT != 0 => counts.quarantined += 1,
                _ => counts.busy += 1,
            }
        }
        counts
    }
}

fn check_path(path: &str) -> Result<()> {
    if path.len() > MAX_PATH_LEN || path.as_bytes().contains(&0) {
        return Err(Error::PathTooLong { len: path.len() });
    }
    Ok(())
}

impl<'r> Lease<'r> {
    /// The segment this lease holds.
    pub fn segment(&self) -> SegmentIndex {
        SegmentIndex::from_raw(self.seg.as_ref().map_or(u32::MAX, |seg| seg.index))
    }

    /// The generation of this use of the segment.
    pub fn generation(&self) -> Generation {
        Generation::from_raw(self.seg.as_ref().map_or(0, |seg| seg.generation))
    }

    /// Writes the request into the header and moves the segment to Requested.
    fn send(
        &mut self,
        slot: CacheSlot,
        path: &str,
        op: u32,
        announced_len: u64,
    ) -> Result<Seg<'r>> {
        check_path(path)?;
        let seg = self.seg.take().ok_or(Error::Aborted)?;
        let region = seg.region;
        let Some(bell) = region.request_bell(slot.as_raw()) else {
            let err = Error::InvalidConfig(format!(
                "cache slot {} out of range (0..{})",
                slot.as_raw(),
                region.config().cache_slots
            ));
            seg.finish_side(Side::Proxy, false);
            return Err(err);
        };
        let header = seg.header;
        let request = &header.request;
        let id = region
            .control()
            .next_request_id
            .fetch_add(1, Ordering::Relaxed);
        request.request_id.store(id, Ordering::Relaxed);
        request
            .announced_len
            .store(announced_len, Ordering::Relaxed);
        request.total_len.store(0, Ordering::Relaxed);
        request.op.store(op, Ordering::Relaxed);
        request.slot.store(slot.as_raw(), Ordering::Relaxed);
        request.path_len.store(path.len() as u32, Ordering::Relaxed);
        request
            .status
            .store(Status::Pending.to_word(), Ordering::Relaxed);
        request.proxy_pid.store(region.pid(), Ordering::Relaxed);
        header
            .produced
            .store(futex::tagged(seg.generation), Ordering::Relaxed);
        header
            .consumed
            .store(futex::tagged(seg.generation), Ordering::Relaxed);
        header.half_len[0].store(0, Ordering::Relaxed);
        header.half_len[1].store(0, Ordering::Relaxed);
        let area = region.path_area(seg.index);
        // SAFETY: `path.len() <= MAX_PATH_LEN` (checked), the path area holds MAX_PATH_LEN bytes,
        // and while the segment is Reserved only this lease touches it.
        unsafe { ptr::copy_nonoverlapping(path.as_ptr(), area, path.len()) };
        let reserved = control_word(seg.generation, Phase::Reserved, region.pid());
        let requested = control_word(seg.generation, Phase::Requested, region.pid());
        if header
            .control
            .compare_exchange(reserved, requested, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Only a reclaim (of a pid believed dead) can have taken it from us.
            return Err(seg.protocol("segment taken away while reserved"));
        }
        bell.ring();
        Ok(seg)
    }

    /// Asks cache `slot` for `path` and waits up to `timeout` for its answer (the status and the
    /// first chunk). On timeout the segment is quarantined and `Error::Timeout` returned.
    pub fn get(mut self, slot: CacheSlot, path: &str, timeout: Duration) -> Result<GetStream<'r>> {
        let started = Instant::now();
        let seg = self.send(slot, path, OP_GET, 0)?;
        let value = match wait_word(&seg.header.produced, timeout, |value| {
            value & (ABORT | FINAL) != 0
        }) {
            Ok(Wake::Ready(value)) => value,
            Ok(Wake::TimedOut) => {
                seg.finish_side(Side::Proxy, true);
                return Err(Error::Timeout {
                    what: "the cache to answer",
                    waited: started.elapsed(),
                });
            }
            Err(err) => {
                seg.finish_side(Side::Proxy, true);
                return Err(err);
            }
        };
        if value & ABORT != 0 {
            seg.finish_side(Side::Proxy, true);
            return Err(Error::Aborted);
        }
        let answer = seg.status().and_then(|status| match status {
            Status::Found => Ok(Lookup::Found {
                len: seg.header.request.total_len.load(Ordering::Acquire),
            }),
            Status::NotFound => Ok(Lookup::NotFound),
            Status::Failed => Ok(Lookup::Error),
            other => Err(seg.protocol(format!("status {other:?} answering a GET"))),
        });
        let lookup = match answer {
            Ok(lookup) => lookup,
            Err(err) => {
                seg.finish_side(Side::Proxy, true);
                return Err(err);
            }
        };
        let total = match lookup {
            Lookup::Found { len } => len,
            Lookup::NotFound | Lookup::Error => 0,
        };
        Ok(GetStream {
            consumer: Consumer {
                seg,
                total,
                cursor: Cursor::default(),
            },
            lookup,
            state: StreamState::Open,
        })
    }

    /// Offers cache `slot` a fill of `len` bytes for `path`. Returns at once; the cache's
    /// answer arrives through the stream (`Error::Declined` from `write` or `finish`).
    pub fn put(mut self, slot: CacheSlot, path: &str, len: u64) -> Result<PutStream<'r>> {
        let seg = self.send(slot, path, OP_PUT, len)?;
        Ok(PutStream {
            producer: Producer {
                seg,
                total: len,
                cursor: Cursor::default(),
                answers: false,
            },
            filled: 0,
            state: StreamState::Open,
        })
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(seg) = self.seg.take() {
            seg.finish_side(Side::Proxy, false);
        }
    }
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("segment", &self.segment())
            .field("generation", &self.generation())
            .finish()
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

/// Where a stream handle is; a finished or failed stream answers every later call the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    Open,
    Done,
    Aborted,
    Declined,
}

impl StreamState {
    fn error(self) -> Error {
        match self {
            StreamState::Declined => Error::Declined,
            StreamState::Open | StreamState::Done | StreamState::Aborted => Error::Aborted,
        }
    }
}

/// The reading end of a GET. Dropping it before the end aborts the transfer and frees (or
/// quarantines) the segment at once.
pub struct GetStream<'r> {
    consumer: Consumer<'r>,
    lookup: Lookup,
    state: StreamState,
}

impl<'r> GetStream<'r> {
    /// The cache's answer.
    pub fn lookup(&self) -> Lookup {
        self.lookup
    }

    /// The segment the transfer runs through.
    pub fn segment(&self) -> SegmentIndex {
        SegmentIndex::from_raw(self.consumer.seg.index)
    }

    /// The next chunk, waiting up to `timeout`; `Ok(None)` after the last byte.
    pub fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Chunk<'_>>> {
        match self.state {
            StreamState::Open => {}
            StreamState::Done => return Ok(None),
            other => return Err(other.error()),
        }
        let started = Instant::now();
        let incoming = self.consumer.wait_chunk(timeout);
        match incoming {
            Ok(Incoming::Chunk { ptr, len }) => Ok(Some(self.consumer.chunk(ptr, len))),
            Ok(Incoming::End) => {
                self.state = StreamState::Done;
                self.consumer.seg.finish_side(Side::Proxy, false);
                Ok(None)
            }
            Ok(Incoming::Aborted) => {
                self.fail();
                Err(Error::Aborted)
            }
            Ok(Incoming::TimedOut) => {
                self.fail();
                Err(Error::Timeout {
                    what: "data",
                    waited: started.elapsed(),
                })
            }
            Err(err) => {
                self.fail();
                Err(err)
            }
        }
    }

    fn fail(&mut self) {
        self.state = StreamState::Aborted;
        self.consumer.seg.finish_side(Side::Proxy, true);
    }
}

impl Drop for GetStream<'_> {
    fn drop(&mut self) {
        if self.state == StreamState::Open {
            let complete = self.consumer.cursor.bytes >= self.consumer.total;
            self.consumer.seg.finish_side(Side::Proxy, !complete);
        }
    }
}

/// A published chunk in shared memory, readable until dropped (drop hands the half back to the
/// producer). No `&[u8]` to it is handed out: the bytes leave by syscall or by copy.
pub struct Chunk<'s> {
    ptr: *const u8,
    len: usize,
    consumed: &'s AtomicU32,
    cursor: &'s mut Cursor,
}

impl Chunk<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the whole chunk to `fd` with write(2) straight from shared memory (loops on short
    /// writes and EINTR; EAGAIN from a send timeout is an error).
    pub fn write_all_to(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut written = 0;
        while written < self.len {
            // SAFETY: `ptr..ptr+len` lies in one half of the segment (the consumer checked `len`
            // against the half size), and the producer does not touch this half until the
            // chunk is released in `drop`.
            match unsafe { sys::write_raw(fd, self.ptr.add(written), self.len - written) } {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Appends a copy of the chunk to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        let start = out.len();
        // SAFETY: the source is this chunk's half, stable until release (see `write_all_to`); the
        // destination is the spare capacity reserved just above, which cannot overlap shared
        // memory; `set_len` covers exactly the bytes copied.
        unsafe {
            ptr::copy_nonoverlapping(self.ptr, out.as_mut_ptr().add(start), self.len);
            out.set_len(start + self.len);
        }
    }

    /// Writes the whole chunk to `writer` (through a bounded stack buffer).
    pub fn copy_to(&self, writer: &mut impl io::Write) -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        let mut offset = 0;
        while offset < self.len {
            let n = (self.len - offset).min(buf.len());
            // SAFETY: reads `n` bytes inside this chunk (offset + n <= len) into a local buffer.
            unsafe { ptr::copy_nonoverlapping(self.ptr.add(offset), buf.as_mut_ptr(), n) };
            writer.write_all(&buf[..n])?;
            offset += n;
        }
        Ok(())
    }
}

impl Drop for Chunk<'_> {
    fn drop(&mut self) {
        self.cursor.next = self.cursor.next.wrapping_add(1);
        self.cursor.bytes += self.len as u64;
        futex::update_flag_word(self.consumed, bump_count);
    }
}

impl std::fmt::Debug for Chunk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("len", &self.len).finish()
    }
}

/// The writing end of a PUT (proxy to cache). Dropping it without `finish` aborts the fill.
pub struct PutStream<'r> {
    producer: Producer<'r>,
    /// Bytes in the open half (not yet published); 0 means no half is open.
    filled: usize,
    state: StreamState,
}

impl PutStream<'_> {
    /// Copies `data` into the segment, publishing full halves; waits up to `timeout` for room.
    /// `Error::Declined` once the cache declined; `Error::Timeout` if the cache is too slow
    /// (the caller should drop the fill).
    pub fn write(&mut self, data: &[u8], timeout: Duration) -> Result<()> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        let written = self.producer.cursor.bytes + self.filled as u64;
        if written + data.len() as u64 > self.producer.total {
            return Err(Error::LengthMismatch {
                announced: self.producer.total,
                actual: written + data.len() as u64,
            });
        }
        let started = Instant::now();
        let deadline = deadline_after(timeout);
        let half_size = self.producer.seg.region.half_size();
        let mut rest = data;
        while !rest.is_empty() {
            if self.filled == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                self.open_half(left, started)?;
            }
            let n = rest.len().min(half_size - self.filled);
            // SAFETY: the open half is ours (room was granted: the consumer released the chunk
            // that used it before), `filled + n <= half_size` keeps the copy inside it, and `rest`
            // is ordinary memory of this process.
            unsafe {
                ptr::copy_nonoverlapping(
                    rest.as_ptr(),
                    self.producer.half_ptr().add(self.filled),
                    n,
                )
            };
            self.filled += n;
            rest = &rest[n..];
            if self.filled == half_size {
                self.publish_open_half()?;
            }
        }
        Ok(())
    }

    /// Waits for room for the next half; maps the ways it can fail onto the stream's state.
    fn open_half(&mut self, timeout: Duration, started: Instant) -> Result<()> {
        match self.producer.wait_room(timeout) {
            Ok(Wake::Ready(value)) if value & (ABORT | FINAL) == 0 => {
                self.producer
                    .check_room(value)
                    .inspect_err(|_| self.fail())?;
                Ok(())
            }
            Ok(Wake::Ready(_)) => Err(self.peer_ended()),
            Ok(Wake::TimedOut) => {
                self.fail();
                Err(Error::Timeout {
                    what: "room",
                    waited: started.elapsed(),
                })
            }
            Err(err) => {
                self.fail();
                Err(err)
            }
        }
    }

    fn publish_open_half(&mut self) -> Result<()> {
        let len = std::mem::take(&mut self.filled);
        let half = (self.producer.cursor.next & 1) as usize;
        let header = self.producer.seg.header;
        if publish_half(
            &header.half_len[half],
            &header.produced,
            &mut self.producer.cursor,
            len,
            false,
        ) {
            return Err(self.peer_ended());
        }
        Ok(())
    }

    /// The cache declined, failed or completed early: classify and release our side.
    fn peer_ended(&mut self) -> Error {
        let declined = matches!(
            self.producer.seg.status(),
            Ok(Status::Declined | Status::NotStored)
        );
        self.state = if declined {
            StreamState::Declined
        } else {
            StreamState::Aborted
        };
        self.producer.seg.finish_side(Side::Proxy, !declined);
        self.state.error()
    }

    fn fail(&mut self) {
        self.state = StreamState::Aborted;
        self.producer.seg.finish_side(Side::Proxy, true);
    }

    /// Publishes the rest and waits up to `timeout` for the cache to store it.
    /// Fails unless exactly `len` bytes were written.
    pub fn finish(mut self, timeout: Duration) -> Result<()> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        let written = self.producer.cursor.bytes + self.filled as u64;
        if written != self.producer.total {
            self.fail();
            return Err(Error::LengthMismatch {
                announced: self.producer.total,
                actual: written,
            });
        }
        if self.filled > 0 {
            self.publish_open_half()?;
        }
        let started = Instant::now();
        let value = match wait_word(&self.producer.seg.header.consumed, timeout, |value| {
            value & (ABORT | FINAL) != 0
        }) {
            Ok(Wake::Ready(value)) => value,
            Ok(Wake::TimedOut) => {
                self.fail();
                return Err(Error::Timeout {
                    what: "the cache to store the object",
                    waited: started.elapsed(),
                });
            }
            Err(err) => {
                self.fail();
                return Err(err);
            }
        };
        if value & ABORT == 0 && matches!(self.producer.seg.status(), Ok(Status::Stored)) {
            self.state = StreamState::Done;
            self.producer.seg.finish_side(Side::Proxy, false);
            return Ok(());
        }
        Err(self.peer_ended())
    }
}

impl Drop for PutStream<'_> {
    fn drop(&mut self) {
        if self.state == StreamState::Open {
            self.producer.seg.finish_side(Side::Proxy, true);
        }
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

impl Region {
    /// Claims the oldest pending request for `slot`, waiting up to `timeout`.
    /// `Ok(None)` on timeout, so that a worker loop can check for shutdown.
    pub fn next_request(
        &self,
        slot: CacheSlot,
        timeout: Duration,
    ) -> Result<Option<CacheRequest<'_>>> {
        let bell = self.request_bell(slot.as_raw()).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "cache slot {} out of range (0..{})",
                slot.as_raw(),
                self.config().cache_slots
            ))
        })?;
        let deadline = deadline_after(timeout);
        let mut spins = futex::SPIN;
        loop {
            let seen = bell.seq.load(Ordering::SeqCst);
            while let Some(seg) = self.claim_oldest(slot) {
                if let Some(request) = CacheRequest::read(seg)? {
                    return Ok(Some(request));
                }
            }
            if spins > 0 {
                spins -= 1;
                std::hint::spin_loop();
                continue;
            }
            if bell
                .sleep(seen, deadline)
                .map_err(Error::os("futex wait"))?
            {
                return Ok(None);
            }
        }
    }

    /// Claims the Requested segment for `slot` with the lowest request id, if any.
    fn claim_oldest(&self, slot: CacheSlot) -> Option<Seg<'_>> {
        loop {
            let mut best: Option<(u64, u32, u64)> = None;
            for index in 0..self.config().segments {
                let header = self.segment_header(index)?;
                let word = header.control.load(Ordering::Acquire);
                if Phase::of(word) != Phase::Requested
                    || header.request.slot.load(Ordering::Relaxed) != slot.as_raw()
                {
                    continue;
                }
                let id = header.request.request_id.load(Ordering::Relaxed);
                if best.is_none_or(|(best_id, _, _)| id < best_id) {
                    best = Some((id, index, word));
                }
            }
            let (_, index, word) = best?;
            let header = self.segment_header(index)?;
            let generation = generation_of(word);
            let active = control_word(generation, Phase::Active, self.pid());
            if header
                .control
                .compare_exchange(word, active, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Seg {
                    region: self,
                    index,
                    generation,
                    header,
                });
            }
            // Another worker took it or the proxy gave up: look again.
        }
    }
}

/// A request claimed by a cache worker. Dropping it unanswered answers `Lookup::Error` (GET) or
/// declines (PUT).
pub struct CacheRequest<'r> {
    seg: Option<Seg<'r>>,
    op: Op,
    path: String,
    id: RequestId,
}

impl<'r> CacheRequest<'r> {
    /// Reads and checks the request fields of a freshly claimed segment. A malformed request is
    /// answered (error / decline) and `Ok(None)` returned so the caller looks for the next one.
    fn read(seg: Seg<'r>) -> Result<Option<CacheRequest<'r>>> {
        let request = &seg.header.request;
        let op = match request.op.load(Ordering::Relaxed) {
            OP_GET => Op::Get,
            OP_PUT => Op::Put {
                len: request.announced_len.load(Ordering::Relaxed),
            },
            other => {
                tracing::warn!(
                    segment = seg.index,
                    op = other,
                    "request with an unknown op"
                );
                seg.finish_side(Side::Cache, true);
                return Ok(None);
            }
        };
        let id = RequestId::from_raw(request.request_id.load(Ordering::Relaxed));
        let path = match read_path(&seg) {
            Ok(path) => path,
            Err(err) => {
                tracing::warn!(segment = seg.index, %err, "request with a malformed path");
                let answer = CacheRequest {
                    seg: Some(seg),
                    op,
                    path: String::new(),
                    id,
                };
                drop(answer); // answers Error / declines
                return Ok(None);
            }
        };
        Ok(Some(CacheRequest {
            seg: Some(seg),
            op,
            path,
            id,
        }))
    }

    /// GET or PUT.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The path, copied out of the header and checked (starts with '/', UTF-8, <= MAX_PATH_LEN).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The request id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The segment the request came in.
    pub fn segment(&self) -> SegmentIndex {
        SegmentIndex::from_raw(self.seg.as_ref().map_or(u32::MAX, |seg| seg.index))
    }

    fn take(&mut self, expected: &'static str) -> Result<Seg<'r>> {
        match (self.op, expected) {
            (Op::Get, "GET") | (Op::Put { .. }, "PUT") => self.seg.take().ok_or(Error::Aborted),
            _ => Err(Error::Protocol {
                segment: self.segment().as_raw(),
                what: format!("answering a {:?} request as a {expected}", self.op),
            }),
        }
    }

    fn answer_get(seg: Seg<'r>, status: Status) {
        seg.set_status(status);
        futex::update_flag_word(&seg.header.produced, |value| value | FINAL);
        seg.finish_side(Side::Cache, false);
    }

    fn answer_put_declined(seg: Seg<'r>) {
        seg.set_status(Status::Declined);
        seg.finish_side(Side::Cache, true);
    }

    /// Answers a GET: not here.
    pub fn not_found(mut self) -> Result<()> {
        let seg = self.take("GET")?;
        Self::answer_get(seg, Status::NotFound);
        Ok(())
    }

    /// Answers a GET: failed.
    pub fn error(mut self) -> Result<()> {
        let seg = self.take("GET")?;
        Self::answer_get(seg, Status::Failed);
        Ok(())
    }

    /// Answers a GET: found, `len` bytes will follow through the returned writer.
    pub fn found(mut self, len: u64) -> Result<GetWriter<'r>> {
        let seg = self.take("GET")?;
        seg.header.request.total_len.store(len, Ordering::Relaxed);
        seg.set_status(Status::Found);
        if len == 0 {
            // Nothing will be published: the answer goes now.
            futex::update_flag_word(&seg.header.produced, |value| value | FINAL);
        }
        Ok(GetWriter {
            producer: Producer {
                seg,
                total: len,
                cursor: Cursor::default(),
                answers: true,
            },
            state: StreamState::Open,
        })
    }

    /// Answers a PUT: declined.
    pub fn decline(mut self) -> Result<()> {
        let seg = self.take("PUT")?;
        Self::answer_put_declined(seg);
        Ok(())
    }

    /// Answers a PUT: accepted; read the bytes through the returned reader.
    pub fn accept(mut self) -> Result<PutReader<'r>> {
        let seg = self.take("PUT")?;
        let total = seg.header.request.announced_len.load(Ordering::Relaxed);
        Ok(PutReader {
            consumer: Consumer {
                seg,
                total,
                cursor: Cursor::default(),
            },
            state: StreamState::Open,
        })
    }
}

impl Drop for CacheRequest<'_> {
    fn drop(&mut self) {
        if let Some(seg) = self.seg.take() {
            match self.op {
                Op::Get => Self::answer_get(seg, Status::Failed),
                Op::Put { .. } => Self::answer_put_declined(seg),
            }
        }
    }
}

impl std::fmt::Debug for CacheRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRequest")
            .field("op", &self.op)
            .field("path", &self.path)
            .field("id", &self.id)
            .finish()
    }
}

/// Copies the path out of a claimed segment and checks it.
fn read_path(seg: &Seg<'_>) -> Result<String> {
    let len = seg.header.request.path_len.load(Ordering::Relaxed) as usize;
    if len > MAX_PATH_LEN {
        return Err(seg.protocol(format!("path length {len} > {MAX_PATH_LEN}")));
    }
    let mut bytes = vec![0u8; len];
    // SAFETY: `len <= MAX_PATH_LEN` (checked) bytes of the path area, which is MAX_PATH_LEN long;
    // the proxy wrote it before publishing Requested and does not touch it while Active.
    unsafe {
        ptr::copy_nonoverlapping(
            seg.region.path_area(seg.index).cast_const(),
            bytes.as_mut_ptr(),
            len,
        )
    };
    let path = String::from_utf8(bytes).map_err(|_| seg.protocol("path is not UTF-8"))?;
    if !path.starts_with('/') || path.contains('\0') {
        return Err(seg.protocol(format!(
            "path {path:?} does not start with '/' or holds a NUL"
        )));
    }
    Ok(path)
}

/// The writing end of a GET on the cache side. Dropping it before `finish` aborts.
pub struct GetWriter<'r> {
    producer: Producer<'r>,
    state: StreamState,
}

impl<'r> GetWriter<'r> {
    /// Bytes one chunk holds (half the segment).
    pub fn chunk_capacity(&self) -> usize {
        self.producer.seg.region.half_size()
    }

    /// The announced length.
    pub fn len(&self) -> u64 {
        self.producer.total
    }

    /// Whether the announced length is 0.
    pub fn is_empty(&self) -> bool {
        self.producer.total == 0
    }

    /// Bytes published so far.
    pub fn published(&self) -> u64 {
        self.producer.cursor.bytes
    }

    /// Waits up to `timeout` for a free half and returns it to fill. `Error::Aborted` if the
    /// proxy went away.
    pub fn next_buf(&mut self, timeout: Duration) -> Result<ChunkBuf<'_>> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        let started = Instant::now();
        match self.producer.wait_room(timeout) {
            Ok(Wake::Ready(value)) if value & ABORT == 0 => {
                if let Err(err) = self.producer.check_room(value) {
                    self.fail();
                    return Err(err);
                }
                Ok(self.producer.buf())
            }
            Ok(Wake::Ready(_)) => {
                self.fail();
                Err(Error::Aborted)
            }
            Ok(Wake::TimedOut) => {
                self.fail();
                Err(Error::Timeout {
                    what: "room",
                    waited: started.elapsed(),
                })
            }
            Err(err) => {
                self.fail();
                Err(err)
            }
        }
    }

    fn fail(&mut self) {
        self.state = StreamState::Aborted;
        self.producer.seg.finish_side(Side::Cache, true);
    }

    /// Checks that exactly the announced length was published and marks the cache side done.
    pub fn finish(mut self) -> Result<()> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        if self.producer.cursor.bytes != self.producer.total {
            self.fail();
            return Err(Error::LengthMismatch {
                announced: self.producer.total,
                actual: self.producer.cursor.bytes,
            });
        }
        self.state = StreamState::Done;
        self.producer.seg.finish_side(Side::Cache, false);
        Ok(())
    }
}

impl Drop for GetWriter<'_> {
    fn drop(&mut self) {
        if self.state == StreamState::Open {
            self.producer.seg.finish_side(Side::Cache, true);
        }
    }
}

/// A half of a segment being filled. `publish` hands it to the proxy; dropping it unpublished
/// publishes nothing.
pub struct ChunkBuf<'w> {
    ptr: *mut u8,
    capacity: usize,
    filled: usize,
    half_len: &'w AtomicU32,
    produced: &'w AtomicU32,
    cursor: &'w mut Cursor,
    answers: bool,
}

impl ChunkBuf<'_> {
    /// Hands the bytes written so far to the proxy. Publishing nothing is a no-op.
    /// `Error::Aborted` if the proxy had gone away meanwhile.
    pub fn publish(self) -> Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        if publish_half(
            self.half_len,
            self.produced,
            self.cursor,
            self.filled,
            self.answers,
        ) {
            return Err(Error::Aborted);
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn filled(&self) -> usize {
        self.filled
    }
}

impl ChunkDest for ChunkBuf<'_> {
    fn remaining(&self) -> usize {
        self.capacity - self.filled
    }

    fn put_slice(&mut self, src: &[u8]) -> io::Result<()> {
        if src.len() > self.remaining() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk buffer overflow",
            ));
        }
        // SAFETY: `filled + src.len() <= capacity <= half size`, so the copy stays inside the
        // half, which the producer owns until it is published (room was granted by the
        // consumer's release); `src` is ordinary memory of this process.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(self.filled), src.len()) };
        self.filled += src.len();
        Ok(())
    }

    fn put_file_range(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()> {
        if len > self.remaining() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk buffer overflow",
            ));
        }
        let mut done = 0;
        while done < len {
            let at = offset + done as u64;
            // SAFETY: `filled + len <= capacity` (checked), so `[filled + done, filled + len)` is
            // inside the half this producer owns (see `put_slice`).
            match unsafe {
                sys::pread_raw(
                    file.as_fd(),
                    self.ptr.add(self.filled + done),
                    len - done,
                    at,
                )
            } {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.filled += len;
        Ok(())
    }
}

impl std::fmt::Debug for ChunkBuf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuf")
            .field("capacity", &self.capacity)
            .field("filled", &self.filled)
            .finish()
    }
}

/// The reading end of a PUT on the cache side.
pub struct PutReader<'r> {
    consumer: Consumer<'r>,
    state: StreamState,
}

impl PutReader<'_> {
    /// The announced length.
    pub fn len(&self) -> u64 {
        self.consumer.total
    }

    /// Whether the announced length is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next chunk, waiting up to `timeout`; `Ok(None)` after the last byte.
    pub fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Chunk<'_>>> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        let started = Instant::now();
        match self.consumer.wait_chunk(timeout) {
            Ok(Incoming::Chunk { ptr, len }) => Ok(Some(self.consumer.chunk(ptr, len))),
            Ok(Incoming::End) => Ok(None),
            Ok(Incoming::Aborted) => {
                self.fail();
                Err(Error::Aborted)
            }
            Ok(Incoming::TimedOut) => {
                self.fail();
                Err(Error::Timeout {
                    what: "data",
                    waited: started.elapsed(),
                })
            }
            Err(err) => {
                self.fail();
                Err(err)
            }
        }
    }

    fn fail(&mut self) {
        self.state = StreamState::Aborted;
        self.consumer.seg.finish_side(Side::Cache, true);
    }

    /// Tells the proxy whether the object was stored, and marks the cache side done.
    pub fn complete(mut self, stored: bool) -> Result<()> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        if stored && self.consumer.cursor.bytes != self.consumer.total {
            self.fail();
            return Err(Error::LengthMismatch {
                announced: self.consumer.total,
                actual: self.consumer.cursor.bytes,
            });
        }
        let seg = &self.consumer.seg;
        seg.set_status(if stored {
            Status::Stored
        } else {
            Status::NotStored
        });
        futex::update_flag_word(&seg.header.consumed, |value| value | FINAL);
        self.state = StreamState::Done;
        seg.finish_side(Side::Cache, false);
        Ok(())
    }
}

impl Drop for PutReader<'_> {
    fn drop(&mut self) {
        if self.state == StreamState::Open {
            self.consumer.seg.finish_side(Side::Cache, true);
        }
    }
}

macro_rules! debug_transfer {
    ($($name:ident => $end:ident),*) => {$(
        impl std::fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("segment", &self.$end.seg.index)
                    .field("generation", &self.$end.seg.generation)
                    .field("total", &self.$end.total)
                    .field("bytes", &self.$end.cursor.bytes)
                    .field("state", &self.state)
                    .finish()
            }
        }
    )*};
}

debug_transfer!(GetStream => consumer, PutStream => producer, GetWriter => producer, PutReader => consumer);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegionConfig;
    use std::sync::Arc;

    const T: Duration = Duration::from_secs(10);

    fn region(segments: u32) -> Arc<Region> {
        let config = RegionConfig {
            segments,
            segment_size: 8192,
            cache_slots: 2,
            proxy_slots: 1,
        };
        Arc::new(Region::create(&config, None).unwrap())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A cache worker thread that serves `count` GETs from `object` (and stores PUTs it compares).
    fn serve(
        region: Arc<Region>,
        slot: u32,
        object: Vec<u8>,
        count: usize,
    ) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        std::thread::spawn(move || {
            let mut puts = Vec::new();
            let mut served = 0;
            while served < count {
                let Some(request) = region.next_request(CacheSlot::from_raw(slot), T).unwrap()
                else {
                    continue;
                };
                served += 1;
                match request.op() {
                    Op::Get if request.path() == "/missing" => request.not_found().unwrap(),
                    Op::Get => {
                        let mut writer = request.found(object.len() as u64).unwrap();
                        let mut offset = 0;
                        while offset < object.len() {
                            let mut buf = writer.next_buf(T).unwrap();
                            let n = buf.remaining().min(object.len() - offset);
                            buf.put_slice(&object[offset..offset + n]).unwrap();
                            buf.publish().unwrap();
                            offset += n;
                        }
                        writer.finish().unwrap();
                    }
                    Op::Put { .. } => {
                        let mut reader = request.accept().unwrap();
                        let mut body = Vec::new();
                        while let Some(chunk) = reader.next_chunk(T).unwrap() {
                            chunk.append_to(&mut body);
                        }
                        reader.complete(true).unwrap();
                        puts.push(body);
                    }
                }
            }
            puts
        })
    }

    fn fetch(region: &Region, slot: u32, path: &str) -> (Lookup, Vec<u8>) {
        let lease = region.acquire(T).unwrap();
        let mut stream = lease.get(CacheSlot::from_raw(slot), path, T).unwrap();
        let mut body = Vec::new();
        while let Some(chunk) = stream.next_chunk(T).unwrap() {
            chunk.append_to(&mut body);
        }
        (stream.lookup(), body)
    }

    #[test]
    fn control_word_round_trips() {
        let word = control_word(7, Phase::Requested, 4_000_000);
        assert_eq!(generation_of(word), 7);
        assert_eq!(Phase::of(word), Phase::Requested);
        assert_eq!(holder_of(word), 4_000_000);
    }

    #[test]
    fn get_round_trips_sizes_around_the_chunk() {
        for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 5] {
            let region = region(1);
            let object = pattern(len, 3);
            let cache = serve(Arc::clone(&region), 1, object.clone(), 1);
            let (lookup, body) = fetch(&region, 1, "/object");
            assert_eq!(lookup, Lookup::Found { len: len as u64 });
            assert!(body == object, "len {len}");
            cache.join().unwrap();
            assert_eq!(
                region.segment_counts(),
                SegmentCounts {
                    free: 1,
                    busy: 0,
                    quarantined: 0
                }
            );
        }
    }

    #[test]
    fn not_found_and_put() {
        let region = region(1);
        let cache = serve(Arc::clone(&region), 0, Vec::new(), 2);
        let (lookup, body) = fetch(&region, 0, "/missing");
        assert_eq!(lookup, Lookup::NotFound);
        assert!(body.is_empty());
        let object = pattern(10_000, 9);
        let mut put = region
            .acquire(T)
            .unwrap()
            .put(CacheSlot::from_raw(0), "/fill", object.len() as u64)
            .unwrap();
        put.write(&object[..100], T).unwrap();
        put.write(&object[100..], T).unwrap();
        put.finish(T).unwrap();
        assert_eq!(cache.join().unwrap(), vec![object]);
        assert_eq!(region.segment_counts().free, 1);
    }

    #[test]
    fn get_without_a_cache_times_out_and_frees_the_segment() {
        let region = region(1);
        let lease = region.acquire(T).unwrap();
        let err = lease
            .get(CacheSlot::from_raw(0), "/x", Duration::from_millis(30))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        // Never claimed: straight back to the pool.
        assert_eq!(region.segment_counts().free, 1);
    }

    #[test]
    fn stale_generation_cannot_touch_a_reused_segment() {
        let region = region(1);
        let lease = region.acquire(T).unwrap();
        let stale = Seg {
            region: &region,
            index: 0,
            generation: lease.generation().as_raw(),
            header: region.segment_header(0).unwrap(),
        };
        drop(lease);
        let fresh = region.acquire(T).unwrap();
        assert_ne!(fresh.generation().as_raw(), stale.generation);
        stale.finish_side(Side::Proxy, true);
        assert_eq!(
            region.segment_counts(),
            SegmentCounts {
                free: 0,
                busy: 1,
                quarantined: 0
            }
        );
        drop(fresh);
        assert_eq!(region.segment_counts().free, 1);
    }

    #[test]
    fn bad_slot_and_long_path_are_typed_errors() {
        let region = region(1);
        let err = region
            .acquire(T)
            .unwrap()
            .get(CacheSlot::from_raw(9), "/x", T)
            .err()
            .unwrap();
        assert!(matches!(err, Error::InvalidConfig(_)));
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        let err = region
            .acquire(T)
            .unwrap()
            .get(CacheSlot::from_raw(0), &long, T)
            .err()
            .unwrap();
        assert!(matches!(err, Error::PathTooLong { .. }));
        assert!(matches!(
            region.next_request(CacheSlot::from_raw(5), T),
            Err(Error::InvalidConfig(_))
        ));
        assert_eq!(region.segment_counts().free, 1);
    }

    #[test]
    fn many_gets_over_few_segments() {
        let region = region(2);
        let object = pattern(20_000, 1);
        let caches: Vec<_> = (0..2)
            .map(|_| serve(Arc::clone(&region), 0, object.clone(), 12))
            .collect();
        let proxies: Vec<_> = (0..4)
            .map(|_| {
                let region = Arc::clone(&region);
                let object = object.clone();
                std::thread::spawn(move || {
                    for _ in 0..6 {
                        let (_, body) = fetch(&region, 0, "/o");
                        assert!(body == object);
                    }
                })
            })
            .collect();
        for proxy in proxies {
            proxy.join().unwrap();
        }
        for cache in caches {
            cache.join().unwrap();
        }
        assert_eq!(region.segment_counts().free, 2);
    }

    #[test]
    fn dropping_a_get_stream_mid_transfer_aborts_the_writer() {
        let region = region(1);
        let writer_region = Arc::clone(&region);
        let cache = std::thread::spawn(move || {
            let request = loop {
                if let Some(request) = writer_region
                    .next_request(CacheSlot::from_raw(0), T)
                    .unwrap()
                {
                    break request;
                }
            };
            let mut writer = request.found(1 << 20).unwrap();
            loop {
                match writer.next_buf(T) {
                    Ok(mut buf) => {
                        let n = buf.remaining();
                        buf.put_slice(&vec![7u8; n]).unwrap();
                        if buf.publish().is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        assert!(matches!(err, Error::Aborted), "{err}");
                        return;
                    }
                }
            }
        });
        let mut stream = region
            .acquire(T)
            .unwrap()
            .get(CacheSlot::from_raw(0), "/big", T)
            .unwrap();
        drop(stream.next_chunk(T).unwrap());
        drop(stream);
        cache.join().unwrap();
        assert_eq!(region.segment_counts().free, 1);
    }

    #[test]
    fn declined_put() {
        let region = region(1);
        let cache_region = Arc::clone(&region);
        let cache = std::thread::spawn(move || loop {
            if let Some(request) = cache_region
                .next_request(CacheSlot::from_raw(0), T)
                .unwrap()
            {
                request.decline().unwrap();
                return;
            }
        });
        let mut put = region
            .acquire(T)
            .unwrap()
            .put(CacheSlot::from_raw(0), "/f", 100_000)
            .unwrap();
        let chunk = vec![1u8; 1000];
        let err = loop {
            if let Err(err) = put.write(&chunk, T) {
                break err;
            }
        };
        assert!(matches!(err, Error::Declined), "{err}");
        assert!(matches!(put.finish(T), Err(Error::Declined)));
        cache.join().unwrap();
        assert_eq!(region.segment_counts().free, 1);
    }

    /// Claims the next request of slot 0 and answers it by writing the header directly, as a
    /// broken or hostile peer could.
    fn forge_answer(region: &Region, status: u32, total: u64, half_len: u32, published: u32) {
        let request = loop {
            if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
                break request;
            }
        };
        let header = request.seg.as_ref().unwrap().header;
        header.request.status.store(status, Ordering::Relaxed);
        header.request.total_len.store(total, Ordering::Relaxed);
        header.half_len[0].store(half_len, Ordering::Relaxed);
        header.half_len[1].store(half_len, Ordering::Relaxed);
        futex::update_flag_word(&header.produced, |v| {
            (v & !COUNT_MASK) | ((v + published) & COUNT_MASK) | FINAL
        });
        std::mem::forget(request); // the forger never finishes its side
    }

    fn forged_get(forgery: impl FnOnce(&Region) + Send) -> Result<Vec<u8>> {
        let region = region(1);
        std::thread::scope(|scope| {
            scope.spawn(|| forgery(&region));
            let mut stream = region.acquire(T)?.get(CacheSlot::from_raw(0), "/x", T)?;
            let mut body = Vec::new();
            while let Some(chunk) = stream.next_chunk(T)? {
                chunk.append_to(&mut body);
            }
            Ok(body)
        })
    }

    #[test]
    fn impossible_values_from_the_peer_are_protocol_errors() {
        let status = forged_get(|r| forge_answer(r, 99, 10, 10, 1)).unwrap_err();
        assert!(matches!(status, Error::Protocol { .. }), "{status}");
        let too_long = forged_get(|r| forge_answer(r, 1, 1 << 20, 5000, 1)).unwrap_err();
        assert!(matches!(too_long, Error::Protocol { .. }), "{too_long}");
        let beyond_total = forged_get(|r| forge_answer(r, 1, 100, 200, 1)).unwrap_err();
        assert!(
            matches!(beyond_total, Error::Protocol { .. }),
            "{beyond_total}"
        );
        let empty = forged_get(|r| forge_answer(r, 1, 100, 0, 1)).unwrap_err();
        assert!(matches!(empty, Error::Protocol { .. }), "{empty}");
        let ahead = forged_get(|r| forge_answer(r, 1, 1 << 20, 4096, 5)).unwrap_err();
        assert!(matches!(ahead, Error::Protocol { .. }), "{ahead}");
    }

    #[test]
    fn a_malformed_path_is_answered_with_an_error() {
        let region = region(1);
        let lease = region.acquire(T).unwrap();
        let index = lease.segment().as_raw();
        std::thread::scope(|scope| {
            let cache = scope.spawn(|| {
                region
                    .next_request(CacheSlot::from_raw(0), Duration::from_millis(300))
                    .unwrap()
            });
            // Not starting with '/': the cache answers Error and keeps looking.
            let stream = lease.get(CacheSlot::from_raw(0), "relative", T).unwrap();
            assert_eq!(stream.lookup(), Lookup::Error);
            assert!(cache.join().unwrap().is_none());
        });
        // A path length beyond the area (the segment is free again: nobody else reads it).
        let header = region.segment_header(index).unwrap();
        header
            .request
            .path_len
            .store(MAX_PATH_LEN as u32 + 1, Ordering::Relaxed);
        let seg = Seg {
            region: &region,
            index,
            generation: 0,
            header,
        };
        assert!(matches!(read_path(&seg), Err(Error::Protocol { .. })));
    }

    #[test]
    fn a_put_whose_proxy_vanished_before_any_claim_is_reclaimed() {
        let region = region(1);
        let put = region
            .acquire(T)
            .unwrap()
            .put(CacheSlot::from_raw(0), "/p", 10)
            .unwrap();
        std::mem::forget(put);
        assert_eq!(region.segment_counts().busy, 1);
        assert_eq!(region.reclaim_dead(region.pid()), 1);
        assert_eq!(region.segment_counts().free, 1);
    }

    #[test]
    fn reclaim_of_a_vanished_cache_returns_the_segment() {
        let region = region(1);
        // Claim a request as a "cache" and then forget the handle, as a SIGKILL would.
        let proxy_region = Arc::clone(&region);
        let proxy = std::thread::spawn(move || {
            let lease = proxy_region.acquire(T).unwrap();
            lease
                .get(CacheSlot::from_raw(0), "/x", Duration::from_millis(200))
                .err()
                .unwrap()
        });
        let request = loop {
            if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
                break request;
            }
        };
        std::mem::forget(request);
        assert!(matches!(proxy.join().unwrap(), Error::Timeout { .. }));
        assert_eq!(region.segment_counts().quarantined, 1);
        assert_eq!(region.reclaim_dead(region.pid()), 1);
        assert_eq!(region.segment_counts().free, 1);
    }
}
