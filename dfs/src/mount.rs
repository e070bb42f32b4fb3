//! `gfdfs mount`: keeps a local directory and the server in sync, both ways.
//!
//! Two sources feed one engine task: inotify (through the notify crate) tells which local
//! paths changed, and the server's Watch stream tells the server's version of every path
//! (first a full listing, then each change). Each changed path is marked dirty, and the engine
//! reconciles dirty paths one at a time, only while connected and after the listing is
//! complete, by comparing three versions: the local file, the server's, and the last version
//! both sides agreed on (`synced`):
//!
//! - same content on both sides: nothing to do;
//! - both exist and differ: the later (mtime, checksum) wins, uploaded or downloaded;
//! - the server has a tombstone: a local file older than it is removed, a newer one uploaded;
//! - only the local file exists: uploaded;
//! - only the server's exists: downloaded, unless the local file was deleted since the last
//!   agreement (the server still has that version), which is a local delete: sent.
//!
//! A download goes to a temporary file in the same directory (named `.gfdfs-tmp-…`, which the
//! engine ignores), checked, given the server's mtime and renamed into place, so the inotify
//! event it causes reconciles to "in sync". A refused write lock is logged and retried; when
//! the server goes away the engine waits, reconnects with backoff, takes the new listing and
//! reconciles everything, which is how it converges after a restart on either side.
//!
//! The agreements outlive the mount: they are saved (at most once a second while they change,
//! and at shutdown) in `DIR/.gfdfs/mount-state.json`, a name no file of the DFS can have, so a
//! file deleted here while the mount was down is deleted on the server when it starts again
//! rather than fetched back. A state file of another server, or one that cannot be read, is
//! ignored (named in a warning): that costs only the old behaviour, the file comes back.
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Client, Durability, TEMP_PREFIX};
use crate::error::{Error, Result};
use crate::path::{DfsPath, STATE_DIR};
use crate::progress::TerminalProgress;
use crate::proto::{self, EventKind, StoreOutcome};
use crate::version::{file_meta, nanos_of, now_nanos, FileMeta};
use crate::volume::scan_files;

/// How a mount is set up.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The local directory kept in sync (created when missing).
    pub dir: PathBuf,
    /// The server, `host:port`.
    pub server: String,
    /// How long a path must be quiet after a write (other than a close) before it is
    /// uploaded, so a file being written is not sent half done.
    pub debounce: Duration,
}

impl MountConfig {
    /// The default debounce.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);
}

/// The server's version of a path, as the Watch stream told it.
#[derive(Clone, Copy, Debug)]
enum Remote {
    File(FileMeta),
    Tombstone(i64),
}

enum ServerMessage {
    Connected(Client),
    Event(proto::WatchEvent),
    Disconnected,
}

/// How recent an mtime must be for the checksum to be read again although size and mtime
/// match the last agreement (see `local_meta`).
const RACY_WINDOW_NS: i64 = 100_000_000;
const RETRY: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The file, under `DIR/.gfdfs/`, that keeps the agreements between runs.
const STATE_FILE: &str = "mount-state.json";
/// How often, at most, the state file is rewritten while agreements change.
const STATE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// The saved agreements: which server they are with, and each path's size, mtime and
/// checksum.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedState {
    server: String,
    synced: BTreeMap<String, (u64, i64, u32)>,
}

/// Runs the mount until `shutdown` completes.
pub async fn run(
    config: MountConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(&config.dir, e))?;
    let dir = config
        .dir
        .canonicalize()
        .map_err(|e| Error::io(&config.dir, e))?;
    remove_leftover_downloads(&dir);
    let (local_tx, mut local_rx) = mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let _ = local_tx.send(event);
            }
            Err(error) => tracing::warn!(%error, "inotify"),
        })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    let (server_tx, mut server_rx) = mpsc::channel(4096);
    let follower = tokio::spawn(follow_server(config.server.clone(), server_tx));
    let mut engine = Engine::new(dir, config.server.clone(), config.debounce);
    tokio::pin!(shutdown);
    loop {
        let due = engine.next_due();
        let save_due = engine.save_due();
        tokio::select! {
            () = &mut shutdown => break,
            Some(event) = local_rx.recv() => engine.on_local(&event),
            Some(message) = server_rx.recv() => engine.on_server(message),
            () = sleep_until(due), if due.is_some() => engine.process_due().await,
            () = sleep_until(save_due), if save_due.is_some() => engine.save_state(),
        }
    }
    follower.abort();
    if engine.save_due().is_some() {
        engine.save_state();
    }
    Ok(())
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Connects, follows the Watch stream and reconnects with backoff, forever.
async fn follow_server(addr: String, tx: mpsc::Sender<ServerMessage>) {
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = false;
    loop {
        match Client::connect(&addr, Duration::from_secs(2)).await {
            Ok(mut client) => match client.watch().await {
                Ok(mut stream) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(server = addr, "connected");
                    was_connected = true;
                    if tx.send(ServerMessage::Connected(client)).await.is_err() {
                        return;
                    }
                    while let Ok(Some(event)) = stream.message().await {
                        if tx.send(ServerMessage::Event(event)).await.is_err() {
                            return;
                        }
                    }
                    tracing::warn!(server = addr, "lost the server; reconnecting");
                    if tx.send(ServerMessage::Disconnected).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::debug!(%error, "watch"),
            },
            Err(error) if !was_connected => tracing::debug!(%error, "connect"),
            Err(error) => tracing::debug!(%error, "reconnect"),
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Engine {
    dir: PathBuf,
    debounce: Duration,
    client: Option<Client>,
    listing_complete: bool,
    remote: HashMap<DfsPath, Remote>,
    synced: HashMap<DfsPath, FileMeta>,
    dirty: BTreeMap<DfsPath, Instant>,
    /// The server, as the saved state names it.
    server: String,
    /// `synced` changed since it was last saved.
    unsaved: bool,
    saved_at: Instant,
}

impl Engine {
    fn new(dir: PathBuf, server: String, debounce: Duration) -> Self {
        let synced = load_state(&dir, &server);
        Engine {
            dir,
            debounce,
            client: None,
            listing_complete: false,
            remote: HashMap::new(),
            synced,
            dirty: BTreeMap::new(),
            server,
            unsaved: false,
            saved_at: Instant::now(),
        }
    }

    /// Records that both sides hold `meta` at `path`.
    fn agree(&mut self, path: &DfsPath, meta: FileMeta) {
        if self.synced.insert(path.clone(), meta) != Some(meta) {
            self.unsaved = true;
        }
    }

    /// Forgets the agreement on `path` (it is gone on both sides, or a new one is due).
    fn forget(&mut self, path: &DfsPath) {
        if self.synced.remove(path).is_some() {
            self.unsaved = true;
        }
    }

    /// When the agreements should be saved next, if they changed.
    fn save_due(&self) -> Option<Instant> {
        self.unsaved.then(|| self.saved_at + STATE_SAVE_EVERY)
    }

    /// Saves the agreements (temporary file, then rename); a failure is logged, and costs
    /// only the protection against fetching back what was deleted here while down.
    fn save_state(&mut self) {
        self.unsaved = false;
        self.saved_at = Instant::now();
        let state = SavedState {
            server: self.server.clone(),
            synced: self
                .synced
                .iter()
                .map(|(path, m)| (path.to_string(), (m.size, m.mtime, m.checksum)))
                .collect(),
        };
        if let Err(error) = write_state(&self.dir, &state) {
            tracing::warn!(%error, "saving the mount state");
        }
    }

    fn online(&self) -> bool {
        self.client.is_some() && self.listing_complete
    }

    fn next_due(&self) -> Option<Instant> {
        if !self.online() {
            return None;
        }
        self.dirty.values().min().copied()
    }

    /// Marks `path` dirty at `due`, keeping an earlier mark.
    fn mark(&mut self, path: DfsPath, due: Instant) {
        let slot = self.dirty.entry(path).or_insert(due);
        *slot = (*slot).min(due);
    }

    fn mark_everything(&mut self) {
        let now = Instant::now();
        let mut paths: Vec<DfsPath> = self
            .remote
            .keys()
            .chain(self.synced.keys())
            .cloned()
            .collect();
        match scan_files(&self.dir) {
            Ok(local) => paths.extend(local),
            Err(error) => tracing::warn!(%error, "scanning the mount"),
        }
        for path in paths {
            self.mark(path, now);
        }
    }

    fn on_local(&mut self, event: &notify::Event) {
        if event.need_rescan() {
            self.mark_everything();
            return;
        }
        if is_read_only(&event.kind) {
            return; // reading a file (ours for a checksum, or anyone's) changes nothing
        }
        let settled = matches!(
            event.kind,
            notify::EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            )) | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                | notify::EventKind::Remove(_)
        );
        let due = if settled {
            Instant::now()
        } else {
            Instant::now() + self.debounce
        };
        for local in &event.paths {
            let Ok(path) = DfsPath::from_local(&self.dir, local) else {
                continue; // the mount's own temporary files, or outside
            };
            self.mark_local(path, local, due);
        }
    }

    /// Marks `path` and, when it is (or was) a directory, everything beneath it: a renamed or
    /// removed directory tells inotify nothing about its files.
    fn mark_local(&mut self, path: DfsPath, local: &Path, due: Instant) {
        if local.is_dir() {
            if let Ok(files) = scan_files(local) {
                for file in files {
                    if let Ok(inner) = DfsPath::parse(&format!("{path}/{file}")) {
                        self.mark(inner, due);
                    }
                }
            }
        }
        let beneath: Vec<DfsPath> = self
            .synced
            .keys()
            .chain(self.remote.keys())
            .filter(|known| known.is_under(&path))
            .cloned()
            .collect();
        for known in beneath {
            self.mark(known, due);
        }
        self.mark(path, due);
    }

    fn on_server(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Connected(client) => {
                self.client = Some(client);
                self.listing_complete = false;
                self.remote.clear();
            }
            ServerMessage::Disconnected => {
                self.client = None;
                self.listing_complete = false;
                self.remote.clear();
            }
            ServerMessage::Event(event) => self.on_server_event(event),
        }
    }

    fn on_server_event(&mut self, event: proto::WatchEvent) {
        let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
        if kind == EventKind::Synced {
            self.listing_complete = true;
            tracing::info!(files = self.remote.len(), "server listing received");
            self.mark_everything();
            return;
        }
        let Ok(path) = DfsPath::parse(&event.path) else {
            tracing::warn!(path = event.path, "the server sent an invalid path");
            return;
        };
        let remote = match kind {
            EventKind::Create | EventKind::Modify => Remote::File(FileMeta {
                size: event.size,
                mtime: event.mtime,
                checksum: event.checksum,
            }),
            EventKind::Delete => Remote::Tombstone(event.mtime),
            _ => return,
        };
        self.remote.insert(path.clone(), remote);
        self.mark(path, Instant::now());
    }

    async fn process_due(&mut self) {
        let now = Instant::now();
        let due: Vec<DfsPath> = self
            .dirty
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        for path in due {
            if !self.online() {
                return; // the rest stays dirty until the next listing
            }
            self.dirty.remove(&path);
            if let Err(error) = self.reconcile(&path).await {
                self.on_failure(path, error);
            }
        }
    }

    fn on_failure(&mut self, path: DfsPath, error: Error) {
        match &error {
            Error::LockHeld(_) => tracing::warn!(
                path = %path,
                "write lock refused: another client is writing this file; retrying"
            ),
            Error::Unavailable(_) | Error::Cancelled(_) => {
                tracing::debug!(path = %path, %error, "server unavailable")
            }
            _ => tracing::warn!(path = %path, %error, "sync failed; retrying"),
        }
        self.mark(path, Instant::now() + RETRY);
    }

    async fn reconcile(&mut self, path: &DfsPath) -> Result<()> {
        let local = self.local_meta(path).await?;
        let remote = self.remote.get(path).copied();
        match (local, remote) {
            (Some(mine), Some(Remote::File(theirs))) if mine.same_content(&theirs) => {
                self.agree(path, mine);
                Ok(())
            }
            (Some(mine), Some(Remote::File(theirs))) if mine.version() > theirs.version() => {
                self.upload(path, mine).await
            }
            (Some(mine), Some(Remote::File(theirs))) => {
                self.download(path, Some(mine), theirs).await
            }
            (Some(mine), Some(Remote::Tombstone(time))) if mine.mtime > time => {
                self.upload(path, mine).await
            }
            (Some(mine), Some(Remote::Tombstone(_))) => self.remove_local(path, mine),
            (Some(mine), None) => self.upload(path, mine).await,
            (None, Some(Remote::File(theirs))) => match self.synced.get(path) {
                Some(agreed) if agreed.same_content(&theirs) => self.delete_remote(path).await,
                _ => self.download(path, None, theirs).await,
            },
            (None, _) => {
                self.forget(path);
                Ok(())
            }
        }
    }

    /// The local file's version; its checksum is read only when size or mtime changed since
    /// the last agreement.
    async fn local_meta(&self, path: &DfsPath) -> Result<Option<FileMeta>> {
        let local = path.under(&self.dir);
        let Some((size, mtime)) = stat_regular(&local)? else {
            return Ok(None);
        };
        if let Some(agreed) = self.synced.get(path) {
            // File times are coarse (a kernel tick): a file written twice within one tick
            // keeps its mtime, so a recent mtime proves nothing and the content is read.
            let settled = mtime < now_nanos() - RACY_WINDOW_NS;
            if agreed.size == size && agreed.mtime == mtime && settled {
                return Ok(Some(*agreed));
            }
        }
        let meta = tokio::task::spawn_blocking(move || file_meta(&local))
            .await
            .map_err(|e| Error::Invalid(format!("checksum task: {e}")))?;
        match meta {
            Ok(meta) => Ok(Some(meta)),
            // Gone between the stat and the read: the next event tells what happened.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn client(&self) -> Result<Client> {
        self.client
            .clone()
            .ok_or_else(|| Error::Unavailable("not connected".into()))
    }

    async fn upload(&mut self, path: &DfsPath, mine: FileMeta) -> Result<()> {
        let mut client = self.client()?;
        let local = path.under(&self.dir);
        let progress = Box::new(TerminalProgress::new(path.as_str(), mine.size));
        let (outcome, sent) = client.store_file(&local, path.as_str(), progress).await?;
        match outcome {
            StoreOutcome::Stored | StoreOutcome::Unchanged => {
                tracing::info!(path = %path, size = sent.size, ?outcome, "uploaded");
                self.agree(path, sent);
                self.remote.insert(path.clone(), Remote::File(sent));
            }
            // The server holds a later version that its Watch stream will tell about.
            _ => {
                tracing::info!(path = %path, "the server holds a later version");
                self.mark(path.clone(), Instant::now() + RETRY);
            }
        }
        Ok(())
    }

    async fn download(
        &mut self,
        path: &DfsPath,
        seen: Option<FileMeta>,
        theirs: FileMeta,
    ) -> Result<()> {
        let mut client = self.client()?;
        let local = path.under(&self.dir);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut progress = TerminalProgress::new(path.as_str(), theirs.size);
        let fetched = client
            // Synced: a file left short by a crash of the machine, with the server's mtime,
            // would tie with the server's version and could win on its checksum.
            .fetch_to_file_if(
                path.as_str(),
                &local,
                Durability::Synced,
                &mut progress,
                |dest| unchanged_since(dest, seen.as_ref()),
            )
            .await?;
        match fetched {
            Some(meta) => {
                tracing::info!(path = %path, size = meta.size, "downloaded");
                self.agree(path, meta);
            }
            // Written locally meanwhile: the local event comes and decides again.
            None => self.mark(path.clone(), Instant::now()),
        }
        Ok(())
    }

    fn remove_local(&mut self, path: &DfsPath, mine: FileMeta) -> Result<()> {
        let local = path.under(&self.dir);
        if !unchanged_since(&local, Some(&mine)) {
            self.mark(path.clone(), Instant::now());
            return Ok(());
        }
        match std::fs::remove_file(&local) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&local, e)),
        }
        tracing::info!(path = %path, "removed (deleted on the server)");
        self.forget(path);
        self.remove_empty_parents(&local);
        Ok(())
    }

    /// A delete elsewhere of a directory's last file removes the directory here too.
    fn remove_empty_parents(&self, local: &Path) {
        let mut dir = local.parent();
        while let Some(current) = dir {
            if current == self.dir || std::fs::remove_dir(current).is_err() {
                return;
            }
            dir = current.parent();
        }
    }

    async fn delete_remote(&mut self, path: &DfsPath) -> Result<()> {
        let mut client = self.client()?;
        let time = now_nanos();
        match client.delete(path.as_str(), time).await {
            Ok(true) | Err(Error::NotFound(_)) => {
                tracing::info!(path = %path, "deleted on the server");
                self.forget(path);
                self.remote.insert(path.clone(), Remote::Tombstone(time));
                Ok(())
            }
            // The server's copy is later than this delete: it wins and comes back.
            Ok(false) => {
                self.forget(path);
                self.mark(path.clone(), Instant::now());
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR).join(STATE_FILE)
}

/// The agreements a previous run with `server` saved; none when there is no state file, it
/// names another server, or it cannot be read (then a warning names it).
fn load_state(dir: &Path, server: &str) -> HashMap<DfsPath, FileMeta> {
    let path = state_path(dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring the mount state");
            return HashMap::new();
        }
    };
    let state: SavedState = match serde_json::from_slice(&text) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring the mount state: damaged");
            return HashMap::new();
        }
    };
    if state.server != server {
        tracing::info!(path = %path.display(), saved = state.server, server, "the mount state is of another server: ignored");
        return HashMap::new();
    }
    state
        .synced
        .into_iter()
        .filter_map(|(name, (size, mtime, checksum))| {
            let path = DfsPath::parse(&name).ok()?;
            Some((
                path,
                FileMeta {
                    size,
                    mtime,
                    checksum,
                },
            ))
        })
        .collect()
}

fn write_state(dir: &Path, state: &SavedState) -> Result<()> {
    let path = state_path(dir);
    let parent = dir.join(STATE_DIR);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let temp = path.with_extension("json.tmp");
    let text =
        serde_json::to_vec(state).map_err(|e| Error::Invalid(format!("mount state: {e}")))?;
    let mut file = std::fs::File::create(&temp).map_err(|e| Error::io(&temp, e))?;
    file.write_all(&text).map_err(|e| Error::io(&temp, e))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))
}

/// Removes the temporary files of downloads that a killed mount left (never visible under a
/// synced name, now garbage).
fn remove_leftover_downloads(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        notify::EventKind::Access(_) => true,
        _ => false,
    }
}

/// Size and mtime of a regular file; `None` when missing or not a regular file.
fn stat_regular(local: &Path) -> Result<Option<(u64, i64)>> {
    match std::fs::symlink_metadata(local) {
        Ok(meta) if meta.file_type().is_file() => {
            let mtime = meta
                .modified()
                .map(nanos_of)
                .map_err(|e| Error::io(local, e))?;
            Ok(Some((meta.len(), mtime)))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(local, e)),
    }
}

/// Whether the file at `local` is still as `seen` (same size and mtime), or still missing
/// when `seen` is `None`.
fn unchanged_since(local: &Path, seen: Option<&FileMeta>) -> bool {
    match (stat_regular(local), seen) {
        (Ok(None), None) => true,
        (Ok(Some((size, mtime))), Some(seen)) => size == seen.size && mtime == seen.mtime,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(checksum: u32) -> FileMeta {
        FileMeta {
            size: 3,
            mtime: 1_700_000_000_000_000_000,
            checksum,
        }
    }

    #[test]
    fn the_agreements_come_back_for_the_same_server_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::new(dir.path().into(), "127.0.0.1:1".into(), Duration::ZERO);
        assert!(engine.synced.is_empty());
        let path = DfsPath::parse("a/b.txt").unwrap();
        engine.agree(&path, meta(7));
        assert!(engine.save_due().is_some());
        engine.save_state();
        assert!(engine.save_due().is_none());

        let again = Engine::new(dir.path().into(), "127.0.0.1:1".into(), Duration::ZERO);
        assert_eq!(again.synced.get(&path), Some(&meta(7)));
        let other = Engine::new(dir.path().into(), "127.0.0.1:2".into(), Duration::ZERO);
        assert!(other.synced.is_empty(), "another server's agreements");

        std::fs::write(state_path(dir.path()), b"{not json").unwrap();
        let damaged = Engine::new(dir.path().into(), "127.0.0.1:1".into(), Duration::ZERO);
        assert!(damaged.synced.is_empty(), "a damaged state file is ignored");
    }
}
