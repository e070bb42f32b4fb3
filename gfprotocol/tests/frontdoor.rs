//! The front door under idle and half-header connections, the connection limit, slow readers
//! and shutdown, over real TCP on 127.0.0.1:0.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use gfprotocol::{
    Client, ConnectionCounts, ConnectionState, Handler, Malformed, Request, ResponseHeader,
    ResponseWriter, Server, ServerConfig,
};

/// The size of `/big`, far more than the socket buffers hold.
const BIG: u64 = 64 << 20;

/// Answers `/big` with 64 MiB and every other path with a 5-byte body; counts what the front
/// door tells it.
#[derive(Default)]
struct Hello {
    over_capacity: AtomicUsize,
    header_timeouts: AtomicUsize,
    rejected: AtomicUsize,
}

impl Handler for Hello {
    fn handle(&self, request: &Request, response: &mut ResponseWriter<'_>) {
        if request.path == "/big" {
            let chunk = vec![b'x'; 1 << 20];
            let _ = response
                .send_header(ResponseHeader::Ok { length: BIG })
                .and_then(|()| (0..BIG >> 20).try_for_each(|_| response.send_body(&chunk)));
            return;
        }
        let _ = response
            .send_header(ResponseHeader::Ok { length: 5 })
            .and_then(|()| response.send_body(b"hello"));
    }

    fn over_capacity(&self, _peer: SocketAddr) {
        self.over_capacity.fetch_add(1, Ordering::SeqCst);
    }

    fn header_timed_out(&self, _peer: SocketAddr) {
        self.header_timeouts.fetch_add(1, Ordering::SeqCst);
    }

    fn rejected(&self, _peer: SocketAddr, _reason: &Malformed) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
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
    let (addr, stop, done, _) = start_counted(handler, config);
    (addr, stop, done)
}

/// [`start`], and the server's connection counts.
fn start_counted(
    handler: Arc<Hello>,
    config: ServerConfig,
) -> (
    SocketAddr,
    gfprotocol::ShutdownHandle,
    mpsc::Receiver<Result<(), gfprotocol::Error>>,
    Arc<ConnectionCounts>,
) {
    let server = Server::bind(config, handler).unwrap();
    let addr = server.local_addr();
    let stop = server.shutdown_handle();
    let counts = server.connection_counts();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(server.run());
    });
    (addr, stop, done_rx, counts)
}

/// Polls `condition` until it holds; panics with `what` after 30 s.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
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
    let (addr, stop, done, counts) = start_counted(
        Arc::clone(&handler),
        ServerConfig {
            header_timeout,
            // Room in the accept queue for the whole burst: a full queue drops the handshake's
            // last ACK, and the connection would be accepted (and its deadline start) seconds
            // after the client saw it open.
            backlog: 4096,
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
            // The slack covers a loaded machine (the suite runs in parallel on two cores), not
            // the design: an idle connection costs no worker, so it is closed at its deadline.
            read_until_closed(stream, *opened + header_timeout + Duration::from_secs(5));
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
    // Each of them was told as a header timeout, none as a malformed header.
    wait_until("every connection to leave the counts", || {
        counts.open() == 0
    });
    assert_eq!(handler.header_timeouts.load(Ordering::SeqCst), 4000);
    assert_eq!(handler.rejected.load(Ordering::SeqCst), 0);
    for state in ConnectionState::ALL {
        assert_eq!(counts.get(state), 0, "{state:?}");
    }
    stop.shutdown();
    done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
}

#[test]
fn connections_are_counted_by_state() {
    let handler = Arc::new(Hello::default());
    let (addr, stop, done, counts) = start_counted(
        Arc::clone(&handler),
        ServerConfig {
            threads: 1,
            max_threads: 1,
            header_timeout: Duration::from_secs(60),
            ..config()
        },
    );
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("three connections reading a header", || {
        counts.get(ConnectionState::ReadingHeader) == 3
    });
    // One slow reader holds the only worker; two more complete requests wait for it.
    let mut requests: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(b"GETFILE GET /big\r\n\r\n").unwrap();
            stream
        })
        .collect();
    wait_until("one sending and two waiting", || {
        counts.get(ConnectionState::Sending) == 1
            && counts.get(ConnectionState::WaitingForWorker) == 2
    });
    assert_eq!(counts.get(ConnectionState::ReadingHeader), 3);
    assert_eq!(counts.get(ConnectionState::Idle), 0);
    assert_eq!(counts.open(), 6);
    // A malformed header is answered and lingers (closing) until the client closes.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"HTTP/1.1\r\n").unwrap();
    let mut answer = [0u8; 64];
    let n = bad.read(&mut answer).unwrap();
    assert_eq!(&answer[..n], b"GETFILE INVALID\r\n\r\n");
    wait_until("one closing", || counts.get(ConnectionState::Closing) == 1);
    drop(bad);
    drop(silent);
    // Hanging up on the responses frees the worker for the waiting ones.
    requests.clear();
    wait_until("every connection to close", || counts.open() == 0);
    for state in ConnectionState::ALL {
        assert_eq!(counts.get(state), 0, "{state:?}");
    }
    // The malformed header, and the three silent connections whose end came before a header.
    assert_eq!(handler.rejected.load(Ordering::SeqCst), 4);
    assert_eq!(handler.header_timeouts.load(Ordering::SeqCst), 0);
    stop.shutdown();
    done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
}

/// 20 clients that do not read a 64 MiB response hold 20 workers in blocking writes; with
/// threads = 2 the pool grows, and a 21st client is served.
#[test]
fn slow_readers_do_not_take_every_worker() {
    let handler = Arc::new(Hello::default());
    let (addr, stop, done, counts) = start_counted(
        Arc::clone(&handler),
        ServerConfig {
            threads: 2,
            max_threads: 64,
            send_timeout: Duration::from_secs(60),
            ..config()
        },
    );
    let holders: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(b"GETFILE GET /big\r\n\r\n").unwrap();
            stream
        })
        .collect();
    wait_until("20 responses in workers", || {
        counts.get(ConnectionState::Sending) == 20
    });
    let mut body = Vec::new();
    let outcome = Client::default()
        .fetch(&addr.to_string(), "/x", &mut body)
        .unwrap();
    assert_eq!(
        (outcome.status, body.as_slice()),
        (gfprotocol::Status::Ok, &b"hello"[..])
    );
    // The worker that answered /x leaves Sending a moment after the client has its answer;
    // the holders' 20 stay.
    wait_until(
        "the holders, still holding, to be the only ones sending",
        || counts.get(ConnectionState::Sending) == 20,
    );
    drop(holders);
    wait_until("the holders' workers to be released", || counts.open() == 0);
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
