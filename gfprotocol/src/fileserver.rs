//! The gfserver handler: files beneath a root directory, or the files named by a listing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::paths::Root;
use crate::{Error, Handler, Request, ResponseHeader, ResponseWriter};

/// Where a [`FileServer`] finds its files.
#[derive(Debug)]
enum Source {
    /// Request paths resolved strictly beneath a root.
    Root(Root),
    /// Request path to local file, from a course-format listing.
    Listing(HashMap<String, PathBuf>),
}

/// How file bodies reach the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyMode {
    /// `sendfile(2)`: no copy through user space (small files go out with their header in one
    /// `sendmsg`). The default: see docs/protocol.md for the measurement.
    #[default]
    Sendfile,
    /// `read(2)` into a buffer, then `send(2)`.
    ReadWrite,
}

/// Buffer of [`BodyMode::ReadWrite`].
const COPY_CHUNK: usize = 256 * 1024;

/// Files up to this size are answered by the front door's own thread by default (see
/// [`FileServer::with_inline_max_size`]).
pub const DEFAULT_INLINE_MAX_SIZE: u64 = 16 * 1024;

/// The largest `inline_max_size`: a file answered inline is read whole into memory on the
/// thread every connection shares.
pub const MAX_INLINE_MAX_SIZE: u64 = 1 << 20;

/// A [`Handler`] that serves files.
#[derive(Debug)]
pub struct FileServer {
    source: Source,
    mode: BodyMode,
    inline_max_size: u64,
}

impl FileServer {
    /// Serves the regular files beneath `dir`; nothing outside it is reachable.
    pub fn from_root(dir: &Path) -> Result<FileServer, Error> {
        let root = Root::open(dir)
            .map_err(|e| Error::Config(format!("cannot open root {}: {e}", dir.display())))?;
        Ok(FileServer {
            source: Source::Root(root),
            mode: BodyMode::default(),
            inline_max_size: DEFAULT_INLINE_MAX_SIZE,
        })
    }

    /// Serves the files of a course-format listing: one `<path> <file>` per line, blank lines
    /// and `#` comments ignored; relative files are resolved against the current directory,
    /// as the course's tools do.
    pub fn from_listing(listing: &Path) -> Result<FileServer, Error> {
        let text = std::fs::read_to_string(listing)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", listing.display())))?;
        let entries = parse_listing(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", listing.display())))?;
        Ok(FileServer {
            source: Source::Listing(entries),
            mode: BodyMode::default(),
            inline_max_size: DEFAULT_INLINE_MAX_SIZE,
        })
    }

    /// Chooses how bodies are sent.
    pub fn with_body_mode(mut self, mode: BodyMode) -> FileServer {
        self.mode = mode;
        self
    }

    /// Answers regular files of at most `bytes` on the front door's thread, read afresh for
    /// every request (0: every request goes to a worker). That saves the hand-off to a worker,
    /// most of the cost of a small file, at the price of a short file read on the thread every
    /// connection shares, as nginx's event loop reads files itself: right for a root in the
    /// page cache or on a local disk, not for one on a network file system. Errors above
    /// [`MAX_INLINE_MAX_SIZE`].
    pub fn with_inline_max_size(mut self, bytes: u64) -> Result<FileServer, Error> {
        if bytes > MAX_INLINE_MAX_SIZE {
            return Err(Error::Config(format!(
                "the inline file size limit must be at most {MAX_INLINE_MAX_SIZE} bytes (got {bytes})"
            )));
        }
        self.inline_max_size = bytes;
        Ok(self)
    }

    /// The whole of a small regular file, read now; `None` for anything else (a missing or
    /// larger file, an error, a file that changed size while read), which a worker then
    /// answers as usual.
    fn read_small(&self, path: &str) -> Option<crate::HeldObject> {
        if self.inline_max_size == 0 {
            return None;
        }
        let mut file = self.open(path).ok()??;
        let len = file.metadata().ok()?.len();
        if len > self.inline_max_size {
            return None;
        }
        let mut body = Vec::with_capacity(usize::try_from(len).ok()?);
        (&mut file).take(len + 1).read_to_end(&mut body).ok()?;
        if body.len() as u64 != len {
            return None;
        }
        Some(crate::HeldObject {
            // What a worker's `send_header(Ok { length })` says of a file: its length only.
            head: crate::ObjectHead {
                len,
                ..crate::ObjectHead::default()
            },
            body: body.into(),
        })
    }

    /// Opens the file for `path`; `Ok(None)` when there is nothing to serve.
    pub fn open(&self, path: &str) -> io::Result<Option<File>> {
        match &self.source {
            Source::Root(root) => root.open_file(path),
            Source::Listing(entries) => {
                let Some(file) = entries.get(path) else {
                    return Ok(None);
                };
                // O_NONBLOCK: a FIFO named by the listing must not block the open (it is then
                // refused as not regular); small files are opened on the front door's thread.
                let opened = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                    .open(file);
                match opened {
                    Ok(f) if f.metadata()?.file_type().is_file() => Ok(Some(f)),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Parses `<path> <file>` lines.
fn parse_listing(text: &str) -> Result<HashMap<String, PathBuf>, String> {
    let mut entries = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some(path), Some(file), None) if path.starts_with('/') => {
                entries.insert(path.to_owned(), PathBuf::from(file));
            }
            _ => {
                return Err(format!(
                    "line {}: expected '<path> <file>' with path starting with '/'",
                    number + 1
                ))
            }
        }
    }
    Ok(entries)
}

impl Handler for FileServer {
    fn answer_held(&self, path: &str, _query: Option<&str>) -> Option<crate::HeldObject> {
        self.read_small(path)
    }

    fn handle(&self, request: &Request, response: &mut ResponseWriter<'_>) {
        let file = match self.open(&request.path) {
            Ok(Some(file)) => file,
            Ok(None) => {
                let _ = response.send_header(ResponseHeader::FileNotFound);
                return;
            }
            Err(e) => {
                tracing::warn!(path = %request.path, error = %e, "open failed");
                let _ = response.send_header(ResponseHeader::Error);
                return;
            }
        };
        let length = match file.metadata() {
            Ok(meta) => meta.len(),
            Err(e) => {
                tracing::warn!(path = %request.path, error = %e, "stat failed");
                let _ = response.send_header(ResponseHeader::Error);
                return;
            }
        };
        if let Err(e) = response
            .send_header(ResponseHeader::Ok { length })
            .and_then(|()| match self.mode {
                BodyMode::Sendfile => response.send_file(&file, 0, length),
                BodyMode::ReadWrite => copy_body(&file, length, response),
            })
        {
            tracing::debug!(path = %request.path, peer = %request.peer, error = %e, "transfer failed");
            response.abort();
        }
    }
}

/// Sends `length` bytes of `file` through a user-space buffer.
fn copy_body(mut file: &File, length: u64, response: &mut ResponseWriter<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(length).unwrap_or(COPY_CHUNK))];
    let mut left = length;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = file.read(chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than announced",
            ));
        }
        response.send_body(chunk.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parse() {
        let entries = parse_listing("# c\n/a x/a\n\n  /b   /tmp/b  \n").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries["/b"], PathBuf::from("/tmp/b"));
        assert!(parse_listing("a b").is_err());
        assert!(parse_listing("/a").is_err());
        assert!(parse_listing("/a b c").is_err());
    }
}
