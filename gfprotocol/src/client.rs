//! The blocking client: one request per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::Duration;

use crate::codec::{encode_request, Malformed, ResponseDecoder};
use crate::{Error, ResponseHeader, Status};

/// How long to wait for the close (or stray bytes) after a non-OK header.
const END_GRACE: Duration = Duration::from_millis(500);
/// Bytes read per `read(2)`.
const READ_CHUNK: usize = 64 * 1024;

/// What a completed exchange gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchOutcome {
    /// The response status.
    pub status: Status,
    /// The length in the OK header (0 otherwise).
    pub announced_len: u64,
    /// Body bytes received and written to the sink (equal to `announced_len` on success).
    pub received: u64,
}

/// A blocking GetFile client.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// Limit for connecting.
    pub connect_timeout: Duration,
    /// Limit for each read or write once connected.
    pub io_timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
        }
    }
}

impl Client {
    /// Fetches `path` from `addr` (`host:port`), streaming an OK body into `out`.
    ///
    /// A complete FILE_NOT_FOUND, ERROR or INVALID header is a successful exchange with that
    /// status. A malformed header is [`Error::Malformed`], bytes after a non-OK header are
    /// [`Error::UnexpectedMessage`], a body cut short is [`Error::ShortBody`], a failure to
    /// connect is [`Error::Connect`] and a failing `out` is [`Error::Output`].
    pub fn fetch(
        &self,
        addr: &str,
        path: &str,
        out: &mut dyn Write,
    ) -> Result<FetchOutcome, Error> {
        let request = encode_request(path)?;
        let stream = self.connect(addr)?;
        stream.set_read_timeout(Some(self.io_timeout))?;
        stream.set_write_timeout(Some(self.io_timeout))?;
        stream.set_nodelay(true)?;
        crate::server::send_all(stream.as_fd(), &request)?;
        receive(stream, out)
    }

    fn connect(&self, addr: &str) -> Result<TcpStream, Error> {
        let connect_error = |source: io::Error| Error::Connect {
            addr: addr.to_owned(),
            source,
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_error)?.collect();
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        for candidate in addrs {
            match TcpStream::connect_timeout(&candidate, self.connect_timeout) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(connect_error(last))
    }
}

/// Reads the response from `stream`.
fn receive(mut stream: TcpStream, out: &mut dyn Write) -> Result<FetchOutcome, Error> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut decoder = ResponseDecoder::new();
    let (header, leftover) = loop {
        let n = read_some(&mut stream, &mut buf)?;
        if n == 0 {
            let reason = decoder.finish().err().unwrap_or(Malformed::Incomplete);
            return Err(reason.into());
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some((header, used)) = decoder.feed(chunk)? {
            break (header, chunk.get(used..).unwrap_or_default().to_vec());
        }
    };
    match header {
        ResponseHeader::Ok { length } => receive_body(stream, length, &leftover, &mut buf, out),
        other => {
            expect_end(&mut stream, &leftover, &mut buf)?;
            Ok(FetchOutcome {
                status: other.status(),
                announced_len: 0,
                received: 0,
            })
        }
    }
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
            }
            other => return other,
        }
    }
}

/// After a non-OK header nothing may follow: the server closes.
fn expect_end(stream: &mut TcpStream, leftover: &[u8], buf: &mut [u8]) -> Result<(), Error> {
    let extra = if leftover.is_empty() {
        // Servers close right after the header; one that keeps the connection open is given a
        // short grace, not the whole I/O timeout, since the exchange is already complete.
        stream.set_read_timeout(Some(END_GRACE))?;
        match read_some(stream, buf) {
            Ok(n) => n,
            // A reset or a silent peer after a complete header loses nothing.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::TimedOut
                ) =>
            {
                0
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        leftover.len()
    };
    if extra == 0 {
        Ok(())
    } else {
        Err(Error::UnexpectedMessage {
            expected: "end of stream after a non-OK header",
            got: format!("{extra} more bytes"),
        })
    }
}

fn receive_body(
    mut stream: TcpStream,
    announced: u64,
    leftover: &[u8],
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<FetchOutcome, Error> {
    let mut received = 0u64;
    let mut take = |data: &[u8], received: &mut u64| -> Result<(), Error> {
        let room = usize::try_from(announced - *received).unwrap_or(usize::MAX);
        let data = data.get(..data.len().min(room)).unwrap_or_default();
        out.write_all(data).map_err(Error::Output)?;
        *received += data.len() as u64;
        Ok(())
    };
    take(leftover, &mut received)?;
    while received < announced {
        let n = match read_some(&mut stream, buf) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, received, announced, "body read failed");
                0
            }
        };
        if n == 0 {
            return Err(Error::ShortBody {
                announced,
                received,
            });
        }
        take(buf.get(..n).unwrap_or_default(), &mut received)?;
    }
    out.flush().map_err(Error::Output)?;
    Ok(FetchOutcome {
        status: Status::Ok,
        announced_len: announced,
        received,
    })
}
