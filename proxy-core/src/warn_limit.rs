//! Rate-limited warnings: a dead origin fails every request, and must not flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one warning through per `interval` and counts the ones it held back, so the next line
/// can say how many there were.
#[derive(Debug)]
pub struct WarnLimit {
    epoch: Instant,
    interval: Duration,
    /// Nanoseconds since `epoch` of the last warning let through, plus one (0: none yet).
    last: AtomicU64,
    held_back: AtomicU64,
}

impl WarnLimit {
    /// One warning per `interval`.
    pub fn new(interval: Duration) -> WarnLimit {
        WarnLimit {
            epoch: Instant::now(),
            interval,
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this warning may be logged, `n` being how many were held back since the
    /// last one; `None` when it is held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let now = u64::try_from(now.duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let interval = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= interval;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_and_a_count_of_the_rest() {
        let limit = WarnLimit::new(Duration::from_secs(1));
        let start = limit.epoch;
        assert_eq!(limit.admit_at(start), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(limit.admit_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.admit_at(start + Duration::from_millis(1000)), Some(4));
        assert_eq!(limit.admit_at(start + Duration::from_millis(1500)), None);
        assert_eq!(limit.admit_at(start + Duration::from_millis(2100)), Some(1));
    }
}
