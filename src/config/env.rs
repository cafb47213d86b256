//! Zero-config mode: the official postgres image's variables plus the CMD.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use super::{
    health_spec, http_address, parse_duration, parse_signal, postgres_probe, socket_path, var,
    CommandPlan, Launch, Plan, PlanError, PostgresPlan, DEFAULT_APP_HEALTH, DEFAULT_PG_HEALTH,
    DEFAULT_STOP_BUDGET,
};
use crate::health::Probe;
use crate::postgres;
use crate::process::{resolve_program, Identity, Reaper};
use crate::supervisor::plan::{Builder, ServiceDef, StopStyle};
use crate::supervisor::{Condition, HealthSpec, Settings, StopExit};
use std::time::Duration;

/// Builds the plan from the CMD and the environment.
///
/// The embedded PostgreSQL runs when `TANDEM_POSTGRES` is `on`, or when it is `auto`
/// (the default) and any `POSTGRES_*` or `PGDATA` variable is set, as in an image built
/// from the official one.
pub fn from_env(
    cmd: Vec<OsString>,
    env: &HashMap<String, String>,
    os_env: &[(OsString, OsString)],
    reaper: &Reaper,
) -> Result<Plan, PlanError> {
    let stop_budget = match var(env, "TANDEM_STOP_TIMEOUT") {
        Some(v) => parse_duration(v).map_err(|e| format!("TANDEM_STOP_TIMEOUT: {e}"))?,
        None => DEFAULT_STOP_BUDGET,
    };
    let socket = socket_path(var(env, "TANDEM_SOCKET"), var(env, "XDG_RUNTIME_DIR"));
    let http = match var(env, "TANDEM_HTTP") {
        Some(v) => http_address(v).map_err(|e| format!("TANDEM_HTTP: {e}"))?,
        None => None,
    };

    // auto: embedded when a POSTGRES_* or PGDATA is set and PostgreSQL is installed. Found
    // by finding it (no extra look around on the usual path); only when that fails is the
    // machine searched, to tell "not installed" (the database is elsewhere) from a mistake.
    let mut found = None;
    let (want_postgres, postgres_reason) = match wants_postgres(env)? {
        Want::Decided(on, reason) => (on, reason),
        Want::IfInstalled(first) => match find_postgres(env, reaper) {
            Ok(pg) => {
                let reason = format!(
                    "on: {first} is set and PostgreSQL is installed in {} (TANDEM_POSTGRES=auto)",
                    pg.1.dir.display()
                );
                found = Some(pg);
                (true, reason)
            }
            Err(_) if postgres::binaries::installed(env).is_none() => (
                false,
                format!("off: {first} is set but no PostgreSQL is installed, so the database is elsewhere (TANDEM_POSTGRES=auto; set it to on to insist)"),
            ),
            Err(e) => return Err(e.into()),
        },
    };
    if cmd.is_empty() && !want_postgres {
        return Err(
            "nothing to run: give the app's command (tandem -- CMD ARGS...) or set POSTGRES_* variables for the embedded PostgreSQL"
                .to_string()
                .into(),
        );
    }

    let stop_exit = match var(env, "TANDEM_STOP_EXIT") {
        None | Some("clean") => StopExit::Clean,
        Some("app") => StopExit::App,
        Some(v) => return Err(format!("TANDEM_STOP_EXIT={v:?}: use clean or app").into()),
    };

    // Each service's description for the supervisor, and how the runtime runs it.
    let mut builder = Builder::new(stop_budget);
    let mut launches: Vec<(Launch, Option<Probe>)> = Vec::new();
    let mut pg_settings = None;
    if want_postgres {
        let (settings, bins) = match found {
            Some(pg) => pg,
            None => find_postgres(env, reaper)?,
        };
        let start_timeout = match var(env, "TANDEM_PG_START_TIMEOUT") {
            Some(v) => {
                Some(parse_duration(v).map_err(|e| format!("TANDEM_PG_START_TIMEOUT: {e}"))?)
                    .filter(|t| !t.is_zero())
            }
            None => None,
        };
        builder.add(
            ServiceDef::database(postgres::SERVICE)
                .main(cmd.is_empty())
                .health(Some(health_spec(env, "TANDEM_PG", DEFAULT_PG_HEALTH)?))
                .start_timeout(start_timeout),
        );
        launches.push((
            Launch::Postgres(Box::new(PostgresPlan {
                settings: settings.clone(),
                bins,
            })),
            Some(postgres_probe(&settings)),
        ));
        pg_settings = Some(settings);
    }

    if !cmd.is_empty() {
        let program =
            resolve_program(&cmd[0], os_env_get(os_env, "PATH")).map_err(|e| PlanError {
                message: e.to_string(),
                code: e.exit_code(),
            })?;
        let user = match var(env, "TANDEM_APP_USER") {
            Some(u) => Some(Identity::lookup(u).map_err(|e| format!("TANDEM_APP_USER: {e}"))?),
            None => None,
        };
        let mut child_env: Vec<(OsString, OsString)> = os_env.to_vec();
        let mut app = ServiceDef::daemon("app").main(true).forward_signals(true);
        if let Some(settings) = &pg_settings {
            let mut vars = postgres::app_env(settings);
            for (name, scheme) in url_aliases(env)? {
                vars.push((name, postgres::url(settings, &scheme)));
            }
            for (k, v) in vars {
                if os_env_get(os_env, &k).is_none() {
                    child_env.push((k.into(), v.into()));
                }
            }
            app = app.after(postgres::SERVICE, Condition::Healthy);
        }
        if let Some(s) = var(env, "TANDEM_APP_STOP_SIGNAL") {
            let signal = parse_signal(s).map_err(|e| format!("TANDEM_APP_STOP_SIGNAL: {e}"))?;
            app = app.stop(StopStyle::Signal(signal));
        }
        // The app restarted in place when it dies, with the config file's default backoff.
        match var(env, "TANDEM_APP_RESTART") {
            None | Some("no") => {}
            Some(p @ ("on-failure" | "always")) => {
                let mut spec = crate::supervisor::table::default_restart();
                spec.on_failure_only = p == "on-failure";
                app = app.restart(Some(spec));
            }
            Some(v) => {
                return Err(
                    format!("TANDEM_APP_RESTART={v:?}: use no, on-failure or always").into(),
                )
            }
        }
        if let Some(s) = var(env, "TANDEM_APP_RELOAD_SIGNAL") {
            app = app.reload(Some(
                parse_signal(s).map_err(|e| format!("TANDEM_APP_RELOAD_SIGNAL: {e}"))?,
            ));
        }
        let probe = match app_health(env, os_env, user.as_ref())? {
            Some((probe, health)) => {
                app = app.health(Some(health));
                Some(probe)
            }
            None => None,
        };
        builder.add(app);
        launches.push((
            Launch::Command(CommandPlan {
                program,
                argv: cmd,
                env: child_env,
                user,
                working_dir: None,
            }),
            probe,
        ));
    }

    let specs = builder.build().map_err(|errors| errors.join("; "))?;
    let settings = Settings {
        budget: stop_budget,
        stop_exit,
        seed: jitter_seed(),
    };
    Ok(Plan::assemble(
        specs,
        launches,
        settings,
        socket,
        http,
        postgres_reason,
    ))
}

/// The app's probe: `TANDEM_APP_HEALTH_URL` (http), `TANDEM_APP_HEALTH_TCP` (host:port) or
/// `TANDEM_APP_HEALTH_CMD` (a command, split like a shell would, run with the app's
/// environment and user); at most one of them.
fn app_health(
    env: &HashMap<String, String>,
    os_env: &[(OsString, OsString)],
    user: Option<&Identity>,
) -> Result<Option<(Probe, HealthSpec)>, String> {
    let given: Vec<&str> = [
        "TANDEM_APP_HEALTH_URL",
        "TANDEM_APP_HEALTH_TCP",
        "TANDEM_APP_HEALTH_CMD",
    ]
    .into_iter()
    .filter(|k| var(env, k).is_some())
    .collect();
    let probe = match given.as_slice() {
        [] => return Ok(None),
        ["TANDEM_APP_HEALTH_URL"] => {
            let url = var(env, "TANDEM_APP_HEALTH_URL").unwrap_or_default();
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" => Probe::Http {
                    url: url.to_string(),
                },
                Ok(_) => {
                    return Err(format!(
                        "TANDEM_APP_HEALTH_URL={url:?}: only http:// URLs are probed"
                    ))
                }
                Err(e) => return Err(format!("TANDEM_APP_HEALTH_URL={url:?}: {e}")),
            }
        }
        ["TANDEM_APP_HEALTH_TCP"] => {
            let addr = var(env, "TANDEM_APP_HEALTH_TCP").unwrap_or_default();
            if addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("TANDEM_APP_HEALTH_TCP={addr:?}: use host:port"));
            }
            Probe::Tcp {
                addr: addr.to_string(),
            }
        }
        ["TANDEM_APP_HEALTH_CMD"] => {
            let line = var(env, "TANDEM_APP_HEALTH_CMD").unwrap_or_default();
            let words = postgres::settings::split_words(line)
                .map_err(|e| format!("TANDEM_APP_HEALTH_CMD: {e}"))?;
            if words.is_empty() {
                return Err("TANDEM_APP_HEALTH_CMD is empty".to_string());
            }
            Probe::Exec {
                argv: words.into_iter().map(OsString::from).collect(),
                env: os_env.to_vec(),
                user: user.cloned(),
            }
        }
        many => {
            return Err(format!(
                "{} are all set: choose one app probe",
                many.join(" and ")
            ))
        }
    };
    let mut health = health_spec(env, "TANDEM_APP", DEFAULT_APP_HEALTH)?;
    health.probe_kind = probe.kind();
    Ok(Some((probe, health)))
}

/// The probes a running tandem would run, for `tandem healthcheck --direct`: the same
/// variables, no process started. Each with its name and timeout.
pub fn direct_probes(
    env: &HashMap<String, String>,
    os_env: &[(OsString, OsString)],
) -> Result<Vec<(String, Probe, Duration)>, String> {
    let mut probes = Vec::new();
    if !matches!(wants_postgres(env)?, Want::Decided(false, _)) {
        let settings = postgres::Settings::from_env(env)?;
        let health = health_spec(env, "TANDEM_PG", DEFAULT_PG_HEALTH)?;
        probes.push((
            "postgres".to_string(),
            postgres_probe(&settings),
            health.timeout,
        ));
    }
    if let Some((probe, health)) = app_health(env, os_env, None)? {
        probes.push(("app".to_string(), probe, health.timeout));
    }
    Ok(probes)
}

/// Differs from one container to the next (its clock and pid), so that replicas started
/// together do not retry in step.
pub(super) fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// `TANDEM_DATABASE_URL_AS`: more names for the database URL, each in the scheme its app
/// reads, e.g. `HIVE_DATABASE_URL=postgresql+psycopg,JDBC_URL=jdbc:postgresql`; a name alone
/// gets `postgresql://`. A variable the user set already keeps its value, as DATABASE_URL does.
fn url_aliases(env: &HashMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let Some(list) = var(env, "TANDEM_DATABASE_URL_AS") else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, scheme) = entry.split_once('=').unwrap_or((entry, "postgresql"));
        let (name, scheme) = (name.trim(), scheme.trim());
        let name_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!(
                "TANDEM_DATABASE_URL_AS: {name:?} is not a variable name (letters, digits and _, e.g. HIVE_DATABASE_URL)"
            ));
        }
        let scheme_ok = scheme == postgres::JDBC_SCHEME
            || (scheme.starts_with(|c: char| c.is_ascii_lowercase())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c)));
        if !scheme_ok {
            return Err(format!(
                "TANDEM_DATABASE_URL_AS: {scheme:?} is not a URL scheme (e.g. postgresql, postgresql+psycopg, postgresql+asyncpg, {})",
                postgres::JDBC_SCHEME
            ));
        }
        out.push((name.to_string(), scheme.to_string()));
    }
    Ok(out)
}

/// The embedded database's settings and binaries, from the environment.
fn find_postgres(
    env: &HashMap<String, String>,
    reaper: &Reaper,
) -> Result<(postgres::Settings, postgres::Binaries), String> {
    let settings = postgres::Settings::from_env(env)?;
    let bins = postgres::locate_binaries(&settings, env, reaper)?;
    Ok((settings, bins))
}

/// What TANDEM_POSTGRES says.
enum Want {
    /// On or off, and why.
    Decided(bool, String),
    /// auto with this variable set: on if PostgreSQL is installed.
    IfInstalled(String),
}

/// Whether the embedded PostgreSQL runs. `auto` (the default) runs it when a `POSTGRES_*`
/// or `PGDATA` variable is set AND PostgreSQL is installed: an app image that only carries
/// `POSTGRES_*` to reach a database elsewhere does not start one.
fn wants_postgres(env: &HashMap<String, String>) -> Result<Want, String> {
    match var(env, "TANDEM_POSTGRES").unwrap_or("auto") {
        "on" | "1" | "true" | "yes" => Ok(Want::Decided(true, "on: TANDEM_POSTGRES=on".into())),
        "off" | "0" | "false" | "no" => Ok(Want::Decided(false, "off: TANDEM_POSTGRES=off".into())),
        "auto" => {
            let mut set: Vec<&str> = env
                .keys()
                .filter(|k| k.starts_with("POSTGRES_") || *k == "PGDATA")
                .map(String::as_str)
                .collect();
            set.sort();
            Ok(match set.first() {
                Some(first) => Want::IfInstalled(first.to_string()),
                None => Want::Decided(
                    false,
                    "off: no POSTGRES_* or PGDATA variable is set (TANDEM_POSTGRES=auto)".into(),
                ),
            })
        }
        other => Err(format!("TANDEM_POSTGRES={other:?}: use on, off or auto")),
    }
}

pub(super) fn os_env_get<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsStr> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> (HashMap<String, String>, Vec<(OsString, OsString)>) {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let os = map.iter().map(|(k, v)| (k.into(), v.into())).collect();
        (map, os)
    }

    fn plan(cmd: &[&str], pairs: &[(&str, &str)]) -> Result<Plan, PlanError> {
        let (map, os) = env(pairs);
        from_env(
            cmd.iter().map(OsString::from).collect(),
            &map,
            &os,
            // Finding PostgreSQL waits for `pg_config`: the test binary's reaper collects it.
            &crate::testutil::reaper(),
        )
    }

    #[test]
    fn app_only_without_postgres_variables() {
        let p = plan(&["sh", "-c", "true"], &[("PATH", "/usr/bin:/bin")]).unwrap();
        assert_eq!(p.services.len(), 1);
        assert!(p.services[0].spec.depends_on.is_empty());
        assert_eq!(p.stop_budget(), DEFAULT_STOP_BUDGET);
    }

    #[test]
    fn postgres_then_app_with_database_url() {
        let p = plan(
            &["sh"],
            &[
                ("PATH", "/usr/bin:/bin"),
                ("POSTGRES_PASSWORD", "pw"),
                ("PGPORT", "6543"),
                ("TANDEM_STOP_TIMEOUT", "3"),
                ("PGUSER", "mine"),
            ],
        )
        .unwrap();
        assert_eq!(p.services[0].spec.name, "postgres");
        assert_eq!(p.services[1].spec.depends_on, vec![(0, Condition::Healthy)]);
        let Launch::Command(c) = &p.services[1].launch else {
            panic!("app is a command")
        };
        let get = |k: &str| os_env_get(&c.env, k).map(|v| v.to_string_lossy().into_owned());
        assert!(get("DATABASE_URL").unwrap().contains(":6543/"));
        assert_eq!(
            get("PGUSER").as_deref(),
            Some("mine"),
            "the user's own value wins"
        );
        assert_eq!(p.stop_budget().as_secs(), 3);
    }

    #[test]
    fn database_url_under_the_apps_own_names_and_schemes() {
        let p = plan(
            &["sh"],
            &[
                ("PATH", "/usr/bin:/bin"),
                ("POSTGRES_USER", "genie"),
                ("POSTGRES_PASSWORD", "s e@cret"),
                ("POSTGRES_DB", "hive_genie"),
                ("PGPORT", "6543"),
                (
                    "TANDEM_DATABASE_URL_AS",
                    "HIVE_DATABASE_URL=postgresql+psycopg, PLAIN_URL ,MINE=postgres",
                ),
                ("MINE", "kept"),
            ],
        )
        .unwrap();
        let Launch::Command(c) = &p.services[1].launch else {
            panic!("app is a command")
        };
        let get = |k: &str| os_env_get(&c.env, k).map(|v| v.to_string_lossy().into_owned());
        assert_eq!(
            get("HIVE_DATABASE_URL").as_deref(),
            Some("postgresql+psycopg://genie:s%20e%40cret@127.0.0.1:6543/hive_genie")
        );
        assert_eq!(
            get("PLAIN_URL").as_deref(),
            Some("postgresql://genie:s%20e%40cret@127.0.0.1:6543/hive_genie")
        );
        assert_eq!(
            get("MINE").as_deref(),
            Some("kept"),
            "the user's own value wins"
        );
        for bad in ["9LIVES=postgresql", "A=Bad Scheme", "A-B"] {
            let e = plan(
                &["sh"],
                &[
                    ("PATH", "/bin"),
                    ("POSTGRES_PASSWORD", "x"),
                    ("TANDEM_DATABASE_URL_AS", bad),
                ],
            )
            .unwrap_err();
            assert!(
                e.message.starts_with("TANDEM_DATABASE_URL_AS: "),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn bad_input_is_one_line_with_the_right_code() {
        let e = plan(&["no-such-cmd-tandem"], &[("PATH", "/usr/bin")]).unwrap_err();
        assert_eq!(e.code, 127);
        assert!(e.message.contains("no-such-cmd-tandem"), "{}", e.message);
        let file =
            std::env::temp_dir().join(format!("tandem-plan-not-exec-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let e = plan(&[file.to_str().unwrap()], &[]).unwrap_err();
        let _ = std::fs::remove_file(&file);
        assert_eq!(e.code, 126);
        let e = plan(
            &["sh"],
            &[("PATH", "/bin"), ("TANDEM_STOP_TIMEOUT", "soon")],
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("TANDEM_STOP_TIMEOUT"),
            "{}",
            e.message
        );
        let e = plan(&[], &[]).unwrap_err();
        assert!(e.message.contains("nothing to run"));
        let e = plan(
            &["sh"],
            &[("PATH", "/bin"), ("TANDEM_APP_RELOAD_SIGNAL", "SIGFOO")],
        )
        .unwrap_err();
        assert!(e.message.contains("TANDEM_APP_RELOAD_SIGNAL"));
    }

    #[test]
    fn the_app_may_be_restarted_in_place() {
        let p = plan(
            &["sh"],
            &[("PATH", "/bin"), ("TANDEM_APP_RESTART", "on-failure")],
        )
        .unwrap();
        let r = p.services[0]
            .spec
            .restart
            .clone()
            .expect("a restart policy");
        assert!(r.on_failure_only);
        let p = plan(&["sh"], &[("PATH", "/bin")]).unwrap();
        assert!(
            p.services[0].spec.restart.is_none(),
            "the default: its exit ends the container"
        );
        let e = plan(
            &["sh"],
            &[("PATH", "/bin"), ("TANDEM_APP_RESTART", "sometimes")],
        )
        .unwrap_err();
        assert!(e.message.starts_with("TANDEM_APP_RESTART"), "{}", e.message);
    }

    #[test]
    fn postgres_alone_is_the_main_service() {
        let p = plan(&[], &[("POSTGRES_PASSWORD", "x")]).unwrap();
        assert_eq!(p.services.len(), 1);
        assert!(p.services[0].spec.main);
    }

    /// A small deterministic generator, so a failure names its case.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random environments built from every variable tandem reads and values that have gone
    /// wrong somewhere (huge numbers, units, quotes, newlines, NULs, paths to devices, names
    /// of users that do not exist, long strings), some mutated further: the zero-config
    /// builder never panics; a refusal is one non-empty line with a non-zero code; neither a
    /// refusal nor an accepted plan's description (`tandem check`) shows the password.
    /// `TANDEM_FUZZ_CASES` runs more (the CI run keeps to 3 000).
    #[test]
    fn random_environments_never_panic_and_never_show_the_password() {
        const PASSWORD: &str = "pw-fuzz-9f3b2c71-never-shown";
        let keys = [
            "POSTGRES_USER",
            "POSTGRES_DB",
            "POSTGRES_USER_FILE",
            "POSTGRES_DB_FILE",
            "POSTGRES_PASSWORD_FILE",
            "POSTGRES_INITDB_ARGS",
            "POSTGRES_INITDB_WALDIR",
            "POSTGRES_HOST_AUTH_METHOD",
            "PGDATA",
            "PGPORT",
            "PG_BINDIR",
            "TANDEM_POSTGRES",
            "TANDEM_STOP_TIMEOUT",
            "TANDEM_STOP_EXIT",
            "TANDEM_PG_START_TIMEOUT",
            "TANDEM_APP_USER",
            "TANDEM_DATABASE_URL_AS",
            "TANDEM_APP_STOP_SIGNAL",
            "TANDEM_APP_RESTART",
            "TANDEM_APP_RELOAD_SIGNAL",
            "TANDEM_INITDB_DIR",
            "TANDEM_PG_SOCKET_DIR",
            "TANDEM_SOCKET",
            "TANDEM_APP_HEALTH_URL",
            "TANDEM_APP_HEALTH_TCP",
            "TANDEM_APP_HEALTH_CMD",
            "TANDEM_APP_HEALTH_INTERVAL",
            "TANDEM_APP_HEALTH_TIMEOUT",
            "TANDEM_APP_HEALTH_RETRIES",
            "TANDEM_APP_HEALTH_START_PERIOD",
            "TANDEM_APP_ON_UNHEALTHY",
            "TANDEM_PG_HEALTH_INTERVAL",
            "TANDEM_PG_HEALTH_TIMEOUT",
            "TANDEM_PG_HEALTH_RETRIES",
            "TANDEM_PG_HEALTH_START_PERIOD",
            "TANDEM_PG_ON_UNHEALTHY",
            "XDG_RUNTIME_DIR",
            "PATH",
        ];
        let long = "a".repeat(70_000);
        let values = [
            "",
            "0",
            "-1",
            "1",
            "9",
            "2.5",
            "500ms",
            "1m",
            "1h",
            "0s",
            "1e400",
            "NaN",
            "inf",
            "99999999999999999999",
            "18446744073709551616",
            "4294967296",
            "65535",
            "65536",
            "on",
            "off",
            "auto",
            "yes",
            "clean",
            "app",
            "no",
            "on-failure",
            "always",
            "restart",
            "report",
            "SIGTERM",
            "TERM",
            "SIGKILL",
            "15",
            "SIGFOO",
            "SIG",
            "http://127.0.0.1:1/",
            "http://[::1",
            "ftp://x/",
            "http://",
            "host:",
            ":80",
            "127.0.0.1:65536",
            "a=b,c",
            "=",
            ",,,",
            "A=Bad Scheme",
            "X=postgresql+psycopg",
            "J=jdbc:postgresql",
            "'",
            "\"",
            "a b 'c d'",
            "\\",
            "--locale=C",
            "-E UTF8 'x",
            "/",
            "/dev/zero",
            "/dev/null",
            "/nonexistent/x",
            "/tmp",
            "relative/path",
            "/usr/lib/postgresql/15/bin",
            "/usr/lib/postgresql",
            "root",
            "nobody",
            "65534",
            "no-such-user-fuzz",
            "é",
            "\u{0}",
            "\n",
            "x\ny",
            "md5\nlocal all all trust",
            "${X}",
            "%",
            "trust",
            "scram-sha-256",
            "/usr/bin:/bin",
            &long,
        ];
        let pieces = [
            "\u{0}", "\n", "'", "\"", "=", ",", ":", "é", "9", "s", " ", "%",
        ];
        let cases: usize = std::env::var("TANDEM_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        let reaper = crate::testutil::reaper();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..cases {
            let mut map: HashMap<String, String> = HashMap::new();
            for _ in 0..rng.below(8) {
                let key = keys[rng.below(keys.len())];
                let mut value: String = values[rng.below(values.len())].to_string();
                if rng.below(4) == 0 {
                    let mut chars: Vec<char> = value.chars().collect();
                    let at = rng.below(chars.len() + 1);
                    chars.insert(
                        at.min(chars.len()),
                        pieces[rng.below(pieces.len())].chars().next().unwrap(),
                    );
                    value = chars.into_iter().collect();
                }
                map.insert(key.to_string(), value);
            }
            if rng.below(3) > 0 {
                map.insert("POSTGRES_PASSWORD".into(), PASSWORD.into());
            }
            // Never a search that runs pg_config: that is a process per case.
            map.entry("PG_BINDIR".into())
                .or_insert_with(|| "/usr/lib/postgresql/15/bin".into());
            let cmd: Vec<OsString> = match rng.below(4) {
                0 => vec![],
                1 => vec!["no-such-command-fuzz".into()],
                _ => vec!["sh".into(), "-c".into(), "true".into()],
            };
            let os: Vec<(OsString, OsString)> =
                map.iter().map(|(k, v)| (k.into(), v.into())).collect();
            let shown = format!("case {case}: {cmd:?} {map:?}");
            // Through `load`, as `tandem run` and `tandem check` get it (no config file:
            // TANDEM_CONFIG is never set here).
            let result = std::panic::catch_unwind(|| {
                super::super::load(None, cmd.clone(), &map, &os, &reaper)
                    .map(|plan| plan.describe())
            });
            match result {
                Err(_) => panic!("{shown}: panicked"),
                Ok(Ok(described)) => {
                    accepted += 1;
                    assert!(!described.contains(PASSWORD), "{shown}: {described}");
                }
                Ok(Err(e)) => {
                    refused += 1;
                    assert!(e.code != 0, "{shown}: code 0 for {:?}", e.message);
                    assert!(!e.message.trim().is_empty(), "{shown}: an empty error");
                    assert!(!e.message.contains('\n'), "{shown}: {:?}", e.message);
                    assert!(!e.message.contains(PASSWORD), "{shown}: {:?}", e.message);
                }
            }
        }
        assert!(
            accepted > cases / 20 && refused > cases / 20,
            "{accepted} accepted, {refused} refused"
        );
    }
}
