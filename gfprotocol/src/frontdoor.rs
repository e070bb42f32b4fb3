//! The front door: one thread that accepts connections and reads their request headers without
//! blocking, so that waiting for a header costs no worker thread.
//!
//! A connection moves through these states:
//!
//! 1. **accepted**: taken off the listener; past `max_connections` open connections it is
//!    closed at once and counted ([`Handler::over_capacity`](crate::Handler::over_capacity)).
//! 2. **reading header**: registered with the readiness loop (epoll through `mio`); every
//!    readable event feeds the bytes to a [`HeaderFramer`]. Its deadline is `header_timeout`
//!    counted from accept. A malformed header, or none complete by the deadline (or an EOF
//!    first), is answered with INVALID from this thread, which then **lingers**: it half-closes
//!    and discards what the client still sends (bounded in time and bytes), so the close is a
//!    FIN and not a reset that could destroy the answer.
//! 3. **queued for a worker**: a complete header; the parsed request and the socket leave the
//!    loop for the bounded worker queue (held in the loop while the queue is full).
//! 4. **served**: a worker calls the handler (see `server.rs`).
//! 5. **closed**.
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
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::codec::{Malformed, RequestDecoder};
use crate::{Handler, ResponseHeader};

/// Largest single read while waiting for a header.
const HEADER_READ_CHUNK: usize = 8192;
/// After an INVALID answer, unread request bytes are drained for at most this long...
pub(crate) const LINGER_TIME: Duration = Duration::from_millis(500);
/// ... and at most this many bytes.
const LINGER_BYTES: usize = 1 << 20;
/// Pause after a failing accept (EMFILE and the like) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);
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
    /// Released when the worker is done, for `max_connections`.
    pub(crate) _slot: OpenSlot,
}

/// One open connection counted against `max_connections`; released on drop.
pub(crate) struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
    _slot: OpenSlot,
}

/// The loop itself; `run` returns at shutdown.
pub(crate) struct FrontDoor<F: HeaderFramer> {
    config: FrontDoorConfig,
    handler: Arc<dyn Handler>,
    poll: Poll,
    listener: Option<TcpListener>,
    wake: OwnedFd,
    connections: HashMap<usize, Connection<F>>,
    header_deadlines: VecDeque<(Instant, usize)>,
    linger_deadlines: VecDeque<(Instant, usize)>,
    next_token: usize,
    open: Arc<AtomicUsize>,
    waiting: VecDeque<Ready<F::Request>>,
    new_framer: fn() -> F,
}

impl<F: HeaderFramer> FrontDoor<F>
where
    F::Request: Send,
{
    pub(crate) fn new(
        config: FrontDoorConfig,
        handler: Arc<dyn Handler>,
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
            poll,
            listener: Some(listener),
            wake,
            connections: HashMap::new(),
            header_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
            next_token: FIRST_CONNECTION,
            open: Arc::new(AtomicUsize::new(0)),
            waiting: VecDeque::new(),
            new_framer,
        })
    }

    /// Runs until `stopping()` is true after a wake-up, then hands the complete requests
    /// still waiting to the workers (blocking) and closes the rest.
    pub(crate) fn run(
        mut self,
        workers: &SyncSender<Ready<F::Request>>,
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
            self.expire(Instant::now());
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
            .min()?;
        // Rounded up so the deadline has passed when poll returns.
        Some(next.saturating_duration_since(now) + Duration::from_millis(1))
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE and the like: the pending connection stays in the backlog; the
                    // listener is level-ready again on the next poll.
                    tracing::warn!(error = %e, "accept failed");
                    thread::sleep(ACCEPT_ERROR_PAUSE);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.open.load(Ordering::SeqCst) >= self.config.max_connections {
            drop(stream);
            let _ = catch_unwind(AssertUnwindSafe(|| self.handler.over_capacity(peer)));
            return;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let slot = OpenSlot(Arc::clone(&self.open));
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
                _slot: slot,
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
            Step::Malformed(reason) => self.reject(token, reason),
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
        if let Some(connection) = self.remove(token) {
            self.waiting.push_back(Ready {
                request,
                stream: connection.stream,
                peer: connection.peer,
                _slot: connection._slot,
            });
        }
    }

    /// INVALID, a half-close, then the linger state.
    fn reject(&mut self, token: usize, reason: Malformed) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        tracing::debug!(peer = %connection.peer, %reason, "invalid request");
        let peer = connection.peer;
        let answered =
            crate::server::send_all(connection.stream.as_fd(), &ResponseHeader::Invalid.encode())
                .and_then(|()| connection.stream.shutdown(Shutdown::Write));
        let _ = catch_unwind(AssertUnwindSafe(|| self.handler.rejected(peer, &reason)));
        match answered {
            Ok(()) => {
                connection.state = State::Lingering { drained: 0 };
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
                self.reject(token, Malformed::Incomplete);
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

    fn dispatch(&mut self, workers: &SyncSender<Ready<F::Request>>) {
        while let Some(ready) = self.waiting.pop_front() {
            match workers.try_send(ready) {
                Ok(()) => {}
                Err(TrySendError::Full(ready)) => {
                    self.waiting.push_front(ready);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    fn close(mut self, workers: &SyncSender<Ready<F::Request>>) {
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
            if workers.send(ready).is_err() {
                break;
            }
        }
        drop(self.wake);
    }
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
