//! The stats area: one block per member (proxy and cache slots) of counters, gauges and
//! fixed-bucket histograms as relaxed atomics, addressed by index. Writers never lock; the
//! supervisor copies a block at scrape time. The blocks live in the region, indexed by slot, so a
//! restarted child keeps adding to the numbers of its predecessor.
//!
//! ipc knows no metric: the owner of a block (proxy-core for proxies, cache-backends for caches)
//! decides what counter 3 means and describes its cells with a [`Family`] schema, which the
//! supervisor reads to name them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::region::{Member, Region};

/// Counters per block: indices `0..COUNTER_SLOTS`.
pub const COUNTER_SLOTS: usize = 64;
/// Gauges per block: indices `0..GAUGE_SLOTS`.
pub const GAUGE_SLOTS: usize = 16;
/// Histograms per block: indices `0..HISTOGRAM_SLOTS`.
pub const HISTOGRAM_SLOTS: usize = 8;
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

/// An index past the capacity of a stats block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} index {index} is past the {capacity} {kind}s of a stats block")]
pub struct StatsIndexError {
    /// "counter", "gauge" or "histogram".
    pub kind: &'static str,
    /// The index asked for.
    pub index: usize,
    /// How many the block has.
    pub capacity: usize,
}

/// Defines an index newtype whose values are always inside the block: built from a constant
/// (checked when the program is compiled) or checked at run time with a typed error.
macro_rules! cell_id {
    ($(#[$doc:meta])* $name:ident, $capacity:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u8);

        const _: () = assert!($capacity <= u8::MAX as usize);

        impl $name {
            #[doc = concat!("The ", $kind, " at `INDEX`; an index past the block does not compile.")]
            pub const fn at<const INDEX: usize>() -> $name {
                const {
                    assert!(INDEX < $capacity, concat!("the ", $kind, " index is past the stats block"));
                }
                // In range of u8: INDEX < capacity <= u8::MAX (asserted above).
                $name(INDEX as u8)
            }

            #[doc = concat!("The ", $kind, " at `index`, checked at run time.")]
            pub const fn new(index: usize) -> Result<$name, StatsIndexError> {
                if index < $capacity {
                    // In range of u8, as in `at`.
                    Ok($name(index as u8))
                } else {
                    Err(StatsIndexError {
                        kind: $kind,
                        index,
                        capacity: $capacity,
                    })
                }
            }

            /// Its index in the block.
            pub const fn index(self) -> usize {
                self.0 as usize
            }

            #[doc = concat!("Every ", $kind, " of a block, in index order.")]
            pub fn all() -> impl Iterator<Item = $name> {
                // In range of u8, as in `at`.
                (0..$capacity).map(|index| $name(index as u8))
            }
        }
    };
}

cell_id!(
    /// A counter of a stats block (monotonic, added to).
    ///
    /// ```
    /// const LAST: ipc::CounterId = ipc::CounterId::at::<{ ipc::COUNTER_SLOTS - 1 }>();
    /// assert_eq!(LAST.index(), ipc::COUNTER_SLOTS - 1);
    /// assert!(ipc::CounterId::new(ipc::COUNTER_SLOTS).is_err());
    /// ```
    ///
    /// An index past the block is refused when the program is built:
    ///
    /// ```compile_fail
    /// const TOO_FAR: ipc::CounterId = ipc::CounterId::at::<{ ipc::COUNTER_SLOTS }>();
    /// ```
    CounterId,
    COUNTER_SLOTS,
    "counter"
);
cell_id!(
    /// A gauge of a stats block (set, not added).
    GaugeId,
    GAUGE_SLOTS,
    "gauge"
);
cell_id!(
    /// A latency histogram of a stats block (fixed buckets, [`HISTOGRAM_BOUNDS_SECONDS`]).
    HistogramId,
    HISTOGRAM_SLOTS,
    "histogram"
);

/// Writing handle on one member's stats block (relaxed atomics, no locks). A handle for a
/// member outside the region's slots writes nowhere.
pub struct StatsBlock<'r> {
    area: Option<&'r StatsArea>,
}

impl StatsBlock<'_> {
    /// Adds to a counter.
    pub fn add(&self, counter: CounterId, n: u64) {
        if let Some(cell) = self
            .area
            .and_then(|area| area.counters.get(counter.index()))
        {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets a gauge.
    pub fn set(&self, gauge: GaugeId, value: u64) {
        if let Some(cell) = self.area.and_then(|area| area.gauges.get(gauge.index())) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    /// Adds `delta` (which may be negative) to a gauge: for a gauge that several threads move
    /// up and down, without a lock. The cell wraps like the `i64` it then holds.
    pub fn gauge_add(&self, gauge: GaugeId, delta: i64) {
        if let Some(cell) = self.area.and_then(|area| area.gauges.get(gauge.index())) {
            cell.fetch_add(delta as u64, Ordering::Relaxed);
        }
    }

    /// Records one observation.
    pub fn observe(&self, histogram: HistogramId, elapsed: Duration) {
        let Some(area) = self
            .area
            .and_then(|area| area.histograms.get(histogram.index()))
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

/// A copy of one member's stats. Cells never written read 0.
#[derive(Clone, Debug, Default, PartialEq)]
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

impl HistogramSnapshot {
    /// A histogram without observations.
    pub fn empty() -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: vec![0; HISTOGRAM_BOUNDS_SECONDS.len() + 1],
            count: 0,
            sum_seconds: 0.0,
        }
    }

    /// Adds the observations of `other` (to sum the blocks of several members).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_seconds += other.sum_seconds;
    }
}

impl StatsSnapshot {
    /// A counter's value.
    pub fn counter(&self, counter: CounterId) -> u64 {
        self.counters.get(counter.index()).copied().unwrap_or(0)
    }

    /// A gauge's value.
    pub fn gauge(&self, gauge: GaugeId) -> u64 {
        self.gauges.get(gauge.index()).copied().unwrap_or(0)
    }

    /// A histogram's value.
    pub fn histogram(&self, histogram: HistogramId) -> HistogramSnapshot {
        self.histograms
            .get(histogram.index())
            .cloned()
            .unwrap_or_else(HistogramSnapshot::empty)
    }

    /// Sets a counter in the copy (to build a snapshot by hand, e.g. in a test of a reader).
    pub fn set_counter(&mut self, counter: CounterId, value: u64) {
        set_cell(&mut self.counters, counter.index(), value, COUNTER_SLOTS);
    }

    /// Sets a gauge in the copy.
    pub fn set_gauge(&mut self, gauge: GaugeId, value: u64) {
        set_cell(&mut self.gauges, gauge.index(), value, GAUGE_SLOTS);
    }

    /// Sets a histogram in the copy.
    pub fn set_histogram(&mut self, histogram: HistogramId, value: HistogramSnapshot) {
        if self.histograms.len() < HISTOGRAM_SLOTS {
            self.histograms
                .resize_with(HISTOGRAM_SLOTS, HistogramSnapshot::empty);
        }
        if let Some(cell) = self.histograms.get_mut(histogram.index()) {
            *cell = value;
        }
    }
}

fn set_cell(cells: &mut Vec<u64>, index: usize, value: u64, capacity: usize) {
    if cells.len() < capacity {
        cells.resize(capacity, 0);
    }
    if let Some(cell) = cells.get_mut(index) {
        *cell = value;
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

    const FIRST: CounterId = CounterId::at::<0>();
    const LAST: CounterId = CounterId::at::<{ COUNTER_SLOTS - 1 }>();
    const LEVEL: GaugeId = GaugeId::at::<5>();
    const LATENCY: HistogramId = HistogramId::at::<{ HISTOGRAM_SLOTS - 1 }>();

    #[test]
    fn counters_gauges_histograms_per_member() {
        let region = region();
        let proxy = Member::Proxy(ProxySlot::from_raw(1));
        let cache = Member::Cache(CacheSlot::from_raw(0));
        let stats = region.stats(proxy);
        stats.add(FIRST, 3);
        stats.add(FIRST, 2);
        stats.set(LEVEL, 7);
        stats.observe(LATENCY, Duration::from_micros(30));
        stats.observe(LATENCY, Duration::from_millis(3));
        stats.observe(LATENCY, Duration::from_secs(60));
        region.stats(cache).add(LAST, 1);

        let other = Region::attach(region.id()).unwrap();
        let snap = other.stats_snapshot(proxy);
        assert_eq!(snap.counter(FIRST), 5);
        assert_eq!(snap.counter(LAST), 0);
        assert_eq!(snap.gauge(LEVEL), 7);
        let hist = snap.histogram(LATENCY);
        assert_eq!(hist.count, 3);
        assert_eq!(hist.buckets.len(), HISTOGRAM_BOUNDS_SECONDS.len() + 1);
        assert_eq!(hist.buckets[0], 1);
        assert_eq!(hist.buckets[6], 1);
        assert_eq!(hist.buckets[17], 1);
        assert!((hist.sum_seconds - 60.00303).abs() < 1e-9);
        let cache_snap = other.stats_snapshot(cache);
        assert_eq!(cache_snap.counter(LAST), 1);
        assert_eq!(cache_snap.counter(FIRST), 0);
    }

    #[test]
    fn indices_past_the_block_are_typed_errors() {
        assert_eq!(CounterId::new(3), Ok(CounterId::at::<3>()));
        assert_eq!(
            CounterId::new(COUNTER_SLOTS - 1).map(CounterId::index),
            Ok(COUNTER_SLOTS - 1)
        );
        let past = CounterId::new(COUNTER_SLOTS).unwrap_err();
        assert_eq!(
            (past.kind, past.index, past.capacity),
            ("counter", COUNTER_SLOTS, COUNTER_SLOTS)
        );
        assert!(GaugeId::new(GAUGE_SLOTS).is_err());
        assert!(HistogramId::new(HISTOGRAM_SLOTS).is_err());
        assert_eq!(CounterId::all().count(), COUNTER_SLOTS);
        assert_eq!(
            HistogramId::all().last(),
            HistogramId::new(HISTOGRAM_SLOTS - 1).ok()
        );
        assert!(past.to_string().contains("past"), "{past}");
    }

    #[test]
    fn a_snapshot_built_by_hand_reads_back() {
        let mut snap = StatsSnapshot::default();
        assert_eq!(snap.counter(LAST), 0);
        assert_eq!(snap.histogram(LATENCY), HistogramSnapshot::empty());
        snap.set_counter(LAST, 9);
        snap.set_gauge(LEVEL, 4);
        let mut hist = HistogramSnapshot::empty();
        hist.buckets[1] = 2;
        hist.count = 2;
        snap.set_histogram(LATENCY, hist.clone());
        assert_eq!((snap.counter(LAST), snap.gauge(LEVEL)), (9, 4));
        hist.merge(&snap.histogram(LATENCY));
        assert_eq!((hist.buckets[1], hist.count), (4, 4));
    }

    #[test]
    fn members_out_of_range_are_harmless() {
        let region = region();
        let outside = Member::Cache(CacheSlot::from_raw(99));
        region.stats(outside).add(FIRST, 1);
        region
            .stats(outside)
            .observe(LATENCY, Duration::from_secs(1));
        let snap = region.stats_snapshot(outside);
        assert_eq!(snap.counter(FIRST), 0);
        assert_eq!(snap.histogram(LATENCY).count, 0);
    }
}
