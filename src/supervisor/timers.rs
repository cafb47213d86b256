//! Timers as data: what is due, and when. The runtime arms one timer, at the minimum.
//!
//! Adding a kind of wait (restart backoff, an upgrade step) adds a [`Timer`] variant and the
//! one line in `Supervisor::fire` that says what it means; nothing else changes.

use std::time::Instant;

use super::Id;

/// Something the supervisor must do at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The service's stop ladder moves to its next signal.
    Escalate(Id),
    /// The service's next health probe.
    Probe(Id),
    /// The service (or the set-up step it is in) had until now to be ready or done.
    StartDeadline(Id),
    /// The service's restart delay is over.
    Restart(Id),
    /// The end of the stop budget: exit, whatever is still running.
    Budget,
}

/// Every armed timer and its instant; at most one of each.
#[derive(Debug, Default, Clone)]
pub struct Timers {
    armed: Vec<(Timer, Instant)>,
}

impl Timers {
    /// Arms `timer` at `at`, replacing any earlier arming of the same timer.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        match self.armed.iter_mut().find(|(t, _)| *t == timer) {
            Some(slot) => slot.1 = at,
            None => self.armed.push((timer, at)),
        }
    }

    pub fn clear(&mut self, timer: Timer) {
        self.armed.retain(|(t, _)| *t != timer);
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.armed
            .iter()
            .find(|(t, _)| *t == timer)
            .map(|(_, at)| *at)
    }

    /// When the earliest timer is due.
    pub fn next(&self) -> Option<Instant> {
        self.armed.iter().map(|(_, at)| *at).min()
    }

    /// Disarms and returns every timer due at `now`, earliest first (ties in a fixed order).
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due: Vec<(Instant, Timer)> = self
            .armed
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(t, at)| (*at, *t))
            .collect();
        due.sort();
        self.armed.retain(|(_, at)| *at > now);
        due.into_iter().map(|(_, t)| t).collect()
    }

    pub fn clear_all(&mut self) {
        self.armed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_is_the_minimum_and_due_timers_come_out_in_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Probe(1), ms(300));
        t.set(Timer::Budget, ms(900));
        t.set(Timer::Escalate(0), ms(100));
        t.set(Timer::Probe(1), ms(50)); // re-armed: replaces the first
        assert_eq!(t.next(), Some(ms(50)));
        assert_eq!(
            t.take_due(ms(100)),
            vec![Timer::Probe(1), Timer::Escalate(0)]
        );
        assert_eq!(t.next(), Some(ms(900)));
        t.clear(Timer::Budget);
        assert_eq!(t.next(), None);
    }
}
