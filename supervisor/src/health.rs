//! Whether the run can serve: the one judgement behind `/readyz`, `gfcache_ready`,
//! `gfcache_degraded` and the status. Pure logic over what the supervisor knows of each slot.
//!
//! - **ready**: every slot answers.
//! - **degraded**: a proxy answers and at least one cache answers (or an origin is configured,
//!   which answers for any cache), but some slot does not: it is named.
//! - **not ready**: still starting (a slot has neither answered nor failed yet), no proxy
//!   answers, or no cache answers and there is no origin.
//!
//! `/readyz` answers 200 for ready and degraded: the run serves every path, from a cache or the
//! origin.

use serde::{Deserialize, Serialize};

use crate::metrics::Role;
use crate::status::ShownState;

/// The state of the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Every slot answers.
    Ready,
    /// Serving, but some slot does not answer.
    Degraded,
    /// Cannot serve (or not yet).
    NotReady,
}

impl RunState {
    /// The name shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Ready => "ready",
            RunState::Degraded => "degraded",
            RunState::NotReady => "not ready",
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn serving(self) -> bool {
        self != RunState::NotReady
    }
}

/// What the supervisor knows of one slot at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// Its role.
    pub role: Role,
    /// Its slot.
    pub slot: u32,
    /// Its state as shown by `status`.
    pub state: ShownState,
    /// Its process runs and its member state is Ready.
    pub answering: bool,
    /// It answered or failed at least once since the supervisor started (so a slot still in
    /// its first start holds readiness back, and a crash-looping one does not).
    pub settled: bool,
}

/// A slot that does not answer, for `status` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotAnswering {
    /// "proxy" or "cache".
    pub role: String,
    /// Its slot.
    pub slot: u32,
    /// Its state.
    pub state: ShownState,
}

impl std::fmt::Display for NotAnswering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.role, self.slot, self.state.as_str())
    }
}

/// The verdict on the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Ready, degraded or not ready.
    pub state: RunState,
    /// Why it is not ready (None when it serves).
    pub reason: Option<&'static str>,
    /// Every slot that does not answer, in slot order (proxies first).
    pub not_answering: Vec<NotAnswering>,
}

impl Health {
    /// Judges the run from its slots; `origin` says whether an origin is configured.
    pub fn assess(slots: &[SlotView], origin: bool) -> Health {
        let answering = |role: Role| slots.iter().any(|s| s.role == role && s.answering);
        let has_caches = slots.iter().any(|s| s.role == Role::Cache);
        let reason = if slots.iter().any(|s| !s.settled) {
            Some("starting")
        } else if !answering(Role::Proxy) {
            Some("no proxy is serving")
        } else if has_caches && !answering(Role::Cache) && !origin {
            Some("no cache can answer and no origin is configured")
        } else {
            None
        };
        let not_answering: Vec<NotAnswering> = slots
            .iter()
            .filter(|s| !s.answering)
            .map(|s| NotAnswering {
                role: s.role.as_str().to_string(),
                slot: s.slot,
                state: s.state,
            })
            .collect();
        let state = match (reason, not_answering.is_empty()) {
            (Some(_), _) => RunState::NotReady,
            (None, true) => RunState::Ready,
            (None, false) => RunState::Degraded,
        };
        Health {
            state,
            reason,
            not_answering,
        }
    }

    /// One line: "ready", "degraded: cache 0 quarantined", "not ready: no proxy is serving
    /// (proxy 0 crash-looping)".
    pub fn summary(&self) -> String {
        let slots = self
            .not_answering
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match (self.state, self.reason) {
            (RunState::Ready, _) => "ready".to_string(),
            (RunState::Degraded, _) => format!("degraded: {slots}"),
            (RunState::NotReady, reason) if slots.is_empty() => {
                format!("not ready: {}", reason.unwrap_or("unknown"))
            }
            (RunState::NotReady, reason) => {
                format!("not ready: {} ({slots})", reason.unwrap_or("unknown"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(role: Role, slot: u32, state: ShownState) -> SlotView {
        SlotView {
            role,
            slot,
            state,
            answering: state == ShownState::Running,
            settled: state != ShownState::Starting,
        }
    }

    fn run(states: &[(Role, ShownState)]) -> Vec<SlotView> {
        let mut next = [0u32; 2];
        states
            .iter()
            .map(|&(role, state)| {
                let n = &mut next[usize::from(role == Role::Cache)];
                *n += 1;
                slot(role, *n - 1, state)
            })
            .collect()
    }

    #[test]
    fn every_slot_answering_is_ready() {
        let slots = run(&[
            (Role::Proxy, ShownState::Running),
            (Role::Cache, ShownState::Running),
            (Role::Cache, ShownState::Running),
        ]);
        let health = Health::assess(&slots, false);
        assert_eq!(health.state, RunState::Ready);
        assert_eq!(health.summary(), "ready");
    }

    #[test]
    fn every_cache_quarantined_without_an_origin_is_not_ready() {
        let slots = run(&[
            (Role::Proxy, ShownState::Running),
            (Role::Cache, ShownState::Quarantined),
            (Role::Cache, ShownState::Unavailable),
        ]);
        let health = Health::assess(&slots, false);
        assert_eq!(health.state, RunState::NotReady);
        assert!(!health.state.serving());
        assert_eq!(
            health.summary(),
            "not ready: no cache can answer and no origin is configured \
             (cache 0 quarantined, cache 1 unavailable)"
        );
        let with_origin = Health::assess(&slots, true);
        assert_eq!(with_origin.state, RunState::Degraded);
        assert!(with_origin.state.serving());
        assert_eq!(
            with_origin.summary(),
            "degraded: cache 0 quarantined, cache 1 unavailable"
        );
    }

    #[test]
    fn one_cache_answering_is_degraded() {
        let slots = run(&[
            (Role::Proxy, ShownState::Running),
            (Role::Cache, ShownState::Backoff),
            (Role::Cache, ShownState::Running),
        ]);
        let health = Health::assess(&slots, false);
        assert_eq!(health.state, RunState::Degraded);
        assert_eq!(health.not_answering.len(), 1);
        assert_eq!(health.not_answering[0].to_string(), "cache 0 backoff");
    }

    #[test]
    fn no_proxy_or_a_first_start_is_not_ready() {
        let looping = run(&[
            (Role::Proxy, ShownState::CrashLooping),
            (Role::Cache, ShownState::Running),
        ]);
        let health = Health::assess(&looping, true);
        assert_eq!(health.state, RunState::NotReady);
        assert_eq!(
            health.summary(),
            "not ready: no proxy is serving (proxy 0 crash-looping)"
        );
        let starting = run(&[
            (Role::Proxy, ShownState::Running),
            (Role::Cache, ShownState::Starting),
            (Role::Cache, ShownState::Running),
        ]);
        assert_eq!(Health::assess(&starting, true).reason, Some("starting"));
    }
}
