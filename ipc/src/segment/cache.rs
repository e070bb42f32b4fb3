//! The cache side: claiming requests, GET writers and PUT readers.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{
    control_word, generation_of, publish_half, Chunk, Consumer, Cursor, Incoming, Phase, Producer,
    Seg, Side, Status, StreamState, Wake, OP_GET, OP_PURGE, OP_PUT, OP_UPDATE, PURGE_PREFIX,
};
use crate::futex::{self, deadline_after, ABORT, FINAL};
use crate::ids::{ByteRange, CacheSlot, ObjectVersion, RequestId, SegmentIndex};
use crate::region::Region;
use crate::{sys, Error, Result, MAX_PATH_LEN};

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
    /// Store an object of this length (its metadata: [`CacheRequest::meta`]).
    Put {
        /// Announced length.
        len: u64,
    },
    /// Replace the metadata of the object, if it is still this version (the new metadata:
    /// [`CacheRequest::meta`]). Answer with [`CacheRequest::updated`].
    UpdateMeta {
        /// The version the metadata belongs to.
        version: ObjectVersion,
    },
    /// Remove the object, or every object whose path starts with the path. Answer with
    /// [`CacheRequest::purged`].
    Purge {
        /// The path is a prefix.
        prefix: bool,
    },
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Put { .. } => "PUT",
            Op::UpdateMeta { .. } => "UPDATE",
            Op::Purge { .. } => "PURGE",
        }
    }
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
        let mut backoff = futex::Backoff::new();
        loop {
            let seen = bell.seq.load(Ordering::SeqCst);
            while let Some(seg) = self.claim_oldest(slot) {
                if let Some(request) = CacheRequest::read(seg) {
                    return Ok(Some(request));
                }
            }
            if backoff.snooze() {
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
            let active = control_word(generation_of(word), Phase::Active, self.pid());
            if let Some(seg) = Seg::claim(self, index, word, active) {
                return Some(seg);
            }
            // Another worker took it or the proxy gave up: look again.
        }
    }
}

/// A request claimed by a cache worker. Dropping it unanswered answers `Lookup::Error` (GET) or
/// declines (PUT).
pub struct CacheRequest<'r> {
    pub(super) seg: Option<Seg<'r>>,
    op: Op,
    range: ByteRange,
    /// GET: the version the proxy asked for (`NONE`: any).
    wanted: ObjectVersion,
    path: String,
    meta: Vec<u8>,
    id: RequestId,
}

impl<'r> CacheRequest<'r> {
    /// Reads and checks the request fields of a freshly claimed segment. A malformed request is
    /// answered (error / decline) and `None` returned so the caller looks for the next one.
    fn read(seg: Seg<'r>) -> Option<CacheRequest<'r>> {
        let request = &seg.header.request;
        let op = match request.op.load(Ordering::Relaxed) {
            OP_GET => Op::Get,
            OP_PUT => Op::Put {
                len: request.announced_len.load(Ordering::Relaxed),
            },
            OP_UPDATE => Op::UpdateMeta {
                version: ObjectVersion::from_raw(
                    seg.header.answer.object_version.load(Ordering::Relaxed),
                ),
            },
            OP_PURGE => Op::Purge {
                prefix: seg.header.answer.command_flags.load(Ordering::Relaxed) & PURGE_PREFIX != 0,
            },
            other => {
                tracing::warn!(
                    segment = seg.index,
                    op = other,
                    "request with an unknown op"
                );
                seg.finish_side(Side::Cache, true);
                return None;
            }
        };
        let id = RequestId::from_raw(request.request_id.load(Ordering::Relaxed));
        let range = match op {
            Op::Get => ByteRange::from_words(
                request.range_offset.load(Ordering::Relaxed),
                request.range_len.load(Ordering::Relaxed),
            ),
            Op::Put { .. } | Op::UpdateMeta { .. } | Op::Purge { .. } => ByteRange::WHOLE,
        };
        let wanted = match op {
            Op::Get => {
                ObjectVersion::from_raw(seg.header.answer.object_version.load(Ordering::Relaxed))
            }
            Op::Put { .. } | Op::UpdateMeta { .. } | Op::Purge { .. } => ObjectVersion::NONE,
        };
        let fields = read_path(&seg).and_then(|path| {
            let meta = match op {
                Op::Put { .. } | Op::UpdateMeta { .. } => seg.read_meta()?,
                Op::Get | Op::Purge { .. } => Vec::new(),
            };
            Ok((path, meta))
        });
        match fields {
            Ok((path, meta)) => Some(CacheRequest {
                seg: Some(seg),
                op,
                range,
                wanted,
                path,
                meta,
                id,
            }),
            Err(err) => {
                tracing::warn!(segment = seg.index, %err, "malformed request");
                let answer = CacheRequest {
                    seg: Some(seg),
                    op,
                    range,
                    wanted,
                    path: String::new(),
                    meta: Vec::new(),
                    id,
                };
                drop(answer); // answers Error / declines
                None
            }
        }
    }

    /// GET or PUT.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The path, copied out of the header and checked (starts with '/', UTF-8, <= MAX_PATH_LEN).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// GET: the bytes of the object asked for ([`ByteRange::WHOLE`] for a PUT).
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// GET: the version the bytes must be of, when the proxy asked for one (the next range of
    /// a transfer it began); `None`: whatever the cache holds now.
    pub fn wanted_version(&self) -> Option<ObjectVersion> {
        (self.wanted != ObjectVersion::NONE).then_some(self.wanted)
    }

    /// PUT and UPDATE: the object's metadata as the proxy sent it (empty when none). Untrusted
    /// bytes: whoever decodes them must check them.
    pub fn meta(&self) -> &[u8] {
        &self.meta
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
        match self.op.name() == expected {
            true => self.seg.take().ok_or(Error::Aborted),
            false => Err(Error::Protocol {
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

    /// Answers a GET: found an object of `len` bytes, of no particular version (see
    /// [`CacheRequest::found_version`]).
    pub fn found(self, len: u64) -> Result<GetWriter<'r>> {
        self.found_version(len, ObjectVersion::NONE)
    }

    /// Answers a GET: found version `version` of an object of `len` bytes. The bytes of the
    /// requested range follow through the returned writer: [`GetWriter::len`] of them, from
    /// object offset [`GetWriter::next_offset`] on.
    pub fn found_version(self, len: u64, version: ObjectVersion) -> Result<GetWriter<'r>> {
        self.found_object(len, version, None)
    }

    /// [`CacheRequest::found_version`], also saying when the object was last modified.
    pub fn found_object(
        self,
        len: u64,
        version: ObjectVersion,
        modified: Option<std::time::SystemTime>,
    ) -> Result<GetWriter<'r>> {
        self.found_with_meta(len, version, modified, &[])
    }

    /// [`CacheRequest::found_object`] with the object's metadata (at most
    /// [`crate::MAX_META_LEN`] bytes; more answers the GET with an error).
    pub fn found_with_meta(
        mut self,
        len: u64,
        version: ObjectVersion,
        modified: Option<std::time::SystemTime>,
        meta: &[u8],
    ) -> Result<GetWriter<'r>> {
        let range = self.range;
        let seg = self.take("GET")?;
        if let Err(err) = seg.write_meta(meta) {
            Self::answer_get(seg, Status::Failed);
            return Err(err);
        }
        let modified_secs = modified
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_secs().max(1));
        seg.header
            .answer
            .modified_secs
            .store(modified_secs, Ordering::Relaxed);
        seg.header.request.total_len.store(len, Ordering::Relaxed);
        seg.header
            .answer
            .object_version
            .store(version.as_raw(), Ordering::Relaxed);
        seg.set_status(Status::Found);
        let body = range.len_within(len);
        if body == 0 {
            // Nothing will be published: the answer goes now.
            futex::update_flag_word(&seg.header.produced, |value| value | FINAL);
        }
        Ok(GetWriter {
            producer: Producer {
                seg,
                total: body,
                cursor: Cursor::default(),
                answers: true,
            },
            first_byte: range.offset,
            state: StreamState::Open,
        })
    }

    /// Answers an UPDATE: whether the metadata was replaced.
    pub fn updated(mut self, updated: bool) -> Result<()> {
        let seg = self.take("UPDATE")?;
        let status = if updated {
            Status::Stored
        } else {
            Status::NotStored
        };
        Self::answer_get(seg, status);
        Ok(())
    }

    /// Answers a PURGE: `removed` objects were removed.
    pub fn purged(mut self, removed: u64) -> Result<()> {
        let seg = self.take("PURGE")?;
        seg.header
            .request
            .total_len
            .store(removed, Ordering::Relaxed);
        Self::answer_get(seg, Status::Found);
        Ok(())
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
                Op::Get | Op::UpdateMeta { .. } | Op::Purge { .. } => {
                    Self::answer_get(seg, Status::Failed)
                }
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
pub(super) fn read_path(seg: &Seg<'_>) -> Result<String> {
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
    /// The object offset of the range's first byte.
    first_byte: u64,
    state: StreamState,
}

impl<'r> GetWriter<'r> {
    /// Bytes one chunk holds (half the segment).
    pub fn chunk_capacity(&self) -> usize {
        self.producer.seg.region.half_size()
    }

    /// The bytes this answer carries (the requested range within the object).
    pub fn len(&self) -> u64 {
        self.producer.total
    }

    /// The object offset of the next byte to publish.
    pub fn next_offset(&self) -> u64 {
        self.first_byte + self.producer.cursor.bytes
    }

    /// Whether the answer carries no bytes.
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

impl Producer<'_> {
    /// The half for chunk `cursor.next`, once room for it was granted.
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

    /// Whether the answer carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next chunk, waiting up to `timeout`; `Ok(None)` after the last byte.
    pub fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Chunk<'_>>> {
        if self.state != StreamState::Open {
            return Err(self.state.error());
        }
        match self.consumer.wait_chunk(timeout) {
            Ok(Incoming::Chunk { ptr, len }) => Ok(Some(self.consumer.chunk(ptr, len))),
            Ok(Incoming::End) => Ok(None),
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

debug_transfer!(GetWriter => producer, PutReader => consumer);
