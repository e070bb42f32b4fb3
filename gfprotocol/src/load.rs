//! The load generator behind `gfclient load`, event-driven like wrk: `connections` requests
//! are kept in flight over a few threads, each with its own `mio::Poll` and its share of the
//! connections. Every request has its own connection: a non-blocking connect, the request,
//! the response header (parsed by the strict [`ResponseDecoder`](crate::codec::ResponseDecoder))
//! and the body, then a close and the next connect. Paths come from a workload file in turn;
//! bodies can be verified byte for byte as they stream in; latencies (connect start to the last
//! byte of the answer) go to HDR histograms, one per thread, merged at the end.
//!
//! A failure (refused, reset, no local port left, timeout, malformed or short answer) is
//! counted by kind and by reason; none stops the run.

mod event_loop;
mod exchange;

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::codec::encode_request;
use crate::{Client, Error};
use event_loop::Tally;
use exchange::Limits;

/// Highest latency the histogram records (longer ones are clamped), in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Period of the live progress line.
const PROGRESS_PERIOD: Duration = Duration::from_millis(500);

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
    /// `host:port` of the server, resolved once at the start (the first address is used).
    pub server: String,
    /// Paths to request, in turn.
    pub paths: Vec<String>,
    /// Connections kept in flight, one request each.
    pub connections: usize,
    /// Event-loop threads sharing the connections (at most `connections` are used).
    pub threads: usize,
    /// When to stop.
    pub limit: Limit,
    /// Compare every body with `DIR/path`.
    pub verify: Option<PathBuf>,
    /// Timeouts: `connect_timeout` from the start of a connect until the request is written,
    /// `io_timeout` for the longest silence after that.
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
    /// Failures by kind: connect, timeout, io, malformed, unexpected, short_body.
    pub failures: BTreeMap<&'static str, u64>,
    /// Failures by reason (the kind and the error, e.g. `connect: Connection refused (os
    /// error 111)`).
    pub failure_reasons: BTreeMap<String, u64>,
    /// Responses that differed from the verify directory.
    pub verify_failed: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Wall-clock length of the run.
    pub seconds: f64,
    /// Event-loop threads used.
    pub threads: usize,
    /// Connections kept in flight.
    pub connections: usize,
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
            "failure_reasons": self.failure_reasons,
            "verify_failed": self.verify_failed,
            "bytes": self.bytes,
            "threads": self.threads,
            "connections": self.connections,
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
            "requests {} in {:.2} s with {} connections on {} threads: {:.1} req/s, {:.2} MB/s\n\
             status   ok {}  not_found {}  error {}  invalid {}  failed {}  verify_failed {}\n\
             latency  p50 {p50} us  p90 {p90} us  p99 {p99} us  p999 {p999} us  max {max} us\n",
            self.requests,
            self.seconds,
            self.connections,
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
            for (reason, n) in &self.failure_reasons {
                out.push_str(&format!("  {n} x {reason}\n"));
            }
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

/// Counters shared by the load threads and the progress line (the threads add to them a few
/// times a second, not per request).
#[derive(Default)]
struct Live {
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    finished: AtomicBool,
}

/// What every load thread shares: the resolved address, the encoded requests, the limit.
struct Plan<'a> {
    config: &'a LoadConfig,
    addr: SocketAddr,
    /// `GETFILE GET <path>\r\n\r\n` for each path, encoded once.
    requests: Vec<Vec<u8>>,
    limits: Limits,
    live: &'a Live,
    start: Instant,
}

impl Plan<'_> {
    /// Claims the next request (an index into the paths), or `None` when the run is over.
    fn next_request(&self) -> Option<usize> {
        let n = match self.config.limit {
            Limit::Requests(total) => {
                let n = self.live.claimed.fetch_add(1, Ordering::Relaxed);
                (n < total).then_some(n)?
            }
            Limit::Duration(length) => (self.start.elapsed() < length)
                .then(|| self.live.claimed.fetch_add(1, Ordering::Relaxed))?,
        };
        usize::try_from(n % self.requests.len() as u64).ok()
    }

    fn request(&self, index: usize) -> &[u8] {
        self.requests
            .get(index)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn path(&self, index: usize) -> &str {
        self.config
            .paths
            .get(index)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Runs the load and returns the summary.
pub fn run(config: &LoadConfig) -> Result<Summary, Error> {
    if config.connections == 0 || config.threads == 0 || config.paths.is_empty() {
        return Err(Error::Config(
            "need at least one connection, one thread and one path".into(),
        ));
    }
    let requests = config
        .paths
        .iter()
        .map(|path| {
            encode_request(path).map_err(|e| Error::Config(format!("workload path {path:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addr = resolve(&config.server)?;
    let threads = config.threads.min(config.connections);
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let plan = Plan {
        config,
        addr,
        requests,
        limits: Limits {
            connect: config.client.connect_timeout,
            io: config.client.io_timeout,
        },
        live: &live,
        start,
    };
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&live), start));
    let results: Vec<Result<Tally, Error>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share =
                    config.connections / threads + usize::from(t < config.connections % threads);
                let plan = &plan;
                scope.spawn(move || event_loop::run(plan, share))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("a load thread panicked".into())))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    live.finished.store(true, Ordering::SeqCst);
    if let Some(handle) = progress {
        handle.thread().unpark();
        let _ = handle.join();
    }
    let tallies = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut summary = merge(tallies, seconds);
    summary.threads = threads;
    summary.connections = config.connections;
    Ok(summary)
}

/// The server's first address.
fn resolve(server: &str) -> Result<SocketAddr, Error> {
    let connect_error = |source: io::Error| Error::Connect {
        addr: server.to_owned(),
        source,
    };
    server
        .to_socket_addrs()
        .map_err(connect_error)?
        .next()
        .ok_or_else(|| connect_error(io::Error::new(io::ErrorKind::InvalidInput, "no address")))
}

fn merge(tallies: Vec<Tally>, seconds: f64) -> Summary {
    let mut summary = Summary {
        seconds,
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
        for (reason, n) in s.failure_reasons {
            *summary.failure_reasons.entry(reason).or_default() += n;
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
