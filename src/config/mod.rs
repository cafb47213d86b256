//! What to run: the environment (zero-config mode) turned into one [`Plan`].
//!
//! Everything that can be checked before a process starts is checked here, so bad input
//! fails with one line and nothing half-started.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::health::Probe;
use crate::postgres;
use crate::process::Identity;
use crate::supervisor::{self, HealthSpec, OnUnhealthy, Spec};

mod env;
mod file;
mod graph;

pub use env::{direct_probes, from_env};
pub use graph::{client_socket, config_path, from_file};

/// Why a plan could not be made, with the exit code it deserves.
#[derive(Debug)]
pub struct PlanError {
    pub message: String,
    /// 2 for a config that does not validate, 127/126 for a CMD that is missing or not
    /// executable, 1 otherwise.
    pub code: i32,
}

impl From<String> for PlanError {
    fn from(message: String) -> Self {
        PlanError { message, code: 1 }
    }
}

/// Whether tandem itself reads this variable (so its value must be text): its own, the
/// official image's, libpq's, and the few of the system's it consults.
pub fn reads_variable(name: &str) -> bool {
    name.starts_with("TANDEM_")
        || name.starts_with("POSTGRES_")
        || matches!(
            name,
            "PGDATA" | "PGPORT" | "PG_BINDIR" | "PATH" | "XDG_RUNTIME_DIR" | "NO_COLOR"
        )
}

/// The plan from the config file when there is one, else from the environment alone.
pub fn load(
    config: Option<PathBuf>,
    cmd: Vec<OsString>,
    env: &HashMap<String, String>,
    os_env: &[(OsString, OsString)],
    reaper: &crate::process::Reaper,
) -> Result<Plan, PlanError> {
    match config_path(config, env) {
        Some(path) => from_file(&path, cmd, env, os_env, reaper),
        // One problem, one line, whatever the values it quotes hold.
        None => from_env(cmd, env, os_env, reaper).map_err(|e| PlanError {
            message: one_line(&e.message),
            code: e.code,
        }),
    }
}

/// A problem as one line: a value quoted in it may hold a newline (a path, a name), which
/// would otherwise split it into two "problems"; control characters are shown escaped.
pub fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| match c {
            c if c.is_control() && c != '\t' => c.escape_default().collect(),
            c => c.to_string(),
        })
        .collect()
}

/// Docker's default grace period between SIGTERM and SIGKILL.
const DOCKER_GRACE: Duration = Duration::from_secs(10);

/// The services in start layers: each layer depends only on layers before it.
fn layers(services: &[ServicePlan]) -> Vec<Vec<usize>> {
    let mut level: Vec<Option<usize>> = vec![None; services.len()];
    for _ in 0..=services.len() {
        for i in 0..services.len() {
            let deps = &services[i].spec.depends_on;
            let l = deps
                .iter()
                .map(|(d, _)| level[*d].map(|x| x + 1))
                .try_fold(0, |acc, x| x.map(|x| acc.max(x)));
            if level[i].is_none() {
                level[i] = l;
            }
        }
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, l) in level.iter().enumerate() {
        let l = l.unwrap_or(0);
        if out.len() <= l {
            out.resize(l + 1, Vec::new());
        }
        out[l].push(i);
    }
    out
}

/// Docker waits 10 s between SIGTERM and SIGKILL; 9 s leaves tandem a second to spare.
pub const DEFAULT_STOP_BUDGET: Duration = Duration::from_secs(9);
/// Where `tandem healthcheck` and `tandem status` find the running tandem (as root).
pub const DEFAULT_SOCKET: &str = "/run/tandem.sock";

/// The HTTP endpoint's address (`TANDEM_HTTP`, `[tandem] http`): `HOST:PORT` with an IP
/// address (`127.0.0.1:9188`, `0.0.0.0:9188`, `[::]:9188`), or `off` (or empty) for none.
pub fn http_address(value: &str) -> Result<Option<SocketAddr>, String> {
    let v = value.trim();
    if v.is_empty() || v == "off" {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("{value:?} is not an address to listen on: use IP:PORT, e.g. 127.0.0.1:9188 or 0.0.0.0:9188, or off")
    })
}

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
    /// The HTTP endpoint (`TANDEM_HTTP`): /healthz, /readyz, /metrics. Off when `None`.
    pub http: Option<SocketAddr>,
    /// Whether the embedded PostgreSQL runs, and why: for `tandem check`.
    pub postgres_reason: String,
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
    /// `None`: tandem's own.
    pub working_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PostgresPlan {
    pub settings: postgres::Settings,
    pub bins: postgres::Binaries,
}

impl Plan {
    /// The plan from the builder's specs and, by the same index, how each service runs.
    fn assemble(
        specs: Vec<Spec>,
        launches: Vec<(Launch, Option<Probe>)>,
        settings: supervisor::Settings,
        socket: PathBuf,
        http: Option<SocketAddr>,
        postgres_reason: String,
    ) -> Plan {
        let services = specs
            .into_iter()
            .zip(launches)
            .map(|(spec, (launch, probe))| ServicePlan {
                spec,
                launch,
                probe,
            })
            .collect();
        Plan {
            services,
            settings,
            socket,
            http,
            postgres_reason,
        }
    }

    pub fn specs(&self) -> Vec<Spec> {
        self.services.iter().map(|s| s.spec.clone()).collect()
    }

    pub fn stop_budget(&self) -> Duration {
        self.settings.budget
    }

    /// The plan as a person reads it (`tandem check`): what runs, the start order in
    /// layers with the conditions between them, the stop order with each signal's time
    /// in the budget (rehearsed by the supervisor itself), and what a person would want
    /// to be warned of.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let names: Vec<&str> = self.services.iter().map(|s| s.spec.name.as_str()).collect();
        let _ = writeln!(out, "embedded PostgreSQL: {}", self.postgres_reason);
        let _ = writeln!(out, "start order:");
        for (n, layer) in layers(&self.services).iter().enumerate() {
            for &i in layer {
                let s = &self.services[i];
                let spec = &s.spec;
                let kind = match spec.kind {
                    supervisor::Kind::Daemon => "",
                    supervisor::Kind::Oneshot => " (oneshot)",
                    supervisor::Kind::External => " (external)",
                };
                let _ = write!(out, "  {}. {}{kind}", n + 1, spec.name);
                if !spec.depends_on.is_empty() {
                    let deps: Vec<String> = spec
                        .depends_on
                        .iter()
                        .map(|(d, c)| format!("{} {}", names[*d], c.as_str()))
                        .collect();
                    let _ = write!(out, " when {}", deps.join(", "));
                }
                out.push('\n');
                match &s.launch {
                    Launch::Command(c) => {
                        let argv: Vec<String> = c
                            .argv
                            .iter()
                            .map(|a| format!("{:?}", a.to_string_lossy()))
                            .collect();
                        let _ = write!(out, "     runs [{}]", argv.join(", "));
                        if let Some(u) = &c.user {
                            let _ = write!(out, " as {}", u.name);
                        }
                        if let Some(d) = &c.working_dir {
                            let _ = write!(out, " in {}", d.display());
                        }
                        out.push('\n');
                    }
                    Launch::External => {
                        let _ = writeln!(out, "     not run by tandem: known by its probe");
                    }
                    Launch::Postgres(p) => {
                        let _ = writeln!(
                            out,
                            "     PostgreSQL {} from {} ({}), data {}, port {}, database {:?} as {:?}",
                            p.bins.version,
                            p.bins.dir.display(),
                            p.bins.source,
                            p.settings.data_dir.display(),
                            p.settings.port,
                            p.settings.database,
                            p.settings.user,
                        );
                        let u = &p.settings.upgrade;
                        if u.enabled {
                            let _ = writeln!(
                                out,
                                "     an older major's data directory is upgraded with pg_upgrade (TANDEM_PG_UPGRADE=auto): old programs in {}, {}, old files {} after the new cluster starts",
                                u.old_bin_dir.as_ref().map_or_else(
                                    || "/usr/lib/postgresql/OLD/bin".to_string(),
                                    |d| d.display().to_string()
                                ),
                                match u.mode {
                                    postgres::settings::UpgradeMode::Auto => "hard links on one filesystem, else a copy",
                                    postgres::settings::UpgradeMode::Link => "hard links",
                                    postgres::settings::UpgradeMode::Copy => "a copy",
                                },
                                if u.keep_old { "kept" } else { "removed" }
                            );
                        } else {
                            let _ = writeln!(
                                out,
                                "     an older major's data directory is refused (TANDEM_PG_UPGRADE=auto upgrades it)"
                            );
                        }
                        let _ = writeln!(
                            out,
                            "     a POSTGRES_PASSWORD that is not the stored one is {}",
                            if p.settings.sync_password {
                                "stored (TANDEM_PG_SYNC_PASSWORD=on)"
                            } else {
                                "reported (TANDEM_PG_SYNC_PASSWORD=on stores it)"
                            }
                        );
                    }
                }
                if let (Some(p), Some(h)) = (&s.probe, &spec.health) {
                    let _ = writeln!(
                        out,
                        "     health: {} every {} ms (timeout {} ms, {} retries, start period {} ms), when unhealthy: {}",
                        p.kind(),
                        h.interval.as_millis(),
                        h.timeout.as_millis(),
                        h.retries,
                        h.start_period.as_millis(),
                        match h.on_unhealthy {
                            OnUnhealthy::Restart => "restart",
                            OnUnhealthy::Report => "report",
                        }
                    );
                }
                if let Some(r) = &spec.restart {
                    let _ = writeln!(
                        out,
                        "     restart: {}, after {} ms, x{} up to {} ms (+-{:.0} %), at most {} in {} s, reset after {} s ready",
                        if r.on_failure_only { "on-failure" } else { "always" },
                        r.delay.as_millis(),
                        r.factor,
                        r.max_delay.as_millis(),
                        r.jitter * 100.0,
                        r.max_restarts,
                        r.window.as_secs(),
                        r.reset_after.as_secs()
                    );
                }
            }
        }
        // The rehearsal's own log lines are not the plan's: silenced.
        let (signals, exit_at) =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                supervisor::stop::rehearse(self.specs(), self.settings)
            });
        let _ = writeln!(
            out,
            "stop order (budget {} ms from the first SIGTERM; times if nothing gives in before SIGKILL):",
            self.settings.budget.as_millis()
        );
        let mut order: Vec<&str> = Vec::new();
        for r in &signals {
            if !order.contains(&r.service.as_str()) {
                order.push(&r.service);
            }
        }
        for name in order {
            let steps: Vec<String> = signals
                .iter()
                .filter(|r| r.service == name)
                .map(|r| format!("{} at {} ms", r.signal.as_str(), r.at.as_millis()))
                .collect();
            let _ = writeln!(out, "  {name}: {}", steps.join(", "));
        }
        let _ = writeln!(out, "  tandem exits by {} ms", exit_at.as_millis());
        let _ = writeln!(out, "control socket: {}", self.socket.display());
        match self.http {
            Some(addr) => {
                let _ = writeln!(
                    out,
                    "http endpoint: http://{addr} (/healthz, /readyz, /metrics)"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "http endpoint: off (TANDEM_HTTP=HOST:PORT turns it on)"
                );
            }
        }
        let warnings = self.warnings();
        if !warnings.is_empty() {
            let _ = writeln!(out, "warnings:");
            for w in warnings {
                let _ = writeln!(out, "  - {w}");
            }
        }
        out
    }

    /// What a person would want to know before running this plan.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.settings.budget >= DOCKER_GRACE {
            out.push(format!(
                "the stop budget is {} ms, at or above Docker's default grace period of 10 s: `docker stop` would SIGKILL tandem before it finishes; set TANDEM_STOP_TIMEOUT below the grace period (or raise the grace period: stop_grace_period, --time)",
                self.settings.budget.as_millis()
            ));
        }
        for s in &self.services {
            let spec = &s.spec;
            if spec.kind == supervisor::Kind::Daemon
                && spec.health.is_none()
                && spec.readiness != supervisor::Readiness::Reported
            {
                out.push(format!(
                    "{} has no health probe: healthcheck calls it healthy as soon as it runs, and dependents waiting for healthy start at once",
                    spec.name
                ));
            }
        }
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
