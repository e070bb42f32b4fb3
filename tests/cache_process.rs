//! The cache process (the gfcache-cache binary) serving each backend over a real ipc region
//! to this test acting as the proxy, byte-verified; and its SIGTERM drain.

// The backend fixtures live with the backend tests.
#[path = "../cache-backends/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cache_backends::metrics::{Counter, Gauge};
use common::{
    fixture, overwrite_in_place, pattern, truncate_in_place, write_pack_file, write_tree,
};
use ipc::{CacheSlot, Lookup, Member, MemberState, Region, RegionConfig};
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

    /// Starts a pack cache with its stderr in `log`, and waits for `state`.
    fn start_pack(region: &Region, pack: &Path, log: &Path, state: MemberState) -> CacheChild {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gfcache-cache"))
            .arg("--region")
            .arg(region.id().to_string())
            .args([
                "--slot",
                "0",
                "--workers",
                "2",
                "--backend",
                "pack",
                "--pack",
            ])
            .arg(pack)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut cache = CacheChild { child: Some(child) };
        cache.wait_state(region, state);
        cache
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("gfcache-cache exited with {status}");
        }
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
        stats.counter(Counter::Hits.id()),
        2 * objects.len() as u64 + concurrent
    );
    assert_eq!(stats.counter(Counter::Misses.id()), 3);
    assert_eq!(stats.counter(Counter::Errors.id()), 0);
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
        stats.counter(Counter::BytesOut.id()),
        2 * payload + concurrent_bytes
    );

    let status = cache.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
    assert_eq!(
        region.member_state(Member::Cache(slot())),
        MemberState::Down
    );
    let stats = region.stats_snapshot(Member::Cache(slot()));
    assert_eq!(
        stats.gauge(Gauge::BackendObjects.id()),
        objects.len() as u64
    );
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
        stats.counter(Counter::PutsStored.id()),
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
        .gauge(Gauge::BackendInserts.id())
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
    let extra = ["--shutdown-timeout", "300ms", "--transfer-timeout", "60s"];
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
    assert_eq!(stats.counter(Counter::Errors.id()), 1);
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
    assert_eq!(stats.counter(Counter::Errors.id()), 2);
    assert_eq!(stats.counter(Counter::Hits.id()), 1);
}

#[test]
fn a_bad_backend_exits_non_zero() {
    let region = region();
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("missing-root");
    let output = Command::new(env!("CARGO_BIN_EXE_gfcache-cache"))
        .arg("--region")
        .arg(region.id().to_string())
        .args([
            "--backend",
            "directory",
            "--root",
            missing.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing-root"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// A pack changed on disk under a running cache process.

/// What one GET as the proxy came to, without panicking on a failure.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Bytes(Vec<u8>),
    NotFound,
    /// Answered error, or the transfer broke off.
    Failed,
}

fn try_get(region: &Region, path: &str) -> Got {
    let lease = region.acquire(TIMEOUT).unwrap();
    let Ok(mut stream) = lease.get(slot(), path, TIMEOUT) else {
        return Got::Failed;
    };
    let len = match stream.lookup() {
        Lookup::Found { len } => len,
        Lookup::NotFound => return Got::NotFound,
        Lookup::Error => return Got::Failed,
    };
    let mut body = Vec::new();
    loop {
        match stream.next_chunk(TIMEOUT) {
            Ok(Some(chunk)) => chunk.append_to(&mut body),
            Ok(None) => break,
            Err(_) => return Got::Failed,
        }
    }
    assert_eq!(
        body.len() as u64,
        len,
        "{path}: a short or long body ended cleanly"
    );
    Got::Bytes(body)
}

/// A pack of `objects()` in a temp dir.
fn built_pack(dir: &TempDir) -> PathBuf {
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &objects());
    let pack = dir.path().join("content.pack");
    cache_backends::build_pack(&tree, &pack).unwrap();
    pack
}

fn object_offset(pack: &Path, path: &str) -> u64 {
    cache_backends::PackBackend::open(pack)
        .unwrap()
        .objects()
        .find(|object| object.path == path)
        .unwrap()
        .offset
}

fn wait_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10)); // polling a condition, not syncing
    }
}

#[test]
fn a_pack_overwritten_in_place_never_serves_wrong_bytes() {
    let dir = TempDir::new().unwrap();
    let pack = built_pack(&dir);
    let target = "/large/three-mib.bin";
    let offset = object_offset(&pack, target);
    let region = region();
    let log = dir.path().join("cache.log");
    let mut cache = CacheChild::start_pack(&region, &pack, &log, MemberState::Ready);
    let objects = objects();
    let expected = |path: &str| &objects.iter().find(|(p, _)| *p == path).unwrap().1;
    assert_eq!(
        try_get(&region, target),
        Got::Bytes(expected(target).clone())
    );

    // 4 KiB inside the object already served, in place.
    overwrite_in_place(&pack, offset + (1 << 20), &pattern(4096, 77));
    // Until the cache has re-verified the pack and checked the object again, each answer is
    // the right bytes or a failure; afterwards the damaged object is refused for good and the
    // others are served.
    let deadline = Instant::now() + TIMEOUT;
    let mut answers = 0;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("checksum mismatch")
    {
        match try_get(&region, target) {
            Got::Bytes(body) => assert!(body == *expected(target), "wrong bytes served"),
            Got::Failed => {}
            Got::NotFound => panic!("{target} not found"),
        }
        answers += 1;
        assert!(
            Instant::now() < deadline,
            "never re-verified after {answers} answers"
        );
        cache.assert_alive();
        std::thread::sleep(Duration::from_millis(5)); // polling a condition, not syncing
    }
    for _ in 0..5 {
        assert_eq!(try_get(&region, target), Got::Failed);
    }
    for (path, body) in objects.iter().filter(|(path, _)| *path != target) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match try_get(&region, path) {
                Got::Bytes(got) => {
                    assert!(got == *body, "{path}: wrong bytes");
                    break;
                }
                Got::Failed => assert!(Instant::now() < deadline, "{path} never served"),
                Got::NotFound => panic!("{path} not found"),
            }
            std::thread::sleep(Duration::from_millis(5)); // polling a condition, not syncing
        }
    }
    wait_log(&log, "modified in place");
    assert_eq!(
        region.member_state(Member::Cache(slot())),
        MemberState::Ready
    );
    let status = cache.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
}

#[test]
fn a_pack_truncated_in_place_leaves_the_cache_up_and_unavailable_until_restored() {
    let dir = TempDir::new().unwrap();
    let pack = built_pack(&dir);
    let original = std::fs::read(&pack).unwrap();
    let region = region();
    let log = dir.path().join("cache.log");
    let mut cache = CacheChild::start_pack(&region, &pack, &log, MemberState::Ready);
    assert_eq!(
        try_get(&region, "/a.txt"),
        Got::Bytes(b"hello, world\n".to_vec())
    );

    truncate_in_place(&pack, original.len() as u64 / 2);
    cache.wait_state(&region, MemberState::Unavailable);
    let text = wait_log(&log, "cache unavailable");
    assert!(text.contains(&pack.display().to_string()), "{text}");
    // Asked anyway (a proxy that routed before the state changed): answered error at once.
    assert_eq!(try_get(&region, "/a.txt"), Got::Failed);
    cache.assert_alive();

    write_pack_file(&pack, &original);
    cache.wait_state(&region, MemberState::Ready);
    for (path, body) in objects() {
        assert_eq!(try_get(&region, path), Got::Bytes(body), "{path}");
    }
    let status = cache.terminate(TIMEOUT);
    assert!(status.success(), "{status}");
}

#[test]
fn a_cache_started_on_a_bad_pack_stays_up_unavailable_and_says_why() {
    let dir = TempDir::new().unwrap();
    let pack = built_pack(&dir);
    let original = std::fs::read(&pack).unwrap();
    let region = region();

    // Truncated, as after a SIGBUS in the remaining window: the restarted cache must not exit.
    write_pack_file(&pack, &original[..original.len() - 100]);
    let log = dir.path().join("truncated.log");
    let mut cache = CacheChild::start_pack(&region, &pack, &log, MemberState::Unavailable);
    let text = wait_log(&log, "cache unavailable");
    assert!(text.contains(&pack.display().to_string()), "{text}");
    assert!(text.contains("footer"), "{text}");
    cache.assert_alive();
    write_pack_file(&pack, &original);
    cache.wait_state(&region, MemberState::Ready);
    assert_eq!(
        try_get(&region, "/a.txt"),
        Got::Bytes(b"hello, world\n".to_vec())
    );
    assert!(cache.terminate(TIMEOUT).success());

    // Writable by others: refused, saying what to do, until fixed.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pack, std::fs::Permissions::from_mode(0o666)).unwrap();
        let log = dir.path().join("writable.log");
        let mut cache = CacheChild::start_pack(&region, &pack, &log, MemberState::Unavailable);
        let text = wait_log(&log, "chmod go-w");
        assert!(text.contains("0666"), "{text}");
        std::fs::set_permissions(&pack, std::fs::Permissions::from_mode(0o644)).unwrap();
        cache.wait_state(&region, MemberState::Ready);
        assert!(cache.terminate(TIMEOUT).success());
    }
}

#[test]
fn a_pack_replaced_by_rename_is_served_by_the_running_cache() {
    let dir = TempDir::new().unwrap();
    let pack = built_pack(&dir);
    let region = region();
    let log = dir.path().join("cache.log");
    let mut cache = CacheChild::start_pack(&region, &pack, &log, MemberState::Ready);
    assert_eq!(
        try_get(&region, "/a.txt"),
        Got::Bytes(b"hello, world\n".to_vec())
    );
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.txt"), b"replaced\n").unwrap();
    cache_backends::build_pack(&other, &pack).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match try_get(&region, "/a.txt") {
            Got::Bytes(body) if body == b"replaced\n" => break,
            Got::Bytes(body) => assert_eq!(body, b"hello, world\n"),
            Got::Failed => {}
            Got::NotFound => panic!("/a.txt not found"),
        }
        assert!(Instant::now() < deadline, "the new pack was never served");
        std::thread::sleep(Duration::from_millis(10)); // polling a condition, not syncing
    }
    assert_eq!(try_get(&region, "/dir/sub/z"), Got::NotFound);
    assert!(cache.terminate(TIMEOUT).success());
}

/// A writable directory keeps its files while its process is down, so a purge issued then
/// would be undone by the restart; a purge that missed the slot is counted in the region and
/// the cache empties itself before it is Ready again, and also while it runs (a purge it did
/// not answer in time).
#[test]
fn a_writable_directory_that_missed_a_purge_empties_itself() {
    let tree = TempDir::new().unwrap();
    let region = region();
    let root = tree.path().to_str().unwrap();
    let args = ["--backend", "directory", "--root", root, "--writable"];
    let member = Member::Cache(slot());

    let mut cache = CacheChild::start(&region, &args, &[]);
    assert!(put(&region, "/a.txt", b"stale"));
    assert!(cache.terminate(TIMEOUT).success());
    region.note_missed_purge(member);
    let mut cache = CacheChild::start(&region, &args, &[]);
    // Ready, and the missed purge already made up for: the first get finds nothing.
    assert_eq!(get(&region, "/a.txt"), None);
    assert!(!tree.path().join("a.txt").exists());
    assert!(!region.missed_purges(member).outstanding());

    // While it runs.
    assert!(put(&region, "/b.txt", b"stale too"));
    assert_eq!(get(&region, "/b.txt").as_deref(), Some(&b"stale too"[..]));
    region.note_missed_purge(member);
    let deadline = Instant::now() + TIMEOUT;
    // The cache empties itself first and then records the purge as made up, so the record
    // may trail the emptying by a moment.
    while get(&region, "/b.txt").is_some() || region.missed_purges(member).outstanding() {
        assert!(
            Instant::now() < deadline,
            "still served, or not recorded as made up, after a missed purge"
        );
        std::thread::sleep(Duration::from_millis(5)); // polling a condition, not syncing
    }
    assert_eq!(get(&region, "/b.txt"), None);
    cache.assert_alive();
}
