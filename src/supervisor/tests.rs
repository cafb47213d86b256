//! The supervisor driven by a fake clock: time jumps straight to the next deadline, and
//! every assertion names the exact instant an action happened.

use super::*;
use crate::process::Exit;

const PG: Id = 0;
const APP: Id = 1;
const MS: Duration = Duration::from_millis(1);
const B9: Duration = Duration::from_secs(9);

use plan::{Builder, ServiceDef};

/// PostgreSQL and the app as the zero-config mode builds them.
fn pair_defs() -> Vec<ServiceDef> {
    vec![
        ServiceDef::database("postgres"),
        ServiceDef::daemon("app")
            .main(true)
            .forward_signals(true)
            .after("postgres", Condition::Healthy),
    ]
}

fn build(budget: Duration, defs: Vec<ServiceDef>) -> Vec<Spec> {
    let mut b = Builder::new(budget);
    for d in defs {
        b.add(d);
    }
    b.build().unwrap()
}

/// A supervisor, a fake clock starting at `t0`, and every action with when it came.
struct Harness {
    sup: Supervisor,
    t0: Instant,
    now: Instant,
    log: Vec<(Duration, Action)>,
}

impl Harness {
    fn new(specs: Vec<Spec>, budget: Duration) -> Self {
        Self::with(specs, Settings::new(budget))
    }

    fn with(specs: Vec<Spec>, settings: Settings) -> Self {
        let t0 = Instant::now();
        let mut h = Harness {
            sup: Supervisor::new(specs, settings),
            t0,
            now: t0,
            log: vec![],
        };
        h.sup.start(t0);
        h.drain();
        h
    }

    fn pair() -> Self {
        Self::new(build(B9, pair_defs()), B9)
    }

    fn drain(&mut self) {
        while let Some(a) = self.sup.poll_action() {
            self.log.push((self.now - self.t0, a));
        }
    }

    fn at(&mut self, offset: Duration, ev: Event) {
        assert!(self.t0 + offset >= self.now, "time goes forward");
        self.run_until(self.t0 + offset);
        self.now = self.t0 + offset;
        self.sup.handle(ev, self.now);
        self.drain();
    }

    /// Fires every deadline up to `until`, jumping straight to each; bounded steps.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..100 {
            match self.sup.next_deadline() {
                Some(d) if d <= until => {
                    self.now = self.now.max(d);
                    self.sup.handle_timeout(self.now);
                    self.drain();
                }
                _ => return,
            }
        }
        panic!("deadlines do not converge");
    }

    fn run_to_end(&mut self) {
        self.run_until(self.t0 + Duration::from_secs(3600));
    }

    /// Brings postgres and the app up: started at 0, ready at 400 ms, app started at 401.
    fn up(&mut self) {
        self.at(
            Duration::ZERO,
            Event::Started {
                id: PG,
                pid: Pid::from_raw(10),
            },
        );
        self.at(400 * MS, Event::Ready { id: PG });
        self.at(
            401 * MS,
            Event::Started {
                id: APP,
                pid: Pid::from_raw(20),
            },
        );
    }

    /// A probe result for `id` arriving `ms` after the start.
    fn probe_at(&mut self, ms: u64, id: Id, outcome: Outcome) {
        let report = probe(outcome);
        self.at(Duration::from_millis(ms), Event::Probe { id, report });
    }

    fn actions(&self) -> Vec<Action> {
        self.log.iter().map(|(_, a)| a.clone()).collect()
    }

    fn when(&self, a: &Action) -> Option<Duration> {
        self.log.iter().find(|(_, x)| x == a).map(|(t, _)| *t)
    }

    fn exit_code(&self) -> Option<i32> {
        self.log.iter().find_map(|(_, a)| match a {
            Action::Exit { code } => Some(*code),
            _ => None,
        })
    }
}

/// A signal to one of the pair, where it goes: PostgreSQL's postmaster (pid 10) alone but
/// for SIGKILL, the app's (pid 20) whole group.
fn sig(id: Id, signal: Signal) -> Action {
    let to = match id {
        PG if signal != Signal::SIGKILL => Target::Leader(Pid::from_raw(10)),
        PG => Target::Group(Pid::from_raw(10)),
        _ => Target::Group(Pid::from_raw(20)),
    };
    Action::Signal { id, signal, to }
}

#[test]
fn app_starts_only_when_postgres_is_ready() {
    let mut h = Harness::pair();
    assert_eq!(h.actions(), vec![Action::Start(PG)]);
    h.at(
        Duration::ZERO,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    assert_eq!(h.actions(), vec![Action::Start(PG)], "started is not ready");
    h.at(400 * MS, Event::Ready { id: PG });
    assert_eq!(
        h.when(&Action::Start(APP)),
        Some(400 * MS),
        "no delay after ready"
    );
}

#[test]
fn sigterm_stops_app_then_postgres_and_exits_with_the_apps_code() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.when(&sig(APP, Signal::SIGTERM)), Some(1000 * MS));
    assert_eq!(
        h.when(&sig(PG, Signal::SIGINT)),
        None,
        "postgres waits for the app"
    );
    h.at(
        1050 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(1050 * MS));
    h.at(
        1200 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(0));
    assert_eq!(h.sup.next_deadline(), None);
    assert!(!h.actions().contains(&sig(APP, Signal::SIGKILL)));
}

#[test]
fn app_ignoring_sigterm_is_killed_leaving_postgres_its_reserve() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    h.run_until(h.t0 + 6500 * MS);
    // Budget 9 s from 1.0 s: deadline 10.0 s; postgres keeps 3 s, grace 0.5 s.
    assert_eq!(h.when(&sig(APP, Signal::SIGKILL)), Some(6500 * MS));
    h.at(
        6510 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(9),
        },
    );
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(6510 * MS));
    h.at(
        6700 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(137));
    assert!(!h.actions().contains(&sig(PG, Signal::SIGQUIT)));
}

#[test]
fn postgres_that_will_not_stop_gets_sigquit_then_sigkill_inside_the_budget() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    h.at(
        1100 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Code(0),
        },
    );
    h.run_to_end();
    // Deadline 10.0 s, grace 0.5 s: SIGKILL at 9.5, SIGQUIT 0.75 s before.
    assert_eq!(h.when(&sig(PG, Signal::SIGQUIT)), Some(8750 * MS));
    assert_eq!(h.when(&sig(PG, Signal::SIGKILL)), Some(9500 * MS));
    // It never exits: tandem leaves at the end of the budget anyway, with the app's code.
    assert_eq!(h.log.last(), Some(&(10_000 * MS, Action::Exit { code: 0 })));
}

#[test]
fn a_second_sigterm_skips_to_the_next_signal() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    h.at(1200 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.when(&sig(APP, Signal::SIGKILL)), Some(1200 * MS));
    h.at(
        1210 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(9),
        },
    );
    h.at(1300 * MS, Event::Signal(Signal::SIGINT));
    assert_eq!(h.when(&sig(PG, Signal::SIGQUIT)), Some(1300 * MS));
}

#[test]
fn sigquit_stops_everything_at_once() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGQUIT));
    assert_eq!(h.when(&sig(APP, Signal::SIGKILL)), Some(1000 * MS));
    assert_eq!(h.when(&sig(PG, Signal::SIGQUIT)), Some(1000 * MS));
}

#[test]
fn app_exit_stops_postgres_cleanly_and_passes_the_code_on() {
    let mut h = Harness::pair();
    h.up();
    h.at(
        2000 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Code(7),
        },
    );
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(2000 * MS));
    assert_eq!(h.exit_code(), None, "not before postgres is down");
    h.at(
        2100 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(7));
}

#[test]
fn app_killed_by_a_signal_exits_128_plus_n() {
    let mut h = Harness::pair();
    h.up();
    h.at(
        2000 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(6),
        },
    );
    h.at(
        2100 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(134));
}

#[test]
fn postgres_dying_stops_the_app_and_fails_the_container() {
    let mut h = Harness::pair();
    h.up();
    h.at(
        2000 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Signal(9),
        },
    );
    assert_eq!(h.when(&sig(APP, Signal::SIGTERM)), Some(2000 * MS));
    h.at(
        2050 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(EXIT_SERVICE_FAILED));
}

#[test]
fn postgres_failing_to_start_never_starts_the_app() {
    let mut h = Harness::pair();
    h.at(
        50 * MS,
        Event::StartFailed {
            id: PG,
            reason: "bad".into(),
            code: EXIT_START_FAILED,
        },
    );
    assert_eq!(
        h.actions(),
        vec![Action::Start(PG), Action::Exit { code: 1 }]
    );
}

#[test]
fn app_that_cannot_be_executed_exits_127_after_postgres_stops() {
    let mut h = Harness::pair();
    h.at(
        Duration::ZERO,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.at(400 * MS, Event::Ready { id: PG });
    h.at(
        400 * MS,
        Event::StartFailed {
            id: APP,
            reason: "not found".into(),
            code: 127,
        },
    );
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(400 * MS));
    h.at(
        500 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(127));
}

#[test]
fn sigterm_while_postgres_sets_up_cancels_the_setup_and_exits_0() {
    let mut h = Harness::pair();
    h.at(300 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.when(&Action::CancelSetup(PG)), Some(300 * MS));
    h.at(
        350 * MS,
        Event::StartFailed {
            id: PG,
            reason: "interrupted".into(),
            code: 1,
        },
    );
    assert_eq!(h.exit_code(), Some(0), "a clean stop: nothing failed");
    assert!(!h.actions().contains(&Action::Start(APP)));
}

#[test]
fn postgres_started_after_the_stop_began_gets_the_stop_signal() {
    let mut h = Harness::pair();
    h.at(300 * MS, Event::Signal(Signal::SIGTERM));
    assert!(
        !h.actions().contains(&sig(PG, Signal::SIGINT)),
        "no process yet"
    );
    h.at(
        900 * MS,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(900 * MS));
}

#[test]
fn sighup_reloads_postgres_and_only_apps_that_asked_for_it() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGHUP));
    assert_eq!(h.when(&sig(PG, Signal::SIGHUP)), Some(1000 * MS));
    assert!(!h
        .actions()
        .iter()
        .any(|a| matches!(a, Action::Signal { id: APP, .. })));

    let mut defs = pair_defs();
    defs[1] = defs[1].clone().reload(Some(Signal::SIGUSR1));
    let mut h = Harness::new(build(B9, defs), B9);
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGHUP));
    assert_eq!(h.when(&sig(APP, Signal::SIGUSR1)), Some(1000 * MS));
}

#[test]
fn user_signals_are_forwarded_to_the_app_only() {
    let mut h = Harness::pair();
    h.up();
    for s in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH] {
        h.at(1000 * MS, Event::Signal(s));
        assert_eq!(h.when(&sig(APP, s)), Some(1000 * MS));
        assert_eq!(h.when(&sig(PG, s)), None);
    }
    h.at(1000 * MS, Event::Signal(Signal::SIGTSTP));
    assert!(!h.actions().iter().any(|a| matches!(
        a,
        Action::Signal {
            signal: Signal::SIGTSTP,
            ..
        }
    )));
}

#[test]
fn oneshot_gates_its_dependents_and_its_failure_stops_the_container() {
    let b = B9;
    let mut defs = pair_defs();
    defs[1] = defs[1].clone().after("migrate", Condition::Completed);
    defs.push(ServiceDef::oneshot("migrate").after("postgres", Condition::Healthy));
    let specs = build(b, defs);

    let mut h = Harness::new(specs.clone(), b);
    h.at(
        Duration::ZERO,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.at(100 * MS, Event::Ready { id: PG });
    assert_eq!(h.when(&Action::Start(2)), Some(100 * MS));
    h.at(
        150 * MS,
        Event::Started {
            id: 2,
            pid: Pid::from_raw(30),
        },
    );
    assert_eq!(h.when(&Action::Start(APP)), None);
    h.at(
        700 * MS,
        Event::Exited {
            id: 2,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.when(&Action::Start(APP)), Some(700 * MS));

    let mut h = Harness::new(specs, b);
    h.at(
        Duration::ZERO,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.at(100 * MS, Event::Ready { id: PG });
    h.at(
        150 * MS,
        Event::Started {
            id: 2,
            pid: Pid::from_raw(30),
        },
    );
    h.at(
        700 * MS,
        Event::Exited {
            id: 2,
            exit: Exit::Code(2),
        },
    );
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(700 * MS));
    h.at(
        800 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(
        h.exit_code(),
        Some(2),
        "the oneshot's own code: it is the cause"
    );
    assert!(!h.actions().contains(&Action::Start(APP)));
}

#[test]
fn short_budget_still_leaves_postgres_its_fast_shutdown() {
    let b = Duration::from_secs(3);
    let mut h = Harness::new(build(b, pair_defs()), b);
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    h.run_until(h.t0 + 2700 * MS);
    // Deadline 4.0 s; grace 0.3 s; reserve 1 s: app killed at 2.7 s.
    assert_eq!(h.when(&sig(APP, Signal::SIGKILL)), Some(2700 * MS));
    h.at(
        2700 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(9),
        },
    );
    h.run_to_end();
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(2700 * MS));
    assert_eq!(h.when(&sig(PG, Signal::SIGQUIT)), Some(3450 * MS));
    assert_eq!(h.when(&sig(PG, Signal::SIGKILL)), Some(3700 * MS));
}

#[test]
fn status_reports_phases() {
    let mut h = Harness::pair();
    h.up();
    let st = h.sup.status(h.t0 + 1000 * MS);
    assert_eq!(st[PG].phase, Phase::Ready);
    assert_eq!(st[APP].phase, Phase::Ready, "no probe: ready when started");
    assert_eq!(st[APP].pid, Some(20));
    assert_eq!(st[APP].uptime, Some(599 * MS));
}

fn probe(outcome: Outcome) -> ProbeReport {
    ProbeReport {
        outcome,
        latency: MS,
    }
}

fn fail(detail: &str) -> Outcome {
    Outcome::Fail(detail.into())
}

fn http_health(on_unhealthy: OnUnhealthy) -> HealthSpec {
    HealthSpec {
        probe_kind: "http",
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        retries: 3,
        start_period: Duration::from_secs(2),
        on_unhealthy,
    }
}

fn with_app_probe(on_unhealthy: OnUnhealthy) -> Harness {
    let mut defs = pair_defs();
    defs[1] = defs[1].clone().health(Some(http_health(on_unhealthy)));
    Harness::new(build(B9, defs), B9)
}

fn probes_at(h: &Harness, id: Id) -> Vec<Duration> {
    h.log
        .iter()
        .filter(|(_, a)| *a == Action::Probe(id))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn unhealthy_app_is_restarted_after_retries_failures_outside_its_start_period() {
    let mut h = with_app_probe(OnUnhealthy::Restart);
    h.up();
    assert_eq!(probes_at(&h, APP), vec![401 * MS], "first probe at start");
    // Failures inside the start period do not count; until healthy the probes come 10 ms
    // after an answer, then 15, then at most 20: noticed within 20 ms of answering.
    h.probe_at(402, APP, fail("connection refused"));
    h.run_until(h.t0 + 412 * MS);
    h.probe_at(413, APP, fail("connection refused"));
    h.run_until(h.t0 + 428 * MS);
    h.probe_at(429, APP, fail("connection refused"));
    h.run_until(h.t0 + 449 * MS);
    h.probe_at(450, APP, fail("connection refused"));
    h.run_until(h.t0 + 470 * MS);
    assert_eq!(
        probes_at(&h, APP),
        vec![401 * MS, 412 * MS, 428 * MS, 449 * MS, 470 * MS]
    );
    h.probe_at(660, APP, Outcome::Ok);
    assert_eq!(h.sup.health(APP), (Some(Health::Healthy), 0));
    // Healthy: the next probe comes an interval later.
    h.run_until(h.t0 + 5660 * MS);
    assert_eq!(probes_at(&h, APP).last(), Some(&(5660 * MS)));
    for (i, t) in [5661u64, 10_661, 15_661].into_iter().enumerate() {
        h.run_until(h.t0 + Duration::from_millis(t - 1));
        h.probe_at(t, APP, fail("http 503"));
        assert_eq!(h.sup.health(APP).1, i as u32 + 1);
    }
    assert_eq!(h.sup.health(APP).0, Some(Health::Unhealthy));
    assert_eq!(h.when(&sig(APP, Signal::SIGTERM)), Some(15_661 * MS));
    assert!(
        !h.actions().contains(&sig(PG, Signal::SIGINT)),
        "only the app restarts"
    );
    let starts = |h: &Harness| {
        h.actions()
            .iter()
            .filter(|a| **a == Action::Start(APP))
            .count()
    };
    assert_eq!(starts(&h), 1);
    h.at(
        15_700 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(starts(&h), 2, "started again at once: {:?}", h.log);
    assert_eq!(h.exit_code(), None, "the container keeps running");
    assert_eq!(h.sup.status(h.now)[APP].restarts, 1);
}

#[test]
fn unhealthy_with_report_policy_only_reports() {
    let mut h = with_app_probe(OnUnhealthy::Report);
    h.up();
    h.probe_at(3000, APP, fail("http 503"));
    h.probe_at(3001, APP, fail("http 503"));
    h.probe_at(3002, APP, fail("http 503"));
    assert_eq!(h.sup.health(APP), (Some(Health::Unhealthy), 3));
    assert!(!h
        .actions()
        .iter()
        .any(|a| matches!(a, Action::Signal { .. })));
    h.probe_at(3003, APP, Outcome::Ok);
    assert_eq!(h.sup.health(APP), (Some(Health::Healthy), 0));
}

#[test]
fn starting_answers_never_count_as_failures() {
    let mut h = with_app_probe(OnUnhealthy::Restart);
    h.up();
    for t in 3000..3010 {
        h.probe_at(t, APP, Outcome::Starting("starting up".into()));
    }
    assert_eq!(h.sup.health(APP), (Some(Health::Starting), 0));
}

#[test]
fn a_restart_cut_short_by_sigterm_stays_stopped_within_the_budget() {
    let mut h = with_app_probe(OnUnhealthy::Restart);
    h.up();
    for t in 3000..3003 {
        h.probe_at(t, APP, fail("http 503"));
    }
    assert_eq!(h.when(&sig(APP, Signal::SIGTERM)), Some(3002 * MS));
    h.at(3100 * MS, Event::Signal(Signal::SIGTERM));
    h.run_until(h.t0 + 8600 * MS);
    // Budget from 3.1 s: app killed by 3.1 + 9 - 3 - 0.5 = 8.6 s, not 3.0 + 9.
    assert_eq!(h.when(&sig(APP, Signal::SIGKILL)), Some(8600 * MS));
    h.at(
        8600 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(9),
        },
    );
    let starts = h
        .actions()
        .iter()
        .filter(|a| **a == Action::Start(APP))
        .count();
    assert_eq!(starts, 1, "not started again");
    assert!(probes_at(&h, APP).iter().all(|t| *t < 3100 * MS));
}

#[test]
fn postgres_exiting_before_ready_is_a_start_failure() {
    let mut h = Harness::pair();
    h.at(
        Duration::ZERO,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.at(
        80 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(1),
        },
    );
    assert_eq!(h.exit_code(), Some(EXIT_START_FAILED));
    assert!(!h.actions().contains(&Action::Start(APP)));
}

// ---------------------------------------------------------------------------------------
// The transition table: every (phase, input) pair.

/// A database service ("db", ready when reported, so Running and Ready differ) behind a
/// oneshot gate, driven into `phase` through real events.
fn in_phase(phase: Phase) -> (Harness, Id) {
    const DB: Id = 1;
    let defs = vec![
        ServiceDef::oneshot("gate"),
        ServiceDef::database("db")
            .main(true)
            .restart(Some(table::default_restart()))
            .after("gate", Condition::Completed),
    ];
    let mut h = Harness::new(build(B9, defs), B9);
    let pid = Pid::from_raw;
    let mut script = vec![
        // Starting: the gate completed.
        Event::Started { id: 0, pid: pid(5) },
        Event::Exited {
            id: 0,
            exit: Exit::Code(0),
        },
        // Running, Ready, Stopping, Done.
        Event::Started {
            id: DB,
            pid: pid(10),
        },
        Event::Ready { id: DB },
        Event::Signal(Signal::SIGTERM),
        Event::Exited {
            id: DB,
            exit: Exit::Code(0),
        },
    ];
    let upto = match phase {
        Phase::Waiting => 0,
        Phase::Starting => 2,
        Phase::Running => 3,
        Phase::Ready | Phase::Backoff => 4,
        Phase::Stopping => 5,
        Phase::Done => 6,
    };
    script.truncate(upto);
    if phase == Phase::Backoff {
        // A failure after it was ready: its restart policy holds it back for a while.
        script.push(Event::Exited {
            id: DB,
            exit: Exit::Code(1),
        });
    }
    for (i, ev) in script.into_iter().enumerate() {
        h.at(Duration::from_millis(i as u64), ev);
    }
    assert_eq!(h.sup.svcs[DB].phase, phase, "set-up of {phase:?}");
    (h, DB)
}

fn input_of(kind: table::InputKind) -> Input {
    use table::InputKind as K;
    let step = Step {
        name: "init script 01.sh".into(),
        kind: StepKind::Task,
        timeout: None,
    };
    match kind {
        K::Start => Input::Start,
        K::Blocked => Input::Blocked("gate failed".into()),
        K::Spawned => Input::Spawned(Pid::from_raw(11)),
        K::Ready => Input::Ready,
        K::StartFailed => Input::StartFailed {
            reason: "broken".into(),
            code: 1,
        },
        K::Exited => Input::Exited(Exit::Code(0)),
        K::StepStarted => Input::StepStarted(step, Pid::from_raw(50)),
        K::StepExited => Input::StepExited(Pid::from_raw(50)),
        K::Stop => Input::Stop,
        K::Restart => Input::Restart,
        K::Escalate => Input::Escalate("test"),
        K::Deadline => Input::Deadline,
        K::Retry => Input::Retry,
    }
}

/// The phase each cell leaves the service in. Rows are phases, columns the inputs in
/// `InputKind::ALL` order: Start, Blocked, Spawned, Ready, StartFailed, Exited,
/// StepStarted, StepExited, Stop, Restart, Escalate, Deadline, Retry. A cell that begins
/// the shutdown keeps its phase: the stop reaches the service through `Stop`.
#[test]
fn every_phase_and_input_pair_has_its_cell() {
    use Phase::*;
    let table: [(Phase, [Phase; 13]); 7] = [
        (
            Waiting,
            [
                Starting, Done, Waiting, Waiting, Waiting, Waiting, Waiting, Waiting, Done,
                Waiting, Waiting, Waiting, Waiting,
            ],
        ),
        (
            Backoff,
            [
                Backoff, Backoff, Backoff, Backoff, Backoff, Backoff, Backoff, Backoff, Done,
                Backoff, Backoff, Backoff, Waiting,
            ],
        ),
        (
            Starting,
            [
                Starting, Starting, Running, Starting, Done, Starting, Starting, Starting,
                Stopping, Starting, Starting, Starting, Starting,
            ],
        ),
        (
            Running,
            [
                Running, Running, Running, Ready, Running, Done, Running, Running, Stopping,
                Stopping, Running, Running, Running,
            ],
        ),
        (
            Ready,
            [
                Ready, Ready, Ready, Ready, Ready, Done, Ready, Ready, Stopping, Stopping, Ready,
                Ready, Ready,
            ],
        ),
        (
            Stopping,
            [
                Stopping, Stopping, Stopping, Stopping, Done, Done, Stopping, Stopping, Stopping,
                Stopping, Stopping, Stopping, Stopping,
            ],
        ),
        (Done, [Done; 13]),
    ];
    let mut walked = 0;
    for (phase, row) in table {
        for (kind, want) in table::InputKind::ALL.into_iter().zip(row) {
            let (mut h, id) = in_phase(phase);
            let now = h.now + MS;
            h.sup.apply(id, input_of(kind), now);
            assert_eq!(
                h.sup.svcs[id].phase, want,
                "({phase:?}, {kind:?}) should leave {want:?}"
            );
            walked += 1;
        }
    }
    assert_eq!(
        walked,
        Phase::ALL.len() * table::InputKind::ALL.len(),
        "every pair"
    );
}

// ---------------------------------------------------------------------------------------
// Set-up steps, the start deadline, external services, the exit after a stop.

fn step(name: &str, kind: StepKind, timeout: Option<Duration>) -> Step {
    Step {
        name: name.into(),
        kind,
        timeout,
    }
}

fn step_started(id: Id, s: Step, pid: i32) -> Event {
    Event::StepStarted {
        id,
        step: s,
        pid: Pid::from_raw(pid),
    }
}

fn step_exited(id: Id, pid: i32, exit: Exit) -> Event {
    Event::StepExited {
        id,
        pid: Pid::from_raw(pid),
        exit,
    }
}

fn to_group(id: Id, pid: i32, signal: Signal) -> Action {
    Action::Signal {
        id,
        signal,
        to: Target::Group(Pid::from_raw(pid)),
    }
}

fn to_leader(id: Id, pid: i32, signal: Signal) -> Action {
    Action::Signal {
        id,
        signal,
        to: Target::Leader(Pid::from_raw(pid)),
    }
}

fn gave_up(h: &mut Harness, ms: u64) {
    h.at(
        Duration::from_millis(ms),
        Event::StartFailed {
            id: PG,
            reason: "stopped before the first start was complete".into(),
            code: 1,
        },
    );
}

#[test]
fn sigterm_during_initdb_kills_it_at_once_and_exits() {
    let mut h = Harness::pair();
    let initdb = step("initdb", StepKind::Scratch, Some(Duration::from_secs(300)));
    h.at(10 * MS, step_started(PG, initdb, 50));
    h.at(400 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.when(&Action::CancelSetup(PG)), Some(400 * MS));
    assert_eq!(h.when(&to_group(PG, 50, Signal::SIGKILL)), Some(400 * MS));
    h.at(402 * MS, step_exited(PG, 50, Exit::Signal(9)));
    gave_up(&mut h, 403);
    assert_eq!(h.log.last(), Some(&(403 * MS, Action::Exit { code: 0 })));
}

/// An upgrade is steps like a first start's: healthcheck names the one that runs (the
/// step's own name, "upgrading 15 -> 17: ..."), none has a deadline of its own but initdb's,
/// and a SIGTERM during pg_upgrade (a scratch step: what it makes is redone by the next
/// start) kills its group at once and exits.
#[test]
fn an_upgrade_is_steps_and_a_sigterm_during_pg_upgrade_kills_it_at_once() {
    let mut h = Harness::pair();
    let detail = |h: &Harness| {
        h.sup.verdict(&[None, None], h.now).services[PG]
            .detail
            .clone()
    };
    let reading = step(
        "upgrading 15 -> 17: reading the old cluster",
        StepKind::Task,
        None,
    );
    h.at(10 * MS, step_started(PG, reading, 40));
    assert_eq!(
        detail(&h).as_deref(),
        Some("upgrading 15 -> 17: reading the old cluster")
    );
    h.at(300 * MS, step_exited(PG, 40, Exit::Code(0)));
    let initdb = step(
        "upgrading 15 -> 17: initdb",
        StepKind::Scratch,
        Some(Duration::from_secs(300)),
    );
    h.at(310 * MS, step_started(PG, initdb, 50));
    assert_eq!(
        h.sup.next_deadline(),
        Some(h.t0 + 310 * MS + Duration::from_secs(300))
    );
    h.at(1500 * MS, step_exited(PG, 50, Exit::Code(0)));
    let upgrade = step(
        "upgrading 15 -> 17: pg_upgrade --link",
        StepKind::Scratch,
        None,
    );
    h.at(1510 * MS, step_started(PG, upgrade, 60));
    assert_eq!(h.sup.next_deadline(), None, "pg_upgrade may take its time");
    assert_eq!(
        detail(&h).as_deref(),
        Some("upgrading 15 -> 17: pg_upgrade --link")
    );
    h.at(4000 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.when(&Action::CancelSetup(PG)), Some(4000 * MS));
    assert_eq!(h.when(&to_group(PG, 60, Signal::SIGKILL)), Some(4000 * MS));
    h.at(4002 * MS, step_exited(PG, 60, Exit::Signal(9)));
    gave_up(&mut h, 4003);
    assert_eq!(h.log.last(), Some(&(4003 * MS, Action::Exit { code: 0 })));
}

#[test]
fn sigterm_during_a_script_stops_its_group_then_the_temporary_server() {
    let mut h = Harness::pair();
    let server = step("the temporary server", StepKind::Server, Some(60_000 * MS));
    h.at(100 * MS, step_started(PG, server, 60));
    h.at(300 * MS, Event::StepReady { id: PG });
    h.at(
        310 * MS,
        step_started(PG, step("init script 01.sh", StepKind::Task, None), 70),
    );
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.when(&to_group(PG, 70, Signal::SIGTERM)), Some(1000 * MS));
    assert_eq!(
        h.when(&to_leader(PG, 60, Signal::SIGINT)),
        None,
        "the script first"
    );
    h.at(1005 * MS, step_exited(PG, 70, Exit::Signal(15)));
    assert_eq!(h.when(&to_leader(PG, 60, Signal::SIGINT)), Some(1005 * MS));
    h.at(1090 * MS, step_exited(PG, 60, Exit::Code(0)));
    gave_up(&mut h, 1091);
    assert_eq!(h.exit_code(), Some(0));
    assert!(!h.actions().contains(&to_group(PG, 70, Signal::SIGKILL)));
}

#[test]
fn a_script_that_ignores_sigterm_is_killed_and_the_server_keeps_time_for_its_ladder() {
    let mut h = Harness::pair();
    h.at(
        100 * MS,
        step_started(PG, step("the temporary server", StepKind::Server, None), 60),
    );
    h.at(
        310 * MS,
        step_started(PG, step("init script 01.sh", StepKind::Task, None), 70),
    );
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    h.run_until(h.t0 + 1750 * MS);
    // postgres' step time: a quarter of its 3 s reserve.
    assert_eq!(h.when(&to_group(PG, 70, Signal::SIGKILL)), Some(1750 * MS));
    h.at(1751 * MS, step_exited(PG, 70, Exit::Signal(9)));
    h.run_to_end();
    // The server's ladder ends inside postgres' window: 10.0 s budget end less 0.5 s grace.
    assert_eq!(h.when(&to_leader(PG, 60, Signal::SIGINT)), Some(1751 * MS));
    assert_eq!(h.when(&to_leader(PG, 60, Signal::SIGQUIT)), Some(8750 * MS));
    assert_eq!(h.when(&to_group(PG, 60, Signal::SIGKILL)), Some(9500 * MS));
    assert_eq!(h.log.last(), Some(&(10_000 * MS, Action::Exit { code: 0 })));
}

#[test]
fn a_step_past_its_deadline_fails_the_start_through_the_ladder() {
    let mut h = Harness::pair();
    let server = step("the temporary server", StepKind::Server, Some(60_000 * MS));
    h.at(100 * MS, step_started(PG, server, 60));
    h.run_until(h.t0 + 60_100 * MS);
    assert_eq!(
        h.when(&to_leader(PG, 60, Signal::SIGINT)),
        Some(60_100 * MS)
    );
    h.at(60_200 * MS, step_exited(PG, 60, Exit::Code(0)));
    gave_up(&mut h, 60_201);
    assert_eq!(h.exit_code(), Some(EXIT_START_FAILED));
}

#[test]
fn a_server_step_that_is_ready_has_no_deadline_and_is_stopped_when_the_setup_asks() {
    let mut h = Harness::pair();
    let server = step("the temporary server", StepKind::Server, Some(60_000 * MS));
    h.at(100 * MS, step_started(PG, server, 60));
    h.at(300 * MS, Event::StepReady { id: PG });
    assert_eq!(
        h.sup.next_deadline(),
        None,
        "ready: no deadline while scripts run"
    );
    h.at(90_000 * MS, Event::StepStopWanted { id: PG });
    assert_eq!(
        h.when(&to_leader(PG, 60, Signal::SIGINT)),
        Some(90_000 * MS)
    );
    assert_eq!(
        h.sup.next_deadline(),
        Some(h.t0 + 90_000 * MS + stop::SERVER_STEP_STOP)
    );
    h.at(90_100 * MS, step_exited(PG, 60, Exit::Code(0)));
    assert_eq!(h.sup.next_deadline(), None);
    h.at(
        90_110 * MS,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.at(90_300 * MS, Event::Ready { id: PG });
    assert_eq!(h.when(&Action::Start(APP)), Some(90_300 * MS));
    assert_eq!(h.exit_code(), None);
}

#[test]
fn postgres_never_ready_is_stopped_through_its_ladder_within_the_budget() {
    let mut defs = pair_defs();
    defs[0] = defs[0].clone().start_timeout(Some(Duration::from_secs(1)));
    let mut h = Harness::new(build(Duration::from_secs(3), defs), Duration::from_secs(3));
    h.at(
        100 * MS,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.run_to_end();
    // Ready deadline at 1.1 s; budget 3 s from there (end 4.1 s, grace 0.3 s, step 0.25 s).
    assert_eq!(h.when(&sig(PG, Signal::SIGINT)), Some(1100 * MS));
    assert_eq!(h.when(&sig(PG, Signal::SIGQUIT)), Some(3550 * MS));
    assert_eq!(h.when(&sig(PG, Signal::SIGKILL)), Some(3800 * MS));
    assert_eq!(
        h.log.last(),
        Some(&(
            4100 * MS,
            Action::Exit {
                code: EXIT_START_FAILED
            }
        ))
    );
    assert!(!h.actions().contains(&Action::Start(APP)));
}

#[test]
fn an_external_service_gates_its_dependents_on_its_probe_and_is_never_started() {
    let db = HealthSpec {
        probe_kind: "postgres",
        ..http_health(OnUnhealthy::Report)
    };
    let defs = vec![
        ServiceDef::external("db", db),
        ServiceDef::daemon("app")
            .main(true)
            .after("db", Condition::Healthy),
    ];
    let mut h = Harness::new(build(B9, defs), B9);
    assert_eq!(h.actions(), vec![Action::Probe(0)], "probed, not started");
    h.probe_at(5, 0, fail("connection refused"));
    h.run_until(h.t0 + 15 * MS);
    assert_eq!(
        probes_at(&h, 0),
        vec![Duration::ZERO, 15 * MS],
        "10 ms apart at first"
    );
    let verdict = h.sup.verdict(&[], h.now);
    assert_eq!(verdict.services[0].state, verdict::State::Starting);
    assert_eq!(verdict.services[1].state, verdict::State::NotRunning);
    h.probe_at(300, 0, Outcome::Ok);
    assert_eq!(h.when(&Action::Start(APP)), Some(300 * MS));
    h.at(
        301 * MS,
        Event::Started {
            id: APP,
            pid: Pid::from_raw(20),
        },
    );
    // The database going away is reported; the app is not stopped for it.
    for t in [5300, 10_300, 15_300] {
        h.run_until(h.t0 + Duration::from_millis(t));
        h.probe_at(t + 1, 0, fail("connection refused"));
    }
    assert_eq!(h.sup.health(0), (Some(Health::Unhealthy), 3));
    assert!(!h
        .actions()
        .iter()
        .any(|a| matches!(a, Action::Signal { .. })));
    let verdict = h
        .sup
        .verdict(&[Some(probe(fail("connection refused"))), None], h.now);
    assert!(!verdict.healthy);
    assert_eq!(verdict.services[0].tries, Some(4));
    // A stop has nothing to signal for it.
    h.at(20_000 * MS, Event::Signal(Signal::SIGTERM));
    h.at(
        20_050 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.log.last(), Some(&(20_050 * MS, Action::Exit { code: 0 })));
}

#[test]
fn after_a_stop_an_app_ended_by_its_stop_signal_exits_0_unless_told_otherwise() {
    for (mode, exit, want) in [
        (StopExit::Clean, Exit::Signal(15), 0),
        (StopExit::App, Exit::Signal(15), 143),
        (StopExit::Clean, Exit::Signal(9), 137),
        (StopExit::Clean, Exit::Code(3), 3),
    ] {
        let settings = Settings {
            stop_exit: mode,
            ..Settings::new(B9)
        };
        let mut h = Harness::with(build(B9, pair_defs()), settings);
        h.up();
        h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
        h.at(1100 * MS, Event::Exited { id: APP, exit });
        h.at(
            1200 * MS,
            Event::Exited {
                id: PG,
                exit: Exit::Code(0),
            },
        );
        assert_eq!(h.exit_code(), Some(want), "{mode:?} {exit}");
    }
    // Killed by SIGTERM from someone else, with no stop asked for: its own code.
    let mut h = Harness::pair();
    h.up();
    h.at(
        1100 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(15),
        },
    );
    h.at(
        1200 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(143));
}

#[test]
fn the_verdict_says_which_step_a_starting_service_is_in_and_a_completed_oneshot_is_ok() {
    let mut defs = pair_defs();
    defs.push(ServiceDef::oneshot("migrate"));
    let mut h = Harness::new(build(B9, defs), B9);
    h.at(
        10 * MS,
        step_started(PG, step("init script 01.sql", StepKind::Task, None), 70),
    );
    h.at(
        20 * MS,
        Event::Started {
            id: 2,
            pid: Pid::from_raw(30),
        },
    );
    h.at(
        30 * MS,
        Event::Exited {
            id: 2,
            exit: Exit::Code(0),
        },
    );
    let v = h.sup.verdict(&[], h.now);
    assert!(!v.healthy);
    assert_eq!(v.services[PG].state, verdict::State::Starting);
    assert_eq!(v.services[PG].detail.as_deref(), Some("init script 01.sql"));
    assert_eq!(v.services[APP].state, verdict::State::NotRunning);
    assert_eq!(v.services[2].state, verdict::State::Ok);
    assert!(v.services[2].healthy);
}

// ---------------------------------------------------------------------------------------
// The service graph: layers, conditions, backoff, the restart window, the budget split.

fn restarting(spec: RestartSpec) -> Harness {
    let defs = vec![ServiceDef::daemon("worker").restart(Some(spec))];
    Harness::new(build(B9, defs), B9)
}

fn backoff_spec(jitter: f64) -> RestartSpec {
    RestartSpec {
        on_failure_only: true,
        delay: Duration::from_millis(100),
        factor: 2.0,
        max_delay: Duration::from_millis(500),
        jitter,
        max_restarts: 5,
        window: Duration::from_secs(60),
        reset_after: Duration::from_secs(10),
    }
}

/// Runs the worker (id 0) through `n` crashes at 10 ms after each start; the instants its
/// Start actions came, from the first.
fn crash_loop(h: &mut Harness, n: usize) -> Vec<Duration> {
    let mut starts = vec![];
    for i in 0..n {
        let at = h
            .log
            .iter()
            .filter(|(_, a)| *a == Action::Start(0))
            .nth(i)
            .map(|(t, _)| *t);
        let Some(at) = at else {
            h.run_until(h.t0 + Duration::from_secs(3600));
            match h.log.iter().filter(|(_, a)| *a == Action::Start(0)).nth(i) {
                Some((t, _)) => starts.push(*t),
                None => return starts,
            }
            continue;
        };
        starts.push(at);
        h.at(
            at,
            Event::Started {
                id: 0,
                pid: Pid::from_raw(40 + i as i32),
            },
        );
        h.at(
            at + 10 * MS,
            Event::Exited {
                id: 0,
                exit: Exit::Code(1),
            },
        );
        h.run_until(h.t0 + Duration::from_secs(3600));
    }
    starts
}

#[test]
fn restarts_back_off_exponentially_up_to_the_cap_then_give_up_and_stop_the_container() {
    let mut h = restarting(backoff_spec(0.0));
    let starts = crash_loop(&mut h, 8);
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0] - 10 * MS).as_millis())
        .collect();
    // 100, 200, 400, then the 500 ms cap; 5 restarts, then it has failed for good.
    assert_eq!(gaps, [100, 200, 400, 500, 500]);
    assert_eq!(h.sup.status(h.now)[0].restarts, 5);
    assert_eq!(
        h.exit_code(),
        Some(EXIT_SERVICE_FAILED),
        "required: the container stops"
    );
}

/// A stop that comes while the main service waits out its restart delay is a stop as asked:
/// exit 0 as if it never ran, not the code of the run the restart had already dealt with
/// (137 after a SIGKILL of the app: found by tests/faults.rs).
#[test]
fn a_stop_during_the_restart_delay_exits_0() {
    let defs = vec![ServiceDef::daemon("app")
        .main(true)
        .restart(Some(backoff_spec(0.0)))];
    let mut h = Harness::new(build(B9, defs), B9);
    let (at, _) = *h
        .log
        .iter()
        .find(|(_, a)| *a == Action::Start(0))
        .expect("the worker starts");
    h.at(
        at,
        Event::Started {
            id: 0,
            pid: Pid::from_raw(40),
        },
    );
    h.at(
        at + 10 * MS,
        Event::Exited {
            id: 0,
            exit: Exit::Signal(9),
        },
    );
    // Its restart is due 100 ms later; the stop comes first.
    h.at(at + 50 * MS, Event::Signal(Signal::SIGTERM));
    assert_eq!(h.exit_code(), Some(0));
    assert_eq!(
        h.log.iter().filter(|(_, a)| *a == Action::Start(0)).count(),
        1,
        "not started again"
    );
}

#[test]
fn jitter_stays_within_its_bounds_and_differs_between_restarts() {
    let mut seen = Vec::new();
    for seed in 1..20u64 {
        let settings = Settings {
            seed,
            ..Settings::new(B9)
        };
        let defs = vec![ServiceDef::daemon("worker").restart(Some(backoff_spec(0.2)))];
        let mut h = Harness::with(build(B9, defs), settings);
        let starts = crash_loop(&mut h, 3);
        for (i, w) in starts.windows(2).enumerate() {
            let gap = (w[1] - w[0] - 10 * MS).as_secs_f64() * 1000.0;
            let base = 100.0 * 2f64.powi(i as i32);
            assert!(
                gap >= base * 0.8 - 0.001 && gap <= base * 1.2 + 0.001,
                "seed {seed}, restart {i}: {gap} ms is outside {base} +-20 %"
            );
            seen.push(gap.round() as u64);
        }
    }
    seen.sort();
    seen.dedup();
    assert!(seen.len() > 10, "jitter should vary the delays: {seen:?}");
}

#[test]
fn the_restart_window_forgets_old_restarts_and_staying_ready_resets_the_delay() {
    let spec = RestartSpec {
        max_restarts: 2,
        window: Duration::from_secs(5),
        reset_after: Duration::from_secs(3),
        ..backoff_spec(0.0)
    };
    let mut h = restarting(spec);
    // Two quick crashes use up the window.
    let starts = crash_loop(&mut h, 2);
    assert_eq!(starts.len(), 2);
    // Third start, stays ready for 4 s (past reset_after), crashes: delay back to 100 ms.
    h.run_until(h.t0 + Duration::from_secs(3600));
    let third = h
        .log
        .iter()
        .filter(|(_, a)| *a == Action::Start(0))
        .nth(2)
        .map(|(t, _)| *t)
        .expect("third start");
    h.at(
        third,
        Event::Started {
            id: 0,
            pid: Pid::from_raw(90),
        },
    );
    let crash = third + Duration::from_secs(6);
    h.at(
        crash,
        Event::Exited {
            id: 0,
            exit: Exit::Code(1),
        },
    );
    assert_eq!(
        h.exit_code(),
        None,
        "the first two restarts fell out of the window"
    );
    h.run_until(h.t0 + crash + Duration::from_secs(1));
    let fourth = h
        .log
        .iter()
        .filter(|(_, a)| *a == Action::Start(0))
        .nth(3)
        .map(|(t, _)| *t);
    assert_eq!(
        fourth,
        Some(crash + 100 * MS),
        "the delay starts over after a stable run"
    );
    // An exit 0 is not a failure: on-failure does not restart it; not main, so it failed.
    h.at(
        crash + 100 * MS,
        Event::Started {
            id: 0,
            pid: Pid::from_raw(91),
        },
    );
    h.at(
        crash + 200 * MS,
        Event::Exited {
            id: 0,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.exit_code(), Some(EXIT_SERVICE_FAILED));
}

/// db (external) <- migrate (oneshot) <- api, worker; cache (external) <- worker.
fn graph_defs() -> Vec<ServiceDef> {
    let probe = || HealthSpec {
        probe_kind: "tcp",
        ..http_health(OnUnhealthy::Report)
    };
    vec![
        ServiceDef::external("db", probe()),
        ServiceDef::external("cache", probe()),
        ServiceDef::oneshot("migrate").after("db", Condition::Healthy),
        ServiceDef::daemon("api")
            .main(true)
            .after("migrate", Condition::Completed)
            .after("db", Condition::Healthy)
            .stop_timeout(Some(Duration::from_secs(3))),
        ServiceDef::daemon("worker")
            .after("api", Condition::Started)
            .after("cache", Condition::Healthy)
            .stop_timeout(Some(Duration::from_secs(2))),
    ]
}

#[test]
fn a_graph_starts_in_layers_each_the_moment_its_condition_holds() {
    let (db, cache, migrate, api, worker) = (0, 1, 2, 3, 4);
    let mut h = Harness::new(build(B9, graph_defs()), B9);
    assert_eq!(h.actions(), vec![Action::Probe(db), Action::Probe(cache)]);
    h.probe_at(50, cache, Outcome::Ok);
    assert_eq!(h.when(&Action::Start(migrate)), None, "db is not up yet");
    h.probe_at(120, db, Outcome::Ok);
    assert_eq!(h.when(&Action::Start(migrate)), Some(120 * MS));
    h.at(
        125 * MS,
        Event::Started {
            id: migrate,
            pid: Pid::from_raw(30),
        },
    );
    assert_eq!(
        h.when(&Action::Start(api)),
        None,
        "migrate has not completed"
    );
    h.at(
        400 * MS,
        Event::Exited {
            id: migrate,
            exit: Exit::Code(0),
        },
    );
    assert_eq!(h.when(&Action::Start(api)), Some(400 * MS));
    assert_eq!(h.when(&Action::Start(worker)), None, "api has not started");
    h.at(
        401 * MS,
        Event::Started {
            id: api,
            pid: Pid::from_raw(31),
        },
    );
    assert_eq!(h.when(&Action::Start(worker)), Some(401 * MS));
}

#[test]
fn a_graph_stops_in_reverse_each_service_keeping_its_share_of_the_budget() {
    let specs = build(B9, graph_defs());
    let (signals, exit_at) = stop::rehearse(specs, Settings::new(B9));
    let at = |svc: &str, sig: Signal| {
        signals
            .iter()
            .find(|r| r.service == svc && r.signal == sig)
            .map(|r| r.at)
    };
    // worker first (its own 2 s, less nothing after it but api's 3 s and the 0.5 s grace).
    assert_eq!(at("worker", Signal::SIGTERM), Some(Duration::ZERO));
    assert_eq!(
        at("api", Signal::SIGTERM),
        Some(Duration::from_secs(2)),
        "after worker"
    );
    assert_eq!(at("worker", Signal::SIGKILL), Some(Duration::from_secs(2)));
    assert_eq!(at("api", Signal::SIGKILL), Some(Duration::from_secs(5)));
    assert!(
        at("db", Signal::SIGTERM).is_none(),
        "external: nothing to signal"
    );
    assert!(exit_at <= B9, "{exit_at:?}");
}

#[test]
fn a_dependency_that_failed_for_good_stops_the_container_instead_of_a_hang() {
    let defs = vec![
        ServiceDef::oneshot("migrate").required(false),
        ServiceDef::daemon("api")
            .main(true)
            .after("migrate", Condition::Completed),
    ];
    let mut h = Harness::new(build(B9, defs), B9);
    h.at(
        10 * MS,
        Event::Started {
            id: 0,
            pid: Pid::from_raw(30),
        },
    );
    h.at(
        20 * MS,
        Event::Exited {
            id: 0,
            exit: Exit::Code(4),
        },
    );
    // Not required, so its own failure does not stop the container; but api can never
    // start, and that does.
    assert_eq!(h.exit_code(), Some(EXIT_SERVICE_FAILED));
    assert!(!h.actions().contains(&Action::Start(1)));
}

#[test]
fn a_service_that_is_not_required_may_fail_and_the_others_go_on() {
    let defs = vec![
        ServiceDef::daemon("api").main(true),
        ServiceDef::daemon("metrics").required(false),
    ];
    let mut h = Harness::new(build(B9, defs), B9);
    for (id, pid) in [(0, 30), (1, 31)] {
        h.at(
            10 * MS,
            Event::Started {
                id,
                pid: Pid::from_raw(pid),
            },
        );
    }
    h.at(
        20 * MS,
        Event::Exited {
            id: 1,
            exit: Exit::Code(1),
        },
    );
    assert_eq!(h.exit_code(), None);
    assert!(!h
        .actions()
        .iter()
        .any(|a| matches!(a, Action::Signal { .. })));
}

#[test]
fn an_external_service_that_stays_unhealthy_is_reported_never_restarted() {
    let defs = vec![
        ServiceDef::external("db", http_health(OnUnhealthy::Restart)),
        ServiceDef::daemon("app")
            .main(true)
            .after("db", Condition::Healthy),
    ];
    let mut h = Harness::new(build(B9, defs), B9);
    h.probe_at(5, 0, Outcome::Ok);
    for t in [5010u64, 10_020, 15_030, 20_040] {
        h.run_until(h.t0 + Duration::from_millis(t - 5));
        h.probe_at(t, 0, fail("connection refused"));
    }
    assert_eq!(h.sup.health(0).0, Some(Health::Unhealthy));
    assert_eq!(h.sup.status(h.now)[0].phase, Phase::Ready, "never stopped");
    h.run_until(h.t0 + 25_100 * MS);
    assert!(
        probes_at(&h, 0).iter().any(|t| *t > 20_040 * MS),
        "still probed"
    );
    h.probe_at(25_200, 0, Outcome::Ok);
    assert_eq!(h.sup.health(0).0, Some(Health::Healthy));
}

#[test]
fn every_stop_signal_but_sigkill_is_followed_by_sigcont() {
    let mut h = Harness::pair();
    h.up();
    h.at(1000 * MS, Event::Signal(Signal::SIGTERM));
    let after_term: Vec<Action> = h
        .log
        .iter()
        .filter(|(t, _)| *t == 1000 * MS)
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(
        after_term,
        vec![sig(APP, Signal::SIGTERM), sig(APP, Signal::SIGCONT)],
        "a frozen app gets its SIGTERM at once, not at the SIGKILL"
    );
    h.run_until(h.t0 + 6500 * MS);
    let at_kill: Vec<Action> = h
        .log
        .iter()
        .filter(|(t, _)| *t == 6500 * MS)
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(at_kill, vec![sig(APP, Signal::SIGKILL)]);
}

// ---------------------------------------------------------------------------------------
// Facts and timelines.

fn facts(h: &mut Harness) -> Vec<(Duration, Option<Id>, Fact)> {
    let mut out = Vec::new();
    while let Some(n) = h.sup.poll_fact() {
        out.push((n.at - h.t0, n.service, n.fact));
    }
    out
}

/// A first start (initdb, the temporary server, its stop), PostgreSQL ready, the app up and
/// healthy, then a stop: every fact at its instant, and both timelines made of the same
/// instants.
#[test]
fn a_start_and_a_stop_are_facts_and_timelines_with_the_same_instants() {
    let specs = build(
        B9,
        vec![
            ServiceDef::database("postgres").health(Some(HealthSpec {
                probe_kind: "postgres",
                ..http_health(OnUnhealthy::Report)
            })),
            ServiceDef::daemon("app")
                .main(true)
                .after("postgres", Condition::Healthy)
                .health(Some(http_health(OnUnhealthy::Restart))),
        ],
    );
    let mut h = Harness::new(specs, B9);
    let initdb = step("initdb", StepKind::Scratch, Some(Duration::from_secs(300)));
    h.at(5 * MS, step_started(PG, initdb, 50));
    h.at(905 * MS, step_exited(PG, 50, Exit::Code(0)));
    let server = step("the temporary server", StepKind::Server, Some(60_000 * MS));
    h.at(910 * MS, step_started(PG, server, 60));
    h.at(1000 * MS, Event::StepReady { id: PG });
    h.at(1010 * MS, Event::StepStopWanted { id: PG });
    h.at(1100 * MS, step_exited(PG, 60, Exit::Code(0)));
    h.at(
        1104 * MS,
        Event::Started {
            id: PG,
            pid: Pid::from_raw(10),
        },
    );
    h.at(1316 * MS, Event::Ready { id: PG });
    h.at(
        1320 * MS,
        Event::Started {
            id: APP,
            pid: Pid::from_raw(20),
        },
    );
    // PostgreSQL's own probe fails at first (a database not there yet): not healthy as
    // `tandem healthcheck` counts it, so no timeline until it passes, after the app's.
    h.probe_at(1321, PG, fail("database \"x\" does not exist"));
    h.probe_at(1634, APP, fail("connection refused"));
    h.probe_at(1642, APP, Outcome::Ok);
    assert_eq!(h.sup.start_timeline(), None);
    h.probe_at(1650, PG, Outcome::Ok);
    let start = "healthy after 1 650 ms: postgres init 1 104, ready 212, app healthy 326";
    assert_eq!(h.sup.start_timeline(), Some(start));
    let got = facts(&mut h);
    use Fact as F;
    let expected: Vec<(Duration, Option<Id>, Fact)> = vec![
        (Duration::ZERO, None, F::Boot),
        (Duration::ZERO, Some(PG), F::Starting),
        (
            5 * MS,
            Some(PG),
            F::StepStarted {
                step: "initdb".into(),
                pid: 50,
            },
        ),
        (
            905 * MS,
            Some(PG),
            F::StepExited {
                step: "initdb".into(),
                ms: 900,
                exit: "exited with code 0".into(),
            },
        ),
        (
            910 * MS,
            Some(PG),
            F::StepStarted {
                step: "the temporary server".into(),
                pid: 60,
            },
        ),
        (
            1100 * MS,
            Some(PG),
            F::StepExited {
                step: "the temporary server".into(),
                ms: 190,
                exit: "exited with code 0".into(),
            },
        ),
        (1104 * MS, Some(PG), F::Spawned { pid: 10 }),
        (1316 * MS, Some(PG), F::Ready { ms: 1316 }),
        (1316 * MS, Some(APP), F::Starting),
        (1320 * MS, Some(APP), F::Spawned { pid: 20 }),
        (1642 * MS, Some(APP), F::Ready { ms: 326 }),
        (1642 * MS, Some(APP), F::Healthy),
        (1650 * MS, Some(PG), F::Healthy),
        (
            1650 * MS,
            None,
            F::AllHealthy {
                ms: 1650,
                timeline: start["healthy after 1 650 ms: ".len()..].into(),
            },
        ),
    ];
    assert_eq!(got, expected);

    // The stop: the app gets SIGTERM and takes 262 ms; postgres SIGINT, 29 ms.
    h.at(2000 * MS, Event::Signal(Signal::SIGTERM));
    h.at(
        2262 * MS,
        Event::Exited {
            id: APP,
            exit: Exit::Signal(15),
        },
    );
    h.at(
        2291 * MS,
        Event::Exited {
            id: PG,
            exit: Exit::Code(0),
        },
    );
    let got = facts(&mut h);
    let stop_line = "app 262 (SIGTERM), postgres 29 (SIGINT), budget 9 000";
    assert_eq!(
        got,
        vec![
            (
                2000 * MS,
                None,
                F::Stopping {
                    signal: Some("SIGTERM".into())
                }
            ),
            (
                2000 * MS,
                Some(APP),
                F::StopStep {
                    signal: "SIGTERM".into(),
                    pid: 20,
                    step: None,
                    deadline_ms: Some(5500)
                }
            ),
            (
                2262 * MS,
                Some(APP),
                F::Exited {
                    exit: "killed by SIGTERM".into(),
                    code: 143
                }
            ),
            (
                2262 * MS,
                Some(PG),
                F::StopStep {
                    signal: "SIGINT".into(),
                    pid: 10,
                    step: None,
                    deadline_ms: Some(7488)
                }
            ),
            (
                2291 * MS,
                Some(PG),
                F::Exited {
                    exit: "exited with code 0".into(),
                    code: 0
                }
            ),
            (
                2291 * MS,
                None,
                F::Stopped {
                    ms: 291,
                    timeline: stop_line.into(),
                    code: 0
                }
            ),
        ]
    );
    assert_eq!(
        h.sup.stop_timeline(h.now).as_deref(),
        Some(format!("stopped after 291 ms: {stop_line}").as_str())
    );
}

/// A crash and its restart are facts with the delay the timer got, and the start timeline
/// is not logged again after the restart.
#[test]
fn a_crash_is_an_exit_then_a_restart_with_its_delay() {
    let specs = build(
        B9,
        vec![ServiceDef::daemon("app")
            .main(true)
            .restart(Some(table::default_restart()))],
    );
    let mut h = Harness::new(specs, B9);
    h.at(
        MS,
        Event::Started {
            id: 0,
            pid: Pid::from_raw(20),
        },
    );
    assert!(h.sup.start_timeline().is_some());
    let _ = facts(&mut h);
    h.at(
        500 * MS,
        Event::Exited {
            id: 0,
            exit: Exit::Code(1),
        },
    );
    let got = facts(&mut h);
    let Some((
        _,
        _,
        Fact::RestartScheduled {
            delay_ms,
            restart: 1,
        },
    )) = got.get(1).cloned()
    else {
        panic!("{got:?}");
    };
    assert_eq!(
        got[0],
        (
            500 * MS,
            Some(0),
            Fact::Exited {
                exit: "exited with code 1".into(),
                code: 1
            }
        )
    );
    let retry = h.sup.next_deadline().unwrap() - h.t0;
    let noted = 500 * MS + Duration::from_millis(delay_ms);
    assert!(
        retry >= noted && retry - noted < MS,
        "{retry:?} vs {noted:?}"
    );
    h.run_until(h.t0 + retry);
    h.at(
        retry + MS,
        Event::Started {
            id: 0,
            pid: Pid::from_raw(21),
        },
    );
    let kinds: Vec<Fact> = facts(&mut h).into_iter().map(|(_, _, f)| f).collect();
    assert_eq!(
        kinds,
        vec![Fact::Starting, Fact::Spawned { pid: 21 }],
        "no second timeline"
    );
}
