//! The GetFile protocol.
//!
//! API CONTRACT SKELETON — the items below are what proxy-core codes against (the server
//! framework) and what the binaries use. The gfprotocol implementer fills the bodies, adds the
//! codec, client, file server and load generator modules, and may add items; changing a
//! signature here must be agreed with the lead.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

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

/// Answers requests. Called on a worker thread; may stream a body of any size at any pace.
/// If it returns without sending a header the server sends `ERROR`; if it returns before the
/// announced body length was sent the server closes the connection (the client sees a short body).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: &Request, response: &mut ResponseWriter<'_>);
}

/// Errors of this crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error (connect, read, write, timeout, broken pipe...).
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The response side of one connection.
pub struct ResponseWriter<'c> {
    _conn: std::marker::PhantomData<&'c ()>,
}

impl ResponseWriter<'_> {
    /// Sends the header (once). For `Ok { length }` exactly `length` body bytes must follow.
    pub fn send_header(&mut self, _header: ResponseHeader) -> io::Result<()> {
        todo!()
    }
    /// Sends body bytes.
    pub fn send_body(&mut self, _data: &[u8]) -> io::Result<()> {
        todo!()
    }
    /// Sends `len` body bytes written by `write` straight to the socket (e.g. from shared
    /// memory); `write` must write exactly `len` bytes or fail.
    pub fn send_body_with(
        &mut self,
        _len: usize,
        _write: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        todo!()
    }
    /// Sends `len` body bytes of `file` from `offset` (sendfile(2)).
    pub fn send_file(&mut self, _file: &File, _offset: u64, _len: u64) -> io::Result<()> {
        todo!()
    }
    /// Whether the header went out.
    pub fn header_sent(&self) -> bool {
        todo!()
    }
    /// Body bytes sent so far.
    pub fn body_sent(&self) -> u64 {
        todo!()
    }
    /// Closes the connection now (after an OK header: the client sees a short body).
    pub fn abort(&mut self) {
        todo!()
    }
}

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 for any).
    pub listen: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Accepted connections waiting for a worker; beyond it the accept loop waits.
    pub queue_depth: usize,
    /// Deadline for the whole request header (INVALID after it).
    pub header_timeout: Duration,
    /// Send timeout per write (a stalled client is dropped after it).
    pub write_timeout: Duration,
    /// Set SO_REUSEPORT so several processes can share the port.
    pub reuse_port: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 10823)),
            threads: 16,
            queue_depth: 1024,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            reuse_port: false,
        }
    }
}

/// A bound GetFile server: an accept thread feeding a fixed pool of workers through a bounded
/// queue.
pub struct Server {
    _private: (),
}

/// Stops a running [`Server`] from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    _private: (),
}

impl ShutdownHandle {
    /// Stops accepting; queued and in-flight connections are finished. Idempotent.
    pub fn shutdown(&self) {
        todo!()
    }
}

impl Server {
    /// Binds the listener (SO_REUSEADDR, and SO_REUSEPORT if asked).
    pub fn bind(_config: ServerConfig, _handler: Arc<dyn Handler>) -> Result<Server, Error> {
        todo!()
    }
    /// The bound address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        todo!()
    }
    /// A handle to stop it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        todo!()
    }
    /// Serves until shut down, then waits for the workers to finish their connections.
    pub fn run(self) -> Result<(), Error> {
        todo!()
    }
}
