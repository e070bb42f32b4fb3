//! Black-box tests of the `gfserver` binary over real TCP on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;

use gfprotocol::{Client, Status};

const GFSERVER: &str = env!("CARGO_BIN_EXE_gfserver");
const GFCLIENT: &str = env!("CARGO_BIN_EXE_gfclient");

const NOT_FOUND: &[u8] = b"GETFILE FILE_NOT_FOUND\r\n\r\n";
const INVALID: &[u8] = b"GETFILE INVALID\r\n\r\n";

/// A running gfserver, killed on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl ServerProcess {
    fn start(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(GFSERVER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
                panic!("gfserver did not start: {line:?}")
            })
            .parse()
            .expect("address");
        ServerProcess {
            child,
            addr,
            _stdout: stdout,
        }
    }

    fn root(root: &Path, extra: &[&str]) -> ServerProcess {
        let mut args = vec![
            "--root",
            root.to_str().expect("utf-8 temp path"),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        ServerProcess::start(&args)
    }

    fn server_arg(&self) -> String {
        self.addr.to_string()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` pseudo-random bytes (xorshift: cheap even in debug builds).
fn write_random_file(path: &Path, len: usize, seed: u64) {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).expect("write test file");
}

fn raw_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request).expect("send");
    if half_close {
        stream.shutdown(Shutdown::Write).expect("shutdown");
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    answer
}

fn fetch(addr: SocketAddr, path: &str) -> (Status, Vec<u8>) {
    let mut body = Vec::new();
    let outcome = Client::default()
        .fetch(&addr.to_string(), path, &mut body)
        .expect("fetch");
    (outcome.status, body)
}

/// Runs `gfclient load --json` and returns the summary object.
fn load(
    server: &ServerProcess,
    workload: &Path,
    connections: u32,
    requests: u32,
    verify: &Path,
) -> serde_json::Value {
    let output = Command::new(GFCLIENT)
        .args(["load", "--server", &server.server_arg(), "--workload"])
        .arg(workload)
        .args([
            "--connections",
            &connections.to_string(),
            "--requests",
            &requests.to_string(),
        ])
        .arg("--verify")
        .arg(verify)
        .arg("--json")
        .output()
        .expect("run gfclient load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}; {stdout}"))
}

/// Concurrent downloads of 0 B, 1 B, 1 MiB and 64 MiB files, verified byte for byte.
fn concurrent_downloads_are_byte_exact(send_mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("one"), b"x").unwrap();
    write_random_file(&dir.path().join("mib"), 1 << 20, 1);
    write_random_file(&dir.path().join("big"), 64 << 20, 2);
    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, "/empty\n/one\n/mib\n/big\n/mib\n/one\n").unwrap();
    let server = ServerProcess::root(dir.path(), &["--threads", "4", "--send-mode", send_mode]);

    let summary = load(&server, &workload, 6, 24, dir.path());
    assert_eq!(summary["requests"], 24, "{summary}");
    assert_eq!(summary["ok"], 24, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["verify_failed"], 0, "{summary}");
    for key in [
        "not_found",
        "error",
        "invalid",
        "seconds",
        "req_per_s",
        "mb_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
    ] {
        assert!(summary.get(key).is_some(), "missing {key} in {summary}");
    }
    // 4 x (0 + 1 + 1 MiB + 64 MiB + 1 MiB + 1) bytes.
    let expected_bytes = 4 * (2 + (2 << 20) + (64u64 << 20));
    assert_eq!(summary["bytes"], expected_bytes);

    assert_eq!(fetch(server.addr, "/empty"), (Status::Ok, Vec::new()));
    assert_eq!(fetch(server.addr, "/one"), (Status::Ok, b"x".to_vec()));
}

#[test]
fn concurrent_downloads_with_sendfile() {
    concurrent_downloads_are_byte_exact("sendfile");
}

#[test]
fn concurrent_downloads_with_read_write() {
    concurrent_downloads_are_byte_exact("read-write");
}

#[test]
fn verify_detects_a_different_file() {
    let served = tempfile::tempdir().unwrap();
    let reference = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("a"), b"served").unwrap();
    std::fs::write(reference.path().join("a"), b"SERVED").unwrap();
    let workload = served.path().join("workload.txt");
    std::fs::write(&workload, "/a\n").unwrap();
    let server = ServerProcess::root(served.path(), &[]);
    let summary = load(&server, &workload, 2, 4, reference.path());
    assert_eq!(summary["ok"], 4, "{summary}");
    assert_eq!(summary["verify_failed"], 4, "{summary}");
}

#[test]
fn silent_client_does_not_delay_others() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"hello").unwrap();
    // A long header deadline: the silent clients keep their workers for the whole test, so
    // the others can only be served by the remaining worker.
    let server = ServerProcess::root(dir.path(), &["--threads", "3", "--header-timeout", "600"]);
    let silent = TcpStream::connect(server.addr).unwrap();
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.write_all(b"GETFILE GET /a").unwrap();
    for _ in 0..5 {
        assert_eq!(fetch(server.addr, "/a"), (Status::Ok, b"hello".to_vec()));
    }
    drop(half);
    drop(silent);
}

#[test]
fn silent_client_gets_invalid_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::root(dir.path(), &["--header-timeout", "0.2"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.write_all(b"GETFILE GET /a").unwrap();
    let mut answer = Vec::new();
    silent.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, INVALID);
}

#[test]
fn partial_header_then_half_close_gets_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::root(dir.path(), &[]);
    for partial in [&b"GETFILE GET /a\r\n"[..], b"GETF", b"GETFILE GET /a\r\n\r"] {
        assert_eq!(raw_exchange(server.addr, partial, true), INVALID);
    }
    assert_eq!(
        raw_exchange(server.addr, b"GETFILE GET a\r\n\r\n", false),
        INVALID
    );
}

#[test]
fn early_close_and_reset_leave_it_serving() {
    let dir = tempfile::tempdir().unwrap();
    write_random_file(&dir.path().join("big"), 16 << 20, 3);
    std::fs::write(dir.path().join("a"), b"still here").unwrap();
    let mut server = ServerProcess::root(dir.path(), &["--threads", "4"]);
    let mut handles = Vec::new();
    for i in 0..16 {
        let addr = server.addr;
        handles.push(thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(b"GETFILE GET /big\r\n\r\n").unwrap();
            let mut some = [0u8; 4096];
            let _ = stream.read(&mut some);
            if i % 2 == 0 {
                // Close with an RST instead of a FIN.
                nix::sys::socket::setsockopt(
                    &stream,
                    nix::sys::socket::sockopt::Linger,
                    &nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                )
                .unwrap();
            }
            drop(stream);
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    // Closing before sending anything at all.
    for _ in 0..4 {
        drop(TcpStream::connect(server.addr).unwrap());
    }
    assert_eq!(
        fetch(server.addr, "/a"),
        (Status::Ok, b"still here".to_vec())
    );
    let (status, body) = fetch(server.addr, "/big");
    assert_eq!(status, Status::Ok);
    assert_eq!(body, std::fs::read(dir.path().join("big")).unwrap());
    assert!(server.is_running());
}

#[test]
fn escapes_get_file_not_found() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret"), b"secret").unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/ok"), b"fine").unwrap();
    symlink("../secret", root.join("relative-link")).unwrap();
    symlink(outer.path().join("secret"), root.join("absolute-link")).unwrap();
    symlink("..", root.join("sub/up")).unwrap();
    symlink("ok", root.join("sub/inner-link")).unwrap();
    let server = ServerProcess::root(&root, &[]);
    for path in [
        "/../secret",
        "/sub/../../secret",
        "/relative-link",
        "/absolute-link",
        "/sub/up/../secret",
        "/sub/up/up/secret",
        "//../secret",
        "/etc/passwd",
        "/proc/self/environ",
        "/",
        "/sub",
        "/missing",
    ] {
        let request = format!("GETFILE GET {path}\r\n\r\n");
        assert_eq!(
            raw_exchange(server.addr, request.as_bytes(), false),
            NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        fetch(server.addr, "/sub/inner-link"),
        (Status::Ok, b"fine".to_vec())
    );
    assert_eq!(
        fetch(server.addr, "/sub/up/sub/ok"),
        (Status::Ok, b"fine".to_vec())
    );
}

#[test]
fn listing_mode_serves_named_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"listed").unwrap();
    nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let listing = dir.path().join("content.txt");
    std::fs::write(
        &listing,
        format!(
            "/named.txt {}\n/gone {}\n/fifo {}\n",
            dir.path().join("file").display(),
            dir.path().join("nope").display(),
            dir.path().join("fifo").display()
        ),
    )
    .unwrap();
    let server = ServerProcess::start(&[
        "--content",
        listing.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        fetch(server.addr, "/named.txt"),
        (Status::Ok, b"listed".to_vec())
    );
    assert_eq!(fetch(server.addr, "/gone").0, Status::FileNotFound);
    assert_eq!(fetch(server.addr, "/file").0, Status::FileNotFound);
    // A FIFO with no writer: opening it must not hold up the front door (small files are
    // opened there), so it is refused at once, and the server goes on answering.
    assert_eq!(fetch(server.addr, "/fifo").0, Status::FileNotFound);
    assert_eq!(fetch(server.addr, "/named.txt").0, Status::Ok);
}

#[test]
fn restart_on_the_same_port_works_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"A").unwrap();
    let server = ServerProcess::root(dir.path(), &[]);
    let addr = server.addr;
    // Completed exchanges leave TIME_WAIT sockets on the server's port.
    for _ in 0..3 {
        assert_eq!(fetch(addr, "/a"), (Status::Ok, b"A".to_vec()));
    }
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let again = ServerProcess::start(&[
        "--root",
        dir.path().to_str().unwrap(),
        "--listen",
        &addr.to_string(),
    ]);
    assert_eq!(again.addr, addr);
    assert_eq!(fetch(addr, "/a"), (Status::Ok, b"A".to_vec()));
}

#[test]
fn sigterm_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::root(dir.path(), &[]);
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let status = Command::new(GFSERVER)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let status = Command::new(GFSERVER)
        .args(["--root", "/nonexistent/dir", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

impl ServerProcess {
    /// The HTTP listener's address, from the line after the GetFile one.
    fn http_addr(&mut self) -> SocketAddr {
        let mut line = String::new();
        self._stdout
            .read_line(&mut line)
            .expect("read the http line");
        line.trim()
            .strip_prefix("http listening on ")
            .unwrap_or_else(|| panic!("no http line: {line:?}"))
            .parse()
            .expect("http address")
    }
}

/// An HTTP exchange on its own connection, with the `Date` line taken out (it is the one
/// header two servers may answer differently).
fn http_exchange(addr: SocketAddr, path: &str, extra: &str) -> Vec<u8> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
    let answer = raw_exchange(addr, request.as_bytes(), false);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let (head, body) = answer.split_at(split);
    let head = String::from_utf8_lossy(head);
    let mut kept: Vec<u8> = head
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    kept.extend_from_slice(body);
    kept
}

/// Small files are read and answered by the front door's thread itself: byte-exact over
/// GetFile and HTTP (whole, a range, HEAD, a range past the end) and answered exactly as a
/// worker answers them (a server with `--inline-max-size 0` beside it); an edit is seen by the
/// very next request, because every answer reads the file afresh; files at and just over the
/// limit are served alike.
#[test]
fn small_files_answered_by_the_front_door_are_exact_and_never_stale() {
    let dir = tempfile::tempdir().unwrap();
    let limit = gfprotocol::DEFAULT_INLINE_MAX_SIZE as usize;
    let files = [
        ("empty", 0),
        ("one_k", 1024),
        ("at", limit),
        ("over", limit + 1),
    ];
    for (seed, (name, len)) in files.iter().enumerate() {
        write_random_file(&dir.path().join(name), *len, seed as u64 + 1);
    }
    let mut inline = ServerProcess::root(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let mut workers = ServerProcess::root(
        dir.path(),
        &["--http-listen", "127.0.0.1:0", "--inline-max-size", "0"],
    );
    let (inline_http, workers_http) = (inline.http_addr(), workers.http_addr());

    for (name, _) in files {
        let path = format!("/{name}");
        let expected = std::fs::read(dir.path().join(name)).unwrap();
        for server in [&inline, &workers] {
            assert_eq!(
                fetch(server.addr, &path),
                (Status::Ok, expected.clone()),
                "{path}"
            );
        }
        for extra in [
            "",
            "Range: bytes=10-19\r\n",
            "Range: bytes=-5\r\n",
            "Range: bytes=999999-\r\n",
        ] {
            assert_eq!(
                http_exchange(inline_http, &path, extra),
                http_exchange(workers_http, &path, extra),
                "{path} {extra:?}"
            );
        }
        let head = |addr| {
            let request = format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let answer = raw_exchange(addr, request.as_bytes(), false);
            String::from_utf8_lossy(&answer)
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(head(inline_http), head(workers_http), "HEAD {path}");
    }
    let whole = http_exchange(inline_http, "/one_k", "");
    assert!(
        whole.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&whole)
    );

    // An edit, a shrink and a removal, each seen by the next request.
    for (round, len) in [(1u64, 700usize), (2, 1024), (3, 0)] {
        write_random_file(&dir.path().join("one_k"), len, 100 + round);
        let expected = std::fs::read(dir.path().join("one_k")).unwrap();
        assert_eq!(
            fetch(inline.addr, "/one_k"),
            (Status::Ok, expected),
            "edit {round}"
        );
    }
    std::fs::remove_file(dir.path().join("one_k")).unwrap();
    assert_eq!(fetch(inline.addr, "/one_k").0, Status::FileNotFound);
    assert!(inline.is_running() && workers.is_running());
}

#[test]
fn an_inline_size_limit_above_1_mib_is_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(GFSERVER)
        .args([
            "--root",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--inline-max-size", "1048577"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--inline-max-size") && stderr.contains("at most 1048576"),
        "{stderr}"
    );
}

/// One HTTP exchange on its own connection, read to the close, within `HANG` (a hang detector,
/// not a timing): the head and the body.
fn http_get_within(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG)).expect("read timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("{path}: no whole answer in {HANG:?}: {e}"));
    answer
}

const HANG: std::time::Duration = std::time::Duration::from_secs(20);

/// Clients that pipeline hundreds of requests for small files (answered by the front door
/// itself) and never read fill their sockets: each costs its own buffer and the worker that
/// finishes its parked answer, never the front door's thread or the other clients' service;
/// and each is cut once a write makes no progress for `--send-timeout`.
#[test]
fn pipelining_clients_that_never_read_cost_the_others_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limit = gfprotocol::DEFAULT_INLINE_MAX_SIZE as usize;
    write_random_file(&dir.path().join("small"), limit, 7);
    write_random_file(&dir.path().join("large"), 1 << 20, 8);
    let mut server = ServerProcess::root(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--send-timeout",
            "3",
        ],
    );
    let http = server.http_addr();
    let pipeline = "GET /small HTTP/1.1\r\nHost: t\r\n\r\n".repeat(400);
    let hogs: Vec<TcpStream> = (0..4)
        .map(|_| {
            let hog = TcpStream::connect(http).expect("connect a hog");
            // Its answers (400 x 16 KiB) overflow both socket buffers long before the end.
            let mut writer = hog.try_clone().expect("clone");
            let requests = pipeline.clone();
            thread::spawn(move || {
                let _ = writer.write_all(requests.as_bytes());
            });
            hog
        })
        .collect();

    // Taken now: a socket the server has reset no longer knows its peer.
    let ends: Vec<SocketAddr> = hogs
        .iter()
        .map(|hog| hog.local_addr().expect("local address"))
        .collect();
    let small = std::fs::read(dir.path().join("small")).unwrap();
    let large = std::fs::read(dir.path().join("large")).unwrap();
    for round in 0..20 {
        for (path, body) in [("/small", &small), ("/large", &large)] {
            let answer = http_get_within(http, path);
            assert!(answer.starts_with(b"HTTP/1.1 200 "), "round {round} {path}");
            assert!(answer.ends_with(body), "round {round} {path}: not the file");
        }
        let (status, got) = fetch(server.addr, "/small");
        assert_eq!(
            (status, got.len()),
            (Status::Ok, small.len()),
            "round {round}"
        );
    }

    // Each hog is cut by the server (its socket here sees the FIN or the reset) while it still
    // has not read a byte.
    let deadline = std::time::Instant::now() + HANG;
    while !ends.iter().all(|&end| closed_by_peer(end, http)) {
        assert!(
            std::time::Instant::now() < deadline,
            "a client that never reads was not cut after --send-timeout: {}",
            hog_lines(&ends)
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(fetch(server.addr, "/small").1, small);
    assert!(server.is_running());
}

/// SIGTERM while a client's pipelined burst is being answered: the client gets whole answers,
/// each byte-exact, then the close; never a cut answer or a reset; the server exits cleanly.
#[test]
fn sigterm_mid_pipelined_burst_ends_after_a_whole_answer() {
    let dir = tempfile::tempdir().unwrap();
    let limit = gfprotocol::DEFAULT_INLINE_MAX_SIZE as usize;
    write_random_file(&dir.path().join("small"), limit, 3);
    write_random_file(&dir.path().join("large"), 1 << 20, 4);
    let small = std::fs::read(dir.path().join("small")).unwrap();
    let large = std::fs::read(dir.path().join("large")).unwrap();
    let mut server = ServerProcess::root(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let http = server.http_addr();
    let mut stream = TcpStream::connect(http).expect("connect");
    stream.set_read_timeout(Some(HANG)).expect("read timeout");
    // Small ones answered by the front door or a worker's next_on_worker, large ones by a worker.
    let burst: String = ["/small", "/large"]
        .repeat(40)
        .iter()
        .map(|path| format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    stream.write_all(burst.as_bytes()).expect("send the burst");
    // The first answers are on their way before the signal.
    let mut bytes = vec![0u8; 64 << 10];
    stream.read_exact(&mut bytes).expect("the first bytes");
    let stopping = thread::spawn(move || server.terminate());
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("the answers were cut: {e}"));
    bytes.extend_from_slice(&rest);
    let status = stopping.join().expect("terminate");
    assert!(status.success(), "{status}");

    let mut at = bytes.as_slice();
    let mut answered = 0;
    while !at.is_empty() {
        let head_end = at
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("a cut head after {answered} answers"))
            + 4;
        let head = String::from_utf8_lossy(&at[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.trim().parse().ok())
            .expect("a content-length");
        let body = at
            .get(head_end..head_end + len)
            .unwrap_or_else(|| panic!("answer {answered} cut: {} bytes", at.len() - head_end));
        let expected = if answered % 2 == 0 { &small } else { &large };
        assert!(
            body == expected.as_slice(),
            "answer {answered} is not its file"
        );
        at = &at[head_end + len..];
        answered += 1;
    }
    assert!(answered >= 1, "no answer at all");
}

/// A client that asks for a large file and never reads is cut after `--send-timeout` with a
/// reset: nothing of the answer stays queued in the server's kernel (a plain close would queue
/// the FIN behind megabytes the client never takes, and both sockets would stay for minutes).
#[test]
fn a_client_that_never_reads_is_reset_and_nothing_stays_queued_for_it() {
    let dir = tempfile::tempdir().unwrap();
    write_random_file(&dir.path().join("large"), 16 << 20, 9);
    let server = ServerProcess::root(dir.path(), &["--send-timeout", "1"]);
    let mut hog = TcpStream::connect(server.addr).expect("connect");
    hog.write_all(b"GETFILE GET /large\r\n\r\n")
        .expect("send the request");
    let end = hog.local_addr().expect("local address");

    let deadline = std::time::Instant::now() + HANG;
    while !(closed_by_peer(end, server.addr) && closed_by_peer(server.addr, end)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection of a client that never reads was not reset: {}",
            hog_lines(&[end])
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
    // What reached the client before the cut is still the start of the answer.
    let mut start = [0u8; 19];
    if hog.read_exact(&mut start).is_ok() {
        assert_eq!(&start, b"GETFILE OK 16777216");
    }
}

/// Whether the other end closed the connection from `local` to `remote` (a FIN received: CLOSE_WAIT; a reset: the socket is
/// no longer in the kernel's table), from /proc/net/tcp, where the connection is the line with
/// both its addresses (a TIME_WAIT line of an earlier connection may share the local port).
fn closed_by_peer(local: SocketAddr, remote: SocketAddr) -> bool {
    let hex = |addr: SocketAddr| format!("0100007F:{:04X}", addr.port());
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let state = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (&l, &r, &state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (l == local && r == remote).then(|| state.to_string())
    });
    // 08: CLOSE_WAIT.
    state.is_none_or(|state| state == "08")
}

/// The /proc/net/tcp lines of the connections from `ends`, for a failure message.
fn hog_lines(ends: &[SocketAddr]) -> String {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .filter(|l| {
            ends.iter()
                .any(|e| l.contains(&format!("0100007F:{:04X}", e.port())))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client that reads slowly but steadily is served the whole file, however long the
/// transfer takes: the send timeout bounds a write that makes *no progress*, not the
/// transfer. 16 MiB through a 64 KiB receive buffer, with a pause of 100 ms after each 512 KiB,
/// takes several times the `--send-timeout` of 1 s, while no single write waits long.
#[test]
fn a_slow_but_steady_reader_is_served_whole_past_the_send_timeout() {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
    const LEN: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    write_random_file(&dir.path().join("large"), LEN, 11);
    let expected = std::fs::read(dir.path().join("large")).expect("read the file back");
    let server = ServerProcess::root(dir.path(), &["--send-timeout", "1"]);
    let mut reader = TcpStream::connect(server.addr).expect("connect");
    // A small window, so the server's writes wait on this reader rather than on the kernel.
    setsockopt(&reader, RcvBuf, &(64 << 10)).expect("SO_RCVBUF");
    reader.set_read_timeout(Some(HANG)).expect("read timeout");
    reader
        .write_all(b"GETFILE GET /large\r\n\r\n")
        .expect("send the request");

    let started = std::time::Instant::now();
    // About 5 MB/s.
    let answer = common::read_at_pace(
        &mut reader,
        512 << 10,
        std::time::Duration::from_millis(100),
    );
    let took = started.elapsed();
    let head = format!("GETFILE OK {LEN}\r\n\r\n");
    assert!(
        answer.starts_with(head.as_bytes()),
        "{} bytes, not an OK answer",
        answer.len()
    );
    assert!(
        answer[head.len()..] == expected[..],
        "{} body bytes of {LEN}, or different ones",
        answer.len() - head.len()
    );
    // The case this test is about: the transfer outlasted the send timeout (else it proved
    // nothing).
    assert!(
        took > std::time::Duration::from_secs(2),
        "the transfer took only {took:?}; the reader was not slow enough to test the timeout"
    );
}

/// Bytes after a GetFile request (the protocol has one request per connection; a C client may
/// send its string's terminating NUL) do not cut the answer: closing with them unread would
/// reset the connection and destroy what of the answer the kernel still queues. Files sent by
/// a worker (16 MiB, more than the socket buffers hold; both send modes) and files the front
/// door answers from memory (4 KiB, and 1 MiB, whose rest a worker sends).
#[test]
fn bytes_after_a_request_do_not_cut_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("/large", 16 << 20),
        ("/held", 1 << 20),
        ("/small", 4 << 10),
    ];
    for (seed, (name, len)) in files.iter().enumerate() {
        write_random_file(&dir.path().join(&name[1..]), *len, 13 + seed as u64);
    }
    for mode in ["sendfile", "read-write"] {
        let args = ["--send-mode", mode, "--inline-max-size", "1048576"];
        let server = ServerProcess::root(dir.path(), &args);
        for (name, len) in files {
            let expected = std::fs::read(dir.path().join(&name[1..])).expect("read back");
            for trailer in [
                vec![0u8],
                vec![b'x'; 64 << 10],
                b"GETFILE GET /small\r\n\r\n".to_vec(),
            ] {
                let what = format!("{mode}, {name}, {} trailing bytes", trailer.len());
                let mut stream = TcpStream::connect(server.addr).expect("connect");
                stream.set_read_timeout(Some(HANG)).expect("read timeout");
                let mut request = format!("GETFILE GET {name}\r\n\r\n").into_bytes();
                request.extend_from_slice(&trailer);
                stream.write_all(&request).expect("send");
                let mut answer = Vec::with_capacity(len + 64);
                if let Err(e) = stream.read_to_end(&mut answer) {
                    panic!("{what}: {e} after {} bytes", answer.len());
                }
                let head = format!("GETFILE OK {len}\r\n\r\n");
                assert!(
                    answer.starts_with(head.as_bytes()),
                    "{what}: not an OK answer"
                );
                assert!(
                    answer[head.len()..] == expected[..],
                    "{what}: {} body bytes of {len}, or different ones",
                    answer.len() - head.len()
                );
            }
        }
    }
}
