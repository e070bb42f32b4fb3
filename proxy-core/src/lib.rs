//! The gfcache proxy: a GetFile front end over cache processes and an HTTP origin.
//!
//! A proxy process serves GetFile clients with a [`gfprotocol::Server`] of `threads` workers
//! (growing to `max_threads` while slow readers hold workers).
//! Each request follows one path, written top to bottom in the `request` module:
//!
//! 1. the path is validated and normalised ([`path::CanonicalPath`]);
//! 2. the owning cache slot is picked by rendezvous hashing ([`routing`]);
//! 3. a segment of the shared [`ipc::Region`] is acquired and the cache is asked for the object;
//! 4. a hit streams to the client straight from shared memory, one copy, and the segment is
//!    released;
//! 5. a miss is fetched from the origin ([`origin`]), streamed to the client as it arrives,
//!    shared with concurrent misses of the same path ([`collapse`]) and put into the owning
//!    cache ([`fill`]) so that the next request is a hit.
//!
//! A cache that is down, restarting or too slow before the OK header went out is skipped and
//! the request served by the origin (a fallback); after the header a failure can only close the
//! connection. Errors ([`Error`]) record which side failed and whether another source may
//! succeed. Counters and latency histograms go to the proxy's block of the ipc stats area
//! ([`stats`]); [`metrics`] says what each cell means and gives the schema the supervisor
//! publishes.
//!
//! Settings: [`ProxySettings`] is the `[proxy]` section, with its defaults and its validator.
//!
//! Entry points: [`run`] for the supervisor's proxy role (runs until a stop flag is set), and
//! [`Proxy::start`] which returns a [`RunningProxy`] with its bound address, for tests and
//! embedding.
//!
//! ```
//! use std::sync::Arc;
//! use proxy_core::{Proxy, ProxyConfig};
//!
//! // A region with one cache slot; no cache process serves it yet.
//! let region = Arc::new(ipc::Region::create(
//!     &ipc::RegionConfig { segments: 4, segment_size: 64 * 1024, cache_slots: 1, proxy_slots: 1 },
//!     None,
//! )?);
//! let proxy = Proxy::start(region, ProxyConfig::new("127.0.0.1:0".parse()?))?;
//!
//! // The owning cache is down and there is no origin: the proxy answers ERROR.
//! let mut body = Vec::new();
//! let outcome = gfprotocol::Client::default()
//!     .fetch(&proxy.local_addr().to_string(), "/index.html", &mut body)?;
//! assert_eq!(outcome.status, gfprotocol::Status::Error);
//!
//! proxy.stop();
//! proxy.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod collapse;
pub mod dfs_origin;
mod error;
pub mod fill;
pub mod freshness;
mod hot;
pub mod metrics;
pub mod origin;
mod paced;
pub mod path;
pub mod purge;
mod request;
pub mod routing;
pub mod settings;
pub mod stats;
mod warn_limit;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, SystemTime};

use gfprotocol::{Handler, ResponseWriter, Server, ServerConfig, ShutdownHandle};
use ipc::{Member, MemberState, Region};

pub use error::{Error, Side};
pub use settings::ProxySettings;

use request::Context;

/// At most one origin-failure warning per this interval (the others are counted in it).
const ORIGIN_WARN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a cache that failed is skipped (unless its process is replaced sooner).
pub const SUSPECT_PAUSE: Duration = Duration::from_secs(1);

/// What one proxy process runs with: its [`ProxySettings`] (the `[proxy]` section) and what
/// the process that starts it decides (its slot, whether the port is shared).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This process's slot (stats block and state word).
    pub slot: ipc::ProxySlot,
    /// Set SO_REUSEPORT, so that several proxy processes share the listen address.
    pub reuse_port: bool,
    /// The `[proxy]` settings.
    pub settings: ProxySettings,
}

impl ProxyConfig {
    /// Slot 0, no shared port, and the default settings but for the listen address.
    pub fn new(listen: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            slot: ipc::ProxySlot::from_raw(0),
            reuse_port: false,
            settings: ProxySettings {
                listen,
                ..ProxySettings::default()
            },
        }
    }

    /// [`ProxySettings::validate`], as one error listing every problem.
    pub fn validate(&self) -> Result<(), Error> {
        let problems: Vec<String> = self
            .settings
            .validate()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }
}

/// Builder-less entry point of a proxy process.
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// Starts a proxy on an attached region: marks its member Starting, binds the listener,
    /// starts the workers, marks it Ready and returns at once.
    pub fn start(region: Arc<Region>, config: ProxyConfig) -> Result<RunningProxy, Error> {
        config.validate()?;
        let member = Member::Proxy(config.slot);
        let pid = i32::try_from(std::process::id()).unwrap_or(0);
        region.set_member_state(member, MemberState::Starting, pid);
        let started = Self::bind(Arc::clone(&region), config);
        if started.is_err() {
            region.set_member_state(member, MemberState::Down, 0);
        }
        let (ctx, server) = started?;
        let addr = server.local_addr();
        let http_addr = server.http_addr();
        let shutdown = server.shutdown_handle();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("gfproxy-{}", ctx.config.slot.as_raw()))
            .spawn(move || {
                let result = server.run();
                // The receiver may be gone after a bounded join; nothing to do then.
                let _ = done_tx.send(());
                result
            })
            .map_err(|e| Error::Server(gfprotocol::Error::Io(e)))?;
        let changes = ChangeFollower::start(&ctx);
        region.set_member_state(member, MemberState::Ready, pid);
        tracing::info!(%addr, http = ?http_addr, slot = ctx.config.slot.as_raw(), "proxy ready");
        Ok(RunningProxy {
            addr,
            http_addr,
            shutdown,
            thread: Some(thread),
            done: done_rx,
            _changes: changes,
            ctx,
        })
    }

    fn bind(region: Arc<Region>, config: ProxyConfig) -> Result<(Arc<Context>, Server), Error> {
        let origin = match (
            config.settings.dfs_origin(),
            config.settings.origin_config(),
        ) {
            (Some(base), _) => Some(origin::Origin::dfs(base, config.settings.origin_timeout)?),
            (None, Some(origin_config)) => Some(origin::Origin::new(&origin_config)?),
            (None, None) => None,
        };
        let server_config = ServerConfig {
            listen: config.settings.listen,
            threads: config.settings.threads,
            max_threads: config.settings.max_threads,
            header_timeout: config.settings.header_timeout,
            send_timeout: config.settings.send_timeout,
            max_connections: config.settings.max_connections,
            backlog: config.settings.listen_backlog,
            reuse_port: config.reuse_port,
            http_listen: config.settings.http_listen,
            http_keepalive_timeout: config.settings.http_keepalive_timeout,
            http_max_requests_per_connection: config.settings.http_max_requests_per_connection,
            ..ServerConfig::default()
        };
        let ctx = Arc::new_cyclic(|myself| Context {
            myself: myself.clone(),
            rules: freshness::Rules::of(&config.settings),
            background_refreshes: request::Refreshing::default(),
            router: routing::Router::new(region.config().cache_slots, SUSPECT_PAUSE),
            stats: stats::Stats::new(Arc::clone(&region), Member::Proxy(config.slot)),
            flights: collapse::Flights::new(),
            fill_budget: Arc::new(fill::FillBudget::new(fill::FILL_BUDGET)),
            origin_warnings: warn_limit::WarnLimit::new(ORIGIN_WARN_INTERVAL),
            hot: hot::HotObjects::of(&config.settings),
            origin,
            config,
            region,
        });
        let handler = Arc::new(Frontend {
            ctx: Arc::clone(&ctx),
        });
        let server = Server::bind(server_config, handler)?;
        // A previous process in this slot may have left its counts; this one moves them from 0.
        ctx.stats.reset_connections();
        Ok((ctx, server))
    }
}

/// The GetFile handler: every request goes through [`request::handle`].
struct Frontend {
    ctx: Arc<Context>,
}

impl Frontend {
    fn count_http(&self, status: u16) {
        match metrics::Counter::http_status(status) {
            Some(counter) => self.ctx.stats.incr(counter),
            None => tracing::debug!(status, "an HTTP status without a counter"),
        }
    }
}

impl Handler for Frontend {
    fn handle(&self, request: &gfprotocol::Request, response: &mut ResponseWriter<'_>) {
        request::handle(&self.ctx, request, response);
        // The request path counted the cut response as aborted; this says why.
        if response.send_timed_out() {
            tracing::debug!(peer = %request.peer, path = %request.path, "client stopped reading: send timed out");
            self.ctx.stats.incr(metrics::Counter::SendTimeouts);
        }
    }

    fn answer_held(&self, path: &str, query: Option<&str>) -> Option<gfprotocol::HeldObject> {
        let hot = self.ctx.hot.as_ref()?;
        let key = request::cache_key(&self.ctx, path, query).ok()?;
        let held = hot.get(
            key.as_str(),
            self.ctx.region.content_epoch(),
            SystemTime::now(),
        );
        if held.is_some() {
            self.ctx.stats.incr(metrics::Counter::LookupHits);
            self.ctx.stats.incr(metrics::Counter::HotHits);
        }
        held
    }

    fn held_answered(&self, body_bytes: u64, elapsed: Duration) {
        self.ctx
            .stats
            .finished(stats::Outcome::Hit, elapsed, body_bytes);
    }

    fn held_send_timed_out(&self, peer: SocketAddr) {
        tracing::debug!(%peer, "client stopped reading a hot object: send timed out");
        self.ctx.stats.incr(metrics::Counter::SendTimeouts);
        self.ctx
            .stats
            .finished(stats::Outcome::Aborted, Duration::ZERO, 0);
    }

    fn header_timed_out(&self, peer: SocketAddr) {
        tracing::debug!(%peer, "request header not complete in time");
        self.ctx.stats.incr(metrics::Counter::HeaderTimeouts);
    }

    fn connection_moved(
        &self,
        left: Option<gfprotocol::ConnectionState>,
        entered: Option<gfprotocol::ConnectionState>,
    ) {
        self.ctx.stats.connection_moved(left, entered);
    }

    fn rejected(&self, peer: SocketAddr, reason: &gfprotocol::Malformed) {
        tracing::debug!(%peer, %reason, "invalid request");
        self.ctx.stats.incr(metrics::Counter::RequestsInvalid);
    }

    fn over_capacity(&self, peer: SocketAddr) {
        tracing::debug!(%peer, "connection refused: max_connections reached or out of descriptors");
        self.ctx.stats.incr(metrics::Counter::ConnectionsRefused);
    }

    fn http_refused(&self, peer: SocketAddr, status: u16) {
        tracing::debug!(%peer, status, "HTTP request refused");
        self.ctx.stats.incr(metrics::Counter::RequestsInvalid);
        self.count_http(status);
    }

    fn http_answered(&self, status: u16) {
        self.count_http(status);
    }
}

/// The thread that purges what a gfdfs origin says changed; stopped and joined on drop.
struct ChangeFollower {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ChangeFollower {
    /// Follows the origin's changes when it is a gfdfs server. Without a thread for it (the
    /// process is out of them) the proxy still serves, and says that changes are not followed.
    fn start(ctx: &Context) -> Option<ChangeFollower> {
        let dfs = ctx.origin.as_ref().and_then(origin::Origin::as_dfs)?;
        let stop = Arc::new(AtomicBool::new(false));
        let region = Arc::clone(&ctx.region);
        let timeout = ctx.config.settings.cache_timeout;
        match dfs.follow_changes(region, timeout, Arc::clone(&stop)) {
            Ok(thread) => Some(ChangeFollower {
                stop,
                thread: Some(thread),
            }),
            Err(error) => {
                tracing::error!(%error, "no thread to follow the dfs origin's changes: stored copies go stale only by their TTL");
                None
            }
        }
    }
}

impl Drop for ChangeFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A started proxy. Dropping it stops it and waits for its connections.
pub struct RunningProxy {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown: ShutdownHandle,
    thread: Option<thread::JoinHandle<Result<(), gfprotocol::Error>>>,
    done: mpsc::Receiver<()>,
    /// With a gfdfs origin: the purges of what it says changed.
    _changes: Option<ChangeFollower>,
    ctx: Arc<Context>,
}

impl RunningProxy {
    /// The bound address (the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound HTTP address, if `http_listen` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Origin fetches in progress that other requests may join (collapsing).
    pub fn flights_in_progress(&self) -> usize {
        self.ctx.flights.len()
    }

    /// Stops accepting connections and marks the member Draining; in-flight transfers go on.
    /// Idempotent.
    pub fn stop(&self) {
        let member = Member::Proxy(self.ctx.config.slot);
        if self.ctx.region.member_state(member) == MemberState::Ready {
            let pid = self.ctx.region.member_pid(member);
            self.ctx
                .region
                .set_member_state(member, MemberState::Draining, pid);
        }
        self.shutdown.shutdown();
    }

    /// Stops and waits for every connection to finish, then marks the member Down.
    pub fn join(mut self) -> Result<(), Error> {
        self.stop();
        self.finish()
    }

    /// Stops and waits up to `timeout` for the connections to finish. Returns whether they
    /// did; the member is marked Down either way (a transfer still going is cut when the
    /// process exits).
    pub fn join_timeout(mut self, timeout: Duration) -> Result<bool, Error> {
        self.stop();
        if self.done.recv_timeout(timeout).is_ok() {
            return self.finish().map(|()| true);
        }
        tracing::warn!(
            ?timeout,
            "in-flight transfers outlived the shutdown timeout"
        );
        self.mark_down();
        // Detach the server thread: the process is about to exit.
        self.thread = None;
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), Error> {
        let result = match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result.map_err(Error::Server),
                Err(_) => Err(Error::Server(gfprotocol::Error::Io(std::io::Error::other(
                    "the proxy server thread panicked",
                )))),
            },
            None => Ok(()),
        };
        self.mark_down();
        result
    }

    fn mark_down(&self) {
        let member = Member::Proxy(self.ctx.config.slot);
        self.ctx
            .region
            .set_member_state(member, MemberState::Down, 0);
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            if let Err(error) = self.finish() {
                tracing::warn!(%error, "proxy stopped with an error");
            }
        }
    }
}

/// How often [`run`] looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Runs a proxy process on an attached region until `stop` is set (the caller wires
/// SIGTERM/SIGINT to it): marks its member state Starting, binds, marks Ready, serves, then stops
/// accepting, drains in-flight transfers up to `drain_limit`, marks Down and returns.
pub fn run(
    region: Arc<Region>,
    config: ProxyConfig,
    stop: &AtomicBool,
    drain_limit: Duration,
) -> Result<(), Error> {
    let proxy = Proxy::start(region, config)?;
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(STOP_POLL);
    }
    tracing::info!("proxy draining");
    proxy.join_timeout(drain_limit).map(|_| ())
}
