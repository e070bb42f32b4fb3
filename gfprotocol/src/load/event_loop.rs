//! One load thread: its own `mio::Poll` and its share of the connections, each a slot that
//! holds one [`Exchange`] at a time and starts the next request as soon as one ends.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use super::exchange::{Exchange, Outcome, Progress, Scratch};
use super::{Plan, Summary, MAX_LATENCY_US};
use crate::{Error, Status};

/// How often deadlines are checked and the shared progress counters updated. Timeouts are
/// seconds long, so this is their precision.
const SWEEP_PERIOD: Duration = Duration::from_millis(50);
/// Bytes per socket read: a 64 MiB body is read in a few hundred calls.
const READ_SIZE: usize = 256 * 1024;
/// Events taken per `epoll_wait`.
const MAX_EVENTS: usize = 1024;

/// What one thread saw.
pub(super) struct Tally {
    pub(super) summary: Summary,
    pub(super) histogram: Histogram<u64>,
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

/// Counts not yet added to the shared progress counters.
#[derive(Default)]
struct Unreported {
    done: u64,
    failed: u64,
    bytes: u64,
}

/// A connection slot: the exchange in progress and the index of its request.
struct Slot {
    exchange: Exchange,
    request: usize,
}

struct EventLoop<'a> {
    plan: &'a Plan<'a>,
    poll: Poll,
    slots: Vec<Option<Slot>>,
    /// Slots holding an exchange.
    active: usize,
    /// Slots whose last connect failed at once, restarted after the next poll so that a
    /// refused port does not starve the other slots.
    retry: Vec<usize>,
    scratch: Scratch,
    tally: Tally,
    unreported: Unreported,
}

/// Runs `connections` connections until the plan's limit; returns what they saw.
pub(super) fn run(plan: &Plan<'_>, connections: usize) -> Result<Tally, Error> {
    let mut lp = EventLoop {
        plan,
        poll: Poll::new()?,
        slots: (0..connections).map(|_| None).collect(),
        active: 0,
        retry: Vec::new(),
        scratch: Scratch::new(READ_SIZE, plan.config.verify.is_some()),
        tally: Tally::new()?,
        unreported: Unreported::default(),
    };
    let mut events = Events::with_capacity(connections.clamp(1, MAX_EVENTS));
    for slot in 0..connections {
        lp.refill(slot, Instant::now());
    }
    let mut next_sweep = Instant::now() + SWEEP_PERIOD;
    while lp.busy() {
        let timeout = if lp.retry.is_empty() {
            next_sweep.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        if let Err(e) = lp.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        let now = Instant::now();
        for event in events.iter() {
            lp.on_ready(event.token().0, now);
        }
        for slot in std::mem::take(&mut lp.retry) {
            lp.refill(slot, now);
        }
        if now >= next_sweep {
            lp.sweep(now);
            next_sweep = now + SWEEP_PERIOD;
        }
    }
    lp.report();
    Ok(lp.tally)
}

impl EventLoop<'_> {
    fn busy(&self) -> bool {
        self.active > 0 || !self.retry.is_empty()
    }

    fn on_ready(&mut self, index: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        let request = self.plan.request(slot.request);
        if let Progress::Done(outcome) = slot.exchange.advance(request, &mut self.scratch, now) {
            self.finish(index, outcome, now);
        }
    }

    /// Ends the exchanges whose deadline passed; publishes the progress counters.
    fn sweep(&mut self, now: Instant) {
        for index in 0..self.slots.len() {
            let expired = match self.slots.get_mut(index) {
                Some(Some(slot)) => slot.exchange.expire(now),
                _ => None,
            };
            if let Some(outcome) = expired {
                self.finish(index, outcome, now);
            }
        }
        self.report();
    }

    fn finish(&mut self, index: usize, outcome: Outcome, now: Instant) {
        // Dropping the exchange closes its socket (which also leaves the epoll set).
        if let Some(Some(_)) = self.slots.get_mut(index).map(Option::take) {
            self.active -= 1;
        }
        self.record(outcome);
        self.refill(index, now);
    }

    /// Starts the slot's next request, if the run is not over.
    fn refill(&mut self, index: usize, now: Instant) {
        let Some(request) = self.plan.next_request() else {
            return;
        };
        let verify = self
            .plan
            .config
            .verify
            .as_deref()
            .map(|dir| (dir, self.plan.path(request)));
        let started_at = Instant::now();
        let started =
            Exchange::connect(self.plan.addr, self.plan.limits, verify).and_then(|mut exchange| {
                self.poll
                    .registry()
                    .register(
                        exchange.source(),
                        Token(index),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(super::exchange::Failure::Io)?;
                Ok(exchange)
            });
        let mut exchange = match started {
            Ok(exchange) => exchange,
            Err(failure) => {
                self.record(Outcome::failed(failure, started_at));
                self.retry.push(index);
                return;
            }
        };
        // On loopback the handshake is usually over already: write the request at once
        // instead of waiting for the first event.
        match exchange.advance(self.plan.request(request), &mut self.scratch, now) {
            Progress::Pending => {
                if let Some(entry) = self.slots.get_mut(index) {
                    *entry = Some(Slot { exchange, request });
                    self.active += 1;
                }
            }
            Progress::Done(outcome) => {
                self.record(outcome);
                self.retry.push(index);
            }
        }
    }

    fn record(&mut self, outcome: Outcome) {
        let micros = u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX);
        self.tally
            .histogram
            .saturating_record(micros.clamp(1, MAX_LATENCY_US));
        let s = &mut self.tally.summary;
        s.requests += 1;
        s.bytes += outcome.received;
        self.unreported.done += 1;
        self.unreported.bytes += outcome.received;
        match outcome.result {
            Ok(status) => {
                match status {
                    Status::Ok => s.ok += 1,
                    Status::FileNotFound => s.not_found += 1,
                    Status::Error => s.error += 1,
                    Status::Invalid => s.invalid += 1,
                }
                if !outcome.verified {
                    s.verify_failed += 1;
                }
            }
            Err(failure) => {
                s.failed += 1;
                self.unreported.failed += 1;
                *s.failures.entry(failure.kind()).or_default() += 1;
                let reason = failure.to_string();
                tracing::debug!(%reason, "request failed");
                *s.failure_reasons.entry(reason).or_default() += 1;
            }
        }
    }

    fn report(&mut self) {
        let counts = std::mem::take(&mut self.unreported);
        let live = self.plan.live;
        live.done.fetch_add(counts.done, Ordering::Relaxed);
        live.failed.fetch_add(counts.failed, Ordering::Relaxed);
        live.bytes.fetch_add(counts.bytes, Ordering::Relaxed);
    }
}
