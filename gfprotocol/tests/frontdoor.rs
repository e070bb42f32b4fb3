//! The front door under idle and half-header connections, the connection limit and shutdown,
//! over real TCP on 127.0.0.1:0.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use gfprotocol::{Client, Handler, Request, ResponseHeader, ResponseWriter, Server, ServerConfig};

/// Answers every path with a 5-byte body and counts refusals.
#[derive(Default)]
struct Hello {
    over_capacity: AtomicUsize,
}

impl Handler for Hello {
    fn handle(&self, _request: &Request, response: &mut ResponseWriter<'_>) {
        let _ = response
            .send_header(ResponseHeader::Ok { length: 5 })
            .and_then(|()| response.send_body(b"hello"));
    }

    fn over_capacity(&self, _peer: SocketAddr) {
        self.over_capacity.fetch_add(1, Ordering::SeqCst);
    }
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        queue_depth: 16,
        ..ServerConfig::default()
    }
}

fn start(
    handler: Arc<Hello>,
    config: ServerConfig,
) -> (
    SocketAddr,
    gfprotocol::ShutdownHandle,
    mpsc::Receiver<Result<(), gfprotocol::Error>>,
) {
    let server = Server::bind(config, handler).unwrap();
    let addr = server.local_addr();
    let stop = server.shutdown_handle();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(server.run());
    });
    (addr, stop, done_rx)
}

/// Reads until EOF or `deadline`; returns the bytes and whether EOF came first.
fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
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

#[test]
fn idle_and_half_header_connections_do_not_delay_other_clients() {
    raise_nofile();
    let header_timeout = Duration::from_secs(2);
    let handler = Arc::new(Hello::default());
    let (addr, stop, done) = start(
        Arc::clone(&handler),
        ServerConfig {
            header_timeout,
            ..config()
        },
    );
    let looping = Arc::new(AtomicBool::new(true));
    let client = {
        let looping = Arc::clone(&looping);
        let addr = addr.to_string();
        thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, 0usize);
            let client = Client::default();
            while looping.load(Ordering::SeqCst) {
                let mut body = Vec::new();
                match client.fetch(&addr, "/x", &mut body) {
                    Ok(_) if body == b"hello" => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let mut silent = Vec::new();
    let mut half = Vec::new();
    for _ in 0..2000 {
        silent.push((TcpStream::connect(addr).unwrap(), Instant::now()));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GETFILE GET /hel").unwrap();
        half.push((stream, Instant::now()));
    }
    for (stream, opened) in silent.iter_mut().chain(half.iter_mut()) {
        let (answer, closed) =
            read_until_closed(stream, *opened + header_timeout + Duration::from_secs(1));
        assert!(
            closed,
            "a connection without a header was not closed in time"
        );
        assert!(answer.is_empty() || answer == b"GETFILE INVALID\r\n\r\n");
    }
    looping.store(false, Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    assert_eq!(failed, 0);
    assert!(ok > 0);
    stop.shutdown();
    done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
}

#[test]
fn connections_past_the_limit_are_closed_and_counted() {
    let handler = Arc::new(Hello::default());
    let (addr, stop, done) = start(
        Arc::clone(&handler),
        ServerConfig {
            max_connections: 3,
            ..config()
        },
    );
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut extra = TcpStream::connect(addr).unwrap();
    let (answer, closed) = read_until_closed(&mut extra, Instant::now() + Duration::from_secs(5));
    assert!(closed && answer.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while handler.over_capacity.load(Ordering::SeqCst) < 1 && Instant::now() < deadline {
        thread::yield_now();
    }
    assert_eq!(handler.over_capacity.load(Ordering::SeqCst), 1);
    // Freeing a connection makes room again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    let fetched = loop {
        let mut body = Vec::new();
        let result = Client::default().fetch(&addr.to_string(), "/x", &mut body);
        if result.is_ok() && body == b"hello" {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(fetched);
    stop.shutdown();
    done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
}

#[test]
fn shutdown_with_many_idle_connections_returns_and_refuses_new_ones() {
    raise_nofile();
    let handler = Arc::new(Hello::default());
    let (addr, stop, done) = start(Arc::clone(&handler), config());
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Every one of them is accepted before shutdown.
    let mut probe = Vec::new();
    assert!(Client::default()
        .fetch(&addr.to_string(), "/x", &mut probe)
        .is_ok());
    stop.shutdown();
    // Well before the 5 s header timeout.
    done.recv_timeout(Duration::from_secs(3)).unwrap().unwrap();
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    for stream in &mut idle {
        let (answer, closed) = read_until_closed(stream, Instant::now() + Duration::from_secs(2));
        assert!(closed && answer.is_empty());
    }
}
