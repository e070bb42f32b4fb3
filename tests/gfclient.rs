//! Black-box tests of the `gfclient` binary against fake servers that send scripted (often
//! malformed) responses over real TCP on 127.0.0.1:0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::thread;

const GFCLIENT: &str = env!("CARGO_BIN_EXE_gfclient");

/// How the fake server writes its response.
#[derive(Clone, Copy)]
enum Pace {
    /// One write.
    AtOnce,
    /// One byte per write (with TCP_NODELAY).
    ByteByByte,
}

/// A one-connection server: reads the request header, sends `response`, closes.
/// Returns the address and a handle yielding the request it received.
fn fake_server(response: Vec<u8>, pace: Pace) -> (String, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let request = read_request(&mut stream);
        stream.set_nodelay(true).expect("nodelay");
        match pace {
            Pace::AtOnce => {
                let _ = stream.write_all(&response);
            }
            Pace::ByteByByte => {
                for byte in &response {
                    if stream.write_all(std::slice::from_ref(byte)).is_err() {
                        break;
                    }
                }
            }
        }
        request
    });
    (addr, handle)
}

fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => break,
        }
    }
    request
}

fn get(addr: &str, path: &str, out: &Path) -> Output {
    Command::new(GFCLIENT)
        .args(["get", "--server", addr, "--timeout", "30", path, "-o"])
        .arg(out)
        .output()
        .expect("run gfclient")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

/// Runs `gfclient get` against a fake server; returns (exit code, stderr, body file content).
fn exchange(response: &[u8], pace: Pace) -> (i32, String, Option<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("body");
    let (addr, server) = fake_server(response.to_vec(), pace);
    let output = get(&addr, "/some/file.txt", &out);
    let request = server.join().expect("fake server");
    assert_eq!(request, b"GETFILE GET /some/file.txt\r\n\r\n");
    let code = output.status.code().expect("exit code");
    (code, stderr(&output), std::fs::read(&out).ok())
}

#[test]
fn ok_at_once_and_byte_by_byte() {
    for pace in [Pace::AtOnce, Pace::ByteByByte] {
        let (code, status, body) = exchange(b"GETFILE OK 5\r\n\r\nhello", pace);
        assert_eq!((code, status.as_str()), (0, "OK 5 bytes"));
        assert_eq!(body.as_deref(), Some(&b"hello"[..]));
    }
}

#[test]
fn body_may_contain_the_terminator() {
    let (code, status, body) = exchange(b"GETFILE OK 8\r\n\r\n\r\n\r\nab\r\n", Pace::ByteByByte);
    assert_eq!((code, status.as_str()), (0, "OK 8 bytes"));
    assert_eq!(body.as_deref(), Some(&b"\r\n\r\nab\r\n"[..]));
}

#[test]
fn empty_body() {
    let (code, status, body) = exchange(b"GETFILE OK 0\r\n\r\n", Pace::AtOnce);
    assert_eq!((code, status.as_str()), (0, "OK 0 bytes"));
    assert_eq!(body.as_deref(), Some(&b""[..]));
}

#[test]
fn statuses_map_to_exit_codes() {
    for (response, code, line) in [
        (&b"GETFILE FILE_NOT_FOUND\r\n\r\n"[..], 3, "FILE_NOT_FOUND"),
        (b"GETFILE ERROR\r\n\r\n", 4, "ERROR"),
        (b"GETFILE INVALID\r\n\r\n", 5, "INVALID"),
        // A public C server adds a length of 0: read as the status (GETFILE.md).
        (b"GETFILE FILE_NOT_FOUND 0\r\n\r\n", 3, "FILE_NOT_FOUND"),
    ] {
        for pace in [Pace::AtOnce, Pace::ByteByByte] {
            let (got, status, body) = exchange(response, pace);
            assert_eq!((got, status.as_str()), (code, line));
            assert_eq!(body, None, "no output file is left for {line}");
        }
    }
}

#[test]
fn malformed_responses_are_invalid() {
    let cases: &[(&[u8], &str)] = &[
        (b"HTTP/1.0 200 OK\r\n\r\nhello", "wrong scheme"),
        (b"getfile OK 5\r\n\r\nhello", "wrong scheme"),
        (b"GETFILE ok 5\r\n\r\nhello", "unknown status"),
        (b"GETFILE FOUND\r\n\r\n", "unknown status"),
        (b"GETFILE OK\r\n\r\n", "OK without a length"),
        (b"GETFILE OK abc\r\n\r\n", "non-numeric length"),
        (b"GETFILE OK 5x\r\n\r\nhello", "non-numeric length"),
        (b"GETFILE OK 18446744073709551616\r\n\r\n", "overflows"),
        (
            b"GETFILE OK 00000000000000000000000000000005\r\n\r\nhello",
            "overflows",
        ),
        (
            b"GETFILE FILE_NOT_FOUND 5\r\n\r\n",
            "length on a non-OK status",
        ),
        (b"GETFILE ERROR 00\r\n\r\n", "length on a non-OK status"),
        (b"GETFILE  OK 5\r\n\r\nhello", "separator"),
        (b"GETFILE OK 5\n\nhello", "terminator"),
        (b"GETFILE OK 5\r\n\nhello", "terminator"),
        (b"GETFILE OK 5\r\nX-Junk\r\n\r\nhello", "terminator"),
        (b"GETFILE FILE_NOT_FOUND\r\n\r\nextra", "more bytes"),
        (b"GETFILE ERROR\r\n\r\n\r\n", "more bytes"),
        (b"GETFILE OK 5\r\n\r", "incomplete"),
        (b"GETFILE FILE_NOT_FOU", "incomplete"),
        (b"", "incomplete"),
    ];
    for &(response, reason) in cases {
        for pace in [Pace::AtOnce, Pace::ByteByByte] {
            let (code, status, body) = exchange(response, pace);
            let shown = String::from_utf8_lossy(response);
            assert_eq!(code, 5, "{shown:?}: {status}");
            assert!(status.starts_with("INVALID: "), "{shown:?}: {status}");
            assert!(
                status.contains(reason),
                "{shown:?}: {status} lacks {reason:?}"
            );
            assert_eq!(body, None, "{shown:?}");
        }
    }
}

#[test]
fn short_body_is_a_failure_with_counts() {
    for pace in [Pace::AtOnce, Pace::ByteByByte] {
        let (code, status, body) = exchange(b"GETFILE OK 10\r\n\r\nabc", pace);
        assert_eq!(code, 5, "{status}");
        assert!(status.contains("received 3 of 10"), "{status}");
        assert_eq!(body, None);
    }
}

#[test]
fn stdout_output() {
    let (addr, server) = fake_server(b"GETFILE OK 3\r\n\r\nxyz".to_vec(), Pace::AtOnce);
    let output = Command::new(GFCLIENT)
        .args(["get", "--server", &addr, "/x"])
        .output()
        .unwrap();
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(output.stdout, b"xyz");
    assert_eq!(stderr(&output), "OK 3 bytes");
}

#[test]
fn no_connection_and_usage_errors_exit_2() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let output = get(&addr, "/x", &dir.path().join("out"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).starts_with("NO CONNECTION"));

    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, "/x\n").unwrap();
    let workload = workload.to_str().unwrap();
    for args in [
        &["get"][..],
        &["get", "relative/path"],
        &["get", "/a b"],
        &["frobnicate"],
        &[
            "load",
            "--workload",
            "/nonexistent",
            "--threads",
            "1",
            "--requests",
            "1",
        ],
        &["load", "--workload", "/nonexistent", "--threads", "1"],
        &["load", "-w", workload, "--connections", "0", "-r", "1"],
        &["load", "-w", workload, "--threads", "0", "-r", "1"],
        &["load", "-w", workload, "--server", "127.0.0.1", "-r", "1"],
    ] {
        let output = Command::new(GFCLIENT).args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn load_counts_statuses_and_failures() {
    // A fake server answering every connection by path: /ok, /missing, /short.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        for _ in 0..9 {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&mut stream);
            let response: &[u8] = match request.as_slice() {
                b"GETFILE GET /ok\r\n\r\n" => b"GETFILE OK 2\r\n\r\nhi",
                b"GETFILE GET /missing\r\n\r\n" => b"GETFILE FILE_NOT_FOUND\r\n\r\n",
                _ => b"GETFILE OK 9\r\n\r\nhi",
            };
            let _ = stream.write_all(response);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, "/ok\n/missing\n\n/short\n").unwrap();
    let output = Command::new(GFCLIENT)
        .args([
            "load",
            "--server",
            &addr,
            "--connections",
            "3",
            "--requests",
            "9",
            "--json",
            "--workload",
        ])
        .arg(&workload)
        .output()
        .unwrap();
    server.join().unwrap();
    // Failures make the exit code 1; the summary is still printed.
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["requests"], 9);
    assert_eq!(summary["ok"], 3);
    assert_eq!(summary["not_found"], 3);
    assert_eq!(summary["failed"], 3);
    assert_eq!(summary["failures"]["short_body"], 3);
    assert_eq!(summary["bytes"], 12);
}

#[test]
fn a_failed_download_keeps_the_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("body");
    std::fs::write(&out, b"previous").unwrap();
    for response in [
        &b"GETFILE FILE_NOT_FOUND\r\n\r\n"[..],
        b"GETFILE OK 10\r\n\r\nabc",
    ] {
        let (addr, server) = fake_server(response.to_vec(), Pace::AtOnce);
        let output = get(&addr, "/x", &out);
        server.join().unwrap();
        assert_ne!(output.status.code(), Some(0));
        assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    }
    let (addr, server) = fake_server(b"GETFILE OK 3\r\n\r\nnew".to_vec(), Pace::AtOnce);
    assert_eq!(get(&addr, "/x", &out).status.code(), Some(0));
    server.join().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"new");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no partial files are left");
}

#[test]
fn output_to_a_stream_writes_into_it_and_never_replaces_it() {
    // `-o -` is stdout.
    let (addr, server) = fake_server(b"GETFILE OK 3\r\n\r\nxyz".to_vec(), Pace::AtOnce);
    let output = get(&addr, "/x", Path::new("-"));
    server.join().unwrap();
    assert_eq!(
        (output.status.code(), output.stdout.as_slice()),
        (Some(0), &b"xyz"[..])
    );

    // A FIFO is written into, and stays a FIFO (as /dev/null must stay a device).
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let (addr, server) = fake_server(b"GETFILE OK 5\r\n\r\nhello".to_vec(), Pace::AtOnce);
    let output = get(&addr, "/x", &fifo);
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(reader.join().unwrap(), b"hello");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file is left beside the FIFO"
    );

    // A directory is refused without touching it.
    let (addr, _server) = fake_server(b"GETFILE OK 1\r\n\r\nz".to_vec(), Pace::AtOnce);
    let output = get(&addr, "/x", dir.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("it is a directory"),
        "{}",
        stderr(&output)
    );
}

// ---------------------------------------------------------------------------------------------
// `gfclient load`, event-driven: many connections over few threads, against real gfserver
// processes and scripted servers.

const GFSERVER: &str = env!("CARGO_BIN_EXE_gfserver");
/// A load run that takes longer than this is taken for a hang.
const LOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A running gfserver on 127.0.0.1:0, killed on drop.
struct GfServer {
    child: std::process::Child,
    addr: String,
}

impl GfServer {
    fn serve(root: &Path) -> GfServer {
        use std::io::BufRead;
        let mut child = Command::new(GFSERVER)
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--threads", "4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn gfserver");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address line");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!("gfserver did not start: {line:?}");
        };
        GfServer {
            addr: addr.to_owned(),
            child,
        }
    }
}

impl Drop for GfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gfclient load --json ARGS...` against `addr` with `workload`; returns the exit code
/// and the summary. Fails the test if the run does not end within [`LOAD_DEADLINE`].
fn load(addr: &str, workload: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let child = Command::new(GFCLIENT)
        .args(["load", "--json", "--server", addr, "--workload"])
        .arg(workload)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gfclient load");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (done, finished) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(LOAD_DEADLINE) {
        Ok(output) => output.expect("wait for gfclient"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("gfclient load {args:?} against {addr} did not finish in {LOAD_DEADLINE:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}; {stdout} {}", stderr(&output)));
    (output.status.code().expect("exit code"), summary)
}

/// `len` bytes of a xorshift sequence (cheap in debug builds).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    data
}

#[test]
fn load_runs_many_connections_over_few_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = String::new();
    let mut cycle_bytes = 0u64;
    for i in 0..20u64 {
        let len = if i == 0 { 300_000 } else { 1024 + i as usize };
        std::fs::write(dir.path().join(format!("f{i}")), pseudo_random(len, i)).unwrap();
        paths.push_str(&format!("/f{i}\n"));
        cycle_bytes += len as u64;
    }
    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, paths).unwrap();
    let server = GfServer::serve(dir.path());
    let verify = dir.path().to_str().unwrap();
    let (code, summary) = load(
        &server.addr,
        &workload,
        &["-c", "64", "-t", "2", "-r", "2000", "--verify", verify],
    );
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["requests"], 2000, "{summary}");
    assert_eq!(summary["ok"], 2000, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["verify_failed"], 0, "{summary}");
    assert_eq!(summary["connections"], 64, "{summary}");
    assert_eq!(summary["threads"], 2, "{summary}");
    // Every path is asked for in turn: 100 full cycles of the 20 files.
    assert_eq!(summary["bytes"], 100 * cycle_bytes, "{summary}");
    assert!(summary["p50_us"].as_u64().unwrap() > 0, "{summary}");
}

#[test]
fn load_verify_catches_one_wrong_byte_and_a_missing_file() {
    let served = tempfile::tempdir().unwrap();
    let reference = tempfile::tempdir().unwrap();
    let big = pseudo_random(1 << 20, 7);
    let mut changed = big.clone();
    // Far past the first read of the body.
    changed[700_001] ^= 0x01;
    std::fs::write(served.path().join("big"), &big).unwrap();
    std::fs::write(reference.path().join("big"), &changed).unwrap();
    for dir in [&served, &reference] {
        std::fs::write(dir.path().join("same"), b"same bytes").unwrap();
    }
    // The server says FILE_NOT_FOUND for a file the reference has: also a verify failure.
    std::fs::write(reference.path().join("absent"), b"here").unwrap();
    let workload = served.path().join("workload.txt");
    std::fs::write(&workload, "/big\n/same\n/absent\n").unwrap();
    let server = GfServer::serve(served.path());
    let verify = reference.path().to_str().unwrap();
    let (code, summary) = load(
        &server.addr,
        &workload,
        &["-c", "8", "-t", "2", "-r", "30", "--verify", verify],
    );
    assert_eq!(code, 1, "{summary}");
    assert_eq!(summary["ok"], 20, "{summary}");
    assert_eq!(summary["not_found"], 10, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["verify_failed"], 20, "{summary}");

    // Against its own directory the same run verifies but for the missing file.
    let (_, summary) = load(
        &server.addr,
        &workload,
        &[
            "-c",
            "8",
            "-r",
            "30",
            "--verify",
            served.path().to_str().unwrap(),
        ],
    );
    assert_eq!(summary["verify_failed"], 0, "{summary}");
}

/// A server that answers each of `connections` connections with an OK header announcing
/// `announced` bytes, sends `sent` of them and closes.
fn cut_short_server(
    connections: usize,
    announced: usize,
    sent: usize,
) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let body = pseudo_random(sent, 3);
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&mut stream);
            let _ = stream.write_all(format!("GETFILE OK {announced}\r\n\r\n").as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (addr, handle)
}

#[test]
fn load_counts_a_server_closing_mid_body() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, "/big\n").unwrap();
    let (addr, server) = cut_short_server(12, 1 << 20, 100_000);
    let (code, summary) = load(&addr, &workload, &["-c", "4", "-t", "2", "-r", "12"]);
    server.join().unwrap();
    assert_eq!(code, 1, "{summary}");
    assert_eq!(summary["requests"], 12, "{summary}");
    assert_eq!(summary["ok"], 0, "{summary}");
    assert_eq!(summary["failed"], 12, "{summary}");
    assert_eq!(summary["failures"]["short_body"], 12, "{summary}");
    assert_eq!(summary["bytes"], 12 * 100_000, "{summary}");
    assert_eq!(
        summary["failure_reasons"]["short_body: end of stream"], 12,
        "{summary}"
    );
}

#[test]
fn load_against_a_refused_port_fails_without_hanging() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, "/a\n").unwrap();
    let (code, summary) = load(&addr, &workload, &["-c", "16", "-t", "2", "-r", "200"]);
    assert_eq!(code, 1, "{summary}");
    assert_eq!(summary["requests"], 200, "{summary}");
    assert_eq!(summary["failed"], 200, "{summary}");
    assert_eq!(summary["failures"]["connect"], 200, "{summary}");
    let reasons = summary["failure_reasons"].as_object().unwrap();
    assert!(reasons.keys().all(|r| r.contains("refused")), "{summary}");
}

#[test]
fn load_times_out_a_silent_server() {
    // Connections complete in the kernel's backlog, and nothing ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload.txt");
    std::fs::write(&workload, "/a\n").unwrap();
    let (code, summary) = load(
        &addr,
        &workload,
        &["-c", "4", "-t", "2", "-r", "4", "--timeout", "0.3"],
    );
    drop(listener);
    assert_eq!(code, 1, "{summary}");
    assert_eq!(summary["failed"], 4, "{summary}");
    assert_eq!(summary["failures"]["timeout"], 4, "{summary}");
}
