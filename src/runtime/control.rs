//! Answers for the control socket: `tandem healthcheck` and `tandem status`.
//!
//! The socket server (src/control) hands each request to the event loop, which answers
//! from the supervisor's state; a health request runs every probe now, in a task of its
//! own, so a slow probe never holds up the loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::Plan;
use crate::control::{
    self, format_uptime, Ask, HealthReport, Request, Response, ServerGuard, ServiceHealth,
    StatusReport, StatusRow,
};
use crate::health::{format_latency, Outcome, Prober};
use crate::supervisor::{Health, Kind, Phase, ServiceStatus, Supervisor};

/// Time a client may wait for an answer beyond the slowest probe's timeout.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Starts the control socket. Without it tandem still runs; only `healthcheck` and
/// `status` cannot reach it, which is said once.
pub async fn serve(plan: &Plan, asks: mpsc::Sender<Ask>) -> Option<ServerGuard> {
    let slowest = plan
        .services
        .iter()
        .filter_map(|s| s.spec.health.as_ref().map(|h| h.timeout))
        .max()
        .unwrap_or(Duration::ZERO);
    match control::serve(&plan.socket, asks, slowest + ANSWER_MARGIN).await {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!("control socket unavailable ({e}); tandem healthcheck and status will not reach this tandem");
            None
        }
    }
}

pub fn answer(
    request: Request,
    reply: oneshot::Sender<Response>,
    sup: &Supervisor,
    plan: &Arc<Plan>,
    prober: &Prober,
    now: Instant,
) {
    let statuses = sup.status(now);
    match request {
        Request::Status => {
            let services = statuses.iter().map(|s| status_row(s, now)).collect();
            let _ = reply.send(Response::Status(StatusReport { services }));
        }
        Request::Health => {
            let (plan, prober) = (Arc::clone(plan), prober.clone());
            tokio::spawn(async move {
                let report = probe_all(&plan, &prober, statuses).await;
                let _ = reply.send(Response::Health(report));
            });
        }
    }
}

/// Probes every running service that has a probe, all at once, and judges the rest by
/// their state.
async fn probe_all(plan: &Plan, prober: &Prober, statuses: Vec<ServiceStatus>) -> HealthReport {
    let each = statuses
        .iter()
        .zip(&plan.services)
        .map(|(st, svc)| match (st.phase, &svc.probe, &svc.spec.health) {
            (Phase::Running, Some(p), Some(h)) => Some((p.clone(), h.timeout)),
            _ => None,
        })
        .collect();
    let results = prober.run_all(each).await;
    let services: Vec<ServiceHealth> = statuses
        .iter()
        .zip(results)
        .enumerate()
        .map(|(i, (st, result))| {
            let kind = plan.services[i]
                .probe
                .as_ref()
                .map(|p| p.kind().to_string());
            let oneshot = plan.services[i].spec.kind == Kind::Oneshot;
            judge(st, kind, oneshot, result)
        })
        .collect();
    HealthReport {
        healthy: services.iter().all(|s| s.healthy),
        services,
    }
}

fn judge(
    st: &ServiceStatus,
    kind: Option<String>,
    oneshot: bool,
    result: Option<crate::health::ProbeResult>,
) -> ServiceHealth {
    let mut h = ServiceHealth {
        name: st.name.clone(),
        healthy: false,
        state: String::new(),
        kind,
        detail: None,
        latency_ms: None,
        tries: None,
    };
    match (st.phase, result) {
        (Phase::Running, Some(r)) => {
            let kind = h.kind.clone().unwrap_or_default();
            let failed = matches!(r.outcome, Outcome::Fail(_));
            h = ServiceHealth::from_probe(&st.name, &kind, Some(r));
            if failed {
                h.tries = Some(st.failures + 1);
                // Still inside its first start: not failing yet, only not up.
                if matches!(st.health, Some(Health::Starting) | None) {
                    h.state = "starting".into();
                }
            }
        }
        (Phase::Running, None) => {
            h.healthy = st.ready;
            h.state = if st.ready { "running" } else { "starting" }.into();
        }
        (Phase::Starting, _) => h.state = "starting".into(),
        (Phase::Waiting, _) => {
            h.state = "not running".into();
            h.detail = Some("waiting for its dependencies".into());
        }
        (Phase::Stopping, _) => {
            h.state = "not running".into();
            h.detail = Some("stopping".into());
        }
        (Phase::Done, _) => {
            let completed = oneshot && st.exit.as_deref() == Some("exited with code 0");
            h.healthy = completed;
            h.state = if completed { "ok" } else { "not running" }.into();
            h.detail = st.exit.clone();
        }
    }
    h
}

fn status_row(st: &ServiceStatus, now: Instant) -> StatusRow {
    let phase = match st.phase {
        Phase::Waiting => "waiting",
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
        Phase::Done if st.failed => "failed",
        Phase::Done => "done",
    };
    let health = match st.health {
        Some(Health::Starting) => "starting",
        Some(Health::Healthy) => "healthy",
        Some(Health::Unhealthy) => "unhealthy",
        None => "-",
    };
    let last_probe = st.last_probe.as_ref().map(|lp| {
        let what = if lp.report.detail == "ok" {
            format!("ok {}", format_latency(lp.report.latency))
        } else {
            lp.report.detail.clone()
        };
        let age = format_uptime(now.saturating_duration_since(lp.at));
        format!("{what} {age} ago")
    });
    StatusRow {
        name: st.name.clone(),
        state: phase.into(),
        health: health.into(),
        pid: st.pid,
        uptime_ms: st.uptime_ms,
        restarts: st.restarts,
        last_probe,
    }
}
