//! What the app sees and what it says, with tandem as a real PID 1: the database URL
//! under the app's own names and schemes, the exit code after a stop, and its output as
//! it is relayed (progress bars, very long lines).

mod support;

use nix::sys::signal::Signal;
use support::*;

/// The Hive server's way: HIVE_DATABASE_URL in SQLAlchemy's psycopg scheme, with a user
/// and password that need encoding; the URL logs in, and DATABASE_URL is still there.
#[test]
fn the_database_url_under_the_apps_name_and_scheme_logs_in() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("url-as");
    let mut env = sandbox.env();
    let (user, password, db) = ("my user@x", "p@ss:w/rd ?&=", "hive genie");
    env.set("POSTGRES_USER", user)
        .set("POSTGRES_PASSWORD", password)
        .set("POSTGRES_DB", db)
        .set("POSTGRES_INITDB_ARGS", "--auth-host=scram-sha-256")
        .set(
            "TANDEM_DATABASE_URL_AS",
            "HIVE_DATABASE_URL=postgresql+psycopg,JDBC_URL=jdbc:postgresql",
        );
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    let hive = tandem.app_ok(&sandbox, "GET", "/env/HIVE_DATABASE_URL");
    let rest = hive
        .strip_prefix("postgresql+psycopg://")
        .unwrap_or_else(|| tandem.fail(&format!("scheme of {hive:?}")));
    assert!(!rest.contains(' '), "encoded: {hive}");
    // The same URL with libpq's scheme: what psycopg gets once SQLAlchemy strips its own.
    let url = format!("postgresql://{rest}");
    let config: tokio_postgres::Config = url.parse().unwrap();
    assert_eq!(config.get_user(), Some(user));
    assert_eq!(config.get_password(), Some(password.as_bytes()));
    assert_eq!(config.get_dbname(), Some(db));
    let who = block_on(async move {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let row = client.query_one("SELECT current_user::text", &[]).await?;
        Ok::<String, tokio_postgres::Error>(row.get(0))
    })
    .unwrap_or_else(|e| tandem.fail(&format!("login with {url:?} failed: {e}")));
    assert_eq!(who, user);
    let jdbc = tandem.app_ok(&sandbox, "GET", "/env/JDBC_URL");
    assert!(
        jdbc.starts_with("jdbc:postgresql://127.0.0.1:")
            && jdbc.contains("?user=my%20user%40x&password=p%40ss"),
        "{jdbc}"
    );
    let plain = tandem.app_ok(&sandbox, "GET", "/env/DATABASE_URL");
    assert!(plain.starts_with("postgresql://my%20user%40x:"), "{plain}");
    assert_eq!(tandem.stop(), 0);
}

/// uvicorn re-raises SIGTERM after its graceful shutdown, so it dies "killed by SIGTERM":
/// after a stop tandem was asked for that is a clean stop, exit 0, unless
/// TANDEM_STOP_EXIT=app asks for the app's own 143. An app killed by SIGTERM from someone
/// else, with no stop asked for, keeps 143.
#[test]
fn an_app_ended_by_the_stop_signal_is_a_clean_stop() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    for (mode, want) in [(None, 0), (Some("app"), 143)] {
        let sandbox = Sandbox::new("stop-exit");
        let mut env = sandbox.env();
        env.set("TANDEM_POSTGRES", "off");
        if let Some(m) = mode {
            env.set("TANDEM_STOP_EXIT", m);
        }
        let mut tandem =
            Tandem::start_with(Mode::Pid1, &env, &["sh", "-c", "echo up; exec sleep 1000"]);
        tandem.wait_for_line("app | up", SHORT_TIMEOUT);
        tandem.signal(Signal::SIGTERM);
        let code = tandem.wait_exit_code(STOP_TIMEOUT);
        assert_eq!(code, want, "TANDEM_STOP_EXIT={mode:?}");
        assert!(
            tandem.log.contains("app killed by SIGTERM"),
            "{}",
            tandem.log.text()
        );
    }
    let sandbox = Sandbox::new("stop-exit-own");
    let mut env = sandbox.env();
    env.set("TANDEM_POSTGRES", "off");
    let mut tandem = Tandem::start_with(Mode::Pid1, &env, &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        tandem.wait_exit_code(STOP_TIMEOUT),
        143,
        "not a stop tandem was asked for"
    );
}

/// A progress bar that redraws itself with carriage returns is relayed as its final state;
/// a line longer than 16 KiB is cut with a marker; a burst of lines arrives whole.
#[test]
fn progress_bars_long_lines_and_bursts_are_relayed_sanely() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("output");
    let mut env = sandbox.env();
    env.set("TANDEM_POSTGRES", "off");
    let script = "printf 'Loading  10%%\\rLoading  55%%\\rLoading 100%%\\n'; \
                  head -c 40000 /dev/zero | tr '\\0' x; echo; \
                  i=0; while [ $i -lt 5000 ]; do echo burst-$i; i=$((i+1)); done; echo done";
    let mut tandem = Tandem::start_with(Mode::Pid1, &env, &["sh", "-c", script]);
    tandem.wait_for_line("app | done", START_TIMEOUT);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    assert_eq!(code, 0);
    let lines = tandem.log.lines();
    let app: Vec<&str> = lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("app | "))
        .collect();
    assert_eq!(app[0], "Loading 100%", "the bar's final state only");
    let long = app[1];
    assert_eq!(
        long.len(),
        16 * 1024 + " [... 23616 more bytes cut]".len(),
        "cut"
    );
    assert!(
        long.ends_with(" [... 23616 more bytes cut]"),
        "{}",
        &long[long.len() - 40..]
    );
    let bursts = app.iter().filter(|l| l.starts_with("burst-")).count();
    assert_eq!(bursts, 5000, "every line of the burst, none mangled");
}
