//! The front door: one thread that accepts connections and reads their request headers without
//! blocking, so that waiting for a header costs no worker thread.
//!
//! A connection moves through these states:
//!
//! 1. **accepted**: taken off the listener; past `max_connections` open connections it is
//!    closed at once and counted ([`Handler::over_capacity`](crate::Handler::over_capacity)).
//! 2. **reading header** (`ConnectionState::ReadingHeader`): registered with the readiness loop
//!    (epoll through `mio`); every readable event feeds the bytes to a [`HeaderFramer`]. Its
//!    deadline is `header_timeout` counted from accept. A malformed header, or an EOF before it
//!    is complete, is answered with INVALID from this thread
//!    ([`Handler::rejected`](crate::Handler::rejected)); so is a header not complete by the
//!    deadline ([`Handler::header_timed_out`](crate::Handler::header_timed_out)).
//! 3. **closing** (`Closing`): after an INVALID the loop lingers: it half-closes and discards
//!    what the client still sends (bounded in time and bytes), so the close is a FIN and not a
//!    reset that could destroy the answer.
//! 4. **waiting for a worker** (`WaitingForWorker`): a complete header; the parsed request and
//!    the socket leave the loop for the worker pool's bounded queue (held in the loop while the
//!    queue is full).
//! 5. **sending** (`Sending`): a worker calls the handler (see `server.rs`).
//! 6. **closed**.
//!
//! Out of file descriptors (EMFILE, ENFILE), `accept` fails and the connection stays in the
//! backlog, its client waiting with no answer (and the edge-triggered listener reports it no
//! more). The loop keeps one descriptor in reserve (`/dev/null`): it closes it, accepts the
//! pending connection, closes that at once (counted as over capacity, logged at most once a
//! second) and reopens the reserve, until the backlog is empty (`accept(2)` takes a descriptor
//! before it looks at the backlog, so EMFILE also comes when none waits). When even that
//! fails, it stops polling the listener for `ACCEPT_PAUSE` (a deadline of the loop, never a
//! sleep, so the other connections go on).
//!
//! Deadlines are kept in two queues ordered by deadline: every connection gets the same
//! header timeout (and every lingering one the same linger time), so accept order is deadline
//! order and a `VecDeque` is the whole timer. Entries of connections that left earlier are
//! skipped when they come up.
//!
//! At shutdown the listener is closed at once (new connections are refused), a request whose
//! header is complete (already in the socket buffer) still goes to the workers, and the other
//! connections (idle, partial header, lingering) are closed.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::codec::{Malformed, RequestDecoder};
use crate::connections::{ConnectionState, Tracked, Tracker};
use crate::pool::Pool;
use crate::{Handler, ResponseHeader};

/// Largest single read while waiting for a header.
const HEADER_READ_CHUNK: usize = 8192;
/// After an INVALID answer, unread request bytes are drained for at most this long...
pub(crate) const LINGER_TIME: Duration = Duration::from_millis(500);
/// ... and at most this many bytes.
const LINGER_BYTES: usize = 1 << 20;
/// The listener is not polled for this long after an accept that failed even with the
/// reserve descriptor released (or for another reason than EMFILE).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning about connections shed for want of descriptors per this interval.
const SHED_WARN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a full worker queue is retried.
const QUEUE_RETRY: Duration = Duration::from_millis(5);
const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Finds a complete request header in the bytes of one connection, fed as they arrive.
/// GetFile is the one implementation; another protocol's front end adds its own.
pub(crate) trait HeaderFramer {
    /// What a complete header yields.
    type Request;
    /// Feeds more bytes: `Ok(Some)` once the header is complete (later bytes are ignored),
    /// `Ok(None)` for more, `Err` when the bytes can never be a valid header.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<Self::Request>, Malformed>;
}

/// The GetFile request header; yields the path.
pub(crate) struct GetFileFramer(RequestDecoder);

impl GetFileFramer {
    pub(crate) fn new() -> Self {
        GetFileFramer(RequestDecoder::lenient())
    }
}

impl HeaderFramer for GetFileFramer {
    type Request = String;
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<String>, Malformed> {
        Ok(self.0.feed(bytes)?.map(|(header, _)| header.path))
    }
}

/// A request ready for a worker: the parsed header and its socket (blocking mode unset: the
/// worker sets the socket options it needs).
pub(crate) struct Ready<R> {
    pub(crate) request: R,
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// Its place in the connection counts (and against `max_connections`) until the worker
    /// is done.
    pub(crate) connection: Tracked,
}

/// Settings of the loop.
pub(crate) struct FrontDoorConfig {
    pub(crate) header_timeout: Duration,
    pub(crate) max_connections: usize,
}

enum State<F> {
    Reading(F),
    Lingering { drained: usize },
}

struct Connection<F> {
    stream: TcpStream,
    peer: SocketAddr,
    state: State<F>,
    tracked: Tracked,
}

/// What accepting with the reserve descriptor came to.
enum Shed {
    /// A connection was accepted and closed; more may wait.
    One,
    /// None was waiting: the next one wakes the loop.
    BacklogEmpty,
    /// The reserve could not be used or reopened: stop polling the listener for a while.
    Failed,
}

/// Why a header is answered INVALID.
enum Refusal {
    Malformed(Malformed),
    TimedOut,
}

/// The loop itself; `run` returns at shutdown.
pub(crate) struct FrontDoor<F: HeaderFramer> {
    config: FrontDoorConfig,
    handler: Arc<dyn Handler>,
    tracker: Arc<Tracker>,
    poll: Poll,
    listener: Option<TcpListener>,
    wake: OwnedFd,
    connections: HashMap<usize, Connection<F>>,
    header_deadlines: VecDeque<(Instant, usize)>,
    linger_deadlines: VecDeque<(Instant, usize)>,
    next_token: usize,
    waiting: VecDeque<Ready<F::Request>>,
    new_framer: fn() -> F,
    /// Released to accept (and close) one connection when out of descriptors.
    reserve: Option<File>,
    /// The listener is deregistered until then.
    accept_paused_until: Option<Instant>,
    shed: ShedLog,
}

/// Connections closed for want of descriptors, logged at most once per `SHED_WARN_INTERVAL`.
#[derive(Default)]
struct ShedLog {
    unreported: u64,
    warned_at: Option<Instant>,
}

impl ShedLog {
    fn note(&mut self, error: &io::Error) {
        self.unreported += 1;
        if self
            .warned_at
            .is_none_or(|at| at.elapsed() >= SHED_WARN_INTERVAL)
        {
            tracing::warn!(
                %error,
                connections = self.unreported,
                "out of file descriptors: new connections are closed at once"
            );
            self.unreported = 0;
            self.warned_at = Some(Instant::now());
        }
    }
}

impl<F: HeaderFramer> FrontDoor<F>
where
    F::Request: Send + 'static,
{
    pub(crate) fn new(
        config: FrontDoorConfig,
        handler: Arc<dyn Handler>,
        tracker: Arc<Tracker>,
        listener: TcpListener,
        wake: OwnedFd,
        new_framer: fn() -> F,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        poll.registry()
            .register(&mut SourceFd(&wake.as_raw_fd()), WAKE, Interest::READABLE)?;
        Ok(FrontDoor {
            config,
            handler,
            tracker,
            poll,
            listener: Some(listener),
            wake,
            connections: HashMap::new(),
            header_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
            next_token: FIRST_CONNECTION,
            waiting: VecDeque::new(),
            new_framer,
            reserve: open_reserve(),
            accept_paused_until: None,
            shed: ShedLog::default(),
        })
    }

    /// Runs until `stopping()` is true after a wake-up, then hands the complete requests
    /// still waiting to the workers (blocking) and closes the rest.
    pub(crate) fn run(
        mut self,
        workers: &Pool<Ready<F::Request>>,
        stopping: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if stopping() {
                break;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKE => {}
                    Token(token) => self.on_readable(token),
                }
            }
            let now = Instant::now();
            self.expire(now);
            self.resume_accepting(now);
            self.dispatch(workers);
        }
        self.close(workers);
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.waiting.is_empty() {
            return Some(QUEUE_RETRY);
        }
        let now = Instant::now();
        let next = [self.header_deadlines.front(), self.linger_deadlines.front()]
            .into_iter()
            .flatten()
            .map(|(deadline, _)| *deadline)
            .chain(self.accept_paused_until)
            .min()?;
        // Rounded up so the deadline has passed when poll returns.
        Some(next.saturating_duration_since(now) + Duration::from_millis(1))
    }

    /// Accepts until the backlog is empty (the registration is edge-triggered).
    fn accept_all(&mut self) {
        loop {
            if self.accept_paused_until.is_some() {
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                // accept(2) takes a descriptor before it looks at the backlog: EMFILE comes
                // whether or not a connection waits.
                Err(e) if is_out_of_descriptors(&e) => match self.shed_one(&e) {
                    Shed::One => {}
                    Shed::BacklogEmpty => return,
                    Shed::Failed => {
                        self.pause_accepting();
                        return;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    /// Out of descriptors: accepts one pending connection with the reserve descriptor and
    /// closes it at once.
    fn shed_one(&mut self, error: &io::Error) -> Shed {
        let Some(listener) = &self.listener else {
            return Shed::BacklogEmpty;
        };
        let Some(reserve) = self.reserve.take() else {
            // The reserve could not be reopened last time (another thread took the
            // descriptor); try again.
            self.reserve = open_reserve();
            return if self.reserve.is_some() {
                Shed::One
            } else {
                Shed::Failed
            };
        };
        drop(reserve);
        // The connection is closed before the reserve is reopened: it holds the descriptor.
        let accepted = match listener.accept() {
            Ok((stream, peer)) => {
                drop(stream);
                Ok(peer)
            }
            Err(e) => Err(e),
        };
        self.reserve = open_reserve();
        match accepted {
            Ok(peer) => {
                self.shed.note(error);
                let _ = catch_unwind(AssertUnwindSafe(|| self.handler.over_capacity(peer)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Shed::BacklogEmpty,
            Err(e) => {
                tracing::debug!(error = %e, "accept with the reserve descriptor failed");
                return Shed::Failed;
            }
        }
        if self.reserve.is_some() {
            Shed::One
        } else {
            Shed::Failed
        }
    }

    /// Stops polling the listener until `ACCEPT_PAUSE` from now.
    fn pause_accepting(&mut self) {
        if let Some(listener) = &self.listener {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    /// Polls the listener again once the pause is over, and accepts what waits.
    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_none_or(|until| until > now) {
            return;
        }
        self.accept_paused_until = None;
        if let Some(listener) = &self.listener {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            ) {
                tracing::warn!(error = %e, "cannot poll the listener again");
                self.pause_accepting();
                return;
            }
        }
        self.accept_all();
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.tracker.counts().open() >= self.config.max_connections {
            drop(stream);
            let _ = catch_unwind(AssertUnwindSafe(|| self.handler.over_capacity(peer)));
            return;
        }
        let tracked = self.tracker.open(ConnectionState::ReadingHeader);
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::debug!(error = %e, "cannot make a connection non-blocking");
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(token),
            Interest::READABLE,
        ) {
            tracing::warn!(error = %e, "cannot register a connection");
            return;
        }
        self.header_deadlines
            .push_back((Instant::now() + self.config.header_timeout, token));
        self.connections.insert(
            token,
            Connection {
                stream,
                peer,
                state: State::Reading((self.new_framer)()),
                tracked,
            },
        );
        // Bytes that arrived with the connection are read at once: with edge-triggered epoll
        // the registration may not report them.
        self.on_readable(token);
    }

    fn on_readable(&mut self, token: usize) {
        let mut buf = [0u8; HEADER_READ_CHUNK];
        let outcome = {
            let Some(connection) = self.connections.get_mut(&token) else {
                return;
            };
            read_available(connection, &mut buf)
        };
        match outcome {
            Step::More => {}
            Step::Complete(request) => self.queue_for_worker(token, request),
            Step::Malformed(reason) => self.reject(token, Refusal::Malformed(reason)),
            Step::Close => drop(self.remove(token)),
        }
    }

    fn remove(&mut self, token: usize) -> Option<Connection<F>> {
        let connection = self.connections.remove(&token)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&connection.stream.as_raw_fd()));
        Some(connection)
    }

    fn queue_for_worker(&mut self, token: usize, request: F::Request) {
        if let Some(mut connection) = self.remove(token) {
            connection.tracked.set(ConnectionState::WaitingForWorker);
            self.waiting.push_back(Ready {
                request,
                stream: connection.stream,
                peer: connection.peer,
                connection: connection.tracked,
            });
        }
    }

    /// INVALID, a half-close, then the linger state.
    fn reject(&mut self, token: usize, refusal: Refusal) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let peer = connection.peer;
        let answered =
            crate::server::send_all(connection.stream.as_fd(), &ResponseHeader::Invalid.encode())
                .and_then(|()| connection.stream.shutdown(Shutdown::Write));
        let handler = &self.handler;
        match &refusal {
            Refusal::Malformed(reason) => {
                tracing::debug!(%peer, %reason, "invalid request");
                let _ = catch_unwind(AssertUnwindSafe(|| handler.rejected(peer, reason)));
            }
            Refusal::TimedOut => {
                tracing::debug!(%peer, "request header not complete in time");
                let _ = catch_unwind(AssertUnwindSafe(|| handler.header_timed_out(peer)));
            }
        }
        match answered {
            Ok(()) => {
                connection.state = State::Lingering { drained: 0 };
                connection.tracked.set(ConnectionState::Closing);
                self.linger_deadlines
                    .push_back((Instant::now() + LINGER_TIME, token));
                // Whatever is already buffered is drained now (edge-triggered epoll).
                self.on_readable(token);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sending INVALID failed");
                drop(self.remove(token));
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, token)) = self.header_deadlines.front() {
            if deadline > now {
                break;
            }
            self.header_deadlines.pop_front();
            let reading = self
                .connections
                .get(&token)
                .is_some_and(|c| matches!(c.state, State::Reading(_)));
            if reading {
                self.reject(token, Refusal::TimedOut);
            }
        }
        while let Some(&(deadline, token)) = self.linger_deadlines.front() {
            if deadline > now {
                break;
            }
            self.linger_deadlines.pop_front();
            drop(self.remove(token));
        }
    }

    fn dispatch(&mut self, workers: &Pool<Ready<F::Request>>) {
        while let Some(ready) = self.waiting.pop_front() {
            if let Err(ready) = workers.try_submit(ready) {
                self.waiting.push_front(ready);
                return;
            }
        }
    }

    fn close(mut self, workers: &Pool<Ready<F::Request>>) {
        // Closing the listener first: a connection attempted from now on is refused.
        self.listener = None;
        // A request that is already in the socket buffer is served; the rest are idle.
        let mut buf = [0u8; HEADER_READ_CHUNK];
        let tokens: Vec<usize> = self.connections.keys().copied().collect();
        for token in tokens {
            let complete = match self.connections.get_mut(&token) {
                Some(connection) if matches!(connection.state, State::Reading(_)) => {
                    match read_available(connection, &mut buf) {
                        Step::Complete(request) => Some(request),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(request) = complete {
                self.queue_for_worker(token, request);
            }
        }
        let idle = self.connections.len();
        self.connections.clear();
        tracing::debug!(idle, "front door closed its idle connections");
        for ready in self.waiting.drain(..) {
            workers.submit_waiting(ready);
        }
        drop(self.wake);
    }
}

/// The descriptor kept for accepting (and closing) a connection when out of descriptors.
fn open_reserve() -> Option<File> {
    match File::open("/dev/null") {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::debug!(error = %e, "no reserve descriptor");
            None
        }
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EMFILE | nix::errno::Errno::ENFILE)
    )
}

enum Step<R> {
    More,
    Complete(R),
    Malformed(Malformed),
    Close,
}

/// Reads until the socket would block (the registration is edge-triggered).
fn read_available<F: HeaderFramer>(
    connection: &mut Connection<F>,
    buf: &mut [u8],
) -> Step<F::Request> {
    loop {
        let n = match (&connection.stream).read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its header");
                return Step::Close;
            }
        };
        match &mut connection.state {
            State::Reading(_) if n == 0 => return Step::Malformed(Malformed::Incomplete),
            State::Reading(framer) => match framer.feed(buf.get(..n).unwrap_or_default()) {
                Ok(Some(request)) => return Step::Complete(request),
                Ok(None) => {}
                Err(reason) => return Step::Malformed(reason),
            },
            State::Lingering { .. } if n == 0 => return Step::Close,
            State::Lingering { drained } => {
                *drained += n;
                if *drained >= LINGER_BYTES {
                    return Step::Close;
                }
            }
        }
    }
}
