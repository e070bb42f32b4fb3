//! The stats area: one block per member (proxy and cache slots), counters, gauges and
//! fixed-bucket histograms as relaxed atomics. Writers never lock; the supervisor copies a
//! block at scrape time. The blocks live in the region, indexed by slot, so a restarted child
//! keeps adding to the numbers of its predecessor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::region::{Member, Region};

/// Counter slots per block (room to add counters without changing the layout).
const COUNTER_SLOTS: usize = 32;
/// Gauge slots per block.
const GAUGE_SLOTS: usize = 16;
/// Histogram slots per block.
const HISTOGRAM_SLOTS: usize = 8;
/// Buckets per histogram: one per bound plus `+Inf`, rounded up.
const BUCKET_SLOTS: usize = 18;

/// Upper bounds of the histogram buckets in seconds (the `+Inf` bucket is implied).
pub const HISTOGRAM_BOUNDS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, for integer comparisons on the hot path.
const BOUNDS_NANOS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

const _: () = assert!(BOUNDS_NANOS.len() < BUCKET_SLOTS);

/// One histogram in shared memory.
#[repr(C)]
pub(crate) struct HistogramArea {
    buckets: [AtomicU64; BUCKET_SLOTS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// One member's stats block in shared memory.
#[repr(C)]
pub(crate) struct StatsArea {
    counters: [AtomicU64; COUNTER_SLOTS],
    gauges: [AtomicU64; GAUGE_SLOTS],
    histograms: [HistogramArea; HISTOGRAM_SLOTS],
}

/// Monotonic counters, one set per member. Unused ones stay 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counter {
    /// Proxy: responses OK.
    RequestsOk,
    /// Proxy: responses FILE_NOT_FOUND.
    RequestsNotFound,
    /// Proxy: responses ERROR.
    RequestsError,
    /// Proxy: responses INVALID.
    RequestsInvalid,
    /// Proxy: connections closed after an OK header (short body).
    RequestsAborted,
    /// Proxy: cache lookups answered found.
    LookupHits,
    /// Proxy: cache lookups answered not found.
    LookupMisses,
    /// Proxy: cache lookups that failed or timed out, or skipped a down cache.
    LookupErrors,
    /// Proxy: origin fetches answered 200.
    OriginOk,
    /// Proxy: origin fetches answered 404/410.
    OriginNotFound,
    /// Proxy: origin fetches that failed.
    OriginError,
    /// Proxy: requests served by the origin because their cache was down or failed.
    Fallbacks,
    /// Proxy: requests that waited on another request's origin fetch.
    Collapsed,
    /// Proxy: body bytes sent to clients.
    ResponseBytes,
    /// Proxy: fills committed by the cache.
    FillsStored,
    /// Proxy: fills dropped (declined, too slow, too large, failed).
    FillsDropped,
    /// Cache: GETs served found.
    CacheHits,
    /// Cache: GETs answered not found.
    CacheMisses,
    /// Cache: GETs or PUTs that failed.
    CacheErrors,
    /// Cache: body bytes copied into segments.
    CacheBytesOut,
    /// Cache: PUTs stored.
    CachePutsStored,
}

impl Counter {
    /// Every counter, in layout order.
    pub const ALL: &'static [Counter] = &[
        Counter::RequestsOk,
        Counter::RequestsNotFound,
        Counter::RequestsError,
        Counter::RequestsInvalid,
        Counter::RequestsAborted,
        Counter::LookupHits,
        Counter::LookupMisses,
        Counter::LookupErrors,
        Counter::OriginOk,
        Counter::OriginNotFound,
        Counter::OriginError,
        Counter::Fallbacks,
        Counter::Collapsed,
        Counter::ResponseBytes,
        Counter::FillsStored,
        Counter::FillsDropped,
        Counter::CacheHits,
        Counter::CacheMisses,
        Counter::CacheErrors,
        Counter::CacheBytesOut,
        Counter::CachePutsStored,
    ];

    /// Its slot in a stats block (stable: part of the byte layout).
    fn slot(self) -> usize {
        self as usize
    }
}

/// Values set, not added (backend sizes, copied from the backend's stats periodically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Gauge {
    /// Backend: objects held.
    BackendObjects,
    /// Backend: bytes held.
    BackendBytes,
    /// Backend: capacity in bytes (0 = unbounded).
    BackendCapacity,
    /// Backend: evictions since the backend opened.
    BackendEvictions,
    /// Backend: inserts since the backend opened.
    BackendInserts,
    /// Requests in flight in this member.
    InFlight,
}

impl Gauge {
    /// Every gauge, in layout order.
    pub const ALL: &'static [Gauge] = &[
        Gauge::BackendObjects,
        Gauge::BackendBytes,
        Gauge::BackendCapacity,
        Gauge::BackendEvictions,
        Gauge::BackendInserts,
        Gauge::InFlight,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// Latency histograms (fixed buckets, [`HISTOGRAM_BOUNDS_SECONDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Histogram {
    /// Proxy: whole request, served from a cache.
    RequestHit,
    /// Proxy: whole request, served from the origin.
    RequestMiss,
    /// Proxy: whole request, not found.
    RequestNotFound,
    /// Proxy: whole request, ERROR / INVALID / aborted.
    RequestFailed,
}

impl Histogram {
    /// Every histogram, in layout order.
    pub const ALL: &'static [Histogram] = &[
        Histogram::RequestHit,
        Histogram::RequestMiss,
        Histogram::RequestNotFound,
        Histogram::RequestFailed,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

const _: () = assert!((Counter::CachePutsStored as usize) < COUNTER_SLOTS);
const _: () = assert!((Gauge::InFlight as usize) < GAUGE_SLOTS);
const _: () = assert!((Histogram::RequestFailed as usize) < HISTOGRAM_SLOTS);

/// Writing handle on one member's stats block (relaxed atomics, no locks). A handle for a
/// member outside the region's slots writes nowhere.
pub struct StatsBlock<'r> {
    area: Option<&'r StatsArea>,
}

impl StatsBlock<'_> {
    /// Adds to a counter.
    pub fn add(&self, counter: Counter, n: u64) {
        if let Some(cell) = self.area.and_then(|area| area.counters.get(counter.slot())) {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets a gauge.
    pub fn set(&self, gauge: Gauge, value: u64) {
        if let Some(cell) = self.area.and_then(|area| area.gauges.get(gauge.slot())) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    /// Records one observation.
    pub fn observe(&self, histogram: Histogram, elapsed: Duration) {
        let Some(area) = self
            .area
            .and_then(|area| area.histograms.get(histogram.slot()))
        else {
            return;
        };
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BOUNDS_NANOS.len());
        if let Some(cell) = area.buckets.get(bucket) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        area.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        area.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A copy of one member's stats.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    counters: Vec<u64>,
    gauges: Vec<u64>,
    histograms: Vec<HistogramSnapshot>,
}

/// A copy of one histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Non-cumulative count per bucket, one per bound in [`HISTOGRAM_BOUNDS_SECONDS`] plus `+Inf`.
    pub buckets: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
}

impl StatsSnapshot {
    /// A counter's value.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters.get(counter.slot()).copied().unwrap_or(0)
    }

    /// A gauge's value.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges.get(gauge.slot()).copied().unwrap_or(0)
    }

    /// A histogram's value.
    pub fn histogram(&self, histogram: Histogram) -> HistogramSnapshot {
        self.histograms
            .get(histogram.slot())
            .cloned()
            .unwrap_or_else(|| HistogramSnapshot {
                buckets: vec![0; HISTOGRAM_BOUNDS_SECONDS.len() + 1],
                count: 0,
                sum_seconds: 0.0,
            })
    }
}

fn snapshot_histogram(area: &HistogramArea) -> HistogramSnapshot {
    let buckets: Vec<u64> = area
        .buckets
        .iter()
        .take(HISTOGRAM_BOUNDS_SECONDS.len() + 1)
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    // Writers bump the bucket before the count: taking the count from the buckets keeps the
    // snapshot self-consistent even mid-update.
    let count = buckets.iter().sum();
    let sum_seconds = area.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    HistogramSnapshot {
        buckets,
        count,
        sum_seconds,
    }
}

impl Region {
    /// The stats block of a member, for writing.
    pub fn stats(&self, member: Member) -> StatsBlock<'_> {
        StatsBlock {
            area: self.stats_area(member),
        }
    }

    /// A consistent-enough copy of a member's stats.
    pub fn stats_snapshot(&self, member: Member) -> StatsSnapshot {
        let Some(area) = self.stats_area(member) else {
            return StatsSnapshot::default();
        };
        StatsSnapshot {
            counters: area
                .counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            gauges: area
                .gauges
                .iter()
                .map(|g| g.load(Ordering::Relaxed))
                .collect(),
            histograms: area.histograms.iter().map(snapshot_histogram).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheSlot, ProxySlot, RegionConfig};

    fn region() -> Region {
        Region::create(
            &RegionConfig {
                segments: 1,
                segment_size: 8192,
                cache_slots: 2,
                proxy_slots: 2,
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn bounds_agree() {
        for (seconds, nanos) in HISTOGRAM_BOUNDS_SECONDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
        assert_eq!(HISTOGRAM_BOUNDS_SECONDS.len(), BOUNDS_NANOS.len());
    }

    #[test]
    fn counters_gauges_histograms_per_member() {
        let region = region();
        let proxy = Member::Proxy(ProxySlot::from_raw(1));
        let cache = Member::Cache(CacheSlot::from_raw(0));
        let stats = region.stats(proxy);
        stats.add(Counter::RequestsOk, 3);
        stats.add(Counter::RequestsOk, 2);
        stats.set(Gauge::InFlight, 7);
        stats.observe(Histogram::RequestHit, Duration::from_micros(30));
        stats.observe(Histogram::RequestHit, Duration::from_millis(3));
        stats.observe(Histogram::RequestHit, Duration::from_secs(60));
        region.stats(cache).add(Counter::CacheHits, 1);

        let other = Region::attach(region.id()).unwrap();
        let snap = other.stats_snapshot(proxy);
        assert_eq!(snap.counter(Counter::RequestsOk), 5);
        assert_eq!(snap.counter(Counter::CacheHits), 0);
        assert_eq!(snap.gauge(Gauge::InFlight), 7);
        let hist = snap.histogram(Histogram::RequestHit);
        assert_eq!(hist.count, 3);
        assert_eq!(hist.buckets.len(), HISTOGRAM_BOUNDS_SECONDS.len() + 1);
        assert_eq!(hist.buckets[0], 1);
        assert_eq!(hist.buckets[6], 1);
        assert_eq!(hist.buckets[17], 1);
        assert!((hist.sum_seconds - 60.00303).abs() < 1e-9);
        assert_eq!(other.stats_snapshot(cache).counter(Counter::CacheHits), 1);
    }

    #[test]
    fn members_out_of_range_are_harmless() {
        let region = region();
        let outside = Member::Cache(CacheSlot::from_raw(99));
        region.stats(outside).add(Counter::CacheHits, 1);
        region
            .stats(outside)
            .observe(Histogram::RequestHit, Duration::from_secs(1));
        let snap = region.stats_snapshot(outside);
        assert_eq!(snap.counter(Counter::CacheHits), 0);
        assert_eq!(snap.histogram(Histogram::RequestHit).count, 0);
    }
}
