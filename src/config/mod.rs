//! What to run: the environment (zero-config mode) turned into one [`Plan`].
//!
//! Everything that can be checked before a process starts is checked here, so bad input
//! fails with one line and nothing half-started.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::health::Probe;
use crate::postgres;
use crate::process::Identity;
use crate::supervisor::{self, HealthSpec, OnUnhealthy, Spec};

mod env;

pub use env::{direct_probes, from_env};

/// Docker waits 10 s between SIGTERM and SIGKILL; 9 s leaves tandem a second to spare.
pub const DEFAULT_STOP_BUDGET: Duration = Duration::from_secs(9);
/// Where `tandem healthcheck` and `tandem status` find the running tandem (as root).
pub const DEFAULT_SOCKET: &str = "/run/tandem.sock";

/// The control socket's path: `TANDEM_SOCKET`, else [`DEFAULT_SOCKET`] for root (the
/// container case), else one in the user's runtime directory, so that tandem run by hand on
/// a laptop and `tandem status` in another shell meet without configuration.
pub fn socket_path(tandem_socket: Option<&str>, xdg_runtime_dir: Option<&str>) -> PathBuf {
    if let Some(p) = tandem_socket.filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let uid = nix::unistd::Uid::effective();
    if uid.is_root() {
        return PathBuf::from(DEFAULT_SOCKET);
    }
    match xdg_runtime_dir.filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("tandem.sock"),
        None => PathBuf::from(format!("/tmp/tandem-{uid}.sock")),
    }
}

/// Everything tandem will do, decided before anything starts.
#[derive(Debug)]
pub struct Plan {
    /// By id: the supervisor's spec of each service, and how the runtime runs it.
    pub services: Vec<ServicePlan>,
    /// The stop budget (`TANDEM_STOP_TIMEOUT`) and what a stop exits with.
    pub settings: supervisor::Settings,
    /// The control socket (`TANDEM_SOCKET`).
    pub socket: PathBuf,
}

#[derive(Debug)]
pub struct ServicePlan {
    pub spec: Spec,
    pub launch: Launch,
    /// What its health probe checks; its timing is in `spec.health`.
    pub probe: Option<Probe>,
}

/// How the runtime starts a service.
#[derive(Debug)]
pub enum Launch {
    /// An ordinary program, argv kept as a vector from the command line to `execve`.
    Command(CommandPlan),
    /// The embedded PostgreSQL: initialise if needed, then the server.
    Postgres(Box<PostgresPlan>),
    /// Nothing to run: a service elsewhere, known by its probe.
    External,
}

#[derive(Debug)]
pub struct CommandPlan {
    /// The resolved executable.
    pub program: PathBuf,
    /// argv, argv[0] included.
    pub argv: Vec<OsString>,
    /// The whole environment of the child.
    pub env: Vec<(OsString, OsString)>,
    pub user: Option<Identity>,
}

#[derive(Debug)]
pub struct PostgresPlan {
    pub settings: postgres::Settings,
    pub bins: postgres::Binaries,
}

impl Plan {
    pub fn specs(&self) -> Vec<Spec> {
        self.services.iter().map(|s| s.spec.clone()).collect()
    }

    pub fn stop_budget(&self) -> Duration {
        self.settings.budget
    }

    /// The plan as a person reads it (`tandem check`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let names: Vec<&str> = self.services.iter().map(|s| s.spec.name.as_str()).collect();
        for (i, s) in self.services.iter().enumerate() {
            let spec = &s.spec;
            out.push_str(&format!("{}. {}", i + 1, spec.name));
            match &s.launch {
                Launch::Command(c) => {
                    let argv: Vec<String> = c
                        .argv
                        .iter()
                        .map(|a| format!("{:?}", a.to_string_lossy()))
                        .collect();
                    out.push_str(&format!(": [{}]", argv.join(", ")));
                    if let Some(u) = &c.user {
                        out.push_str(&format!(" as {}", u.name));
                    }
                }
                Launch::External => out.push_str(": external, not started by tandem"),
                Launch::Postgres(p) => out.push_str(&format!(
                    ": PostgreSQL {} from {} ({}), data {}, port {}, database {:?} as {:?}",
                    p.bins.version,
                    p.bins.dir.display(),
                    p.bins.source,
                    p.settings.data_dir.display(),
                    p.settings.port,
                    p.settings.database,
                    p.settings.user,
                )),
            }
            out.push('\n');
            if !spec.depends_on.is_empty() {
                let deps: Vec<String> = spec
                    .depends_on
                    .iter()
                    .map(|(d, c)| format!("{} {}", names[*d], c.as_str()))
                    .collect();
                out.push_str(&format!("   starts when: {}\n", deps.join(", ")));
            }
            let ladder: Vec<&str> = spec.stop_ladder.iter().map(|s| s.as_str()).collect();
            out.push_str(&format!("   stops with: {}", ladder.join(" -> ")));
            if !spec.stop_reserve.is_zero() {
                out.push_str(&format!(
                    " (keeps {} ms of the budget)",
                    spec.stop_reserve.as_millis()
                ));
            }
            out.push('\n');
            if let (Some(p), Some(h)) = (&s.probe, &spec.health) {
                out.push_str(&format!(
                    "   health: {} every {} ms (timeout {} ms, {} retries, start period {} ms), when unhealthy: {:?}\n",
                    p.kind(),
                    h.interval.as_millis(),
                    h.timeout.as_millis(),
                    h.retries,
                    h.start_period.as_millis(),
                    h.on_unhealthy
                ).to_lowercase());
            }
        }
        out.push_str(&format!(
            "stop budget: {} ms (TANDEM_STOP_TIMEOUT); control socket: {}\n",
            self.settings.budget.as_millis(),
            self.socket.display()
        ));
        out
    }
}

/// Reads a duration: `9`, `2.5` (seconds), `500ms`, `9s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 9, 2.5, 500ms, 9s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Reads a signal name (`SIGUSR1`, `USR1`, `usr1`) or number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{s:?} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal name"))
}

/// A probe's timing from `{PREFIX}_HEALTH_INTERVAL`, `_TIMEOUT`, `_RETRIES`,
/// `_START_PERIOD` and `{PREFIX}_ON_UNHEALTHY`, with the given defaults.
fn health_spec(
    env: &HashMap<String, String>,
    prefix: &str,
    default: HealthSpec,
) -> Result<HealthSpec, String> {
    let dur = |suffix: &str, d: Duration| -> Result<Duration, String> {
        let name = format!("{prefix}_HEALTH_{suffix}");
        match var(env, &name) {
            Some(v) => parse_duration(v).map_err(|e| format!("{name}: {e}")),
            None => Ok(d),
        }
    };
    let interval = dur("INTERVAL", default.interval)?;
    if interval.is_zero() {
        return Err(format!("{prefix}_HEALTH_INTERVAL must be more than 0"));
    }
    let timeout = dur("TIMEOUT", default.timeout)?;
    let start_period = dur("START_PERIOD", default.start_period)?;
    let retries_name = format!("{prefix}_HEALTH_RETRIES");
    let retries = match var(env, &retries_name) {
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{retries_name}={v:?}: use a whole number of at least 1"))?,
        None => default.retries,
    };
    let policy_name = format!("{prefix}_ON_UNHEALTHY");
    let on_unhealthy = match var(env, &policy_name) {
        Some("restart") => OnUnhealthy::Restart,
        Some("report") => OnUnhealthy::Report,
        Some(v) => return Err(format!("{policy_name}={v:?}: use restart or report")),
        None => default.on_unhealthy,
    };
    Ok(HealthSpec {
        probe_kind: default.probe_kind,
        interval,
        timeout,
        retries,
        start_period,
        on_unhealthy,
    })
}

/// PostgreSQL's probe: what the app experiences, a login as `POSTGRES_USER` over TCP
/// to `POSTGRES_DB` and `SELECT 1`.
fn postgres_probe(settings: &postgres::Settings) -> Probe {
    Probe::Postgres {
        host: "127.0.0.1".into(),
        port: settings.port,
        user: settings.user.clone(),
        password: settings.password.clone(),
        database: settings.database.clone(),
    }
}

/// Docker's own HEALTHCHECK defaults are 30 s / 30 s / 3; tandem probes more often so a
/// `tandem status` is fresh, and the on-demand `tandem healthcheck` never waits for it.
const DEFAULT_PG_HEALTH: HealthSpec = HealthSpec {
    probe_kind: "postgres",
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(5),
    retries: 3,
    start_period: Duration::ZERO,
    on_unhealthy: OnUnhealthy::Report,
};
const DEFAULT_APP_HEALTH: HealthSpec = HealthSpec {
    probe_kind: "http",
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(5),
    retries: 3,
    start_period: Duration::from_secs(60),
    on_unhealthy: OnUnhealthy::Restart,
};

/// Looks a variable up, treating an empty value as unset (as the official image does).
fn var<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("9"), Ok(Duration::from_secs(9)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path(Some("/x/t.sock"), None),
            PathBuf::from("/x/t.sock")
        );
        let default = socket_path(None, Some("/run/user/1000"));
        if nix::unistd::Uid::effective().is_root() {
            assert_eq!(default, PathBuf::from(DEFAULT_SOCKET));
        } else {
            assert_eq!(default, PathBuf::from("/run/user/1000/tandem.sock"));
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGUSR1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("usr2"), Ok(Signal::SIGUSR2));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
