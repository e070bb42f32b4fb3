//! The client commands: `stop`, `status`, `reload`, `cleanup`, `check-config`, `purge`. Each
//! finds the running supervisor of a config through the run directory's lock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::{Config, ConfigError};
use crate::purge::{self, PurgeError, PurgeOutcome, PurgeTarget};
use crate::status::{self, ReloadStatus, StatusReport};
use crate::Error;

const POLL: Duration = Duration::from_millis(25);

/// What the client commands need from a config: where the run lives and how long a stop takes.
struct Target {
    run_dir: PathBuf,
    shutdown_timeout: Duration,
    /// The caches keep their objects while down (a writable directory); assumed when the file
    /// does not validate.
    keeps_objects_when_down: bool,
}

/// The target of a config. A file that no longer validates (being edited) still names its run
/// directory, so that `status`, `stop` and `cleanup` keep working; only unparsable TOML fails.
fn target(config_path: &Path) -> Result<Target, Error> {
    match Config::load(config_path) {
        Ok(c) => Ok(Target {
            run_dir: c.supervisor.run_dir,
            shutdown_timeout: c.supervisor.shutdown_timeout,
            keeps_objects_when_down: purge::keeps_objects_when_down(&c.cache.settings),
        }),
        Err(e @ ConfigError::Invalid { .. }) => match lenient_target(config_path) {
            Some(t) => {
                tracing::warn!("{e}");
                tracing::warn!(run_dir = %t.run_dir.display(), "the config is invalid; using its supervisor.run_dir anyway");
                Ok(t)
            }
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

fn lenient_target(config_path: &Path) -> Option<Target> {
    let text = std::fs::read_to_string(config_path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let supervisor = table.get("supervisor").and_then(toml::Value::as_table);
    let field = |key: &str| {
        supervisor
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_str)
    };
    let run_dir = PathBuf::from(field("run_dir").unwrap_or("var/run"));
    let run_dir = if run_dir.is_absolute() {
        run_dir
    } else {
        std::env::current_dir().ok()?.join(run_dir)
    };
    let shutdown_timeout = field("shutdown_timeout")
        .and_then(|d| settings::parse_duration(d).ok())
        .unwrap_or(Duration::from_secs(10));
    Some(Target {
        run_dir,
        shutdown_timeout,
        keeps_objects_when_down: true,
    })
}

fn running_pid(run_dir: &Path) -> Result<i32, Error> {
    ipc::lock_holder(run_dir)?.ok_or_else(|| Error::NotRunning {
        dir: run_dir.to_path_buf(),
    })
}

fn signal(pid: i32, signal: Signal) -> Result<(), Error> {
    kill(Pid::from_raw(pid), signal).map_err(|e| Error::Os {
        op: "kill",
        source: e.into(),
    })
}

/// `stop`: SIGTERM to the supervisor of `config_path`, then waits until it released the run
/// directory (every child stopped, every IPC object removed). Returns its pid.
pub fn stop(config_path: &Path) -> Result<i32, Error> {
    let target = target(config_path)?;
    let run_dir = &target.run_dir;
    let pid = running_pid(run_dir)?;
    signal(pid, Signal::SIGTERM)?;
    let limit = target.shutdown_timeout * 2 + Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    while ipc::lock_holder(run_dir)?.is_some() {
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "gfsupervisor (pid {pid}) still holds {} after {limit:?}",
                run_dir.display()
            )));
        }
        std::thread::sleep(POLL);
    }
    // The lock goes with the last IPC object; the process exits right after.
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    Ok(pid)
}

/// Whether `pid` is a live process (a zombie waiting for its parent counts as gone).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => false,
    }
}

/// `status`: the running supervisor's status file, checked against the lock holder, with the
/// uptimes brought up to date.
pub fn status(config_path: &Path) -> Result<StatusReport, Error> {
    let target = target(config_path)?;
    running_status(&target.run_dir)
}

/// The status file of the supervisor that holds `run_dir`, uptimes brought up to date.
fn running_status(run_dir: &Path) -> Result<StatusReport, Error> {
    let pid = running_pid(run_dir)?;
    // Just after a start the file may not be written yet (or still be the previous run's).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match StatusReport::read(run_dir) {
            Ok(mut report) if report.pid == pid => {
                report.refresh_uptimes(status::unix_now());
                return Ok(report);
            }
            _ if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(report) => {
                return Err(Error::Timeout(format!(
                    "the status file names pid {}, but pid {pid} holds {}",
                    report.pid,
                    run_dir.display()
                )))
            }
            Err(e) => {
                return Err(Error::Timeout(format!(
                    "no status file from pid {pid} in {}: {e}",
                    run_dir.display()
                )))
            }
        }
    }
}

/// `purge`: removes `targets` from every cache of the running supervisor of `config_path` that
/// is up. It attaches the run's shared memory region (named in the status file) and sends the
/// caches ipc PURGE requests, as the supervisor does for HTTP `PURGE`; nothing touches a
/// backend's files. Stop signals wait until every leased segment went back to the pool.
/// `timeout` bounds each cache's answer to each target ([`purge::PURGE_TIMEOUT`] by default).
pub fn purge(
    config_path: &Path,
    targets: &[PurgeTarget],
    timeout: Duration,
) -> Result<PurgeOutcome, Error> {
    if targets.is_empty() {
        return Err(PurgeError::NothingToPurge.into());
    }
    let target = target(config_path)?;
    let report = running_status(&target.run_dir)?;
    let pid = report.pid;
    let text = report.region.ok_or_else(|| PurgeError::NoRegion {
        pid,
        status: status::status_path(&target.run_dir).display().to_string(),
    })?;
    let attach_error = |source: ipc::Error| PurgeError::Attach {
        pid,
        region: text.clone(),
        source,
    };
    let id: ipc::RegionId = text.parse().map_err(attach_error)?;
    // Left before the region is attached and removed after it is detached: if this process is
    // killed meanwhile, the supervisor reclaims the segments it held.
    let mark = purge::ClientMark::new(&target.run_dir)
        .map_err(
            |e| tracing::debug!(error = %e, "cannot leave the purge mark in the run directory"),
        )
        .ok();
    let region = ipc::Region::attach(id).map_err(attach_error)?;
    let outcome = purge::with_stop_signals_deferred(|| {
        purge::purge(&region, targets, target.keeps_objects_when_down, timeout)
    });
    drop(region);
    drop(mark);
    Ok(outcome)
}

/// `purge` for the command line: checks every path first (a bad one is an error and nothing
/// is sent), then purges. The text for stdout, and whether the purge is complete.
pub fn run_purge(
    config_path: &Path,
    paths: &[String],
    prefixes: &[String],
    timeout: Duration,
) -> Result<(String, bool), Error> {
    let mut targets = Vec::with_capacity(paths.len() + prefixes.len());
    for path in paths {
        targets.push(PurgeTarget::path(path)?);
    }
    for prefix in prefixes {
        targets.push(PurgeTarget::prefix(prefix)?);
    }
    let outcome = purge(config_path, &targets, timeout)?;
    Ok((outcome.render(), outcome.complete()))
}

/// `reload`: SIGHUP to the supervisor, then waits for its verdict in the status file. An invalid
/// file is reported here without disturbing the supervisor (which would reject it too).
pub fn reload(config_path: &Path) -> Result<ReloadStatus, Error> {
    let config = Config::load(config_path)?;
    reload_in(&config.supervisor.run_dir)
}

fn reload_in(run_dir: &Path) -> Result<ReloadStatus, Error> {
    let pid = running_pid(run_dir)?;
    let before = StatusReport::read(run_dir)
        .ok()
        .and_then(|r| r.last_reload)
        .map_or(0, |r| r.sequence);
    signal(pid, Signal::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(reload) = StatusReport::read(run_dir)
            .ok()
            .filter(|r| r.pid == pid)
            .and_then(|r| r.last_reload)
        {
            if reload.sequence > before {
                return Ok(reload);
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "gfsupervisor (pid {pid}) did not report the reload within 10s; see its log"
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// `cleanup`: removes the IPC objects a dead run left (refused while the run is alive).
pub fn cleanup(config_path: &Path) -> Result<ipc::SweepReport, Error> {
    let target = target(config_path)?;
    let run_dir = &target.run_dir;
    if !run_dir.exists() {
        return Ok(ipc::SweepReport::default());
    }
    let report = ipc::sweep(run_dir).map_err(|e| crate::supervise::locked_or(e, run_dir))?;
    let _ = std::fs::remove_file(status::status_path(run_dir));
    Ok(report)
}

/// `check-config`: what `start` and `reload` check too ([`Config::load_checked`]); returns a
/// one-line summary.
pub fn check_config(config_path: &Path) -> Result<String, Error> {
    let c = Config::load(config_path)?;
    // While this config's gfcache runs, the addresses it listens on are its own.
    let held = match running_pid(&c.supervisor.run_dir) {
        Ok(_) => {
            let mut held = vec![c.proxy.settings.listen];
            held.extend(c.proxy.settings.http_listen);
            held.extend(c.supervisor.metrics_listen);
            held
        }
        Err(_) => Vec::new(),
    };
    let c = Config::load_checked(config_path, &held)?;
    Ok(format!(
        "{}: ok: proxy on {}, HTTP {} ({} process(es), {} threads, origin {}), {} {} cache(s), {} segments of {}, run dir {}, metrics {}",
        config_path.display(),
        c.proxy.settings.listen,
        c.proxy.settings.http_listen.map_or_else(|| "off".to_string(), |a| a.to_string()),
        c.proxy.processes,
        c.proxy.settings.threads,
        c.proxy.settings.origin.as_deref().unwrap_or("none"),
        c.cache.processes,
        c.cache.backend_kind(),
        c.ipc.segments,
        settings::format_size(c.ipc.segment_size),
        c.supervisor.run_dir.display(),
        c.supervisor.metrics_listen.map_or_else(|| "off".to_string(), |a| a.to_string()),
    ))
}

/// A client command, as the binary's command line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    /// `stop`.
    Stop,
    /// `status`, as a table or as JSON.
    Status {
        /// JSON instead of a table.
        json: bool,
    },
    /// `reload`.
    Reload,
    /// `cleanup`.
    Cleanup,
    /// `check-config`.
    CheckConfig,
}

/// Runs a client command: the text for stdout, and whether it succeeded (a rejected reload is
/// reported, not an error).
pub fn run_client(command: ClientCommand, config_path: &Path) -> Result<(String, bool), Error> {
    Ok(match command {
        ClientCommand::Stop => (
            format!("gfsupervisor (pid {}) stopped\n", stop(config_path)?),
            true,
        ),
        ClientCommand::Status { json } => {
            let report = status(config_path)?;
            match json {
                true => (
                    serde_json::to_string_pretty(&report).map_err(|e| Error::Os {
                        op: "encode JSON",
                        source: e.into(),
                    })? + "\n",
                    true,
                ),
                false => (report.render_table(), true),
            }
        }
        ClientCommand::Reload => {
            let outcome = reload(config_path)?;
            (format!("{outcome}\n"), outcome.ok)
        }
        ClientCommand::Cleanup => {
            let report = cleanup(config_path)?;
            let (removed, gone) = (report.removed.len(), report.skipped.len());
            (
                format!(
                    "removed {removed} IPC object(s) left by a dead run; {gone} already gone\n"
                ),
                true,
            )
        }
        ClientCommand::CheckConfig => (check_config(config_path)? + "\n", true),
    })
}
