//! The threaded server: the front door (an accept and readiness loop, see `frontdoor.rs`), a
//! bounded queue and a pool of workers that grows on demand (see `pool.rs`).
//!
//! The front door reads request headers without blocking and hands only complete requests to
//! the workers, so a slow or silent client holds no worker at all. Workers call the
//! [`Handler`] and finish the response (ERROR when the handler sent nothing, a close when it
//! sent a short body). A client that reads its response slowly does hold a worker, in a
//! blocking write bounded by `send_timeout`; the pool grows (to `max_threads`) so that such
//! clients cannot take every worker.
//!
//! Every socket write here uses `send(2)` with `MSG_NOSIGNAL` or `sendfile(2)`; a peer that went
//! away is an `io::Error`, never a signal, whatever the process's SIGPIPE disposition.
//! `sendfile` has no `MSG_NOSIGNAL` and raises SIGPIPE at the sending thread, so every worker
//! blocks SIGPIPE for itself when it starts: the signal then stays pending on that thread,
//! never delivered, and the call fails with `EPIPE` like a `send`.

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    self, setsockopt, sockopt, AddressFamily, Backlog, MsgFlags, SockFlag, SockType,
    SockaddrStorage,
};

mod http_writer;
mod paced;

use crate::connections::{ConnectionCounts, ConnectionState, Tracked, Tracker};
use crate::frontdoor::{
    nothing_unread, report_held, AfterAnswer, Door, FrontDoor, FrontDoorConfig, GetFileFramer,
    HeaderFramer, HeldAnswer, KeptAlive, Parked, Ready, ReturnPath,
};
use crate::http_front::{HttpExchange, HttpFramer, HttpJob};
use crate::pool::{Pool, PoolConfig};
use crate::{Error, Handler, Request, ResponseHeader, ServerConfig};

/// A worker beyond `threads` exits after this long without a request.
const IDLE_WORKER_EXIT: Duration = Duration::from_secs(10);

/// Bodies up to this size are read and sent together with their header.
const SMALL_FILE: u64 = 16 * 1024;

/// The state of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseState {
    /// Nothing sent yet.
    NoHeader,
    /// An OK header was accepted; `header_pending` says whether it still waits in the
    /// writer's buffer to be coalesced with the first body bytes.
    Body {
        announced: u64,
        sent: u64,
        header_pending: bool,
    },
    /// A complete response (a non-OK header, or an OK header and its whole body).
    Complete,
    /// The connection was closed by `abort` or after a failed write, after `sent` body bytes.
    Closed { sent: u64 },
    /// A head without a body went out (HTTP HEAD): the `announced` body bytes the handler
    /// still sends are counted and dropped.
    Discarding { announced: u64, sent: u64 },
}

/// The response side of one connection.
///
/// The header goes out once; for `Ok { length }` exactly `length` body bytes must follow, in any
/// number of `send_*` calls. Sending more than announced is an error and nothing is written.
/// A failed write closes the connection: later calls fail too. A write that makes no progress
/// for the server's `send_timeout` fails with `TimedOut` and closes the connection as well.
pub struct ResponseWriter<'c> {
    stream: &'c TcpStream,
    state: ResponseState,
    header: Vec<u8>,
    announced: u64,
    send_timed_out: bool,
    /// The HTTP request being answered; `None` for GetFile.
    http: Option<HttpExchange>,
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "response connection closed")
}

fn misuse(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl<'c> ResponseWriter<'c> {
    fn new(stream: &'c TcpStream) -> Self {
        ResponseWriter {
            stream,
            state: ResponseState::NoHeader,
            header: Vec::new(),
            announced: 0,
            send_timed_out: false,
            http: None,
        }
    }

    fn for_http(stream: &'c TcpStream, exchange: HttpExchange) -> Self {
        ResponseWriter {
            http: Some(exchange),
            ..ResponseWriter::new(stream)
        }
    }

    /// Sends the header (once). For `Ok { length }` exactly `length` body bytes must follow.
    ///
    /// An OK header with a non-zero length is held back and leaves with the first body bytes
    /// (or when the handler aborts or returns), so a small response is one segment.
    pub fn send_header(&mut self, header: ResponseHeader) -> io::Result<()> {
        match self.state {
            ResponseState::NoHeader => {}
            ResponseState::Closed { .. } => return Err(closed_error()),
            _ => return Err(misuse("response header sent twice")),
        }
        if self.http.is_some() {
            return self.send_http_header(header);
        }
        self.header = header.encode();
        if let ResponseHeader::Ok { length } = header {
            self.announced = length;
        }
        match header {
            ResponseHeader::Ok { length } if length > 0 => {
                // Held back to go out with the first body bytes in one segment.
                self.state = ResponseState::Body {
                    announced: length,
                    sent: 0,
                    header_pending: true,
                };
                Ok(())
            }
            _ => {
                let result = send_all(self.stream.as_fd(), &self.header);
                self.after_write(result.map(|()| ResponseState::Complete))
            }
        }
    }

    /// Sends body bytes.
    pub fn send_body(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(dropped) = self.discard(data.len() as u64) {
            return dropped;
        }
        let (announced, sent, header_pending) = self.body_state(data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let result = if header_pending {
            send_all_vectored(self.stream.as_fd(), &self.header, data)
        } else {
            send_all(self.stream.as_fd(), data)
        };
        self.after_write(result.map(|()| body_state(announced, sent + data.len() as u64)))
    }

    /// Sends `len` body bytes written by `write` straight to the socket (e.g. from shared
    /// memory); `write` must write exactly `len` bytes or fail.
    ///
    /// The descriptor is a blocking socket with a send timeout. `write` should use `send(2)`
    /// with `MSG_NOSIGNAL` (as ipc's `Chunk::send_all_to` does), so that a closed peer is an
    /// error and not a signal; on a server worker SIGPIPE is blocked as well.
    pub fn send_body_with(
        &mut self,
        len: usize,
        write: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        if let Some(dropped) = self.discard(len as u64) {
            return dropped;
        }
        let (announced, sent, _) = self.body_state(len as u64)?;
        if len == 0 {
            return Ok(());
        }
        self.flush_header_before_body()?;
        let result = write(self.stream.as_fd());
        self.after_write(result.map(|()| body_state(announced, sent + len as u64)))
    }

    /// Sends `len` body bytes of `file` from `offset` (sendfile(2)).
    pub fn send_file(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        if let Some(dropped) = self.discard(len) {
            return dropped;
        }
        let (announced, sent, _) = self.body_state(len)?;
        if len == 0 {
            return Ok(());
        }
        let result = match self.state {
            // A small body goes out with its header in one segment (pread + one sendmsg);
            // a separate header write would cost a segment and a wake-up at the client.
            ResponseState::Body {
                header_pending: true,
                ..
            } if len <= SMALL_FILE => {
                let mut buf = [0u8; SMALL_FILE as usize];
                let body = buf.get_mut(..len as usize).unwrap_or_default();
                file.read_exact_at(body, offset)
                    .and_then(|()| send_all_vectored(self.stream.as_fd(), &self.header, body))
            }
            _ => self
                .send_pending_header(Coalesce::WithBody)
                .and_then(|()| sendfile_all(self.stream.as_fd(), file, offset, len)),
        };
        self.after_write(result.map(|()| body_state(announced, sent + len)))
    }

    /// Whether a header was sent (an OK header may still be waiting for the first body bytes;
    /// either way no other header can be sent).
    pub fn header_sent(&self) -> bool {
        !matches!(self.state, ResponseState::NoHeader)
    }

    /// Body bytes sent so far.
    pub fn body_sent(&self) -> u64 {
        match self.state {
            ResponseState::Body { sent, .. }
            | ResponseState::Closed { sent }
            | ResponseState::Discarding { sent, .. } => sent,
            ResponseState::Complete => self.announced,
            ResponseState::NoHeader => 0,
        }
    }

    /// Whether the connection is closed: the answer failed or was cut short.
    fn closed(&self) -> bool {
        matches!(self.state, ResponseState::Closed { .. })
    }

    /// Whether the writer closed the connection because a write made no progress for the
    /// server's `send_timeout` (a client that stopped reading). For counting.
    pub fn send_timed_out(&self) -> bool {
        self.send_timed_out
    }

    /// Closes the connection now (after an OK header: the client sees a short body).
    pub fn abort(&mut self) {
        // An OK header still held back goes out first, so the client sees the short body
        // rather than a missing header.
        if let Err(e) = self.send_pending_header(Coalesce::Alone) {
            tracing::debug!(error = %e, "sending the header before closing failed");
            self.note_failure(&e);
        }
        self.close_now();
    }

    /// Remembers a send timeout among write failures. `send_body_with`'s closure reports one
    /// as `WouldBlock` (EAGAIN on a blocking socket with `SO_SNDTIMEO`) unless it maps it.
    fn note_failure(&mut self, error: &io::Error) {
        if is_send_timeout(error) {
            self.send_timed_out = true;
            reset_when_closed(self.stream);
        }
    }

    /// Closes the connection without sending anything more.
    fn close_now(&mut self) {
        if !matches!(self.state, ResponseState::Closed { .. }) {
            let _ = self.stream.shutdown(Shutdown::Both);
            self.state = ResponseState::Closed {
                sent: self.body_sent(),
            };
        }
    }

    /// Checks that `more` body bytes may be sent; returns (announced, sent, header_pending).
    fn body_state(&self, more: u64) -> io::Result<(u64, u64, bool)> {
        match self.state {
            ResponseState::Body {
                announced,
                sent,
                header_pending,
            } => {
                if sent.checked_add(more).is_none_or(|total| total > announced) {
                    Err(misuse("body longer than the announced length"))
                } else {
                    Ok((announced, sent, header_pending))
                }
            }
            ResponseState::NoHeader => Err(misuse("body sent before the header")),
            ResponseState::Complete if more == 0 => Ok((0, 0, false)),
            ResponseState::Complete | ResponseState::Discarding { .. } => {
                Err(misuse("body longer than the announced length"))
            }
            ResponseState::Closed { .. } => Err(closed_error()),
        }
    }

    fn flush_header_before_body(&mut self) -> io::Result<()> {
        let result = self.send_pending_header(Coalesce::WithBody);
        if let Err(e) = &result {
            self.note_failure(e);
            self.close_now();
        }
        result
    }

    fn send_pending_header(&mut self, coalesce: Coalesce) -> io::Result<()> {
        if let ResponseState::Body {
            announced,
            sent,
            header_pending: true,
        } = self.state
        {
            let flags = match coalesce {
                // MSG_MORE holds the header back until the body write that follows at once, so
                // header and first bytes leave in one segment instead of two.
                Coalesce::WithBody => MsgFlags::MSG_NOSIGNAL | MSG_MORE,
                Coalesce::Alone => MsgFlags::MSG_NOSIGNAL,
            };
            send_all_flags(self.stream.as_fd(), &self.header, flags)?;
            self.state = ResponseState::Body {
                announced,
                sent,
                header_pending: false,
            };
        }
        Ok(())
    }

    fn after_write(&mut self, result: io::Result<ResponseState>) -> io::Result<()> {
        match result {
            Ok(next) => {
                self.state = next;
                Ok(())
            }
            Err(e) => {
                self.note_failure(&e);
                self.close_now();
                Err(e)
            }
        }
    }

    /// Finishes after the handler returned: ERROR if it sent nothing, the pending header of an
    /// empty body, or a close if the body is short.
    fn finish(&mut self) {
        match self.state {
            ResponseState::NoHeader => {
                if let Err(e) = self.send_header(ResponseHeader::Error) {
                    tracing::debug!(error = %e, "sending ERROR failed");
                }
            }
            ResponseState::Body {
                sent, announced, ..
            } => {
                tracing::debug!(sent, announced, "handler returned a short body; closing");
                self.abort();
            }
            ResponseState::Discarding { .. }
            | ResponseState::Complete
            | ResponseState::Closed { .. } => {}
        }
    }
}

fn body_state(announced: u64, sent: u64) -> ResponseState {
    if sent == announced {
        ResponseState::Complete
    } else {
        ResponseState::Body {
            announced,
            sent,
            header_pending: false,
        }
    }
}

/// Whether a write failed because it made no progress for the send timeout (EAGAIN on a
/// blocking socket with `SO_SNDTIMEO`, as `TimedOut` once mapped, or as `WouldBlock`).
fn is_send_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Makes the close of a connection whose client took nothing for the send timeout a reset
/// (`SO_LINGER` 0). A plain close would queue the FIN behind the unsent bytes, which a client
/// that does not read never takes: the kernel would keep them (up to the socket's send buffer,
/// megabytes) and the client would see its connection open, for the minutes TCP takes to give
/// up. The reset frees both at once; the client could not have had the rest anyway.
fn reset_when_closed(stream: &TcpStream) {
    let abort = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(stream, sockopt::Linger, &abort) {
        tracing::debug!(error = %e, "setting SO_LINGER 0 failed");
    }
}

/// Maps a send timeout (EAGAIN on a blocking socket with SO_SNDTIMEO) to `TimedOut`.
fn io_error(errno: Errno) -> io::Error {
    if errno == Errno::EAGAIN {
        io::Error::new(io::ErrorKind::TimedOut, "send timed out")
    } else {
        io::Error::from(errno)
    }
}

/// Writes all of `data` with `send(2)` and `MSG_NOSIGNAL`.
pub(crate) fn send_all(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    send_all_flags(fd, data, MsgFlags::MSG_NOSIGNAL)
}

/// [`send_all`] that never blocks (for the front door's own short answers): a socket that
/// cannot take them at once is `WouldBlock`, and the caller closes it.
pub(crate) fn send_all_now(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    send_all_flags(fd, data, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT)
}

/// Linux's `MSG_MORE` (include/linux/socket.h), which nix does not name: the kernel holds the
/// bytes until the next send without it.
const MSG_MORE: MsgFlags = MsgFlags::from_bits_retain(0x8000);

/// Whether a pending header is followed at once by body bytes.
#[derive(Clone, Copy)]
enum Coalesce {
    WithBody,
    Alone,
}

fn send_all_flags(fd: BorrowedFd<'_>, mut data: &[u8], flags: MsgFlags) -> io::Result<()> {
    while !data.is_empty() {
        match socket::send(fd.as_raw_fd(), data, flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(())
}

/// Writes `head` then `tail` with as few `sendmsg(2)` calls as the kernel allows.
fn send_all_vectored(fd: BorrowedFd<'_>, mut head: &[u8], mut tail: &[u8]) -> io::Result<()> {
    while !head.is_empty() {
        let iov = [IoSlice::new(head), IoSlice::new(tail)];
        let sent = match socket::sendmsg::<SockaddrStorage>(
            fd.as_raw_fd(),
            &iov,
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_error(e)),
        };
        if sent >= head.len() {
            tail = tail.get(sent - head.len()..).unwrap_or_default();
            head = &[];
        } else {
            head = head.get(sent..).unwrap_or_default();
        }
    }
    send_all(fd, tail)
}

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`.
fn sendfile_all(fd: BorrowedFd<'_>, file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut offset = i64::try_from(offset).map_err(|_| misuse("file offset too large"))?;
    let mut left = len;
    while left > 0 {
        // sendfile moves at most 0x7ffff000 bytes per call.
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match nix::sys::sendfile::sendfile64(fd, file, Some(&mut offset), chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than announced",
                ))
            }
            Ok(n) => left -= n as u64,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(())
}

/// Shared between the server, its handles and its accept loop.
struct Shared {
    stopping: AtomicBool,
    /// Written once to wake the GetFile front door's poll (also how workers hand it back
    /// connections to linger).
    wake_write: Arc<OwnedFd>,
    /// The HTTP front door's wake-up (also how workers hand kept-alive connections back).
    http_wake_write: Option<Arc<OwnedFd>>,
}

/// Stops a running [`Server`] from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Stops accepting; queued and in-flight connections are finished. Idempotent.
    pub fn shutdown(&self) {
        if !self.shared.stopping.swap(true, Ordering::SeqCst) {
            // A full pipe already holds a wake-up; any other failure leaves the flag, which
            // the accept loop also checks after every poll.
            let _ = nix::unistd::write(&*self.shared.wake_write, &[1]);
            if let Some(http_wake) = &self.shared.http_wake_write {
                let _ = nix::unistd::write(&**http_wake, &[1]);
            }
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

/// A bound GetFile server: an accept thread feeding a growing pool of workers through a
/// bounded queue.
pub struct Server {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    tracker: Arc<Tracker>,
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    wake_read: OwnedFd,
    http: Option<HttpListener>,
}

/// The HTTP listener and its front door's wake-up.
struct HttpListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    wake_read: OwnedFd,
}

fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(io::Error::from)
}

impl Server {
    /// Binds the listener (SO_REUSEADDR, and SO_REUSEPORT if asked).
    pub fn bind(config: ServerConfig, handler: Arc<dyn Handler>) -> Result<Server, Error> {
        check_config(&config)?;
        let listener = bind_listener(&config, config.listen)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let (wake_read, wake_write) = wake_pipe()?;
        let mut http_wake_write = None;
        let http = match config.http_listen {
            Some(addr) => {
                let listener = bind_listener(&config, addr)?;
                listener.set_nonblocking(true)?;
                let (wake_read, wake_write) = wake_pipe()?;
                http_wake_write = Some(Arc::new(wake_write));
                Some(HttpListener {
                    local_addr: listener.local_addr()?,
                    listener,
                    wake_read,
                })
            }
            None => None,
        };
        tracing::debug!(%local_addr, threads = config.threads, max_threads = config.max_threads, "gfserver bound");
        Ok(Server {
            config,
            tracker: Tracker::new(Arc::clone(&handler)),
            handler,
            listener,
            local_addr,
            shared: Arc::new(Shared {
                stopping: AtomicBool::new(false),
                wake_write: Arc::new(wake_write),
                http_wake_write,
            }),
            wake_read,
            http,
        })
    }

    /// The bound address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound HTTP address, if it serves HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|http| http.local_addr)
    }

    /// A handle to stop it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The server's open connections by state, kept up to date while it runs (and after).
    pub fn connection_counts(&self) -> Arc<ConnectionCounts> {
        Arc::clone(self.tracker.counts())
    }

    /// Serves until shut down, then waits for the workers to finish their connections.
    pub fn run(self) -> Result<(), Error> {
        let (return_path, returns) = match &self.shared.http_wake_write {
            Some(wake) => {
                let (path, receiver) = ReturnPath::new(Arc::clone(wake));
                (Some(path), Some(receiver))
            }
            None => (None, None),
        };
        let (getfile_return_path, getfile_returns) =
            ReturnPath::new(Arc::clone(&self.shared.wake_write));
        let serving = Serving {
            handler: Arc::clone(&self.handler),
            max_requests: self.config.http_max_requests_per_connection,
            return_path,
            getfile_return_path,
            shared: Arc::clone(&self.shared),
        };
        let pool = Pool::start(
            PoolConfig {
                min: self.config.threads,
                max: self.config.max_threads,
                depth: self.config.queue_depth,
                idle_exit: IDLE_WORKER_EXIT,
                name: "gf-worker",
                on_start: block_sigpipe,
            },
            move |job: Job| serving.serve(job),
        )?;
        let door_config = || FrontDoorConfig {
            header_timeout: self.config.header_timeout,
            max_connections: self.config.max_connections,
            idle_timeout: self.config.http_keepalive_timeout,
            max_requests: self.config.http_max_requests_per_connection,
        };
        let shared = Arc::clone(&self.shared);
        let stopping = move || shared.stopping.load(Ordering::SeqCst);
        let result = thread::scope(|scope| {
            let http_door = match self.http {
                Some(http) => {
                    let door = FrontDoor::<HttpFramer, Job>::new(
                        door_config(),
                        Arc::clone(&self.handler),
                        Arc::clone(&self.tracker),
                        http.listener,
                        http.wake_read,
                        returns,
                    )?;
                    let pool = &pool;
                    let stopping = &stopping;
                    Some(
                        thread::Builder::new()
                            .name("gf-http-door".into())
                            .spawn_scoped(scope, move || door.run(pool, stopping))?,
                    )
                }
                None => None,
            };
            let door = FrontDoor::<GetFileFramer, Job>::new(
                door_config(),
                Arc::clone(&self.handler),
                Arc::clone(&self.tracker),
                self.listener,
                self.wake_read,
                Some(getfile_returns),
            )?;
            let result = door.run(&pool, &stopping);
            let http_result = http_door.map_or(Ok(()), |door| {
                door.join()
                    .unwrap_or_else(|_| Err(io::Error::other("the HTTP front door panicked")))
            });
            result.and(http_result)
        })
        .map_err(Error::Io);
        pool.close_and_wait();
        tracing::debug!(local_addr = %self.local_addr, "gfserver stopped");
        result
    }
}

fn check_config(config: &ServerConfig) -> Result<(), Error> {
    if config.threads == 0 || config.queue_depth == 0 || config.max_connections == 0 {
        return Err(Error::Config(
            "threads, queue_depth and max_connections must be at least 1".into(),
        ));
    }
    if config.max_threads < config.threads {
        return Err(Error::Config(format!(
            "max_threads ({}) must be at least threads ({})",
            config.max_threads, config.threads
        )));
    }
    if config.send_timeout.is_zero() || config.header_timeout.is_zero() {
        return Err(Error::Config(
            "send_timeout and header_timeout must not be zero".into(),
        ));
    }
    Ok(())
}

/// Creates the listening socket with the options std does not offer.
/// The accepted sockets inherit TCP_NODELAY and the send timeout from the listener (Linux
/// clones the listener's options), so no worker sets them per connection. They stay blocking:
/// the front door reads with `MSG_DONTWAIT`, the workers write blocking with the timeout.
fn bind_listener(config: &ServerConfig, addr: SocketAddr) -> io::Result<TcpListener> {
    let (reuse_port, backlog) = (config.reuse_port, config.backlog);
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    let timeout = nix::sys::time::TimeVal::new(
        i64::try_from(config.send_timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(config.send_timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(backlog)?)?;
    Ok(TcpListener::from(fd))
}

/// What a worker found on a kept-alive connection after its answer.
enum NextRequest {
    /// A whole request, already read (pipelined): the worker answers it too.
    Here(HttpJob),
    /// None whole: the bytes read so far go back to the front door with the connection, which
    /// frames (or refuses) them as it would have.
    NotYet(Vec<u8>),
}

/// The next request of a kept-alive connection when it is already among the bytes read past
/// the last one (pipelined). The worker never waits for one: the front door waits for every
/// client at once, and it answers a held object itself in the same thread that reads it.
fn pipelined_request(leftover: Vec<u8>) -> NextRequest {
    if leftover.is_empty() {
        return NextRequest::NotYet(leftover);
    }
    let mut framer = HttpFramer::new();
    match framer.feed(&leftover) {
        Ok(Some(next)) => NextRequest::Here(next),
        Ok(None) | Err(_) => NextRequest::NotYet(framer.into_bytes()),
    }
}

/// What a worker came to on a kept-alive connection after its answer.
enum OnWorker {
    /// A request the handler must answer on its request path.
    Handle(HttpJob),
    /// No whole request read yet, or the last one allowed was answered: the connection goes
    /// back to the front door, with the bytes read past the last request.
    HandBack { leftover: Vec<u8>, closing: bool },
    /// The client is gone, or the connection ends here.
    Gone,
}

/// What became of a connection once a worker sent a held answer on it.
enum HeldSent {
    /// It stays open; the bytes read past the answered request.
    Open(Vec<u8>),
    /// Its write side is shut: it goes back to the front door to linger.
    Closing,
    /// The client is gone, or the connection is closed.
    Gone,
}

/// What becomes of an HTTP connection after an answer a worker sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    KeptAlive,
    /// The client asked to close (`Connection: close`, HTTP/1.0): it sends nothing more.
    ClientCloses,
    /// The server closes (the last request allowed, a body left unread, a stop), while a
    /// pipelining client may still be sending.
    ServerCloses,
    /// The answer failed and the writer closed the connection already (a short body, a
    /// vanished client, a send timeout): nothing is left to deliver, so nothing lingers.
    Closed,
}

/// Work for a worker: a complete request, by protocol, or the rest of a held answer.
enum Job {
    GetFile(Ready<String>),
    Http(Ready<HttpJob>),
    Held(Parked),
}

impl From<Parked> for Job {
    fn from(parked: Parked) -> Job {
        Job::Held(parked)
    }
}

impl From<Ready<HttpJob>> for Job {
    fn from(ready: Ready<HttpJob>) -> Job {
        Job::Http(ready)
    }
}

impl From<Ready<String>> for Job {
    fn from(ready: Ready<String>) -> Job {
        Job::GetFile(ready)
    }
}

/// What every worker runs a request with.
struct Serving {
    handler: Arc<dyn Handler>,
    /// Requests on one HTTP connection at most.
    max_requests: u32,
    /// Where kept-alive HTTP connections go back to their front door.
    return_path: Option<ReturnPath>,
    /// Where GetFile connections go back to their front door to linger (a client that sent
    /// bytes after its request).
    getfile_return_path: ReturnPath,
    /// Whether the server is stopping (no worker waits for a next request then).
    shared: Arc<Shared>,
}

/// Blocks SIGPIPE in the calling thread (see the module docs: for `sendfile(2)`).
fn block_sigpipe() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    if let Err(e) = set.thread_block() {
        tracing::warn!(error = %e, "cannot block SIGPIPE in a worker");
    }
}

impl Serving {
    fn serve(&self, job: Job) {
        match job {
            Job::GetFile(ready) => self.serve_getfile(ready),
            Job::Http(ready) => self.serve_http(ready),
            Job::Held(parked) => self.finish_held(parked),
        }
    }

    /// Sends the rest of a held answer the front door began (blocking, each write bounded by
    /// the send timeout), then closes the connection or hands it back as the answer says.
    fn finish_held(&self, parked: Parked) {
        let Parked {
            stream,
            peer,
            mut connection,
            answer,
            sent,
            served,
            started,
            door,
        } = parked;
        connection.set(ConnectionState::Sending);
        let (leftover, closing) = match self.send_held(&stream, peer, answer, sent, started) {
            HeldSent::Open(leftover) => (leftover, false),
            HeldSent::Closing => (Vec::new(), true),
            HeldSent::Gone => return,
        };
        if let Some(return_path) = self.return_path_of(door) {
            return_path.hand_back(KeptAlive {
                stream,
                peer,
                connection,
                leftover,
                served,
                closing,
            });
        }
    }

    /// Answers the requests of one HTTP connection while they come at once, then hands the
    /// connection back to the front door: to wait for the next request if it stays open
    /// (which may already be in the bytes read), else to linger.
    fn serve_http(&self, ready: Ready<HttpJob>) {
        let Ready {
            request: mut job,
            stream,
            peer,
            mut served,
            mut connection,
        } = ready;
        loop {
            connection.set(ConnectionState::Sending);
            served += 1;
            let ending = self.answer_http(&stream, peer, job.request, job.body_unread, served);
            let Some(return_path) = &self.return_path else {
                return;
            };
            let kept = match ending {
                Ending::KeptAlive => true,
                Ending::Closed => return,
                // Only a client that said it closes promises to send nothing more (RFC 9112
                // 9.6); a close the server decides lingers (see `AfterAnswer::Closing`).
                Ending::ClientCloses
                    if !job.body_unread && job.leftover.is_empty() && nothing_unread(&stream) =>
                {
                    return
                }
                // Closing with an unread request body (or a pipelined request) would reset the
                // connection, and a reset destroys the answer still in flight: the write side
                // closes first, and the front door drains the rest before it closes.
                Ending::ClientCloses | Ending::ServerCloses => {
                    let _ = stream.shutdown(Shutdown::Write);
                    false
                }
            };
            let (leftover, closing) = match kept && !self.stopping() {
                true => match self.next_on_worker(
                    &stream,
                    peer,
                    job.leftover,
                    &mut served,
                    &mut connection,
                ) {
                    OnWorker::Handle(next) => {
                        job = next;
                        continue;
                    }
                    OnWorker::HandBack { leftover, closing } => (leftover, closing),
                    OnWorker::Gone => return,
                },
                false => (job.leftover, !kept),
            };
            return_path.hand_back(KeptAlive {
                stream,
                peer,
                connection,
                leftover,
                served,
                closing,
            });
            return;
        }
    }

    /// Goes on with the pipelined requests of a kept-alive connection: those the handler holds
    /// (hot objects, small files) are answered here as the front door would answer them,
    /// without the handler's request path; the first it does not hold is returned to be
    /// handled; when none is left the connection goes back to the front door.
    fn next_on_worker(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        mut leftover: Vec<u8>,
        served: &mut u32,
        connection: &mut Tracked,
    ) -> OnWorker {
        loop {
            connection.set(ConnectionState::Idle);
            let next = match pipelined_request(leftover) {
                NextRequest::Here(next) => next,
                NextRequest::NotYet(bytes) => {
                    return OnWorker::HandBack {
                        leftover: bytes,
                        closing: false,
                    }
                }
            };
            let started = std::time::Instant::now();
            let answer = match HttpFramer::answer_held(
                next,
                self.handler.as_ref(),
                *served,
                self.max_requests,
            ) {
                Ok(answer) => answer,
                Err(next) => return OnWorker::Handle(next),
            };
            *served = served.saturating_add(1);
            connection.set(ConnectionState::Sending);
            leftover = match self.send_held(stream, peer, answer, 0, started) {
                HeldSent::Open(leftover) => leftover,
                HeldSent::Closing => {
                    return OnWorker::HandBack {
                        leftover: Vec::new(),
                        closing: true,
                    }
                }
                HeldSent::Gone => return OnWorker::Gone,
            };
        }
    }

    /// Sends a held answer from byte `sent` on (blocking, each write bounded by the send
    /// timeout), reports it, and says what becomes of the connection: a closing one has its
    /// write side shut here, or is closed at once when its client sent nothing more.
    fn send_held(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        answer: HeldAnswer,
        sent: usize,
        started: std::time::Instant,
    ) -> HeldSent {
        let (head, body) = answer.unsent(sent);
        if let Err(e) = send_all_vectored(stream.as_fd(), head, body) {
            tracing::debug!(%peer, error = %e, "a held answer was cut");
            if is_send_timeout(&e) {
                reset_when_closed(stream);
                let _ = catch_unwind(AssertUnwindSafe(|| self.handler.held_send_timed_out(peer)));
            }
            return HeldSent::Gone;
        }
        report_held(self.handler.as_ref(), &answer, started);
        match answer.after {
            AfterAnswer::Closing if nothing_unread(stream) => HeldSent::Gone,
            AfterAnswer::KeepAlive(leftover) if !self.stopping() => HeldSent::Open(leftover),
            AfterAnswer::KeepAlive(_) | AfterAnswer::Closing | AfterAnswer::Linger => {
                let _ = stream.shutdown(Shutdown::Write);
                HeldSent::Closing
            }
        }
    }

    /// Answers one HTTP request; what becomes of the connection.
    fn answer_http(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        http: crate::http::HttpRequest,
        body_unread: bool,
        served: u32,
    ) -> Ending {
        let client_closes = !http.keep_alive;
        let keep_alive = !body_unread && served < self.max_requests && self.return_path.is_some();
        let request = Request {
            path: http.path.clone(),
            peer,
        };
        let exchange = HttpExchange::new(http, keep_alive);
        // The socket is blocking, with TCP_NODELAY and the send timeout from the listener.
        let mut writer = ResponseWriter::for_http(stream, exchange);
        self.run_handler(&request, &mut writer);
        if let Some(status) = writer.http_status() {
            let _ = catch_unwind(AssertUnwindSafe(|| self.handler.http_answered(status)));
        }
        if writer.closed() {
            return Ending::Closed;
        }
        match (writer.keeps_connection(), client_closes) {
            (true, _) => Ending::KeptAlive,
            (false, true) => Ending::ClientCloses,
            (false, false) => Ending::ServerCloses,
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    fn run_handler(&self, request: &Request, writer: &mut ResponseWriter<'_>) {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.handler.handle(request, writer)));
        if outcome.is_err() {
            tracing::error!(path = %request.path, peer = %request.peer, "handler panicked");
        }
        writer.finish();
    }

    /// Where a connection that came through `door` goes back to.
    fn return_path_of(&self, door: Door) -> Option<&ReturnPath> {
        match door {
            Door::GetFile => Some(&self.getfile_return_path),
            Door::Http => self.return_path.as_ref(),
        }
    }

    /// Answers the one request of a GetFile connection, then closes it: at once when the
    /// client sent nothing more, else by lingering in the front door. Closing a socket with
    /// unread bytes resets the connection, and a reset destroys the part of the answer the
    /// kernel still queues (a C client that also sends its string's NUL would lose the end of
    /// every large file).
    fn serve_getfile(&self, ready: Ready<String>) {
        let Ready {
            request: path,
            stream,
            peer,
            served,
            mut connection,
        } = ready;
        connection.set(ConnectionState::Sending);
        let request = Request { path, peer };
        let closed = self.answer(&stream, &request);
        if closed || nothing_unread(&stream) {
            return;
        }
        let _ = stream.shutdown(Shutdown::Write);
        self.getfile_return_path.hand_back(KeptAlive {
            stream,
            peer,
            connection,
            leftover: Vec::new(),
            served: served.saturating_add(1),
            closing: true,
        });
    }

    /// Runs the handler on `request`; whether the writer closed the connection (a failed or
    /// short answer), so that nothing is left to deliver.
    fn answer(&self, stream: &TcpStream, request: &Request) -> bool {
        let mut writer = ResponseWriter::new(stream);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.handler.handle(request, &mut writer)
        }));
        if outcome.is_err() {
            tracing::error!(path = %request.path, peer = %request.peer, "handler panicked");
        }
        writer.finish();
        writer.closed()
    }
}
