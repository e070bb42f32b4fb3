//! The GetFile protocol: codec, blocking client and threaded server framework.
//!
//! - [`codec`]: incremental, strict [`RequestDecoder`](codec::RequestDecoder) and
//!   [`ResponseDecoder`](codec::ResponseDecoder) fed with bytes as they arrive; every rejection
//!   is a [`Malformed`] that says why.
//! - [`Server`]: a listener, a front door (one thread accepting connections and reading request
//!   headers without blocking, with epoll through `mio`, under a deadline counted from accept)
//!   and a pool of workers fed with complete requests through a bounded queue. A worker
//!   calls the [`Handler`] with a [`ResponseWriter`] that streams the body (bytes, a file with
//!   `sendfile`, or a closure writing to the socket); a write that makes no progress for
//!   `send_timeout` ends the connection. `threads` workers always run, and more start, up to
//!   `max_threads`, while a request waits and none is idle: a client that reads slowly holds
//!   its worker in a blocking write, and a growing pool (as Varnish's `thread_pool_max`) keeps
//!   such clients from taking every worker, while its bound keeps memory bounded.
//!   [`ConnectionCounts`] counts the open connections by [`ConnectionState`]. [`ShutdownHandle`]
//!   stops it (the gfcache binaries wire SIGINT/SIGTERM to it).
//! - [`FileServer`]: the handler of `gfserver` (a root with strict [`paths`] containment, or a
//!   listing).
//! - [`Client`]: fetches one path into any `Write`.
//! - [`http`]: the HTTP/1.1 codec of the HTTP front end: a strict request-head parser, Range
//!   and conditional-request evaluation, and response heads (pure functions, no sockets).
//! - [`load`]: the load generator behind `gfclient load`.
//!
//! A round trip on `127.0.0.1:0`:
//!
//! ```
//! use std::sync::Arc;
//! use gfprotocol::{Client, Handler, Request, ResponseHeader, ResponseWriter, Server, ServerConfig, Status};
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn handle(&self, request: &Request, response: &mut ResponseWriter<'_>) {
//!         let body = format!("hello {}", request.path);
//!         let _ = response
//!             .send_header(ResponseHeader::Ok { length: body.len() as u64 })
//!             .and_then(|()| response.send_body(body.as_bytes()));
//!     }
//! }
//!
//! let config = ServerConfig { listen: "127.0.0.1:0".parse()?, threads: 2, ..ServerConfig::default() };
//! let server = Server::bind(config, Arc::new(Hello))?;
//! let addr = server.local_addr().to_string();
//! let stop = server.shutdown_handle();
//! let running = std::thread::spawn(move || server.run());
//!
//! let mut body = Vec::new();
//! let outcome = Client::default().fetch(&addr, "/world", &mut body)?;
//! assert_eq!((outcome.status, body.as_slice()), (Status::Ok, &b"hello /world"[..]));
//!
//! stop.shutdown();
//! running.join().expect("server thread")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub mod client;
pub mod codec;
mod connections;
pub mod fileserver;
mod frontdoor;
pub mod http;
mod http_front;
pub mod load;
pub mod paths;
mod pool;
mod server;

pub use client::{Client, FetchOutcome};
pub use codec::Malformed;
pub use connections::{ConnectionCounts, ConnectionState};
pub use fileserver::{BodyMode, FileServer, DEFAULT_INLINE_MAX_SIZE, MAX_INLINE_MAX_SIZE};
pub use http_front::{Delivery, Failure, ObjectHead};
pub use server::{ResponseWriter, Server, ShutdownHandle};

/// Longest request path accepted (bytes).
pub const MAX_PATH_LEN: usize = 4096;

/// The status of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `OK`: a length and a body follow.
    Ok,
    /// `FILE_NOT_FOUND`.
    FileNotFound,
    /// `ERROR`.
    Error,
    /// `INVALID`.
    Invalid,
}

/// A response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseHeader {
    /// `GETFILE OK <length>\r\n\r\n`.
    Ok {
        /// Body length.
        length: u64,
    },
    /// `GETFILE FILE_NOT_FOUND\r\n\r\n`.
    FileNotFound,
    /// `GETFILE ERROR\r\n\r\n`.
    Error,
    /// `GETFILE INVALID\r\n\r\n`.
    Invalid,
}

/// A request as the server hands it to a [`Handler`].
#[derive(Clone, Debug)]
pub struct Request {
    /// The path, validated per GETFILE.md (starts with '/', no space/CR/LF/NUL, <= MAX_PATH_LEN).
    pub path: String,
    /// The client's address.
    pub peer: SocketAddr,
}

/// An object a handler holds in memory whole, which the front door answers from its own thread
/// (see [`Handler::answer_held`]).
#[derive(Clone, Debug)]
pub struct HeldObject {
    /// What the response head says of it (`len` must be `body.len()`).
    pub head: ObjectHead,
    /// Every byte of it.
    pub body: std::sync::Arc<[u8]>,
}

/// Answers requests. Called on a worker thread; may stream a body of any size at any pace.
/// If it returns without sending a header the server sends `ERROR`; if it returns before the
/// announced body length was sent the server closes the connection (the client sees a short body).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: &Request, response: &mut ResponseWriter<'_>);

    /// Told after the server answered a malformed or oversized request header, or one cut
    /// short by an end of stream, with `INVALID` itself (the handler never sees such a request).
    /// For counting; does nothing by default.
    fn rejected(&self, peer: SocketAddr, reason: &Malformed) {
        let _ = (peer, reason);
    }

    /// Told after a connection's request header was not complete `header_timeout` after
    /// accept (or, on a kept-alive HTTP connection, after its first byte); the server answered
    /// `INVALID` (HTTP: 408, also told to [`http_answered`](Handler::http_answered)) and closes
    /// it. Not told to [`rejected`](Handler::rejected). For counting; does nothing by default.
    fn header_timed_out(&self, peer: SocketAddr) {
        let _ = peer;
    }

    /// Asked on the front door's thread for every complete request (`query`: an HTTP request's
    /// query string, undecoded) before it goes to a worker: an object the handler holds in
    /// memory, which the front door then answers itself (200, 206, 304, 416 or a HEAD's head for
    /// HTTP, `OK` for GetFile) with no worker and no thread switch; `None` (the default): a
    /// worker calls [`handle`](Handler::handle). It must not block: nothing that waits on a
    /// peer, no lock held across I/O; every connection waits while it runs. The one I/O allowed
    /// is a short read of a small local file ([`FileServer`] reads the files it answers here,
    /// as nginx's event loop does). The end of such an answer is told to [`held_answered`](Handler::held_answered)
    /// (HTTP answers also to [`http_answered`](Handler::http_answered)). An answer the socket
    /// cannot take at once is finished by a worker, and one that makes no progress for
    /// `send_timeout` is told to [`held_send_timed_out`](Handler::held_send_timed_out) instead.
    fn answer_held(&self, path: &str, query: Option<&str>) -> Option<HeldObject> {
        let _ = (path, query);
        None
    }

    /// Told after the answer of a held object went out whole: `body_bytes` of its body (none
    /// for a HEAD or a 304), `elapsed` since the request was taken. For counting; does nothing
    /// by default.
    fn held_answered(&self, body_bytes: u64, elapsed: Duration) {
        let _ = (body_bytes, elapsed);
    }

    /// Told after the answer of a held object (see [`answer_held`](Handler::answer_held)) made
    /// no progress for `send_timeout`: the connection was closed after part of it. For counting;
    /// does nothing by default.
    fn held_send_timed_out(&self, peer: SocketAddr) {
        let _ = peer;
    }

    /// Told after a new connection was closed at once because `max_connections` were open, or
    /// because the process was out of file descriptors. For counting; does nothing by default.
    fn over_capacity(&self, peer: SocketAddr) {
        let _ = peer;
    }

    /// Told after the server refused an HTTP request head itself with `status` (400, 405, 414,
    /// 431); the handler never sees such a request. For counting; does nothing by default.
    fn http_refused(&self, peer: SocketAddr, status: u16) {
        let _ = (peer, status);
    }

    /// Told after the handler's answer to an HTTP request went out with `status`, and after
    /// the server's own 408 to a head not complete in time. For counting; does nothing by
    /// default.
    fn http_answered(&self, status: u16) {
        let _ = status;
    }

    /// Told after a connection moved from state `left` to state `entered` (`None`: it was just
    /// opened, or it closed), on the thread that moved it (the front door or a worker), so that
    /// a handler can keep gauges of the [`ConnectionCounts`] with one atomic add per move. Keep
    /// it short: it runs on every connection's every move. Does nothing by default.
    fn connection_moved(&self, left: Option<ConnectionState>, entered: Option<ConnectionState>) {
        let _ = (left, entered);
    }
}

/// Errors of this crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error (connect, read, write, timeout, broken pipe...).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A header broke the protocol.
    #[error("malformed header: {0}")]
    Malformed(#[from] Malformed),
    /// A well-formed message that is wrong at this point of the exchange.
    #[error("expected {expected}, got {got}")]
    UnexpectedMessage {
        /// What the protocol allows here.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// The server could not be reached (connect failed or timed out, or the address did not
    /// resolve).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The connection ended before the announced body length arrived.
    #[error("short body: received {received} of {announced} bytes")]
    ShortBody {
        /// The length in the OK header.
        announced: u64,
        /// Body bytes received before the end.
        received: u64,
    },
    /// Writing the received body to the caller's sink failed.
    #[error("writing the body: {0}")]
    Output(io::Error),
    /// A setting or input file is unusable.
    #[error("{0}")]
    Config(String),
}

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 for any).
    pub listen: SocketAddr,
    /// Worker threads that always run.
    pub threads: usize,
    /// Worker threads at most: when a complete request waits and no worker is idle, another
    /// worker starts, up to this bound; one beyond `threads` exits after about 10 s without
    /// work. At least `threads`.
    pub max_threads: usize,
    /// Complete requests waiting for a worker; beyond it they wait in the front door.
    pub queue_depth: usize,
    /// Open connections (reading a header, queued or being served); a connection accepted
    /// past it is closed at once and told to [`Handler::over_capacity`].
    pub max_connections: usize,
    /// The listen backlog (the kernel caps it at `net.core.somaxconn`).
    pub backlog: i32,
    /// Deadline for the whole request header, counted from accept (INVALID after it).
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long ends the connection
    /// (`SO_SNDTIMEO`, which bounds each write call; see
    /// [`ResponseWriter::send_timed_out`]). Not zero.
    pub send_timeout: Duration,
    /// Set SO_REUSEPORT so several processes can share the port.
    pub reuse_port: bool,
    /// Also serve HTTP/1.1 on this address, through the same handler and worker pool.
    pub http_listen: Option<SocketAddr>,
    /// How long a kept-alive HTTP connection may wait for its next request (held by the front
    /// door, not a worker).
    pub http_keepalive_timeout: Duration,
    /// Requests answered on one HTTP connection at most; the last answer says
    /// `Connection: close`. At least 1.
    pub http_max_requests_per_connection: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 10823)),
            threads: 16,
            max_threads: 1024,
            queue_depth: 1024,
            max_connections: 10_000,
            backlog: 1024,
            header_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            reuse_port: false,
            http_listen: None,
            http_keepalive_timeout: Duration::from_secs(15),
            http_max_requests_per_connection: 1000,
        }
    }
}
