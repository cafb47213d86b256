//! `/metrics`: the Prometheus text exposition (format 0.0.4) of what the supervisor knows,
//! per service, and of tandem's own process. Names follow Prometheus' conventions: a
//! `tandem_` prefix, base units in the name (`_seconds`, `_bytes`), `_total` on counters,
//! one label `service` (plus `phase`, `le`). The process group's memory and CPU come from
//! /proc at scrape time; CPU restarts from zero when the service's process does (a counter
//! reset, which `rate()` handles).

use std::fmt::Write;
use std::time::Duration;

use crate::process::procfs::Usage;
use crate::supervisor::ProbeReport;

/// Upper bounds of the probe-duration histogram, in seconds: from a loopback TCP connect
/// (well under 1 ms) to a probe that times out.
pub const PROBE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The phases a service can be in, as `tandem status` names them.
pub const PHASES: [&str; 7] = [
    "waiting",
    "restarting",
    "starting",
    "running",
    "ready",
    "stopping",
    "done",
];

/// One service's probe answers so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeStats {
    /// Cumulative counts: `buckets[i]` answers took at most `PROBE_BUCKETS[i]`.
    pub buckets: [u64; PROBE_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
    pub failures: u64,
}

impl ProbeStats {
    pub fn observe(&mut self, report: &ProbeReport) {
        let s = report.latency.as_secs_f64();
        for (n, le) in self.buckets.iter_mut().zip(PROBE_BUCKETS) {
            if s <= le {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += s;
        if matches!(report.outcome, crate::supervisor::Outcome::Fail(_)) {
            self.failures += 1;
        }
    }
}

/// One service as the exposition shows it.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    pub name: String,
    /// Its process runs (an external service: its probe passes).
    pub up: bool,
    pub healthy: bool,
    pub phase: &'static str,
    pub restarts: u32,
    /// `None`: it has no probe.
    pub probes: Option<ProbeStats>,
    /// Its process group's, while it runs.
    pub usage: Option<Usage>,
    pub last_start: Option<Duration>,
}

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub services: Vec<ServiceMetrics>,
    pub own: Usage,
    pub healthy: bool,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".to_string()
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    /// One sample per service, for those `value` gives one.
    fn per_service<T: std::fmt::Display>(
        &mut self,
        s: &Snapshot,
        name: &str,
        value: impl Fn(&ServiceMetrics) -> Option<T>,
    ) {
        for svc in &s.services {
            if let Some(v) = value(svc) {
                self.sample(name, &format!("service=\"{}\"", label(&svc.name)), v);
            }
        }
    }
}

pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(1024 + s.services.len() * 2048));
    o.family(
        "tandem_healthy",
        "gauge",
        "Whether every service is healthy: the verdict of tandem healthcheck and /readyz.",
    );
    o.sample("tandem_healthy", "", u8::from(s.healthy));

    o.family(
        "tandem_service_up",
        "gauge",
        "Whether the service's process runs (an external service: its probe passes).",
    );
    o.per_service(s, "tandem_service_up", |m| Some(u8::from(m.up)));
    o.family(
        "tandem_service_healthy",
        "gauge",
        "Whether the service counts as healthy in tandem's verdict.",
    );
    o.per_service(s, "tandem_service_healthy", |m| Some(u8::from(m.healthy)));
    o.family(
        "tandem_service_phase",
        "gauge",
        "The service's phase: 1 for the one it is in, 0 for the others.",
    );
    for svc in &s.services {
        for phase in PHASES {
            o.sample(
                "tandem_service_phase",
                &format!("service=\"{}\",phase=\"{phase}\"", label(&svc.name)),
                u8::from(svc.phase == phase),
            );
        }
    }
    o.family(
        "tandem_service_restarts_total",
        "counter",
        "Times the service was started again (after it exited, or stayed unhealthy).",
    );
    o.per_service(s, "tandem_service_restarts_total", |m| Some(m.restarts));

    o.family(
        "tandem_service_probe_duration_seconds",
        "histogram",
        "How long the service's health probes took.",
    );
    for svc in &s.services {
        let Some(p) = &svc.probes else { continue };
        let name = label(&svc.name);
        for (n, le) in p.buckets.iter().zip(PROBE_BUCKETS) {
            o.sample(
                "tandem_service_probe_duration_seconds_bucket",
                &format!("service=\"{name}\",le=\"{}\"", float(le)),
                n,
            );
        }
        o.sample(
            "tandem_service_probe_duration_seconds_bucket",
            &format!("service=\"{name}\",le=\"+Inf\""),
            p.count,
        );
        let labels = format!("service=\"{name}\"");
        o.sample(
            "tandem_service_probe_duration_seconds_sum",
            &labels,
            float(p.sum_seconds),
        );
        o.sample(
            "tandem_service_probe_duration_seconds_count",
            &labels,
            p.count,
        );
    }
    o.family(
        "tandem_service_probe_failures_total",
        "counter",
        "Health probes of the service that failed.",
    );
    o.per_service(s, "tandem_service_probe_failures_total", |m| {
        m.probes.as_ref().map(|p| p.failures)
    });

    o.family(
        "tandem_service_resident_memory_bytes",
        "gauge",
        "Resident memory of the service's process group.",
    );
    o.per_service(s, "tandem_service_resident_memory_bytes", |m| {
        m.usage.map(|u| u.rss_bytes)
    });
    o.family(
        "tandem_service_cpu_seconds_total",
        "counter",
        "CPU time (user and system) of the service's process group; starts over when its process does.",
    );
    o.per_service(s, "tandem_service_cpu_seconds_total", |m| {
        m.usage.map(|u| float(u.cpu_seconds))
    });
    o.family(
        "tandem_service_processes",
        "gauge",
        "Processes in the service's process group.",
    );
    o.per_service(s, "tandem_service_processes", |m| {
        m.usage.map(|u| u.processes)
    });
    o.family(
        "tandem_service_last_start_duration_seconds",
        "gauge",
        "How long the service's last start took, from asked for to ready.",
    );
    o.per_service(s, "tandem_service_last_start_duration_seconds", |m| {
        m.last_start.map(|d| float(d.as_secs_f64()))
    });

    o.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of tandem itself.",
    );
    o.sample("process_resident_memory_bytes", "", s.own.rss_bytes);
    o.family(
        "process_cpu_seconds_total",
        "counter",
        "CPU time (user and system) of tandem itself.",
    );
    o.sample("process_cpu_seconds_total", "", float(s.own.cpu_seconds));
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::Outcome;

    #[test]
    fn the_histogram_is_cumulative_and_failures_counted() {
        let mut p = ProbeStats::default();
        for (ms, outcome) in [
            (0.2, Outcome::Ok),
            (3.0, Outcome::Ok),
            (3.0, Outcome::Fail("http 503".into())),
            (9000.0, Outcome::Fail("timed out".into())),
        ] {
            p.observe(&ProbeReport {
                outcome,
                latency: Duration::from_secs_f64(ms / 1000.0),
            });
        }
        assert_eq!(p.count, 4);
        assert_eq!(p.failures, 2);
        assert_eq!(p.buckets[0], 1, "0.5 ms");
        assert_eq!(p.buckets[3], 3, "5 ms");
        assert_eq!(
            *p.buckets.last().unwrap(),
            3,
            "5 s: the 9 s one is only in +Inf"
        );
        let text = render(&Snapshot {
            services: vec![ServiceMetrics {
                name: "a\"b".into(),
                up: true,
                healthy: false,
                phase: "ready",
                restarts: 2,
                probes: Some(p),
                usage: None,
                last_start: Some(Duration::from_millis(1500)),
            }],
            own: Usage::default(),
            healthy: false,
        });
        assert!(
            text.contains(
                "tandem_service_probe_duration_seconds_bucket{service=\"a\\\"b\",le=\"+Inf\"} 4\n"
            ),
            "{text}"
        );
        assert!(text.contains("tandem_service_restarts_total{service=\"a\\\"b\"} 2\n"));
        assert!(text.contains("tandem_service_phase{service=\"a\\\"b\",phase=\"ready\"} 1\n"));
        assert!(
            text.contains("tandem_service_last_start_duration_seconds{service=\"a\\\"b\"} 1.5\n")
        );
        assert!(
            !text.contains("tandem_service_resident_memory_bytes{"),
            "no usage, no sample"
        );
    }
}
