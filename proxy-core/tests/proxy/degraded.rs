//! Degraded mode: dead, stopped and slow caches; clients that leave.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gfprotocol::Status;
use ipc::{CacheSlot, Member, MemberState, ProxySlot};
use nix::sys::signal::Signal;
use proxy_core::metrics::Counter;
use proxy_core::Proxy;

use crate::common::{self, Backend, Fetched, Rig, TestOrigin};

fn file_set(big: usize) -> HashMap<String, Arc<Vec<u8>>> {
    let mut files = HashMap::new();
    files.insert("/big".to_owned(), Arc::new(common::content(100, big)));
    for i in 0..20 {
        files.insert(
            format!("/f{i}"),
            Arc::new(common::content(i, 1000 + 3001 * i as usize)),
        );
    }
    files
}

#[test]
fn a_cache_killed_mid_stream_closes_that_client_and_the_rest_fall_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = file_set(32 << 20);
    common::write_tree(dir.path(), &files);
    let origin = TestOrigin::files(files.clone());
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.cache_timeout = Duration::from_millis(300);
    let mut rig = Rig::start(16, &[Backend::Directory(dir.path().to_path_buf())], config);
    let addr = rig.addr();
    common::fetch_ok(&addr, "/f1", &files["/f1"]);
    assert_eq!(rig.counter(Counter::LookupHits), 1);

    // Clients keep fetching throughout; every OK body they get must be right.
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..4)
        .map(|client| {
            let (addr, files, stop) = (addr.clone(), files.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut ok = 0;
                let mut round = client;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/f{}", round % 20);
                    round += 1;
                    match common::fetch(&addr, &path) {
                        Fetched::Ok(body) => {
                            assert!(body == files[&path][..], "{path}: a wrong OK body");
                            ok += 1;
                        }
                        Fetched::Short { received, .. } => {
                            assert!(received < files[&path].len() as u64);
                        }
                        Fetched::Status(status) => panic!("{path}: {status:?}"),
                    }
                }
                ok
            })
        })
        .collect();

    // A client in the middle of /big; the cache dies under it.
    let partial = common::start_partial(&addr, "/big", 1 << 20);
    assert_eq!(partial.announced, 32 << 20);
    let pid = rig.caches[0].pid();
    rig.caches[0].kill();
    let received = partial.read_to_close();
    assert!(
        received.len() < 32 << 20,
        "the transfer should have been cut"
    );
    assert!(
        received[..] == files["/big"][..received.len()],
        "a wrong byte before the cut"
    );
    common::wait_for(
        "the aborted request to be counted",
        Duration::from_secs(10),
        || rig.counter(Counter::RequestsAborted) == 1,
    );

    stop.store(true, Ordering::SeqCst);
    for client in background {
        assert!(client.join().expect("background client") > 0);
    }

    // Every later request succeeds through the origin, byte for byte.
    for (path, bytes) in &files {
        common::fetch_ok(&addr, path, bytes);
    }
    assert!(rig.counter(Counter::Fallbacks) >= files.len() as u64);

    // Without an origin, a fallback is ERROR.
    let mut bare = common::proxy_config(None);
    bare.slot = ProxySlot::from_raw(1);
    bare.settings.cache_timeout = Duration::from_millis(300);
    let bare = Proxy::start(Arc::clone(&rig.region), bare).expect("proxy");
    common::fetch_status(&bare.local_addr().to_string(), "/f2", Status::Error);
    drop(bare);

    // What the supervisor does next: mark the slot down and reclaim its segments.
    let member = Member::Cache(CacheSlot::from_raw(0));
    rig.region.set_member_state(member, MemberState::Down, 0);
    rig.region.reclaim_dead(pid);
    for i in 0..5 {
        let path = format!("/f{i}");
        common::fetch_ok(&addr, &path, &files[&path]);
    }
    rig.proxy.take();
    rig.wait_pool_full();
}

#[test]
fn a_stalled_cache_is_skipped_before_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = file_set(1000);
    common::write_tree(dir.path(), &files);
    let origin = TestOrigin::files(files.clone());
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.cache_timeout = Duration::from_millis(300);
    let rig = Rig::start(8, &[Backend::Directory(dir.path().to_path_buf())], config);
    let addr = rig.addr();

    rig.caches[0].stop();
    common::fetch_ok(&addr, "/f3", &files["/f3"]);
    common::fetch_ok(&addr, "/f4", &files["/f4"]);
    rig.caches[0].signal(Signal::SIGCONT);
    assert_eq!(rig.counter(Counter::Fallbacks), 2);
    assert!(rig.counter(Counter::LookupErrors) >= 2);
    assert_eq!(origin.requests("/f3"), 1);
    rig.wait_counter(Counter::RequestsOk, 2);
}

#[test]
fn a_client_that_stops_reading_frees_its_segment_and_leaving_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = file_set(32 << 20);
    common::write_tree(dir.path(), &files);
    let rig = Rig::start(
        4,
        &[Backend::Directory(dir.path().to_path_buf())],
        common::proxy_config(None),
    );
    let addr = rig.addr();
    for round in 1..=6 {
        let partial = common::start_partial(&addr, "/big", 64 * 1024);
        // It stopped reading: its transfer goes on from the proxy's buffer, without a segment.
        rig.wait_pool_full();
        common::wait_for("the client to be paced", Duration::from_secs(10), || {
            rig.counter(Counter::ClientPaced) == round
        });
        drop(partial);
        common::wait_for("the abort to be counted", Duration::from_secs(10), || {
            rig.counter(Counter::RequestsAborted) == round
        });
    }
    // The pool is whole: a full transfer still works.
    common::fetch_ok(&addr, "/f5", &files["/f5"]);
}

/// Sets a cache slot's state word as the supervisor would, keeping its pid.
fn set_cache_state(rig: &Rig, slot: CacheSlot, state: MemberState) {
    let member = Member::Cache(slot);
    let pid = rig.region.member_pid(member);
    rig.region.set_member_state(member, state, pid);
}

#[test]
fn routing_follows_the_member_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("routed"), b"either cache has me").expect("write");
    let root = dir.path().to_path_buf();
    let rig = Rig::start(
        8,
        &[Backend::Directory(root.clone()), Backend::Directory(root)],
        common::proxy_config(None),
    );
    let addr = rig.addr();
    let slots = || (0..2).map(CacheSlot::from_raw);
    let owner = proxy_core::routing::owner("/routed", slots()).expect("an owner");
    let other = slots().find(|s| *s != owner).expect("another slot");
    let set = |slot, state| set_cache_state(&rig, slot, state);

    common::fetch_ok(&addr, "/routed", b"either cache has me");
    assert_eq!(rig.counter(Counter::LookupHits), 1);

    // A quarantined owner is routed around: its keys go to the next slot.
    set(owner, MemberState::Quarantined);
    common::fetch_ok(&addr, "/routed", b"either cache has me");
    assert_eq!(rig.counter(Counter::LookupHits), 2);
    assert_eq!(rig.counter(Counter::Fallbacks), 0);

    // An owner that is restarting keeps its keys: a fallback (ERROR without an origin).
    set(owner, MemberState::Starting);
    common::fetch_status(&addr, "/routed", Status::Error);
    assert_eq!(rig.counter(Counter::Fallbacks), 1);

    // An unavailable owner (alive, but its pack is damaged or changed) keeps its keys too: a
    // fallback, not a request to it. It is not paused: it serves again as soon as it is Ready.
    set(owner, MemberState::Unavailable);
    common::fetch_status(&addr, "/routed", Status::Error);
    assert_eq!(rig.counter(Counter::Fallbacks), 2);
    assert_eq!(rig.counter(Counter::LookupHits), 2);
    set(owner, MemberState::Ready);
    common::fetch_ok(&addr, "/routed", b"either cache has me");
    assert_eq!(rig.counter(Counter::LookupHits), 3);

    // Every cache quarantined: every request is a fallback.
    set(owner, MemberState::Quarantined);
    set(other, MemberState::Quarantined);
    common::fetch_status(&addr, "/routed", Status::Error);
    assert_eq!(rig.counter(Counter::Fallbacks), 3);

    set(owner, MemberState::Ready);
    set(other, MemberState::Ready);
    common::fetch_ok(&addr, "/routed", b"either cache has me");
    assert_eq!(rig.counter(Counter::LookupHits), 4);
}

#[test]
fn with_a_shared_backend_the_next_cache_serves_when_the_owner_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("routed"), b"either cache has me").expect("write");
    let root = dir.path().to_path_buf();
    let rig = Rig::start(
        8,
        &[Backend::Directory(root.clone()), Backend::Directory(root)],
        common::proxy_config(None),
    );
    for slot in 0..2 {
        proxy_core::routing::set_shares_data(&rig.region, CacheSlot::from_raw(slot), true);
    }
    let addr = rig.addr();
    let slots = || (0..2).map(CacheSlot::from_raw);
    let owner = proxy_core::routing::owner("/routed", slots()).expect("an owner");
    let other = slots().find(|s| *s != owner).expect("another slot");
    let set = |slot, state| set_cache_state(&rig, slot, state);

    // Restarting, unavailable or down: the other cache answers, and no request is an ERROR
    // although there is no origin.
    for (round, state) in [
        MemberState::Starting,
        MemberState::Unavailable,
        MemberState::Down,
    ]
    .into_iter()
    .enumerate()
    {
        set(owner, state);
        common::fetch_ok(&addr, "/routed", b"either cache has me");
        // Counted once the response went out: wait for it, not for the client.
        rig.wait_counter(Counter::Failovers, round as u64 + 1);
        assert_eq!(rig.counter(Counter::Fallbacks), 0);
    }
    // What the shared data lacks, every cache lacks: FILE_NOT_FOUND, not ERROR.
    common::fetch_status(&addr, "/absent", Status::FileNotFound);

    // Both unable: only then a fallback (ERROR without an origin).
    set(other, MemberState::Starting);
    common::fetch_status(&addr, "/routed", Status::Error);
    rig.wait_counter(Counter::Fallbacks, 1);

    set(owner, MemberState::Ready);
    set(other, MemberState::Ready);
    common::fetch_ok(&addr, "/routed", b"either cache has me");
}

#[test]
fn a_malformed_request_is_answered_invalid_and_counted() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = Rig::start(
        4,
        &[Backend::Directory(dir.path().to_path_buf())],
        common::proxy_config(None),
    );
    let mut client = std::net::TcpStream::connect(rig.addr()).expect("connect");
    client
        .write_all(b"GETFILE GET nopath\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).expect("read the answer");
    assert_eq!(answer, b"GETFILE INVALID\r\n\r\n");
    rig.wait_counter(Counter::RequestsInvalid, 1);
}

#[test]
fn a_damaged_object_is_an_error_and_its_cache_keeps_serving_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let damaged_body = common::content(7, 50_000);
    let files: HashMap<String, Arc<Vec<u8>>> = [
        ("/damaged".to_owned(), Arc::new(damaged_body.clone())),
        ("/good".to_owned(), Arc::new(common::content(8, 30_000))),
    ]
    .into_iter()
    .collect();
    common::write_tree(&root, &files);
    let pack = dir.path().join("content.pack");
    cache_backends::build_pack(&root, &pack).expect("build the pack");
    let mut bytes = std::fs::read(&pack).expect("read the pack");
    let at = bytes
        .windows(64)
        .position(|window| window == &damaged_body[..64])
        .expect("the object's bytes are in the pack");
    bytes[at + 10] ^= 0xff;
    std::fs::write(&pack, &bytes).expect("damage the pack");

    // No origin: nothing can stand in for the cache, so its answers are what the client sees.
    let rig = Rig::start(4, &[Backend::Pack(pack)], common::proxy_config(None));
    let addr = rig.addr();
    common::fetch_status(&addr, "/damaged", Status::Error);
    // One unreadable object says nothing about the others: the cache is not skipped.
    for _ in 0..3 {
        common::fetch_ok(&addr, "/good", &files["/good"]);
    }
    assert_eq!(rig.counter(Counter::LookupHits), 3);
    rig.wait_pool_full();
}

#[test]
fn with_a_shared_backend_a_transfer_outlives_the_death_of_its_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = common::content(31, 16 << 20);
    std::fs::write(dir.path().join("big"), &big).expect("write");
    let root = dir.path().to_path_buf();
    let mut config = common::proxy_config(None);
    config.settings.cache_timeout = Duration::from_millis(500);
    config.settings.client_buffer = 64 << 10;
    let mut rig = Rig::start(
        8,
        &[Backend::Directory(root.clone()), Backend::Directory(root)],
        config,
    );
    for slot in 0..2 {
        proxy_core::routing::set_shares_data(&rig.region, CacheSlot::from_raw(slot), true);
    }
    let addr = rig.addr();
    let owner = proxy_core::routing::owner("/big", (0..2).map(CacheSlot::from_raw)).expect("owner");

    // A client in the middle of /big; the cache serving it dies.
    let partial = common::start_partial(&addr, "/big", 1 << 20);
    rig.caches[owner.as_raw() as usize].kill();
    let received = partial.read_to_close();
    assert_eq!(
        received.len(),
        big.len(),
        "the other cache should finish the transfer"
    );
    assert!(received == big, "a wrong byte");
    rig.wait_counter(Counter::RequestsOk, 1);
    assert_eq!(rig.counter(Counter::RequestsAborted), 0);
}
