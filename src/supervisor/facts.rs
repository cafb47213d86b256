//! Lifecycle facts: what the supervisor decided or learnt, each at the `now` it happened,
//! for `tandem events`, the metrics and the timelines. The supervisor only records them;
//! the runtime drains them ([`Supervisor::poll_fact`]) and stamps them with the wall clock.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Id, Supervisor};

/// One lifecycle fact. Serialised with its kind under `event`, e.g.
/// `{"event":"spawned","pid":42}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Fact {
    /// The supervisor began: the origin of the start timeline.
    Boot,
    /// The service's start was asked for (its dependencies hold).
    Starting,
    /// A set-up step's process runs (PostgreSQL's first start: initdb, the temporary
    /// server, an init script).
    StepStarted { step: String, pid: i32 },
    /// A set-up step's process ended, after `ms`.
    StepExited { step: String, ms: u64, exit: String },
    /// The service's main process runs.
    Spawned { pid: i32 },
    /// The service is ready, `ms` after its start was asked for.
    Ready { ms: u64 },
    /// Its probe passed after it had failed (the first pass is [`Fact::Ready`] or, for a
    /// service ready when started, this).
    Healthy,
    /// Its probe failed `failures` times in a row: it counts as unhealthy.
    Unhealthy { reason: String, failures: u32 },
    /// It could not be started.
    StartFailed { reason: String },
    /// It will be started again in `delay_ms` (restart number `restart`).
    RestartScheduled { delay_ms: u64, restart: u32 },
    /// The container is stopping (`signal`: the signal that asked for it; none when a
    /// failure or the main service's exit did).
    Stopping { signal: Option<String> },
    /// A stop step: `signal` sent to the process `pid` (the main process, or the set-up
    /// step named), which has `deadline_ms` before the next step (none: the last).
    StopStep {
        signal: String,
        pid: i32,
        step: Option<String>,
        deadline_ms: Option<u64>,
    },
    /// Its main process ended (`code`: the shell's view, 128+N for signal N).
    Exited { exit: String, code: i32 },
    /// Every service is healthy for the first time: the start timeline.
    AllHealthy { ms: u64, timeline: String },
    /// tandem exits: the stop timeline.
    Stopped {
        ms: u64,
        timeline: String,
        code: i32,
    },
}

/// A fact with when it happened and whose it is (`None`: the container's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noted {
    pub at: Instant,
    pub service: Option<Id>,
    pub fact: Fact,
}

/// Whole milliseconds, for facts and timelines.
pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Supervisor {
    pub(super) fn note(&mut self, now: Instant, service: Option<Id>, fact: Fact) {
        self.facts.push_back(Noted {
            at: now,
            service,
            fact,
        });
    }

    /// The next fact, oldest first.
    pub fn poll_fact(&mut self) -> Option<Noted> {
        self.facts.pop_front()
    }
}
