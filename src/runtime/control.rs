//! Answers for the control socket: `tandem healthcheck` and `tandem status`.
//!
//! The socket server (src/control) hands each request to the event loop, which answers
//! from the supervisor's state. A health request runs every probe now, in a task of its
//! own, so a slow probe never holds up the loop; the answers come back to the loop, where
//! the supervisor gives its verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::Plan;
use crate::control::metrics::{self, ProbeStats, ServiceMetrics, Snapshot};
use crate::control::{
    self, Ask, EventLog, Request, Response, ServerGuard, StatusReport, StatusRow,
};
use crate::health::{ProbeReport, Prober};
use crate::process::procfs;
use crate::supervisor::{Kind, Phase, Supervisor};

/// Time a client may wait for an answer beyond the slowest probe's timeout.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Fresh probe answers on their way back to the loop, with where the verdict goes.
pub type Fresh = (Vec<Option<ProbeReport>>, oneshot::Sender<Response>);

/// Starts the control socket. Without it tandem still runs; only `healthcheck` and
/// `status` cannot reach it, which is said once.
pub async fn serve(plan: &Plan, asks: mpsc::Sender<Ask>, events: EventLog) -> Option<ServerGuard> {
    let slowest = plan
        .services
        .iter()
        .filter_map(|s| s.spec.health.as_ref().map(|h| h.timeout))
        .max()
        .unwrap_or(Duration::ZERO);
    match control::serve(&plan.socket, asks, slowest + ANSWER_MARGIN, events).await {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!("control socket unavailable ({e}); tandem healthcheck and status will not reach this tandem");
            None
        }
    }
}

/// What the loop answers from.
pub struct State<'a> {
    pub sup: &'a Supervisor,
    pub plan: &'a Arc<Plan>,
    pub prober: &'a Prober,
    pub verdicts: &'a mpsc::UnboundedSender<Fresh>,
    /// Each service's probe answers so far (by id).
    pub probes: &'a [ProbeStats],
}

pub fn answer(request: Request, reply: oneshot::Sender<Response>, at: State<'_>, now: Instant) {
    let State {
        sup,
        plan,
        prober,
        verdicts,
        probes,
    } = at;
    match request {
        Request::Status => {
            let services = sup
                .status(now)
                .iter()
                .map(|s| StatusRow::of(s, now))
                .collect();
            let _ = reply.send(Response::Status(StatusReport {
                services,
                start_timeline: sup.start_timeline().map(str::to_string),
                stop_timeline: sup.stop_timeline(now),
            }));
        }
        Request::Ready => {
            let _ = reply.send(Response::Health(sup.known_verdict(now)));
        }
        Request::Live => {
            let failed: Vec<String> = sup
                .status(now)
                .into_iter()
                .filter(|s| s.failed && s.required)
                .map(|s| s.name)
                .collect();
            let _ = reply.send(if failed.is_empty() {
                Response::Live {
                    live: true,
                    detail: "live".into(),
                }
            } else {
                Response::Live {
                    live: false,
                    detail: format!("failed for good: {}", failed.join(", ")),
                }
            });
        }
        Request::Metrics => {
            let _ = reply.send(Response::Metrics {
                text: metrics::render(&snapshot(sup, plan, probes, now)),
            });
        }
        // The socket server streams events itself.
        Request::Events => {
            let _ = reply.send(Response::Error {
                message: "events are streamed by the socket server".into(),
            });
        }
        Request::Health => {
            let each = sup
                .probe_now()
                .into_iter()
                .zip(&plan.services)
                .map(|(now, svc)| match (now, &svc.probe, &svc.spec.health) {
                    (true, Some(p), Some(h)) => Some((p.clone(), h.timeout)),
                    _ => None,
                })
                .collect();
            let (prober, verdicts) = (prober.clone(), verdicts.clone());
            tokio::spawn(async move {
                let fresh = prober.run_all(each).await;
                let _ = verdicts.send((fresh, reply));
            });
        }
    }
}

/// The probes are back: the supervisor judges, with its state as it is now.
pub fn verdict(
    sup: &Supervisor,
    fresh: Vec<Option<ProbeReport>>,
    reply: oneshot::Sender<Response>,
    now: Instant,
) {
    let _ = reply.send(Response::Health(sup.verdict(&fresh, now)));
}

/// What a scrape shows: the supervisor's view, the probes' counts, and /proc's figures for
/// each running service's process group and for tandem.
fn snapshot(sup: &Supervisor, plan: &Plan, probes: &[ProbeStats], now: Instant) -> Snapshot {
    let verdict = sup.known_verdict(now);
    let status = sup.status(now);
    let pids: Vec<i32> = status.iter().filter_map(|s| s.pid).collect();
    let usage = procfs::groups(&pids);
    let services = status
        .iter()
        .enumerate()
        .map(|(id, st)| {
            let healthy = verdict.services.get(id).is_some_and(|h| h.healthy);
            ServiceMetrics {
                name: st.name.clone(),
                up: match st.kind {
                    Kind::External => healthy,
                    _ => st.pid.is_some() && st.phase != Phase::Done,
                },
                healthy,
                phase: st.phase.as_str(),
                restarts: st.restarts,
                probes: plan.services[id]
                    .spec
                    .health
                    .as_ref()
                    .map(|_| probes.get(id).cloned().unwrap_or_default()),
                usage: st.pid.and_then(|p| usage.get(&p).copied()),
                last_start: st.last_start,
            }
        })
        .collect();
    Snapshot {
        services,
        own: procfs::own(),
        healthy: verdict.healthy,
    }
}
