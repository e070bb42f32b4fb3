//! The run directory: a lock file held with flock while the owner lives, and a ledger of every
//! SysV object the owner created, so that a later run can remove what a crashed one left.
//!
//! Files: `run_dir/lock` (the owner's pid, flock'ed) and `run_dir/ledger` (one JSON object per
//! line: kind, id, creator pid, creation time; appended and fsynced before the object is used).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{sys, Error, Result};

const LOCK_FILE: &str = "lock";
const LEDGER_FILE: &str = "ledger";

/// The kinds of SysV object a ledger records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpcKind {
    /// Shared memory.
    Shm,
    /// Message queue.
    MsgQueue,
    /// Semaphore set.
    SemSet,
}

impl IpcKind {
    fn name(self) -> &'static str {
        match self {
            IpcKind::Shm => "shm",
            IpcKind::MsgQueue => "msg",
            IpcKind::SemSet => "sem",
        }
    }
    fn from_name(name: &str) -> Option<IpcKind> {
        match name {
            "shm" => Some(IpcKind::Shm),
            "msg" => Some(IpcKind::MsgQueue),
            "sem" => Some(IpcKind::SemSet),
            _ => None,
        }
    }
}

/// One recorded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Its kind.
    pub kind: IpcKind,
    /// Its raw id.
    pub id: i32,
    /// The pid that created it (the kernel's cpid / sem creator check).
    pub creator_pid: i32,
    /// Its creation time as the kernel reports it (shm_ctime etc.), seconds since the epoch.
    pub created: i64,
}

/// One ledger line.
#[derive(Serialize, Deserialize)]
struct Line {
    kind: String,
    id: i32,
    creator_pid: i32,
    created: i64,
}

impl From<&LedgerEntry> for Line {
    fn from(entry: &LedgerEntry) -> Line {
        Line {
            kind: entry.kind.name().to_owned(),
            id: entry.id,
            creator_pid: entry.creator_pid,
            created: entry.created,
        }
    }
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects removed.
    pub removed: Vec<LedgerEntry>,
    /// Entries skipped because the id is gone or now names another object.
    pub skipped: Vec<LedgerEntry>,
}

/// The run directory's lock (flock on `run_dir/lock`, holding our pid) and ledger
/// (`run_dir/ledger`). Held for the life of the owner; `close` removes the ledger file.
///
/// Dropping it without `close` releases the lock and leaves the ledger for a later [`sweep`].
pub struct Ledger {
    dir: PathBuf,
    lock: File,
    file: File,
    entries: Vec<LedgerEntry>,
}

fn ledger_error(path: &Path, what: &str) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    let what = what.to_owned();
    move |err| Error::Ledger {
        path,
        reason: format!("{what}: {err}"),
    }
}

fn open_lock_file(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(ledger_error(&path, "open lock file"))
}

fn read_lock_pid(lock: &mut File) -> i32 {
    let mut text = String::new();
    if lock.rewind().is_err() || lock.read_to_string(&mut text).is_err() {
        return 0;
    }
    text.trim().parse().unwrap_or(0)
}

/// Takes the lock without blocking; `RunDirLocked` names the holder.
fn take_lock(dir: &Path) -> Result<File> {
    let mut lock = open_lock_file(dir)?;
    let path = dir.join(LOCK_FILE);
    if !sys::flock_try_exclusive(lock.as_fd()).map_err(ledger_error(&path, "flock"))? {
        return Err(Error::RunDirLocked {
            dir: dir.to_path_buf(),
            pid: read_lock_pid(&mut lock),
        });
    }
    Ok(lock)
}

fn read_entries(path: &Path) -> Result<Vec<LedgerEntry>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(ledger_error(path, "open")(err)),
    };
    let mut entries = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(ledger_error(path, "read"))?;
        if line.trim().is_empty() {
            continue;
        }
        // A torn last line (the owner died mid-append) names no object that was ever used.
        let parsed = serde_json::from_str::<Line>(&line)
            .ok()
            .and_then(|l| IpcKind::from_name(&l.kind).map(|kind| (kind, l)));
        match parsed {
            Some((kind, l)) => entries.push(LedgerEntry {
                kind,
                id: l.id,
                creator_pid: l.creator_pid,
                created: l.created,
            }),
            None => {
                tracing::warn!(path = %path.display(), line = number + 1, "skipping an unreadable ledger line")
            }
        }
    }
    Ok(entries)
}

fn stat(kind: IpcKind, id: i32) -> io::Result<sys::IpcStat> {
    match kind {
        IpcKind::Shm => sys::shm_stat(id),
        IpcKind::MsgQueue => sys::msg_stat(id),
        IpcKind::SemSet => sys::sem_stat(id),
    }
}

fn remove(kind: IpcKind, id: i32) -> io::Result<()> {
    match kind {
        IpcKind::Shm => sys::shm_remove(id),
        IpcKind::MsgQueue => sys::msg_remove(id),
        IpcKind::SemSet => sys::sem_remove(id),
    }
}

/// Whether the object `entry` names still exists and is the one recorded: same creation time,
/// created by our uid, and for shared memory the same creator pid.
fn still_the_recorded_object(entry: &LedgerEntry) -> bool {
    let Ok(stat) = stat(entry.kind, entry.id) else {
        return false;
    };
    let creator_matches = match entry.kind {
        IpcKind::Shm => stat.cpid == entry.creator_pid,
        IpcKind::MsgQueue | IpcKind::SemSet => true,
    };
    creator_matches && stat.ctime == entry.created && stat.cuid == sys::effective_uid()
}

fn remove_entries(entries: &[LedgerEntry]) -> SweepReport {
    let mut report = SweepReport::default();
    for entry in entries {
        if still_the_recorded_object(entry) {
            match remove(entry.kind, entry.id) {
                Ok(()) => {
                    tracing::info!(
                        kind = entry.kind.name(),
                        id = entry.id,
                        "removed a ledger object"
                    );
                    report.removed.push(entry.clone());
                }
                Err(err) => {
                    tracing::warn!(kind = entry.kind.name(), id = entry.id, %err, "could not remove a ledger object");
                    report.skipped.push(entry.clone());
                }
            }
        } else {
            report.skipped.push(entry.clone());
        }
    }
    report
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(ledger_error(path, "remove")(err)),
        _ => Ok(()),
    }
}

/// Terminates a torn last line (an owner that died mid-append), so that the next record starts
/// on a line of its own.
fn end_with_newline(file: &mut File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
}

impl Ledger {
    /// Creates `run_dir` if needed and takes its lock without blocking; `Error::RunDirLocked` if
    /// a live process holds it. Does not sweep: call [`sweep`] first. Entries of a ledger left
    /// by a dead owner are kept, and removed (if still theirs) by `close`.
    pub fn open(run_dir: &Path) -> Result<Ledger> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(ledger_error(run_dir, "create run directory"))?;
        let mut lock = take_lock(run_dir)?;
        let lock_path = run_dir.join(LOCK_FILE);
        lock.set_len(0)
            .map_err(ledger_error(&lock_path, "truncate"))?;
        lock.rewind().map_err(ledger_error(&lock_path, "seek"))?;
        writeln!(lock, "{}", std::process::id()).map_err(ledger_error(&lock_path, "write pid"))?;
        lock.sync_all().map_err(ledger_error(&lock_path, "fsync"))?;
        let path = run_dir.join(LEDGER_FILE);
        let entries = read_entries(&path)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(ledger_error(&path, "open"))?;
        end_with_newline(&mut file).map_err(ledger_error(&path, "repair a torn line"))?;
        Ok(Ledger {
            dir: run_dir.to_path_buf(),
            lock,
            file,
            entries,
        })
    }

    /// Records an object (appended and fsynced before returning).
    pub fn record(&mut self, kind: IpcKind, id: i32) -> Result<()> {
        let path = self.dir.join(LEDGER_FILE);
        let stat =
            stat(kind, id).map_err(ledger_error(&path, "IPC_STAT of the object to record"))?;
        let creator_pid = match kind {
            IpcKind::Shm => stat.cpid,
            IpcKind::MsgQueue | IpcKind::SemSet => i32::try_from(std::process::id()).unwrap_or(0),
        };
        let entry = LedgerEntry {
            kind,
            id,
            creator_pid,
            created: stat.ctime,
        };
        let mut line = serde_json::to_string(&Line::from(&entry)).map_err(|err| Error::Ledger {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(ledger_error(&path, "append"))?;
        self.file
            .sync_data()
            .map_err(ledger_error(&path, "fsync"))?;
        self.entries.push(entry);
        Ok(())
    }

    /// The entries recorded so far.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// Removes every recorded object that still exists and is ours, deletes the ledger file
    /// and releases the lock.
    pub fn close(self) -> Result<SweepReport> {
        let report = remove_entries(&self.entries);
        remove_file_if_present(&self.dir.join(LEDGER_FILE))?;
        if let Err(err) = sys::flock_unlock(self.lock.as_fd()) {
            tracing::warn!(%err, "unlocking the run directory");
        }
        Ok(report)
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.dir)
            .field("entries", &self.entries)
            .finish()
    }
}

/// If no live process holds `run_dir`'s lock, removes the objects its ledger lists (each only if
/// it is still the recorded one: same creator pid and creation time) and deletes the ledger.
/// `Error::RunDirLocked` while the owner lives.
pub fn sweep(run_dir: &Path) -> Result<SweepReport> {
    if !run_dir.exists() {
        return Ok(SweepReport::default());
    }
    let lock = take_lock(run_dir)?;
    let path = run_dir.join(LEDGER_FILE);
    let report = remove_entries(&read_entries(&path)?);
    remove_file_if_present(&path)?;
    drop(lock);
    Ok(report)
}

/// The pid holding `run_dir`'s lock, if any process holds it.
pub fn lock_holder(run_dir: &Path) -> Result<Option<i32>> {
    let path = run_dir.join(LOCK_FILE);
    let mut lock = match File::open(&path) {
        Ok(lock) => lock,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ledger_error(&path, "open lock file")(err)),
    };
    if sys::flock_try_exclusive(lock.as_fd()).map_err(ledger_error(&path, "flock"))? {
        // Nobody holds it; ours is released when `lock` closes.
        return Ok(None);
    }
    Ok(Some(read_lock_pid(&mut lock)))
}

// ---------------------------------------------------------------------------------------------
// Standalone objects

/// What the kernel reports about an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Permission bits (e.g. `0o600`).
    pub mode: u32,
    /// The creator pid (shared memory only; 0 otherwise).
    pub creator_pid: i32,
    /// Creation (or last `IPC_SET`) time, seconds since the epoch.
    pub created: i64,
    /// Processes attached (shared memory only).
    pub attached: u64,
}

/// The kernel's view of object `id` of `kind`, or `None` if no such object exists (or it is
/// not ours to inspect).
pub fn object_info(kind: IpcKind, id: i32) -> Option<ObjectInfo> {
    stat(kind, id).ok().map(|stat| ObjectInfo {
        mode: stat.mode & 0o777,
        creator_pid: stat.cpid,
        created: stat.ctime,
        attached: stat.attached,
    })
}

/// A SysV object created `IPC_PRIVATE` with mode 0600 and *not* marked for removal: it outlives
/// its process unless [`IpcObject::remove`]d or swept. For tools and for testing the ledger;
/// the region never needs one.
#[derive(Debug, PartialEq, Eq)]
pub struct IpcObject {
    kind: IpcKind,
    id: i32,
}

impl IpcObject {
    /// Creates one (a 4 KiB shm object, a message queue, or a set of 2 semaphores).
    pub fn create(kind: IpcKind) -> Result<IpcObject> {
        let id = match kind {
            IpcKind::Shm => sys::shm_create(4096).map_err(Error::os("shmget"))?,
            IpcKind::MsgQueue => sys::msg_create().map_err(Error::os("msgget"))?,
            IpcKind::SemSet => sys::sem_create(2).map_err(Error::os("semget"))?,
        };
        Ok(IpcObject { kind, id })
    }

    /// Names an existing object (no check).
    pub fn from_raw(kind: IpcKind, id: i32) -> IpcObject {
        IpcObject { kind, id }
    }

    /// Its kind.
    pub fn kind(&self) -> IpcKind {
        self.kind
    }

    /// Its raw id.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Removes it (`IPC_RMID`).
    pub fn remove(self) -> Result<()> {
        let op = match self.kind {
            IpcKind::Shm => "shmctl IPC_RMID",
            IpcKind::MsgQueue => "msgctl IPC_RMID",
            IpcKind::SemSet => "semctl IPC_RMID",
        };
        remove(self.kind, self.id).map_err(Error::os(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes test objects even when an assertion fails.
    struct Objects(Vec<(IpcKind, i32)>);
    impl Drop for Objects {
        fn drop(&mut self) {
            for &(kind, id) in &self.0 {
                let _ = remove(kind, id);
            }
        }
    }

    #[test]
    fn record_close_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut ledger = Ledger::open(&run).unwrap();
        let mut guard = Objects(Vec::new());
        for kind in [IpcKind::Shm, IpcKind::MsgQueue, IpcKind::SemSet] {
            let object = IpcObject::create(kind).unwrap();
            guard.0.push((kind, object.id()));
            assert_eq!(object_info(kind, object.id()).unwrap().mode, 0o600);
            ledger.record(kind, object.id()).unwrap();
        }
        assert_eq!(ledger.entries().len(), 3);
        assert_eq!(lock_holder(&run).unwrap(), Some(std::process::id() as i32));
        assert!(matches!(sweep(&run), Err(Error::RunDirLocked { .. })));
        assert!(matches!(
            Ledger::open(&run),
            Err(Error::RunDirLocked { .. })
        ));
        let report = ledger.close().unwrap();
        assert_eq!(report.removed.len(), 3);
        for &(kind, id) in &guard.0 {
            assert!(object_info(kind, id).is_none());
        }
        assert_eq!(lock_holder(&run).unwrap(), None);
        assert!(!run.join(LEDGER_FILE).exists());
    }

    #[test]
    fn sweep_skips_objects_that_are_not_the_recorded_ones() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let mut guard = Objects(Vec::new());
        let object = IpcObject::create(IpcKind::Shm).unwrap();
        guard.0.push((IpcKind::Shm, object.id()));
        {
            let mut ledger = Ledger::open(run).unwrap();
            ledger.record(IpcKind::Shm, object.id()).unwrap();
            // Dropped without close: the lock goes, the ledger stays.
        }
        // Forge the ledger: same id, another creator pid (as if the kernel reused the id).
        let forged = fs::read_to_string(run.join(LEDGER_FILE))
            .unwrap()
            .replace("\"creator_pid\":", "\"creator_pid\":1");
        fs::write(run.join(LEDGER_FILE), format!("{forged}{{\"torn\n")).unwrap();
        let report = sweep(run).unwrap();
        assert!(report.removed.is_empty());
        assert_eq!(report.skipped.len(), 1);
        assert!(object_info(IpcKind::Shm, object.id()).is_some());
        // An honest ledger removes it.
        {
            let mut ledger = Ledger::open(run).unwrap();
            ledger.record(IpcKind::Shm, object.id()).unwrap();
        }
        let report = sweep(run).unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(object_info(IpcKind::Shm, object.id()).is_none());
    }

    #[test]
    fn a_record_after_a_torn_line_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = Objects(Vec::new());
        fs::write(dir.path().join(LEDGER_FILE), "{\"kind\":\"shm\",\"id\":1").unwrap();
        let object = IpcObject::create(IpcKind::MsgQueue).unwrap();
        guard.0.push((IpcKind::MsgQueue, object.id()));
        let mut ledger = Ledger::open(dir.path()).unwrap();
        assert!(ledger.entries().is_empty());
        ledger.record(IpcKind::MsgQueue, object.id()).unwrap();
        drop(ledger);
        let report = sweep(dir.path()).unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(object_info(IpcKind::MsgQueue, object.id()).is_none());
    }

    #[test]
    fn sweep_of_a_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            sweep(&dir.path().join("nope")).unwrap(),
            SweepReport::default()
        );
        assert_eq!(lock_holder(&dir.path().join("nope")).unwrap(), None);
    }
}
