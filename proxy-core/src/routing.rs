//! Which cache slot owns a path: rendezvous (highest-random-weight) hashing.
//!
//! Every proxy process must pick the same owner for a path, so the score is a fixed, documented
//! function rather than std's `DefaultHasher` (whose algorithm is not a stable contract):
//! FNV-1a over the path bytes, then per slot the splitmix64 finaliser of
//! `path_hash ^ splitmix64(slot + 1)`. The slot with the highest score owns the path; changing
//! the number of slots only moves the keys of the slots that came or went.
//!
//! The [`Router`] adds the members' state on top: a quarantined cache (down for long) is routed
//! around, so its keys move to their next-highest slot; a cache that is down, starting, draining
//! or recently failed keeps its keys and the request falls back to the origin for the time being.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc::{CacheSlot, Member, MemberState, Region};

/// FNV-1a, 64 bits, over the path bytes.
pub fn path_hash(path: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    path.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The splitmix64 finaliser: a bijective mixer with full avalanche.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The rendezvous score of `slot` for a path whose [`path_hash`] is `hash`.
pub fn score(hash: u64, slot: CacheSlot) -> u64 {
    mix64(hash ^ mix64(u64::from(slot.as_raw()) + 1))
}

/// The highest-scoring slot among `candidates` for `path` (ties, which need a 64-bit collision,
/// go to the lower slot). `None` when there is no candidate.
pub fn owner(path: &str, candidates: impl IntoIterator<Item = CacheSlot>) -> Option<CacheSlot> {
    let hash = path_hash(path);
    let mut best: Option<(u64, CacheSlot)> = None;
    for slot in candidates {
        let s = score(hash, slot);
        if best.is_none_or(|(top, _)| s > top) {
            best = Some((s, slot));
        }
    }
    best.map(|(_, slot)| slot)
}

/// The bit of a cache member's tag ([`ipc::Region::member_tag`]) that says it serves the same
/// data as every other cache carrying it (a read-only directory, a pack), so that any of them
/// can answer for another. Whoever starts the caches sets it.
pub const SHARES_DATA: u32 = 1;

/// Marks cache `slot` as serving shared data, or not.
pub fn set_shares_data(region: &Region, slot: CacheSlot, shared: bool) {
    let member = Member::Cache(slot);
    let tag = region.member_tag(member);
    let tag = if shared {
        tag | SHARES_DATA
    } else {
        tag & !SHARES_DATA
    };
    region.set_member_tag(member, tag);
}

fn shares_data(region: &Region, slot: CacheSlot) -> bool {
    region.member_tag(Member::Cache(slot)) & SHARES_DATA != 0
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Ask this cache.
    Cache(CacheSlot),
    /// The owner cannot answer now (down, restarting, draining, or failed recently): go to the
    /// origin and count a fallback.
    Unavailable(CacheSlot),
    /// Every cache is quarantined: the origin is the only source.
    NoCache,
}

/// A slot that failed recently: skipped until its process changes or the pause ends.
#[derive(Debug, Default)]
struct Suspicion {
    /// Monotonic nanoseconds (since the router's epoch) until which the slot is skipped; 0: none.
    until_nanos: AtomicU64,
    /// The pid that failed; a new pid (a restarted cache) lifts the suspicion at once.
    pid: AtomicI32,
}

/// Routes paths to cache slots using the members' state in the region.
#[derive(Debug)]
pub struct Router {
    epoch: Instant,
    suspicions: Vec<Suspicion>,
    pause: Duration,
}

impl Router {
    /// A router over `slots` cache slots; a failed slot is skipped for `pause` at most.
    pub fn new(slots: u32, pause: Duration) -> Router {
        Router {
            epoch: Instant::now(),
            suspicions: (0..slots).map(|_| Suspicion::default()).collect(),
            pause,
        }
    }

    /// Picks the route for a canonical path.
    pub fn route(&self, region: &Region, path: &str) -> Route {
        let slots = (0..self.slot_count()).map(CacheSlot::from_raw);
        let candidates = slots
            .filter(|slot| region.member_state(Member::Cache(*slot)) != MemberState::Quarantined);
        let Some(slot) = owner(path, candidates) else {
            return Route::NoCache;
        };
        match region.member_state(Member::Cache(slot)) {
            MemberState::Ready if !self.is_suspect(region, slot) => Route::Cache(slot),
            _ => Route::Unavailable(slot),
        }
    }

    /// The caches that may answer `path` for its `owner`, which cannot, in rendezvous order:
    /// none unless the owner [shares its data](SHARES_DATA); then the other caches that share
    /// theirs and are Ready and not suspect. Each holds the same objects as the owner.
    pub fn failover_order(&self, region: &Region, path: &str, owner: CacheSlot) -> Vec<CacheSlot> {
        if !shares_data(region, owner) {
            return Vec::new();
        }
        let hash = path_hash(path);
        let mut slots: Vec<CacheSlot> = (0..self.slot_count())
            .map(CacheSlot::from_raw)
            .filter(|slot| {
                *slot != owner
                    && shares_data(region, *slot)
                    && region.member_state(Member::Cache(*slot)) == MemberState::Ready
                    && !self.is_suspect(region, *slot)
            })
            .collect();
        slots.sort_by_key(|slot| (std::cmp::Reverse(score(hash, *slot)), slot.as_raw()));
        slots
    }

    /// Records that `slot` failed to answer: it is skipped until its process is replaced or the
    /// pause ends, so that one dead cache costs one timeout, not one per request.
    pub fn suspect(&self, region: &Region, slot: CacheSlot) {
        let Some(suspicion) = self.suspicion(slot) else {
            return;
        };
        let until = self.now_nanos().saturating_add(duration_nanos(self.pause));
        suspicion
            .pid
            .store(region.member_pid(Member::Cache(slot)), Ordering::Relaxed);
        suspicion.until_nanos.store(until, Ordering::Release);
    }

    fn is_suspect(&self, region: &Region, slot: CacheSlot) -> bool {
        let Some(suspicion) = self.suspicion(slot) else {
            return false;
        };
        let until = suspicion.until_nanos.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        let same_process =
            suspicion.pid.load(Ordering::Relaxed) == region.member_pid(Member::Cache(slot));
        if same_process && self.now_nanos() < until {
            return true;
        }
        suspicion.until_nanos.store(0, Ordering::Release);
        false
    }

    fn suspicion(&self, slot: CacheSlot) -> Option<&Suspicion> {
        usize::try_from(slot.as_raw())
            .ok()
            .and_then(|i| self.suspicions.get(i))
    }

    fn slot_count(&self) -> u32 {
        u32::try_from(self.suspicions.len()).unwrap_or(u32::MAX)
    }

    fn now_nanos(&self) -> u64 {
        // Never 0, which means "not suspect".
        duration_nanos(self.epoch.elapsed()).max(1)
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: u32) -> impl Iterator<Item = CacheSlot> {
        (0..n).map(CacheSlot::from_raw)
    }

    #[test]
    fn scores_are_fixed_across_processes_and_releases() {
        // Pinned values: every proxy process, of any build, must agree on them.
        assert_eq!(path_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(path_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(owner("/index.html", slots(1)), Some(CacheSlot::from_raw(0)));
        let pinned: Vec<u32> = ["/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h"]
            .iter()
            .map(|p| owner(p, slots(4)).map(CacheSlot::as_raw).unwrap_or(99))
            .collect();
        assert_eq!(pinned, expected_owners());
    }

    fn expected_owners() -> Vec<u32> {
        // Pinned from an independent implementation of the definition (Python).
        vec![2, 1, 3, 3, 3, 1, 2, 2]
    }

    #[test]
    fn spreads_keys_evenly() {
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            let slot = owner(&format!("/file/{i}.bin"), slots(4)).unwrap_or(CacheSlot::from_raw(0));
            counts[slot.as_raw() as usize] += 1;
        }
        for count in counts {
            assert!(
                (9_000..11_000).contains(&count),
                "uneven spread: {counts:?}"
            );
        }
    }

    #[test]
    fn adding_a_slot_moves_only_keys_to_the_new_slot() {
        let mut moved = 0;
        for i in 0..10_000 {
            let path = format!("/k{i}");
            let before = owner(&path, slots(4));
            let after = owner(&path, slots(5));
            if before != after {
                assert_eq!(
                    after,
                    Some(CacheSlot::from_raw(4)),
                    "{path} moved elsewhere"
                );
                moved += 1;
            }
        }
        assert!((1_500..2_500).contains(&moved), "moved {moved} of 10000");
    }

    #[test]
    fn removing_a_slot_moves_only_its_keys() {
        for i in 0..5_000 {
            let path = format!("/k{i}");
            let before = owner(&path, slots(4));
            let without_two = slots(4).filter(|s| s.as_raw() != 2);
            let after = owner(&path, without_two);
            if before != Some(CacheSlot::from_raw(2)) {
                assert_eq!(before, after, "{path} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn no_candidates_no_owner() {
        assert_eq!(owner("/x", slots(0)), None);
    }
}
