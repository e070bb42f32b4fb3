//! The proxy's front end: idle and half-header connections, the connection limit, a client
//! that stops reading, and the connection gauges and counters they move.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use gfprotocol::ConnectionState;
use proxy_core::metrics::{Counter, Gauge};

use crate::common::{self, Backend, Rig};

/// Reads until EOF (or a reset) or `deadline`; returns the bytes and whether the end came.
fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return (answer, false);
        }
        match stream.read(&mut buf) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (answer, true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (answer, false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (answer, true),
        }
    }
}

fn connections(rig: &Rig, state: ConnectionState) -> u64 {
    rig.gauge(Gauge::Connections(state))
}

/// 2000 silent and 2000 half-header connections, far more than the proxy's 8 workers, do not
/// keep a looping client from its hits; each is closed by the proxy within its header timeout
/// (plus a second), counted as a header timeout and not as an INVALID request, and the
/// connection gauges follow them.
#[test]
fn idle_and_half_header_connections_do_not_block_hits() {
    common::raise_nofile();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let body = Arc::new(common::content(7, 4096));
    let files = HashMap::from([("/hit.bin".to_string(), Arc::clone(&body))]);
    common::write_tree(&root, &files);
    let header_timeout = Duration::from_secs(2);
    let mut config = common::proxy_config(None);
    config.settings.header_timeout = header_timeout;
    // Room in the accept queue for the whole burst (the deadline counts from accept).
    config.settings.listen_backlog = 4096;
    let rig = Rig::start(8, &[Backend::Directory(root)], config);
    let addr = rig.addr();

    let looping = Arc::new(AtomicBool::new(true));
    let client = {
        let (looping, addr, body) = (Arc::clone(&looping), addr.clone(), Arc::clone(&body));
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            while looping.load(Ordering::SeqCst) {
                match common::fetch(&addr, "/hit.bin") {
                    common::Fetched::Ok(got) if got == *body => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let mut silent = Vec::new();
    let mut half = Vec::new();
    for _ in 0..2000 {
        silent.push((TcpStream::connect(&addr).expect("connect"), Instant::now()));
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream.write_all(b"GETFILE GET /hel").expect("write");
        half.push((stream, Instant::now()));
    }
    for (stream, opened) in silent.iter_mut().chain(half.iter_mut()) {
        let (answer, closed) =
            read_until_closed(stream, *opened + header_timeout + Duration::from_secs(1));
        assert!(
            closed,
            "a connection without a header was not closed in time"
        );
        assert!(
            answer.is_empty() || answer == b"GETFILE INVALID\r\n\r\n",
            "{answer:?}"
        );
    }
    looping.store(false, Ordering::SeqCst);
    let (ok, failed) = client.join().expect("client thread");
    assert_eq!(failed, 0, "{ok} hits");
    assert!(ok > 0);
    rig.wait_counter(Counter::HeaderTimeouts, 4000);
    assert_eq!(rig.counter(Counter::RequestsInvalid), 0);
    rig.wait_counter(Counter::RequestsOk, ok);
    drop(silent);
    drop(half);
    common::wait_for(
        "the connection gauges to fall to 0",
        Duration::from_secs(20),
        || {
            ConnectionState::ALL
                .iter()
                .all(|&state| connections(&rig, state) == 0)
        },
    );
}

/// The gauges count connections reading a header and being answered.
#[test]
fn connection_gauges_follow_the_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let files = HashMap::from([(
        "/big.bin".to_string(),
        Arc::new(common::content(3, 64 << 20)),
    )]);
    common::write_tree(&root, &files);
    let mut config = common::proxy_config(None);
    config.settings.header_timeout = Duration::from_secs(60);
    let rig = Rig::start(8, &[Backend::Directory(root)], config);
    let addr = rig.addr();
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // Two clients that read the header and a little, then stop: their workers block.
    let readers: Vec<_> = (0..2)
        .map(|_| common::start_partial(&addr, "/big.bin", 1))
        .collect();
    common::wait_for(
        "5 reading a header, 2 sending",
        Duration::from_secs(20),
        || {
            connections(&rig, ConnectionState::ReadingHeader) == 5
                && connections(&rig, ConnectionState::Sending) == 2
        },
    );
    assert_eq!(connections(&rig, ConnectionState::WaitingForWorker), 0);
    assert_eq!(connections(&rig, ConnectionState::Idle), 0);
    drop(idle);
    drop(readers);
    common::wait_for("the gauges to fall to 0", Duration::from_secs(20), || {
        ConnectionState::ALL
            .iter()
            .all(|&state| connections(&rig, state) == 0)
    });
    rig.wait_pool_full();
}

/// Past `max_connections` a new connection is closed at once and counted; the open ones keep
/// their place.
#[test]
fn connections_past_max_connections_are_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = common::proxy_config(None);
    config.settings.max_connections = 2;
    let rig = Rig::start(4, &[Backend::Directory(dir.path().to_path_buf())], config);
    let addr = rig.addr();
    let held: Vec<_> = (0..2)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // Accepted by the kernel, then closed by the proxy without a byte.
    let mut extra = TcpStream::connect(&addr).expect("connect");
    let (answer, closed) = read_until_closed(&mut extra, Instant::now() + Duration::from_secs(10));
    assert!(closed && answer.is_empty(), "{answer:?}");
    rig.wait_counter(Counter::ConnectionsRefused, 1);
    drop(held);
}

/// A client that never reads a 64 MiB hit is cut once a write made no progress for
/// `send_timeout`: the proxy closes the connection, counts a send timeout and an aborted
/// request, and hands the segment back.
#[test]
fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let body = Arc::new(common::content(11, 64 << 20));
    let files = HashMap::from([("/big.bin".to_string(), Arc::clone(&body))]);
    common::write_tree(&root, &files);
    let mut config = common::proxy_config(None);
    config.settings.send_timeout = Duration::from_secs(1);
    let rig = Rig::start(8, &[Backend::Directory(root)], config);
    let addr = rig.addr();

    let mut stalled = TcpStream::connect(&addr).expect("connect");
    stalled
        .write_all(b"GETFILE GET /big.bin\r\n\r\n")
        .expect("send the request");
    // Never read until the proxy gave up on us.
    rig.wait_counter(Counter::SendTimeouts, 1);
    common::wait_for(
        "the request to be counted aborted",
        Duration::from_secs(20),
        || rig.counter(Counter::RequestsAborted) == 1,
    );
    let (received, closed) =
        read_until_closed(&mut stalled, Instant::now() + Duration::from_secs(20));
    assert!(closed, "the proxy closed its side");
    assert!(
        received.len() < body.len(),
        "{} bytes of a 64 MiB body",
        received.len()
    );
    assert!(received.starts_with(b"GETFILE OK 67108864\r\n\r\n"));
    assert_eq!(rig.counter(Counter::RequestsOk), 0);
    // A client that reads gets the whole object.
    common::fetch_ok(&addr, "/big.bin", &body);
    assert_eq!(rig.counter(Counter::SendTimeouts), 1);
    rig.wait_pool_full();
}
