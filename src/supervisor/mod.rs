//! The decisions: what to start, signal and when to exit. Pure code.
//!
//! The supervisor never reads the clock and never touches a process. Every input carries
//! `now`; the answers are [`Action`]s, drained with [`Supervisor::poll_action`], and one
//! deadline, [`Supervisor::next_deadline`], at which the runtime calls
//! [`Supervisor::handle_timeout`]. That keeps ordering, escalation and the stop budget
//! testable in microseconds with a fake clock (see the tests at the bottom).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

mod health;
mod state;

use health::HealthState;
pub use health::{Health, HealthSpec, LastProbe, OnUnhealthy, ProbeReport, Verdict};
pub use state::{Phase, ServiceStatus};

/// A service's index in the plan; stable for the life of the supervisor.
pub type Id = usize;

/// tandem's exit code when a required service failed while running, or a dependency can
/// never be met.
pub const EXIT_SERVICE_FAILED: i32 = 3;
/// tandem's exit code when it could not start (bad input, initialisation failed).
pub const EXIT_START_FAILED: i32 = 1;

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited on its own with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// The code a shell would report: the exit code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// What a dependent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// The process is running.
    Started,
    /// The service reported ready (PostgreSQL: accepting connections), or is running and
    /// has no readiness check.
    Healthy,
    /// A one-shot task exited 0.
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Runs until stopped.
    Daemon,
    /// Runs to completion; exit 0 is success.
    Oneshot,
}

/// What the supervisor needs to know about a service. Built by `config`.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    pub depends_on: Vec<(Id, Condition)>,
    /// Signals tried in turn when stopping, e.g. `[SIGTERM, SIGKILL]`, or PostgreSQL's
    /// `[SIGINT, SIGQUIT, SIGKILL]` (fast, immediate, kill).
    pub stop_ladder: Vec<Signal>,
    /// How long the first stop signal gets before the next one (bounded by the budget).
    pub stop_timeout: Duration,
    /// How long each step between the first and the last gets.
    pub step_timeout: Duration,
    /// The share of the total stop budget this service keeps for its own clean stop: the
    /// services that stop before it must be gone by `deadline - stop_reserve`.
    pub stop_reserve: Duration,
    /// The ladder step that an immediate stop (SIGQUIT to tandem) jumps to.
    pub immediate_step: usize,
    /// When this service exits, the container stops and exits with its code.
    pub main: bool,
    /// Dependents waiting for `healthy` wait for [`Event::Ready`]; otherwise the service is
    /// ready as soon as it has started.
    pub needs_ready: bool,
    /// What it gets when tandem gets SIGHUP.
    pub reload_signal: Option<Signal>,
    /// Whether SIGUSR1, SIGUSR2 and SIGWINCH sent to tandem are passed on to it.
    pub forward_signals: bool,
    /// Its health probe's timing and what to do when it keeps failing.
    pub health: Option<HealthSpec>,
}

/// Facts reported to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The service's main process is running.
    Started { id: Id, pid: Pid },
    /// The service passed its readiness check.
    Ready { id: Id },
    /// The service could not be started; `code` is the exit code this deserves
    /// (127 command not found, 126 not executable, 1 otherwise).
    StartFailed { id: Id, reason: String, code: i32 },
    /// The service's main process has exited.
    Exited { id: Id, exit: Exit },
    /// tandem received a signal.
    Signal(Signal),
    /// A health probe asked for with [`Action::Probe`] finished.
    Probe { id: Id, report: ProbeReport },
}

/// Commands for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the service (spawn it, or initialise and spawn PostgreSQL).
    Start(Id),
    /// Send a signal to the service (its process group, or the postmaster).
    Signal { id: Id, signal: Signal },
    /// Run the service's health probe and report with [`Event::Probe`].
    Probe(Id),
    /// Everything is stopped (or the budget is spent): exit with this code.
    Exit { code: i32 },
}

/// Why and since when the supervisor is stopping everything.
#[derive(Debug, Clone)]
struct Shutdown {
    started: Instant,
    /// When tandem exits whatever is still running: the end of the stop budget.
    deadline: Instant,
    /// The exit code decided when the shutdown began, if any (failure, or the main
    /// service's own exit); otherwise the main service's exit decides.
    code: Option<i32>,
    /// The signal that asked for the stop, for the exit code when no app ever ran.
    signal: Option<Signal>,
    /// SIGQUIT: stop everything at once, without waiting for dependents.
    immediate: bool,
}

/// Per-service bookkeeping.
#[derive(Debug, Clone)]
struct Svc {
    spec: Spec,
    phase: Phase,
    pid: Option<Pid>,
    ready: bool,
    /// When the Start action was issued: the base of "ready after N ms".
    start_requested: Option<Instant>,
    started_at: Option<Instant>,
    /// Current index in `stop_ladder` while stopping.
    stop_step: usize,
    stop_began: Option<Instant>,
    /// When to move to the next ladder step.
    escalate_at: Option<Instant>,
    /// The latest instant this service may still be stopping at, so the services it depends
    /// on keep their reserve.
    stop_window_end: Option<Instant>,
    exit: Option<Exit>,
    /// Could not start, or failed for good.
    failed: bool,
    health: HealthState,
    /// Times it was started again after being unhealthy.
    restarts: u32,
    /// It is being stopped to be started again.
    restarting: bool,
}

pub struct Supervisor {
    svcs: Vec<Svc>,
    /// The total time from the first stop signal to exit (TANDEM_STOP_TIMEOUT).
    budget: Duration,
    /// Time kept after the last step of a ladder for the process to die and be reaped.
    final_grace: Duration,
    shutdown: Option<Shutdown>,
    actions: VecDeque<Action>,
    exited: bool,
}

impl Supervisor {
    pub fn new(specs: Vec<Spec>, budget: Duration) -> Self {
        let svcs = specs
            .into_iter()
            .map(|spec| Svc {
                spec,
                phase: Phase::Waiting,
                pid: None,
                ready: false,
                start_requested: None,
                started_at: None,
                stop_step: 0,
                stop_began: None,
                escalate_at: None,
                stop_window_end: None,
                exit: None,
                failed: false,
                health: HealthState::default(),
                restarts: 0,
                restarting: false,
            })
            .collect();
        Supervisor {
            svcs,
            budget,
            final_grace: (budget / 10).min(Duration::from_millis(500)),
            shutdown: None,
            actions: VecDeque::new(),
            exited: false,
        }
    }

    /// Starts every service whose dependencies are already met.
    pub fn start(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The next command for the runtime, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Supervisor::handle_timeout`] must be called next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        let escalations = self.svcs.iter().filter_map(|s| s.escalate_at);
        let probes = self.svcs.iter().filter_map(|s| s.health.due);
        let budget_end = self.shutdown.as_ref().map(|s| s.deadline);
        escalations.chain(probes).chain(budget_end).min()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    pub fn name(&self, id: Id) -> &str {
        &self.svcs[id].spec.name
    }

    /// A read-only view of every service, for `tandem status`.
    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.svcs.iter().map(|s| s.status(now)).collect()
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.exited {
            return;
        }
        match event {
            Event::Started { id, pid } => self.on_started(id, pid, now),
            Event::Ready { id } => self.on_ready(id, now),
            Event::StartFailed { id, reason, code } => self.on_start_failed(id, reason, code, now),
            Event::Exited { id, exit } => self.on_exited(id, exit, now),
            Event::Signal(sig) => self.on_signal(sig, now),
            Event::Probe { id, report } => self.on_probe(id, report, now),
        }
        self.advance(now);
    }

    /// Fires every escalation due at `now`, and exits if the budget is spent.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        for id in 0..self.svcs.len() {
            if self.svcs[id].escalate_at.is_some_and(|t| t <= now) {
                self.escalate(id, now, "it did not stop in time");
            }
        }
        self.issue_due_probes(now);
        if let Some(sd) = &self.shutdown {
            if sd.deadline <= now {
                let left: Vec<&str> = self
                    .svcs
                    .iter()
                    .filter(|s| s.phase != Phase::Done)
                    .map(|s| s.spec.name.as_str())
                    .collect();
                tracing::error!(
                    "stop budget of {} ms spent; exiting with {} still running",
                    self.budget.as_millis(),
                    left.join(", ")
                );
                self.exit_now(now);
                return;
            }
        }
        self.advance(now);
    }

    fn on_started(&mut self, id: Id, pid: Pid, now: Instant) {
        let svc = &mut self.svcs[id];
        svc.pid = Some(pid);
        svc.started_at = Some(now);
        match svc.phase {
            Phase::Starting => {
                svc.phase = Phase::Running;
                tracing::info!(pid = pid.as_raw(), "{} started", svc.spec.name);
                if svc.spec.health.is_some() {
                    // Its probe decides when it is ready, unless a readiness check does.
                    if !svc.spec.needs_ready {
                        svc.health.due = Some(now);
                    }
                } else if !svc.spec.needs_ready {
                    svc.ready = true;
                }
            }
            // A stop was asked for while it was still being set up: pass it on now that
            // there is a process to receive it.
            Phase::Stopping => {
                let signal = svc.spec.stop_ladder[svc.stop_step];
                self.actions.push_back(Action::Signal { id, signal });
            }
            _ => {}
        }
    }

    fn on_ready(&mut self, id: Id, now: Instant) {
        let svc = &mut self.svcs[id];
        if svc.phase != Phase::Running || svc.ready {
            return;
        }
        svc.ready = true;
        let ms = svc
            .start_requested
            .map(|t| now.saturating_duration_since(t).as_millis())
            .unwrap_or(0);
        tracing::info!("{} is ready after {ms} ms", svc.spec.name);
        if svc.spec.health.is_some() && svc.health.due.is_none() {
            svc.health.due = Some(now);
        }
    }

    fn on_start_failed(&mut self, id: Id, reason: String, code: i32, now: Instant) {
        let svc = &mut self.svcs[id];
        svc.phase = Phase::Done;
        svc.failed = true;
        svc.escalate_at = None;
        if self.shutdown.is_some() {
            tracing::info!("{} did not finish starting: {reason}", svc.spec.name);
        } else {
            tracing::error!("{reason}");
            self.begin_shutdown(now, Some(code), None);
        }
    }

    fn on_exited(&mut self, id: Id, exit: Exit, now: Instant) {
        let svc = &mut self.svcs[id];
        svc.exit = Some(exit);
        svc.phase = Phase::Done;
        svc.pid = None;
        svc.escalate_at = None;
        svc.health = HealthState::default();
        if svc.restarting && self.shutdown.is_none() {
            svc.restarting = false;
            svc.restarts += 1;
            svc.phase = Phase::Waiting;
            svc.ready = false;
            svc.stop_began = None;
            svc.exit = None;
            tracing::info!(
                "{} {exit}; starting it again (restart {})",
                svc.spec.name,
                svc.restarts
            );
            return;
        }
        if let Some(began) = svc.stop_began {
            let ms = now.saturating_duration_since(began).as_millis();
            tracing::info!("{} {exit} after stopping for {ms} ms", svc.spec.name);
            return;
        }
        if self.shutdown.is_some() {
            tracing::info!("{} {exit}", svc.spec.name);
            return;
        }
        // Restart policies slot in here: this is the one place that decides what an
        // unexpected exit means.
        let name = svc.spec.name.clone();
        if svc.spec.kind == Kind::Oneshot && exit.success() {
            tracing::info!("{name} completed");
        } else if svc.spec.needs_ready && !svc.ready {
            // It never came up: a start failure (bad configuration, say), not a crash.
            svc.failed = true;
            tracing::error!("{name} {exit} before it was ready (its log above says why)");
            self.begin_shutdown(now, Some(EXIT_START_FAILED), None);
        } else if svc.spec.main {
            tracing::info!("{name} {exit}; stopping the other services");
            self.begin_shutdown(now, Some(exit.shell_code()), None);
        } else {
            svc.failed = true;
            tracing::error!("{name} {exit} unexpectedly; stopping the container");
            self.begin_shutdown(now, Some(EXIT_SERVICE_FAILED), None);
        }
    }

    fn on_signal(&mut self, sig: Signal, now: Instant) {
        match sig {
            Signal::SIGTERM | Signal::SIGINT => {
                if self.shutdown.is_none() {
                    tracing::info!("received {}; stopping", sig.as_str());
                    self.begin_shutdown(now, None, Some(sig));
                } else {
                    tracing::info!(
                        "received {} again; skipping to the next stop signal",
                        sig.as_str()
                    );
                    self.hurry(now);
                }
            }
            Signal::SIGQUIT => {
                tracing::info!("received SIGQUIT; stopping everything at once");
                if self.shutdown.is_none() {
                    self.begin_shutdown(now, None, Some(sig));
                }
                self.stop_immediately(now);
            }
            Signal::SIGHUP => {
                for id in 0..self.svcs.len() {
                    let svc = &self.svcs[id];
                    if let (Some(signal), true) = (svc.spec.reload_signal, svc.is_alive()) {
                        tracing::info!("reload: sending {} to {}", signal.as_str(), svc.spec.name);
                        self.actions.push_back(Action::Signal { id, signal });
                    }
                }
            }
            Signal::SIGUSR1 | Signal::SIGUSR2 | Signal::SIGWINCH => {
                for id in 0..self.svcs.len() {
                    let svc = &self.svcs[id];
                    if svc.spec.forward_signals && svc.pid.is_some() && svc.is_alive() {
                        self.actions.push_back(Action::Signal { id, signal: sig });
                    }
                }
            }
            other => tracing::debug!("ignoring {}", other.as_str()),
        }
    }

    fn begin_shutdown(&mut self, now: Instant, code: Option<i32>, signal: Option<Signal>) {
        if self.shutdown.is_some() {
            return;
        }
        let deadline = now + self.budget;
        self.shutdown = Some(Shutdown {
            started: now,
            deadline,
            code,
            signal,
            immediate: false,
        });
        // A service being restarted is already stopping: it stays stopped, and its stop now
        // has to fit in the budget like everyone else's.
        for id in 0..self.svcs.len() {
            self.svcs[id].health.due = None;
            if self.svcs[id].restarting {
                let reserve = self.reserve_after(id);
                let end = deadline
                    .checked_sub(reserve + self.final_grace)
                    .unwrap_or(now)
                    .max(now);
                let svc = &mut self.svcs[id];
                svc.restarting = false;
                svc.stop_window_end = svc.stop_window_end.map(|w| w.min(end));
                svc.escalate_at = svc.escalate_at.map(|t| t.min(end));
            }
        }
    }

    /// A second stop request: every service that is stopping moves to its next signal now.
    fn hurry(&mut self, now: Instant) {
        for id in 0..self.svcs.len() {
            if self.svcs[id].phase == Phase::Stopping {
                self.escalate(id, now, "asked to stop again");
            }
        }
    }

    fn stop_immediately(&mut self, now: Instant) {
        if let Some(sd) = &mut self.shutdown {
            sd.immediate = true;
        }
        for id in 0..self.svcs.len() {
            let svc = &self.svcs[id];
            if !svc.is_alive() {
                continue;
            }
            let step = svc.spec.immediate_step.min(svc.spec.stop_ladder.len() - 1);
            if svc.phase == Phase::Stopping && svc.stop_step >= step {
                continue;
            }
            self.begin_stop(id, now);
            self.set_step(id, step, now);
        }
    }

    /// Moves a stopping service to the next signal of its ladder; `why` ends the log line.
    fn escalate(&mut self, id: Id, now: Instant, why: &str) {
        let svc = &self.svcs[id];
        let next = svc.stop_step + 1;
        if next < svc.spec.stop_ladder.len() {
            let signal = svc.spec.stop_ladder[next];
            tracing::info!("sending {} to {} ({why})", signal.as_str(), svc.spec.name);
            self.set_step(id, next, now);
        } else {
            self.svcs[id].escalate_at = None;
        }
    }

    fn set_step(&mut self, id: Id, step: usize, now: Instant) {
        let svc = &mut self.svcs[id];
        let last = svc.spec.stop_ladder.len() - 1;
        let window_end = svc.stop_window_end.unwrap_or(now).max(now);
        svc.stop_step = step;
        let signal = svc.spec.stop_ladder[step];
        svc.escalate_at = if step == last {
            None
        } else if step == 0 {
            // The first signal gets its timeout, but leaves room for the steps after it.
            let later = svc.spec.step_timeout * (last as u32).saturating_sub(1);
            let room = window_end.checked_sub(later).unwrap_or(now).max(now);
            Some((now + svc.spec.stop_timeout).min(room))
        } else {
            Some((now + svc.spec.step_timeout).min(window_end))
        };
        if svc.pid.is_some() || svc.phase == Phase::Starting || svc.phase == Phase::Stopping {
            self.actions.push_back(Action::Signal { id, signal });
        }
    }

    /// Puts a live service into the stopping phase and computes its stop window.
    fn begin_stop(&mut self, id: Id, now: Instant) {
        let Some(sd) = &self.shutdown else { return };
        let reserve = self.reserve_after(id);
        let window_end = sd
            .deadline
            .checked_sub(reserve + self.final_grace)
            .unwrap_or(now)
            .max(now);
        let svc = &mut self.svcs[id];
        if svc.phase == Phase::Stopping {
            return;
        }
        svc.phase = Phase::Stopping;
        svc.stop_began = Some(now);
        svc.stop_window_end = Some(window_end);
        tracing::info!(
            "stopping {} ({})",
            svc.spec.name,
            svc.spec.stop_ladder[0].as_str()
        );
    }

    /// The time the services `id` depends on (directly or not), still alive, keep for
    /// their own clean stop after `id` is gone.
    fn reserve_after(&self, id: Id) -> Duration {
        let mut seen = vec![false; self.svcs.len()];
        let mut stack = vec![id];
        let mut total = Duration::ZERO;
        while let Some(i) = stack.pop() {
            for &(dep, _) in &self.svcs[i].spec.depends_on {
                if !seen[dep] {
                    seen[dep] = true;
                    if self.svcs[dep].is_alive() {
                        total += self.svcs[dep].spec.stop_reserve;
                    }
                    stack.push(dep);
                }
            }
        }
        total
    }

    /// Moves everything forward that can move: starts services whose dependencies hold,
    /// fails those whose dependencies never will, and, when stopping, stops services whose
    /// dependents are gone, and exits when all are.
    fn advance(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        if self.shutdown.is_none() {
            self.start_ready_services(now);
            self.issue_due_probes(now);
        }
        if let Some(sd) = &self.shutdown {
            let immediate = sd.immediate;
            for id in 0..self.svcs.len() {
                match self.svcs[id].phase {
                    Phase::Waiting => self.svcs[id].phase = Phase::Done,
                    Phase::Starting | Phase::Running
                        if immediate || !self.has_live_dependents(id) =>
                    {
                        self.begin_stop(id, now);
                        self.set_step(id, 0, now);
                    }
                    _ => {}
                }
            }
            if self.svcs.iter().all(|s| s.phase == Phase::Done) {
                self.exit_now(now);
            }
        }
    }

    fn start_ready_services(&mut self, now: Instant) {
        for id in 0..self.svcs.len() {
            if self.svcs[id].phase != Phase::Waiting {
                continue;
            }
            let mut all_met = true;
            for &(dep, cond) in &self.svcs[id].spec.depends_on {
                let d = &self.svcs[dep];
                if d.satisfies(cond) {
                    continue;
                }
                all_met = false;
                if d.phase == Phase::Done {
                    let why = match d.exit {
                        Some(e) => format!("{} {e}", d.spec.name),
                        None => format!("{} did not start", d.spec.name),
                    };
                    tracing::error!(
                        "{} can never start: it needs {} {:?} but {why}",
                        self.svcs[id].spec.name,
                        d.spec.name,
                        cond
                    );
                    self.begin_shutdown(now, Some(EXIT_SERVICE_FAILED), None);
                    return;
                }
            }
            if all_met {
                let svc = &mut self.svcs[id];
                svc.phase = Phase::Starting;
                svc.start_requested = Some(now);
                self.actions.push_back(Action::Start(id));
            }
        }
    }

    fn has_live_dependents(&self, id: Id) -> bool {
        self.svcs
            .iter()
            .any(|s| s.is_alive() && s.spec.depends_on.iter().any(|&(d, _)| d == id))
    }

    fn exit_now(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        self.exited = true;
        let code = self.exit_code();
        if let Some(sd) = &self.shutdown {
            let ms = now.saturating_duration_since(sd.started).as_millis();
            tracing::info!("stopped after {ms} ms; exiting with code {code}");
        }
        self.actions.push_back(Action::Exit { code });
    }

    /// The decided code, else the main service's, else 128+signal when a signal stopped
    /// a container whose app never ran, else 0.
    fn exit_code(&self) -> i32 {
        let sd = self.shutdown.as_ref();
        if let Some(code) = sd.and_then(|s| s.code) {
            return code;
        }
        if let Some(exit) = self.svcs.iter().find(|s| s.spec.main).and_then(|s| s.exit) {
            return exit.shell_code();
        }
        match sd.and_then(|s| s.signal) {
            Some(sig) if self.svcs.iter().any(|s| s.spec.main) => 128 + sig as i32,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests;
