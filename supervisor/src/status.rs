//! The status file `run_dir/status.json`: written by the running supervisor (atomically, every
//! second and on every change), read by `gfsupervisor status` and `reload`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::health::{NotAnswering, RunState};

/// The file name inside the run directory.
pub const STATUS_FILE: &str = "status.json";

/// The state of a child as shown by `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShownState {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving.
    Running,
    /// Running, but it cannot serve (its pack is damaged, changed or missing): the proxy sends
    /// its paths to the origin until it recovers by itself.
    Unavailable,
    /// Dead, waiting for its restart delay.
    Backoff,
    /// Died more than `max_restarts` times in the window, but is the last of its role: it is
    /// restarted with the capped backoff instead of being quarantined.
    CrashLooping,
    /// Crash-looped; left down until revived.
    Quarantined,
    /// Being stopped (shutdown or reload).
    Stopping,
    /// Not running (during shutdown).
    Stopped,
}

impl ShownState {
    /// Every state, in the order metrics list them.
    pub const ALL: &'static [ShownState] = &[
        ShownState::Starting,
        ShownState::Running,
        ShownState::Unavailable,
        ShownState::Backoff,
        ShownState::CrashLooping,
        ShownState::Quarantined,
        ShownState::Stopping,
        ShownState::Stopped,
    ];

    /// The name shown by `status` and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ShownState::Starting => "starting",
            ShownState::Running => "running",
            ShownState::Unavailable => "unavailable",
            ShownState::Backoff => "backoff",
            ShownState::CrashLooping => "crash-looping",
            ShownState::Quarantined => "quarantined",
            ShownState::Stopping => "stopping",
            ShownState::Stopped => "stopped",
        }
    }
}

/// One child in the status file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    /// "proxy" or "cache".
    pub role: String,
    /// Its slot.
    pub slot: u32,
    /// Its pid while it has one.
    pub pid: Option<i32>,
    /// Its state.
    pub state: ShownState,
    /// Seconds since its current process started (0 without one).
    pub uptime_seconds: f64,
    /// When its current process started, seconds since the epoch.
    pub started_at_unix: Option<f64>,
    /// How many times the slot was restarted.
    pub restarts: u64,
    /// Requests served by the slot (all processes that held it).
    pub requests: u64,
    /// The backend its process serves (caches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// It died more than `max_restarts` times in the window and is kept restarting because it is
    /// the last proxy; cleared once a process of it has lived `backoff_reset_after`.
    #[serde(default)]
    pub crash_looping: bool,
}

/// The outcome of the last reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Increases with every reload attempt.
    pub sequence: u64,
    /// Whether the new config was accepted.
    pub ok: bool,
    /// What happened (the errors, or what will be restarted).
    pub message: String,
}

impl std::fmt::Display for ReloadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "applied" } else { "rejected" };
        write!(f, "reload {verdict}: {}", self.message)
    }
}

/// The whole status file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The supervisor's pid.
    pub pid: i32,
    /// When it started, seconds since the epoch.
    pub started_at_unix: f64,
    /// Seconds it has been up.
    pub uptime_seconds: f64,
    /// When this file was written, seconds since the epoch.
    pub updated_at_unix: f64,
    /// The config file.
    pub config: PathBuf,
    /// The configured backend.
    pub backend: String,
    /// The proxy's listen address.
    pub listen: String,
    /// The metrics address, if any.
    pub metrics_listen: Option<String>,
    /// The shared memory region of the run (`ipc::RegionId` text form), which
    /// `gfsupervisor purge` attaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Whether `/readyz` answers 200: the run is ready or degraded.
    pub ready: bool,
    /// Ready, degraded or not ready (see [`crate::health`]).
    pub state: RunState,
    /// Why it is not ready, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The slots that do not answer, with their states.
    #[serde(default)]
    pub not_answering: Vec<NotAnswering>,
    /// The last reload, if any.
    pub last_reload: Option<ReloadStatus>,
    /// Every child.
    pub children: Vec<ChildStatus>,
}

/// Seconds since the epoch.
pub fn unix_now() -> f64 {
    unix_seconds(SystemTime::now())
}

/// Seconds since the epoch of `t`.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The status file of a run directory.
pub fn status_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATUS_FILE)
}

impl StatusReport {
    /// Writes the report to `run_dir/status.json` through a temporary file and a rename, so a
    /// reader never sees half a file.
    pub fn write_atomically(&self, run_dir: &Path) -> std::io::Result<()> {
        let path = status_path(run_dir);
        let tmp = run_dir.join(format!(".{STATUS_FILE}.{}.tmp", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.write_all(b"\n")?;
        drop(file);
        std::fs::rename(&tmp, &path)
    }

    /// Reads `run_dir/status.json`.
    pub fn read(run_dir: &Path) -> std::io::Result<StatusReport> {
        let bytes = std::fs::read(status_path(run_dir))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Recomputes the uptimes for the moment `now` (seconds since the epoch): the file may be up
    /// to a second old.
    pub fn refresh_uptimes(&mut self, now: f64) {
        self.uptime_seconds = (now - self.started_at_unix).max(0.0);
        for child in &mut self.children {
            child.uptime_seconds = child.started_at_unix.map_or(0.0, |s| (now - s).max(0.0));
        }
    }

    /// The human-readable table.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "gfsupervisor pid {}, up {}, {}; config {}",
            self.pid,
            fmt_uptime(self.uptime_seconds),
            self.state.as_str(),
            self.config.display()
        );
        if let Some(reason) = &self.reason {
            let _ = writeln!(out, "not ready: {reason}");
        }
        if !self.not_answering.is_empty() {
            let slots: Vec<String> = self.not_answering.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "not answering: {}", slots.join(", "));
        }
        for c in self.children.iter().filter(|c| c.crash_looping) {
            let _ = writeln!(
                out,
                "{} {} crash-loops: it is the last {}, so it is restarted with the capped backoff instead of quarantined",
                c.role, c.slot, c.role
            );
        }
        let _ = writeln!(
            out,
            "proxy listen {}, backend {}, metrics {}",
            self.listen,
            self.backend,
            self.metrics_listen.as_deref().unwrap_or("off")
        );
        if let Some(reload) = &self.last_reload {
            let _ = writeln!(
                out,
                "last reload: {} ({})",
                if reload.ok { "applied" } else { "rejected" },
                reload.message.replace('\n', "; ")
            );
        }
        let _ = writeln!(
            out,
            "{:<6} {:>4} {:>8} {:<14} {:>10} {:>8} {:>10} BACKEND",
            "ROLE", "SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "REQUESTS"
        );
        for c in &self.children {
            let pid = c.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
            let uptime = if c.pid.is_some() {
                fmt_uptime(c.uptime_seconds)
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                out,
                "{:<6} {:>4} {:>8} {:<14} {:>10} {:>8} {:>10} {}",
                c.role,
                c.slot,
                pid,
                c.state.as_str(),
                uptime,
                c.restarts,
                c.requests,
                c.backend.as_deref().unwrap_or("")
            );
        }
        out
    }
}

/// "3d04h", "2h05m", "4m07s", "12.3s".
pub fn fmt_uptime(seconds: f64) -> String {
    let s = seconds.max(0.0);
    let whole = s as u64;
    if whole >= 86_400 {
        format!("{}d{:02}h", whole / 86_400, (whole % 86_400) / 3600)
    } else if whole >= 3600 {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    } else if whole >= 60 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{s:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusReport {
        StatusReport {
            pid: 42,
            started_at_unix: 1000.0,
            uptime_seconds: 5.0,
            updated_at_unix: 1005.0,
            config: PathBuf::from("/etc/gf.toml"),
            backend: "memory".into(),
            listen: "127.0.0.1:1".into(),
            metrics_listen: None,
            region: Some("12.00000000deadbeef".into()),
            ready: true,
            state: RunState::Ready,
            reason: None,
            not_answering: Vec::new(),
            last_reload: None,
            children: vec![ChildStatus {
                role: "cache".into(),
                slot: 0,
                pid: Some(43),
                state: ShownState::Running,
                uptime_seconds: 4.0,
                started_at_unix: Some(1001.0),
                restarts: 2,
                requests: 7,
                backend: Some("memory".into()),
                crash_looping: false,
            }],
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let report = sample();
        report.write_atomically(dir.path()).unwrap();
        assert_eq!(StatusReport::read(dir.path()).unwrap(), report);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(status_path(dir.path())).unwrap()).unwrap();
        assert_eq!(json["children"][0]["state"], "running");
        assert_eq!(json["children"][0]["role"], "cache");
    }

    #[test]
    fn table_lists_children() {
        let mut report = sample();
        report.refresh_uptimes(1010.0);
        assert_eq!(report.children[0].uptime_seconds, 9.0);
        let table = report.render_table();
        assert!(table.contains("cache"), "{table}");
        assert!(table.contains("running"), "{table}");
        assert!(table.contains(", ready; config"), "{table}");
    }

    #[test]
    fn a_degraded_run_names_its_slots() {
        let mut report = sample();
        report.state = RunState::Degraded;
        report.not_answering = vec![NotAnswering {
            role: "cache".into(),
            slot: 1,
            state: ShownState::Unavailable,
        }];
        report.children[0].role = "proxy".into();
        report.children[0].state = ShownState::CrashLooping;
        report.children[0].crash_looping = true;
        let table = report.render_table();
        assert!(table.contains(", degraded; config"), "{table}");
        assert!(
            table.contains("not answering: cache 1 unavailable"),
            "{table}"
        );
        assert!(table.contains("proxy 0 crash-loops"), "{table}");
        assert!(table.contains("crash-looping"), "{table}");
        let dir = tempfile::tempdir().unwrap();
        report.write_atomically(dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(status_path(dir.path())).unwrap()).unwrap();
        assert_eq!(json["state"], "degraded");
        assert_eq!(json["not_answering"][0]["state"], "unavailable");
        assert_eq!(json["children"][0]["state"], "crash-looping");
        assert_eq!(StatusReport::read(dir.path()).unwrap(), report);
    }

    #[test]
    fn uptime_format() {
        assert_eq!(fmt_uptime(12.34), "12.3s");
        assert_eq!(fmt_uptime(247.0), "4m07s");
        assert_eq!(fmt_uptime(7500.0), "2h05m");
        assert_eq!(fmt_uptime(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
    }
}
