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
//!    reset that could destroy the answer. An HTTP connection whose answer closes it (a worker
//!    half-closed it: `Connection: close`, an unread request body, the last request allowed)
//!    comes back from its worker to linger the same way, and so does an answered GetFile
//!    connection whose client sent bytes after its request (`Door` says which loop).
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
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::MsgFlags;

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

/// Which front door a connection came through, so that a worker hands it back to the right
/// loop (to wait for its next request, or to linger).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Door {
    GetFile,
    Http,
}

/// Finds a complete request header in the bytes of one connection, fed as they arrive, and
/// says how a protocol refuses one. GetFile (`GetFileFramer`) and HTTP/1.1 (`HttpFramer`, in
/// `http_front.rs`) implement it.
pub(crate) trait HeaderFramer {
    /// The front door this protocol is served at.
    const DOOR: Door;
    /// What a complete header yields.
    type Request: Send + 'static;
    /// Why bytes can never be a valid header.
    type Error: std::fmt::Display;
    /// A framer for a new connection, or for the next request of a kept-alive one.
    fn new() -> Self;
    /// Feeds more bytes: `Ok(Some)` once the header is complete, `Ok(None)` for more, `Err`
    /// when the bytes can never be a valid header.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<Self::Request>, Self::Error>;
    /// What an end of stream before a complete header is: `None` to close quietly.
    fn at_eof(&self) -> Option<Self::Error>;
    /// The answer to a refused header.
    fn refusal(error: &Self::Error) -> Vec<u8>;
    /// The answer to a header not complete by the deadline.
    fn timeout_refusal() -> Vec<u8>;
    /// Tells the handler of a refused header.
    fn report(handler: &dyn Handler, peer: SocketAddr, error: &Self::Error);
    /// Tells the handler of a header not complete by the deadline.
    fn report_timeout(handler: &dyn Handler, peer: SocketAddr) {
        handler.header_timed_out(peer);
    }
    /// The whole answer to `request` from an object the handler holds in memory
    /// ([`Handler::answer_held`]), `served` requests after the connection's first; or the
    /// request back, for a worker.
    fn answer_held(
        request: Self::Request,
        handler: &dyn Handler,
        served: u32,
        max_requests: u32,
    ) -> Result<HeldAnswer, Self::Request>;
}

/// An answer the front door sends itself, from an object a handler holds in memory.
pub(crate) struct HeldAnswer {
    pub(crate) head: Vec<u8>,
    pub(crate) body: Arc<[u8]>,
    /// The bytes of `body` that follow the head.
    pub(crate) body_range: std::ops::Range<usize>,
    /// What becomes of the connection once it is sent.
    pub(crate) after: AfterAnswer,
}

/// Tells the handler that a held answer went out whole.
pub(crate) fn report_held(handler: &dyn Handler, answer: &HeldAnswer, started: Instant) {
    let body_bytes = answer.body_range.len() as u64;
    let elapsed = started.elapsed();
    let _ = catch_unwind(AssertUnwindSafe(|| {
        handler.held_answered(body_bytes, elapsed)
    }));
}

impl HeldAnswer {
    /// The head and the body bytes, from `sent` bytes on.
    pub(crate) fn unsent(&self, sent: usize) -> (&[u8], &[u8]) {
        let body = self.body.get(self.body_range.clone()).unwrap_or_default();
        match sent.checked_sub(self.head.len()) {
            None => (self.head.get(sent..).unwrap_or_default(), body),
            Some(into_body) => (&[], body.get(into_body..).unwrap_or_default()),
        }
    }
}

/// What becomes of a connection after a held answer.
pub(crate) enum AfterAnswer {
    /// It stays open for the next request, which may start in these bytes (pipelined).
    KeepAlive(Vec<u8>),
    /// Its write side closes and the loop drains what the client still sends (HTTP
    /// `Connection: close` with more bytes read past the request), as after a refusal.
    Linger,
    /// It closes because the protocol or the client says so (GetFile: one request per
    /// connection; HTTP `Connection: close`, HTTP/1.0): at once if the client has sent nothing
    /// more ([`nothing_unread`]), else as [`AfterAnswer::Linger`] (a GetFile client may send
    /// bytes after its request too, a C client the string's terminating NUL, say).
    /// A close the server decides (the last request allowed) always lingers: a pipelining
    /// client may send its next request at any moment, and bytes that reach a closed socket
    /// reset the connection, destroying the part of the answer still queued in the kernel.
    Closing,
}

/// Whether the client sent nothing that is not read yet (or its side is closed, or the socket
/// is broken): then a close cannot turn into a reset that destroys the answer still queued,
/// and a connection that ends needs no lingering (one poll wake-up and two reads fewer per
/// `Connection: close` request).
pub(crate) fn nothing_unread(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(nix::sys::socket::recv(stream.as_raw_fd(), &mut byte, flags), Ok(n) if n > 0)
}

/// Asks the handler for a held object, a panic counting as none.
pub(crate) fn held_object(
    handler: &dyn Handler,
    path: &str,
    query: Option<&str>,
) -> Option<crate::HeldObject> {
    catch_unwind(AssertUnwindSafe(|| handler.answer_held(path, query)))
        .unwrap_or_else(|_| {
            tracing::error!(path, "answer_held panicked");
            None
        })
        .filter(|held| held.head.len == held.body.len() as u64)
}

/// The GetFile request header; yields the path.
pub(crate) struct GetFileFramer {
    decoder: RequestDecoder,
}

impl HeaderFramer for GetFileFramer {
    const DOOR: Door = Door::GetFile;
    type Request = String;
    type Error = Malformed;
    fn new() -> Self {
        GetFileFramer {
            decoder: RequestDecoder::lenient(),
        }
    }
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<String>, Malformed> {
        Ok(self.decoder.feed(bytes)?.map(|(header, _)| header.path))
    }
    fn at_eof(&self) -> Option<Malformed> {
        // GetFile has no keep-alive: any connection that ends without a request was one.
        Some(Malformed::Incomplete)
    }
    fn refusal(_: &Malformed) -> Vec<u8> {
        ResponseHeader::Invalid.encode()
    }
    fn timeout_refusal() -> Vec<u8> {
        ResponseHeader::Invalid.encode()
    }
    fn report(handler: &dyn Handler, peer: SocketAddr, error: &Malformed) {
        handler.rejected(peer, error);
    }
    fn answer_held(
        path: String,
        handler: &dyn Handler,
        _served: u32,
        _max_requests: u32,
    ) -> Result<HeldAnswer, String> {
        let Some(held) = held_object(handler, &path, None) else {
            return Err(path);
        };
        Ok(HeldAnswer {
            head: ResponseHeader::Ok {
                length: held.head.len,
            }
            .encode(),
            body_range: 0..held.body.len(),
            body: held.body,
            after: AfterAnswer::Closing,
        })
    }
}

/// A worker pool's job that carries a request of type `R` (the pool serves several protocols).
pub(crate) trait JobOf<R>: From<Ready<R>> + From<Parked> + Send + 'static {}
impl<R, J: From<Ready<R>> + From<Parked> + Send + 'static> JobOf<R> for J {}

/// A connection handed back by a worker after its response: kept open, it waits in the loop (no
/// worker) for its next request, up to the idle timeout; closing, it lingers.
pub(crate) struct KeptAlive {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) connection: Tracked,
    /// Bytes read past the last request (the start of the next, pipelined).
    pub(crate) leftover: Vec<u8>,
    /// Requests answered on the connection so far.
    pub(crate) served: u32,
    /// The response closed the connection (its write side is shut): the loop drains what the
    /// client still sends, as after a refusal, so that a request body or a pipelined request
    /// left unread cannot turn the close into a reset that destroys the answer in flight.
    pub(crate) closing: bool,
}

/// Where workers hand kept-alive connections back to their front door.
#[derive(Clone)]
pub(crate) struct ReturnPath {
    sender: std::sync::mpsc::Sender<KeptAlive>,
    wake: Arc<OwnedFd>,
}

impl ReturnPath {
    /// A return path and the loop's end of it; `wake` is the write end of the loop's pipe.
    pub(crate) fn new(wake: Arc<OwnedFd>) -> (ReturnPath, std::sync::mpsc::Receiver<KeptAlive>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        (ReturnPath { sender, wake }, receiver)
    }

    /// Hands `connection` back to the loop (closed if the loop is gone).
    pub(crate) fn hand_back(&self, connection: KeptAlive) {
        if self.sender.send(connection).is_ok() {
            // A full pipe already holds a wake-up.
            let _ = nix::unistd::write(&*self.wake, &[0]);
        }
    }
}

/// A request ready for a worker: the parsed header and its socket (blocking mode unset: the
/// worker sets the socket options it needs).
pub(crate) struct Ready<R> {
    pub(crate) request: R,
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// Requests answered on this connection before this one.
    pub(crate) served: u32,
    /// Its place in the connection counts (and against `max_connections`) until the worker
    /// is done.
    pub(crate) connection: Tracked,
}

/// Settings of the loop.
pub(crate) struct FrontDoorConfig {
    pub(crate) header_timeout: Duration,
    pub(crate) max_connections: usize,
    /// How long a kept-alive connection may wait for its next request.
    pub(crate) idle_timeout: Duration,
    /// Requests on one kept-alive connection at most.
    pub(crate) max_requests: u32,
}

/// When a connection's header or idle time runs out: `(when, token, served)`. The loop answers
/// several requests of a kept-alive connection under one token, so an entry counts only while
/// the connection has answered `served` requests, as when it was queued.
type Deadline = (Instant, usize, u32);

/// A held answer the socket could not take whole: a worker sends the rest (blocking, bounded
/// by the send timeout), then hands the connection back as the answer says.
pub(crate) struct Parked {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) connection: Tracked,
    pub(crate) answer: HeldAnswer,
    /// Bytes of the answer already sent.
    pub(crate) sent: usize,
    /// Requests answered on the connection, this one included.
    pub(crate) served: u32,
    /// When the request was taken.
    pub(crate) started: Instant,
    /// The front door it came through (and goes back to, to linger or stay open).
    pub(crate) door: Door,
}

enum State<F> {
    /// Kept alive, no byte of the next request yet.
    Idle(F),
    Reading(F),
    Lingering {
        drained: usize,
    },
}

struct Connection<F> {
    stream: TcpStream,
    peer: SocketAddr,
    state: State<F>,
    tracked: Tracked,
    served: u32,
    /// Whether the socket is in the poll (a request read whole at accept never is).
    registered: bool,
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

/// Why a header is refused.
enum Refusal<E> {
    Malformed(E),
    TimedOut,
}

/// The loop itself; `run` returns at shutdown.
pub(crate) struct FrontDoor<F: HeaderFramer, J: JobOf<F::Request>> {
    config: FrontDoorConfig,
    /// Connections handed back by workers (a protocol with keep-alive).
    returns: Option<std::sync::mpsc::Receiver<KeptAlive>>,
    idle_deadlines: VecDeque<Deadline>,
    handler: Arc<dyn Handler>,
    tracker: Arc<Tracker>,
    poll: Poll,
    listener: Option<TcpListener>,
    wake: OwnedFd,
    connections: HashMap<usize, Connection<F>>,
    header_deadlines: VecDeque<Deadline>,
    linger_deadlines: VecDeque<(Instant, usize)>,
    next_token: usize,
    /// Complete requests the worker queue had no room for, as the pool's jobs.
    waiting: VecDeque<J>,
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

impl<F: HeaderFramer, J: JobOf<F::Request>> FrontDoor<F, J> {
    pub(crate) fn new(
        config: FrontDoorConfig,
        handler: Arc<dyn Handler>,
        tracker: Arc<Tracker>,
        listener: TcpListener,
        wake: OwnedFd,
        returns: Option<std::sync::mpsc::Receiver<KeptAlive>>,
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
            returns,
            idle_deadlines: VecDeque::new(),
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
            reserve: open_reserve(),
            accept_paused_until: None,
            shed: ShedLog::default(),
        })
    }

    /// Runs until `stopping()` is true after a wake-up, then hands the complete requests
    /// still waiting to the workers (blocking) and closes the rest.
    pub(crate) fn run(mut self, workers: &Pool<J>, stopping: &dyn Fn() -> bool) -> io::Result<()> {
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
                    WAKE => self.take_returns(),
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
        let next = [
            self.header_deadlines.front().map(|(at, ..)| *at),
            self.linger_deadlines.front().map(|(at, _)| *at),
            self.idle_deadlines.front().map(|(at, ..)| *at),
        ]
        .into_iter()
        .flatten()
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
        let token = self.next_token;
        self.next_token += 1;
        self.header_deadlines
            .push_back((Instant::now() + self.config.header_timeout, token, 0));
        self.connections.insert(
            token,
            Connection {
                stream,
                peer,
                state: State::Reading(F::new()),
                tracked,
                served: 0,
                registered: false,
            },
        );
        // The request usually arrives with the connection: read first, and poll the socket
        // only if it is not all there (two epoll_ctl calls saved per such request).
        self.on_readable(token);
    }

    /// Puts a connection's socket in the poll; false (and the connection closed) if it fails.
    fn ensure_registered(&mut self, token: usize) -> bool {
        let Some(connection) = self.connections.get_mut(&token) else {
            return false;
        };
        if connection.registered {
            return true;
        }
        match self.poll.registry().register(
            &mut SourceFd(&connection.stream.as_raw_fd()),
            Token(token),
            Interest::READABLE,
        ) {
            Ok(()) => {
                connection.registered = true;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a connection");
                drop(self.remove(token));
                false
            }
        }
    }

    /// Takes back the connections workers kept alive.
    fn take_returns(&mut self) {
        // The wake pipe is drained so that the next write wakes the loop again.
        let mut sink = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake, &mut sink), Ok(n) if n > 0) {}
        let returned: Vec<KeptAlive> = match &self.returns {
            Some(returns) => returns.try_iter().collect(),
            None => return,
        };
        for kept in returned {
            self.readmit(kept);
        }
    }

    /// A kept-alive connection waits, idle, for its next request (which may be here already); a
    /// closing one lingers.
    fn readmit(&mut self, kept: KeptAlive) {
        let KeptAlive {
            stream,
            peer,
            connection: mut tracked,
            leftover,
            served,
            closing,
        } = kept;
        let token = self.next_token;
        self.next_token += 1;
        let state = match closing {
            true => {
                tracked.set(ConnectionState::Closing);
                self.linger_deadlines
                    .push_back((Instant::now() + LINGER_TIME, token));
                State::Lingering { drained: 0 }
            }
            false => {
                tracked.set(ConnectionState::Idle);
                self.idle_deadlines.push_back((
                    Instant::now() + self.config.idle_timeout,
                    token,
                    served,
                ));
                State::Idle(F::new())
            }
        };
        self.connections.insert(
            token,
            Connection {
                stream,
                peer,
                state,
                tracked,
                served,
                registered: false,
            },
        );
        if !closing && !leftover.is_empty() {
            let step = match self.connections.get_mut(&token) {
                Some(connection) => feed(connection, &leftover),
                None => return,
            };
            match self.after_step(token, step) {
                true => {}
                false => return,
            }
        }
        // Registering a socket that is already readable reports it at the next poll (even
        // edge-triggered), so bytes that came while a worker had it are not lost, and the
        // usual case (the next request is not there yet) costs no read.
        self.ensure_registered(token);
    }

    fn on_readable(&mut self, token: usize) {
        let mut buf = [0u8; HEADER_READ_CHUNK];
        let outcome = {
            let Some(connection) = self.connections.get_mut(&token) else {
                return;
            };
            read_available(connection, &mut buf)
        };
        self.after_step(token, outcome);
    }

    /// Acts on what reading found; true while the connection stays in the loop reading.
    fn after_step(&mut self, token: usize, step: Step<F::Request, F::Error>) -> bool {
        match step {
            Step::More => return self.ensure_registered(token),
            Step::Started => {
                self.start_header_deadline(token);
                return self.ensure_registered(token);
            }
            Step::Complete(request) => self.take_request(token, request),
            Step::Malformed(reason) => self.reject(token, Refusal::Malformed(reason)),
            Step::Close => drop(self.remove(token)),
        }
        false
    }

    fn remove(&mut self, token: usize) -> Option<Connection<F>> {
        let connection = self.connections.remove(&token)?;
        if connection.registered {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&connection.stream.as_raw_fd()));
        }
        Some(connection)
    }

    fn queue_for_worker(&mut self, token: usize, request: F::Request) {
        if let Some(mut connection) = self.remove(token) {
            connection.tracked.set(ConnectionState::WaitingForWorker);
            self.waiting.push_back(J::from(Ready {
                request,
                stream: connection.stream,
                peer: connection.peer,
                served: connection.served,
                connection: connection.tracked,
            }));
        }
    }

    /// The protocol's refusal (INVALID, a 4xx), a half-close, then the linger state.
    fn reject(&mut self, token: usize, refusal: Refusal<F::Error>) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let peer = connection.peer;
        let answer = match &refusal {
            Refusal::Malformed(reason) => F::refusal(reason),
            Refusal::TimedOut => F::timeout_refusal(),
        };
        let answered = crate::server::send_all_now(connection.stream.as_fd(), &answer)
            .and_then(|()| connection.stream.shutdown(Shutdown::Write));
        let handler = &self.handler;
        match &refusal {
            Refusal::Malformed(reason) => {
                tracing::debug!(%peer, %reason, "invalid request");
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    F::report(handler.as_ref(), peer, reason)
                }));
            }
            Refusal::TimedOut => {
                tracing::debug!(%peer, "request header not complete in time");
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    F::report_timeout(handler.as_ref(), peer)
                }));
            }
        }
        match answered {
            Ok(()) => self.start_lingering(token),
            Err(e) => {
                tracing::debug!(error = %e, "sending INVALID failed");
                drop(self.remove(token));
            }
        }
    }

    /// A connection whose write side is closed drains what its client still sends, for a
    /// bounded time, so that the close cannot turn into a reset that destroys the answer.
    fn start_lingering(&mut self, token: usize) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        connection.state = State::Lingering { drained: 0 };
        connection.tracked.set(ConnectionState::Closing);
        self.linger_deadlines
            .push_back((Instant::now() + LINGER_TIME, token));
        // Whatever is already buffered is drained now (edge-triggered epoll).
        self.on_readable(token);
    }

    fn start_header_deadline(&mut self, token: usize) {
        if let Some(connection) = self.connections.get(&token) {
            let deadline = Instant::now() + self.config.header_timeout;
            self.header_deadlines
                .push_back((deadline, token, connection.served));
        }
    }

    /// A complete request: answered from here when the handler holds its object, else queued
    /// for a worker. A kept-alive connection's next requests already read (pipelined) are taken
    /// in turn, in a loop, so that a client cannot make the loop recurse.
    fn take_request(&mut self, token: usize, mut request: F::Request) {
        loop {
            let Some(connection) = self.connections.get_mut(&token) else {
                return;
            };
            let started = Instant::now();
            let answer = match F::answer_held(
                request,
                self.handler.as_ref(),
                connection.served,
                self.config.max_requests,
            ) {
                Ok(answer) => answer,
                Err(request) => return self.queue_for_worker(token, request),
            };
            connection.served = connection.served.saturating_add(1);
            connection.tracked.set(ConnectionState::Sending);
            let sent = match send_held_now(&connection.stream, &answer) {
                Ok(sent) => sent,
                Err(e) => {
                    tracing::debug!(error = %e, "sending a held answer failed");
                    drop(self.remove(token));
                    return;
                }
            };
            if sent < answer.head.len() + answer.body_range.len() {
                return self.park(token, answer, sent, started);
            }
            report_held(self.handler.as_ref(), &answer, started);
            let leftover = match answer.after {
                AfterAnswer::Closing if nothing_unread(&connection.stream) => {
                    return drop(self.remove(token))
                }
                AfterAnswer::Closing | AfterAnswer::Linger => {
                    let _ = connection.stream.shutdown(Shutdown::Write);
                    return self.start_lingering(token);
                }
                AfterAnswer::KeepAlive(leftover) => leftover,
            };
            connection.state = State::Idle(F::new());
            connection.tracked.set(ConnectionState::Idle);
            let deadline = Instant::now() + self.config.idle_timeout;
            self.idle_deadlines
                .push_back((deadline, token, connection.served));
            let mut step = feed(connection, &leftover);
            if let Step::Started = step {
                self.start_header_deadline(token);
                step = Step::More;
            }
            if let Step::More = step {
                // Bytes past what was read may wait in the socket, and an edge-triggered poll
                // reports only new ones.
                // Only a kept-alive connection reads on: a GetFile answer needs no buffer.
                let mut buf = [0u8; HEADER_READ_CHUNK];
                step = match self.connections.get_mut(&token) {
                    Some(connection) => read_available(connection, &mut buf),
                    None => return,
                };
            }
            match step {
                Step::Complete(next) => request = next,
                step => {
                    self.after_step(token, step);
                    return;
                }
            }
        }
    }

    /// The socket took only part of a held answer: a worker sends the rest.
    fn park(&mut self, token: usize, answer: HeldAnswer, sent: usize, started: Instant) {
        if let Some(mut connection) = self.remove(token) {
            connection.tracked.set(ConnectionState::WaitingForWorker);
            self.waiting.push_back(J::from(Parked {
                stream: connection.stream,
                peer: connection.peer,
                connection: connection.tracked,
                served: connection.served,
                answer,
                sent,
                started,
                door: F::DOOR,
            }));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, token, served)) = self.header_deadlines.front() {
            if deadline > now {
                break;
            }
            self.header_deadlines.pop_front();
            let reading = self
                .connections
                .get(&token)
                .is_some_and(|c| c.served == served && matches!(c.state, State::Reading(_)));
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
        while let Some(&(deadline, token, served)) = self.idle_deadlines.front() {
            if deadline > now {
                break;
            }
            self.idle_deadlines.pop_front();
            let idle = self
                .connections
                .get(&token)
                .is_some_and(|c| c.served == served && matches!(c.state, State::Idle(_)));
            if idle {
                drop(self.remove(token));
            }
        }
    }

    fn dispatch(&mut self, workers: &Pool<J>) {
        while let Some(job) = self.waiting.pop_front() {
            if let Err(job) = workers.try_submit(job) {
                self.waiting.push_front(job);
                return;
            }
        }
    }

    fn close(mut self, workers: &Pool<J>) {
        // Closing the listener first: a connection attempted from now on is refused.
        self.listener = None;
        // A request that is already in the socket buffer is served; the rest are idle.
        let mut buf = [0u8; HEADER_READ_CHUNK];
        let tokens: Vec<usize> = self.connections.keys().copied().collect();
        for token in tokens {
            let complete = match self.connections.get_mut(&token) {
                Some(connection)
                    if matches!(connection.state, State::Reading(_) | State::Idle(_)) =>
                {
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
        for job in self.waiting.drain(..) {
            workers.submit_waiting(job);
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

enum Step<R, E> {
    More,
    /// The first bytes of a request on an idle connection: its header deadline starts.
    Started,
    Complete(R),
    Malformed(E),
    Close,
}

/// Feeds bytes to a connection's framer (an idle one starts reading).
fn feed<F: HeaderFramer>(
    connection: &mut Connection<F>,
    bytes: &[u8],
) -> Step<F::Request, F::Error> {
    let mut started = false;
    if let State::Idle(_) = connection.state {
        if bytes.is_empty() {
            return Step::More;
        }
        let State::Idle(framer) =
            std::mem::replace(&mut connection.state, State::Lingering { drained: 0 })
        else {
            return Step::Close;
        };
        connection.state = State::Reading(framer);
        connection.tracked.set(ConnectionState::ReadingHeader);
        started = true;
    }
    match &mut connection.state {
        State::Reading(framer) => match framer.feed(bytes) {
            Ok(Some(request)) => Step::Complete(request),
            Ok(None) if started => Step::Started,
            Ok(None) => Step::More,
            Err(reason) => Step::Malformed(reason),
        },
        _ => Step::More,
    }
}

/// Sends what the socket takes of a held answer at once; how many bytes went.
fn send_held_now(stream: &TcpStream, answer: &HeldAnswer) -> io::Result<usize> {
    let mut sent = 0;
    loop {
        let (head, body) = answer.unsent(sent);
        if head.is_empty() && body.is_empty() {
            return Ok(sent);
        }
        let iov = [io::IoSlice::new(head), io::IoSlice::new(body)];
        match nix::sys::socket::sendmsg::<nix::sys::socket::SockaddrStorage>(
            stream.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Ok(sent),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// One read that never blocks: the sockets stay blocking for the workers' writes (with their
/// send timeout), so the loop asks for `MSG_DONTWAIT` on each call instead.
fn read_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    nix::sys::socket::recv(stream.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
}

/// Reads until the socket would block (the registration is edge-triggered).
fn read_available<F: HeaderFramer>(
    connection: &mut Connection<F>,
    buf: &mut [u8],
) -> Step<F::Request, F::Error> {
    let mut started = false;
    loop {
        let n = match read_now(&connection.stream, buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return if started { Step::Started } else { Step::More };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its header");
                return Step::Close;
            }
        };
        match &mut connection.state {
            State::Idle(_) if n == 0 => return Step::Close,
            State::Reading(framer) if n == 0 => {
                return match framer.at_eof() {
                    Some(reason) => Step::Malformed(reason),
                    None => Step::Close,
                }
            }
            State::Idle(_) | State::Reading(_) => {
                match feed(connection, buf.get(..n).unwrap_or_default()) {
                    Step::More => {}
                    Step::Started => started = true,
                    done => return done,
                }
                continue;
            }
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
