//! The decisions: what to start, signal and probe, and when to exit. Pure code.
//!
//! The supervisor never reads the clock and never touches a process. Every input carries
//! `now`; the answers are [`Action`]s, drained with [`Supervisor::poll_action`], and one
//! deadline, [`Supervisor::next_deadline`] (the minimum of a table of [`timers::Timer`]s), at
//! which the runtime calls [`Supervisor::handle_timeout`].
//!
//! - [`plan`]: services described by name and validated into [`Spec`]s ([`plan::Builder`]),
//!   the stop-budget arithmetic included.
//! - [`table`]: each service's [`Phase`], and the one transition function: a named cell for
//!   every (phase, input) pair.
//! - `stop`: the shutdown, stop ladders and their share of the budget.
//! - `health`: when to probe and what the answers mean.
//! - [`verdict`]: whether the container is healthy and why not, for `tandem healthcheck`.
//! - [`timers`]: timers as data.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

mod facts;
mod health;
pub mod plan;
pub mod stop;
pub mod table;
mod timeline;
pub mod timers;
pub mod verdict;

use crate::process::Exit;
pub use facts::{Fact, Noted};
use health::HealthState;
pub use health::{Health, HealthSpec, LastProbe, OnUnhealthy, Outcome, ProbeReport};
use table::Input;
pub use table::Phase;
use timers::{Timer, Timers};

/// A service's index in the plan; stable for the life of the supervisor.
pub type Id = usize;

/// tandem's exit code when a required service failed while running, or a dependency can
/// never be met.
pub const EXIT_SERVICE_FAILED: i32 = 3;
/// tandem's exit code when it could not start (bad input, initialisation failed).
pub const EXIT_START_FAILED: i32 = 1;

/// What a dependent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// The process is running (an external service: being probed).
    Started,
    /// The service is ready: reported so (PostgreSQL: accepting connections), its probe
    /// passed, or it is running and has no readiness check.
    Healthy,
    /// A one-shot task exited 0.
    Completed,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A process that runs until stopped.
    Daemon,
    /// A process that runs to completion; exit 0 is success.
    Oneshot,
    /// No process at all: something tandem does not run (a database in another container),
    /// whose readiness and health are its probe's.
    External,
}

/// How a service becomes ready, which is what dependents waiting for `healthy` wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as its process runs.
    Started,
    /// At its probe's first success.
    Probe,
    /// When the runtime reports [`Event::Ready`] (PostgreSQL: `postmaster.pid` says ready
    /// and a round trip answers).
    Reported,
}

/// What the supervisor knows about a service. Built by [`plan::Builder`].
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    pub readiness: Readiness,
    pub depends_on: Vec<(Id, Condition)>,
    /// Signals tried in turn when stopping, e.g. `[SIGTERM, SIGKILL]`, or PostgreSQL's
    /// `[SIGINT, SIGQUIT, SIGKILL]` (fast, immediate, kill).
    pub stop_ladder: Vec<Signal>,
    /// How long the first stop signal gets before the next one (bounded by the budget).
    pub stop_timeout: Duration,
    /// How long each step between the first and the last gets; also each signal of a
    /// set-up step's own ladder.
    pub step_timeout: Duration,
    /// The share of the total stop budget this service keeps for its own clean stop: the
    /// services that stop before it must be gone by `deadline - stop_reserve`.
    pub stop_reserve: Duration,
    /// The ladder step that an immediate stop (SIGQUIT to tandem) jumps to.
    pub immediate_step: usize,
    /// Signals other than SIGKILL go to the main process only (PostgreSQL's postmaster
    /// relays them to its backends itself), not to its whole process group.
    pub signal_leader_only: bool,
    /// When this service exits, the container stops and exits with its code.
    pub main: bool,
    /// Longest time from start to ready before the start counts as failed.
    pub start_timeout: Option<Duration>,
    /// What it gets when tandem gets SIGHUP.
    pub reload_signal: Option<Signal>,
    /// Whether SIGUSR1, SIGUSR2 and SIGWINCH sent to tandem are passed on to it.
    pub forward_signals: bool,
    /// Its health probe's timing and what to do when it keeps failing.
    pub health: Option<HealthSpec>,
    /// Whether, and how soon, it is started again when it exits.
    pub restart: Option<RestartSpec>,
    /// When it fails for good, the container stops (its dependents can never start).
    pub required: bool,
}

/// Restarts with exponential backoff: `delay`, then times `factor` up to `max_delay`, each
/// varied by up to ±`jitter` (a fraction) so that replicas do not retry in step; at most
/// `max_restarts` within any `window`; back to `delay` once it has stayed ready for
/// `reset_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartSpec {
    /// Only after a failure (a non-zero exit, a signal, unhealthy), not after exit 0.
    pub on_failure_only: bool,
    pub delay: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    pub jitter: f64,
    pub max_restarts: u32,
    pub window: Duration,
    pub reset_after: Duration,
}

impl RestartSpec {
    /// The delay before restart number `attempt` (0 first), jitter not applied.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let grown = self.delay.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(self.max_delay.as_secs_f64()))
    }
}

/// A step of a service's set-up that runs a process of its own (PostgreSQL's first start:
/// initdb, the temporary server, an init script, psql).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// For people: "initdb", "the temporary server", "init script 01-schema.sql".
    pub name: String,
    pub kind: StepKind,
    /// How long it may take (a server: until it is ready).
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Runs to completion; stopped with SIGTERM to its process group, then SIGKILL.
    Task,
    /// Runs to completion, and what it makes is thrown away when it is stopped: SIGKILL to
    /// its process group at once (initdb, which only acts on a signal at its next step, and
    /// whose own probes ignore SIGINT).
    Scratch,
    /// Stays up across the steps after it until the set-up asks for it to be stopped
    /// ([`Event::StepStopWanted`]); stopped with the service's own ladder.
    Server,
}

/// Facts reported to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The service's main process is running.
    Started { id: Id, pid: Pid },
    /// The service passed its readiness check ([`Readiness::Reported`]).
    Ready { id: Id },
    /// The service could not be started (or, asked to stop while starting, gave up): `code`
    /// is the exit code this deserves (127 command not found, 126 not executable, 1
    /// otherwise).
    StartFailed { id: Id, reason: String, code: i32 },
    /// The service's main process has exited.
    Exited { id: Id, exit: Exit },
    /// A set-up step's process is running.
    StepStarted { id: Id, step: Step, pid: Pid },
    /// The set-up step that is a server is ready.
    StepReady { id: Id },
    /// The set-up is done with its server step: stop it (fast) and keep it within time.
    StepStopWanted { id: Id },
    /// A set-up step's process has exited.
    StepExited { id: Id, pid: Pid, exit: Exit },
    /// tandem received a signal.
    Signal(Signal),
    /// A health probe asked for with [`Action::Probe`] finished.
    Probe { id: Id, report: ProbeReport },
}

/// Where a signal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The process group led by this pid (every child tandem starts leads its own).
    Group(Pid),
    /// This process only.
    Leader(Pid),
}

/// Commands for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the service (spawn it, or set up and spawn PostgreSQL).
    Start(Id),
    /// Send a signal.
    Signal { id: Id, signal: Signal, to: Target },
    /// The service's set-up must not begin another step: a stop is under way.
    CancelSetup(Id),
    /// Run the service's health probe and report with [`Event::Probe`].
    Probe(Id),
    /// Everything is stopped (or the budget is spent): exit with this code.
    Exit { code: i32 },
}

/// The container-wide settings of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The total time from the first stop signal to exit (TANDEM_STOP_TIMEOUT).
    pub budget: Duration,
    pub stop_exit: StopExit,
    /// Seeds the restart jitter (the runtime passes something that differs per
    /// container; tests pass a constant).
    pub seed: u64,
}

impl Settings {
    pub fn new(budget: Duration) -> Settings {
        Settings {
            budget,
            stop_exit: StopExit::Clean,
            seed: 1,
        }
    }
}

/// tandem's exit code after a stop it was asked for (TANDEM_STOP_EXIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopExit {
    /// 0 when the main service ended because of the stop signal tandem sent it (uvicorn
    /// re-raises SIGTERM after a graceful shutdown), or never ran.
    Clean,
    /// The main service's own code, 128+N when a signal ended it.
    App,
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
    /// The signal that asked for the stop.
    signal: Option<Signal>,
    /// SIGQUIT: stop everything at once, without waiting for dependents.
    immediate: bool,
}

/// A set-up step whose process is alive.
#[derive(Debug, Clone)]
struct LiveStep {
    step: Step,
    pid: Pid,
    began: Instant,
    /// The set-up asked for it to be stopped (a server whose work is done).
    stop_asked: bool,
}

/// A stop under way: which process of the service the ladder is working on, and where.
#[derive(Debug, Clone)]
struct Stopping {
    began: Instant,
    /// The latest instant this service may still be stopping at, so that the services it
    /// depends on keep their reserve.
    window_end: Instant,
    /// The process the ladder is at (a set-up step's, innermost first, then the main one);
    /// `None` while there is none (a start still under way).
    target: Option<Pid>,
    /// How that process is stopped, and the index of the last signal sent.
    ladder: stop::Ladder,
    step: usize,
    /// The signals sent to the main process, to tell a clean stop from a kill.
    sent_to_main: Vec<Signal>,
    /// Every stop signal sent, to any of its processes, for the stop timeline.
    sent: Vec<Signal>,
    /// When its last process was gone.
    ended: Option<Instant>,
}

/// Per-service bookkeeping.
#[derive(Debug, Clone)]
struct Svc {
    spec: Spec,
    phase: Phase,
    pid: Option<Pid>,
    /// Set-up steps running, outermost first.
    steps: Vec<LiveStep>,
    /// When the Start action was issued: the base of "ready after N ms".
    start_requested: Option<Instant>,
    started_at: Option<Instant>,
    stop: Option<Stopping>,
    /// How the last stop went, kept after the service is done.
    last_stop: Option<Stopping>,
    exit: Option<Exit>,
    /// Could not start, or failed for good.
    failed: bool,
    health: HealthState,
    /// Times it was started again (after an exit, or being unhealthy).
    restarts: u32,
    /// It is being stopped to be started again.
    restarting: bool,
    /// Restarts in a row since it last stayed ready for `reset_after`: the backoff step.
    attempt: u32,
    /// When it was restarted, within the last restart window.
    restart_times: Vec<Instant>,
    /// Since when it has been ready.
    ready_since: Option<Instant>,
    /// This start ran set-up steps (PostgreSQL's first start): the timeline says "init".
    had_steps: bool,
    /// When this start first counted as healthy, for the start timeline.
    healthy_at: Option<Instant>,
    /// How long its last start took, from asked for to ready.
    last_start: Option<Duration>,
}

pub struct Supervisor {
    svcs: Vec<Svc>,
    settings: Settings,
    /// Time kept after the last step of a ladder for the process to die and be reaped.
    final_grace: Duration,
    shutdown: Option<Shutdown>,
    timers: Timers,
    actions: VecDeque<Action>,
    exited: bool,
    /// The jitter's random state (xorshift64*).
    rng: u64,
    /// What happened, for the runtime to drain ([`Supervisor::poll_fact`]).
    facts: VecDeque<Noted>,
    /// When [`Supervisor::start`] was called: the origin of the start timeline.
    booted: Option<Instant>,
    /// The start timeline, once every service has been healthy.
    start_timeline: Option<String>,
}

/// One service as the supervisor sees it, for `tandem status` and the verdict.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: Kind,
    pub phase: Phase,
    pub pid: Option<i32>,
    pub uptime: Option<Duration>,
    /// How it ended.
    pub exit: Option<Exit>,
    pub failed: bool,
    /// The set-up step it is in, while starting.
    pub step: Option<String>,
    /// `None` for a service without a probe.
    pub health: Option<Health>,
    /// Consecutive probe failures that counted.
    pub failures: u32,
    pub restarts: u32,
    pub last_probe: Option<LastProbe>,
    /// The probe's kind ("http"), when it has one.
    pub probe_kind: Option<&'static str>,
    /// How long its last start took, from asked for to ready.
    pub last_start: Option<Duration>,
    /// Whether it must be running for the container to be healthy.
    pub required: bool,
}

impl Supervisor {
    pub fn new(specs: Vec<Spec>, settings: Settings) -> Self {
        let svcs = specs
            .into_iter()
            .map(|spec| Svc {
                spec,
                phase: Phase::Waiting,
                pid: None,
                steps: Vec::new(),
                start_requested: None,
                started_at: None,
                stop: None,
                last_stop: None,
                exit: None,
                failed: false,
                health: HealthState::default(),
                restarts: 0,
                restarting: false,
                attempt: 0,
                restart_times: Vec::new(),
                ready_since: None,
                had_steps: false,
                healthy_at: None,
                last_start: None,
            })
            .collect();
        Supervisor {
            svcs,
            final_grace: plan::final_grace(settings.budget),
            settings,
            shutdown: None,
            timers: Timers::default(),
            actions: VecDeque::new(),
            exited: false,
            rng: settings.seed | 1,
            facts: VecDeque::new(),
            booted: None,
            start_timeline: None,
        }
    }

    /// Starts every service whose dependencies are already met.
    pub fn start(&mut self, now: Instant) {
        self.booted = Some(now);
        self.note(now, None, Fact::Boot);
        self.advance(now);
        self.handle_timeout(now);
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
        self.timers.next()
    }

    pub fn name(&self, id: Id) -> &str {
        &self.svcs[id].spec.name
    }

    /// A read-only view of every service.
    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.svcs.iter().map(|s| s.status(now)).collect()
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.exited {
            return;
        }
        match event {
            Event::Started { id, pid } => self.apply(id, Input::Spawned(pid), now),
            Event::Ready { id } => self.apply(id, Input::Ready, now),
            Event::StartFailed { id, reason, code } => {
                self.apply(id, Input::StartFailed { reason, code }, now)
            }
            Event::Exited { id, exit } => self.apply(id, Input::Exited(exit), now),
            Event::StepStarted { id, step, pid } => {
                self.apply(id, Input::StepStarted(step, pid), now)
            }
            Event::StepReady { id } => self.on_step_ready(id),
            Event::StepStopWanted { id } => self.on_step_stop_wanted(id, now),
            Event::StepExited { id, pid, exit } => {
                self.note_step_exited(id, pid, exit, now);
                self.apply(id, Input::StepExited(pid), now)
            }
            Event::Signal(sig) => self.on_signal(sig, now),
            Event::Probe { id, report } => self.on_probe(id, report, now),
        }
        self.advance(now);
        // What became due with this event (a first probe "now") is done now too.
        if self.timers.next().is_some_and(|t| t <= now) {
            self.handle_timeout(now);
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        for timer in self.timers.take_due(now) {
            if self.exited {
                return;
            }
            self.fire(timer, now);
        }
        self.advance(now);
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Escalate(id) => self.apply(id, Input::Escalate("it did not stop in time"), now),
            Timer::Probe(id) => self.issue_probe(id),
            Timer::StartDeadline(id) => self.apply(id, Input::Deadline, now),
            Timer::Restart(id) => self.apply(id, Input::Retry, now),
            Timer::Budget => self.budget_spent(now),
        }
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
        }
        if self.shutdown.is_none() {
            self.note_healthy(now);
        }
        if let Some(sd) = &self.shutdown {
            let immediate = sd.immediate;
            for id in 0..self.svcs.len() {
                let live = matches!(
                    self.svcs[id].phase,
                    Phase::Waiting
                        | Phase::Backoff
                        | Phase::Starting
                        | Phase::Running
                        | Phase::Ready
                );
                if live && (immediate || !self.has_live_dependents(id)) {
                    self.apply(id, Input::Stop, now);
                }
            }
            if self.svcs.iter().all(|s| s.phase == Phase::Done) {
                self.exit_now(now);
            }
        }
    }

    fn start_ready_services(&mut self, now: Instant) {
        for id in 0..self.svcs.len() {
            if self.svcs[id].phase != Phase::Waiting || self.shutdown.is_some() {
                continue;
            }
            let mut all_met = true;
            let mut blocked = None;
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
                    blocked = Some(format!(
                        "{} can never start: it needs {} {} but {why}",
                        self.svcs[id].spec.name,
                        d.spec.name,
                        cond.as_str()
                    ));
                    break;
                }
            }
            if let Some(why) = blocked {
                self.apply(id, Input::Blocked(why), now);
            } else if all_met {
                self.apply(id, Input::Start, now);
            }
        }
    }

    fn has_live_dependents(&self, id: Id) -> bool {
        self.svcs
            .iter()
            .any(|s| s.is_alive() && s.spec.depends_on.iter().any(|&(d, _)| d == id))
    }
}

impl Svc {
    /// Started (or being started) and not yet gone.
    fn is_alive(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Ready | Phase::Stopping
        )
    }

    fn completed(&self) -> bool {
        self.spec.kind == Kind::Oneshot
            && self.phase == Phase::Done
            && self.exit.is_some_and(|e| e.success())
    }

    fn satisfies(&self, cond: Condition) -> bool {
        match cond {
            Condition::Started => {
                matches!(self.phase, Phase::Running | Phase::Ready) || self.completed()
            }
            Condition::Healthy => self.phase == Phase::Ready || self.completed(),
            Condition::Completed => self.completed(),
        }
    }

    fn status(&self, now: Instant) -> ServiceStatus {
        let uptime = match (self.phase, self.started_at) {
            (Phase::Running | Phase::Ready | Phase::Stopping, Some(t)) => {
                Some(now.saturating_duration_since(t))
            }
            _ => None,
        };
        ServiceStatus {
            name: self.spec.name.clone(),
            kind: self.spec.kind,
            phase: self.phase,
            pid: self.pid.map(|p| p.as_raw()),
            uptime,
            exit: self.exit,
            failed: self.failed,
            step: self.steps.last().map(|s| s.step.name.clone()),
            health: self.health.health,
            failures: self.health.failures,
            restarts: self.restarts,
            last_probe: self.health.last.clone(),
            probe_kind: self.spec.health.as_ref().map(|h| h.probe_kind),
            last_start: self.last_start,
            required: self.spec.required,
        }
    }
}

#[cfg(test)]
mod tests;
