//! The cache process's metric vocabulary: what each cell of a cache slot's ipc stats block
//! means, and the schema ([`SCHEMA`]) the supervisor reads to publish them, one series per cache
//! slot. ipc only offers the cells by index; a new cache counter is a change to this file alone.

use ipc::{Cell, CounterId, Family, GaugeId, Label, MetricKind, Series};

/// The cache process's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// GETs served found.
    Hits,
    /// GETs answered not found.
    Misses,
    /// GETs or PUTs that failed.
    Errors,
    /// Body bytes copied into segments.
    BytesOut,
    /// PUTs stored.
    PutsStored,
    /// PURGE requests answered (one path or one prefix each).
    Purges,
    /// Objects those PURGEs removed.
    PurgedObjects,
}

impl Counter {
    /// Every counter.
    pub const ALL: &'static [Counter] = &[
        Counter::Hits,
        Counter::Misses,
        Counter::Errors,
        Counter::BytesOut,
        Counter::PutsStored,
        Counter::Purges,
        Counter::PurgedObjects,
    ];

    /// Its cell in the slot's stats block (an index past the block would not compile).
    pub const fn id(self) -> CounterId {
        match self {
            Counter::Hits => CounterId::at::<0>(),
            Counter::Misses => CounterId::at::<1>(),
            Counter::Errors => CounterId::at::<2>(),
            Counter::BytesOut => CounterId::at::<3>(),
            Counter::PutsStored => CounterId::at::<4>(),
            Counter::Purges => CounterId::at::<5>(),
            Counter::PurgedObjects => CounterId::at::<6>(),
        }
    }
}

/// Counts one PURGE answered and the objects it removed in a cache slot's stats block.
pub fn count_purge(stats: &ipc::StatsBlock<'_>, removed: u64) {
    stats.add(Counter::Purges.id(), 1);
    stats.add(Counter::PurgedObjects.id(), removed);
}

/// The cache process's gauges: the backend's [`crate::BackendStats`], copied about once a
/// second, and the requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gauge {
    /// Objects held.
    BackendObjects,
    /// Bytes held.
    BackendBytes,
    /// Capacity in bytes (0 = unbounded).
    BackendCapacity,
    /// Evictions since the backend opened.
    BackendEvictions,
    /// Inserts since the backend opened.
    BackendInserts,
    /// Requests in flight in this process.
    InFlight,
}

impl Gauge {
    /// Every gauge.
    pub const ALL: &'static [Gauge] = &[
        Gauge::BackendObjects,
        Gauge::BackendBytes,
        Gauge::BackendCapacity,
        Gauge::BackendEvictions,
        Gauge::BackendInserts,
        Gauge::InFlight,
    ];

    /// Its cell in the slot's stats block.
    pub const fn id(self) -> GaugeId {
        match self {
            Gauge::BackendObjects => GaugeId::at::<0>(),
            Gauge::BackendBytes => GaugeId::at::<1>(),
            Gauge::BackendCapacity => GaugeId::at::<2>(),
            Gauge::BackendEvictions => GaugeId::at::<3>(),
            Gauge::BackendInserts => GaugeId::at::<4>(),
            Gauge::InFlight => GaugeId::at::<5>(),
        }
    }
}

/// The counters that make up the requests a cache served (its GETs answered).
pub const REQUESTS_SERVED: &[CounterId] = &[
    Counter::Hits.id(),
    Counter::Misses.id(),
    Counter::Errors.id(),
];

/// The schema of a cache slot's stats block, in the order the families are shown.
pub const SCHEMA: &[Family] = &[
    Family {
        name: "gfcache_cache_requests_total",
        help: "GET requests answered by a cache process, by result.",
        kind: MetricKind::Counter,
        series: &[
            Series {
                labels: &[Label::slot("slot"), Label::fixed("result", "hit")],
                cell: Cell::Counter(Counter::Hits.id()),
            },
            Series {
                labels: &[Label::slot("slot"), Label::fixed("result", "miss")],
                cell: Cell::Counter(Counter::Misses.id()),
            },
            Series {
                labels: &[Label::slot("slot"), Label::fixed("result", "error")],
                cell: Cell::Counter(Counter::Errors.id()),
            },
        ],
    },
    Family {
        name: "gfcache_cache_sent_bytes_total",
        help: "Body bytes a cache process copied into segments.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Counter(Counter::BytesOut.id()),
        }],
    },
    Family {
        name: "gfcache_cache_fills_stored_total",
        help: "Origin fills stored by a cache process.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Counter(Counter::PutsStored.id()),
        }],
    },
    Family {
        name: "gfcache_cache_purges_total",
        help: "PURGE requests (one path or one prefix each) answered by a cache process.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Counter(Counter::Purges.id()),
        }],
    },
    Family {
        name: "gfcache_cache_purged_objects_total",
        help: "Objects removed by PURGE requests in a cache process.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Counter(Counter::PurgedObjects.id()),
        }],
    },
    Family {
        name: "gfcache_backend_objects",
        help: "Objects held by the slot's backend.",
        kind: MetricKind::Gauge,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Gauge(Gauge::BackendObjects.id()),
        }],
    },
    Family {
        name: "gfcache_backend_bytes",
        help: "Bytes held by the slot's backend.",
        kind: MetricKind::Gauge,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Gauge(Gauge::BackendBytes.id()),
        }],
    },
    Family {
        name: "gfcache_backend_capacity_bytes",
        help: "Byte bound of the slot's backend (0: unbounded).",
        kind: MetricKind::Gauge,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Gauge(Gauge::BackendCapacity.id()),
        }],
    },
    Family {
        name: "gfcache_backend_evictions_total",
        help: "Objects evicted by the slot's backend since it opened.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Gauge(Gauge::BackendEvictions.id()),
        }],
    },
    Family {
        name: "gfcache_backend_inserts_total",
        help: "Objects stored by the slot's backend since it opened.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Gauge(Gauge::BackendInserts.id()),
        }],
    },
    Family {
        name: "gfcache_in_flight_requests",
        help: "Requests in progress, by process.",
        kind: MetricKind::Gauge,
        series: &[Series {
            labels: &[Label::fixed("role", "cache"), Label::slot("slot")],
            cell: Cell::Gauge(Gauge::InFlight.id()),
        }],
    },
];

const _: () = assert!(ipc::schema_is_consistent(SCHEMA));
const _: () = assert!(Counter::ALL.len() <= ipc::COUNTER_SLOTS);
const _: () = assert!(Gauge::ALL.len() <= ipc::GAUGE_SLOTS);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_cell_has_its_own_index_and_a_series() {
        let counters: HashSet<_> = Counter::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(
            counters.len(),
            Counter::ALL.len(),
            "two counters share a cell"
        );
        let gauges: HashSet<_> = Gauge::ALL.iter().map(|g| g.id()).collect();
        assert_eq!(gauges.len(), Gauge::ALL.len(), "two gauges share a cell");
        let cells: HashSet<Cell> = SCHEMA
            .iter()
            .flat_map(|family| family.series.iter().map(|series| series.cell))
            .collect();
        for counter in Counter::ALL {
            assert!(
                cells.contains(&Cell::Counter(counter.id())),
                "{counter:?} is not shown"
            );
        }
        for gauge in Gauge::ALL {
            assert!(
                cells.contains(&Cell::Gauge(gauge.id())),
                "{gauge:?} is not shown"
            );
        }
    }
}
