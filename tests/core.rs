//! tandem as PID 1 with the embedded PostgreSQL and the test app: first start, init scripts,
//! restarts, ordered stop, stop budget, exit codes, signals, PostgreSQL dying.
//!
//! Each test has its own [`Sandbox`] (PGDATA, sockets, ports); tandem runs as PID 1 of a fresh
//! pid namespace. Any failure prints tandem's whole output.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;
use tokio_postgres::error::SqlState;

/// The official image's test suite uses values like these: spaces, and quotes in the password.
const USER: &str = "my cool user";
const PASSWORD: &str = "pa ss'w\"ord %/@:";
const DB: &str = "my cool db";

#[test]
fn first_start_with_spaces_and_quotes_sets_up_auth_and_database_url() {
    let sandbox = Sandbox::new("first-start");
    let mut env = sandbox.env();
    env.set("POSTGRES_USER", USER)
        .set("POSTGRES_PASSWORD", PASSWORD)
        .set("POSTGRES_DB", DB);
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();

    // The app reaches the right database as the right user through DATABASE_URL.
    assert_eq!(tandem.app_ok(&sandbox, "GET", "/health"), "ok");
    let whoami: serde_json::Value =
        serde_json::from_str(&tandem.app_ok(&sandbox, "GET", "/whoami")).unwrap();
    if whoami != serde_json::json!({ "database": DB, "user": USER }) {
        tandem.fail(&format!("/whoami answered {whoami}"));
    }
    let url = tandem.app_ok(&sandbox, "GET", "/env/DATABASE_URL");
    let config: tokio_postgres::Config = url.parse().unwrap_or_else(|e| {
        tandem.fail(&format!("DATABASE_URL does not parse: {e}"));
    });
    let expected_host = tokio_postgres::config::Host::Tcp("127.0.0.1".into());
    let ok = url.starts_with("postgresql://")
        && config.get_user() == Some(USER)
        && config.get_password() == Some(PASSWORD.as_bytes())
        && config.get_dbname() == Some(DB)
        && config.get_hosts() == [expected_host]
        && config.get_ports() == [sandbox.pg_port];
    if !ok {
        tandem.fail(&format!(
            "DATABASE_URL does not match: parsed as {config:?}"
        ));
    }
    // The libpq variables, since the environment did not set them.
    for (name, expected) in [
        ("PGPORT", sandbox.pg_port.to_string()),
        ("PGUSER", USER.to_string()),
        ("PGDATABASE", DB.to_string()),
    ] {
        let value = tandem.app_ok(&sandbox, "GET", &format!("/env/{name}"));
        if value != expected {
            tandem.fail(&format!("{name} is {value:?}, expected {expected:?}"));
        }
    }
    if tandem.app_ok(&sandbox, "GET", "/env/PGHOST").is_empty() {
        tandem.fail("PGHOST is empty");
    }

    // Password authentication over TCP. Clients from 127.0.0.1 stay on trust (initdb's default
    // pg_hba), so connect from 127.0.0.2, which only the appended
    // `host all all all scram-sha-256` line covers.
    let mut db = Db {
        host: "127.0.0.1",
        source: Some("127.0.0.2"),
        port: sandbox.pg_port,
        user: USER,
        password: Some(PASSWORD),
        dbname: DB,
    };
    match db.query_texts("SELECT current_user::text || '@' || current_database()::text") {
        Ok(rows) if rows == [format!("{USER}@{DB}")] => {}
        other => tandem.fail(&format!("right password from 127.0.0.2: {other:?}")),
    }
    db.password = Some("not the password");
    match db.query_texts("SELECT 1::text") {
        Err(err) if err.code() == Some(&SqlState::INVALID_PASSWORD) => {}
        other => tandem.fail(&format!(
            "wrong password from 127.0.0.2 must fail with 28P01, got {other:?}"
        )),
    }
    db.password = None;
    if db.query_texts("SELECT 1::text").is_ok() {
        tandem.fail("no password from 127.0.0.2 was accepted");
    }

    assert_eq!(tandem.stop(), 0, "exit code after SIGTERM");
    tandem.assert_clean_postgres_stop();
    tandem.assert_secret_absent();
    tandem.assert_no_panic();
    // Nor in its URL-encoded form (a logged DATABASE_URL).
    let encoded = url
        .strip_prefix("postgresql://")
        .and_then(|rest| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_string())
        .unwrap_or_else(|| tandem.fail(&format!("no password in DATABASE_URL {url:?}")));
    if tandem.log.text().contains(&encoded) {
        tandem.fail("the URL-encoded password appears in the output");
    }

    // Output routing: the app's stdout on tandem's stdout, PostgreSQL's server log (its
    // stderr) and tandem's own lines on stderr.
    for (stream, line) in tandem.log.lines() {
        let expected = if line.starts_with(APP_READY) {
            Stream::Stdout
        } else if line.starts_with("tandem | ") || line.contains("LOG:  ") {
            Stream::Stderr
        } else {
            continue;
        };
        if stream != expected {
            tandem.fail(&format!(
                "{line:?} arrived on {stream:?}, expected {expected:?}"
            ));
        }
    }
}

#[test]
fn initdb_scripts_run_once_in_sorted_order() {
    let sandbox = Sandbox::new("initdb-order");
    let psql = "psql -v ON_ERROR_STOP=1 --no-psqlrc --username \"$POSTGRES_USER\" \
                --dbname \"$POSTGRES_DB\"";
    // Written in reverse, so that creation order cannot pass for sorted order.
    sandbox.init_script(
        "10-last.sql",
        "INSERT INTO init_log (source) VALUES ('10-last.sql');\n",
        0o644,
    );
    sandbox.init_script(
        "05-ignored.txt",
        "this is not SQL and must be ignored\n",
        0o644,
    );
    sandbox.init_script(
        "04-sourced.sh",
        &format!("{psql} -c \"INSERT INTO init_log (source) VALUES ('04-sourced.sh')\"\n"),
        0o644,
    );
    sandbox.init_script(
        "03-exec.sh",
        &format!(
            "#!/bin/sh\nset -e\n{psql} -c \"INSERT INTO init_log (source) VALUES ('03-exec.sh')\"\n"
        ),
        0o755,
    );
    let plain = sandbox.init_script(
        "02-gz.sql",
        "INSERT INTO init_log (source) VALUES ('02-gz.sql.gz');\n",
        0o644,
    );
    let gzipped = Command::new("gzip").arg(&plain).status().unwrap();
    assert!(gzipped.success(), "gzip failed");
    assert!(sandbox.initdb_dir.join("02-gz.sql.gz").exists());
    sandbox.init_script(
        "01-create.sql",
        "CREATE TABLE init_log (seq serial PRIMARY KEY, source text NOT NULL);\n\
         INSERT INTO init_log (source) VALUES ('01-create.sql');\n",
        0o644,
    );

    let env = sandbox.env_with_db();
    let db = sandbox.test_db(&env);
    let expected = [
        "01-create.sql",
        "02-gz.sql.gz",
        "03-exec.sh",
        "04-sourced.sh",
        "10-last.sql",
    ];
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    match db.query_texts("SELECT source FROM init_log ORDER BY seq") {
        Ok(rows) if rows == expected => {}
        other => tandem.fail(&format!("init_log after the first start: {other:?}")),
    }
    assert_eq!(tandem.stop(), 0, "exit code after SIGTERM");
    tandem.assert_secret_absent();
}

#[test]
fn second_start_skips_initialisation() {
    let sandbox = Sandbox::new("second-start");
    sandbox.init_script(
        "01-count.sql",
        "CREATE TABLE IF NOT EXISTS init_runs (at timestamptz NOT NULL DEFAULT now());\n\
         INSERT INTO init_runs DEFAULT VALUES;\n",
        0o644,
    );
    // The `postgres` user runs the scripts: the marker must be writable for it.
    let marker = sandbox.root.join("sh-runs");
    std::fs::write(&marker, "").unwrap();
    std::fs::set_permissions(&marker, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    sandbox.init_script(
        "02-marker.sh",
        &format!("#!/bin/sh\necho ran >> '{}'\n", marker.display()),
        0o755,
    );
    let env = sandbox.env_with_db();
    let db = sandbox.test_db(&env);
    let count_runs = || db.query_texts("SELECT count(*)::text FROM init_runs");

    let mut first = Tandem::start(&env);
    first.wait_app_ready();
    match count_runs() {
        Ok(rows) if rows == ["1"] => {}
        other => first.fail(&format!("init_runs after the first start: {other:?}")),
    }
    first.app_ok(&sandbox, "POST", "/rows?value=first");
    if first.log.contains("already holds a database") {
        first.fail("the first start claims the directory already holds a database");
    }
    assert_eq!(first.stop(), 0, "first run: exit code after SIGTERM");

    // A variable the environment sets is left alone.
    let mut env = env.clone();
    env.set("PGUSER", "preset-user");
    let mut second = Tandem::start(&env);
    second.wait_app_ready();
    if !second.log.contains("already holds a database") {
        second.fail("no \"already holds a database\" line on the second start");
    }
    match count_runs() {
        Ok(rows) if rows == ["1"] => {}
        other => second.fail(&format!("init .sql re-run? init_runs: {other:?}")),
    }
    let runs = std::fs::read_to_string(&marker).unwrap();
    if runs != "ran\n" {
        second.fail(&format!("init .sh ran {} times", runs.lines().count()));
    }
    assert_eq!(second.app_ok(&sandbox, "GET", "/rows"), r#"["first"]"#);
    assert_eq!(
        second.app_ok(&sandbox, "GET", "/env/PGUSER"),
        "preset-user",
        "a PGUSER set in the environment must not be overridden"
    );
    assert_eq!(second.stop(), 0, "second run: exit code after SIGTERM");
    second.assert_no_recovery();
    second.assert_secret_absent();
}

#[test]
fn sigterm_stops_the_app_before_postgres_and_postgres_cleanly() {
    let sandbox = Sandbox::new("sigterm");
    let env = sandbox.env_with_db();
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    tandem.app_ok(&sandbox, "POST", "/rows?value=before-stop");

    tandem.signal(Signal::SIGTERM);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    // The app's SIGTERM handler opened a fresh connection: PostgreSQL refuses those once it
    // has begun shutting down, so this line proves the app was stopped first.
    if !tandem
        .log
        .contains("app | testapp SIGTERM: database answered")
    {
        tandem.fail("the app did not reach the database during its SIGTERM handling");
    }
    tandem.assert_clean_postgres_stop();
    if code != 0 {
        tandem.fail(&format!("exit code {code}, expected the app's 0"));
    }

    let mut next = Tandem::start(&env);
    next.wait_for_line(
        "database system is ready to accept connections",
        START_TIMEOUT,
    );
    next.wait_app_ready();
    next.assert_no_recovery();
    assert_eq!(next.app_ok(&sandbox, "GET", "/rows"), r#"["before-stop"]"#);
    assert_eq!(next.stop(), 0);
}

#[test]
fn app_ignoring_sigterm_is_killed_inside_the_budget_and_postgres_still_stops_cleanly() {
    let budget = Duration::from_secs(3);
    let sandbox = Sandbox::new("ignore-term");
    let mut env = sandbox.env_with_db();
    env.set("TESTAPP_IGNORE_TERM", "1")
        .set("TANDEM_STOP_TIMEOUT", "3");
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();

    let sent = Instant::now();
    tandem.signal(Signal::SIGTERM);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    let took = tandem.exited_at.unwrap() - sent;
    if !tandem.log.contains("app | testapp ignoring SIGTERM") {
        tandem.fail("the app never got SIGTERM");
    }
    if took > budget + Duration::from_millis(1500) {
        tandem.fail(&format!("stop took {took:?}, budget {budget:?}"));
    }
    // The app's share is the budget minus PostgreSQL's reserve (max(1 s, budget/3) = 1 s):
    // a SIGKILL much earlier would mean the app was not given its time.
    if took < Duration::from_secs(1) {
        tandem.fail(&format!(
            "stop took only {took:?}: the app was not given its share"
        ));
    }
    tandem.assert_clean_postgres_stop();
    if code != 137 {
        tandem.fail(&format!("exit code {code}, expected 137 (app SIGKILLed)"));
    }

    env.remove("TESTAPP_IGNORE_TERM");
    let mut next = Tandem::start(&env);
    next.wait_for_line(
        "database system is ready to accept connections",
        START_TIMEOUT,
    );
    next.wait_app_ready();
    next.assert_no_recovery();
    assert_eq!(next.stop(), 0);
}

#[test]
fn exit_code_of_the_app_is_propagated_after_postgres_stops_cleanly() {
    let sandbox = Sandbox::new("exit-code");
    let env = sandbox.env_with_db();
    // (request, expected exit code): a plain exit, then deaths by SIGKILL and SIGABRT.
    let cases = [
        ("/exit?code=7", 7),
        ("/kill-self?signal=9", 128 + 9),
        ("/kill-self?signal=6", 128 + 6),
    ];
    for (i, (request, expected)) in cases.into_iter().enumerate() {
        let mut tandem = Tandem::start(&env);
        tandem.wait_app_ready();
        if i > 0 {
            // The previous run's PostgreSQL stop must have been clean.
            tandem.wait_for_line(
                "database system is ready to accept connections",
                START_TIMEOUT,
            );
            tandem.assert_no_recovery();
        }
        // The app may die before its answer is read; the exit code is what matters.
        let _ = http("POST", &sandbox.app_url(request));
        let code = tandem.wait_exit_code(STOP_TIMEOUT);
        tandem.assert_clean_postgres_stop();
        if code != expected {
            tandem.fail(&format!("{request}: exit code {code}, expected {expected}"));
        }
    }
    let mut last = Tandem::start(&env);
    last.wait_for_line(
        "database system is ready to accept connections",
        START_TIMEOUT,
    );
    last.assert_no_recovery();
}

#[test]
fn sighup_reloads_postgres_and_sends_the_configured_reload_signal_to_the_app() {
    let sandbox = Sandbox::new("sighup");
    let reload = "received SIGHUP, reloading configuration files";

    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_RELOAD_SIGNAL", "SIGUSR1");
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    tandem.signal(Signal::SIGHUP);
    tandem.wait_for_line(reload, SHORT_TIMEOUT);
    tandem.wait_for_line("app | testapp got SIGUSR1", SHORT_TIMEOUT);
    tandem.signal(Signal::SIGUSR2);
    tandem.wait_for_line("app | testapp got SIGUSR2", SHORT_TIMEOUT);
    tandem.signal(Signal::SIGWINCH);
    tandem.wait_for_line("app | testapp got SIGWINCH", SHORT_TIMEOUT);
    if tandem.log.contains("testapp got SIGHUP") {
        tandem.fail("the app got SIGHUP although its reload signal is SIGUSR1");
    }
    assert_eq!(tandem.stop(), 0);

    // Without a reload signal the app gets nothing on SIGHUP. The SIGUSR1 sent afterwards is
    // the proof that tandem handled the SIGHUP before: its forwarding arrives after it.
    env.remove("TANDEM_APP_RELOAD_SIGNAL");
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    tandem.signal(Signal::SIGHUP);
    tandem.wait_for_line(reload, SHORT_TIMEOUT);
    tandem.signal(Signal::SIGUSR1);
    tandem.wait_for_line("app | testapp got SIGUSR1", SHORT_TIMEOUT);
    if tandem.log.contains("testapp got SIGHUP") {
        tandem.fail("the app got SIGHUP although no reload signal is configured");
    }
    assert_eq!(tandem.app_ok(&sandbox, "GET", "/health"), "ok");
    assert_eq!(tandem.stop(), 0);
}

#[test]
fn postgres_killed_stops_the_app_and_exits_3() {
    let sandbox = Sandbox::new("pg-killed");
    let env = sandbox.env_with_db();
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let tandem_pid = tandem.pid();
    let ns_pid = postmaster_pid(&sandbox.pgdata)
        .unwrap_or_else(|| tandem.fail("no postmaster.pid while the app runs"));
    let host_pid = host_pid_in_namespace(tandem_pid, ns_pid).unwrap_or_else(|| {
        tandem.fail(&format!(
            "postmaster (pid {ns_pid} in the namespace) not found"
        ))
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host_pid), Signal::SIGKILL).unwrap();

    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    // The app was stopped in order (SIGTERM), not merely torn down with the namespace.
    if !tandem.log.contains("app | testapp SIGTERM") {
        tandem.fail("the app was not sent SIGTERM after PostgreSQL died");
    }
    let named = tandem
        .own_lines()
        .iter()
        .any(|line| line.to_lowercase().contains("postgres"));
    if !named {
        tandem.fail("no `tandem | ` line naming postgres");
    }
    if code != 3 {
        tandem.fail(&format!("exit code {code}, expected 3"));
    }
    tandem.assert_secret_absent();
}

#[test]
fn a_second_sigterm_escalates_to_sigkill_for_an_app_ignoring_the_first() {
    let sandbox = Sandbox::new("second-term");
    let mut env = sandbox.env_with_db();
    // A budget so large that only escalation can explain a prompt exit.
    env.set("TESTAPP_IGNORE_TERM", "1")
        .set("TANDEM_STOP_TIMEOUT", "120");
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    tandem.signal(Signal::SIGTERM);
    tandem.wait_for_line("app | testapp ignoring SIGTERM", SHORT_TIMEOUT);
    tandem.signal(Signal::SIGTERM);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    if code != 137 {
        tandem.fail(&format!("exit code {code}, expected 137 (app SIGKILLed)"));
    }
    tandem.assert_clean_postgres_stop();
}

#[test]
fn healthcheck_follows_the_app_health_url_through_the_control_socket() {
    let sandbox = Sandbox::new("healthcheck");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"));
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();

    // `tandem healthcheck` as Docker runs it: a separate process that only knows the socket.
    let healthcheck = || {
        let mut command = Command::new(tandem_bin());
        command
            .arg("healthcheck")
            .env_clear()
            .env("PATH", PATH)
            .env("TANDEM_SOCKET", &sandbox.control_socket);
        let out = command.output().expect("cannot run tandem healthcheck");
        let line = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        (out.status.code(), line)
    };
    let wait_health = |tandem: &Tandem, code: i32, prefix: &str| {
        let mut last = (None, String::new());
        let seen = poll_until(SHORT_TIMEOUT, || {
            last = healthcheck();
            (last.0 == Some(code) && last.1.starts_with(prefix)).then_some(())
        });
        if seen.is_none() {
            tandem.fail(&format!(
                "healthcheck never answered {code} {prefix:?}; last: {last:?}"
            ));
        }
        last.1
    };

    let line = wait_health(&tandem, 0, "healthy");
    if line.lines().count() != 1 || !line.contains("postgres") {
        tandem.fail(&format!(
            "healthcheck line {line:?}: one line naming postgres expected"
        ));
    }
    tandem.app_ok(&sandbox, "POST", "/health/bad");
    wait_health(&tandem, 1, "unhealthy");
    tandem.app_ok(&sandbox, "POST", "/health/good");
    wait_health(&tandem, 0, "healthy");
    assert_eq!(tandem.stop(), 0);

    // Nobody answers any more: unhealthy, not a hang or a crash.
    let (code, line) = healthcheck();
    if code != Some(1) || !line.starts_with("unhealthy") {
        tandem.fail(&format!("healthcheck with tandem gone: {code:?} {line:?}"));
    }
}
