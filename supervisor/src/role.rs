//! The child side: what a re-executed `gfsupervisor role cache|proxy --slot N` does, and the
//! [`ChildSpec`] the supervisor hands it through the environment (so a child never reads a
//! half-edited config file).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use serde::{Deserialize, Serialize};

use crate::metrics::Role;
use crate::Error;
use cache_backends::CacheSettings;
use proxy_core::ProxySettings;

/// Environment variable with the region id (`ipc::RegionId` text form).
pub const ENV_REGION: &str = "GFCACHE_REGION";
/// Environment variable with the supervisor's pid.
pub const ENV_SUPERVISOR_PID: &str = "GFCACHE_SUPERVISOR_PID";
/// Environment variable with the child's settings as JSON ([`ChildSpec`]).
pub const ENV_CHILD_SPEC: &str = "GFCACHE_CHILD_SPEC";

/// Everything a child needs besides the region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildSpec {
    /// A cache process.
    Cache {
        /// Its slot.
        slot: u32,
        /// `[cache]`.
        cache: CacheSettings,
        /// Drain limit on SIGTERM.
        shutdown_timeout: Duration,
    },
    /// A proxy process.
    Proxy {
        /// Its slot.
        slot: u32,
        /// Whether other proxies share its port (SO_REUSEPORT).
        reuse_port: bool,
        /// `[proxy]` (boxed: it is most of the spec).
        proxy: Box<ProxySettings>,
        /// Drain limit on SIGTERM.
        shutdown_timeout: Duration,
    },
}

impl ChildSpec {
    /// Its role.
    pub fn role(&self) -> Role {
        match self {
            ChildSpec::Cache { .. } => Role::Cache,
            ChildSpec::Proxy { .. } => Role::Proxy,
        }
    }

    /// Its slot.
    pub fn slot(&self) -> u32 {
        match self {
            ChildSpec::Cache { slot, .. } | ChildSpec::Proxy { slot, .. } => *slot,
        }
    }

    /// The backend kind of a cache.
    pub fn backend_kind(&self) -> Option<&'static str> {
        match self {
            ChildSpec::Cache { cache, .. } => {
                cache.backend.map(cache_backends::BackendKind::as_str)
            }
            ChildSpec::Proxy { .. } => None,
        }
    }

    /// Whether a process running `self` must be restarted to run `desired`. The drain limit
    /// alone is not worth a restart: it reaches the process at its next start.
    pub fn needs_restart_for(&self, desired: &ChildSpec) -> bool {
        match (self, desired) {
            (
                ChildSpec::Cache {
                    slot: a, cache: x, ..
                },
                ChildSpec::Cache {
                    slot: b, cache: y, ..
                },
            ) => a != b || !same_cache_service(x, y),
            (
                ChildSpec::Proxy {
                    slot: a,
                    proxy: x,
                    reuse_port: r,
                    ..
                },
                ChildSpec::Proxy {
                    slot: b,
                    proxy: y,
                    reuse_port: q,
                    ..
                },
            ) => a != b || x != y || r != q,
            _ => true,
        }
    }

    /// The ipc member this child is.
    pub fn member(&self) -> ipc::Member {
        member(self.role(), self.slot())
    }
}

/// Whether two cache settings run the same service: the tables of backends not chosen do not
/// count.
fn same_cache_service(a: &CacheSettings, b: &CacheSettings) -> bool {
    (a.workers, a.transfer_timeout, a.backend_config())
        == (b.workers, b.transfer_timeout, b.backend_config())
}

/// The ipc member of a role and slot.
pub fn member(role: Role, slot: u32) -> ipc::Member {
    match role {
        Role::Cache => ipc::Member::Cache(ipc::CacheSlot::from_raw(slot)),
        Role::Proxy => ipc::Member::Proxy(ipc::ProxySlot::from_raw(slot)),
    }
}

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| {
        Error::Child(format!(
            "{name} is not set: the role subcommands are started by `gfsupervisor start`"
        ))
    })
}

/// Runs a child role until `stop` is set (the binary wires SIGTERM and SIGINT to it). Called by
/// the hidden `role` subcommand.
pub fn run_role(role: Role, slot: u32, stop: &AtomicBool) -> Result<(), Error> {
    // The signal mask survives exec: whatever the parent blocked must not stay blocked here.
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| Error::Os {
            op: "pthread_sigmask",
            source: e.into(),
        })?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| Error::Os {
        op: "prctl(PR_SET_PDEATHSIG)",
        source: e.into(),
    })?;
    let supervisor: i32 = env(ENV_SUPERVISOR_PID)?
        .parse()
        .map_err(|_| Error::Child(format!("{ENV_SUPERVISOR_PID} is not a pid")))?;
    // The supervisor may have died before PR_SET_PDEATHSIG took effect: then we were reparented.
    if nix::unistd::getppid().as_raw() != supervisor {
        return Err(Error::Child(format!(
            "the supervisor (pid {supervisor}) is gone"
        )));
    }
    let spec: ChildSpec = serde_json::from_str(&env(ENV_CHILD_SPEC)?)
        .map_err(|e| Error::Child(format!("{ENV_CHILD_SPEC} is not a child spec: {e}")))?;
    if spec.role() != role || spec.slot() != slot {
        return Err(Error::Child(format!(
            "{ENV_CHILD_SPEC} describes {} {}, not {} {slot}",
            spec.role().as_str(),
            spec.slot(),
            role.as_str()
        )));
    }
    let region_id: ipc::RegionId = env(ENV_REGION)?.parse()?;
    let region = ipc::Region::attach(region_id)?;
    tracing::info!(
        role = role.as_str(),
        slot,
        pid = std::process::id(),
        "child starting"
    );
    match spec {
        ChildSpec::Cache {
            slot,
            cache,
            shutdown_timeout,
        } => {
            let backend = cache
                .backend_config()
                .ok_or_else(|| Error::Child(format!("{ENV_CHILD_SPEC} names no backend")))?;
            let backend = cache_backends::open_backend(&backend)?;
            let config = cache_backends::CacheProcessConfig::new(
                ipc::CacheSlot::from_raw(slot),
                &cache,
                shutdown_timeout,
            );
            cache_backends::run_cache_process(&region, backend.as_ref(), &config, stop)?;
        }
        ChildSpec::Proxy {
            slot,
            reuse_port,
            proxy,
            shutdown_timeout,
        } => {
            let config = proxy_core::ProxyConfig {
                slot: ipc::ProxySlot::from_raw(slot),
                reuse_port,
                settings: *proxy,
            };
            proxy_core::run(Arc::new(region), config, stop, shutdown_timeout)?;
        }
    }
    tracing::info!(role = role.as_str(), slot, "child stopped");
    Ok(())
}
