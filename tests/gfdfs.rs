//! gfdfs black-box tests: real `gfdfs` processes (server, mounts, commands) on 127.0.0.1 port
//! 0, each test in its own temp directory, polls with deadlines instead of sleeps, plus an
//! independent Python grpcio client with stubs generated from the repository's .proto.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const GFDFS: &str = env!("CARGO_BIN_EXE_gfdfs");
const DEADLINE: Duration = Duration::from_secs(60);

fn wait_for<T>(what: &str, limit: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `gfdfs server` child, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    root: PathBuf,
}

impl Server {
    fn start(root: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(GFDFS)
            .args(["server", "--root"])
            .arg(root)
            .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gfdfs server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut field = |prefix: &str| -> SocketAddr {
            let line = lines
                .next()
                .expect("a line from the server")
                .expect("utf-8");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line:?} lacks {prefix:?}"))
                .parse()
                .expect("an address")
        };
        let addr = field("listening on ");
        let metrics = field("metrics on ");
        Server {
            child,
            addr,
            metrics,
            root: root.to_path_buf(),
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.scrape();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    }

    fn scrape(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics).expect("connect to metrics");
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read metrics");
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `gfdfs mount` child logging to a file, stopped with SIGTERM on drop.
struct Mount {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Mount {
    fn start(dir: &Path, server: &str) -> Mount {
        let log = dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("mount log");
        let child = Command::new(GFDFS)
            .arg("mount")
            .arg(dir)
            .args(["--server", server])
            .env(
                "RUST_LOG",
                std::env::var("GFDFS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(log_file)
            .spawn()
            .expect("spawn gfdfs mount");
        Mount {
            child,
            dir: dir.to_path_buf(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

fn gfdfs(args: &[&str]) -> Output {
    Command::new(GFDFS).args(args).output().expect("run gfdfs")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code")
}

/// Every file beneath `dir` (skipping gfdfs' own `.gfdfs*` names) with size and mtime.
fn tree(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".gfdfs") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() {
                pending.push(path);
            } else if let Ok(modified) = meta.modified() {
                let name = path
                    .strip_prefix(dir)
                    .expect("beneath")
                    .to_string_lossy()
                    .into_owned();
                files.insert(name, (meta.len(), modified));
            }
        }
    }
    files
}

fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(dir)
        .into_keys()
        .map(|name| {
            let data = std::fs::read(dir.join(&name)).unwrap_or_default();
            (name, data)
        })
        .collect()
}

/// Waits until every directory holds exactly `expected` (same names, sizes and mtimes, then
/// the same bytes).
fn wait_converged(dirs: &[&Path], expected: &BTreeMap<String, Vec<u8>>, what: &str) {
    let sizes: BTreeMap<&String, u64> = expected.iter().map(|(k, v)| (k, v.len() as u64)).collect();
    wait_for(what, DEADLINE, || {
        let trees: Vec<_> = dirs.iter().map(|dir| tree(dir)).collect();
        let same_meta = trees.windows(2).all(|pair| pair[0] == pair[1]);
        let right_sizes = trees[0]
            .iter()
            .map(|(k, (size, _))| (k, *size))
            .collect::<BTreeMap<_, _>>()
            == sizes;
        (same_meta && right_sizes).then_some(())
    });
    for dir in dirs {
        assert!(
            &contents(dir) == expected,
            "{what}: {} differs",
            dir.display()
        );
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|_| rng.u64(..).to_le_bytes())
        .collect();
    data.truncate(len);
    data
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).expect("write");
}

struct Setup {
    _temp: tempfile::TempDir,
    base: PathBuf,
    server: Server,
}

/// A temp directory for one test; kept (and named on stderr) when GFDFS_TEST_KEEP is set, to
/// read the mounts' logs after a failure.
fn test_dir() -> tempfile::TempDir {
    let mut temp = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("GFDFS_TEST_KEEP").is_some() {
        eprintln!("test directory kept: {}", temp.path().display());
        temp.disable_cleanup(true);
    }
    temp
}

fn setup(extra: &[&str]) -> Setup {
    let temp = test_dir();
    let base = temp.path().to_path_buf();
    let server = Server::start(&base.join("root"), "127.0.0.1:0", extra);
    Setup {
        _temp: temp,
        base,
        server,
    }
}

#[test]
fn three_mounts_converge_after_creates_edits_deletes_and_renames() {
    let s = setup(&[]);
    let mounts: Vec<Mount> = (1..=3)
        .map(|i| Mount::start(&s.base.join(format!("m{i}")), &s.server.addr()))
        .collect();
    let dirs: Vec<&Path> = std::iter::once(s.server.root.as_path())
        .chain(mounts.iter().map(|m| m.dir.as_path()))
        .collect();
    let (m1, m2, m3) = (&mounts[0].dir, &mounts[1].dir, &mounts[2].dir);
    let mut expected = BTreeMap::new();
    let put = |dir: &Path, name: &str, data: Vec<u8>, expected: &mut BTreeMap<String, Vec<u8>>| {
        write(dir, name, &data);
        expected.insert(name.to_string(), data);
    };

    put(m1, "empty.txt", Vec::new(), &mut expected);
    put(
        m1,
        "crlf.txt",
        b"line one\r\nline two\r\n".to_vec(),
        &mut expected,
    );
    put(m2, "binary.dat", random_bytes(70_000, 1), &mut expected);
    put(
        m2,
        "sub/other.txt",
        b"in a subdirectory\n".to_vec(),
        &mut expected,
    );
    put(m3, "big.bin", random_bytes(64 << 20, 2), &mut expected);
    put(
        m3,
        "sub/deeper/nested.txt",
        b"nested\n".to_vec(),
        &mut expected,
    );
    put(
        m3,
        "dir3/a/file.txt",
        b"a directory to rename\n".to_vec(),
        &mut expected,
    );
    wait_converged(&dirs, &expected, "creates");

    put(m1, "binary.dat", random_bytes(90_000, 3), &mut expected);
    put(
        m2,
        "crlf.txt",
        b"edited\r\nin m2\r\n".to_vec(),
        &mut expected,
    );
    put(
        m3,
        "sub/other.txt",
        b"edited in m3\n".to_vec(),
        &mut expected,
    );
    wait_converged(&dirs, &expected, "edits");

    for (dir, name) in [(m1, "big.bin"), (m2, "empty.txt"), (m3, "binary.dat")] {
        std::fs::remove_file(dir.join(name)).expect("delete");
        expected.remove(name);
    }
    wait_converged(&dirs, &expected, "deletes");

    let mut rename = |dir: &Path, from: &str, to: &str| {
        std::fs::rename(dir.join(from), dir.join(to)).expect("rename");
        for (name, data) in std::mem::take(&mut expected) {
            let moved = match name.strip_prefix(from) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{to}{rest}"),
                _ => name,
            };
            expected.insert(moved, data);
        }
    };
    rename(m1, "crlf.txt", "renamed.txt");
    rename(m2, "sub/deeper/nested.txt", "nested-moved.txt");
    rename(m3, "dir3", "dir3-renamed");
    wait_converged(&dirs, &expected, "renames");
}

#[test]
fn two_writers_end_with_one_version_and_the_loser_logs_the_refusal() {
    let s = setup(&[]);
    let mounts: Vec<Mount> = (1..=3)
        .map(|i| Mount::start(&s.base.join(format!("m{i}")), &s.server.addr()))
        .collect();
    let dirs: Vec<&Path> = std::iter::once(s.server.root.as_path())
        .chain(mounts.iter().map(|m| m.dir.as_path()))
        .collect();
    // A refusal needs the two uploads to overlap; big files make that all but certain, and a
    // few rounds make it certain enough.
    for round in 0..4u64 {
        let versions = [
            random_bytes(24 << 20, 10 + round),
            random_bytes(24 << 20, 20 + round),
        ];
        std::thread::scope(|scope| {
            for (mount, data) in mounts.iter().zip(&versions) {
                scope.spawn(move || write(&mount.dir, "contended.bin", data));
            }
        });
        let winner = wait_for("one version everywhere", DEADLINE, || {
            let all: Vec<Vec<u8>> = dirs
                .iter()
                .map(|dir| std::fs::read(dir.join("contended.bin")).unwrap_or_default())
                .collect();
            let settled = all.windows(2).all(|pair| pair[0] == pair[1])
                && versions.iter().any(|v| *v == all[0]);
            settled.then(|| all[0].clone())
        });
        assert!(versions.contains(&winner));
        let refused = mounts
            .iter()
            .any(|m| m.log().contains("write lock refused"));
        if refused {
            return;
        }
    }
    panic!("no mount logged a refused write lock in four rounds of concurrent writes");
}

#[test]
fn a_client_killed_mid_store_leaves_no_partial_file_and_its_lock_expires() {
    let s = setup(&["--lock-lease", "5s"]);
    let stubs = python_stubs(&s.base);
    let mut stalled =
        python_once_it_says(&stubs, &["stall", &s.server.addr(), "/victim.bin"], "sent");
    wait_for("the first chunk at the server", DEADLINE, || {
        (s.server.metric("gfdfs_received_bytes_total") > 0.0).then_some(())
    });
    stalled.kill().expect("SIGKILL the client");
    let _ = stalled.wait();

    let tmp = s.server.root.join(".gfdfs/tmp");
    wait_for("the partial upload removed", DEADLINE, || {
        (std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(1) == 0).then_some(())
    });
    assert!(!s.server.root.join("victim.bin").exists());
    assert_eq!(
        code(&gfdfs(&[
            "stat",
            "victim.bin",
            "--server",
            &s.server.addr()
        ])),
        3
    );
    wait_for("the failed store counted", DEADLINE, || {
        (s.server.metric("gfdfs_stores_failed_total") == 1.0).then_some(())
    });

    let local = s.base.join("mine.bin");
    std::fs::write(&local, b"after the crash").expect("write");
    let store = |addr: &str| {
        gfdfs(&[
            "store",
            local.to_str().expect("utf-8"),
            "--as",
            "victim.bin",
            "--server",
            addr,
        ])
    };
    assert_eq!(
        code(&store(&s.server.addr())),
        5,
        "the dead client's lock is still held"
    );
    let started = Instant::now();
    wait_for("the lease to expire", DEADLINE, || {
        (code(&store(&s.server.addr())) == 0).then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(20));
    let fetched = s.base.join("fetched");
    assert!(gfdfs(&[
        "fetch",
        "victim.bin",
        "-o",
        fetched.to_str().unwrap(),
        "--server",
        &s.server.addr()
    ])
    .status
    .success());
    assert_eq!(std::fs::read(fetched).unwrap(), b"after the crash");
}

#[test]
fn a_file_deleted_in_a_mount_while_it_was_down_is_deleted_on_the_server() {
    let s = setup(&[]);
    let mut m1 = Mount::start(&s.base.join("m1"), &s.server.addr());
    write(&m1.dir, "gone.txt", b"deleted while the mount was down\n");
    write(&m1.dir, "kept.txt", b"stays\n");
    let both = BTreeMap::from([
        (
            "gone.txt".to_string(),
            b"deleted while the mount was down\n".to_vec(),
        ),
        ("kept.txt".to_string(), b"stays\n".to_vec()),
    ]);
    wait_converged(&[&s.server.root, &m1.dir], &both, "the first sync");

    m1.stop();
    std::fs::remove_file(m1.dir.join("gone.txt")).expect("delete");
    let m1 = Mount::start(&m1.dir.clone(), &s.server.addr());
    let kept = BTreeMap::from([("kept.txt".to_string(), b"stays\n".to_vec())]);
    wait_converged(
        &[&s.server.root, &m1.dir],
        &kept,
        "the delete made while the mount was down",
    );
    assert_eq!(
        code(&gfdfs(&["stat", "gone.txt", "--server", &s.server.addr()])),
        3
    );
}

#[test]
fn a_client_down_during_a_delete_does_not_resurrect_it() {
    let s = setup(&[]);
    let m1 = Mount::start(&s.base.join("m1"), &s.server.addr());
    let mut m2 = Mount::start(&s.base.join("m2"), &s.server.addr());
    write(&m1.dir, "doomed.txt", b"soon gone\n");
    write(&m1.dir, "kept.txt", b"stays\n");
    let both = BTreeMap::from([
        ("doomed.txt".to_string(), b"soon gone\n".to_vec()),
        ("kept.txt".to_string(), b"stays\n".to_vec()),
    ]);
    wait_converged(&[&s.server.root, &m1.dir, &m2.dir], &both, "the first sync");

    m2.stop();
    std::fs::remove_file(m1.dir.join("doomed.txt")).expect("delete");
    let kept = BTreeMap::from([("kept.txt".to_string(), b"stays\n".to_vec())]);
    wait_converged(
        &[&s.server.root, &m1.dir],
        &kept,
        "the delete reaching the server",
    );

    let m2 = Mount::start(&m2.dir.clone(), &s.server.addr());
    wait_converged(
        &[&s.server.root, &m1.dir, &m2.dir],
        &kept,
        "the returning client",
    );
    wait_for("the returning client's listing", DEADLINE, || {
        (m2.log().matches("server listing received").count() >= 2).then_some(())
    });
    assert_eq!(
        code(&gfdfs(&[
            "stat",
            "doomed.txt",
            "--server",
            &s.server.addr()
        ])),
        3
    );
}

#[test]
fn mounts_survive_a_server_restart() {
    let temp = test_dir();
    let root = temp.path().join("root");
    let mut server = Server::start(&root, "127.0.0.1:0", &[]);
    let addr = server.addr();
    let m1 = Mount::start(&temp.path().join("m1"), &addr);
    let m2 = Mount::start(&temp.path().join("m2"), &addr);
    write(&m1.dir, "a.txt", b"first\n");
    let mut expected = BTreeMap::from([("a.txt".to_string(), b"first\n".to_vec())]);
    wait_converged(&[&root, &m1.dir, &m2.dir], &expected, "before the restart");

    server.kill();
    write(&m1.dir, "b.txt", b"made while the server was down\n");
    write(&m2.dir, "a.txt", b"edited while the server was down\n");
    expected.insert("b.txt".into(), b"made while the server was down\n".to_vec());
    expected.insert(
        "a.txt".into(),
        b"edited while the server was down\n".to_vec(),
    );
    let _server = Server::start(&root, &addr, &[]);
    wait_converged(&[&root, &m1.dir, &m2.dir], &expected, "after the restart");
}

#[test]
fn an_unchanged_store_transfers_nothing_and_metrics_pass_promtool() {
    let s = setup(&[]);
    let local = s.base.join("file.bin");
    std::fs::write(&local, random_bytes(3 << 20, 7)).expect("write");
    let args = [
        "store",
        local.to_str().expect("utf-8"),
        "--as",
        "/d/file.bin",
        "--server",
        &s.server.addr(),
    ];
    let first = gfdfs(&args);
    assert!(first.status.success(), "{first:?}");
    let received = s.server.metric("gfdfs_received_bytes_total");
    assert_eq!(received, (3 << 20) as f64);
    let again = gfdfs(&args);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("unchanged"),
        "{again:?}"
    );
    assert_eq!(s.server.metric("gfdfs_received_bytes_total"), received);
    assert_eq!(s.server.metric("gfdfs_stores_skipped_total"), 1.0);
    assert_eq!(s.server.metric("gfdfs_stores_total"), 1.0);

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .output_with(s.server.scrape());
    assert!(
        promtool.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&promtool.stderr)
    );
}

trait OutputWith {
    fn output_with(&mut self, stdin: String) -> Output;
}

impl OutputWith for Command {
    fn output_with(&mut self, stdin: String) -> Output {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }
}

#[test]
fn the_commands_and_their_exit_codes() {
    let s = setup(&[]);
    let addr = s.server.addr();
    let server = ["--server", addr.as_str()];
    let with = |args: &[&str]| {
        let all: Vec<&str> = args.iter().chain(server.iter()).copied().collect();
        gfdfs(&all)
    };
    let local = s.base.join("notes.txt");
    std::fs::write(&local, b"windows\r\nline ends\r\n").expect("write");
    let local = local.to_str().expect("utf-8");
    assert!(with(&["store", local]).status.success());
    assert!(with(&["store", local, "--as", "/dir/sub/notes.txt"])
        .status
        .success());

    let listed: serde_json::Value =
        serde_json::from_slice(&with(&["list", "--json"]).stdout).expect("json");
    let paths: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["dir/sub/notes.txt", "notes.txt"]);
    let stat: serde_json::Value =
        serde_json::from_slice(&with(&["stat", "dir/sub/notes.txt", "--json"]).stdout)
            .expect("json");
    assert_eq!(stat["size"], 20);
    assert_eq!(
        stat,
        serde_json::from_slice::<serde_json::Value>(
            &with(&["stat", "/dir/sub/notes.txt", "--json"]).stdout
        )
        .unwrap()
    );

    let out = with(&["fetch", "/dir/sub/notes.txt", "-o", "-"]);
    assert_eq!(out.stdout, b"windows\r\nline ends\r\n");
    let dest = s.base.join("out.txt");
    assert!(with(&["fetch", "notes.txt", "-o", dest.to_str().unwrap()])
        .status
        .success());
    assert_eq!(std::fs::read(&dest).unwrap(), b"windows\r\nline ends\r\n");
    let not_regular = s.base.join("a-directory");
    std::fs::create_dir(&not_regular).unwrap();
    assert_eq!(
        code(&with(&[
            "fetch",
            "notes.txt",
            "-o",
            not_regular.to_str().unwrap()
        ])),
        4
    );
    assert!(not_regular.is_dir());

    assert_eq!(code(&with(&["stat", "missing"])), 3);
    assert_eq!(code(&with(&["fetch", "missing", "-o", "-"])), 3);
    assert_eq!(code(&with(&["delete", "missing"])), 3);
    assert_eq!(code(&with(&["stat", "../outside"])), 4);
    assert_eq!(code(&with(&["fetch", "a/../../b", "-o", "-"])), 4);
    std::os::unix::fs::symlink("/etc", s.server.root.join("link")).unwrap();
    assert_eq!(code(&with(&["stat", "link/passwd"])), 4);
    // A server that completes the handshake (the kernel's backlog) and never answers: the
    // deadline passes. (A 1 ns deadline is no test: tokio rounds it up to its 1 ms tick, and
    // a loopback List can finish within that.)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    assert_eq!(
        code(&gfdfs(&[
            "list",
            "--server",
            &silent_addr,
            "--deadline",
            "300ms"
        ])),
        6
    );

    assert!(with(&["delete", "/notes.txt"]).status.success());
    assert_eq!(code(&with(&["stat", "notes.txt"])), 3);
    // An older copy does not come back over the tombstone.
    let old = s.base.join("old.txt");
    std::fs::write(&old, b"old").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    assert_eq!(
        code(&with(&[
            "store",
            old.to_str().unwrap(),
            "--as",
            "notes.txt"
        ])),
        8
    );

    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    assert_eq!(code(&gfdfs(&["list", "--server", &unused])), 7);
}

// ---------------------------------------------------------------------------------------------
// The independent Python client

/// Generates the Python stubs from the repository's .proto into `base/stubs`.
fn python_stubs(base: &Path) -> PathBuf {
    let stubs = base.join("stubs");
    std::fs::create_dir_all(&stubs).expect("mkdir stubs");
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dfs/proto");
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_root)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(proto_root.join("gfdfs/v1/dfs.proto"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed (pip install grpcio grpcio-tools): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stubs
}

fn python(stubs: &Path) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gfdfs/client.py"))
        .env("PYTHONPATH", stubs);
    command
}

/// 200 uploads that send their first chunk and then nothing (a slow or hostile client) hold
/// no thread and no lock of anyone else: another client stores, fetches, stats and lists as
/// usual meanwhile; when they die, each is counted failed and leaves nothing behind.
#[test]
fn stalled_uploads_leave_everything_else_served() {
    const STALLED: usize = 200;
    let s = setup(&[]);
    let addr = s.server.addr();
    let stubs = python_stubs(&s.base);
    let count = STALLED.to_string();
    let mut stalled = python_once_it_says(&stubs, &["stall_many", &addr, &count], "started");
    let first_chunks = (STALLED * (64 << 10)) as f64;
    wait_for(
        "every stalled upload's first chunk at the server",
        DEADLINE,
        || (s.server.metric("gfdfs_received_bytes_total") >= first_chunks).then_some(()),
    );

    let local = s.base.join("meanwhile.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).expect("write");
    let fetched = s.base.join("fetched.bin");
    let local_arg = local.to_str().expect("utf-8");
    let fetched_arg = fetched.to_str().expect("utf-8");
    for args in [
        &["store", local_arg, "--as", "meanwhile.bin"][..],
        &["fetch", "meanwhile.bin", "-o", fetched_arg],
        &["stat", "meanwhile.bin"],
        &["list", "--json"],
    ] {
        let out = gfdfs(&[args, &["--server", &addr, "--deadline", "10s"]].concat());
        assert_eq!(
            code(&out),
            0,
            "gfdfs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read(&fetched).expect("read"), data);

    stalled.kill().expect("SIGKILL the stalled client");
    let _ = stalled.wait();
    wait_for("every stalled upload counted failed", DEADLINE, || {
        (s.server.metric("gfdfs_stores_failed_total") == STALLED as f64).then_some(())
    });
    let uploads = s.server.root.join(dfs::STATE_DIR).join("tmp");
    wait_for("every partial upload removed", DEADLINE, || {
        (std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(1) == 0).then_some(())
    });
    assert!(!s.server.root.join("stalled").join("0.bin").exists());
}

/// The Python client run with `args` (its stdin a pipe that stays open), once its first line
/// of output is `line`.
fn python_once_it_says(stubs: &Path, args: &[&str], line: &str) -> std::process::Child {
    let mut child = python(stubs)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    assert_eq!(first.trim(), line, "python {args:?}");
    child
}

#[test]
fn python_grpcio_client_round_trips_and_refusals() {
    let s = setup(&[]);
    let stubs = python_stubs(&s.base);
    let out = python(&stubs)
        .args(["roundtrip", &s.server.addr()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python client failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python roundtrip ok"));
    // Every refused upload (DATA_LOSS) left nothing half-written behind.
    let uploads = s.server.root.join(dfs::STATE_DIR).join("tmp");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .expect("the uploads directory")
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", uploads.display());
}

// ---------------------------------------------------------------------------------------------
// The blocking client (what the proxy's dfs:// origin builds on)

/// Events of `watcher` up to and including the first that satisfies `last`.
fn events_until(
    watcher: &dfs::blocking::Watcher,
    last: impl Fn(&dfs::blocking::WatchEvent) -> bool,
) -> Vec<dfs::blocking::WatchEvent> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(event) = watcher.recv_timeout(Duration::from_millis(100)) {
            let done = last(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
    panic!("timed out; events so far: {seen:?}");
}

#[test]
fn the_blocking_client_streams_fetches_and_follows_changes_across_a_restart() {
    use dfs::blocking::{Client, WatchKind};
    let temp = test_dir();
    let root = temp.path().join("root");
    let mut server = Server::start(&root, "127.0.0.1:0", &[]);
    let addr = server.addr();
    let data = random_bytes(3 << 20, 5);
    let local = temp.path().join("f.bin");
    std::fs::write(&local, &data).expect("write");
    let stored = gfdfs(&[
        "store",
        local.to_str().expect("utf-8"),
        "--as",
        "/b/f.bin",
        "--server",
        &addr,
    ]);
    assert!(stored.status.success(), "{stored:?}");

    let client = Client::connect(&addr, Duration::from_secs(10)).expect("connect");
    let meta = client.stat("/b/f.bin").expect("stat");
    assert_eq!(meta.size, data.len() as u64);
    let mut reader = client.fetch("b/f.bin").expect("fetch");
    assert_eq!(reader.meta(), meta);
    let mut fetched = Vec::new();
    reader.read_to_end(&mut fetched).expect("read");
    assert!(fetched == data);
    assert!(matches!(
        client.stat("missing"),
        Err(dfs::Error::NotFound(_))
    ));
    assert!(
        matches!(client.fetch("../x"), Err(dfs::Error::Status(s)) if s.code() == tonic_code_invalid())
    );

    let watcher = client.watch();
    let listing = events_until(&watcher, |e| e.kind == WatchKind::Synced);
    assert!(listing.iter().any(|e| e.kind == WatchKind::Create
        && e.path == "b/f.bin"
        && e.checksum == meta.checksum));
    assert!(gfdfs(&["delete", "b/f.bin", "--server", &addr])
        .status
        .success());
    events_until(&watcher, |e| {
        e.kind == WatchKind::Delete && e.path == "b/f.bin"
    });

    server.kill();
    events_until(&watcher, |e| e.kind == WatchKind::Disconnected);
    let _server = Server::start(&root, &addr, &[]);
    let listing = events_until(&watcher, |e| e.kind == WatchKind::Synced);
    assert!(
        listing
            .iter()
            .any(|e| e.kind == WatchKind::Delete && e.path == "b/f.bin"),
        "{listing:?}"
    );
}

/// INVALID_ARGUMENT, as the status the blocking client passes through.
fn tonic_code_invalid() -> dfs::StatusCode {
    dfs::StatusCode::InvalidArgument
}

/// A mount SIGKILLed right after a local delete and a local edit (before it could tell the
/// server, or save its state) makes both reach the server when it starts again: the delete is
/// not undone by the server's copy, and the edit is not overwritten by it.
#[test]
fn a_mount_killed_right_after_local_changes_sends_them_when_it_starts_again() {
    let s = setup(&[]);
    let mut m1 = Mount::start(&s.base.join("m1"), &s.server.addr());
    let m2 = Mount::start(&s.base.join("m2"), &s.server.addr());
    write(&m1.dir, "deleted.txt", b"deleted in m1\n");
    write(&m1.dir, "edited.txt", b"first version\n");
    let first = BTreeMap::from([
        ("deleted.txt".to_string(), b"deleted in m1\n".to_vec()),
        ("edited.txt".to_string(), b"first version\n".to_vec()),
    ]);
    wait_converged(
        &[&s.server.root, &m1.dir, &m2.dir],
        &first,
        "the first sync",
    );
    // The agreement on both files is on disk (it is saved at most once a second).
    let state = m1.dir.join(".gfdfs/mount-state.json");
    wait_for("m1's saved state", DEADLINE, || {
        let text = std::fs::read_to_string(&state).ok()?;
        (text.contains("deleted.txt") && text.contains("edited.txt")).then_some(())
    });

    std::fs::remove_file(m1.dir.join("deleted.txt")).expect("delete");
    write(&m1.dir, "edited.txt", b"second version, longer\n");
    kill(Pid::from_raw(m1.child.id() as i32), Signal::SIGKILL).expect("SIGKILL m1");
    let _ = m1.child.wait();

    let m1 = Mount::start(&m1.dir.clone(), &s.server.addr());
    let after = BTreeMap::from([(
        "edited.txt".to_string(),
        b"second version, longer\n".to_vec(),
    )]);
    wait_converged(
        &[&s.server.root, &m1.dir, &m2.dir],
        &after,
        "the changes made just before the kill",
    );
}
