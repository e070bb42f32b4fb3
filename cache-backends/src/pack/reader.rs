//! Opening a pack: the one `mmap` call, the validation at open, lookups and checked reads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

use super::format::{self, FormatError, IndexEntry};
use crate::directory::check_range;
use crate::{BackendStats, CacheBackend, CachedObject, ChunkDest, Error, Fill};

/// A pack file opened read-only: its map, its validated index, and one "checksum verified"
/// flag per object.
pub struct PackBackend {
    inner: Arc<PackInner>,
}

struct PackInner {
    path: PathBuf,
    map: Mmap,
    entries: Vec<PackEntry>,
    payload_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct PackEntry {
    index: IndexEntry,
    /// Set once the object's checksum was computed: whether it matched.
    checked: OnceLock<bool>,
}

/// One object as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackObjectInfo {
    /// Its GetFile path.
    pub path: String,
    /// Offset in the pack.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC32C of its bytes.
    pub crc32c: u32,
}

/// Maps a pack file read-only.
///
/// This is the crate's only `unsafe` code.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: `Mmap::map` is unsafe because the bytes of a mapped file may change (or vanish,
    // raising SIGBUS) if the file is modified or truncated while mapped. Packs are write-once:
    // `gfpack build` writes a temporary file, fsyncs it and renames it into place, so a pack
    // path always names a complete file that nothing writes to; replacing a pack renames a new
    // file over the name and leaves this inode intact. Modifying a pack in place while a cache
    // serves it is unsupported (docs/pack-format.md says so). Everything read through the map is
    // bounds-checked and checksummed, so even a damaged file yields errors, not wrong bytes.
    unsafe { Mmap::map(file) }
}

impl PackBackend {
    /// Opens and validates a pack: header, footer, index checksum, and every index entry (paths,
    /// order, alignment, bounds). Object checksums are checked before each object is first
    /// served.
    pub fn open(path: &Path) -> Result<PackBackend, Error> {
        let corrupt = |error: FormatError| Error::CorruptPack {
            path: path.to_path_buf(),
            what: error.0,
        };
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let meta = file.metadata().map_err(io_error)?;
        if !meta.is_file() {
            return Err(corrupt(FormatError("not a regular file".into())));
        }
        let file_len = meta.len();
        if file_len < format::MIN_PACK_LEN {
            return Err(corrupt(FormatError(format!(
                "only {file_len} bytes, a pack has at least {} (truncated?)",
                format::MIN_PACK_LEN
            ))));
        }
        let map = map_read_only(&file).map_err(io_error)?;
        if map.len() as u64 != file_len {
            return Err(corrupt(FormatError(
                "the file changed size while being opened".into(),
            )));
        }
        let entries = validate(&map).map_err(corrupt)?;
        let payload_bytes = entries.iter().map(|entry| entry.len).sum();
        tracing::debug!(pack = %path.display(), objects = entries.len(), "pack opened");
        Ok(PackBackend {
            inner: Arc::new(PackInner {
                path: path.to_path_buf(),
                map,
                entries: entries
                    .into_iter()
                    .map(|index| PackEntry {
                        index,
                        checked: OnceLock::new(),
                    })
                    .collect(),
                payload_bytes,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        })
    }

    /// The pack file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The objects, in path order.
    pub fn objects(&self) -> impl Iterator<Item = PackObjectInfo> + '_ {
        self.inner.entries.iter().map(|entry| PackObjectInfo {
            path: entry.index.path.clone(),
            offset: entry.index.offset,
            len: entry.index.len,
            crc32c: entry.index.crc,
        })
    }

    /// Checks every object's checksum and that every byte between objects is zero; returns one
    /// line per problem (empty when the pack is sound).
    pub fn check_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut previous_end = format::HEADER_LEN;
        for (position, entry) in self.inner.entries.iter().enumerate() {
            if !self.inner.checksum_ok(position) {
                problems.push(format!("object {}: checksum mismatch", entry.index.path));
            }
            if !self.inner.is_zero(previous_end, entry.index.offset) {
                problems.push(format!(
                    "padding before object {} is not zero",
                    entry.index.path
                ));
            }
            previous_end = entry.index.offset.saturating_add(entry.index.len);
        }
        let index_offset = self.index_offset();
        if !self.inner.is_zero(previous_end, index_offset) {
            problems.push("padding before the index is not zero".into());
        }
        problems
    }

    fn index_offset(&self) -> u64 {
        let footer_start = self
            .inner
            .map
            .len()
            .saturating_sub(format::FOOTER_LEN as usize);
        self.inner
            .map
            .get(footer_start..)
            .and_then(|footer| format::decode_footer(footer).ok())
            .map_or(0, |footer| footer.index_offset)
    }
}

/// Validates the whole structure of a mapped pack and returns its index.
fn validate(bytes: &[u8]) -> Result<Vec<IndexEntry>, FormatError> {
    let file_len = bytes.len() as u64;
    let header = bytes
        .get(..format::HEADER_LEN as usize)
        .ok_or_else(|| FormatError("truncated header".into()))?;
    format::decode_header(header)?;
    let footer_start = bytes.len().saturating_sub(format::FOOTER_LEN as usize);
    let footer = format::decode_footer(bytes.get(footer_start..).unwrap_or_default())?;
    format::check_footer_placement(&footer, file_len)?;
    let index = usize::try_from(footer.index_offset)
        .ok()
        .zip(usize::try_from(footer.index_len).ok())
        .and_then(|(offset, len)| bytes.get(offset..offset.checked_add(len)?))
        .ok_or_else(|| FormatError("index lies outside the file".into()))?;
    if crc32c::crc32c(index) != footer.index_crc {
        return Err(FormatError("index checksum mismatch".into()));
    }
    format::decode_index(index, footer.object_count, footer.index_offset)
}

impl PackInner {
    fn object_bytes(&self, entry: &IndexEntry) -> Option<&[u8]> {
        let start = usize::try_from(entry.offset).ok()?;
        let end = start.checked_add(usize::try_from(entry.len).ok()?)?;
        self.map.get(start..end)
    }

    fn checksum_ok(&self, position: usize) -> bool {
        let Some(entry) = self.entries.get(position) else {
            return false;
        };
        *entry.checked.get_or_init(|| {
            let good = self
                .object_bytes(&entry.index)
                .is_some_and(|bytes| crc32c::crc32c(bytes) == entry.index.crc);
            if !good {
                tracing::error!(
                    pack = %self.path.display(),
                    key = %entry.index.path,
                    "object checksum mismatch: the object will not be served"
                );
            }
            good
        })
    }

    fn is_zero(&self, start: u64, end: u64) -> bool {
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(start, end)| self.map.get(start..end));
        range.is_some_and(|bytes| bytes.iter().all(|&byte| byte == 0))
    }
}

impl CacheBackend for PackBackend {
    fn kind(&self) -> &'static str {
        "pack"
    }

    fn get(&self, path: &str) -> Result<Option<Box<dyn CachedObject>>, Error> {
        let inner = &self.inner;
        let found = inner
            .entries
            .binary_search_by(|entry| entry.index.path.as_str().cmp(path));
        let Ok(position) = found else {
            inner.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        if !inner.checksum_ok(position) {
            return Err(Error::CorruptPack {
                path: inner.path.clone(),
                what: format!("object {path}: checksum mismatch"),
            });
        }
        inner.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Box::new(PackObject {
            pack: Arc::clone(inner),
            position,
        })))
    }

    fn put(&self, _path: &str, _len: u64) -> Result<Option<Box<dyn Fill>>, Error> {
        Ok(None)
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            objects: self.inner.entries.len() as u64,
            bytes: self.inner.payload_bytes,
            capacity: None,
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            inserts: 0,
            evictions: 0,
        }
    }
}

/// A verified object of a pack; holds the map alive.
struct PackObject {
    pack: Arc<PackInner>,
    position: usize,
}

impl PackObject {
    fn entry(&self) -> Option<&IndexEntry> {
        self.pack
            .entries
            .get(self.position)
            .map(|entry| &entry.index)
    }
}

impl CachedObject for PackObject {
    fn len(&self) -> u64 {
        self.entry().map_or(0, |entry| entry.len)
    }

    fn copy_to(&self, offset: u64, len: usize, dest: &mut dyn ChunkDest) -> Result<(), Error> {
        let object_len = CachedObject::len(self);
        check_range(offset, len, object_len)?;
        let bytes = self
            .entry()
            .and_then(|entry| self.pack.object_bytes(entry))
            .and_then(|bytes| {
                let start = usize::try_from(offset).ok()?;
                bytes.get(start..start.checked_add(len)?)
            })
            .ok_or(Error::OutOfRange {
                offset,
                len,
                object_len,
            })?;
        dest.put_slice(bytes).map_err(Error::Dest)
    }
}
