//! Each service's phase, and the one place it changes: [`cell`] names what happens for
//! every (phase, input) pair, s6-style, and [`Supervisor::apply`] runs that cell and
//! stores the phase it returns. The table test walks all of them.
//!
//! | phase    | means                                                              |
//! |----------|--------------------------------------------------------------------|
//! | Waiting  | not started: its dependencies do not hold yet                      |
//! | Backoff  | exited, to be started again when its restart delay is over         |
//! | Starting | asked to start: being set up or spawned, no main process yet       |
//! | Running  | its process runs (an external service: being probed), not ready    |
//! | Ready    | ready: what dependents waiting for `healthy` wait for              |
//! | Stopping | its stop ladder (or a restart's) is under way                      |
//! | Done     | exited, failed, completed, or never started                        |

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::{
    Fact, Id, Kind, LiveStep, Readiness, RestartSpec, Step, Supervisor, Timer, EXIT_SERVICE_FAILED,
    EXIT_START_FAILED,
};
use crate::process::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Waiting,
    Backoff,
    Starting,
    Running,
    Ready,
    Stopping,
    Done,
}

impl Phase {
    #[cfg(test)]
    pub const ALL: [Phase; 7] = [
        Phase::Waiting,
        Phase::Backoff,
        Phase::Starting,
        Phase::Running,
        Phase::Ready,
        Phase::Stopping,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Backoff => "restarting",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Done => "done",
        }
    }
}

/// What can happen to one service.
#[derive(Debug, Clone)]
pub(super) enum Input {
    /// Its dependencies hold.
    Start,
    /// A dependency can never be met (the reason says which).
    Blocked(String),
    /// Its main process is running.
    Spawned(Pid),
    /// It became ready: reported so, or its probe passed for the first time.
    Ready,
    /// It could not start.
    StartFailed { reason: String, code: i32 },
    /// Its main process exited.
    Exited(Exit),
    /// A set-up step's process is running.
    StepStarted(Step, Pid),
    /// A set-up step's process exited.
    StepExited(Pid),
    /// The shutdown has reached it (its dependents are gone, or the stop is immediate).
    Stop,
    /// It stayed unhealthy and its policy is to restart it.
    Restart,
    /// Its stop ladder's time is up, or tandem was asked to stop again (the reason ends
    /// the log line).
    Escalate(&'static str),
    /// Its start deadline (or its current set-up step's) passed.
    Deadline,
    /// Its restart delay is over.
    Retry,
}

/// [`Input`] without its data: the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    Start,
    Blocked,
    Spawned,
    Ready,
    StartFailed,
    Exited,
    StepStarted,
    StepExited,
    Stop,
    Restart,
    Escalate,
    Deadline,
    Retry,
}

impl InputKind {
    #[cfg(test)]
    pub const ALL: [InputKind; 13] = [
        InputKind::Start,
        InputKind::Blocked,
        InputKind::Spawned,
        InputKind::Ready,
        InputKind::StartFailed,
        InputKind::Exited,
        InputKind::StepStarted,
        InputKind::StepExited,
        InputKind::Stop,
        InputKind::Restart,
        InputKind::Escalate,
        InputKind::Deadline,
        InputKind::Retry,
    ];
}

impl Input {
    pub(super) fn kind(&self) -> InputKind {
        match self {
            Input::Start => InputKind::Start,
            Input::Blocked(_) => InputKind::Blocked,
            Input::Spawned(_) => InputKind::Spawned,
            Input::Ready => InputKind::Ready,
            Input::StartFailed { .. } => InputKind::StartFailed,
            Input::Exited(_) => InputKind::Exited,
            Input::StepStarted(..) => InputKind::StepStarted,
            Input::StepExited(_) => InputKind::StepExited,
            Input::Stop => InputKind::Stop,
            Input::Restart => InputKind::Restart,
            Input::Escalate(_) => InputKind::Escalate,
            Input::Deadline => InputKind::Deadline,
            Input::Retry => InputKind::Retry,
        }
    }
}

/// What a cell does: it may act (queue actions, arm timers, begin the shutdown) and
/// returns the service's next phase. Only [`Supervisor::apply`] stores it.
pub(super) type Cell = fn(&mut Supervisor, Id, Input, Instant) -> Phase;

/// The transition table: every (phase, input) pair, no default.
pub(super) fn cell(phase: Phase, input: InputKind) -> Cell {
    use InputKind as I;
    use Phase as P;
    match (phase, input) {
        (P::Waiting, I::Start) => Supervisor::launch,
        (P::Waiting, I::Blocked) => Supervisor::never_start,
        (P::Waiting, I::Stop) => Supervisor::stopped_before_start,
        (
            P::Waiting,
            I::Spawned
            | I::Ready
            | I::StartFailed
            | I::Exited
            | I::StepStarted
            | I::StepExited
            | I::Restart
            | I::Escalate
            | I::Deadline
            | I::Retry,
        ) => Supervisor::ignore,

        (P::Backoff, I::Retry) => Supervisor::retry,
        (P::Backoff, I::Stop) => Supervisor::stopped_before_start,
        (
            P::Backoff,
            I::Start
            | I::Blocked
            | I::Spawned
            | I::Ready
            | I::StartFailed
            | I::Exited
            | I::StepStarted
            | I::StepExited
            | I::Restart
            | I::Escalate
            | I::Deadline,
        ) => Supervisor::ignore,

        (P::Starting, I::Spawned) => Supervisor::spawned,
        (P::Starting, I::StartFailed) => Supervisor::start_failed,
        (P::Starting, I::StepStarted) => Supervisor::step_started,
        (P::Starting, I::StepExited) => Supervisor::step_exited,
        (P::Starting, I::Stop) => Supervisor::begin_stop,
        (P::Starting, I::Deadline) => Supervisor::deadline_passed,
        (
            P::Starting,
            I::Start | I::Blocked | I::Ready | I::Exited | I::Restart | I::Escalate | I::Retry,
        ) => Supervisor::ignore,

        (P::Running, I::Ready) => Supervisor::became_ready,
        (P::Running, I::StartFailed) => Supervisor::start_failed,
        (P::Running, I::Exited) => Supervisor::exited,
        (P::Running, I::Stop) => Supervisor::begin_stop,
        (P::Running, I::Restart) => Supervisor::begin_restart,
        (P::Running, I::Deadline) => Supervisor::deadline_passed,
        (
            P::Running,
            I::Start
            | I::Blocked
            | I::Spawned
            | I::StepStarted
            | I::StepExited
            | I::Escalate
            | I::Retry,
        ) => Supervisor::ignore,

        (P::Ready, I::Exited) => Supervisor::exited,
        (P::Ready, I::Stop) => Supervisor::begin_stop,
        (P::Ready, I::Restart) => Supervisor::begin_restart,
        (
            P::Ready,
            I::Start
            | I::Blocked
            | I::Spawned
            | I::Ready
            | I::StartFailed
            | I::StepStarted
            | I::StepExited
            | I::Escalate
            | I::Deadline
            | I::Retry,
        ) => Supervisor::ignore,

        (P::Stopping, I::Spawned) => Supervisor::spawned_while_stopping,
        (P::Stopping, I::StartFailed) => Supervisor::gave_up_starting,
        (P::Stopping, I::Exited) => Supervisor::stopped,
        (P::Stopping, I::StepStarted) => Supervisor::step_started_while_stopping,
        (P::Stopping, I::StepExited) => Supervisor::step_exited_while_stopping,
        (P::Stopping, I::Escalate) => Supervisor::escalate,
        (
            P::Stopping,
            I::Start | I::Blocked | I::Ready | I::Stop | I::Restart | I::Deadline | I::Retry,
        ) => Supervisor::ignore,

        (
            P::Done,
            I::Start
            | I::Blocked
            | I::Spawned
            | I::Ready
            | I::StartFailed
            | I::Exited
            | I::StepStarted
            | I::StepExited
            | I::Stop
            | I::Restart
            | I::Escalate
            | I::Deadline
            | I::Retry,
        ) => Supervisor::ignore,
    }
}

impl Supervisor {
    /// The one place a service's phase changes.
    pub(super) fn apply(&mut self, id: Id, input: Input, now: Instant) {
        let phase = self.svcs[id].phase;
        let next = cell(phase, input.kind())(self, id, input, now);
        self.svcs[id].phase = next;
    }

    /// A fact that does not apply in this phase (late, or duplicate): nothing changes.
    fn ignore(&mut self, id: Id, input: Input, _now: Instant) -> Phase {
        tracing::debug!(
            "{}: {:?} ignored while {}",
            self.svcs[id].spec.name,
            input.kind(),
            self.svcs[id].phase.as_str()
        );
        self.svcs[id].phase
    }

    fn launch(&mut self, id: Id, _: Input, now: Instant) -> Phase {
        let svc = &mut self.svcs[id];
        svc.start_requested = Some(now);
        svc.had_steps = false;
        svc.healthy_at = None;
        self.note(now, Some(id), Fact::Starting);
        let svc = &mut self.svcs[id];
        if svc.spec.kind == Kind::External {
            // Nothing to run: it is "started" now, and ready when its probe says so.
            svc.started_at = Some(now);
            tracing::info!("waiting for {} (external)", svc.spec.name);
            self.timers.set(Timer::Probe(id), now);
            return Phase::Running;
        }
        self.actions.push_back(super::Action::Start(id));
        Phase::Starting
    }

    fn never_start(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        if let Input::Blocked(why) = input {
            tracing::error!("{why}");
        }
        self.svcs[id].failed = true;
        self.begin_shutdown(now, Some(EXIT_SERVICE_FAILED), None);
        Phase::Done
    }

    /// Stopped while waiting to start, or to start again: in this stop it never ran. A run
    /// that ended before a restart delay was the restart's business, not the container's
    /// exit code (a stop asked for then exits 0, not the 137 of an earlier SIGKILL).
    fn stopped_before_start(&mut self, id: Id, _: Input, _now: Instant) -> Phase {
        self.svcs[id].exit = None;
        Phase::Done
    }

    fn spawned(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        let Input::Spawned(pid) = input else {
            return self.svcs[id].phase;
        };
        let svc = &mut self.svcs[id];
        svc.pid = Some(pid);
        svc.started_at = Some(now);
        tracing::info!(pid = pid.as_raw(), "{} started", svc.spec.name);
        self.note(now, Some(id), Fact::Spawned { pid: pid.as_raw() });
        let svc = &mut self.svcs[id];
        match svc.spec.readiness {
            Readiness::Started => {
                svc.ready_since = Some(now);
                svc.last_start = svc
                    .start_requested
                    .map(|t| now.saturating_duration_since(t));
                self.timers.clear(Timer::StartDeadline(id));
                if svc.spec.health.is_some() {
                    self.timers.set(Timer::Probe(id), now);
                }
                Phase::Ready
            }
            Readiness::Probe | Readiness::Reported => {
                if svc.spec.readiness == Readiness::Probe {
                    self.timers.set(Timer::Probe(id), now);
                }
                if let Some(t) = svc.spec.start_timeout {
                    self.timers.set(Timer::StartDeadline(id), now + t);
                }
                Phase::Running
            }
        }
    }

    fn became_ready(&mut self, id: Id, _: Input, now: Instant) -> Phase {
        let svc = &mut self.svcs[id];
        svc.ready_since = Some(now);
        svc.last_start = svc
            .start_requested
            .map(|t| now.saturating_duration_since(t));
        let svc = &self.svcs[id];
        let ms = svc
            .start_requested
            .map(|t| now.saturating_duration_since(t).as_millis())
            .unwrap_or(0);
        tracing::info!("{} is ready after {ms} ms", svc.spec.name);
        let fact = Fact::Ready { ms: ms as u64 };
        self.note(now, Some(id), fact);
        let svc = &self.svcs[id];
        self.timers.clear(Timer::StartDeadline(id));
        if svc.spec.health.is_some() && self.timers.get(Timer::Probe(id)).is_none() {
            // A probe that made it ready has already re-armed itself.
            if svc.spec.readiness == Readiness::Reported {
                self.timers.set(Timer::Probe(id), now);
            }
        }
        Phase::Ready
    }

    fn start_failed(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        let Input::StartFailed { reason, code } = input else {
            return self.svcs[id].phase;
        };
        self.note(
            now,
            Some(id),
            Fact::StartFailed {
                reason: reason.clone(),
            },
        );
        let svc = &mut self.svcs[id];
        svc.failed = true;
        if svc.pid.is_some() {
            // Its process runs but it cannot be used (its readiness check broke): stop it
            // through its ladder, within the budget.
            tracing::error!("{reason}; stopping it");
            self.begin_shutdown(now, Some(code), None);
            return svc_phase(self, id);
        }
        self.timers.clear(Timer::StartDeadline(id));
        tracing::error!("{reason}");
        self.begin_shutdown(now, Some(code), None);
        Phase::Done
    }

    fn step_started(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        let Input::StepStarted(step, pid) = input else {
            return self.svcs[id].phase;
        };
        // While starting, the deadline is the current step's.
        match step.timeout {
            Some(t) => self.timers.set(Timer::StartDeadline(id), now + t),
            None => self.timers.clear(Timer::StartDeadline(id)),
        }
        self.note_step_started(id, &step, pid, now);
        self.svcs[id].steps.push(LiveStep {
            step,
            pid,
            began: now,
            stop_asked: false,
        });
        Phase::Starting
    }

    fn step_exited(&mut self, id: Id, input: Input, _now: Instant) -> Phase {
        if let Input::StepExited(pid) = input {
            self.svcs[id].steps.retain(|s| s.pid != pid);
            self.timers.clear(Timer::StartDeadline(id));
        }
        Phase::Starting
    }

    fn deadline_passed(&mut self, id: Id, _: Input, now: Instant) -> Phase {
        let svc = &mut self.svcs[id];
        svc.failed = true;
        match svc.steps.last() {
            Some(s) if s.stop_asked => tracing::error!(
                "{}: {} did not stop within {} ms; stopping",
                svc.spec.name,
                s.step.name,
                super::stop::SERVER_STEP_STOP.as_millis()
            ),
            Some(s) => tracing::error!(
                "{}: {} did not finish within {} ms; stopping",
                svc.spec.name,
                s.step.name,
                s.step.timeout.map_or(0, |t| t.as_millis())
            ),
            None => tracing::error!(
                "{} did not become ready within {} ms; stopping it",
                svc.spec.name,
                svc.spec.start_timeout.map_or(0, |t| t.as_millis())
            ),
        }
        self.begin_shutdown(now, Some(EXIT_START_FAILED), None);
        svc_phase(self, id)
    }

    fn exited(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        let Input::Exited(exit) = input else {
            return self.svcs[id].phase;
        };
        let was_ready = self.svcs[id].phase == Phase::Ready;
        self.forget_process(id, exit, now);
        let svc = &mut self.svcs[id];
        let name = svc.spec.name.clone();
        if self.shutdown.is_some() {
            tracing::info!("{name} {exit}");
            return Phase::Done;
        }
        if svc.spec.kind == Kind::Oneshot && exit.success() {
            tracing::info!("{name} completed");
            return Phase::Done;
        }
        if svc.spec.readiness == Readiness::Reported && !was_ready {
            // It never came up: a start failure (bad configuration, say), not a crash.
            svc.failed = true;
            tracing::error!("{name} {exit} before it was ready (its log above says why)");
            self.begin_shutdown(now, Some(EXIT_START_FAILED), None);
            return Phase::Done;
        }
        let wants = svc
            .spec
            .restart
            .as_ref()
            .is_some_and(|r| !(r.on_failure_only && exit.success()));
        if wants {
            if let Some(delay) = self.schedule_restart(id, now) {
                let svc = &self.svcs[id];
                tracing::warn!(
                    "{name} {exit}; restarting it in {} ms (restart {})",
                    delay.as_millis(),
                    svc.restarts
                );
                return Phase::Backoff;
            }
            let r = self.svcs[id]
                .spec
                .restart
                .clone()
                .unwrap_or_else(default_restart);
            tracing::error!(
                "{name} {exit}, and it was restarted {} times within {} s: giving up",
                r.max_restarts,
                r.window.as_secs()
            );
        }
        self.failed_for_good(id, exit, now);
        Phase::Done
    }

    /// A service that exited and will not run again: the main service's exit ends the
    /// container with its code; a required one stops it (a oneshot with its own code);
    /// any other is reported and the container goes on.
    fn failed_for_good(&mut self, id: Id, exit: Exit, now: Instant) {
        let svc = &mut self.svcs[id];
        let name = svc.spec.name.clone();
        if svc.spec.main {
            tracing::info!("{name} {exit}; stopping the other services");
            self.begin_shutdown(now, Some(exit.shell_code()), None);
        } else if svc.spec.required {
            svc.failed = true;
            let code = if svc.spec.kind == Kind::Oneshot {
                tracing::error!("{name} {exit}; stopping the container");
                exit.shell_code()
            } else {
                tracing::error!("{name} {exit} unexpectedly; stopping the container");
                EXIT_SERVICE_FAILED
            };
            self.begin_shutdown(now, Some(code), None);
        } else {
            svc.failed = true;
            tracing::warn!("{name} {exit}; it is not required, so the others go on");
        }
    }

    /// Counts a restart and arms its delay, or `None` when `max_restarts` are used up within
    /// the window. Its backoff starts over once it had stayed ready for `reset_after`.
    pub(super) fn schedule_restart(&mut self, id: Id, now: Instant) -> Option<Duration> {
        let r = self.svcs[id].spec.restart.clone()?;
        let svc = &mut self.svcs[id];
        if svc
            .ready_since
            .is_some_and(|t| now.saturating_duration_since(t) >= r.reset_after)
        {
            svc.attempt = 0;
        }
        svc.ready_since = None;
        svc.restart_times
            .retain(|t| now.saturating_duration_since(*t) < r.window);
        if svc.restart_times.len() as u32 >= r.max_restarts {
            return None;
        }
        let base = r.base_delay(svc.attempt).as_secs_f64();
        svc.attempt += 1;
        svc.restart_times.push(now);
        svc.restarts += 1;
        let restart = svc.restarts;
        let spread = r.jitter * (2.0 * self.random() - 1.0);
        let delay = Duration::from_secs_f64((base * (1.0 + spread)).max(0.0));
        self.timers.set(Timer::Restart(id), now + delay);
        let delay_ms = super::facts::ms(delay);
        self.note(now, Some(id), Fact::RestartScheduled { delay_ms, restart });
        Some(delay)
    }

    /// A number in [0, 1), from xorshift64*: deterministic for a seed, so tests can bound it.
    fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The restart delay is over (cell): it waits for its dependencies again, and starts at
    /// once if they hold.
    fn retry(&mut self, id: Id, _: Input, _now: Instant) -> Phase {
        self.svcs[id].exit = None;
        Phase::Waiting
    }

    /// The main process is gone: what the runtime and the probes knew of it goes too.
    fn forget_process(&mut self, id: Id, exit: Exit, now: Instant) {
        let fact = Fact::Exited {
            exit: exit.to_string(),
            code: exit.shell_code(),
        };
        self.note(now, Some(id), fact);
        let svc = &mut self.svcs[id];
        svc.exit = Some(exit);
        svc.pid = None;
        svc.health = super::HealthState::default();
        self.timers.clear(Timer::Probe(id));
        self.timers.clear(Timer::StartDeadline(id));
        self.timers.clear(Timer::Escalate(id));
    }

    fn gave_up_starting(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        if let Input::StartFailed { reason, .. } = input {
            tracing::info!(
                "{} did not finish starting: {reason}",
                self.svcs[id].spec.name
            );
        }
        let svc = &mut self.svcs[id];
        svc.steps.clear();
        svc.last_stop = svc.stop.take();
        if let Some(stop) = &mut svc.last_stop {
            stop.ended = Some(now);
        }
        self.timers.clear(Timer::Escalate(id));
        self.timers.clear(Timer::StartDeadline(id));
        Phase::Done
    }

    fn stopped(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        let Input::Exited(exit) = input else {
            return self.svcs[id].phase;
        };
        self.forget_process(id, exit, now);
        let shutting_down = self.shutdown.is_some();
        let svc = &mut self.svcs[id];
        let mut stop = svc.stop.take();
        if let Some(stop) = &mut stop {
            stop.ended = Some(now);
        }
        if svc.restarting && !shutting_down {
            svc.restarting = false;
            svc.exit = None;
            if svc.spec.restart.is_none() {
                svc.restarts += 1;
                tracing::info!(
                    "{} {exit}; starting it again (restart {})",
                    svc.spec.name,
                    svc.restarts
                );
                return Phase::Waiting;
            }
            let name = svc.spec.name.clone();
            return match self.schedule_restart(id, now) {
                Some(delay) => {
                    tracing::info!(
                        "{name} {exit}; starting it again in {} ms (restart {})",
                        delay.as_millis(),
                        self.svcs[id].restarts
                    );
                    Phase::Backoff
                }
                None => {
                    tracing::error!(
                        "{name} stays unhealthy and was restarted too often: giving up"
                    );
                    self.failed_for_good(id, exit, now);
                    Phase::Done
                }
            };
        }
        if let Some(stop) = &stop {
            let ms = now.saturating_duration_since(stop.began).as_millis();
            tracing::info!("{} {exit} after stopping for {ms} ms", svc.spec.name);
        }
        svc.last_stop = stop;
        Phase::Done
    }
}

/// The phase a cell leaves unchanged.
fn svc_phase(sup: &Supervisor, id: Id) -> Phase {
    sup.svcs[id].phase
}

/// What a restart policy's unset fields are.
pub fn default_restart() -> RestartSpec {
    RestartSpec {
        on_failure_only: true,
        delay: Duration::from_secs(1),
        factor: 2.0,
        max_delay: Duration::from_secs(30),
        jitter: 0.1,
        max_restarts: 5,
        window: Duration::from_secs(60),
        reset_after: Duration::from_secs(30),
    }
}
