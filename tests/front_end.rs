//! Black-box tests of the front end as real processes: `gfserver` out of file descriptors,
//! `gfserver`'s worker pool growing past `--threads` for slow readers, and `gfsupervisor`
//! draining on SIGTERM with thousands of idle connections open.
mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gfprotocol::{Client, Status};
use nix::sys::signal::{kill, Signal};

const GFSERVER: &str = env!("CARGO_BIN_EXE_gfserver");

/// Raises this process's soft RLIMIT_NOFILE to the hard limit: the tests hold thousands of
/// sockets.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// A gfserver process (started through `sh` to set its descriptor limit), killed on drop.
struct GfServer {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl GfServer {
    /// Starts `gfserver --root root --listen 127.0.0.1:0 extra...` with RLIMIT_NOFILE at
    /// `nofile` (soft and hard, so gfserver cannot raise it), logging to `log`.
    fn start(root: &Path, nofile: Option<u32>, extra: &[&str], log: &Path) -> GfServer {
        let limit = nofile.map_or_else(String::new, |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(GFSERVER)
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("create the log"))
            .spawn()
            .expect("spawn gfserver");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the address line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "gfserver did not start: {line:?}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .parse()
            .expect("address");
        GfServer {
            child,
            addr,
            _stdout: stdout,
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "gfserver exited"
        );
    }

    /// Its threads named `gf-worker-*`.
    fn workers(&self) -> usize {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|task| {
                        std::fs::read_to_string(task.path().join("comm"))
                            .is_ok_and(|name| name.starts_with("gf-worker"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for GfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fetch(addr: SocketAddr, path: &str) -> Result<(Status, Vec<u8>), gfprotocol::Error> {
    let mut body = Vec::new();
    let outcome = Client::default().fetch(&addr.to_string(), path, &mut body)?;
    Ok((outcome.status, body))
}

/// Whether the peer has closed `stream` (non-blocking check).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Writes `len` bytes of a repeating pattern.
fn write_big_file(path: &Path, len: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, &body).expect("write the big file");
    body
}

/// gfserver with 64 descriptors is flooded with 300 connections: those it cannot take are
/// accepted with its reserve descriptor and closed at once, and once the flood closes it
/// serves new clients again.
#[test]
fn gfserver_out_of_descriptors_sheds_connections_and_recovers() {
    raise_nofile();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(root.join("hello.txt"), b"hello").expect("write");
    let log = dir.path().join("gfserver.log");
    let mut server = GfServer::start(
        &root,
        Some(64),
        &["--threads", "2", "--header-timeout", "60"],
        &log,
    );
    assert_eq!(fetch(server.addr, "/hello.txt").expect("fetch").1, b"hello");

    let mut flood: Vec<TcpStream> = (0..300)
        .map(|_| {
            let stream = TcpStream::connect(server.addr).expect("connect");
            stream.set_nonblocking(true).expect("nonblocking");
            stream
        })
        .collect();
    // At most 64 descriptors: at least 236 of the 300 are closed by the server.
    let mut shed = vec![false; flood.len()];
    wait_for("the server to close what it cannot hold", DEADLINE, || {
        for (stream, shed) in flood.iter_mut().zip(shed.iter_mut()) {
            if !*shed {
                *shed = closed_by_peer(stream);
            }
        }
        (shed.iter().filter(|&&s| s).count() >= 236).then_some(())
    });
    let held = shed.iter().filter(|&&s| !s).count();
    assert!(held > 0, "it holds the connections it has descriptors for");
    server.assert_running();

    drop(flood);
    let body = wait_for("the server to serve again", DEADLINE, || {
        fetch(server.addr, "/hello.txt")
            .ok()
            .filter(|(status, _)| *status == Status::Ok)
    });
    assert_eq!(body.1, b"hello");
    server.assert_running();
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(text.contains("out of file descriptors"), "{text}");
}

/// With --threads 2 --max-threads 64, 20 clients that never read a 64 MiB response hold 20
/// workers in blocking writes, and a 21st client is still served; the extra workers leave
/// once idle.
#[test]
fn gfserver_pool_grows_for_slow_readers_and_shrinks_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    write_big_file(&root.join("big.bin"), 64 << 20);
    std::fs::write(root.join("small.txt"), b"small").expect("write");
    let log = dir.path().join("gfserver.log");
    let mut server = GfServer::start(
        &root,
        None,
        &[
            "--threads",
            "2",
            "--max-threads",
            "64",
            "--send-timeout",
            "60",
        ],
        &log,
    );
    wait_for("the two core workers", DEADLINE, || {
        (server.workers() == 2).then_some(())
    });
    let holders: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream
                .write_all(b"GETFILE GET /big.bin\r\n\r\n")
                .expect("send");
            stream
        })
        .collect();
    wait_for("a worker for each slow reader", DEADLINE, || {
        (server.workers() >= 20).then_some(())
    });
    let (status, body) = fetch(server.addr, "/small.txt").expect("the 21st client");
    assert_eq!((status, body.as_slice()), (Status::Ok, &b"small"[..]));
    assert!(server.workers() <= 64);
    server.assert_running();

    drop(holders);
    // The extra workers exit after 10 s without work.
    wait_for(
        "the extra workers to leave",
        Duration::from_secs(60),
        || (server.workers() == 2).then_some(()),
    );
    assert_eq!(fetch(server.addr, "/small.txt").expect("fetch").1, b"small");
}

/// SIGTERM to gfsupervisor with 5000 idle connections and one transfer in flight: during the
/// drain a new connection is refused, every idle one is closed, the transfer finishes, and
/// the supervisor exits within shutdown_timeout.
#[test]
fn sigterm_with_thousands_of_idle_connections_drains_and_refuses_new_ones() {
    raise_nofile();
    let content = tempfile::tempdir().expect("tempdir");
    let body = write_big_file(&content.path().join("big.bin"), 32 << 20);
    let shutdown_timeout = Duration::from_secs(20);
    let mut run = Run::prepare(Setup::new(Backend::Directory(content.path().to_path_buf())));
    let config = std::fs::read_to_string(&run.config).expect("read the config");
    let config = config
        .replace(
            "shutdown_timeout = \"3s\"",
            &format!("shutdown_timeout = \"{}s\"", shutdown_timeout.as_secs()),
        )
        .replace("threads = 4\n", "threads = 4\nheader_timeout = \"60s\"\n");
    assert!(config.contains("header_timeout = \"60s\"") && config.contains("\"20s\""));
    std::fs::write(&run.config, config).expect("write the config");
    run.spawn();
    run.wait_ready();

    let mut idle: Vec<TcpStream> = (0..5000)
        .map(|_| TcpStream::connect(run.proxy).expect("connect"))
        .collect();
    // One transfer in flight that keeps the drain going: a reader that stopped reading.
    let mut reader = TcpStream::connect(run.proxy).expect("connect");
    reader
        .write_all(b"GETFILE GET /big.bin\r\n\r\n")
        .expect("send");
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = reader.read(&mut buf).expect("read the header");
        assert!(n > 0, "closed before the header");
        received.extend_from_slice(&buf[..n]);
    }
    let header = format!("GETFILE OK {}\r\n\r\n", body.len());
    assert!(received.starts_with(header.as_bytes()), "{received:?}");
    wait_for("the gauges to show the connections", DEADLINE, || {
        let text = run.metrics_text();
        let reading = metric_value(&text, "gfcache_connections{state=\"reading_header\"}")?;
        let sending = metric_value(&text, "gfcache_connections{state=\"sending\"}")?;
        (reading == 5000.0 && sending == 1.0).then_some(())
    });

    let signalled = Instant::now();
    kill(run.pid(), Signal::SIGTERM).expect("SIGTERM");
    wait_for(
        "a new connection to be refused",
        DEADLINE,
        || match TcpStream::connect_timeout(&run.proxy, Duration::from_secs(2)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    // Still draining: the idle connections were closed, the transfer goes on.
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut nothing = [0u8; 16];
        match stream.read(&mut nothing) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection was not closed at shutdown: {other:?}"),
        }
    }
    drop(idle);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("read the rest");
    received.extend_from_slice(&rest);
    assert!(
        received[header.len()..] == body[..],
        "the transfer in flight finished during the drain ({} of {} bytes)",
        received.len() - header.len(),
        body.len()
    );
    let status = run.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", run.log_text());
    assert!(
        signalled.elapsed() < shutdown_timeout,
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
}
