//! Removing objects from every cache that is up: the one loop behind `gfsupervisor purge`, the
//! metrics listener's HTTP `PURGE` (both in the supervisor crate, which checks the targets and
//! reports) and the `dfs://` origin's change follower.
//!
//! A cache that a purge does not reach (not up, or no answer) is counted in the region
//! ([`Region::note_missed_purge`]); the cache process empties itself when it sees the count, before
//! it goes Ready and while it runs, so a purged object is never served from a cache that kept it
//! (a writable directory keeps its files across restarts).

use std::time::Duration;

use ipc::{CacheSlot, Member, MemberState, Region};

/// One thing to remove: an object's key, or with `prefix` every key that starts with it.
#[derive(Clone, Copy, Debug)]
pub struct PurgeKey<'a> {
    /// A canonical cache key (`/path`).
    pub key: &'a str,
    /// Whether `key` is a prefix.
    pub prefix: bool,
}

/// What one cache slot did with a purge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotAnswer {
    /// It answered every target.
    Purged {
        /// Objects it removed.
        removed: u64,
    },
    /// It was up but did not answer (timed out, or failed); `removed` counts what it answered
    /// before.
    Failed {
        /// Objects it removed before the failure.
        removed: u64,
        /// What went wrong.
        error: String,
    },
    /// It was not up (not Ready or Draining), so it was not asked.
    NotUp {
        /// Its member state.
        state: MemberState,
    },
}

impl SlotAnswer {
    /// Objects this slot removed.
    pub fn removed(&self) -> u64 {
        match self {
            SlotAnswer::Purged { removed } | SlotAnswer::Failed { removed, .. } => *removed,
            SlotAnswer::NotUp { .. } => 0,
        }
    }
}

/// One cache slot's part of a purge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotReport {
    /// The slot.
    pub slot: u32,
    /// What it did.
    pub answer: SlotAnswer,
}

/// Purges `targets` from every cache slot of `region` that is up (Ready or Draining), the slots
/// in parallel, each target in turn; a slot that fails one target is not asked the rest.
/// `timeout` bounds the wait for a segment and for each answer. Every slot is reported, in
/// slot order.
pub fn purge_every_cache(
    region: &Region,
    targets: &[PurgeKey<'_>],
    timeout: Duration,
) -> Vec<SlotReport> {
    let slots = (0..region.config().cache_slots).map(CacheSlot::from_raw);
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .map(|slot| {
                let state = region.member_state(Member::Cache(slot));
                let up = matches!(state, MemberState::Ready | MemberState::Draining);
                let handle =
                    up.then(|| scope.spawn(move || purge_slot(region, slot, targets, timeout)));
                (slot, state, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(slot, state, handle)| {
                let answer = match handle {
                    None => SlotAnswer::NotUp { state },
                    Some(handle) => handle.join().unwrap_or_else(|_| SlotAnswer::Failed {
                        removed: 0,
                        error: "the purge thread panicked".into(),
                    }),
                };
                if !matches!(answer, SlotAnswer::Purged { .. }) {
                    // The cache may hold a purged object (a writable directory keeps its files
                    // while down): it empties itself when it sees the count.
                    region.note_missed_purge(Member::Cache(slot));
                }
                SlotReport {
                    slot: slot.as_raw(),
                    answer,
                }
            })
            .collect()
    });
    // Copies of objects kept outside the caches (the proxies' hot objects) read before now may
    // be gone: they are dropped at their next lookup.
    region.advance_content_epoch();
    reports
}

fn purge_slot(
    region: &Region,
    slot: CacheSlot,
    targets: &[PurgeKey<'_>],
    timeout: Duration,
) -> SlotAnswer {
    let mut removed = 0u64;
    for target in targets {
        let answer = region
            .acquire(timeout)
            .and_then(|lease| lease.purge(slot, target.key, target.prefix, timeout));
        match answer {
            Ok(n) => removed = removed.saturating_add(n),
            Err(e) => {
                tracing::debug!(slot = slot.as_raw(), key = target.key, error = %e, "purge: the cache did not answer");
                return SlotAnswer::Failed {
                    removed,
                    error: e.to_string(),
                };
            }
        }
    }
    SlotAnswer::Purged { removed }
}
