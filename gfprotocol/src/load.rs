//! The load generator behind `gfclient load`: fixed concurrency, paths from a workload file,
//! optional byte-for-byte verification, latency percentiles from an HDR histogram.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{Client, Error, Status};

/// Highest latency the histogram records (longer ones are clamped), in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Period of the live progress line.
const PROGRESS_PERIOD: Duration = Duration::from_millis(500);
/// Compared per read while verifying.
const VERIFY_CHUNK: usize = 64 * 1024;

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many requests in total.
    Requests(u64),
    /// After this long (requests in flight finish).
    Duration(Duration),
}

/// Settings of a load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `host:port` of the server.
    pub server: String,
    /// Paths to request, in turn.
    pub paths: Vec<String>,
    /// Concurrent clients.
    pub threads: usize,
    /// When to stop.
    pub limit: Limit,
    /// Compare every body with `DIR/path`.
    pub verify: Option<PathBuf>,
    /// Timeouts.
    pub client: Client,
    /// Show a live progress line on stderr.
    pub progress: bool,
}

impl LoadConfig {
    /// Whether a progress line makes sense (stderr is a terminal).
    pub fn stderr_is_terminal() -> bool {
        io::stderr().is_terminal()
    }
}

/// Reads a workload file: one path per line; blank lines and `#` comments are skipped.
pub fn read_workload(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let paths: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if paths.is_empty() {
        return Err(Error::Config(format!("{}: no paths", path.display())));
    }
    Ok(paths)
}

/// The result of a load run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Requests made.
    pub requests: u64,
    /// Answered OK with the whole body.
    pub ok: u64,
    /// Answered FILE_NOT_FOUND.
    pub not_found: u64,
    /// Answered ERROR.
    pub error: u64,
    /// Answered INVALID.
    pub invalid: u64,
    /// Failed exchanges (no connection, malformed response, short body, timeout...).
    pub failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<&'static str, u64>,
    /// Responses that differed from the verify directory.
    pub verify_failed: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Wall-clock length of the run.
    pub seconds: f64,
    /// Concurrent clients.
    pub threads: usize,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: [u64; 5],
}

impl Summary {
    /// Requests per second.
    pub fn req_per_s(&self) -> f64 {
        per_second(self.requests as f64, self.seconds)
    }

    /// Body megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        per_second(self.bytes as f64 / 1e6, self.seconds)
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let [p50, p90, p99, p999, max] = self.latency_us;
        serde_json::json!({
            "requests": self.requests,
            "ok": self.ok,
            "not_found": self.not_found,
            "error": self.error,
            "invalid": self.invalid,
            "failed": self.failed,
            "failures": self.failures,
            "verify_failed": self.verify_failed,
            "bytes": self.bytes,
            "threads": self.threads,
            "seconds": self.seconds,
            "req_per_s": self.req_per_s(),
            "mb_per_s": self.mb_per_s(),
            "p50_us": p50,
            "p90_us": p90,
            "p99_us": p99,
            "p999_us": p999,
            "max_us": max,
        })
    }

    /// A human-readable report, several lines.
    pub fn render(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latency_us;
        let mut out = format!(
            "requests {} in {:.2} s with {} threads: {:.1} req/s, {:.2} MB/s\n\
             status   ok {}  not_found {}  error {}  invalid {}  failed {}  verify_failed {}\n\
             latency  p50 {p50} us  p90 {p90} us  p99 {p99} us  p999 {p999} us  max {max} us\n",
            self.requests,
            self.seconds,
            self.threads,
            self.req_per_s(),
            self.mb_per_s(),
            self.ok,
            self.not_found,
            self.error,
            self.invalid,
            self.failed,
            self.verify_failed,
        );
        if !self.failures.is_empty() {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            out.push_str(&format!("failures {}\n", kinds.join("  ")));
        }
        out
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// Counters shared by the clients and the progress line.
#[derive(Default)]
struct Live {
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    finished: AtomicBool,
}

/// What one client thread saw.
struct Tally {
    summary: Summary,
    histogram: Histogram<u64>,
}

impl Tally {
    fn new() -> Result<Tally, Error> {
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .map_err(|e| Error::Config(format!("histogram: {e}")))?;
        Ok(Tally {
            summary: Summary::default(),
            histogram,
        })
    }
}

/// Runs the load and returns the summary.
pub fn run(config: &LoadConfig) -> Result<Summary, Error> {
    if config.threads == 0 || config.paths.is_empty() {
        return Err(Error::Config(
            "need at least one thread and one path".into(),
        ));
    }
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), start));
    let tallies = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..config.threads {
            scope.spawn(|| match Tally::new() {
                Ok(mut tally) => {
                    client_loop(config, &live, start, &mut tally);
                    if let Ok(mut all) = tallies.lock() {
                        all.push(tally);
                    }
                }
                Err(e) => {
                    if let Ok(mut slot) = first_error.lock() {
                        *slot = Some(e);
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    live.finished.store(true, Ordering::SeqCst);
    if let Some(handle) = progress {
        handle.thread().unpark();
        let _ = handle.join();
    }
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let tallies = tallies.into_inner().unwrap_or_default();
    Ok(merge(tallies, seconds, config.threads))
}

fn merge(tallies: Vec<Tally>, seconds: f64, threads: usize) -> Summary {
    let mut summary = Summary {
        seconds,
        threads,
        ..Summary::default()
    };
    let mut histogram: Option<Histogram<u64>> = None;
    for tally in tallies {
        let s = tally.summary;
        summary.requests += s.requests;
        summary.ok += s.ok;
        summary.not_found += s.not_found;
        summary.error += s.error;
        summary.invalid += s.invalid;
        summary.failed += s.failed;
        summary.verify_failed += s.verify_failed;
        summary.bytes += s.bytes;
        for (kind, n) in s.failures {
            *summary.failures.entry(kind).or_default() += n;
        }
        match &mut histogram {
            Some(h) => {
                // Same bounds everywhere: adding cannot fail.
                let _ = h.add(&tally.histogram);
            }
            None => histogram = Some(tally.histogram),
        }
    }
    if let Some(h) = histogram.filter(|h| !h.is_empty()) {
        summary.latency_us = [
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
        ];
    }
    summary
}

/// Claims the next request number, or `None` when the run is over.
fn next_request(config: &LoadConfig, live: &Live, start: Instant) -> Option<u64> {
    match config.limit {
        Limit::Requests(total) => {
            let n = live.claimed.fetch_add(1, Ordering::Relaxed);
            (n < total).then_some(n)
        }
        Limit::Duration(length) => {
            (start.elapsed() < length).then(|| live.claimed.fetch_add(1, Ordering::Relaxed))
        }
    }
}

fn client_loop(config: &LoadConfig, live: &Live, start: Instant, tally: &mut Tally) {
    while let Some(n) = next_request(config, live, start) {
        let index = usize::try_from(n % config.paths.len() as u64).unwrap_or(0);
        let Some(path) = config.paths.get(index) else {
            return;
        };
        let began = Instant::now();
        let result = one_request(config, path);
        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally
            .histogram
            .saturating_record(micros.clamp(1, MAX_LATENCY_US));
        let s = &mut tally.summary;
        s.requests += 1;
        match result {
            Ok((outcome, verified)) => {
                match outcome.status {
                    Status::Ok => s.ok += 1,
                    Status::FileNotFound => s.not_found += 1,
                    Status::Error => s.error += 1,
                    Status::Invalid => s.invalid += 1,
                }
                s.bytes += outcome.received;
                live.bytes.fetch_add(outcome.received, Ordering::Relaxed);
                if !verified {
                    s.verify_failed += 1;
                }
            }
            Err((e, received)) => {
                s.failed += 1;
                s.bytes += received;
                live.bytes.fetch_add(received, Ordering::Relaxed);
                live.failed.fetch_add(1, Ordering::Relaxed);
                *s.failures.entry(failure_kind(&e)).or_default() += 1;
                tracing::debug!(%path, error = %e, "request failed");
            }
        }
        live.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A short name for a failure, for the summary.
pub fn failure_kind(error: &Error) -> &'static str {
    match error {
        Error::Connect { .. } => "connect",
        Error::Malformed(_) => "malformed",
        Error::UnexpectedMessage { .. } => "unexpected",
        Error::ShortBody { .. } => "short_body",
        Error::Output(_) => "output",
        Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => "timeout",
        Error::Io(_) => "io",
        Error::Config(_) => "config",
    }
}

/// One request: the outcome and whether it matched the verify directory (true without one).
fn one_request(
    config: &LoadConfig,
    path: &str,
) -> Result<(crate::FetchOutcome, bool), (Error, u64)> {
    match &config.verify {
        None => {
            let mut sink = Counter(0);
            config
                .client
                .fetch(&config.server, path, &mut sink)
                .map(|o| (o, true))
                .map_err(|e| (e, sink.0))
        }
        Some(dir) => {
            let expected = open_expected(dir, path);
            let mut checker = Verifier::new(expected);
            let result = config.client.fetch(&config.server, path, &mut checker);
            match result {
                Ok(outcome) => {
                    let matches = match outcome.status {
                        Status::Ok => checker.finish(),
                        // A file the server says does not exist must not exist.
                        Status::FileNotFound => checker.expected.is_none(),
                        _ => true,
                    };
                    Ok((outcome, matches))
                }
                Err(e) => Err((e, checker.seen)),
            }
        }
    }
}

fn open_expected(dir: &Path, path: &str) -> Option<BufReader<File>> {
    let file = File::open(dir.join(path.trim_start_matches('/'))).ok()?;
    file.metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|_| BufReader::with_capacity(VERIFY_CHUNK, file))
}

/// Counts bytes and drops them.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compares the body with the expected file as it streams in.
struct Verifier {
    expected: Option<BufReader<File>>,
    scratch: Vec<u8>,
    seen: u64,
    mismatch: bool,
}

impl Verifier {
    fn new(expected: Option<BufReader<File>>) -> Verifier {
        Verifier {
            mismatch: expected.is_none(),
            expected,
            scratch: Vec::new(),
            seen: 0,
        }
    }

    /// Whether the body matched the whole file.
    fn finish(mut self) -> bool {
        if self.mismatch {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            self.expected.as_mut().map(|f| f.read(&mut byte)),
            Some(Ok(0))
        )
    }
}

impl Write for Verifier {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.seen += buf.len() as u64;
        if !self.mismatch {
            if let Some(file) = self.expected.as_mut() {
                self.scratch.resize(buf.len(), 0);
                let same = file.read_exact(&mut self.scratch).is_ok() && self.scratch == buf;
                self.mismatch = !same;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn spawn_progress(live: Arc<Live>, start: Instant) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut stderr = io::stderr();
        let mut last_print = Instant::now();
        while !live.finished.load(Ordering::SeqCst) {
            thread::park_timeout(PROGRESS_PERIOD.saturating_sub(last_print.elapsed()));
            if last_print.elapsed() < PROGRESS_PERIOD {
                continue;
            }
            last_print = Instant::now();
            let seconds = start.elapsed().as_secs_f64();
            let done = live.done.load(Ordering::Relaxed);
            let bytes = live.bytes.load(Ordering::Relaxed);
            let _ = write!(
                stderr,
                "\r{done} requests  {:.0} req/s  {:.1} MB/s  failed {}   ",
                per_second(done as f64, seconds),
                per_second(bytes as f64 / 1e6, seconds),
                live.failed.load(Ordering::Relaxed),
            );
            let _ = stderr.flush();
        }
        let _ = write!(stderr, "\r\x1b[K");
        let _ = stderr.flush();
    })
}
