//! The request path, top to bottom.
//!
//! [`handle`] reads like the design: validate and normalise the path -> pick the cache slot by
//! rendezvous hashing -> acquire a segment -> GET from that cache -> stream to the client
//! straight from the segment -> release. A miss goes to the origin (collapsed with concurrent
//! misses, filled into the owning cache); a cache that cannot answer before the OK header is
//! skipped: for the next cache in rendezvous order when the caches share their data (a
//! failover), else for the origin (a fallback). After the OK header a failure can only close the
//! connection.
//!
//! Freshness (the [`freshness`](crate::freshness) module decides): a copy the origin filled is
//! served while fresh; once stale it is revalidated with a conditional request first (collapsed
//! like a miss: one origin request however many clients ask), or served at once while one
//! background request refreshes it (stale-while-revalidate), or served while the origin fails
//! (stale-if-error).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use cache_backends::ObjectMeta;

use gfprotocol::http::CacheStatus;
use gfprotocol::{Delivery, Failure, ObjectHead, Request, ResponseHeader, ResponseWriter};
use ipc::{ByteRange, CacheSlot, Lookup, ObjectVersion, Region};

use crate::collapse::{Answer, Flights, Follower, Joined, Leader, SHARED_BODY_LIMIT};
use crate::error::{Error, Side};
use crate::fill::{run_fill, FillBudget, FillFeed, PiecePool, FILL_BACKLOG, PIECE_SIZE};
use crate::freshness::{self, Rules, Storable, Verdict};
use crate::hot::{Candidate, HotObjects};
use crate::metrics::{Counter, Gauge};
use crate::origin::{Origin, OriginAnswer, OriginBody, OriginHeaders};
use crate::paced::{self, ChunkSent, Paced};
use crate::path::CanonicalPath;
use crate::routing::{Route, Router};
use crate::stats::{Outcome, Stats};
use crate::warn_limit::WarnLimit;
use crate::ProxyConfig;

/// Background refreshes (stale-while-revalidate) in flight at most per proxy process; past it a
/// stale copy is still served and the next request past the bound tries again.
const MAX_BACKGROUND_REFRESHES: usize = 16;

/// Everything a request needs, shared by the worker threads of one proxy process.
pub(crate) struct Context {
    /// This context, for the background refreshes that outlive the request that started them.
    pub(crate) myself: Weak<Context>,
    /// The freshness settings.
    pub(crate) rules: Rules,
    /// Background refreshes running, by path.
    pub(crate) background_refreshes: Refreshing,
    pub(crate) region: Arc<Region>,
    pub(crate) config: ProxyConfig,
    pub(crate) router: Router,
    pub(crate) origin: Option<Origin>,
    pub(crate) flights: Flights,
    /// Bytes queued for fills across this process.
    pub(crate) fill_budget: Arc<FillBudget>,
    pub(crate) stats: Stats,
    /// Rate limit of the origin-failure warnings.
    pub(crate) origin_warnings: WarnLimit,
    /// Small fresh hits kept whole, answered by the front door itself; `None`: none are kept.
    pub(crate) hot: Option<HotObjects>,
}

/// Logs an origin failure at warn with the path and the reason, at most once a second (a dead
/// origin fails every request); the line says how many failures it stands for.
fn warn_origin_failure(ctx: &Context, path: &CanonicalPath, reason: &str) {
    if let Some(held_back) = ctx.origin_warnings.admit() {
        tracing::warn!(key = %path, reason, also_failed_since_last_warning = held_back, "origin failed");
    }
}

/// An error and its sources on one line ("connection refused" sits deep in reqwest's chain),
/// leaving out a source whose text is already shown.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Answers one GetFile request and records how it ended.
pub(crate) fn handle(ctx: &Context, request: &Request, response: &mut ResponseWriter<'_>) {
    let started = Instant::now();
    let _in_flight = ctx.stats.in_flight();
    let outcome = serve(ctx, &request.path, response);
    ctx.stats
        .finished(outcome, started.elapsed(), response.body_sent());
}

fn serve(ctx: &Context, raw_path: &str, response: &mut ResponseWriter<'_>) -> Outcome {
    // 1. Validate and normalise the path.
    let query = response
        .http_request()
        .and_then(|request| request.query.as_deref());
    let path = match cache_key(ctx, raw_path, query) {
        Ok(path) => path,
        Err(error) => {
            tracing::debug!(%error, "refused path");
            return reply(response, ResponseHeader::FileNotFound);
        }
    };
    let epoch = ctx.flights.epoch();

    // 2. Pick the cache slot by rendezvous hashing.
    let slot = match ctx.router.route(&ctx.region, path.as_str()) {
        Route::Cache(slot) => slot,
        Route::Unavailable(slot) => {
            tracing::debug!(slot = slot.as_raw(), key = %path, "cache unavailable");
            ctx.stats.incr(Counter::LookupErrors);
            return failover(ctx, &path, slot, epoch, response);
        }
        Route::NoCache => {
            tracing::debug!(key = %path, "every cache is quarantined");
            return fallback(ctx, &path, epoch, response);
        }
    };

    // 3-6. Acquire a segment, GET from that cache, stream from the segment, release.
    match from_cache(ctx, slot, &path, response, LookupMode::Check) {
        CacheResult::Served(outcome) => outcome,
        CacheResult::Miss => from_origin(ctx, &path, Some(slot), epoch, response),
        CacheResult::Stale(copy) => revalidate(ctx, &path, copy, epoch, response),
        CacheResult::Failed(error) => {
            tracing::debug!(slot = slot.as_raw(), key = %path, %error, "cache failed");
            ctx.stats.incr(Counter::LookupErrors);
            failover(ctx, &path, slot, epoch, response)
        }
    }
}

/// The object a request names: its canonical path and, with `proxy.http_cache_query`, an
/// HTTP request's query string.
pub(crate) fn cache_key(
    ctx: &Context,
    raw_path: &str,
    query: Option<&str>,
) -> Result<CanonicalPath, crate::path::PathError> {
    let path = CanonicalPath::parse(raw_path)?;
    match query {
        Some(query) if ctx.config.settings.http_cache_query => path.with_query(query),
        _ => Ok(path),
    }
}

/// The owner cannot answer. When every cache serves the same data (a shared backend), the next
/// caches in rendezvous order can; otherwise, or when none of them can, the origin.
fn failover(
    ctx: &Context,
    path: &CanonicalPath,
    owner: CacheSlot,
    epoch: u64,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    for slot in ctx.router.failover_order(&ctx.region, path.as_str(), owner) {
        match from_cache(ctx, slot, path, response, LookupMode::Check) {
            CacheResult::Served(outcome) => {
                ctx.stats.incr(Counter::Failovers);
                return outcome;
            }
            CacheResult::Stale(copy) => {
                ctx.stats.incr(Counter::Failovers);
                return revalidate(ctx, path, copy, epoch, response);
            }
            // The caches share their data: what one lacks, all lack.
            CacheResult::Miss => return from_origin(ctx, path, None, epoch, response),
            CacheResult::Failed(error) => {
                tracing::debug!(slot = slot.as_raw(), key = %path, %error, "failover cache failed");
                ctx.stats.incr(Counter::LookupErrors);
            }
        }
    }
    fallback(ctx, path, epoch, response)
}

/// What a cache lookup came to.
enum CacheResult {
    /// The cache answered and the response is done (a hit, or a transfer that broke after the
    /// header).
    Served(Outcome),
    /// The cache does not hold the object.
    Miss,
    /// The cache holds a copy that must be revalidated with the origin before it is used.
    Stale(StaleCopy),
    /// The cache could not answer before the OK header went out: skip it.
    Failed(Error),
}

/// How a lookup treats the freshness of the copy it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LookupMode {
    /// Serve it if fresh (or within stale-while-revalidate); else report it stale.
    Check,
    /// Serve it: the origin just said it is current (a 304).
    Revalidated,
    /// Serve it although stale: the origin failed and stale-if-error allows it.
    StaleOnError,
}

impl LookupMode {
    /// The lookup result a served copy counts as.
    fn counter(self) -> Counter {
        match self {
            LookupMode::Check => Counter::LookupHits,
            LookupMode::Revalidated => Counter::LookupRevalidated,
            LookupMode::StaleOnError => Counter::LookupStale,
        }
    }
}

/// A stored copy found stale: where it is, what it says of itself, and which bytes it names.
#[derive(Clone, Debug)]
pub(crate) struct StaleCopy {
    slot: CacheSlot,
    meta: ObjectMeta,
    version: ObjectVersion,
}

/// The metadata a cache answered with: `None` for content without any (never stale). Bytes that
/// do not decode make a copy that is revalidated at once and never served stale.
fn stored_meta(bytes: &[u8]) -> Option<ObjectMeta> {
    if bytes.is_empty() {
        return None;
    }
    match ObjectMeta::decode(bytes) {
        Ok(meta) => Some(meta),
        Err(error) => {
            tracing::debug!(%error, "undecodable object metadata: revalidating");
            Some(ObjectMeta {
                fresh_for: Some(0),
                must_revalidate: true,
                ..ObjectMeta::fresh_forever(SystemTime::UNIX_EPOCH)
            })
        }
    }
}

/// The response head of a stored copy: its validators, type and age.
fn stored_head(
    len: u64,
    version: Option<u64>,
    modified: Option<SystemTime>,
    meta: Option<&ObjectMeta>,
    now: SystemTime,
) -> ObjectHead {
    let Some(meta) = meta else {
        return ObjectHead {
            len,
            version,
            modified,
            cache: Some(CacheStatus::Hit),
            ..ObjectHead::default()
        };
    };
    ObjectHead {
        len,
        version,
        etag: meta.etag.clone(),
        modified: meta
            .last_modified
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .or(modified),
        content_type: meta.content_type.clone(),
        // Only a copy with a lifetime came from an origin and has an age worth telling.
        age: meta.fresh_for.map(|_| freshness::current_age(meta, now)),
        cache: Some(CacheStatus::Hit),
    }
}

/// Acquires a segment, GETs `path` from cache `slot` and streams a hit to the client straight
/// from the segment. The segment is released when the stream drops, at the end or at once when
/// the client goes away. The GET asks for the bytes the client wants (an HTTP range), and the
/// response head (200, 206, 304, 416, or a HEAD's) is chosen once the cache answered.
fn from_cache(
    ctx: &Context,
    slot: CacheSlot,
    path: &CanonicalPath,
    response: &mut ResponseWriter<'_>,
    mode: LookupMode,
) -> CacheResult {
    let timeout = ctx.config.settings.cache_timeout;
    let lease = match ctx.region.acquire(timeout) {
        Ok(lease) => lease,
        Err(error) => return CacheResult::Failed(Error::NoSegment(error)),
    };
    let wanted = match response.wanted_bytes() {
        (offset, Some(len)) => ByteRange::new(offset, len),
        (offset, None) => ByteRange::from(offset),
    };
    // Read before the lookup: a copy kept as a hot object must not outlive a purge that ran
    // while it was read.
    let read_under = ctx.region.content_epoch();
    let mut stream = match lease.get_range(slot, path.as_str(), wanted, timeout) {
        Ok(stream) => stream,
        Err(source) => return cache_failed(ctx, slot, source),
    };
    let object_len = match stream.lookup() {
        Lookup::Found { len } => len,
        Lookup::NotFound => {
            ctx.stats.incr(Counter::LookupMisses);
            return CacheResult::Miss;
        }
        Lookup::Error => {
            // One unreadable object says nothing about the cache's other objects: no suspicion.
            return CacheResult::Failed(Error::CacheFault {
                slot: slot.as_raw(),
            });
        }
    };
    // An object with a version can be sent in ranges: a slow client then releases the segment.
    let version = stream.version();
    let may_release = version != ObjectVersion::NONE;
    let client_buffer = usize::try_from(ctx.config.settings.client_buffer).unwrap_or(usize::MAX);
    let meta = stored_meta(stream.meta());
    let now = SystemTime::now();
    let mut served_as = mode.counter();
    // Until when the copy is fresh (`None`: as long as it is there); the epoch for a copy
    // that is not served as fresh.
    let mut fresh_until = None;
    if let (Some(meta), Some(_)) = (&meta, &ctx.origin) {
        fresh_until = freshness::expires_at(meta);
    }
    if mode != LookupMode::Check {
        fresh_until = Some(SystemTime::UNIX_EPOCH);
    }
    if let (Some(meta), LookupMode::Check, Some(_)) = (&meta, mode, &ctx.origin) {
        match freshness::verdict(meta, now, &ctx.rules) {
            Verdict::Fresh => {}
            Verdict::ServeAndRefresh => {
                served_as = Counter::LookupStale;
                fresh_until = Some(SystemTime::UNIX_EPOCH);
                refresh_in_background(ctx, path, slot, meta, version);
            }
            Verdict::Revalidate => {
                let meta = meta.clone();
                return CacheResult::Stale(StaleCopy {
                    slot,
                    meta,
                    version,
                });
            }
        }
    }
    if meta.as_ref().is_some_and(|meta| meta.status != 200) {
        // A stored 404 or 410 (negative caching).
        ctx.stats.incr(served_as);
        return CacheResult::Served(reply(response, ResponseHeader::FileNotFound));
    }
    let head = stored_head(
        object_len,
        may_release.then_some(version.as_raw()),
        stream.modified(),
        meta.as_ref(),
        now,
    );
    // Where the stream's bytes start in the object, and how many it carries.
    let first = wanted.offset;
    let mut body_len = stream.body_len();
    let mut slow_client = None;
    let mut broken_off = false;
    let mut sent: u64 = 0;
    while sent < body_len || !response.header_sent() {
        let chunk = match stream.next_chunk(timeout) {
            Ok(chunk) => chunk,
            // Until the header is out, a stalled or dead cache can still be skipped.
            Err(source) if !response.header_sent() => return cache_failed(ctx, slot, source),
            Err(source) => {
                suspect_if_unresponsive(ctx, slot, &source);
                tracing::debug!(slot = slot.as_raw(), error = %source, "cache broke off after the header");
                ctx.stats.incr(Counter::LookupErrors);
                broken_off = may_release;
                if !may_release {
                    response.abort();
                    return CacheResult::Served(Outcome::Aborted);
                }
                break;
            }
        };
        if !response.header_sent() {
            if chunk.is_none() && body_len > 0 {
                return CacheResult::Failed(short_object(slot));
            }
            ctx.stats.incr(served_as);
            match response.send_object(&head) {
                Err(error) => return CacheResult::Served(client_gone(&error, response)),
                // HEAD, 304, 416: nothing more to send.
                Ok(Delivery::NoBody) => return CacheResult::Served(Outcome::Hit),
                Ok(Delivery::Body { offset, len }) if offset == first && len == body_len => {}
                // Another part than the one asked for (a suffix range): fetched on its own.
                Ok(Delivery::Body { offset, len }) if may_release => {
                    drop(chunk);
                    drop(stream);
                    let paced = Paced::new(slot, object_len, version, offset, offset + len);
                    return CacheResult::Served(paced::send_rest(ctx, path, paced, response));
                }
                Ok(Delivery::Body { len, .. }) => body_len = len,
            }
        }
        let Some(chunk) = chunk else { break };
        let chunk_len = chunk.len() as u64;
        if sent + chunk_len > body_len {
            ctx.router.suspect(&ctx.region, slot);
            let outcome = cache_broke_off(ctx, slot, &overlong_object(slot), response);
            return CacheResult::Served(outcome);
        }
        // 5. Stream to the client straight from the segment (the server coalesces a pending
        // header with these bytes, so a small object still leaves in one segment). A client
        // that reads slowly goes on at its own pace, without the segment.
        if first == 0 && chunk_len == object_len && body_len == object_len {
            // Kept before the client has the last byte, so that its next request (a new
            // GetFile connection may come before this thread would be back) finds the copy.
            keep_hot(
                ctx,
                path,
                &head,
                &chunk,
                meta.as_ref(),
                read_under,
                fresh_until,
            );
        }
        match paced::send_chunk(response, &chunk, may_release, client_buffer) {
            ChunkSent::Whole => sent += chunk_len,
            ChunkSent::ClientSlow(buffer) => {
                // The buffer holds the rest of this chunk: the next range starts after it.
                let next = first + sent + chunk_len;
                let mut paced = Paced::new(slot, object_len, version, next, first + body_len);
                paced.buffer = buffer;
                slow_client = Some(paced);
                break;
            }
            ChunkSent::Failed(error) => return CacheResult::Served(client_gone(&error, response)),
        }
    }
    if let Some(paced) = slow_client {
        // Releases the segment and the cache worker behind it.
        drop(stream);
        return CacheResult::Served(paced::finish(ctx, path, paced, response));
    }
    if broken_off {
        drop(stream);
        let paced = Paced::new(slot, object_len, version, first + sent, first + body_len);
        return CacheResult::Served(paced::resume_elsewhere(ctx, path, paced, response));
    }
    if sent < body_len {
        ctx.router.suspect(&ctx.region, slot);
        let outcome = cache_broke_off(ctx, slot, &short_object(slot), response);
        return CacheResult::Served(outcome);
    }
    // 6. Release: `stream` drops here and its segment goes back to the pool.
    CacheResult::Served(Outcome::Hit)
}

/// Keeps a copy of a whole object just served fresh from its cache as a hot object, when
/// hot objects are kept and it is small.
fn keep_hot(
    ctx: &Context,
    path: &CanonicalPath,
    head: &ObjectHead,
    chunk: &ipc::Chunk<'_>,
    meta: Option<&ObjectMeta>,
    read_under: u64,
    fresh_until: Option<SystemTime>,
) {
    let Some(hot) = ctx.hot.as_ref().filter(|hot| hot.takes(chunk.len() as u64)) else {
        return;
    };
    let mut body = Vec::with_capacity(chunk.len());
    chunk.append_to(&mut body);
    let copy = Candidate {
        head: head.clone(),
        body,
        meta,
        fresh_until,
    };
    let epoch = ctx.region.content_epoch();
    hot.keep(path.as_str(), copy, read_under, epoch, SystemTime::now());
    ctx.stats.set(Gauge::HotBytes, hot.bytes());
}

fn cache_failed(ctx: &Context, slot: CacheSlot, source: ipc::Error) -> CacheResult {
    suspect_if_unresponsive(ctx, slot, &source);
    CacheResult::Failed(Error::Cache {
        slot: slot.as_raw(),
        source,
    })
}

/// Pauses routing to a cache that stopped answering or answered nonsense, so that it costs one
/// timeout rather than one per request. A cache that aborted one transfer (an unreadable
/// object) is alive and still serves its other objects; a dead one is already Down in its
/// state word.
fn suspect_if_unresponsive(ctx: &Context, slot: CacheSlot, error: &ipc::Error) {
    if matches!(
        error,
        ipc::Error::Timeout { .. } | ipc::Error::Protocol { .. }
    ) {
        ctx.router.suspect(&ctx.region, slot);
    }
}

fn cache_broke_off(
    ctx: &Context,
    slot: CacheSlot,
    error: &dyn std::error::Error,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    tracing::debug!(slot = slot.as_raw(), %error, "cache broke off after the header");
    ctx.stats.incr(Counter::LookupErrors);
    response.abort();
    Outcome::Aborted
}

fn short_object(slot: CacheSlot) -> Error {
    Error::Cache {
        slot: slot.as_raw(),
        source: ipc::Error::Protocol {
            segment: 0,
            what: "the object ended before its announced length".into(),
        },
    }
}

fn overlong_object(slot: CacheSlot) -> Error {
    Error::Cache {
        slot: slot.as_raw(),
        source: ipc::Error::Protocol {
            segment: 0,
            what: "the object ran past its announced length".into(),
        },
    }
}

/// The owner cannot answer: serve from the origin, or ERROR without one.
fn fallback(
    ctx: &Context,
    path: &CanonicalPath,
    epoch: u64,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    ctx.stats.incr(Counter::Fallbacks);
    if ctx.origin.is_none() {
        return fail(response, Failure::Unavailable);
    }
    from_origin(ctx, path, None, epoch, response)
}

/// A miss: fetch from the origin, collapsed with concurrent misses of the same path, filling
/// cache `fill_slot` if given. Without an origin a miss is FILE_NOT_FOUND.
fn from_origin(
    ctx: &Context,
    path: &CanonicalPath,
    fill_slot: Option<CacheSlot>,
    epoch: u64,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let Some(origin) = &ctx.origin else {
        return reply(response, ResponseHeader::FileNotFound);
    };
    let fetch = Fetch {
        origin,
        path,
        fill_slot,
        stale: None,
    };
    match ctx.flights.join(path, epoch) {
        Joined::Follower(follower) => {
            ctx.stats.incr(Counter::Collapsed);
            follow(ctx, &fetch, follower, response)
        }
        Joined::Leader(leader) => {
            if leader.is_stale() {
                // A flight for this path may have filled the cache since our lookup.
                if let Some(slot) = fill_slot {
                    match from_cache(ctx, slot, path, response, LookupMode::Check) {
                        CacheResult::Served(outcome) => {
                            leader.abandon();
                            return outcome;
                        }
                        CacheResult::Miss => {}
                        CacheResult::Stale(copy) => {
                            return fetch.with_stale(copy).run(ctx, Some(leader), response);
                        }
                        CacheResult::Failed(error) => {
                            tracing::debug!(%error, "cache failed on the second look");
                            ctx.stats.incr(Counter::LookupErrors);
                            ctx.stats.incr(Counter::Fallbacks);
                            return fetch.without_fill().run(ctx, Some(leader), response);
                        }
                    }
                }
            }
            fetch.run(ctx, Some(leader), response)
        }
    }
}

/// A stale copy: revalidate it with the origin (collapsed with every other request for the
/// path), then serve it, its replacement, or (the origin failing) maybe the stale copy.
fn revalidate(
    ctx: &Context,
    path: &CanonicalPath,
    copy: StaleCopy,
    epoch: u64,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let Some(origin) = &ctx.origin else {
        // Only a proxy with an origin finds copies stale.
        return serve_copy(ctx, path, &copy, LookupMode::Revalidated, response);
    };
    let fetch = Fetch {
        origin,
        path,
        fill_slot: Some(copy.slot),
        stale: Some(copy),
    };
    match ctx.flights.join(path, epoch) {
        Joined::Follower(follower) => {
            ctx.stats.incr(Counter::Collapsed);
            follow(ctx, &fetch, follower, response)
        }
        Joined::Leader(leader) => fetch.run(ctx, Some(leader), response),
    }
}

/// One origin fetch of a request: what to fetch, where to fill it, and the stale copy it
/// revalidates, if any.
struct Fetch<'a> {
    origin: &'a Origin,
    path: &'a CanonicalPath,
    fill_slot: Option<CacheSlot>,
    stale: Option<StaleCopy>,
}

impl Fetch<'_> {
    fn with_stale(self, copy: StaleCopy) -> Self {
        Fetch {
            fill_slot: Some(copy.slot),
            stale: Some(copy),
            ..self
        }
    }

    fn without_fill(self) -> Self {
        Fetch {
            fill_slot: None,
            ..self
        }
    }

    fn run(
        &self,
        ctx: &Context,
        leader: Option<Leader<'_>>,
        response: &mut ResponseWriter<'_>,
    ) -> Outcome {
        fetch(ctx, self, leader, response)
    }

    /// The stale copy, if the origin's failure lets it be served now (stale-if-error).
    fn stale_on_error(&self, ctx: &Context) -> Option<&StaleCopy> {
        let now = SystemTime::now();
        self.stale
            .as_ref()
            .filter(|copy| freshness::may_serve_on_error(&copy.meta, now, &ctx.rules))
    }
}

/// Serves a collapsed request from its leader's fetch.
fn follow(
    ctx: &Context,
    fetch: &Fetch<'_>,
    follower: Follower,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let path = fetch.path;
    let len = match follower.wait_answer(ctx.config.settings.collapse_timeout) {
        Answer::Body { len } => len,
        Answer::NotFound => return reply(response, ResponseHeader::FileNotFound),
        Answer::Refreshed => {
            if let Some(copy) = &fetch.stale {
                return serve_copy(ctx, path, copy, LookupMode::Revalidated, response);
            }
            drop(follower);
            return alone(ctx, fetch, response);
        }
        Answer::Error => {
            if let Some(copy) = fetch.stale_on_error(ctx) {
                return serve_copy(ctx, path, copy, LookupMode::StaleOnError, response);
            }
            return fail(response, Failure::Origin);
        }
        Answer::OnYourOwn => {
            drop(follower);
            return alone(ctx, fetch, response);
        }
    };
    if let Err(error) = response.send_object(&miss_head(len, None)) {
        return client_gone(&error, response);
    }
    let mut sent: u64 = 0;
    let mut index = 0;
    while sent < len {
        let pieces = match follower.next_pieces(index, ctx.config.settings.origin_timeout) {
            Ok(pieces) if !pieces.is_empty() => pieces,
            Ok(_) | Err(_) => {
                tracing::debug!(key = %path, "the shared origin body broke off");
                response.abort();
                return Outcome::Aborted;
            }
        };
        for piece in pieces {
            if let Err(error) = response.send_body(&piece) {
                return client_gone(&error, response);
            }
            sent += piece.len() as u64;
            index += 1;
        }
    }
    Outcome::Miss
}

/// A follower whose leader did not share: the leader may have found the object in the cache,
/// or filled or refreshed it, meanwhile; else fetch without a flight.
fn alone(ctx: &Context, fetch: &Fetch<'_>, response: &mut ResponseWriter<'_>) -> Outcome {
    let Some(slot) = fetch.fill_slot else {
        return fetch_alone(ctx, fetch, None, response);
    };
    match from_cache(ctx, slot, fetch.path, response, LookupMode::Check) {
        CacheResult::Served(outcome) => outcome,
        CacheResult::Miss => fetch_alone(ctx, fetch, None, response),
        CacheResult::Stale(copy) => fetch_alone(ctx, fetch, Some(copy), response),
        CacheResult::Failed(error) => {
            tracing::debug!(%error, "cache failed on the second look");
            ctx.stats.incr(Counter::LookupErrors);
            ctx.stats.incr(Counter::Fallbacks);
            let unfilled = Fetch {
                fill_slot: None,
                stale: None,
                ..*fetch
            };
            fetch_alone(ctx, &unfilled, None, response)
        }
    }
}

fn fetch_alone(
    ctx: &Context,
    fetch: &Fetch<'_>,
    stale: Option<StaleCopy>,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let own = Fetch {
        stale: stale.or_else(|| fetch.stale.clone()),
        ..*fetch
    };
    own.run(ctx, None, response)
}

/// Fetches the path from the origin (conditionally, when it revalidates a stale copy) and
/// serves what comes back: a 200 streamed to the client, shared with the leader's followers and
/// filled when it may be stored; a 304 by refreshing the copy's metadata and serving it; a
/// 404/410 (stored when negative caching is on); a failure (maybe by the stale copy).
fn fetch(
    ctx: &Context,
    fetch: &Fetch<'_>,
    leader: Option<Leader<'_>>,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let path = fetch.path;
    let validators = fetch
        .stale
        .as_ref()
        .and_then(|copy| freshness::validators(&copy.meta));
    if validators.is_some() {
        ctx.stats.incr(Counter::OriginConditional);
    }
    let requested = SystemTime::now();
    let answer = fetch.origin.fetch(path, validators.as_ref());
    let received = SystemTime::now();
    match answer {
        Ok(OriginAnswer::Found(body)) => {
            let storable = freshness::storable(body.headers(), requested, received, &ctx.rules);
            found(ctx, fetch, *body, storable, leader, response)
        }
        Ok(OriginAnswer::NotModified(headers)) => {
            ctx.stats.incr(Counter::OriginNotModified);
            let Some(copy) = &fetch.stale else {
                // Origin::fetch answers 304 only to a request that sent validators.
                return fail(response, Failure::Origin);
            };
            refresh_copy(ctx, path, copy, &headers, requested, received);
            if let Some(leader) = leader {
                leader.refreshed();
            }
            serve_copy(ctx, path, copy, LookupMode::Revalidated, response)
        }
        Ok(OriginAnswer::NotFound(headers)) => {
            ctx.stats.incr(Counter::OriginNotFound);
            if let Some(copy) = &fetch.stale {
                // The origin no longer has it: neither may the cache.
                purge_copy(ctx, path, copy.slot);
            }
            if let Some(slot) = fetch.fill_slot {
                if let Storable::Yes(meta) =
                    freshness::storable(&headers, requested, received, &ctx.rules)
                {
                    store_negative(ctx, path, slot, &meta);
                }
            }
            if let Some(leader) = leader {
                leader.not_found();
            }
            reply(response, ResponseHeader::FileNotFound)
        }
        Err(error) => {
            warn_origin_failure(ctx, path, &with_causes(&error));
            ctx.stats.incr(Counter::OriginError);
            if let Some(leader) = leader {
                leader.error();
            }
            if let Some(copy) = fetch.stale_on_error(ctx) {
                return serve_copy(ctx, path, copy, LookupMode::StaleOnError, response);
            }
            fail(response, origin_failure(&error))
        }
    }
}

/// Serves a 200 from the origin: stored (filled, shared with followers) when it may be, else
/// streamed to this client only.
fn found(
    ctx: &Context,
    fetch: &Fetch<'_>,
    mut body: OriginBody,
    storable: Storable,
    leader: Option<Leader<'_>>,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let path = fetch.path;
    let (fill_slot, meta, leader) = match storable {
        Storable::Yes(meta) => (fetch.fill_slot, Some(meta), leader),
        // no-store or private: for this client only, never shared with followers.
        Storable::No => {
            if let Some(copy) = &fetch.stale {
                purge_copy(ctx, path, copy.slot);
            }
            if let Some(leader) = leader {
                leader.abandon();
            }
            (None, None, None)
        }
    };
    let meta = meta.as_ref();
    match body.content_length() {
        Some(len) => stream_origin(ctx, path, &mut body, len, fill_slot, meta, leader, response),
        None => match body.read_to_end_bounded(ctx.config.settings.max_object_size) {
            Ok(bytes) => {
                let bytes = Arc::from(bytes);
                send_buffered(ctx, path, bytes, fill_slot, meta, leader, response)
            }
            Err(error) => {
                warn_origin_failure(ctx, path, &with_causes(&error));
                ctx.stats.incr(Counter::OriginError);
                if let Some(leader) = leader {
                    leader.error();
                }
                fail(response, origin_failure(&error))
            }
        },
    }
}

/// Serves a stored copy the request path already decided on (revalidated, or stale while the
/// origin fails). A copy that went meanwhile (evicted, purged) leaves nothing to serve but an
/// error: the origin was just asked.
fn serve_copy(
    ctx: &Context,
    path: &CanonicalPath,
    copy: &StaleCopy,
    mode: LookupMode,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    match from_cache(ctx, copy.slot, path, response, mode) {
        CacheResult::Served(outcome) => outcome,
        CacheResult::Miss | CacheResult::Stale(_) => fail(response, Failure::Origin),
        CacheResult::Failed(error) => {
            tracing::debug!(%error, "cache failed serving a revalidated copy");
            ctx.stats.incr(Counter::LookupErrors);
            fail(response, Failure::Unavailable)
        }
    }
}

/// After a 304: the copy's metadata with the freshness the origin just gave, written back for
/// the version that was revalidated (a copy replaced meanwhile keeps its own).
fn refresh_copy(
    ctx: &Context,
    path: &CanonicalPath,
    copy: &StaleCopy,
    headers: &OriginHeaders,
    requested: SystemTime,
    received: SystemTime,
) {
    let Some(meta) = freshness::refreshed(&copy.meta, headers, requested, received, &ctx.rules)
    else {
        // The 304 says it may no longer be stored: serve it this once, then drop it.
        purge_copy(ctx, path, copy.slot);
        return;
    };
    let timeout = ctx.config.settings.cache_timeout;
    let updated = ctx.region.acquire(timeout).and_then(|lease| {
        lease.update_meta(
            copy.slot,
            path.as_str(),
            copy.version,
            &meta.encode(),
            timeout,
        )
    });
    match updated {
        Ok(true) => {}
        Ok(false) => tracing::debug!(key = %path, "the revalidated copy changed meanwhile"),
        Err(error) => tracing::debug!(key = %path, %error, "refreshing the metadata failed"),
    }
}

/// Removes the cache's copy of `path` (the origin dropped it, or forbids storing it now).
fn purge_copy(ctx: &Context, path: &CanonicalPath, slot: CacheSlot) {
    let timeout = ctx.config.settings.cache_timeout;
    let purged = ctx
        .region
        .acquire(timeout)
        .and_then(|lease| lease.purge(slot, path.as_str(), false, timeout));
    if let Err(error) = purged {
        tracing::debug!(key = %path, %error, "removing a stale copy failed");
    }
    ctx.region.advance_content_epoch();
}

/// Stores a 404/410 as an empty object whose metadata says so (negative caching).
fn store_negative(ctx: &Context, path: &CanonicalPath, slot: CacheSlot, meta: &ObjectMeta) {
    let timeout = ctx.config.settings.cache_timeout;
    let stored = ctx.region.acquire(timeout).and_then(|lease| {
        lease
            .put_with_meta(slot, path.as_str(), 0, &meta.encode())?
            .finish(timeout)
    });
    match stored {
        Ok(()) => ctx.stats.incr(Counter::FillsStored),
        Err(error) => {
            tracing::debug!(key = %path, %error, "negative entry not stored");
            ctx.stats.incr(Counter::FillsDropped);
        }
    }
}

/// Starts one background refresh of a copy served stale (stale-while-revalidate), unless one
/// is running for the path already or too many are running.
fn refresh_in_background(
    ctx: &Context,
    path: &CanonicalPath,
    slot: CacheSlot,
    meta: &ObjectMeta,
    version: ObjectVersion,
) {
    let Some(ctx) = ctx.myself.upgrade() else {
        return;
    };
    // Registered before the thread starts: every stale hit until the refresh ends finds it
    // (a flight alone would let a thread that starts late refresh once more).
    if !ctx.background_refreshes.begin(path) {
        return;
    }
    let copy = StaleCopy {
        slot,
        meta: meta.clone(),
        version,
    };
    let owned = path.clone();
    let worker = Arc::clone(&ctx);
    let spawned = thread::Builder::new()
        .name("gfproxy-refresh".into())
        .spawn(move || {
            refresh(&worker, &owned, copy);
            worker.background_refreshes.end(&owned);
        });
    if let Err(error) = spawned {
        tracing::debug!(%error, "no refresh thread");
        ctx.background_refreshes.end(path);
    }
}

/// The paths being refreshed in the background: one refresh per path at a time, at most
/// [`MAX_BACKGROUND_REFRESHES`] in all.
#[derive(Debug, Default)]
pub(crate) struct Refreshing(Mutex<HashSet<CanonicalPath>>);

impl Refreshing {
    /// Registers a refresh of `path`; false when one runs for it already or too many run.
    fn begin(&self, path: &CanonicalPath) -> bool {
        let mut paths = self.lock();
        paths.len() < MAX_BACKGROUND_REFRESHES && paths.insert(path.clone())
    }

    fn end(&self, path: &CanonicalPath) {
        self.lock().remove(path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<CanonicalPath>> {
        // One set operation per use: a poisoned lock is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The background refresh: one per path (a flight already running for it does the work), with
/// no client: a 304 refreshes the metadata, a 200 fills the new object, a 404 drops the copy.
fn refresh(ctx: &Context, path: &CanonicalPath, copy: StaleCopy) {
    let Some(origin) = &ctx.origin else { return };
    let Joined::Leader(leader) = ctx.flights.join(path, ctx.flights.epoch()) else {
        return;
    };
    ctx.stats.incr(Counter::BackgroundRefreshes);
    let validators = freshness::validators(&copy.meta);
    if validators.is_some() {
        ctx.stats.incr(Counter::OriginConditional);
    }
    let requested = SystemTime::now();
    let answer = origin.fetch(path, validators.as_ref());
    let received = SystemTime::now();
    match answer {
        Ok(OriginAnswer::NotModified(headers)) => {
            ctx.stats.incr(Counter::OriginNotModified);
            refresh_copy(ctx, path, &copy, &headers, requested, received);
            leader.refreshed();
        }
        Ok(OriginAnswer::Found(mut body)) => {
            leader.abandon();
            let storable = freshness::storable(body.headers(), requested, received, &ctx.rules);
            match (storable, body.content_length()) {
                (Storable::Yes(meta), Some(len)) => {
                    fill_unattended(ctx, path, copy.slot, &mut body, len, &meta)
                }
                _ => purge_copy(ctx, path, copy.slot),
            }
        }
        Ok(OriginAnswer::NotFound(_)) => {
            ctx.stats.incr(Counter::OriginNotFound);
            purge_copy(ctx, path, copy.slot);
            leader.abandon();
        }
        Err(error) => {
            warn_origin_failure(ctx, path, &with_causes(&error));
            ctx.stats.incr(Counter::OriginError);
            leader.abandon();
        }
    }
}

/// Fills cache `slot` with an origin body no client waits for (a background refresh).
fn fill_unattended(
    ctx: &Context,
    path: &CanonicalPath,
    slot: CacheSlot,
    body: &mut OriginBody,
    len: u64,
    meta: &ObjectMeta,
) {
    let Some(slot) = fill_target(ctx, Some(slot), len) else {
        return;
    };
    let feed = FillFeed::new(FILL_BACKLOG, Arc::clone(&ctx.fill_budget));
    let received = with_fill(ctx, path, len, Some(slot), Some(meta), Some(&feed), || {
        let mut buf = vec![0u8; PIECE_SIZE];
        let mut received: u64 = 0;
        while received < len {
            let n = match body.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let keep = usize::try_from(len - received).map_or(n, |left| n.min(left));
            let piece: Arc<[u8]> = Arc::from(buf.get(..keep).unwrap_or_default());
            if !feed.push(piece) {
                break;
            }
            received += keep as u64;
        }
        if received == len {
            feed.complete();
        } else {
            feed.cancel();
        }
        received
    });
    match received == len {
        true => ctx.stats.incr(Counter::OriginOk),
        false => {
            warn_origin_failure(
                ctx,
                path,
                &format!("refresh cut short after {received} of {len} bytes"),
            );
            ctx.stats.incr(Counter::OriginError);
        }
    }
}

/// Streams an origin body of announced length `len` to the client as it arrives, sharing it with
/// the leader's followers and feeding the fill of cache `fill_slot` (stored with `meta`) on its
/// own thread.
#[allow(clippy::too_many_arguments)]
fn stream_origin(
    ctx: &Context,
    path: &CanonicalPath,
    body: &mut OriginBody,
    len: u64,
    fill_slot: Option<CacheSlot>,
    meta: Option<&ObjectMeta>,
    leader: Option<Leader<'_>>,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    let max = ctx.config.settings.max_object_size;
    // Followers share a body small enough to keep; for a larger one that will be filled they
    // wait and read the cache; one too large to fill they fetch themselves.
    let share = len <= max.min(SHARED_BODY_LIMIT);
    let leader = match leader {
        Some(leader) if share => {
            leader.start_body(len);
            Some(leader)
        }
        Some(leader) if len <= max && fill_slot.is_some() => {
            leader.start_unshared();
            Some(leader)
        }
        Some(leader) => {
            leader.abandon();
            None
        }
        None => None,
    };
    let tee = Tee {
        leader: leader.as_ref().filter(|_| share),
        feed: fill_target(ctx, fill_slot, len)
            .map(|_| FillFeed::new(FILL_BACKLOG, Arc::clone(&ctx.fill_budget))),
    };
    let (received, client) = with_fill(ctx, path, len, fill_slot, meta, tee.feed.as_ref(), || {
        let pumped = pump(path, body, len, meta, &tee, leader.as_ref(), response);
        if let Some(feed) = &tee.feed {
            if pumped.0 == len {
                feed.complete();
            } else {
                feed.cancel();
            }
        }
        pumped
    });
    // The fill thread has committed or dropped the fill by now: end the flight only after it,
    // so that a request arriving after this one either follows the flight or hits the cache.

    if received < len {
        if let Some(leader) = leader {
            leader.broken();
        }
        if let ClientState::Gone(error) = &client {
            return client_gone(error, response);
        }
        warn_origin_failure(
            ctx,
            path,
            &format!("cut short after {received} of {len} bytes"),
        );
        ctx.stats.incr(Counter::OriginError);
        response.abort();
        return Outcome::Aborted;
    }
    ctx.stats.incr(Counter::OriginOk);
    if let Some(leader) = leader {
        leader.complete();
    }
    match client {
        ClientState::Open => Outcome::Miss,
        ClientState::Gone(error) => client_gone(&error, response),
    }
}

/// Where the pieces of an origin body go besides the client.
struct Tee<'a, 'f> {
    /// The flight's shared pieces, when followers can share the body.
    leader: Option<&'a Leader<'f>>,
    /// The fill thread's feed.
    feed: Option<FillFeed>,
}

impl Tee<'_, '_> {
    fn wants_pieces(&self) -> bool {
        self.leader.is_some() || self.feed.is_some()
    }

    fn push(&self, piece: &Arc<[u8]>) {
        if let Some(leader) = self.leader {
            leader.push_shared(Arc::clone(piece));
        }
        if let Some(feed) = &self.feed {
            feed.push(Arc::clone(piece));
        }
    }
}

/// Reads the body and sends it to the client and the tee. Returns the bytes received from the
/// origin and the client's state.
///
/// The body is read into pieces of [`PIECE_SIZE`] bytes (the last one shorter) taken from the
/// process's [`PiecePool`]: each read goes on to the client as it arrives, and a piece, once
/// full, to the tee, which shares it (a reference, not a copy) with the fill and the followers.
/// Reading straight into the piece saves the copy from a read buffer into it, and reusing the
/// pool's buffers saves the page faults of fresh memory.
fn pump(
    path: &CanonicalPath,
    body: &mut OriginBody,
    len: u64,
    meta: Option<&ObjectMeta>,
    tee: &Tee<'_, '_>,
    leader: Option<&Leader<'_>>,
    response: &mut ResponseWriter<'_>,
) -> (u64, ClientState) {
    let mut client = match response.send_object(&miss_head(len, meta)) {
        Ok(_) => ClientState::Open,
        Err(error) => ClientState::Gone(error),
    };
    let pool = PiecePool::process();
    let mut received: u64 = 0;
    let mut ended = false;
    while received < len && !ended {
        let want = usize::try_from(len - received).map_or(PIECE_SIZE, |left| left.min(PIECE_SIZE));
        let mut buffer = pool.take();
        let Some(space) = Arc::get_mut(&mut buffer).and_then(|b| b.get_mut(..want)) else {
            // `take` hands out buffers nobody else holds, of PIECE_SIZE bytes.
            break;
        };
        let mut filled = 0;
        let mut client_left = false;
        while filled < want {
            let into = space.get_mut(filled..).unwrap_or_default();
            let n = match body.read(into) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => n,
                Err(error) => {
                    tracing::debug!(key = %path, %error, "origin body broke off");
                    ended = true;
                    break;
                }
            };
            if let ClientState::Open = client {
                let bytes = space.get(filled..filled + n).unwrap_or_default();
                if let Err(error) = response.send_body(bytes) {
                    client = ClientState::Gone(error);
                }
            }
            if let ClientState::Gone(_) = client {
                // Keep fetching only for requests that wait on this fetch.
                if !leader.is_some_and(Leader::has_followers) {
                    client_left = true;
                    break;
                }
            }
            filled += n;
        }
        // Back into the pool: free again once the tee's holders are done with it (at once if
        // nobody else wants the bytes, or for a short piece, whose bytes are copied out).
        pool.keep(&buffer);
        if client_left {
            return (received, client);
        }
        if filled == 0 {
            break;
        }
        if tee.wants_pieces() {
            let piece = if filled == buffer.len() {
                buffer
            } else {
                Arc::from(buffer.get(..filled).unwrap_or_default())
            };
            tee.push(&piece);
        }
        received += filled as u64;
    }
    (received, client)
}

/// The slot to fill, if the object may be filled (counts a fill too large to take as dropped).
fn fill_target(ctx: &Context, fill_slot: Option<CacheSlot>, len: u64) -> Option<CacheSlot> {
    let slot = fill_slot?;
    if len > ctx.config.settings.max_object_size {
        ctx.stats.incr(Counter::FillsDropped);
        return None;
    }
    Some(slot)
}

/// Runs `serve` on this thread while a fill thread PUTs what `feed` receives into cache
/// `fill_slot`, with `meta`; returns once both are done. Without metadata (the answer may not
/// be stored) nothing is filled. A body of one piece is filled on this thread, after `serve`.
fn with_fill<T>(
    ctx: &Context,
    path: &CanonicalPath,
    len: u64,
    fill_slot: Option<CacheSlot>,
    meta: Option<&ObjectMeta>,
    feed: Option<&FillFeed>,
    serve: impl FnOnce() -> T,
) -> T {
    let (Some(slot), Some(feed), Some(meta)) = (fill_slot, feed, meta) else {
        if let Some(feed) = feed {
            feed.cancel();
        }
        return serve();
    };
    let meta = meta.encode();
    let fill = || {
        run_fill(
            &ctx.region,
            &ctx.stats,
            slot,
            path,
            len,
            &meta,
            feed,
            ctx.config.settings.origin_timeout,
            ctx.config.settings.cache_timeout,
        )
    };
    if len <= PIECE_SIZE as u64 {
        // A body of one piece is all in the feed by the time `serve` is done with the client:
        // fill it here, after the client has every byte, rather than on a thread of its own
        // (a thread per small miss cost more than the fill).
        let served = serve();
        fill();
        return served;
    }
    thread::scope(|scope| {
        let filler = thread::Builder::new()
            .name("gfproxy-fill".into())
            .spawn_scoped(scope, fill);
        if let Err(error) = &filler {
            tracing::debug!(%error, "no fill thread");
            ctx.stats.incr(Counter::FillsDropped);
            feed.cancel();
        }
        serve()
    })
}

/// Serves a body that was read whole (it came without a Content-Length).
fn send_buffered(
    ctx: &Context,
    path: &CanonicalPath,
    bytes: Arc<[u8]>,
    fill_slot: Option<CacheSlot>,
    meta: Option<&ObjectMeta>,
    leader: Option<Leader<'_>>,
    response: &mut ResponseWriter<'_>,
) -> Outcome {
    ctx.stats.incr(Counter::OriginOk);
    let len = bytes.len() as u64;
    if let Some(leader) = &leader {
        leader.start_body(len);
        leader.push_shared(Arc::clone(&bytes));
    }
    let feed = fill_target(ctx, fill_slot, len).map(|_| {
        let feed = FillFeed::new(FILL_BACKLOG, Arc::clone(&ctx.fill_budget));
        feed.push(Arc::clone(&bytes));
        feed.complete();
        feed
    });
    let sent = with_fill(ctx, path, len, fill_slot, meta, feed.as_ref(), || {
        response
            .send_object(&miss_head(len, meta))
            .and_then(|_| response.send_body(&bytes))
    });
    if let Some(leader) = leader {
        leader.complete();
    }
    match sent {
        Ok(()) => Outcome::Miss,
        Err(error) => client_gone(&error, response),
    }
}

/// Whether the client can still be written to.
enum ClientState {
    Open,
    Gone(std::io::Error),
}

/// The client went away or stalled: nothing more to send.
pub(crate) fn client_gone(error: &std::io::Error, response: &mut ResponseWriter<'_>) -> Outcome {
    let error = Error::Client(std::io::Error::new(error.kind(), error.to_string()));
    debug_assert_eq!(error.side(), Side::Client);
    tracing::debug!(%error, "client gone");
    response.abort();
    Outcome::Aborted
}

/// The head of an origin answer: the origin's validators and type, as stored (`meta`).
fn miss_head(len: u64, meta: Option<&ObjectMeta>) -> ObjectHead {
    ObjectHead {
        len,
        etag: meta.and_then(|meta| meta.etag.clone()),
        modified: meta
            .and_then(|meta| meta.last_modified)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        content_type: meta.and_then(|meta| meta.content_type.clone()),
        age: meta.map(|meta| meta.initial_age),
        cache: Some(CacheStatus::Miss),
        ..ObjectHead::default()
    }
}

fn origin_failure(error: &Error) -> Failure {
    match error.is_origin_timeout() {
        true => Failure::OriginTimeout,
        false => Failure::Origin,
    }
}

/// Answers that the request failed (GetFile: ERROR).
fn fail(response: &mut ResponseWriter<'_>, failure: Failure) -> Outcome {
    if let Err(error) = response.send_failure(failure) {
        return client_gone(&error, response);
    }
    Outcome::Error
}

/// Sends a header-only answer.
fn reply(response: &mut ResponseWriter<'_>, header: ResponseHeader) -> Outcome {
    let outcome = match header {
        ResponseHeader::FileNotFound => Outcome::NotFound,
        ResponseHeader::Invalid => Outcome::Invalid,
        ResponseHeader::Error | ResponseHeader::Ok { .. } => Outcome::Error,
    };
    if let Err(error) = response.send_header(header) {
        return client_gone(&error, response);
    }
    outcome
}
