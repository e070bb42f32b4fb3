//! Purge: removing objects from the caches of a running gfcache, one path or every path under a
//! prefix.
//!
//! Two ways in, one way out. `gfsupervisor purge` ([`crate::commands::purge`]) finds the running
//! supervisor through the run directory, attaches its shared memory region (the id is in the
//! status file) and calls [`purge`]; HTTP `PURGE` on `supervisor.metrics_listen` reaches
//! [`PurgeService::answer`] in the supervisor's metrics thread, which checks the peer against
//! [`PurgeAccess`] and calls [`purge`] on the supervisor's own region. Either way nothing touches a
//! backend's files: every cache slot that is up (member state Ready or Draining) gets an ipc
//! PURGE per target ([`ipc::Lease::purge`]) and removes what it holds itself. Every slot is asked,
//! not only the owner of a path, because a failover or a fill may have put the object elsewhere.
//!
//! [`PurgeOutcome`] says how many objects went and which caches did not answer, so the command
//! and the HTTP answer can say whether the purge is complete.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cache_backends::{BackendKind, CacheSettings};
use ipc::{MemberState, Region};
use proxy_core::path::CanonicalPath;
use proxy_core::purge::{purge_every_cache, PurgeKey};

/// How long one cache may take to answer one PURGE (a prefix in a large writable directory
/// walks every entry), and how long to wait for a free segment to send it in.
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many targets are named in a summary line.
const NAMED_TARGETS: usize = 5;

/// Why a purge was refused before anything was sent.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// A path or prefix that no cached object can have.
    #[error("bad path {path:?}: {reason}; nothing was purged")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// Neither a path nor a prefix.
    #[error("nothing to purge: give one or more paths (/dir/file), or --prefix PREFIX")]
    NothingToPurge,
    /// The running supervisor does not name its region.
    #[error("gfsupervisor (pid {pid}) does not publish its region id in {status} (an older version?); restart it, or send HTTP PURGE to its supervisor.metrics_listen")]
    NoRegion {
        /// The supervisor.
        pid: i32,
        /// Its status file.
        status: String,
    },
    /// The region could not be attached.
    #[error("cannot attach the shared memory of gfsupervisor (pid {pid}, region {region}): {source}; run `gfsupervisor purge` as the user that runs gfsupervisor, or send HTTP PURGE to its supervisor.metrics_listen")]
    Attach {
        /// The supervisor.
        pid: i32,
        /// The region id.
        region: String,
        /// The error.
        #[source]
        source: ipc::Error,
    },
}

/// What to remove: one object, or every object whose path starts with a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeTarget {
    /// The object at this canonical path.
    Path(String),
    /// Every object whose path starts with this (canonical, a trailing `/` kept).
    Prefix(String),
}

impl PurgeTarget {
    /// One path, checked and made canonical as the proxy makes the paths it caches under
    /// (`/a//b/./c` is `/a/b/c`).
    pub fn path(raw: &str) -> Result<PurgeTarget, PurgeError> {
        canonical(raw).map(PurgeTarget::Path)
    }

    /// A prefix, checked and made canonical like a path, except that a trailing `/` is kept:
    /// `/docs/` is what is under the directory, `/docs` also `/docs.txt` and `/docs2/a`.
    pub fn prefix(raw: &str) -> Result<PurgeTarget, PurgeError> {
        let mut path = canonical(raw)?;
        if raw.ends_with('/') && !path.ends_with('/') {
            path.push('/');
        }
        Ok(PurgeTarget::Prefix(path))
    }

    /// The path or prefix.
    pub fn as_str(&self) -> &str {
        match self {
            PurgeTarget::Path(p) | PurgeTarget::Prefix(p) => p,
        }
    }

    /// Whether it is a prefix.
    pub fn is_prefix(&self) -> bool {
        matches!(self, PurgeTarget::Prefix(_))
    }
}

impl std::fmt::Display for PurgeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PurgeTarget::Path(p) => f.write_str(p),
            PurgeTarget::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

fn canonical(raw: &str) -> Result<String, PurgeError> {
    let bad = |reason: String| PurgeError::BadPath {
        path: raw.to_string(),
        reason,
    };
    if !raw.starts_with('/') {
        return Err(bad(
            "a GetFile path starts with '/' (for example /dir/file.txt)".into(),
        ));
    }
    if raw.as_bytes().contains(&0) {
        return Err(bad("a path holds no NUL byte".into()));
    }
    match CanonicalPath::parse(raw) {
        Ok(path) => Ok(path.as_str().to_string()),
        Err(e) => Err(bad(format!(
            "{e} (the proxy caches no such path: GetFile paths hold no spaces or control bytes)"
        ))),
    }
}

/// The target of an HTTP `PURGE` request: the request target in origin form, its query
/// dropped and percent escapes decoded as the HTTP front end does (`%2F` and control bytes
/// refused); a raw `*` at the end makes it a prefix (`PURGE /img/*`), an escaped one (`%2A`) is
/// part of the name.
pub fn http_target(raw: &str) -> Result<PurgeTarget, PurgeError> {
    let bad = |reason: &str| PurgeError::BadPath {
        path: raw.to_string(),
        reason: reason.to_string(),
    };
    if !raw.starts_with('/') {
        return Err(bad(
            "the target must be a path starting with '/' (PURGE /dir/file, or PURGE /dir/* for a prefix)",
        ));
    }
    if raw.contains('#') {
        return Err(bad("a request target holds no fragment ('#')"));
    }
    let path = raw.split_once('?').map_or(raw, |(path, _query)| path);
    let (path, prefix) = match path.strip_suffix('*') {
        Some(stem) => (stem, true),
        None => (path, false),
    };
    // Decoded as the HTTP front end decodes a request path (one decoder for both).
    let decoded = gfprotocol::http::decode_path(path).map_err(|e| bad(&e.to_string()))?;
    if prefix {
        PurgeTarget::prefix(&decoded)
    } else {
        PurgeTarget::path(&decoded)
    }
}

/// Whether a cache with these settings keeps its objects while its process is down (a writable
/// directory): one that a purge could not reach empties itself before it serves again.
pub fn keeps_objects_when_down(settings: &CacheSettings) -> bool {
    settings.backend == Some(BackendKind::Directory)
        && settings.directory.as_ref().is_some_and(|d| d.writable)
}

pub use proxy_core::purge::{SlotAnswer, SlotReport};

/// The result of a purge over every cache slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// What was purged.
    pub targets: Vec<PurgeTarget>,
    /// Every cache slot, in slot order.
    pub slots: Vec<SlotReport>,
    /// The caches keep their objects while down (a writable directory): one that was not up
    /// empties itself before it serves again (the note says so).
    pub keeps_objects_when_down: bool,
}

impl PurgeOutcome {
    /// Objects removed, over every cache.
    pub fn removed(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.answer.removed())
            .fold(0, u64::saturating_add)
    }

    /// Caches that answered every target.
    pub fn answered(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.answer, SlotAnswer::Purged { .. }))
            .count()
    }

    /// The caches that may still serve a purged object: those that were up and did not answer.
    /// Each empties itself once it can (a purge that missed a cache is counted in the region
    /// and the cache makes up for it), but until then it serves what it holds. A cache that
    /// was not up is not among them: it makes up for the purge before it serves again.
    pub fn missed(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter_map(|s| match &s.answer {
                SlotAnswer::Failed { error, .. } => Some(format!(
                    "cache {} did not answer: {error}; it empties itself once it runs again",
                    s.slot
                )),
                SlotAnswer::Purged { .. } | SlotAnswer::NotUp { .. } => None,
            })
            .collect()
    }

    /// Whether every cache that may hold an object answered.
    pub fn complete(&self) -> bool {
        self.missed().is_empty()
    }

    /// `purged 3 objects (/a, /b) from 2 caches`.
    pub fn summary(&self) -> String {
        let removed = self.removed();
        let answered = self.answered();
        let mut named: Vec<String> = self
            .targets
            .iter()
            .take(NAMED_TARGETS)
            .map(ToString::to_string)
            .collect();
        if self.targets.len() > NAMED_TARGETS {
            named.push(format!("... {} in all", self.targets.len()));
        }
        format!(
            "purged {removed} object{} ({}) from {answered} cache{}",
            plural(removed),
            named.join(", "),
            plural(answered as u64)
        )
    }

    /// The summary, then a line for each cache that was not up (a note) or did not answer.
    pub fn render(&self) -> String {
        let mut out = self.summary();
        out.push('\n');
        for line in self.missed() {
            let _ = writeln!(out, "incomplete: {line}");
        }
        for s in &self.slots {
            if let SlotAnswer::NotUp { state } = s.answer {
                let why = if self.keeps_objects_when_down {
                    "it empties itself before it serves again"
                } else {
                    "it holds nothing until it runs again"
                };
                let _ = writeln!(
                    out,
                    "note: cache {} is {} and was not asked ({why})",
                    s.slot,
                    state_name(state)
                );
            }
        }
        out
    }

    /// The HTTP answer's body: `{"purged": 3, "caches": 2, "complete": true, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "purged": self.removed(),
            "caches": self.answered(),
            "complete": self.complete(),
            "targets": self.targets.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "prefix": self.targets.iter().any(PurgeTarget::is_prefix),
            "missed": self.missed(),
        })
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Down => "down",
        MemberState::Starting => "starting",
        MemberState::Ready => "ready",
        MemberState::Draining => "draining",
        MemberState::Quarantined => "quarantined",
        MemberState::Unavailable => "unavailable",
    }
}

/// Purges `targets` from every cache slot of `region` that is up (Ready or Draining), the slots
/// in parallel, each target in turn; a slot that fails one target is not asked the rest.
/// `timeout` bounds the wait for a segment and for each answer.
pub fn purge(
    region: &Region,
    targets: &[PurgeTarget],
    keeps_objects_when_down: bool,
    timeout: Duration,
) -> PurgeOutcome {
    let keys: Vec<PurgeKey<'_>> = targets
        .iter()
        .map(|target| PurgeKey {
            key: target.as_str(),
            prefix: target.is_prefix(),
        })
        .collect();
    let outcome = PurgeOutcome {
        targets: targets.to_vec(),
        slots: purge_every_cache(region, &keys, timeout),
        keeps_objects_when_down,
    };
    // The command reports the outcome on stdout; the supervisor logs it (PurgeService).
    tracing::debug!(
        removed = outcome.removed(),
        caches = outcome.answered(),
        complete = outcome.complete(),
        "purge"
    );
    outcome
}

/// Runs `f` with SIGINT, SIGTERM, SIGHUP and SIGQUIT held back (in this thread and the threads
/// it starts), so that a Ctrl-C during `gfsupervisor purge` lands only after every segment it
/// leased went back to the pool: only the supervisor's children are reclaimed when they die.
pub fn with_stop_signals_deferred<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(signal);
    }
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).is_ok();
    let out = f();
    if blocked {
        // A signal that came meanwhile is delivered here.
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    out
}

/// The directory of the run directory where each running `gfsupervisor purge` leaves a file
/// named after its pid while it has the region attached.
pub const CLIENTS_DIR: &str = "purge-clients";

/// The mark a `gfsupervisor purge` leaves in the run directory while it has the region attached
/// (`run_dir/purge-clients/<pid>`), so that the supervisor can reclaim its segments if it is
/// killed meanwhile ([`reclaim_departed_clients`]). Dropping it removes the file.
#[derive(Debug)]
pub struct ClientMark {
    path: std::path::PathBuf,
}

impl ClientMark {
    /// Leaves the mark of this process.
    pub fn new(run_dir: &std::path::Path) -> std::io::Result<ClientMark> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = run_dir.join(CLIENTS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let path = dir.join(std::process::id().to_string());
        std::fs::File::create(&path)?;
        Ok(ClientMark { path })
    }
}

impl Drop for ClientMark {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// In the supervisor: returns to the pool the segments of every `gfsupervisor purge` whose mark
/// is in `run_dir` but whose process is gone (killed with SIGKILL while it waited for a cache),
/// and removes its mark. Only a pid that names no process at all is reclaimed, so a live process
/// never loses a segment. Returns how many segments it touched.
pub fn reclaim_departed_clients(region: &Region, run_dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir.join(CLIENTS_DIR)) else {
        return 0;
    };
    let mut touched = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone {
            let reclaimed = region.reclaim_dead(pid);
            if reclaimed > 0 {
                tracing::warn!(
                    pid,
                    reclaimed,
                    "a gfsupervisor purge died holding segments: reclaimed"
                );
            }
            touched += reclaimed;
            let _ = std::fs::remove_file(entry.path());
        }
    }
    touched
}

/// Who may send HTTP `PURGE`: loopback peers (127.0.0.0/8, ::1) when `supervisor.purge_from`
/// is empty, else exactly the peers in its networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeAccess {
    networks: Vec<ipnet::IpNet>,
}

impl PurgeAccess {
    /// From `supervisor.purge_from` (empty: loopback only).
    pub fn new(networks: Vec<ipnet::IpNet>) -> PurgeAccess {
        PurgeAccess { networks }
    }

    /// Whether `peer` may purge. An IPv4 peer seen on an IPv6 socket (`::ffff:10.1.2.3`) is
    /// judged as the IPv4 address.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        if self.networks.is_empty() {
            peer.is_loopback()
        } else {
            self.networks.iter().any(|net| net.contains(&peer))
        }
    }

    /// `loopback only`, or the networks.
    pub fn describe(&self) -> String {
        if self.networks.is_empty() {
            "loopback only (supervisor.purge_from is empty)".to_string()
        } else {
            let nets: Vec<String> = self.networks.iter().map(ToString::to_string).collect();
            format!("supervisor.purge_from = {}", nets.join(", "))
        }
    }
}

/// HTTP PURGE answers by result, for `gfcache_purge_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeResult {
    /// 200: every cache that may hold the object answered.
    Ok,
    /// 503: some cache that may hold it did not answer.
    Incomplete,
    /// 400: a bad path.
    BadRequest,
    /// 403: a peer outside the allowed networks.
    Forbidden,
}

impl PurgeResult {
    /// Every result, in the order metrics list them.
    pub const ALL: [PurgeResult; 4] = [
        PurgeResult::Ok,
        PurgeResult::Incomplete,
        PurgeResult::BadRequest,
        PurgeResult::Forbidden,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeResult::Ok => "ok",
            PurgeResult::Incomplete => "incomplete",
            PurgeResult::BadRequest => "bad_request",
            PurgeResult::Forbidden => "forbidden",
        }
    }

    fn index(self) -> usize {
        match self {
            PurgeResult::Ok => 0,
            PurgeResult::Incomplete => 1,
            PurgeResult::BadRequest => 2,
            PurgeResult::Forbidden => 3,
        }
    }
}

/// An HTTP answer: status, body, content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
    /// Its content type.
    pub content_type: &'static str,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// HTTP `PURGE` in the supervisor: the region, who may purge, and the counts by result.
#[derive(Debug)]
pub struct PurgeService {
    region: Arc<Region>,
    access: RwLock<PurgeAccess>,
    keeps_objects_when_down: AtomicBool,
    answered: [AtomicU64; 4],
}

impl PurgeService {
    /// A service purging the caches of `region`.
    pub fn new(
        region: Arc<Region>,
        access: PurgeAccess,
        keeps_objects_when_down: bool,
    ) -> PurgeService {
        PurgeService {
            region,
            access: RwLock::new(access),
            keeps_objects_when_down: AtomicBool::new(keeps_objects_when_down),
            answered: Default::default(),
        }
    }

    /// Applies a reloaded config: who may purge, and whether the caches keep objects while
    /// down.
    pub fn reconfigure(&self, access: PurgeAccess, keeps_objects_when_down: bool) {
        *self.access.write().unwrap_or_else(PoisonError::into_inner) = access;
        self.keeps_objects_when_down
            .store(keeps_objects_when_down, Ordering::Relaxed);
    }

    /// HTTP PURGE answers so far with `result`.
    pub fn count(&self, result: PurgeResult) -> u64 {
        self.answered[result.index()].load(Ordering::Relaxed)
    }

    /// Answers `PURGE target` from `peer` (None: unknown, refused): [`PurgeService::admit`],
    /// then [`PurgeService::execute`].
    pub fn answer(&self, peer: Option<IpAddr>, target: &str) -> HttpAnswer {
        match self.admit(peer, target) {
            Ok(target) => self.execute(&target),
            Err(refusal) => refusal,
        }
    }

    /// The checks that need no cache, cheap enough for the metrics thread: the peer (403),
    /// then the path (400). A refusal is counted and returned as the answer.
    pub fn admit(&self, peer: Option<IpAddr>, target: &str) -> Result<PurgeTarget, HttpAnswer> {
        let access = self
            .access
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !peer.is_some_and(|p| access.allows(p)) {
            let shown = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(peer = %shown, target, "PURGE refused: peer not allowed");
            self.counted(PurgeResult::Forbidden);
            return Err(HttpAnswer {
                status: 403,
                body: format!(
                    "forbidden: PURGE from {shown} is not allowed ({})\n",
                    access.describe()
                ),
                content_type: TEXT,
            });
        }
        http_target(target).map_err(|e| {
            self.counted(PurgeResult::BadRequest);
            HttpAnswer {
                status: 400,
                body: format!("{e}\n"),
                content_type: TEXT,
            }
        })
    }

    /// Purges an admitted target from every cache that is up: 200 with the JSON outcome when
    /// it is complete, 503 with it when a cache that may hold the object did not answer.
    pub fn execute(&self, target: &PurgeTarget) -> HttpAnswer {
        let keeps = self.keeps_objects_when_down.load(Ordering::Relaxed);
        let outcome = purge(
            &self.region,
            std::slice::from_ref(target),
            keeps,
            PURGE_TIMEOUT,
        );
        let (result, status) = if outcome.complete() {
            tracing::info!(key = %target, removed = outcome.removed(), caches = outcome.answered(), "PURGE");
            (PurgeResult::Ok, 200)
        } else {
            tracing::warn!(key = %target, removed = outcome.removed(), missed = ?outcome.missed(), "PURGE incomplete");
            (PurgeResult::Incomplete, 503)
        };
        self.counted(result);
        HttpAnswer {
            status,
            body: format!("{}\n", outcome.to_json()),
            content_type: JSON,
        }
    }

    /// Answers 503 to an admitted purge that cannot be queued.
    pub fn busy(&self) -> HttpAnswer {
        self.counted(PurgeResult::Incomplete);
        HttpAnswer {
            status: 503,
            body: "too many purges waiting: nothing was purged; try again\n".to_string(),
            content_type: TEXT,
        }
    }

    fn counted(&self, result: PurgeResult) {
        self.answered[result.index()].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_made_canonical() {
        assert_eq!(
            PurgeTarget::path("/a//b/./c").unwrap(),
            PurgeTarget::Path("/a/b/c".into())
        );
        assert_eq!(
            PurgeTarget::prefix("/docs/").unwrap(),
            PurgeTarget::Prefix("/docs/".into())
        );
        assert_eq!(
            PurgeTarget::prefix("/").unwrap(),
            PurgeTarget::Prefix("/".into())
        );
        assert_eq!(
            PurgeTarget::prefix("/docs").unwrap(),
            PurgeTarget::Prefix("/docs".into())
        );
        for bad in ["a/b", "", "/a\0b", "/a b", "/../etc"] {
            let e = PurgeTarget::path(bad).unwrap_err();
            assert!(matches!(e, PurgeError::BadPath { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("nothing was purged"), "{e}");
        }
        assert!(PurgeTarget::path("relative")
            .unwrap_err()
            .to_string()
            .contains("starts with '/'"));
    }

    #[test]
    fn http_targets_decode_and_a_raw_star_is_a_prefix() {
        assert_eq!(
            http_target("/img/*").unwrap(),
            PurgeTarget::Prefix("/img/".into())
        );
        assert_eq!(
            http_target("/a.css?v=2").unwrap(),
            PurgeTarget::Path("/a.css".into()),
            "the query is dropped, as the front end drops it"
        );
        assert_eq!(
            http_target("/caf%C3%A9.txt?v=2").unwrap(),
            PurgeTarget::Path("/café.txt".into())
        );
        assert_eq!(
            http_target("/star%2A").unwrap(),
            PurgeTarget::Path("/star*".into())
        );
        for bad in [
            "*",
            "http://h/a",
            "/a%2Fb",
            "/a%0a",
            "/a%zz",
            "/a#f",
            "/a%FF",
            "/a%20b",
        ] {
            assert!(
                matches!(http_target(bad), Err(PurgeError::BadPath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn access_is_loopback_only_unless_networks_are_named() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let loopback = PurgeAccess::default();
        assert!(loopback.allows(ip("127.0.0.1")));
        assert!(loopback.allows(ip("127.9.9.9")));
        assert!(loopback.allows(ip("::1")));
        assert!(loopback.allows(ip("::ffff:127.0.0.1")));
        assert!(!loopback.allows(ip("10.0.0.1")));
        assert!(!loopback.allows(ip("::ffff:10.0.0.1")));
        let lan = PurgeAccess::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(lan.allows(ip("10.1.2.3")));
        assert!(lan.allows(ip("::ffff:10.1.2.3")));
        assert!(!lan.allows(ip("127.0.0.1")), "exactly the named networks");
        assert!(!lan.allows(ip("11.0.0.1")));
    }

    fn outcome(slots: Vec<SlotAnswer>, keeps: bool) -> PurgeOutcome {
        PurgeOutcome {
            targets: vec![
                PurgeTarget::Path("/a".into()),
                PurgeTarget::Prefix("/b/".into()),
            ],
            slots: slots
                .into_iter()
                .enumerate()
                .map(|(slot, answer)| SlotReport {
                    slot: slot as u32,
                    answer,
                })
                .collect(),
            keeps_objects_when_down: keeps,
        }
    }

    #[test]
    fn the_outcome_counts_and_says_what_was_missed() {
        let done = outcome(
            vec![
                SlotAnswer::Purged { removed: 2 },
                SlotAnswer::Purged { removed: 1 },
                SlotAnswer::NotUp {
                    state: MemberState::Quarantined,
                },
            ],
            false,
        );
        assert_eq!(done.summary(), "purged 3 objects (/a, /b/*) from 2 caches");
        assert!(done.complete());
        assert!(
            done.render().contains("note: cache 2 is quarantined"),
            "{}",
            done.render()
        );
        let kept = outcome(
            vec![
                SlotAnswer::Purged { removed: 1 },
                SlotAnswer::NotUp {
                    state: MemberState::Down,
                },
            ],
            true,
        );
        // A writable directory that was down empties itself before it serves again.
        assert!(kept.complete());
        assert!(
            kept.render().contains(
                "note: cache 1 is down and was not asked (it empties itself before it serves again)"
            ),
            "{}",
            kept.render()
        );
        let failed = outcome(
            vec![SlotAnswer::Failed {
                removed: 0,
                error: "timed out".into(),
            }],
            false,
        );
        assert!(!failed.complete());
        assert_eq!(
            failed.summary(),
            "purged 0 objects (/a, /b/*) from 0 caches"
        );
        assert_eq!(failed.to_json()["complete"], false);
        assert_eq!(
            failed.to_json()["missed"][0],
            "cache 0 did not answer: timed out; it empties itself once it runs again"
        );
    }

    #[test]
    fn a_region_without_caches_up_purges_nothing_and_http_checks_come_first() {
        let config = ipc::RegionConfig {
            segments: 2,
            segment_size: 16384,
            cache_slots: 2,
            proxy_slots: 1,
        };
        let region = Arc::new(Region::create(&config, None).unwrap());
        let service = PurgeService::new(Arc::clone(&region), PurgeAccess::default(), false);
        let local = Some("127.0.0.1".parse().unwrap());
        let answer = service.answer(local, "/a");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.body.contains("\"purged\":0"), "{answer:?}");
        assert_eq!(service.answer(local, "a").status, 400);
        assert_eq!(
            service
                .answer(Some("10.0.0.1".parse().unwrap()), "a")
                .status,
            403
        );
        assert_eq!(service.answer(None, "/a").status, 403);
        service.reconfigure(PurgeAccess::new(vec!["10.0.0.0/8".parse().unwrap()]), true);
        assert_eq!(service.answer(local, "/a").status, 403);
        let answer = service.answer(Some("10.0.0.1".parse().unwrap()), "/a");
        assert_eq!(
            answer.status, 200,
            "a writable directory cache down makes up for it when it starts: {answer:?}"
        );
        // Both purges missed both slots: each cache empties itself when it starts.
        for slot in 0..2 {
            let missed = region.missed_purges(ipc::Member::Cache(ipc::CacheSlot::from_raw(slot)));
            assert_eq!((missed.missed, missed.made_up), (2, 0));
        }
        assert_eq!(service.count(PurgeResult::Ok), 2);
        assert_eq!(service.count(PurgeResult::BadRequest), 1);
        assert_eq!(service.count(PurgeResult::Forbidden), 3);
        assert_eq!(service.count(PurgeResult::Incomplete), 0);
    }
}
