//! Chaos test of gfcache's two central promises, under repeated SIGKILLs of its processes:
//!
//! 1. it never serves a wrong byte: every body that arrives, complete or cut short, is checked
//!    byte for byte against the file it was asked for;
//! 2. it keeps serving: a killed cache is absorbed by the origin fallback (no ERROR, no dropped
//!    connection), a killed proxy only refuses or drops connections until its successor is
//!    ready, and every slot comes back.
//!
//! Four client threads loop over thirty files (0 B to 3 MiB, so that transfers span up to 48
//! chunks of the 64 KiB segment halves) through a supervisor with two memory caches filled from a
//! real HTTP origin, while the test thread SIGKILLs cache 0, cache 1 and the proxy in turn. Each
//! request is stamped with the kill rounds it overlapped, so that an outcome which only a kill can
//! excuse (a body cut short, a refused connection) is accepted only from a request that
//! overlapped such a kill.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CLIENTS: usize = 4;

/// Requests that must complete after each round's victim is back, per client.
const PROGRESS_PER_CLIENT: usize = 2;

/// A round never waits longer than this for the victim's process to be reaped, restarted, or
/// for the clients to make progress: past it the test fails rather than hangs.
const ROUND_DEADLINE: Duration = Duration::from_secs(20);

/// Client threads stop by themselves after this even if nobody tells them to.
const CLIENT_HARD_STOP: Duration = Duration::from_secs(90);

/// A reply that stalls this long is reported as a hang: every timeout of the design is 2 s.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Sizes around the boundaries that matter: empty, the 16 KiB first chunk sent with the header,
/// the 64 KiB chunk (half of a 128 KiB segment), the segment, and multi-chunk objects up to 3 MiB.
const SIZES: [usize; 30] = [
    0, 1, 15, 100, 511, 1_000, 4_095, 4_096, 4_097, 10_000, 16_383, 16_384, 16_385, 50_000, 65_535,
    65_536, 65_537, 100_000, 131_071, 131_072, 131_073, 200_000, 300_000, 500_000, 777_777,
    1_048_576, 1_500_000, 2_097_152, 2_500_001, 3_145_728,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Cache(u64),
    Proxy,
}

impl Victim {
    fn role(self) -> &'static str {
        match self {
            Victim::Cache(_) => "cache",
            Victim::Proxy => "proxy",
        }
    }

    fn slot(self) -> u64 {
        match self {
            Victim::Cache(slot) => slot,
            Victim::Proxy => 0,
        }
    }
}

/// Round `r` (1-based) kills `SCHEDULE[r - 1]`: three kills of each slot, never the same slot
/// twice in a row.
const SCHEDULE: [Victim; 9] = [
    Victim::Cache(0),
    Victim::Cache(1),
    Victim::Proxy,
    Victim::Cache(0),
    Victim::Cache(1),
    Victim::Proxy,
    Victim::Cache(0),
    Victim::Proxy,
    Victim::Cache(1),
];

fn victim_of(round: u64) -> Victim {
    SCHEDULE[(round - 1) as usize]
}

// ---------------------------------------------------------------------------------------------
// Content

/// Thirty files with distinct pseudo-random bytes (seeded by their index), so that a body of
/// another file, or of another offset, cannot pass for the right one.
fn chaos_content(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(index, &size)| {
            let path = format!("/d{}/f{index:02}-{size}.bin", index % 3);
            let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D);
            let mut body = Vec::with_capacity(size + 8);
            while body.len() < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.extend_from_slice(&x.to_le_bytes());
            }
            body.truncate(size);
            let file = dir.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir content");
            std::fs::write(&file, &body).expect("write content");
            (path, body)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One exchange, classified

/// What one GetFile exchange came to. Unlike `common::getfile`, this keeps the bytes of a body
/// cut short, so that they are checked too, and tells a refused connection from a dropped one.
#[derive(Clone, Debug)]
enum Outcome {
    /// OK, with every byte of the file.
    Complete,
    /// OK with the file's length, then the connection closed early; every byte that came was
    /// right.
    Aborted {
        received: usize,
        how: String,
    },
    /// A byte, a length or a header that does not belong to this file.
    Wrong(String),
    NotFound,
    Error,
    Invalid,
    /// The connection could not be made.
    Refused(String),
    /// The connection closed or was reset before a whole header came.
    Dropped(String),
    /// No byte came for `READ_TIMEOUT`.
    Stalled(String),
    /// A header that is not GetFile.
    Malformed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Complete => write!(f, "complete"),
            Outcome::Aborted { received, how } => {
                write!(f, "aborted after {received} right body bytes ({how})")
            }
            Outcome::Wrong(what) => write!(f, "WRONG: {what}"),
            Outcome::NotFound => write!(f, "FILE_NOT_FOUND"),
            Outcome::Error => write!(f, "ERROR"),
            Outcome::Invalid => write!(f, "INVALID"),
            Outcome::Refused(why) => write!(f, "refused: {why}"),
            Outcome::Dropped(why) => write!(f, "dropped before the header: {why}"),
            Outcome::Stalled(why) => write!(f, "stalled: {why}"),
            Outcome::Malformed(header) => write!(f, "malformed header {header}"),
        }
    }
}

fn fetch(addr: SocketAddr, path: &str, expected: &[u8], files: &[(String, Vec<u8>)]) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    if let Err(e) = stream.set_read_timeout(Some(READ_TIMEOUT)) {
        return Outcome::Dropped(format!("set_read_timeout: {e}"));
    }
    if let Err(e) = stream.write_all(format!("GETFILE GET {path}\r\n\r\n").as_bytes()) {
        return Outcome::Dropped(format!("send: {e}"));
    }
    let mut buf = Vec::with_capacity(expected.len() + 64);
    let mut piece = vec![0u8; 256 * 1024];
    let ending = loop {
        match stream.read(&mut piece) {
            Ok(0) => break "end of stream".to_string(),
            Ok(n) => buf.extend_from_slice(&piece[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Outcome::Stalled(format!(
                    "no byte for {READ_TIMEOUT:?} after {} bytes",
                    buf.len()
                ));
            }
            Err(e) => break format!("read error: {e}"),
        }
    };
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Outcome::Dropped(format!(
            "{ending} after {} bytes {:?}",
            buf.len(),
            String::from_utf8_lossy(&buf[..buf.len().min(60)])
        ));
    };
    let header = String::from_utf8_lossy(&buf[..end]).into_owned();
    let body = &buf[end + 4..];
    let parts: Vec<&str> = header.split(' ').collect();
    match parts.as_slice() {
        ["GETFILE", "OK", len] => {
            let Ok(len) = len.parse::<usize>() else {
                return Outcome::Malformed(header);
            };
            if len != expected.len() {
                return Outcome::Wrong(format!(
                    "announced {len} bytes, the file has {}",
                    expected.len()
                ));
            }
            if body.len() > len {
                return Outcome::Wrong(format!("{} bytes after an announced {len}", body.len()));
            }
            if let Some(at) = body
                .iter()
                .zip(expected)
                .position(|(got, want)| got != want)
            {
                return Outcome::Wrong(describe_difference(body, expected, at, files));
            }
            if body.len() < len {
                Outcome::Aborted {
                    received: body.len(),
                    how: ending,
                }
            } else {
                Outcome::Complete
            }
        }
        ["GETFILE", "FILE_NOT_FOUND"] if body.is_empty() => Outcome::NotFound,
        ["GETFILE", "ERROR"] if body.is_empty() => Outcome::Error,
        ["GETFILE", "INVALID"] if body.is_empty() => Outcome::Invalid,
        _ => Outcome::Malformed(format!("{header:?} with {} body bytes", body.len())),
    }
}

/// Where a body goes wrong, and whose bytes it carries instead if they belong to another file.
fn describe_difference(
    body: &[u8],
    expected: &[u8],
    at: usize,
    files: &[(String, Vec<u8>)],
) -> String {
    let window = |b: &[u8]| b[at..(at + 16).min(b.len())].to_vec();
    let owner = files
        .iter()
        .find(|(_, other)| other.len() >= body.len() && other[..body.len()] == *body)
        .map(|(p, _)| format!("; the body is a prefix of {p}"))
        .unwrap_or_default();
    format!(
        "{} of {} bytes came, first wrong byte at offset {at}: got {:02x?}, want {:02x?}{owner}",
        body.len(),
        expected.len(),
        window(body),
        window(expected)
    )
}

// ---------------------------------------------------------------------------------------------
// Rounds and requests

/// The kill rounds, as the clients see them: `begun` is set just before round r's SIGKILL,
/// `settled` once the victim is reaped, `recovered` once its successor runs and /readyz is 200.
#[derive(Default)]
struct Marks {
    begun: AtomicU64,
    settled: AtomicU64,
    recovered: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Snapshot {
    begun: u64,
    settled: u64,
    recovered: u64,
}

impl Marks {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            recovered: self.recovered.load(Ordering::SeqCst),
            settled: self.settled.load(Ordering::SeqCst),
            begun: self.begun.load(Ordering::SeqCst),
        }
    }
}

#[derive(Clone, Debug)]
struct Record {
    client: usize,
    file: usize,
    at_start: Snapshot,
    begun_at_end: u64,
    outcome: Outcome,
}

impl Record {
    /// Rounds whose kill came before this request ended and whose victim was not yet reaped
    /// when it started.
    fn kills_overlapped(&self) -> RangeInclusive<u64> {
        self.at_start.settled + 1..=self.begun_at_end
    }

    /// Rounds whose outage (kill to successor ready) overlapped this request.
    fn outages_overlapped(&self) -> RangeInclusive<u64> {
        self.at_start.recovered + 1..=self.begun_at_end
    }

    fn overlapped_proxy_outage(&self) -> bool {
        self.outages_overlapped()
            .any(|r| victim_of(r) == Victim::Proxy)
    }

    /// Why this outcome breaks a promise, if it does.
    fn violation(&self) -> Option<&'static str> {
        match &self.outcome {
            Outcome::Complete => None,
            Outcome::Wrong(_) => Some("wrong bytes"),
            Outcome::Aborted { .. } if self.kills_overlapped().is_empty() => {
                Some("a body cut short without any kill during the request")
            }
            Outcome::Aborted { .. } => None,
            Outcome::Error => Some("ERROR although the origin can always answer"),
            Outcome::NotFound => Some("FILE_NOT_FOUND for a file that exists"),
            Outcome::Invalid => Some("INVALID for a valid request"),
            Outcome::Malformed(_) => Some("a malformed header"),
            Outcome::Stalled(_) => Some("a hang"),
            Outcome::Refused(_) | Outcome::Dropped(_) if self.overlapped_proxy_outage() => None,
            Outcome::Refused(_) => Some("a refused connection while the proxy was up"),
            Outcome::Dropped(_) => Some("a connection dropped before the header by a live proxy"),
        }
    }

    fn describe(&self, files: &[(String, Vec<u8>)]) -> String {
        let kills: Vec<String> = self
            .kills_overlapped()
            .map(|r| format!("round {r} ({:?})", victim_of(r)))
            .collect();
        format!(
            "client {} GET {} ({} bytes): {}; marks when it started: {:?}, kills begun when it \
             ended: {}; overlapped kills: [{}]",
            self.client,
            files[self.file].0,
            files[self.file].1.len(),
            self.outcome,
            self.at_start,
            self.begun_at_end,
            kills.join(", ")
        )
    }
}

/// The client threads. Dropping them (also when the test panics) stops and joins them.
struct Clients {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(records: &Mutex<Vec<Record>>) -> MutexGuard<'_, Vec<Record>> {
    records
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Clients {
    fn start(addr: SocketAddr, files: &Arc<Vec<(String, Vec<u8>)>>, marks: &Arc<Marks>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CLIENTS)
            .map(|client| {
                let (stop, records) = (Arc::clone(&stop), Arc::clone(&records));
                let (files, marks) = (Arc::clone(files), Arc::clone(marks));
                std::thread::spawn(move || {
                    let hard_stop = Instant::now() + CLIENT_HARD_STOP;
                    // Each client starts elsewhere in the list and walks all of it with its own
                    // stride (each prime to the 30 files).
                    let stride = [1, 7, 11, 13][client % 4];
                    let mut file = client * 7 % files.len();
                    while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                        let at_start = marks.snapshot();
                        let (path, body) = &files[file];
                        let outcome = fetch(addr, path, body, &files);
                        let begun_at_end = marks.begun.load(Ordering::SeqCst);
                        let refused = matches!(outcome, Outcome::Refused(_));
                        lock(&records).push(Record {
                            client,
                            file,
                            at_start,
                            begun_at_end,
                            outcome,
                        });
                        if refused {
                            // Pacing only, so that a restarting proxy is not met by a busy loop;
                            // the same file is asked again.
                            std::thread::sleep(Duration::from_millis(5));
                        } else {
                            file = (file + stride) % files.len();
                        }
                    }
                })
            })
            .collect();
        Clients {
            stop,
            records,
            threads,
        }
    }

    fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        lock(&self.records)
    }

    fn finish(mut self) -> Vec<Record> {
        self.stop_and_join();
        let records = std::mem::take(&mut *lock(&self.records));
        records
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// What one round saw, for the assertions and the failure messages.
struct RoundReport {
    round: u64,
    victim: Victim,
    old_pid: i64,
    new_pid: i64,
    in_flight_at_kill: Option<f64>,
    down_for: Duration,
    /// Requests that started while the victim was down and completed.
    served_while_down: usize,
    completed_after_recovery: usize,
}

impl std::fmt::Display for RoundReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "round {}: SIGKILL {:?} pid {} ({} requests in flight), pid {} ready {:?} later; \
             {} requests started meanwhile completed, {} after",
            self.round,
            self.victim,
            self.old_pid,
            self.in_flight_at_kill
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            self.new_pid,
            self.down_for,
            self.served_while_down,
            self.completed_after_recovery
        )
    }
}

fn rounds_text(rounds: &[RoundReport]) -> String {
    rounds.iter().map(|r| format!("  {r}\n")).collect()
}

fn in_flight(run: &Run, victim: Victim) -> Option<f64> {
    let text = http_get(run.metrics, "/metrics").ok()?.1;
    metric_value(
        &text,
        &format!(
            "gfcache_in_flight_requests{{role=\"{}\",slot=\"{}\"}}",
            victim.role(),
            victim.slot()
        ),
    )
}

/// One round: SIGKILL the victim (preferably while it has a request in flight), wait until it is
/// reaped, restarted with a new pid and the run is ready again, then until every client has
/// completed requests that started after that.
fn chaos_round(
    run: &Run,
    marks: &Marks,
    clients: &Clients,
    round: u64,
    victim: Victim,
) -> RoundReport {
    let (role, slot) = (victim.role(), victim.slot());
    let before = run.child(role, slot);
    assert_eq!(before["state"], "running", "round {round}: {before}");
    let old_pid = before["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("round {round}: no pid in {before}"));

    // Best effort, not an assertion: aim the kill at a moment with a transfer under way.
    let aim_until = Instant::now() + Duration::from_secs(1);
    let mut in_flight_at_kill = in_flight(run, victim);
    while in_flight_at_kill.unwrap_or(0.0) < 1.0 && Instant::now() < aim_until {
        std::thread::sleep(Duration::from_millis(5));
        in_flight_at_kill = in_flight(run, victim);
    }

    marks.begun.store(round, Ordering::SeqCst);
    let killed_at = Instant::now();
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL)
        .unwrap_or_else(|e| panic!("round {round}: SIGKILL {role} {slot} (pid {old_pid}): {e}"));
    wait_for(
        &format!("round {round}: {role} {slot} (pid {old_pid}) to die"),
        ROUND_DEADLINE,
        || process_gone(old_pid as i32).then_some(()),
    );
    marks.settled.store(round, Ordering::SeqCst);

    let after = wait_restarted(run, role, slot, old_pid);
    wait_for(&format!("round {round}: /readyz"), ROUND_DEADLINE, || {
        run.ready().then_some(())
    });
    let down_for = killed_at.elapsed();
    marks.recovered.store(round, Ordering::SeqCst);
    let new_pid = after["pid"].as_i64().unwrap_or_default();

    let (served_while_down, completed_after_recovery) = wait_for(
        &format!("round {round}: every client to complete {PROGRESS_PER_CLIENT} requests after the restart of {role} {slot}"),
        ROUND_DEADLINE,
        || {
            let records = clients.records();
            let mut per_client = [0usize; CLIENTS];
            let mut while_down = 0;
            for r in records.iter().filter(|r| matches!(r.outcome, Outcome::Complete)) {
                if r.at_start.recovered >= round {
                    per_client[r.client] += 1;
                } else if r.at_start.begun == round {
                    while_down += 1;
                }
            }
            // Once every client completed a request started after the recovery, none is still
            // on a request started before: `while_down` is final.
            per_client
                .iter()
                .all(|&n| n >= PROGRESS_PER_CLIENT)
                .then(|| (while_down, per_client.iter().sum()))
        },
    );
    RoundReport {
        round,
        victim,
        old_pid,
        new_pid,
        in_flight_at_kill,
        down_for,
        served_while_down,
        completed_after_recovery,
    }
}

/// Every record keeps the promises of [`Record::violation`]; the message shows the first that
/// do not.
fn assert_no_broken_promise(
    records: &[Record],
    files: &[(String, Vec<u8>)],
    context: &str,
    rounds: &str,
) {
    let broken: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.violation()
                .map(|why| format!("{why}: {}", r.describe(files)))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {} requests broke a promise ({context}); the first ones:\n{}\n{rounds}",
        broken.len(),
        records.len(),
        broken
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One request per file, each of which must complete with the right bytes (the messages stay
/// short: no multi-MiB body is printed).
fn assert_every_file_complete(run: &Run, files: &[(String, Vec<u8>)], when: &str) {
    for (path, body) in files {
        let outcome = fetch(run.proxy, path, body, files);
        assert!(
            matches!(outcome, Outcome::Complete),
            "{path} {when}: {outcome}"
        );
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    metric_value(text, name_and_labels)
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{text}"))
}

#[test]
fn repeated_sigkills_never_serve_a_wrong_byte_and_serving_goes_on() {
    let test_started = Instant::now();
    let content = tempfile::tempdir().expect("content dir");
    let files = Arc::new(chaos_content(content.path()));
    let origin = Origin::serve(content.path());
    let mut setup = Setup::new(Backend::Memory);
    setup.origin = Some(origin.url());
    // Three kills per slot: far from a quarantine.
    setup.max_restarts = 20;
    let run = Run::start(setup);

    // One pass fills the caches, so that the kills meet hits as well as fills.
    assert_every_file_complete(&run, &files, "before any kill");

    let marks = Arc::new(Marks::default());
    let clients = Clients::start(run.proxy, &files, &marks);
    let mut rounds_seen = Vec::new();
    for (index, victim) in SCHEDULE.iter().enumerate() {
        rounds_seen.push(chaos_round(
            &run,
            &marks,
            &clients,
            index as u64 + 1,
            *victim,
        ));
    }
    let records = clients.finish();
    let chaos_took = test_started.elapsed();

    let count = |pred: &dyn Fn(&Record) -> bool| records.iter().filter(|r| pred(r)).count();
    let complete = count(&|r| matches!(r.outcome, Outcome::Complete));
    let aborted = count(&|r| matches!(r.outcome, Outcome::Aborted { .. }));
    let refused = count(&|r| matches!(r.outcome, Outcome::Refused(_)));
    let dropped = count(&|r| matches!(r.outcome, Outcome::Dropped(_)));
    let errors = count(&|r| matches!(r.outcome, Outcome::Error));
    let cut_by_cache_kill = count(&|r| {
        matches!(r.outcome, Outcome::Aborted { .. })
            && r.kills_overlapped().any(|k| victim_of(k) != Victim::Proxy)
    });
    let rounds = rounds_text(&rounds_seen);
    eprintln!(
        "chaos: {} requests in {chaos_took:?}: {complete} complete, {aborted} aborted \
         ({cut_by_cache_kill} across a cache kill), {refused} refused, {dropped} dropped, {errors} ERROR\n{rounds}",
        records.len()
    );

    // The key promise: no wrong byte, ever.
    let wrong: Vec<String> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Wrong(_)))
        .map(|r| r.describe(&files))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests got wrong bytes; the first ones:\n{}\n{rounds}",
        wrong.len(),
        records.len(),
        wrong.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    // ERROR never (the origin covers a dead cache), a cut body only across a kill, a refused or
    // dropped connection only across a proxy outage.
    assert_no_broken_promise(&records, &files, &format!("{errors} ERROR in all"), &rounds);
    assert!(complete > 0);
    // While a cache was down, its share went to the origin: requests kept completing.
    for round in rounds_seen.iter().filter(|r| r.victim != Victim::Proxy) {
        assert!(
            round.served_while_down > 0,
            "no request completed while {:?} was down:\n{rounds}",
            round.victim
        );
    }
    // After the chaos, every file is served whole.
    assert_every_file_complete(&run, &files, "after the chaos");

    // Every kill was a restart, and nothing else was.
    let status = run.status();
    let text = run.metrics_text();
    for victim in [Victim::Cache(0), Victim::Cache(1), Victim::Proxy] {
        let (role, slot) = (victim.role(), victim.slot());
        let kills = SCHEDULE.iter().filter(|v| **v == victim).count() as u64;
        let child = run.child(role, slot);
        assert_eq!(child["state"], "running", "{status}");
        assert_eq!(
            child["restarts"].as_u64(),
            Some(kills),
            "{role} {slot} was killed {kills} times: {status}"
        );
        let labels = format!("{{role=\"{role}\",slot=\"{slot}\"}}");
        assert_eq!(
            metric(&text, &format!("gfcache_child_restarts_total{labels}")),
            kills as f64,
            "{role} {slot}"
        );
        assert_eq!(metric(&text, &format!("gfcache_child_up{labels}")), 1.0);
    }
    assert_eq!(
        metric(&text, "gfcache_requests_total{status=\"error\"}"),
        0.0,
        "the proxy counted ERROR replies:\n{text}"
    );
    assert!(
        metric(&text, "gfcache_cache_lookups_total{result=\"hit\"}") > 0.0,
        "the caches served hits:\n{text}"
    );
    assert!(
        metric(&text, "gfcache_fills_total{result=\"stored\"}") > 0.0,
        "the caches were filled from the origin:\n{text}"
    );
    let log = run.log_text();
    assert_eq!(
        log.matches("child died").count(),
        SCHEDULE.len(),
        "one death logged per kill:\n{log}"
    );
    assert!(!log.contains("panicked"), "a process panicked:\n{log}");

    // A clean stop still removes every IPC object of the run.
    stop_and_check_nothing_left(run);
    eprintln!("chaos test took {:?}", test_started.elapsed());
}

/// With a read-only directory every cache serves the same files, so a killed cache's paths are
/// served by the next cache in rendezvous order, and a transfer in flight on the killed cache is
/// finished by another: no origin is needed, and no client notices.
#[test]
fn with_a_shared_directory_and_no_origin_cache_kills_cost_no_error() {
    let content = tempfile::tempdir().expect("content dir");
    let files = Arc::new(chaos_content(content.path()));
    let mut setup = Setup::new(Backend::Directory(content.path().to_path_buf()));
    setup.max_restarts = 20;
    let run = Run::start(setup);
    assert_every_file_complete(&run, &files, "before any kill");

    let marks = Arc::new(Marks::default());
    let clients = Clients::start(run.proxy, &files, &marks);
    // The cache rounds of SCHEDULE, keeping their numbers: the records judge a round by
    // `victim_of`, and no proxy is killed here.
    let cache_rounds: Vec<u64> = (1..=SCHEDULE.len() as u64)
        .filter(|&r| victim_of(r) != Victim::Proxy)
        .collect();
    let mut rounds_seen = Vec::new();
    for round in cache_rounds {
        rounds_seen.push(chaos_round(&run, &marks, &clients, round, victim_of(round)));
    }
    let records = clients.finish();
    let rounds = rounds_text(&rounds_seen);
    let complete = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Complete))
        .count();
    eprintln!(
        "failover chaos: {complete} of {} requests complete ({:.3}%)\n{rounds}",
        records.len(),
        100.0 * complete as f64 / records.len().max(1) as f64
    );
    assert_no_broken_promise(
        &records,
        &files,
        "no ERROR: the other cache answers",
        &rounds,
    );
    // A transfer whose cache died under it is finished by the other cache (same version of
    // the same file): not even a short body.
    assert_eq!(
        complete,
        records.len(),
        "every request should complete, transfers cut by a kill included\n{rounds}"
    );
    let text = run.metrics_text();
    assert_eq!(
        metric(&text, "gfcache_requests_total{status=\"error\"}"),
        0.0,
        "{text}"
    );
    assert!(metric(&text, "gfcache_failovers_total") > 0.0, "{text}");
    assert_every_file_complete(&run, &files, "after the kills");
    stop_and_check_nothing_left(run);
}
