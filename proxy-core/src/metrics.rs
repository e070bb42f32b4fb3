//! The proxy's metric vocabulary: what each cell of a proxy's ipc stats block means, and the
//! schema ([`SCHEMA`]) the supervisor reads to publish them. ipc only offers the cells by index;
//! a new proxy counter is a change to this file alone.
//!
//! Series without a `slot` label are summed over the proxy processes.

use gfprotocol::ConnectionState;
use ipc::{Cell, CounterId, Family, GaugeId, HistogramId, Label, MetricKind, Series};

/// The proxy's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Responses OK.
    RequestsOk,
    /// Responses FILE_NOT_FOUND.
    RequestsNotFound,
    /// Responses ERROR.
    RequestsError,
    /// Responses INVALID.
    RequestsInvalid,
    /// Connections closed after an OK header (short body).
    RequestsAborted,
    /// Cache lookups answered found.
    LookupHits,
    /// Cache lookups answered not found.
    LookupMisses,
    /// Cache lookups that failed or timed out, or skipped a down cache.
    LookupErrors,
    /// Cache lookups that served a stale copy (stale-while-revalidate, stale-if-error).
    LookupStale,
    /// Cache lookups that served a copy the origin had just revalidated (304).
    LookupRevalidated,
    /// Origin fetches answered 200.
    OriginOk,
    /// Origin fetches answered 404/410.
    OriginNotFound,
    /// Origin fetches that failed.
    OriginError,
    /// Origin fetches that carried validators (If-None-Match, If-Modified-Since); their answers
    /// are also counted (ok, not_modified, not_found, error).
    OriginConditional,
    /// Origin fetches answered 304.
    OriginNotModified,
    /// Stale copies refreshed in the background (stale-while-revalidate).
    BackgroundRefreshes,
    /// Requests served by the origin because their cache was down or failed.
    Fallbacks,
    /// Requests that waited on another request's origin fetch.
    Collapsed,
    /// Body bytes sent to clients.
    ResponseBytes,
    /// Fills committed by the cache.
    FillsStored,
    /// Fills dropped (declined, too slow, too large, failed).
    FillsDropped,
    /// Requests served by another cache than their owner, which could not answer (shared
    /// backends only).
    Failovers,
    /// Connections closed at accept because `max_connections` were open (or the process was
    /// out of file descriptors).
    ConnectionsRefused,
    /// Hits whose client read slower than the cache sent: the rest went in client-paced ranges.
    ClientPaced,
    /// Hits whose cache broke off mid-body, finished from another cache holding the same version.
    Resumed,
    /// Hits answered by the front door from a hot object (also counted as lookup hits).
    HotHits,
    /// Responses cut because a write made no progress for `send_timeout` (also counted as
    /// aborted).
    SendTimeouts,
    /// Connections whose request header was not complete `header_timeout` after accept
    /// (answered INVALID, but not counted in `RequestsInvalid`).
    HeaderTimeouts,
    /// HTTP answers with this status (one of [`HTTP_STATUSES`]).
    Http(u16),
}

/// The HTTP statuses counted, each in its own cell.
pub const HTTP_STATUSES: [u16; 14] = [
    200, 206, 304, 400, 404, 405, 408, 414, 416, 431, 500, 502, 503, 504,
];

impl Counter {
    /// The counter of an HTTP status, if it is one counted.
    pub fn http_status(status: u16) -> Option<Counter> {
        HTTP_STATUSES
            .contains(&status)
            .then_some(Counter::Http(status))
    }

    /// Every counter.
    pub const ALL: &'static [Counter] = &[
        Counter::RequestsOk,
        Counter::RequestsNotFound,
        Counter::RequestsError,
        Counter::RequestsInvalid,
        Counter::RequestsAborted,
        Counter::LookupHits,
        Counter::LookupMisses,
        Counter::LookupErrors,
        Counter::LookupStale,
        Counter::LookupRevalidated,
        Counter::OriginOk,
        Counter::OriginNotFound,
        Counter::OriginError,
        Counter::OriginConditional,
        Counter::OriginNotModified,
        Counter::BackgroundRefreshes,
        Counter::Fallbacks,
        Counter::Collapsed,
        Counter::ResponseBytes,
        Counter::FillsStored,
        Counter::FillsDropped,
        Counter::Failovers,
        Counter::ConnectionsRefused,
        Counter::ClientPaced,
        Counter::Resumed,
        Counter::HotHits,
        Counter::SendTimeouts,
        Counter::HeaderTimeouts,
        Counter::Http(200),
        Counter::Http(206),
        Counter::Http(304),
        Counter::Http(400),
        Counter::Http(404),
        Counter::Http(405),
        Counter::Http(408),
        Counter::Http(414),
        Counter::Http(416),
        Counter::Http(431),
        Counter::Http(500),
        Counter::Http(502),
        Counter::Http(503),
        Counter::Http(504),
    ];

    /// Its cell in the proxy's stats block (an index past the block would not compile).
    pub const fn id(self) -> CounterId {
        match self {
            Counter::RequestsOk => CounterId::at::<0>(),
            Counter::RequestsNotFound => CounterId::at::<1>(),
            Counter::RequestsError => CounterId::at::<2>(),
            Counter::RequestsInvalid => CounterId::at::<3>(),
            Counter::RequestsAborted => CounterId::at::<4>(),
            Counter::LookupHits => CounterId::at::<5>(),
            Counter::LookupMisses => CounterId::at::<6>(),
            Counter::LookupErrors => CounterId::at::<7>(),
            Counter::OriginOk => CounterId::at::<8>(),
            Counter::OriginNotFound => CounterId::at::<9>(),
            Counter::OriginError => CounterId::at::<10>(),
            Counter::Fallbacks => CounterId::at::<11>(),
            Counter::Collapsed => CounterId::at::<12>(),
            Counter::ResponseBytes => CounterId::at::<13>(),
            Counter::FillsStored => CounterId::at::<14>(),
            Counter::FillsDropped => CounterId::at::<15>(),
            Counter::Failovers => CounterId::at::<16>(),
            Counter::ConnectionsRefused => CounterId::at::<17>(),
            Counter::ClientPaced => CounterId::at::<24>(),
            Counter::Resumed => CounterId::at::<25>(),
            Counter::SendTimeouts => CounterId::at::<18>(),
            Counter::HeaderTimeouts => CounterId::at::<19>(),
            Counter::LookupStale => CounterId::at::<20>(),
            Counter::LookupRevalidated => CounterId::at::<21>(),
            Counter::OriginConditional => CounterId::at::<22>(),
            Counter::OriginNotModified => CounterId::at::<23>(),
            Counter::BackgroundRefreshes => CounterId::at::<26>(),
            Counter::HotHits => CounterId::at::<27>(),
            Counter::Http(status) => http_cell(status),
        }
    }
}

/// The cell of an HTTP status's counter (cells 32 to 45, in the order of [`HTTP_STATUSES`]; a
/// status not in it shares 500's, which [`Counter::http_status`] never hands out).
const fn http_cell(status: u16) -> CounterId {
    match status {
        200 => CounterId::at::<32>(),
        206 => CounterId::at::<33>(),
        304 => CounterId::at::<34>(),
        400 => CounterId::at::<35>(),
        404 => CounterId::at::<36>(),
        405 => CounterId::at::<37>(),
        408 => CounterId::at::<38>(),
        414 => CounterId::at::<39>(),
        416 => CounterId::at::<40>(),
        431 => CounterId::at::<41>(),
        502 => CounterId::at::<43>(),
        503 => CounterId::at::<44>(),
        504 => CounterId::at::<45>(),
        _ => CounterId::at::<42>(),
    }
}

/// The proxy's gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gauge {
    /// Requests in flight in this process.
    InFlight,
    /// Open client connections in one state of the front end.
    Connections(ConnectionState),
    /// Bytes of hot objects held (bodies and bookkeeping), as of the last one kept.
    HotBytes,
}

impl Gauge {
    /// Every gauge.
    pub const ALL: &'static [Gauge] = &[
        Gauge::InFlight,
        Gauge::Connections(ConnectionState::ReadingHeader),
        Gauge::Connections(ConnectionState::WaitingForWorker),
        Gauge::Connections(ConnectionState::Sending),
        Gauge::Connections(ConnectionState::Idle),
        Gauge::Connections(ConnectionState::Closing),
        Gauge::HotBytes,
    ];

    /// Its cell in the proxy's stats block.
    pub const fn id(self) -> GaugeId {
        match self {
            Gauge::InFlight => GaugeId::at::<0>(),
            Gauge::Connections(ConnectionState::ReadingHeader) => GaugeId::at::<1>(),
            Gauge::Connections(ConnectionState::WaitingForWorker) => GaugeId::at::<2>(),
            Gauge::Connections(ConnectionState::Sending) => GaugeId::at::<3>(),
            Gauge::Connections(ConnectionState::Idle) => GaugeId::at::<4>(),
            Gauge::Connections(ConnectionState::Closing) => GaugeId::at::<5>(),
            Gauge::HotBytes => GaugeId::at::<6>(),
        }
    }
}

/// The proxy's latency histograms (whole requests, by outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// Served from a cache.
    RequestHit,
    /// Served from the origin.
    RequestMiss,
    /// Not found.
    RequestNotFound,
    /// ERROR, INVALID or aborted.
    RequestFailed,
}

impl Histogram {
    /// Every histogram.
    pub const ALL: &'static [Histogram] = &[
        Histogram::RequestHit,
        Histogram::RequestMiss,
        Histogram::RequestNotFound,
        Histogram::RequestFailed,
    ];

    /// Its cell in the proxy's stats block.
    pub const fn id(self) -> HistogramId {
        match self {
            Histogram::RequestHit => HistogramId::at::<0>(),
            Histogram::RequestMiss => HistogramId::at::<1>(),
            Histogram::RequestNotFound => HistogramId::at::<2>(),
            Histogram::RequestFailed => HistogramId::at::<3>(),
        }
    }
}

/// The counters that make up the requests a proxy served (every response, whatever its status).
pub const REQUESTS_SERVED: &[CounterId] = &[
    Counter::RequestsOk.id(),
    Counter::RequestsNotFound.id(),
    Counter::RequestsError.id(),
    Counter::RequestsInvalid.id(),
    Counter::RequestsAborted.id(),
];

/// The schema of a proxy's stats block, in the order the families are shown.
pub const SCHEMA: &[Family] = &[
    Family {
        name: "gfcache_requests_total",
        help: "GetFile responses sent by the proxies, by status.",
        kind: MetricKind::Counter,
        series: &[
            Series {
                labels: &[Label::fixed("status", "ok")],
                cell: Cell::Counter(Counter::RequestsOk.id()),
            },
            Series {
                labels: &[Label::fixed("status", "file_not_found")],
                cell: Cell::Counter(Counter::RequestsNotFound.id()),
            },
            Series {
                labels: &[Label::fixed("status", "error")],
                cell: Cell::Counter(Counter::RequestsError.id()),
            },
            Series {
                labels: &[Label::fixed("status", "invalid")],
                cell: Cell::Counter(Counter::RequestsInvalid.id()),
            },
            Series {
                labels: &[Label::fixed("status", "aborted")],
                cell: Cell::Counter(Counter::RequestsAborted.id()),
            },
        ],
    },
    Family {
        name: "gfcache_cache_lookups_total",
        help: "Cache lookups made by the proxies, by result.",
        kind: MetricKind::Counter,
        series: &[
            Series {
                labels: &[Label::fixed("result", "hit")],
                cell: Cell::Counter(Counter::LookupHits.id()),
            },
            Series {
                labels: &[Label::fixed("result", "miss")],
                cell: Cell::Counter(Counter::LookupMisses.id()),
            },
            Series {
                labels: &[Label::fixed("result", "error")],
                cell: Cell::Counter(Counter::LookupErrors.id()),
            },
            Series {
                labels: &[Label::fixed("result", "stale")],
                cell: Cell::Counter(Counter::LookupStale.id()),
            },
            Series {
                labels: &[Label::fixed("result", "revalidated")],
                cell: Cell::Counter(Counter::LookupRevalidated.id()),
            },
        ],
    },
    Family {
        name: "gfcache_origin_fetches_total",
        help: "Origin fetches made by the proxies, by result.",
        kind: MetricKind::Counter,
        series: &[
            Series {
                labels: &[Label::fixed("result", "ok")],
                cell: Cell::Counter(Counter::OriginOk.id()),
            },
            Series {
                labels: &[Label::fixed("result", "not_found")],
                cell: Cell::Counter(Counter::OriginNotFound.id()),
            },
            Series {
                labels: &[Label::fixed("result", "error")],
                cell: Cell::Counter(Counter::OriginError.id()),
            },
            Series {
                labels: &[Label::fixed("result", "not_modified")],
                cell: Cell::Counter(Counter::OriginNotModified.id()),
            },
        ],
    },
    Family {
        name: "gfcache_origin_conditional_fetches_total",
        help: "Origin fetches that carried validators (revalidations); their answers are counted in gfcache_origin_fetches_total.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::OriginConditional.id()),
        }],
    },
    Family {
        name: "gfcache_background_refreshes_total",
        help: "Stale copies served at once and refreshed from the origin in the background (stale-while-revalidate).",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::BackgroundRefreshes.id()),
        }],
    },
    Family {
        name: "gfcache_origin_fallbacks_total",
        help: "Requests served by the origin because their cache was down or failed.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::Fallbacks.id()),
        }],
    },
    Family {
        name: "gfcache_failovers_total",
        help: "Requests served by the next cache in rendezvous order because their owner could not answer (shared backends only).",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::Failovers.id()),
        }],
    },
    Family {
        name: "gfcache_connections_refused_total",
        help: "Client connections closed at accept because proxy.max_connections were open, or the proxy was out of file descriptors.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::ConnectionsRefused.id()),
        }],
    },
    Family {
        name: "gfcache_hot_hits_total",
        help: "Hits answered by the proxy's front door from a hot object kept in its memory \
               (proxy.hot_cache_size), with no cache round trip; also counted as hits.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::HotHits.id()),
        }],
    },
    Family {
        name: "gfcache_client_paced_hits_total",
        help: "Hits whose client read slower than the cache sent: the segment was released and \
               the rest sent from the proxy's buffer in ranges of proxy.client_buffer.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::ClientPaced.id()),
        }],
    },
    Family {
        name: "gfcache_resumed_hits_total",
        help: "Hits whose cache broke off mid-body (died or stalled), finished from another \
               cache holding the same version of the object (shared backends only).",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::Resumed.id()),
        }],
    },
    Family {
        name: "gfcache_header_timeouts_total",
        help: "Client connections whose request header was not complete proxy.header_timeout after accept (answered INVALID).",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::HeaderTimeouts.id()),
        }],
    },
    Family {
        name: "gfcache_send_timeouts_total",
        help: "Responses cut because a write to the client made no progress for proxy.send_timeout (also counted as aborted).",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::SendTimeouts.id()),
        }],
    },
    Family {
        name: "gfcache_connections",
        help: "Open client connections of the proxies, by state.",
        kind: MetricKind::Gauge,
        series: &[
            Series {
                labels: &[Label::fixed("state", ConnectionState::ReadingHeader.name())],
                cell: Cell::Gauge(Gauge::Connections(ConnectionState::ReadingHeader).id()),
            },
            Series {
                labels: &[Label::fixed(
                    "state",
                    ConnectionState::WaitingForWorker.name(),
                )],
                cell: Cell::Gauge(Gauge::Connections(ConnectionState::WaitingForWorker).id()),
            },
            Series {
                labels: &[Label::fixed("state", ConnectionState::Sending.name())],
                cell: Cell::Gauge(Gauge::Connections(ConnectionState::Sending).id()),
            },
            Series {
                labels: &[Label::fixed("state", ConnectionState::Idle.name())],
                cell: Cell::Gauge(Gauge::Connections(ConnectionState::Idle).id()),
            },
            Series {
                labels: &[Label::fixed("state", ConnectionState::Closing.name())],
                cell: Cell::Gauge(Gauge::Connections(ConnectionState::Closing).id()),
            },
        ],
    },
    Family {
        name: "gfcache_http_responses_total",
        help: "HTTP answers by status, the front door's own refusals (400, 405, 408, 414, 431) included.",
        kind: MetricKind::Counter,
        series: &[
            Series {
                labels: &[Label::fixed("status", "200")],
                cell: Cell::Counter(http_cell(200)),
            },
            Series {
                labels: &[Label::fixed("status", "206")],
                cell: Cell::Counter(http_cell(206)),
            },
            Series {
                labels: &[Label::fixed("status", "304")],
                cell: Cell::Counter(http_cell(304)),
            },
            Series {
                labels: &[Label::fixed("status", "400")],
                cell: Cell::Counter(http_cell(400)),
            },
            Series {
                labels: &[Label::fixed("status", "404")],
                cell: Cell::Counter(http_cell(404)),
            },
            Series {
                labels: &[Label::fixed("status", "405")],
                cell: Cell::Counter(http_cell(405)),
            },
            Series {
                labels: &[Label::fixed("status", "408")],
                cell: Cell::Counter(http_cell(408)),
            },
            Series {
                labels: &[Label::fixed("status", "414")],
                cell: Cell::Counter(http_cell(414)),
            },
            Series {
                labels: &[Label::fixed("status", "416")],
                cell: Cell::Counter(http_cell(416)),
            },
            Series {
                labels: &[Label::fixed("status", "431")],
                cell: Cell::Counter(http_cell(431)),
            },
            Series {
                labels: &[Label::fixed("status", "500")],
                cell: Cell::Counter(http_cell(500)),
            },
            Series {
                labels: &[Label::fixed("status", "502")],
                cell: Cell::Counter(http_cell(502)),
            },
            Series {
                labels: &[Label::fixed("status", "503")],
                cell: Cell::Counter(http_cell(503)),
            },
            Series {
                labels: &[Label::fixed("status", "504")],
                cell: Cell::Counter(http_cell(504)),
            },
        ],
    },
    Family {
        name: "gfcache_collapsed_requests_total",
        help: "Requests that waited on another request's origin fetch.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::Collapsed.id()),
        }],
    },
    Family {
        name: "gfcache_response_bytes_total",
        help: "Body bytes sent to clients.",
        kind: MetricKind::Counter,
        series: &[Series {
            labels: &[],
            cell: Cell::Counter(Counter::ResponseBytes.id()),
        }],
    },
    Family {
        name: "gfcache_fills_total",
        help: "Origin fills offered to the caches, by result.",
        kind: MetricKind::Counter,
        series: &[
            Series {
                labels: &[Label::fixed("result", "stored")],
                cell: Cell::Counter(Counter::FillsStored.id()),
            },
            Series {
                labels: &[Label::fixed("result", "dropped")],
                cell: Cell::Counter(Counter::FillsDropped.id()),
            },
        ],
    },
    Family {
        name: "gfcache_request_duration_seconds",
        help: "Whole-request latency at the proxies, by outcome.",
        kind: MetricKind::Histogram,
        series: &[
            Series {
                labels: &[Label::fixed("outcome", "hit")],
                cell: Cell::Histogram(Histogram::RequestHit.id()),
            },
            Series {
                labels: &[Label::fixed("outcome", "miss")],
                cell: Cell::Histogram(Histogram::RequestMiss.id()),
            },
            Series {
                labels: &[Label::fixed("outcome", "not_found")],
                cell: Cell::Histogram(Histogram::RequestNotFound.id()),
            },
            Series {
                labels: &[Label::fixed("outcome", "failed")],
                cell: Cell::Histogram(Histogram::RequestFailed.id()),
            },
        ],
    },
    Family {
        name: "gfcache_in_flight_requests",
        help: "Requests in progress, by process.",
        kind: MetricKind::Gauge,
        series: &[Series {
            labels: &[Label::fixed("role", "proxy"), Label::slot("slot")],
            cell: Cell::Gauge(Gauge::InFlight.id()),
        }],
    },
    Family {
        name: "gfcache_hot_object_bytes",
        help: "Memory held by hot objects in each proxy process (bodies and bookkeeping, at most \
               proxy.hot_cache_size), as of the last object kept.",
        kind: MetricKind::Gauge,
        series: &[Series {
            labels: &[Label::slot("slot")],
            cell: Cell::Gauge(Gauge::HotBytes.id()),
        }],
    },
];

const _: () = assert!(ipc::schema_is_consistent(SCHEMA));
const _: () = assert!(Counter::ALL.len() <= ipc::COUNTER_SLOTS);
const _: () = assert!(Gauge::ALL.len() <= ipc::GAUGE_SLOTS);
const _: () = assert!(Histogram::ALL.len() <= ipc::HISTOGRAM_SLOTS);

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
        let histograms: HashSet<_> = Histogram::ALL.iter().map(|h| h.id()).collect();
        assert_eq!(histograms.len(), Histogram::ALL.len());
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
        for histogram in Histogram::ALL {
            assert!(
                cells.contains(&Cell::Histogram(histogram.id())),
                "{histogram:?} is not shown"
            );
        }
        let gauges: HashSet<_> = Gauge::ALL.iter().map(|g| g.id()).collect();
        assert_eq!(gauges.len(), Gauge::ALL.len(), "two gauges share a cell");
        for gauge in Gauge::ALL {
            assert!(
                cells.contains(&Cell::Gauge(gauge.id())),
                "{gauge:?} is not shown"
            );
        }
        for state in ConnectionState::ALL {
            assert!(Gauge::ALL.contains(&Gauge::Connections(state)), "{state:?}");
        }
    }
}
