//! Filling a cache with an origin body while it streams to the client.
//!
//! The fill is a side show that must never slow the client. The request thread hands each piece
//! of the body to a [`FillFeed`] (an `Arc` clone, no copy, and never a wait) and goes on sending
//! to the client; a fill thread ([`run_fill`]) takes the pieces from the feed and PUTs them into
//! the cache at the cache's pace. (A body of one piece is filled by the request thread itself
//! once the client has it.) The pieces are buffers of a [`PiecePool`], reused once the client,
//! the fill and the followers are done with them. If the cache declines, fails, takes longer than
//! `cache_timeout` for a chunk, or falls more than [`FILL_BACKLOG`] bytes behind, the fill is
//! dropped and nothing else happens. The bytes queued by all the fills of a proxy process are
//! bounded too ([`FillBudget`], [`FILL_BUDGET`]): a fill that would exceed the budget is dropped,
//! so many slow fills of large objects cannot grow the proxy's memory without limit. When the client's transfer ends the request thread marks
//! the feed complete and waits for the fill thread to commit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ipc::{CacheSlot, Region};

use crate::metrics::Counter;
use crate::path::CanonicalPath;
use crate::stats::Stats;

/// Bytes of one piece of an origin body: the body is read into pieces of this size (the last
/// one shorter), which the client, the fill and the flight's followers share.
pub const PIECE_SIZE: usize = 256 * 1024;

/// Most bytes of piece buffers a proxy process keeps for reuse: a 64 MiB body (the largest a
/// flight keeps whole) and then some, so that back-to-back misses touch no fresh memory.
pub const PIECE_POOL_LIMIT: usize = 96 << 20;

/// Most bytes a fill may fall behind the client before it is dropped.
pub const FILL_BACKLOG: u64 = 64 << 20;

/// Most bytes all the fills of one proxy process may hold queued at once.
pub const FILL_BUDGET: u64 = 256 << 20;

/// The bytes queued for fills across one proxy process, bounded by a limit.
#[derive(Debug)]
pub struct FillBudget {
    limit: u64,
    used: AtomicU64,
}

impl FillBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> FillBudget {
        FillBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Bytes queued now.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// Piece buffers of [`PIECE_SIZE`] bytes, reused once every holder has dropped them.
///
/// Every piece of an origin body used to be a fresh allocation; the kernel then zeroed each new
/// page on first touch (page faults, `clear_page`), which cost more than the copies. The pool
/// keeps one reference to each buffer it handed out: when the client, the fill and the
/// followers have dropped theirs, the pool's is the last, and the buffer is free to be read
/// into again. The buffers it keeps are bounded by its limit; past it, a piece is a plain
/// allocation that is freed as before. What the pieces in use hold is bounded as before, by
/// [`FILL_BACKLOG`], the [`FillBudget`] and the flights' own limit.
#[derive(Debug)]
pub struct PiecePool {
    limit: usize,
    /// Every buffer the pool keeps, in use or free; the oldest first (they come free in
    /// about that order).
    buffers: Mutex<VecDeque<Arc<[u8]>>>,
}

impl PiecePool {
    /// A pool that keeps at most `limit` bytes of buffers.
    pub const fn new(limit: usize) -> PiecePool {
        PiecePool {
            limit,
            buffers: Mutex::new(VecDeque::new()),
        }
    }

    /// The pool of this process.
    pub fn process() -> &'static PiecePool {
        static POOL: PiecePool = PiecePool::new(PIECE_POOL_LIMIT);
        &POOL
    }

    /// A buffer of [`PIECE_SIZE`] bytes that nobody else holds (its old bytes still in it): a
    /// free one of the pool's, else a new one. Give it back with [`PiecePool::keep`] before
    /// sharing it.
    pub fn take(&self) -> Arc<[u8]> {
        let mut buffers = lock(&self.buffers);
        let free = buffers
            .iter()
            .position(|buffer| Arc::strong_count(buffer) == 1 && Arc::weak_count(buffer) == 0);
        if let Some(buffer) = free.and_then(|at| buffers.remove(at)) {
            return buffer;
        }
        drop(buffers);
        Arc::from(vec![0u8; PIECE_SIZE])
    }

    /// Keeps a reference to a full buffer from [`PiecePool::take`] (while the pool has room),
    /// so that it can be taken again once every other holder dropped it.
    pub fn keep(&self, buffer: &Arc<[u8]>) {
        if buffer.len() != PIECE_SIZE {
            return;
        }
        let mut buffers = lock(&self.buffers);
        if (buffers.len() + 1) * PIECE_SIZE <= self.limit {
            buffers.push_back(Arc::clone(buffer));
        }
    }

    /// Bytes of buffers the pool keeps, in use or free.
    pub fn kept_bytes(&self) -> usize {
        lock(&self.buffers).len() * PIECE_SIZE
    }
}

/// The pieces of a body on their way to a fill thread.
#[derive(Debug)]
pub struct FillFeed {
    state: Mutex<FeedState>,
    changed: Condvar,
    backlog_limit: u64,
    budget: Arc<FillBudget>,
}

#[derive(Debug, Default)]
struct FeedState {
    pieces: VecDeque<Arc<[u8]>>,
    queued: u64,
    end: FeedEnd,
    /// The consumer sleeps on `changed`: a new piece must wake it (and only then: a wake-up
    /// nobody waits for is still a system call).
    consumer_waiting: bool,
}

/// How the producer or the consumer ended the feed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum FeedEnd {
    /// Pieces may still come.
    #[default]
    Open,
    /// Every piece was pushed: commit.
    Complete,
    /// The body broke off, or the fill gave up: drop.
    Cancelled,
}

impl FillFeed {
    /// A feed that gives up when more than `backlog_limit` bytes wait, or when `budget` has no
    /// room for the next piece.
    pub fn new(backlog_limit: u64, budget: Arc<FillBudget>) -> FillFeed {
        FillFeed {
            state: Mutex::new(FeedState::default()),
            changed: Condvar::new(),
            backlog_limit,
            budget,
        }
    }

    /// Queues a piece. Never waits. Returns false once the fill is dropped (so the caller can
    /// stop feeding it).
    pub fn push(&self, piece: Arc<[u8]>) -> bool {
        let mut state = lock(&self.state);
        if state.end != FeedEnd::Open {
            return false;
        }
        let len = piece.len() as u64;
        if state.queued + len > self.backlog_limit || !self.budget.take(len) {
            tracing::debug!(
                queued = state.queued,
                process_queued = self.budget.in_use(),
                "fill fell too far behind"
            );
            self.discard(&mut state);
            drop(state);
            self.changed.notify_all();
            return false;
        }
        if len > 0 {
            state.queued += len;
            state.pieces.push_back(piece);
            let wake = state.consumer_waiting;
            drop(state);
            if wake {
                self.changed.notify_all();
            }
        }
        true
    }

    /// Every piece was pushed: the fill may commit.
    pub fn complete(&self) {
        self.end(FeedEnd::Complete);
    }

    /// The body will not be complete: the fill is dropped.
    pub fn cancel(&self) {
        self.end(FeedEnd::Cancelled);
    }

    fn end(&self, end: FeedEnd) {
        let mut state = lock(&self.state);
        match end {
            // A fill that gave up needs none of its queued pieces, even after a complete feed.
            FeedEnd::Cancelled => self.discard(&mut state),
            _ if state.end == FeedEnd::Open => state.end = end,
            _ => {}
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Drops the fill: its queued pieces go, and their bytes back to the budget.
    fn discard(&self, state: &mut FeedState) {
        state.end = FeedEnd::Cancelled;
        state.pieces.clear();
        self.budget.give(state.queued);
        state.queued = 0;
    }

    /// The next piece; `Ok(None)` when complete; `Err(())` when cancelled.
    fn next(&self, timeout: Duration) -> Result<Option<Arc<[u8]>>, ()> {
        let mut state = lock(&self.state);
        loop {
            if state.end == FeedEnd::Cancelled {
                return Err(());
            }
            if let Some(piece) = state.pieces.pop_front() {
                let len = piece.len() as u64;
                state.queued = state.queued.saturating_sub(len);
                self.budget.give(len);
                return Ok(Some(piece));
            }
            if state.end == FeedEnd::Complete {
                return Ok(None);
            }
            state.consumer_waiting = true;
            let (next, waited) = match self.changed.wait_timeout(state, timeout) {
                Ok(pair) => pair,
                Err(poisoned) => poisoned.into_inner(),
            };
            state = next;
            state.consumer_waiting = false;
            if waited.timed_out() && state.pieces.is_empty() && state.end == FeedEnd::Open {
                // The producer is bounded by the origin's deadline; this only guards against a
                // producer that forgot to end the feed.
                return Err(());
            }
        }
    }
}

impl Drop for FillFeed {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget.give(state.queued);
    }
}

/// Offers cache `slot` the `len` bytes fed through `feed` and commits them when the feed is
/// complete. Runs on the fill thread; counts the fill stored or dropped. `feed_timeout` bounds
/// the wait for the next piece (the origin's deadline), `cache_timeout` each wait on the cache.
#[allow(clippy::too_many_arguments)]
pub fn run_fill(
    region: &Region,
    stats: &Stats,
    slot: CacheSlot,
    path: &CanonicalPath,
    len: u64,
    meta: &[u8],
    feed: &FillFeed,
    feed_timeout: Duration,
    cache_timeout: Duration,
) -> bool {
    let stored = fill(
        region,
        slot,
        path,
        len,
        meta,
        feed,
        feed_timeout,
        cache_timeout,
    );
    match &stored {
        Ok(()) => stats.incr(Counter::FillsStored),
        Err(reason) => {
            tracing::debug!(slot = slot.as_raw(), %path, %reason, "fill dropped");
            stats.incr(Counter::FillsDropped);
            // Tell the producer to stop queueing.
            feed.cancel();
        }
    }
    stored.is_ok()
}

#[allow(clippy::too_many_arguments)]
fn fill(
    region: &Region,
    slot: CacheSlot,
    path: &CanonicalPath,
    len: u64,
    meta: &[u8],
    feed: &FillFeed,
    feed_timeout: Duration,
    cache_timeout: Duration,
) -> Result<(), String> {
    let lease = region.acquire(cache_timeout).map_err(|e| e.to_string())?;
    let mut stream = lease
        .put_with_meta(slot, path.as_str(), len, meta)
        .map_err(|e| e.to_string())?;
    loop {
        match feed.next(feed_timeout) {
            Ok(Some(piece)) => stream
                .write(&piece, cache_timeout)
                .map_err(|e| e.to_string())?,
            Ok(None) => return stream.finish(cache_timeout).map_err(|e| e.to_string()),
            Err(()) => return Err("the body did not complete".into()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(bytes: &[u8]) -> Arc<[u8]> {
        Arc::from(bytes)
    }

    fn budget(limit: u64) -> Arc<FillBudget> {
        Arc::new(FillBudget::new(limit))
    }

    #[test]
    fn a_pool_buffer_comes_back_only_when_every_holder_dropped_it() {
        let pool = PiecePool::new(2 * PIECE_SIZE);
        let mut first = pool.take();
        assert_eq!(first.len(), PIECE_SIZE);
        Arc::get_mut(&mut first).expect("nobody else holds it")[0] = 7;
        pool.keep(&first);
        let follower = Arc::clone(&first);
        drop(first);
        // A follower still reads the first buffer: the next piece gets another one.
        let mut second = pool.take();
        assert!(!Arc::ptr_eq(&second, &follower));
        assert!(Arc::get_mut(&mut second).is_some());
        pool.keep(&second);
        drop(second);
        assert_eq!(pool.kept_bytes(), 2 * PIECE_SIZE);
        // The second is free again; once the follower is done, so is the first.
        let third = pool.take();
        assert_eq!(pool.kept_bytes(), PIECE_SIZE);
        pool.keep(&third);
        drop(third);
        let follower_ptr = Arc::as_ptr(&follower);
        drop(follower);
        let mut reused = Vec::new();
        for _ in 0..2 {
            let mut buffer = pool.take();
            assert!(Arc::get_mut(&mut buffer).is_some());
            reused.push(buffer);
        }
        assert!(reused
            .iter()
            .any(|b| std::ptr::addr_eq(Arc::as_ptr(b), follower_ptr)));
        assert_eq!(
            reused
                .iter()
                .find(|b| std::ptr::addr_eq(Arc::as_ptr(b), follower_ptr))
                .map(|b| b[0]),
            Some(7)
        );
    }

    #[test]
    fn a_full_pool_hands_out_plain_buffers_and_keeps_no_more() {
        let pool = PiecePool::new(PIECE_SIZE);
        let held = pool.take();
        pool.keep(&held);
        let extra = pool.take();
        assert!(!Arc::ptr_eq(&held, &extra));
        pool.keep(&extra);
        assert_eq!(pool.kept_bytes(), PIECE_SIZE);
        // A short piece is never kept: it is a copy, not a pool buffer.
        pool.keep(&Arc::from(&b"short"[..]));
        assert_eq!(pool.kept_bytes(), PIECE_SIZE);
    }

    #[test]
    fn fills_share_the_process_budget_and_give_it_back() {
        let shared = budget(6);
        let first = FillFeed::new(100, Arc::clone(&shared));
        let second = FillFeed::new(100, Arc::clone(&shared));
        assert!(first.push(piece(b"abcd")));
        // Within its own backlog, but over what the process has left: the second fill is dropped.
        assert!(!second.push(piece(b"xyz")));
        assert_eq!(second.next(Duration::from_secs(1)), Err(()));
        assert_eq!(shared.in_use(), 4);
        // Consuming gives the bytes back; so does dropping a feed with pieces still queued.
        assert_eq!(
            first.next(Duration::from_secs(1)).unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
        assert_eq!(shared.in_use(), 0);
        assert!(first.push(piece(b"efg")));
        assert_eq!(shared.in_use(), 3);
        drop(first);
        assert_eq!(shared.in_use(), 0);
    }

    #[test]
    fn a_fill_that_gives_up_after_completion_frees_its_queue() {
        let shared = budget(100);
        let feed = FillFeed::new(100, Arc::clone(&shared));
        assert!(feed.push(piece(b"abc")));
        feed.complete();
        feed.cancel();
        assert_eq!(shared.in_use(), 0);
        assert_eq!(feed.next(Duration::from_secs(1)), Err(()));
    }

    #[test]
    fn pieces_come_out_in_order_then_the_end() {
        let feed = FillFeed::new(100, budget(1000));
        assert!(feed.push(piece(b"ab")));
        assert!(feed.push(piece(b"cd")));
        feed.complete();
        let t = Duration::from_secs(1);
        assert_eq!(feed.next(t).unwrap().as_deref(), Some(&b"ab"[..]));
        assert_eq!(feed.next(t).unwrap().as_deref(), Some(&b"cd"[..]));
        assert_eq!(feed.next(t), Ok(None));
    }

    #[test]
    fn a_backlog_over_the_limit_drops_the_fill() {
        let feed = FillFeed::new(5, budget(1000));
        assert!(feed.push(piece(b"abc")));
        assert!(!feed.push(piece(b"def")));
        assert!(!feed.push(piece(b"g")));
        assert_eq!(feed.next(Duration::from_secs(1)), Err(()));
    }

    #[test]
    fn a_cancelled_feed_is_never_committed() {
        let feed = FillFeed::new(100, budget(1000));
        assert!(feed.push(piece(b"abc")));
        feed.cancel();
        feed.complete();
        assert_eq!(feed.next(Duration::from_secs(1)), Err(()));
    }

    #[test]
    fn the_consumer_waits_for_the_producer() {
        let feed = Arc::new(FillFeed::new(100, budget(1000)));
        let consumer = {
            let feed = Arc::clone(&feed);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(Some(p)) = feed.next(Duration::from_secs(10)) {
                    got.extend_from_slice(&p);
                }
                got
            })
        };
        assert!(feed.push(piece(b"12")));
        assert!(feed.push(piece(b"34")));
        feed.complete();
        assert_eq!(consumer.join().unwrap(), b"1234");
    }
}
