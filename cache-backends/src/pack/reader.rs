//! Opening a pack: the one `mmap` call, the validation at open, lookups and checked reads, and
//! the watch that notices a pack changed or replaced on disk (docs/pack-format.md, "Changes
//! while served").

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use memmap2::Mmap;
use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;

use super::format::{self, FormatError, IndexEntry};
use crate::directory::check_range;
use crate::{
    Availability, BackendStats, CacheBackend, CachedObject, ChunkDest, Error, Fill, ObjectVersion,
};

/// How often a served pack's path is stat'ed to notice a replacement, and how often a pack
/// that cannot be served is tried again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A checksum at first serve reads the map in steps this large, with a stat check before
/// each, so that a truncation is noticed before the map is touched past the end.
const CHECK_STEP: usize = 1 << 20;
/// A change to a file within one clock tick of its previous change may leave its ctime as it
/// was (the kernel stamps with a clock that advances once per tick, 1 to 10 ms). A pack whose
/// ctime is younger than this is read again once this has passed, so that every change after
/// the reads that verified it moves the ctime.
const SETTLE: Duration = Duration::from_millis(50);
/// The same for a file system that keeps whole seconds (a ctime with 0 nanoseconds: ext4 with
/// small inodes, FAT keeps 2 s).
const SETTLE_WHOLE_SECONDS: Duration = Duration::from_millis(2050);

/// A pack backend: the pack file at a path, opened read-only and verified, watched for changes.
///
/// Every read of an object through the map is bracketed by an `fstat` of the open file: if its
/// size or ctime differ from those recorded when it was verified, the read fails (and the bytes
/// it copied must be discarded) and the pack is marked changed. [`CacheBackend::refresh`] then
/// opens and verifies the path again (a pack replaced by rename is picked up the same way).
pub struct PackBackend {
    path: PathBuf,
    current: RwLock<Current>,
    watch: Mutex<Watch>,
    /// Metadata the origin refreshed (a pack never changes: the overlay holds it instead).
    refreshed: crate::meta::Overlay,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the backend serves from.
#[derive(Clone)]
enum Current {
    /// A verified open of the file.
    Open(Arc<Snapshot>),
    /// The last attempt to open it failed: why.
    Failed(Arc<str>),
}

/// The bookkeeping of [`CacheBackend::refresh`].
struct Watch {
    /// When the path was last stat'ed to notice a replacement.
    last_path_check: Instant,
    /// When the pack was last opened or tried: it is opened at most once per [`POLL_INTERVAL`].
    last_open: Instant,
}

/// One verified open of a pack file: its descriptor (for the stat checks), its map, its index
/// and the stamp the checks compare against.
struct Snapshot {
    path: PathBuf,
    file: File,
    map: Mmap,
    stamp: Stamp,
    /// Links to the file when it was opened: fewer later means it was replaced or removed.
    links: u64,
    /// The pack file's modification time: the Last-Modified of the objects of a version 1 pack.
    modified: Option<SystemTime>,
    /// How long its objects stay fresh (`gfpack build --ttl`).
    ttl: Option<Duration>,
    entries: Vec<PackEntry>,
    index_offset: u64,
    payload_bytes: u64,
    /// Set, saying how, once a stat check saw the file differ from `stamp`; never cleared.
    change: OnceLock<String>,
}

struct PackEntry {
    index: IndexEntry,
    /// Set once the object's checksum was computed on the unchanged file: whether it matched.
    checked: OnceLock<bool>,
}

/// What a stat of the pack must still show for its bytes to be the verified ones. The ctime
/// moves on every write, truncation, chmod, link or unlink and cannot be set back by the
/// writer; device and inode tell a replacement at the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    ctime_sec: i64,
    ctime_nsec: i64,
}

/// `st_nlink` is a u64 on x86_64 but a u32 on some other targets.
#[allow(clippy::useless_conversion)]
fn link_count(stat: &FileStat) -> u64 {
    u64::from(stat.st_nlink)
}

fn fstat(file: &File) -> std::io::Result<FileStat> {
    nix::sys::stat::fstat(file.as_fd()).map_err(std::io::Error::from)
}

impl Stamp {
    fn of(stat: &FileStat) -> Stamp {
        Stamp {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            ctime_sec: stat.st_ctime,
            ctime_nsec: stat.st_ctime_nsec,
        }
    }

    /// How long to wait before reads of the file are sure to be followed by a ctime change on
    /// any later write; `None` if they already are.
    fn unsettled_for(&self, now: SystemTime) -> Option<Duration> {
        let settle = if self.ctime_nsec == 0 {
            SETTLE_WHOLE_SECONDS
        } else {
            SETTLE
        };
        let ctime = u64::try_from(self.ctime_sec)
            .ok()
            .and_then(|secs| {
                let nanos = u32::try_from(self.ctime_nsec).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            })
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match now.duration_since(ctime) {
            Ok(age) if age >= settle => None,
            Ok(age) => Some(settle - age),
            // A ctime in the future (the clock was set back): waiting cannot help for long.
            Err(_) => Some(settle),
        }
    }
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
    // `gfpack build` writes a new file (mode 0444) and renames it into place, and a pack that
    // group or others may write is refused before it is mapped. Against an operator who writes
    // or truncates a pack in place anyway, nothing read through the map is trusted on its own:
    // every read is preceded by an fstat that checks the file still has the size and ctime it
    // had when verified (so the range lies inside it) and followed by one that checks it again
    // before the bytes are used (a write moves the ctime before it changes the data), and the
    // bytes are only copied or checksummed, never interpreted. What remains is a truncation
    // between the first fstat and the read, which raises SIGBUS: docs/pack-format.md describes
    // that window and how a restarted cache then waits, Unavailable, for a sound pack.
    unsafe { Mmap::map(file) }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PackBackend {
    /// Opens and validates a pack: a regular file that group and others cannot write, header,
    /// footer, index checksum, and every index entry (paths, order, alignment, bounds). Object
    /// checksums are checked before each object is first served. Any problem is an error
    /// naming the file.
    pub fn open(path: &Path) -> Result<PackBackend, Error> {
        let snapshot = Snapshot::open(path)?;
        Ok(PackBackend::with(path, Current::Open(Arc::new(snapshot))))
    }

    /// Opens a pack for a cache process, like [`PackBackend::open`] but never failing: a pack
    /// that does not open (missing, damaged, writable by others, being modified) gives a
    /// backend that is unavailable ([`CacheBackend::refresh`] says why and tries again every
    /// second) and answers every `get` with an error until the file is sound.
    pub fn open_for_serving(path: &Path) -> PackBackend {
        let current = match Snapshot::open(path) {
            Ok(snapshot) => Current::Open(Arc::new(snapshot)),
            Err(error) => Current::Failed(error.to_string().into()),
        };
        PackBackend::with(path, current)
    }

    fn with(path: &Path, current: Current) -> PackBackend {
        let now = Instant::now();
        PackBackend {
            path: path.to_path_buf(),
            current: RwLock::new(current),
            watch: Mutex::new(Watch {
                last_path_check: now,
                last_open: now,
            }),
            refreshed: crate::meta::Overlay::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The pack file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_current(&self, current: Current) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = current;
    }

    /// The objects, in path order (none while the pack cannot be served).
    pub fn objects(&self) -> impl Iterator<Item = PackObjectInfo> {
        let listed: Vec<PackObjectInfo> = match self.current() {
            Current::Open(snapshot) => snapshot
                .entries
                .iter()
                .map(|entry| PackObjectInfo {
                    path: entry.index.path.clone(),
                    offset: entry.index.offset,
                    len: entry.index.len,
                    crc32c: entry.index.crc,
                })
                .collect(),
            Current::Failed(_) => Vec::new(),
        };
        listed.into_iter()
    }

    /// Checks every object's checksum and that every byte between objects is zero, reading the
    /// file (not the map, so a truncation meanwhile is an error, not SIGBUS); returns one line
    /// per problem (empty when the pack is sound).
    pub fn check_all(&self) -> Vec<String> {
        match self.current() {
            Current::Open(snapshot) => check_contents(
                &snapshot.file,
                snapshot.entries.iter().map(|entry| &entry.index),
                snapshot.index_offset,
            )
            .unwrap_or_else(|error| vec![error.to_string()]),
            Current::Failed(why) => vec![why.to_string()],
        }
    }

    /// Opens the path again (the pack changed, was replaced or could not be opened), at most
    /// once per [`POLL_INTERVAL`]: at once for a change long after the last open.
    fn reopen_if_due(&self, watch: &mut Watch, now: Instant, why: &str) -> Availability {
        if now.duration_since(watch.last_open) < POLL_INTERVAL {
            return Availability::Unavailable(why.to_string());
        }
        watch.last_open = now;
        watch.last_path_check = now;
        match Snapshot::open(&self.path) {
            Ok(snapshot) => {
                tracing::info!(
                    pack = %self.path.display(),
                    objects = snapshot.entries.len(),
                    "pack opened (header and index verified; objects before their first serve)"
                );
                self.set_current(Current::Open(Arc::new(snapshot)));
                Availability::Ready
            }
            Err(error) => {
                let why = error.to_string();
                self.set_current(Current::Failed(why.as_str().into()));
                Availability::Unavailable(why)
            }
        }
    }
}

impl Snapshot {
    fn open(path: &Path) -> Result<Snapshot, Error> {
        let corrupt = |error: FormatError| Error::CorruptPack {
            path: path.to_path_buf(),
            what: error.0,
        };
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let (file, stat) = open_checked(path)?;
        let stamp = Stamp::of(&stat);
        // Write back any dirty pages first: that write-protects them in every mapping, so a
        // writer through a shared mapping faults, and moves the ctime, on its next write.
        nix::unistd::fdatasync(file.as_fd())
            .map_err(|errno| io_error(std::io::Error::from(errno)))?;
        let mut layout = read_layout(&file, stamp.size).map_err(corrupt)?;
        if let Some(wait) = stamp.unsettled_for(SystemTime::now()) {
            // Changed moments ago: a write in the same clock tick might not move the ctime
            // again. Read once more after the tick has surely passed; a change after these reads
            // moves the ctime, and the stat below or a later check sees it.
            std::thread::sleep(wait);
            layout = read_layout(&file, stamp.size).map_err(corrupt)?;
        }
        let map = map_read_only(&file).map_err(io_error)?;
        let after = fstat(&file).map_err(io_error)?;
        if Stamp::of(&after) != stamp || map.len() as u64 != stamp.size {
            return Err(Error::PackChanged {
                path: path.to_path_buf(),
                how: "it changed while being opened".into(),
            });
        }
        let payload_bytes = layout.entries.iter().map(|entry| entry.len).sum();
        tracing::debug!(pack = %path.display(), objects = layout.entries.len(), "pack opened");
        Ok(Snapshot {
            path: path.to_path_buf(),
            file,
            map,
            stamp,
            links: link_count(&stat),
            modified: u64::try_from(stat.st_mtime)
                .ok()
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            entries: layout
                .entries
                .into_iter()
                .map(|index| PackEntry {
                    index,
                    checked: OnceLock::new(),
                })
                .collect(),
            index_offset: layout.index_offset,
            ttl: layout.ttl.map(Duration::from_secs),
            payload_bytes,
            change: OnceLock::new(),
        })
    }

    fn is_changed(&self) -> bool {
        self.change.get().is_some()
    }

    fn changed_error(&self) -> Error {
        Error::PackChanged {
            path: self.path.clone(),
            how: self.change.get().cloned().unwrap_or_default(),
        }
    }

    /// Records that the file changed; the first time, logs how (an error for a change in
    /// place, since that breaks the write-once rule; a replacement is the normal way).
    fn mark_changed(&self, how: String, in_place: bool) {
        if self.change.set(how).is_err() {
            return;
        }
        let how = self.change.get().map_or("", String::as_str);
        if in_place {
            tracing::error!(
                pack = %self.path.display(),
                how,
                "pack modified in place while served: transfers from it are abandoned and it \
                 is verified again. Replace packs by rename (gfpack build), never write them"
            );
        } else {
            tracing::info!(pack = %self.path.display(), how, "pack replaced: opening it again");
        }
    }

    /// Checks that the file still has the verified size and ctime: before a read of the map
    /// (the range is then inside the file) and after it (the bytes read were the verified ones,
    /// since a write moves the ctime before it changes the data).
    fn ensure_unchanged(&self) -> Result<(), Error> {
        if !self.is_changed() {
            match fstat(&self.file) {
                Ok(stat) if Stamp::of(&stat) == self.stamp => return Ok(()),
                Ok(stat) => self.note_change(&stat),
                Err(error) => self.mark_changed(format!("fstat failed: {error}"), true),
            }
        }
        Err(self.changed_error())
    }

    fn note_change(&self, stat: &FileStat) {
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size != self.stamp.size {
            let how = format!(
                "its size went from {} to {size} bytes (truncated or appended to in place)",
                self.stamp.size
            );
            self.mark_changed(how, true);
        } else if link_count(stat) < self.links {
            let how = "it was replaced by rename or removed (the old file lost a link)";
            self.mark_changed(how.into(), false);
        } else {
            let how = "its ctime moved: written in place, or chmod/chown/touch";
            self.mark_changed(how.into(), true);
        }
    }

    /// Whether the path still names this file (it was not replaced by rename or removed).
    fn path_names_this_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.stamp.dev && meta.ino() == self.stamp.ino)
    }

    fn object_bytes(&self, entry: &IndexEntry) -> Option<&[u8]> {
        let start = usize::try_from(entry.offset).ok()?;
        let end = start.checked_add(usize::try_from(entry.len).ok()?)?;
        self.map.get(start..end)
    }

    /// Whether object `position`'s checksum matches, computed once on the unchanged file.
    fn checksum_ok(&self, position: usize) -> Result<bool, Error> {
        let Some(entry) = self.entries.get(position) else {
            return Ok(false);
        };
        if let Some(&good) = entry.checked.get() {
            return Ok(good);
        }
        let bytes = self.object_bytes(&entry.index).unwrap_or_default();
        let mut crc = 0u32;
        for piece in bytes.chunks(CHECK_STEP) {
            self.ensure_unchanged()?;
            crc = crc32c::crc32c_append(crc, piece);
        }
        self.ensure_unchanged()?;
        let good = crc == entry.index.crc;
        if !good {
            tracing::error!(
                pack = %self.path.display(),
                key = %entry.index.path,
                "object checksum mismatch: the object will not be served"
            );
        }
        // A concurrent first serve may have computed it too, with the same result.
        let _ = entry.checked.set(good);
        Ok(good)
    }
}

/// Opens `path` read-only without blocking (a FIFO must not hang the cache) and checks that
/// it is a regular file group and others cannot write.
fn open_checked(path: &Path) -> Result<(File, FileStat), Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io_error)?;
    let stat = fstat(&file).map_err(io_error)?;
    let mode = stat.st_mode;
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    let corrupt = |what: String| Error::CorruptPack {
        path: path.to_path_buf(),
        what,
    };
    if mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        return Err(corrupt("not a regular file".into()));
    }
    if mode & 0o022 != 0 {
        return Err(Error::PackWritable {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    if size < format::MIN_PACK_LEN {
        return Err(corrupt(format!(
            "only {size} bytes, a pack has at least {} (truncated?)",
            format::MIN_PACK_LEN
        )));
    }
    Ok((file, stat))
}

/// The validated structure of a pack.
struct Layout {
    entries: Vec<IndexEntry>,
    index_offset: u64,
    ttl: Option<u64>,
}

/// Reads (with `pread`, never through a map) and validates the header, the footer and the
/// index of a pack of `file_len` bytes.
fn read_layout(file: &File, file_len: u64) -> Result<Layout, FormatError> {
    let read = |offset: u64, len: u64, what: &str| -> Result<Vec<u8>, FormatError> {
        let len = usize::try_from(len).map_err(|_| FormatError(format!("{what} is too large")))?;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len)
            .map_err(|_| FormatError(format!("{what} of {len} bytes does not fit in memory")))?;
        bytes.resize(len, 0);
        file.read_exact_at(&mut bytes, offset).map_err(|error| {
            FormatError(format!(
                "reading the {what} at {offset}: {error} (truncated meanwhile?)"
            ))
        })?;
        Ok(bytes)
    };
    let header = read(0, format::HEADER_LEN, "header")?;
    let header = format::decode_header(&header)?;
    let footer_offset = file_len.saturating_sub(format::FOOTER_LEN);
    let footer = format::decode_footer(&read(footer_offset, format::FOOTER_LEN, "footer")?)?;
    format::check_footer_placement(&footer, file_len)?;
    let index = read(footer.index_offset, footer.index_len, "index")?;
    if crc32c::crc32c(&index) != footer.index_crc {
        return Err(FormatError("index checksum mismatch".into()));
    }
    let entries = format::decode_index(
        &index,
        header.version,
        footer.object_count,
        footer.index_offset,
    )?;
    Ok(Layout {
        entries,
        index_offset: footer.index_offset,
        ttl: header.ttl,
    })
}

/// Reads every object and every byte between them with `pread`: one line per checksum
/// mismatch or non-zero padding. An I/O error (a truncation meanwhile) ends the check.
fn check_contents<'a>(
    file: &File,
    entries: impl Iterator<Item = &'a IndexEntry>,
    index_offset: u64,
) -> std::io::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut buffer = vec![0u8; CHECK_STEP];
    let mut previous_end = format::HEADER_LEN;
    for entry in entries {
        if !range_is_zero(file, previous_end, entry.offset, &mut buffer)? {
            problems.push(format!("padding before object {} is not zero", entry.path));
        }
        let mut crc = 0u32;
        let end = entry.offset.saturating_add(entry.len);
        for_each_piece(file, entry.offset, end, &mut buffer, |piece| {
            crc = crc32c::crc32c_append(crc, piece);
        })?;
        if crc != entry.crc {
            problems.push(format!("object {}: checksum mismatch", entry.path));
        }
        previous_end = end;
    }
    if !range_is_zero(file, previous_end, index_offset, &mut buffer)? {
        problems.push("padding before the index is not zero".into());
    }
    Ok(problems)
}

fn range_is_zero(file: &File, start: u64, end: u64, buffer: &mut [u8]) -> std::io::Result<bool> {
    let mut zero = true;
    for_each_piece(file, start, end, buffer, |piece| {
        zero &= piece.iter().all(|&byte| byte == 0);
    })?;
    Ok(zero)
}

fn for_each_piece(
    file: &File,
    start: u64,
    end: u64,
    buffer: &mut [u8],
    mut visit: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut at = start;
    while at < end {
        let step = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let piece = buffer.get_mut(..step).unwrap_or_default();
        file.read_exact_at(piece, at)?;
        visit(piece);
        at += step as u64;
    }
    Ok(())
}

/// Verifies the pack at `path` completely, reading it with `pread`: the checks of an open,
/// then every object's checksum and the padding. `Ok` with the problems found inside objects
/// and padding; `Err` (naming the file) when it does not even open.
pub(super) fn verify_file(path: &Path) -> Result<(Vec<IndexEntry>, Vec<String>), Error> {
    let (file, stat) = open_checked(path)?;
    let corrupt = |what: String| Error::CorruptPack {
        path: path.to_path_buf(),
        what,
    };
    let layout = read_layout(&file, Stamp::of(&stat).size).map_err(|error| corrupt(error.0))?;
    let problems =
        check_contents(&file, layout.entries.iter(), layout.index_offset).map_err(|error| {
            corrupt(format!(
                "reading the objects: {error} (truncated meanwhile?)"
            ))
        })?;
    Ok((layout.entries, problems))
}

impl CacheBackend for PackBackend {
    fn kind(&self) -> &'static str {
        "pack"
    }

    fn get(&self, path: &str) -> Result<Option<Box<dyn CachedObject>>, Error> {
        let snapshot = match self.current() {
            Current::Open(snapshot) => snapshot,
            Current::Failed(why) => {
                return Err(Error::PackUnavailable {
                    path: self.path.clone(),
                    why: why.to_string(),
                })
            }
        };
        if snapshot.is_changed() {
            return Err(snapshot.changed_error());
        }
        let found = snapshot
            .entries
            .binary_search_by(|entry| entry.index.path.as_str().cmp(path));
        let Ok(position) = found else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        if !snapshot.checksum_ok(position)? {
            return Err(Error::CorruptPack {
                path: self.path.clone(),
                what: format!("object {path}: checksum mismatch"),
            });
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let mut object = PackObject {
            pack: snapshot,
            position,
            refreshed: None,
        };
        object.refreshed = self.refreshed.get(path, object.version().as_raw());
        Ok(Some(Box::new(object)))
    }

    fn update_meta(
        &self,
        path: &str,
        version: ObjectVersion,
        meta: &crate::ObjectMeta,
    ) -> Result<bool, Error> {
        match self.get(path)? {
            Some(object) if object.version() == version => {
                self.refreshed.insert(path, version.as_raw(), meta.encode());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn put_with_meta(
        &self,
        _path: &str,
        _len: u64,
        _meta: Option<&crate::ObjectMeta>,
    ) -> Result<Option<Box<dyn Fill>>, Error> {
        Ok(None)
    }

    fn stats(&self) -> BackendStats {
        let (objects, bytes) = match self.current() {
            Current::Open(snapshot) => (snapshot.entries.len() as u64, snapshot.payload_bytes),
            Current::Failed(_) => (0, 0),
        };
        BackendStats {
            objects,
            bytes,
            capacity: None,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: 0,
            evictions: 0,
        }
    }

    /// Ready while the verified pack is unchanged; otherwise opens and verifies the path again
    /// (at once after a change, then at most once a second). The path is stat'ed once a second
    /// to notice a pack replaced by rename or removed.
    fn refresh(&self) -> Availability {
        let mut watch = lock(&self.watch);
        let now = Instant::now();
        let why = match self.current() {
            Current::Open(snapshot) if !snapshot.is_changed() => {
                if now.duration_since(watch.last_path_check) < POLL_INTERVAL {
                    return Availability::Ready;
                }
                watch.last_path_check = now;
                if snapshot.ensure_unchanged().is_ok() {
                    if snapshot.path_names_this_file() {
                        return Availability::Ready;
                    }
                    // The old file is intact, but the path names another one (or none): stop
                    // serving the old one.
                    let how = "the path names another file now (replaced) or none (removed)";
                    snapshot.mark_changed(how.into(), false);
                }
                snapshot.changed_error().to_string()
            }
            Current::Open(snapshot) => snapshot.changed_error().to_string(),
            Current::Failed(why) => why.to_string(),
        };
        self.reopen_if_due(&mut watch, now, &why)
    }
}

/// A verified object of a pack; holds its snapshot (map and descriptor) alive.
struct PackObject {
    pack: Arc<Snapshot>,
    position: usize,
    /// The metadata the origin last refreshed for it, if any.
    refreshed: Option<Vec<u8>>,
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

    fn modified(&self) -> Option<SystemTime> {
        self.pack.modified
    }

    fn encoded_meta(&self) -> std::borrow::Cow<'_, [u8]> {
        if let Some(refreshed) = &self.refreshed {
            return std::borrow::Cow::Borrowed(refreshed);
        }
        let Some(entry) = self.entry() else {
            return std::borrow::Cow::Borrowed(&[]);
        };
        let modified = entry
            .modified
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .or(self.pack.modified);
        // Fresh for the TTL from the build (the pack file's modification).
        let built = self.pack.modified.unwrap_or(SystemTime::UNIX_EPOCH);
        let content = crate::ObjectMeta::for_content(modified, entry.len, self.pack.ttl, built);
        let meta = crate::ObjectMeta {
            // The content's checksum names the bytes, whichever pack holds them.
            etag: Some(format!("\"{:08x}-{:x}\"", entry.crc, entry.len)),
            content_type: entry.content_type.clone(),
            ..content
        };
        std::borrow::Cow::Owned(meta.encode())
    }

    fn version(&self) -> ObjectVersion {
        let stamp = &self.pack.stamp;
        let (offset, len, crc) = self
            .entry()
            .map_or((0, 0, 0), |entry| (entry.offset, entry.len, entry.crc));
        crate::object_version(&[
            stamp.dev,
            stamp.ino,
            stamp.size,
            stamp.ctime_sec as u64,
            stamp.ctime_nsec as u64,
            offset,
            len,
            u64::from(crc),
        ])
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
        // The file still has its verified size, so the range is inside it ...
        self.pack.ensure_unchanged()?;
        dest.put_slice(bytes).map_err(Error::Dest)?;
        // ... and still its verified ctime after the copy, so the bytes copied are the
        // verified ones. Otherwise the caller drops them (and the transfer).
        self.pack.ensure_unchanged()
    }
}
