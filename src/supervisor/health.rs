//! Health: when to probe, what a result means, and when a service is restarted.

use std::time::{Duration, Instant};

use super::{Action, Id, Phase, Supervisor};

/// A probe's timing and the policy when it keeps failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// Time between probes once the service is healthy (or unhealthy).
    pub interval: Duration,
    /// How long one probe may take; enforced by the runtime, which reports a failure.
    pub timeout: Duration,
    /// Consecutive failures before the service is unhealthy.
    pub retries: u32,
    /// After a start, failures do not count for this long, until the first success.
    pub start_period: Duration,
    pub on_unhealthy: OnUnhealthy,
}

impl HealthSpec {
    /// Until its first success a starting service is probed at most this far apart, so a
    /// slow first answer does not cost a whole interval.
    fn start_interval(&self) -> Duration {
        self.interval.min(START_INTERVAL)
    }
}

/// Probe cadence while a service has not yet been healthy.
const START_INTERVAL: Duration = Duration::from_millis(250);

/// What happens when a service stays unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnhealthy {
    /// Stop it with its stop signal and start it again.
    Restart,
    /// Only report it (status, healthcheck).
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// What a probe said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// The service answered that it is still starting (PostgreSQL's 57P03).
    Starting,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub verdict: Verdict,
    /// A few words: "http 503", "timed out after 2000 ms".
    pub detail: String,
    pub latency: Duration,
}

/// The last probe, for `tandem status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastProbe {
    pub at: Instant,
    pub report: ProbeReport,
}

#[derive(Debug, Clone, Default)]
pub(super) struct HealthState {
    pub(super) health: Option<Health>,
    /// Consecutive failures that counted.
    pub(super) failures: u32,
    pub(super) ever_healthy: bool,
    /// When to probe next; `None` while a probe runs or when not probing.
    pub(super) due: Option<Instant>,
    pub(super) last: Option<LastProbe>,
}

impl Supervisor {
    pub(super) fn issue_due_probes(&mut self, now: Instant) {
        for id in 0..self.svcs.len() {
            let svc = &mut self.svcs[id];
            if svc.health.due.is_some_and(|t| t <= now) {
                svc.health.due = None;
                if svc.phase == Phase::Running && self.shutdown.is_none() {
                    self.actions.push_back(Action::Probe(id));
                }
            }
        }
    }

    pub(super) fn on_probe(&mut self, id: Id, report: ProbeReport, now: Instant) {
        let in_shutdown = self.shutdown.is_some();
        let svc = &mut self.svcs[id];
        let Some(spec) = svc.spec.health.clone() else {
            return;
        };
        if svc.phase != Phase::Running || in_shutdown {
            return;
        }
        let name = svc.spec.name.clone();
        let h = &mut svc.health;
        h.last = Some(LastProbe {
            at: now,
            report: report.clone(),
        });
        let in_start_period =
            !h.ever_healthy && svc.started_at.is_some_and(|t| now < t + spec.start_period);
        match report.verdict {
            Verdict::Ok => {
                if h.health != Some(Health::Healthy) {
                    if h.health == Some(Health::Unhealthy) {
                        tracing::info!("{name} is healthy again");
                    }
                    h.health = Some(Health::Healthy);
                }
                h.failures = 0;
                h.ever_healthy = true;
            }
            Verdict::Starting => {
                if h.health.is_none() {
                    h.health = Some(Health::Starting);
                }
            }
            Verdict::Fail if in_start_period => {
                h.health.get_or_insert(Health::Starting);
            }
            Verdict::Fail => {
                h.failures += 1;
                // Not unhealthy yet, but not known healthy either.
                h.health.get_or_insert(Health::Starting);
                if h.failures >= spec.retries.max(1) && h.health != Some(Health::Unhealthy) {
                    h.health = Some(Health::Unhealthy);
                    tracing::warn!(
                        "{name} is unhealthy ({} failed probes in a row): {}",
                        h.failures,
                        report.detail
                    );
                    if spec.on_unhealthy == OnUnhealthy::Restart {
                        self.begin_restart(id, now);
                        return;
                    }
                }
            }
        }
        let svc = &mut self.svcs[id];
        let h = &mut svc.health;
        h.due = Some(
            now + if h.ever_healthy {
                spec.interval
            } else {
                spec.start_interval()
            },
        );
        // A service with a probe and no readiness check of its own is ready when healthy.
        if report.verdict == Verdict::Ok && !svc.ready {
            self.on_ready(id, now);
        }
    }

    /// Stops a service with its own stop signal and timeout, to start it again on exit.
    fn begin_restart(&mut self, id: Id, now: Instant) {
        let svc = &mut self.svcs[id];
        tracing::info!(
            "restarting {} ({})",
            svc.spec.name,
            svc.spec.stop_ladder[0].as_str()
        );
        let later = svc.spec.step_timeout * (svc.spec.stop_ladder.len() as u32).saturating_sub(2);
        svc.phase = Phase::Stopping;
        svc.restarting = true;
        svc.stop_began = Some(now);
        svc.stop_window_end = Some(now + svc.spec.stop_timeout + later);
        svc.health.due = None;
        self.set_step(id, 0, now);
    }

    /// The health of a service as the supervisor last saw it.
    pub fn health(&self, id: Id) -> (Option<Health>, u32) {
        let h = &self.svcs[id].health;
        (h.health, h.failures)
    }
}
