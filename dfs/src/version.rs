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
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    meta_of_open(&mut file, path)
}

/// The version of an open file (`path` names it in errors); reads it to the end.
pub fn meta_of_open(file: &mut std::fs::File, path: &Path) -> Result<FileMeta> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let mtime = nanos_of(meta.modified().map_err(|e| Error::io(path, e))?);
    let (size, checksum) = checksum_of(file).map_err(|e| Error::io(path, e))?;
    Ok(FileMeta {
        size,
        mtime,
        checksum,
    })
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

    #[test]
    fn later_mtime_wins_then_larger_checksum() {
        let v = |mtime, checksum| Version { mtime, checksum };
        assert!(v(2, 0) > v(1, 9));
        assert!(v(1, 9) > v(1, 3));
    }
}
