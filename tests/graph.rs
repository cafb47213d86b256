//! The service graph of a config file, end to end: `tandem --config FILE` as a real PID 1
//! (or wrapped, where what outlives it must be listed) against a real PostgreSQL 15.
//!
//! - a migration oneshot runs before the app that needs its table (and a control run
//!   without the dependency shows the app's check does fail);
//! - a failing oneshot stops everything with its own exit code;
//! - a crash-looping daemon is restarted after 200, 400, 800 ms, then given up on;
//! - a service runs as a non-root user with its supplementary groups (and `group`);
//! - an app-only tandem waits for an external PostgreSQL that comes up late, reports it
//!   while it is down and does not restart the app for it;
//! - a config with many mistakes is refused with one `FILE:LINE:COLUMN` line for each;
//! - a database-only container (a `[postgres]` section alone, and zero-config
//!   `TANDEM_POSTGRES=on` without a CMD) initialises, serves, reaps orphans and stops clean.
//!
//! Every config is written into the test's [`Sandbox`]; every wait polls a condition until
//! a deadline, and every failure prints tandem's whole log.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use support::*;
use tokio_postgres::error::SqlState;

/// The PostgreSQL the external database of [`external_postgres_scenario`]
/// runs from (the one the embedded tests find too).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The embedded database's password in every `[postgres]` section here.
const PASSWORD: &str = "graph-test-pw-5f1c9e";

/// The environment of a config-file run: the control socket and the test app's port;
/// everything else is in the file.
fn config_env(sandbox: &Sandbox) -> Env {
    let mut env = Env::default();
    env.set("TANDEM_SOCKET", sandbox.control_socket.to_str().unwrap())
        .set("TESTAPP_PORT", &sandbox.app_port.to_string());
    env
}

/// Writes the config file into the sandbox.
fn write_config(sandbox: &Sandbox, text: &str) -> PathBuf {
    let path = sandbox.root.join("tandem.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A TOML basic string (the sandbox's paths hold nothing that needs escaping).
fn toml_str(path: &Path) -> String {
    let s = path.to_str().unwrap();
    assert!(!s.contains(['"', '\\']), "quote in {s}");
    format!("\"{s}\"")
}

/// The sandbox's embedded database: user `tester`, database `testdb`, [`PASSWORD`].
fn postgres_section(sandbox: &Sandbox) -> String {
    format!(
        "[postgres]\n\
         data_dir = {}\n\
         port = {}\n\
         socket_dir = {}\n\
         init_dir = {}\n\
         user = \"tester\"\n\
         password = \"{PASSWORD}\"\n\
         database = \"testdb\"\n",
        toml_str(&sandbox.pgdata),
        sandbox.pg_port,
        toml_str(&sandbox.pg_socket_dir),
        toml_str(&sandbox.initdb_dir),
    )
}

/// The embedded database over TCP from 127.0.0.2: only the `host all all all` line the
/// first start appends covers it (127.0.0.1 stays on initdb's trust), so the password counts.
fn password_login<'a>(sandbox: &Sandbox, password: &'a str) -> Db<'a> {
    Db {
        host: "127.0.0.1",
        source: Some("127.0.0.2"),
        port: sandbox.pg_port,
        user: "tester",
        password: Some(password),
        dbname: "testdb",
    }
}

/// `tandem ARGS` as `docker exec` would run it: a fresh process that knows only the socket.
/// Returns the exit code and stdout.
fn cli(sandbox: &Sandbox, args: &[&str]) -> (i32, String) {
    let out = Command::new(tandem_bin())
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("TANDEM_SOCKET", &sandbox.control_socket)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the tandem CLI");
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
    )
}

/// `tandem healthcheck --json`: (exit code, the report), `None` if it is not JSON.
fn healthcheck_json(sandbox: &Sandbox) -> (i32, Option<Value>) {
    let (code, out) = cli(sandbox, &["healthcheck", "--json"]);
    (code, serde_json::from_str(&out).ok())
}

/// `tandem status --json`, `None` unless it answered.
fn status_json(sandbox: &Sandbox) -> Option<Value> {
    match cli(sandbox, &["status", "--json"]) {
        (0, out) => serde_json::from_str(&out).ok(),
        _ => None,
    }
}

/// Service `name`'s entry in a status or healthcheck report.
fn entry<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// Polls `tandem healthcheck` until it exits `code` with a line containing `needle`.
fn wait_healthcheck(
    tandem: &Tandem,
    sandbox: &Sandbox,
    code: i32,
    needle: &str,
    timeout: Duration,
) -> String {
    let mut last = None;
    let seen = poll_until(timeout, || {
        let run = cli(sandbox, &["healthcheck"]);
        let hit = run.0 == code && run.1.lines().count() == 1 && run.1.contains(needle);
        last = Some(run.clone());
        hit.then_some(run.1)
    });
    seen.unwrap_or_else(|| {
        tandem.fail(&format!(
            "healthcheck never exited {code} with {needle:?} within {timeout:?}; last: {last:?}"
        ))
    })
}

/// Polls `tandem status --json` until `pred` holds; returns that answer.
fn wait_status(
    tandem: &Tandem,
    sandbox: &Sandbox,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = None;
    let seen = poll_until(START_TIMEOUT, || {
        let status = status_json(sandbox)?;
        let hit = pred(&status);
        last = Some(status.clone());
        hit.then_some(status)
    });
    seen.unwrap_or_else(|| tandem.fail(&format!("status never showed {what}; last: {last:?}")))
}

// -- 1. a migration before the app ------------------------------------------------------

/// The api's command: checks that table `t` exists (psql over the PG* variables tandem
/// gives every service), says so, then execs the test app; exits 1 if it is missing.
fn api_section(depends_on: &str) -> String {
    let testapp = testapp_bin();
    format!(
        r#"
[service.api]
main = true
depends_on = {depends_on}
command = ["sh", "-c", "if psql -X -q -c 'SELECT 1 FROM t' >/dev/null; then echo 'table t exists'; exec \"$0\"; fi; echo 'table t missing'; exit 1", {}]
"#,
        toml_str(&testapp)
    )
}

const MIGRATE: &str = r#"
[service.migrate]
kind = "oneshot"
depends_on = { postgres = "healthy" }
command = ["sh", "-c", "psql -X -v ON_ERROR_STOP=1 -c 'CREATE TABLE t (id int)' && echo 'migration done'"]
"#;

/// The control run goes first, on the empty PGDATA: without the migration the api's check
/// fails (so the check is able to fail); then the same PGDATA with the migration, whose
/// table the api finds. Fails if the api starts before `migrate completed`, or at all in
/// the wrong order.
#[test]
fn migration_oneshot_creates_the_table_before_the_app_starts() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-migrate");
    let env = config_env(&sandbox);

    // Control: the api waits for the database only, and finds no table.
    let config = write_config(
        &sandbox,
        &(postgres_section(&sandbox) + &api_section("{ postgres = \"healthy\" }")),
    );
    let mut control = Tandem::start_config(Mode::Pid1, &env, &config);
    control.secret = Some(PASSWORD.into());
    let code = control.wait_exit_code(START_TIMEOUT);
    control.assert_in_order(&[
        "tandem | postgres is ready",
        "tandem | api started",
        "relation \"t\" does not exist",
        "api | table t missing",
    ]);
    if control.log.contains("testapp listening") {
        control.fail("the test app started although its check failed");
    }
    if code != 1 {
        control.fail(&format!(
            "control run: exit code {code}, expected the api's 1"
        ));
    }
    control.assert_clean_postgres_stop_after("tandem | postgres is ready");
    control.assert_secret_absent();

    // With the migration: migrate runs once the database is healthy, the api once it has
    // completed.
    let config = write_config(
        &sandbox,
        &(postgres_section(&sandbox) + MIGRATE + &api_section("{ migrate = \"completed\" }")),
    );
    let mut tandem = Tandem::start_config(Mode::Pid1, &env, &config);
    tandem.secret = Some(PASSWORD.into());
    tandem.wait_for_line("api | testapp listening on", START_TIMEOUT);
    // The oneshot's own lines are relayed by another task than tandem's exit line, and may
    // come after it: they only have to be there. `table t exists` is the proof of order.
    tandem.assert_in_order(&[
        "tandem | postgres is ready",
        "tandem | migrate started",
        "tandem | migrate completed",
        "tandem | api started",
        "api | table t exists",
        "api | testapp listening on",
    ]);
    for line in ["migrate | CREATE TABLE", "migrate | migration done"] {
        if !tandem.log.contains(line) {
            tandem.fail(&format!("no line {line:?}"));
        }
    }
    assert_eq!(tandem.app_ok(&sandbox, "GET", "/health"), "ok");
    let whoami: Value = serde_json::from_str(&tandem.app_ok(&sandbox, "GET", "/whoami")).unwrap();
    if whoami != serde_json::json!({ "database": "testdb", "user": "tester" }) {
        tandem.fail(&format!("/whoami answered {whoami}"));
    }
    if tandem.log.contains("table t missing") {
        tandem.fail("the api did not find the migration's table");
    }
    assert_eq!(tandem.stop(), 0, "exit code after SIGTERM");
    tandem.assert_clean_postgres_stop_after("tandem | postgres is ready");
    tandem.assert_no_recovery();
    tandem.assert_secret_absent();
    tandem.assert_no_panic();
}

// -- 2. a failing oneshot ----------------------------------------------------------------

/// Fails if tandem exits with anything but the oneshot's 7, if the api was started, if
/// PostgreSQL was not stopped through a fast shutdown, or if anything outlives tandem.
#[test]
fn failing_oneshot_stops_everything_and_its_exit_code_comes_out() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-oneshot-fails");
    let config = write_config(
        &sandbox,
        &format!(
            "{}{}",
            postgres_section(&sandbox),
            format_args!(
                r#"
[service.migrate]
kind = "oneshot"
depends_on = {{ postgres = "healthy" }}
command = ["sh", "-c", "echo 'migration failing'; exit 7"]

[service.api]
main = true
depends_on = {{ migrate = "completed" }}
command = [{}]
"#,
                toml_str(&testapp_bin())
            )
        ),
    );
    let mut tandem = Tandem::start_config(
        Mode::Wrapped { mount_ro: false },
        &config_env(&sandbox),
        &config,
    );
    tandem.secret = Some(PASSWORD.into());
    let code = tandem.wait_exit_code(START_TIMEOUT);
    tandem.assert_in_order(&[
        "tandem | postgres is ready",
        "tandem | migrate started",
        "tandem | error: migrate exited with code 7; stopping the container",
        "tandem | stopping postgres",
    ]);
    if !tandem.log.contains("migrate | migration failing") {
        tandem.fail("no output from the oneshot");
    }
    tandem.assert_clean_postgres_stop_after("tandem | postgres is ready");
    let api_ran = tandem
        .log
        .lines()
        .into_iter()
        .find(|(_, l)| l.starts_with("tandem | api started") || l.starts_with("api | "));
    if let Some((_, line)) = api_ran {
        tandem.fail(&format!("the dependent api was started: {line:?}"));
    }
    tandem.assert_no_leftovers();
    tandem.assert_secret_absent();
    if code != 7 {
        tandem.fail(&format!("exit code {code}, expected the oneshot's 7"));
    }
}

// -- 3. restart backoff ------------------------------------------------------------------

/// The crasher prints its own clock (`date +%s%N`) as it starts: the gaps are measured
/// where the starts happen, not where their lines arrive. Each gap must be at least the
/// delay (a restart early is a bug) and less than the delay + 300 ms (a correctness bound
/// for exit detection, the timer and a spawn on a busy box, not a speed target).
#[test]
fn crash_loop_restarts_follow_the_backoff_then_the_container_gives_up() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-backoff");
    let config = write_config(
        &sandbox,
        r#"
[service.main]
main = true
command = ["sleep", "3600"]

# A required daemon (the default), not main: giving up on it stops the container with 3.
[service.crash]
command = ["sh", "-c", "echo crash-start $(date +%s%N); exit 1"]
restart = { policy = "on-failure", delay = "200ms", factor = 2.0, max_delay = "1s", jitter = 0.0, max_restarts = 3, window = "60s" }
"#,
    );
    let mut tandem = Tandem::start_config(Mode::Pid1, &config_env(&sandbox), &config);
    let code = tandem.wait_exit_code(START_TIMEOUT);

    let starts: Vec<u128> = tandem
        .log
        .lines()
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("crash | crash-start "))
        .map(|ns| {
            ns.trim()
                .parse()
                .unwrap_or_else(|_| tandem.fail(&format!("not a time: {ns:?}")))
        })
        .collect();
    if starts.len() != 4 {
        tandem.fail(&format!(
            "{} starts of crash, expected 4 (the first and 3 restarts)",
            starts.len()
        ));
    }
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    eprintln!("gaps between starts: {gaps:?} ms");
    for (gap, delay) in gaps.iter().zip([200u128, 400, 800]) {
        if *gap < delay || *gap >= delay + 300 {
            tandem.fail(&format!(
                "gaps between starts {gaps:?} ms: expected at least 200, 400, 800 ms and each under +300 ms"
            ));
        }
    }
    tandem.assert_in_order(&[
        "crash exited with code 1; restarting it in 200 ms (restart 1)",
        "crash exited with code 1; restarting it in 400 ms (restart 2)",
        "crash exited with code 1; restarting it in 800 ms (restart 3)",
        "tandem | error: crash exited with code 1, and it was restarted 3 times within 60 s: giving up",
        "tandem | stopping main",
    ]);
    if code != 3 {
        tandem.fail(&format!(
            "exit code {code}, expected 3 (a required service failed)"
        ));
    }
}

// -- 4. user and groups -----------------------------------------------------------------

/// A user and groups made for one test, removed on drop (also when the test fails).
struct Accounts {
    user: String,
    groups: Vec<String>,
}

impl Accounts {
    fn new(tag: &str) -> Accounts {
        let id = std::process::id();
        let accounts = Accounts {
            user: format!("tdm-{tag}-u{id}"),
            groups: ["prim", "supp", "over"]
                .iter()
                .map(|g| format!("tdm-{tag}-{g}{id}"))
                .collect(),
        };
        // What a killed earlier run with the same pid may have left.
        accounts.remove();
        for g in &accounts.groups {
            run_root("groupadd", &[g]);
        }
        run_root(
            "useradd",
            &[
                "--no-create-home",
                "--no-user-group",
                "--gid",
                &accounts.groups[0],
                "--groups",
                &accounts.groups[1],
                "--shell",
                "/usr/sbin/nologin",
                &accounts.user,
            ],
        );
        accounts
    }

    fn remove(&self) {
        let quiet = |program: &str, name: &str| {
            let _ = Command::new(program)
                .arg(name)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet("userdel", &self.user);
        for g in &self.groups {
            quiet("groupdel", g);
        }
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.remove();
    }
}

fn run_root(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gid_of(group: &str) -> u32 {
    nix::unistd::Group::from_name(group)
        .unwrap()
        .unwrap_or_else(|| panic!("no group {group}"))
        .gid
        .as_raw()
}

/// `uid=1(a) gid=2(b) groups=2(b),3(c)` -> (uid, gid, groups) as numbers.
fn parse_id(line: &str) -> Option<(u32, u32, Vec<u32>)> {
    let number = |field: &str| field.split('(').next()?.parse::<u32>().ok();
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("uid=") {
            uid = number(v);
        } else if let Some(v) = part.strip_prefix("gid=") {
            gid = number(v);
        } else if let Some(v) = part.strip_prefix("groups=") {
            groups = v.split(',').filter_map(number).collect();
        }
    }
    Some((uid?, gid?, groups))
}

/// Runs `id` as the service `ids` (main: its exit ends the run) and returns what it printed.
fn id_as(sandbox: &Sandbox, identity: &str) -> (u32, u32, Vec<u32>) {
    let config = write_config(
        sandbox,
        &format!("[service.ids]\nmain = true\ncommand = [\"id\"]\n{identity}"),
    );
    let mut tandem = Tandem::start_config(Mode::Pid1, &config_env(sandbox), &config);
    let code = tandem.wait_exit_code(START_TIMEOUT);
    if code != 0 {
        tandem.fail(&format!("exit code {code}, expected id's 0"));
    }
    let lines = tandem.log.lines();
    let line = lines
        .iter()
        .find_map(|(_, l)| l.strip_prefix("ids | "))
        .unwrap_or_else(|| tandem.fail("no output from id"));
    parse_id(line).unwrap_or_else(|| tandem.fail(&format!("cannot parse {line:?}")))
}

/// Fails if the service keeps root's identity or groups, misses the group that lists the
/// user, or ignores `group`.
#[test]
fn service_runs_as_its_user_with_supplementary_groups_and_group_override() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-user");
    let accounts = Accounts::new("g");
    let uid = nix::unistd::User::from_name(&accounts.user)
        .unwrap()
        .expect("the user was just made")
        .uid
        .as_raw();
    let [prim, supp, over] = [0, 1, 2].map(|i| gid_of(&accounts.groups[i]));
    assert_ne!(uid, 0);

    let (u, g, groups) = id_as(&sandbox, &format!("user = \"{}\"\n", accounts.user));
    assert_eq!(u, uid, "uid: the user's");
    assert_eq!(g, prim, "gid: the user's primary group");
    assert!(
        groups.contains(&supp),
        "groups {groups:?} lack the supplementary group {supp}"
    );
    assert!(
        !groups.contains(&0),
        "groups {groups:?} still hold root's group"
    );

    let (u, g, groups) = id_as(
        &sandbox,
        &format!(
            "user = \"{}\"\ngroup = \"{}\"\n",
            accounts.user, accounts.groups[2]
        ),
    );
    assert_eq!(u, uid, "uid with group set: the user's");
    assert_eq!(g, over, "gid: `group` overrides the primary group");
    assert!(
        groups.contains(&supp),
        "groups {groups:?} lack the supplementary group {supp} with `group` set"
    );
    assert!(
        !groups.contains(&0),
        "groups {groups:?} still hold root's group"
    );
}

// -- 5. an external database -------------------------------------------------------------

/// A PostgreSQL the test runs itself, as another container would: initdb as `postgres`
/// into the sandbox, password auth over TCP. Stopped (fast shutdown) on drop.
struct ExternalPg {
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    server: Option<Child>,
}

impl ExternalPg {
    fn init(sandbox: &Sandbox, user: &str, password: &str) -> ExternalPg {
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user");
        let (uid, gid) = (pg.uid.as_raw(), pg.gid.as_raw());
        let data = sandbox.root.join("external-pgdata");
        let socket_dir = sandbox.root.join("external-socket");
        mkdir(&data, 0o700);
        mkdir(&socket_dir, 0o755);
        chown_to(&data, uid, gid);
        chown_to(&socket_dir, uid, gid);
        let pwfile = sandbox.root.join("external-pw");
        std::fs::write(&pwfile, password).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Command::new(format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                user,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-sync")
            .env_clear()
            .env("PATH", PATH)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run initdb");
        std::fs::remove_file(&pwfile).unwrap();
        assert!(
            out.status.success(),
            "initdb of the external database failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ExternalPg {
            data,
            socket_dir,
            log: sandbox.root.join("external-pg.log"),
            port: sandbox.pg_port,
            uid,
            gid,
            server: None,
        }
    }

    fn start(&mut self) {
        assert!(self.server.is_none(), "the external database already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let server = Command::new(format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .env_clear()
            .env("PATH", PATH)
            .uid(self.uid)
            .gid(self.gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the external PostgreSQL");
        self.server = Some(server);
    }

    /// A fast shutdown (SIGINT), waited for.
    fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(server.id() as i32), Signal::SIGINT);
        if poll_until(STOP_TIMEOUT, || server.try_wait().ok().flatten()).is_none() {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the external PostgreSQL did not stop within {STOP_TIMEOUT:?}");
        }
    }

    /// Waits until a password login over TCP works.
    fn wait_ready(&self, tandem: &Tandem, user: &str, password: &str) {
        let db = Db {
            host: "127.0.0.1",
            source: None,
            port: self.port,
            user,
            password: Some(password),
            dbname: "postgres",
        };
        let mut last = None;
        if poll_until(START_TIMEOUT, || {
            let r = db.query_texts("SELECT 'up'::text");
            let up = r.is_ok();
            last = Some(r);
            up.then_some(())
        })
        .is_none()
        {
            tandem.fail(&format!(
                "the external PostgreSQL did not come up: {last:?}\n{}",
                self.log_text()
            ));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExternalPg {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = kill(Pid::from_raw(server.id() as i32), Signal::SIGINT);
            if poll_until(STOP_TIMEOUT, || server.try_wait().ok().flatten()).is_none() {
                let _ = server.kill();
                let _ = server.wait();
            }
        }
    }
}

/// Whether `db` is reported unhealthy (starting or failing) in a healthcheck report.
fn db_down_in(report: &Value) -> bool {
    report["healthy"] == false
        && entry(report, "db").is_some_and(|db| {
            db["healthy"] == false && matches!(db["state"].as_str(), Some("starting" | "failing"))
        })
}

/// The app's (pid, restarts) in a status answer.
fn app_pid_restarts(status: &Value) -> (Option<i64>, Option<i64>) {
    let app = entry(status, "app");
    (
        app.and_then(|a| a["pid"].as_i64()),
        app.and_then(|a| a["restarts"].as_i64()),
    )
}

/// The external database comes up 5 s after tandem: until then the app must not start and
/// the healthcheck names db; once up, the app starts and serves. Then the database goes
/// away: the healthcheck names db again, but the app (which has no probe of its own) keeps
/// running, same pid, 0 restarts; the database comes back: healthy again.
#[test]
fn external_postgres_late_then_down_then_back() {
    external_postgres_scenario("graph-external", "");
}

/// The same with the policy written out: an external service's unhealthy verdict is only
/// reported. Passes where the test above fails on tandem "restarting" the external db.
#[test]
fn external_postgres_late_then_down_then_back_with_on_unhealthy_report() {
    external_postgres_scenario("graph-external-report", ", on_unhealthy = \"report\"");
}

/// `extra`: more keys for db's health table.
fn external_postgres_scenario(name: &str, extra: &str) {
    if !can_run_postgres_as_pid1() {
        return;
    }
    const LATE: Duration = Duration::from_secs(5);
    let sandbox = Sandbox::new(name);
    let (user, password) = ("extuser", "ext-pw-7d2a");
    let mut external = ExternalPg::init(&sandbox, user, password);
    let url = format!(
        "postgresql://{user}:{password}@127.0.0.1:{}/postgres",
        sandbox.pg_port
    );
    let config = write_config(
        &sandbox,
        &format!(
            r#"
[service.db]
kind = "external"
health = {{ postgres = "{url}", interval = "500ms"{extra} }}

[service.app]
main = true
depends_on = {{ db = "healthy" }}
command = [{}]
env = {{ DATABASE_URL = "{url}" }}
"#,
            toml_str(&testapp_bin())
        ),
    );
    let began = Instant::now();
    let mut tandem = Tandem::start_config(
        Mode::Wrapped { mount_ro: false },
        &config_env(&sandbox),
        &config,
    );

    // While the database is not there: unhealthy, naming db; the app waits.
    let mut last = None;
    let down = poll_until(LATE - Duration::from_millis(500), || {
        let (code, report) = healthcheck_json(&sandbox);
        let hit = code == 1 && report.as_ref().is_some_and(db_down_in);
        last = Some((code, report));
        hit.then_some(())
    });
    if down.is_none() {
        tandem.fail(&format!(
            "healthcheck did not report db down before it started; last: {last:?}"
        ));
    }
    let status = status_json(&sandbox).unwrap_or_else(|| tandem.fail("no status"));
    match entry(&status, "app") {
        Some(app) if app["state"] == "waiting" && app["pid"].is_null() => {}
        other => tandem.fail(&format!("app before the database is up: {other:?}")),
    }
    // The scenario: the database starts 5 s after tandem.
    std::thread::sleep(LATE.saturating_sub(began.elapsed()));
    if tandem.log.contains("tandem | app started") || tandem.log.contains("app | ") {
        tandem.fail("the app started before its database was up");
    }
    external.start();

    tandem.wait_for_line("app | testapp listening on", START_TIMEOUT);
    tandem.assert_in_order(&["tandem | db is ready", "tandem | app started"]);
    wait_healthcheck(&tandem, &sandbox, 0, "healthy", SHORT_TIMEOUT);
    assert_eq!(tandem.app_ok(&sandbox, "GET", "/health"), "ok");
    let status = status_json(&sandbox).unwrap_or_else(|| tandem.fail("no status"));
    let (pid, restarts) = app_pid_restarts(&status);
    if pid.is_none() || restarts != Some(0) {
        tandem.fail(&format!("app once the database is up: {status}"));
    }

    // The database goes away.
    external.stop();
    let mut last = None;
    let seen = poll_until(START_TIMEOUT, || {
        let (code, report) = healthcheck_json(&sandbox);
        let hit = code == 1 && report.as_ref().is_some_and(db_down_in);
        last = Some((code, report));
        hit.then_some(())
    });
    if seen.is_none() {
        tandem.fail(&format!(
            "healthcheck did not report db down after it stopped; last: {last:?}"
        ));
    }
    // Its probe's own verdict (3 failed tries of 500 ms), after which nothing may act on
    // the app.
    let status = wait_status(&tandem, &sandbox, "db unhealthy", |s| {
        entry(s, "db").is_some_and(|db| db["health"] == "unhealthy")
    });
    if app_pid_restarts(&status) != (pid, Some(0)) {
        tandem.fail(&format!(
            "the app was restarted for its database (pid was {pid:?}): {status}"
        ));
    }
    // tandem neither starts nor stops an external service: an unhealthy one is reported.
    if let Some(line) = tandem
        .own_lines()
        .iter()
        .find(|l| l.contains("restarting db"))
    {
        tandem.fail(&format!(
            "tandem acts on the external db as if it ran it: {line:?}; status: {status}"
        ));
    }

    // And comes back: once the test can log in, tandem's next probes (every 500 ms) see it.
    external.start();
    external.wait_ready(&tandem, user, password);
    wait_healthcheck(&tandem, &sandbox, 0, "healthy", SHORT_TIMEOUT);
    let status = wait_status(&tandem, &sandbox, "db healthy", |s| {
        entry(s, "db").is_some_and(|db| db["health"] == "healthy")
    });
    if app_pid_restarts(&status) != (pid, Some(0)) || tandem.log.count("tandem | app started") != 1
    {
        tandem.fail(&format!(
            "the app was restarted for its database (pid was {pid:?}): {status}"
        ));
    }
    assert_eq!(tandem.app_ok(&sandbox, "GET", "/health"), "ok");

    let code = tandem.stop();
    tandem.assert_no_leftovers();
    if code != 0 {
        tandem.fail(&format!("exit code {code} after SIGTERM, expected 0"));
    }
    external.stop();
    let log = external.log_text();
    assert!(
        !log.contains("not properly shut down"),
        "the external PostgreSQL was not stopped cleanly: {log}"
    );
}

// -- 6. validation -----------------------------------------------------------------------

/// 1-based line and column (in characters) of `token` inside the one occurrence of
/// `anchor` in `text`.
fn locate(text: &str, anchor: &str, token: &str) -> (usize, usize) {
    assert_eq!(
        text.matches(anchor).count(),
        1,
        "anchor {anchor:?} not unique"
    );
    let at = text.find(anchor).unwrap() + anchor.find(token).expect("token in anchor");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[start..at].chars().count() + 1)
}

/// The `tandem | error: ` lines of a run.
fn error_lines(tandem: &Tandem) -> Vec<String> {
    tandem
        .log
        .lines()
        .into_iter()
        .filter(|(stream, l)| *stream == Stream::Stderr && l.starts_with("tandem | error: "))
        .map(|(_, l)| l)
        .collect()
}

/// Runs a config that must be refused: exit 2, nothing started, nothing left running.
fn refused(sandbox: &Sandbox, config: &Path) -> Tandem {
    let mut tandem = Tandem::start_config(
        Mode::Wrapped { mount_ro: false },
        &config_env(sandbox),
        config,
    );
    let code = tandem.wait_exit_code(START_TIMEOUT);
    tandem.assert_no_panic();
    tandem.assert_no_leftovers();
    if let Some(line) = tandem.own_lines().iter().find(|l| l.contains(" started")) {
        tandem.fail(&format!("something was started: {line:?}"));
    }
    if code != 2 {
        tandem.fail(&format!("exit code {code}, expected 2"));
    }
    tandem
}

/// Fails unless each `(anchor, token, words)` has exactly one error line at the token's
/// `FILE:LINE:COLUMN` saying `words`, and there are no other error lines.
fn assert_problems(tandem: &Tandem, config: &Path, text: &str, expected: &[(&str, &str, &str)]) {
    let lines = error_lines(tandem);
    let mut wrong = Vec::new();
    for (anchor, token, words) in expected {
        let (line, col) = locate(text, anchor, token);
        let prefix = format!("tandem | error: {}:{line}:{col}: ", config.display());
        let hits = lines
            .iter()
            .filter(|l| l.starts_with(&prefix) && l.contains(words))
            .count();
        if hits != 1 {
            wrong.push(format!(
                "{hits} lines at {line}:{col} ({token:?} in {anchor:?}) saying {words:?}"
            ));
        }
    }
    if lines.len() != expected.len() {
        wrong.push(format!(
            "{} error lines for {} problems",
            lines.len(),
            expected.len()
        ));
    }
    if !wrong.is_empty() {
        tandem.fail(&format!(
            "problems not reported as expected:\n{}",
            wrong.join("\n")
        ));
    }
}

/// Nine mistakes, each of a different kind, in one file.
#[test]
fn a_config_with_many_mistakes_is_refused_with_one_located_line_each() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-invalid");
    let nobody = "tdm-no-such-user-zz9";
    assert!(
        matches!(nix::unistd::User::from_name(nobody), Ok(None)),
        "{nobody} exists on this machine"
    );
    let text = format!(
        r#"[tandem]
stop_timeout = "2s"
colour = "red"

[service.web]
command = ["sleep", "100"]
required = "yes"
restart = {{ policy = "always", delay = "fast" }}
depends_on = {{ ghost = "started", worker = "completed" }}
user = "{nobody}"

[service.worker]
command = ["tdm-no-such-program-zz9", "--serve"]
depends_on = {{ web = "healthy" }}

[service.slow]
command = ["sleep", "100"]
stop = {{ timeout = "5s" }}
"#
    );
    let config = write_config(&sandbox, &text);
    let tandem = refused(&sandbox, &config);
    assert_problems(
        &tandem,
        &config,
        &text,
        &[
            (
                "colour = \"red\"",
                "colour",
                "unknown key `colour` in [tandem]",
            ),
            (
                "required = \"yes\"",
                "\"yes\"",
                "required must be true or false",
            ),
            ("delay = \"fast\"", "\"fast\"", "\"fast\" is not a duration"),
            (
                "ghost = \"started\"",
                "ghost",
                "depends on \"ghost\", which is not defined",
            ),
            (
                "[service.web]",
                "web",
                "dependency cycle: web -> worker -> web",
            ),
            (
                "worker = \"completed\"",
                "worker",
                "\"worker\" is not a oneshot and never completes",
            ),
            (&format!("user = \"{nobody}\""), "\"", "does not exist"),
            ("[\"tdm-no-such-program-zz9\"", "[", "not found"),
            ("stop = { timeout = \"5s\" }", "\"5s\"", "stop budget"),
        ],
    );
}

/// The budget check on its own (the many-mistakes test has it among others).
#[test]
fn a_stop_timeout_over_the_budget_is_refused_where_it_is_written() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-budget");
    let text = "[tandem]\nstop_timeout = \"2s\"\n\n[service.slow]\ncommand = [\"sleep\", \"100\"]\nstop = { timeout = \"5s\" }\n";
    let config = write_config(&sandbox, text);
    let tandem = refused(&sandbox, &config);
    assert_problems(
        &tandem,
        &config,
        text,
        &[("stop = { timeout = \"5s\" }", "\"5s\"", "stop budget")],
    );
}

// -- 7. a database container ---------------------------------------------------------------

/// How many orphans are dropped into a database-only tandem's namespace.
const ORPHANS: usize = 50;

/// Drops ORPHANS `sleep`s into tandem's pid namespace (an `sh` entered with nsenter starts
/// them and exits, so they are adopted by the namespace's PID 1), checks tandem adopted all
/// of them (without that, the test would pass for a tandem that never sees them), kills
/// them, and waits until no zombie is left. Fails for a PID 1 that does not reap.
fn orphans_are_reaped(tandem: &Tandem) {
    let pid = tandem.pid();
    let script = format!("i=0; while [ $i -lt {ORPHANS} ]; do sleep 1000 & i=$((i+1)); done");
    let status = Command::new("nsenter")
        .arg("--target")
        .arg(pid.to_string())
        .args(["--pid", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("cannot run nsenter");
    assert!(status.success(), "nsenter failed: {status:?}");
    let adopted = || -> Vec<Proc> {
        procs_in_namespace_of(pid)
            .into_iter()
            .filter(|p| p.ppid == pid.as_raw() && p.comm == "sleep")
            .collect()
    };
    // A subshell may not have exec'd its `sleep` yet when `sh` exits: poll.
    let mut sleepers = Vec::new();
    poll_until(SHORT_TIMEOUT, || {
        sleepers = adopted();
        (sleepers.len() == ORPHANS).then_some(())
    });
    if sleepers.len() != ORPHANS {
        tandem.fail(&format!(
            "{} of {ORPHANS} orphans have tandem (pid {pid}) as parent",
            sleepers.len()
        ));
    }
    for p in &sleepers {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    let mut left = Vec::new();
    let reaped = poll_until(SHORT_TIMEOUT, || {
        left = procs_in_namespace_of(pid)
            .into_iter()
            .filter(|p| p.state == 'Z' || p.comm == "sleep")
            .collect();
        left.is_empty().then_some(())
    });
    if reaped.is_none() {
        tandem.fail(&format!("not reaped: {left:?}"));
    }
}

/// A database-only container's promises, started twice by `start`: initialised as the
/// official image would (POSTGRES_DB, password login over TCP), healthy, orphans reaped,
/// SIGTERM -> exit 0 after a clean stop, and the next start serves without recovery.
fn database_container(sandbox: &Sandbox, start: &dyn Fn() -> Tandem) {
    let mut tandem = start();
    tandem.secret = Some(PASSWORD.into());
    tandem.wait_for_line("tandem | postgres is ready", START_TIMEOUT);
    let mut db = password_login(sandbox, PASSWORD);
    match db.query_texts("SELECT current_user::text || '@' || current_database()::text") {
        Ok(rows) if rows == ["tester@testdb"] => {}
        other => tandem.fail(&format!("password login into testdb: {other:?}")),
    }
    db.password = Some("not the password");
    match db.query_texts("SELECT 1::text") {
        Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {}
        other => tandem.fail(&format!("a wrong password must fail with 28P01: {other:?}")),
    }
    let line = wait_healthcheck(&tandem, sandbox, 0, "healthy: postgres ok", START_TIMEOUT);
    if line.contains("app") {
        tandem.fail(&format!(
            "a database-only container reports an app: {line:?}"
        ));
    }
    orphans_are_reaped(&tandem);
    assert_eq!(tandem.stop(), 0, "exit code after SIGTERM");
    tandem.assert_clean_postgres_stop_after("tandem | postgres is ready");
    tandem.assert_secret_absent();
    tandem.assert_no_panic();

    let mut next = start();
    next.wait_for_line("tandem | postgres is ready", START_TIMEOUT);
    if !next.log.contains("already holds a database") {
        next.fail("the second start did not find the initialised directory");
    }
    next.assert_no_recovery();
    wait_healthcheck(&next, sandbox, 0, "healthy: postgres ok", START_TIMEOUT);
    assert_eq!(next.stop(), 0, "second run: exit code after SIGTERM");
}

#[test]
fn database_container_from_a_postgres_section_alone() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-db-only");
    let config = write_config(&sandbox, &postgres_section(&sandbox));
    let env = config_env(&sandbox);
    database_container(&sandbox, &|| {
        Tandem::start_config(Mode::Pid1, &env, &config)
    });
}

#[test]
fn database_container_zero_config_without_a_cmd() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("graph-db-zero");
    let mut env = sandbox.env_with_db();
    env.set("POSTGRES_PASSWORD", PASSWORD)
        .set("TANDEM_POSTGRES", "on");
    database_container(&sandbox, &|| {
        Tandem::start_raw(Mode::Pid1, &env, &[], &[], None)
    });
}
