//! The cache process (the gfcache-cache binary) serving each backend over a real ipc region
//! to this test acting as the proxy, byte-verified; and its SIGTERM drain.

mod common;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, pattern, write_tree};
use ipc::{CacheSlot, Counter, Gauge, Lookup, Member, MemberState, Region, RegionConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(10);
const SEGMENT_SIZE: usize = 64 * 1024;

fn slot() -> CacheSlot {
    CacheSlot::from_raw(0)
}

fn region() -> Region {
    let config = RegionConfig {
        segments: 4,
        segment_size: SEGMENT_SIZE,
        cache_slots: 1,
        proxy_slots: 1,
    };
    // IPC_PRIVATE and marked for removal at creation: the kernel frees it once this test and
    // the child have detached, however either ends.
    Region::create(&config, None).unwrap()
}

/// A running gfcache-cache; killed and reaped on drop if the test did not wait for it.
struct CacheChild {
    child: Option<Child>,
}

impl CacheChild {
    fn start(region: &Region, backend_args: &[&str], extra: &[&str]) -> CacheChild {
        let child = Command::new(env!("CARGO_BIN_EXE_gfcache-cache"))
            .arg("--region")
            .arg(region.id().to_string())
            .args(["--slot", "0", "--workers", "2"])
            .args(backend_args)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut cache = CacheChild { child: Some(child) };
        cache.wait_state(region, MemberState::Ready);
        cache
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn wait_state(&mut self, region: &Region, state: MemberState) {
        let deadline = Instant::now() + TIMEOUT;
        while region.member_state(Member::Cache(slot())) != state {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gfcache-cache exited with {status} before reaching {state:?}");
            }
            assert!(Instant::now() < deadline, "no {state:?} within {TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(5)); // polling a condition, not syncing
        }
    }

    /// Sends SIGTERM and waits for the exit, up to `within`.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).unwrap();
        self.wait(within)
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(5)); // polling a condition, not syncing
        }
    }
}

impl Drop for CacheChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GETs `path` as the proxy does; `None` when not found.
fn get(region: &Region, path: &str) -> Option<Vec<u8>> {
    let lease = region.acquire(TIMEOUT).unwrap();
    let mut stream = lease.get(slot(), path, TIMEOUT).unwrap();
    let len = match stream.lookup() {
        Lookup::Found { len } => len,
        Lookup::NotFound => return None,
        Lookup::Error => panic!("the cache failed on {path}"),
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next_chunk(TIMEOUT).unwrap() {
        assert!(chunk.len() <= SEGMENT_SIZE / 2);
        chunk.append_to(&mut body);
    }
    assert_eq!(body.len() as u64, len, "{path}");
    Some(body)
}

/// PUTs `body` at `path` as the proxy does; whether the cache stored it.
fn put(region: &Region, path: &str, body: &[u8]) -> bool {
    let lease = region.acquire(TIMEOUT).unwrap();
    let mut stream = lease.put(slot(), path, body.len() as u64).unwrap();
    for piece in body.chunks(10_000) {
        match stream.write(piece, TIMEOUT) {
            Ok(()) => {}
            Err(ipc::Error::Declined) => return false,
            Err(other) => panic!("{path}: {other}"),
        }
    }
    match stream.finish(TIMEOUT) {
        Ok(()) => true,
        Err(ipc::Error::Declined) => false,
        Err(other) => panic!("{path}: {other}"),
    }
}

/// The objects served in every test: the fixture plus one spanning many chunks.
fn objects() -> Vec<(&'static str, Vec<u8>)> {
    let mut objects = fixture();
    objects.push(("/large/three-mib.bin", pattern(3 << 20, 5)));
    objects.push(("/large/one-chunk-exactly", pattern(SEGMENT_SIZE / 2, 6)));
    objects
}

/// Serves `objects()` and checks bytes, misses and the counters; then SIGTERM, exit 0, Down.
fn serve_and_verify(region: &Region, cache: &mut CacheChild) {
    let objects = objects();
    for round in 0..2 {
        for (path, body) in &objects {
            assert_eq!(
                get(region, path).as_ref(),
                Some(body),
                "{path} round {round}"
            );
        }
    }
    for path in ["/missing", "//a.txt", "/dir"] {
        assert_eq!(get(region, path), None, "{path}");
    }
    // Concurrent GETs from several "proxy" threads, through all segments.
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let objects = &objects;
            scope.spawn(move || {
                for (path, body) in objects.iter().skip(thread) {
                    assert_eq!(get(region, path).as_ref(), Some(body), "{path}");
                }
            });
        }
    });
    let concurrent: u64 = (0..4).map(|thread| (objects.len() - thread) as u64).sum();
    let stats = region.stats_snapshot(Member::Cache(slot()));
    let payload: u64 = objects.iter().map(|(_, body)| body.len() as u64).sum();
    assert_eq!(
        stats.counter(Counter::CacheHits),
        2 * objects.len() as u64 + concurrent
    );
    assert_eq!(stats.counter(Counter::CacheMisses), 3);
    assert_eq!(stats.counter(Counter::CacheErrors), 0);
    let concurrent_bytes: u64 = (0..4)
        .map(|thread| {
            objects
                .iter()
                .skip(thread)
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>()
        })
        .sum();
    assert_eq!(
        stats.counter(Counter::CacheBytesOut),
        2 * payload + concurrent_bytes
    );

    let status = cache.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    assert_eq!(
        region.member_state(Member::Cache(slot())),
        MemberState::Down
    );
    let stats = region.stats_snapshot(Member::Cache(slot()));
    assert_eq!(stats.gauge(Gauge::BackendObjects), objects.len() as u64);
}

#[test]
fn serves_a_directory() {
    let tree = TempDir::new().unwrap();
    write_tree(tree.path(), &objects());
    let region = region();
    let root = tree.path().to_str().unwrap();
    let mut cache = CacheChild::start(&region, &["--backend", "directory", "--root", root], &[]);
    assert!(!put(&region, "/new", b"declined: read-only"));
    serve_and_verify(&region, &mut cache);
}

#[test]
fn serves_a_writable_directory_filled_by_puts() {
    let tree = TempDir::new().unwrap();
    let region = region();
    let root = tree.path().to_str().unwrap();
    let args = [
        "--backend",
        "directory",
        "--root",
        root,
        "--writable",
        "--max-size",
        "100000000",
    ];
    let mut cache = CacheChild::start(&region, &args, &[]);
    for (path, body) in objects() {
        assert!(put(&region, path, &body), "{path}");
    }
    let stats = region.stats_snapshot(Member::Cache(slot()));
    assert_eq!(
        stats.counter(Counter::CachePutsStored),
        objects().len() as u64
    );
    assert_eq!(
        std::fs::read(tree.path().join("a.txt")).unwrap(),
        b"hello, world\n"
    );
    serve_and_verify(&region, &mut cache);
}

#[test]
fn serves_memory_filled_by_puts() {
    let region = region();
    let args = [
        "--backend",
        "memory",
        "--capacity",
        "67108864",
        "--max-object-size",
        "8388608",
    ];
    let mut cache = CacheChild::start(&region, &args, &[]);
    for (path, body) in objects() {
        assert!(put(&region, path, &body), "{path}");
    }
    assert!(!put(&region, "/too-large", &vec![0; 9 << 20]));
    // Gauges are copied about once a second: poll for the inserts to show.
    let deadline = Instant::now() + TIMEOUT;
    while region
        .stats_snapshot(Member::Cache(slot()))
        .gauge(Gauge::BackendInserts)
        != objects().len() as u64
    {
        assert!(Instant::now() < deadline, "gauges never updated");
        std::thread::sleep(Duration::from_millis(10));
    }
    serve_and_verify(&region, &mut cache);
}

#[test]
fn serves_a_pack() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &objects());
    let pack = dir.path().join("content.pack");
    cache_backends::build_pack(&tree, &pack).unwrap();
    let region = region();
    let mut cache = CacheChild::start(
        &region,
        &["--backend", "pack", "--pack", pack.to_str().unwrap()],
        &[],
    );
    assert!(!put(&region, "/new", b"declined: read-only"));
    serve_and_verify(&region, &mut cache);
}

#[test]
fn sigterm_lets_a_transfer_in_flight_finish_then_exits_0() {
    let tree = TempDir::new().unwrap();
    let body = pattern(2 << 20, 8);
    std::fs::write(tree.path().join("big"), &body).unwrap();
    let region = region();
    let root = tree.path().to_str().unwrap();
    let mut cache = CacheChild::start(&region, &["--backend", "directory", "--root", root], &[]);

    let lease = region.acquire(TIMEOUT).unwrap();
    let mut stream = lease.get(slot(), "/big", TIMEOUT).unwrap();
    assert_eq!(
        stream.lookup(),
        Lookup::Found {
            len: body.len() as u64
        }
    );
    let mut received = Vec::new();
    stream
        .next_chunk(TIMEOUT)
        .unwrap()
        .unwrap()
        .append_to(&mut received);
    kill(cache.pid(), Signal::SIGTERM).unwrap();
    cache.wait_state(&region, MemberState::Draining);
    while let Some(chunk) = stream.next_chunk(TIMEOUT).unwrap() {
        chunk.append_to(&mut received);
    }
    assert_eq!(received, body);
    drop(stream);
    let status = cache.wait(TIMEOUT);
    assert!(status.success(), "{status}");
    assert_eq!(
        region.member_state(Member::Cache(slot())),
        MemberState::Down
    );
}

#[test]
fn sigterm_aborts_a_stalled_transfer_at_the_shutdown_deadline() {
    let tree = TempDir::new().unwrap();
    std::fs::write(tree.path().join("big"), pattern(2 << 20, 8)).unwrap();
    let region = region();
    let root = tree.path().to_str().unwrap();
    let extra = [
        "--shutdown-timeout-ms",
        "300",
        "--transfer-timeout-ms",
        "60000",
    ];
    let mut cache = CacheChild::start(&region, &["--backend", "directory", "--root", root], &extra);
    let lease = region.acquire(TIMEOUT).unwrap();
    let mut stream = lease.get(slot(), "/big", TIMEOUT).unwrap();
    stream.next_chunk(TIMEOUT).unwrap().unwrap();
    // The "proxy" stops reading: the cache waits for room; the drain deadline must end that
    // wait long before the 60 s transfer timeout.
    let status = cache.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    // At most the two halves published before the abort can still be read; the stream must
    // then fail, never end as if complete.
    let mut failed = false;
    for _ in 0..3 {
        match stream.next_chunk(TIMEOUT) {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "an aborted transfer ended cleanly");
    let stats = region.stats_snapshot(Member::Cache(slot()));
    assert_eq!(stats.counter(Counter::CacheErrors), 1);
    // The aborting cache released its side itself: once the proxy side lets go, the segment is
    // back in the pool with no reclaim by a supervisor.
    drop(stream);
    let counts = region.segment_counts();
    assert_eq!(counts.free, region.config().segments, "{counts:?}");
}

#[test]
fn a_damaged_object_is_answered_error_and_counted() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &fixture());
    let pack = dir.path().join("content.pack");
    cache_backends::build_pack(&tree, &pack).unwrap();
    let target = cache_backends::PackBackend::open(&pack)
        .unwrap()
        .objects()
        .find(|object| object.path == "/dir/sub/binary.bin")
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[target.offset as usize + 100] ^= 1;
    common::write_pack_file(&pack, &bytes);

    let region = region();
    let args = ["--backend", "pack", "--pack", pack.to_str().unwrap()];
    let mut cache = CacheChild::start(&region, &args, &[]);
    for _ in 0..2 {
        let lease = region.acquire(TIMEOUT).unwrap();
        let stream = lease.get(slot(), "/dir/sub/binary.bin", TIMEOUT).unwrap();
        assert_eq!(stream.lookup(), Lookup::Error);
    }
    assert_eq!(get(&region, "/a.txt").unwrap(), b"hello, world\n");
    let status = cache.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    let stats = region.stats_snapshot(Member::Cache(slot()));
    assert_eq!(stats.counter(Counter::CacheErrors), 2);
    assert_eq!(stats.counter(Counter::CacheHits), 1);
}

#[test]
fn a_bad_backend_exits_non_zero() {
    let region = region();
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing.pack");
    let output = Command::new(env!("CARGO_BIN_EXE_gfcache-cache"))
        .arg("--region")
        .arg(region.id().to_string())
        .args(["--backend", "pack", "--pack", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.pack"), "{stderr}");
}
