//! Health: when to probe, what an answer means, and when a service is restarted.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::table::{Input, Phase};
use super::{Action, Fact, Id, Readiness, Supervisor, Timer};

/// A probe's timing and the policy when it keeps failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// The probe's kind as the config spells it ("postgres", "http", "tcp", "exec").
    pub probe_kind: &'static str,
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

/// Until its first success a service is probed this often: from the first gap, growing by
/// half each time up to the last, so an app that takes 10 s to boot is noticed within
/// 20 ms of answering, for a few dozen cheap probes a second (a refused connection, mostly).
const START_GAP_FIRST: Duration = Duration::from_millis(10);
const START_GAP_MAX: Duration = Duration::from_millis(20);

/// What happens when a service stays unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnhealthy {
    /// Stop it with its stop signal and start it again.
    Restart,
    /// Only report it (status, healthcheck).
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Not ready yet, and saying so (PostgreSQL's 57P03); the detail is a few words.
    Starting(String),
    /// Not working; the detail is a few words ("http 503", "connection refused").
    Fail(String),
}

impl Outcome {
    /// "ok", or the detail of a starting or failed probe.
    pub fn detail(&self) -> &str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Starting(d) | Outcome::Fail(d) => d,
        }
    }
}

/// A probe's answer: the one type the probes, the supervisor and the control socket share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub outcome: Outcome,
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
    pub(super) last: Option<LastProbe>,
    /// The next gap while it has never been healthy.
    pub(super) start_gap: Option<Duration>,
}

impl Supervisor {
    /// The probe timer fired: ask for a probe; the timer is re-armed when it answers.
    pub(super) fn issue_probe(&mut self, id: Id) {
        let phase = self.svcs[id].phase;
        if matches!(phase, Phase::Running | Phase::Ready) && self.shutdown.is_none() {
            self.actions.push_back(Action::Probe(id));
        }
    }

    pub(super) fn on_probe(&mut self, id: Id, report: ProbeReport, now: Instant) {
        let svc = &mut self.svcs[id];
        let Some(spec) = svc.spec.health.clone() else {
            return;
        };
        if !matches!(svc.phase, Phase::Running | Phase::Ready) || self.shutdown.is_some() {
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
        let mut restart = false;
        let mut fact = None;
        match &report.outcome {
            Outcome::Ok => {
                if h.health == Some(Health::Unhealthy) {
                    tracing::info!("{name} is healthy again");
                }
                if h.health != Some(Health::Healthy) {
                    fact = Some(Fact::Healthy);
                }
                h.health = Some(Health::Healthy);
                h.failures = 0;
                h.ever_healthy = true;
            }
            Outcome::Starting(_) => {
                h.health.get_or_insert(Health::Starting);
            }
            Outcome::Fail(_) if in_start_period => {
                h.health.get_or_insert(Health::Starting);
            }
            Outcome::Fail(detail) => {
                h.failures += 1;
                // Not unhealthy yet, but not known healthy either.
                h.health.get_or_insert(Health::Starting);
                if h.failures >= spec.retries.max(1) && h.health != Some(Health::Unhealthy) {
                    h.health = Some(Health::Unhealthy);
                    tracing::warn!(
                        "{name} is unhealthy ({} failed probes in a row): {detail}",
                        h.failures
                    );
                    fact = Some(Fact::Unhealthy {
                        reason: detail.clone(),
                        failures: h.failures,
                    });
                    restart = spec.on_unhealthy == OnUnhealthy::Restart;
                }
            }
        }
        if restart {
            if let Some(fact) = fact {
                self.note(now, Some(id), fact);
            }
            self.apply(id, Input::Restart, now);
            return;
        }
        let h = &mut self.svcs[id].health;
        let every = if h.ever_healthy {
            spec.interval
        } else {
            let gap = h.start_gap.unwrap_or(START_GAP_FIRST);
            h.start_gap = Some((gap * 3 / 2).min(START_GAP_MAX));
            gap.min(spec.interval)
        };
        self.timers.set(Timer::Probe(id), now + every);
        // A service whose probe is its readiness check is ready at the first success.
        let svc = &self.svcs[id];
        if report.outcome == Outcome::Ok
            && svc.phase == Phase::Running
            && svc.spec.readiness == Readiness::Probe
        {
            self.apply(id, Input::Ready, now);
        }
        if let Some(fact) = fact {
            self.note(now, Some(id), fact);
        }
    }
}

impl Supervisor {
    /// The health of a service as the supervisor last saw it, and its failures in a row.
    #[cfg(test)]
    pub fn health(&self, id: Id) -> (Option<Health>, u32) {
        let h = &self.svcs[id].health;
        (h.health, h.failures)
    }
}
