//! The edges: spawning, reaping, signals and timers, feeding the supervisor.
//!
//! One thread waits for signals synchronously (all of them are blocked everywhere, so no
//! handler ever runs) and reaps on SIGCHLD; one single-threaded tokio loop owns the
//! [`Supervisor`], turns facts into [`Event`]s, and carries out its [`Action`]s.

mod control;
pub mod process;
mod signals;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::config::{CommandPlan, Launch, Plan, PostgresPlan};
use crate::health::{Outcome, Prober};
use crate::logs;
use crate::postgres;
use crate::supervisor::{Action, Event, Id, ProbeReport, Supervisor, Verdict, EXIT_START_FAILED};
use process::{ChildSetup, Reaper};

pub use signals::{block_signals, spawn_reaper_thread, spawn_signal_thread};

/// How long, at exit, we wait for the last lines of children's output to be copied out.
/// Only spent when something outside our process groups still holds a pipe open.
const OUTPUT_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a child's last output may still take to arrive after its exit before the exit
/// is reported anyway (a grandchild holding the pipe open).
const LAST_WORDS: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the exit sweep may go round killing children (and the orphans that killing
/// them makes), and how often it looks again while the reaper collects them.
const SWEEP_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);
const SWEEP_ROUND: std::time::Duration = std::time::Duration::from_millis(2);

/// What the runtime knows about one service's processes.
struct Running {
    /// The main process (and process-group leader), once started.
    pid: Option<Pid>,
    /// The process group, kept after exit for the final sweep.
    pgid: Option<Pid>,
    /// PostgreSQL's set-up step currently running (initdb, the temporary server, psql).
    init_child: postgres::ChildSlot,
    /// Signals other than SIGKILL go to the leader only (PostgreSQL's postmaster relays
    /// them to its backends itself), not to the whole group.
    leader_only: bool,
}

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
    // Kept for the life of the loop; dropping it removes the socket file.
    let _control = control::serve(&plan, ask_tx).await;
    let mut sup = Supervisor::new(plan.specs(), plan.stop_budget);
    let mut running: Vec<Running> = plan
        .services
        .iter()
        .map(|s| Running {
            pid: None,
            pgid: None,
            init_child: Arc::new(Mutex::new(None)),
            leader_only: matches!(s.launch, Launch::Postgres(_)),
        })
        .collect();
    let plan = Arc::new(plan);

    sup.start(Instant::now());
    loop {
        while let Some(action) = sup.poll_action() {
            match action {
                Action::Start(id) => start(id, &plan, &reaper, &tx, &running[id]),
                Action::Signal { id, signal } => send(&running[id], sup.name(id), signal),
                Action::Probe(id) => probe(id, &plan, &prober, &tx),
                Action::Exit { code } => {
                    sweep(&running).await;
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
                        running[*id].pid = Some(*pid);
                        running[*id].pgid = Some(*pid);
                    }
                    Event::Exited { id, .. } => running[*id].pid = None,
                    _ => {}
                }
                sup.handle(ev, Instant::now());
            }
            _ = sleep_until(deadline) => sup.handle_timeout(Instant::now()),
            Some((request, reply)) = asks.recv() => {
                control::answer(request, reply, &sup, &plan, &prober, Instant::now());
            }
        }
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
    run: &Running,
) {
    let name = plan.services[id].spec.name.clone();
    match &plan.services[id].launch {
        Launch::Command(c) => start_command(id, &name, c, reaper, tx),
        Launch::Postgres(_) => {
            let plan = Arc::clone(plan);
            let reaper = reaper.clone();
            let tx = tx.clone();
            let slot = Arc::clone(&run.init_child);
            tokio::spawn(async move {
                let Launch::Postgres(pg) = &plan.services[id].launch else {
                    return;
                };
                start_postgres(id, &name, pg, &reaper, &tx, &slot).await;
            });
        }
    }
}

/// Forwards the exit status of `spawned` to the supervisor when the reaper delivers it,
/// once its last output lines are out.
fn forward_exit(
    id: Id,
    exit: tokio::sync::oneshot::Receiver<crate::supervisor::Exit>,
    output: logs::Drained,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        if let Ok(exit) = exit.await {
            output.wait(LAST_WORDS).await;
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
    let mut cmd = std::process::Command::new(&c.program);
    if let Some((argv0, rest)) = c.argv.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(rest);
    }
    cmd.env_clear()
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    process::prepare(
        &mut cmd,
        &ChildSetup {
            identity: c.user.clone(),
            new_session: true,
        },
    );
    match reaper.spawn(&mut cmd) {
        Ok(mut spawned) => {
            let output = logs::pump_child(name, &mut spawned.child);
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

/// Initialises PGDATA if needed, starts the server, and reports it ready once the
/// postmaster says so and a protocol round trip works.
async fn start_postgres(
    id: Id,
    name: &str,
    pg: &PostgresPlan,
    reaper: &Reaper,
    tx: &mpsc::UnboundedSender<Event>,
    slot: &postgres::ChildSlot,
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
    if let Err(e) = postgres::prepare(&pg.settings, &pg.bins, reaper, slot).await {
        return fail(e);
    }
    let mut cmd = postgres::server_command(&pg.settings, &pg.bins);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    process::prepare(
        &mut cmd,
        &ChildSetup {
            identity: pg.settings.os_user.clone(),
            new_session: true,
        },
    );
    let mut spawned = match reaper.spawn(&mut cmd) {
        Ok(s) => s,
        Err(e) => return fail(format!("{name}: {e}")),
    };
    let output = logs::pump_child(name, &mut spawned.child);
    let pid = spawned.pid;
    let _ = tx.send(Event::Started { id, pid });
    let mut exit = spawned.exit;
    tokio::select! {
        ready = postgres::wait_ready(&pg.settings, pid) => match ready {
            Ok(()) => { let _ = tx.send(Event::Ready { id }); }
            Err(e) => {
                tracing::error!("{name} did not become ready: {e}; stopping it");
                let _ = nix::sys::signal::kill(pid, Signal::SIGINT);
            }
        },
        result = &mut exit => {
            if let Ok(exit) = result {
                output.wait(LAST_WORDS).await;
                let _ = tx.send(Event::Exited { id, exit });
            }
            return;
        }
    }
    forward_exit(id, exit, output, tx);
}

/// Runs a service's probe in the background and reports the verdict as an event.
fn probe(id: Id, plan: &Arc<Plan>, prober: &Prober, tx: &mpsc::UnboundedSender<Event>) {
    let (Some(p), Some(h)) = (&plan.services[id].probe, &plan.services[id].spec.health) else {
        return;
    };
    let (p, timeout) = (p.clone(), h.timeout);
    let (prober, tx) = (prober.clone(), tx.clone());
    tokio::spawn(async move {
        let result = prober.run(&p, timeout).await;
        let report = to_report(&result.outcome, result.latency);
        let _ = tx.send(Event::Probe { id, report });
    });
}

pub(crate) fn to_report(outcome: &Outcome, latency: std::time::Duration) -> ProbeReport {
    let verdict = match outcome {
        Outcome::Ok => Verdict::Ok,
        Outcome::Starting(_) => Verdict::Starting,
        Outcome::Fail(_) => Verdict::Fail,
    };
    ProbeReport {
        verdict,
        detail: outcome.detail().to_string(),
        latency,
    }
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

/// Delivers a signal to a service: to its set-up step while PostgreSQL initialises, to the
/// leader or the whole group once it runs.
fn send(run: &Running, name: &str, signal: Signal) {
    let result = match run.pid {
        Some(pid) if run.leader_only && signal != Signal::SIGKILL => {
            nix::sys::signal::kill(pid, signal)
        }
        Some(pid) => process::signal_group(pid, signal),
        None => {
            let init = *run.init_child.lock().unwrap_or_else(|p| p.into_inner());
            match init {
                Some(pid) => process::signal_group(pid, signal),
                None => return,
            }
        }
    };
    match result {
        Ok(()) => tracing::debug!("sent {} to {name}", signal.as_str()),
        Err(e) => tracing::debug!("could not send {} to {name}: {e}", signal.as_str()),
    }
}

/// Nothing tandem started outlives it: kill what is left of every service's process group,
/// and, when we are a subreaper rather than PID 1 (whose exit takes the whole namespace),
/// every remaining child. Killing a child orphans its own children, which come to us in
/// turn, so this goes round until no child is left (each round waits for the reaper), for
/// at most [`SWEEP_LIMIT`].
async fn sweep(running: &[Running]) {
    for r in running {
        if let Some(pgid) = r.pgid {
            let _ = nix::sys::signal::kill(Pid::from_raw(-pgid.as_raw()), Signal::SIGKILL);
        }
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
