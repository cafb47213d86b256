//! Service phases and the facts derived from them.

use std::time::Instant;

use super::{Condition, Health, Kind, LastProbe, Svc};

/// Where a service is in its life. Allowed moves (everything else is ignored):
///
/// | from     | to       | on                                                  |
/// |----------|----------|-----------------------------------------------------|
/// | Waiting  | Starting | its dependencies hold                               |
/// | Waiting  | Done     | a shutdown began before it started                  |
/// | Starting | Running  | `Started`                                           |
/// | Starting | Stopping | a shutdown reached it (the stop goes to its set-up) |
/// | Starting | Done     | `StartFailed`, `Exited`                             |
/// | Running  | Stopping | a shutdown reached it                               |
/// | Running  | Done     | `Exited`                                            |
/// | Stopping | Done     | `Exited`, `StartFailed`                             |
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Waiting,
    Starting,
    Running,
    Stopping,
    Done,
}

/// One service as the supervisor sees it, for `tandem status` and `tandem healthcheck`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub phase: Phase,
    pub pid: Option<i32>,
    pub ready: bool,
    pub uptime_ms: Option<u64>,
    /// How it ended, e.g. "exited with code 0".
    pub exit: Option<String>,
    pub failed: bool,
    /// `None` for a service without a probe.
    pub health: Option<Health>,
    /// Consecutive probe failures that counted.
    pub failures: u32,
    pub restarts: u32,
    pub last_probe: Option<LastProbe>,
}

impl Svc {
    /// Started (or being started) and not yet gone.
    pub(super) fn is_alive(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Stopping
        )
    }

    pub(super) fn satisfies(&self, cond: Condition) -> bool {
        let completed = self.spec.kind == Kind::Oneshot
            && self.phase == Phase::Done
            && self.exit.is_some_and(|e| e.success());
        match cond {
            Condition::Started => self.phase == Phase::Running || completed,
            Condition::Healthy => (self.phase == Phase::Running && self.ready) || completed,
            Condition::Completed => completed,
        }
    }

    pub(super) fn status(&self, now: Instant) -> ServiceStatus {
        let uptime = match (self.phase, self.started_at) {
            (Phase::Running | Phase::Stopping, Some(t)) => Some(now.saturating_duration_since(t)),
            _ => None,
        };
        ServiceStatus {
            name: self.spec.name.clone(),
            phase: self.phase,
            pid: self.pid.map(|p| p.as_raw()),
            ready: self.ready,
            uptime_ms: uptime.map(|d| d.as_millis() as u64),
            exit: self.exit.map(|e| e.to_string()),
            failed: self.failed,
            health: self.health.health,
            failures: self.health.failures,
            restarts: self.restarts,
            last_probe: self.health.last.clone(),
        }
    }
}
