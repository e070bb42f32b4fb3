//! Hits for clients that read slowly.
//!
//! A hit streams from the segment straight to the socket, one non-blocking write at a time.
//! While the client keeps up this is the whole story. When its socket buffer stays full for
//! [`SLOW_CLIENT_GRACE`], the client reads slower than the cache sends, and holding the segment
//! (and the cache worker filling it) for the rest of its transfer would let a few slow readers
//! take a cache slot down. So the transfer becomes *client-paced*: the rest of the chunk is copied
//! into a per-connection buffer, the segment is released, and from then on the proxy asks the
//! cache for the object one range of `client_buffer` bytes at a time (a separate GET of that
//! range, held only for the copy), sending each from its buffer at the client's pace.
//!
//! Every range must come from the same version of the object ([`ipc::ObjectVersion`]), and asks
//! for it: the cache keeps a directory's open file for the transfer, so a file renamed over the
//! path meanwhile is sent to the end from the old one; a file written in place, or an object
//! evicted, ends the connection (a short body), so a client never gets two versions stitched
//! together. Ranges are asked of the cache that served
//! the first bytes, then, when it cannot answer and the caches share their data, of the others
//! in rendezvous order.

use std::io;
use std::time::Duration;

use gfprotocol::ResponseWriter;
use ipc::{ByteRange, CacheSlot, Chunk, GetStream, Lookup, ObjectVersion};

use crate::error::Error;
use crate::metrics::Counter;
use crate::path::CanonicalPath;
use crate::request::{client_gone, Context};
use crate::stats::Outcome;

/// How long a full socket buffer may keep a segment before its client counts as slow. Long
/// enough for a client that reads at memory speed (loopback drains a buffer in microseconds),
/// short enough that a slow reader holds a cache worker for a moment only.
const SLOW_CLIENT_GRACE: Duration = Duration::from_millis(10);

/// How a chunk went out.
pub(crate) enum ChunkSent {
    /// All of it.
    Whole,
    /// The client reads slowly: these bytes of the chunk did not go out and are now the
    /// client's buffer.
    ClientSlow(Vec<u8>),
    /// The connection failed (the response is closed).
    Failed(io::Error),
}

/// Sends `chunk` straight from the segment. With `may_release` (the object has a version, so
/// its rest can be read in ranges later) a client that does not take the bytes within
/// [`SLOW_CLIENT_GRACE`] is reported slow instead of holding the segment.
pub(crate) fn send_chunk(
    response: &mut ResponseWriter<'_>,
    chunk: &Chunk<'_>,
    may_release: bool,
    client_buffer: usize,
) -> ChunkSent {
    if !may_release {
        return match response.send_body_with(chunk.len(), &mut |fd| chunk.send_all_to(fd)) {
            Ok(()) => ChunkSent::Whole,
            Err(error) => ChunkSent::Failed(error),
        };
    }
    let mut from = 0;
    while from < chunk.len() {
        let written = response
            .send_body_some_with(chunk.len() - from, &mut |fd| chunk.send_some_to(fd, from));
        match written {
            Ok(n) => from += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                match response.wait_writable(SLOW_CLIENT_GRACE) {
                    Ok(true) => {}
                    Ok(false) => {
                        let mut buffer = Vec::with_capacity(client_buffer.max(chunk.len() - from));
                        chunk.append_from_to(from, &mut buffer);
                        return ChunkSent::ClientSlow(buffer);
                    }
                    Err(error) => return ChunkSent::Failed(error),
                }
            }
            Err(error) => return ChunkSent::Failed(error),
        }
    }
    ChunkSent::Whole
}

/// Where a client-paced transfer stands.
pub(crate) struct Paced {
    /// The cache that served the last range.
    pub(crate) slot: CacheSlot,
    /// The object's length and version, as first answered.
    pub(crate) len: u64,
    pub(crate) version: ObjectVersion,
    /// The object offset of the first byte not yet in `buffer` or sent.
    pub(crate) next: u64,
    /// The object offset where the body ends.
    pub(crate) end: u64,
    /// Bytes read from the cache and not yet sent.
    pub(crate) buffer: Vec<u8>,
}

impl Paced {
    /// Bytes `next..end` of the object still to send, none buffered yet.
    pub(crate) fn new(
        slot: CacheSlot,
        len: u64,
        version: ObjectVersion,
        next: u64,
        end: u64,
    ) -> Self {
        Paced {
            slot,
            len,
            version,
            next,
            end,
            buffer: Vec::new(),
        }
    }

    fn next_range(&self, window: u64) -> ByteRange {
        ByteRange::new(self.next, window.min(self.end - self.next))
    }
}

/// Sends the rest of a hit at the client's pace: the buffer, then range after range. Each
/// buffered send blocks up to `send_timeout` without progress; no segment is held meanwhile.
pub(crate) fn finish(
    ctx: &Context,
    path: &CanonicalPath,
    paced: Paced,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    ctx.stats.incr(Counter::ClientPaced);
    send_rest(ctx, path, paced, response)
}

/// Goes on with a hit whose cache broke off mid-body (it died or stalled), from the caches that
/// share its data, if any holds the same version: the client never notices. Without one the
/// connection closes, as it would have anyway.
pub(crate) fn resume_elsewhere(
    ctx: &Context,
    path: &CanonicalPath,
    mut paced: Paced,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let range = paced.next_range(ctx.config.settings.client_buffer);
    if let Err(error) = read_range_elsewhere(ctx, path, range, &mut paced) {
        tracing::debug!(key = %path, %error, at = paced.next, "no other cache can resume");
        response.abort();
        return Outcome::Aborted;
    }
    ctx.stats.incr(Counter::Resumed);
    send_rest(ctx, path, paced, response)
}

/// Sends the buffer, then the rest of the body range by range.
pub(crate) fn send_rest(
    ctx: &Context,
    path: &CanonicalPath,
    mut paced: Paced,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let window = ctx.config.settings.client_buffer;
    loop {
        if let Err(error) = response.send_body(&paced.buffer) {
            return client_gone(&error, response);
        }
        paced.buffer.clear();
        if paced.next >= paced.end {
            return Outcome::Hit;
        }
        let range = paced.next_range(window);
        if let Err(error) = read_range(ctx, path, range, &mut paced) {
            tracing::debug!(key = %path, %error, at = paced.next, "a client-paced hit broke off");
            ctx.stats.incr(Counter::LookupErrors);
            response.abort();
            return Outcome::Aborted;
        }
    }
}

/// Reads `range` of the object into `paced.buffer`, from `paced.slot` or, when it cannot answer,
/// from the caches that share its data.
fn read_range(
    ctx: &Context,
    path: &CanonicalPath,
    range: ByteRange,
    paced: &mut Paced,
) -> Result<(), Error> {
    match read_range_from(ctx, paced.slot, path, range, paced) {
        Ok(()) => Ok(()),
        Err(error @ Error::ObjectChanged { .. }) => Err(error),
        Err(error) => {
            tracing::debug!(slot = paced.slot.as_raw(), %error, "a range failed; trying others");
            read_range_elsewhere(ctx, path, range, paced)
        }
    }
}

/// Reads `range` from the caches that share `paced.slot`'s data, in rendezvous order.
fn read_range_elsewhere(
    ctx: &Context,
    path: &CanonicalPath,
    range: ByteRange,
    paced: &mut Paced,
) -> Result<(), Error> {
    let mut last_error = Error::Cache {
        slot: paced.slot.as_raw(),
        source: ipc::Error::Aborted,
    };
    for slot in ctx
        .router
        .failover_order(&ctx.region, path.as_str(), paced.slot)
    {
        match read_range_from(ctx, slot, path, range, paced) {
            Ok(()) => {
                paced.slot = slot;
                return Ok(());
            }
            Err(error @ Error::ObjectChanged { .. }) => return Err(error),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

fn read_range_from(
    ctx: &Context,
    slot: CacheSlot,
    path: &CanonicalPath,
    range: ByteRange,
    paced: &mut Paced,
) -> Result<(), Error> {
    let timeout = ctx.config.settings.cache_timeout;
    let cache_error = |source| Error::Cache {
        slot: slot.as_raw(),
        source,
    };
    let lease = ctx.region.acquire(timeout).map_err(Error::NoSegment)?;
    let mut stream = lease
        .get_range_of(slot, path.as_str(), range, paced.version, timeout)
        .map_err(cache_error)?;
    check_same_object(&stream, slot, paced)?;
    let expected = stream.body_len();
    let start = paced.buffer.len();
    while let Some(chunk) = stream.next_chunk(timeout).map_err(cache_error)? {
        chunk.append_to(&mut paced.buffer);
    }
    let read = (paced.buffer.len() - start) as u64;
    if read != expected || expected == 0 {
        paced.buffer.truncate(start);
        return Err(cache_error(ipc::Error::Protocol {
            segment: stream.segment().as_raw(),
            what: format!("a range of {expected} bytes carried {read}"),
        }));
    }
    paced.next += read;
    Ok(())
}

fn check_same_object(stream: &GetStream<'_>, slot: CacheSlot, paced: &Paced) -> Result<(), Error> {
    let changed = |what: String| Err(Error::ObjectChanged { what });
    match stream.lookup() {
        Lookup::Found { len } if len != paced.len => {
            changed(format!("{len} bytes instead of {}", paced.len))
        }
        Lookup::Found { .. } if stream.version() != paced.version => {
            changed("another version".into())
        }
        Lookup::Found { .. } => Ok(()),
        Lookup::NotFound => changed("gone from the cache".into()),
        Lookup::Error => Err(Error::CacheFault {
            slot: slot.as_raw(),
        }),
    }
}
