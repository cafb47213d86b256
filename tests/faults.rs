//! The fault and abuse suite: what goes wrong in production, done on purpose, against a real
//! tandem (PID 1 of a pid namespace, or in the real Docker engine), real PostgreSQL and the
//! test app. Each scenario asserts what tandem promises and reports what it survived in one
//! line, `faults: ...`, printed (visible with `--nocapture`) and appended to
//! `target/tmp/faults-summary.txt`, which scripts/test.sh prints after the run.
//!
//! - stop/start cycles with writes: as PID 1 (SIGTERM) and in Docker (`docker stop`);
//! - a writer committing one row per transaction across a SIGTERM;
//! - SIGKILL to the app, to the postmaster, to tandem itself (PID 1, `docker kill`);
//! - apps that ignore SIGTERM, leave a setsid daemon, or leave a process tree and exit;
//! - a signal storm; control-socket and HTTP-endpoint abuse; a corpus of bad environments
//!   and configs;
//! - the password in no argv, log, status, event, metric or file.
//!
//! Longer runs: `FAULTS_PID1_CYCLES`, `FAULTS_DOCKER_CYCLES`, `FAULTS_SIGNALS` (and
//! `TANDEM_FUZZ_CASES` for the parsers' fuzz tests in src/config).

mod support;

#[path = "support/docker.rs"]
mod docker_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

// ---------------------------------------------------------------------------------------------
// What every scenario shares

/// Records one line of what a scenario survived: printed, and appended to the summary file.
fn survived(line: &str) {
    let line = format!("faults: {line}");
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-summary.txt");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        eprintln!("cannot append to {}: {e}", path.display());
    }
}

/// A count from the environment (a longer run), else the CI default.
fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What PostgreSQL logs at a start after a stop that was not clean.
const RECOVERY: [&str; 5] = [
    "database system was interrupted",
    "not properly shut down",
    "automatic recovery in progress",
    "redo starts at",
    "redo done at",
];

/// Whether this run's PostgreSQL log shows a crash recovery.
fn recovered(tandem: &Tandem) -> bool {
    RECOVERY.iter().any(|line| tandem.log.contains(line))
}

/// The PostgreSQL programs of the host (the highest major installed).
fn pg_program(name: &str) -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    dirs.sort();
    let (_, dir) = dirs.pop().expect("no /usr/lib/postgresql/N");
    dir.join("bin").join(name)
}

/// `Database cluster state` of `pg_controldata PGDATA`: `shut down` after a clean stop.
fn cluster_state(pgdata: &Path) -> String {
    let out = Command::new(pg_program("pg_controldata"))
        .arg(pgdata)
        .env("LC_ALL", "C")
        .output()
        .expect("cannot run pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| {
            panic!(
                "pg_controldata {}: {}{}",
                pgdata.display(),
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// After tandem exited: PostgreSQL's control file says it was shut down cleanly.
fn assert_shut_down(tandem: &Tandem, pgdata: &Path) {
    let state = cluster_state(pgdata);
    if state != "shut down" {
        tandem.fail(&format!("pg_controldata says {state:?}, not \"shut down\""));
    }
}

/// The rows of the test app's table, straight from PostgreSQL.
fn rows(tandem: &Tandem, sandbox: &Sandbox) -> Vec<String> {
    let body = tandem.app_ok(sandbox, "GET", "/rows");
    serde_json::from_str(&body).unwrap_or_else(|e| tandem.fail(&format!("/rows: {e}: {body}")))
}

/// The host pid of the app (the test app tells its pid in the namespace).
fn app_host_pid(tandem: &Tandem, sandbox: &Sandbox) -> i32 {
    let ns_pid: i32 = tandem
        .app_ok(sandbox, "GET", "/pid")
        .parse()
        .unwrap_or_else(|e| tandem.fail(&format!("/pid: {e}")));
    host_pid_in_namespace(tandem.pid(), ns_pid)
        .unwrap_or_else(|| tandem.fail(&format!("app (pid {ns_pid} inside) not found")))
}

/// The host pid of the postmaster.
fn postmaster_host_pid(tandem: &Tandem, sandbox: &Sandbox) -> i32 {
    let ns_pid = postmaster_pid(&sandbox.pgdata)
        .unwrap_or_else(|| tandem.fail("no postmaster.pid while the app runs"));
    host_pid_in_namespace(tandem.pid(), ns_pid)
        .unwrap_or_else(|| tandem.fail(&format!("postmaster (pid {ns_pid} inside) not found")))
}

fn wrapped() -> Mode {
    Mode::Wrapped { mount_ro: false }
}

fn testapp() -> String {
    testapp_bin().to_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// Stop and start, over and over, with writes

/// Of the 100 stop/start cycles the issue asks for, these run as PID 1 (about 1.1 s each with
/// their writes) and the rest in Docker (`DOCKER_CYCLES`, about 6 s each, the example API's
/// boot included): the two tests run side by side in about two minutes.
const PID1_CYCLES: usize = 80;
const DOCKER_CYCLES: usize = 20;
/// Rows written through the app in each PID-1 cycle.
const ROWS_PER_CYCLE: usize = 25;

/// Each cycle: start, check every row of every earlier cycle is there, write more through
/// the app, SIGTERM to PID 1. Every stop is clean (the app's exit 0, PostgreSQL's fast
/// shutdown, `pg_controldata` says "shut down") and no start recovers.
#[test]
fn stop_start_cycles_as_pid1_lose_nothing_and_never_recover() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let cycles = count_from_env("FAULTS_PID1_CYCLES", PID1_CYCLES);
    let sandbox = Sandbox::new("cycles");
    let env = sandbox.env_with_db();
    let mut expected: Vec<String> = Vec::new();
    let started = Instant::now();
    // Every start checks the rows of every earlier cycle; one more start checks the last.
    for cycle in 0..=cycles {
        let mut tandem = Tandem::start(&env);
        tandem.wait_app_ready();
        if recovered(&tandem) {
            tandem.fail(&format!("start {cycle} recovered from a crash"));
        }
        let found = rows(&tandem, &sandbox);
        if found != expected {
            tandem.fail(&format!(
                "start {cycle}: {} rows found, {} written before",
                found.len(),
                expected.len()
            ));
        }
        if cycle == cycles {
            assert_eq!(tandem.stop(), 0);
            break;
        }
        for row in 0..ROWS_PER_CYCLE {
            let value = format!("c{cycle}-r{row}");
            tandem.app_ok(&sandbox, "POST", &format!("/rows?value={value}"));
            expected.push(value);
        }
        let code = tandem.stop();
        if code != 0 {
            tandem.fail(&format!("cycle {cycle}: exit code {code} after SIGTERM"));
        }
        tandem.assert_clean_postgres_stop();
        tandem.assert_no_panic();
        assert_shut_down(&tandem, &sandbox.pgdata);
    }
    survived(&format!(
        "{cycles} SIGTERM stop/start cycles as PID 1 in {:.0?}, {} rows written through the \
         app, 0 lost, 0 crash recoveries, every stop \"shut down\" by pg_controldata",
        started.elapsed(),
        expected.len()
    ));
}

// ---------------------------------------------------------------------------------------------
// A writer across a SIGTERM

/// A client commits one row per transaction, as fast as it can, over its own connection,
/// while tandem is stopped with SIGTERM: every commit PostgreSQL acknowledged is there after
/// the restart (at most the one in flight when the server went down may be there unacknowledged).
#[test]
fn every_acknowledged_commit_survives_a_sigterm() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("writer");
    let env = sandbox.env_with_db();
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let port = sandbox.pg_port;
    let password = env.get("POSTGRES_PASSWORD").unwrap().to_string();
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let writer = {
        let acked = Arc::clone(&acked);
        thread::spawn(move || {
            block_on(async move {
                let mut config = tokio_postgres::Config::new();
                config
                    .host("127.0.0.1")
                    .port(port)
                    .user("tester")
                    .password(password)
                    .dbname("testdb");
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
                    .batch_execute("CREATE TABLE commits (n bigint PRIMARY KEY)")
                    .await?;
                for n in 0i64.. {
                    // Autocommit: each INSERT is its own transaction, acknowledged when the
                    // call returns.
                    if let Err(e) = client
                        .execute("INSERT INTO commits VALUES ($1)", &[&n])
                        .await
                    {
                        let why = e
                            .as_db_error()
                            .map_or(e.to_string(), |d| d.message().into());
                        return Ok::<_, tokio_postgres::Error>(why);
                    }
                    acked.lock().unwrap().push(n);
                }
                unreachable!()
            })
        })
    };
    // Well into the writing before the stop.
    if poll_until(SHORT_TIMEOUT, || {
        (acked.lock().unwrap().len() >= 300).then_some(())
    })
    .is_none()
    {
        tandem.fail(&format!(
            "the writer committed only {} rows",
            acked.lock().unwrap().len()
        ));
    }
    let at_stop = acked.lock().unwrap().len();
    tandem.signal(Signal::SIGTERM);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    let ended = match writer.join() {
        Ok(Ok(reason)) => reason,
        Ok(Err(e)) => tandem.fail(&format!("the writer could not start: {e}")),
        Err(_) => tandem.fail("the writer panicked"),
    };
    assert_eq!(code, 0, "exit code after SIGTERM");
    tandem.assert_clean_postgres_stop();
    let acked = acked.lock().unwrap().clone();
    if acked.len() <= at_stop {
        tandem.fail("no commit was acknowledged after the SIGTERM: the stop was not under load");
    }

    let mut next = Tandem::start(&env);
    next.wait_app_ready();
    if recovered(&next) {
        next.fail("the restart recovered from a crash");
    }
    let db = sandbox.test_db(&env);
    let mut stored: Vec<i64> = db
        .query_texts("SELECT n::text FROM commits")
        .unwrap_or_else(|e| next.fail(&format!("cannot read the commits: {e}")))
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    stored.sort();
    let missing: Vec<&i64> = acked
        .iter()
        .filter(|n| stored.binary_search(n).is_err())
        .collect();
    if !missing.is_empty() {
        next.fail(&format!(
            "{} acknowledged commits missing, first {:?}; stored {} (first {:?}), acknowledged {}",
            missing.len(),
            &missing[..missing.len().min(10)],
            stored.len(),
            &stored[..stored.len().min(20)],
            acked.len()
        ));
    }
    if stored.len() > acked.len() + 1 {
        next.fail(&format!(
            "{} rows stored, {} acknowledged: more than the one in flight",
            stored.len(),
            acked.len()
        ));
    }
    assert_eq!(next.stop(), 0);
    survived(&format!(
        "a writer committed {} rows one per transaction ({} of them after the SIGTERM), \
         0 acknowledged commits lost, the writer ended with {ended:?}",
        acked.len(),
        acked.len() - at_stop
    ));
}

// ---------------------------------------------------------------------------------------------
// SIGKILL to each part

/// The app SIGKILLed three times with `TANDEM_APP_RESTART=on-failure`: it comes back each time
/// (a new pid, the database still there, every row intact), tandem stays up. A fourth
/// SIGKILL, then SIGTERM while its restart waits: a clean stop (exit 0, PostgreSQL shut down
/// cleanly), nothing left running.
#[test]
fn sigkill_of_the_app_restarts_it_with_every_row_intact() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    const KILLS: usize = 3;
    let sandbox = Sandbox::new("kill-app");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_RESTART", "on-failure");
    let mut tandem = Tandem::start_with(wrapped(), &env, &[&testapp()]);
    tandem.wait_app_ready();
    let mut expected = Vec::new();
    for kill_n in 0..KILLS {
        for row in 0..10 {
            let value = format!("k{kill_n}-r{row}");
            tandem.app_ok(&sandbox, "POST", &format!("/rows?value={value}"));
            expected.push(value);
        }
        let pid = app_host_pid(&tandem, &sandbox);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        // The app's listening line once per start: the first and one per restart.
        tandem.wait_for_count(APP_READY, kill_n + 2, START_TIMEOUT);
        if poll_until(SHORT_TIMEOUT, || http("GET", &sandbox.app_url("/pid")).ok()).is_none() {
            tandem.fail("the restarted app does not answer");
        }
        if app_host_pid(&tandem, &sandbox) == pid {
            tandem.fail("the app has the pid it had before the SIGKILL");
        }
        assert_eq!(
            rows(&tandem, &sandbox),
            expected,
            "rows after kill {kill_n}"
        );
    }
    // One more SIGKILL, then SIGTERM while the restart waits out its backoff.
    let pid = app_host_pid(&tandem, &sandbox);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    tandem.wait_for_count("restarting it in", KILLS + 1, SHORT_TIMEOUT);
    let code = tandem.stop();
    // A stop as asked: 0, not the 137 of the run the restart was dealing with.
    assert_eq!(code, 0, "exit code after SIGTERM during the restart delay");
    tandem.assert_clean_postgres_stop();
    tandem.assert_no_leftovers();
    tandem.assert_no_panic();
    assert_shut_down(&tandem, &sandbox.pgdata);
    survived(&format!(
        "{KILLS} SIGKILLs of the app: restarted each time, {} rows intact; a fourth, then \
         SIGTERM during its restart delay: exit 0, clean stop, 0 processes left",
        expected.len()
    ));
}

/// The postmaster SIGKILLed: what tandem documents (exit code 3, "a required service failed
/// while running") after stopping the app in order; nothing of PostgreSQL is left running
/// (its backends follow their postmaster), and the next start recovers every committed row.
#[test]
fn sigkill_of_the_postmaster_exits_3_and_the_next_start_recovers_every_row() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("kill-postmaster");
    let env = sandbox.env_with_db();
    let mut tandem = Tandem::start_with(wrapped(), &env, &[&testapp()]);
    tandem.wait_app_ready();
    let expected: Vec<String> = (0..50).map(|i| format!("row-{i}")).collect();
    for value in &expected {
        tandem.app_ok(&sandbox, "POST", &format!("/rows?value={value}"));
    }
    let postmaster = postmaster_host_pid(&tandem, &sandbox);
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).unwrap();
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    if code != 3 {
        tandem.fail(&format!("exit code {code}, expected 3 (PostgreSQL failed)"));
    }
    if !tandem.log.contains("app | testapp SIGTERM") {
        tandem.fail("the app was not stopped with SIGTERM after PostgreSQL died");
    }
    tandem.assert_no_leftovers();
    tandem.assert_no_panic();

    let mut next = Tandem::start(&env);
    next.wait_app_ready();
    if !recovered(&next) {
        next.fail("no crash recovery after the postmaster's SIGKILL: was it killed?");
    }
    assert_eq!(rows(&next, &sandbox), expected, "rows after recovery");
    assert_eq!(next.stop(), 0);
    survived(&format!(
        "SIGKILL of the postmaster: the app stopped, exit 3, 0 processes left, \
         crash recovery at the next start, {} of {} rows intact",
        expected.len(),
        expected.len()
    ));
}

/// SIGKILL to tandem as PID 1 (the OOM killer, a power cut): the kernel takes the whole
/// namespace, and the next start recovers every committed row.
#[test]
fn sigkill_of_tandem_as_pid1_loses_no_committed_row() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("kill-pid1");
    let env = sandbox.env_with_db();
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let expected: Vec<String> = (0..50).map(|i| format!("row-{i}")).collect();
    for value in &expected {
        tandem.app_ok(&sandbox, "POST", &format!("/rows?value={value}"));
    }
    let tandem_pid = tandem.pid();
    let members = procs_in_namespace_of(tandem_pid);
    tandem.signal(Signal::SIGKILL);
    tandem.wait_exit(SHORT_TIMEOUT);
    let alive: Vec<&Proc> = members
        .iter()
        .filter(|p| read_proc(p.pid).is_some_and(|now| now.comm == p.comm && now.state != 'Z'))
        .collect();
    if !alive.is_empty() {
        tandem.fail(&format!("still running after PID 1's SIGKILL: {alive:?}"));
    }
    let mut next = Tandem::start(&env);
    next.wait_app_ready();
    if !recovered(&next) {
        next.fail("no crash recovery after SIGKILL of PID 1");
    }
    assert_eq!(rows(&next, &sandbox), expected, "rows after recovery");
    assert_eq!(next.stop(), 0);
    survived(&format!(
        "SIGKILL of tandem as PID 1: {} processes of the namespace gone, recovery at the next \
         start, {} of {} rows intact",
        members.len(),
        expected.len(),
        expected.len()
    ));
}

// ---------------------------------------------------------------------------------------------
// Apps that misbehave

/// Three apps run in turn on one PGDATA, tandem not PID 1 (so that what outlives it can be
/// seen): one ignores SIGTERM, one leaves a daemon that called setsid (and ignores SIGTERM
/// too), one starts a process tree in several sessions and exits. After each, nothing is left
/// running, and PostgreSQL stopped cleanly (each next start recovers nothing).
#[test]
fn misbehaving_apps_leave_nothing_behind_and_postgres_stops_cleanly() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("misbehaving");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_STOP_TIMEOUT", "3");
    let app = testapp();
    let daemon = format!(
        "( setsid sh -c 'trap \"\" TERM HUP; exec sleep 1001' </dev/null >/dev/null 2>&1 & ); \
         echo daemon-up; exec '{app}'"
    );
    let tree = "for i in 1 2 3; do ( sleep 1002 & setsid sleep 1003 & sleep 1004 ) & done; \
                setsid sh -c 'trap \"\" TERM; sleep 1005 & wait' & echo tree-up; exit 0";
    // (what the app does, its command, a variable of its own, tandem's exit code)
    type Case<'a> = (&'a str, Vec<&'a str>, Option<(&'a str, &'a str)>, i32);
    let cases: [Case; 3] = [
        (
            "one ignores SIGTERM",
            vec![&app],
            Some(("TESTAPP_IGNORE_TERM", "1")),
            137,
        ),
        (
            "one leaves a setsid daemon",
            vec!["sh", "-c", &daemon],
            None,
            0,
        ),
        (
            "one leaves a process tree and exits",
            vec!["sh", "-c", tree],
            None,
            0,
        ),
    ];
    let mut names = Vec::new();
    for (what, cmd, var, expected_code) in cases {
        let mut env = env.clone();
        if let Some((k, v)) = var {
            env.set(k, v);
        }
        let mut tandem = Tandem::start_with(wrapped(), &env, &cmd);
        if recovered(&tandem) {
            tandem.fail(&format!("{what}: the start recovered from a crash"));
        }
        let code = if what.contains("exits") {
            tandem.wait_for_line("app | tree-up", START_TIMEOUT);
            tandem.wait_exit_code(STOP_TIMEOUT)
        } else {
            tandem.wait_app_ready();
            tandem.stop()
        };
        if code != expected_code {
            tandem.fail(&format!(
                "{what}: exit code {code}, expected {expected_code}"
            ));
        }
        tandem.assert_no_leftovers();
        tandem.assert_no_panic();
        tandem.assert_clean_postgres_stop_after("postgres is ready");
        assert_shut_down(&tandem, &sandbox.pgdata);
        names.push(what);
    }
    survived(&format!(
        "{} misbehaving apps ({}): 0 processes outlived tandem, PostgreSQL shut down cleanly \
         after each",
        names.len(),
        names.join("; ")
    ));
}

// ---------------------------------------------------------------------------------------------
// A signal storm

/// Mixed SIGHUP/SIGUSR1/SIGUSR2/SIGWINCH during the first start (initdb, the temporary
/// server: up to 1 000 until the app runs), then 1 000 more once it runs, then one SIGTERM:
/// the start goes on, the stop is not lost, nothing crashes, PostgreSQL shuts down cleanly.
#[test]
fn a_signal_storm_then_sigterm_stops_cleanly() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let signals = count_from_env("FAULTS_SIGNALS", 1000);
    let sandbox = Sandbox::new("storm");
    let env = sandbox.env_with_db();
    let mut tandem = Tandem::start(&env);
    let pid = tandem.pid();
    let kinds = [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ];
    // A first storm while PostgreSQL starts and before the app runs: the start goes on.
    let mut early = 0;
    while !tandem.log.contains(APP_READY) && early < signals {
        if kill(pid, kinds[early % kinds.len()]).is_err() {
            tandem.fail(&format!("signal {early} during the start: tandem is gone"));
        }
        early += 1;
        thread::sleep(Duration::from_micros(200));
    }
    tandem.wait_app_ready();
    let storm = Instant::now();
    for i in 0..signals {
        if let Err(e) = kill(pid, kinds[i % kinds.len()]) {
            tandem.fail(&format!("signal {i}: tandem is gone ({e})"));
        }
        // Pending signals of one kind merge into one: a pause lets most of them land
        // separately (pacing only; nothing is asserted about time).
        thread::sleep(Duration::from_micros(200));
    }
    let storm = storm.elapsed();
    let sent = Instant::now();
    tandem.signal(Signal::SIGTERM);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    let stop = tandem.exited_at.unwrap() - sent;
    assert_eq!(code, 0, "exit code after the storm and SIGTERM");
    tandem.assert_no_panic();
    if !tandem
        .log
        .contains("app | testapp SIGTERM: database answered")
    {
        tandem.fail("the app was not stopped before PostgreSQL");
    }
    tandem.assert_clean_postgres_stop();
    assert_shut_down(&tandem, &sandbox.pgdata);
    let forwarded = tandem.log.count("app | testapp got SIG");
    let reloads = tandem
        .log
        .count("received SIGHUP, reloading configuration files");
    if forwarded == 0 || reloads == 0 {
        tandem.fail(&format!(
            "the storm did not arrive: {forwarded} signals at the app, {reloads} reloads"
        ));
    }
    survived(&format!(
        "{early} mixed signals during the start, then {signals} mixed HUP/USR1/USR2/WINCH in {storm:.0?} ({forwarded} reached the app, \
         {reloads} PostgreSQL reloads after coalescing), then SIGTERM: stopped in {stop:.0?}, \
         exit 0, shut down cleanly"
    ));
}

// ---------------------------------------------------------------------------------------------
// Control-socket abuse

/// Runs tandem's CLI (`healthcheck`, `status`) as Docker's health check would: a separate
/// process that knows only the socket. Returns the exit code, stdout, and how long it took.
fn cli(sandbox: &Sandbox, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = Command::new(tandem_bin())
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("TANDEM_SOCKET", &sandbox.control_socket)
        .output()
        .expect("cannot run tandem");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    (out.status.code(), text, took)
}

/// Tells abuser threads to stop when dropped, so that a failing check (a panic inside a
/// `thread::scope`) ends the scope instead of waiting forever for them.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A client that misbehaves in a loop until told to stop.
type Abuser<'a> = &'a (dyn Fn(&AtomicBool) + Sync);

/// Runs each phase's abusers on threads of their own while `during(phase)` runs, and stops
/// them when it returns (or fails).
fn under_abuse(phases: &[(&str, Vec<Abuser>)], during: impl Fn(&str)) {
    for (phase, abusers) in phases {
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            for abuse in abusers {
                s.spawn(|| abuse(&stop));
            }
            let _stop = StopOnDrop(&stop);
            during(phase);
        });
    }
}

/// `phase: N x WHAT, median, max` for each phase's timings, joined with `; `.
fn timings(times: Vec<(String, Vec<Duration>)>, what: &str) -> String {
    times
        .into_iter()
        .map(|(phase, mut t)| {
            t.sort();
            format!(
                "{phase}: {} {what}, median {:.1?}, max {:.1?}",
                t.len(),
                t[t.len() / 2],
                t[t.len() - 1]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How long `tandem healthcheck` may take under abuse: the timeout the images give Docker's
/// health check (`HEALTHCHECK --timeout=5s`), as its own `--timeout`. An answer is normally
/// there in milliseconds; before the control socket's fix, 200 idle clients made it wait
/// 4.5 s and 400 made it time out.
const ABUSED_HEALTHCHECK_TIMEOUT: &str = "5s";
/// How much tandem's memory may grow under the abuse: the server keeps at most 1 024
/// connections (about 2 KiB each) and reads at most 4 KiB of any request.
const ABUSE_RSS_GROWTH_KIB: u64 = 8 * 1024;

/// The control socket of a real PID-1 tandem under abuse: 1 000 idle connections held open,
/// clients sending 10 MB, invalid JSON, and connections opened and closed as fast as they
/// can. Throughout, `tandem healthcheck` answers healthy inside its timeout, and tandem's
/// memory stays within [`ABUSE_RSS_GROWTH_KIB`] of where it started.
#[test]
fn control_socket_abuse_never_keeps_a_healthcheck_out() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("socket-abuse");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"));
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let check = || {
        cli(
            &sandbox,
            &["healthcheck", "--timeout", ABUSED_HEALTHCHECK_TIMEOUT],
        )
    };
    if poll_until(SHORT_TIMEOUT, || (check().0 == Some(0)).then_some(())).is_none() {
        tandem.fail(&format!("never healthy before the abuse: {:?}", check()));
    }
    let pid = tandem.pid();
    let rss_before = rss_kib(pid);
    let rss_max = AtomicU64::new(rss_before);
    let times = Mutex::new(Vec::<(String, Vec<Duration>)>::new());
    // Runs `n` health checks; every one must answer healthy in time.
    let checks = |phase: &str, n: usize| {
        times.lock().unwrap().push((phase.to_string(), Vec::new()));
        for _ in 0..n {
            let (code, line, took) = check();
            if code != Some(0) || !line.starts_with("healthy") {
                tandem.fail(&format!(
                    "{phase}: healthcheck said {code:?} {line:?} after {took:?}"
                ));
            }
            times.lock().unwrap().last_mut().unwrap().1.push(took);
            rss_max.fetch_max(rss_kib(pid), Ordering::Relaxed);
        }
    };
    let connect = || UnixStream::connect(&sandbox.control_socket);

    // 1 000 clients that connect and say nothing, all held open while health checks run.
    let idle: Vec<UnixStream> = (0..1000)
        .map(|i| connect().unwrap_or_else(|e| tandem.fail(&format!("idle client {i}: {e}"))))
        .collect();
    checks("quiet", 10);
    checks("1000 idle connections", 20);
    drop(idle);

    let (big, garbage, churned) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    // 10 MB sends: the server reads at most 4 KiB of a request, answers, and closes.
    let big_send = |stop: &AtomicBool| {
        let chunk = vec![b'x'; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = connect() else { continue };
            for _ in 0..160 {
                if c.write_all(&chunk).is_err() {
                    break;
                }
            }
            big.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Invalid JSON: each gets an error line back.
    let invalid = |stop: &AtomicBool| {
        let lines: [&[u8]; 5] = [
            b"{not json\n",
            b"\"healthz\"\n",
            b"\xff\xfe\x00\n",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
            b"{\"type\":\"health\"}\n",
        ];
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = connect() else { continue };
            let _ = c.write_all(lines[i % lines.len()]);
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            if !answer.contains("\"error\"") {
                tandem.fail(&format!("invalid request answered {answer:?}"));
            }
            garbage.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
    };
    // Open and close as fast as possible.
    let churn = |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            if connect().is_ok() {
                churned.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let phases: [(&str, Vec<Abuser>); 4] = [
        (
            "4 clients sending 10 MB each, over and over",
            vec![&big_send; 4],
        ),
        ("invalid JSON", vec![&invalid; 2]),
        (
            "connections opened and closed as fast as possible",
            vec![&churn; 2],
        ),
        (
            "all of these at once",
            vec![&big_send, &big_send, &invalid, &churn],
        ),
    ];
    under_abuse(&phases, |phase| checks(phase, 10));
    let rss_max = rss_max.load(Ordering::Relaxed);
    let rss_after = rss_kib(pid);
    if rss_max > rss_before + ABUSE_RSS_GROWTH_KIB {
        tandem.fail(&format!(
            "tandem grew from {rss_before} KiB to {rss_max} KiB under the abuse"
        ));
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_clean_postgres_stop();
    tandem.assert_no_panic();
    let times = timings(times.into_inner().unwrap(), "healthy");
    survived(&format!(
        "control socket of a debug-build PID 1: 1000 idle connections, {} tries to send 10 MB, {} \
         invalid requests, {} connections opened and closed; healthchecks ({}); \
         tandem RSS {rss_before} KiB before, {rss_max} KiB at most, {rss_after} KiB after",
        big.into_inner(),
        garbage.into_inner(),
        churned.into_inner(),
        times,
    ));
}

// ---------------------------------------------------------------------------------------------
// Bad environments and configs

/// One bad input: what it is, and what tandem must answer.
struct Bad {
    what: &'static str,
    env: Env,
    /// tandem's arguments and the CMD.
    args: Vec<String>,
    /// Bind-mounted read-only in the test's mount namespace.
    ro_dir: Option<PathBuf>,
    code: i32,
    /// The one error line names one of these.
    names: Vec<String>,
}

/// A corpus of bad environments and config files, beyond what tests/bad_input.rs has: each
/// is refused with exactly one `tandem | ` error line naming the culprit, a non-zero exit,
/// never a panic, nothing left running, the app never started (see [`expect_failure_raw`]).
#[test]
fn a_corpus_of_bad_environments_and_configs_is_one_line_each() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("corpus");
    let root = sandbox.root.clone();
    let path = |name: &str| root.join(name).to_str().unwrap().to_string();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(root.join(name), bytes).unwrap();
        path(name)
    };
    let app = vec!["--".to_string(), testapp()];
    let base = sandbox.env_with_db();
    let mut corpus: Vec<Bad> = Vec::new();
    let mut env_case = |what: &'static str, vars: &[(&str, &[u8])], names: &[&str]| {
        let mut env = base.clone();
        for (k, v) in vars {
            match std::str::from_utf8(v) {
                // Empty: unset it.
                Ok("") => {
                    env.remove(k);
                }
                Ok(text) => {
                    env.set(k, text);
                }
                Err(_) => {
                    env.set_bytes(k, v);
                }
            }
        }
        corpus.push(Bad {
            what,
            env,
            args: app.clone(),
            ro_dir: None,
            code: 1,
            names: names.iter().map(|s| s.to_string()).collect(),
        });
    };

    // Huge values.
    let huge_db = "d".repeat(100 * 1024);
    env_case(
        "a 100 KiB POSTGRES_DB",
        &[("POSTGRES_DB", huge_db.as_bytes())],
        &["POSTGRES_DB"],
    );
    env_case(
        "a stop budget of 10^25 seconds",
        &[("TANDEM_STOP_TIMEOUT", b"10000000000000000000000000")],
        &["TANDEM_STOP_TIMEOUT"],
    );
    env_case(
        "PGPORT past 65535",
        &[("PGPORT", b"99999999999")],
        &["PGPORT"],
    );
    env_case(
        "retries past u32",
        &[
            ("TANDEM_APP_HEALTH_URL", b"http://127.0.0.1:1/"),
            ("TANDEM_APP_HEALTH_RETRIES", b"99999999999999999999"),
        ],
        &["TANDEM_APP_HEALTH_RETRIES"],
    );
    // Not UTF-8.
    env_case(
        "a password that is not UTF-8",
        &[("POSTGRES_PASSWORD", b"pw\xff\xfe")],
        &["POSTGRES_PASSWORD"],
    );
    env_case(
        "a stop budget that is not UTF-8",
        &[("TANDEM_STOP_TIMEOUT", b"9\xc3")],
        &["TANDEM_STOP_TIMEOUT"],
    );
    // Wrong types.
    env_case(
        "a budget in words",
        &[("TANDEM_STOP_TIMEOUT", b"soon")],
        &["TANDEM_STOP_TIMEOUT"],
    );
    env_case("PGPORT in words", &[("PGPORT", b"five")], &["PGPORT"]);
    env_case(
        "TANDEM_POSTGRES=maybe",
        &[("TANDEM_POSTGRES", b"maybe")],
        &["TANDEM_POSTGRES"],
    );
    env_case(
        "an interval in words",
        &[
            ("TANDEM_APP_HEALTH_URL", b"http://127.0.0.1:1/"),
            ("TANDEM_APP_HEALTH_INTERVAL", b"often"),
        ],
        &["TANDEM_APP_HEALTH_INTERVAL"],
    );
    env_case(
        "an unbalanced quote in POSTGRES_INITDB_ARGS",
        &[("POSTGRES_INITDB_ARGS", b"--locale='C")],
        &["POSTGRES_INITDB_ARGS"],
    );
    // Unknown users.
    env_case(
        "an unknown app user",
        &[("TANDEM_APP_USER", b"no-such-user-for-tandem")],
        &["TANDEM_APP_USER"],
    );
    // _FILE: unreadable, huge, not text.
    let dir = path("");
    env_case(
        "a directory as POSTGRES_PASSWORD_FILE",
        &[
            ("POSTGRES_PASSWORD", b""),
            ("POSTGRES_PASSWORD_FILE", dir.as_bytes()),
        ],
        &["POSTGRES_PASSWORD_FILE"],
    );
    let fifo = path("fifo");
    nix::unistd::mkfifo(
        Path::new(&fifo),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    env_case(
        "a FIFO nobody writes to as POSTGRES_PASSWORD_FILE",
        &[
            ("POSTGRES_PASSWORD", b""),
            ("POSTGRES_PASSWORD_FILE", fifo.as_bytes()),
        ],
        &["POSTGRES_PASSWORD_FILE"],
    );
    let big = write("big-password", &vec![b'p'; 1 << 20]);
    env_case(
        "a 1 MiB POSTGRES_PASSWORD_FILE",
        &[
            ("POSTGRES_PASSWORD", b""),
            ("POSTGRES_PASSWORD_FILE", big.as_bytes()),
        ],
        &["POSTGRES_PASSWORD_FILE"],
    );
    let binary = write("binary-user", b"us\xffer\n");
    env_case(
        "a POSTGRES_USER_FILE that is not UTF-8",
        &[
            ("POSTGRES_USER", b""),
            ("POSTGRES_USER_FILE", binary.as_bytes()),
        ],
        &["POSTGRES_USER_FILE"],
    );
    // PGDATA: a file, relative, under a file, on a read-only mount.
    let file = write("pgdata-file", b"not a directory\n");
    env_case(
        "PGDATA as a file",
        &[("PGDATA", file.as_bytes())],
        &["PGDATA", &file],
    );
    env_case("a relative PGDATA", &[("PGDATA", b"data/pg")], &["PGDATA"]);
    let under = format!("{file}/pgdata");
    env_case(
        "PGDATA under a file",
        &[("PGDATA", under.as_bytes())],
        &["PGDATA", &under],
    );
    let ro = root.join("ro-pgdata");
    mkdir(&ro, 0o700);
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    chown_to(&ro, postgres.uid.as_raw(), postgres.gid.as_raw());
    let mut env = base.clone();
    env.set("PGDATA", ro.to_str().unwrap());
    corpus.push(Bad {
        what: "an empty PGDATA owned by postgres on a read-only mount",
        env,
        args: app.clone(),
        ro_dir: Some(ro.clone()),
        code: 1,
        names: vec![ro.to_str().unwrap().to_string(), "PGDATA".into()],
    });

    // Config files.
    let mut config_case = |what: &'static str, file: String, code: i32, names: &[&str]| {
        let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        names.push(file.clone());
        corpus.push(Bad {
            what,
            env: base.clone(),
            args: vec!["--config".into(), file],
            ro_dir: None,
            code,
            names,
        });
    };
    let example = include_str!("../examples/tandem.toml");
    let cut = example.find("hive_genie\"").unwrap() + 4;
    config_case(
        "examples/tandem.toml cut inside a string",
        write("cut-string.toml", &example.as_bytes()[..cut]),
        2,
        &[],
    );
    let cut = example.find("{ shared_buffers").unwrap() + 5;
    config_case(
        "examples/tandem.toml cut inside an inline table",
        write("cut-table.toml", &example.as_bytes()[..cut]),
        2,
        &[],
    );
    config_case(
        "a config that is not UTF-8",
        write("latin1.toml", b"[service.a]\ncommand = [\"caf\xe9\"]\n"),
        2,
        &[],
    );
    config_case(
        "a port that is a string",
        write(
            "port.toml",
            b"[postgres]\nport = \"five\"\n[service.a]\ncommand = [\"true\"]\n",
        ),
        2,
        &["port"],
    );
    config_case(
        "a stop budget of 10^25 seconds in the file",
        write(
            "budget.toml",
            b"[tandem]\nstop_timeout = \"10000000000000000000000000s\"\n[service.a]\ncommand = [\"true\"]\n",
        ),
        2,
        &["stop_timeout"],
    );
    config_case(
        "a dependency cycle",
        write(
            "cycle.toml",
            b"[service.a]\ncommand = [\"true\"]\ndepends_on = { b = \"started\" }\n\
              [service.b]\ncommand = [\"true\"]\ndepends_on = { a = \"started\" }\n",
        ),
        2,
        &["cycle"],
    );
    config_case(
        "an unknown service user",
        write(
            "user.toml",
            b"[service.a]\ncommand = [\"true\"]\nuser = \"no-such-user-for-tandem\"\n",
        ),
        2,
        &["no-such-user-for-tandem"],
    );
    config_case(
        "an env_file that is a FIFO nobody writes to",
        write(
            "env-fifo.toml",
            format!("[service.a]\ncommand = [\"true\"]\nenv_file = \"{fifo}\"\n").as_bytes(),
        ),
        2,
        &[&fifo],
    );
    config_case("a directory as the config", dir.clone(), 2, &[]);
    config_case(
        "a FIFO nobody writes to as the config",
        fifo.clone(),
        2,
        &[],
    );
    config_case("/dev/zero as the config", "/dev/zero".into(), 2, &[]);
    // 2 000 services in a chain: under the size limit, and minutes of planning.
    let chain: String = (0..2000)
        .map(|i| match i {
            0 => "[service.s0]\ncommand = [\"true\"]\n".to_string(),
            _ => format!(
                "[service.s{i}]\ncommand = [\"true\"]\ndepends_on = {{ s{} = \"started\" }}\n",
                i - 1
            ),
        })
        .collect();
    config_case(
        "2 000 services in a chain",
        write("chain.toml", chain.as_bytes()),
        2,
        &["services"],
    );
    let huge = write("huge.toml", &vec![b'#'; 4 << 20]);
    config_case("a 4 MiB config", huge, 2, &[]);

    let started = Instant::now();
    // Every case runs; the failures are reported together.
    let mut failed = Vec::new();
    for bad in &corpus {
        let args: Vec<&str> = bad.args.iter().map(String::as_str).collect();
        let names: Vec<&str> = bad.names.iter().map(String::as_str).collect();
        let run = std::panic::catch_unwind(|| {
            let tandem = expect_failure_raw(
                &bad.env,
                &args,
                &[],
                bad.ro_dir.as_deref(),
                bad.code,
                &names,
            );
            let said = tandem.own_lines().into_iter().find(|l| l.contains("error"));
            eprintln!("{}: {}", bad.what, said.unwrap_or_default());
        });
        if let Err(panic) = run {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {why}", bad.what));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} bad inputs went wrong:\n{}",
        failed.len(),
        corpus.len(),
        failed.join("\n\n")
    );
    survived(&format!(
        "{} bad environments and configs in {:.1?}: each one error line naming it, a non-zero \
         exit, no panic, 0 processes left, the app never started",
        corpus.len(),
        started.elapsed()
    ));
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// Scans every process's argv (`/proc/*/cmdline`) for `secret` until stopped, as fast as it
/// can: a password in argv is readable by every user of the machine while the process runs.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<usize>>,
}

impl ArgvWatch {
    fn start(secret: &str) -> ArgvWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let needle = secret.as_bytes().to_vec();
        let thread = {
            let (stop, hits) = (Arc::clone(&stop), Arc::clone(&hits));
            thread::spawn(move || {
                let mut scans = 0;
                while !stop.load(Ordering::Relaxed) {
                    for p in all_procs() {
                        let Ok(argv) = std::fs::read(format!("/proc/{}/cmdline", p.pid)) else {
                            continue;
                        };
                        if argv.windows(needle.len()).any(|w| w == needle) {
                            let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                            hits.lock()
                                .unwrap()
                                .push(format!("{} ({}): {argv}", p.pid, p.comm));
                        }
                    }
                    scans += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                scans
            })
        };
        ArgvWatch {
            stop,
            hits,
            thread: Some(thread),
        }
    }

    /// Stops the scan: how many passes over /proc it made, and what it found.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let scans = self.thread.take().unwrap().join().unwrap();
        (scans, self.hits.lock().unwrap().clone())
    }
}

/// The watch sees a process that has the secret in its argv (so that finding none means
/// something).
#[test]
fn the_argv_watch_finds_a_password_in_argv() {
    let secret = fresh_password("argv-watch");
    let watch = ArgvWatch::start(&secret);
    let mut child = Command::new("sh")
        .args(["-c", "read -r x", "sh", &secret])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = poll_until(SHORT_TIMEOUT, || {
        (!watch.hits.lock().unwrap().is_empty()).then_some(())
    });
    drop(child.stdin.take());
    let _ = child.wait();
    let (_, hits) = watch.finish();
    assert!(seen.is_some() && hits[0].contains(&secret), "{hits:?}");
}

/// The password (fresh, so no earlier run can have left it anywhere) is in no process's argv
/// at any moment of a first start and a second start, in no log line (plain and JSON, at
/// debug level), in `tandem check`, `tandem status` (table and JSON) or `tandem healthcheck
/// --json`, and in no file left after tandem exits: everything in the sandbox (PGDATA, where
/// PostgreSQL keeps only its SCRAM verifier, which is not the password) and everything new
/// in /tmp, /var/tmp, /dev/shm and /run.
#[test]
fn the_password_is_in_no_argv_log_status_or_file() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("secrets");
    let password = fresh_password("faults");
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut env = sandbox.env_with_db();
    env.set("POSTGRES_PASSWORD", &password)
        .set("TANDEM_HTTP", &http_addr)
        .set("TANDEM_LOG", "debug")
        .set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"))
        .set(
            "TANDEM_DATABASE_URL_AS",
            "APP_URL=postgresql+psycopg,JDBC_URL=jdbc:postgresql",
        );
    sandbox.init_script(
        "01-table.sql",
        "CREATE TABLE secret_probe (n int);\n",
        0o644,
    );
    let watch = SecretWatch::new(&sandbox, &password);
    let mut outputs = Vec::new();
    let mut scans = 0;
    for (run, format) in [("first start", "plain"), ("second start", "json")] {
        let mut env = env.clone();
        if format == "json" {
            env.set("TANDEM_LOG_FORMAT", "json");
        }
        let argv = ArgvWatch::start(&password);
        let mut tandem = Tandem::start(&env);
        // In JSON the app's line is a `"line"` field, not `app | ...`.
        tandem.wait_for_line("testapp listening on", START_TIMEOUT);
        if format == "json" && !tandem.own_lines().is_empty() {
            tandem.fail("TANDEM_LOG_FORMAT=json, yet plain `tandem | ` lines");
        }
        // The app really has it: the check below is not vacuous.
        let url = tandem.app_ok(&sandbox, "GET", "/env/APP_URL");
        if !url.contains(&password) {
            tandem.fail("the app's APP_URL does not carry the password");
        }
        if poll_until(SHORT_TIMEOUT, || {
            (cli(&sandbox, &["healthcheck"]).0 == Some(0)).then_some(())
        })
        .is_none()
        {
            tandem.fail("never healthy");
        }
        for args in [
            &["status"][..],
            &["status", "--json"],
            &["healthcheck", "--json"],
        ] {
            let (_, out, _) = cli(&sandbox, args);
            outputs.push((format!("tandem {}", args.join(" ")), out));
        }
        for path in ["/metrics", "/readyz", "/healthz"] {
            match http_get(&http_addr, path) {
                Ok((200, body)) => outputs.push((format!("GET {path}"), body)),
                other => tandem.fail(&format!("GET {path}: {other:?}")),
            }
        }
        // `tandem events` prints the history, then waits: `timeout` ends it.
        for json in [false, true] {
            let mut events = Command::new("timeout");
            events.args(["2"]).arg(tandem_bin()).arg("events");
            if json {
                events.arg("--json");
            }
            let out = events
                .env_clear()
                .env("PATH", PATH)
                .env("TANDEM_SOCKET", &sandbox.control_socket)
                .output()
                .expect("cannot run tandem events");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !text.contains("all_healthy") && !text.contains("healthy after") {
                tandem.fail(&format!(
                    "tandem events (json {json}) missed the start:\n{text}"
                ));
            }
            outputs.push((format!("tandem events (json {json})"), text));
        }
        assert_eq!(tandem.stop(), 0, "{run}: exit code after SIGTERM");
        let (n, hits) = argv.finish();
        scans += n;
        if !hits.is_empty() {
            tandem.fail(&format!("{run}: the password in argv: {hits:#?}"));
        }
        tandem.assert_secret_absent();
        if tandem.log.count("\"level\"") == 0 && format == "json" {
            tandem.fail("no JSON log lines");
        }
        let files = watch.files();
        if !files.is_empty() {
            tandem.fail(&format!("{run}: files holding the password: {files:#?}"));
        }
    }
    // `tandem check` describes the plan, environment and all.
    let mut check = Command::new(tandem_bin());
    check.arg("check").arg("--").arg(testapp());
    check.env_clear().env("PATH", PATH);
    for (k, v) in [
        ("POSTGRES_PASSWORD", password.as_str()),
        ("POSTGRES_USER", "tester"),
        ("PGDATA", sandbox.pgdata.to_str().unwrap()),
        ("TANDEM_DATABASE_URL_AS", "APP_URL"),
    ] {
        check.env(k, v);
    }
    let out = check.output().expect("cannot run tandem check");
    assert!(out.status.success(), "tandem check: {out:?}");
    outputs.push((
        "tandem check".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ));
    for (what, text) in &outputs {
        assert!(!text.is_empty(), "{what} said nothing");
        assert!(
            !text.contains(&password),
            "{what} shows the password:\n{text}"
        );
    }
    survived(&format!(
        "the password in none of {scans} scans of every /proc/*/cmdline over a first and a \
         second start, nor in the plain or JSON debug logs, {} outputs (status, status \
         --json, healthcheck --json, check, tandem events plain and JSON, /metrics, /readyz, \
         /healthz), nor in any file of the sandbox (PGDATA included) or new in /tmp, \
         /var/tmp, /dev/shm or /run",
        outputs.len()
    ));
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint (`TANDEM_HTTP`: /healthz, /readyz, /metrics)
//
// Its secrets are checked with the others above (/metrics, /readyz, /healthz and `tandem
// events`, human and JSON, in `the_password_is_in_no_argv_log_status_or_file`).

/// How much tandem's memory may grow under HTTP abuse: the endpoint keeps at most 256
/// connections, each with at most an 8 KiB head.
const HTTP_ABUSE_RSS_GROWTH_KIB: u64 = 8 * 1024;

/// The HTTP endpoint of a real PID-1 tandem under abuse: 1 000 connections held open and
/// silent, slowloris clients trickling a head, 10 MB bodies, garbage and oversized heads,
/// and connections opened and closed as fast as possible. Throughout, `/readyz` answers 200
/// and `tandem healthcheck` healthy, supervision goes on (the app is restarted when killed),
/// and tandem's memory stays within [`HTTP_ABUSE_RSS_GROWTH_KIB`].
#[test]
fn http_endpoint_abuse_never_keeps_readyz_or_healthcheck_out() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("http-abuse");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"))
        .set("TANDEM_APP_RESTART", "on-failure")
        .set("TANDEM_HTTP", &addr);
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let ready = || http_get(&addr, "/readyz");
    if poll_until(SHORT_TIMEOUT, || (ready().ok()?.0 == 200).then_some(())).is_none() {
        tandem.fail(&format!(
            "/readyz never 200 before the abuse: {:?}",
            ready()
        ));
    }
    let pid = tandem.pid();
    let rss_before = rss_kib(pid);
    let rss_max = AtomicU64::new(rss_before);
    let times = Mutex::new(Vec::<(String, Vec<Duration>)>::new());
    let checks = |phase: &str, n: usize| {
        times.lock().unwrap().push((phase.to_string(), Vec::new()));
        for _ in 0..n {
            let started = Instant::now();
            match ready() {
                Ok((200, body)) if body.starts_with("healthy") => {}
                other => tandem.fail(&format!("{phase}: /readyz said {other:?}")),
            }
            let took = started.elapsed();
            let (code, line, _) = cli(
                &sandbox,
                &["healthcheck", "--timeout", ABUSED_HEALTHCHECK_TIMEOUT],
            );
            if code != Some(0) {
                tandem.fail(&format!("{phase}: healthcheck said {code:?} {line:?}"));
            }
            times.lock().unwrap().last_mut().unwrap().1.push(took);
            rss_max.fetch_max(rss_kib(pid), Ordering::Relaxed);
        }
    };
    let connect = || TcpStream::connect(&addr);

    let idle: Vec<TcpStream> = (0..1000).filter_map(|_| connect().ok()).collect();
    let held = idle.len();
    checks("1000 silent connections", 20);
    drop(idle);

    let (slow, big, garbage, churned) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    // Slowloris: a head one byte at a time, never finished.
    let slowloris = |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = connect() else { continue };
            slow.fetch_add(1, Ordering::Relaxed);
            for b in b"GET /readyz HTTP/1.1\r\nX-Slow: ".iter().cycle() {
                if stop.load(Ordering::Relaxed) || c.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    // A 10 MB body after a complete head: answered and closed, the body never read whole.
    let big_body = |stop: &AtomicBool| {
        let chunk = vec![b'x'; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = connect() else { continue };
            let _ = c.write_all(b"POST /readyz HTTP/1.1\r\nContent-Length: 10485760\r\n\r\n");
            for _ in 0..160 {
                if c.write_all(&chunk).is_err() {
                    break;
                }
            }
            big.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Garbage: binary, a bad request line, a head far over 8 KiB; each gets 400 or a close.
    let junk = |stop: &AtomicBool| {
        let huge = format!(
            "GET /readyz HTTP/1.1\r\nX: {}\r\n\r\n",
            "y".repeat(64 * 1024)
        );
        let heads: [&[u8]; 4] = [
            b"\xff\xfe\x00\x01\r\n\r\n",
            b"GET\r\n\r\n",
            b"BREW /coffee HTCPCP/1.0\r\n\r\n",
            huge.as_bytes(),
        ];
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = connect() else { continue };
            let _ = c.write_all(heads[i % heads.len()]);
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                tandem.fail(&format!("garbage answered 200: {answer:?}"));
            }
            garbage.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
    };
    let churn = |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            if connect().is_ok() {
                churned.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let phases: [(&str, Vec<Abuser>); 5] = [
        ("20 slowloris clients", vec![&slowloris; 20]),
        ("4 clients sending 10 MB bodies", vec![&big_body; 4]),
        ("garbage and 64 KiB heads", vec![&junk; 2]),
        ("connections opened and closed", vec![&churn; 2]),
        (
            "all of these at once",
            vec![&slowloris, &slowloris, &slowloris, &big_body, &junk, &churn],
        ),
    ];
    under_abuse(&phases, |phase| {
        checks(phase, 10);
        if phase == "all of these at once" {
            // Supervision goes on: the app killed under the abuse is restarted.
            let _ = http("POST", &sandbox.app_url("/kill-self?signal=9"));
            // Back when /readyz says so again (the app's probe passed).
            let back = poll_until(START_TIMEOUT, || {
                let again = tandem.log.count(APP_READY) >= 2;
                (again && matches!(ready(), Ok((200, _)))).then_some(())
            });
            if back.is_none() {
                tandem.fail("the app killed under the abuse was not restarted");
            }
            checks("after the app's restart, under all of it", 5);
        }
    });
    let rss_max = rss_max.load(Ordering::Relaxed);
    if rss_max > rss_before + HTTP_ABUSE_RSS_GROWTH_KIB {
        tandem.fail(&format!(
            "tandem grew from {rss_before} KiB to {rss_max} KiB under the HTTP abuse"
        ));
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_clean_postgres_stop();
    tandem.assert_no_panic();
    let times = timings(times.into_inner().unwrap(), "x 200");
    survived(&format!(
        "HTTP endpoint of a debug-build PID 1: {held} silent connections, {} slowloris clients, \
         {} tries to send 10 MB, {} garbage or oversized heads, {} connections opened and \
         closed, the app killed and restarted meanwhile; /readyz ({}); tandem RSS \
         {rss_before} KiB before, {rss_max} KiB at most",
        slow.into_inner(),
        big.into_inner(),
        garbage.into_inner(),
        churned.into_inner(),
        times,
    ));
}

// ---------------------------------------------------------------------------------------------
// In the real Docker engine

/// The images the Docker scenarios run: the genie image with the example API (quick to
/// build and to boot).
const DOCKER_IMAGES: [&str; 1] = ["genie-example"];
/// Notes written through the API in each Docker cycle.
const NOTES_PER_CYCLE: usize = 10;

/// The notes the example API holds, in order.
fn notes(c: &docker_support::Container) -> Vec<String> {
    let flavor = docker_support::GENIE_EXAMPLE;
    let (status, body) =
        docker_support::http(&c.published(flavor.port), "GET", "/api/v1/notes", None);
    assert_eq!(status, 200, "{body}\n{}", c.logs());
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap().to_string())
        .collect()
}

fn add_note(c: &docker_support::Container, text: &str) {
    let flavor = docker_support::GENIE_EXAMPLE;
    let (status, body) = docker_support::http(
        &c.published(flavor.port),
        "POST",
        "/api/v1/notes",
        Some(&format!("{{\"text\":\"{text}\"}}")),
    );
    assert_eq!(status, 201, "{body}\n{}", c.logs());
}

/// The rest of the 100 cycles: `docker stop` and `docker start` of one container, writing
/// through its API each time; every stop is clean (quick, exit 0, the app before PostgreSQL,
/// a checkpoint), no start recovers, nothing is lost.
#[test]
fn docker_stop_start_cycles_lose_nothing_and_never_recover() {
    use docker_support::{Scope, GENIE_EXAMPLE};
    let Some(mut scope) = Scope::new(&DOCKER_IMAGES) else {
        return;
    };
    let cycles = count_from_env("FAULTS_DOCKER_CYCLES", DOCKER_CYCLES);
    let volume = scope.volume();
    let c = scope.run_app(&GENIE_EXAMPLE.image(), GENIE_EXAMPLE, &volume, &[]);
    let mut expected: Vec<String> = Vec::new();
    let started = Instant::now();
    for cycle in 0..cycles {
        c.wait_healthy();
        assert_eq!(notes(&c), expected, "cycle {cycle}:\n{}", c.logs());
        for n in 0..NOTES_PER_CYCLE {
            let text = format!("c{cycle}-n{n}");
            add_note(&c, &text);
            expected.push(text);
        }
        // Asserts the stop was clean, and that no start so far logged a recovery.
        c.stop_cleanly();
        c.start();
    }
    c.wait_healthy();
    assert_eq!(notes(&c), expected, "after the last cycle:\n{}", c.logs());
    c.stop_cleanly();
    let logs = c.logs();
    let recoveries = RECOVERY.iter().filter(|l| logs.contains(*l)).count();
    assert_eq!(recoveries, 0, "recovery lines in:\n{logs}");
    survived(&format!(
        "{cycles} docker stop/start cycles of {} in {:.0?}, {} notes written through its API, \
         0 lost, 0 crash recoveries, every stop clean and exit 0",
        GENIE_EXAMPLE.image(),
        started.elapsed(),
        expected.len()
    ));
}

/// `docker kill` (SIGKILL to tandem as PID 1): every process of the container is gone, and
/// the next `docker start` recovers every committed note; that run then stops cleanly.
#[test]
fn docker_kill_loses_no_committed_note_and_leaves_no_process() {
    use docker_support::{docker_ok, Scope, CLEAN_SHUTDOWN, GENIE_EXAMPLE};
    let Some(mut scope) = Scope::new(&DOCKER_IMAGES) else {
        return;
    };
    let volume = scope.volume();
    let c = scope.run_app(&GENIE_EXAMPLE.image(), GENIE_EXAMPLE, &volume, &[]);
    c.wait_healthy();
    let expected: Vec<String> = (0..30).map(|n| format!("note-{n}")).collect();
    for text in &expected {
        add_note(&c, text);
    }
    // The host pids of every process in the container.
    let pids: Vec<i32> = docker_ok(&["top", &c.name, "-eo", "pid"])
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(pids.len() >= 3, "tandem, PostgreSQL, the app: {pids:?}");
    docker_ok(&["kill", &c.name]);
    assert_eq!(c.wait_exit(docker_support::STOP_LIMIT), 137, "{}", c.logs());
    let left = poll_until(SHORT_TIMEOUT, || {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| read_proc(*p).is_some_and(|p| p.state != 'Z'))
            .collect();
        alive.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "processes of the killed container still run: {pids:?}"
    );

    let shutdowns = c.logs().matches(CLEAN_SHUTDOWN).count();
    c.start();
    c.wait_healthy();
    let logs = c.logs();
    assert!(
        RECOVERY.iter().any(|l| logs.contains(l)),
        "no crash recovery after docker kill:\n{logs}"
    );
    assert_eq!(notes(&c), expected, "after recovery:\n{logs}");
    c.stop();
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert_eq!(
        c.logs().matches(CLEAN_SHUTDOWN).count(),
        shutdowns + 1,
        "the stop after recovery was not clean:\n{}",
        c.logs()
    );
    survived(&format!(
        "docker kill of a running {}: {} processes gone with it, crash recovery at docker \
         start, {} of {} notes intact, then a clean stop",
        GENIE_EXAMPLE.image(),
        pids.len(),
        expected.len(),
        expected.len()
    ));
}
