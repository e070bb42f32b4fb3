//! Test rig: a real region, real cache processes (this test binary re-executed in the cache
//! role), a real proxy and a real HTTP origin on 127.0.0.1.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cache_backends::{BackendConfig, CacheProcessConfig};
use ipc::{CacheSlot, Member, MemberState, ProxySlot, Region, RegionConfig};
use proxy_core::metrics::{Counter, Gauge};
use proxy_core::{Proxy, ProxyConfig, RunningProxy};

/// Name of the `#[test]` that runs the cache role when the environment asks for it.
pub const CHILD_TEST: &str = "cache_child";

const ROLE: &str = "GFCACHE_TEST_ROLE";
const REGION: &str = "GFCACHE_TEST_REGION";
const SLOT: &str = "GFCACHE_TEST_SLOT";
const SLOTS: &str = "GFCACHE_TEST_SLOTS";
const BACKEND: &str = "GFCACHE_TEST_BACKEND";
const BACKEND_PATH: &str = "GFCACHE_TEST_BACKEND_PATH";
const WARM: &str = "GFCACHE_TEST_WARM";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The cache role

/// Runs the cache role and exits when `GFCACHE_TEST_ROLE=cache`; returns at once otherwise.
pub fn cache_child_main() {
    if std::env::var(ROLE).as_deref() != Ok("cache") {
        return;
    }
    let code = match run_cache_child() {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("test cache process failed: {error}");
            1
        }
    };
    std::process::exit(code);
}

fn env(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn run_cache_child() -> Result<(), BoxError> {
    // Die with the test thread that started us, whatever happens to it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    let region_id: ipc::RegionId = env(REGION)?.parse()?;
    let slot = CacheSlot::from_raw(env(SLOT)?.parse()?);
    let slots: u32 = env(SLOTS)?.parse()?;
    let path = PathBuf::from(env(BACKEND_PATH)?);
    let config = match env(BACKEND)?.as_str() {
        "directory" => BackendConfig::Directory {
            root: Some(path),
            content: None,
            writable: false,
            max_size: None,
            ttl: None,
        },
        "writable-directory" => BackendConfig::Directory {
            root: Some(path),
            content: None,
            writable: true,
            max_size: None,
            ttl: None,
        },
        "memory" => BackendConfig::Memory {
            capacity: 512 << 20,
            max_object_size: 128 << 20,
        },
        "pack" => BackendConfig::Pack { path },
        other => return Err(format!("unknown backend {other}").into()),
    };
    let region = Region::attach(region_id)?;
    let backend = cache_backends::open_backend(&config)?;
    if let Ok(dir) = std::env::var(WARM) {
        warm(backend.as_ref(), Path::new(&dir), slot, slots)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let process = CacheProcessConfig {
        slot,
        workers: 4,
        transfer_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(2),
    };
    cache_backends::run_cache_process(&region, backend.as_ref(), &process, &stop)?;
    Ok(())
}

/// Puts every file under `dir` that `slot` owns into the backend.
fn warm(
    backend: &dyn cache_backends::CacheBackend,
    dir: &Path,
    slot: CacheSlot,
    slots: u32,
) -> Result<(), BoxError> {
    for (path, file) in walk(dir)? {
        if proxy_core::routing::owner(&path, (0..slots).map(CacheSlot::from_raw)) != Some(slot) {
            continue;
        }
        let bytes = std::fs::read(&file)?;
        let mut fill = backend
            .put(&path, bytes.len() as u64)?
            .ok_or_else(|| format!("memory backend declined {path}"))?;
        for piece in bytes.chunks(1 << 20) {
            fill.write(piece)?;
        }
        fill.commit()?;
    }
    Ok(())
}

/// Every file under `dir`, as (GetFile path, file).
pub fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, BoxError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let file = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(file);
            } else {
                let rel = file.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.push((format!("/{rel}"), file));
            }
        }
    }
    Ok(out)
}

/// Which backend a cache process serves.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Files under a root.
    Directory(PathBuf),
    /// An empty in-memory LRU.
    Memory,
    /// An in-memory LRU warmed with the files under a directory (those its slot owns).
    MemoryWarm(PathBuf),
    /// A pack file.
    Pack(PathBuf),
    /// A writable root the fills go into (metadata in sidecars beside them).
    WritableDirectory(PathBuf),
}

/// A cache process; SIGKILLed and reaped on drop.
pub struct CacheChild {
    child: Child,
    slot: CacheSlot,
}

impl CacheChild {
    /// Starts the cache process for `slot` and waits until it is Ready.
    pub fn start(region: &Region, slot: u32, slots: u32, backend: &Backend) -> CacheChild {
        let exe = std::env::current_exe().expect("current exe");
        let mut command = Command::new(exe);
        command
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(ROLE, "cache")
            .env(REGION, region.id().to_string())
            .env(SLOT, slot.to_string())
            .env(SLOTS, slots.to_string())
            .env_remove(WARM);
        match backend {
            Backend::Directory(root) => command.env(BACKEND, "directory").env(BACKEND_PATH, root),
            Backend::Memory => command.env(BACKEND, "memory").env(BACKEND_PATH, "-"),
            Backend::MemoryWarm(dir) => command
                .env(BACKEND, "memory")
                .env(BACKEND_PATH, "-")
                .env(WARM, dir),
            Backend::Pack(path) => command.env(BACKEND, "pack").env(BACKEND_PATH, path),
            Backend::WritableDirectory(root) => command
                .env(BACKEND, "writable-directory")
                .env(BACKEND_PATH, root),
        };
        command.stdout(std::process::Stdio::null());
        let child = command.spawn().expect("spawn the cache process");
        let mut cache = CacheChild {
            child,
            slot: CacheSlot::from_raw(slot),
        };
        cache.wait_ready(region);
        cache
    }

    fn wait_ready(&mut self, region: &Region) {
        let member = Member::Cache(self.slot);
        let pid = self.pid();
        wait_for("the cache to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cache process exited early: {status}");
            }
            region.member_state(member) == MemberState::Ready && region.member_pid(member) == pid
        });
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// SIGSTOPs it and waits until every thread is stopped.
    pub fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.pid());
        wait_for("the cache to stop", Duration::from_secs(10), || {
            let Ok(entries) = std::fs::read_dir(&tasks) else {
                return false;
            };
            entries.flatten().all(|task| {
                std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        let after = stat.rsplit_once(')')?.1;
                        after.trim_start().chars().next()
                    })
                    .is_some_and(|state| state == 'T' || state == 't')
            })
        });
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CacheChild {
    fn drop(&mut self) {
        // SIGCONT first in case a test stopped it, so that SIGKILL is not delayed.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGCONT,
        );
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The rig

/// Region sizes used by the tests.
pub fn region_config(segments: u32, cache_slots: u32, proxy_slots: u32) -> RegionConfig {
    RegionConfig {
        segments,
        segment_size: 256 * 1024,
        cache_slots,
        proxy_slots,
    }
}

/// A proxy config for tests: port 0, generous cache timeout, and origin answers that say
/// nothing of their freshness kept an hour (the freshness tests set their own rules). No hot
/// objects: every hit asks its cache, which is what most tests look at (the hot object tests
/// turn them on).
pub fn proxy_config(origin: Option<String>) -> ProxyConfig {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.settings.hot_cache_size = 0;
    config.settings.default_ttl = Duration::from_secs(3600);
    config.settings.threads = 8;
    config.settings.origin = origin;
    config.settings.origin_connect_timeout = Duration::from_secs(2);
    config.settings.origin_timeout = Duration::from_secs(10);
    config.settings.cache_timeout = Duration::from_secs(5);
    config.settings.collapse_timeout = Duration::from_secs(10);
    config.settings.max_object_size = 96 << 20;
    config
}

/// Region, caches and proxy of one test. Drops the proxy, then the caches, then the region.
pub struct Rig {
    pub proxy: Option<RunningProxy>,
    pub caches: Vec<CacheChild>,
    pub region: Arc<Region>,
}

impl Rig {
    /// A region with `segments` segments and one cache process per backend given.
    pub fn start(segments: u32, backends: &[Backend], config: ProxyConfig) -> Rig {
        init_logging();
        let slots = u32::try_from(backends.len()).expect("slots");
        let region = Arc::new(
            Region::create(&region_config(segments, slots.max(1), 2), None).expect("region"),
        );
        let caches = backends
            .iter()
            .enumerate()
            .map(|(i, backend)| CacheChild::start(&region, i as u32, slots, backend))
            .collect();
        let proxy = Proxy::start(Arc::clone(&region), config).expect("proxy");
        Rig {
            proxy: Some(proxy),
            caches,
            region,
        }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        self.proxy
            .as_ref()
            .expect("running")
            .local_addr()
            .to_string()
    }

    /// A proxy counter.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.region
            .stats_snapshot(Member::Proxy(ProxySlot::from_raw(0)))
            .counter(counter.id())
    }

    /// A proxy gauge.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.region
            .stats_snapshot(Member::Proxy(ProxySlot::from_raw(0)))
            .gauge(gauge.id())
    }

    /// Waits until a counter reaches `value` (counters are written after the response went out).
    pub fn wait_counter(&self, counter: Counter, value: u64) {
        wait_for(
            &format!("{counter:?} to reach {value}"),
            Duration::from_secs(20),
            || self.counter(counter) >= value,
        );
        assert_eq!(
            self.counter(counter),
            value,
            "{counter:?} went past {value}"
        );
    }

    /// Waits until the pool has every segment back.
    pub fn wait_pool_full(&self) {
        let total = self.region.config().segments;
        wait_for(
            "every segment back in the pool",
            Duration::from_secs(20),
            || self.region.segment_counts().free == total,
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
            let _ = proxy.join_timeout(Duration::from_secs(10));
        }
        self.caches.clear();
    }
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit, for tests that hold thousands
/// of sockets (both ends of each are in this process).
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `condition` until it holds, panicking after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Content

/// Deterministic pseudo-random bytes, different per seed.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `files` (path -> bytes) under `dir`.
pub fn write_tree(dir: &Path, files: &HashMap<String, Arc<Vec<u8>>>) {
    for (path, bytes) in files {
        let file = dir.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(file, bytes.as_slice()).expect("write file");
    }
}

// ---------------------------------------------------------------------------------------------
// GetFile clients

/// The result of one fetch.
#[derive(Debug)]
pub enum Fetched {
    /// OK with this body.
    Ok(Vec<u8>),
    /// Another complete status.
    Status(gfprotocol::Status),
    /// The connection closed before the announced length.
    Short { announced: u64, received: u64 },
}

/// Fetches `path` with the gfprotocol client.
pub fn fetch(addr: &str, path: &str) -> Fetched {
    let client = gfprotocol::Client {
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(60),
    };
    let mut body = Vec::new();
    match client.fetch(addr, path, &mut body) {
        Ok(outcome) if outcome.status == gfprotocol::Status::Ok => Fetched::Ok(body),
        Ok(outcome) => Fetched::Status(outcome.status),
        Err(gfprotocol::Error::ShortBody {
            announced,
            received,
        }) => Fetched::Short {
            announced,
            received,
        },
        Err(error) => panic!("fetch {path}: {error}"),
    }
}

/// Fetches `path` and asserts the body equals `expected`.
pub fn fetch_ok(addr: &str, path: &str, expected: &[u8]) {
    match fetch(addr, path) {
        Fetched::Ok(body) => assert!(
            body == expected,
            "{path}: body of {} bytes differs from the expected {} bytes",
            body.len(),
            expected.len()
        ),
        other => panic!("{path}: expected OK, got {other:?}"),
    }
}

/// Fetches `path` and asserts the status.
pub fn fetch_status(addr: &str, path: &str, status: gfprotocol::Status) {
    match fetch(addr, path) {
        Fetched::Status(got) if got == status => {}
        other => panic!("{path}: expected {status:?}, got {other:?}"),
    }
}

/// A raw connection that sent a request and read the OK header and `body_bytes` of the body.
pub struct PartialClient {
    pub stream: TcpStream,
    pub announced: u64,
    pub received: Vec<u8>,
}

/// Sends a request, reads the OK header and at least `body_bytes` of the body, then stops
/// reading.
pub fn start_partial(addr: &str, path: &str, body_bytes: usize) -> PartialClient {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(format!("GETFILE GET {path}\r\n\r\n").as_bytes())
        .expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        let n = stream.read(&mut chunk).expect("read header");
        assert!(n > 0, "closed before the header");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let header = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let announced: u64 = header
        .strip_prefix("GETFILE OK ")
        .and_then(|rest| rest.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("expected an OK header, got {header:?}"));
    let mut received = buf[header_end..].to_vec();
    while received.len() < body_bytes {
        let n = stream.read(&mut chunk).expect("read body");
        assert!(n > 0, "closed early");
        received.extend_from_slice(&chunk[..n]);
    }
    PartialClient {
        stream,
        announced,
        received,
    }
}

impl PartialClient {
    /// Reads on until the server closes; returns the whole body received.
    pub fn read_to_close(mut self) -> Vec<u8> {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return self.received,
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                    return self.received
                }
                Err(error) => panic!("reading the rest: {error}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP origin

/// What the test origin answers for a path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with a Content-Length.
    Body(Arc<Vec<u8>>),
    /// 200, chunked (no Content-Length).
    Chunked(Arc<Vec<u8>>),
    /// 200 with a Content-Length, sent only once the gate opens.
    Gated(Arc<Vec<u8>>),
    /// A bare status.
    Status(u16),
    /// 302 to this path.
    Redirect(String),
    /// Nothing until the origin is dropped.
    Hang,
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().expect("gate");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !*open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            open = self.opened.wait_timeout(open, left).expect("gate").0;
        }
    }
    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
}

/// A tiny_http origin on 127.0.0.1:0 counting requests per path.
pub struct TestOrigin {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    gate: Arc<Gate>,
    thread: Option<JoinHandle<()>>,
}

impl TestOrigin {
    /// Starts an origin answering with `route(path)`.
    pub fn start(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> TestOrigin {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("origin bind"));
        let addr = server
            .server_addr()
            .to_ip()
            .expect("origin has an IP address");
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let gate = Arc::new(Gate::default());
        let route = Arc::new(route);
        let thread = {
            let server = Arc::clone(&server);
            let requests = Arc::clone(&requests);
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                for request in server.incoming_requests() {
                    let path = request.url().to_owned();
                    *requests
                        .lock()
                        .expect("counts")
                        .entry(path.clone())
                        .or_insert(0) += 1;
                    let reply = route(&path);
                    let gate = Arc::clone(&gate);
                    thread::spawn(move || respond(request, reply, &gate));
                }
            })
        };
        TestOrigin {
            addr,
            server,
            requests,
            gate,
            thread: Some(thread),
        }
    }

    /// An origin serving `files`, 404 for anything else.
    pub fn files(files: HashMap<String, Arc<Vec<u8>>>) -> TestOrigin {
        TestOrigin::start(move |path| match files.get(path) {
            Some(bytes) => Reply::Body(Arc::clone(bytes)),
            None => Reply::Status(404),
        })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received for `path`.
    pub fn requests(&self, path: &str) -> usize {
        self.requests
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_requests(&self) -> usize {
        self.requests.lock().expect("counts").values().sum()
    }

    /// Releases `Gated` and `Hang` replies.
    pub fn open_gate(&self) {
        self.gate.open();
    }
}

/// A 200 with a Content-Length (tiny_http would switch large bodies to chunked otherwise).
fn with_length(bytes: &[u8]) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_data(bytes.to_vec()).with_chunked_threshold(usize::MAX)
}

fn respond(request: tiny_http::Request, reply: Reply, gate: &Gate) {
    let result = match reply {
        Reply::Body(bytes) => request.respond(with_length(&bytes)),
        Reply::Gated(bytes) => {
            gate.wait();
            request.respond(with_length(&bytes))
        }
        Reply::Chunked(bytes) => request.respond(tiny_http::Response::new(
            tiny_http::StatusCode(200),
            Vec::new(),
            std::io::Cursor::new(bytes.to_vec()),
            None,
            None,
        )),
        Reply::Status(code) => request.respond(tiny_http::Response::empty(code)),
        Reply::Redirect(to) => {
            let location = tiny_http::Header::from_bytes("Location", to.as_bytes()).expect("hdr");
            request.respond(tiny_http::Response::empty(302).with_header(location))
        }
        Reply::Hang => {
            gate.wait();
            request.respond(tiny_http::Response::empty(503))
        }
    };
    // The proxy may have given up on us already.
    let _ = result;
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.gate.open();
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw HTTP origin that announces `announced` bytes, sends `sent` bytes and closes; counts
/// connections.
pub struct CutShortOrigin {
    addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CutShortOrigin {
    /// Starts it.
    pub fn start(body: Arc<Vec<u8>>, announced: usize) -> CutShortOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let connections = Arc::clone(&connections);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut request = Vec::new();
                            let mut buf = [0u8; 4096];
                            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                                match stream.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => request.extend_from_slice(&buf[..n]),
                                }
                            }
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n\
                                 Connection: close\r\n\r\n"
                            );
                            let _ = stream.write_all(head.as_bytes());
                            let _ = stream.write_all(&body);
                            let _ = stream.flush();
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        CutShortOrigin {
            addr,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CutShortOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A URL whose port was bound and closed again: connections are refused.
pub fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}
