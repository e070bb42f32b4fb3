//! The server's Prometheus metrics.
use prometheus::{Encoder, IntCounter, IntGauge, Opts, Registry, TextEncoder};

/// The server's counters and gauges, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Stores that wrote a new version.
    pub stores: IntCounter,
    /// Stores that moved no data because the checksum matched.
    pub stores_skipped: IntCounter,
    /// Stores refused as stale (the server held a later version).
    pub stores_stale: IntCounter,
    /// Stores that failed or were cancelled mid-stream.
    pub stores_failed: IntCounter,
    /// Fetches started.
    pub fetches: IntCounter,
    /// Fetches ended because the client took nothing for the send timeout.
    pub fetches_cut: IntCounter,
    /// Deletes that left a tombstone.
    pub deletes: IntCounter,
    /// File bytes received by stores.
    pub bytes_received: IntCounter,
    /// File bytes sent by fetches.
    pub bytes_sent: IntCounter,
    /// Write locks granted (or renewed).
    pub locks_granted: IntCounter,
    /// Write locks refused because another client held them.
    pub locks_refused: IntCounter,
    /// Live write locks (set at each scrape).
    pub locks_held: IntGauge,
    /// Open Watch streams.
    pub watchers: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::with_opts(Opts::new(name, help)).expect("a valid metric name");
    registry
        .register(Box::new(counter.clone()))
        .expect("each metric is registered once");
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::with_opts(Opts::new(name, help)).expect("a valid metric name");
    registry
        .register(Box::new(gauge.clone()))
        .expect("each metric is registered once");
    gauge
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            stores: counter(&r, "gfdfs_stores_total", "Stores that wrote a new version."),
            stores_skipped: counter(
                &r,
                "gfdfs_stores_skipped_total",
                "Stores that moved no data because the server's checksum matched.",
            ),
            stores_stale: counter(
                &r,
                "gfdfs_stores_stale_total",
                "Stores refused because the server held a later version.",
            ),
            stores_failed: counter(
                &r,
                "gfdfs_stores_failed_total",
                "Stores that failed or were cancelled mid-stream (nothing was kept).",
            ),
            fetches: counter(&r, "gfdfs_fetches_total", "Fetches started."),
            fetches_cut: counter(
                &r,
                "gfdfs_fetches_cut_total",
                "Fetches ended because the client took no data for the send timeout.",
            ),
            deletes: counter(&r, "gfdfs_deletes_total", "Deletes that left a tombstone."),
            bytes_received: counter(
                &r,
                "gfdfs_received_bytes_total",
                "File bytes received by stores.",
            ),
            bytes_sent: counter(&r, "gfdfs_sent_bytes_total", "File bytes sent by fetches."),
            locks_granted: counter(
                &r,
                "gfdfs_locks_granted_total",
                "Write locks granted or renewed.",
            ),
            locks_refused: counter(
                &r,
                "gfdfs_locks_refused_total",
                "Write locks refused because another client held them.",
            ),
            locks_held: gauge(&r, "gfdfs_locks_held", "Write locks held now."),
            watchers: gauge(&r, "gfdfs_watchers", "Open Watch streams."),
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a malformed family, which `new` cannot make.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
