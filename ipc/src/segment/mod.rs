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

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::futex::{self, deadline_after, ABORT, COUNT_MASK, FINAL};
use crate::region::{Region, SegmentCounts, SegmentHeader};
use crate::{sys, Error, Result};

/// `Debug` for the four transfer handles: where they are, never the bytes.
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

mod cache;
mod proxy;
#[cfg(test)]
mod tests;

pub use cache::{CacheRequest, ChunkBuf, ChunkDest, GetWriter, Op, PutReader};
pub use proxy::{GetStream, Lease, Lookup, PutStream};

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
const OP_UPDATE: u32 = 3;
const OP_PURGE: u32 = 4;

/// `command_flags` of a PURGE: the path is a prefix.
const PURGE_PREFIX: u32 = 1;

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
    /// Takes segment `index` by one CAS of its control word from `current` to `next`; `None`
    /// when another process changed the word first.
    fn claim(region: &'r Region, index: u32, current: u64, next: u64) -> Option<Seg<'r>> {
        let header = region.segment_header(index)?;
        header
            .control
            .compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(Seg {
            region,
            index,
            generation: generation_of(next),
            header,
        })
    }

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

    /// Copies `meta` into the metadata area. Only the side that owns the segment's header at
    /// this point of the protocol calls it (the proxy while Reserved, the cache before FINAL).
    fn write_meta(&self, meta: &[u8]) -> Result<()> {
        if meta.len() > crate::MAX_META_LEN {
            return Err(Error::InvalidConfig(format!(
                "{} bytes of object metadata > {}",
                meta.len(),
                crate::MAX_META_LEN
            )));
        }
        if !meta.is_empty() {
            // SAFETY: `meta.len() <= MAX_META_LEN` (checked), the metadata area holds
            // MAX_META_LEN bytes, and the caller owns the header at this point of the protocol.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    meta.as_ptr(),
                    self.region.meta_area(self.index),
                    meta.len(),
                )
            };
        }
        self.header
            .answer
            .meta_len
            .store(meta.len() as u32, Ordering::Release);
        Ok(())
    }

    /// Copies the metadata out of the metadata area (checked against `MAX_META_LEN`); the other
    /// side wrote it before the hand-off that lets this side read it.
    fn read_meta(&self) -> Result<Vec<u8>> {
        let len = self.header.answer.meta_len.load(Ordering::Acquire) as usize;
        if len > crate::MAX_META_LEN {
            return Err(self.protocol(format!("metadata length {len} > {}", crate::MAX_META_LEN)));
        }
        let mut meta = vec![0u8; len];
        // SAFETY: `len <= MAX_META_LEN` (checked) bytes of the metadata area, which is
        // MAX_META_LEN long; the writer finished before the hand-off this read follows.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.meta_area(self.index).cast_const(),
                meta.as_mut_ptr(),
                len,
            )
        };
        Ok(meta)
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
    /// A consumer count that is impossible (ahead of what was published) also ends the wait, for
    /// [`Producer::check_room`] to report.
    fn wait_room(&self, timeout: Duration) -> Result<Wake> {
        let next = self.cursor.next;
        wait_word(&self.seg.header.consumed, timeout, |value| {
            value & (ABORT | FINAL) != 0 || chunk_distance(next, value) != 2
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

/// What a consumer's wait for data found (an abort or a timeout is an error).
enum Incoming {
    Chunk { ptr: *const u8, len: usize },
    End,
}

impl<'r> Consumer<'r> {
    fn wait_chunk(&self, timeout: Duration) -> Result<Incoming> {
        if self.cursor.bytes >= self.total {
            return Ok(Incoming::End);
        }
        let next = self.cursor.next;
        let started = Instant::now();
        let value = match wait_word(&self.seg.header.produced, timeout, |value| {
            value & ABORT != 0 || chunk_distance(value, next) != 0
        })? {
            Wake::TimedOut => {
                return Err(Error::Timeout {
                    what: "data",
                    waited: started.elapsed(),
                })
            }
            Wake::Ready(value) => value,
        };
        if value & ABORT != 0 {
            return Err(Error::Aborted);
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

    /// Sends the whole chunk to the socket `fd` with `send(2)` and `MSG_NOSIGNAL`, straight from
    /// shared memory (loops on short sends and EINTR; EAGAIN from a send timeout is an error). A
    /// peer that went away is an error (`EPIPE`), never SIGPIPE, whatever the process's SIGPIPE
    /// disposition. `fd` must be a socket (`ENOTSOCK` otherwise).
    pub fn send_all_to(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut written = 0;
        while written < self.len {
            // SAFETY: `ptr..ptr+len` lies in one half of the segment (the consumer checked `len`
            // against the half size), and the producer does not touch this half until the
            // chunk is released in `drop`.
            match unsafe { sys::send_raw(fd, self.ptr.add(written), self.len - written) } {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Sends bytes `from..` of the chunk to the socket `fd` with one `send(2)` that does not
    /// block (`MSG_DONTWAIT | MSG_NOSIGNAL`), straight from shared memory: how many went out,
    /// or `WouldBlock` when the socket buffer is full. For a sender that would rather release
    /// the segment than wait for a slow reader.
    pub fn send_some_to(&self, fd: BorrowedFd<'_>, from: usize) -> io::Result<usize> {
        if from >= self.len {
            return Ok(0);
        }
        loop {
            // SAFETY: `from < len`, so `ptr+from..ptr+len` lies in this chunk's half, stable
            // until release (see `send_all_to`).
            match unsafe { sys::send_raw_nonblocking(fd, self.ptr.add(from), self.len - from) } {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Appends a copy of the chunk to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        self.append_from_to(0, out);
    }

    /// Appends a copy of bytes `from..` of the chunk to `out` (nothing if `from` is past the end).
    pub fn append_from_to(&self, from: usize, out: &mut Vec<u8>) {
        let Some(len) = self.len.checked_sub(from) else {
            return;
        };
        out.reserve(len);
        let start = out.len();
        // SAFETY: the source `ptr+from..ptr+len` is inside this chunk's half, stable until
        // release (see `send_all_to`); the destination is the spare capacity reserved just
        // above, which cannot overlap shared memory; `set_len` covers exactly the bytes copied.
        unsafe {
            ptr::copy_nonoverlapping(self.ptr.add(from), out.as_mut_ptr().add(start), len);
            out.set_len(start + len);
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

// ---------------------------------------------------------------------------------------------
// Pool reclamation and counts

impl Region {
    /// Returns every segment that process `pid` (known dead) was part of to the pool, or frees it
    /// from that side. Returns how many segments it touched.
    ///
    /// Only for the pid of a process already reaped: a live process would lose its segments.
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

    /// Aborts every transfer that the live process `pid` (usually the caller itself, shutting
    /// down) takes part in: both peers see `Error::Aborted` at their next step, and waiters are
    /// woken now. Unlike [`Region::reclaim_dead`] nothing is released here: each side releases
    /// the segment itself when it notices, so a thread of `pid` still copying into a segment can
    /// never write into one that was already handed to another request. Returns how many
    /// transfers it aborted.
    pub fn abort_transfers_of(&self, pid: i32) -> usize {
        if pid <= 0 {
            return 0;
        }
        let mut aborted = 0;
        for index in 0..self.config().segments {
            let Some(header) = self.segment_header(index) else {
                break;
            };
            let current = header.control.load(Ordering::Acquire);
            let involved = holder_of(current) == pid
                || header.request.proxy_pid.load(Ordering::Acquire) == pid;
            if Phase::of(current) == Phase::Active && involved {
                let generation = generation_of(current);
                futex::raise_flag(&header.produced, ABORT, generation);
                futex::raise_flag(&header.consumed, ABORT, generation);
                aborted += 1;
            }
        }
        aborted
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
