//! Restart policy: exponential backoff with jitter, and quarantine of a slot that crash-loops,
//! unless quarantine would leave the run without that slot's role (the last proxy): such a slot
//! is kept restarting with the capped backoff. Pure logic over `Instant`s, so it is tested
//! without processes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::BackoffSettings;

/// What to do after a child died unexpectedly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start it again after this delay.
    RetryAfter(Duration),
    /// Too many restarts in the window: leave the slot down until revived.
    Quarantine,
    /// Too many restarts in the window, but the slot may not be quarantined: start it again
    /// after this delay (the backoff keeps growing up to its cap).
    CrashLoop(Duration),
}

/// Whether a slot that crash-loops may be left down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quarantine {
    /// Yes: others of its role serve.
    Allowed,
    /// No: it is the last of its role that could serve (the last proxy).
    Forbidden,
}

/// The crash history of one slot.
#[derive(Clone, Debug, Default)]
pub struct RestartTracker {
    /// Consecutive quick deaths (the backoff exponent).
    attempt: u32,
    /// When recent crashes happened, oldest first, pruned to the window.
    crashes: VecDeque<Instant>,
}

impl RestartTracker {
    /// A fresh history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a death at `now` of a child that had lived `lived`, and decides. `jitter` is a
    /// number in `[0, 1)` (from a random source) that spreads the delay over `[d/2, d]`.
    pub fn on_exit(
        &mut self,
        policy: &BackoffSettings,
        now: Instant,
        lived: Duration,
        jitter: f64,
        quarantine: Quarantine,
    ) -> RestartDecision {
        if lived >= policy.reset_after {
            self.attempt = 0;
        }
        self.crashes.push_back(now);
        while let Some(&oldest) = self.crashes.front() {
            if now.duration_since(oldest) > policy.restart_window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        let looping = self.crashes.len() > policy.max_restarts as usize;
        if looping && quarantine == Quarantine::Allowed {
            return RestartDecision::Quarantine;
        }
        let delay = backoff_delay(policy, self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        if looping {
            RestartDecision::CrashLoop(delay)
        } else {
            RestartDecision::RetryAfter(delay)
        }
    }

    /// Forgets the history (after a revival or a reload).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Crashes counted in the current window.
    pub fn recent_crashes(&self) -> usize {
        self.crashes.len()
    }
}

/// `initial * 2^attempt`, capped at `max`, then jittered into `[d/2, d]`.
pub fn backoff_delay(policy: &BackoffSettings, attempt: u32, jitter: f64) -> Duration {
    let factor = 2f64.powi(i32::try_from(attempt.min(60)).unwrap_or(60));
    let full = policy.initial.as_secs_f64() * factor;
    let capped = full.min(policy.max.as_secs_f64());
    let jitter = jitter.clamp(0.0, 1.0);
    Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults: 100 ms doubling to 30 s, reset after 60 s, 5 restarts a minute.
    fn policy() -> BackoffSettings {
        BackoffSettings::default()
    }

    #[test]
    fn delays_double_and_cap() {
        let p = policy();
        assert_eq!(backoff_delay(&p, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&p, 1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(&p, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(&p, 20, 1.0), Duration::from_secs(30));
        assert_eq!(backoff_delay(&p, 10_000, 1.0), Duration::from_secs(30));
        assert_eq!(backoff_delay(&p, 0, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let p = policy();
        for i in 0..100 {
            let j = f64::from(i) / 100.0;
            let d = backoff_delay(&p, 2, j);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }

    #[test]
    fn crash_loop_is_quarantined_after_max_restarts() {
        let p = policy();
        let mut t = RestartTracker::new();
        let start = Instant::now();
        let quick = Duration::from_millis(10);
        for i in 0..5 {
            let now = start + Duration::from_secs(i);
            assert!(matches!(
                t.on_exit(&p, now, quick, 1.0, Quarantine::Allowed),
                RestartDecision::RetryAfter(_)
            ));
        }
        assert_eq!(
            t.on_exit(
                &p,
                start + Duration::from_secs(5),
                quick,
                1.0,
                Quarantine::Allowed
            ),
            RestartDecision::Quarantine
        );
    }

    #[test]
    fn the_last_of_a_role_keeps_restarting_with_the_capped_backoff() {
        let p = policy();
        let mut t = RestartTracker::new();
        let start = Instant::now();
        let quick = Duration::from_millis(10);
        let mut decisions = Vec::new();
        for i in 0..30 {
            let now = start + Duration::from_millis(i);
            decisions.push(t.on_exit(&p, now, quick, 1.0, Quarantine::Forbidden));
        }
        assert!(decisions[..5]
            .iter()
            .all(|d| matches!(d, RestartDecision::RetryAfter(_))));
        assert_eq!(
            decisions[5],
            RestartDecision::CrashLoop(Duration::from_millis(3200))
        );
        assert_eq!(decisions[29], RestartDecision::CrashLoop(p.max), "capped");
        assert!(!decisions.contains(&RestartDecision::Quarantine));
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let p = policy();
        let mut t = RestartTracker::new();
        let start = Instant::now();
        for i in 0..20u64 {
            let now = start + Duration::from_secs(i * 30);
            let d = t.on_exit(&p, now, Duration::from_secs(1), 1.0, Quarantine::Allowed);
            assert!(
                matches!(d, RestartDecision::RetryAfter(_)),
                "crash {i}: {d:?}"
            );
        }
        assert!(t.recent_crashes() <= 3);
    }

    #[test]
    fn a_long_life_resets_the_backoff() {
        let p = policy();
        let mut t = RestartTracker::new();
        let now = Instant::now();
        let quick = Duration::from_millis(1);
        t.on_exit(&p, now, quick, 1.0, Quarantine::Allowed);
        t.on_exit(&p, now, quick, 1.0, Quarantine::Allowed);
        assert_eq!(
            t.on_exit(&p, now, quick, 1.0, Quarantine::Allowed),
            RestartDecision::RetryAfter(Duration::from_millis(400))
        );
        let later = now + Duration::from_secs(200);
        assert_eq!(
            t.on_exit(
                &p,
                later,
                Duration::from_secs(120),
                1.0,
                Quarantine::Allowed
            ),
            RestartDecision::RetryAfter(Duration::from_millis(100))
        );
    }
}
