//! The event loop: it feeds the [`Supervisor`] and carries out its [`Action`]s.
//!
//! One thread waits for signals synchronously (all of them are blocked everywhere, so no
//! handler ever runs) and reaps on SIGCHLD; one single-threaded tokio loop owns the
//! supervisor, turns facts into [`Event`]s, and carries out what it decides: starting
//! services (through [`crate::process`]), signals, probes, and the exit.

mod control;
mod signals;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::config::{CommandPlan, Launch, Plan, PostgresPlan};
use crate::control::metrics::ProbeStats;
use crate::control::EventLog;
use crate::health::Prober;
use crate::logs;
use crate::postgres::{self, SetupError, Steps};
use crate::process::{self, ChildSpec, Env, Exit, Reaper};
use crate::supervisor::{Action, Event, Id, Supervisor, Target, EXIT_START_FAILED};

pub use signals::{block_signals, spawn_reaper_thread, spawn_signal_thread};

/// How long, at exit, we wait for the last lines of children's output to be copied out.
/// Only spent when something outside our process groups still holds a pipe open.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// How long, at exit, `tandem events` watchers may take to receive the last events.
const EVENTS_FLUSH: Duration = Duration::from_millis(200);

/// How long the exit sweep may go round killing children (and the orphans that killing
/// them makes), and how often it looks again while the reaper collects them.
const SWEEP_LIMIT: Duration = Duration::from_millis(500);
const SWEEP_ROUND: Duration = Duration::from_millis(2);

/// Runs the plan until the supervisor says exit; returns the exit code.
pub async fn run(
    plan: Plan,
    reaper: Reaper,
    mut events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::UnboundedSender<Event>,
) -> i32 {
    let prober = match Prober::new(reaper.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_START_FAILED;
        }
    };
    let (ask_tx, mut asks) = mpsc::channel(16);
    let (verdict_tx, mut verdicts) = mpsc::unbounded_channel();
    let origin = Instant::now();
    let log = EventLog::new(origin);
    // Kept for the life of the loop; dropping it removes the socket file.
    let _control = control::serve(&plan, ask_tx.clone(), log.clone()).await;
    let _http = match plan.http {
        Some(addr) => match crate::control::http::serve(addr, ask_tx).await {
            Ok(guard) => {
                tracing::info!("http endpoint on http://{addr} (/healthz, /readyz, /metrics)");
                Some(guard)
            }
            Err(e) => {
                tracing::error!("{e}");
                return EXIT_START_FAILED;
            }
        },
        None => None,
    };
    let names: Vec<&str> = plan.services.iter().map(|s| s.spec.name.as_str()).collect();
    logs::align(&names);
    for warning in plan.warnings() {
        tracing::warn!("{warning}");
    }
    let mut sup = Supervisor::new(plan.specs(), plan.settings);
    let cancels: Vec<Arc<AtomicBool>> = plan
        .services
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    // Every process group a service or a set-up step led, for the sweep at exit.
    let mut groups: Vec<Pid> = Vec::new();
    let mut probes = vec![ProbeStats::default(); plan.services.len()];
    // Whether a service other than the embedded database has started: work that must not
    // compete with the app's start (the analyze after an upgrade) waits for it.
    let (others_started, others_rx) = tokio::sync::watch::channel(plan.services.len() < 2);
    let plan = Arc::new(plan);

    sup.start(origin);
    loop {
        publish(&mut sup, &log, &plan);
        while let Some(action) = sup.poll_action() {
            match action {
                Action::Start(id) => start(id, &plan, &reaper, &tx, &cancels[id], &others_rx),
                Action::Signal { id, signal, to } => send(sup.name(id), signal, to),
                Action::CancelSetup(id) => cancels[id].store(true, Ordering::Relaxed),
                Action::Probe(id) => probe(id, &plan, &prober, &tx),
                Action::Exit { code } => {
                    // Watchers get the last events (the stop timeline) before the end.
                    log.close(EVENTS_FLUSH).await;
                    sweep(&groups).await;
                    logs::drain(OUTPUT_DRAIN).await;
                    return code;
                }
            }
        }
        let deadline = sup.next_deadline();
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return EXIT_START_FAILED };
                match &ev {
                    Event::Started { id, pid } => {
                        groups.push(*pid);
                        if !matches!(plan.services[*id].launch, Launch::Postgres(_)) {
                            others_started.send_replace(true);
                        }
                    }
                    Event::StepStarted { pid, .. } => groups.push(*pid),
                    // A group that is empty now needs no sweep (and its id may be reused).
                    Event::Exited { .. } | Event::StepExited { .. } => {
                        groups.retain(|g| nix::sys::signal::kill(Pid::from_raw(-g.as_raw()), None) != Err(Errno::ESRCH));
                    }
                    Event::Probe { id, report } => {
                        if let Some(p) = probes.get_mut(*id) {
                            p.observe(report);
                        }
                    }
                    _ => {}
                }
                sup.handle(ev, Instant::now());
            }
            _ = sleep_until(deadline) => sup.handle_timeout(Instant::now()),
            Some((request, reply)) = asks.recv() => {
                let state = control::State {
                    sup: &sup,
                    plan: &plan,
                    prober: &prober,
                    verdicts: &verdict_tx,
                    probes: &probes,
                };
                control::answer(request, reply, state, Instant::now());
            }
            Some((fresh, reply)) = verdicts.recv() => control::verdict(&sup, fresh, reply, Instant::now()),
        }
    }
}

/// Hands what the supervisor noted to the event log, stamped with the wall clock.
fn publish(sup: &mut Supervisor, events: &EventLog, plan: &Plan) {
    let clocks = (Instant::now(), std::time::SystemTime::now());
    while let Some(noted) = sup.poll_fact() {
        let service = noted.service.map(|id| plan.services[id].spec.name.as_str());
        events.publish(noted.at, clocks, service, &noted.fact);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn start(
    id: Id,
    plan: &Arc<Plan>,
    reaper: &Reaper,
    tx: &mpsc::UnboundedSender<Event>,
    cancel: &Arc<AtomicBool>,
    others_started: &tokio::sync::watch::Receiver<bool>,
) {
    let name = plan.services[id].spec.name.clone();
    match &plan.services[id].launch {
        Launch::Command(c) => start_command(id, &name, c, reaper, tx),
        Launch::Postgres(_) => {
            let plan = Arc::clone(plan);
            let tx = tx.clone();
            let steps = Steps::new(id, tx.clone(), Arc::clone(cancel), reaper.clone());
            let others_started = others_started.clone();
            tokio::spawn(async move {
                let Launch::Postgres(pg) = &plan.services[id].launch else {
                    return;
                };
                start_postgres(id, &name, pg, steps, &tx, others_started).await;
            });
        }
        // Nothing to start: the supervisor probes it.
        Launch::External => {}
    }
}

/// Forwards the exit status of a service's main process to the supervisor when the reaper
/// delivers it, once its last output lines are out.
fn forward_exit(
    id: Id,
    exit: tokio::sync::oneshot::Receiver<Exit>,
    output: logs::Drained,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        if let Ok(exit) = exit.await {
            output.wait(logs::LAST_WORDS).await;
            let _ = tx.send(Event::Exited { id, exit });
        }
    });
}

fn start_command(
    id: Id,
    name: &str,
    c: &CommandPlan,
    reaper: &Reaper,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let mut spec = ChildSpec::new(&c.program).user(c.user.clone());
    spec.argv = c.argv.clone();
    spec.env = Env::Exactly(c.env.clone());
    spec.cwd = c.working_dir.clone();
    match reaper.spawn(spec) {
        Ok(mut spawned) => {
            let output = logs::pump_spawned(name, &mut spawned);
            let _ = tx.send(Event::Started {
                id,
                pid: spawned.pid,
            });
            forward_exit(id, spawned.exit, output, tx);
        }
        Err(e) => {
            let _ = tx.send(Event::StartFailed {
                id,
                reason: format!("{name}: {e}"),
                code: e.exit_code(),
            });
        }
    }
}

/// Prepares PGDATA (the first start's or an upgrade's steps reported as they run), starts
/// the server, and reports it ready once the postmaster says so, a protocol round trip works
/// and the stored password was compared with POSTGRES_PASSWORD (and set, when asked).
async fn start_postgres(
    id: Id,
    name: &str,
    pg: &PostgresPlan,
    steps: Steps,
    tx: &mpsc::UnboundedSender<Event>,
    others_started: tokio::sync::watch::Receiver<bool>,
) {
    let fail = |reason: String| {
        let _ = tx.send(Event::StartFailed {
            id,
            reason,
            code: EXIT_START_FAILED,
        });
    };
    tracing::info!(
        "using PostgreSQL {} from {} ({})",
        pg.bins.version,
        pg.bins.dir.display(),
        pg.bins.source
    );
    if let Err(e) = check_port_free(pg.settings.port) {
        return fail(e);
    }
    let prepared = match postgres::prepare(&pg.settings, &pg.bins, &steps).await {
        Ok(p) => p,
        Err(e) => return fail(e.message().to_string()),
    };
    if let Err(SetupError::Interrupted(e)) = steps.check() {
        return fail(e);
    }
    let mut spawned = match steps
        .reaper()
        .spawn(postgres::server_spec(&pg.settings, &pg.bins))
    {
        Ok(s) => s,
        Err(e) => return fail(format!("{name}: {e}")),
    };
    let output = logs::pump_spawned(name, &mut spawned);
    let pid = spawned.pid;
    let _ = tx.send(Event::Started { id, pid });
    let mut exit = spawned.exit;
    tokio::select! {
        ready = postgres::wait_ready(&pg.settings, pid) => match ready {
            Ok(()) => {
                // A password to store goes in before the app logs in with it; one that is
                // only compared is compared beside the app's start (about 10 ms: a
                // backend's start and the SCRAM key derivation), off the critical path.
                if prepared.existing && pg.settings.sync_password {
                    postgres::password::check(&pg.settings).await;
                }
                let _ = tx.send(Event::Ready { id });
                if prepared.existing && !pg.settings.sync_password {
                    let settings = pg.settings.clone();
                    tokio::spawn(async move { postgres::password::check(&settings).await });
                }
                if let Some(finish) = prepared.upgrade {
                    let (reaper, pg) = (steps.reaper().clone(), pg.clone());
                    tokio::spawn(after_upgrade(finish, pg, reaper, others_started));
                }
            }
            // The supervisor stops it through its ladder.
            Err(e) => fail(format!("{name} cannot be watched for readiness: {e}")),
        },
        result = &mut exit => {
            if let Ok(exit) = result {
                output.wait(logs::LAST_WORDS).await;
                let _ = tx.send(Event::Exited { id, exit });
            }
            return;
        }
    }
    forward_exit(id, exit, output, tx);
}

/// After an upgrade's new server is ready: the old files go, then, once the app has started,
/// the planner's statistics are rebuilt in the background (`vacuumdb --analyze-in-stages`),
/// which readiness never waits for.
async fn after_upgrade(
    finish: postgres::upgrade::Finish,
    pg: PostgresPlan,
    reaper: Reaper,
    mut others_started: tokio::sync::watch::Receiver<bool>,
) {
    let spec = finish.analyze_spec(&pg.settings, &pg.bins);
    match tokio::task::spawn_blocking(move || finish.clean_up()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{e}"),
        Err(e) => tracing::warn!("cleaning up after the upgrade: {e}"),
    }
    if others_started.wait_for(|started| *started).await.is_err() {
        return;
    }
    let began = Instant::now();
    tracing::info!("the upgrade carried no planner statistics over: vacuumdb --all --analyze-in-stages in the background");
    let mut spawned = match reaper.spawn(spec) {
        Ok(s) => s,
        Err(e) => return tracing::warn!("cannot run vacuumdb after the upgrade: {e}"),
    };
    let output = logs::pump_spawned(postgres::SERVICE, &mut spawned);
    let exit = spawned.exit.await;
    output.wait(logs::LAST_WORDS).await;
    match exit {
        Ok(e) if e.success() => tracing::info!(
            "vacuumdb --analyze-in-stages done in {:.1} s",
            began.elapsed().as_secs_f64()
        ),
        Ok(e) => tracing::warn!(
            "vacuumdb --analyze-in-stages {}; the planner lacks statistics until it runs (vacuumdb --all --analyze-in-stages)",
            e.ended()
        ),
        Err(_) => {}
    }
}

/// Runs a service's probe in the background and reports the answer as an event.
fn probe(id: Id, plan: &Arc<Plan>, prober: &Prober, tx: &mpsc::UnboundedSender<Event>) {
    let (Some(p), Some(h)) = (&plan.services[id].probe, &plan.services[id].spec.health) else {
        return;
    };
    let (p, timeout) = (p.clone(), h.timeout);
    let (prober, tx) = (prober.clone(), tx.clone());
    tokio::spawn(async move {
        let report = prober.run(&p, timeout).await;
        let _ = tx.send(Event::Probe { id, report });
    });
}

/// PostgreSQL would fail to bind with a line buried in its log; say it up front instead.
fn check_port_free(port: u16) -> Result<(), String> {
    match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "port {port} (PGPORT) is already in use by another program; stop it or set PGPORT to a free port"
        )),
        Err(e) => Err(format!("cannot check port {port} (PGPORT): {e}")),
    }
}

/// Delivers a signal where the supervisor said.
fn send(name: &str, signal: Signal, to: Target) {
    let result = match to {
        Target::Leader(pid) => nix::sys::signal::kill(pid, signal),
        Target::Group(pid) => process::signal_group(pid, signal),
    };
    match result {
        Ok(()) => tracing::debug!("sent {} to {name}", signal.as_str()),
        Err(e) => tracing::debug!("could not send {} to {name}: {e}", signal.as_str()),
    }
}

/// Nothing tandem started outlives it: kill what is left of every process group it
/// started, and, when we are a subreaper rather than PID 1 (whose exit takes the whole
/// namespace), every remaining child. Killing a child orphans its own children, which come
/// to us in turn, so this goes round until no child is left (each round waits for the
/// reaper), for at most [`SWEEP_LIMIT`].
async fn sweep(groups: &[Pid]) {
    for pgid in groups {
        let _ = nix::sys::signal::kill(Pid::from_raw(-pgid.as_raw()), Signal::SIGKILL);
    }
    if std::process::id() == 1 {
        return;
    }
    let deadline = Instant::now() + SWEEP_LIMIT;
    loop {
        let children = signals::children_of_self();
        if children.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!("{} processes still there at exit", children.len());
            return;
        }
        for pid in children {
            let _ = process::signal_group(pid, Signal::SIGKILL);
        }
        tokio::time::sleep(SWEEP_ROUND).await;
    }
}
