//! Filling a cache with an origin body while it streams to the client.
//!
//! The fill is a side show: every write waits at most [`FILL_WAIT`] for the cache to make room,
//! and any failure (declined, too slow, cache gone) drops the fill and nothing else. The client
//! is never held up for longer than that once.

use std::time::Duration;

use ipc::{CacheSlot, Counter, PutStream, Region};

use crate::path::CanonicalPath;
use crate::stats::Stats;

/// Longest wait for a free segment or for room in it before a fill is dropped.
pub const FILL_WAIT: Duration = Duration::from_millis(50);

/// A fill in progress into one cache. Dropping it uncommitted aborts it and counts it dropped.
pub struct Fill<'r> {
    stream: Option<PutStream<'r>>,
    slot: CacheSlot,
    stats: &'r Stats,
    wait: Duration,
}

impl<'r> Fill<'r> {
    /// Offers cache `slot` an object of `len` bytes. `None` (counted as dropped) when it is over
    /// `max_object_size`, no segment is free at once, or the request cannot be posted.
    pub fn start(
        region: &'r Region,
        stats: &'r Stats,
        slot: CacheSlot,
        path: &CanonicalPath,
        len: u64,
        max_object_size: u64,
        cache_timeout: Duration,
    ) -> Option<Fill<'r>> {
        if len > max_object_size {
            stats.incr(Counter::FillsDropped);
            return None;
        }
        let wait = cache_timeout.min(FILL_WAIT);
        let stream = region
            .acquire(wait)
            .and_then(|lease| lease.put(slot, path.as_str(), len));
        match stream {
            Ok(stream) => Some(Fill {
                stream: Some(stream),
                slot,
                stats,
                wait,
            }),
            Err(error) => {
                tracing::debug!(slot = slot.as_raw(), %path, %error, "fill not started");
                stats.incr(Counter::FillsDropped);
                None
            }
        }
    }

    /// Whether the fill is still going.
    pub fn is_active(&self) -> bool {
        self.stream.is_some()
    }

    /// Appends bytes; on any failure the fill is dropped.
    pub fn write(&mut self, data: &[u8]) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if let Err(error) = stream.write(data, self.wait) {
            tracing::debug!(slot = self.slot.as_raw(), %error, "fill dropped");
            self.drop_fill();
        }
    }

    /// Publishes the rest and waits up to `timeout` for the cache to store it. True if stored.
    pub fn commit(mut self, timeout: Duration) -> bool {
        let Some(stream) = self.stream.take() else {
            return false;
        };
        match stream.finish(timeout) {
            Ok(()) => {
                self.stats.incr(Counter::FillsStored);
                true
            }
            Err(error) => {
                tracing::debug!(slot = self.slot.as_raw(), %error, "fill not stored");
                self.stats.incr(Counter::FillsDropped);
                false
            }
        }
    }

    fn drop_fill(&mut self) {
        if self.stream.take().is_some() {
            self.stats.incr(Counter::FillsDropped);
        }
    }
}

impl Drop for Fill<'_> {
    fn drop(&mut self) {
        self.drop_fill();
    }
}
