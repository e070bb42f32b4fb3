//! Black-box tests of the segment protocol between real processes: the test process plays one
//! side, `ipc-testpeer` processes play the others.

mod common;

use std::time::Duration;

use common::{wait_until, ObjectGuard, Peer};
use ipc::testkit::{check_pattern, fill_pattern, peer_counters, Checksum};
use ipc::{
    lock_holder, object_info, sweep, CacheSlot, ChunkDest, Error, IpcKind, Lookup, Member,
    MemberState, Op, Region, RegionConfig, RegionId, SegmentCounts,
};

const T: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_millis(300);

fn region(segments: u32, segment_size: usize, cache_slots: u32) -> Region {
    let config = RegionConfig {
        segments,
        segment_size,
        cache_slots,
        proxy_slots: 2,
    };
    Region::create(&config, None).expect("create region")
}

fn cache_peer(region: &Region, slot: u32, extra: &[&str]) -> Peer {
    let id = region.id().to_string();
    let slot = slot.to_string();
    let mut args = vec!["cache", "--region", &id, "--slot", &slot];
    args.extend_from_slice(extra);
    let mut peer = Peer::spawn(&args);
    peer.expect("ready");
    peer
}

fn all_free(region: &Region) -> SegmentCounts {
    SegmentCounts {
        free: region.config().segments,
        busy: 0,
        quarantined: 0,
    }
}

/// The one segment of a one-segment region stays quarantined after its peer `dead_pid` died,
/// until the supervisor's reclaim gives it back.
fn assert_quarantined_until_reclaimed(region: &Region, dead_pid: i32) {
    assert_eq!(
        region.segment_counts(),
        SegmentCounts {
            free: 0,
            busy: 0,
            quarantined: 1
        }
    );
    assert_eq!(region.reclaim_dead(dead_pid), 1);
    assert_eq!(region.segment_counts(), all_free(region));
}

/// Waits until every segment is back in the pool (the cache side marks itself done a moment
/// after the proxy has read the last byte).
fn wait_all_free(region: &Region) {
    wait_until("every segment is free", || {
        region.segment_counts() == all_free(region)
    });
}

/// GETs `/gen/<len>/<seed>` and checks every byte; returns the checksum.
fn get_generated(region: &Region, slot: u32, len: u64, seed: u64) -> u64 {
    let path = format!("/gen/{len}/{seed}");
    let mut stream = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(slot), &path, T)
        .unwrap();
    assert_eq!(stream.lookup(), Lookup::Found { len }, "{path}");
    let (mut offset, mut checksum, mut copy, mut scratch) =
        (0u64, Checksum::default(), Vec::new(), Vec::new());
    while let Some(chunk) = stream.next_chunk(T).unwrap() {
        copy.clear();
        chunk.append_to(&mut copy);
        if let Err(at) = check_pattern(seed, offset, &copy, &mut scratch) {
            panic!("{path}: wrong byte at {at}");
        }
        checksum.update(&copy);
        offset += copy.len() as u64;
    }
    assert_eq!(offset, len, "{path}");
    checksum.value()
}

fn expected_checksum(len: u64, seed: u64) -> u64 {
    let mut checksum = Checksum::default();
    let mut buf = vec![0; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill_pattern(seed, offset, &mut buf[..n]);
        checksum.update(&buf[..n]);
        offset += n as u64;
    }
    checksum.value()
}

/// PUTs the generated object in pieces of `piece` bytes.
fn put_generated(
    region: &Region,
    slot: u32,
    path: &str,
    len: u64,
    seed: u64,
    piece: usize,
) -> ipc::Result<()> {
    let mut stream = region
        .acquire(T)?
        .put(CacheSlot::from_raw(slot), path, len)?;
    let mut buf = vec![0; piece];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(piece as u64) as usize;
        fill_pattern(seed, offset, &mut buf[..n]);
        stream.write(&buf[..n], T)?;
        offset += n as u64;
    }
    stream.finish(T)
}

#[test]
fn objects_of_edge_sizes_round_trip_between_processes() {
    let segment_size = 256 * 1024;
    let chunk = (segment_size / 2) as u64;
    let region = region(2, segment_size, 1);
    let _cache = cache_peer(&region, 0, &[]);
    let sizes = [0, 1, chunk - 1, chunk, chunk + 1, 100 << 20];
    for (seed, &len) in sizes.iter().enumerate() {
        let seed = seed as u64 + 1;
        assert_eq!(
            get_generated(&region, 0, len, seed),
            expected_checksum(len, seed),
            "GET of {len} bytes"
        );
        put_generated(
            &region,
            0,
            &format!("/verify/{seed}"),
            len,
            seed,
            64 * 1024 + 7,
        )
        .unwrap_or_else(|err| panic!("PUT of {len} bytes: {err}"));
    }
    // A PUT with a wrong byte is not stored.
    let mut stream = region
        .acquire(T)
        .unwrap()
        .put(CacheSlot::from_raw(0), "/verify/9", 10)
        .unwrap();
    stream.write(&[0u8; 10], T).unwrap();
    assert!(matches!(stream.finish(T), Err(Error::Declined)));
    // Stored by PUT, read back by GET.
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = region
        .acquire(T)
        .unwrap()
        .put(CacheSlot::from_raw(0), "/stored", body.len() as u64)
        .unwrap();
    stream.write(&body, T).unwrap();
    stream.finish(T).unwrap();
    let mut stream = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(0), "/stored", T)
        .unwrap();
    let mut back = Vec::new();
    while let Some(chunk) = stream.next_chunk(T).unwrap() {
        chunk.append_to(&mut back);
    }
    assert!(back == body);
    drop(stream);
    // Not found, declined.
    let mut stream = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(0), "/missing", T)
        .unwrap();
    assert_eq!(stream.lookup(), Lookup::NotFound);
    assert!(stream.next_chunk(T).unwrap().is_none());
    drop(stream);
    let err = put_generated(&region, 0, "/readonly/x", 1 << 20, 1, 4096).unwrap_err();
    assert!(matches!(err, Error::Declined), "{err}");
    wait_all_free(&region);
    let stats = region.stats_snapshot(Member::Cache(CacheSlot::from_raw(0)));
    assert_eq!(stats.counter(peer_counters::HITS), sizes.len() as u64 + 1);
    assert_eq!(stats.counter(peer_counters::MISSES), 1);
    assert_eq!(
        stats.counter(peer_counters::PUTS_STORED),
        sizes.len() as u64 + 1
    );
}

#[test]
fn many_concurrent_transfers_over_few_segments() {
    let region = region(2, 64 * 1024, 1);
    let _caches = [cache_peer(&region, 0, &[]), cache_peer(&region, 0, &[])];
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let region = &region;
            scope.spawn(move || {
                for i in 0..25u64 {
                    let len = (i * 7919 + thread * 104_729) % (300 * 1024);
                    get_generated(region, 0, len, thread * 100 + i);
                }
            });
        }
    });
    wait_all_free(&region);
    assert_eq!(
        region
            .stats_snapshot(Member::Cache(CacheSlot::from_raw(0)))
            .counter(peer_counters::HITS),
        200
    );
}

#[test]
fn two_proxy_and_two_cache_processes_at_once() {
    let region = region(3, 64 * 1024, 2);
    let _caches = [cache_peer(&region, 0, &[]), cache_peer(&region, 1, &[])];
    let id = region.id().to_string();
    let proxy = |seed: &'static str| {
        Peer::spawn(&[
            "proxy",
            "--region",
            &id,
            "--slots",
            "0,1",
            "--sizes",
            "0,1,1000,32768,40000,200000",
            "--count",
            "40",
            "--threads",
            "3",
            "--seed",
            seed,
        ])
    };
    let mut proxies = [proxy("1"), proxy("2")];
    for proxy in &mut proxies {
        proxy.expect("ok 40 ");
        assert!(proxy.wait_exit().success());
    }
    let hits: u64 = (0..2)
        .map(|slot| {
            region
                .stats_snapshot(Member::Cache(CacheSlot::from_raw(slot)))
                .counter(peer_counters::HITS)
        })
        .sum();
    assert_eq!(hits, 80);
    wait_all_free(&region);
}

#[test]
fn stats_survive_a_cache_restart() {
    let region = region(1, 64 * 1024, 1);
    let member = Member::Cache(CacheSlot::from_raw(0));
    let mut first = cache_peer(&region, 0, &[]);
    for seed in 0..3 {
        get_generated(&region, 0, 100, seed);
    }
    wait_all_free(&region);
    first.kill();
    region.set_member_state(member, MemberState::Down, 0);
    let _second = cache_peer(&region, 0, &[]);
    assert_eq!(region.member_state(member), MemberState::Ready);
    for seed in 0..2 {
        get_generated(&region, 0, 100, seed);
    }
    wait_all_free(&region);
    let stats = region.stats_snapshot(member);
    assert_eq!(stats.counter(peer_counters::HITS), 5);
    assert_eq!(stats.counter(peer_counters::BYTES_OUT), 500);
}

#[test]
fn sigkill_of_the_cache_mid_transfer_gives_a_timeout_and_reclaim_frees_the_segment() {
    let region = region(2, 64 * 1024, 1);
    let mut cache = cache_peer(&region, 0, &["--mode", "stall"]);
    let len = 1 << 20;
    let mut stream = region
        .acquire(T)
        .unwrap()
        .get(CacheSlot::from_raw(0), &format!("/gen/{len}/5"), T)
        .unwrap();
    assert_eq!(stream.lookup(), Lookup::Found { len });
    let (mut copy, mut scratch) = (Vec::new(), Vec::new());
    stream
        .next_chunk(T)
        .unwrap()
        .expect("first chunk")
        .append_to(&mut copy);
    assert_eq!(copy.len(), 32 * 1024);
    assert_eq!(check_pattern(5, 0, &copy, &mut scratch), Ok(()));
    cache.expect("stalled");
    let cache_pid = cache.pid();
    cache.kill();
    let err = stream
        .next_chunk(SHORT)
        .expect_err("no chunk from a dead cache");
    assert!(matches!(err, Error::Timeout { what: "data", .. }), "{err}");
    // Every later call fails the same way; nothing more is read.
    assert!(stream.next_chunk(SHORT).is_err());
    drop(stream);
    assert_eq!(
        region.segment_counts(),
        SegmentCounts {
            free: 1,
            busy: 0,
            quarantined: 1
        }
    );
    assert_eq!(region.reclaim_dead(cache_pid), 1);
    assert_eq!(region.segment_counts(), all_free(&region));
    assert_eq!(region.reclaim_dead(cache_pid), 0);
}

#[test]
fn sigkill_of_the_proxy_mid_transfer_stops_the_cache_within_its_timeout() {
    let region = region(1, 64 * 1024, 1);
    let id = region.id().to_string();
    let len = 1u64 << 20;
    let mut proxy = Peer::spawn(&[
        "proxy-stall",
        "--region",
        &id,
        "--slot",
        "0",
        "--size",
        &len.to_string(),
    ]);
    let request = loop {
        if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
            break request;
        }
    };
    assert_eq!(request.op(), Op::Get);
    let mut writer = request.found(len).unwrap();
    let mut offset = 0;
    fn publish(
        writer: &mut ipc::GetWriter<'_>,
        offset: &mut u64,
        timeout: Duration,
    ) -> ipc::Result<()> {
        let mut buf = writer.next_buf(timeout)?;
        let mut bytes = vec![0; buf.remaining()];
        fill_pattern(1, *offset, &mut bytes);
        buf.put_slice(&bytes).unwrap();
        *offset += bytes.len() as u64;
        buf.publish()
    }
    publish(&mut writer, &mut offset, T).unwrap();
    proxy.expect("reading 32768");
    let proxy_pid = proxy.pid();
    proxy.kill();
    // One more half is free (the dead proxy never releases the first); then room never comes.
    let err = loop {
        if let Err(err) = publish(&mut writer, &mut offset, SHORT) {
            break err;
        }
        assert!(
            offset <= 2 * 32 * 1024,
            "published into a half the proxy still held"
        );
    };
    assert!(matches!(err, Error::Timeout { what: "room", .. }), "{err}");
    drop(writer);
    assert_quarantined_until_reclaimed(&region, proxy_pid);
}

#[test]
fn sigkill_of_the_proxy_mid_put_stops_the_cache_within_its_timeout() {
    let region = region(1, 64 * 1024, 1);
    let id = region.id().to_string();
    let mut proxy = Peer::spawn(&[
        "proxy-put-stall",
        "--region",
        &id,
        "--slot",
        "0",
        "--size",
        "1000000",
    ]);
    let request = loop {
        if let Some(request) = region.next_request(CacheSlot::from_raw(0), T).unwrap() {
            break request;
        }
    };
    assert_eq!(request.op(), Op::Put { len: 1_000_000 });
    assert_eq!(request.path(), "/stored");
    let mut reader = request.accept().unwrap();
    proxy.expect("writing 32768");
    let (mut copy, mut scratch) = (Vec::new(), Vec::new());
    reader
        .next_chunk(T)
        .unwrap()
        .expect("first chunk")
        .append_to(&mut copy);
    assert_eq!(check_pattern(1, 0, &copy, &mut scratch), Ok(()));
    let proxy_pid = proxy.pid();
    proxy.kill();
    let err = reader
        .next_chunk(SHORT)
        .expect_err("no more data from a dead proxy");
    assert!(matches!(err, Error::Timeout { what: "data", .. }), "{err}");
    drop(reader);
    assert_quarantined_until_reclaimed(&region, proxy_pid);
}

#[test]
fn sigkill_of_a_proxy_with_an_unclaimed_request_is_reclaimed() {
    let region = region(1, 64 * 1024, 2);
    let id = region.id().to_string();
    // Nobody serves slot 1: the request stays Requested.
    let mut proxy = Peer::spawn(&[
        "proxy-stall",
        "--region",
        &id,
        "--slot",
        "1",
        "--size",
        "10",
    ]);
    wait_until("the request is pending", || {
        region.segment_counts().busy == 1
    });
    let pid = proxy.pid();
    proxy.kill();
    assert_eq!(region.reclaim_dead(pid), 1);
    assert_eq!(region.segment_counts(), all_free(&region));
}

#[test]
fn a_late_writer_never_changes_a_byte_of_the_next_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("go");
    let trigger_arg = trigger.to_str().unwrap().to_owned();
    let region = region(1, 64 * 1024, 2);
    let mut late = cache_peer(&region, 0, &["--mode", "late", "--trigger", &trigger_arg]);
    let _echo = cache_peer(&region, 1, &[]);
    let lease = region.acquire(T).unwrap();
    let used = lease.segment();
    let err = lease
        .get(CacheSlot::from_raw(0), "/gen/100/1", SHORT)
        .expect_err("the late cache never answers");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    late.expect("holding");
    assert_eq!(
        region.segment_counts(),
        SegmentCounts {
            free: 0,
            busy: 0,
            quarantined: 1
        }
    );
    std::thread::scope(|scope| {
        // The next transfer waits for the segment; it may only get it once the late writer is done.
        let next = scope.spawn(|| {
            let lease = region.acquire(T).unwrap();
            assert_eq!(lease.segment(), used);
            drop(lease);
            get_generated(&region, 1, 200 * 1024, 77)
        });
        std::fs::write(&trigger, b"").unwrap();
        late.expect("late: aborted");
        late.expect("late next_buf: the peer aborted");
        assert_eq!(next.join().unwrap(), expected_checksum(200 * 1024, 77));
    });
    assert_eq!(late.wait_exit().code(), Some(0));
    wait_all_free(&region);
}

#[test]
fn the_region_vanishes_once_every_process_is_gone_even_after_sigkill() {
    let mut owner = Peer::spawn(&["owner", "--segments", "2"]);
    let line = owner.expect("region ");
    let id: RegionId = line.trim_start_matches("region ").parse().unwrap();
    let shm = id.shm.as_raw();
    let region = Region::attach(id).unwrap();
    let info = object_info(IpcKind::Shm, shm).expect("region exists while attached");
    assert_eq!(info.mode, 0o600);
    assert_eq!(info.attached, 2);
    owner.kill();
    // Still usable by the survivor.
    let _cache = cache_peer(&region, 0, &[]);
    get_generated(&region, 0, 10_000, 3);
    drop(_cache);
    assert_eq!(object_info(IpcKind::Shm, shm).map(|i| i.attached), Some(1));
    drop(region);
    assert_eq!(object_info(IpcKind::Shm, shm), None);
    // A stale id does not attach.
    assert!(matches!(Region::attach(id), Err(Error::BadRegion(_))));
}

#[test]
fn the_objects_of_a_sigkilled_ledger_owner_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut guard = ObjectGuard::default();
    let mut owner = Peer::spawn(&["ledger-owner", "--run-dir", run.to_str().unwrap()]);
    let mut objects = Vec::new();
    for (name, kind) in [
        ("shm", IpcKind::Shm),
        ("sem", IpcKind::SemSet),
        ("msg", IpcKind::MsgQueue),
    ] {
        let line = owner.expect(name);
        let id: i32 = line[name.len() + 1..].parse().unwrap();
        guard.add(kind, id);
        objects.push((kind, id));
    }
    owner.expect("ready");
    for &(kind, id) in &objects {
        assert_eq!(
            object_info(kind, id).expect("object exists").mode,
            0o600,
            "{kind:?} {id}"
        );
    }
    assert_eq!(lock_holder(&run).unwrap(), Some(owner.pid()));
    assert!(matches!(sweep(&run), Err(Error::RunDirLocked { pid, .. }) if pid == owner.pid()));
    owner.kill();
    assert_eq!(lock_holder(&run).unwrap(), None);
    // Every object outlived its creator...
    for &(kind, id) in &objects {
        assert!(object_info(kind, id).is_some(), "{kind:?} {id}");
    }
    // ...until the sweep.
    let report = sweep(&run).unwrap();
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert!(report.skipped.is_empty());
    for &(kind, id) in &objects {
        assert!(
            object_info(kind, id).is_none(),
            "{kind:?} {id} survived the sweep"
        );
    }
    // A second sweep has nothing left to do.
    assert_eq!(sweep(&run).unwrap(), ipc::SweepReport::default());
}
