//! Body writes paced by the client: a sender that holds a shared resource (a cache segment)
//! writes what the socket takes without blocking, waits briefly for room, and otherwise learns
//! that the client reads slowly, so that it can release the resource and go on from its own
//! buffer.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{body_state, ResponseWriter};

impl ResponseWriter<'_> {
    /// Sends up to `max` body bytes written by `write` straight to the socket; `write` makes one
    /// non-blocking attempt (such as ipc's `Chunk::send_some_to`) and returns how many bytes
    /// went out. Returns that count; `WouldBlock` when the socket buffer is full (nothing was
    /// sent, the connection stays open: see [`ResponseWriter::wait_writable`]). A pending OK
    /// header goes out first.
    pub fn send_body_some_with(
        &mut self,
        max: usize,
        write: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let (announced, sent, _) = self.body_state(max as u64)?;
        if max == 0 {
            return Ok(0);
        }
        self.flush_header_before_body()?;
        match write(self.stream.as_fd()) {
            Ok(n) if n > max => {
                self.close_now();
                Err(io::Error::other(
                    "a body write reported more bytes than offered",
                ))
            }
            Ok(0) => {
                self.close_now();
                Err(io::Error::from(io::ErrorKind::WriteZero))
            }
            Ok(n) => {
                self.state = body_state(announced, sent + n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                self.close_now();
                Err(e)
            }
        }
    }

    /// Waits up to `timeout` until the socket can take more bytes: `Ok(false)` if it still
    /// cannot. A pending OK header is not sent.
    pub fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLOUT)];
        loop {
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(io::Error::from(errno)),
            }
        }
    }
}
