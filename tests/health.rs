//! Health (issue 3): probes, the control socket, `tandem healthcheck` and `tandem status`,
//! against a real PostgreSQL 15, the real test app (whose `/health` is switched to 503 and
//! back from the test) and a real tandem as PID 1 of its own pid namespace.
//!
//! `tandem healthcheck` and `tandem status` are run from the test, outside the namespace, as
//! `docker exec` would run them: a fresh process with the container's environment that talks
//! to the running tandem over its control socket (or, with `--direct`, probes by itself).
//! Every wait polls a condition until a generous deadline; any failure prints tandem's log.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use support::*;

/// Environment variables a `tandem healthcheck` or `tandem status` run inherits from the
/// container (copied from the test's [`Env`] when set there).
const CONTAINER_VARS: &[&str] = &[
    "PGDATA",
    "PGPORT",
    "TANDEM_PG_SOCKET_DIR",
    "TANDEM_INITDB_DIR",
    "TANDEM_SOCKET",
    "TESTAPP_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "POSTGRES_INITDB_ARGS",
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
];

/// How long a health line may take to follow reality when the periodic probes are what
/// must notice (retries x interval, plus slack for a busy 2-core box and debug builds).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);

/// The outcome of one `tandem healthcheck` / `tandem status` run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {} stdout {:?} stderr {:?}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The single line a healthcheck prints (fails on anything but exactly one line).
    fn line(&self) -> &str {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "healthcheck must print exactly one line: {}",
            self.describe()
        );
        lines[0]
    }
}

/// Runs the tandem CLI with exactly `vars` (plus PATH) as its environment.
fn cli_with(vars: &BTreeMap<String, String>, args: &[&str]) -> Run {
    let output = Command::new(tandem_bin())
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .envs(vars)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run the tandem CLI");
    Run {
        code: output
            .status
            .code()
            .unwrap_or_else(|| panic!("the tandem CLI died of a signal: {:?}", output.status)),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The container's environment as a `docker exec` would see it, with `overrides` applied
/// (an empty value removes the variable).
fn container_env(env: &Env, overrides: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = CONTAINER_VARS
        .iter()
        .filter_map(|k| Some((k.to_string(), env.get(k)?.to_string())))
        .collect();
    for (k, v) in overrides {
        if v.is_empty() {
            vars.remove(*k);
        } else {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    vars
}

/// `tandem ARGS` with the container's environment.
fn cli(env: &Env, args: &[&str]) -> Run {
    cli_with(&container_env(env, &[]), args)
}

fn healthcheck(env: &Env) -> Run {
    cli(env, &["healthcheck"])
}

/// `tandem status --json`, parsed; `None` when it did not answer with a status.
fn status_json(env: &Env) -> Option<Value> {
    let run = cli(env, &["status", "--json"]);
    if run.code != 0 {
        return None;
    }
    serde_json::from_str(run.stdout.trim()).ok()
}

/// The row of service `name` in a `status --json` answer.
fn service<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// Polls `tandem healthcheck` until it exits with `code`; fails with the last run and the log.
fn wait_healthcheck(tandem: &mut Tandem, env: &Env, code: i32, timeout: Duration) -> Run {
    let mut last = None;
    let found = poll_until(timeout, || {
        let run = healthcheck(env);
        if run.code == code {
            return Some(run);
        }
        last = Some(run.describe());
        None
    });
    match found {
        Some(run) => run,
        None => tandem.fail(&format!(
            "healthcheck did not exit {code} within {timeout:?}; last: {last:?}"
        )),
    }
}

/// Polls `tandem status --json` until `pred` holds for it; returns that answer.
fn wait_status(
    tandem: &mut Tandem,
    env: &Env,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = None;
    let found = poll_until(timeout, || {
        let status = status_json(env)?;
        if pred(&status) {
            return Some(status);
        }
        last = Some(status);
        None
    });
    match found {
        Some(status) => status,
        None => tandem.fail(&format!(
            "status never showed {what} within {timeout:?}; last: {last:?}"
        )),
    }
}

/// Whether service `name` is running with the given health in a status answer.
fn is(status: &Value, name: &str, health: &str) -> bool {
    service(status, name).is_some_and(|s| s["state"] == "running" && s["health"] == health)
}

/// Zero-config environment for PostgreSQL + the test app with an HTTP probe on `/health`.
fn env_with_http_probe(sandbox: &Sandbox) -> Env {
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"));
    env
}

/// Starts tandem (PID 1) and waits until the app listens and `tandem healthcheck` says 0.
fn start_healthy(env: &Env) -> Tandem {
    let mut tandem = Tandem::start(env);
    tandem.wait_app_ready();
    wait_healthcheck(&mut tandem, env, 0, START_TIMEOUT);
    tandem
}

/// The app's pid as it sees it (its pid in tandem's namespace).
fn app_pid(tandem: &Tandem, sandbox: &Sandbox) -> i64 {
    let body = tandem.app_ok(sandbox, "GET", "/pid");
    body.trim()
        .parse()
        .unwrap_or_else(|_| tandem.fail(&format!("GET /pid answered {body:?}")))
}

/// The zombies in `tandem`'s pid namespace.
fn zombies(tandem_pid: Pid) -> Vec<Proc> {
    procs_in_namespace_of(tandem_pid)
        .into_iter()
        .filter(|p| p.state == 'Z')
        .collect()
}

/// Processes in the namespace that are neither tandem, PostgreSQL nor the app.
fn strays(tandem_pid: Pid) -> Vec<Proc> {
    procs_in_namespace_of(tandem_pid)
        .into_iter()
        .filter(|p| !matches!(p.comm.as_str(), "tandem" | "postgres" | "testapp"))
        .collect()
}

/// Waits until the namespace holds no zombie and no stray process; fails with what it saw.
fn wait_no_zombie(tandem: &Tandem, what: &str) {
    let pid = tandem.pid();
    let mut last = (Vec::new(), Vec::new());
    let clean = poll_until(SHORT_TIMEOUT, || {
        last = (zombies(pid), strays(pid));
        (last.0.is_empty() && last.1.is_empty()).then_some(())
    });
    if clean.is_none() {
        tandem.fail(&format!(
            "{what}: zombies {:?}, stray processes {:?} in tandem's pid namespace",
            last.0, last.1
        ));
    }
}

/// Open file descriptors of a process.
fn fd_count(pid: Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The command line of a process, arguments separated by spaces.
fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    Some(words.join(" "))
}

/// 1. `tandem healthcheck` probes now: its exit code follows the app's health at once, with
///    no periodic probe in between (the interval is an hour, so a cached answer would be
///    stale), and comes back when the app does.
#[test]
fn healthcheck_exit_code_follows_the_app_health() {
    let sandbox = Sandbox::new("hc-follows");
    let mut env = env_with_http_probe(&sandbox);
    env.set("TANDEM_APP_ON_UNHEALTHY", "report")
        .set("TANDEM_APP_HEALTH_INTERVAL", "60m");
    let mut tandem = start_healthy(&env);

    let run = healthcheck(&env);
    let line = run.line();
    if run.code != 0 || !line.starts_with("healthy: postgres ok ") || !line.contains(", app ok ") {
        tandem.fail(&format!("healthy services: {}", run.describe()));
    }

    for round in 1..=2 {
        tandem.app_ok(&sandbox, "POST", "/health/bad");
        // The very next healthcheck must see it: it asks tandem to probe now.
        let run = healthcheck(&env);
        let line = run.line();
        if run.code != 1 || !line.starts_with("unhealthy: ") || !line.contains("app http 503") {
            tandem.fail(&format!(
                "round {round}, app forced bad: {}",
                run.describe()
            ));
        }
        if line.contains("postgres") {
            tandem.fail(&format!(
                "round {round}: only what is wrong is listed, postgres is fine: {line:?}"
            ));
        }
        // Machines get the same verdict.
        let json = cli(&env, &["healthcheck", "--json"]);
        let report: Value = serde_json::from_str(json.stdout.trim())
            .unwrap_or_else(|e| tandem.fail(&format!("--json: {e}: {}", json.describe())));
        let app = report["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "app"));
        let ok = json.code == 1
            && report["healthy"] == false
            && app.is_some_and(|a| a["healthy"] == false && a["detail"] == "http 503");
        if !ok {
            tandem.fail(&format!("round {round}, --json: {}", json.describe()));
        }

        tandem.app_ok(&sandbox, "POST", "/health/good");
        let run = healthcheck(&env);
        if run.code != 0 || !run.line().starts_with("healthy: ") {
            tandem.fail(&format!(
                "round {round}, app good again: {}",
                run.describe()
            ));
        }
    }

    // report: nobody restarted the app.
    if tandem.log.contains("restarting app") {
        tandem.fail("the app was restarted although TANDEM_APP_ON_UNHEALTHY=report");
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_secret_absent();
    tandem.assert_no_panic();
}

/// 2. With `on_unhealthy = restart` (the app's default) the app is stopped with its stop
///    signal after `retries` consecutive failures and started again; the container keeps
///    running and is healthy again.
#[test]
fn unhealthy_app_is_restarted_after_retries() {
    let sandbox = Sandbox::new("hc-restart");
    let mut env = env_with_http_probe(&sandbox);
    env.set("TANDEM_APP_HEALTH_INTERVAL", "200ms")
        .set("TANDEM_APP_HEALTH_RETRIES", "3")
        .set("TANDEM_APP_HEALTH_START_PERIOD", "0s");
    let mut tandem = start_healthy(&env);
    let status = wait_status(&mut tandem, &env, "app healthy", FOLLOW_TIMEOUT, |s| {
        is(s, "app", "healthy")
    });
    let first_pid = app_pid(&tandem, &sandbox);
    let app = service(&status, "app").unwrap();
    let pg_pid = service(&status, "postgres").unwrap()["pid"].clone();
    if app["pid"] != first_pid || app["restarts"] != 0 {
        tandem.fail(&format!("app before: pid {first_pid}, status {app}"));
    }

    tandem.app_ok(&sandbox, "POST", "/health/bad");
    // Three failures 200 ms apart, then the restart: well inside the deadline.
    tandem.wait_for_line("starting it again (restart 1)", FOLLOW_TIMEOUT);
    let unhealthy = tandem
        .own_lines()
        .into_iter()
        .find(|l| l.contains("app is unhealthy ("))
        .unwrap_or_else(|| tandem.fail("no `app is unhealthy (` line"));
    if !unhealthy.contains("http 503") || !unhealthy.contains("(3 failed probes in a row)") {
        tandem.fail(&format!(
            "unhealthy line should name http 503 after exactly 3 tries: {unhealthy:?}"
        ));
    }
    // tandem's own lines share one stream, so their order is reliable; the app's lines come
    // through another pipe, so only their presence is.
    let order = [
        tandem.log.position("app is unhealthy ("),
        tandem.log.position("restarting app (SIGTERM)"),
        // The stop signal ended it (exit 0), not SIGKILL.
        tandem
            .log
            .position("app exited with code 0; starting it again (restart 1)"),
    ];
    if order.iter().any(Option::is_none) || !order.windows(2).all(|w| w[0] < w[1]) {
        tandem.fail(&format!(
            "expected unhealthy -> restarting (SIGTERM) -> exited 0 and started again, \
             positions {order:?}"
        ));
    }
    if !tandem.log.contains("app | testapp SIGTERM") {
        tandem.fail("the app did not report its SIGTERM");
    }

    // The new app (healthy: its forced-bad state was in the old process's memory).
    let status = wait_status(
        &mut tandem,
        &env,
        "the restarted app healthy",
        FOLLOW_TIMEOUT,
        |s| {
            is(s, "app", "healthy")
                && service(s, "app").is_some_and(|a| a["restarts"] == 1 && a["pid"] != first_pid)
        },
    );
    let second_pid = app_pid(&tandem, &sandbox);
    let app = service(&status, "app").unwrap();
    if second_pid == first_pid || app["pid"] != second_pid {
        tandem.fail(&format!(
            "pid before {first_pid}, the app now says {second_pid}, status {app}"
        ));
    }
    let pg = service(&status, "postgres").unwrap();
    if pg["pid"] != pg_pid || pg["restarts"] != 0 || !is(&status, "postgres", "healthy") {
        tandem.fail(&format!("postgres must be untouched: {pg}"));
    }
    let run = healthcheck(&env);
    if run.code != 0 {
        tandem.fail(&format!(
            "healthcheck after the restart: {}",
            run.describe()
        ));
    }
    if tandem.poll_exit().is_some() {
        tandem.fail("the container stopped");
    }
    if tandem.log.count("starting it again") != 1 {
        tandem.fail("the app was restarted more than once");
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_no_panic();
}

/// 3. The password of an existing volume does not change with POSTGRES_PASSWORD: the
///    `postgres` probe logs in for real and says so, where `pg_isready` is satisfied. The
///    default policy for PostgreSQL is to report, not restart.
#[test]
fn wrong_database_password_is_unhealthy_where_pg_isready_says_ok() {
    let sandbox = Sandbox::new("hc-password");
    let mut env = sandbox.env_with_db();
    env.set("POSTGRES_INITDB_ARGS", "--auth-host=scram-sha-256")
        .set("POSTGRES_PASSWORD", "first-password-A");
    let mut first = start_healthy(&env);
    let run = healthcheck(&env);
    if run.code != 0 || !run.line().contains("postgres ok") {
        first.fail(&format!("right password: {}", run.describe()));
    }
    assert_eq!(first.stop(), 0);

    env.set("POSTGRES_PASSWORD", "second-password-B")
        .set("TANDEM_PG_HEALTH_INTERVAL", "300ms");
    let mut tandem = Tandem::start(&env);
    tandem.wait_for_line("postgres is ready", START_TIMEOUT);
    if !tandem.log.contains("already holds a database") {
        tandem.fail("the second start did not reuse PGDATA");
    }

    let run = healthcheck(&env);
    let line = run.line().to_string();
    if run.code != 1
        || !line.starts_with("unhealthy: postgres ")
        || !line.contains("password authentication failed")
    {
        tandem.fail(&format!("wrong password: {}", run.describe()));
    }
    for secret in ["first-password-A", "second-password-B"] {
        if run.stdout.contains(secret) || run.stderr.contains(secret) {
            tandem.fail(&format!(
                "healthcheck printed a password: {}",
                run.describe()
            ));
        }
    }

    // What the images ran before: the server is up, so pg_isready says OK.
    let pg_isready = Command::new("/usr/lib/postgresql/15/bin/pg_isready")
        .args(["-h", "127.0.0.1", "-p", &sandbox.pg_port.to_string()])
        .output()
        .expect("cannot run pg_isready");
    if pg_isready.status.code() != Some(0) {
        tandem.fail(&format!(
            "pg_isready should exit 0 against the running server: {pg_isready:?}"
        ));
    }

    // The periodic probe sees it too: reported after 3 tries, PostgreSQL is not restarted.
    tandem.wait_for_line("postgres is unhealthy (", FOLLOW_TIMEOUT);
    let status = wait_status(
        &mut tandem,
        &env,
        "postgres unhealthy",
        FOLLOW_TIMEOUT,
        |s| is(s, "postgres", "unhealthy"),
    );
    let pg = service(&status, "postgres").unwrap();
    let postmaster = postmaster_pid(&sandbox.pgdata).map(i64::from);
    if pg["restarts"] != 0 || pg["pid"].as_i64() != postmaster {
        tandem.fail(&format!(
            "postgres must stay up and unrestarted (postmaster.pid {postmaster:?}): {pg}"
        ));
    }
    let last = pg["last_probe"].as_str().unwrap_or_default();
    if !last.contains("password authentication failed") {
        tandem.fail(&format!("status last probe: {pg}"));
    }
    if tandem.log.contains("restarting postgres") || tandem.poll_exit().is_some() {
        tandem.fail("postgres' default policy is report: no restart, no stop");
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_secret_absent();
    tandem.assert_no_panic();
}

/// 4. No tandem: a missing socket, a stale socket file nobody listens on (made by hand, and
///    left by a tandem that was SIGKILLed), and a socket whose listener never answers.
#[test]
fn healthcheck_without_a_running_tandem_exits_1_with_a_reason() {
    let sandbox = Sandbox::new("hc-no-tandem");
    let vars = |socket: &Path| {
        BTreeMap::from([(
            "TANDEM_SOCKET".to_string(),
            socket.to_str().unwrap().to_string(),
        )])
    };

    // Nothing at the path (not even its directory).
    let missing = sandbox.root.join("no-such-dir").join("tandem.sock");
    let run = cli_with(&vars(&missing), &["healthcheck"]);
    let expected = format!(
        "unhealthy: tandem is not running (no socket at {})",
        missing.display()
    );
    assert_eq!(run.code, 1, "missing socket: {}", run.describe());
    assert_eq!(run.line(), expected, "missing socket: {}", run.describe());
    let json = cli_with(&vars(&missing), &["healthcheck", "--json"]);
    let report: Value = serde_json::from_str(json.stdout.trim())
        .unwrap_or_else(|e| panic!("--json: {e}: {}", json.describe()));
    assert_eq!(json.code, 1, "{}", json.describe());
    assert_eq!(report["healthy"], false, "{}", json.describe());
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("not running")),
        "{}",
        json.describe()
    );
    let status = cli_with(&vars(&missing), &["status"]);
    assert_eq!(status.code, 1, "status: {}", status.describe());
    assert!(
        status.stderr.contains("tandem is not running"),
        "status: {}",
        status.describe()
    );

    // A socket file whose listener is gone.
    let stale = sandbox.root.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(std::fs::symlink_metadata(&stale)
        .unwrap()
        .file_type()
        .is_socket());
    let run = cli_with(&vars(&stale), &["healthcheck"]);
    assert_eq!(run.code, 1, "stale socket: {}", run.describe());
    assert_eq!(
        run.line(),
        format!(
            "unhealthy: tandem is not running (nothing listening on {})",
            stale.display()
        ),
        "stale socket: {}",
        run.describe()
    );

    // Something accepts connections but never answers: bounded by --timeout.
    let mute = sandbox.root.join("mute.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&mute).unwrap();
    let run = cli_with(&vars(&mute), &["healthcheck", "--timeout", "500ms"]);
    assert_eq!(run.code, 1, "mute listener: {}", run.describe());
    assert!(
        run.line().starts_with("unhealthy: ") && run.line().contains("not answering"),
        "mute listener: {}",
        run.describe()
    );

    // The stale socket a killed tandem leaves behind (app only: no PostgreSQL needed here).
    let socket = sandbox.root.join("killed.sock");
    let mut env = Env::default();
    env.set("TANDEM_SOCKET", socket.to_str().unwrap())
        .set("TESTAPP_PORT", &sandbox.app_port.to_string());
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    wait_healthcheck(&mut tandem, &env, 0, SHORT_TIMEOUT);
    tandem.signal(Signal::SIGKILL);
    tandem.wait_exit(STOP_TIMEOUT);
    if !socket.exists() {
        tandem.fail("expected the SIGKILLed tandem to leave its socket file");
    }
    let run = healthcheck(&env);
    if run.code != 1
        || !run
            .line()
            .contains("tandem is not running (nothing listening on")
    {
        tandem.fail(&format!("socket of a killed tandem: {}", run.describe()));
    }
    // The next tandem replaces the stale file and answers on it.
    let mut next = Tandem::start(&env);
    next.wait_app_ready();
    wait_healthcheck(&mut next, &env, 0, SHORT_TIMEOUT);
    assert_eq!(next.stop(), 0);
}

/// 5. The control socket is a socket of mode 0600 while tandem runs, and gone after it exits.
#[test]
fn control_socket_is_0600_and_removed_on_exit() {
    let sandbox = Sandbox::new("hc-socket");
    let env = env_with_http_probe(&sandbox);
    let mut tandem = start_healthy(&env);
    let meta = std::fs::symlink_metadata(&sandbox.control_socket)
        .unwrap_or_else(|e| tandem.fail(&format!("no control socket: {e}")));
    if !meta.file_type().is_socket() {
        tandem.fail(&format!("not a socket: {:?}", meta.file_type()));
    }
    if meta.mode() & 0o777 != 0o600 {
        tandem.fail(&format!(
            "socket mode {:o}, expected 600",
            meta.mode() & 0o777
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        tandem.fail(&format!("socket owned by uid {}", meta.uid()));
    }
    // No staging directory left next to it.
    let leftovers: Vec<String> = std::fs::read_dir(&sandbox.root)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".tandem.sock"))
        .collect();
    if !leftovers.is_empty() {
        tandem.fail(&format!(
            "staging files left next to the socket: {leftovers:?}"
        ));
    }

    // What 0600 means: another user cannot talk to tandem (root bypasses the mode, so only
    // checked when the test can run the CLI as `nobody`).
    match as_nobody(&env) {
        Ok(run) => {
            let expected = format!(
                "unhealthy: permission denied on {}",
                sandbox.control_socket.display()
            );
            if run.code != 1 || run.line() != expected {
                tandem.fail(&format!("healthcheck as nobody: {}", run.describe()));
            }
        }
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set, so the other-user check may not be skipped: {why}"
            );
            eprintln!("not checked as another user: {why}");
        }
    }

    assert_eq!(tandem.stop(), 0);
    if sandbox.control_socket.exists() {
        tandem.fail("the control socket is still there after tandem exited");
    }
    let run = healthcheck(&env);
    assert_eq!(run.code, 1, "after exit: {}", run.describe());
    assert!(
        run.line().contains("tandem is not running (no socket at"),
        "after exit: {}",
        run.describe()
    );
}

/// `tandem healthcheck` as uid/gid 65534; `Err` when this test cannot run it so (not root,
/// or the binary is out of that user's reach).
fn as_nobody(env: &Env) -> Result<Run, String> {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        return Err("the test does not run as root".into());
    }
    let output = Command::new(tandem_bin())
        .arg("healthcheck")
        .env_clear()
        .env("PATH", PATH)
        .envs(container_env(env, &[]))
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} as nobody: {e}", tandem_bin().display()))?;
    match output.status.code() {
        Some(126) | Some(127) => Err(format!(
            "{} not executable as nobody",
            tandem_bin().display()
        )),
        Some(code) => Ok(Run {
            code,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }),
        None => Err(format!("killed: {:?}", output.status)),
    }
}

/// Runs `n` consecutive healthchecks that must all say healthy with `expect` in their line.
fn many_healthchecks(tandem: &Tandem, env: &Env, n: usize, expect: &str) {
    for i in 0..n {
        let run = healthcheck(env);
        if run.code != 0 || !run.line().contains(expect) {
            tandem.fail(&format!("healthcheck {i} of {n}: {}", run.describe()));
        }
    }
}

/// 6a. 1 000 consecutive healthchecks (postgres + http probes) leave no zombie, no stray
///     process and no leaked descriptor in tandem's pid namespace.
#[test]
fn thousand_healthchecks_leave_no_zombie() {
    let sandbox = Sandbox::new("hc-thousand");
    let env = env_with_http_probe(&sandbox);
    let mut tandem = start_healthy(&env);
    let pid = tandem.pid();
    wait_no_zombie(&tandem, "before");
    let fds_before = fd_count(pid);

    let started = Instant::now();
    many_healthchecks(&tandem, &env, 1000, ", app ok ");
    eprintln!("1000 healthchecks took {:?}", started.elapsed());

    wait_no_zombie(&tandem, "after 1000 healthchecks");
    // Each healthcheck opened a control connection and two probe connections.
    let mut fds = 0;
    if poll_until(SHORT_TIMEOUT, || {
        fds = fd_count(pid);
        (fds <= fds_before + 4).then_some(())
    })
    .is_none()
    {
        tandem.fail(&format!(
            "tandem had {fds_before} open descriptors before 1000 healthchecks, {fds} after"
        ));
    }
    eprintln!(
        "tandem descriptors: {fds_before} before, {} after",
        fd_count(pid)
    );
    assert_eq!(tandem.stop(), 0);
    tandem.assert_no_panic();
}

/// 6b. The exec probe's commands are tandem's children: 1 000 healthchecks plus a stream of
///     periodic probes (each appends a line to a file, so they can be counted) leave no
///     zombie in the namespace.
#[test]
fn exec_probes_leave_no_zombie() {
    let sandbox = Sandbox::new("hc-exec");
    let counter = sandbox.root.join("probes");
    std::fs::write(&counter, "").unwrap();
    let count = || {
        std::fs::read_to_string(&counter)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut env = sandbox.env_with_db();
    env.set(
        "TANDEM_APP_HEALTH_CMD",
        &format!("sh -c 'echo probe >> {}'", counter.display()),
    )
    .set("TANDEM_APP_HEALTH_INTERVAL", "50ms")
    .set("TANDEM_APP_HEALTH_START_PERIOD", "0s");
    let mut tandem = start_healthy(&env);

    // Periodic probes: 200 more of them.
    let target = count() + 200;
    if poll_until(Duration::from_secs(120), || {
        (count() >= target).then_some(())
    })
    .is_none()
    {
        tandem.fail(&format!(
            "only {} exec probes ran, expected {target}",
            count()
        ));
    }
    wait_no_zombie(&tandem, "after 200 periodic exec probes");

    // On-demand probes: each healthcheck runs the command once more.
    let before = count();
    many_healthchecks(&tandem, &env, 1000, ", app ok ");
    let ran = count() - before;
    eprintln!("exec probe runs: {before} before the healthchecks, {ran} during them");
    if ran < 1000 {
        tandem.fail(&format!("1000 healthchecks ran the exec probe {ran} times"));
    }
    wait_no_zombie(&tandem, "after 1000 healthchecks with an exec probe");
    let status = status_json(&env).unwrap_or_else(|| tandem.fail("no status"));
    if !is(&status, "app", "healthy") {
        tandem.fail(&format!("app should be healthy: {status}"));
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_no_panic();
}

/// 7. An exec probe that hangs is killed at its timeout: the healthcheck says so, and every
///    `sleep 1000` it started is gone (not even a zombie) long before 1000 s.
#[test]
fn hanging_exec_probe_is_killed_at_its_timeout() {
    let sandbox = Sandbox::new("hc-hang");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_CMD", "sleep 1000")
        .set("TANDEM_APP_HEALTH_TIMEOUT", "300ms")
        .set("TANDEM_APP_ON_UNHEALTHY", "report")
        .set("TANDEM_APP_HEALTH_START_PERIOD", "0s");
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let pid = tandem.pid();

    let run = healthcheck(&env);
    let line = run.line();
    if run.code != 1
        || !line.starts_with("unhealthy: app ")
        || !line.contains("timed out after 300 ms")
    {
        tandem.fail(&format!("hanging probe: {}", run.describe()));
    }

    // tandem keeps probing (every 250 ms until the app is first healthy), so there is
    // usually a `sleep 1000` around: collect the ones seen for a while, then require each
    // of them to disappear.
    let sleeps = || -> BTreeSet<i32> {
        procs_in_namespace_of(pid)
            .into_iter()
            .filter(|p| cmdline(p.pid).as_deref() == Some("sleep 1000"))
            .map(|p| {
                if p.ppid != pid.as_raw() {
                    tandem.fail(&format!("probe {p:?} is not tandem's child"));
                }
                p.pid
            })
            .collect()
    };
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    poll_until(SHORT_TIMEOUT, || {
        seen.extend(sleeps());
        (Instant::now() >= deadline && !seen.is_empty()).then_some(())
    });
    if seen.is_empty() {
        tandem.fail("never saw a `sleep 1000` probe");
    }
    eprintln!("hanging probes seen: {seen:?}");
    let mut alive = BTreeSet::new();
    let gone = poll_until(SHORT_TIMEOUT, || {
        alive = seen
            .iter()
            .copied()
            // Still there as itself, or as a zombie (a reused pid would be neither).
            .filter(|p| {
                read_proc(*p).is_some_and(|proc| {
                    proc.state == 'Z' || cmdline(*p).as_deref() == Some("sleep 1000")
                })
            })
            .collect();
        alive.is_empty().then_some(())
    });
    if gone.is_none() {
        let left: Vec<_> = alive.iter().map(|p| read_proc(*p)).collect();
        tandem.fail(&format!(
            "{} of {} hanging probes still there: {left:?}",
            alive.len(),
            seen.len()
        ));
    }
    let status = status_json(&env).unwrap_or_else(|| tandem.fail("no status"));
    let app = service(&status, "app").unwrap();
    if !app["last_probe"]
        .as_str()
        .is_some_and(|l| l.contains("timed out after 300 ms"))
    {
        tandem.fail(&format!("status last probe: {app}"));
    }
    // A probe in flight does not hold up the stop.
    assert_eq!(tandem.stop(), 0);
    tandem.assert_no_panic();
}

/// 8. `tandem status` (table and JSON) shows the real processes and follows their health
///    within a few probe intervals.
#[test]
fn status_table_and_json_reflect_the_services() {
    let sandbox = Sandbox::new("hc-status");
    let mut env = env_with_http_probe(&sandbox);
    env.set("TANDEM_APP_HEALTH_INTERVAL", "300ms")
        .set("TANDEM_APP_HEALTH_RETRIES", "2")
        .set("TANDEM_APP_HEALTH_START_PERIOD", "0s")
        .set("TANDEM_APP_ON_UNHEALTHY", "report");
    let mut tandem = start_healthy(&env);
    let ns_tandem = tandem.pid();
    let status = wait_status(&mut tandem, &env, "both healthy", FOLLOW_TIMEOUT, |s| {
        is(s, "postgres", "healthy") && is(s, "app", "healthy")
    });

    // The pids are the real processes, as seen inside the namespace.
    let pg_pid = postmaster_pid(&sandbox.pgdata).unwrap_or_else(|| tandem.fail("no pid file"));
    let app_pid = app_pid(&tandem, &sandbox);
    let pg = service(&status, "postgres").unwrap();
    let app = service(&status, "app").unwrap();
    if pg["pid"] != pg_pid || app["pid"] != app_pid {
        tandem.fail(&format!(
            "postmaster {pg_pid}, app {app_pid}; status says {status}"
        ));
    }
    for (ns_pid, comm) in [(pg_pid, "postgres"), (app_pid as i32, "testapp")] {
        let host = host_pid_in_namespace(ns_tandem, ns_pid)
            .unwrap_or_else(|| tandem.fail(&format!("no process {ns_pid} in the namespace")));
        let proc = read_proc(host).unwrap();
        if proc.comm != comm || proc.ppid != ns_tandem.as_raw() {
            tandem.fail(&format!("{proc:?} should be {comm}, child of tandem"));
        }
    }
    for s in [pg, app] {
        let ok = s["restarts"] == 0
            && s["uptime_ms"].as_u64().is_some()
            && s["last_probe"]
                .as_str()
                .is_some_and(|l| l.starts_with("ok ") && l.ends_with(" ago"));
        if !ok {
            tandem.fail(&format!("status row: {s}"));
        }
    }

    // The table for a person: header, one row per service, then where the start's time went.
    let table = cli(&env, &["status"]);
    if table.code != 0 {
        tandem.fail(&format!("status: {}", table.describe()));
    }
    let lines: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let header = [
        "SERVICE", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "LAST", "PROBE",
    ];
    let row = |name: &str| lines.iter().find(|l| l.first() == Some(&name));
    let row_ok = |name: &str, pid: i64, health: &str| {
        row(name).is_some_and(|r| {
            r.len() >= 7
                && r[1] == "running"
                && r[2] == health
                && r[3] == pid.to_string()
                && r[5] == "0"
        })
    };
    let timeline = lines.get(3).map(|l| l[..l.len().min(3)].join(" "));
    if lines.len() != 4
        || lines[0] != header
        || !row_ok("postgres", pg_pid.into(), "healthy")
        || !row_ok("app", app_pid, "healthy")
        || timeline.as_deref() != Some("start: healthy after")
    {
        tandem.fail(&format!("status table:\n{}", table.stdout));
    }

    // The app goes bad: status follows within retries x interval (+ slack).
    tandem.app_ok(&sandbox, "POST", "/health/bad");
    let status = wait_status(&mut tandem, &env, "app unhealthy", FOLLOW_TIMEOUT, |s| {
        is(s, "app", "unhealthy")
    });
    let app = service(&status, "app").unwrap();
    let ok = app["pid"] == app_pid
        && app["last_probe"]
            .as_str()
            .is_some_and(|l| l.starts_with("http 503"))
        && is(&status, "postgres", "healthy");
    if !ok {
        tandem.fail(&format!("after /health/bad: {status}"));
    }
    let table = cli(&env, &["status"]);
    let app_row: Vec<String> = table
        .stdout
        .lines()
        .find(|l| l.starts_with("app "))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    if app_row.get(2).map(String::as_str) != Some("unhealthy") || !table.stdout.contains("http 503")
    {
        tandem.fail(&format!(
            "status table after /health/bad:\n{}",
            table.stdout
        ));
    }

    tandem.app_ok(&sandbox, "POST", "/health/good");
    wait_status(
        &mut tandem,
        &env,
        "app healthy again",
        FOLLOW_TIMEOUT,
        |s| is(s, "app", "healthy") && service(s, "app").is_some_and(|a| a["restarts"] == 0),
    );
    tandem.wait_for_line("app is healthy again", SHORT_TIMEOUT);
    assert_eq!(tandem.stop(), 0);
    tandem.assert_no_panic();
}

/// 9. `healthcheck --direct` probes the running services itself, from the environment,
///    without the control socket.
#[test]
fn direct_healthcheck_works_without_the_socket() {
    let sandbox = Sandbox::new("hc-direct");
    let mut env = env_with_http_probe(&sandbox);
    env.set("TANDEM_APP_ON_UNHEALTHY", "report");
    let mut tandem = start_healthy(&env);
    let nowhere = sandbox.root.join("nowhere").join("tandem.sock");
    let direct_env = container_env(&env, &[("TANDEM_SOCKET", nowhere.to_str().unwrap())]);
    let direct = || cli_with(&direct_env, &["healthcheck", "--direct"]);

    let run = direct();
    let line = run.line().to_string();
    if run.code != 0 || !line.starts_with("healthy: postgres ok ") || !line.contains(", app ok ") {
        tandem.fail(&format!("--direct, healthy services: {}", run.describe()));
    }
    // Through the socket it would have said "not running": it did not use it.
    let via_socket = cli_with(&direct_env, &["healthcheck"]);
    if via_socket.code != 1 || !via_socket.line().contains("no socket at") {
        tandem.fail(&format!("without --direct: {}", via_socket.describe()));
    }

    tandem.app_ok(&sandbox, "POST", "/health/bad");
    let run = direct();
    if run.code != 1
        || !run.line().starts_with("unhealthy: ")
        || !run.line().contains("app http 503")
    {
        tandem.fail(&format!("--direct, app bad: {}", run.describe()));
    }
    let json = cli_with(&direct_env, &["healthcheck", "--direct", "--json"]);
    let report: Value = serde_json::from_str(json.stdout.trim())
        .unwrap_or_else(|e| tandem.fail(&format!("--direct --json: {e}: {}", json.describe())));
    if json.code != 1 || report["healthy"] != false {
        tandem.fail(&format!("--direct --json, app bad: {}", json.describe()));
    }
    tandem.app_ok(&sandbox, "POST", "/health/good");
    let run = direct();
    if run.code != 0 {
        tandem.fail(&format!("--direct, app good again: {}", run.describe()));
    }

    // With everything stopped, --direct names what is down.
    assert_eq!(tandem.stop(), 0);
    let run = direct();
    let line = run.line();
    assert_eq!(run.code, 1, "--direct after stop: {}", run.describe());
    assert!(
        line.starts_with("unhealthy: ")
            && line.contains("postgres connection refused")
            && line.contains("app connection refused"),
        "--direct after stop: {}",
        run.describe()
    );
    let secret = env.get("POSTGRES_PASSWORD").unwrap();
    assert!(!run.stdout.contains(secret), "password printed: {line}");
}
