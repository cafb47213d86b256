//! Where the time went: the start timeline, logged once when every service is healthy for
//! the first time, and the stop timeline, logged at exit. Both come from the same instants
//! as the facts (`tandem events`), so their figures agree with the events' timestamps.
//!
//! ```text
//! healthy after 1 642 ms: postgres init 1 104, ready 212, app healthy 318
//! stopped after 291 ms: app 262 (SIGTERM), postgres 29 (SIGINT), budget 9 000
//! ```

use std::time::Instant;

use super::facts::ms;
use super::{Fact, Health, Id, Kind, Phase, Readiness, Supervisor, Svc};

/// `1642` as `1 642`: groups of three, as the timelines print figures.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl Svc {
    /// It counts as healthy for the start timeline as `tandem healthcheck` would count it:
    /// ready, and its probe (if it has one) has passed; a one-shot task, completed.
    fn counts_healthy(&self) -> bool {
        if self.spec.kind == Kind::Oneshot {
            return self.completed();
        }
        self.phase == Phase::Ready
            && (self.spec.health.is_none() || self.health.health == Some(Health::Healthy))
    }

    /// Its part of the start timeline: `postgres init 1 104, ready 212` or `app healthy 318`.
    /// A service that reports its readiness (PostgreSQL) shows when it did; the others when
    /// they counted as healthy.
    fn start_part(&self) -> Option<String> {
        let asked = self.start_requested?;
        let done = match self.spec.readiness {
            Readiness::Reported => self.ready_since.or(self.healthy_at)?,
            _ => self.healthy_at?,
        };
        let what = match (self.spec.kind, self.spec.readiness, &self.spec.health) {
            (Kind::Oneshot, ..) => "completed",
            (_, Readiness::Reported, _) | (_, Readiness::Started, None) => "ready",
            _ => "healthy",
        };
        let name = &self.spec.name;
        Some(match self.started_at {
            Some(spawned) if self.had_steps && spawned >= asked => format!(
                "{name} init {}, {what} {}",
                grouped(ms(spawned - asked)),
                grouped(ms(done.saturating_duration_since(spawned)))
            ),
            _ => format!(
                "{name} {what} {}",
                grouped(ms(done.saturating_duration_since(asked)))
            ),
        })
    }
}

impl Supervisor {
    /// Marks the services that have just become healthy, and when all of them are for the
    /// first time, logs and records the start timeline.
    pub(super) fn note_healthy(&mut self, now: Instant) {
        for svc in &mut self.svcs {
            if svc.healthy_at.is_none() && svc.counts_healthy() {
                svc.healthy_at = Some(now);
            }
        }
        if self.start_timeline.is_some() || !self.svcs.iter().all(|s| s.counts_healthy()) {
            return;
        }
        let Some(booted) = self.booted else { return };
        let mut order: Vec<&Svc> = self.svcs.iter().collect();
        order.sort_by_key(|s| s.start_requested);
        let parts: Vec<String> = order.iter().filter_map(|s| s.start_part()).collect();
        let total = ms(now.saturating_duration_since(booted));
        let timeline = parts.join(", ");
        tracing::info!("healthy after {} ms: {timeline}", grouped(total));
        self.start_timeline = Some(format!("healthy after {} ms: {timeline}", grouped(total)));
        self.note(
            now,
            None,
            Fact::AllHealthy {
                ms: total,
                timeline,
            },
        );
    }

    /// The start timeline, once every service has been healthy.
    pub fn start_timeline(&self) -> Option<&str> {
        self.start_timeline.as_deref()
    }

    /// The stop timeline so far (`None` before a stop): each service stopped in this
    /// shutdown, in the order its stop began, with how long it took and the signals it got;
    /// one still stopping shows the time so far.
    pub fn stop_timeline(&self, now: Instant) -> Option<String> {
        let sd = self.shutdown.as_ref()?;
        let mut stops: Vec<(&Svc, &super::Stopping)> = self
            .svcs
            .iter()
            .filter_map(|s| s.stop.as_ref().or(s.last_stop.as_ref()).map(|st| (s, st)))
            .filter(|(_, st)| st.began >= sd.started && !st.sent.is_empty())
            .collect();
        stops.sort_by_key(|(_, st)| st.began);
        let mut parts: Vec<String> = stops
            .iter()
            .map(|(svc, st)| {
                let signals: Vec<&str> = st.sent.iter().map(|s| s.as_str()).collect();
                let took = ms(st.ended.unwrap_or(now).saturating_duration_since(st.began));
                let still = if st.ended.is_none() { " so far" } else { "" };
                format!(
                    "{} {}{still} ({})",
                    svc.spec.name,
                    grouped(took),
                    signals.join(", ")
                )
            })
            .collect();
        if parts.is_empty() {
            parts.push("nothing to stop".to_string());
        }
        parts.push(format!("budget {}", grouped(ms(self.settings.budget))));
        let total = ms(now.saturating_duration_since(sd.started));
        Some(format!(
            "stopped after {} ms: {}",
            grouped(total),
            parts.join(", ")
        ))
    }

    /// The stop is over: logs the stop timeline and records it.
    pub(super) fn note_stopped(&mut self, now: Instant, code: i32) {
        let Some(line) = self.stop_timeline(now) else {
            return;
        };
        tracing::info!("{line}; exiting with code {code}");
        let total = self
            .shutdown
            .as_ref()
            .map_or(0, |sd| ms(now.saturating_duration_since(sd.started)));
        let timeline = line
            .split_once(": ")
            .map_or(String::new(), |(_, t)| t.to_string());
        self.note(
            now,
            None,
            Fact::Stopped {
                ms: total,
                timeline,
                code,
            },
        );
    }

    /// A set-up step began: its fact, and the start is one with set-up.
    pub(super) fn note_step_started(
        &mut self,
        id: Id,
        step: &super::Step,
        pid: nix::unistd::Pid,
        now: Instant,
    ) {
        self.svcs[id].had_steps = true;
        let fact = Fact::StepStarted {
            step: step.name.clone(),
            pid: pid.as_raw(),
        };
        self.note(now, Some(id), fact);
    }

    /// A set-up step's process ended: its fact, with how long it ran.
    pub(super) fn note_step_exited(
        &mut self,
        id: Id,
        pid: nix::unistd::Pid,
        exit: crate::process::Exit,
        now: Instant,
    ) {
        let Some(step) = self.svcs[id].steps.iter().find(|s| s.pid == pid) else {
            return;
        };
        let fact = Fact::StepExited {
            step: step.step.name.clone(),
            ms: ms(now.saturating_duration_since(step.began)),
            exit: exit.to_string(),
        };
        self.note(now, Some(id), fact);
    }
}

#[cfg(test)]
mod tests {
    use super::grouped;

    #[test]
    fn figures_are_grouped_by_three() {
        for (n, s) in [
            (0, "0"),
            (12, "12"),
            (999, "999"),
            (1000, "1 000"),
            (1642, "1 642"),
            (9000, "9 000"),
            (123456, "123 456"),
            (1234567, "1 234 567"),
        ] {
            assert_eq!(grouped(n), s);
        }
    }
}
