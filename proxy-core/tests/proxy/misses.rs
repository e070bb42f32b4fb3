//! Misses: origin fetch, fill, status mapping, collapsing.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gfprotocol::Status;
use ipc::{Member, ProxySlot};
use proxy_core::metrics::Counter;
use proxy_core::Proxy;

use crate::common::{self, Backend, CutShortOrigin, Fetched, Reply, Rig, TestOrigin};

fn counter(rig: &Rig, slot: u32, counter: Counter) -> u64 {
    rig.region
        .stats_snapshot(Member::Proxy(ProxySlot::from_raw(slot)))
        .counter(counter.id())
}

#[test]
fn a_miss_is_fetched_filled_and_then_hit() {
    let a = Arc::new(common::content(1, 100 * 1024));
    let chunked = Arc::new(common::content(2, 300 * 1024 + 7));
    let huge = Arc::new(common::content(3, 2 << 20));
    let target = Arc::new(common::content(4, 5000));
    let large = Arc::new(common::content(5, (1 << 20) - 5));
    let origin = {
        let (a, chunked, huge, target) = (a.clone(), chunked.clone(), huge.clone(), target.clone());
        let large = large.clone();
        TestOrigin::start(move |path| match path {
            "/a" => Reply::Body(a.clone()),
            "/large" => Reply::Body(large.clone()),
            "/zero" => Reply::Body(Arc::new(Vec::new())),
            "/chunked" => Reply::Chunked(chunked.clone()),
            "/huge" => Reply::Body(huge.clone()),
            "/chunked-huge" => Reply::Chunked(huge.clone()),
            "/target" => Reply::Body(target.clone()),
            "/moved" => Reply::Redirect("/target".into()),
            "/loop" => Reply::Redirect("/loop".into()),
            _ => Reply::Status(404),
        })
    };
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.max_object_size = 1 << 20;
    config.settings.max_redirects = 3;
    let rig = Rig::start(8, &[Backend::Memory], config);
    let addr = rig.addr();

    // Miss -> origin -> fill -> the next request is a hit.
    common::fetch_ok(&addr, "/a", &a);
    assert_eq!(rig.counter(Counter::LookupMisses), 1);
    rig.wait_counter(Counter::OriginOk, 1);
    common::wait_for("the fill of /a", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) >= 1
    });
    common::fetch_ok(&addr, "/a", &a);
    assert_eq!(origin.requests("/a"), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 1);

    // An empty object is an object too.
    common::fetch_ok(&addr, "/zero", &[]);
    common::wait_for("the fill of /zero", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) >= 2
    });
    common::fetch_ok(&addr, "/zero", &[]);
    assert_eq!(origin.requests("/zero"), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 2);

    // Without a Content-Length the body is buffered (within max_object_size), then filled.
    common::fetch_ok(&addr, "/chunked", &chunked);
    common::wait_for("the fill of /chunked", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) >= 3
    });
    common::fetch_ok(&addr, "/chunked", &chunked);
    assert_eq!(origin.requests("/chunked"), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 3);

    // A body of many chunks (the segments are 256 KiB).
    common::fetch_ok(&addr, "/large", &large);
    common::wait_for("the fill of /large", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) >= 4
    });
    common::fetch_ok(&addr, "/large", &large);
    assert_eq!(origin.requests("/large"), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 4);

    // Over max_object_size: served, never filled.
    let dropped = rig.counter(Counter::FillsDropped);
    common::fetch_ok(&addr, "/huge", &huge);
    common::fetch_ok(&addr, "/huge", &huge);
    assert_eq!(origin.requests("/huge"), 2);
    assert_eq!(rig.counter(Counter::FillsDropped), dropped + 2);
    assert_eq!(rig.counter(Counter::FillsStored), 4);

    // Over max_object_size without a Content-Length: ERROR.
    common::fetch_status(&addr, "/chunked-huge", Status::Error);

    // Redirects are followed up to the configured number.
    common::fetch_ok(&addr, "/moved", &target);
    common::fetch_status(&addr, "/loop", Status::Error);
    assert_eq!(origin.requests("/loop"), 4);
    rig.wait_pool_full();
}

#[test]
fn origin_answers_map_to_getfile_statuses() {
    let origin = TestOrigin::start(|path| match path {
        "/missing" => Reply::Status(404),
        "/gone" => Reply::Status(410),
        "/boom" => Reply::Status(500),
        "/forbidden" => Reply::Status(403),
        "/hang" => Reply::Hang,
        _ => Reply::Status(404),
    });
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.origin_timeout = Duration::from_millis(800);
    let mut rig = Rig::start(8, &[Backend::Memory], config);
    let addr = rig.addr();
    common::fetch_status(&addr, "/missing", Status::FileNotFound);
    common::fetch_status(&addr, "/gone", Status::FileNotFound);
    common::fetch_status(&addr, "/boom", Status::Error);
    common::fetch_status(&addr, "/forbidden", Status::Error);
    common::fetch_status(&addr, "/hang", Status::Error);
    assert_eq!(rig.counter(Counter::OriginNotFound), 2);
    assert_eq!(rig.counter(Counter::OriginError), 3);
    rig.wait_counter(Counter::RequestsNotFound, 2);
    rig.wait_counter(Counter::RequestsError, 3);
    assert_eq!(rig.counter(Counter::FillsStored), 0);

    // A refused connection: ERROR.
    let mut refused = common::proxy_config(Some(common::refused_url()));
    refused.slot = ProxySlot::from_raw(1);
    let refused = Proxy::start(Arc::clone(&rig.region), refused).expect("proxy");
    common::fetch_status(&refused.local_addr().to_string(), "/x", Status::Error);
    assert_eq!(counter(&rig, 1, Counter::OriginError), 1);
    drop(refused);

    // A body cut short: the client sees a short body, nothing is filled.
    let body = Arc::new(common::content(9, 50_000));
    let cut = CutShortOrigin::start(Arc::clone(&body), 100_000);
    let mut short = common::proxy_config(Some(cut.url()));
    short.slot = ProxySlot::from_raw(1);
    let short = Proxy::start(Arc::clone(&rig.region), short).expect("proxy");
    let short_addr = short.local_addr().to_string();
    for round in 1..=2 {
        match common::fetch(&short_addr, "/cut") {
            Fetched::Short {
                announced,
                received,
            } => {
                assert_eq!(announced, 100_000);
                assert!(received <= 50_000);
            }
            other => panic!("expected a short body, got {other:?}"),
        }
        assert_eq!(
            cut.connections.load(std::sync::atomic::Ordering::SeqCst),
            round
        );
    }
    assert_eq!(counter(&rig, 1, Counter::FillsStored), 0);
    assert_eq!(counter(&rig, 1, Counter::LookupHits), 0);
    drop(short);

    // No origin: a miss is FILE_NOT_FOUND.
    let mut none = common::proxy_config(None);
    none.slot = ProxySlot::from_raw(1);
    let none = Proxy::start(Arc::clone(&rig.region), none).expect("proxy");
    common::fetch_status(
        &none.local_addr().to_string(),
        "/missing",
        Status::FileNotFound,
    );
    drop(none);

    rig.proxy.take();
    rig.wait_pool_full();
}

#[test]
fn concurrent_misses_for_one_path_make_one_origin_request() {
    let hot = Arc::new(common::content(7, (1 << 20) + 11));
    let origin = {
        let hot = hot.clone();
        TestOrigin::start(move |path| match path {
            "/hot" => Reply::Gated(hot.clone()),
            _ => Reply::Status(404),
        })
    };
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.threads = 20;
    let rig = Rig::start(24, &[Backend::Memory], config);
    let addr = rig.addr();

    let clients: Vec<_> = (0..16)
        .map(|_| {
            let addr = addr.clone();
            let hot = hot.clone();
            thread::spawn(move || common::fetch_ok(&addr, "/hot", &hot))
        })
        .collect();
    // Hold the origin's answer until every request has joined the flight.
    common::wait_for("15 collapsed requests", Duration::from_secs(30), || {
        rig.counter(Counter::Collapsed) == 15 && origin.requests("/hot") == 1
    });
    origin.open_gate();
    for client in clients {
        client.join().expect("client");
    }
    assert_eq!(origin.requests("/hot"), 1);
    assert_eq!(rig.counter(Counter::Collapsed), 15);
    rig.wait_counter(Counter::RequestsOk, 16);

    common::wait_for("the fill of /hot", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) == 1
    });
    common::fetch_ok(&addr, "/hot", &hot);
    assert_eq!(origin.requests("/hot"), 1);
    assert_eq!(rig.counter(Counter::LookupHits), 1);
    rig.wait_pool_full();
}

#[test]
fn a_read_only_cache_declines_the_fill_and_costs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = Arc::new(common::content(11, 300_000));
    let origin = {
        let body = body.clone();
        TestOrigin::start(move |path| match path {
            "/only-at-origin" => Reply::Body(body.clone()),
            _ => Reply::Status(404),
        })
    };
    let rig = Rig::start(
        8,
        &[Backend::Directory(dir.path().to_path_buf())],
        common::proxy_config(Some(origin.url())),
    );
    let addr = rig.addr();
    let proxy = rig.proxy.as_ref().expect("the proxy runs");
    for round in 1..=2 {
        common::fetch_ok(&addr, "/only-at-origin", &body);
        // Wait for the flight to end too: a request that starts while the previous flight for
        // its path is ending looks in the cache a second time (the race guard in `collapse`),
        // which would count one more lookup.
        common::wait_for("the declined fill", Duration::from_secs(20), || {
            rig.counter(Counter::FillsDropped) == round && proxy.flights_in_progress() == 0
        });
    }
    assert_eq!(origin.requests("/only-at-origin"), 2);
    assert_eq!(rig.counter(Counter::FillsStored), 0);
    assert_eq!(rig.counter(Counter::LookupMisses), 2);
    rig.wait_pool_full();
}

#[test]
fn files_map_helper_serves_files() {
    // The plain file origin used by the degraded-mode tests answers 404 for unknown paths.
    let mut files = HashMap::new();
    files.insert("/x".to_owned(), Arc::new(b"xyz".to_vec()));
    let origin = TestOrigin::files(files);
    let rig = Rig::start(
        4,
        &[Backend::Memory],
        common::proxy_config(Some(origin.url())),
    );
    common::fetch_ok(&rig.addr(), "/x", b"xyz");
    common::fetch_status(&rig.addr(), "/y", Status::FileNotFound);
    assert_eq!(origin.total_requests(), 2);
}
