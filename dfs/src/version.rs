//! File versions, checksums and the order that decides conflicts.
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// A file's version: its mtime (nanoseconds since the Unix epoch) and CRC-32C. Versions are
/// ordered by mtime, then checksum: the later mtime wins and equal mtimes are broken by the
/// larger checksum, so every client and the server settle a conflict alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// CRC-32C of the content.
    pub checksum: u32,
}

/// A file's size and version, as the server lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Bytes.
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// CRC-32C of the content.
    pub checksum: u32,
}

impl FileMeta {
    /// The version part.
    pub fn version(&self) -> Version {
        Version {
            mtime: self.mtime,
            checksum: self.checksum,
        }
    }

    /// Whether the content is (by size and checksum) the same.
    pub fn same_content(&self, other: &FileMeta) -> bool {
        self.size == other.size && self.checksum == other.checksum
    }
}

/// Nanoseconds since the Unix epoch of `time` (0 before the epoch).
pub fn nanos_of(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `nanos` nanoseconds after the Unix epoch (negative counts as 0).
pub fn time_of(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    nanos_of(SystemTime::now())
}

/// The size, mtime and CRC-32C of the regular file at `path`, read whole.
pub fn file_meta(path: &Path) -> Result<FileMeta> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    meta_of_open(&file, path)
}

/// The version of an open file (`path` names it in errors); reads all of it by offset, so
/// its position is left where it was.
pub fn meta_of_open(file: &std::fs::File, path: &Path) -> Result<FileMeta> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let mtime = nanos_of(meta.modified().map_err(|e| Error::io(path, e))?);
    let (size, checksum) = checksum_of_file(file, meta.len()).map_err(|e| Error::io(path, e))?;
    Ok(FileMeta {
        size,
        mtime,
        checksum,
    })
}

/// Files at least this large are summed in two halves on two threads: a store cannot send
/// its first message before the checksum is known, so the sum is on the critical path.
const PARALLEL_CHECKSUM_FROM: u64 = 8 << 20;

/// Bytes read and CRC-32C of `file` from its start to its end; `len` is its size as last
/// seen (a file that changes meanwhile is summed as read). A file that shrank under the first
/// half's feet is summed again as one.
fn checksum_of_file(file: &std::fs::File, len: u64) -> std::io::Result<(u64, u32)> {
    let whole = || checksum_of(&mut PositionedReader::new(file, 0, u64::MAX));
    if len < PARALLEL_CHECKSUM_FROM {
        return whole();
    }
    let half = len / 2;
    let (head, tail) = std::thread::scope(|scope| {
        let head = scope.spawn(move || checksum_of(&mut PositionedReader::new(file, 0, half)));
        let tail = checksum_of(&mut PositionedReader::new(file, half, u64::MAX));
        (head.join(), tail)
    });
    let head = head.map_err(|_| std::io::Error::other("a checksum thread panicked"))??;
    let tail = tail?;
    if head.0 < half {
        return whole();
    }
    let crc = crc32c::crc32c_combine(head.1, tail.1, tail.0 as usize);
    Ok((head.0 + tail.0, crc))
}

/// Reads `[start, start + limit)` of a file by offset, so that two threads can read one
/// open file at once.
struct PositionedReader<'a> {
    file: &'a std::fs::File,
    offset: u64,
    left: u64,
}

impl<'a> PositionedReader<'a> {
    fn new(file: &'a std::fs::File, start: u64, limit: u64) -> Self {
        PositionedReader {
            file,
            offset: start,
            left: limit,
        }
    }
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let wanted = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..wanted], self.offset)?;
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Bytes read and CRC-32C of everything `reader` yields.
pub fn checksum_of(reader: &mut impl Read) -> std::io::Result<(u64, u32)> {
    let mut buffer = vec![0u8; 1 << 20];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok((size, crc)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        (file, data)
    }

    #[test]
    fn a_file_summed_in_two_halves_has_the_checksum_of_one_pass() {
        let sizes = [0, 1, 4096, PARALLEL_CHECKSUM_FROM as usize - 1];
        let large = [
            PARALLEL_CHECKSUM_FROM as usize,
            PARALLEL_CHECKSUM_FROM as usize + 12345,
        ];
        for len in sizes.into_iter().chain(large) {
            let (file, data) = file_of(len);
            let summed = checksum_of_file(file.as_file(), len as u64).unwrap();
            assert_eq!(summed, (len as u64, crc32c::crc32c(&data)), "{len} bytes");
        }
    }

    #[test]
    fn a_file_shorter_than_its_stat_said_is_summed_as_it_is() {
        let (file, data) = file_of(PARALLEL_CHECKSUM_FROM as usize);
        let stale_len = 4 * PARALLEL_CHECKSUM_FROM;
        let summed = checksum_of_file(file.as_file(), stale_len).unwrap();
        assert_eq!(summed, (data.len() as u64, crc32c::crc32c(&data)));
    }

    #[test]
    fn summing_leaves_the_position_of_an_open_file_alone() {
        use std::io::Seek;
        let (file, _) = file_of(100);
        let mut handle = file.reopen().unwrap();
        handle.seek(std::io::SeekFrom::Start(10)).unwrap();
        meta_of_open(&handle, file.path()).unwrap();
        assert_eq!(handle.stream_position().unwrap(), 10);
    }

    #[test]
    fn later_mtime_wins_then_larger_checksum() {
        let v = |mtime, checksum| Version { mtime, checksum };
        assert!(v(2, 0) > v(1, 9));
        assert!(v(1, 9) > v(1, 3));
    }
}
