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
use crate::control::{self, Ask, Request, Response, ServerGuard, StatusReport, StatusRow};
use crate::health::{ProbeReport, Prober};
use crate::supervisor::Supervisor;

/// Time a client may wait for an answer beyond the slowest probe's timeout.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Fresh probe answers on their way back to the loop, with where the verdict goes.
pub type Fresh = (Vec<Option<ProbeReport>>, oneshot::Sender<Response>);

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
    verdicts: &mpsc::UnboundedSender<Fresh>,
    now: Instant,
) {
    match request {
        Request::Status => {
            let services = sup
                .status(now)
                .iter()
                .map(|s| StatusRow::of(s, now))
                .collect();
            let _ = reply.send(Response::Status(StatusReport { services }));
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
