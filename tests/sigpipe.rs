//! With SIGPIPE at its default action (terminate), a client that closes its connection early
//! does not kill the server: every write to a client socket is `send(2)` with `MSG_NOSIGNAL`,
//! or `sendfile(2)` from a worker that blocks SIGPIPE. Both servers run in this test process, so
//! a SIGPIPE anywhere kills the test binary and fails it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_backends::{BackendConfig, CacheProcessConfig};
use gfprotocol::{FileServer, Server, ServerConfig};
use ipc::{CacheSlot, Member, MemberState, Region, RegionConfig};
use nix::sys::socket::{setsockopt, sockopt::Linger};
use proxy_core::{Proxy, ProxyConfig};

const BIG: &str = "/big.bin";
const BIG_LEN: usize = 8 << 20;
const CLIENTS: usize = 20;

fn write_big_file(dir: &Path) -> Vec<u8> {
    let body: Vec<u8> = (0..BIG_LEN).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join(BIG.trim_start_matches('/')), &body).expect("write the big file");
    body
}

/// Asks for the big file, reads its header and a little of the body, then resets the
/// connection (SO_LINGER 0), so the server's next writes meet a closed peer.
fn fetch_and_hang_up(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(format!("GETFILE GET {BIG}\r\n\r\n").as_bytes())
        .expect("send the request");
    let mut start = [0u8; 4096];
    let got = stream
        .read(&mut start)
        .expect("read the start of the reply");
    assert!(
        start[..got].starts_with(b"GETFILE OK"),
        "{:?}",
        String::from_utf8_lossy(&start[..got])
    );
    setsockopt(
        &stream.as_fd(),
        Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("SO_LINGER 0");
}

fn fetch_whole(addr: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let outcome = gfprotocol::Client::default()
        .fetch(&addr.to_string(), BIG, &mut body)
        .expect("fetch the big file");
    assert_eq!(outcome.status, gfprotocol::Status::Ok);
    body
}

#[test]
fn a_file_server_survives_clients_that_hang_up_with_sigpipe_at_its_default() {
    ipc::testkit::restore_default_sigpipe().expect("SIGPIPE to SIG_DFL");
    let dir = tempfile::tempdir().expect("tempdir");
    let body = write_big_file(dir.path());
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        threads: 4,
        ..ServerConfig::default()
    };
    let handler = Arc::new(FileServer::from_root(dir.path()).expect("file server"));
    let server = Server::bind(config, handler).expect("bind");
    let addr = server.local_addr();
    let stop = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());
    for _ in 0..CLIENTS {
        fetch_and_hang_up(addr);
    }
    assert!(fetch_whole(addr) == body, "the file server still serves");
    stop.shutdown();
    running.join().expect("server thread").expect("server");
}

#[test]
fn a_proxy_streaming_from_shared_memory_survives_clients_that_hang_up() {
    ipc::testkit::restore_default_sigpipe().expect("SIGPIPE to SIG_DFL");
    let dir = tempfile::tempdir().expect("tempdir");
    let body = write_big_file(dir.path());
    let region = Arc::new(
        Region::create(
            &RegionConfig {
                segments: 8,
                segment_size: 128 * 1024,
                cache_slots: 1,
                proxy_slots: 1,
            },
            None,
        )
        .expect("region"),
    );
    let backend = cache_backends::open_backend(&BackendConfig::Directory {
        root: Some(dir.path().to_path_buf()),
        content: None,
        writable: false,
        max_size: None,
        ttl: None,
    })
    .expect("directory backend");
    let stop_cache = Arc::new(AtomicBool::new(false));
    let cache = {
        let (region, stop) = (Arc::clone(&region), Arc::clone(&stop_cache));
        std::thread::spawn(move || {
            let config = CacheProcessConfig {
                slot: CacheSlot::from_raw(0),
                workers: 2,
                transfer_timeout: Duration::from_secs(5),
                shutdown_timeout: Duration::from_secs(2),
            };
            cache_backends::run_cache_process(&region, backend.as_ref(), &config, &stop)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while region.member_state(Member::Cache(CacheSlot::from_raw(0))) != MemberState::Ready {
        assert!(Instant::now() < deadline, "the cache did not get ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let proxy = Proxy::start(
        Arc::clone(&region),
        ProxyConfig::new("127.0.0.1:0".parse().expect("address")),
    )
    .expect("proxy");
    let addr = proxy.local_addr();
    for _ in 0..CLIENTS {
        fetch_and_hang_up(addr);
    }
    assert!(fetch_whole(addr) == body, "the proxy still serves");
    proxy.stop();
    proxy.join().expect("proxy");
    stop_cache.store(true, Ordering::Release);
    cache.join().expect("cache thread").expect("cache");
}
