//! Answers as people read them: the one line of `tandem healthcheck`, the table of
//! `tandem status`.

use std::time::Duration;

use super::wire::StatusReport;
use crate::health::format_latency;
use crate::supervisor::verdict::{HealthReport, ServiceHealth, State};
use crate::supervisor::{Health, Outcome, Phase, ServiceStatus};

impl HealthReport {
    /// One line for `tandem healthcheck`. Healthy: every service with its latency
    /// ("healthy: postgres ok 0.9ms, app ok 2.8ms"). Unhealthy: only what is wrong
    /// ("unhealthy: app http 503 after 3 tries").
    pub fn line(&self) -> String {
        let mut shown: Vec<&ServiceHealth> = if self.healthy {
            self.services.iter().collect()
        } else {
            self.services.iter().filter(|s| !s.healthy).collect()
        };
        if shown.is_empty() {
            // Unhealthy with every service healthy should not happen; show them all anyway.
            shown = self.services.iter().collect();
        }
        let parts: Vec<String> = shown.iter().map(|s| s.phrase()).collect();
        // Not healthy only because a start is under way (a set-up such as an upgrade, and
        // services waiting for it): "starting". A probe that fails in its start period is
        // not that. Exit code and JSON stay those of unhealthy.
        let starting = !self.healthy
            && shown.iter().any(|s| s.setting_up())
            && shown.iter().all(|s| {
                s.setting_up()
                    || (s.state == State::NotRunning && s.detail.as_deref() == Some(WAITING))
            });
        let verdict = if self.healthy {
            "healthy"
        } else if starting {
            "starting"
        } else {
            "unhealthy"
        };
        if parts.is_empty() {
            format!("{verdict}: no services")
        } else {
            format!("{verdict}: {}", parts.join(", "))
        }
    }
}

/// The detail of a service that waits for its dependencies to be met.
const WAITING: &str = crate::supervisor::verdict::WAITING;

impl ServiceHealth {
    /// Starting and not judged by a probe (no answer, no failed tries): its set-up or its
    /// start is under way.
    fn setting_up(&self) -> bool {
        self.state == State::Starting && self.latency_ms.is_none() && self.tries.is_none()
    }

    /// "app ok 2.8ms", "app http 503 after 3 tries", "postgres starting up", "app not running".
    fn phrase(&self) -> String {
        let name = &self.name;
        let detail = self.detail.as_deref().filter(|d| !d.is_empty());
        let mut out = match (self.state, detail) {
            (State::Ok, _) => match self.latency_ms {
                Some(ms) => format!(
                    "{name} ok {}",
                    format_latency(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
                ),
                None => format!("{name} ok"),
            },
            (State::NotRunning, Some(d)) => format!("{name} not running ({d})"),
            (_, Some(d)) => format!("{name} {d}"),
            (state, None) => format!("{name} {}", state.as_str()),
        };
        if self.state == State::Failing {
            if let Some(n) = self.tries.filter(|n| *n > 1) {
                out.push_str(&format!(" after {n} tries"));
            }
        }
        out
    }
}

impl StatusReport {
    /// An aligned table for a person, with a header; "-" where there is nothing to show.
    pub fn table(&self) -> String {
        let header = [
            "SERVICE",
            "STATE",
            "HEALTH",
            "PID",
            "UPTIME",
            "RESTARTS",
            "LAST PROBE",
        ];
        let dash = || "-".to_string();
        let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
        for s in &self.services {
            rows.push([
                s.name.clone(),
                s.state.clone(),
                s.health.clone(),
                s.pid.map_or_else(dash, |p| p.to_string()),
                s.uptime_ms
                    .map_or_else(dash, |ms| format_uptime(Duration::from_millis(ms))),
                s.restarts.to_string(),
                s.last_probe.clone().unwrap_or_else(dash),
            ]);
        }
        let mut widths = [0usize; 7];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if let Some(t) = &self.start_timeline {
            out.push_str(&format!("start: {t}\n"));
        }
        if let Some(t) = &self.stop_timeline {
            out.push_str(&format!("stop: {t}\n"));
        }
        out
    }
}

impl super::events::Record {
    /// One event for a person: `11:02:03.123  +1 204.5 ms  app  spawned (pid 42)`.
    pub fn line(&self) -> String {
        let clock = self.ts.get(11..23).unwrap_or(&self.ts);
        let who = self.service.as_deref().unwrap_or("tandem");
        format!(
            "{clock} {:>12} ms  {who}  {}",
            format!("+{:.1}", self.t_ms),
            self.what()
        )
    }

    /// What happened, in words.
    pub fn what(&self) -> String {
        let f = &self.fact;
        let s = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let n = |k: &str| f.get(k).and_then(|v| v.as_u64());
        let num = |k: &str| n(k).map_or("?".to_string(), |v| v.to_string());
        match self.kind() {
            "boot" => "tandem began supervising".into(),
            "starting" => "starting".into(),
            "step_started" => format!("{} started (pid {})", s("step"), num("pid")),
            "step_exited" => format!("{} {} after {} ms", s("step"), s("exit"), num("ms")),
            "spawned" => format!("spawned (pid {})", num("pid")),
            "ready" => format!("ready after {} ms", num("ms")),
            "healthy" => "healthy".into(),
            "unhealthy" => format!(
                "unhealthy ({} failed probes): {}",
                num("failures"),
                s("reason")
            ),
            "start_failed" => format!("could not start: {}", s("reason")),
            "restart_scheduled" => format!("restart {} in {} ms", num("restart"), num("delay_ms")),
            "stopping" => match f.get("signal").and_then(|v| v.as_str()) {
                Some(sig) => format!("stopping (received {sig})"),
                None => "stopping".into(),
            },
            "stop_step" => {
                let whose = match f.get("step").and_then(|v| v.as_str()) {
                    Some(step) => format!("{step}, pid {}", num("pid")),
                    None => format!("pid {}", num("pid")),
                };
                match n("deadline_ms") {
                    Some(d) => format!("stop: {} to {whose}; next step in {d} ms", s("signal")),
                    None => format!("stop: {} to {whose}; the last step", s("signal")),
                }
            }
            "exited" => format!("{} (code {})", s("exit"), num("code")),
            "all_healthy" => format!("healthy after {} ms: {}", num("ms"), s("timeline")),
            "stopped" => format!(
                "stopped after {} ms: {}; exit code {}",
                num("ms"),
                s("timeline"),
                num("code")
            ),
            other => other.to_string(),
        }
    }
}

/// An uptime for a person: "45s", "3m12s", "2h05m", "3d04h".
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

impl super::wire::StatusRow {
    /// One service's row of `tandem status`.
    pub fn of(st: &ServiceStatus, now: std::time::Instant) -> super::wire::StatusRow {
        let state = match st.phase {
            Phase::Waiting => "waiting",
            Phase::Backoff => "restarting",
            Phase::Starting => "starting",
            Phase::Running | Phase::Ready => "running",
            Phase::Stopping => "stopping",
            Phase::Done if st.failed => "failed",
            Phase::Done => "done",
        };
        let health = match st.health {
            Some(Health::Starting) => "starting",
            Some(Health::Healthy) => "healthy",
            Some(Health::Unhealthy) => "unhealthy",
            None => "-",
        };
        let last_probe = st.last_probe.as_ref().map(|lp| {
            let what = match &lp.report.outcome {
                Outcome::Ok => format!("ok {}", format_latency(lp.report.latency)),
                other => other.detail().to_string(),
            };
            let age = format_uptime(now.saturating_duration_since(lp.at));
            format!("{what} {age} ago")
        });
        super::wire::StatusRow {
            name: st.name.clone(),
            state: state.into(),
            health: health.into(),
            pid: st.pid,
            uptime_ms: st.uptime.map(|d| d.as_millis() as u64),
            restarts: st.restarts,
            last_probe,
        }
    }
}
