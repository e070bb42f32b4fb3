//! The directory backend: the regular files under a root, or a `<path> <file>` listing.
//!
//! Containment: every open under the root goes through `openat2(2)` with `RESOLVE_BENEATH`
//! relative to a descriptor of the root, after the path was checked canonical
//! ([`crate::paths::relative_object_path`]). `..`, absolute paths and symlinks that resolve
//! outside the root fail in the kernel and are reported as not found; only regular files are
//! objects.
//!
//! Writable roots store fills in a temporary file inside the root (same filesystem) and rename it
//! into place on commit, under one lock that also keeps the LRU index of the stored files.
//!
//! Metadata: a writable root keeps each fill's [`ObjectMeta`] in a sidecar file under
//! [`META_DIR`] at the top of the root (same relative path), which starts with the inode number
//! and size of the object file it belongs to. A sidecar that names another file (the object was
//! replaced, or the sidecar is missing or damaged) is not used: the object then gets the
//! metadata of content put in place, as in a read-only root: Last-Modified from the file's
//! mtime, an ETag from mtime and size, and the root's `ttl`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::paths::relative_object_path;
use crate::{
    BackendStats, CacheBackend, CachedObject, ChunkDest, Error, Fill, ObjectMeta, ObjectVersion,
};

/// Prefix of the temporary files of fills in progress, at the top of a writable root. Paths
/// whose first component starts with it are never served, and leftovers are removed at open.
pub const FILL_PREFIX: &str = ".gfcache-fill.";

/// The directory at the top of a writable root that holds the metadata sidecars. Never served.
pub const META_DIR: &str = ".gfcache-meta";

/// Bytes a sidecar starts with: the inode number and the size of its object file.
const SIDECAR_HEAD: usize = 16;

/// Options of a directory root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectoryOptions {
    /// Store fills under the root.
    pub writable: bool,
    /// Byte bound of the files under a writable root (LRU eviction of files).
    pub max_size: Option<u64>,
    /// How long content put in place stays fresh (`None`: it never goes stale).
    pub ttl: Option<std::time::Duration>,
}

/// The directory backend. See the module docs.
pub struct DirectoryBackend {
    inner: Arc<DirectoryInner>,
}

/// The state shared by the backend and its fills in progress.
struct DirectoryInner {
    source: Source,
    ttl: Option<std::time::Duration>,
    /// Metadata refreshed by the origin for files whose own cannot be rewritten (read-only).
    refreshed: crate::meta::Overlay,
    store: Option<Mutex<StoreIndex>>,
    /// Objects and bytes of a read-only source, counted at open.
    fixed_size: (u64, u64),
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

enum Source {
    Root { dir: OwnedFd, path: PathBuf },
    Listing { files: HashMap<String, PathBuf> },
}

impl DirectoryBackend {
    /// Opens the files under `root`. A writable root is scanned (files count toward `max_size`,
    /// the oldest are evicted if it is already over) and stale fill files are removed.
    pub fn open(root: &Path, options: DirectoryOptions) -> Result<DirectoryBackend, Error> {
        let io_error = |source| Error::Io {
            path: root.to_path_buf(),
            source,
        };
        let dir: OwnedFd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| io_error(errno.into()))?;
        // Probe openat2 once, so that a kernel without it fails here, not on every request.
        open_beneath(&dir, ".", OFlag::O_DIRECTORY).map_err(|errno| {
            Error::Config(format!(
                "{}: openat2(RESOLVE_BENEATH) is not usable here: {errno}",
                root.display()
            ))
        })?;
        if options.max_size.is_some() && !options.writable {
            return Err(Error::Config(
                "max_size applies to a writable directory only".into(),
            ));
        }
        let mut scanned = Vec::new();
        scan_tree(root, options.writable, &mut scanned).map_err(io_error)?;
        let fixed_size = (
            scanned.len() as u64,
            scanned.iter().map(|file| file.size).sum(),
        );
        let inner = DirectoryInner {
            source: Source::Root {
                dir,
                path: root.to_path_buf(),
            },
            ttl: options.ttl,
            refreshed: crate::meta::Overlay::default(),
            store: None,
            fixed_size,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        if !options.writable {
            return Ok(DirectoryBackend {
                inner: Arc::new(inner),
            });
        }
        // Oldest access first, so that eviction at open and later removes the coldest files.
        scanned.sort_by_key(|file| file.accessed);
        let mut index = StoreIndex::new(options.max_size);
        for file in scanned {
            index.insert(file.relative, file.size);
        }
        let inner = DirectoryInner {
            store: Some(Mutex::new(index)),
            ..inner
        };
        inner.evict_over_bound(&mut *inner.lock_store()?, None)?;
        Ok(DirectoryBackend {
            inner: Arc::new(inner),
        })
    }

    /// Opens a course-format listing: one `<path> <file>` per line (blank lines and lines
    /// starting with `#` are skipped); a relative `<file>` is relative to the listing's
    /// directory. Read-only.
    pub fn open_listing(
        listing: &Path,
        ttl: Option<std::time::Duration>,
    ) -> Result<DirectoryBackend, Error> {
        let text = std::fs::read_to_string(listing).map_err(|source| Error::Io {
            path: listing.to_path_buf(),
            source,
        })?;
        let base = listing.parent().unwrap_or(Path::new("."));
        let mut files = HashMap::new();
        let mut bytes = 0;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| {
                Error::Config(format!("{} line {}: {what}", listing.display(), number + 1))
            };
            let (path, file) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `<path> <file>`"))?;
            let file = file.trim();
            if !path.starts_with('/') || path.len() > crate::paths::MAX_PATH_LEN {
                return Err(bad("the path must start with '/' and fit 4096 bytes"));
            }
            let file = base.join(file);
            match std::fs::metadata(&file) {
                Ok(meta) if meta.is_file() => bytes += meta.len(),
                Ok(_) => {
                    tracing::warn!(path, file = %file.display(), "listed file is not a regular file")
                }
                Err(error) => {
                    tracing::warn!(path, file = %file.display(), %error, "listed file is missing")
                }
            }
            files.insert(path.to_string(), file);
        }
        let inner = DirectoryInner {
            fixed_size: (files.len() as u64, bytes),
            source: Source::Listing { files },
            ttl,
            refreshed: crate::meta::Overlay::default(),
            store: None,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        };
        Ok(DirectoryBackend {
            inner: Arc::new(inner),
        })
    }
}

impl DirectoryInner {
    fn lock_store(&self) -> Result<MutexGuard<'_, StoreIndex>, Error> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| Error::Config("the directory is not writable".into()))?;
        // A panic while holding the lock leaves the index consistent enough (every mutation
        // is a single map update), so a poisoned lock is recovered, not propagated.
        Ok(store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn root(&self) -> Option<(&OwnedFd, &Path)> {
        match &self.source {
            Source::Root { dir, path } => Some((dir, path)),
            Source::Listing { .. } => None,
        }
    }

    /// Opens the object file, `None` when there is no regular file at `path`.
    fn open_object(&self, path: &str) -> Result<Option<(File, PathBuf)>, Error> {
        match &self.source {
            Source::Listing { files } => {
                let Some(file_path) = files.get(path) else {
                    return Ok(None);
                };
                let opened = nix::fcntl::open(
                    file_path.as_path(),
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
                    Mode::empty(),
                );
                open_result(opened, file_path.clone())
            }
            Source::Root { dir, path: root } => {
                let Some(relative) = relative_object_path(path) else {
                    return Ok(None);
                };
                if is_private(relative) {
                    return Ok(None);
                }
                let file_path = root.join(relative);
                match gfprotocol::paths::open_beneath(dir, relative) {
                    Ok(file) => Ok(file.map(|file| (file, file_path))),
                    Err(source) => Err(Error::Io {
                        path: file_path,
                        source,
                    }),
                }
            }
        }
    }

    /// Evicts least recently used files until the bound holds, never `keep`.
    fn evict_over_bound(&self, index: &mut StoreIndex, keep: Option<&str>) -> Result<(), Error> {
        let Some((dir, root)) = self.root() else {
            return Ok(());
        };
        while index.over_bound() {
            let Some(victim) = index.oldest_except(keep) else {
                break;
            };
            match remove_beneath(dir, &victim) {
                Ok(()) => {}
                Err(Errno::ENOENT) => {}
                Err(errno) => {
                    return Err(Error::Io {
                        path: root.join(&victim),
                        source: errno.into(),
                    })
                }
            }
            remove_sidecar(dir, &victim);
            index.remove(&victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %victim, "evicted");
        }
        Ok(())
    }

    fn commit_fill(&self, fill: DirectoryFill) -> Result<(), Error> {
        let Some((dir, root)) = self.root() else {
            return Err(Error::Config("the directory is not writable".into()));
        };
        let io_error = |errno: Errno| Error::Io {
            path: root.join(&fill.relative),
            source: errno.into(),
        };
        let mut index = self.lock_store()?;
        // The sidecar goes first, naming the new file's inode: whoever opens the old file meanwhile
        // sees a sidecar of another file and does not take its metadata for the old one.
        match &fill.meta {
            Some(meta) => self.write_sidecar(&fill.relative, fill.inode, fill.written, meta)?,
            None => remove_sidecar(dir, &fill.relative),
        }
        let (parent, leaf) = make_parents_beneath(dir, &fill.relative).map_err(io_error)?;
        let temp_name = fill
            .temp
            .file_name()
            .map(|name| name.to_os_string())
            .ok_or_else(|| Error::Config("fill temp file has no name".into()))?;
        nix::fcntl::renameat(dir, temp_name.as_os_str(), &parent, leaf).map_err(io_error)?;
        // The file is in place: keep the temp path from deleting the (renamed) name on drop.
        let _ = fill.temp.keep();
        index.insert(fill.relative.clone(), fill.written);
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.evict_over_bound(&mut index, Some(&fill.relative))
    }
}

impl DirectoryInner {
    /// Writes the sidecar of the object file at `relative` (inode `inode`, `len` bytes): a temp
    /// file renamed into place, so that a reader sees the old sidecar or the new one.
    fn write_sidecar(
        &self,
        relative: &str,
        inode: u64,
        len: u64,
        meta: &ObjectMeta,
    ) -> Result<(), Error> {
        let Some((dir, root)) = self.root() else {
            return Err(Error::Config("the directory is not writable".into()));
        };
        let io_error = |source: std::io::Error| Error::Io {
            path: root.join(META_DIR).join(relative),
            source,
        };
        let mut temp = tempfile::Builder::new()
            .prefix(FILL_PREFIX)
            .tempfile_in(root)
            .map_err(io_error)?;
        let mut bytes = Vec::with_capacity(SIDECAR_HEAD + 128);
        bytes.extend_from_slice(&inode.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&meta.encode());
        temp.write_all(&bytes).map_err(io_error)?;
        temp.as_file().sync_data().map_err(io_error)?;
        let sidecar = format!("{META_DIR}/{relative}");
        let (parent, leaf) =
            make_parents_beneath(dir, &sidecar).map_err(|errno| io_error(errno.into()))?;
        let temp_name = temp
            .path()
            .file_name()
            .map(|name| name.to_os_string())
            .ok_or_else(|| Error::Config("sidecar temp file has no name".into()))?;
        nix::fcntl::renameat(dir, temp_name.as_os_str(), &parent, leaf)
            .map_err(|errno| io_error(errno.into()))?;
        let _ = temp.into_temp_path().keep();
        Ok(())
    }

    /// The metadata of the object file at `path`: its sidecar's when the sidecar names this
    /// very file (writable root), what the origin last refreshed (read-only), else made up from
    /// the file's facts, fresh for `ttl` from its modification.
    fn meta_of(&self, path: &str, metadata: &std::fs::Metadata) -> Vec<u8> {
        let relative = relative_object_path(path);
        let stored = match (self.store.is_some(), self.root(), relative) {
            (true, Some((dir, _)), Some(relative)) => read_sidecar(dir, relative, metadata),
            (false, _, _) => self.refreshed.get(path, file_version(metadata).as_raw()),
            _ => None,
        };
        stored.unwrap_or_else(|| {
            let modified = metadata.modified().ok();
            let placed = modified.unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            ObjectMeta::for_content(modified, metadata.len(), self.ttl, placed).encode()
        })
    }
}

/// Whether a top-level name is the backend's own (a fill in progress, the sidecars).
fn is_private(relative: &str) -> bool {
    relative.starts_with(FILL_PREFIX)
        || relative == META_DIR
        || relative.starts_with(&format!("{META_DIR}/"))
}

/// The encoded metadata in the sidecar of `relative`, if the sidecar names the file `metadata`
/// describes and decodes.
fn read_sidecar(dir: &OwnedFd, relative: &str, metadata: &std::fs::Metadata) -> Option<Vec<u8>> {
    use std::io::Read;
    let sidecar = format!("{META_DIR}/{relative}");
    let file = gfprotocol::paths::open_beneath(dir, &sidecar).ok()??;
    let mut bytes = Vec::new();
    let limit = (SIDECAR_HEAD + ipc::MAX_META_LEN) as u64;
    file.take(limit + 1).read_to_end(&mut bytes).ok()?;
    let (head, meta) = bytes.split_at_checked(SIDECAR_HEAD)?;
    let inode = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
    let len = u64::from_le_bytes(head.get(8..)?.try_into().ok()?);
    if inode != metadata.ino() || len != metadata.len() || bytes.len() as u64 > limit {
        return None;
    }
    ObjectMeta::decode(meta).ok()?;
    Some(meta.to_vec())
}

/// Removes the sidecar of `relative`, if any (a missing one is fine).
fn remove_sidecar(dir: &OwnedFd, relative: &str) {
    let _ = remove_beneath(dir, &format!("{META_DIR}/{relative}"));
}

/// Opens `relative` beneath `dir` read-only with extra flags (`O_DIRECTORY` for the parents of
/// a fill): `RESOLVE_BENEATH` keeps every step inside. Objects are opened with
/// `gfprotocol::paths::open_beneath`, which adds the regular-file check.
fn open_beneath(dir: &OwnedFd, relative: &str, extra: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | extra)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(dir, relative, how)
}

/// Maps the outcome of opening a listed file: missing or non-regular files are not found.
fn open_result(
    opened: nix::Result<OwnedFd>,
    path: PathBuf,
) -> Result<Option<(File, PathBuf)>, Error> {
    match opened {
        Ok(fd) => {
            let file = File::from(fd);
            let meta = file.metadata().map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            Ok(meta.is_file().then_some((file, path)))
        }
        // ENOENT/ENOTDIR: absent; ELOOP: symlink loop; ENXIO: a socket.
        Err(
            Errno::ENOENT
            | Errno::ENOTDIR
            | Errno::ELOOP
            | Errno::EISDIR
            | Errno::ENXIO
            | Errno::ENAMETOOLONG,
        ) => Ok(None),
        Err(errno) => Err(Error::Io {
            path,
            source: errno.into(),
        }),
    }
}

/// Creates the parent directories of `relative` beneath `dir` (each step resolved beneath the
/// previous one) and returns the parent's descriptor and the leaf name.
fn make_parents_beneath<'p>(dir: &OwnedFd, relative: &'p str) -> nix::Result<(OwnedFd, &'p str)> {
    let (parents, leaf) = match relative.rsplit_once('/') {
        Some((parents, leaf)) => (Some(parents), leaf),
        None => (None, relative),
    };
    let mut current = open_beneath(dir, ".", OFlag::O_DIRECTORY)?;
    for component in parents.into_iter().flat_map(|parents| parents.split('/')) {
        match nix::sys::stat::mkdirat(&current, component, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno),
        }
        current = open_beneath(&current, component, OFlag::O_DIRECTORY)?;
    }
    Ok((current, leaf))
}

/// Unlinks the file at `relative` beneath `dir`.
fn remove_beneath(dir: &OwnedFd, relative: &str) -> nix::Result<()> {
    let (parent, leaf) = match relative.rsplit_once('/') {
        Some((parents, leaf)) => (open_beneath(dir, parents, OFlag::O_DIRECTORY)?, leaf),
        None => (open_beneath(dir, ".", OFlag::O_DIRECTORY)?, relative),
    };
    nix::unistd::unlinkat(parent.as_fd(), leaf, UnlinkatFlags::NoRemoveDir)
}

struct ScannedFile {
    relative: String,
    size: u64,
    /// Last access (or modification, if later): seconds and nanoseconds.
    accessed: (i64, i64),
}

/// Lists the regular files under `root` with canonical names (symlinks are not followed).
/// With `remove_stale_fills`, leftover fill files at the top are deleted.
fn scan_tree(
    root: &Path,
    remove_stale_fills: bool,
    out: &mut Vec<ScannedFile>,
) -> std::io::Result<()> {
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The root itself must be readable; a subdirectory that is not is left out (its
            // files could not be served either).
            Err(error) if !prefix.is_empty() => {
                tracing::warn!(dir = %dir.display(), %error, "not scanned");
                continue;
            }
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let file_type = entry.file_type()?;
            if prefix.is_empty() && name == META_DIR {
                continue;
            }
            if prefix.is_empty() && name.starts_with(FILL_PREFIX) {
                if remove_stale_fills && file_type.is_file() {
                    tracing::info!(file = %entry.path().display(), "removing a stale fill");
                    std::fs::remove_file(entry.path())?;
                }
                continue;
            }
            if relative_object_path(&format!("/{relative}")).is_none() {
                continue;
            }
            if file_type.is_dir() {
                pending.push((entry.path(), relative));
            } else if file_type.is_file() {
                let meta = entry.metadata()?;
                out.push(ScannedFile {
                    relative,
                    size: meta.len(),
                    accessed: (meta.atime(), meta.atime_nsec())
                        .max((meta.mtime(), meta.mtime_nsec())),
                });
            }
        }
    }
    Ok(())
}

/// The LRU index of a writable root: size and last access per stored file.
struct StoreIndex {
    files: HashMap<String, StoredFile>,
    by_age: BTreeMap<u64, String>,
    next_tick: u64,
    bytes: u64,
    max_size: Option<u64>,
}

struct StoredFile {
    size: u64,
    tick: u64,
}

impl StoreIndex {
    fn new(max_size: Option<u64>) -> StoreIndex {
        StoreIndex {
            files: HashMap::new(),
            by_age: BTreeMap::new(),
            next_tick: 0,
            bytes: 0,
            max_size,
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn insert(&mut self, relative: String, size: u64) {
        self.remove(&relative);
        let tick = self.tick();
        self.by_age.insert(tick, relative.clone());
        self.files.insert(relative, StoredFile { size, tick });
        self.bytes += size;
    }

    fn remove(&mut self, relative: &str) {
        if let Some(old) = self.files.remove(relative) {
            self.by_age.remove(&old.tick);
            self.bytes -= old.size;
        }
    }

    /// Marks a file used; a file that appeared under the root since the scan is adopted.
    fn touch(&mut self, relative: &str, size: u64) {
        let tick = self.tick();
        match self.files.get_mut(relative) {
            Some(file) => {
                self.by_age.remove(&file.tick);
                file.tick = tick;
                self.by_age.insert(tick, relative.to_string());
            }
            None => self.insert(relative.to_string(), size),
        }
    }

    fn over_bound(&self) -> bool {
        self.max_size.is_some_and(|max| self.bytes > max)
    }

    fn oldest_except(&self, keep: Option<&str>) -> Option<String> {
        self.by_age
            .values()
            .find(|relative| Some(relative.as_str()) != keep)
            .cloned()
    }
}

impl CacheBackend for DirectoryBackend {
    fn kind(&self) -> &'static str {
        "directory"
    }

    fn get(&self, path: &str) -> Result<Option<Box<dyn CachedObject>>, Error> {
        self.inner.get(path)
    }

    fn put_with_meta(
        &self,
        path: &str,
        len: u64,
        meta: Option<&ObjectMeta>,
    ) -> Result<Option<Box<dyn Fill>>, Error> {
        DirectoryInner::put(&self.inner, path, len, meta)
    }

    fn update_meta(
        &self,
        path: &str,
        version: ObjectVersion,
        meta: &ObjectMeta,
    ) -> Result<bool, Error> {
        self.inner.update_meta(path, version, meta)
    }

    fn purge(&self, path: &str, prefix: bool) -> Result<u64, Error> {
        self.inner.purge(path, prefix)
    }

    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}

impl DirectoryInner {
    fn get(&self, path: &str) -> Result<Option<Box<dyn CachedObject>>, Error> {
        let Some((file, file_path)) = self.open_object(path)? else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let metadata = file.metadata().map_err(|source| Error::Io {
            path: file_path.clone(),
            source,
        })?;
        let len = metadata.len();
        let version = file_version(&metadata);
        let relative = relative_object_path(path);
        if self.store.is_some() {
            if let Some(relative) = relative {
                self.lock_store()?.touch(relative, len);
            }
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Box::new(FileObject {
            meta: self.meta_of(path, &metadata),
            file,
            len,
            version,
            stamp: ContentStamp::of(&metadata),
            modified: metadata.modified().ok(),
            path: file_path,
        })))
    }

    /// Replaces the sidecar of the object at `path` if the file there is version `version`.
    fn update_meta(
        &self,
        path: &str,
        version: ObjectVersion,
        meta: &ObjectMeta,
    ) -> Result<bool, Error> {
        if self.store.is_none() {
            return Ok(self.refresh_read_only(path, version, meta));
        }
        let Some(relative) = relative_object_path(path) else {
            return Ok(false);
        };
        // Under the store lock: no fill can replace the file between the check and the write.
        let _index = self.lock_store()?;
        let Some((file, file_path)) = self.open_object(path)? else {
            return Ok(false);
        };
        let metadata = file.metadata().map_err(|source| Error::Io {
            path: file_path,
            source,
        })?;
        if file_version(&metadata) != version {
            return Ok(false);
        }
        self.write_sidecar(relative, metadata.ino(), metadata.len(), meta)?;
        Ok(true)
    }

    /// Records refreshed metadata of a read-only file in this process's overlay, if the file
    /// at `path` is version `version`.
    fn refresh_read_only(&self, path: &str, version: ObjectVersion, meta: &ObjectMeta) -> bool {
        let current = match self.open_object(path) {
            Ok(Some((file, _))) => file.metadata().ok().map(|m| file_version(&m)),
            _ => None,
        };
        if current != Some(version) {
            return false;
        }
        self.refreshed.insert(path, version.as_raw(), meta.encode());
        true
    }

    /// Removes stored files (and their sidecars): the one at `path`, or with `prefix` every
    /// one whose path starts with `path`.
    fn purge(&self, path: &str, prefix: bool) -> Result<u64, Error> {
        let (Some(_), Some((dir, root))) = (&self.store, self.root()) else {
            return Ok(0);
        };
        let wanted = path.trim_start_matches('/');
        let mut index = self.lock_store()?;
        let victims: Vec<String> = match prefix {
            true => index
                .files
                .keys()
                .filter(|relative| relative.starts_with(wanted))
                .cloned()
                .collect(),
            false => index
                .files
                .get_key_value(wanted)
                .map(|(k, _)| k.clone())
                .into_iter()
                .collect(),
        };
        for victim in &victims {
            match remove_beneath(dir, victim) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(errno) => {
                    return Err(Error::Io {
                        path: root.join(victim),
                        source: errno.into(),
                    })
                }
            }
            remove_sidecar(dir, victim);
            index.remove(victim);
        }
        Ok(victims.len() as u64)
    }

    fn put(
        this: &Arc<Self>,
        path: &str,
        len: u64,
        meta: Option<&ObjectMeta>,
    ) -> Result<Option<Box<dyn Fill>>, Error> {
        let (Some(_), Some((_, root))) = (&this.store, this.root()) else {
            return Ok(None);
        };
        let Some(relative) = relative_object_path(path) else {
            return Ok(None);
        };
        let too_large = this.lock_store()?.max_size.is_some_and(|max| len > max);
        if is_private(relative) || too_large {
            return Ok(None);
        }
        let temp = tempfile::Builder::new()
            .prefix(FILL_PREFIX)
            .tempfile_in(root)
            .map_err(|source| Error::Io {
                path: root.to_path_buf(),
                source,
            })?;
        let (file, temp) = temp.into_parts();
        let inode = file
            .metadata()
            .map_err(|source| Error::Io {
                path: temp.to_path_buf(),
                source,
            })?
            .ino();
        Ok(Some(Box::new(DirectoryFillWriter {
            backend: Arc::clone(this),
            file,
            fill: DirectoryFill {
                relative: relative.to_string(),
                temp,
                inode,
                meta: meta.cloned(),
                written: 0,
            },
            announced: len,
        })))
    }

    fn stats(&self) -> BackendStats {
        let (objects, bytes, capacity) = match &self.store {
            Some(_) => match self.lock_store() {
                Ok(index) => (index.files.len() as u64, index.bytes, index.max_size),
                Err(_) => (0, 0, None),
            },
            None => (self.fixed_size.0, self.fixed_size.1, None),
        };
        BackendStats {
            objects,
            bytes,
            capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// The version of a file's bytes. The change time moves on every write and cannot be set back;
/// device and inode tell a file renamed over the path.
fn file_version(metadata: &std::fs::Metadata) -> ObjectVersion {
    crate::object_version(&[
        metadata.dev(),
        metadata.ino(),
        metadata.len(),
        metadata.ctime() as u64,
        metadata.ctime_nsec() as u64,
    ])
}

/// What moves when a file's bytes are written: its size and modification time. Unlike the
/// version's change time it stays when the file is only unlinked or renamed (a fill or an
/// operator's `mv` replacing it), which leaves the open file's bytes as they were.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ContentStamp {
    len: u64,
    modified: (i64, i64),
}

impl ContentStamp {
    fn of(metadata: &std::fs::Metadata) -> ContentStamp {
        ContentStamp {
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
        }
    }
}

/// An open object file. The descriptor keeps the bytes even if the file is evicted meanwhile.
struct FileObject {
    meta: Vec<u8>,
    file: File,
    len: u64,
    version: ObjectVersion,
    /// The file's stamp when it was opened: a copy that ends with another was mixed.
    stamp: ContentStamp,
    modified: Option<std::time::SystemTime>,
    path: PathBuf,
}

impl CachedObject for FileObject {
    fn len(&self) -> u64 {
        self.len
    }

    fn version(&self) -> ObjectVersion {
        self.version
    }

    fn modified(&self) -> Option<std::time::SystemTime> {
        self.modified
    }

    fn encoded_meta(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.meta)
    }

    fn cheap_to_hold(&self) -> bool {
        true // a descriptor: the file's bytes stay on disk, not in this process
    }

    fn copy_to(&self, offset: u64, len: usize, dest: &mut dyn ChunkDest) -> Result<(), Error> {
        check_range(offset, len, self.len)?;
        if len > dest.remaining() {
            return Err(Error::Dest(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{len} bytes do not fit in {} bytes", dest.remaining()),
            )));
        }
        let io_error = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        dest.put_file_range(&self.file, offset, len)
            .map_err(io_error)?;
        // A file edited in place while the range was read may have given some new bytes: a
        // write moves the modification time before it changes a byte (and the stat at open
        // makes the kernel give the next change a fine-grained time), so an unchanged stamp
        // after the copy means the range is all of the bytes the transfer started with.
        let now = self.file.metadata().map_err(io_error)?;
        if ContentStamp::of(&now) != self.stamp {
            return Err(Error::ChangedMidTransfer {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// Checks that `offset .. offset + len` lies within an object of `object_len` bytes.
pub(crate) fn check_range(offset: u64, len: usize, object_len: u64) -> Result<(), Error> {
    let end = u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len));
    match end {
        Some(end) if end <= object_len => Ok(()),
        _ => Err(Error::OutOfRange {
            offset,
            len,
            object_len,
        }),
    }
}

struct DirectoryFill {
    relative: String,
    temp: tempfile::TempPath,
    /// The temp file's inode: the object file's once renamed, named by its sidecar.
    inode: u64,
    meta: Option<ObjectMeta>,
    written: u64,
}

struct DirectoryFillWriter {
    backend: Arc<DirectoryInner>,
    file: File,
    fill: DirectoryFill,
    announced: u64,
}

impl DirectoryFillWriter {
    fn length_error(&self, written: u64) -> Error {
        Error::FillLength {
            path: format!("/{}", self.fill.relative),
            announced: self.announced,
            written,
        }
    }
}

impl Fill for DirectoryFillWriter {
    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let written = self.fill.written.saturating_add(data.len() as u64);
        if written > self.announced {
            return Err(self.length_error(written));
        }
        self.file.write_all(data).map_err(|source| Error::Io {
            path: self.fill.temp.to_path_buf(),
            source,
        })?;
        self.fill.written = written;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), Error> {
        if self.fill.written != self.announced {
            return Err(self.length_error(self.fill.written));
        }
        // The data reaches the disk before the rename makes it visible, so a power loss can lose
        // a fill but never leave a short file under its real name (docs/backends.md).
        self.file.sync_data().map_err(|source| Error::Io {
            path: self.fill.temp.to_path_buf(),
            source,
        })?;
        drop(self.file);
        self.backend.commit_fill(self.fill)
    }
}
