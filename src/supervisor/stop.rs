//! Stopping: the shutdown and its budget, each service's stop ladder, and tandem's signals.
//!
//! A service is stopped one process at a time, innermost first: the set-up step that is
//! running (an init script's process group), then the set-up's server (PostgreSQL's
//! temporary server, fast shutdown), then its main process. Each gets its ladder of signals,
//! and every ladder ends inside the service's window, so the services it depends on keep
//! their share of the budget.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::table::{Input, Phase};
use super::{
    Action, Fact, Id, Kind, Shutdown, StepKind, StopExit, Stopping, Supervisor, Target, Timer,
};

/// How long a set-up's server may take to stop once the set-up is done with it (a fast
/// shutdown writes a checkpoint, which after a large init script can take a while).
pub const SERVER_STEP_STOP: Duration = Duration::from_secs(60);

/// How one process is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    pub signals: Vec<Signal>,
    /// How long the first signal gets before the next one.
    pub first_timeout: Duration,
    /// Signals other than SIGKILL go to the process only, not its group.
    pub leader_only: bool,
}

impl Supervisor {
    pub(super) fn on_signal(&mut self, sig: Signal, now: Instant) {
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
                    for id in 0..self.svcs.len() {
                        self.apply(id, Input::Escalate("asked to stop again"), now);
                    }
                }
            }
            Signal::SIGQUIT => {
                tracing::info!("received SIGQUIT; stopping everything at once");
                if self.shutdown.is_none() {
                    self.begin_shutdown(now, None, Some(sig));
                }
                if let Some(sd) = &mut self.shutdown {
                    sd.immediate = true;
                }
                for id in 0..self.svcs.len() {
                    if self.svcs[id].phase == Phase::Stopping {
                        self.jump_to_immediate(id, now);
                    }
                }
            }
            Signal::SIGHUP => {
                for id in 0..self.svcs.len() {
                    let svc = &self.svcs[id];
                    if let (Some(signal), Some(pid)) = (svc.spec.reload_signal, svc.pid) {
                        tracing::info!("reload: sending {} to {}", signal.as_str(), svc.spec.name);
                        let to = target(svc.spec.signal_leader_only, signal, pid);
                        self.actions.push_back(Action::Signal { id, signal, to });
                    }
                }
            }
            Signal::SIGUSR1 | Signal::SIGUSR2 | Signal::SIGWINCH => {
                for id in 0..self.svcs.len() {
                    let svc = &self.svcs[id];
                    if let (true, Some(pid)) = (svc.spec.forward_signals, svc.pid) {
                        let to = target(svc.spec.signal_leader_only, sig, pid);
                        self.actions.push_back(Action::Signal {
                            id,
                            signal: sig,
                            to,
                        });
                    }
                }
            }
            other => tracing::debug!("ignoring {}", other.as_str()),
        }
    }

    pub(super) fn begin_shutdown(
        &mut self,
        now: Instant,
        code: Option<i32>,
        signal: Option<Signal>,
    ) {
        if self.shutdown.is_some() {
            return;
        }
        let deadline = now + self.settings.budget;
        self.shutdown = Some(Shutdown {
            started: now,
            deadline,
            code,
            signal,
            immediate: false,
        });
        self.timers.set(Timer::Budget, deadline);
        let signal = signal.map(|s| s.as_str().to_string());
        self.note(now, None, Fact::Stopping { signal });
        // A service being restarted is already stopping: it stays stopped, and its stop now
        // has to fit in the budget like everyone else's.
        for id in 0..self.svcs.len() {
            self.timers.clear(Timer::Probe(id));
            if self.svcs[id].restarting {
                let end = self.window_end(id, now);
                let svc = &mut self.svcs[id];
                svc.restarting = false;
                if let Some(stop) = &mut svc.stop {
                    stop.window_end = stop.window_end.min(end);
                }
                if let Some(at) = self.timers.get(Timer::Escalate(id)) {
                    self.timers.set(Timer::Escalate(id), at.min(end));
                }
            }
        }
    }

    /// The last instant `id` may still be stopping at in the shutdown: the end of the budget
    /// less what the services it depends on keep, less the final grace.
    fn window_end(&self, id: Id, now: Instant) -> Instant {
        let Some(sd) = &self.shutdown else { return now };
        sd.deadline
            .checked_sub(self.reserve_after(id) + self.final_grace)
            .unwrap_or(now)
            .max(now)
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

    /// The shutdown has reached a live service (cell).
    pub(super) fn begin_stop(&mut self, id: Id, _: Input, now: Instant) -> Phase {
        self.timers.clear(Timer::Probe(id));
        self.timers.clear(Timer::StartDeadline(id));
        let svc = &self.svcs[id];
        if svc.spec.kind == Kind::External {
            tracing::info!("no longer waiting for {} (external)", svc.spec.name);
            return Phase::Done;
        }
        if svc.phase == Phase::Starting {
            // No further set-up step may begin; the one running is stopped below.
            self.actions.push_back(Action::CancelSetup(id));
        }
        let window_end = self.window_end(id, now);
        let svc = &mut self.svcs[id];
        tracing::info!(
            "stopping {} ({})",
            svc.spec.name,
            svc.spec.stop_ladder[0].as_str()
        );
        svc.stop = Some(Stopping::new(now, window_end, &svc.spec));
        self.retarget(id, now);
        Phase::Stopping
    }

    /// Stops a service with its own stop signal and timeout, to start it again on exit (cell).
    pub(super) fn begin_restart(&mut self, id: Id, _: Input, now: Instant) -> Phase {
        self.timers.clear(Timer::Probe(id));
        let svc = &mut self.svcs[id];
        tracing::info!(
            "restarting {} ({})",
            svc.spec.name,
            svc.spec.stop_ladder[0].as_str()
        );
        let later = svc.spec.step_timeout * (svc.spec.stop_ladder.len() as u32).saturating_sub(2);
        svc.restarting = true;
        svc.stop = Some(Stopping::new(
            now,
            now + svc.spec.stop_timeout + later,
            &svc.spec,
        ));
        self.retarget(id, now);
        Phase::Stopping
    }

    /// Points the ladder at the innermost live process of the service (a set-up step, then
    /// the main process) and sends it the first signal; with none, waits for one.
    fn retarget(&mut self, id: Id, now: Instant) {
        let svc = &mut self.svcs[id];
        let Some(stop) = &mut svc.stop else { return };
        let (pid, ladder) = match svc.steps.last() {
            Some(step) => (
                step.pid,
                match step.step.kind {
                    StepKind::Task => Ladder {
                        signals: vec![Signal::SIGTERM, Signal::SIGKILL],
                        first_timeout: svc.spec.step_timeout,
                        leader_only: false,
                    },
                    StepKind::Scratch => Ladder {
                        signals: vec![Signal::SIGKILL],
                        first_timeout: Duration::ZERO,
                        leader_only: false,
                    },
                    StepKind::Server => main_ladder(&svc.spec),
                },
            ),
            None => match svc.pid {
                Some(pid) => (pid, main_ladder(&svc.spec)),
                None => {
                    stop.target = None;
                    self.timers.clear(Timer::Escalate(id));
                    return;
                }
            },
        };
        // SIGQUIT to tandem: straight to the immediate step (PostgreSQL: SIGQUIT).
        let first = if self.shutdown.as_ref().is_some_and(|s| s.immediate) {
            svc.spec.immediate_step.min(ladder.signals.len() - 1)
        } else {
            0
        };
        stop.target = Some(pid);
        stop.ladder = ladder;
        self.set_step(id, first, now);
    }

    /// Sends ladder signal `step` to the current target and arms the next escalation. The
    /// first signal gets its timeout but leaves room for the signals after it, and for the
    /// processes still to be stopped after this one; every later one gets `step_timeout`.
    fn set_step(&mut self, id: Id, step: usize, now: Instant) {
        let svc = &mut self.svcs[id];
        let Some(stop) = &mut svc.stop else { return };
        let Some(pid) = stop.target else { return };
        // The processes after this one (outer set-up steps, the main process) each need
        // time for their own ladder past its first signal.
        let outer: u32 = svc
            .steps
            .iter()
            .rev()
            .skip_while(|s| s.pid != pid)
            .skip(1)
            .map(|_| svc.spec.stop_ladder.len() as u32 - 1)
            .sum::<u32>()
            + if svc.pid.is_some() && svc.pid != Some(pid) {
                svc.spec.stop_ladder.len() as u32 - 1
            } else {
                0
            };
        let window_end = stop
            .window_end
            .checked_sub(svc.spec.step_timeout * outer)
            .unwrap_or(now)
            .max(now);
        let last = stop.ladder.signals.len() - 1;
        let step = step.min(last);
        stop.step = step;
        let signal = stop.ladder.signals[step];
        let escalate_at = if step == last {
            None
        } else if step == 0 {
            let later = svc.spec.step_timeout * (last as u32).saturating_sub(1);
            let room = window_end.checked_sub(later).unwrap_or(now).max(now);
            Some((now + stop.ladder.first_timeout).min(room))
        } else {
            Some((now + svc.spec.step_timeout).min(window_end))
        };
        if svc.pid == Some(pid) {
            stop.sent_to_main.push(signal);
        }
        stop.sent.push(signal);
        let to = target(stop.ladder.leader_only, signal, pid);
        let step = svc
            .steps
            .iter()
            .find(|s| s.pid == pid)
            .map(|s| s.step.name.clone());
        match escalate_at {
            Some(at) => self.timers.set(Timer::Escalate(id), at),
            None => self.timers.clear(Timer::Escalate(id)),
        }
        let fact = Fact::StopStep {
            signal: signal.as_str().to_string(),
            pid: pid.as_raw(),
            step,
            deadline_ms: escalate_at.map(|at| super::facts::ms(at.saturating_duration_since(now))),
        };
        self.note(now, Some(id), fact);
        self.actions.push_back(Action::Signal { id, signal, to });
        if signal != Signal::SIGKILL {
            // A stopped process (SIGSTOP, a debugger) only acts on its stop signal once it
            // runs again; without this it waits out its share for the SIGKILL.
            let signal = Signal::SIGCONT;
            self.actions.push_back(Action::Signal { id, signal, to });
        }
    }

    /// The ladder's next signal (cell).
    pub(super) fn escalate(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        let why = match input {
            Input::Escalate(why) => why,
            _ => "",
        };
        let svc = &self.svcs[id];
        if let Some(stop) = &svc.stop {
            let next = stop.step + 1;
            if stop.target.is_some() && next < stop.ladder.signals.len() {
                let signal = stop.ladder.signals[next];
                let whose = match svc.steps.iter().find(|s| Some(s.pid) == stop.target) {
                    Some(s) => format!("{} ({})", svc.spec.name, s.step.name),
                    None => svc.spec.name.clone(),
                };
                tracing::info!("sending {} to {whose} ({why})", signal.as_str());
                self.set_step(id, next, now);
            } else {
                self.timers.clear(Timer::Escalate(id));
            }
        }
        Phase::Stopping
    }

    /// SIGQUIT to tandem: the ladder jumps to its immediate step (PostgreSQL: SIGQUIT).
    fn jump_to_immediate(&mut self, id: Id, now: Instant) {
        let svc = &self.svcs[id];
        let Some(stop) = &svc.stop else { return };
        let step = svc.spec.immediate_step.min(stop.ladder.signals.len() - 1);
        if stop.target.is_some() && stop.step < step {
            self.set_step(id, step, now);
        }
    }

    /// The main process appeared while the service was being stopped (cell).
    pub(super) fn spawned_while_stopping(&mut self, id: Id, input: Input, now: Instant) -> Phase {
        if let Input::Spawned(pid) = input {
            let svc = &mut self.svcs[id];
            svc.pid = Some(pid);
            svc.started_at = Some(now);
            if svc.steps.is_empty() {
                self.retarget(id, now);
            }
        }
        Phase::Stopping
    }

    /// A set-up step began after the stop did (the set-up had not yet seen the cancel): it
    /// is now the innermost process, and is stopped first (cell).
    pub(super) fn step_started_while_stopping(
        &mut self,
        id: Id,
        input: Input,
        now: Instant,
    ) -> Phase {
        if let Input::StepStarted(step, pid) = input {
            self.note_step_started(id, &step, pid, now);
            self.svcs[id].steps.push(super::LiveStep {
                step,
                pid,
                began: now,
                stop_asked: false,
            });
            self.retarget(id, now);
        }
        Phase::Stopping
    }

    /// A set-up step ended while stopping: the ladder moves on to the next process (cell).
    pub(super) fn step_exited_while_stopping(
        &mut self,
        id: Id,
        input: Input,
        now: Instant,
    ) -> Phase {
        if let Input::StepExited(pid) = input {
            let svc = &mut self.svcs[id];
            svc.steps.retain(|s| s.pid != pid);
            if svc.stop.as_ref().and_then(|s| s.target) == Some(pid) {
                self.retarget(id, now);
            }
        }
        Phase::Stopping
    }

    /// The set-up's server is ready: its deadline is met.
    pub(super) fn on_step_ready(&mut self, id: Id) {
        if self.svcs[id].phase == Phase::Starting {
            self.timers.clear(Timer::StartDeadline(id));
        }
    }

    /// The set-up is done with its server: a fast shutdown, within [`SERVER_STEP_STOP`].
    pub(super) fn on_step_stop_wanted(&mut self, id: Id, now: Instant) {
        let svc = &mut self.svcs[id];
        if svc.phase != Phase::Starting {
            return; // A stop is under way and has the server in its ladder.
        }
        let Some(step) = svc.steps.last_mut() else {
            return;
        };
        step.stop_asked = true;
        let signal = svc.spec.stop_ladder[0];
        let to = target(svc.spec.signal_leader_only, signal, step.pid);
        self.timers
            .set(Timer::StartDeadline(id), now + SERVER_STEP_STOP);
        self.actions.push_back(Action::Signal { id, signal, to });
    }

    pub(super) fn budget_spent(&mut self, now: Instant) {
        let left: Vec<&str> = self
            .svcs
            .iter()
            .filter(|s| s.phase != Phase::Done)
            .map(|s| s.spec.name.as_str())
            .collect();
        tracing::error!(
            "stop budget of {} ms spent; exiting with {} still running",
            self.settings.budget.as_millis(),
            left.join(", ")
        );
        self.exit_now(now);
    }

    pub(super) fn exit_now(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        self.exited = true;
        self.timers.clear_all();
        let code = self.exit_code();
        self.note_stopped(now, code);
        self.actions.push_back(Action::Exit { code });
    }

    /// The decided code; else, after a stop tandem was asked for, 0 when the main service
    /// ended because of the signal tandem sent it or never ran (unless TANDEM_STOP_EXIT=app:
    /// then its own code, 128+signal); else the main service's code; else 0.
    fn exit_code(&self) -> i32 {
        let sd = self.shutdown.as_ref();
        if let Some(code) = sd.and_then(|s| s.code) {
            return code;
        }
        let asked = sd.and_then(|s| s.signal);
        let clean = self.settings.stop_exit == StopExit::Clean;
        let Some(main) = self.svcs.iter().find(|s| s.spec.main) else {
            return 0;
        };
        match (main.exit, asked) {
            (Some(exit), Some(_)) if clean => {
                let sent = main
                    .last_stop
                    .as_ref()
                    .map(|s| s.sent_to_main.as_slice())
                    .unwrap_or(&[]);
                let ours = matches!(exit, super::Exit::Signal(n)
                    if n != Signal::SIGKILL as i32 && sent.iter().any(|s| *s as i32 == n));
                if ours {
                    0
                } else {
                    exit.shell_code()
                }
            }
            (Some(exit), _) => exit.shell_code(),
            (None, Some(_)) if clean => 0,
            (None, Some(sig)) => 128 + sig as i32,
            (None, None) => 0,
        }
    }
}

impl Stopping {
    /// A stop beginning at `now`, to be over by `window_end`, not yet at any process.
    fn new(now: Instant, window_end: Instant, spec: &super::Spec) -> Stopping {
        Stopping {
            began: now,
            window_end,
            target: None,
            ladder: main_ladder(spec),
            step: 0,
            sent_to_main: Vec::new(),
            sent: Vec::new(),
            ended: None,
        }
    }
}

/// The main process's ladder: the spec's own.
fn main_ladder(spec: &super::Spec) -> Ladder {
    Ladder {
        signals: spec.stop_ladder.clone(),
        first_timeout: spec.stop_timeout,
        leader_only: spec.signal_leader_only,
    }
}

/// Where `signal` goes: SIGKILL always to the whole group, so nothing of it survives.
fn target(leader_only: bool, signal: Signal, pid: nix::unistd::Pid) -> Target {
    if leader_only && signal != Signal::SIGKILL {
        Target::Leader(pid)
    } else {
        Target::Group(pid)
    }
}

/// One signal of a rehearsed stop: when (from the stop request), to which service, which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehearsed {
    pub at: Duration,
    pub service: String,
    pub signal: Signal,
}

/// The worst case of a stop, computed by the supervisor itself on a fake clock: every
/// service up, a SIGTERM, and nothing exits until it gets SIGKILL. What `tandem check`
/// prints as each service's share of the budget. Also returns when tandem exits.
pub fn rehearse(specs: Vec<super::Spec>, settings: super::Settings) -> (Vec<Rehearsed>, Duration) {
    use super::{Event, Kind, Readiness};
    use nix::unistd::Pid;
    let t0 = Instant::now();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let kinds: Vec<(Kind, Readiness)> = specs.iter().map(|s| (s.kind, s.readiness)).collect();
    let mut sup = Supervisor::new(specs, settings);
    sup.start(t0);
    let pid = |id: usize| Pid::from_raw(100_000 + id as i32);
    let ok = super::ProbeReport {
        outcome: super::Outcome::Ok,
        latency: Duration::ZERO,
    };
    // Up: every start answered at once, every readiness met, every oneshot completed.
    for _ in 0..4 * names.len() + 4 {
        let mut moved = false;
        while let Some(a) = sup.poll_action() {
            moved = true;
            match a {
                Action::Start(id) => {
                    sup.handle(Event::Started { id, pid: pid(id) }, t0);
                    match kinds[id] {
                        (Kind::Oneshot, _) => sup.handle(
                            Event::Exited {
                                id,
                                exit: super::Exit::Code(0),
                            },
                            t0,
                        ),
                        (_, Readiness::Reported) => sup.handle(Event::Ready { id }, t0),
                        _ => {}
                    }
                }
                Action::Probe(id) => sup.handle(
                    Event::Probe {
                        id,
                        report: ok.clone(),
                    },
                    t0,
                ),
                _ => {}
            }
        }
        if !moved {
            break;
        }
    }
    while let Some(_a) = sup.poll_action() {}
    // The stop: nothing gives in before SIGKILL.
    let mut out = Vec::new();
    sup.handle(Event::Signal(Signal::SIGTERM), t0);
    let mut now = t0;
    for _ in 0..1000 {
        while let Some(a) = sup.poll_action() {
            match a {
                Action::Signal {
                    signal: Signal::SIGCONT,
                    ..
                } => {}
                Action::Signal { id, signal, .. } => {
                    out.push(Rehearsed {
                        at: now - t0,
                        service: names[id].clone(),
                        signal,
                    });
                    if signal == Signal::SIGKILL {
                        sup.handle(
                            Event::Exited {
                                id,
                                exit: super::Exit::Signal(9),
                            },
                            now,
                        );
                    }
                }
                Action::Exit { .. } => return (out, now - t0),
                _ => {}
            }
        }
        match sup.next_deadline() {
            Some(d) => {
                now = d.max(now);
                sup.handle_timeout(now);
            }
            None => break,
        }
    }
    (out, now - t0)
}
