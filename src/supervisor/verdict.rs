//! Whether the container is healthy, and why not: decided here, once, from typed states;
//! `tandem healthcheck` only renders it (and ships it over the control socket as JSON).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Health, Kind, Outcome, Phase, ProbeReport, ServiceStatus, Supervisor};

/// How one service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Its probe passed (or, for a one-shot task, it completed).
    #[serde(rename = "ok")]
    Ok,
    /// Running and ready, and it has no probe.
    #[serde(rename = "running")]
    Running,
    /// Not ready yet, and still allowed to be (set-up, start period, "starting up").
    #[serde(rename = "starting")]
    Starting,
    /// Its probe failed.
    #[serde(rename = "failing")]
    Failing,
    /// Waiting, stopping, exited or failed.
    #[serde(rename = "not running")]
    NotRunning,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Running => "running",
            State::Starting => "starting",
            State::Failing => "failing",
            State::NotRunning => "not running",
        }
    }
}

/// One service in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub name: String,
    pub healthy: bool,
    pub state: State,
    /// The probe's kind, when the service has one.
    pub kind: Option<String>,
    /// The probe's detail ("http 503"), or why the service is not running.
    pub detail: Option<String>,
    pub latency_ms: Option<f64>,
    /// Consecutive failures counting this one, when it failed.
    pub tries: Option<u32>,
}

/// The container's health: healthy when every service is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub services: Vec<ServiceHealth>,
}

impl HealthReport {
    pub fn of(services: Vec<ServiceHealth>) -> HealthReport {
        HealthReport {
            healthy: services.iter().all(|s| s.healthy),
            services,
        }
    }
}

impl ServiceHealth {
    /// A service judged by one probe answer alone (`None`: the probe did not finish).
    pub fn from_probe(name: &str, kind: &str, report: Option<&ProbeReport>) -> ServiceHealth {
        let mut h = ServiceHealth {
            name: name.to_string(),
            healthy: false,
            state: State::Failing,
            kind: Some(kind.to_string()),
            detail: Some(format!("{kind} probe did not finish")),
            latency_ms: None,
            tries: None,
        };
        let Some(r) = report else { return h };
        h.latency_ms = Some(ms(r.latency));
        match &r.outcome {
            Outcome::Ok => {
                h.healthy = true;
                h.state = State::Ok;
                h.detail = None;
            }
            Outcome::Starting(d) => {
                h.state = State::Starting;
                h.detail = Some(d.clone());
            }
            Outcome::Fail(d) => h.detail = Some(d.clone()),
        }
        h
    }

    fn without_probe(
        st: &ServiceStatus,
        healthy: bool,
        state: State,
        detail: Option<String>,
    ) -> Self {
        ServiceHealth {
            name: st.name.clone(),
            healthy,
            state,
            kind: st.probe_kind.map(String::from),
            detail,
            latency_ms: None,
            tries: None,
        }
    }
}

/// Why a service in [`Phase::Waiting`] is not running.
pub const WAITING: &str = "waiting for its dependencies";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One service's verdict from its state and, where one was run just now, a probe answer.
pub fn judge(st: &ServiceStatus, fresh: Option<&ProbeReport>) -> ServiceHealth {
    use State as S;
    match st.phase {
        Phase::Running | Phase::Ready => match (st.probe_kind, fresh) {
            (Some(kind), fresh) => {
                let mut h = ServiceHealth::from_probe(&st.name, kind, fresh);
                if h.state == S::Failing {
                    h.tries = Some(st.failures + 1);
                    // Still inside its first start: not failing yet, only not up.
                    if matches!(st.health, Some(Health::Starting) | None) {
                        h.state = S::Starting;
                    }
                }
                h
            }
            (None, _) if st.phase == Phase::Ready => {
                ServiceHealth::without_probe(st, true, S::Running, None)
            }
            (None, _) => ServiceHealth::without_probe(st, false, S::Starting, None),
        },
        Phase::Starting => ServiceHealth::without_probe(st, false, S::Starting, st.step.clone()),
        Phase::Backoff => ServiceHealth::without_probe(
            st,
            false,
            S::NotRunning,
            Some(match st.exit {
                Some(e) => format!("{e}; restarting"),
                None => "restarting".into(),
            }),
        ),
        Phase::Waiting => {
            ServiceHealth::without_probe(st, false, S::NotRunning, Some(WAITING.into()))
        }
        Phase::Stopping => {
            ServiceHealth::without_probe(st, false, S::NotRunning, Some("stopping".into()))
        }
        Phase::Done => {
            let completed = st.kind == Kind::Oneshot && st.exit.is_some_and(|e| e.success());
            let detail = match st.exit {
                Some(e) => Some(e.to_string()),
                None if st.failed => Some("did not start".into()),
                None => None,
            };
            if completed {
                ServiceHealth::without_probe(st, true, S::Ok, detail)
            } else {
                ServiceHealth::without_probe(st, false, S::NotRunning, detail)
            }
        }
    }
}

impl Supervisor {
    /// Which services `tandem healthcheck` probes now: running ones with a probe.
    pub fn probe_now(&self) -> Vec<bool> {
        self.svcs
            .iter()
            .map(|s| s.spec.health.is_some() && matches!(s.phase, Phase::Running | Phase::Ready))
            .collect()
    }

    /// The container's health now, with the answers of the probes just run (by id).
    pub fn verdict(&self, fresh: &[Option<ProbeReport>], now: std::time::Instant) -> HealthReport {
        let services = self
            .status(now)
            .iter()
            .enumerate()
            .map(|(id, st)| judge(st, fresh.get(id).and_then(|r| r.as_ref())))
            .collect();
        HealthReport::of(services)
    }
}

impl Supervisor {
    /// The container's health from what the supervisor already knows, no probe run: each
    /// probed service judged by its last answer (`/readyz`, cheap enough for every second).
    pub fn known_verdict(&self, now: std::time::Instant) -> HealthReport {
        let services = self
            .status(now)
            .iter()
            .map(|st| {
                let last = st.last_probe.as_ref().map(|l| &l.report);
                let running = matches!(st.phase, Phase::Running | Phase::Ready);
                let mut h = judge(st, last);
                if running && st.probe_kind.is_some() {
                    match last {
                        // The answer judged was already counted.
                        Some(_) if h.tries.is_some() => h.tries = Some(st.failures.max(1)),
                        Some(_) => {}
                        None => {
                            h.state = State::Starting;
                            h.detail = Some("not probed yet".into());
                        }
                    }
                }
                h
            })
            .collect();
        HealthReport::of(services)
    }
}
