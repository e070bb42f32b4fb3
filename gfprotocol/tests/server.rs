//! The server framework with custom handlers, over real TCP on 127.0.0.1:0.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gfprotocol::{
    Client, Error, FetchOutcome, Handler, Request, ResponseHeader, ResponseWriter, Server,
    ServerConfig, ShutdownHandle, Status,
};

/// Answers by path, to exercise every ResponseWriter operation.
struct Scripted;

impl Handler for Scripted {
    fn handle(&self, request: &Request, response: &mut ResponseWriter<'_>) {
        match request.path.as_str() {
            "/chunks" => {
                response
                    .send_header(ResponseHeader::Ok { length: 10 })
                    .unwrap();
                assert!(response.header_sent());
                response.send_body(b"0123").unwrap();
                response.send_body(b"").unwrap();
                response.send_body(b"456789").unwrap();
                assert_eq!(response.body_sent(), 10);
                // More than announced is refused.
                assert!(response.send_body(b"x").is_err());
            }
            "/with" => {
                response
                    .send_header(ResponseHeader::Ok { length: 5 })
                    .unwrap();
                response
                    .send_body_with(5, &mut |fd| {
                        let n = nix::sys::socket::send(
                            std::os::fd::AsRawFd::as_raw_fd(&fd),
                            b"hello",
                            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                        )?;
                        assert_eq!(n, 5);
                        Ok(())
                    })
                    .unwrap();
            }
            "/too-long" => {
                response
                    .send_header(ResponseHeader::Ok { length: 2 })
                    .unwrap();
                assert!(response.send_body(b"abc").is_err());
                assert!(response.send_header(ResponseHeader::Error).is_err());
                response.send_body(b"ab").unwrap();
            }
            "/empty" => response
                .send_header(ResponseHeader::Ok { length: 0 })
                .unwrap(),
            "/short" => {
                response
                    .send_header(ResponseHeader::Ok { length: 100 })
                    .unwrap();
                response.send_body(b"only this").unwrap();
            }
            "/abort" => {
                response
                    .send_header(ResponseHeader::Ok { length: 100 })
                    .unwrap();
                response.send_body(b"partial").unwrap();
                response.abort();
                assert!(response.send_body(b"more").is_err());
            }
            "/header-only" => response
                .send_header(ResponseHeader::Ok { length: 50 })
                .unwrap(),
            "/abort-after-header" => {
                response
                    .send_header(ResponseHeader::Ok { length: 50 })
                    .unwrap();
                response.abort();
                assert_eq!(response.body_sent(), 0);
            }
            "/nothing" => {}
            "/panic" => panic!("handler panic (expected by the test)"),
            "/missing" => response.send_header(ResponseHeader::FileNotFound).unwrap(),
            "/peer" => {
                assert!(request.peer.ip().is_loopback());
                response.send_header(ResponseHeader::Error).unwrap();
            }
            _ => response.send_header(ResponseHeader::Invalid).unwrap(),
        }
    }
}

struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<thread::JoinHandle<Result<(), Error>>>,
}

impl Running {
    fn start(handler: Arc<dyn Handler>, config: ServerConfig) -> Running {
        let server = Server::bind(config, handler).unwrap();
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let thread = Some(thread::spawn(move || server.run()));
        Running {
            addr,
            handle,
            thread,
        }
    }

    fn stop(mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        queue_depth: 16,
        ..ServerConfig::default()
    }
}

fn fetch(addr: SocketAddr, path: &str) -> (Result<FetchOutcome, Error>, Vec<u8>) {
    let mut body = Vec::new();
    let result = Client::default().fetch(&addr.to_string(), path, &mut body);
    (result, body)
}

fn raw_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    if half_close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    answer
}

#[test]
fn writer_operations() {
    let server = Running::start(Arc::new(Scripted), config());
    let ok = |path: &str, expected: &[u8]| {
        let (result, body) = fetch(server.addr, path);
        let outcome = result.unwrap();
        assert_eq!(outcome.status, Status::Ok, "{path}");
        assert_eq!(outcome.announced_len, expected.len() as u64);
        assert_eq!(body, expected, "{path}");
    };
    ok("/chunks", b"0123456789");
    ok("/with", b"hello");
    ok("/too-long", b"ab");
    ok("/empty", b"");
    for (path, status) in [
        ("/nothing", Status::Error),
        ("/panic", Status::Error),
        ("/missing", Status::FileNotFound),
        ("/peer", Status::Error),
        ("/other", Status::Invalid),
    ] {
        let (result, _) = fetch(server.addr, path);
        assert_eq!(result.unwrap().status, status, "{path}");
    }
    for (path, received) in [
        ("/short", 9),
        ("/abort", 7),
        ("/header-only", 0),
        ("/abort-after-header", 0),
    ] {
        let (result, body) = fetch(server.addr, path);
        match result {
            Err(Error::ShortBody {
                announced,
                received: r,
            }) => {
                assert!(announced == 100 || announced == 50);
                assert_eq!(r, received);
            }
            other => panic!("{path}: {other:?}"),
        }
        assert_eq!(body.len() as u64, received);
    }
    server.stop();
}

#[test]
fn malformed_requests_get_invalid() {
    let server = Running::start(Arc::new(Scripted), config());
    let invalid = b"GETFILE INVALID\r\n\r\n".to_vec();
    for request in [
        &b"GETFILE GET /chunks\r\n"[..],
        b"GETFILE GET",
        b"",
        b"GET /chunks HTTP/1.0\r\n\r\n",
        b"GETFILE GET chunks\r\n\r\n",
    ] {
        assert_eq!(raw_exchange(server.addr, request, true), invalid);
    }
    // Rejected at the first bad byte, without waiting for more.
    assert_eq!(raw_exchange(server.addr, b"HTTP", false), invalid);
    let mut long = b"GETFILE GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 10_000));
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_exchange(server.addr, &long, false), invalid);
    // The trailing space of old clients is accepted.
    let answer = raw_exchange(server.addr, b"GETFILE GET /missing \r\n\r\n", false);
    assert_eq!(answer, b"GETFILE FILE_NOT_FOUND\r\n\r\n");
    server.stop();
}

#[test]
fn header_deadline_answers_invalid() {
    let server = Running::start(
        Arc::new(Scripted),
        ServerConfig {
            header_timeout: Duration::from_millis(200),
            ..config()
        },
    );
    let answer = raw_exchange(server.addr, b"GETFILE GET /chu", false);
    assert_eq!(answer, b"GETFILE INVALID\r\n\r\n");
    server.stop();
}

#[test]
fn shutdown_finishes_queued_connections() {
    let server = Running::start(Arc::new(Scripted), config());
    let addr = server.addr;
    // A request sent before shutdown is still answered; an idle connection is closed.
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    let (result, _) = fetch(addr, "/chunks");
    assert_eq!(result.unwrap().status, Status::Ok);
    stream.write_all(b"GETFILE GET /chunks\r\n\r\n").unwrap();
    server.handle.shutdown();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"GETFILE OK 10\r\n\r\n0123456789");
    let mut nothing = Vec::new();
    let _ = idle.read_to_end(&mut nothing);
    assert!(nothing.is_empty());
    server.stop();
    // Restart on the same port at once.
    let again = Server::bind(
        ServerConfig {
            listen: addr,
            ..config()
        },
        Arc::new(Scripted),
    );
    assert!(again.is_ok());
}

#[test]
fn bad_config_is_an_error() {
    let result = Server::bind(
        ServerConfig {
            threads: 0,
            ..config()
        },
        Arc::new(Scripted),
    );
    assert!(matches!(result, Err(Error::Config(_))));
}

/// Streams 64 MiB in 1 MiB chunks and reports how the transfer ended, and whether the writer
/// says a send timed out.
struct Streamer {
    report: std::sync::Mutex<std::sync::mpsc::Sender<(std::io::Result<u64>, bool)>>,
}

impl Handler for Streamer {
    fn handle(&self, _request: &Request, response: &mut ResponseWriter<'_>) {
        let chunk = vec![7u8; 1 << 20];
        let result = response
            .send_header(ResponseHeader::Ok { length: 64 << 20 })
            .and_then(|()| {
                for _ in 0..64 {
                    response.send_body(&chunk)?;
                }
                Ok(response.body_sent())
            });
        if let Ok(report) = self.report.lock() {
            let _ = report.send((result, response.send_timed_out()));
        }
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let (report, results) = std::sync::mpsc::channel();
    let server = Running::start(
        Arc::new(Streamer {
            report: std::sync::Mutex::new(report),
        }),
        ServerConfig {
            send_timeout: Duration::from_millis(200),
            ..config()
        },
    );
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.write_all(b"GETFILE GET /big\r\n\r\n").unwrap();
    // The stalled client never reads: the handler's send fails with a timeout.
    let (outcome, timed_out) = results.recv().unwrap();
    let error = outcome.expect_err("64 MiB cannot fit in socket buffers");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    assert!(timed_out, "the writer reports the send timeout");
    // The server closed its side: reading now ends before the announced length.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::new();
    let _ = stalled.read_to_end(&mut received);
    assert!(received.len() < 64 << 20, "{} bytes", received.len());
    // A reading client still gets everything.
    let (result, body) = fetch(server.addr, "/big");
    assert_eq!(result.unwrap().received, 64 << 20);
    assert!(body.iter().all(|&b| b == 7));
    let (outcome, timed_out) = results.recv().unwrap();
    assert_eq!(outcome.unwrap(), 64 << 20);
    assert!(!timed_out);
    server.stop();
}

#[test]
fn random_garbage_never_hurts_the_server() {
    let server = Running::start(Arc::new(Scripted), config());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..64 {
        let mut junk = Vec::new();
        for _ in 0..(round * 13 % 200) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            junk.push(state as u8);
        }
        if round % 4 == 0 {
            // Sometimes valid-looking up to the path.
            junk.splice(0..0, b"GETFILE GET /".iter().copied());
        }
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let _ = stream.write_all(&junk);
        let _ = stream.shutdown(Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(answer.starts_with(b"GETFILE "), "{answer:?}");
    }
    let (result, body) = fetch(server.addr, "/chunks");
    assert_eq!(result.unwrap().status, Status::Ok);
    assert_eq!(body, b"0123456789");
    server.stop();
}
