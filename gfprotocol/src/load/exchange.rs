//! One request on one non-blocking connection, advanced whenever its socket is ready: connect,
//! send the request, read the header (with the strict [`ResponseDecoder`]) and the body, and
//! for a non-OK answer wait briefly for the server's close. Nothing here allocates per request:
//! the read and verify buffers belong to the event loop, the encoded request to the run.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::codec::{Malformed, ResponseDecoder};
use crate::{ResponseHeader, Status};

/// How long to wait for the close (or stray bytes) after a non-OK header, as the blocking
/// client does: the exchange is complete, so a server that keeps the socket open is not given
/// the whole I/O timeout.
const END_GRACE: Duration = Duration::from_millis(500);

/// The time limits of one exchange.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// From the start of the connect until the request could be written.
    pub(super) connect: Duration,
    /// Longest silence once connected.
    pub(super) io: Duration,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The connection could not be made (refused, reset, no local port left, timed out).
    Connect(io::Error),
    /// Connected, then nothing moved for the I/O timeout.
    Timeout { in_body: bool },
    /// A read or write failed before the header was complete.
    Io(io::Error),
    /// The header broke the protocol.
    Malformed(Malformed),
    /// Bytes after a non-OK header.
    Unexpected,
    /// The connection ended (or failed) before the announced length arrived.
    ShortBody(Option<io::Error>),
}

impl Failure {
    /// The short name counted in the summary's `failures`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Timeout { .. } => "timeout",
            Failure::Io(_) => "io",
            Failure::Malformed(_) => "malformed",
            Failure::Unexpected => "unexpected",
            Failure::ShortBody(_) => "short_body",
        }
    }
}

/// The reason counted in the summary's `failure_reasons` (a small set: kinds, errno texts,
/// header errors).
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Timeout { in_body: false } => f.write_str("timeout: waiting for the header"),
            Failure::Timeout { in_body: true } => f.write_str("timeout: in the body"),
            Failure::Io(e) => write!(f, "io: {e}"),
            Failure::Malformed(m) => write!(f, "malformed: {m}"),
            Failure::Unexpected => f.write_str("unexpected: bytes after a non-OK header"),
            Failure::ShortBody(None) => f.write_str("short_body: end of stream"),
            Failure::ShortBody(Some(e)) => write!(f, "short_body: {e}"),
        }
    }
}

/// How an exchange ended.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The status, or why there is none.
    pub(super) result: Result<Status, Failure>,
    /// Body bytes received.
    pub(super) received: u64,
    /// Whether the body matched the verify directory (true without one).
    pub(super) verified: bool,
    /// From the start of the connect to the last byte of the answer.
    pub(super) latency: Duration,
}

impl Outcome {
    /// A request that failed before it had a connection.
    pub(super) fn failed(failure: Failure, started: Instant) -> Outcome {
        Outcome {
            result: Err(failure),
            received: 0,
            verified: true,
            latency: started.elapsed(),
        }
    }
}

/// What [`Exchange::advance`] got to.
pub(super) enum Progress {
    /// Waiting for the socket.
    Pending,
    /// Finished; the connection can be closed.
    Done(Outcome),
}

/// Buffers shared by every exchange of one event loop.
pub(super) struct Scratch {
    /// Socket reads land here.
    pub(super) read: Vec<u8>,
    /// The verify file's bytes, compared with `read`.
    pub(super) verify: Vec<u8>,
}

impl Scratch {
    pub(super) fn new(size: usize, verifying: bool) -> Scratch {
        Scratch {
            read: vec![0; size],
            verify: if verifying { vec![0; size] } else { Vec::new() },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Connecting, or writing the request.
    Sending,
    /// Reading the header, then the body.
    Receiving,
    /// A non-OK header arrived; waiting for the close.
    AwaitingEnd(Status),
}

/// One request on its own connection.
pub(super) struct Exchange {
    stream: TcpStream,
    phase: Phase,
    connected: bool,
    sent: usize,
    decoder: ResponseDecoder,
    header_done: bool,
    announced: u64,
    received: u64,
    started: Instant,
    answered: Option<Instant>,
    deadline: Instant,
    limits: Limits,
    verifier: Option<Verifier>,
}

impl Exchange {
    /// Starts connecting to `addr` (non-blocking). `verify` is the directory to compare the
    /// body with, and `path` the request's path in it.
    pub(super) fn connect(
        addr: SocketAddr,
        limits: Limits,
        verify: Option<(&Path, &str)>,
    ) -> Result<Exchange, Failure> {
        let started = Instant::now();
        let stream = TcpStream::connect(addr).map_err(Failure::Connect)?;
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        Ok(Exchange {
            stream,
            phase: Phase::Sending,
            connected: false,
            sent: 0,
            decoder: ResponseDecoder::new(),
            header_done: false,
            announced: 0,
            received: 0,
            started,
            answered: None,
            deadline: started + limits.connect,
            limits,
            verifier: verify.map(|(dir, path)| Verifier::open(dir, path)),
        })
    }

    /// The socket, to register with the poller.
    pub(super) fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Does everything the socket allows now: writes the rest of `request`, reads what has
    /// arrived. `now` is the loop's clock, for the deadlines.
    pub(super) fn advance(
        &mut self,
        request: &[u8],
        scratch: &mut Scratch,
        now: Instant,
    ) -> Progress {
        if self.phase == Phase::Sending {
            match self.send(request, now) {
                Ok(true) => self.phase = Phase::Receiving,
                Ok(false) => return Progress::Pending,
                Err(failure) => return self.fail(failure),
            }
        }
        self.receive(scratch, now)
    }

    /// Ends the exchange if its deadline passed.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Outcome> {
        if now < self.deadline {
            return None;
        }
        let progress = match self.phase {
            Phase::AwaitingEnd(status) => self.succeed(status),
            Phase::Sending if !self.connected => self.fail(Failure::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
            Phase::Sending | Phase::Receiving => self.fail(Failure::Timeout {
                in_body: self.header_done,
            }),
        };
        match progress {
            Progress::Done(outcome) => Some(outcome),
            Progress::Pending => None,
        }
    }

    /// `Ok(true)` once the whole request is written, `Ok(false)` to wait for the socket.
    fn send(&mut self, request: &[u8], now: Instant) -> Result<bool, Failure> {
        loop {
            let rest = request.get(self.sent..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(true);
            }
            match self.stream.write(rest) {
                Ok(0) => return Err(Failure::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.sent += n;
                    self.connected = true;
                    self.deadline = now + self.limits.io;
                }
                // Still connecting (a write before the handshake completes is EAGAIN).
                Err(e) if is_would_block(&e) || e.kind() == io::ErrorKind::NotConnected => {
                    return Ok(false)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.connected => return Err(Failure::Io(e)),
                // The connect's error (refused, reset) is reported by the first write.
                Err(e) => return Err(Failure::Connect(e)),
            }
        }
    }

    fn receive(&mut self, scratch: &mut Scratch, now: Instant) -> Progress {
        loop {
            let n = match self.stream.read(&mut scratch.read) {
                Ok(n) => n,
                Err(e) if is_would_block(&e) => return Progress::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.read_failed(e),
            };
            if n == 0 {
                return self.end_of_stream();
            }
            self.deadline = match self.phase {
                Phase::AwaitingEnd(_) => self.deadline,
                _ => now + self.limits.io,
            };
            let chunk = scratch.read.get(..n).unwrap_or_default();
            if let Some(done) = self.consume(chunk, &mut scratch.verify, now) {
                return done;
            }
        }
    }

    /// Takes one read's bytes; `Some` once the exchange is over.
    fn consume(&mut self, chunk: &[u8], verify: &mut [u8], now: Instant) -> Option<Progress> {
        let body = match self.phase {
            Phase::AwaitingEnd(_) => return Some(self.fail(Failure::Unexpected)),
            Phase::Receiving if !self.header_done => match self.decoder.feed(chunk) {
                Err(malformed) => return Some(self.fail(Failure::Malformed(malformed))),
                Ok(None) => return None,
                Ok(Some((header, used))) => {
                    let body = chunk.get(used..).unwrap_or_default();
                    self.header_done = true;
                    match header {
                        ResponseHeader::Ok { length } => self.announced = length,
                        other => {
                            if !body.is_empty() {
                                return Some(self.fail(Failure::Unexpected));
                            }
                            self.answered = Some(Instant::now());
                            self.phase = Phase::AwaitingEnd(other.status());
                            self.deadline = now + END_GRACE;
                            return None;
                        }
                    }
                    body
                }
            },
            _ => chunk,
        };
        let room = usize::try_from(self.announced - self.received).unwrap_or(usize::MAX);
        let body = body.get(..body.len().min(room)).unwrap_or_default();
        if let Some(verifier) = self.verifier.as_mut() {
            verifier.compare(body, verify);
        }
        self.received += body.len() as u64;
        (self.received == self.announced).then(|| {
            self.answered = Some(Instant::now());
            self.succeed(Status::Ok)
        })
    }

    fn read_failed(&mut self, error: io::Error) -> Progress {
        match self.phase {
            // A reset after a complete non-OK header loses nothing.
            Phase::AwaitingEnd(status) if error.kind() == io::ErrorKind::ConnectionReset => {
                self.succeed(status)
            }
            _ if self.header_done => self.fail(Failure::ShortBody(Some(error))),
            _ => self.fail(Failure::Io(error)),
        }
    }

    fn end_of_stream(&mut self) -> Progress {
        match self.phase {
            Phase::AwaitingEnd(status) => self.succeed(status),
            _ if self.header_done => self.fail(Failure::ShortBody(None)),
            _ => {
                let reason = self.decoder.finish().err().unwrap_or(Malformed::Incomplete);
                self.fail(Failure::Malformed(reason))
            }
        }
    }

    fn succeed(&mut self, status: Status) -> Progress {
        let verified = match (&mut self.verifier, status) {
            (None, _) => true,
            (Some(verifier), Status::Ok) => verifier.finish(),
            // A file the server says does not exist must not exist.
            (Some(verifier), Status::FileNotFound) => verifier.file.is_none(),
            (Some(_), Status::Error | Status::Invalid) => true,
        };
        self.done(Ok(status), verified)
    }

    fn fail(&mut self, failure: Failure) -> Progress {
        self.done(Err(failure), true)
    }

    /// Latency ends at the answer's last byte (a failure: when it was noticed).
    fn done(&mut self, result: Result<Status, Failure>, verified: bool) -> Progress {
        let end = self.answered.unwrap_or_else(Instant::now);
        Progress::Done(Outcome {
            result,
            received: self.received,
            verified,
            latency: end.saturating_duration_since(self.started),
        })
    }
}

fn is_would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

/// Compares a body with the expected file as it streams in, one read's bytes at a time.
struct Verifier {
    file: Option<File>,
    mismatch: bool,
}

impl Verifier {
    fn open(dir: &Path, path: &str) -> Verifier {
        let file = File::open(dir.join(path.trim_start_matches('/')))
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
        Verifier {
            mismatch: file.is_none(),
            file,
        }
    }

    /// Compares `body` with the file's next bytes; `scratch` is at least as long as `body`.
    fn compare(&mut self, body: &[u8], scratch: &mut [u8]) {
        if self.mismatch || body.is_empty() {
            return;
        }
        let (Some(file), Some(expected)) = (self.file.as_mut(), scratch.get_mut(..body.len()))
        else {
            self.mismatch = true;
            return;
        };
        self.mismatch = file.read_exact(expected).is_err() || expected != body;
    }

    /// Whether the body matched the whole file (nothing of it is left).
    fn finish(&mut self) -> bool {
        let mut byte = [0u8; 1];
        !self.mismatch && matches!(self.file.as_mut().map(|f| f.read(&mut byte)), Some(Ok(0)))
    }
}
