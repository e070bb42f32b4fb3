//! Request collapsing: concurrent misses for one path in one proxy make one origin fetch.
//!
//! The first miss for a path becomes the [`Leader`] of a flight and fetches from the origin; the
//! misses that arrive while it is in flight become [`Follower`]s. The leader keeps a body of up
//! to [`SHARED_BODY_LIMIT`] bytes in a shared list of pieces, and followers stream those pieces
//! to their own clients as they arrive. A larger body that will be filled is not kept: followers
//! wait for the leader to finish and then read the filled object from the cache. A body too
//! large to fill is left to each follower. A follower waits at most `collapse_timeout` in all,
//! then fetches on its own.
//!
//! A miss that races a flight's end (its cache lookup missed just before the leader's fill was
//! committed, its registration came just after the flight left the map) is caught by an epoch
//! counter: a new leader that saw the epoch move since its lookup is told to look in the cache
//! again before going to the origin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::path::CanonicalPath;

/// Largest body a leader keeps in memory for its followers (and never more than
/// `max_object_size`): concurrent misses cost at most this much memory each.
pub const SHARED_BODY_LIMIT: u64 = 64 << 20;

/// The flights of one proxy process.
#[derive(Debug, Default)]
pub struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
    epoch: AtomicU64,
}

#[derive(Debug, Default)]
struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FlightState {
    phase: Phase,
    /// The body length, once the origin answered 200.
    len: u64,
    pieces: Vec<Arc<[u8]>>,
    followers: usize,
}

/// Where a flight is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Waiting for the origin's answer.
    #[default]
    Fetching,
    /// 200; pieces arriving.
    Streaming,
    /// 200, but the body is too large to keep: followers wait for the end, then read the
    /// filled object from the cache.
    Unshared,
    /// Every byte is in the pieces.
    Done,
    /// The body broke off after streaming began.
    Broken,
    /// The origin answered 404/410.
    NotFound,
    /// The origin answered 304 to the leader's revalidation: the stored copy is current again.
    Refreshed,
    /// The fetch failed before the body.
    Error,
    /// The leader will not share this fetch (too large to buffer, or it found the object in
    /// the cache after all): followers go on their own.
    Abandoned,
}

/// What a follower learns from its leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// OK with this length: stream the pieces with [`Follower::next_pieces`].
    Body {
        /// Body length.
        len: u64,
    },
    /// FILE_NOT_FOUND.
    NotFound,
    /// ERROR (or, for a follower holding a stale copy, maybe that copy: stale-if-error).
    Error,
    /// The stored copy was revalidated: serve it from the cache.
    Refreshed,
    /// Serve yourself: the leader gave up sharing, or did not answer in time.
    OnYourOwn,
}

/// The leader's body broke off or stalled: the follower can only close its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Broken;

/// What [`Flights::join`] made of a miss.
pub enum Joined<'f> {
    /// Fetch from the origin and share.
    Leader(Leader<'f>),
    /// Wait for the leader.
    Follower(Follower),
}

impl Flights {
    /// An empty set of flights.
    pub fn new() -> Flights {
        Flights::default()
    }

    /// The current epoch: read it before the cache lookup and hand it to [`Flights::join`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Joins the flight for `path`, or starts one.
    pub fn join(&self, path: &CanonicalPath, seen_epoch: u64) -> Joined<'_> {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(path.as_str()) {
            let flight = Arc::clone(flight);
            lock(&flight.state).followers += 1;
            return Joined::Follower(Follower { flight });
        }
        let flight = Arc::new(Flight::default());
        map.insert(path.as_str().to_owned(), Arc::clone(&flight));
        let stale = self.epoch.load(Ordering::SeqCst) != seen_epoch;
        Joined::Leader(Leader {
            flights: self,
            path: path.as_str().to_owned(),
            flight,
            stale,
            ended: false,
        })
    }

    /// Flights in progress (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The request that fetches for a flight. Dropping it without an answer abandons the flight
/// (followers serve themselves) or, once the body started, breaks it.
pub struct Leader<'f> {
    flights: &'f Flights,
    path: String,
    flight: Arc<Flight>,
    stale: bool,
    ended: bool,
}

impl Leader<'_> {
    /// True when a flight ended between this request's cache lookup and its registration: look
    /// in the cache again before fetching.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Whether any follower is waiting on this flight.
    pub fn has_followers(&self) -> bool {
        lock(&self.flight.state).followers > 0
    }

    /// The origin answered 200 with `len` bytes; pieces follow.
    pub fn start_body(&self, len: u64) {
        lock(&self.flight.state).len = len;
        self.set(Phase::Streaming);
    }

    /// Shares a piece of the body (copied).
    pub fn push(&self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.push_shared(Arc::from(bytes));
        }
    }

    /// Shares a piece of the body already behind an `Arc` (no copy).
    pub fn push_shared(&self, piece: Arc<[u8]>) {
        if piece.is_empty() {
            return;
        }
        lock(&self.flight.state).pieces.push(piece);
        self.flight.changed.notify_all();
    }

    /// The origin answered 200 with a body too large to keep: followers will wait for the end
    /// and serve themselves (from the filled cache).
    pub fn start_unshared(&self) {
        self.set(Phase::Unshared);
    }

    /// Every byte was pushed (or, unshared, streamed and filled).
    pub fn complete(self) {
        let unshared = lock(&self.flight.state).phase == Phase::Unshared;
        self.end(if unshared {
            Phase::Abandoned
        } else {
            Phase::Done
        });
    }

    /// The body broke off.
    pub fn broken(self) {
        let unshared = lock(&self.flight.state).phase == Phase::Unshared;
        self.end(if unshared {
            Phase::Abandoned
        } else {
            Phase::Broken
        });
    }

    /// The origin answered 404/410.
    pub fn not_found(self) {
        self.end(Phase::NotFound);
    }

    /// The origin said the stored copy is current (304) and its metadata was refreshed.
    pub fn refreshed(self) {
        self.end(Phase::Refreshed);
    }

    /// The fetch failed before the body.
    pub fn error(self) {
        self.end(Phase::Error);
    }

    /// Followers go on their own.
    pub fn abandon(self) {
        self.end(Phase::Abandoned);
    }

    fn set(&self, phase: Phase) {
        lock(&self.flight.state).phase = phase;
        self.flight.changed.notify_all();
    }

    fn end(mut self, phase: Phase) {
        self.finish(phase);
    }

    fn finish(&mut self, phase: Phase) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.set(phase);
        let mut map = lock(&self.flights.map);
        // Bump before the flight leaves the map: a miss that registers after the removal must
        // see a new epoch (see the module docs).
        self.flights.epoch.fetch_add(1, Ordering::SeqCst);
        if map
            .get(&self.path)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.path);
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let streaming = lock(&self.flight.state).phase == Phase::Streaming;
        self.finish(if streaming {
            Phase::Broken
        } else {
            Phase::Abandoned
        });
    }
}

/// A request waiting on another's fetch.
pub struct Follower {
    flight: Arc<Flight>,
}

impl Follower {
    /// Waits up to `timeout` for the leader's answer (for an unshared body: for its end).
    pub fn wait_answer(&self, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.flight.state);
        loop {
            match state.phase {
                Phase::Fetching | Phase::Unshared => {}
                Phase::Streaming | Phase::Done => return Answer::Body { len: state.len },
                // Broken before this follower sent its header: it can still answer ERROR.
                Phase::Broken => return Answer::Error,
                Phase::NotFound => return Answer::NotFound,
                Phase::Refreshed => return Answer::Refreshed,
                Phase::Error => return Answer::Error,
                Phase::Abandoned => return Answer::OnYourOwn,
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Answer::OnYourOwn;
            };
            state = wait(&self.flight.changed, state, left);
        }
    }

    /// The pieces from index `from` on, waiting up to `timeout` for at least one. An empty list
    /// means the body is complete.
    pub fn next_pieces(&self, from: usize, timeout: Duration) -> Result<Vec<Arc<[u8]>>, Broken> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.flight.state);
        loop {
            if let Some(new) = state.pieces.get(from..).filter(|new| !new.is_empty()) {
                return Ok(new.to_vec());
            }
            match state.phase {
                Phase::Done => return Ok(Vec::new()),
                Phase::Streaming => {}
                _ => return Err(Broken),
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(Broken);
            };
            state = wait(&self.flight.changed, state, left);
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut state = lock(&self.flight.state);
        state.followers = state.followers.saturating_sub(1);
    }
}

/// Locks, ignoring poison: the state is valid after every single assignment.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    match cond.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn path(p: &str) -> CanonicalPath {
        CanonicalPath::parse(p).unwrap()
    }

    #[test]
    fn second_miss_follows_and_gets_the_body() {
        let flights = Flights::new();
        let epoch = flights.epoch();
        let Joined::Leader(leader) = flights.join(&path("/a"), epoch) else {
            panic!("first miss must lead");
        };
        assert!(!leader.is_stale());
        let Joined::Follower(follower) = flights.join(&path("/a"), epoch) else {
            panic!("second miss must follow");
        };
        assert!(leader.has_followers());
        leader.start_body(6);
        leader.push(b"abc");
        assert_eq!(
            follower.wait_answer(Duration::from_secs(5)),
            Answer::Body { len: 6 }
        );
        let first = follower.next_pieces(0, Duration::from_secs(5)).unwrap();
        assert_eq!(first.len(), 1);
        leader.push(b"def");
        leader.complete();
        let rest = follower.next_pieces(1, Duration::from_secs(5)).unwrap();
        assert_eq!(&*rest[0], b"def");
        assert!(follower
            .next_pieces(2, Duration::from_secs(5))
            .unwrap()
            .is_empty());
        assert!(flights.is_empty());
    }

    #[test]
    fn follower_waits_across_threads() {
        let flights = Arc::new(Flights::new());
        let Joined::Leader(leader) = flights.join(&path("/t"), flights.epoch()) else {
            panic!("must lead");
        };
        let Joined::Follower(follower) = flights.join(&path("/t"), flights.epoch()) else {
            panic!("must follow");
        };
        let waiter = thread::spawn(move || follower.wait_answer(Duration::from_secs(10)));
        leader.not_found();
        assert_eq!(waiter.join().unwrap(), Answer::NotFound);
    }

    #[test]
    fn a_dropped_leader_breaks_or_abandons() {
        let flights = Flights::new();
        let Joined::Leader(leader) = flights.join(&path("/x"), 0) else {
            panic!("must lead");
        };
        let Joined::Follower(follower) = flights.join(&path("/x"), 0) else {
            panic!("must follow");
        };
        drop(leader);
        assert_eq!(
            follower.wait_answer(Duration::from_secs(1)),
            Answer::OnYourOwn
        );

        let Joined::Leader(leader) = flights.join(&path("/y"), flights.epoch()) else {
            panic!("must lead");
        };
        let Joined::Follower(follower) = flights.join(&path("/y"), flights.epoch()) else {
            panic!("must follow");
        };
        leader.start_body(10);
        leader.push(b"12345");
        drop(leader);
        assert_eq!(
            follower
                .next_pieces(0, Duration::from_secs(1))
                .map(|p| p.len()),
            Ok(1)
        );
        assert_eq!(follower.next_pieces(1, Duration::from_secs(1)), Err(Broken));
    }

    #[test]
    fn an_unshared_body_sends_followers_on_their_own_at_its_end() {
        let flights = Flights::new();
        let Joined::Leader(leader) = flights.join(&path("/large"), 0) else {
            panic!("must lead");
        };
        let Joined::Follower(follower) = flights.join(&path("/large"), 0) else {
            panic!("must follow");
        };
        leader.start_unshared();
        assert_eq!(
            follower.wait_answer(Duration::from_millis(1)),
            Answer::OnYourOwn
        );
        let waiter = thread::spawn(move || follower.wait_answer(Duration::from_secs(10)));
        leader.complete();
        assert_eq!(waiter.join().unwrap(), Answer::OnYourOwn);
        assert!(flights.is_empty());
    }

    #[test]
    fn follower_times_out_to_its_own_fetch() {
        let flights = Flights::new();
        let _leader = flights.join(&path("/slow"), 0);
        let Joined::Follower(follower) = flights.join(&path("/slow"), 0) else {
            panic!("must follow");
        };
        assert_eq!(
            follower.wait_answer(Duration::from_millis(1)),
            Answer::OnYourOwn
        );
    }

    #[test]
    fn a_flight_ending_between_lookup_and_join_makes_the_next_leader_stale() {
        let flights = Flights::new();
        let seen = flights.epoch();
        let Joined::Leader(first) = flights.join(&path("/r"), seen) else {
            panic!("must lead");
        };
        first.complete();
        let Joined::Leader(second) = flights.join(&path("/r"), seen) else {
            panic!("the flight is over, must lead");
        };
        assert!(second.is_stale());
    }
}
