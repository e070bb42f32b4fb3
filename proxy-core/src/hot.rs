//! Hot objects: small fresh hits kept whole in the proxy's memory, so that the front door's
//! thread answers them itself ([`gfprotocol::Handler::answer_held`]) with no cache round trip
//! and no thread switch, as nginx answers from its own memory.
//!
//! A copy is good while three things hold:
//!
//! - it is younger than `hot_cache_ttl` and still fresh by its stored metadata (a copy that
//!   needs revalidation is never held);
//! - no purge finished since the lookup that read it: every purge advances the region's content
//!   epoch when it is done ([`ipc::Region::content_epoch`]), and a copy is taken only with the
//!   epoch read *before* its cache lookup, so a copy read while a purge ran is never kept;
//! - it still fits the budget (`hot_cache_size`): past it the least recently used copies go
//!   first (a clock: a copy used since the hand last passed gets a second chance).
//!
//! The cache process stays the owner of every object: a hot copy is only ever a recent answer
//! of it, at most `hot_cache_ttl` old.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cache_backends::ObjectMeta;
use gfprotocol::{HeldObject, ObjectHead};

use crate::freshness;
use crate::settings::ProxySettings;

/// What a copy costs beside its body and key (the entry and its clock slot).
const ENTRY_OVERHEAD: u64 = 256;

/// Dead places the clock may hold beyond twice its live ones before it is compacted.
const CLOCK_SLACK: usize = 64;

/// The hot objects of one proxy process.
pub(crate) struct HotObjects {
    budget: u64,
    max_object: u64,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The content epoch every held copy was read under.
    epoch: u64,
    bytes: u64,
    entries: HashMap<String, Entry>,
    /// The clock: keys in the order they came, each with the id of its entry then (a key
    /// stored again gets a new id, and its old place is skipped).
    clock: VecDeque<(String, u64)>,
    next_id: u64,
}

struct Entry {
    id: u64,
    head: ObjectHead,
    body: Arc<[u8]>,
    /// For its Age: the metadata of a copy that came from an origin.
    meta: Option<ObjectMeta>,
    /// The end of `hot_cache_ttl`.
    good_until: Instant,
    /// When it goes stale: compared with the same clock its Age is computed with, so a copy
    /// answered is always one the cache would answer as fresh.
    fresh_until: Option<SystemTime>,
    used: bool,
}

impl Entry {
    fn cost(&self, key: &str) -> u64 {
        self.body.len() as u64 + key.len() as u64 + ENTRY_OVERHEAD
    }
}

/// A copy offered to [`HotObjects::keep`].
pub(crate) struct Candidate<'a> {
    pub(crate) head: ObjectHead,
    pub(crate) body: Vec<u8>,
    pub(crate) meta: Option<&'a ObjectMeta>,
    /// When it goes stale (`None`: never).
    pub(crate) fresh_until: Option<SystemTime>,
}

impl HotObjects {
    /// The hot objects the settings ask for; `None` when they ask for none.
    pub(crate) fn of(settings: &ProxySettings) -> Option<HotObjects> {
        (settings.hot_cache_size > 0 && !settings.hot_cache_ttl.is_zero()).then(|| HotObjects {
            budget: settings.hot_cache_size,
            max_object: settings.hot_object_max_size.min(settings.hot_cache_size),
            ttl: settings.hot_cache_ttl,
            state: Mutex::new(State::default()),
        })
    }

    /// Whether an object of `len` bytes may be held.
    pub(crate) fn takes(&self, len: u64) -> bool {
        len <= self.max_object
    }

    /// The held copy of `key`, if it is still good under content epoch `epoch`.
    pub(crate) fn get(&self, key: &str, epoch: u64, now: SystemTime) -> Option<HeldObject> {
        let mut state = self.lock();
        state.follow_epoch(epoch);
        let entry = state.entries.get(key)?;
        let stale = entry.fresh_until.is_some_and(|until| now >= until);
        if stale || entry.good_until <= Instant::now() {
            state.remove(key);
            return None;
        }
        let entry = state.entries.get_mut(key)?;
        entry.used = true;
        let mut head = entry.head.clone();
        if let Some(meta) = &entry.meta {
            head.age = Some(freshness::current_age(meta, now));
        }
        Some(HeldObject {
            head,
            body: Arc::clone(&entry.body),
        })
    }

    /// Keeps a copy of `key` read from its cache under content epoch `read_under` (read before
    /// the lookup), if that is still the current epoch `epoch`, it fits, and it is still fresh
    /// at `now`.
    pub(crate) fn keep(
        &self,
        key: &str,
        copy: Candidate<'_>,
        read_under: u64,
        epoch: u64,
        now: SystemTime,
    ) {
        let stale = copy.fresh_until.is_some_and(|until| now >= until);
        if stale || !self.takes(copy.body.len() as u64) {
            return;
        }
        let mut state = self.lock();
        state.follow_epoch(epoch);
        if read_under != state.epoch {
            return;
        }
        let id = state.next_id;
        state.next_id += 1;
        let entry = Entry {
            id,
            head: copy.head,
            body: Arc::from(copy.body.into_boxed_slice()),
            meta: copy.meta.filter(|meta| meta.fresh_for.is_some()).cloned(),
            good_until: Instant::now() + self.ttl,
            fresh_until: copy.fresh_until,
            used: false,
        };
        let cost = entry.cost(key);
        state.remove(key);
        state.make_room(cost, self.budget);
        if state.bytes + cost > self.budget {
            return;
        }
        state.bytes += cost;
        state.clock.push_back((key.to_owned(), id));
        state.entries.insert(key.to_owned(), entry);
        state.compact_clock();
    }

    /// Bytes held now (bodies, keys and bookkeeping).
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// A purge finished since the copies were read: none of them is good any more.
    fn follow_epoch(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.entries.clear();
            self.clock.clear();
            self.bytes = 0;
            self.epoch = epoch;
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(entry.cost(key));
        }
    }

    /// Drops the clock's places of copies replaced or removed since, once they outnumber the
    /// live ones. Under budget nothing else ever pops them, and a copy kept again every
    /// `hot_cache_ttl` adds a place each time: without this the clock would grow for as long
    /// as the process runs. Amortised over the keeps that made them, so O(1) per keep.
    fn compact_clock(&mut self) {
        if self.clock.len() <= 2 * self.entries.len() + CLOCK_SLACK {
            return;
        }
        let entries = &self.entries;
        self.clock
            .retain(|(key, id)| entries.get(key).is_some_and(|entry| entry.id == *id));
    }

    /// Evicts until `cost` more bytes fit in `budget`, or nothing is left to evict.
    fn make_room(&mut self, cost: u64, budget: u64) {
        // Each place is looked at at most twice: once to clear its mark, once to evict.
        let mut turns = self.clock.len() * 2;
        while self.bytes + cost > budget && turns > 0 {
            turns -= 1;
            let Some((key, id)) = self.clock.pop_front() else {
                return;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.id != id {
                continue;
            }
            if entry.used {
                entry.used = false;
                self.clock.push_back((key, id));
                continue;
            }
            self.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(budget: u64) -> HotObjects {
        HotObjects::of(&ProxySettings {
            hot_cache_size: budget,
            hot_object_max_size: 4096,
            hot_cache_ttl: Duration::from_secs(60),
            ..ProxySettings::default()
        })
        .expect("hot objects")
    }

    fn keep(hot: &HotObjects, key: &str, body: &[u8], epoch: u64) {
        let copy = Candidate {
            head: ObjectHead {
                len: body.len() as u64,
                ..ObjectHead::default()
            },
            body: body.to_vec(),
            meta: None,
            fresh_until: None,
        };
        hot.keep(key, copy, epoch, epoch, SystemTime::now());
    }

    fn body_of(hot: &HotObjects, key: &str, epoch: u64) -> Option<Vec<u8>> {
        hot.get(key, epoch, SystemTime::now())
            .map(|held| held.body.to_vec())
    }

    #[test]
    fn a_kept_copy_is_answered_until_the_epoch_moves() {
        let hot = hot(1 << 20);
        keep(&hot, "/a", b"alpha", 7);
        assert_eq!(body_of(&hot, "/a", 7).as_deref(), Some(&b"alpha"[..]));
        assert_eq!(body_of(&hot, "/a", 8), None);
        assert_eq!(hot.bytes(), 0, "a new epoch drops every copy");
        assert_eq!(
            body_of(&hot, "/a", 7),
            None,
            "nor does an old epoch bring it back"
        );
    }

    #[test]
    fn copies_kept_again_and_again_under_budget_leave_the_clock_bounded() {
        let hot = hot(1 << 30);
        for round in 0..10_000 {
            keep(&hot, &format!("/k{}", round % 10), b"again", 1);
        }
        let state = hot.lock();
        assert_eq!(state.entries.len(), 10);
        assert!(
            state.clock.len() <= 2 * 10 + CLOCK_SLACK + 1,
            "the clock holds {} places for 10 copies",
            state.clock.len()
        );
        drop(state);
        // Eviction still finds every live copy through the compacted clock.
        assert!((0..10).all(|i| body_of(&hot, &format!("/k{i}"), 1).is_some()));
    }

    #[test]
    fn a_copy_read_before_a_purge_finished_is_not_kept() {
        let hot = hot(1 << 20);
        let copy = Candidate {
            head: ObjectHead::default(),
            body: b"old".to_vec(),
            meta: None,
            fresh_until: None,
        };
        hot.keep("/a", copy, 3, 4, SystemTime::now());
        assert_eq!(body_of(&hot, "/a", 4), None);
    }

    #[test]
    fn a_copy_without_freshness_left_is_not_kept() {
        let hot = hot(1 << 20);
        let copy = Candidate {
            head: ObjectHead::default(),
            body: b"stale".to_vec(),
            meta: None,
            fresh_until: Some(SystemTime::now()),
        };
        hot.keep("/a", copy, 1, 1, SystemTime::now());
        assert_eq!(body_of(&hot, "/a", 1), None);
    }

    #[test]
    fn large_objects_are_not_kept() {
        let hot = hot(1 << 20);
        keep(&hot, "/big", &[0u8; 4097], 0);
        assert_eq!(body_of(&hot, "/big", 0), None);
        assert!(hot.takes(4096) && !hot.takes(4097));
    }

    #[test]
    fn the_budget_holds_and_a_used_copy_outlives_an_unused_one() {
        let cost = 1000 + 2 + ENTRY_OVERHEAD;
        let hot = hot(cost * 3);
        for key in ["/a", "/b", "/c"] {
            keep(&hot, key, &[1u8; 1000], 0);
        }
        assert!(body_of(&hot, "/a", 0).is_some());
        keep(&hot, "/d", &[2u8; 1000], 0);
        assert!(hot.bytes() <= cost * 3);
        assert!(body_of(&hot, "/a", 0).is_some(), "used since: kept");
        assert!(
            body_of(&hot, "/b", 0).is_none(),
            "the oldest unused: evicted"
        );
        assert!(body_of(&hot, "/d", 0).is_some());
    }

    #[test]
    fn storing_a_key_again_replaces_its_copy_and_its_cost() {
        let hot = hot(1 << 20);
        keep(&hot, "/a", b"one", 0);
        keep(&hot, "/a", b"second", 0);
        assert_eq!(body_of(&hot, "/a", 0).as_deref(), Some(&b"second"[..]));
        assert_eq!(hot.bytes(), 6 + 2 + ENTRY_OVERHEAD);
    }
}
