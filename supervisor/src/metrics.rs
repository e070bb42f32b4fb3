//! Prometheus metrics: a [`StatsCollector`] that reads a [`Sample`] (the ipc stats area and the
//! supervisor's view of its children) at scrape time, and a tiny_http [`MetricsServer`] serving
//! `/metrics`, `/healthz` and `/readyz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use ipc::{Counter, Gauge, Histogram, HistogramSnapshot, SegmentCounts, HISTOGRAM_BOUNDS_SECONDS};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

/// "proxy" or "cache".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A proxy process.
    Proxy,
    /// A cache process.
    Cache,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Cache => "cache",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "proxy" => Ok(Role::Proxy),
            "cache" => Ok(Role::Cache),
            other => Err(format!("{other:?} is not a role (proxy or cache)")),
        }
    }
}

/// The stats of one member, copied out of the stats area.
#[derive(Clone, Debug, Default)]
pub struct MemberSample {
    /// Counters that are not 0.
    pub counters: HashMap<Counter, u64>,
    /// Gauges.
    pub gauges: HashMap<Gauge, u64>,
    /// Histograms.
    pub histograms: HashMap<Histogram, HistogramSnapshot>,
}

impl MemberSample {
    /// Copies the interesting parts of an ipc snapshot.
    pub fn from_snapshot(snapshot: &ipc::StatsSnapshot) -> Self {
        let counters = Counter::ALL
            .iter()
            .map(|&c| (c, snapshot.counter(c)))
            .collect();
        let gauges = Gauge::ALL.iter().map(|&g| (g, snapshot.gauge(g))).collect();
        let histograms = Histogram::ALL
            .iter()
            .map(|&h| (h, snapshot.histogram(h)))
            .collect();
        MemberSample {
            counters,
            gauges,
            histograms,
        }
    }
    fn counter(&self, c: Counter) -> u64 {
        self.counters.get(&c).copied().unwrap_or(0)
    }
    fn gauge(&self, g: Gauge) -> u64 {
        self.gauges.get(&g).copied().unwrap_or(0)
    }
}

/// The supervisor's view of one child slot.
#[derive(Clone, Debug)]
pub struct ChildSample {
    /// Its role.
    pub role: Role,
    /// Its slot.
    pub slot: u32,
    /// Running and ready.
    pub up: bool,
    /// Left down after crash-looping.
    pub quarantined: bool,
    /// Restarts of the slot.
    pub restarts: u64,
    /// Its stats.
    pub stats: MemberSample,
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Every child slot.
    pub children: Vec<ChildSample>,
    /// Segments by state.
    pub segments: SegmentCounts,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads rejected.
    pub reloads_failed: u64,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
}

/// Where the collector and the HTTP server get their data.
pub trait SampleSource: Send + Sync + 'static {
    /// A fresh sample.
    fn sample(&self) -> Sample;
    /// Whether the proxy and every cache that is not quarantined are ready.
    fn ready(&self) -> bool;
}

/// Requests served by a member: for a proxy its responses, for a cache its GETs answered.
pub fn requests_served(role: Role, stats: &MemberSample) -> u64 {
    let counters: &[Counter] = match role {
        Role::Proxy => &[
            Counter::RequestsOk,
            Counter::RequestsNotFound,
            Counter::RequestsError,
            Counter::RequestsInvalid,
            Counter::RequestsAborted,
        ],
        Role::Cache => &[
            Counter::CacheHits,
            Counter::CacheMisses,
            Counter::CacheErrors,
        ],
    };
    counters
        .iter()
        .map(|&c| stats.counter(c))
        .fold(0u64, u64::saturating_add)
}

/// One metric family; `families` has an arm for each, so none can be left out silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    RequestsTotal,
    CacheLookupsTotal,
    OriginFetchesTotal,
    OriginFallbacksTotal,
    CollapsedRequestsTotal,
    ResponseBytesTotal,
    FillsTotal,
    RequestDurationSeconds,
    InFlightRequests,
    Segments,
    ChildUp,
    ChildQuarantined,
    ChildRestartsTotal,
    CacheRequestsTotal,
    CacheSentBytesTotal,
    CacheFillsStoredTotal,
    BackendObjects,
    BackendBytes,
    BackendCapacityBytes,
    BackendEvictionsTotal,
    BackendInsertsTotal,
    SupervisorReloadsTotal,
    Ready,
}

/// One metric family: name, help, type and label names; the values come per scrape.
struct FamilySpec {
    family: Family,
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const FAMILIES: &[FamilySpec] = &[
    FamilySpec {
        family: Family::RequestsTotal,
        name: "gfcache_requests_total",
        help: "GetFile responses sent by the proxies, by status.",
        kind: MetricType::COUNTER,
        labels: &["status"],
    },
    FamilySpec {
        family: Family::CacheLookupsTotal,
        name: "gfcache_cache_lookups_total",
        help: "Cache lookups made by the proxies, by result.",
        kind: MetricType::COUNTER,
        labels: &["result"],
    },
    FamilySpec {
        family: Family::OriginFetchesTotal,
        name: "gfcache_origin_fetches_total",
        help: "Origin fetches made by the proxies, by result.",
        kind: MetricType::COUNTER,
        labels: &["result"],
    },
    FamilySpec {
        family: Family::OriginFallbacksTotal,
        name: "gfcache_origin_fallbacks_total",
        help: "Requests served by the origin because their cache was down or failed.",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    FamilySpec {
        family: Family::CollapsedRequestsTotal,
        name: "gfcache_collapsed_requests_total",
        help: "Requests that waited on another request's origin fetch.",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    FamilySpec {
        family: Family::ResponseBytesTotal,
        name: "gfcache_response_bytes_total",
        help: "Body bytes sent to clients.",
        kind: MetricType::COUNTER,
        labels: &[],
    },
    FamilySpec {
        family: Family::FillsTotal,
        name: "gfcache_fills_total",
        help: "Origin fills offered to the caches, by result.",
        kind: MetricType::COUNTER,
        labels: &["result"],
    },
    FamilySpec {
        family: Family::RequestDurationSeconds,
        name: "gfcache_request_duration_seconds",
        help: "Whole-request latency at the proxies, by outcome.",
        kind: MetricType::HISTOGRAM,
        labels: &["outcome"],
    },
    FamilySpec {
        family: Family::InFlightRequests,
        name: "gfcache_in_flight_requests",
        help: "Requests in progress, by process.",
        kind: MetricType::GAUGE,
        labels: &["role", "slot"],
    },
    FamilySpec {
        family: Family::Segments,
        name: "gfcache_segments",
        help: "Shared memory segments, by state.",
        kind: MetricType::GAUGE,
        labels: &["state"],
    },
    FamilySpec {
        family: Family::ChildUp,
        name: "gfcache_child_up",
        help: "1 if the child process of the slot is running and ready.",
        kind: MetricType::GAUGE,
        labels: &["role", "slot"],
    },
    FamilySpec {
        family: Family::ChildQuarantined,
        name: "gfcache_child_quarantined",
        help: "1 if the slot crash-looped and is left down until revived.",
        kind: MetricType::GAUGE,
        labels: &["role", "slot"],
    },
    FamilySpec {
        family: Family::ChildRestartsTotal,
        name: "gfcache_child_restarts_total",
        help: "Restarts of the slot's child process.",
        kind: MetricType::COUNTER,
        labels: &["role", "slot"],
    },
    FamilySpec {
        family: Family::CacheRequestsTotal,
        name: "gfcache_cache_requests_total",
        help: "GET requests answered by a cache process, by result.",
        kind: MetricType::COUNTER,
        labels: &["slot", "result"],
    },
    FamilySpec {
        family: Family::CacheSentBytesTotal,
        name: "gfcache_cache_sent_bytes_total",
        help: "Body bytes a cache process copied into segments.",
        kind: MetricType::COUNTER,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::CacheFillsStoredTotal,
        name: "gfcache_cache_fills_stored_total",
        help: "Origin fills stored by a cache process.",
        kind: MetricType::COUNTER,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::BackendObjects,
        name: "gfcache_backend_objects",
        help: "Objects held by the slot's backend.",
        kind: MetricType::GAUGE,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::BackendBytes,
        name: "gfcache_backend_bytes",
        help: "Bytes held by the slot's backend.",
        kind: MetricType::GAUGE,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::BackendCapacityBytes,
        name: "gfcache_backend_capacity_bytes",
        help: "Byte bound of the slot's backend (0: unbounded).",
        kind: MetricType::GAUGE,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::BackendEvictionsTotal,
        name: "gfcache_backend_evictions_total",
        help: "Objects evicted by the slot's backend since it opened.",
        kind: MetricType::COUNTER,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::BackendInsertsTotal,
        name: "gfcache_backend_inserts_total",
        help: "Objects stored by the slot's backend since it opened.",
        kind: MetricType::COUNTER,
        labels: &["slot"],
    },
    FamilySpec {
        family: Family::SupervisorReloadsTotal,
        name: "gfcache_supervisor_reloads_total",
        help: "Config reloads, by result.",
        kind: MetricType::COUNTER,
        labels: &["result"],
    },
    FamilySpec {
        family: Family::Ready,
        name: "gfcache_ready",
        help: "1 when the proxy and every cache that is not quarantined are ready.",
        kind: MetricType::GAUGE,
        labels: &[],
    },
];

/// Collects gfcache metrics from a [`SampleSource`] at scrape time.
pub struct StatsCollector<S> {
    source: Arc<S>,
    descs: Vec<Desc>,
}

impl<S: SampleSource> StatsCollector<S> {
    /// A collector over `source`.
    pub fn new(source: Arc<S>) -> Result<Self, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.to_string(),
                    f.help.to_string(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatsCollector { source, descs })
    }
}

impl<S: SampleSource> Collector for StatsCollector<S> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.source.sample())
    }
}

/// Builds every family from a sample.
pub fn families(sample: &Sample) -> Vec<MetricFamily> {
    let mut proxies = MemberSample::default();
    for child in sample.children.iter().filter(|c| c.role == Role::Proxy) {
        for (&c, &v) in &child.stats.counters {
            let total = proxies.counters.entry(c).or_insert(0);
            *total = total.saturating_add(v);
        }
        for (&h, snap) in &child.stats.histograms {
            merge_histogram(proxies.histograms.entry(h).or_default(), snap);
        }
    }
    let caches: Vec<&ChildSample> = sample
        .children
        .iter()
        .filter(|c| c.role == Role::Cache)
        .collect();
    let per_slot = |f: &dyn Fn(&ChildSample) -> f64| -> Vec<Point> {
        caches
            .iter()
            .map(|c| value_metric(&[("slot", c.slot.to_string())], f(c)))
            .collect()
    };
    let per_child = |f: &dyn Fn(&ChildSample) -> f64| -> Vec<Point> {
        sample
            .children
            .iter()
            .map(|c| {
                value_metric(
                    &[
                        ("role", c.role.as_str().to_string()),
                        ("slot", c.slot.to_string()),
                    ],
                    f(c),
                )
            })
            .collect()
    };
    let by = |label: &str, pairs: &[(&str, Counter)]| -> Vec<Point> {
        pairs
            .iter()
            .map(|(v, c)| value_metric(&[(label, v.to_string())], proxies.counter(*c) as f64))
            .collect()
    };
    let single = |v: f64| vec![value_metric(&[], v)];
    let flag = |b: bool| if b { 1.0 } else { 0.0 };

    let mut out = Vec::with_capacity(FAMILIES.len());
    for spec in FAMILIES {
        let metrics = match spec.family {
            Family::RequestsTotal => by(
                "status",
                &[
                    ("ok", Counter::RequestsOk),
                    ("file_not_found", Counter::RequestsNotFound),
                    ("error", Counter::RequestsError),
                    ("invalid", Counter::RequestsInvalid),
                    ("aborted", Counter::RequestsAborted),
                ],
            ),
            Family::CacheLookupsTotal => by(
                "result",
                &[
                    ("hit", Counter::LookupHits),
                    ("miss", Counter::LookupMisses),
                    ("error", Counter::LookupErrors),
                ],
            ),
            Family::OriginFetchesTotal => by(
                "result",
                &[
                    ("ok", Counter::OriginOk),
                    ("not_found", Counter::OriginNotFound),
                    ("error", Counter::OriginError),
                ],
            ),
            Family::OriginFallbacksTotal => single(proxies.counter(Counter::Fallbacks) as f64),
            Family::CollapsedRequestsTotal => single(proxies.counter(Counter::Collapsed) as f64),
            Family::ResponseBytesTotal => single(proxies.counter(Counter::ResponseBytes) as f64),
            Family::FillsTotal => by(
                "result",
                &[
                    ("stored", Counter::FillsStored),
                    ("dropped", Counter::FillsDropped),
                ],
            ),
            Family::RequestDurationSeconds => [
                ("hit", Histogram::RequestHit),
                ("miss", Histogram::RequestMiss),
                ("not_found", Histogram::RequestNotFound),
                ("failed", Histogram::RequestFailed),
            ]
            .iter()
            .map(|(outcome, h)| {
                histogram_metric(
                    &[("outcome", outcome.to_string())],
                    proxies.histograms.get(h),
                )
            })
            .collect(),
            Family::InFlightRequests => per_child(&|c| c.stats.gauge(Gauge::InFlight) as f64),
            Family::Segments => [
                ("free", sample.segments.free),
                ("busy", sample.segments.busy),
                ("quarantined", sample.segments.quarantined),
            ]
            .iter()
            .map(|(state, n)| value_metric(&[("state", state.to_string())], f64::from(*n)))
            .collect(),
            Family::ChildUp => per_child(&|c| flag(c.up)),
            Family::ChildQuarantined => per_child(&|c| flag(c.quarantined)),
            Family::ChildRestartsTotal => per_child(&|c| c.restarts as f64),
            Family::CacheRequestsTotal => caches
                .iter()
                .flat_map(|c| {
                    [
                        ("hit", Counter::CacheHits),
                        ("miss", Counter::CacheMisses),
                        ("error", Counter::CacheErrors),
                    ]
                    .map(|(result, counter)| {
                        value_metric(
                            &[("slot", c.slot.to_string()), ("result", result.to_string())],
                            c.stats.counter(counter) as f64,
                        )
                    })
                })
                .collect(),
            Family::CacheSentBytesTotal => {
                per_slot(&|c| c.stats.counter(Counter::CacheBytesOut) as f64)
            }
            Family::CacheFillsStoredTotal => {
                per_slot(&|c| c.stats.counter(Counter::CachePutsStored) as f64)
            }
            Family::BackendObjects => per_slot(&|c| c.stats.gauge(Gauge::BackendObjects) as f64),
            Family::BackendBytes => per_slot(&|c| c.stats.gauge(Gauge::BackendBytes) as f64),
            Family::BackendCapacityBytes => {
                per_slot(&|c| c.stats.gauge(Gauge::BackendCapacity) as f64)
            }
            Family::BackendEvictionsTotal => {
                per_slot(&|c| c.stats.gauge(Gauge::BackendEvictions) as f64)
            }
            Family::BackendInsertsTotal => {
                per_slot(&|c| c.stats.gauge(Gauge::BackendInserts) as f64)
            }
            Family::SupervisorReloadsTotal => vec![
                value_metric(&[("result", "ok".to_string())], sample.reloads_ok as f64),
                value_metric(
                    &[("result", "failed".to_string())],
                    sample.reloads_failed as f64,
                ),
            ],
            Family::Ready => single(flag(sample.ready)),
        };
        if metrics.is_empty() {
            continue;
        }
        let mut family = MetricFamily::default();
        family.set_name(spec.name.to_string());
        family.set_help(spec.help.to_string());
        family.set_field_type(spec.kind);
        let metrics = metrics.into_iter().map(|m| typed(m, spec.kind)).collect();
        family.set_metric(metrics);
        out.push(family);
    }
    out
}

/// A labelled value; [`typed`] turns it into a counter or a gauge as its family needs.
enum Point {
    Value(Vec<proto::LabelPair>, f64),
    Histogram(proto::Metric),
}

fn value_metric(labels: &[(&str, String)], value: f64) -> Point {
    Point::Value(label_pairs(labels), value)
}

fn typed(point: Point, kind: MetricType) -> proto::Metric {
    match point {
        Point::Histogram(m) => m,
        Point::Value(labels, value) => {
            let mut m = proto::Metric::default();
            m.set_label(labels);
            if kind == MetricType::COUNTER {
                let mut c = proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            } else {
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            m
        }
    }
}

fn label_pairs(labels: &[(&str, String)]) -> Vec<proto::LabelPair> {
    labels
        .iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.clone());
            pair
        })
        .collect()
}

fn merge_histogram(into: &mut HistogramSnapshot, from: &HistogramSnapshot) {
    if into.buckets.len() < from.buckets.len() {
        into.buckets.resize(from.buckets.len(), 0);
    }
    for (a, b) in into.buckets.iter_mut().zip(&from.buckets) {
        *a = a.saturating_add(*b);
    }
    into.count = into.count.saturating_add(from.count);
    into.sum_seconds += from.sum_seconds;
}

/// A histogram from non-cumulative ipc buckets: made cumulative; the count is the total of every
/// bucket (so the implied `+Inf` bucket is never below a finite one, even mid-update).
fn histogram_metric(labels: &[(&str, String)], snap: Option<&HistogramSnapshot>) -> Point {
    let empty = HistogramSnapshot::default();
    let snap = snap.unwrap_or(&empty);
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(HISTOGRAM_BOUNDS_SECONDS.len());
    for (i, &bound) in HISTOGRAM_BOUNDS_SECONDS.iter().enumerate() {
        cumulative = cumulative.saturating_add(snap.buckets.get(i).copied().unwrap_or(0));
        let mut b = proto::Bucket::default();
        b.set_upper_bound(bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let total: u64 = snap.buckets.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let mut h = proto::Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(total.max(cumulative));
    h.set_sample_sum(if snap.sum_seconds.is_finite() {
        snap.sum_seconds.max(0.0)
    } else {
        0.0
    });
    let mut m = proto::Metric::default();
    m.set_label(label_pairs(labels));
    m.set_histogram(h);
    Point::Histogram(m)
}

/// A registry with the gfcache collector and the process collector.
pub fn registry<S: SampleSource>(source: Arc<S>) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    registry.register(Box::new(StatsCollector::new(source)?))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// The Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The `/metrics`, `/healthz`, `/readyz` HTTP server on its own thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves until [`MetricsServer::stop`].
    pub fn start<S: SampleSource>(
        addr: SocketAddr,
        source: Arc<S>,
    ) -> Result<MetricsServer, crate::Error> {
        let registry =
            registry(Arc::clone(&source)).map_err(|e| crate::Error::Metrics(e.to_string()))?;
        let server = tiny_http::Server::http(addr)
            .map_err(|e| crate::Error::Metrics(format!("cannot listen on {addr}: {e}")))?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &registry, source.as_ref()))
            .map_err(|e| crate::Error::Metrics(format!("cannot start the metrics thread: {e}")))?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve<S: SampleSource>(server: &tiny_http::Server, registry: &Registry, source: &S) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let text_plain =
            |ct: &str| tiny_http::Header::from_bytes(&b"Content-Type"[..], ct.as_bytes()).ok();
        let (code, body, content_type) = match (request.method(), path.as_str()) {
            (tiny_http::Method::Get, "/metrics") => match render(registry) {
                Ok(text) => (200, text, prometheus::TEXT_FORMAT),
                Err(e) => (
                    500,
                    format!("cannot render metrics: {e}\n"),
                    "text/plain; charset=utf-8",
                ),
            },
            (tiny_http::Method::Get, "/healthz") => {
                (200, "ok\n".to_string(), "text/plain; charset=utf-8")
            }
            (tiny_http::Method::Get, "/readyz") => {
                if source.ready() {
                    (200, "ready\n".to_string(), "text/plain; charset=utf-8")
                } else {
                    (503, "not ready\n".to_string(), "text/plain; charset=utf-8")
                }
            }
            (tiny_http::Method::Get, _) => (
                404,
                "not found: try /metrics, /healthz or /readyz\n".to_string(),
                "text/plain; charset=utf-8",
            ),
            _ => (
                405,
                "method not allowed\n".to_string(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut response = tiny_http::Response::from_string(body).with_status_code(code);
        if let Some(header) = text_plain(content_type) {
            response = response.with_header(header);
        }
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "metrics client went away");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Sample);
    impl SampleSource for Fixed {
        fn sample(&self) -> Sample {
            self.0.clone()
        }
        fn ready(&self) -> bool {
            self.0.ready
        }
    }

    fn sample() -> Sample {
        let mut proxy = MemberSample::default();
        proxy.counters.insert(Counter::RequestsOk, 7);
        proxy.counters.insert(Counter::LookupHits, 5);
        proxy.counters.insert(Counter::ResponseBytes, 1234);
        let mut buckets = vec![0u64; HISTOGRAM_BOUNDS_SECONDS.len() + 1];
        buckets[2] = 3;
        buckets[5] = 4;
        proxy.histograms.insert(
            Histogram::RequestHit,
            HistogramSnapshot {
                buckets,
                count: 7,
                sum_seconds: 0.01,
            },
        );
        let mut cache = MemberSample::default();
        cache.counters.insert(Counter::CacheHits, 5);
        cache.gauges.insert(Gauge::BackendObjects, 3);
        cache.gauges.insert(Gauge::BackendBytes, 4096);
        Sample {
            children: vec![
                ChildSample {
                    role: Role::Proxy,
                    slot: 0,
                    up: true,
                    quarantined: false,
                    restarts: 1,
                    stats: proxy,
                },
                ChildSample {
                    role: Role::Cache,
                    slot: 0,
                    up: true,
                    quarantined: false,
                    restarts: 0,
                    stats: cache.clone(),
                },
                ChildSample {
                    role: Role::Cache,
                    slot: 1,
                    up: false,
                    quarantined: true,
                    restarts: 6,
                    stats: cache,
                },
            ],
            segments: SegmentCounts {
                free: 14,
                busy: 2,
                quarantined: 0,
            },
            reloads_ok: 1,
            reloads_failed: 0,
            ready: true,
        }
    }

    fn rendered() -> String {
        let reg = registry(Arc::new(Fixed(sample()))).unwrap();
        render(&reg).unwrap()
    }

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let text = rendered();
        assert!(
            text.contains("gfcache_requests_total{status=\"ok\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_child_restarts_total{role=\"cache\",slot=\"1\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_child_up{role=\"cache\",slot=\"1\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_backend_objects{slot=\"0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_segments{state=\"busy\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "gfcache_request_duration_seconds_bucket{outcome=\"hit\",le=\"0.00025\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gfcache_request_duration_seconds_bucket{outcome=\"hit\",le=\"0.0025\"} 7"
            ),
            "{text}"
        );
        assert!(
            text.contains("gfcache_request_duration_seconds_bucket{outcome=\"hit\",le=\"+Inf\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_request_duration_seconds_count{outcome=\"hit\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gfcache_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# HELP gfcache_response_bytes_total"),
            "{text}"
        );
        assert!(text.contains("process_"), "{text}");
    }

    #[test]
    fn rendered_text_passes_promtool() {
        let text = rendered();
        match crate::promtool::check_metrics(&text) {
            Ok(()) => {}
            Err(crate::promtool::PromtoolError::Missing) if std::env::var_os("CI").is_none() => {
                eprintln!("note: promtool not on PATH; skipping the promtool check (it is required when CI is set)");
            }
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    #[test]
    fn http_endpoints_answer() {
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(Fixed(sample())))
                .unwrap();
        let addr = server.addr();
        let get = |path: &str| -> (u16, String) {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            let code = out
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (code, out)
        };
        assert_eq!(get("/healthz").0, 200);
        assert_eq!(get("/readyz").0, 200);
        let (code, body) = get("/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("gfcache_requests_total"), "{body}");
        assert_eq!(get("/nope").0, 404);
        server.stop();
    }
}
