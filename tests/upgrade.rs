//! Major upgrades and password drift in a real Docker engine, with the upgrade test image
//! (`images/build.sh upgrade`: the genie example image on a base with PostgreSQL 17 and
//! pgvector, and Debian 12's PostgreSQL 15 beside it).
//!
//! A volume is initialised by PostgreSQL 15 once per run (the same image with
//! `PG_BINDIR=/usr/lib/postgresql/15/bin`): a superuser whose name has spaces, a password, a
//! table with an index, a second database. Each test copies it into a volume of its own.
//! Debian 12 has no pgvector for PostgreSQL 15, so the volume holds no `vector` rows: that
//! part of the issue applies where pgvector exists for the old major (it is checked here only
//! that the extension works on the upgraded cluster).
//!
//! Kills are injected two ways: when a given log line appears (mid-pg_upgrade, during the new
//! server's first start), and with the test-only hook `TANDEM_TEST_UPGRADE_PAUSE=PHASE`, which
//! freezes tandem right after its journal records PHASE, so the container is SIGKILLed in
//! exactly that state.
//!
//! Without an engine every test prints a skip line and passes, unless `CI` is set: then they
//! fail.

#[path = "support/docker.rs"]
mod docker_support;
use docker_support::{docker, docker_ok, docker_quiet, image_tag, show, stdout, Container, Scope};

use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const USER: &str = "my cool user";
const PASSWORD: &str = "old secret pw";
const DB: &str = "first db";
const ROWS: i64 = 20_000;
/// An upgrade of the small volume takes about 10 s here; this is for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
const OLD_BIN: &str = "/usr/lib/postgresql/15/bin";
const UPGRADED: &str = "upgraded /var/lib/postgresql/data from PostgreSQL 15 to 17 in";
const ROLLED_BACK: &str =
    "rolled back the upgrade of /var/lib/postgresql/data from PostgreSQL 15 to 17";
const FINISHING: &str =
    "finishing the upgrade of /var/lib/postgresql/data from PostgreSQL 15 to 17";

fn image() -> String {
    format!("tandem-upgrade:{}", image_tag())
}

// ---------------------------------------------------------------------------------------------
// The tests

/// The whole upgrade: healthcheck while it runs, every row, the index, the second database,
/// the superuser and its password over TCP from another container, the analyze after the
/// app, the old files gone; a second start does not upgrade again; the 15 binaries then
/// refuse the directory (newer than they are).
#[test]
fn an_old_volume_is_upgraded_with_its_rows_roles_and_password() {
    let Some(mut scope) = scope() else {
        return;
    };
    let volume = scope.old_volume();
    let network = scope.network();
    let c = scope.on_volume(
        &volume,
        &["--network", &network, "-e", "TANDEM_PG_UPGRADE=auto"],
    );
    // While pg_upgrade runs, healthcheck names the upgrade.
    let deadline = Instant::now() + START_TIMEOUT;
    let line = loop {
        let out = c.exec(&["tandem", "healthcheck"]);
        let line = stdout(&out);
        if line.starts_with("starting: postgres upgrading 15 -> 17: ") {
            assert!(!out.status.success(), "{line}");
            break line;
        }
        assert!(
            Instant::now() < deadline
                && !c.logs().contains(UPGRADED)
                && c.inspect("{{.State.Running}}") == "true",
            "healthcheck never named the upgrade (last: {line:?}):\n{}",
            c.logs()
        );
        thread::sleep(POLL);
    };
    eprintln!("during the upgrade: {line}");
    c.wait_healthy_within(START_TIMEOUT);
    let logs = c.logs();
    assert!(logs.contains(UPGRADED), "{logs}");
    assert!(
        logs.contains("pg_upgrade --link: hard links, old and new are on one filesystem"),
        "{logs}"
    );
    assert_data(&c);
    assert_eq!(
        c.exec_ok(&["cat", "/var/lib/postgresql/data/PG_VERSION"]),
        "17"
    );
    // The password came over with the roles: a login over TCP with scram from elsewhere.
    assert_eq!(
        scope.psql_tcp(&network, &c, PASSWORD, DB, "SELECT current_user"),
        Ok(USER.to_string())
    );
    // pgvector works on the new cluster (the old major has none in this image).
    psql(
        &c,
        DB,
        "CREATE EXTENSION vector; CREATE TABLE v (e vector(3)); INSERT INTO v VALUES ('[1,2,3]')",
    );
    assert_eq!(psql(&c, DB, "SELECT e::text FROM v"), "[1,2,3]");
    // Statistics are rebuilt in the background once the app has started.
    c.wait_log_within("vacuumdb --analyze-in-stages done in", START_TIMEOUT);
    let logs = c.logs();
    let app = logs.find("tandem | app started").expect("app started");
    let analyze = logs
        .find("vacuumdb --all --analyze-in-stages in the background")
        .expect("analyze line");
    assert!(app < analyze, "the analyze began before the app:\n{logs}");
    assert!(logs.contains("removed the PostgreSQL 15 files"), "{logs}");
    assert_eq!(
        c.exec_ok(&[
            "sh",
            "-c",
            "ls -A /var/lib/postgresql/data | grep -c tandem-upgrade || true"
        ]),
        "0"
    );

    // A second start does not upgrade again.
    c.stop();
    c.start();
    c.wait_healthy_within(START_TIMEOUT);
    let logs = c.logs();
    assert_eq!(logs.matches(UPGRADED).count(), 1, "{logs}");
    assert!(logs.contains("already holds a database"), "{logs}");
    assert_data(&c);
    c.stop();

    // The old binaries refuse what is now newer than they are: one line, exit 1.
    let old = scope.on_volume(&volume, &["-e", &format!("PG_BINDIR={OLD_BIN}")]);
    assert_eq!(old.wait_exit(START_TIMEOUT), 1, "{}", old.logs());
    assert!(
        old.logs().contains(
            "was initialised by PostgreSQL 17, and these binaries (/usr/lib/postgresql/15/bin) are PostgreSQL 15: \
             a data directory cannot be downgraded"
        ),
        "{}",
        old.logs()
    );
}

/// Without TANDEM_PG_UPGRADE the old volume is refused with the two fixes, and not one byte
/// of it changes. With it, a cluster pg_upgrade --check refuses (a reg* column) is left as it
/// was, with the check's report in the log, and PostgreSQL 15 serves it as before.
#[test]
fn an_old_volume_is_left_alone_when_the_upgrade_is_off_or_its_check_fails() {
    let Some(mut scope) = scope() else {
        return;
    };
    let volume = scope.old_volume();
    let before = tree_checksum(&volume);
    let c = scope.on_volume(&volume, &[]);
    assert_eq!(c.wait_exit(START_TIMEOUT), 1, "{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains(
            "PGDATA /var/lib/postgresql/data was initialised by PostgreSQL 15, and these binaries \
             (/usr/lib/postgresql/17/bin) are PostgreSQL 17: set TANDEM_PG_UPGRADE=auto"
        ) && logs.contains("dump it with PostgreSQL 15"),
        "{logs}"
    );
    assert!(
        !logs.contains("database system is ready"),
        "a server started:\n{logs}"
    );
    assert_eq!(
        tree_checksum(&volume),
        before,
        "the volume changed:\n{logs}"
    );
}

/// SIGKILL at several points of the upgrade, then a normal start: healthy, every row there,
/// and a line saying whether the upgrade was rolled back (and done again) or finished.
#[test]
fn a_kill_anywhere_in_the_upgrade_is_rolled_back_or_finished() {
    let Some(mut scope) = scope() else {
        return;
    };
    enum At {
        /// The test-only hook: frozen right after the journal says this phase.
        Phase(&'static str),
        /// Killed when this line appears in the log.
        Line(&'static str),
        /// `docker stop` (SIGTERM) when this line appears.
        Stop(&'static str),
    }
    // (where, what the next start must say)
    let either = "either";
    let points = [
        // pg_upgrade has just renamed the old pg_control, and links and syncs the files;
        // the kill lands during that or, on a quick machine, after it: either is right.
        (
            At::Line("Adding \".old\" suffix to old global/pg_control"),
            either,
        ),
        // Every old file moved out of PGDATA, none of the new ones in yet.
        (At::Phase("swap-in"), FINISHING),
        // Past the point of no return, right before the new server's first start.
        (At::Phase("started"), FINISHING),
        // A stop during pg_upgrade: it is killed at once and tandem exits, well inside the
        // 9 s budget; the next start rolls back.
        (At::Stop("Performing Upgrade"), ROLLED_BACK),
    ];
    for (at, said) in points {
        let volume = scope.old_volume();
        let mut args = vec!["-e".to_string(), "TANDEM_PG_UPGRADE=auto".to_string()];
        let needle = match at {
            At::Phase(p) => {
                args.extend(["-e".into(), format!("TANDEM_TEST_UPGRADE_PAUSE={p}")]);
                format!("TANDEM_TEST_UPGRADE_PAUSE={p}: paused")
            }
            At::Line(l) | At::Stop(l) => l.to_string(),
        };
        let flags: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = scope.on_volume(&volume, &flags);
        c.wait_log_within(&needle, START_TIMEOUT);
        if let At::Stop(_) = at {
            let t = Instant::now();
            c.stop();
            let took = t.elapsed();
            let logs = c.logs();
            assert!(
                took < Duration::from_secs(5),
                "docker stop took {took:?}:\n{logs}"
            );
            assert!(
                logs.contains(
                    "the upgrade from PostgreSQL 15 to 17 was stopped in phase upgrading"
                ),
                "{logs}"
            );
            eprintln!(
                "docker stop during pg_upgrade: {took:?}, exit {}",
                c.inspect("{{.State.ExitCode}}")
            );
        } else {
            docker_ok(&["kill", "-s", "KILL", &c.name]);
        }
        let killed_logs = c.logs();
        // After the last kill the old files are kept (TANDEM_PG_UPGRADE_KEEP_OLD=on).
        let keep = matches!(at, At::Phase("started"));
        let keep_flag = format!(
            "TANDEM_PG_UPGRADE_KEEP_OLD={}",
            if keep { "on" } else { "off" }
        );
        let next = scope.on_volume(&volume, &["-e", "TANDEM_PG_UPGRADE=auto", "-e", &keep_flag]);
        next.wait_healthy_within(START_TIMEOUT);
        if keep {
            next.wait_log_within("kept the PostgreSQL 15 files in", START_TIMEOUT);
        }
        let logs = next.logs();
        let said = match said {
            "either" if logs.contains(ROLLED_BACK) => ROLLED_BACK,
            "either" => FINISHING,
            s => s,
        };
        assert!(
            logs.contains(said),
            "killed at {needle:?}: no {said:?} at the next start:\n{logs}\n--- the killed start:\n{killed_logs}"
        );
        assert!(logs.contains("PostgreSQL 17"), "{logs}");
        assert_data(&next);
        next.stop();
        eprintln!("killed at {needle:?}: {said}");
        if keep {
            assert!(
                logs.contains("kept the PostgreSQL 15 files in /var/lib/postgresql/data/.tandem-upgrade/old (TANDEM_PG_UPGRADE_KEEP_OLD=on): "),
                "{logs}"
            );
            let after = scope.on_volume(&volume, &[]);
            after.wait_healthy_within(START_TIMEOUT);
            let logs = after.logs();
            assert!(
                logs.contains("removed the kept files of the upgrade from PostgreSQL 15 to 17"),
                "{logs}"
            );
            assert_data(&after);
            after.stop();
        }
    }
}

/// A changed POSTGRES_PASSWORD is reported once, without printing it, then stored with
/// TANDEM_PG_SYNC_PASSWORD=on; the new password works over TCP (scram).
#[test]
fn a_changed_password_is_reported_then_synced() {
    let Some(mut scope) = scope() else {
        return;
    };
    const NEW_PASSWORD: &str = "a brand new pw";
    let volume = scope.volume();
    let network = scope.network();
    // A 17 volume of its own: the image's own first start.
    let first = scope.on_volume_with(&volume, PASSWORD, &["--network", &network]);
    first.wait_healthy_within(START_TIMEOUT);
    first.stop();

    let drifted = scope.on_volume_with(&volume, NEW_PASSWORD, &["--network", &network]);
    drifted.wait_log_within("already holds a database", START_TIMEOUT);
    drifted.wait_log_within("is not the stored password of", START_TIMEOUT);
    let warning = format!(
        "POSTGRES_PASSWORD is not the stored password of {USER:?} (it is applied only when the data directory is initialised): \
         logins that check the password (pg_hba.conf lines other than trust) will fail; set TANDEM_PG_SYNC_PASSWORD=on to store it"
    );
    let logs = drifted.logs();
    assert_eq!(logs.matches(&warning).count(), 1, "{logs}");
    assert_eq!(
        scope.psql_tcp(&network, &drifted, NEW_PASSWORD, DB, "SELECT 1"),
        Err("password authentication failed".into()),
        "{logs}"
    );
    drifted.stop();

    let synced = scope.on_volume_with(
        &volume,
        NEW_PASSWORD,
        &["--network", &network, "-e", "TANDEM_PG_SYNC_PASSWORD=on"],
    );
    synced.wait_healthy_within(START_TIMEOUT);
    let logs = synced.logs();
    assert!(
        logs.contains(&format!(
            "POSTGRES_PASSWORD differed from the stored password of {USER:?}: set it to POSTGRES_PASSWORD"
        )),
        "{logs}"
    );
    assert_eq!(
        psql(
            &synced,
            DB,
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = current_user"
        ),
        "t"
    );
    assert_eq!(
        scope.psql_tcp(&network, &synced, NEW_PASSWORD, DB, "SELECT current_user"),
        Ok(USER.to_string())
    );
    assert!(
        scope
            .psql_tcp(&network, &synced, PASSWORD, DB, "SELECT 1")
            .is_err(),
        "the old password still works"
    );
    synced.stop();
    // A start after that has nothing to say about it.
    synced.start();
    synced.wait_healthy_within(START_TIMEOUT);
    let logs = synced.logs();
    assert_eq!(
        logs.matches("differed from the stored password").count(),
        1,
        "{logs}"
    );
    for c in [&first, &drifted, &synced] {
        let logs = c.logs();
        for pw in [PASSWORD, NEW_PASSWORD] {
            assert!(
                !logs.contains(pw),
                "a password in the log of {}:\n{logs}",
                c.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the tests check

/// Every row, the index, the second database, the superuser.
fn assert_data(c: &Container) {
    assert_eq!(
        psql(c, DB, "SELECT count(*), sum(id) FROM items"),
        format!("{ROWS}|{}", ROWS * (ROWS + 1) / 2),
        "{}",
        c.logs()
    );
    assert_eq!(
        psql(
            c,
            DB,
            "SELECT indexname FROM pg_indexes WHERE tablename = 'items' ORDER BY 1"
        ),
        "items_name\nitems_pkey"
    );
    // The index is used and answers.
    assert_eq!(
        psql(
            c,
            DB,
            "SET enable_seqscan = off; SELECT id FROM items WHERE name = 'item 777'"
        ),
        "SET\n777"
    );
    assert_eq!(
        psql(c, "second db", "SELECT note FROM notes"),
        "in the second database"
    );
    assert_eq!(
        psql(c, DB, "SELECT rolname FROM pg_authid WHERE oid = 10"),
        USER
    );
}

/// A checksum of the volume's whole tree: names, modes, owners, sizes, times and contents.
fn tree_checksum(volume: &str) -> String {
    let out = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/d:ro"),
        "--entrypoint",
        "sh",
        &image(),
        "-c",
        "cd /d && { find . -printf '%p %m %U %G %s %T@\\n' | sort; find . -type f -exec sha256sum {} + | sort; } | sha256sum",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    stdout(&out)
}

// ---------------------------------------------------------------------------------------------
// Images, volumes, containers

/// The volume PostgreSQL 15 initialised; tests copy it. Made once and kept for later runs
/// (named by the image tag and [`TEMPLATE_RECIPE`]: change that when what it holds changes).
fn template_volume() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let tag = image().replace([':', '/'], "-");
        let name = format!("{tag}-pg15-template-{TEMPLATE_RECIPE}");
        let done = name.replace("-template-", "-template-ok-");
        if docker(&["volume", "inspect", &done]).status.success() {
            return done;
        }
        docker_quiet(&["volume", "rm", "-f", &name]);
        docker_ok(&["volume", "create", &name]);
        let c = Container {
            name: format!("{name}-init"),
        };
        // Removed however this ends (an earlier run may have left one behind too).
        struct Gone<'a>(&'a str);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                docker_quiet(&["rm", "-f", self.0]);
            }
        }
        docker_quiet(&["rm", "-f", &c.name]);
        let _gone = Gone(&c.name);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &c.name,
            "-v",
            &format!("{name}:/var/lib/postgresql/data"),
            "-e",
            &format!("POSTGRES_USER={USER}"),
            "-e",
            &format!("POSTGRES_PASSWORD={PASSWORD}"),
            "-e",
            &format!("POSTGRES_DB={DB}"),
            "-e",
            &format!("PG_BINDIR={OLD_BIN}"),
            &image(),
            "--",
        ]);
        c.wait_log_within("postgres is ready after", START_TIMEOUT);
        psql(
            &c,
            DB,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL); \
                 INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g; \
                 CREATE INDEX items_name ON items (name)"
            ),
        );
        psql(&c, DB, "CREATE DATABASE \"second db\"");
        psql(
            &c,
            "second db",
            "CREATE TABLE notes (note text); INSERT INTO notes VALUES ('in the second database')",
        );
        docker_ok(&["stop", &c.name]);
        docker_quiet(&["rm", "-f", &c.name]);
        // Only a finished template gets the name later runs look for.
        let staging = name.clone();
        let name = name.replace("-template-", "-template-ok-");
        docker_ok(&["volume", "create", &name]);
        copy_volume(&staging, &name);
        docker_quiet(&["volume", "rm", "-f", &staging]);
        name
    })
}

/// Bump when the template's contents change.
const TEMPLATE_RECIPE: &str = "1";

/// Copies a volume's files, owners, modes and links kept.
fn copy_volume(from: &str, to: &str) {
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{from}:/from:ro"),
        "-v",
        &format!("{to}:/to"),
        "--entrypoint",
        "cp",
        &image(),
        "-a",
        "/from/.",
        "/to/",
    ]);
}

/// What these tests add to the shared scope: the upgrade image on a volume, as USER and DB.
trait UpgradeScope {
    /// A copy of the PostgreSQL 15 volume.
    fn old_volume(&mut self) -> String;
    /// The image as shipped (the example API under tandem) on `volume`, as USER/DB with
    /// the old password; `args` go before the image.
    fn on_volume(&mut self, volume: &str, args: &[&str]) -> Container;
    fn on_volume_with(&mut self, volume: &str, password: &str, args: &[&str]) -> Container;
    /// psql over TCP from another container on `network`; the error's gist on failure.
    fn psql_tcp(
        &mut self,
        network: &str,
        c: &Container,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<String, String>;
}

/// The scope these tests run in: the upgrade image built first.
fn scope() -> Option<Scope> {
    Scope::new(&["upgrade"])
}

impl UpgradeScope for Scope {
    fn old_volume(&mut self) -> String {
        let template = template_volume();
        let name = self.volume();
        copy_volume(template, &name);
        name
    }

    fn on_volume(&mut self, volume: &str, args: &[&str]) -> Container {
        self.on_volume_with(volume, PASSWORD, args)
    }

    fn on_volume_with(&mut self, volume: &str, password: &str, args: &[&str]) -> Container {
        let env = [
            format!("POSTGRES_USER={USER}"),
            format!("POSTGRES_PASSWORD={password}"),
            format!("POSTGRES_DB={DB}"),
        ];
        let mount = format!("{volume}:/var/lib/postgresql/data");
        let mut all = vec!["-v", mount.as_str()];
        for e in &env {
            all.extend(["-e", e.as_str()]);
        }
        all.extend(args);
        self.run(&image(), &all)
    }

    fn psql_tcp(
        &mut self,
        network: &str,
        c: &Container,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<String, String> {
        let name = self.name("psql");
        self.containers.push(name.clone());
        let out = docker(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            network,
            "-e",
            &format!("PGPASSWORD={password}"),
            "--entrypoint",
            "psql",
            &image(),
            "-h",
            &c.name,
            "-U",
            USER,
            "-d",
            db,
            "-X",
            "-At",
            "-c",
            sql,
        ]);
        if out.status.success() {
            Ok(stdout(&out))
        } else if String::from_utf8_lossy(&out.stderr).contains("password authentication failed") {
            Err("password authentication failed".into())
        } else {
            Err(show(&out))
        }
    }
}

/// A query over the local socket as the superuser USER, in `db`.
fn psql(c: &Container, db: &str, sql: &str) -> String {
    c.exec_ok(&[
        "psql",
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        USER,
        "-d",
        db,
        "-c",
        sql,
    ])
}
