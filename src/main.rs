//! tandem: PID 1 for a container that runs an embedded PostgreSQL and an app.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem::config;
use tandem::runtime::{self, process::Reaper};

const AFTER_HELP: &str = "\
Zero configuration: with POSTGRES_* variables set (or TANDEM_POSTGRES=on), tandem
initialises and starts the embedded PostgreSQL exactly as the official postgres image
would, waits until it accepts connections, then runs CMD with DATABASE_URL and PG*
pointing at it. SIGTERM/SIGINT stop the app first and PostgreSQL last (SIGINT, fast
shutdown) within TANDEM_STOP_TIMEOUT (default 9s); tandem exits with the app's code.

Environment: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB (and their _FILE variants),
POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD, PGDATA, PGPORT,
PG_BINDIR, TANDEM_POSTGRES (auto|on|off), TANDEM_STOP_TIMEOUT, TANDEM_APP_USER,
TANDEM_APP_STOP_SIGNAL, TANDEM_APP_RELOAD_SIGNAL, TANDEM_INITDB_DIR,
TANDEM_PG_SOCKET_DIR, TANDEM_LOG_FORMAT (json), TANDEM_LOG (debug|info|warn).

Exit codes: the app's (128+N if killed by signal N); 1 tandem could not start (bad
input, initialisation failed); 2 usage; 3 a required service failed while running;
126/127 the command is not executable / not found.";

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "PID 1 for all-in-one containers: embedded PostgreSQL, then the app, stopped cleanly",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
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
    /// Supervise the embedded PostgreSQL and CMD until stopped (the default).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tandem::logs::init(std::env::var("TANDEM_LOG_FORMAT").is_ok_and(|v| v == "json"));
    let code = match cli.command {
        None => run(cli.cmd),
        Some(Command::Run { cmd }) => run(cmd),
        Some(Command::Check { cmd }) => check(cmd),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The environment twice: as text for the variables tandem reads, and as it is for the
/// children (values that are not UTF-8 pass through untouched).
fn environment() -> (HashMap<String, String>, Vec<(OsString, OsString)>) {
    let os: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let text = os
        .iter()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v.to_str()?.to_string())))
        .collect();
    (text, os)
}

fn check(cmd: Vec<OsString>) -> i32 {
    let (env, os_env) = environment();
    match config::from_env(cmd, &env, &os_env, &Reaper::new()) {
        Ok(plan) => {
            print!("{}", plan.describe());
            0
        }
        Err(e) => {
            tracing::error!("{}", e.message);
            e.code
        }
    }
}

fn run(cmd: Vec<OsString>) -> i32 {
    // Block signals before any thread exists, so every thread inherits the mask and only
    // the signal thread ever sees them.
    let set = match runtime::block_signals() {
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
    if let Err(e) = runtime::spawn_signal_thread(set, reaper.clone(), tx.clone()) {
        return fail(&e);
    }
    let (env, os_env) = environment();
    let plan = match config::from_env(cmd, &env, &os_env, &reaper) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!("{}", e.message);
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
    rt.block_on(runtime::run(plan, reaper, rx, tx))
}

fn fail(message: &str) -> i32 {
    tracing::error!("{message}");
    tandem::supervisor::EXIT_START_FAILED
}
