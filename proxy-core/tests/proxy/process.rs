//! The process entry points: `run`, and several proxies sharing a port.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ipc::{Member, MemberState, ProxySlot};
use proxy_core::metrics::Counter;
use proxy_core::Proxy;

use crate::common::{self, Backend, Rig};

#[test]
fn two_proxies_share_one_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("shared"), b"one port, two proxies").expect("write");
    let mut config = common::proxy_config(None);
    config.reuse_port = true;
    let rig = Rig::start(8, &[Backend::Directory(dir.path().to_path_buf())], config);
    let addr = rig.proxy.as_ref().expect("proxy").local_addr();

    let mut second = common::proxy_config(None);
    second.slot = ProxySlot::from_raw(1);
    second.settings.listen = addr;
    second.reuse_port = true;
    let second = Proxy::start(Arc::clone(&rig.region), second).expect("second proxy on the port");
    assert_eq!(second.local_addr(), addr);

    for _ in 0..20 {
        common::fetch_ok(&addr.to_string(), "/shared", b"one port, two proxies");
    }
    let hits = |slot| {
        rig.region
            .stats_snapshot(Member::Proxy(ProxySlot::from_raw(slot)))
            .counter(Counter::LookupHits.id())
    };
    assert_eq!(hits(0) + hits(1), 20);
}

#[test]
fn run_serves_until_stopped_and_tracks_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("file"), b"run").expect("write");
    let mut rig = Rig::start(
        4,
        &[Backend::Directory(dir.path().to_path_buf())],
        common::proxy_config(None),
    );
    // `run` does not report its address: take a free port for it.
    rig.proxy.take();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut config = common::proxy_config(None);
    config.settings.listen = port;
    let member = Member::Proxy(config.slot);
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let region = Arc::clone(&rig.region);
        let stop = Arc::clone(&stop);
        thread::spawn(move || proxy_core::run(region, config, &stop, Duration::from_secs(10)))
    };
    common::wait_for("the proxy to be ready", Duration::from_secs(20), || {
        rig.region.member_state(member) == MemberState::Ready
    });
    assert_eq!(rig.region.member_pid(member), std::process::id() as i32);
    common::fetch_ok(&port.to_string(), "/file", b"run");
    stop.store(true, Ordering::SeqCst);
    runner.join().expect("runner").expect("run returns Ok");
    assert_eq!(rig.region.member_state(member), MemberState::Down);
}
