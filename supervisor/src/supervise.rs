//! The running supervisor: owns the run directory's ledger and the region, starts the children,
//! restarts them with backoff, quarantines crash loops, applies reloads, serves metrics, writes
//! the status file, and removes every IPC object on the way out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ipc::{Member, MemberState, Region};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::backoff::{Quarantine, RestartDecision, RestartTracker};
use crate::config::Config;
use crate::health::{Health, RunState, SlotView};
use crate::metrics::{ChildSample, MetricsServer, Role, Sample, SampleSource};
use crate::role::{self, ChildSpec};
use crate::status::{self, ChildStatus, ReloadStatus, ShownState, StatusReport};
use crate::Error;

/// How often the loop wakes up without a signal (readiness, backoff deadlines, status file).
const TICK: Duration = Duration::from_millis(50);
/// How often the status file is rewritten when nothing changed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Extra time a stopping child gets beyond `shutdown_timeout` before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// What the child process of a slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    /// Spawned; its member state is not Ready yet.
    Starting {
        pid: Pid,
        since: Instant,
        started_at: SystemTime,
    },
    /// Ready and serving.
    Running {
        pid: Pid,
        since: Instant,
        started_at: SystemTime,
    },
    /// Sent SIGTERM; `then` says what happens when it exits.
    Stopping {
        pid: Pid,
        since: Instant,
        started_at: SystemTime,
        then: AfterStop,
        killed: bool,
    },
    /// Died; started again at `until`.
    Backoff { until: Instant },
    /// Crash-looped; started again at `since + revive_after` or on reload.
    Quarantined { since: Instant },
    /// No process and none planned (shutdown).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterStop {
    /// Start it again at once with its (new) spec: a reload.
    Restart,
    /// Leave it stopped: shutdown.
    Exit,
    /// It failed (not ready in time): count it as a crash.
    Crash,
}

impl ChildState {
    fn pid(&self) -> Option<Pid> {
        match *self {
            ChildState::Starting { pid, .. }
            | ChildState::Running { pid, .. }
            | ChildState::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }
    fn started_at(&self) -> Option<SystemTime> {
        match *self {
            ChildState::Starting { started_at, .. }
            | ChildState::Running { started_at, .. }
            | ChildState::Stopping { started_at, .. } => Some(started_at),
            _ => None,
        }
    }
    /// The state `status` shows, before the member state is taken into account.
    fn shown(&self, crash_looping: bool) -> ShownState {
        match self {
            ChildState::Starting { .. } | ChildState::Backoff { .. } if crash_looping => {
                ShownState::CrashLooping
            }
            ChildState::Starting { .. } => ShownState::Starting,
            ChildState::Running { .. } => ShownState::Running,
            ChildState::Stopping { .. } => ShownState::Stopping,
            ChildState::Backoff { .. } => ShownState::Backoff,
            ChildState::Quarantined { .. } => ShownState::Quarantined,
            ChildState::Stopped => ShownState::Stopped,
        }
    }
}

/// One child slot.
struct Child {
    /// The settings its next process gets.
    spec: ChildSpec,
    /// The settings its current process runs with.
    running: Option<ChildSpec>,
    state: ChildState,
    restarts: u64,
    tracker: RestartTracker,
    /// Spawned at least once (the first start is not a restart).
    spawned: bool,
    /// Died past `max_restarts` in the window but may not be quarantined (the last proxy).
    crash_looping: bool,
    /// Has been running or has failed since the supervisor started: out of its first start.
    settled: bool,
}

impl Child {
    fn role(&self) -> Role {
        self.spec.role()
    }
    fn slot(&self) -> u32 {
        self.spec.slot()
    }
    fn member(&self) -> Member {
        self.spec.member()
    }
    fn name(&self) -> String {
        format!("{} {}", self.role().as_str(), self.slot())
    }
}

/// What the metrics thread sees of the children.
#[derive(Clone, Debug, Default)]
struct SharedView {
    children: Vec<ChildView>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// An origin is configured: it answers for any cache that cannot.
    origin: bool,
}

#[derive(Clone, Copy, Debug)]
struct ChildView {
    role: Role,
    slot: u32,
    /// From the supervisor's state machine alone (see [`LiveSource::slot`] for the member state).
    shown: ShownState,
    crash_looping: bool,
    settled: bool,
    restarts: u64,
}

/// The live [`SampleSource`]: the region's stats area plus the shared view.
struct LiveSource {
    region: Arc<Region>,
    view: Arc<Mutex<SharedView>>,
}

fn lock(view: &Mutex<SharedView>) -> MutexGuard<'_, SharedView> {
    view.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveSource {
    /// A child as it is now: a running process whose member state is Unavailable is shown
    /// unavailable, and only a running one whose member state is Ready answers.
    fn slot(&self, child: &ChildView) -> SlotView {
        let member_state = self
            .region
            .member_state(role::member(child.role, child.slot));
        let running = child.shown == ShownState::Running;
        let state = if running && member_state == MemberState::Unavailable {
            ShownState::Unavailable
        } else {
            child.shown
        };
        SlotView {
            role: child.role,
            slot: child.slot,
            state,
            answering: running && member_state == MemberState::Ready,
            settled: child.settled,
        }
    }

    fn health_of(&self, view: &SharedView) -> Health {
        let slots: Vec<SlotView> = view.children.iter().map(|c| self.slot(c)).collect();
        Health::assess(&slots, view.origin)
    }
}

impl SampleSource for LiveSource {
    fn sample(&self) -> Sample {
        let view = lock(&self.view).clone();
        let health = self.health_of(&view);
        let children = view
            .children
            .iter()
            .map(|c| {
                let slot = self.slot(c);
                ChildSample {
                    role: c.role,
                    slot: c.slot,
                    state: slot.state,
                    up: slot.answering,
                    crash_looping: c.crash_looping,
                    restarts: c.restarts,
                    stats: self.region.stats_snapshot(role::member(c.role, c.slot)),
                }
            })
            .collect();
        Sample {
            children,
            segments: self.region.segment_counts(),
            reloads_ok: view.reloads_ok,
            reloads_failed: view.reloads_failed,
            health,
        }
    }
    fn health(&self) -> Health {
        let view = lock(&self.view).clone();
        self.health_of(&view)
    }
}

/// Runs `gfsupervisor start`: in the foreground until SIGTERM or SIGINT. Returns after every
/// child stopped and every IPC object of the run was removed.
pub fn start(config_path: &Path) -> Result<(), Error> {
    let config = Config::load(config_path)?;
    let run_dir = config.supervisor.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|source| Error::RunDir {
        dir: run_dir.clone(),
        source,
    })?;
    if let (Some(cache_backends::BackendKind::Directory), Some(directory)) = (
        config.cache.settings.backend,
        &config.cache.settings.directory,
    ) {
        if let (Some(root), true) = (&directory.root, directory.writable) {
            std::fs::create_dir_all(root).map_err(|source| Error::RunDir {
                dir: root.clone(),
                source,
            })?;
        }
    }
    let swept = ipc::sweep(&run_dir).map_err(|e| locked_or(e, &run_dir))?;
    if !swept.removed.is_empty() || !swept.skipped.is_empty() {
        tracing::warn!(removed = swept.removed.len(), skipped = swept.skipped.len(), run_dir = %run_dir.display(), "swept the IPC objects of a previous run that died");
    }
    let mut ledger = ipc::Ledger::open(&run_dir).map_err(|e| locked_or(e, &run_dir))?;
    // The same checks as check-config, once the run directory is ours: a second start is
    // "already running", not "cannot listen".
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    let issues = config.check_environment(&text, &[]);
    if !issues.is_empty() {
        let _ = ledger.close();
        return Err(crate::ConfigError::Invalid {
            path: config_path.to_path_buf(),
            issues,
        }
        .into());
    }
    let region = match Region::create(&config.region_config(), Some(&mut ledger)) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            let _ = ledger.close();
            return Err(e.into());
        }
    };
    tracing::info!(pid = std::process::id(), config = %config.source.display(), run_dir = %run_dir.display(), region = %region.id(), "gfsupervisor starting");
    let outcome = Supervisor::new(config, Arc::clone(&region)).and_then(Supervisor::run);
    drop(region);
    let _ = std::fs::remove_file(status::status_path(&run_dir));
    match ledger.close() {
        Ok(report) => tracing::info!(
            removed = report.removed.len(),
            "removed the IPC objects of this run"
        ),
        Err(e) => {
            tracing::error!(error = %e, "could not remove every IPC object; `gfsupervisor cleanup` will retry")
        }
    }
    outcome
}

/// `RunDirLocked` becomes the user-facing "already running" error.
pub(crate) fn locked_or(e: ipc::Error, run_dir: &Path) -> Error {
    match e {
        ipc::Error::RunDirLocked { pid, .. } => Error::AlreadyRunning {
            dir: run_dir.to_path_buf(),
            pid,
        },
        other => Error::Ipc(other),
    }
}

struct Supervisor {
    config: Config,
    region: Arc<Region>,
    children: Vec<Child>,
    view: Arc<Mutex<SharedView>>,
    signals: Receiver<i32>,
    metrics: Option<MetricsServer>,
    exe: PathBuf,
    started: Instant,
    started_at: SystemTime,
    ready_notified: bool,
    not_ready_logged: bool,
    /// The run state last logged, to log each change once.
    run_state: Option<RunState>,
    rolling: VecDeque<usize>,
    rolling_current: Option<usize>,
    last_reload: Option<ReloadStatus>,
    status_dirty: bool,
    status_written: Option<Instant>,
}

impl Supervisor {
    fn new(config: Config, region: Arc<Region>) -> Result<Supervisor, Error> {
        let rx = watch_signals()?;
        let exe = std::env::current_exe().map_err(|source| Error::Os {
            op: "current_exe",
            source,
        })?;
        let children = child_specs(&config)
            .into_iter()
            .map(|spec| Child {
                spec,
                running: None,
                state: ChildState::Stopped,
                restarts: 0,
                tracker: RestartTracker::new(),
                spawned: false,
                crash_looping: false,
                settled: false,
            })
            .collect();
        let view = Arc::new(Mutex::new(SharedView::default()));
        let mut sup = Supervisor {
            config,
            region,
            children,
            view,
            signals: rx,
            metrics: None,
            exe,
            started: Instant::now(),
            started_at: SystemTime::now(),
            ready_notified: false,
            not_ready_logged: false,
            run_state: None,
            rolling: VecDeque::new(),
            rolling_current: None,
            last_reload: None,
            status_dirty: true,
            status_written: None,
        };
        sup.publish_view();
        if let Some(addr) = sup.config.supervisor.metrics_listen {
            let source = Arc::new(LiveSource {
                region: Arc::clone(&sup.region),
                view: Arc::clone(&sup.view),
            });
            let purge = Arc::new(crate::purge::PurgeService::new(
                Arc::clone(&sup.region),
                crate::purge::PurgeAccess::new(sup.config.supervisor.purge_networks()),
                crate::purge::keeps_objects_when_down(&sup.config.cache.settings),
            ));
            let server = MetricsServer::start_with_purge(addr, source, Some(purge))?;
            tracing::info!(addr = %server.addr(), "serving /metrics, /healthz, /readyz and PURGE");
            sup.metrics = Some(server);
        }
        Ok(sup)
    }

    fn run(mut self) -> Result<(), Error> {
        // Caches first, so that the proxy finds them ready.
        let order: Vec<usize> = (0..self.children.len())
            .filter(|&i| self.children[i].role() == Role::Cache)
            .chain((0..self.children.len()).filter(|&i| self.children[i].role() == Role::Proxy))
            .collect();
        for i in order {
            self.spawn(i);
        }
        let mut shutdown = false;
        while !shutdown {
            let mut reload = false;
            match self.signals.recv_timeout(TICK) {
                Ok(signal) => self.on_signal(signal, &mut shutdown, &mut reload),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => shutdown = true,
            }
            while let Ok(signal) = self.signals.try_recv() {
                self.on_signal(signal, &mut shutdown, &mut reload);
            }
            self.reap();
            if shutdown {
                break;
            }
            if reload {
                self.reload();
            }
            self.tick();
        }
        self.shutdown();
        Ok(())
    }

    fn on_signal(&self, signal: i32, shutdown: &mut bool, reload: &mut bool) {
        const SIGHUP: i32 = Signal::SIGHUP as i32;
        const SIGINT: i32 = Signal::SIGINT as i32;
        const SIGTERM: i32 = Signal::SIGTERM as i32;
        match signal {
            SIGTERM | SIGINT => {
                tracing::info!(signal = signal_name(signal), "shutdown requested");
                *shutdown = true;
            }
            SIGHUP => *reload = true,
            _ => {}
        }
    }

    // -- children ------------------------------------------------------------------------------

    fn spawn(&mut self, index: usize) {
        let region_id = self.region.id().to_string();
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        let spec_json = match serde_json::to_string(&child.spec) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(child = %child.name(), error = %e, "cannot encode the child spec");
                return;
            }
        };
        self.region
            .set_member_state(child.member(), MemberState::Down, 0);
        if let ChildSpec::Cache { slot, cache, .. } = &child.spec {
            // Tells the proxies whether the other caches can answer for this one.
            proxy_core::routing::set_shares_data(
                &self.region,
                ipc::CacheSlot::from_raw(*slot),
                cache.is_shared(),
            );
        }
        let spawned = Command::new(&self.exe)
            .args([
                "role",
                child.role().as_str(),
                "--slot",
                &child.slot().to_string(),
            ])
            .env(role::ENV_REGION, &region_id)
            .env(role::ENV_SUPERVISOR_PID, std::process::id().to_string())
            .env(role::ENV_CHILD_SPEC, spec_json)
            .stdin(Stdio::null())
            // Own process group: a Ctrl-C in the terminal reaches the supervisor only, which then
            // stops the children in order (proxy first).
            .process_group(0)
            .spawn();
        let restart = child.spawned;
        child.spawned = true;
        if restart {
            child.restarts += 1;
        }
        let now = Instant::now();
        match spawned {
            Ok(process) => {
                let pid = Pid::from_raw(i32::try_from(process.id()).unwrap_or(i32::MAX));
                child.state = ChildState::Starting {
                    pid,
                    since: now,
                    started_at: SystemTime::now(),
                };
                child.running = Some(child.spec.clone());
                if restart {
                    tracing::info!(child = %child.name(), pid = pid.as_raw(), restarts = child.restarts, backend = child.spec.backend_kind(), "restarted child");
                } else {
                    tracing::info!(child = %child.name(), pid = pid.as_raw(), backend = child.spec.backend_kind(), "started child");
                }
            }
            Err(e) => {
                tracing::error!(child = %child.name(), error = %e, exe = %self.exe.display(), "cannot start child");
                child.running = None;
                self.after_crash(index, now, Duration::ZERO);
            }
        }
        self.status_dirty = true;
        self.publish_view();
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => self.on_exit(pid, Exit::Signal(signal)),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: Pid, exit: Exit) {
        let Some(index) = self
            .children
            .iter()
            .position(|c| c.state.pid() == Some(pid))
        else {
            tracing::debug!(pid = pid.as_raw(), "reaped an unknown process");
            return;
        };
        let now = Instant::now();
        let child = &mut self.children[index];
        let member = child.member();
        self.region.set_member_state(member, MemberState::Down, 0);
        let reclaimed = self.region.reclaim_dead(pid.as_raw());
        child.running = None;
        let lived = match child.state {
            ChildState::Starting { since, .. }
            | ChildState::Running { since, .. }
            | ChildState::Stopping { since, .. } => now.duration_since(since),
            _ => Duration::ZERO,
        };
        match child.state {
            ChildState::Stopping {
                then: AfterStop::Restart,
                ..
            } => {
                tracing::info!(child = %child.name(), pid = pid.as_raw(), exit = %exit, reclaimed, "child stopped for reload");
                self.status_dirty = true;
                self.spawn(index);
                return;
            }
            ChildState::Stopping {
                then: AfterStop::Exit,
                ..
            } => {
                tracing::info!(child = %child.name(), pid = pid.as_raw(), exit = %exit, reclaimed, "child stopped");
                child.state = ChildState::Stopped;
            }
            _ => {
                tracing::warn!(child = %child.name(), pid = pid.as_raw(), exit = %exit, lived_ms = lived.as_millis() as u64, reclaimed, "child died");
                self.after_crash(index, now, lived);
            }
        }
        self.status_dirty = true;
        self.publish_view();
    }

    /// Decides what follows a crash of child `index`: a restart after the backoff, quarantine,
    /// or, for the last proxy (quarantine would leave nothing to serve), a restart after the
    /// capped backoff.
    fn after_crash(&mut self, index: usize, now: Instant, lived: Duration) {
        let quarantine = if self.is_last_of_its_role(index) {
            Quarantine::Forbidden
        } else {
            Quarantine::Allowed
        };
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        child.settled = true;
        let decision = child.tracker.on_exit(
            &self.config.supervisor.backoff,
            now,
            lived,
            fastrand::f64(),
            quarantine,
        );
        apply_decision(child, decision, now, &self.region);
    }

    /// Whether child `index` is a proxy and every other proxy is quarantined or crash-looping
    /// itself, so that quarantining it would leave no proxy that could serve.
    fn is_last_of_its_role(&self, index: usize) -> bool {
        let Some(child) = self.children.get(index) else {
            return false;
        };
        child.role() == Role::Proxy
            && self.children.iter().enumerate().all(|(i, other)| {
                i == index
                    || other.role() != Role::Proxy
                    || other.crash_looping
                    || matches!(other.state, ChildState::Quarantined { .. })
            })
    }

    fn signal(child: &Child, signal: Signal) {
        if let Some(pid) = child.state.pid() {
            if let Err(e) = kill(pid, signal) {
                tracing::debug!(child = %child.name(), pid = pid.as_raw(), error = %e, "kill failed (already gone?)");
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let policy = self.config.supervisor.backoff;
        let kill_after = self.config.supervisor.shutdown_timeout + KILL_GRACE;
        let ready_timeout = self.config.supervisor.ready_timeout;
        let mut to_spawn = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            match child.state {
                ChildState::Starting {
                    pid,
                    since,
                    started_at,
                } => {
                    // Unavailable is an answer too: the process runs and says it cannot serve
                    // (its data is damaged); it is not killed for it, and readiness tells.
                    let member_state = self.region.member_state(child.member());
                    if matches!(member_state, MemberState::Ready | MemberState::Unavailable) {
                        if member_state == MemberState::Ready {
                            tracing::info!(child = %child.name(), pid = pid.as_raw(), startup_ms = now.duration_since(since).as_millis() as u64, "child ready");
                        } else {
                            tracing::warn!(child = %child.name(), pid = pid.as_raw(), "child runs but cannot answer (unavailable)");
                        }
                        child.state = ChildState::Running {
                            pid,
                            since,
                            started_at,
                        };
                        child.settled = true;
                        self.status_dirty = true;
                    } else if now.duration_since(since) > ready_timeout {
                        tracing::warn!(child = %child.name(), pid = pid.as_raw(), "child not ready in time; killing it");
                        Self::signal(child, Signal::SIGKILL);
                        child.state = ChildState::Stopping {
                            pid,
                            since,
                            started_at,
                            then: AfterStop::Crash,
                            killed: true,
                        };
                    }
                }
                ChildState::Stopping {
                    pid,
                    since,
                    started_at,
                    then,
                    killed: false,
                } if now.duration_since(since) > kill_after => {
                    tracing::warn!(child = %child.name(), pid = pid.as_raw(), "child did not stop in time; sending SIGKILL");
                    Self::signal(child, Signal::SIGKILL);
                    child.state = ChildState::Stopping {
                        pid,
                        since,
                        started_at,
                        then,
                        killed: true,
                    };
                }
                ChildState::Running { pid, since, .. }
                    if child.crash_looping && now.duration_since(since) >= policy.reset_after =>
                {
                    tracing::info!(child = %child.name(), pid = pid.as_raw(), "child no longer crash-loops");
                    child.crash_looping = false;
                    self.status_dirty = true;
                }
                ChildState::Backoff { until } if now >= until => to_spawn.push(i),
                ChildState::Quarantined { since }
                    if now.duration_since(since) >= policy.revive_after =>
                {
                    tracing::info!(child = %child.name(), "reviving quarantined slot");
                    child.tracker.reset();
                    child.crash_looping = false;
                    to_spawn.push(i);
                }
                _ => {}
            }
        }
        for i in to_spawn {
            self.spawn(i);
        }
        self.advance_rolling();
        self.publish_view();
        self.check_ready(now);
        self.write_status_if_due(now);
    }

    fn check_ready(&mut self, now: Instant) {
        let source = LiveSource {
            region: Arc::clone(&self.region),
            view: Arc::clone(&self.view),
        };
        let health = source.health();
        self.log_run_state(&health);
        if self.ready_notified || !health.state.serving() {
            if !self.ready_notified
                && !self.not_ready_logged
                && now.duration_since(self.started) > self.config.supervisor.ready_timeout
            {
                tracing::warn!(waited = ?self.config.supervisor.ready_timeout, state = %health.summary(), "not ready yet");
                self.not_ready_logged = true;
            }
            return;
        }
        self.ready_notified = true;
        self.status_dirty = true;
        tracing::info!(startup_ms = now.duration_since(self.started).as_millis() as u64, listen = %self.config.proxy.settings.listen, state = %health.summary(), "gfsupervisor ready");
        match crate::notify::notify("READY=1") {
            Ok(true) => tracing::debug!("told systemd READY=1"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot notify systemd"),
        }
    }

    /// Logs each change of the run state once it is out of its first start (the degraded and
    /// not-ready states name the slots that do not answer).
    fn log_run_state(&mut self, health: &Health) {
        if health.reason == Some("starting") || self.run_state == Some(health.state) {
            return;
        }
        let first = self.run_state.is_none();
        self.run_state = Some(health.state);
        self.status_dirty = true;
        match health.state {
            RunState::Ready if first => {}
            RunState::Ready => tracing::info!("run ready again: every slot answers"),
            RunState::Degraded => tracing::warn!(state = %health.summary(), "run degraded"),
            RunState::NotReady => tracing::error!(state = %health.summary(), "run cannot serve"),
        }
    }

    fn publish_view(&self) {
        let children = self
            .children
            .iter()
            .map(|c| ChildView {
                role: c.role(),
                slot: c.slot(),
                shown: c.state.shown(c.crash_looping),
                crash_looping: c.crash_looping,
                settled: c.settled,
                restarts: c.restarts,
            })
            .collect();
        let mut view = lock(&self.view);
        view.children = children;
        view.origin = self.config.proxy.settings.origin.is_some();
    }

    // -- reload --------------------------------------------------------------------------------

    /// The addresses this supervisor and its proxies listen on, which a reload may keep.
    fn held_addresses(&self) -> Vec<SocketAddr> {
        let mut held = vec![self.config.proxy.settings.listen];
        held.extend(self.config.proxy.settings.http_listen);
        held.extend(self.config.supervisor.metrics_listen);
        held
    }

    fn reload(&mut self) {
        let sequence = self.last_reload.as_ref().map_or(1, |r| r.sequence + 1);
        tracing::info!(config = %self.config.source.display(), "reloading the config");
        let held = self.held_addresses();
        let new = match Config::load_checked(&self.config.source, &held) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload rejected; the running config stays: {e}");
                lock(&self.view).reloads_failed += 1;
                self.last_reload = Some(ReloadStatus {
                    sequence,
                    ok: false,
                    message: e.to_string(),
                });
                self.status_dirty = true;
                return;
            }
        };
        let (applied, notes) = plan_reload(&self.config, new);
        for note in &notes {
            tracing::warn!("reload: {note}");
        }
        let specs = child_specs(&applied);
        let now = Instant::now();
        let mut revived = 0;
        for (child, spec) in self.children.iter_mut().zip(specs) {
            child.spec = spec;
            if matches!(child.state, ChildState::Quarantined { .. }) {
                child.tracker.reset();
                child.crash_looping = false;
                child.state = ChildState::Backoff { until: now };
                revived += 1;
            }
        }
        self.config = applied;
        if let Some(purge) = self.metrics.as_ref().and_then(MetricsServer::purge_service) {
            purge.reconfigure(
                crate::purge::PurgeAccess::new(self.config.supervisor.purge_networks()),
                crate::purge::keeps_objects_when_down(&self.config.cache.settings),
            );
        }
        // Caches one at a time first (the proxy keeps serving, falling back to the origin), then
        // the proxies.
        let stale = |c: &Child| {
            c.state.pid().is_some()
                && c.running
                    .as_ref()
                    .is_some_and(|r| r.needs_restart_for(&c.spec))
        };
        let caches = (0..self.children.len())
            .filter(|&i| self.children[i].role() == Role::Cache && stale(&self.children[i]));
        let proxies = (0..self.children.len())
            .filter(|&i| self.children[i].role() == Role::Proxy && stale(&self.children[i]));
        self.rolling = caches
            .chain(proxies)
            .filter(|&i| Some(i) != self.rolling_current)
            .collect();
        let restarting = self.rolling.len() + usize::from(self.rolling_current.is_some());
        let mut message = format!(
            "applied; backend {}; restarting {restarting} children one at a time",
            self.config.cache.backend_kind()
        );
        if revived > 0 {
            message.push_str(&format!("; reviving {revived} quarantined"));
        }
        for note in &notes {
            message.push_str("; ");
            message.push_str(note);
        }
        tracing::info!("reload {message}");
        lock(&self.view).reloads_ok += 1;
        self.last_reload = Some(ReloadStatus {
            sequence,
            ok: true,
            message,
        });
        self.status_dirty = true;
    }

    fn advance_rolling(&mut self) {
        loop {
            if let Some(current) = self.rolling_current {
                match self.children.get(current).map(|c| c.state) {
                    Some(ChildState::Starting { .. } | ChildState::Stopping { .. }) => return,
                    _ => self.rolling_current = None,
                }
            }
            let Some(next) = self.rolling.pop_front() else {
                return;
            };
            let Some(child) = self.children.get_mut(next) else {
                continue;
            };
            if !child
                .running
                .as_ref()
                .is_some_and(|r| r.needs_restart_for(&child.spec))
            {
                continue;
            }
            if let ChildState::Starting {
                pid,
                since: _,
                started_at,
            }
            | ChildState::Running {
                pid,
                since: _,
                started_at,
            } = child.state
            {
                tracing::info!(child = %child.name(), pid = pid.as_raw(), backend = child.spec.backend_kind(), "reload: restarting child with the new settings");
                Self::signal(child, Signal::SIGTERM);
                child.state = ChildState::Stopping {
                    pid,
                    since: Instant::now(),
                    started_at,
                    then: AfterStop::Restart,
                    killed: false,
                };
                self.rolling_current = Some(next);
                self.status_dirty = true;
                return;
            }
        }
    }

    // -- shutdown ------------------------------------------------------------------------------

    fn shutdown(&mut self) {
        if let Err(e) = crate::notify::notify("STOPPING=1") {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
        tracing::info!("stopping: proxies first (they drain), then caches");
        for child in &mut self.children {
            if matches!(
                child.state,
                ChildState::Backoff { .. } | ChildState::Quarantined { .. }
            ) {
                child.state = ChildState::Stopped;
            }
        }
        self.stop_role(Role::Proxy);
        self.stop_role(Role::Cache);
        self.status_dirty = true;
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        tracing::info!("every child stopped");
    }

    fn stop_role(&mut self, role: Role) {
        let now = Instant::now();
        for child in self.children.iter_mut().filter(|c| c.role() == role) {
            if let Some(pid) = child.state.pid() {
                Self::signal(child, Signal::SIGTERM);
                let started_at = child.state.started_at().unwrap_or_else(SystemTime::now);
                child.state = ChildState::Stopping {
                    pid,
                    since: now,
                    started_at,
                    then: AfterStop::Exit,
                    killed: false,
                };
            }
        }
        let deadline = now + self.config.supervisor.shutdown_timeout + KILL_GRACE;
        let mut killed = false;
        loop {
            self.reap();
            let alive = self
                .children
                .iter()
                .any(|c| c.role() == role && c.state.pid().is_some());
            if !alive {
                return;
            }
            let impatient = matches!(self.signals.try_recv(), Ok(s) if s == Signal::SIGINT as i32 || s == Signal::SIGTERM as i32);
            if !killed && (impatient || Instant::now() >= deadline) {
                tracing::warn!(
                    role = role.as_str(),
                    "children did not stop in time; sending SIGKILL"
                );
                for child in self.children.iter().filter(|c| c.role() == role) {
                    Self::signal(child, Signal::SIGKILL);
                }
                killed = true;
            }
            self.write_status_if_due(Instant::now());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // -- status file ---------------------------------------------------------------------------

    fn write_status_if_due(&mut self, now: Instant) {
        let due = self
            .status_written
            .is_none_or(|t| now.duration_since(t) >= STATUS_EVERY);
        if !self.status_dirty && !due {
            return;
        }
        crate::purge::reclaim_departed_clients(&self.region, &self.config.supervisor.run_dir);
        let report = self.status_report();
        if let Err(e) = report.write_atomically(&self.config.supervisor.run_dir) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
        self.status_dirty = false;
        self.status_written = Some(now);
    }

    fn status_report(&self) -> StatusReport {
        let now = status::unix_now();
        let started = status::unix_seconds(self.started_at);
        let source = LiveSource {
            region: Arc::clone(&self.region),
            view: Arc::clone(&self.view),
        };
        let view = lock(&self.view).clone();
        let health = source.health_of(&view);
        let children = self
            .children
            .iter()
            .zip(&view.children)
            .map(|(c, seen)| {
                let started_at = c.state.started_at().map(status::unix_seconds);
                let stats = self.region.stats_snapshot(c.member());
                ChildStatus {
                    role: c.role().as_str().to_string(),
                    slot: c.slot(),
                    pid: c.state.pid().map(Pid::as_raw),
                    state: source.slot(seen).state,
                    uptime_seconds: started_at.map_or(0.0, |s| (now - s).max(0.0)),
                    started_at_unix: started_at,
                    restarts: c.restarts,
                    requests: crate::metrics::requests_served(c.role(), &stats),
                    backend: c
                        .running
                        .as_ref()
                        .unwrap_or(&c.spec)
                        .backend_kind()
                        .map(str::to_string),
                    crash_looping: c.crash_looping,
                }
            })
            .collect();
        StatusReport {
            pid: i32::try_from(std::process::id()).unwrap_or(0),
            started_at_unix: started,
            uptime_seconds: (now - started).max(0.0),
            updated_at_unix: now,
            config: self.config.source.clone(),
            backend: self.config.cache.backend_kind().to_string(),
            listen: self.config.proxy.settings.listen.to_string(),
            metrics_listen: self.metrics.as_ref().map(|m| m.addr().to_string()),
            region: Some(self.region.id().to_string()),
            ready: health.state.serving(),
            state: health.state,
            reason: health.reason.map(str::to_string),
            not_answering: health.not_answering,
            last_reload: self.last_reload.clone(),
            children,
        }
    }
}

fn apply_decision(child: &mut Child, decision: RestartDecision, now: Instant, region: &Region) {
    match decision {
        RestartDecision::RetryAfter(delay) => {
            tracing::info!(child = %child.name(), delay_ms = delay.as_millis() as u64, "restarting after backoff");
            child.state = ChildState::Backoff { until: now + delay };
        }
        RestartDecision::Quarantine => {
            tracing::error!(child = %child.name(), crashes = child.tracker.recent_crashes(), "slot crash-loops; quarantined");
            region.set_member_state(child.member(), MemberState::Quarantined, 0);
            child.state = ChildState::Quarantined { since: now };
        }
        RestartDecision::CrashLoop(delay) => {
            tracing::error!(child = %child.name(), crashes = child.tracker.recent_crashes(), delay_ms = delay.as_millis() as u64, "slot crash-loops, but it is the last proxy: not quarantined, restarting after the capped backoff");
            child.crash_looping = true;
            child.state = ChildState::Backoff { until: now + delay };
        }
    }
}

/// The config a reload applies, and notes on the changes it cannot apply live (those settings
/// keep their running values).
fn plan_reload(old: &Config, new: Config) -> (Config, Vec<String>) {
    let mut notes = Vec::new();
    let mut applied = new;
    let mut keep = |changed: bool, what: &str| {
        if changed {
            notes.push(format!(
                "{what} needs a full restart (stop, then start): not applied"
            ));
        }
        changed
    };
    if keep(applied.ipc != old.ipc, "ipc.segments / ipc.segment_size") {
        applied.ipc = old.ipc;
    }
    if keep(
        applied.cache.processes != old.cache.processes,
        "cache.processes",
    ) {
        applied.cache.processes = old.cache.processes;
    }
    if keep(
        applied.proxy.processes != old.proxy.processes,
        "proxy.processes",
    ) {
        applied.proxy.processes = old.proxy.processes;
    }
    if keep(
        applied.supervisor.run_dir != old.supervisor.run_dir,
        "supervisor.run_dir",
    ) {
        applied.supervisor.run_dir = old.supervisor.run_dir.clone();
    }
    if keep(
        applied.supervisor.metrics_listen != old.supervisor.metrics_listen,
        "supervisor.metrics_listen",
    ) {
        applied.supervisor.metrics_listen = old.supervisor.metrics_listen;
    }
    (applied, notes)
}

/// The specs of every child slot of a config: proxies first, then caches.
fn child_specs(config: &Config) -> Vec<ChildSpec> {
    let shutdown_timeout = config.supervisor.shutdown_timeout;
    let proxies = (0..config.proxy.processes).map(|slot| ChildSpec::Proxy {
        slot,
        reuse_port: config.proxy.processes > 1,
        proxy: Box::new(config.proxy.settings.clone()),
        shutdown_timeout,
    });
    let caches = (0..config.cache.processes).map(|slot| ChildSpec::Cache {
        slot,
        cache: config.cache.settings.clone(),
        shutdown_timeout,
    });
    proxies.chain(caches).collect()
}

/// How a child ended.
#[derive(Clone, Copy, Debug)]
enum Exit {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "killed by {}", signal.as_str()),
        }
    }
}

/// The signals the supervisor acts on, as a channel: they are blocked in this thread (and so in
/// every thread it starts later) and taken by one thread with sigwait(2), so no handler runs
/// and nothing is lost between two waits. The children unblock them again after exec
/// ([`role::run_role`]).
fn watch_signals() -> Result<Receiver<i32>, Error> {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(|e| {
        Error::Os {
            op: "pthread_sigmask",
            source: e.into(),
        }
    })?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if tx.send(signal as i32).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| Error::Os {
            op: "spawn the signal thread",
            source,
        })?;
    Ok(rx)
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("unknown signal", Signal::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = std::env::temp_dir();
        Config::parse(text, &dir.join("t.toml"), &dir).unwrap()
    }

    const BASE: &str = "[proxy]\nlisten = \"127.0.0.1:1\"\n[ipc]\nsegments = 8\n[cache]\nbackend = \"memory\"\nmemory = { capacity = \"1MiB\" }\n";

    #[test]
    fn specs_cover_every_slot() {
        let c = config(&BASE.replace("[cache]", "[cache]\nprocesses = 3"));
        let specs = child_specs(&c);
        let roles: Vec<(Role, u32)> = specs.iter().map(|s| (s.role(), s.slot())).collect();
        assert_eq!(
            roles,
            vec![
                (Role::Proxy, 0),
                (Role::Cache, 0),
                (Role::Cache, 1),
                (Role::Cache, 2)
            ]
        );
        assert_eq!(specs[1].backend_kind(), Some("memory"));
        assert_eq!(specs[0].backend_kind(), None);
    }

    #[test]
    fn reload_keeps_what_needs_a_full_restart() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace("segments = 8", "segments = 4")
                .replace("[cache]", "[cache]\nprocesses = 5\nworkers = 7"),
        );
        let (applied, notes) = plan_reload(&old, new);
        assert_eq!(applied.ipc.segments, 8);
        assert_eq!(applied.cache.processes, old.cache.processes);
        assert_eq!(
            applied.cache.settings.workers, 7,
            "other cache settings apply"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("ipc.segments") && notes[1].contains("cache.processes"),
            "{notes:?}"
        );
    }

    #[test]
    fn an_identical_reload_changes_nothing() {
        let old = config(BASE);
        let (applied, notes) = plan_reload(&old, old.clone());
        assert_eq!(applied, old);
        assert!(notes.is_empty());
        assert_eq!(child_specs(&applied), child_specs(&old));
    }

    #[test]
    fn only_service_changes_need_a_child_restart() {
        let old = config(BASE);
        let slower = config(&format!("{BASE}[supervisor]\nshutdown_timeout = \"1m\"\n"));
        let directory = config(&BASE.replace(
            "backend = \"memory\"",
            "backend = \"memory\"\ndirectory = { root = \"/\" }",
        ));
        let bigger = config(&BASE.replace("1MiB", "2MiB"));
        for (a, b) in child_specs(&old).iter().zip(child_specs(&slower).iter()) {
            assert_ne!(a, b);
            assert!(
                !a.needs_restart_for(b),
                "a drain limit alone restarts nothing"
            );
        }
        assert!(
            !child_specs(&old)[1].needs_restart_for(&child_specs(&directory)[1]),
            "an unused table changes nothing"
        );
        let (old_specs, new_specs) = (child_specs(&old), child_specs(&bigger));
        assert!(
            !old_specs[0].needs_restart_for(&new_specs[0]),
            "the proxy keeps running"
        );
        assert!(
            old_specs[1].needs_restart_for(&new_specs[1]),
            "the caches restart"
        );
    }
}
