//! The pieces of origin bodies: buffers of the process's piece pool, reused from one miss to the
//! next, shared with the fill and the followers. Reuse must never mix two bodies.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use proxy_core::fill::{PiecePool, PIECE_POOL_LIMIT, PIECE_SIZE};
use proxy_core::metrics::Counter;

use crate::common::{self, Backend, Reply, Rig, TestOrigin};

#[test]
fn reused_piece_buffers_never_mix_bodies_across_misses_fills_and_followers() {
    // Lengths around the piece size: one short piece, exactly one, one and a byte, several.
    let lengths = [
        1000,
        PIECE_SIZE,
        PIECE_SIZE + 1,
        2 * PIECE_SIZE,
        3 * PIECE_SIZE + 123,
    ];
    // Three of each for the misses one after the other, two more for the concurrent ones.
    let mut files = HashMap::new();
    let mut fresh = Vec::new();
    for (i, len) in lengths.iter().enumerate() {
        for copy in 0..5 {
            let seed = (i * 10 + copy) as u64;
            let path = format!("/f{i}-{copy}");
            if copy >= 3 {
                fresh.push(path.clone());
            }
            files.insert(path, Arc::new(common::content(seed, *len)));
        }
    }
    let hot = Arc::new(common::content(99, 4 * PIECE_SIZE + 5));
    let origin = {
        let (files, hot) = (files.clone(), Arc::clone(&hot));
        TestOrigin::start(move |path| match files.get(path) {
            Some(bytes) => Reply::Body(Arc::clone(bytes)),
            None if path == "/hot" => Reply::Gated(Arc::clone(&hot)),
            None => Reply::Status(404),
        })
    };
    let mut config = common::proxy_config(Some(origin.url()));
    config.settings.threads = 20;
    let rig = Rig::start(24, &[Backend::Memory, Backend::Memory], config);
    let addr = rig.addr();

    // One after the other: each miss reads into the buffers the previous one gave back.
    let mut paths: Vec<_> = files
        .keys()
        .filter(|p| !fresh.contains(p))
        .cloned()
        .collect();
    paths.sort();
    for path in &paths {
        common::fetch_ok(&addr, path, &files[path]);
    }
    common::wait_for("every fill", Duration::from_secs(20), || {
        rig.counter(Counter::FillsStored) >= paths.len() as u64
    });
    let kept = PiecePool::process().kept_bytes();
    assert!(kept > 0, "the misses used the pool");
    assert!(kept <= PIECE_POOL_LIMIT);

    // What was filled is what the origin sent, however its buffers were reused since.
    for path in &paths {
        common::fetch_ok(&addr, path, &files[path]);
    }
    assert_eq!(rig.counter(Counter::LookupHits), paths.len() as u64);
    assert_eq!(origin.total_requests(), paths.len());

    // At once: 8 followers share the pieces of one gated miss while other misses take and give
    // back buffers around them.
    let misses_before = rig.counter(Counter::LookupMisses);
    let followers: Vec<_> = (0..8)
        .map(|_| {
            let (addr, hot) = (addr.clone(), Arc::clone(&hot));
            thread::spawn(move || common::fetch_ok(&addr, "/hot", &hot))
        })
        .collect();
    common::wait_for("the followers to wait", Duration::from_secs(20), || {
        rig.counter(Counter::Collapsed) >= 7
    });
    // One client after the other (tiny_http serves a connection per pool thread, and a burst
    // of new connections can wait behind the idle ones), alongside the followers' stream.
    let others = {
        let (addr, fresh, files) = (addr.clone(), fresh.clone(), files.clone());
        thread::spawn(move || {
            for path in &fresh {
                common::fetch_ok(&addr, path, &files[path]);
            }
        })
    };
    origin.open_gate();
    for client in followers.into_iter().chain([others]) {
        client.join().expect("client");
    }
    assert_eq!(origin.requests("/hot"), 1);
    // Every request missed (a leader that saw another flight end looks once more).
    assert!(rig.counter(Counter::LookupMisses) - misses_before >= 8 + fresh.len() as u64);
    let all = (paths.len() + fresh.len()) as u64;
    common::wait_for(
        "the fills of the concurrent misses",
        Duration::from_secs(20),
        || rig.counter(Counter::FillsStored) > all,
    );
    for path in &fresh {
        common::fetch_ok(&addr, path, &files[path]);
    }
    common::fetch_ok(&addr, "/hot", &hot);
    rig.wait_pool_full();
}
