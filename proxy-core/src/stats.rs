//! The proxy's counters and latency histograms, written into its block of the ipc stats area
//! (what each cell means is in [`crate::metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gfprotocol::ConnectionState;
use ipc::{Member, Region};

use crate::metrics::{Counter, Gauge, Histogram};

/// How a request ended, for the counters and histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// OK, served by a cache.
    Hit,
    /// OK, served by the origin (directly, or through another request's fetch).
    Miss,
    /// FILE_NOT_FOUND.
    NotFound,
    /// ERROR.
    Error,
    /// INVALID.
    Invalid,
    /// The connection was closed after the OK header (short body).
    Aborted,
}

/// Writing handle on this proxy's stats block.
#[derive(Clone)]
pub struct Stats {
    region: Arc<Region>,
    member: Member,
    in_flight: Arc<AtomicU64>,
}

impl Stats {
    /// The stats of `member` in `region`.
    pub fn new(region: Arc<Region>, member: Member) -> Stats {
        Stats {
            region,
            member,
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sets every connection gauge to 0 (before the server opens its first connection).
    pub fn reset_connections(&self) {
        let block = self.region.stats(self.member);
        for state in ConnectionState::ALL {
            block.set(Gauge::Connections(state).id(), 0);
        }
    }

    /// Moves one connection between the gauges of its states: one atomic add each, no lock
    /// (a connection enters a state before it leaves it, so no gauge dips below zero).
    pub fn connection_moved(
        &self,
        left: Option<ConnectionState>,
        entered: Option<ConnectionState>,
    ) {
        let block = self.region.stats(self.member);
        if let Some(state) = entered {
            block.gauge_add(Gauge::Connections(state).id(), 1);
        }
        if let Some(state) = left {
            block.gauge_add(Gauge::Connections(state).id(), -1);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(&self, counter: Counter, n: u64) {
        self.region.stats(self.member).add(counter.id(), n);
    }

    /// Adds one to a counter.
    pub fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Records a finished request: its response counter, its latency and its body bytes.
    pub fn finished(&self, outcome: Outcome, elapsed: Duration, body_bytes: u64) {
        let block = self.region.stats(self.member);
        let (counter, histogram) = match outcome {
            Outcome::Hit => (Counter::RequestsOk, Histogram::RequestHit),
            Outcome::Miss => (Counter::RequestsOk, Histogram::RequestMiss),
            Outcome::NotFound => (Counter::RequestsNotFound, Histogram::RequestNotFound),
            Outcome::Error => (Counter::RequestsError, Histogram::RequestFailed),
            Outcome::Invalid => (Counter::RequestsInvalid, Histogram::RequestFailed),
            Outcome::Aborted => (Counter::RequestsAborted, Histogram::RequestFailed),
        };
        block.add(counter.id(), 1);
        if body_bytes > 0 {
            block.add(Counter::ResponseBytes.id(), body_bytes);
        }
        block.observe(histogram.id(), elapsed);
    }

    /// Sets a gauge that this process alone moves.
    pub fn set(&self, gauge: Gauge, value: u64) {
        self.region.stats(self.member).set(gauge.id(), value);
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.region
            .stats(self.member)
            .set(Gauge::InFlight.id(), now);
        InFlight { stats: self }
    }
}

/// Holds one request in the in-flight gauge.
pub struct InFlight<'s> {
    stats: &'s Stats,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let now = self
            .stats
            .in_flight
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.stats
            .region
            .stats(self.stats.member)
            .set(Gauge::InFlight.id(), now);
    }
}
