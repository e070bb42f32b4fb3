//! The async client: one gRPC channel and the operations the CLI and the mount build on.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::proto::dfs_client::DfsClient;
use crate::proto::{self, StoreOutcome};
use crate::server::{read_chunk, FRAME, MAX_MESSAGE, WINDOW};
use crate::version::{file_meta, time_of, FileMeta};
use crate::wire;

/// A connection to a gfdfs server, with the id its write locks are taken under. Cloning is
/// cheap and shares the channel and the id.
#[derive(Clone)]
pub struct Client {
    rpc: DfsClient<Channel>,
    client_id: String,
}

/// A granted write lock and the server's version at that moment.
#[derive(Clone, Debug)]
pub struct LockGrant {
    /// How long the lock lasts from the grant.
    pub lease: Duration,
    /// The server's file, if there is one.
    pub current: Option<FileMeta>,
    /// The time of the file's tombstone, if it was deleted.
    pub tombstone: Option<i64>,
}

impl LockGrant {
    /// Whether storing `offered` would move data (the server would take it as newer).
    pub fn wants(&self, offered: &FileMeta) -> bool {
        match (self.current, self.tombstone) {
            (Some(current), _) => {
                !current.same_content(offered) && offered.version() > current.version()
            }
            (None, Some(time)) => offered.mtime > time,
            (None, None) => true,
        }
    }
}

/// Whether a downloaded file is fsynced before it is renamed into place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync first: after a crash of the machine the file is the old one or the whole new one.
    Synced,
    /// Leave the write-back to the kernel (faster; after a crash of the machine the file may
    /// be empty or short).
    Cached,
}

/// A fetch under way: the version, then the data chunk by chunk, checked at the end.
pub struct Download {
    /// The version being received.
    pub meta: FileMeta,
    path: String,
    pending: Option<Bytes>,
    stream: Streaming<proto::FetchReply>,
    received: u64,
    crc: u32,
}

impl Download {
    /// The next chunk, or `None` at the end once size and checksum matched.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let data = match self.pending.take() {
            Some(data) => data,
            None => match self.stream.message().await.map_err(Error::from)? {
                Some(reply) => reply.data,
                None => return self.check_end().map(|()| None),
            },
        };
        self.received += data.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, &data);
        if self.received > self.meta.size {
            return Err(self.corrupt("more data than the announced size"));
        }
        Ok(Some(data))
    }

    fn check_end(&self) -> Result<()> {
        if self.received != self.meta.size {
            return Err(self.corrupt("less data than the announced size"));
        }
        if self.crc != self.meta.checksum {
            return Err(self.corrupt("the data does not match the announced checksum"));
        }
        Ok(())
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }
}

/// A client id unique to this process and call site: locks are taken under it.
pub fn new_client_id() -> String {
    format!("pid{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// `host:port` or a URL, as an `http://` URI.
fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// Connects to `addr` (`host:port`), failing after `connect_timeout`.
    pub async fn connect(addr: &str, connect_timeout: Duration) -> Result<Client> {
        let endpoint = Endpoint::from_shared(endpoint_uri(addr))
            .map_err(|e| Error::Invalid(format!("server address {addr:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // A server that vanished without a FIN (a crash, a pulled cable) is noticed.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .max_frame_size(FRAME)
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(WINDOW * 2));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("{addr}: {}", source_text(&e))))?;
        let rpc = DfsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Client {
            rpc,
            client_id: new_client_id(),
        })
    }

    /// The id write locks are taken under.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// One file's version.
    pub async fn stat(&mut self, path: &str) -> Result<FileMeta> {
        let reply = self
            .rpc
            .stat(proto::StatRequest { path: path.into() })
            .await?
            .into_inner();
        Ok(FileMeta {
            size: reply.size,
            mtime: reply.mtime,
            checksum: reply.checksum,
        })
    }

    /// Every file, by path.
    pub async fn list(&mut self) -> Result<Vec<(String, FileMeta)>> {
        let reply = self.rpc.list(proto::ListRequest {}).await?.into_inner();
        Ok(reply
            .entries
            .into_iter()
            .map(|entry| {
                let meta = wire::meta_of(&entry);
                (entry.path, meta)
            })
            .collect())
    }

    /// Deletes `path` as of `mtime` (0: the server's clock); false when the server's copy is
    /// later and stays.
    pub async fn delete(&mut self, path: &str, mtime: i64) -> Result<bool> {
        let request = proto::DeleteRequest {
            path: path.into(),
            mtime,
            client_id: self.client_id.clone(),
        };
        Ok(self.rpc.delete(request).await?.into_inner().deleted)
    }

    /// Takes the write lock on `path`.
    pub async fn acquire_lock(&mut self, path: &str) -> Result<LockGrant> {
        let request = proto::AcquireWriteLockRequest {
            path: path.into(),
            client_id: self.client_id.clone(),
        };
        let reply = self.rpc.acquire_write_lock(request).await?.into_inner();
        Ok(LockGrant {
            lease: Duration::from_millis(reply.lease_ms),
            current: reply.current.as_ref().map(wire::meta_of),
            tombstone: (reply.tombstone_mtime != 0).then_some(reply.tombstone_mtime),
        })
    }

    /// Gives the write lock on `path` back.
    pub async fn release_lock(&mut self, path: &str) -> Result<()> {
        let request = proto::ReleaseWriteLockRequest {
            path: path.into(),
            client_id: self.client_id.clone(),
        };
        self.rpc.release_write_lock(request).await?;
        Ok(())
    }

    /// Stores the local file `local` as `path` with its own mtime: takes the write lock,
    /// sends only the header when the server would not take the data (same checksum, or a
    /// later version there), streams the file otherwise.
    pub async fn store_file(
        &mut self,
        local: &Path,
        path: &str,
        progress: Box<dyn Progress>,
    ) -> Result<(StoreOutcome, FileMeta)> {
        let owned = local.to_path_buf();
        // The checksum is summed while the lock request is in flight.
        let summing = tokio::task::spawn_blocking(move || file_meta(&owned));
        let grant = self.acquire_lock(path).await?;
        let summed = summing
            .await
            .map_err(|e| Error::Invalid(format!("checksum task: {e}")))
            .and_then(|meta| meta);
        let offered = match summed {
            Ok(offered) => offered,
            Err(e) => {
                let _ = self.release_lock(path).await;
                return Err(e);
            }
        };
        let with_data = grant.wants(&offered);
        let result = self
            .send_store(local, path, offered, with_data, progress)
            .await;
        if result.is_err() {
            // Let another writer in at once rather than after the lease.
            let _ = self.release_lock(path).await;
        }
        result.map(|outcome| (outcome, offered))
    }

    /// Sends a Store call: the header, then the file unless the server would not take it.
    async fn send_store(
        &mut self,
        local: &Path,
        path: &str,
        offered: FileMeta,
        with_data: bool,
        progress: Box<dyn Progress>,
    ) -> Result<StoreOutcome> {
        let header = proto::StoreRequest {
            path: path.into(),
            mtime: offered.mtime,
            checksum: offered.checksum,
            size: offered.size,
            client_id: self.client_id.clone(),
            data: Bytes::new(),
        };
        let (tx, rx) = mpsc::channel(4);
        // The header goes first; a full channel of 4 cannot refuse it.
        let _ = tx.try_send(header);
        if with_data {
            let file = std::fs::File::open(local).map_err(|e| Error::io(local, e))?;
            tokio::task::spawn_blocking(move || read_chunks(file, tx, progress));
        } else {
            drop(tx);
        }
        let reply = self.rpc.store(ReceiverStream::new(rx)).await?.into_inner();
        StoreOutcome::try_from(reply.outcome)
            .map_err(|_| Error::Invalid(format!("unknown store outcome {}", reply.outcome)))
    }

    /// Starts fetching `path`.
    pub async fn fetch(&mut self, path: &str) -> Result<Download> {
        let mut stream = self
            .rpc
            .fetch(proto::FetchRequest { path: path.into() })
            .await?
            .into_inner();
        let first = stream.message().await?.ok_or_else(|| Error::Corrupt {
            path: path.to_string(),
            what: "an empty Fetch stream".into(),
        })?;
        Ok(Download {
            meta: FileMeta {
                size: first.size,
                mtime: first.mtime,
                checksum: first.checksum,
            },
            path: path.to_string(),
            pending: Some(first.data),
            stream,
            received: 0,
            crc: 0,
        })
    }

    /// Fetches `path` into `out`; the version received.
    pub async fn fetch_to_writer(
        &mut self,
        path: &str,
        out: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<FileMeta> {
        let mut download = self.fetch(path).await?;
        progress.start(download.meta.size);
        while let Some(chunk) = download.next_chunk().await? {
            out.write_all(&chunk)
                .map_err(|e| Error::io("<output>", e))?;
            progress.advance(chunk.len() as u64);
        }
        out.flush().map_err(|e| Error::io("<output>", e))?;
        progress.finish();
        Ok(download.meta)
    }

    /// Fetches `path` into the file `dest` atomically: into a temporary file beside it,
    /// checked, given the server's mtime and renamed over `dest`. Refuses to replace anything
    /// but a regular file. Not fsynced (as `gfclient get -o`, curl or cp): a reader sees the
    /// old file or the whole new one, and the kernel writes it back in its own time.
    pub async fn fetch_to_file(
        &mut self,
        path: &str,
        dest: &Path,
        progress: &mut dyn Progress,
    ) -> Result<FileMeta> {
        let fetched = self
            .fetch_to_file_if(path, dest, Durability::Cached, progress, |_| true)
            .await?;
        fetched.ok_or_else(|| Error::Invalid("fetch abandoned".into()))
    }

    /// [`Client::fetch_to_file`] with a choice of [`Durability`], renaming into place only if
    /// `still_wanted(dest)` holds once the data is complete (`None` when it did not: nothing
    /// was replaced).
    pub async fn fetch_to_file_if(
        &mut self,
        path: &str,
        dest: &Path,
        durability: Durability,
        progress: &mut dyn Progress,
        still_wanted: impl FnOnce(&Path) -> bool,
    ) -> Result<Option<FileMeta>> {
        refuse_non_regular(dest)?;
        let mut download = self.fetch(path).await?;
        progress.start(download.meta.size);
        let temp = TempFile::beside(dest)?;
        let temp = receive_into(&mut download, temp, progress).await?;
        progress.finish();
        refuse_non_regular(dest)?;
        if !still_wanted(dest) {
            return Ok(None);
        }
        temp.persist(dest, download.meta.mtime, durability)?;
        Ok(Some(download.meta))
    }

    /// The server's Watch stream: the listing, SYNCED, then every change.
    pub async fn watch(&mut self) -> Result<Streaming<proto::WatchEvent>> {
        Ok(self.rpc.watch(proto::WatchRequest {}).await?.into_inner())
    }
}

/// Writes the rest of `download` into `temp` on a blocking thread while the next chunks
/// arrive, so the network and the disk work at once.
async fn receive_into(
    download: &mut Download,
    mut temp: TempFile,
    progress: &mut dyn Progress,
) -> Result<TempFile> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || -> Result<TempFile> {
        while let Some(chunk) = rx.blocking_recv() {
            temp.write(&chunk)?;
        }
        Ok(temp)
    });
    let received = async {
        while let Some(chunk) = download.next_chunk().await? {
            progress.advance(chunk.len() as u64);
            if tx.send(chunk).await.is_err() {
                break; // the writer failed: its error tells why
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    drop(tx);
    let temp = writer
        .await
        .map_err(|e| Error::Invalid(format!("write task: {e}")))??;
    received.map(|()| temp)
}

fn source_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}

fn read_chunks(
    mut file: std::fs::File,
    tx: mpsc::Sender<proto::StoreRequest>,
    mut progress: Box<dyn Progress>,
) {
    loop {
        let data = match read_chunk(&mut file) {
            Ok(data) if data.is_empty() => break,
            Ok(data) => data,
            // The server sees a short upload and refuses it (DATA_LOSS).
            Err(_) => break,
        };
        let n = data.len() as u64;
        let message = proto::StoreRequest {
            data: data.into(),
            ..Default::default()
        };
        if tx.blocking_send(message).is_err() {
            break; // the call ended early (a refusal, or the server went away)
        }
        progress.advance(n);
    }
    progress.finish();
}

/// Anything but a missing path or a regular file (a directory, a device, a FIFO, a
/// symlink) is never replaced.
fn refuse_non_regular(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if !meta.file_type().is_file() => Err(Error::Invalid(format!(
            "{} exists and is not a regular file: not replacing it",
            dest.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dest, e)),
    }
}

/// The name prefix of a download's temporary file (a name no [`crate::DfsPath`] accepts).
pub(crate) const TEMP_PREFIX: &str = ".gfdfs-tmp-";

/// A temporary file beside its destination, named so that a gfdfs mount ignores it
/// (`.gfdfs-…`); removed on drop unless persisted.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl TempFile {
    pub(crate) fn beside(dest: &Path) -> Result<TempFile> {
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("{TEMP_PREFIX}{:016x}", fastrand::u64(..)));
        let file = std::fs::File::create_new(&path).map_err(|e| Error::io(&path, e))?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Invalid("temp file closed".into()))?;
        file.write_all(data).map_err(|e| Error::io(&self.path, e))
    }

    pub(crate) fn persist(mut self, dest: &Path, mtime: i64, durability: Durability) -> Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Invalid("temp file closed".into()))?;
        let result = (|| {
            file.set_modified(time_of(mtime))
                .map_err(|e| Error::io(&self.path, e))?;
            if durability == Durability::Synced {
                file.sync_all().map_err(|e| Error::io(&self.path, e))?;
            }
            drop(file);
            std::fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        result
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
