//! Shared helpers of the supervisor black-box tests: a temp run directory with a config on free
//! ports, a real HTTP origin (tiny_http), a small GetFile client, and a [`Run`] guard that stops
//! the supervisor and runs `gfsupervisor cleanup` even when a test fails, so that no IPC object
//! survives.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_gfsupervisor");

/// Generous upper bounds: a deadline only ends a poll that would otherwise hang.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `condition` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = condition() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago and that this test process has not handed out before: the
/// kernel may give the same ephemeral port to two binds in a row once the first is closed, and
/// a config whose proxy and metrics ports collide does not start.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Content and origin

/// A content tree: a few text files and a binary one larger than a segment half.
pub fn make_content(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("/hello.txt".to_string(), b"hello, gfcache\n".to_vec()),
        (
            "/index.html".to_string(),
            b"<html><body>gfcache test</body></html>\n".to_vec(),
        ),
        ("/empty.txt".to_string(), Vec::new()),
        (
            "/docs/readme.txt".to_string(),
            b"a file in a subdirectory\n".repeat(100),
        ),
    ];
    let mut big = Vec::with_capacity(300_000);
    let mut x: u32 = 12345;
    for _ in 0..300_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        big.push((x >> 16) as u8);
    }
    files.push(("/img/big.bin".to_string(), big));
    for (path, body) in &files {
        let file = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir content");
        std::fs::write(&file, body).expect("write content");
    }
    files
}

/// How a scripted [`Origin`] answers one request path (the target without its query).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginReply {
    /// The file under the root, or 404.
    File,
    /// This status with a short body.
    Status(u16),
    /// No answer until the origin is dropped.
    Hang,
}

/// Decides how a scripted origin answers a path.
pub type OriginScript = Arc<dyn Fn(&str) -> OriginReply + Send + Sync>;

/// A real HTTP origin serving a directory, counting the requests it answered and recording
/// their targets (query included).
pub struct Origin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub targets: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    pub fn serve(root: &Path) -> Origin {
        Origin::scripted(root, Arc::new(|_: &str| OriginReply::File))
    }

    /// An origin whose answer to each path `script` decides.
    pub fn scripted(root: &Path, script: OriginScript) -> Origin {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("origin bind"));
        let addr = server.server_addr().to_ip().expect("ip origin");
        let hits = Arc::new(AtomicU64::new(0));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (srv, counter, root) = (Arc::clone(&server), Arc::clone(&hits), root.to_path_buf());
        let seen = Arc::clone(&targets);
        let thread = std::thread::spawn(move || {
            // Requests left unanswered on purpose; dropped (answered 500) when the origin stops.
            let mut hanging = Vec::new();
            for request in srv.incoming_requests() {
                counter.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut seen) = seen.lock() {
                    seen.push(request.url().to_string());
                }
                let path = request.url().split('?').next().unwrap_or("/").to_string();
                let rel = path.trim_start_matches('/').to_string();
                let file = root.join(&rel);
                let response = match script(&path) {
                    OriginReply::Hang => {
                        hanging.push(request);
                        continue;
                    }
                    OriginReply::Status(code) => {
                        tiny_http::Response::from_data(format!("status {code}\n").into_bytes())
                            .with_status_code(code)
                    }
                    OriginReply::File => match std::fs::read(&file) {
                        Ok(body) if !rel.contains("..") && file.is_file() => {
                            tiny_http::Response::from_data(body).with_status_code(200)
                        }
                        _ => tiny_http::Response::from_data(b"not found".to_vec())
                            .with_status_code(404),
                    },
                };
                let _ = request.respond(response);
            }
            drop(hanging);
        });
        Origin {
            addr,
            hits,
            targets,
            server,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request targets it received so far.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GetFile client

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<u8>),
    FileNotFound,
    Error,
    Invalid,
}

/// One GetFile exchange. `Err` for I/O errors, malformed headers and short bodies.
pub fn getfile(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GETFILE GET {path}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .map_err(|e| format!("read {path}: {e} after {} bytes", buf.len()))?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no header terminator in {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(80)])
            )
        })?;
    let header = std::str::from_utf8(&buf[..end]).map_err(|_| "header is not UTF-8".to_string())?;
    let body = &buf[end + 4..];
    let mut parts = header.split(' ');
    if parts.next() != Some("GETFILE") {
        return Err(format!("bad scheme in {header:?}"));
    }
    match (parts.next(), parts.next()) {
        (Some("OK"), Some(len)) => {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad length in {header:?}"))?;
            if body.len() != len {
                return Err(format!(
                    "{path}: body of {} bytes, announced {len}",
                    body.len()
                ));
            }
            Ok(Reply::Ok(body.to_vec()))
        }
        (Some("FILE_NOT_FOUND"), None) => Ok(Reply::FileNotFound),
        (Some("ERROR"), None) => Ok(Reply::Error),
        (Some("INVALID"), None) => Ok(Reply::Invalid),
        _ => Err(format!("bad header {header:?}")),
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP reply {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of a sample line `name{labels} value` in a Prometheus exposition.
pub fn metric_value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

// ---------------------------------------------------------------------------------------------
// Config and run

#[derive(Clone, Debug)]
pub enum Backend {
    Directory(PathBuf),
    /// A directory that stores the origin's fills (`writable = true`).
    WritableDirectory(PathBuf),
    Memory,
    Pack(PathBuf),
}

/// What a test run's config says.
#[derive(Clone, Debug)]
pub struct Setup {
    pub backend: Backend,
    pub origin: Option<String>,
    pub caches: u32,
    pub proxies: u32,
    pub segments: u32,
    pub max_restarts: u32,
    pub proxy_port: u16,
    pub metrics_port: u16,
    /// `proxy.http_listen` on 127.0.0.1 at this port; `None` leaves it out.
    pub http_port: Option<u16>,
    /// More `[proxy]` lines, verbatim (`origin_timeout = "1s"`).
    pub proxy_extra: Vec<String>,
}

impl Setup {
    pub fn new(backend: Backend) -> Setup {
        Setup {
            backend,
            origin: None,
            caches: 2,
            proxies: 1,
            segments: 8,
            max_restarts: 3,
            proxy_port: free_port(),
            metrics_port: free_port(),
            http_port: None,
            proxy_extra: Vec::new(),
        }
    }

    /// The same with the HTTP front end on a free port.
    pub fn with_http(mut self) -> Setup {
        self.http_port = Some(free_port());
        self
    }

    pub fn render(&self, run_dir: &Path) -> String {
        let backend = match &self.backend {
            Backend::Directory(root) => format!("backend = \"directory\"\ndirectory = {{ root = {:?} }}", root.display().to_string()),
            Backend::WritableDirectory(root) => format!("backend = \"directory\"\ndirectory = {{ root = {:?}, writable = true }}", root.display().to_string()),
            Backend::Memory => "backend = \"memory\"\nmemory = { capacity = \"16MiB\", max_object_size = \"4MiB\" }".to_string(),
            Backend::Pack(path) => format!("backend = \"pack\"\npack = {{ path = {:?} }}", path.display().to_string()),
        };
        // The test origins say nothing of freshness: their answers are kept an hour.
        let origin = self
            .origin
            .as_ref()
            .map(|o| format!("origin = {o:?}\ndefault_ttl = \"1h\"\n"))
            .unwrap_or_default();
        let http = self
            .http_port
            .map(|port| format!("http_listen = \"127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        let extra: String = self.proxy_extra.iter().map(|l| format!("{l}\n")).collect();
        format!(
            r#"[proxy]
listen = "127.0.0.1:{proxy}"
threads = 4
processes = {proxies}
{origin}{http}{extra}cache_timeout = "2s"

[ipc]
segments = {segments}
segment_size = "128KiB"

[cache]
processes = {caches}
workers = 2
{backend}

[supervisor]
run_dir = {run_dir:?}
metrics_listen = "127.0.0.1:{metrics}"
shutdown_timeout = "3s"
backoff_initial = "50ms"
backoff_max = "400ms"
max_restarts = {max_restarts}
restart_window = "60s"
revive_after = "10m"
"#,
            proxy = self.proxy_port,
            caches = self.caches,
            proxies = self.proxies,
            segments = self.segments,
            run_dir = run_dir.display().to_string(),
            metrics = self.metrics_port,
            max_restarts = self.max_restarts,
        )
    }
}

/// Runs the supervisor binary with `args` and `-c config`, capturing its output.
pub fn gfsupervisor(args: &[&str], config: &Path) -> Output {
    Command::new(SUPERVISOR)
        .args(args)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .expect("run gfsupervisor")
}

pub fn output_text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A supervisor run in a temp directory. Dropping it stops the supervisor (SIGTERM, then
/// SIGKILL) and runs `gfsupervisor cleanup`.
pub struct Run {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub run_dir: PathBuf,
    pub proxy: SocketAddr,
    pub metrics: SocketAddr,
    /// The HTTP front end, when the setup has one.
    pub http: Option<SocketAddr>,
    pub setup: Setup,
    pub log: PathBuf,
    pub process: Option<Child>,
}

impl Run {
    /// Writes the config into a fresh temp dir (without starting anything).
    pub fn prepare(setup: Setup) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_dir = dir.path().join("run");
        let config = dir.path().join("gfsupervisor.toml");
        std::fs::write(&config, setup.render(&run_dir)).expect("write config");
        Run {
            proxy: SocketAddr::from(([127, 0, 0, 1], setup.proxy_port)),
            metrics: SocketAddr::from(([127, 0, 0, 1], setup.metrics_port)),
            http: setup
                .http_port
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
            log: dir.path().join("supervisor.log"),
            dir,
            config,
            run_dir,
            setup,
            process: None,
        }
    }

    /// Starts the supervisor and waits for /readyz.
    pub fn start(setup: Setup) -> Run {
        let mut run = Run::prepare(setup);
        run.spawn();
        run.wait_ready();
        run
    }

    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    pub fn spawn_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        let log = std::fs::File::create(&self.log).expect("create log");
        let child = Command::new(SUPERVISOR)
            .envs(env.iter().copied())
            .args(["start", "-c"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn gfsupervisor");
        self.process = Some(child);
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.process.as_ref().expect("started").id() as i32)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the supervisor exited.
    pub fn assert_alive(&mut self) {
        if let Some(p) = self.process.as_mut() {
            if let Ok(Some(status)) = p.try_wait() {
                panic!(
                    "gfsupervisor exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    pub fn ready(&self) -> bool {
        matches!(http_get(self.metrics, "/readyz"), Ok((200, _)))
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        while !self.ready() {
            self.assert_alive();
            assert!(
                Instant::now() < deadline,
                "not ready in time; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply, String> {
        getfile(self.proxy, path)
    }

    pub fn status(&self) -> serde_json::Value {
        let out = gfsupervisor(&["status", "--json"], &self.config);
        assert!(out.status.success(), "status failed: {}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The status entry of one child.
    pub fn child(&self, role: &str, slot: u64) -> serde_json::Value {
        let status = self.status();
        status["children"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["role"] == role && c["slot"] == slot)
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no {role} {slot} in {status}"))
    }

    pub fn metrics_text(&self) -> String {
        let (code, body) = http_get(self.metrics, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// The IPC objects the ledger lists while the run is alive: (kind, id, creator pid, created).
    pub fn ledger(&self) -> Vec<(ipc::IpcKind, i32, i32, i64)> {
        let text = std::fs::read_to_string(self.run_dir.join("ledger")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let kind = match v["kind"].as_str()? {
                    "shm" => ipc::IpcKind::Shm,
                    "msg" => ipc::IpcKind::MsgQueue,
                    "sem" => ipc::IpcKind::SemSet,
                    _ => return None,
                };
                Some((
                    kind,
                    v["id"].as_i64()? as i32,
                    v["creator_pid"].as_i64()? as i32,
                    v["created"].as_i64()?,
                ))
            })
            .collect()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop_with_sigterm(&mut self) -> std::process::ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let p = self.process.as_mut().expect("started");
        let status = wait_for("gfsupervisor to exit", DEADLINE, || {
            p.try_wait().ok().flatten()
        });
        self.process = None;
        status
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let pid = Pid::from_raw(p.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(p.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        let out = gfsupervisor(&["cleanup"], &self.config);
        if std::thread::panicking() {
            eprintln!(
                "--- supervisor log ({}) ---\n{}\n--- cleanup ---\n{}",
                self.log.display(),
                self.log_text(),
                output_text(&out)
            );
        }
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Whether any listed object still exists as the recorded one.
pub fn surviving_objects(entries: &[(ipc::IpcKind, i32, i32, i64)]) -> Vec<(ipc::IpcKind, i32)> {
    entries
        .iter()
        .filter(|(kind, id, creator, created)| {
            ipc::object_info(*kind, *id).is_some_and(|info| {
                info.created == *created
                    && (*kind != ipc::IpcKind::Shm || info.creator_pid == *creator)
            })
        })
        .map(|(kind, id, _, _)| (*kind, *id))
        .collect()
}

/// Pids of the children in a status JSON.
pub fn child_pids(status: &serde_json::Value) -> Vec<i32> {
    status["children"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the child `role slot` runs with a pid other than `old`, and returns it.
pub fn wait_restarted(run: &Run, role: &str, slot: u64, old: i64) -> serde_json::Value {
    wait_for(&format!("{role} {slot} to be restarted"), DEADLINE, || {
        let c = run.child(role, slot);
        (c["state"] == "running" && c["pid"].as_i64().is_some_and(|p| p != old)).then_some(c)
    })
}

/// Stops with `gfsupervisor stop` and checks that nothing of the run is left.
pub fn stop_and_check_nothing_left(mut run: Run) {
    let status = run.status();
    let pids = child_pids(&status);
    assert_eq!(
        pids.len(),
        (run.setup.proxies + run.setup.caches) as usize,
        "{status}"
    );
    let ledger = run.ledger();
    assert!(!ledger.is_empty(), "the ledger lists the run's objects");
    let out = gfsupervisor(&["stop"], &run.config);
    assert!(out.status.success(), "stop: {}", output_text(&out));
    let exit = run.wait_exit();
    assert!(
        exit.success(),
        "supervisor exit {exit}; log:\n{}",
        run.log_text()
    );
    assert_eq!(
        surviving_objects(&ledger),
        Vec::new(),
        "IPC objects left after stop"
    );
    for pid in pids {
        assert!(process_gone(pid), "child {pid} still alive after stop");
    }
    assert!(
        !run.run_dir.join("ledger").exists(),
        "the ledger is deleted on stop"
    );
    assert_eq!(ipc::lock_holder(&run.run_dir).unwrap(), None);
    let log = run.log_text();
    assert!(log.contains("started child"), "{log}");
    assert!(log.contains("child stopped"), "{log}");
}

/// Reads `stream` to its end at a steady pace: a pause of `pause` after every `every` bytes
/// (the pace of a slow client, not a wait for an event). Panics if the connection breaks.
pub fn read_at_pace(stream: &mut TcpStream, every: usize, pause: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut since_pause = 0;
    loop {
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("cut after {} bytes: {e}", bytes.len()));
        if n == 0 {
            return bytes;
        }
        bytes.extend_from_slice(&chunk[..n]);
        since_pause += n;
        if since_pause >= every {
            std::thread::sleep(pause);
            since_pause = 0;
        }
    }
}
