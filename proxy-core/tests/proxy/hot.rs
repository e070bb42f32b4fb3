//! Hot objects: small fresh hits the front door answers from the proxy's memory. What is
//! served that way must be what the cache would serve: never past a purge, never past its
//! freshness, byte-exact over GetFile and HTTP (ranges, HEAD, conditionals, pipelining), and a
//! client that stops reading one costs a worker for `send_timeout` at most.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_core::metrics::Counter;
use proxy_core::purge::{purge_every_cache, PurgeKey};
use proxy_core::ProxyConfig;

use crate::common::{self, Backend, Reply, Rig, TestOrigin};

const DEADLINE: Duration = Duration::from_secs(20);

fn hot_config(origin: Option<String>) -> ProxyConfig {
    let mut config = common::proxy_config(origin);
    config.settings.hot_cache_size = 16 << 20;
    config.settings.hot_object_max_size = 120 << 10;
    config.settings.hot_cache_ttl = Duration::from_secs(60);
    config.settings.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config
}

fn http_addr(rig: &Rig) -> SocketAddr {
    rig.proxy
        .as_ref()
        .and_then(|proxy| proxy.http_addr())
        .expect("an HTTP listener")
}

/// Reads `n` HTTP responses off `stream` (heads and their Content-Length bodies; `no_body[i]`
/// for the answers to HEAD), returning each head and body.
fn read_responses(stream: &mut TcpStream, no_body: &[bool]) -> Vec<(String, Vec<u8>)> {
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    for &head_only in no_body {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                let len: usize = match head_only || head.starts_with("HTTP/1.1 304") {
                    true => 0,
                    false => head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |v| v.trim().parse().expect("length")),
                };
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    out.push((head, body));
                    break;
                }
            }
            let n = stream.read(&mut chunk).expect("read a response");
            assert!(n > 0, "the connection closed after {} responses", out.len());
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    out
}

#[test]
fn hot_objects_are_answered_byte_exact_over_getfile_and_http_without_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let small = Arc::new(common::content(3, 3000));
    let files = HashMap::from([("/a/small.txt".to_string(), Arc::clone(&small))]);
    common::write_tree(&root, &files);
    let mut rig = Rig::start(8, &[Backend::Directory(root)], hot_config(None));
    let addr = rig.addr();
    let http = http_addr(&rig);

    // The first hit asks the cache and keeps a copy; the next ones are answered from it.
    common::fetch_ok(&addr, "/a/small.txt", &small);
    assert_eq!(rig.counter(Counter::HotHits), 0);
    common::fetch_ok(&addr, "/a//./small.txt", &small);
    assert_eq!(
        rig.counter(Counter::HotHits),
        1,
        "the canonical path names the copy"
    );

    // HTTP, pipelined in one write: GET, a range, HEAD, a conditional, a suffix range, a
    // range past the end and a GET that closes the connection.
    let mut stream = TcpStream::connect(http).expect("connect");
    let (first, _) = read_after(&mut stream, "GET /a/small.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    let etag = first
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .expect("an ETag")
        .to_string();
    let requests = [
        "GET /a/small.txt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /a/small.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n".to_string(),
        "HEAD /a/small.txt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("GET /a/small.txt HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n"),
        "GET /a/small.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=-5\r\n\r\n".to_string(),
        "GET /a/small.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=5000-\r\n\r\n".to_string(),
        "GET /a/small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
    ];
    let hot_before = rig.counter(Counter::HotHits);
    stream
        .write_all(requests.concat().as_bytes())
        .expect("pipeline");
    let answers = read_responses(
        &mut stream,
        &[false, false, true, false, false, false, false],
    );
    let status = |i: usize| answers[i].0.lines().next().unwrap_or_default().to_string();
    assert_eq!(status(0), "HTTP/1.1 200 OK");
    assert_eq!(answers[0].1, *small);
    assert!(
        answers[0].0.contains("\r\nX-Cache: HIT\r\n"),
        "{}",
        answers[0].0
    );
    assert_eq!(status(1), "HTTP/1.1 206 Partial Content");
    assert_eq!(answers[1].1, small[10..20]);
    assert!(answers[1].0.contains("Content-Range: bytes 10-19/3000"));
    assert_eq!(status(2), "HTTP/1.1 200 OK");
    assert!(answers[2].0.contains("Content-Length: 3000"));
    assert_eq!(status(3), "HTTP/1.1 304 Not Modified");
    assert_eq!(status(4), "HTTP/1.1 206 Partial Content");
    assert_eq!(answers[4].1, small[2995..]);
    assert_eq!(status(5), "HTTP/1.1 416 Range Not Satisfiable");
    assert_eq!(status(6), "HTTP/1.1 200 OK");
    assert!(answers[6].0.contains("Connection: close"));
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing after the last answer, then the close"
    );
    assert_eq!(rig.counter(Counter::HotHits), hot_before + 7);

    // The cache is gone: its copy is still good (the backend is the same files for whoever
    // comes next), and is answered.
    rig.caches[0].kill();
    common::fetch_ok(&addr, "/a/small.txt", &small);
    rig.wait_counter(Counter::RequestsOk, rig.counter(Counter::LookupHits));
}

/// Sends `request` on `stream` and reads one whole answer.
fn read_after(stream: &mut TcpStream, request: &str) -> (String, Vec<u8>) {
    stream.write_all(request.as_bytes()).expect("send");
    read_responses(stream, &[false]).remove(0)
}

#[test]
fn a_purge_drops_the_hot_copy_and_the_next_request_sees_the_new_version() {
    let version = Arc::new(Mutex::new(Arc::new(b"version one".to_vec())));
    let origin = {
        let version = Arc::clone(&version);
        TestOrigin::start(move |_| Reply::Body(Arc::clone(&version.lock().expect("version"))))
    };
    let rig = Rig::start(8, &[Backend::Memory], hot_config(Some(origin.url())));
    let addr = rig.addr();
    common::fetch_ok(&addr, "/p", b"version one");
    rig.wait_counter(Counter::FillsStored, 1);
    common::fetch_ok(&addr, "/p", b"version one");
    common::fetch_ok(&addr, "/p", b"version one");
    assert_eq!(rig.counter(Counter::HotHits), 1);

    *version.lock().expect("version") = Arc::new(b"version two".to_vec());
    let reports = purge_every_cache(
        &rig.region,
        &[PurgeKey {
            key: "/p",
            prefix: false,
        }],
        Duration::from_secs(5),
    );
    assert_eq!(reports[0].answer.removed(), 1);
    // Right after the purge returned: no copy of version one anywhere.
    common::fetch_ok(&addr, "/p", b"version two");
    assert_eq!(rig.counter(Counter::HotHits), 1);
    assert_eq!(origin.requests("/p"), 2);
}

#[test]
fn a_hot_copy_is_never_answered_past_its_freshness() {
    let origin = TestOrigin::files(HashMap::from([(
        "/f".to_string(),
        Arc::new(b"fresh for two seconds".to_vec()),
    )]));
    let mut config = hot_config(Some(origin.url()));
    config.settings.default_ttl = Duration::from_secs(2);
    let rig = Rig::start(8, &[Backend::Memory], config);
    let http = http_addr(&rig);
    let mut stream = TcpStream::connect(http).expect("connect");
    let get = "GET /f HTTP/1.1\r\nHost: x\r\n\r\n";
    let (miss, _) = read_after(&mut stream, get);
    assert!(miss.contains("X-Cache: MISS"), "{miss}");
    rig.wait_counter(Counter::FillsStored, 1);
    // Until the origin is asked again, every hit, hot or not, must still be fresh: its Age
    // below the 2 s lifetime.
    let started = Instant::now();
    let mut hits = 0;
    while origin.requests("/f") < 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "the copy was never revalidated"
        );
        let (head, body) = read_after(&mut stream, get);
        assert_eq!(body, b"fresh for two seconds");
        if head.contains("Connection: close") {
            stream = TcpStream::connect(http).expect("connect again");
        }
        if head.contains("X-Cache: HIT") {
            hits += 1;
            let age: u64 = head
                .lines()
                .find_map(|l| l.strip_prefix("Age: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("an Age");
            assert!(age < 2, "a hit of age {age} past its 2 s lifetime:\n{head}");
        }
    }
    assert!(hits > 1 && rig.counter(Counter::HotHits) > 0, "{hits} hits");
}

#[test]
fn a_client_that_pipelines_hot_objects_and_stops_reading_is_cut_after_the_send_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("files");
    let body = Arc::new(common::content(5, 120 << 10));
    let files = HashMap::from([("/h.bin".to_string(), Arc::clone(&body))]);
    common::write_tree(&root, &files);
    let mut config = hot_config(None);
    config.settings.send_timeout = Duration::from_secs(1);
    let rig = Rig::start(8, &[Backend::Directory(root)], config);
    let addr = rig.addr();
    common::fetch_ok(&addr, "/h.bin", &body);

    // 64 answers of 120 KiB (7.5 MiB) asked at once and never read: more than the socket
    // buffers take, so the front door hands the rest of one answer to a worker, which gives up
    // after send_timeout without progress.
    let mut stalled = TcpStream::connect(http_addr(&rig)).expect("connect");
    let requests = "GET /h.bin HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
    stalled.write_all(requests.as_bytes()).expect("pipeline");
    rig.wait_counter(Counter::SendTimeouts, 1);
    rig.wait_counter(Counter::RequestsAborted, 1);
    // Others are answered meanwhile and after, from the same copy.
    let hot = rig.counter(Counter::HotHits);
    common::fetch_ok(&addr, "/h.bin", &body);
    assert_eq!(rig.counter(Counter::HotHits), hot + 1);
    // The stalled client gets whole answers, then part of one, then the close.
    stalled
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut received = 0usize;
    let mut buf = [0u8; 65536];
    loop {
        match stalled.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the stalled answers: {e}"),
        }
    }
    assert!(
        received < 64 * body.len(),
        "cut short: {received} bytes of 64 answers"
    );
    assert!(hot >= 2, "the pipelined answers were hot: {hot}");
}
