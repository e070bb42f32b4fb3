//! Test peer for the ipc crate's multi-process tests: plays a cache, a proxy, a region owner or
//! a ledger owner in its own process, and reports progress as lines on stdout.
//!
//! Roles:
//! - `cache --region ID --slot K [--mode echo|stall|late|bench] [--trigger FILE] [--workers N]`
//!   echo: serves GET `/gen/<len>/<seed>` (generated object), GET of a path stored by PUT,
//!   `/missing` (not found); PUT `/verify/<seed>` (checks the generated object, stores nothing),
//!   other PUTs (stored). stall: answers the first GET with its first chunk, then hangs.
//!   late: takes a half of the first GET, hangs until FILE exists, then writes garbage into it
//!   and tries to publish (prints `late: <outcome>`). bench: serves GET `/bench/<len>` from one
//!   64 MiB buffer with N worker threads.
//! - `proxy --region ID --slots 0,1 --sizes 1,2,3 --count N --threads T [--seed S]`: GETs
//!   generated objects round robin and verifies every byte; prints `ok <transfers> <checksum>`.
//! - `proxy-stall --region ID --slot K --size N`: GETs one object, holds its first chunk, hangs.
//! - `proxy-put-stall --region ID --slot K --size N`: PUTs N bytes to `/stored`, writes one half,
//!   hangs.
//! - `owner --segments N`: creates a region, prints `region <id>`, hangs.
//! - `ledger-owner --run-dir DIR`: records a non-removed shm object, semaphore set and message
//!   queue in DIR's ledger, prints `<kind> <id>` lines and `ready`, hangs.
//!
//! Every role takes `--yield-us N` (the waiters' polling budget, see `testkit::set_yield_budget`).
//!
//! Hanging is bounded (60 s) so a forgotten peer cannot outlive a test run for long.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ipc::testkit::{check_pattern, fill_pattern, peer_counters, Checksum};
use ipc::{
    CacheRequest, CacheSlot, ChunkDest, IpcKind, IpcObject, Ledger, Lookup, Member, MemberState,
    Op, Region, RegionConfig, RegionId,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const HANG: Duration = Duration::from_secs(60);

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    fn need(&self, name: &str) -> Res<&str> {
        self.get(name)
            .ok_or_else(|| format!("missing --{name}").into())
    }
    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Res<T> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("bad --{name} {text:?}").into()),
        }
    }
    fn list(&self, name: &str) -> Res<Vec<u64>> {
        self.need(name)?
            .split(',')
            .map(|item| {
                item.parse::<u64>()
                    .map_err(|_| format!("bad --{name} item {item:?}").into())
            })
            .collect()
    }
    fn region(&self) -> Res<Region> {
        let id: RegionId = self.need("region")?.parse()?;
        Ok(Region::attach(id)?)
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn hang() {
    let until = Instant::now() + HANG;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() -> ExitCode {
    let args = Args(std::env::args().skip(1).collect());
    let role = args.0.first().cloned().unwrap_or_default();
    if let Some(micros) = args.get("yield-us").and_then(|v| v.parse().ok()) {
        ipc::testkit::set_yield_budget(Duration::from_micros(micros));
    }
    let result = match role.as_str() {
        "cache" => cache(&args),
        "proxy" => proxy(&args),
        "proxy-stall" => proxy_stall(&args),
        "proxy-put-stall" => proxy_put_stall(&args),
        "owner" => owner(&args),
        "ledger-owner" => ledger_owner(&args),
        other => Err(format!("unknown role {other:?}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say(&format!("error: {err}"));
            ExitCode::FAILURE
        }
    }
}

/// `/gen/<len>/<seed>`.
fn generated(path: &str) -> Option<(u64, u64)> {
    let mut parts = path.strip_prefix("/gen/")?.split('/');
    let len = parts.next()?.parse().ok()?;
    let seed = parts.next()?.parse().ok()?;
    Some((len, seed))
}

fn cache(args: &Args) -> Res<()> {
    let region = args.region()?;
    let slot = CacheSlot::from_raw(args.number("slot", 0)?);
    let mode = args.get("mode").unwrap_or("echo");
    let member = Member::Cache(slot);
    if mode == "bench" {
        return bench_cache(&region, slot, args.number("workers", 1)?);
    }
    region.set_member_state(member, MemberState::Ready, std::process::id() as i32);
    say("ready");
    let mut store: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        let Some(request) = region.next_request(slot, Duration::from_millis(200))? else {
            continue;
        };
        match (mode, request.op()) {
            ("stall", Op::Get) => return stall_get(request),
            ("late", Op::Get) => return late_get(request, args.need("trigger")?),
            (_, Op::Get) => serve_get(&region, member, request, &store)?,
            (_, Op::Put { .. }) => serve_put(&region, member, request, &mut store)?,
            (_, Op::UpdateMeta { .. }) => request.updated(false)?,
            (_, Op::Purge { .. }) => request.purged(0)?,
        }
    }
}

/// Serves GET `/bench/<len>` from one prebuilt buffer with `workers` threads: one copy per chunk,
/// as a backend with the object in memory would.
fn bench_cache(region: &Region, slot: CacheSlot, workers: usize) -> Res<()> {
    let object = ipc::testkit::pattern(3, 64 << 20);
    say("ready");
    let results: Vec<Res<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                let object = &object;
                scope.spawn(move || -> Res<()> {
                    loop {
                        let Some(request) =
                            region.next_request(slot, Duration::from_millis(200))?
                        else {
                            continue;
                        };
                        let len = request
                            .path()
                            .strip_prefix("/bench/")
                            .and_then(|l| l.parse::<usize>().ok())
                            .filter(|&l| l <= object.len());
                        let Some(len) = len else {
                            request.not_found()?;
                            continue;
                        };
                        let mut writer = request.found(len as u64)?;
                        let mut offset = 0;
                        while offset < len {
                            let mut buf = writer.next_buf(TIMEOUT)?;
                            let n = buf.remaining().min(len - offset);
                            buf.put_slice(&object[offset..offset + n])?;
                            buf.publish()?;
                            offset += n;
                        }
                        writer.finish()?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    results.into_iter().collect()
}

fn serve_get(
    region: &Region,
    member: Member,
    request: CacheRequest<'_>,
    store: &HashMap<String, Vec<u8>>,
) -> Res<()> {
    let stats = region.stats(member);
    let path = request.path().to_owned();
    let (len, source) = if let Some((len, seed)) = generated(&path) {
        (len, Err(seed))
    } else if let Some(body) = store.get(&path) {
        (body.len() as u64, Ok(body))
    } else {
        stats.add(peer_counters::MISSES, 1);
        request.not_found()?;
        return Ok(());
    };
    stats.add(peer_counters::HITS, 1);
    let mut writer = request.found(len)?;
    let mut offset = 0u64;
    let mut scratch = Vec::new();
    while offset < len {
        let mut buf = writer.next_buf(TIMEOUT)?;
        let n = (buf.remaining() as u64).min(len - offset) as usize;
        match source {
            Err(seed) => {
                scratch.resize(n, 0);
                fill_pattern(seed, offset, &mut scratch);
                buf.put_slice(&scratch)?;
            }
            Ok(body) => buf.put_slice(&body[offset as usize..offset as usize + n])?,
        }
        buf.publish()?;
        offset += n as u64;
        stats.add(peer_counters::BYTES_OUT, n as u64);
    }
    writer.finish()?;
    Ok(())
}

fn serve_put(
    region: &Region,
    member: Member,
    request: CacheRequest<'_>,
    store: &mut HashMap<String, Vec<u8>>,
) -> Res<()> {
    let path = request.path().to_owned();
    if path.starts_with("/readonly/") {
        request.decline()?;
        return Ok(());
    }
    let verify_seed: Option<u64> = path.strip_prefix("/verify/").and_then(|s| s.parse().ok());
    let mut reader = request.accept()?;
    let mut body = Vec::new();
    let mut offset = 0u64;
    let mut intact = true;
    let mut scratch = Vec::new();
    let mut copy = Vec::new();
    while let Some(chunk) = reader.next_chunk(TIMEOUT)? {
        match verify_seed {
            Some(seed) => {
                copy.clear();
                chunk.append_to(&mut copy);
                intact &= check_pattern(seed, offset, &copy, &mut scratch).is_ok();
            }
            None => chunk.append_to(&mut body),
        }
        offset += chunk.len() as u64;
    }
    reader.complete(intact)?;
    if intact {
        region.stats(member).add(peer_counters::PUTS_STORED, 1);
        if verify_seed.is_none() {
            store.insert(path, body);
        }
    }
    Ok(())
}

fn stall_get(request: CacheRequest<'_>) -> Res<()> {
    let (len, seed) = generated(request.path()).ok_or("stall mode needs a /gen/ path")?;
    let segment = request.segment().as_raw();
    let mut writer = request.found(len)?;
    let mut buf = writer.next_buf(TIMEOUT)?;
    let n = (buf.remaining() as u64).min(len) as usize;
    let mut first = vec![0; n];
    fill_pattern(seed, 0, &mut first);
    buf.put_slice(&first)?;
    buf.publish()?;
    say(&format!("stalled {segment}"));
    hang();
    Ok(())
}

fn late_get(request: CacheRequest<'_>, trigger: &str) -> Res<()> {
    let mut writer = request.found(1 << 20)?;
    let mut buf = writer.next_buf(TIMEOUT)?;
    say("holding");
    let until = Instant::now() + HANG;
    while !std::path::Path::new(trigger).exists() {
        if Instant::now() > until {
            return Err("trigger never came".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let garbage = vec![0xEE; buf.remaining()];
    buf.put_slice(&garbage)?;
    match buf.publish() {
        Ok(()) => say("late: published"),
        Err(ipc::Error::Aborted) => say("late: aborted"),
        Err(err) => say(&format!("late: {err}")),
    }
    match writer.next_buf(TIMEOUT) {
        Ok(_) => say("late: got another buffer"),
        Err(err) => say(&format!("late next_buf: {err}")),
    }
    Ok(())
}

fn proxy(args: &Args) -> Res<()> {
    let region = args.region()?;
    let slots = args.list("slots")?;
    let sizes = args.list("sizes")?;
    let count: usize = args.number("count", 10)?;
    let threads: usize = args.number("threads", 1)?;
    let seed: u64 = args.number("seed", 1)?;
    let results: Vec<Res<(usize, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (region, slots, sizes) = (&region, &slots, &sizes);
                scope.spawn(move || -> Res<(usize, u64)> {
                    let mut checksum = Checksum::default();
                    let mut transfers = 0;
                    let mut scratch = Vec::new();
                    let mut copy = Vec::new();
                    for i in (thread..count).step_by(threads) {
                        let slot = CacheSlot::from_raw(slots[i % slots.len()] as u32);
                        let len = sizes[i % sizes.len()];
                        let object_seed = seed * 1_000_003 + i as u64;
                        let path = format!("/gen/{len}/{object_seed}");
                        let mut stream = region.acquire(TIMEOUT)?.get(slot, &path, TIMEOUT)?;
                        if stream.lookup() != (Lookup::Found { len }) {
                            return Err(format!("{path}: {:?}", stream.lookup()).into());
                        }
                        let mut offset = 0;
                        while let Some(chunk) = stream.next_chunk(TIMEOUT)? {
                            copy.clear();
                            chunk.append_to(&mut copy);
                            check_pattern(object_seed, offset, &copy, &mut scratch)
                                .map_err(|at| format!("{path}: wrong byte at {at}"))?;
                            checksum.update(&copy);
                            offset += copy.len() as u64;
                        }
                        if offset != len {
                            return Err(format!("{path}: got {offset} bytes").into());
                        }
                        transfers += 1;
                    }
                    Ok((transfers, checksum.value()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let mut transfers = 0;
    let mut checksum = 0u64;
    for result in results {
        let (n, sum) = result?;
        transfers += n;
        checksum ^= sum;
    }
    say(&format!("ok {transfers} {checksum:016x}"));
    Ok(())
}

fn proxy_stall(args: &Args) -> Res<()> {
    let region = args.region()?;
    let slot = CacheSlot::from_raw(args.number("slot", 0)?);
    let size: u64 = args.number("size", 1 << 20)?;
    let mut stream = region
        .acquire(TIMEOUT)?
        .get(slot, &format!("/gen/{size}/1"), TIMEOUT)?;
    let chunk = stream.next_chunk(TIMEOUT)?.ok_or("no first chunk")?;
    say(&format!("reading {}", chunk.len()));
    hang();
    drop(chunk);
    Ok(())
}

fn proxy_put_stall(args: &Args) -> Res<()> {
    let region = args.region()?;
    let slot = CacheSlot::from_raw(args.number("slot", 0)?);
    let size: u64 = args.number("size", 1 << 20)?;
    let mut stream = region.acquire(TIMEOUT)?.put(slot, "/stored", size)?;
    let half = region.config().segment_size / 2;
    let mut first = vec![0; half];
    fill_pattern(1, 0, &mut first);
    stream.write(&first, TIMEOUT)?;
    say(&format!("writing {half}"));
    hang();
    Ok(())
}

fn owner(args: &Args) -> Res<()> {
    let segments = args.number("segments", 2)?;
    let config = RegionConfig {
        segments,
        segment_size: 64 * 1024,
        cache_slots: 2,
        proxy_slots: 2,
    };
    let region = Region::create(&config, None)?;
    say(&format!("region {}", region.id()));
    hang();
    Ok(())
}

fn ledger_owner(args: &Args) -> Res<()> {
    let dir = std::path::PathBuf::from(args.need("run-dir")?);
    let mut ledger = Ledger::open(&dir)?;
    for (kind, name) in [
        (IpcKind::Shm, "shm"),
        (IpcKind::SemSet, "sem"),
        (IpcKind::MsgQueue, "msg"),
    ] {
        let object = IpcObject::create(kind)?;
        // Print first: the test removes what it was told about even if recording fails.
        say(&format!("{name} {}", object.id()));
        ledger.record(kind, object.id())?;
    }
    say("ready");
    hang();
    Ok(())
}
