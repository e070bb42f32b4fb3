//! The cache process loop: a pool of workers serving one cache slot's requests from a backend.
//!
//! Life of a run: the slot goes Starting, then Ready once the workers run (or Unavailable while
//! the backend says it cannot answer: a damaged or changed pack); each worker claims requests
//! with a short timeout so that it notices the stop flag; GETs are copied chunk by chunk from the
//! backend object into the segment, PUTs are fed into a backend fill. The supervising thread
//! asks the backend every 20 ms whether it can answer and moves the slot between Ready and
//! Unavailable. When the stop flag is set the slot goes Draining, workers take no new requests,
//! transfers in flight may finish until `shutdown_timeout` and are aborted after it, the gauges
//! are published a last time and the slot goes Down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ipc::{CacheRequest, GetWriter, Member, MemberState, ObjectVersion, Op, Region, StatsBlock};

use crate::metrics::{Counter, Gauge};
use crate::retained::Retained;
use crate::{
    Availability, BackendStats, CacheBackend, CacheProcessConfig, CachedObject, Error, ObjectMeta,
};

/// How long a worker waits for a request before it checks the stop flag again.
const CLAIM_INTERVAL: Duration = Duration::from_millis(100);
/// How often the backend's stats are copied into the gauges.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the supervising thread looks at the stop flag and the workers.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// Pause after a failed claim, so that a broken region does not spin a core.
const CLAIM_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// While the backend stays unavailable for the same reason, the error is logged again this
/// often (a new reason is logged at once).
const UNAVAILABLE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the supervising thread tells the workers.
struct Shared<'a> {
    region: &'a Region,
    backend: &'a dyn CacheBackend,
    config: &'a CacheProcessConfig,
    stop: &'a AtomicBool,
    /// Set when the shutdown deadline passed: transfers in flight give up.
    abort: AtomicBool,
    /// When draining: the shutdown deadline, so that waits for the proxy end by then.
    drain_deadline: OnceLock<Instant>,
    in_flight: AtomicU64,
    running_workers: AtomicUsize,
    /// Objects of transfers that go on in ranges (`retained.rs`).
    retained: Retained,
}

impl Shared<'_> {
    fn stats(&self) -> StatsBlock<'_> {
        self.region.stats(Member::Cache(self.config.slot))
    }

    /// How long the next wait for the proxy may take: the transfer timeout, cut short by the
    /// shutdown deadline once draining.
    fn wait_budget(&self) -> Duration {
        match self.drain_deadline.get() {
            Some(deadline) => self
                .config
                .transfer_timeout
                .min(deadline.saturating_duration_since(Instant::now())),
            None => self.config.transfer_timeout,
        }
    }
}

pub(crate) fn run(
    region: &Region,
    backend: &dyn CacheBackend,
    config: &CacheProcessConfig,
    stop: &AtomicBool,
) -> Result<(), Error> {
    if config.workers == 0 {
        return Err(Error::Config(
            "a cache process needs at least one worker".into(),
        ));
    }
    let slots = region.config().cache_slots;
    if config.slot.as_raw() >= slots {
        return Err(Error::Config(format!(
            "cache slot {} does not exist (the region has {slots})",
            config.slot.as_raw()
        )));
    }
    let member = Member::Cache(config.slot);
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    region.set_member_state(member, MemberState::Starting, pid);
    let shared = Shared {
        region,
        backend,
        config,
        stop,
        abort: AtomicBool::new(false),
        drain_deadline: OnceLock::new(),
        in_flight: AtomicU64::new(0),
        running_workers: AtomicUsize::new(config.workers),
        retained: Retained::default(),
    };
    let spawned = thread::scope(|scope| -> Result<(), Error> {
        for number in 0..config.workers {
            let shared = &shared;
            let spawned = thread::Builder::new()
                .name(format!("cache{}-worker{number}", config.slot.as_raw()))
                .spawn_scoped(scope, move || {
                    worker_loop(shared);
                    shared.running_workers.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(source) = spawned {
                // Stop the workers already running (they watch `abort`) and report.
                shared
                    .running_workers
                    .fetch_sub(config.workers - number, Ordering::AcqRel);
                shared.abort.store(true, Ordering::Release);
                return Err(Error::Io {
                    path: "worker thread".into(),
                    source,
                });
            }
        }
        let mut availability = AvailabilityLog::new(config.slot);
        let mut missed_purges = MissedPurgeLog::default();
        // Before the slot is Ready, so that nothing a purge removed while it was down is served.
        make_up_for_missed_purges(&shared, member, &mut missed_purges);
        region.set_member_state(member, availability.update(backend.refresh()), pid);
        // This process may serve other content than the one before it in the slot (a reload
        // changed the backend, or it emptied itself above): copies of objects kept outside the
        // caches (the proxies' hot objects) are dropped.
        region.advance_content_epoch();
        supervise(&shared, member, pid, &mut availability, &mut missed_purges);
        Ok(())
    });
    publish_gauges(&shared.stats(), &backend.stats(), 0);
    region.set_member_state(member, MemberState::Down, pid);
    tracing::info!(slot = config.slot.as_raw(), "cache stopped");
    spawned
}

/// Whether the backend can answer, as the slot's member state, and the logging of its changes.
struct AvailabilityLog {
    slot: ipc::CacheSlot,
    /// `None` before the first answer.
    last: Option<Availability>,
    last_logged: Instant,
}

impl AvailabilityLog {
    fn new(slot: ipc::CacheSlot) -> AvailabilityLog {
        AvailabilityLog {
            slot,
            last: None,
            last_logged: Instant::now(),
        }
    }

    /// Records the backend's latest answer, logs a change (and a lasting problem once a
    /// minute), and returns the member state it calls for.
    fn update(&mut self, now: Availability) -> MemberState {
        let slot = self.slot.as_raw();
        let changed = self.last.as_ref() != Some(&now);
        match &now {
            Availability::Ready if changed => {
                let again = self.last.is_some();
                tracing::info!(slot, again, "cache ready");
            }
            Availability::Ready => {}
            Availability::Unavailable(why)
                if changed || self.last_logged.elapsed() >= UNAVAILABLE_LOG_INTERVAL =>
            {
                tracing::error!(
                    slot,
                    why = %why,
                    "cache unavailable: its requests go to the origin until its backend can \
                     answer again (checked every second)"
                );
                self.last_logged = Instant::now();
            }
            Availability::Unavailable(_) => {}
        }
        let state = match now {
            Availability::Ready => MemberState::Ready,
            Availability::Unavailable(_) => MemberState::Unavailable,
        };
        self.last = Some(now);
        state
    }
}

/// Whether the last try to make up for missed purges failed (its error is logged once).
#[derive(Default)]
struct MissedPurgeLog {
    failing: bool,
}

/// Empties the backend when a purge missed this slot (it was down, or did not answer in time):
/// which objects that purge named is not kept, so every object goes. A memory cache that was
/// down holds nothing anyway; read-only content and packs are never purged.
fn make_up_for_missed_purges(shared: &Shared<'_>, member: Member, log: &mut MissedPurgeLog) {
    let missed = shared.region.missed_purges(member);
    if !missed.outstanding() {
        return;
    }
    let slot = shared.config.slot.as_raw();
    match shared.backend.purge("/", true) {
        Ok(removed) => {
            if removed > 0 {
                tracing::warn!(
                    slot,
                    removed,
                    "a purge did not reach this cache (down or not answering): emptied it, so \
                     that nothing purged is served"
                );
                crate::metrics::count_purge(&shared.stats(), removed);
            }
            shared.region.set_made_up_purges(member, missed.missed);
            log.failing = false;
        }
        Err(error) if !log.failing => {
            tracing::error!(slot, %error, "cannot empty the cache after a missed purge; retrying");
            log.failing = true;
        }
        Err(_) => {}
    }
}

/// Publishes gauges and the backend's availability, and makes up for missed purges, until the
/// stop flag is set, then drains the workers.
fn supervise(
    shared: &Shared<'_>,
    member: Member,
    pid: i32,
    availability: &mut AvailabilityLog,
    missed_purges: &mut MissedPurgeLog,
) {
    let mut last_publish: Option<Instant> = None;
    let mut state = shared.region.member_state(member);
    while !shared.stop.load(Ordering::Acquire) && !shared.abort.load(Ordering::Acquire) {
        make_up_for_missed_purges(shared, member, missed_purges);
        let wanted = availability.update(shared.backend.refresh());
        if wanted != state {
            shared.region.set_member_state(member, wanted, pid);
            state = wanted;
        }
        if last_publish.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
            publish_gauges(
                &shared.stats(),
                &shared.backend.stats(),
                shared.in_flight.load(Ordering::Relaxed),
            );
            last_publish = Some(Instant::now());
        }
        thread::sleep(WATCH_INTERVAL);
    }
    shared
        .region
        .set_member_state(member, MemberState::Draining, pid);
    let deadline = *shared
        .drain_deadline
        .get_or_init(|| Instant::now() + shared.config.shutdown_timeout);
    tracing::info!(
        in_flight = shared.in_flight.load(Ordering::Relaxed),
        "draining"
    );
    while shared.running_workers.load(Ordering::Acquire) > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                in_flight = shared.in_flight.load(Ordering::Relaxed),
                "shutdown deadline passed: aborting transfers in flight"
            );
            shared.abort.store(true, Ordering::Release);
            // Workers blocked waiting for the proxy (room to write, a fill's next chunk) would
            // otherwise sleep until their transfer timeout: abort this process's transfers,
            // which wakes them at once. Each worker then releases its own segment, so none is
            // reused while a worker may still be copying into it.
            let aborted = shared.region.abort_transfers_of(pid);
            tracing::debug!(aborted, "transfers aborted");
            break;
        }
        thread::sleep(WATCH_INTERVAL);
    }
}

fn publish_gauges(stats: &StatsBlock<'_>, backend: &BackendStats, in_flight: u64) {
    stats.set(Gauge::BackendObjects.id(), backend.objects);
    stats.set(Gauge::BackendBytes.id(), backend.bytes);
    stats.set(Gauge::BackendCapacity.id(), backend.capacity.unwrap_or(0));
    stats.set(Gauge::BackendEvictions.id(), backend.evictions);
    stats.set(Gauge::BackendInserts.id(), backend.inserts);
    stats.set(Gauge::InFlight.id(), in_flight);
}

fn worker_loop(shared: &Shared<'_>) {
    let mut fill_buffer = Vec::new();
    while !shared.stop.load(Ordering::Acquire) && !shared.abort.load(Ordering::Acquire) {
        let request = match shared
            .region
            .next_request(shared.config.slot, CLAIM_INTERVAL)
        {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "claiming a request failed");
                thread::sleep(CLAIM_ERROR_BACKOFF);
                continue;
            }
        };
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.stats().set(Gauge::InFlight.id(), now);
        let outcome = match request.op() {
            Op::Get => serve_get(shared, request),
            Op::Put { len } => serve_put(shared, request, len, &mut fill_buffer),
            Op::UpdateMeta { version } => serve_update(shared, request, version),
            Op::Purge { prefix } => serve_purge(shared, request, prefix),
        };
        let now = shared
            .in_flight
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        shared.stats().set(Gauge::InFlight.id(), now);
        if let Err(failure) = outcome {
            // At the drain deadline this process aborts its own transfers: those count.
            if failure.proxy_left && !shared.abort.load(Ordering::Acquire) {
                // A client that left, or read slowly enough that the proxy goes on in ranges:
                // the proxy ended the transfer, nothing failed here.
                tracing::debug!(key = %failure.path, "the proxy ended a transfer early");
                continue;
            }
            shared.stats().add(Counter::Errors.id(), 1);
            if matches!(
                failure.error,
                Error::PackChanged { .. } | Error::PackUnavailable { .. }
            ) {
                // Logged once by the backend (the change) and by `supervise` (unavailable):
                // not once per request refused meanwhile.
                tracing::debug!(key = %failure.path, error = %failure.error, "request refused");
            } else {
                tracing::warn!(
                    key = %failure.path,
                    error = %failure.error,
                    "request failed"
                );
            }
        }
    }
    refuse_queued(shared);
}

/// Once stopping: answers the requests still queued for the slot at once (GET: error, PUT:
/// declined) so that the proxy falls back without waiting for its timeout.
fn refuse_queued(shared: &Shared<'_>) {
    while !shared.abort.load(Ordering::Acquire) {
        let Ok(Some(request)) = shared
            .region
            .next_request(shared.config.slot, Duration::ZERO)
        else {
            break;
        };
        tracing::debug!(key = request.path(), "refused while draining");
        let answered = match request.op() {
            Op::Get | Op::UpdateMeta { .. } | Op::Purge { .. } => request.error(),
            Op::Put { .. } => request.decline(),
        };
        if let Err(error) = answered {
            tracing::debug!(%error, "the proxy went away before the refusal");
        }
    }
}

/// A failed request: its path and why.
struct Failure {
    path: String,
    error: Error,
    /// The proxy aborted the transfer (not this cache's failure).
    proxy_left: bool,
}

impl Failure {
    /// Makes the failures of the request for `path`.
    fn of(path: &str) -> impl Fn(Error) -> Failure + '_ {
        move |error| Failure {
            path: path.to_owned(),
            error,
            proxy_left: false,
        }
    }
}

fn serve_get(shared: &Shared<'_>, request: CacheRequest<'_>) -> Result<(), Failure> {
    let path = request.path().to_string();
    let fail = Failure::of(&path);
    let stats = shared.stats();
    let object = match lookup(shared, &path, request.wanted_version()) {
        Ok(Some(object)) => object,
        Ok(None) => {
            stats.add(Counter::Misses.id(), 1);
            return request.not_found().map_err(|error| fail(error.into()));
        }
        Err(error) => {
            // Answer first so the proxy can fall back at once; the failure is counted by the
            // caller.
            let _ = request.error();
            return Err(fail(error));
        }
    };
    // Counted before the proxy can see the answer, so a reader of the stats who has the
    // answer also sees the count.
    stats.add(Counter::Hits.id(), 1);
    let meta = object.encoded_meta();
    let mut writer = request
        .found_with_meta(object.len(), object.version(), object.modified(), &meta)
        .map_err(|error| fail(error.into()))?;
    // The requested range: the whole object, or the part a client-paced transfer asks next.
    let end = writer.next_offset() + writer.len();
    // A transfer that does not end here (a range, or a whole object the proxy stops taking
    // to go on in ranges) may ask for this version again after the path changed.
    match end < object.len() {
        true => shared.retained.keep(&path, &object),
        false if writer.next_offset() > 0 => shared.retained.release(&path, object.version()),
        false => {}
    }
    let sent = send_range(shared, &path, object.as_ref(), &mut writer, end);
    if let Err(failure) = &sent {
        if failure.proxy_left {
            shared.retained.keep(&path, &object);
        }
    }
    sent?;
    writer.finish().map_err(|error| fail(error.into()))
}

/// The object at `path`: the backend's, or the kept one of `wanted`'s version when the
/// backend's is another (`None` wanted: the backend's).
fn lookup(
    shared: &Shared<'_>,
    path: &str,
    wanted: Option<ObjectVersion>,
) -> Result<Option<Arc<dyn CachedObject>>, Error> {
    let current = shared.backend.get(path)?.map(Arc::<dyn CachedObject>::from);
    let Some(wanted) = wanted else {
        return Ok(current);
    };
    if current
        .as_ref()
        .is_some_and(|object| object.version() == wanted)
    {
        return Ok(current);
    }
    Ok(shared.retained.find(path, wanted).or(current))
}

/// Copies `object`, the one at `path`, into the GET's chunks up to byte `end`.
fn send_range(
    shared: &Shared<'_>,
    path: &str,
    object: &dyn CachedObject,
    writer: &mut GetWriter<'_>,
    end: u64,
) -> Result<(), Failure> {
    let fail = Failure::of(path);
    let stats = shared.stats();
    let mut offset = writer.next_offset();
    while offset < end {
        if shared.abort.load(Ordering::Acquire) {
            return Err(fail(Error::Ipc(ipc::Error::Aborted)));
        }
        let mut buf = writer
            .next_buf(shared.wait_budget())
            .map_err(|error| proxy_or_own(fail(error.into())))?;
        let capacity = buf_capacity(&buf);
        let step = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(capacity);
        if step == 0 {
            return Err(fail(Error::Dest(std::io::Error::other(
                "the segment offered no room",
            ))));
        }
        object.copy_to(offset, step, &mut buf).map_err(&fail)?;
        stats.add(Counter::BytesOut.id(), step as u64);
        buf.publish()
            .map_err(|error| proxy_or_own(fail(error.into())))?;
        offset += step as u64;
    }
    Ok(())
}

/// The metadata a PUT or UPDATE carries, checked (`None`: it carries none).
fn request_meta(request: &CacheRequest<'_>) -> Result<Option<ObjectMeta>, Error> {
    match request.meta() {
        [] => Ok(None),
        bytes => Ok(Some(ObjectMeta::decode(bytes)?)),
    }
}

/// Replaces an object's metadata (a revalidation found it unchanged).
fn serve_update(
    shared: &Shared<'_>,
    request: CacheRequest<'_>,
    version: ObjectVersion,
) -> Result<(), Failure> {
    let path = request.path().to_string();
    let fail = Failure::of(&path);
    let updated = request_meta(&request).and_then(|meta| match meta {
        Some(meta) => shared.backend.update_meta(&path, version, &meta),
        None => Ok(false),
    });
    match updated {
        Ok(updated) => request.updated(updated).map_err(|error| fail(error.into())),
        Err(error) => {
            let _ = request.updated(false);
            Err(fail(error))
        }
    }
}

/// Removes an object, or the objects under a prefix, and says how many went.
fn serve_purge(
    shared: &Shared<'_>,
    request: CacheRequest<'_>,
    prefix: bool,
) -> Result<(), Failure> {
    let path = request.path().to_string();
    let fail = Failure::of(&path);
    shared.retained.forget(&path, prefix);
    match shared.backend.purge(&path, prefix) {
        Ok(removed) => {
            tracing::info!(key = %path, prefix, removed, "purged");
            crate::metrics::count_purge(&shared.stats(), removed);
            request.purged(removed).map_err(|error| fail(error.into()))
        }
        Err(error) => {
            let _ = request.error();
            Err(fail(error))
        }
    }
}

/// Marks a transfer error that is the proxy's abort (it dropped the GET) as such.
fn proxy_or_own(mut failure: Failure) -> Failure {
    failure.proxy_left = matches!(failure.error, Error::Ipc(ipc::Error::Aborted));
    failure
}

fn buf_capacity(buf: &ipc::ChunkBuf<'_>) -> usize {
    ipc::ChunkDest::remaining(buf)
}

fn serve_put(
    shared: &Shared<'_>,
    request: CacheRequest<'_>,
    len: u64,
    buffer: &mut Vec<u8>,
) -> Result<(), Failure> {
    let path = request.path().to_string();
    let fail = Failure::of(&path);
    let meta = match request_meta(&request) {
        Ok(meta) => meta,
        Err(error) => {
            let _ = request.decline();
            return Err(fail(error));
        }
    };
    let mut fill = match shared.backend.put_with_meta(&path, len, meta.as_ref()) {
        Ok(Some(fill)) => fill,
        Ok(None) => return request.decline().map_err(|error| fail(error.into())),
        Err(error) => {
            let _ = request.decline();
            return Err(fail(error));
        }
    };
    let mut reader = request.accept().map_err(|error| fail(error.into()))?;
    loop {
        if shared.abort.load(Ordering::Acquire) {
            return Err(fail(Error::Ipc(ipc::Error::Aborted)));
        }
        let more = match reader.next_chunk(shared.wait_budget()) {
            Ok(Some(chunk)) => {
                buffer.clear();
                chunk.append_to(buffer);
                true
            }
            Ok(None) => false,
            Err(error) => return Err(fail(error.into())),
        };
        if !more {
            break;
        }
        if let Err(error) = fill.write(buffer) {
            let _ = reader.complete(false);
            return Err(fail(error));
        }
    }
    match fill.commit() {
        Ok(()) => {
            shared.stats().add(Counter::PutsStored.id(), 1);
            reader.complete(true).map_err(|error| fail(error.into()))
        }
        Err(error) => {
            let _ = reader.complete(false);
            Err(fail(error))
        }
    }
}
