//! tandem: PID 1 for a container that runs an embedded PostgreSQL and an app.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tandem::api::{self, HealthReport, Reaper, Request, Response, ServiceHealth};

const AFTER_HELP: &str = "\
Zero configuration: with POSTGRES_* variables set and PostgreSQL installed (or
TANDEM_POSTGRES=on), tandem initialises and starts the embedded PostgreSQL exactly as the
official postgres image would, waits until it accepts connections, then runs CMD with
DATABASE_URL and PG* pointing at it. More (several services, oneshots, restarts, a
database elsewhere): a config file, --config PATH or TANDEM_CONFIG (see examples/tandem.toml). SIGTERM/SIGINT stop the app first and PostgreSQL last (SIGINT, fast
shutdown) within TANDEM_STOP_TIMEOUT (default 9s).

Environment: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB (and their _FILE variants),
POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD, PGDATA, PGPORT,
PG_BINDIR, TANDEM_POSTGRES (auto|on|off), TANDEM_STOP_TIMEOUT, TANDEM_STOP_EXIT
(clean|app), TANDEM_PG_START_TIMEOUT, TANDEM_APP_USER, TANDEM_APP_STOP_SIGNAL,
TANDEM_APP_RESTART (no|on-failure|always),
TANDEM_APP_RELOAD_SIGNAL, TANDEM_INITDB_DIR, TANDEM_PG_SOCKET_DIR, TANDEM_DATABASE_URL_AS
(NAME=SCHEME,...: the database URL under the app's own names and schemes), TANDEM_SOCKET
(default /run/tandem.sock as root), TANDEM_HTTP (IP:PORT: /healthz, /readyz, /metrics),
TANDEM_LOG_FORMAT (json), TANDEM_LOG (debug|info|warn).

Versions and passwords: a PGDATA of an older PostgreSQL major is refused unless
TANDEM_PG_UPGRADE=auto, which upgrades it in place with pg_upgrade, crash-safe (old programs in
/usr/lib/postgresql/OLD/bin or TANDEM_PG_OLD_BINDIR; TANDEM_PG_UPGRADE_MODE auto|link|copy;
TANDEM_PG_UPGRADE_KEEP_OLD=on keeps the old files). A POSTGRES_PASSWORD that is not the stored
one is reported; TANDEM_PG_SYNC_PASSWORD=on stores it.

Health: TANDEM_APP_HEALTH_URL, TANDEM_APP_HEALTH_TCP or TANDEM_APP_HEALTH_CMD give the app a
probe; PostgreSQL always has one. TANDEM_{APP,PG}_HEALTH_{INTERVAL,TIMEOUT,RETRIES,START_PERIOD}
and TANDEM_{APP,PG}_ON_UNHEALTHY (restart|report) tune them.

Exit codes: 0 after a stop that went as asked (the app ended by tandem's stop signal,
never ran, or waited to be restarted; TANDEM_STOP_EXIT=app keeps the app's code); else the
app's (128+N if killed by signal N); 1 tandem could not start (bad input, initialisation
failed, PostgreSQL not ready in time); 2 usage; 3 a required service failed while running;
126/127 the command is not executable / not found.";

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "PID 1 for all-in-one containers: embedded PostgreSQL, then the app, stopped cleanly",
    after_help = AFTER_HELP,
    subcommand_precedence_over_arg = true
)]
struct Cli {
    /// The config file (default: TANDEM_CONFIG, else /etc/tandem/tandem.toml when it
    /// exists, else the environment alone).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// The app to run (same as `tandem run -- CMD...`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    cmd: Vec<OsString>,
}

#[derive(Subcommand)]
enum Command {
    /// Supervise the services until stopped: the embedded PostgreSQL and CMD, or the config
    /// file's (the default).
    Run {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        cmd: Vec<OsString>,
    },
    /// Print what would run, in which order, and how it would stop; start nothing.
    Check {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        cmd: Vec<OsString>,
    },
    /// Ask the running tandem to probe every service now; one line, exit 0 if healthy, 1 if
    /// not (Docker's HEALTHCHECK contract).
    Healthcheck {
        /// Run the probes here, from the environment, without asking the running tandem.
        #[arg(long)]
        direct: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Give up after this long (e.g. 10s, 500ms).
        #[arg(long, default_value = "10s", value_parser = api::parse_duration)]
        timeout: Duration,
    },
    /// Show the running tandem's services: state, health, pid, uptime, restarts, last probe;
    /// and where the start's (and a stop's) time went.
    Status {
        /// Print the table as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the running tandem's lifecycle events (spawned, ready, unhealthy, restart
    /// scheduled, stop steps, exits, PostgreSQL's first-start steps), from the history it
    /// keeps, then live until interrupted or tandem exits.
    Events {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    api::init_logs(std::env::var("TANDEM_LOG_FORMAT").is_ok_and(|v| v == "json"));
    let code = match cli.command {
        None => run(cli.config, cli.cmd),
        Some(Command::Run { cmd }) => run(cli.config, cmd),
        Some(Command::Check { cmd }) => check(cli.config, cmd),
        Some(Command::Healthcheck {
            direct: false,
            json,
            timeout,
        }) => healthcheck(cli.config, json, timeout),
        Some(Command::Healthcheck {
            direct: true,
            json,
            timeout,
        }) => healthcheck_direct(json, timeout),
        Some(Command::Status { json }) => status(cli.config, json),
        Some(Command::Events { json }) => events(cli.config, json),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The environment as text (the variables tandem reads) and as it is (for the children).
type Environment = (HashMap<String, String>, Vec<(OsString, OsString)>);

/// The environment twice: as text for the variables tandem reads, and as it is for the
/// children (values that are not UTF-8 pass through untouched). A variable tandem reads
/// whose value is not UTF-8 is an error naming it, never silently dropped.
fn environment() -> Result<Environment, String> {
    let os: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let mut text = HashMap::new();
    for (k, v) in &os {
        let Some(name) = k.to_str() else { continue };
        match v.to_str() {
            Some(value) => {
                text.insert(name.to_string(), value.to_string());
            }
            None if api::reads_variable(name) => {
                return Err(format!(
                    "{name} is not valid UTF-8 ({}); tandem reads it as text: set it to UTF-8 (or unset it)",
                    String::from_utf8_lossy(v.as_encoded_bytes()).escape_debug()
                ));
            }
            None => {}
        }
    }
    Ok((text, os))
}

fn check(config: Option<PathBuf>, cmd: Vec<OsString>) -> i32 {
    let (env, os_env) = match environment() {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    // Finding PostgreSQL runs `pg_config` and `postgres --version`; someone must reap them.
    let reaper = Reaper::new();
    if let Err(e) = api::spawn_reaper_thread(reaper.clone()) {
        return fail(&e);
    }
    match api::load(config, cmd, &env, &os_env, &reaper) {
        Ok(plan) => {
            print!("{}", plan.describe());
            0
        }
        Err(e) => {
            // One line per problem: a config file's are all reported at once.
            for line in e.message.lines() {
                tracing::error!("{line}");
            }
            e.code
        }
    }
}

fn run(config: Option<PathBuf>, cmd: Vec<OsString>) -> i32 {
    // Block signals before any thread exists, so every thread inherits the mask and only
    // the signal thread ever sees them.
    let set = match api::block_signals() {
        Ok(set) => set,
        Err(e) => return fail(&e),
    };
    // Orphans of our children come to us even when we are not PID 1 (a laptop, `--init`).
    if std::process::id() != 1 {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!("cannot become a child subreaper ({e}); orphans will go to PID 1");
        }
    }
    let reaper = Reaper::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if let Err(e) = api::spawn_signal_thread(set, reaper.clone(), tx.clone()) {
        return fail(&e);
    }
    let (env, os_env) = match environment() {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let plan = match api::load(config, cmd, &env, &os_env, &reaper) {
        Ok(plan) => plan,
        Err(e) => {
            // One line per problem: a config file's are all reported at once.
            for line in e.message.lines() {
                tracing::error!("{line}");
            }
            return e.code;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the event loop: {e}")),
    };
    rt.block_on(api::run(plan, reaper, rx, tx))
}

/// Where the running tandem listens: the same rule as when it started.
/// Where the running tandem listens: the same rule as when it started, the config file's
/// `[tandem] socket` included.
fn socket_path(config: Option<PathBuf>) -> PathBuf {
    let env: HashMap<String, String> = std::env::vars().collect();
    api::client_socket(config, &env)
}

/// Prints a health report as one line (or JSON); 0 when healthy, 1 otherwise.
fn report_health(report: &HealthReport, json: bool) -> i32 {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        println!("{}", report.line());
    }
    i32::from(!report.healthy)
}

/// Anything but a health report means unhealthy, with the reason on the one line.
fn unhealthy(reason: &str, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::json!({ "healthy": false, "error": reason })
        );
    } else {
        println!("unhealthy: {reason}");
    }
    1
}

fn healthcheck(config: Option<PathBuf>, json: bool, timeout: Duration) -> i32 {
    match api::request(&socket_path(config), Request::Health, timeout) {
        Ok(Response::Health(report)) => report_health(&report, json),
        Ok(Response::Error { message }) => unhealthy(&message, json),
        Ok(_) => unhealthy("unexpected answer from tandem", json),
        Err(e) => unhealthy(&e, json),
    }
}

/// The same probes as a running tandem, run here: for debugging, and where the running
/// tandem's socket is out of reach.
fn healthcheck_direct(json: bool, timeout: Duration) -> i32 {
    let (env, os_env) = match environment() {
        Ok(e) => e,
        Err(e) => return unhealthy(&e, json),
    };
    let probes = match api::direct_probes(&env, &os_env) {
        Ok(p) if p.is_empty() => {
            return unhealthy(
                "nothing to probe: set POSTGRES_* or TANDEM_APP_HEALTH_URL",
                json,
            )
        }
        Ok(p) => p,
        Err(e) => return unhealthy(&e, json),
    };
    let reaper = Reaper::new();
    if let Err(e) = api::spawn_reaper_thread(reaper.clone()) {
        return unhealthy(&e, json);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return unhealthy(&format!("cannot start the event loop: {e}"), json),
    };
    let results = rt.block_on(async {
        let prober = api::Prober::new(reaper)?;
        let each = probes
            .iter()
            .map(|(_, probe, t)| Some((probe.clone(), (*t).min(timeout))))
            .collect();
        Ok::<_, String>(prober.run_all(each).await)
    });
    let results = match results {
        Ok(r) => r,
        Err(e) => return unhealthy(&e, json),
    };
    let services = probes
        .iter()
        .zip(results)
        .map(|((name, probe, _), r)| ServiceHealth::from_probe(name, probe.kind(), r.as_ref()))
        .collect();
    report_health(&HealthReport::of(services), json)
}

fn status(config: Option<PathBuf>, json: bool) -> i32 {
    let answer = api::request(
        &socket_path(config),
        Request::Status,
        Duration::from_secs(5),
    );
    let message = match answer {
        Ok(Response::Status(report)) => {
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{}", report.table());
            }
            return 0;
        }
        Ok(Response::Error { message }) => message,
        Ok(_) => "unexpected answer from tandem".to_string(),
        Err(e) => e,
    };
    eprintln!("tandem status: {message}");
    1
}

fn events(config: Option<PathBuf>, json: bool) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let watched = api::watch_events(&socket_path(config), |line, record| {
        if json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", record.line())?;
        }
        out.flush()
    });
    match watched {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tandem events: {e}");
            1
        }
    }
}

fn fail(message: &str) -> i32 {
    tracing::error!("{message}");
    api::EXIT_START_FAILED
}
