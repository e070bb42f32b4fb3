//! The proxy side: leases, GET streams and PUT streams.

use std::ptr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{
    control_word, generation_of, publish_half, wait_word, Chunk, Consumer, Cursor, Incoming, Phase,
    Producer, Seg, Side, Status, StreamState, Wake, OP_GET, OP_PURGE, OP_PUT, OP_UPDATE,
    PURGE_PREFIX,
};
use crate::futex::{self, deadline_after, ABORT, FINAL};
use crate::ids::{ByteRange, CacheSlot, Generation, ObjectVersion, SegmentIndex};
use crate::region::Region;
use crate::{Error, Result, MAX_PATH_LEN};

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
            if let Some(seg) = Seg::claim(self, index, current, next) {
                return Some(seg);
            }
        }
        None
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
    fn send(&mut self, slot: CacheSlot, path: &str, words: RequestWords<'_>) -> Result<Seg<'r>> {
        let RequestWords {
            op,
            announced_len,
            range,
            version,
            flags,
            meta,
        } = words;
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
        let (range_offset, range_len) = range.to_words();
        request.range_offset.store(range_offset, Ordering::Relaxed);
        request.range_len.store(range_len, Ordering::Relaxed);
        header
            .answer
            .object_version
            .store(version, Ordering::Relaxed);
        header.answer.modified_secs.store(0, Ordering::Relaxed);
        header.answer.command_flags.store(flags, Ordering::Relaxed);
        if let Err(err) = seg.write_meta(meta) {
            seg.finish_side(Side::Proxy, false);
            return Err(err);
        }
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

    /// Asks cache `slot` for the whole object at `path` and waits up to `timeout` for its answer
    /// (the status and the first chunk). On timeout the segment is quarantined and
    /// `Error::Timeout` returned.
    pub fn get(self, slot: CacheSlot, path: &str, timeout: Duration) -> Result<GetStream<'r>> {
        self.get_range(slot, path, ByteRange::WHOLE, timeout)
    }

    /// [`Lease::get`] for the bytes of `range` only: the stream carries
    /// `range.len_within(object length)` bytes, and the answer still gives the whole object's
    /// length and its version.
    pub fn get_range(
        self,
        slot: CacheSlot,
        path: &str,
        range: ByteRange,
        timeout: Duration,
    ) -> Result<GetStream<'r>> {
        self.get_range_of(slot, path, range, ObjectVersion::NONE, timeout)
    }

    /// [`Lease::get_range`] asking for the bytes of `version` (`NONE`: any): the cache may
    /// still hold that version after the path changed
    /// ([`CacheRequest::wanted_version`](crate::CacheRequest::wanted_version)).
    /// The answer says which version it sends; the caller checks it.
    pub fn get_range_of(
        mut self,
        slot: CacheSlot,
        path: &str,
        range: ByteRange,
        version: ObjectVersion,
        timeout: Duration,
    ) -> Result<GetStream<'r>> {
        let started = Instant::now();
        let words = RequestWords {
            version: version.as_raw(),
            ..RequestWords::get(range)
        };
        let seg = self.send(slot, path, words)?;
        wait_for_answer(&seg, timeout, started)?;
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
        let (total, version, modified) = match lookup {
            Lookup::Found { len } => (
                range.len_within(len),
                seg.header.answer.object_version.load(Ordering::Acquire),
                seg.header.answer.modified_secs.load(Ordering::Acquire),
            ),
            Lookup::NotFound | Lookup::Error => (0, 0, 0),
        };
        let meta = match lookup {
            Lookup::Found { .. } => seg.read_meta(),
            Lookup::NotFound | Lookup::Error => Ok(Vec::new()),
        };
        let meta = match meta {
            Ok(meta) => meta,
            Err(err) => {
                seg.finish_side(Side::Proxy, true);
                return Err(err);
            }
        };
        Ok(GetStream {
            meta,
            version: ObjectVersion::from_raw(version),
            modified: (modified != 0)
                .then(|| std::time::UNIX_EPOCH + Duration::from_secs(modified)),
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
    pub fn put(self, slot: CacheSlot, path: &str, len: u64) -> Result<PutStream<'r>> {
        self.put_with_meta(slot, path, len, &[])
    }

    /// [`Lease::put`] with the object's metadata (at most [`crate::MAX_META_LEN`] bytes), which
    /// the cache stores with the object and gives back in every GET answer.
    pub fn put_with_meta(
        mut self,
        slot: CacheSlot,
        path: &str,
        len: u64,
        meta: &[u8],
    ) -> Result<PutStream<'r>> {
        let words = RequestWords {
            announced_len: len,
            meta,
            ..RequestWords::get(ByteRange::WHOLE).with_op(OP_PUT)
        };
        let seg = self.send(slot, path, words)?;
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

impl Lease<'_> {
    /// Asks cache `slot` to replace the metadata of the object at `path`, only if the object it
    /// holds is still version `version` (the bytes the metadata speaks of). `Ok(true)` when the
    /// cache updated it, `Ok(false)` when it holds no such object or declined.
    pub fn update_meta(
        mut self,
        slot: CacheSlot,
        path: &str,
        version: ObjectVersion,
        meta: &[u8],
        timeout: Duration,
    ) -> Result<bool> {
        let started = Instant::now();
        let words = RequestWords {
            version: version.as_raw(),
            meta,
            ..RequestWords::get(ByteRange::WHOLE).with_op(OP_UPDATE)
        };
        let seg = self.send(slot, path, words)?;
        wait_for_answer(&seg, timeout, started)?;
        let status = seg.status();
        seg.finish_side(Side::Proxy, false);
        match status? {
            Status::Stored => Ok(true),
            Status::NotStored | Status::NotFound | Status::Failed => Ok(false),
            other => Err(Error::Protocol {
                segment: seg.index,
                what: format!("status {other:?} answering an UPDATE"),
            }),
        }
    }

    /// Asks cache `slot` to remove the object at `path`, or with `prefix` every object whose
    /// path starts with `path`. Returns how many it removed.
    pub fn purge(
        mut self,
        slot: CacheSlot,
        path: &str,
        prefix: bool,
        timeout: Duration,
    ) -> Result<u64> {
        let started = Instant::now();
        let words = RequestWords {
            flags: if prefix { PURGE_PREFIX } else { 0 },
            ..RequestWords::get(ByteRange::WHOLE).with_op(OP_PURGE)
        };
        let seg = self.send(slot, path, words)?;
        wait_for_answer(&seg, timeout, started)?;
        let status = seg.status();
        let removed = seg.header.request.total_len.load(Ordering::Acquire);
        seg.finish_side(Side::Proxy, false);
        match status? {
            Status::Found => Ok(removed),
            Status::Failed => Err(Error::Protocol {
                segment: seg.index,
                what: "the cache failed the PURGE".into(),
            }),
            other => Err(Error::Protocol {
                segment: seg.index,
                what: format!("status {other:?} answering a PURGE"),
            }),
        }
    }
}

/// The request words a lease writes into the header before handing the segment over.
struct RequestWords<'m> {
    op: u32,
    announced_len: u64,
    range: ByteRange,
    /// UPDATE: the object version the metadata belongs to.
    version: u64,
    flags: u32,
    meta: &'m [u8],
}

impl RequestWords<'static> {
    fn get(range: ByteRange) -> RequestWords<'static> {
        RequestWords {
            op: OP_GET,
            announced_len: 0,
            range,
            version: 0,
            flags: 0,
            meta: &[],
        }
    }

    fn with_op(self, op: u32) -> RequestWords<'static> {
        RequestWords { op, ..self }
    }
}

/// Waits up to `timeout` for the cache's answer (FINAL on `produced`). On timeout or abort the
/// segment is released (quarantined when the cache holds it) and the error returned.
fn wait_for_answer(seg: &Seg<'_>, timeout: Duration, started: Instant) -> Result<()> {
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
    Ok(())
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
    /// Found; [`GetStream::body_len`] bytes of it follow.
    Found {
        /// The whole object's length.
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
    consumer: Consumer<'r>,
    meta: Vec<u8>,
    version: ObjectVersion,
    modified: Option<std::time::SystemTime>,
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

    /// The object's metadata as the cache stored it (empty when it has none). Untrusted bytes:
    /// whoever decodes them must check them.
    pub fn meta(&self) -> &[u8] {
        &self.meta
    }

    /// Bytes this stream carries: the requested range within the object (0 unless found).
    pub fn body_len(&self) -> u64 {
        self.consumer.total
    }

    /// The found object's version, as its cache names it ([`ObjectVersion`]): ranges of two
    /// answers with the same version fit together.
    pub fn version(&self) -> ObjectVersion {
        self.version
    }

    /// When the found object was last modified, as its cache says (whole seconds), if known.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        self.modified
    }

    /// The next chunk, waiting up to `timeout`; `Ok(None)` after the last byte.
    pub fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Chunk<'_>>> {
        match self.state {
            StreamState::Open => {}
            StreamState::Done => return Ok(None),
            other => return Err(other.error()),
        }
        let incoming = self.consumer.wait_chunk(timeout);
        match incoming {
            Ok(Incoming::Chunk { ptr, len }) => Ok(Some(self.consumer.chunk(ptr, len))),
            Ok(Incoming::End) => {
                self.state = StreamState::Done;
                self.consumer.seg.finish_side(Side::Proxy, false);
                Ok(None)
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

debug_transfer!(GetStream => consumer, PutStream => producer);
