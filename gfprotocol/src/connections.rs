//! Open connections by state: exact counts kept by the front door and the workers, readable at
//! any time ([`Server::connection_counts`](crate::Server::connection_counts)) and announced to
//! the handler as moves between states ([`Handler::connection_moved`]).
//!
//! The states are protocol-neutral: a GetFile connection goes `ReadingHeader ->
//! WaitingForWorker -> Sending` (or `ReadingHeader -> Closing` when its header is refused);
//! `Idle` is for a front end with keep-alive, between two requests, and is always 0 for GetFile.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Handler;

/// Where an open connection is. (Not `non_exhaustive`: a user that publishes one gauge per
/// state should fail to build, not miss a state, when one is added.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Accepted; its request header has not arrived whole yet (front door).
    ReadingHeader,
    /// Its header is complete; it waits in the queue for a worker.
    WaitingForWorker,
    /// A worker is answering it (the handler runs, or its response is being written).
    Sending,
    /// Kept alive between two requests (not used by GetFile, which closes after one).
    Idle,
    /// Its header was refused (INVALID sent); the front door drains what the client still
    /// sends, for a bounded time, before it closes it.
    Closing,
}

impl ConnectionState {
    /// Every state, in the order above.
    pub const ALL: [ConnectionState; 5] = [
        ConnectionState::ReadingHeader,
        ConnectionState::WaitingForWorker,
        ConnectionState::Sending,
        ConnectionState::Idle,
        ConnectionState::Closing,
    ];

    /// Its name in metrics and logs: `reading_header`, `waiting_for_worker`, `sending`, `idle`,
    /// `closing`.
    pub const fn name(self) -> &'static str {
        match self {
            ConnectionState::ReadingHeader => "reading_header",
            ConnectionState::WaitingForWorker => "waiting_for_worker",
            ConnectionState::Sending => "sending",
            ConnectionState::Idle => "idle",
            ConnectionState::Closing => "closing",
        }
    }

    const fn index(self) -> usize {
        match self {
            ConnectionState::ReadingHeader => 0,
            ConnectionState::WaitingForWorker => 1,
            ConnectionState::Sending => 2,
            ConnectionState::Idle => 3,
            ConnectionState::Closing => 4,
        }
    }
}

/// The number of open connections in each [`ConnectionState`], and in all.
///
/// Each count is exact at rest; while connections move, a reader may see one connection in
/// neither or both of two states for an instant (a move enters the new state before it leaves
/// the old one, so [`open`](ConnectionCounts::open) never undercounts).
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    by_state: [AtomicUsize; 5],
    open: AtomicUsize,
}

impl ConnectionCounts {
    /// Open connections in `state`.
    pub fn get(&self, state: ConnectionState) -> usize {
        self.by_state
            .get(state.index())
            .map_or(0, |count| count.load(Ordering::SeqCst))
    }

    /// Open connections in all (what `max_connections` bounds).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn add(&self, state: ConnectionState) {
        if let Some(count) = self.by_state.get(state.index()) {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn sub(&self, state: ConnectionState) {
        if let Some(count) = self.by_state.get(state.index()) {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The counts of one server and whom to tell about changes.
pub(crate) struct Tracker {
    counts: Arc<ConnectionCounts>,
    handler: Arc<dyn Handler>,
}

impl Tracker {
    pub(crate) fn new(handler: Arc<dyn Handler>) -> Arc<Tracker> {
        Arc::new(Tracker {
            counts: Arc::new(ConnectionCounts::default()),
            handler,
        })
    }

    pub(crate) fn counts(&self) -> &Arc<ConnectionCounts> {
        &self.counts
    }

    /// Counts a new connection in `state` until the returned guard drops.
    pub(crate) fn open(self: &Arc<Self>, state: ConnectionState) -> Tracked {
        self.counts.open.fetch_add(1, Ordering::SeqCst);
        self.counts.add(state);
        self.moved(None, Some(state));
        Tracked {
            tracker: Arc::clone(self),
            state,
        }
    }

    fn moved(&self, left: Option<ConnectionState>, entered: Option<ConnectionState>) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.handler.connection_moved(left, entered)
        }));
    }
}

/// One open connection in the counts; it leaves them when dropped.
pub(crate) struct Tracked {
    tracker: Arc<Tracker>,
    state: ConnectionState,
}

impl Tracked {
    /// Moves the connection to `state`.
    pub(crate) fn set(&mut self, state: ConnectionState) {
        if state == self.state {
            return;
        }
        let counts = &self.tracker.counts;
        counts.add(state);
        counts.sub(self.state);
        let left = std::mem::replace(&mut self.state, state);
        self.tracker.moved(Some(left), Some(state));
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let counts = &self.tracker.counts;
        counts.sub(self.state);
        counts.open.fetch_sub(1, Ordering::SeqCst);
        self.tracker.moved(Some(self.state), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Silent;
    impl Handler for Silent {
        fn handle(&self, _: &crate::Request, _: &mut crate::ResponseWriter<'_>) {}
    }

    #[test]
    fn a_connection_is_counted_in_one_state_until_it_drops() {
        let tracker = Tracker::new(Arc::new(Silent));
        let counts = Arc::clone(tracker.counts());
        let mut first = tracker.open(ConnectionState::ReadingHeader);
        let second = tracker.open(ConnectionState::ReadingHeader);
        first.set(ConnectionState::WaitingForWorker);
        first.set(ConnectionState::Sending);
        assert_eq!(counts.get(ConnectionState::ReadingHeader), 1);
        assert_eq!(counts.get(ConnectionState::WaitingForWorker), 0);
        assert_eq!(counts.get(ConnectionState::Sending), 1);
        assert_eq!(counts.open(), 2);
        drop(first);
        drop(second);
        for state in ConnectionState::ALL {
            assert_eq!(counts.get(state), 0, "{state:?}");
        }
        assert_eq!(counts.open(), 0);
    }
}
