//! Prometheus metrics: a [`StatsCollector`] that reads a [`Sample`] (the ipc stats area and the
//! supervisor's view of its children) at scrape time, and a tiny_http [`MetricsServer`] serving
//! `/metrics`, `/healthz` and `/readyz`, and HTTP `PURGE` ([`crate::purge::PurgeService`]) when
//! started with one.
//!
//! The supervisor names no proxy or cache metric: it publishes the schemas that proxy-core
//! ([`proxy_core::metrics::SCHEMA`]) and cache-backends ([`cache_backends::metrics::SCHEMA`])
//! give for their stats blocks, and adds its own families (children, segments, reloads,
//! readiness).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use ipc::{
    Cell, HistogramSnapshot, LabelValue, MetricKind, SegmentCounts, StatsSnapshot,
    HISTOGRAM_BOUNDS_SECONDS,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::health::{Health, RunState};
use crate::purge::{HttpAnswer, PurgeResult, PurgeService, PurgeTarget};
use crate::status::ShownState;
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

impl Role {
    /// Both roles, in the order their families are shown.
    pub const ALL: [Role; 2] = [Role::Proxy, Role::Cache];

    /// The schema of this role's stats blocks, from the crate that writes them.
    pub fn schema(self) -> &'static [ipc::Family] {
        match self {
            Role::Proxy => proxy_core::metrics::SCHEMA,
            Role::Cache => cache_backends::metrics::SCHEMA,
        }
    }
}

/// The supervisor's view of one child slot.
#[derive(Clone, Debug)]
pub struct ChildSample {
    /// Its role.
    pub role: Role,
    /// Its slot.
    pub slot: u32,
    /// Its state, as `status` shows it.
    pub state: ShownState,
    /// Running and its member state is Ready.
    pub up: bool,
    /// Kept restarting past `max_restarts` because it is the last of its role.
    pub crash_looping: bool,
    /// Restarts of the slot.
    pub restarts: u64,
    /// Its stats block.
    pub stats: StatsSnapshot,
}

/// Everything one scrape shows.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Every child slot.
    pub children: Vec<ChildSample>,
    /// Segments by state.
    pub segments: SegmentCounts,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads rejected.
    pub reloads_failed: u64,
    /// Ready, degraded or not ready.
    pub health: Health,
}

/// Where the collector and the HTTP server get their data.
pub trait SampleSource: Send + Sync + 'static {
    /// A fresh sample.
    fn sample(&self) -> Sample;
    /// Whether the run serves, and what does not answer.
    fn health(&self) -> Health;
}

/// Requests served by a member: for a proxy its responses, for a cache its GETs answered (the
/// counters are named by the crate that writes them).
pub fn requests_served(role: Role, stats: &StatsSnapshot) -> u64 {
    let counters = match role {
        Role::Proxy => proxy_core::metrics::REQUESTS_SERVED,
        Role::Cache => cache_backends::metrics::REQUESTS_SERVED,
    };
    counters
        .iter()
        .map(|&c| stats.counter(c))
        .fold(0u64, u64::saturating_add)
}

/// One family of the supervisor's own; `supervisor_points` has an arm for each, so none can be
/// left out silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    Segments,
    ChildUp,
    ChildState,
    ChildQuarantined,
    ChildCrashLooping,
    ChildRestartsTotal,
    SupervisorReloadsTotal,
    Ready,
    Degraded,
}

/// A family of the supervisor's own: name, help, type and label names.
struct OwnSpec {
    family: Own,
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
}

const OWN_FAMILIES: &[OwnSpec] = &[
    OwnSpec {
        family: Own::Segments,
        name: "gfcache_segments",
        help: "Shared memory segments, by state.",
        kind: MetricKind::Gauge,
        labels: &["state"],
    },
    OwnSpec {
        family: Own::ChildUp,
        name: "gfcache_child_up",
        help: "1 if the child process of the slot is running and ready.",
        kind: MetricKind::Gauge,
        labels: &["role", "slot"],
    },
    OwnSpec {
        family: Own::ChildState,
        name: "gfcache_child_state",
        help: "1 for the state the slot is in (as `gfsupervisor status` shows it), 0 for the others.",
        kind: MetricKind::Gauge,
        labels: &["role", "slot", "state"],
    },
    OwnSpec {
        family: Own::ChildQuarantined,
        name: "gfcache_child_quarantined",
        help: "1 if the slot crash-looped and is left down until revived.",
        kind: MetricKind::Gauge,
        labels: &["role", "slot"],
    },
    OwnSpec {
        family: Own::ChildCrashLooping,
        name: "gfcache_child_crash_looping",
        help: "1 if the slot crash-loops but is the last proxy, so it is restarted instead of quarantined.",
        kind: MetricKind::Gauge,
        labels: &["role", "slot"],
    },
    OwnSpec {
        family: Own::ChildRestartsTotal,
        name: "gfcache_child_restarts_total",
        help: "Restarts of the slot's child process.",
        kind: MetricKind::Counter,
        labels: &["role", "slot"],
    },
    OwnSpec {
        family: Own::SupervisorReloadsTotal,
        name: "gfcache_supervisor_reloads_total",
        help: "Config reloads, by result.",
        kind: MetricKind::Counter,
        labels: &["result"],
    },
    OwnSpec {
        family: Own::Ready,
        name: "gfcache_ready",
        help: "1 when /readyz answers 200: a proxy and a cache (or the origin) can answer.",
        kind: MetricKind::Gauge,
        labels: &[],
    },
    OwnSpec {
        family: Own::Degraded,
        name: "gfcache_degraded",
        help: "1 when the run serves but some slot does not answer (quarantined, unavailable, restarting).",
        kind: MetricKind::Gauge,
        labels: &[],
    },
];

/// Name, help, type and label names of every family, schema families first, each name once.
fn descriptions() -> Vec<(&'static str, &'static str, MetricKind, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, &'static str, MetricKind, Vec<&'static str>)> = Vec::new();
    for family in Role::ALL.iter().flat_map(|role| role.schema()) {
        if !out.iter().any(|(name, ..)| *name == family.name) {
            out.push((
                family.name,
                family.help,
                family.kind,
                family.label_names().collect(),
            ));
        }
    }
    for own in OWN_FAMILIES {
        out.push((own.name, own.help, own.kind, own.labels.to_vec()));
    }
    out
}

/// Collects gfcache metrics from a [`SampleSource`] at scrape time.
pub struct StatsCollector<S> {
    source: Arc<S>,
    descs: Vec<Desc>,
}

impl<S: SampleSource> StatsCollector<S> {
    /// A collector over `source`.
    pub fn new(source: Arc<S>) -> Result<Self, prometheus::Error> {
        let descs = descriptions()
            .into_iter()
            .map(|(name, help, _, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
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

/// Builds every family from a sample: the schema families of each role, then the supervisor's.
pub fn families(sample: &Sample) -> Vec<MetricFamily> {
    let mut out: Vec<MetricFamily> = Vec::new();
    for role in Role::ALL {
        let members: Vec<&ChildSample> =
            sample.children.iter().filter(|c| c.role == role).collect();
        for family in role.schema() {
            let points: Vec<Point> = family
                .series
                .iter()
                .flat_map(|series| series_points(series, &members))
                .collect();
            push_family(&mut out, family.name, family.help, family.kind, points);
        }
    }
    for own in OWN_FAMILIES {
        let points = own_points(own.family, sample);
        push_family(&mut out, own.name, own.help, own.kind, points);
    }
    out
}

/// Adds points to the family of that name, creating it at the end if it is new (the in-flight
/// gauge, for one, comes from both schemas).
fn push_family(
    out: &mut Vec<MetricFamily>,
    name: &str,
    help: &str,
    kind: MetricKind,
    points: Vec<Point>,
) {
    if points.is_empty() {
        return;
    }
    let kind = metric_type(kind);
    let metrics = points.into_iter().map(|p| typed(p, kind));
    if let Some(family) = out.iter_mut().find(|f| f.name() == name) {
        family.mut_metric().extend(metrics);
        return;
    }
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics.collect());
    out.push(family);
}

fn metric_type(kind: MetricKind) -> MetricType {
    match kind {
        MetricKind::Counter => MetricType::COUNTER,
        MetricKind::Gauge => MetricType::GAUGE,
        MetricKind::Histogram => MetricType::HISTOGRAM,
    }
}

/// The points of one schema series: one per member when it has a slot label, else the sum over
/// the members.
fn series_points(series: &ipc::Series, members: &[&ChildSample]) -> Vec<Point> {
    let per_member = series
        .labels
        .iter()
        .any(|label| label.value == LabelValue::Slot);
    let labels = |slot: Option<u32>| -> Vec<(&str, String)> {
        series
            .labels
            .iter()
            .map(|label| {
                let value = match label.value {
                    LabelValue::Fixed(value) => value.to_string(),
                    LabelValue::Slot => slot.map(|s| s.to_string()).unwrap_or_default(),
                };
                (label.name, value)
            })
            .collect()
    };
    if per_member {
        return members
            .iter()
            .map(|member| cell_point(&labels(Some(member.slot)), series.cell, &[&member.stats]))
            .collect();
    }
    let blocks: Vec<&StatsSnapshot> = members.iter().map(|m| &m.stats).collect();
    vec![cell_point(&labels(None), series.cell, &blocks)]
}

/// The value of one cell summed over `blocks`.
fn cell_point(labels: &[(&str, String)], cell: Cell, blocks: &[&StatsSnapshot]) -> Point {
    let sum = |read: &dyn Fn(&StatsSnapshot) -> u64| {
        blocks
            .iter()
            .map(|b| read(b))
            .fold(0u64, u64::saturating_add) as f64
    };
    match cell {
        Cell::Counter(id) => value_metric(labels, sum(&|b| b.counter(id))),
        Cell::Gauge(id) => value_metric(labels, sum(&|b| b.gauge(id))),
        Cell::Histogram(id) => {
            let mut merged = HistogramSnapshot::empty();
            for block in blocks {
                merged.merge(&block.histogram(id));
            }
            histogram_metric(labels, &merged)
        }
    }
}

fn own_points(family: Own, sample: &Sample) -> Vec<Point> {
    let per_child = |f: &dyn Fn(&ChildSample) -> f64| -> Vec<Point> {
        sample
            .children
            .iter()
            .map(|c| value_metric(&child_labels(c), f(c)))
            .collect()
    };
    let single = |v: f64| vec![value_metric(&[], v)];
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    match family {
        Own::Segments => [
            ("free", sample.segments.free),
            ("busy", sample.segments.busy),
            ("quarantined", sample.segments.quarantined),
        ]
        .iter()
        .map(|(state, n)| value_metric(&[("state", state.to_string())], f64::from(*n)))
        .collect(),
        Own::ChildUp => per_child(&|c| flag(c.up)),
        Own::ChildState => sample
            .children
            .iter()
            .flat_map(|c| {
                ShownState::ALL.iter().map(move |&state| {
                    let mut labels = child_labels(c);
                    labels.push(("state", state.as_str().to_string()));
                    value_metric(&labels, flag(c.state == state))
                })
            })
            .collect(),
        Own::ChildQuarantined => per_child(&|c| flag(c.state == ShownState::Quarantined)),
        Own::ChildCrashLooping => per_child(&|c| flag(c.crash_looping)),
        Own::ChildRestartsTotal => per_child(&|c| c.restarts as f64),
        Own::SupervisorReloadsTotal => vec![
            value_metric(&[("result", "ok".to_string())], sample.reloads_ok as f64),
            value_metric(
                &[("result", "failed".to_string())],
                sample.reloads_failed as f64,
            ),
        ],
        Own::Ready => single(flag(sample.health.state.serving())),
        Own::Degraded => single(flag(sample.health.state == RunState::Degraded)),
    }
}

fn child_labels(c: &ChildSample) -> Vec<(&'static str, String)> {
    vec![
        ("role", c.role.as_str().to_string()),
        ("slot", c.slot.to_string()),
    ]
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

/// A histogram from non-cumulative ipc buckets: made cumulative; the count is the total of every
/// bucket (so the implied `+Inf` bucket is never below a finite one, even mid-update).
fn histogram_metric(labels: &[(&str, String)], snap: &HistogramSnapshot) -> Point {
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

/// The supervisor's HTTP PURGE counts, `gfcache_purge_requests_total{result}`.
struct PurgeCollector {
    service: Arc<PurgeService>,
    desc: Desc,
}

const PURGE_FAMILY: &str = "gfcache_purge_requests_total";
const PURGE_HELP: &str = "HTTP PURGE requests answered on the metrics listener, by result (gfsupervisor purge is counted by the caches, in gfcache_cache_purges_total).";

impl PurgeCollector {
    fn new(service: Arc<PurgeService>) -> Result<PurgeCollector, prometheus::Error> {
        let desc = Desc::new(
            PURGE_FAMILY.to_string(),
            PURGE_HELP.to_string(),
            vec!["result".to_string()],
            HashMap::new(),
        )?;
        Ok(PurgeCollector { service, desc })
    }
}

impl Collector for PurgeCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }
    fn collect(&self) -> Vec<MetricFamily> {
        let points = PurgeResult::ALL
            .iter()
            .map(|&result| {
                value_metric(
                    &[("result", result.as_str().to_string())],
                    self.service.count(result) as f64,
                )
            })
            .collect();
        let mut out = Vec::new();
        push_family(
            &mut out,
            PURGE_FAMILY,
            PURGE_HELP,
            MetricKind::Counter,
            points,
        );
        out
    }
}

/// The Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Admitted PURGEs waiting for the purge thread; one more is answered 503.
const PURGE_QUEUE: usize = 64;

/// The `/metrics`, `/healthz`, `/readyz` HTTP server on its own thread, and HTTP `PURGE` on a
/// second one (a purge waits for the caches; a scrape or a probe must not wait for it).
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    purge_thread: Option<JoinHandle<()>>,
    purge: Option<Arc<PurgeService>>,
    addr: SocketAddr,
}

/// A PURGE the metrics thread admitted, for the purge thread.
type PurgeJob = (tiny_http::Request, PurgeTarget);

impl MetricsServer {
    /// Binds `addr` and serves until [`MetricsServer::stop`]; `PURGE` is answered 405.
    pub fn start<S: SampleSource>(
        addr: SocketAddr,
        source: Arc<S>,
    ) -> Result<MetricsServer, crate::Error> {
        MetricsServer::start_with_purge(addr, source, None)
    }

    /// The same, answering HTTP `PURGE` through `purge` (and counting it in `/metrics`).
    pub fn start_with_purge<S: SampleSource>(
        addr: SocketAddr,
        source: Arc<S>,
        purge: Option<Arc<PurgeService>>,
    ) -> Result<MetricsServer, crate::Error> {
        let metrics_error = |e: prometheus::Error| crate::Error::Metrics(e.to_string());
        let registry = registry(Arc::clone(&source)).map_err(metrics_error)?;
        if let Some(service) = &purge {
            registry
                .register(Box::new(
                    PurgeCollector::new(Arc::clone(service)).map_err(metrics_error)?,
                ))
                .map_err(metrics_error)?;
        }
        let server = tiny_http::Server::http(addr)
            .map_err(|e| crate::Error::Metrics(format!("cannot listen on {addr}: {e}")))?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let (purge_thread, purging) = match &purge {
            Some(service) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<PurgeJob>(PURGE_QUEUE);
                let service_for_serve = Arc::clone(service);
                let service = Arc::clone(service);
                let thread = std::thread::Builder::new()
                    .name("purge".into())
                    .spawn(move || {
                        for (request, target) in rx {
                            respond(request, service.execute(&target));
                        }
                    })
                    .map_err(|e| {
                        crate::Error::Metrics(format!("cannot start the purge thread: {e}"))
                    })?;
                (Some(thread), Some((service_for_serve, tx)))
            }
            None => (None, None),
        };
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &registry, source.as_ref(), purging))
            .map_err(|e| crate::Error::Metrics(format!("cannot start the metrics thread: {e}")))?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            purge_thread,
            purge,
            addr: bound,
        })
    }

    /// The purge service, when it answers HTTP `PURGE`.
    pub fn purge_service(&self) -> Option<&Arc<PurgeService>> {
        self.purge.as_ref()
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
        // The metrics thread held the queue's sender: the purge thread ends after the purges
        // already queued.
        if let Some(thread) = self.purge_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn text_answer(status: u16, body: &str) -> HttpAnswer {
    HttpAnswer {
        status,
        body: body.to_string(),
        content_type: "text/plain; charset=utf-8",
    }
}

fn respond(request: tiny_http::Request, answer: HttpAnswer) {
    respond_with(request, answer, None);
}

fn respond_with(request: tiny_http::Request, answer: HttpAnswer, allow: Option<&str>) {
    let mut response =
        tiny_http::Response::from_string(answer.body).with_status_code(answer.status);
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
    };
    if let Some(h) = header("Content-Type", answer.content_type) {
        response = response.with_header(h);
    }
    if let Some(h) = allow.and_then(|methods| header("Allow", methods)) {
        response = response.with_header(h);
    }
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "metrics client went away");
    }
}

fn serve<S: SampleSource>(
    server: &tiny_http::Server,
    registry: &Registry,
    source: &S,
    purging: Option<(Arc<PurgeService>, std::sync::mpsc::SyncSender<PurgeJob>)>,
) {
    let allow = if purging.is_some() {
        "GET, PURGE"
    } else {
        "GET"
    };
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let answer = match (request.method(), path.as_str()) {
            (tiny_http::Method::Get, "/metrics") => match render(registry) {
                Ok(text) => HttpAnswer {
                    status: 200,
                    body: text,
                    content_type: prometheus::TEXT_FORMAT,
                },
                Err(e) => text_answer(500, &format!("cannot render metrics: {e}\n")),
            },
            (tiny_http::Method::Get, "/healthz") => text_answer(200, "ok\n"),
            (tiny_http::Method::Get, "/readyz") => {
                let health = source.health();
                let code = if health.state.serving() { 200 } else { 503 };
                text_answer(code, &format!("{}\n", health.summary()))
            }
            (tiny_http::Method::Get, _) => {
                text_answer(404, "not found: try /metrics, /healthz or /readyz\n")
            }
            (method, _) if method.as_str() == "PURGE" => match &purging {
                Some((service, queue)) => {
                    let peer = request.remote_addr().map(SocketAddr::ip);
                    let url = request.url().to_string();
                    match service.admit(peer, &url) {
                        Ok(target) => {
                            if let Err(e) = queue.try_send((request, target)) {
                                let (std::sync::mpsc::TrySendError::Full((request, _))
                                | std::sync::mpsc::TrySendError::Disconnected((request, _))) = e;
                                respond(request, service.busy());
                            }
                            continue;
                        }
                        Err(refusal) => refusal,
                    }
                }
                None => text_answer(405, "method not allowed: this listener does not purge\n"),
            },
            _ => text_answer(405, "method not allowed\n"),
        };
        let allow = (answer.status == 405).then_some(allow);
        respond_with(request, answer, allow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use cache_backends::metrics as cache;
    use proxy_core::metrics as proxy;

    struct Fixed(Sample);
    impl SampleSource for Fixed {
        fn sample(&self) -> Sample {
            self.0.clone()
        }
        fn health(&self) -> Health {
            self.0.health.clone()
        }
    }

    fn child(
        role: Role,
        slot: u32,
        state: ShownState,
        restarts: u64,
        stats: &StatsSnapshot,
    ) -> ChildSample {
        ChildSample {
            role,
            slot,
            state,
            up: state == ShownState::Running,
            crash_looping: false,
            restarts,
            stats: stats.clone(),
        }
    }

    fn sample() -> Sample {
        let mut proxy_block = StatsSnapshot::default();
        proxy_block.set_counter(proxy::Counter::RequestsOk.id(), 7);
        proxy_block.set_counter(proxy::Counter::LookupHits.id(), 5);
        proxy_block.set_counter(proxy::Counter::ResponseBytes.id(), 1234);
        proxy_block.set_gauge(proxy::Gauge::InFlight.id(), 2);
        let mut buckets = vec![0u64; HISTOGRAM_BOUNDS_SECONDS.len() + 1];
        buckets[2] = 3;
        buckets[5] = 4;
        proxy_block.set_histogram(
            proxy::Histogram::RequestHit.id(),
            HistogramSnapshot {
                buckets,
                count: 7,
                sum_seconds: 0.01,
            },
        );
        let mut cache_block = StatsSnapshot::default();
        cache_block.set_counter(cache::Counter::Hits.id(), 5);
        cache_block.set_gauge(cache::Gauge::BackendObjects.id(), 3);
        cache_block.set_gauge(cache::Gauge::BackendBytes.id(), 4096);
        cache_block.set_gauge(cache::Gauge::InFlight.id(), 1);
        let children = vec![
            child(Role::Proxy, 0, ShownState::Running, 1, &proxy_block),
            child(Role::Proxy, 1, ShownState::Running, 0, &proxy_block),
            child(Role::Cache, 0, ShownState::Running, 0, &cache_block),
            child(Role::Cache, 1, ShownState::Quarantined, 6, &cache_block),
        ];
        let slots: Vec<crate::health::SlotView> = children
            .iter()
            .map(|c| crate::health::SlotView {
                role: c.role,
                slot: c.slot,
                state: c.state,
                answering: c.up,
                settled: true,
            })
            .collect();
        Sample {
            children,
            segments: SegmentCounts {
                free: 14,
                busy: 2,
                quarantined: 0,
            },
            reloads_ok: 1,
            reloads_failed: 0,
            health: Health::assess(&slots, false),
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
            text.contains("gfcache_requests_total{status=\"ok\"} 14"),
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
                "gfcache_request_duration_seconds_bucket{outcome=\"hit\",le=\"0.00025\"} 6"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gfcache_request_duration_seconds_bucket{outcome=\"hit\",le=\"0.0025\"} 14"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "gfcache_request_duration_seconds_bucket{outcome=\"hit\",le=\"+Inf\"} 14"
            ),
            "{text}"
        );
        assert!(
            text.contains("gfcache_request_duration_seconds_count{outcome=\"hit\"} 14"),
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
    fn proxies_are_summed_caches_and_in_flight_are_per_slot() {
        let text = rendered();
        assert!(
            text.contains("gfcache_requests_total{status=\"ok\"} 14"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_cache_lookups_total{result=\"hit\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_cache_requests_total{slot=\"1\",result=\"hit\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_in_flight_requests{role=\"proxy\",slot=\"1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_in_flight_requests{role=\"cache\",slot=\"0\"} 1"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE gfcache_in_flight_requests gauge")
                .count(),
            1,
            "one family from both schemas: {text}"
        );
        assert!(
            text.contains("gfcache_request_duration_seconds_count{outcome=\"hit\"} 14"),
            "{text}"
        );
    }

    #[test]
    fn the_run_state_and_each_child_state_are_shown() {
        let text = rendered();
        assert!(text.contains("gfcache_ready 1"), "{text}");
        assert!(text.contains("gfcache_degraded 1"), "{text}");
        assert!(
            text.contains("gfcache_child_state{role=\"cache\",slot=\"1\",state=\"quarantined\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_child_state{role=\"cache\",slot=\"1\",state=\"running\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_child_quarantined{role=\"cache\",slot=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gfcache_child_crash_looping{role=\"proxy\",slot=\"0\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn families_of_one_name_agree_across_the_schemas() {
        let mut seen: HashMap<&str, (&str, MetricKind, Vec<&str>)> = HashMap::new();
        for family in Role::ALL.iter().flat_map(|role| role.schema()) {
            let this = (
                family.help,
                family.kind,
                family.label_names().collect::<Vec<_>>(),
            );
            if let Some(earlier) = seen.get(family.name) {
                assert_eq!(
                    earlier, &this,
                    "{} differs between the schemas",
                    family.name
                );
            }
            seen.insert(family.name, this);
        }
        for own in OWN_FAMILIES {
            assert!(
                !seen.contains_key(own.name),
                "{} is defined twice",
                own.name
            );
        }
        assert!(seen.keys().all(|name| name.starts_with("gfcache_")));
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

    fn exchange(addr: SocketAddr, head: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "{head}\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }

    #[test]
    fn purge_is_answered_counted_and_passes_promtool() {
        let config = ipc::RegionConfig {
            segments: 2,
            segment_size: 16384,
            cache_slots: 1,
            proxy_slots: 1,
        };
        let region = Arc::new(ipc::Region::create(&config, None).unwrap());
        let service = Arc::new(PurgeService::new(
            region,
            crate::purge::PurgeAccess::default(),
            false,
        ));
        let server = MetricsServer::start_with_purge(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Fixed(sample())),
            Some(service),
        )
        .unwrap();
        let addr = server.addr();
        let (code, reply) = exchange(addr, "PURGE /a HTTP/1.0");
        assert_eq!(code, 200, "{reply}");
        assert!(reply.contains("\"purged\":0"), "{reply}");
        assert!(reply.contains("application/json"), "{reply}");
        let (code, reply) = exchange(addr, "PURGE /a%2Fb HTTP/1.0");
        assert_eq!(code, 400, "{reply}");
        assert!(reply.contains("encoded slash"), "{reply}");
        let (code, reply) = exchange(addr, "POST /metrics HTTP/1.0");
        assert_eq!(code, 405, "{reply}");
        assert!(reply.contains("Allow: GET, PURGE"), "{reply}");
        let (code, metrics) = exchange(addr, "GET /metrics HTTP/1.0");
        assert_eq!(code, 200);
        assert!(
            metrics.contains("gfcache_purge_requests_total{result=\"ok\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("gfcache_purge_requests_total{result=\"bad_request\"} 1"),
            "{metrics}"
        );
        let body = metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        match crate::promtool::check_metrics(body) {
            Ok(()) => {}
            Err(crate::promtool::PromtoolError::Missing) if std::env::var_os("CI").is_none() => {}
            Err(e) => panic!("{e}\n{body}"),
        }
        server.stop();
    }

    #[test]
    fn without_a_purge_service_purge_is_not_allowed() {
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), Arc::new(Fixed(sample())))
                .unwrap();
        let (code, reply) = exchange(server.addr(), "PURGE /a HTTP/1.0");
        assert_eq!(code, 405, "{reply}");
        assert!(reply.contains("Allow: GET\r\n"), "{reply}");
        server.stop();
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
        let (code, body) = get("/readyz");
        assert_eq!(code, 200);
        assert!(body.contains("degraded: cache 1 quarantined"), "{body}");
        let (code, body) = get("/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("gfcache_requests_total"), "{body}");
        assert_eq!(get("/nope").0, 404);
        server.stop();
    }
}
