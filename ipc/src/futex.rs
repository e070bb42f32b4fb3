//! Waiting on 32-bit words in shared memory: a short spin, then `FUTEX_WAIT` with a deadline.
//!
//! Two shapes of word are used:
//! - [`Doorbell`]: a sequence number plus a count of sleepers, for the many-waiter channels (the
//!   free pool, each cache slot's request channel). A ringer bumps the sequence and wakes one
//!   sleeper only if someone sleeps.
//! - flag words (a segment's `produced` / `consumed`): one waiter at most, which sets
//!   [`WAITERS`] before sleeping so that the updater knows to call `FUTEX_WAKE`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{self, FutexWait};

/// Pure spin iterations before anything else (about 3 us here).
pub(crate) const SPIN: u32 = 100;

/// After the spin, how long a waiter keeps polling with `sched_yield` between checks before it
/// sleeps in `FUTEX_WAIT`. Longer than a wake-up (about 25 us), so that two sides that hand off
/// back and forth stay awake; yielding rather than spinning hands the core to the peer when
/// both share it.
pub(crate) const DEFAULT_YIELD_BUDGET: Duration = Duration::from_micros(50);

static YIELD_BUDGET_NANOS: AtomicU64 = AtomicU64::new(DEFAULT_YIELD_BUDGET.as_nanos() as u64);

/// Changes the yield budget of this process (benchmarks compare policies with it).
pub(crate) fn set_yield_budget(budget: Duration) {
    YIELD_BUDGET_NANOS.store(
        u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The polling phase of a wait: [`SPIN`] spins, then yields until the budget is spent.
pub(crate) struct Backoff {
    spins: u32,
    yield_until: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            spins: 0,
            yield_until: None,
        }
    }

    /// Waits a little; `false` once it is time to sleep instead.
    pub(crate) fn snooze(&mut self) -> bool {
        if self.spins < SPIN {
            self.spins += 1;
            std::hint::spin_loop();
            return true;
        }
        let budget = Duration::from_nanos(YIELD_BUDGET_NANOS.load(Ordering::Relaxed));
        if budget.is_zero() {
            return false;
        }
        let until = *self
            .yield_until
            .get_or_insert_with(|| Instant::now() + budget);
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
        true
    }
}

/// Bit of a flag word: the peer aborted (also wakes the waiter, as it changes the word).
pub(crate) const ABORT: u32 = 1 << 31;
/// Bit of a flag word: the final answer is there (`produced`: the GET status; `consumed`: the
/// PUT completion).
pub(crate) const FINAL: u32 = 1 << 30;
/// Bit of a flag word: the waiter is (about to be) asleep; the updater must wake it.
pub(crate) const WAITERS: u32 = 1 << 29;
/// Shift of the generation tag of a flag word: the low 8 bits of the segment's generation,
/// so that a stale abort can never be raised on a later use of the segment.
pub(crate) const TAG_SHIFT: u32 = 21;
/// The chunk counter part of a flag word (wraps; the two sides are at most 2 chunks apart).
pub(crate) const COUNT_MASK: u32 = (1 << TAG_SHIFT) - 1;

/// The initial value of a flag word for a use of generation `generation`.
pub(crate) fn tagged(generation: u32) -> u32 {
    (generation & 0xff) << TAG_SHIFT
}

/// A many-waiter wake-up channel: `seq` changes on every ring, `sleepers` counts waiters.
#[repr(C)]
pub(crate) struct Doorbell {
    pub seq: AtomicU32,
    pub sleepers: AtomicU32,
}

impl Doorbell {
    /// Changes the sequence and wakes one sleeper if any.
    pub(crate) fn ring(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            if let Err(err) = sys::futex_wake(&self.seq, 1) {
                tracing::warn!(%err, "futex wake failed");
            }
        }
    }

    /// Sleeps while the sequence still equals `seen`, at most until `deadline`.
    /// Returns whether the deadline has passed.
    pub(crate) fn sleep(&self, seen: u32, deadline: Instant) -> Result<bool, std::io::Error> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(true);
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let result = sys::futex_wait(&self.seq, seen, deadline - now);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        result?;
        Ok(Instant::now() >= deadline)
    }
}

/// Waits until `ready(word)` holds, polling briefly ([`Backoff`]) and then sleeping, at most
/// until `deadline`. Returns the satisfying value, or `None` on timeout.
pub(crate) fn wait_flag_word(
    word: &AtomicU32,
    deadline: Instant,
    ready: impl Fn(u32) -> bool,
) -> Result<Option<u32>, std::io::Error> {
    let mut backoff = Backoff::new();
    loop {
        let value = word.load(Ordering::Acquire);
        if ready(value) {
            return Ok(Some(value));
        }
        if !backoff.snooze() {
            break;
        }
    }
    wait_flag_word_no_spin(word, deadline, ready)
}

/// [`wait_flag_word`] without the spin: straight to `FUTEX_WAIT` when not ready.
pub(crate) fn wait_flag_word_no_spin(
    word: &AtomicU32,
    deadline: Instant,
    ready: impl Fn(u32) -> bool,
) -> Result<Option<u32>, std::io::Error> {
    loop {
        let value = word.load(Ordering::Acquire);
        if ready(value) {
            return Ok(Some(value));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let sleeping = value | WAITERS;
        if value & WAITERS == 0
            && word
                .compare_exchange(value, sleeping, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            continue;
        }
        match sys::futex_wait(word, sleeping, deadline - now)? {
            FutexWait::Woken
            | FutexWait::Changed
            | FutexWait::Interrupted
            | FutexWait::TimedOut => {}
        }
    }
}

/// Updates a flag word with `change` (which sees the value without [`WAITERS`]), clearing
/// [`WAITERS`] and waking the sleeper if there was one. Returns the previous value.
pub(crate) fn update_flag_word(word: &AtomicU32, change: impl Fn(u32) -> u32) -> u32 {
    let mut current = word.load(Ordering::Relaxed);
    loop {
        let next = change(current & !WAITERS) & !WAITERS;
        match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(previous) => {
                if previous & WAITERS != 0 {
                    wake_all(word);
                }
                return previous;
            }
            Err(actual) => current = actual,
        }
    }
}

/// Sets bits in a flag word if it still carries `generation`'s tag, and wakes whoever sleeps on
/// it.
pub(crate) fn raise_flag(word: &AtomicU32, bits: u32, generation: u32) {
    let tag = tagged(generation);
    let mut current = word.load(Ordering::Relaxed);
    loop {
        if current & (0xff << TAG_SHIFT) != tag || current & bits == bits {
            return;
        }
        match word.compare_exchange_weak(
            current,
            current | bits,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => break,
            Err(actual) => current = actual,
        }
    }
    wake_all(word);
}

fn wake_all(word: &AtomicU32) {
    if let Err(err) = sys::futex_wake(word, i32::MAX) {
        tracing::warn!(%err, "futex wake failed");
    }
}

/// The deadline `timeout` from now (saturating far in the future).
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_times_out_without_a_change() {
        let word = AtomicU32::new(0);
        let got = wait_flag_word(&word, deadline_after(Duration::from_millis(20)), |v| {
            v & COUNT_MASK != 0
        })
        .unwrap();
        assert_eq!(got, None);
    }

    #[test]
    fn update_wakes_a_sleeping_waiter() {
        let word = Arc::new(AtomicU32::new(0));
        let waiter = {
            let word = Arc::clone(&word);
            std::thread::spawn(move || {
                wait_flag_word(&word, deadline_after(Duration::from_secs(10)), |v| {
                    v & COUNT_MASK == 1
                })
                .unwrap()
            })
        };
        // Let the waiter reach its sleep (polling the WAITERS bit, with a deadline).
        let until = Instant::now() + Duration::from_secs(5);
        while word.load(Ordering::Acquire) & WAITERS == 0 && Instant::now() < until {
            std::thread::yield_now();
        }
        update_flag_word(&word, |v| v + 1);
        assert_eq!(waiter.join().unwrap().map(|v| v & COUNT_MASK), Some(1));
        assert_eq!(word.load(Ordering::Acquire) & WAITERS, 0);
    }

    #[test]
    fn raise_flag_ignores_another_generation() {
        let word = AtomicU32::new(tagged(5) | 3);
        raise_flag(&word, ABORT, 4);
        assert_eq!(word.load(Ordering::Acquire), tagged(5) | 3);
        raise_flag(&word, ABORT, 5 + 256);
        assert_eq!(word.load(Ordering::Acquire), tagged(5) | 3 | ABORT);
    }

    #[test]
    fn doorbell_sleep_returns_when_rung() {
        let bell = Arc::new(Doorbell {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        });
        let sleeper = {
            let bell = Arc::clone(&bell);
            std::thread::spawn(move || {
                let deadline = deadline_after(Duration::from_secs(10));
                while bell.seq.load(Ordering::SeqCst) == 0 {
                    if bell.sleep(0, deadline).unwrap() {
                        return false;
                    }
                }
                true
            })
        };
        bell.ring();
        assert!(sleeper.join().unwrap());
    }
}
