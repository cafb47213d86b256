//! The event log behind `tandem events`: the supervisor's facts stamped with the time,
//! kept in a bounded ring (the history a new watcher starts with) and fanned out live to
//! any number of watchers. Publishing never waits for a watcher: each has a queue of its
//! own ([`QUEUE`] records); one that falls behind by more is dropped with a note, and one
//! whose socket stays full for the write timeout is dropped too.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Records kept for a watcher that connects later.
pub const RING: usize = 1024;
/// Records a watcher may fall behind by before it is dropped.
pub const QUEUE: usize = 256;
/// Watchers at once; one more is refused with a message.
pub const MAX_WATCHERS: usize = 64;

/// One event as watchers get it: `{"seq":3,"ts":"...","t_ms":12.345,"service":"app",
/// "event":"spawned","pid":42}`. `t_ms` is milliseconds since tandem's supervisor began
/// (monotonic), for arithmetic; `ts` is the wall clock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub ts: String,
    pub t_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The fact's kind (`event`) and fields, as [`crate::supervisor::Fact`] serialises.
    #[serde(flatten)]
    pub fact: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    pub fn kind(&self) -> &str {
        self.fact
            .get("event")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
    }
}

/// The last line a dropped watcher gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dropped {
    pub dropped: String,
}

struct Inner {
    ring: VecDeque<Arc<Record>>,
    next_seq: u64,
    /// `None` once closed: watchers get what is queued, then the end.
    live: Option<broadcast::Sender<Arc<Record>>>,
    watchers: usize,
    /// The supervisor's origin: `t_ms` counts from it.
    origin: Instant,
}

/// Shared between the runtime, which publishes, and the socket server, which streams.
#[derive(Clone)]
pub struct EventLog(Arc<Mutex<Inner>>);

/// A watcher's place: the history at the moment it subscribed and everything after,
/// without a gap or a repeat. Dropping it frees the place.
pub struct Watch {
    pub history: Vec<Arc<Record>>,
    pub live: broadcast::Receiver<Arc<Record>>,
    log: EventLog,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.log.lock().watchers -= 1;
    }
}

impl EventLog {
    pub fn new(origin: Instant) -> EventLog {
        let (live, _) = broadcast::channel(QUEUE);
        EventLog(Arc::new(Mutex::new(Inner {
            ring: VecDeque::with_capacity(64),
            next_seq: 1,
            live: Some(live),
            watchers: 0,
            origin,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stamps and keeps one fact: `at` is when it happened, `now`/`wall` the clocks read
    /// together just after.
    pub fn publish<T: Serialize>(
        &self,
        at: Instant,
        (now, wall): (Instant, SystemTime),
        service: Option<&str>,
        fact: &T,
    ) {
        let fact = match serde_json::to_value(fact) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return,
        };
        let wall_at = wall
            .checked_sub(now.saturating_duration_since(at))
            .unwrap_or(wall);
        let mut inner = self.lock();
        let record = Arc::new(Record {
            seq: inner.next_seq,
            ts: crate::logs::rfc3339(wall_at),
            t_ms: (at.saturating_duration_since(inner.origin).as_micros() as f64) / 1000.0,
            service: service.map(str::to_string),
            fact,
        });
        inner.next_seq += 1;
        if inner.ring.len() == RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back(Arc::clone(&record));
        // No receiver is not an error: nobody watches.
        if let Some(live) = &inner.live {
            let _ = live.send(record);
        }
    }

    /// A new watcher, or `None` when [`MAX_WATCHERS`] are watching.
    pub fn watch(&self) -> Option<Watch> {
        let mut inner = self.lock();
        if inner.watchers >= MAX_WATCHERS {
            return None;
        }
        let live = inner.live.as_ref()?.subscribe();
        inner.watchers += 1;
        let watch = Watch {
            history: inner.ring.iter().cloned().collect(),
            live,
            log: self.clone(),
        };
        Some(watch)
    }

    /// tandem is exiting: no more events. Each watcher gets what is queued for it, then its
    /// stream ends; this waits for that, at most `limit`.
    pub async fn close(&self, limit: std::time::Duration) {
        self.lock().live = None;
        let deadline = Instant::now() + limit;
        while self.lock().watchers > 0 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fact(n: u64) -> serde_json::Value {
        serde_json::json!({"event": "ready", "ms": n})
    }

    #[test]
    fn the_ring_keeps_the_last_records_and_a_watcher_gets_history_then_live_without_gap() {
        let origin = Instant::now();
        let log = EventLog::new(origin);
        let clocks = || (Instant::now(), SystemTime::now());
        for n in 0..(RING as u64 + 10) {
            log.publish(origin, clocks(), Some("app"), &fact(n));
        }
        let mut w = log.watch().unwrap();
        assert_eq!(w.history.len(), RING);
        assert_eq!(w.history[0].seq, 11, "the oldest ten went");
        let last = w.history.last().unwrap().seq;
        log.publish(origin + Duration::from_millis(5), clocks(), None, &fact(1));
        let next = w.live.try_recv().unwrap();
        assert_eq!(next.seq, last + 1);
        assert_eq!(next.t_ms, 5.0);
        assert_eq!(next.kind(), "ready");
        assert_eq!(next.service, None);
    }

    #[test]
    fn watchers_are_bounded_and_a_dropped_watch_frees_its_place() {
        let log = EventLog::new(Instant::now());
        let watches: Vec<Watch> = (0..MAX_WATCHERS).map(|_| log.watch().unwrap()).collect();
        assert!(log.watch().is_none());
        drop(watches);
        assert!(log.watch().is_some());
    }

    #[test]
    fn a_watcher_that_falls_behind_learns_it_and_publishing_never_waits() {
        let origin = Instant::now();
        let log = EventLog::new(origin);
        let mut w = log.watch().unwrap();
        for n in 0..(QUEUE as u64 * 4) {
            log.publish(origin, (Instant::now(), SystemTime::now()), None, &fact(n));
        }
        assert!(matches!(
            w.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
