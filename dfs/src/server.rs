//! The gfdfs server: the `Dfs` service over a [`Volume`], its write locks and metrics, and
//! the listeners (gRPC, and Prometheus text over HTTP).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::locks::LockTable;
use crate::metrics::Metrics;
use crate::proto::dfs_server::{Dfs, DfsServer};
use crate::proto::{self, StoreOutcome};
use crate::version::FileMeta;
use crate::volume::{delete_time, Change, ChangeKind, Current, Upload, Verdict, Volume};
use crate::wire;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The directory whose files are served (created when missing).
    pub root: PathBuf,
    /// The gRPC address (port 0: any free port).
    pub listen: SocketAddr,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a write lock lasts.
    pub lock_lease: Duration,
}

impl ServerConfig {
    /// The default lease of a write lock.
    pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(10);
}

/// A server whose listeners are bound; [`BoundServer::run`] serves.
pub struct BoundServer {
    service: Service,
    listener: tokio::net::TcpListener,
    /// The gRPC address bound.
    pub addr: SocketAddr,
    /// The metrics address bound.
    pub metrics_addr: Option<SocketAddr>,
}

/// Binds the listeners of `config` and opens its root. Call within a tokio runtime.
pub async fn bind(config: ServerConfig) -> Result<BoundServer> {
    let volume = Arc::new(Volume::open(&config.root)?);
    let metrics = Arc::new(Metrics::new());
    let locks = Arc::new(LockTable::new(config.lock_lease));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Invalid(format!("listener address: {e}")))?;
    let metrics_addr = match config.metrics_listen {
        Some(at) => Some(serve_metrics(at, metrics.clone(), locks.clone())?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let service = Service {
        volume,
        locks,
        metrics,
        stopped,
        stop: Arc::new(stop),
    };
    Ok(BoundServer {
        service,
        listener,
        addr,
        metrics_addr,
    })
}

impl BoundServer {
    /// Serves until `shutdown` completes; then ends the Watch streams and gives open calls
    /// a moment to finish.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let stop = self.service.stop.clone();
        let mut stopping = self_stopping(&stop);
        // Accepted sockets get TCP_NODELAY here: the builder's own setting only reaches the
        // sockets of a listener it binds itself, and without it a small reply waits out the
        // peer's delayed ACK (40 ms) behind Nagle.
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .max_frame_size(Some(FRAME))
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(WINDOW * 2))
            .add_service(
                DfsServer::new(self.service)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                let _ = stop.send(true);
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.map_err(Error::Transport),
            () = stopping.as_mut() => {}
        }
        // Graceful shutdown waits for open calls; a stalled client must not hold it forever.
        match tokio::time::timeout(Duration::from_secs(2), server).await {
            Ok(result) => result.map_err(Error::Transport),
            Err(_) => Ok(()),
        }
    }
}

fn self_stopping(
    stop: &Arc<watch::Sender<bool>>,
) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let mut receiver = stop.subscribe();
    Box::pin(async move {
        let _ = receiver.wait_for(|stopped| *stopped).await;
    })
}

/// Calls one client connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`;
/// tonic's default is no limit). A client asks for more by opening more connections, but each
/// call costs the server a little memory, so one connection cannot open thousands.
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// HTTP/2 flow-control window: large enough that a 64 MiB transfer is not held back by
/// round trips on loopback.
pub(crate) const WINDOW: u32 = 4 << 20;
/// HTTP/2 frames as large as a data chunk's share: fewer frames (and headers) per MiB.
pub(crate) const FRAME: u32 = 1 << 20;
/// The largest message either side accepts (a data chunk is [`CHUNK`] plus a few bytes).
pub(crate) const MAX_MESSAGE: usize = 8 << 20;
/// Bytes of file data per message (both ways). 256 KiB moved a 64 MiB fetch 20-30% faster
/// than 1 MiB on this project's machine: each message is a fresh buffer on the receiving side,
/// and smaller ones are served from the allocator's free lists instead of new pages (a third
/// fewer page faults), while the messages are still few.
pub(crate) const CHUNK: usize = 256 << 10;

/// The next [`CHUNK`] of `reader` (less only at its end; empty at the end), read into fresh
/// memory that is not zeroed first.
pub(crate) fn read_chunk(reader: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::with_capacity(CHUNK);
    reader.take(CHUNK as u64).read_to_end(&mut data)?;
    Ok(data)
}

fn serve_metrics(
    at: SocketAddr,
    metrics: Arc<Metrics>,
    locks: Arc<LockTable>,
) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(at)
        .map_err(|e| Error::Invalid(format!("cannot listen on {at} for metrics: {e}")))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::Invalid("metrics listener has no IP address".into()))?;
    std::thread::Builder::new()
        .name("gfdfs-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    metrics.locks_held.set(locks.held_count() as i64);
                    let header = tiny_http::Header::from_bytes(
                        "Content-Type",
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .expect("a valid header");
                    tiny_http::Response::from_string(metrics.render()).with_header(header)
                } else {
                    tiny_http::Response::from_string("not found\n").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })
        .map_err(|e| Error::Invalid(format!("metrics thread: {e}")))?;
    Ok(addr)
}

#[derive(Clone)]
struct Service {
    volume: Arc<Volume>,
    locks: Arc<LockTable>,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
    stop: Arc<watch::Sender<bool>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Dfs for Service {
    async fn store(
        &self,
        request: Request<Streaming<proto::StoreRequest>>,
    ) -> std::result::Result<Response<proto::StoreReply>, Status> {
        // A client that vanishes mid-stream may have this call dropped at an await rather
        // than ended with an error: the guard counts that failure too.
        let failure = CountsFailure(Some(self.metrics.clone()));
        let result = self.store_stream(request.into_inner()).await;
        if result.is_ok() {
            failure.disarm();
        }
        match &result {
            Ok(StoreOutcome::Stored) => self.metrics.stores.inc(),
            Ok(StoreOutcome::Unchanged) => self.metrics.stores_skipped.inc(),
            Ok(_) => self.metrics.stores_stale.inc(),
            Err(_) => {} // counted by the guard
        }
        let outcome = result.map_err(|(path, error)| {
            tracing::debug!(path, %error, "store failed");
            Status::from(error)
        })?;
        Ok(Response::new(proto::StoreReply {
            outcome: outcome as i32,
            entry: None,
        }))
    }

    type FetchStream = BoxStream<proto::FetchReply>;

    async fn fetch(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> std::result::Result<Response<Self::FetchStream>, Status> {
        let path = self.volume.resolve(&request.get_ref().path)?;
        let (file, meta) = self.volume.open_file(&path)?;
        self.metrics.fetches.inc();
        // One chunk queued: a client that stops reading holds two chunks of memory at most.
        let (tx, rx) = mpsc::channel(1);
        let metrics = self.metrics.clone();
        tokio::spawn(send_file(path.to_string(), file, meta, tx, metrics));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> std::result::Result<Response<proto::DeleteReply>, Status> {
        let request = request.into_inner();
        let path = self.volume.resolve(&request.path)?;
        self.locks
            .check_not_held_by_other(&path, &request.client_id)?;
        let deleted = self.volume.delete(&path, delete_time(request.mtime))?;
        if deleted {
            self.metrics.deletes.inc();
            tracing::info!(path = %path, "deleted");
        }
        Ok(Response::new(proto::DeleteReply { deleted }))
    }

    async fn list(
        &self,
        _request: Request<proto::ListRequest>,
    ) -> std::result::Result<Response<proto::ListReply>, Status> {
        let entries = self
            .volume
            .list()
            .into_iter()
            .map(|(path, meta)| wire::entry(&path, &meta))
            .collect();
        Ok(Response::new(proto::ListReply { entries }))
    }

    async fn stat(
        &self,
        request: Request<proto::StatRequest>,
    ) -> std::result::Result<Response<proto::StatReply>, Status> {
        let path = self.volume.resolve(&request.get_ref().path)?;
        match self.volume.current(&path) {
            Current::File(meta) => Ok(Response::new(proto::StatReply {
                size: meta.size,
                mtime: meta.mtime,
                checksum: meta.checksum,
            })),
            _ => Err(Error::NotFound(path.to_string()).into()),
        }
    }

    async fn acquire_write_lock(
        &self,
        request: Request<proto::AcquireWriteLockRequest>,
    ) -> std::result::Result<Response<proto::AcquireWriteLockReply>, Status> {
        let request = request.into_inner();
        let path = self.volume.resolve(&request.path)?;
        let client_id = non_empty_client(&request.client_id)?;
        let lease = match self.locks.acquire(&path, client_id) {
            Ok(lease) => lease,
            Err(error) => {
                self.metrics.locks_refused.inc();
                tracing::info!(path = %path, client = client_id, "write lock refused: held by another client");
                return Err(error.into());
            }
        };
        self.metrics.locks_granted.inc();
        let (current, tombstone_mtime) = match self.volume.current(&path) {
            Current::File(meta) => (Some(wire::entry(&path, &meta)), 0),
            Current::Tombstone(time) => (None, time),
            Current::Absent => (None, 0),
        };
        Ok(Response::new(proto::AcquireWriteLockReply {
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            current,
            tombstone_mtime,
        }))
    }

    async fn release_write_lock(
        &self,
        request: Request<proto::ReleaseWriteLockRequest>,
    ) -> std::result::Result<Response<proto::ReleaseWriteLockReply>, Status> {
        let request = request.into_inner();
        let path = self.volume.resolve(&request.path)?;
        self.locks.release(&path, &request.client_id);
        Ok(Response::new(proto::ReleaseWriteLockReply {}))
    }

    type WatchStream = BoxStream<proto::WatchEvent>;

    async fn watch(
        &self,
        _request: Request<proto::WatchRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let volume = self.volume.clone();
        let metrics = self.metrics.clone();
        let stopped = self.stopped.clone();
        tokio::spawn(async move {
            metrics.watchers.inc();
            feed_watcher(&volume, tx, stopped).await;
            metrics.watchers.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Counts a failed store when dropped armed.
struct CountsFailure(Option<Arc<Metrics>>);

impl CountsFailure {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CountsFailure {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.stores_failed.inc();
        }
    }
}

fn non_empty_client(client_id: &str) -> std::result::Result<&str, Status> {
    if client_id.is_empty() {
        return Err(Error::Invalid("client_id is empty".into()).into());
    }
    Ok(client_id)
}

impl Service {
    /// One Store call; on failure also the path (for the log).
    async fn store_stream(
        &self,
        mut stream: Streaming<proto::StoreRequest>,
    ) -> std::result::Result<StoreOutcome, (String, Error)> {
        let first = next_message(&mut stream)
            .await
            .map_err(|e| (String::new(), e))?
            .ok_or_else(|| {
                (
                    String::new(),
                    Error::Invalid("an empty Store stream".into()),
                )
            })?;
        let raw = first.path.clone();
        let path = self.volume.resolve(&raw).map_err(|e| (raw.clone(), e))?;
        self.locks
            .check(&path, &first.client_id)
            .map_err(|e| (raw.clone(), e))?;
        let client_id = first.client_id.clone();
        let offered = FileMeta {
            size: first.size,
            mtime: first.mtime,
            checksum: first.checksum,
        };
        let outcome = match self.volume.verdict(&path, &offered) {
            Verdict::Unchanged => Ok(StoreOutcome::Unchanged),
            Verdict::Stale => Ok(StoreOutcome::Stale),
            Verdict::Newer => self.receive(&path, first, stream, offered).await,
        };
        let outcome = match outcome {
            Err(Error::Stale(_)) => Ok(StoreOutcome::Stale),
            other => other,
        };
        // Released after a store that settled the file, kept after a failure the caller may
        // retry within its lease.
        if outcome.is_ok() {
            self.locks.release(&path, &client_id);
        }
        outcome.map_err(|e| (raw, e))
    }

    async fn receive(
        &self,
        path: &crate::path::DfsPath,
        first: proto::StoreRequest,
        mut stream: Streaming<proto::StoreRequest>,
        offered: FileMeta,
    ) -> Result<StoreOutcome> {
        let client_id = first.client_id.clone();
        let mut writer = UploadWriter::start(self.volume.begin_upload()?);
        let mut size = 0u64;
        let mut message = Some(first);
        while let Some(current) = message {
            if size + current.data.len() as u64 > offered.size {
                return Err(corrupt(path, "more data than the announced size"));
            }
            size += current.data.len() as u64;
            self.metrics
                .bytes_received
                .inc_by(current.data.len() as u64);
            if !current.data.is_empty() {
                writer.send(current.data).await?;
            }
            message = next_message(&mut stream).await?;
        }
        let (upload, crc) = writer.finish().await?;
        if size != offered.size {
            return Err(corrupt(path, "less data than the announced size"));
        }
        if crc != offered.checksum {
            return Err(corrupt(
                path,
                "the data does not match the announced checksum",
            ));
        }
        // The lease may have run out during a long upload; the upload still counts unless
        // another writer took the lock meanwhile.
        self.locks.check_not_held_by_other(path, &client_id)?;
        let volume = self.volume.clone();
        let owned = path.clone();
        tokio::task::spawn_blocking(move || volume.commit(&owned, upload, offered))
            .await
            .map_err(|e| Error::Invalid(format!("commit task: {e}")))??;
        tracing::info!(path = %path, size, "stored");
        Ok(StoreOutcome::Stored)
    }
}

/// Writes an upload's chunks and sums their CRC off the async threads (a file write may
/// block on the disk), one chunk behind the network: the write of a chunk runs while the
/// next one is received. No thread is held while the client is slow to send, so slow
/// uploads cannot use up the blocking pool that Fetch and the commits need. The upload
/// travels with its write, so a call dropped meanwhile still removes its temporary file.
struct UploadWriter {
    stage: WriterStage,
}

enum WriterStage {
    /// No write under way: the upload and the CRC of what it holds.
    Idle(Upload, u32),
    /// A write under way; it gives the upload back.
    Writing(tokio::task::JoinHandle<Result<(Upload, u32)>>),
    /// A write failed or its task was lost.
    Failed,
}

impl UploadWriter {
    fn start(upload: Upload) -> UploadWriter {
        UploadWriter {
            stage: WriterStage::Idle(upload, 0),
        }
    }

    /// Waits for the previous write, then starts writing `data`.
    async fn send(&mut self, data: Bytes) -> Result<()> {
        let (mut upload, crc) = self.settle().await?;
        self.stage = WriterStage::Writing(tokio::task::spawn_blocking(move || {
            let crc = crc32c::crc32c_append(crc, &data);
            upload.write(&data)?;
            Ok((upload, crc))
        }));
        Ok(())
    }

    /// Waits until everything sent is written: the upload and the CRC of its data.
    async fn finish(mut self) -> Result<(Upload, u32)> {
        self.settle().await
    }

    async fn settle(&mut self) -> Result<(Upload, u32)> {
        match std::mem::replace(&mut self.stage, WriterStage::Failed) {
            WriterStage::Idle(upload, crc) => Ok((upload, crc)),
            WriterStage::Writing(task) => task
                .await
                .map_err(|e| Error::Invalid(format!("write task: {e}")))?,
            WriterStage::Failed => Err(Error::Invalid("an earlier write failed".into())),
        }
    }
}

fn corrupt(path: &crate::path::DfsPath, what: &str) -> Error {
    Error::Corrupt {
        path: path.to_string(),
        what: what.to_string(),
    }
}

/// The next message of a client stream; a stream that broke off (the client went away) is
/// CANCELLED.
async fn next_message<T>(stream: &mut Streaming<T>) -> Result<Option<T>> {
    stream
        .message()
        .await
        .map_err(|status| match status.code() {
            tonic::Code::DeadlineExceeded => Error::DeadlineExceeded,
            _ => Error::Cancelled(status.message().to_string()),
        })
}

/// How long a Fetch may wait for its client to take the next chunk before it is ended: a
/// client that stopped reading (or reads nothing while it answers HTTP/2 pings) must not keep
/// its file and its queued chunk for ever.
pub(crate) const FETCH_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `file` to a Fetch stream. Each chunk is read on a blocking thread (a read may wait
/// on the disk), but the wait for the client to take it holds no thread: clients that do not
/// read cannot use up the blocking pool that every store's writes and commit need.
async fn send_file(
    path: String,
    file: std::fs::File,
    meta: FileMeta,
    tx: mpsc::Sender<std::result::Result<proto::FetchReply, Status>>,
    metrics: Arc<Metrics>,
) {
    let mut file = file;
    let mut first = Some(meta);
    loop {
        let read = tokio::task::spawn_blocking(move || {
            let data = read_chunk(&mut file);
            (file, data)
        })
        .await;
        let data = match read {
            Ok((back, Ok(data))) => {
                file = back;
                data
            }
            Ok((_, Err(e))) => {
                let _ = tx.send(Err(Status::internal(format!("read: {e}")))).await;
                return;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("read task: {e}"))))
                    .await;
                return;
            }
        };
        let n = data.len();
        if n == 0 && first.is_none() {
            return;
        }
        metrics.bytes_sent.inc_by(n as u64);
        let head = first.take();
        let reply = proto::FetchReply {
            size: head.map_or(0, |m| m.size),
            mtime: head.map_or(0, |m| m.mtime),
            checksum: head.map_or(0, |m| m.checksum),
            data: data.into(),
        };
        match tokio::time::timeout(FETCH_SEND_TIMEOUT, tx.send(Ok(reply))).await {
            Ok(Ok(())) if n > 0 => {}
            // The end (an empty file is told in one message), or the client went away.
            Ok(_) => return,
            Err(_) => {
                metrics.fetches_cut.inc();
                tracing::info!(%path, waited = ?FETCH_SEND_TIMEOUT, "fetch ended: the client took no data");
                return;
            }
        }
    }
}

async fn feed_watcher(
    volume: &Volume,
    tx: mpsc::Sender<std::result::Result<proto::WatchEvent, Status>>,
    mut stopped: watch::Receiver<bool>,
) {
    let (listing, mut changes) = volume.subscribe();
    if send_listing(&tx, listing).await.is_err() {
        return;
    }
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = stopped.wait_for(|stopped| *stopped) => return,
        };
        let sent = match change {
            Ok(change) => tx.send(Ok(wire::event(&change))).await.map_err(drop),
            // Too slow to follow: start over from a fresh listing, which supersedes
            // whatever was missed.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (listing, fresh) = volume.subscribe();
                changes = fresh;
                send_listing(&tx, listing).await
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

type WatchSender = mpsc::Sender<std::result::Result<proto::WatchEvent, Status>>;

async fn send_listing(tx: &WatchSender, listing: Vec<Change>) -> std::result::Result<(), ()> {
    for change in &listing {
        tx.send(Ok(wire::event(change))).await.map_err(drop)?;
    }
    let synced = proto::WatchEvent {
        kind: proto::EventKind::Synced as i32,
        ..Default::default()
    };
    tx.send(Ok(synced)).await.map_err(drop)
}

impl From<ChangeKind> for proto::EventKind {
    fn from(kind: ChangeKind) -> Self {
        match kind {
            ChangeKind::Create => proto::EventKind::Create,
            ChangeKind::Modify => proto::EventKind::Modify,
            ChangeKind::Delete => proto::EventKind::Delete,
        }
    }
}
