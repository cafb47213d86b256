//! The config file's services turned into one [`Plan`]: the same model the zero-config
//! mode builds, with every problem that needs the machine (a user that does not exist, a
//! command not found, a stop budget the stop timeouts cannot fit in) reported with its
//! file, line and column, all at once.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Gid;

use super::file::{self, File, Kind, ProbeDef, Problems, RestartPolicy, Source};
use super::{
    env::{jitter_seed, os_env_get},
    postgres_probe, socket_path, var, CommandPlan, Launch, Plan, PlanError, PostgresPlan,
    DEFAULT_APP_HEALTH, DEFAULT_PG_HEALTH, DEFAULT_STOP_BUDGET,
};
use crate::health::Probe;
use crate::postgres;
use crate::postgres::settings::{read_bounded, ReadError};
use crate::process::{resolve_program, Identity, Reaper};
use crate::supervisor::plan::{Builder, ServiceDef, StopStyle};
use crate::supervisor::{self, Condition, HealthSpec, RestartSpec, Settings, StopExit};

/// The exit code of a config that does not validate (and of other usage errors).
pub const EXIT_USAGE: i32 = 2;

/// The most a config file may be: a mistake (a log file named as the config) is refused
/// before it is read into memory.
const MAX_CONFIG: u64 = 1 << 20;

/// Reads, validates and plans the config file at `path`.
pub fn from_file(
    path: &Path,
    cmd: Vec<OsString>,
    env: &HashMap<String, String>,
    os_env: &[(OsString, OsString)],
    reaper: &Reaper,
) -> Result<Plan, PlanError> {
    // Problems are one a line (each made one by `Problems`); so is a reading error.
    let usage = |message: String| PlanError {
        message,
        code: EXIT_USAGE,
    };
    // Bounded and never waiting: `/dev/zero` or a FIFO as the config is a mistake to report.
    let text = match read_bounded(path, MAX_CONFIG) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
            usage(super::one_line(&format!(
                "cannot read the config file {}: it is not UTF-8 text",
                path.display()
            )))
        })?,
        Err(ReadError::TooLong) => {
            return Err(usage(super::one_line(&format!(
                "the config file {} is larger than {} KiB; is it the right file?",
                path.display(),
                MAX_CONFIG / 1024
            ))))
        }
        Err(ReadError::Failed(e)) => {
            return Err(usage(super::one_line(&format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))))
        }
    };
    let src = Source::new(path.to_path_buf(), text);
    let (parsed, problems) = file::parse(&src, env).map_err(|list| usage(list.join("\n")))?;
    let mut p = Problems::new(&src);
    p.list = problems;
    let plan = plan(&parsed, &mut p, path, cmd, env, os_env, reaper);
    match (plan, p.list.is_empty()) {
        (Some(plan), true) => Ok(plan),
        _ => Err(usage(p.list.join("\n"))),
    }
}

fn plan(
    f: &File,
    p: &mut Problems,
    path: &Path,
    cmd: Vec<OsString>,
    env: &HashMap<String, String>,
    os_env: &[(OsString, OsString)],
    reaper: &Reaper,
) -> Option<Plan> {
    let base = path.parent().unwrap_or(Path::new("/"));
    // The environment wins over the file for the container-wide settings, so that
    // `docker run -e TANDEM_STOP_TIMEOUT=...` works with any image.
    let budget = match var(env, "TANDEM_STOP_TIMEOUT") {
        Some(v) => super::parse_duration(v)
            .map_err(|e| p.push(format!("TANDEM_STOP_TIMEOUT: {e}")))
            .ok()?,
        None => f
            .tandem
            .stop_timeout
            .as_ref()
            .map_or(DEFAULT_STOP_BUDGET, |d| d.value),
    };
    let stop_exit = match var(env, "TANDEM_STOP_EXIT") {
        Some("app") => StopExit::App,
        Some("clean") => StopExit::Clean,
        Some(v) => {
            p.list
                .push(format!("TANDEM_STOP_EXIT={v:?}: use clean or app"));
            StopExit::Clean
        }
        None => f.tandem.stop_exit.unwrap_or(StopExit::Clean),
    };
    let socket = match (var(env, "TANDEM_SOCKET"), &f.tandem.socket) {
        (None, Some(s)) => s.clone(),
        (s, _) => socket_path(s, var(env, "XDG_RUNTIME_DIR")),
    };

    let mut builder = Builder::new(budget);
    let mut launches: Vec<(Launch, Option<Probe>)> = Vec::new();
    let mut spans: Vec<file::Span> = Vec::new();
    // What every service gets when there is an embedded database: its URL and PG*.
    let mut db_env: Vec<(String, String)> = Vec::new();

    let main_named = f
        .services
        .iter()
        .find(|s| s.main.as_ref().is_some_and(|m| m.value));
    if let Some(pg) = &f.postgres {
        if let Some(s) = f
            .services
            .iter()
            .find(|s| s.name.value == postgres::SERVICE)
        {
            p.at(&s.name.span, "a service may not be called `postgres` when there is a [postgres] section: that name is the embedded database's");
        }
        match postgres_plan(pg, env, reaper) {
            Ok((settings, bins)) => {
                db_env = postgres::app_env(&settings);
                for (name, scheme) in &pg.urls {
                    db_env.push((name.clone(), postgres::url(&settings, scheme)));
                }
                let health = timing(&pg.health, DEFAULT_PG_HEALTH);
                let alone = f.services.is_empty() && cmd.is_empty();
                builder.add(
                    ServiceDef::database(postgres::SERVICE)
                        .main(alone)
                        .health(Some(health))
                        .start_timeout(pg.start_timeout.filter(|t| !t.is_zero())),
                );
                launches.push((
                    Launch::Postgres(Box::new(PostgresPlan {
                        settings: settings.clone(),
                        bins,
                    })),
                    Some(postgres_probe(&settings)),
                ));
                spans.push(pg.span.clone());
            }
            Err(e) => p.at(&pg.span, format!("[postgres]: {e}")),
        }
    }

    for s in &f.services {
        let is_main = main_named.is_some_and(|m| std::ptr::eq(m, s));
        // A service with problems is left out; the rest are still checked.
        let Some((def, launch, probe)) = service(s, is_main, &cmd, &db_env, base, p, os_env) else {
            continue;
        };
        builder.add(def);
        launches.push((launch, probe));
        spans.push(s.name.span.clone());
    }
    if main_named.is_none() && !cmd.is_empty() {
        // The CMD with no service marked main: the app, as in the zero-config mode.
        let (def, launch) = cmd_app(cmd, f.postgres.is_some(), &db_env, os_env)
            .map_err(|e| p.push(e))
            .ok()?;
        builder.add(def);
        launches.push((launch, None));
        spans.push(0..0);
    }

    check_graph(f, p);
    check_budget(f, budget, p);
    if !p.list.is_empty() {
        return None;
    }
    let specs = match builder.build() {
        Ok(specs) => specs,
        Err(errors) => {
            p.list.extend(errors);
            return None;
        }
    };
    let settings = Settings {
        budget,
        stop_exit,
        seed: jitter_seed(),
    };
    let reason = match &f.postgres {
        Some(_) => format!(
            "on: the config file {} has a [postgres] section",
            path.display()
        ),
        None => format!(
            "off: the config file {} has no [postgres] section",
            path.display()
        ),
    };
    Some(Plan::assemble(specs, launches, settings, socket, reason))
}

/// The embedded database from its section over the environment (the section wins).
fn postgres_plan(
    pg: &file::PostgresSection,
    env: &HashMap<String, String>,
    reaper: &Reaper,
) -> Result<(postgres::Settings, postgres::Binaries), String> {
    let mut merged = env.clone();
    for (k, v) in &pg.vars {
        merged.insert(k.to_string(), v.clone());
    }
    // A password written in the file wins over a _FILE in the environment, and the other way.
    if pg.vars.iter().any(|(k, _)| *k == "POSTGRES_PASSWORD") {
        merged.remove("POSTGRES_PASSWORD_FILE");
    } else if pg.vars.iter().any(|(k, _)| *k == "POSTGRES_PASSWORD_FILE") {
        merged.remove("POSTGRES_PASSWORD");
    }
    let mut settings = postgres::Settings::from_env(&merged)?;
    if let Some(args) = &pg.initdb_args {
        settings.initdb_args = args.clone();
    }
    settings.bin_dir = pg.bin_dir.clone();
    settings.server_settings = pg.settings.clone();
    let bins = postgres::locate_binaries(&settings, &merged, reaper)?;
    Ok((settings, bins))
}

fn timing(t: &file::Timing, default: HealthSpec) -> HealthSpec {
    HealthSpec {
        probe_kind: default.probe_kind,
        interval: t.interval.unwrap_or(default.interval),
        timeout: t.timeout.unwrap_or(default.timeout),
        retries: t.retries.unwrap_or(default.retries),
        start_period: t.start_period.unwrap_or(default.start_period),
        on_unhealthy: t.on_unhealthy.unwrap_or(default.on_unhealthy),
    }
}

type Planned = (ServiceDef, Launch, Option<Probe>);

#[allow(clippy::too_many_arguments)]
fn service(
    s: &file::ServiceSection,
    is_main: bool,
    cmd: &[OsString],
    db_env: &[(String, String)],
    base: &Path,
    p: &mut Problems,
    os_env: &[(OsString, OsString)],
) -> Option<Planned> {
    let name = s.name.value.as_str();
    let kind = match s.kind {
        Kind::Daemon => supervisor::Kind::Daemon,
        Kind::Oneshot => supervisor::Kind::Oneshot,
        Kind::External => supervisor::Kind::External,
    };
    // The environment: tandem's own, then the env file, then `env`, then the database's
    // URL where nothing set it.
    let mut child_env: Vec<(OsString, OsString)> = os_env.to_vec();
    let set = |env: &mut Vec<(OsString, OsString)>, k: &str, v: &str| {
        env.retain(|(key, _)| key != k);
        env.push((k.into(), v.into()));
    };
    if let Some(ef) = &s.env_file {
        let path = base.join(&ef.value);
        match file::read_env_file(&path) {
            Ok(vars) => {
                for (k, v) in vars {
                    set(&mut child_env, &k, &v);
                }
            }
            Err(e) => p.at(&ef.span, format!("env_file: {e}")),
        }
    }
    for (k, v) in &s.env {
        match k.strip_suffix("_FILE").filter(|n| !n.is_empty()) {
            // A secret: the variable gets the file's contents, never its path.
            Some(secret) => match file::read_limited(Path::new(&v.value)) {
                Ok(text) => {
                    let text = text.trim_end_matches(['\n', '\r']);
                    set(&mut child_env, secret, text);
                }
                Err(e) => p.at(&v.span, format!("env.{k}: {e}")),
            },
            None => set(&mut child_env, k, &v.value),
        }
    }
    for (k, v) in db_env {
        if os_env_get(&child_env, k).is_none() {
            child_env.push((k.into(), v.into()));
        }
    }

    let user = s
        .user
        .as_ref()
        .and_then(|u| match Identity::lookup(&u.value) {
            Ok(mut i) => {
                if let Some(g) = &s.group {
                    match group_id(&g.value) {
                        Some(gid) => i.gid = gid,
                        None => p.at(
                            &g.span,
                            format!(
                                "group {:?} does not exist; name a group from /etc/group",
                                g.value
                            ),
                        ),
                    }
                }
                Some(i)
            }
            Err(e) => {
                p.at(
                    &u.span,
                    format!("{e}; name a user from /etc/passwd (or a uid)"),
                );
                None
            }
        });
    if s.group.is_some() && s.user.is_none() {
        if let Some(g) = &s.group {
            p.at(&g.span, "group needs a user: write user = \"...\" too");
        }
    }

    let probe =
        s.health
            .as_ref()
            .and_then(|h| match probe_of(&h.probe, &child_env, user.as_ref()) {
                Ok(probe) => Some((probe, h)),
                Err(e) => {
                    p.at(&h.span, e);
                    None
                }
            });
    let health = probe.as_ref().map(|(probe, h)| {
        let mut spec = timing(&h.timing, DEFAULT_APP_HEALTH);
        spec.probe_kind = probe.kind();
        spec
    });

    let mut def = match kind {
        supervisor::Kind::External => {
            let Some(health) = health.clone() else {
                if s.health.is_none() {
                    p.at(&s.name.span, format!("service {name:?} is external (tandem does not run it): give it a probe, e.g. health = {{ postgres = \"postgresql://app@db:5432/app\" }} or {{ tcp = \"redis:6379\" }}"));
                }
                return None;
            };
            if let Some(c) = &s.command {
                p.at(&c.span, "an external service has no command: tandem does not run it; remove command, or make it a daemon");
            }
            ServiceDef::external(name, health)
        }
        supervisor::Kind::Oneshot => ServiceDef::oneshot(name),
        supervisor::Kind::Daemon => ServiceDef::daemon(name),
    };
    def = def
        .health(health)
        .main(is_main)
        .forward_signals(is_main)
        .required(s.required)
        .reload(s.reload_signal)
        .stop(StopStyle::Signal(s.stop_signal.unwrap_or(Signal::SIGTERM)))
        .stop_timeout(s.stop_timeout.as_ref().map(|t| t.value))
        .restart(s.restart.as_ref().and_then(|r| restart_spec(&r.value)));
    for (dep, cond) in &s.depends_on {
        def = def.after(&dep.value, *cond);
    }

    let launch = if kind == supervisor::Kind::External {
        Launch::External
    } else {
        let argv: Vec<OsString> = match (&s.command, is_main && !cmd.is_empty()) {
            (_, true) => cmd.to_vec(),
            (Some(c), false) => c.value.iter().map(OsString::from).collect(),
            (None, false) => {
                p.at(
                    &s.name.span,
                    format!(
                        "service {name:?} has no command: write command = [\"program\", \"arg\"]{}",
                        if is_main {
                            ", or give one on tandem's command line"
                        } else {
                            ""
                        }
                    ),
                );
                return None;
            }
        };
        let at = s
            .command
            .as_ref()
            .map_or(s.name.span.clone(), |c| c.span.clone());
        let program = match resolve_program(&argv[0], os_env_get(&child_env, "PATH")) {
            Ok(prog) => prog,
            Err(e) => {
                p.at(
                    &at,
                    format!("{e}; give the full path, or install it in the image"),
                );
                return None;
            }
        };
        let mut plan = CommandPlan {
            program,
            argv,
            env: child_env,
            user,
            working_dir: None,
        };
        if let Some(dir) = &s.working_dir {
            plan.working_dir = Some(if dir.is_absolute() {
                dir.clone()
            } else {
                base.join(dir)
            });
        }
        Launch::Command(plan)
    };
    Some((def, launch, probe.map(|(probe, _)| probe)))
}

fn group_id(name: &str) -> Option<Gid> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(Gid::from_raw(n));
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid)
}

fn probe_of(
    def: &ProbeDef,
    env: &[(OsString, OsString)],
    user: Option<&Identity>,
) -> Result<Probe, String> {
    match def {
        ProbeDef::Http(url) => match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" => Ok(Probe::Http { url: url.clone() }),
            Ok(_) => Err(format!("health.http {url:?}: only http:// URLs are probed")),
            Err(e) => Err(format!("health.http {url:?}: {e}")),
        },
        ProbeDef::Tcp(addr) => {
            if addr
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!(
                    "health.tcp {addr:?}: write host:port, e.g. \"redis:6379\""
                ));
            }
            Ok(Probe::Tcp { addr: addr.clone() })
        }
        ProbeDef::Exec(argv) if argv.is_empty() => {
            Err("health.exec is empty: write the command, e.g. [\"pg_isready\"]".into())
        }
        ProbeDef::Exec(argv) => Ok(Probe::Exec {
            argv: argv.iter().map(OsString::from).collect(),
            env: env.to_vec(),
            user: user.cloned(),
        }),
        ProbeDef::Postgres(url) => {
            let config: tokio_postgres::Config = url.parse().map_err(|e| {
                format!("health.postgres: not a PostgreSQL URL ({e}); write postgresql://user:password@host:5432/database")
            })?;
            let host = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => return Err("health.postgres: the URL names no host; write postgresql://user@host:5432/database".into()),
            };
            let user = config.get_user().unwrap_or("postgres").to_string();
            Ok(Probe::Postgres {
                host,
                port: config.get_ports().first().copied().unwrap_or(5432),
                database: config.get_dbname().unwrap_or(&user).to_string(),
                password: config
                    .get_password()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                user,
            })
        }
    }
}

fn restart_spec(r: &file::Restart) -> Option<RestartSpec> {
    let d = supervisor::table::default_restart();
    match r.policy {
        RestartPolicy::No => None,
        policy => Some(RestartSpec {
            on_failure_only: policy == RestartPolicy::OnFailure,
            delay: r.delay.unwrap_or(d.delay),
            factor: r.factor.unwrap_or(d.factor),
            max_delay: r.max_delay.unwrap_or(d.max_delay),
            jitter: r.jitter.unwrap_or(d.jitter),
            max_restarts: r.max_restarts.unwrap_or(d.max_restarts),
            window: r.window.unwrap_or(d.window),
            reset_after: r.reset_after.unwrap_or(d.reset_after),
        }),
    }
}

/// The CMD as the app, when no service is marked main (the zero-config mode's shape).
fn cmd_app(
    cmd: Vec<OsString>,
    with_db: bool,
    db_env: &[(String, String)],
    os_env: &[(OsString, OsString)],
) -> Result<(ServiceDef, Launch), String> {
    let program =
        resolve_program(&cmd[0], os_env_get(os_env, "PATH")).map_err(|e| e.to_string())?;
    let mut env = os_env.to_vec();
    for (k, v) in db_env {
        if os_env_get(os_env, k).is_none() {
            env.push((k.into(), v.into()));
        }
    }
    let mut def = ServiceDef::daemon("app").main(true).forward_signals(true);
    if with_db {
        def = def.after(postgres::SERVICE, Condition::Healthy);
    }
    Ok((
        def,
        Launch::Command(CommandPlan {
            program,
            argv: cmd,
            env,
            user: None,
            working_dir: None,
        }),
    ))
}

/// Unknown dependencies, impossible conditions and cycles, each where it was written.
fn check_graph(f: &File, p: &mut Problems) {
    let names: Vec<&str> = f
        .postgres
        .iter()
        .map(|_| postgres::SERVICE)
        .chain(f.services.iter().map(|s| s.name.value.as_str()))
        .collect();
    let kind_of = |n: &str| {
        f.services
            .iter()
            .find(|s| s.name.value == n)
            .map(|s| s.kind)
    };
    for (i, s) in f.services.iter().enumerate() {
        if f.services[..i].iter().any(|o| o.name.value == s.name.value) {
            p.at(
                &s.name.span,
                format!("service {:?} is defined twice", s.name.value),
            );
        }
        for (dep, cond) in &s.depends_on {
            if !names.contains(&dep.value.as_str()) {
                let known = names.join(", ");
                p.at(
                    &dep.span,
                    format!(
                        "{:?} depends on {:?}, which is not defined (services: {known})",
                        s.name.value, dep.value
                    ),
                );
            } else if dep.value == s.name.value {
                p.at(&dep.span, format!("{:?} depends on itself", s.name.value));
            } else if *cond == Condition::Completed && kind_of(&dep.value) != Some(Kind::Oneshot) {
                p.at(&dep.span, format!("{} = \"completed\": {:?} is not a oneshot and never completes; wait for \"healthy\" or \"started\", or make it kind = \"oneshot\"", dep.value, dep.value));
            }
        }
    }
    // A cycle, named in full, at the first service on it.
    let deps = |n: &str| -> Vec<&str> {
        f.services
            .iter()
            .find(|s| s.name.value == n)
            .map(|s| s.depends_on.iter().map(|(d, _)| d.value.as_str()).collect())
            .unwrap_or_default()
    };
    let mut reported: Vec<&str> = Vec::new();
    for s in &f.services {
        let start = s.name.value.as_str();
        let mut path = vec![start];
        if let Some(cycle) = walk(start, &deps, &mut path, 0) {
            if !cycle.iter().any(|n| reported.contains(n)) {
                p.at(
                    &s.name.span,
                    format!(
                        "dependency cycle: {}; remove one of these depends_on",
                        cycle.join(" -> ")
                    ),
                );
                reported.extend(cycle);
            }
        }
    }
}

fn walk<'a>(
    at: &'a str,
    deps: &dyn Fn(&str) -> Vec<&'a str>,
    path: &mut Vec<&'a str>,
    depth: usize,
) -> Option<Vec<&'a str>> {
    if depth > 64 {
        return None;
    }
    for d in deps(at) {
        if d == path[0] {
            let mut cycle = path.clone();
            cycle.push(d);
            return Some(cycle);
        }
        if !path.contains(&d) {
            path.push(d);
            if let Some(c) = walk(d, deps, path, depth + 1) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

/// Each service's own stop time plus what the services it depends on keep after it, and
/// the final grace, must fit in the budget. Worked out from the file itself, so that it is
/// reported beside every other problem.
fn check_budget(f: &File, budget: Duration, p: &mut Problems) {
    let grace = supervisor::plan::final_grace(budget);
    // What a service keeps for its own stop after its dependents are gone: PostgreSQL the
    // builder's database reserve, others their stop.timeout.
    let keeps = |name: &str| -> Duration {
        if name == postgres::SERVICE && f.postgres.is_some() {
            return supervisor::plan::database_reserve(budget);
        }
        f.services
            .iter()
            .find(|s| s.name.value == name)
            .and_then(|s| s.stop_timeout.as_ref().map(|t| t.value))
            .unwrap_or(Duration::ZERO)
    };
    let deps_of = |name: &str| -> Vec<String> {
        f.services
            .iter()
            .find(|s| s.name.value == name)
            .map(|s| s.depends_on.iter().map(|(d, _)| d.value.clone()).collect())
            .unwrap_or_default()
    };
    for s in &f.services {
        let Some(own) = &s.stop_timeout else { continue };
        let mut seen: Vec<String> = vec![s.name.value.clone()];
        let mut stack = deps_of(&s.name.value);
        let mut kept = Duration::ZERO;
        let mut names = Vec::new();
        while let Some(d) = stack.pop() {
            if seen.contains(&d) {
                continue;
            }
            seen.push(d.clone());
            let k = keeps(&d);
            if !k.is_zero() {
                kept += k;
                names.push(format!("{d} keeps {} ms", k.as_millis()));
            }
            stack.extend(deps_of(&d));
        }
        let need = own.value + kept + grace;
        if need > budget {
            let after = if names.is_empty() {
                String::new()
            } else {
                format!(", then {}", names.join(", "))
            };
            p.at(
                &own.span,
                format!(
                    "stop.timeout {} ms{after}, and the final {} ms, need {} ms: more than the {} ms stop budget; shorten stop.timeout or raise the budget ([tandem] stop_timeout or TANDEM_STOP_TIMEOUT)",
                    own.value.as_millis(),
                    grace.as_millis(),
                    need.as_millis(),
                    budget.as_millis()
                ),
            );
        }
    }
}

/// Where `tandem healthcheck` and `tandem status` find the running tandem: TANDEM_SOCKET,
/// else the config file's `[tandem] socket`, else the default rule. A config file that
/// cannot be read is no reason to fail here: the default is tried.
pub fn client_socket(flag: Option<PathBuf>, env: &HashMap<String, String>) -> PathBuf {
    if var(env, "TANDEM_SOCKET").is_none() {
        let from_file = config_path(flag, env)
            .and_then(|path| std::fs::read_to_string(&path).ok().map(|t| (path, t)))
            .and_then(|(path, text)| {
                let src = Source::new(path, text);
                file::parse(&src, env).ok()?.0.tandem.socket
            });
        if let Some(socket) = from_file {
            return socket;
        }
    }
    socket_path(var(env, "TANDEM_SOCKET"), var(env, "XDG_RUNTIME_DIR"))
}

/// Where the config file is: `--config`, else TANDEM_CONFIG, else the default if it exists.
pub fn config_path(flag: Option<PathBuf>, env: &HashMap<String, String>) -> Option<PathBuf> {
    flag.or_else(|| var(env, "TANDEM_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG);
            default.exists().then_some(default)
        })
}

/// Read when it exists and nothing else names a config file.
pub const DEFAULT_CONFIG: &str = "/etc/tandem/tandem.toml";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_find_the_socket_the_config_file_names() {
        let dir = crate::testutil::TempDir::new("client-socket");
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[tandem]\nsocket = \"/tmp/elsewhere.sock\"\n").unwrap();
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let flag = Some(file.clone());
        assert_eq!(
            client_socket(flag.clone(), &env(&[])),
            PathBuf::from("/tmp/elsewhere.sock")
        );
        let via_env = env(&[("TANDEM_CONFIG", file.to_str().unwrap())]);
        assert_eq!(
            client_socket(None, &via_env),
            PathBuf::from("/tmp/elsewhere.sock")
        );
        assert_eq!(
            client_socket(flag, &env(&[("TANDEM_SOCKET", "/tmp/mine.sock")])),
            PathBuf::from("/tmp/mine.sock"),
            "the variable wins, as for tandem itself"
        );
    }
}
