//! The split layout (examples/compose/split/) in a real Docker engine: PostgreSQL in a
//! container of its own (the all-in-one image running tandem with no app), the API scaled to
//! three containers plus a worker, each with tandem as PID 1 in app-only mode waiting for the
//! database as an external service.
//!
//! What is proved: the stack comes up healthy with `--scale api=3`; every API answers its
//! health endpoint from inside the network and they share one database; a database stop
//! turns every API's `tandem healthcheck` red naming db, its start turns them green again,
//! and no API container or app process was restarted for it; `down -v` exits 0 everywhere,
//! PostgreSQL shuts down cleanly, and nothing of the project is left. `docker-compose config`
//! accepts the file, and refuses it without POSTGRES_PASSWORD.
//!
//! Compose is `docker compose` (v2) when the engine's client has it, else `docker-compose`
//! (v1, what images/install-docker.sh installs on Debian 12). Without an engine or Compose the
//! tests print a skip line, unless `CI` is set: there they fail.
//!
//! Every project is named `tandem-split-<pid>-<n>` and taken down with its volumes when its
//! [`Scope`] drops, whether the test passed or not; containers, networks and volumes still
//! labelled with the project after that are removed by label. Nothing else is touched: the
//! engine is shared with other checkouts.

#[path = "support/docker.rs"]
mod docker_support;
use docker_support::{docker, engine_ready, show, stdout, write};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

const TOP: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE_FILE: &str = "examples/compose/split/docker-compose.yml";
const APP_CONFIG: &str = "examples/compose/split/tandem-app.toml";
/// The API's port inside its container, and the example app's health endpoint.
const API_PORT: u16 = 48886;
const HEALTH_PATH: &str = "/api/v1/health";
const DB_NAME: &str = "hive_genie";
const API_REPLICAS: usize = 3;
/// Start to healthy takes seconds; this bound is for a loaded 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the APIs get to notice the database is gone, and to see it back.
const HEALTH_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const CLEAN_SHUTDOWN: &str = "database system is shut down";
const RECOVERY_LINES: [&str; 2] = [
    "database system was not properly shut down",
    "automatic recovery in progress",
];
/// A password that needs no percent-encoding in the URLs built from it.
fn password() -> String {
    format!("split-test-{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The image

/// The all-in-one image both kinds of container run, built once per test binary, by name.
///
/// The one place that knows which image and how it is built. Today: `images/build.sh genie`
/// makes `tandem-genie:local`, the example FastAPI app (examples/hive, `/api/v1/health`
/// answering 200 with `"database": "hive_genie"` while SELECT 1 works, 503 otherwise) on
/// PostgreSQL 15, uvicorn on 48886 as the image's CMD. When the images branch makes the Hive
/// server the default app, this becomes the example-app build (its build argument or target)
/// and its tag; everything else in this file depends only on the CMD serving HEALTH_PATH on
/// API_PORT with that contract.
fn app_image() -> &'static str {
    // The example app's flavour of the image (fast to build, its health endpoint runs
    // SELECT 1, and it keeps notes), tagged as images/build.sh tags it.
    static IMAGE: OnceLock<String> = OnceLock::new();
    const BUILD: [&str; 2] = ["images/build.sh", "genie-example"];
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .args(BUILD)
            .current_dir(TOP)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", BUILD.join(" ")))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", BUILD.join(" "), show(&out)));
        }
        eprintln!(
            "{}: {:?}\n{}",
            BUILD.join(" "),
            started.elapsed(),
            stdout(&out)
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    IMAGE.get_or_init(|| {
        let tag = std::env::var("TANDEM_IMAGE_TAG").unwrap_or_else(|_| "local".into());
        format!("tandem-genie-example:{tag}")
    })
}

// ---------------------------------------------------------------------------------------------
// The tests

/// `docker-compose config` accepts the example; without POSTGRES_PASSWORD it refuses it,
/// naming the variable; no password is written in the compose file or the tandem config.
#[test]
fn compose_config_accepts_the_split_example_and_requires_a_password() {
    let Some(compose) = compose_tool() else {
        return;
    };
    let file = format!("{TOP}/{COMPOSE_FILE}");
    let config = |password: Option<&str>| {
        let mut cmd = compose.command();
        cmd.args(["-f", &file, "config"])
            .env_remove("POSTGRES_PASSWORD");
        if let Some(p) = password {
            cmd.env("POSTGRES_PASSWORD", p);
        }
        cmd.output().expect("cannot run compose")
    };
    let out = config(Some("from-the-environment"));
    assert!(out.status.success(), "compose config: {}", show(&out));
    let resolved = stdout(&out);
    for service in ["db:", "api:", "worker:"] {
        assert!(resolved.contains(service), "no {service} in:\n{resolved}");
    }
    assert!(
        resolved.contains("from-the-environment"),
        "the password is not taken from the environment:\n{resolved}"
    );
    assert!(
        resolved.contains("condition: service_healthy"),
        "the APIs do not wait for a healthy database:\n{resolved}"
    );

    let out = config(None);
    assert!(
        !out.status.success(),
        "compose config accepted the file without POSTGRES_PASSWORD: {}",
        show(&out)
    );
    assert!(
        show(&out).contains("POSTGRES_PASSWORD"),
        "the refusal does not name POSTGRES_PASSWORD: {}",
        show(&out)
    );

    // The shape, service by service, in the file as written.
    let text = read(COMPOSE_FILE);
    for service in ["db", "api", "worker"] {
        let block = service_block(&text, service);
        assert!(
            block.contains(r#"test: ["CMD", "tandem", "healthcheck"]"#),
            "{service}: its health check is not `tandem healthcheck`:\n{block}"
        );
        let budget = seconds(&value_of(&block, "TANDEM_STOP_TIMEOUT"));
        let grace = seconds(&value_of(&block, "stop_grace_period"));
        assert!(
            grace > budget,
            "{service}: stop_grace_period {grace} s is not above TANDEM_STOP_TIMEOUT {budget} s"
        );
        if service == "db" {
            assert_eq!(
                value_of(&block, "command"),
                r#"["--"]"#,
                "db: PostgreSQL alone"
            );
        } else {
            assert!(
                block.contains("condition: service_healthy"),
                "{service}: does not wait for a healthy db"
            );
            assert_eq!(value_of(&block, "TANDEM_CONFIG"), "/etc/tandem/tandem.toml");
            assert!(
                block.contains("./tandem-app.toml:/etc/tandem/tandem.toml:ro"),
                "{service}: the app-only config is not mounted"
            );
        }
    }
    assert!(
        !service_block(&text, "api").contains("ports:"),
        "api publishes a port: --scale api=3 would collide"
    );

    // Every password in the files is a variable; none is written out.
    for rel in [COMPOSE_FILE, APP_CONFIG] {
        let text = read(rel);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if rel.ends_with(".yml") && line.starts_with("POSTGRES_PASSWORD:") {
                assert!(
                    line.contains("${POSTGRES_PASSWORD:?"),
                    "{rel}:{}: {line}",
                    n + 1
                );
            }
            if let Some(at) = line.find("postgresql://") {
                let url = &line[at..];
                let userinfo = url["postgresql://".len()..].split('@').next().unwrap();
                assert_eq!(
                    userinfo,
                    "${POSTGRES_USER}:${POSTGRES_PASSWORD}",
                    "{rel}:{}: a URL with a written-out user or password",
                    n + 1
                );
            }
        }
    }
}

/// The app-only config is valid inside the image, where its user exists: `tandem check`
/// plans the external db first and the image's CMD as the app, no embedded PostgreSQL.
#[test]
fn app_only_config_passes_tandem_check_in_the_image() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    let image = app_image();
    let name = scope.container("check");
    let mount = format!("{TOP}/{APP_CONFIG}:/etc/tandem/tandem.toml:ro");
    let pw = format!("POSTGRES_PASSWORD={}", password());
    let out = docker(&[
        "run",
        "--rm",
        "--name",
        &name,
        "-v",
        &mount,
        "-e",
        "TANDEM_CONFIG=/etc/tandem/tandem.toml",
        "-e",
        &pw,
        image,
        "check",
        "--",
        "uvicorn",
        "app.main:app",
        "--host",
        "0.0.0.0",
        "--port",
        "48886",
    ]);
    assert!(out.status.success(), "tandem check: {}", show(&out));
    let plan = stdout(&out);
    assert!(
        plan.contains("embedded PostgreSQL: off"),
        "an embedded PostgreSQL in an app-only container:\n{plan}"
    );
    assert!(plan.contains("1. db (external)"), "{plan}");
    assert!(plan.contains("2. app when db healthy"), "{plan}");
    assert!(
        plan.contains("as hive"),
        "the app does not run as hive:\n{plan}"
    );
    // The external database is only reported, never restarted (see the report on
    // on_unhealthy = "restart" for external services).
    assert!(
        plan.contains("health: postgres every 2000 ms")
            && plan
                .lines()
                .filter(|l| l.contains("health:"))
                .all(|l| l.ends_with("when unhealthy: report")),
        "{plan}"
    );
    assert!(
        !plan.contains(&password()),
        "the password is in the plan:\n{plan}"
    );
}

/// The whole life of the split stack, in order: up with the API scaled to three, healthy,
/// serving from inside the network; the database stopped and started again under the APIs,
/// which go red naming db and back to green with the same containers and processes; then
/// `down -v`, clean, leaving nothing.
#[test]
fn split_stack_scales_rides_out_a_database_restart_and_goes_down_cleanly() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    let Some(compose) = compose_tool() else {
        return;
    };
    let image = app_image();
    // Only the health-check interval is shortened for the test (the example's is 5 s), in an
    // override file, the way users layer their own settings.
    let dir = scope.dir("compose");
    let override_file = dir.join("docker-compose.override.yml");
    let mut text = String::from("version: \"2.4\"\nservices:\n");
    for service in ["db", "api", "worker"] {
        text.push_str(&format!(
            "  {service}:\n    healthcheck:\n      interval: 500ms\n"
        ));
    }
    write(&override_file, &text);
    let project = scope.project(
        compose,
        &[
            &format!("{TOP}/{COMPOSE_FILE}"),
            override_file.to_str().unwrap(),
        ],
        &[
            ("SPLIT_IMAGE", image.to_string()),
            ("POSTGRES_PASSWORD", password()),
            ("WORKER_PORT", "127.0.0.1:".to_string()),
        ],
    );

    // Up, scaled.
    let started = Instant::now();
    let scale = format!("api={API_REPLICAS}");
    project.ok(&["up", "-d", "--scale", &scale]);
    let up_took = started.elapsed();
    let db = project.one("db");
    let apis = project.containers("api");
    assert_eq!(apis.len(), API_REPLICAS, "api containers: {apis:?}");
    let worker = project.one("worker");
    let mut all_apis = apis.clone();
    all_apis.push(worker.clone());
    let mut everything = all_apis.clone();
    everything.push(db.clone());
    wait_all_healthy(&everything, started + START_TIMEOUT);
    let healthy_took = started.elapsed();
    eprintln!(
        "split stack: `up -d --scale {scale}` returned after {up_took:?}, all {} containers healthy after {healthy_took:?}",
        everything.len()
    );

    // PID 1 of the database container is tandem with PostgreSQL and no app; of each API
    // container tandem with the app and no PostgreSQL.
    let ps = db.exec_ok(&["ps", "-eo", "pid=,user=,comm="]);
    assert!(has_process(&ps, Some(1), "root", "tandem"), "{ps}");
    assert!(has_process(&ps, None, "postgres", "postgres"), "{ps}");
    assert!(
        !ps.contains("uvicorn"),
        "an app in the database container:\n{ps}"
    );
    for api in &all_apis {
        let ps = api.exec_ok(&["ps", "-eo", "pid=,user=,comm="]);
        assert!(
            has_process(&ps, Some(1), "root", "tandem"),
            "{}:\n{ps}",
            api.name
        );
        assert!(
            !ps.contains("postgres"),
            "PostgreSQL in the API container {}:\n{ps}",
            api.name
        );
        // tandem started the app once the database answered, not before.
        let logs = api.logs();
        let ready = logs.find("db is ready");
        let started = logs.find("app started");
        assert!(
            ready.is_some() && started.is_some() && ready < started,
            "{}: the app did not start after the database was ready:\n{logs}",
            api.name
        );
        let line = api.healthcheck();
        assert!(
            line.0 && line.1.starts_with("healthy: db ok") && line.1.contains("app ok"),
            "{}: {line:?}",
            api.name
        );
    }

    // Every API answers from inside the network (asked from the worker, by address), and
    // they share the one database: a note written through one is read through another.
    for api in &all_apis {
        let (status, body) = http_inside(&worker, &api.address(), "GET", HEALTH_PATH, None);
        assert_eq!(status, 200, "{}: {body}\n{}", api.name, api.logs());
        assert!(
            body.contains(&format!("\"database\":\"{DB_NAME}\"")),
            "{}: {body}",
            api.name
        );
    }
    let (status, body) = http_inside(
        &worker,
        &apis[0].address(),
        "POST",
        "/api/v1/notes",
        Some("{\"text\":\"written through api 1\"}"),
    );
    assert_eq!(status, 201, "{body}");
    let notes_via = |c: &Container| {
        let (status, body) = http_inside(&worker, &c.address(), "GET", "/api/v1/notes", None);
        assert_eq!(status, 200, "{}: {body}", c.name);
        body
    };
    assert!(notes_via(&apis[API_REPLICAS - 1]).contains("written through api 1"));
    // And the worker from the host, through its published port.
    let (status, body) = http(&worker.published(API_PORT), "GET", HEALTH_PATH);
    assert_eq!(status, 200, "{body}");

    // The database goes away: each API's health turns red, naming db, in tandem's answer
    // and then in Docker's status; nothing else happens to them.
    let before: Vec<Identity> = all_apis.iter().map(Container::identity).collect();
    let shutdowns = db.logs().matches(CLEAN_SHUTDOWN).count();
    let stop_started = Instant::now();
    project.ok(&["stop", "db"]);
    let db_stop_took = stop_started.elapsed();
    assert_eq!(db.inspect("{{.State.ExitCode}}"), "0", "{}", db.logs());
    assert_eq!(
        db.logs().matches(CLEAN_SHUTDOWN).count(),
        shutdowns + 1,
        "no clean shutdown of the database:\n{}",
        db.logs()
    );
    let deadline = Instant::now() + HEALTH_CHANGE_TIMEOUT;
    for api in &all_apis {
        let line = poll(
            deadline,
            &format!("{} to report db unhealthy", api.name),
            || {
                let (ok, line) = api.healthcheck();
                (!ok && line.starts_with("unhealthy: db")).then_some(line)
            },
        );
        eprintln!("{} while the database is away: {line}", api.name);
        poll(
            deadline,
            &format!("{} to turn unhealthy in Docker", api.name),
            || (api.health() == "unhealthy").then_some(()),
        );
    }
    let red_took = stop_started.elapsed();

    // It comes back: green again, in tandem's answer and in Docker's status.
    let start_started = Instant::now();
    project.ok(&["start", "db"]);
    let start_took = start_started.elapsed();
    let deadline = start_started + HEALTH_CHANGE_TIMEOUT;
    poll(deadline, "the database to answer", || {
        db.healthcheck().0.then_some(())
    });
    let db_green = start_started.elapsed();
    let greens = wait_apis_green(&all_apis, deadline);
    wait_all_healthy(&everything, deadline);
    let docker_green = start_started.elapsed();
    eprintln!(
        "database stop and start: `stop db` took {db_stop_took:?}; every API red (tandem and Docker) {red_took:?} after the stop began; \
         `start db` returned after {start_took:?}, the database answered after {db_green:?}, \
         each API green in tandem after {greens:?}, every container healthy in Docker after {docker_green:?}"
    );

    // From PostgreSQL's "ready" to each API's tandem logging the database healthy again, by
    // Docker's timestamps on the log lines: a figure, from its own probes (every 2 s). An
    // API whose probes did not fail `retries` times in a row logged neither line.
    let db_ready = db
        .log_time("database system is ready to accept connections")
        .expect("no ready line in the database's log");
    let noticed: Vec<String> = all_apis
        .iter()
        .map(|api| match api.log_time("db is healthy again") {
            Some(t) => format!("{:.0} ms", (t - db_ready) * 1000.0),
            None => "not marked unhealthy".to_string(),
        })
        .collect();
    eprintln!("PostgreSQL ready to each API's tandem logging db healthy again: {noticed:?}");

    // `docker-compose restart db`, as the example's comment says: green again, likewise.
    let restart_started = Instant::now();
    project.ok(&["restart", "db"]);
    let restart_took = restart_started.elapsed();
    let deadline = restart_started + HEALTH_CHANGE_TIMEOUT;
    let greens = wait_apis_green(&all_apis, deadline);
    wait_all_healthy(&everything, deadline);
    eprintln!(
        "`restart db` returned after {restart_took:?}; each API green in tandem after {greens:?}, every container healthy in Docker after {:?}",
        restart_started.elapsed()
    );
    assert_eq!(
        db.logs().matches(CLEAN_SHUTDOWN).count(),
        shutdowns + 2,
        "no clean shutdown of the database at its restart:\n{}",
        db.logs()
    );
    let logs = db.logs();
    for line in RECOVERY_LINES {
        assert!(!logs.contains(line), "{line:?} after the restart:\n{logs}");
    }

    // The same containers, started once, and the same app processes, never restarted.
    let after: Vec<Identity> = all_apis.iter().map(Container::identity).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "an API was restarted over the database restart");
        assert_eq!(a.docker_restarts, "0", "{a:?}");
        assert_eq!(a.app_restarts, 0, "{a:?}");
    }
    // The data is still there, through another API.
    assert!(notes_via(&apis[1]).contains("written through api 1"));

    // Down: every container exits 0, PostgreSQL shuts down cleanly, nothing is left.
    let waits: Vec<(String, Child)> = everything
        .iter()
        .map(|c| {
            let child = Command::new("docker")
                .args(["wait", &c.name])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            (c.name.clone(), child)
        })
        .collect();
    let db_log = Command::new("sh")
        .args(["-c", "exec docker logs -f \"$0\" 2>&1", &db.name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let down_started = Instant::now();
    project.ok(&["down", "-v"]);
    let down_took = down_started.elapsed();
    for (name, child) in waits {
        let out = child.wait_with_output().unwrap();
        assert_eq!(stdout(&out), "0", "exit code of {name} after down");
    }
    let db_log = String::from_utf8_lossy(&db_log.wait_with_output().unwrap().stdout).to_string();
    assert_eq!(
        db_log.matches(CLEAN_SHUTDOWN).count(),
        shutdowns + 3,
        "no clean PostgreSQL shutdown at down:\n{db_log}"
    );
    let left = project.leftovers();
    assert!(left.is_empty(), "left after down -v: {left:?}");
    eprintln!("down -v took {down_took:?}");
    assert!(
        down_took < Duration::from_secs(30),
        "down took {down_took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose, engine, scope

/// How Compose is run here: `docker compose` (v2) or `docker-compose` (v1).
#[derive(Clone, Copy, Debug)]
enum Compose {
    V2,
    V1,
}

impl Compose {
    fn command(self) -> Command {
        match self {
            Compose::V2 => {
                let mut c = Command::new("docker");
                c.args(["compose", "--ansi", "never"]);
                c
            }
            Compose::V1 => {
                let mut c = Command::new("docker-compose");
                c.args(["--ansi", "never"]);
                c
            }
        }
    }
}

fn compose_tool() -> Option<Compose> {
    static FOUND: OnceLock<Option<Compose>> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if works("docker", &["compose", "version"]) {
            Some(Compose::V2)
        } else if works("docker-compose", &["version"]) {
            Some(Compose::V1)
        } else {
            None
        }
    });
    match found {
        Some(c) => Some(c),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but neither `docker compose` nor docker-compose works; run images/install-docker.sh")
        }
        None => {
            eprintln!("skipped: neither `docker compose` nor docker-compose is installed");
            None
        }
    }
}

/// Everything one test creates, removed on drop (also when the test panics).
struct Scope {
    projects: Vec<Project>,
    containers: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Scope {
    fn new() -> Option<Scope> {
        if !engine_ready() {
            return None;
        }
        Some(Scope {
            projects: vec![],
            containers: vec![],
            dirs: vec![],
        })
    }

    /// `tandem-split-<pid>-<n>-<what>`: unique to this run.
    fn name(&mut self, what: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("tandem-split-{}-{n}-{what}", std::process::id())
    }

    fn container(&mut self, what: &str) -> String {
        let name = self.name(what);
        self.containers.push(name.clone());
        name
    }

    fn dir(&mut self, what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(self.name(what));
        self.dirs.push(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn project(&mut self, compose: Compose, files: &[&str], env: &[(&str, String)]) -> Project {
        let project = Project {
            compose,
            name: self.name("stack"),
            files: files.iter().map(|f| f.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        self.projects.push(project.clone());
        project
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for p in &self.projects {
            let _ = p.run(&["down", "-v", "--remove-orphans", "--timeout", "10"]);
            // Whatever `down` left (it failed, or the file could not be read): by label.
            for (kind, id) in p.leftovers() {
                let _ = Command::new("docker")
                    .args(match kind {
                        "container" => vec!["rm", "-f", "-v", &id],
                        "network" => vec!["network", "rm", &id],
                        _ => vec!["volume", "rm", "-f", &id],
                    })
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Compose project: its name, files and the environment its files interpolate.
#[derive(Clone)]
struct Project {
    compose: Compose,
    name: String,
    files: Vec<String>,
    env: Vec<(String, String)>,
}

impl Project {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.compose.command();
        cmd.args(["-p", &self.name]);
        for f in &self.files {
            cmd.args(["-f", f]);
        }
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("cannot run compose")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "compose {args:?}: {}", show(&out));
        stdout(&out)
    }

    /// The service's containers, by id.
    fn containers(&self, service: &str) -> Vec<Container> {
        self.ok(&["ps", "-q", service])
            .lines()
            .map(|id| {
                let name = stdout(&docker(&["inspect", "--format", "{{.Name}}", id.trim()]));
                Container {
                    name: name.trim_start_matches('/').to_string(),
                }
            })
            .collect()
    }

    fn one(&self, service: &str) -> Container {
        let mut all = self.containers(service);
        assert_eq!(all.len(), 1, "{service}: one container");
        all.remove(0)
    }

    /// Containers, networks and volumes labelled with this project.
    fn leftovers(&self) -> Vec<(&'static str, String)> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut out = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            for id in stdout(&docker(&args)).lines() {
                out.push((kind, id.to_string()));
            }
        }
        out
    }
}

/// A container by name or id.
#[derive(Clone, Debug)]
struct Container {
    name: String,
}

/// What must not change when the database restarts under an API.
#[derive(Debug, PartialEq)]
struct Identity {
    container: String,
    started_at: String,
    docker_restarts: String,
    app_pid: u64,
    app_restarts: u64,
}

impl Container {
    fn inspect(&self, format: &str) -> String {
        let out = docker(&["inspect", "--format", format, &self.name]);
        assert!(out.status.success(), "docker inspect: {}", show(&out));
        stdout(&out)
    }

    fn health(&self) -> String {
        self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name];
        all.extend(args);
        docker(&all)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "docker exec {} {args:?}: {}",
            self.name,
            show(&out)
        );
        stdout(&out)
    }

    /// When the last log line containing `needle` was written, in seconds of the day (by
    /// `docker logs -t`; for figures, not for deciding anything).
    fn log_time(&self, needle: &str) -> Option<f64> {
        let out = docker(&["logs", "-t", &self.name]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text.lines().rfind(|l| l.contains(needle))?;
        let time = line.split_whitespace().next()?.split_once('T')?.1;
        let mut parts = time.trim_end_matches('Z').split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    }

    /// `tandem healthcheck` in the container: whether it passed, and its line.
    fn healthcheck(&self) -> (bool, String) {
        let out = self.exec(&["tandem", "healthcheck"]);
        (out.status.success(), stdout(&out))
    }

    /// The container's address on the project's network.
    fn address(&self) -> String {
        let ip = self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}");
        let ip = ip.split_whitespace().next().unwrap_or_else(|| {
            panic!("{} has no address", self.name);
        });
        format!("{ip}:{API_PORT}")
    }

    fn published(&self, port: u16) -> String {
        let out = docker(&["port", &self.name, &format!("{port}/tcp")]);
        stdout(&out)
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("port {port} is not published on 127.0.0.1: {}", show(&out)))
            .to_string()
    }

    fn identity(&self) -> Identity {
        let status: serde_json::Value =
            serde_json::from_str(&self.exec_ok(&["tandem", "status", "--json"])).unwrap();
        let app = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "app")
            .unwrap_or_else(|| panic!("{}: no app in {status}", self.name))
            .clone();
        Identity {
            container: self.inspect("{{.Id}}"),
            started_at: self.inspect("{{.State.StartedAt}}"),
            docker_restarts: self.inspect("{{.RestartCount}}"),
            app_pid: app["pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: app has no pid: {status}", self.name)),
            app_restarts: app["restarts"].as_u64().unwrap(),
        }
    }
}

/// Polls every API's `tandem healthcheck` (each in a thread of its own, so one's `docker
/// exec` does not delay the others' answers) until each says healthy with db ok; the time
/// each first did, from now.
fn wait_apis_green(apis: &[Container], deadline: Instant) -> Vec<Duration> {
    let began = Instant::now();
    thread::scope(|s| {
        let handles: Vec<_> = apis
            .iter()
            .map(|api| {
                s.spawn(move || {
                    poll(
                        deadline,
                        &format!("{} to report healthy again", api.name),
                        || {
                            let (ok, line) = api.healthcheck();
                            (ok && line.starts_with("healthy: db ok")).then(|| began.elapsed())
                        },
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Polls until every container is running and healthy in Docker's eyes; fails at once if
/// one stops.
fn wait_all_healthy(containers: &[Container], deadline: Instant) {
    for c in containers {
        poll(deadline, &format!("{} to turn healthy", c.name), || {
            let state =
                c.inspect("{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}");
            if !state.starts_with("running") && !state.starts_with("created") {
                panic!("{} is {state}:\n{}", c.name, c.logs());
            }
            (state == "running healthy").then_some(())
        });
    }
}

/// Calls `f` every POLL until it gives a value; panics at the deadline.
fn poll<T>(deadline: Instant, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(POLL);
    }
}

/// An HTTP request from inside a container (its python3), to an address on its network.
fn http_inside(
    from: &Container,
    addr: &str,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (u16, String) {
    const CLIENT: &str = concat!(
        "import sys, urllib.request, urllib.error\n",
        "url, method, body = sys.argv[1], sys.argv[2], sys.argv[3].encode() or None\n",
        "req = urllib.request.Request(url, data=body, method=method, headers={'Content-Type': 'application/json'})\n",
        "try:\n",
        "    r = urllib.request.urlopen(req, timeout=10)\n",
        "except urllib.error.HTTPError as e:\n",
        "    r = e\n",
        "print(r.status)\n",
        "print(r.read().decode())\n",
    );
    let url = format!("http://{addr}{path}");
    let out = from.exec_ok(&["python3", "-c", CLIENT, &url, method, json.unwrap_or("")]);
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (
        status
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{url}: {out}")),
        body.to_string(),
    )
}

/// One HTTP/1.1 GET from the host with `Connection: close`.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}: {response:?}"));
    (status, body.to_string())
}

/// Whether `ps -eo pid=,user=,comm=` lists such a process.
fn has_process(ps: &str, pid: Option<u32>, user: &str, comm: &str) -> bool {
    ps.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && pid.is_none_or(|p| f[0] == p.to_string()) && f[1] == user && f[2] == comm
    })
}

/// A service's lines in the compose file, comments left out: from `  NAME:` to the next
/// line indented as little (the file keeps to two-space indentation).
fn service_block(text: &str, service: &str) -> String {
    let head = format!("  {service}:");
    let mut lines = text.lines().skip_while(|l| *l != head);
    assert!(
        lines.next().is_some(),
        "no service {service} in the compose file"
    );
    lines
        .take_while(|l| l.is_empty() || l.starts_with("   "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the first `key: value` line of a block, unquoted.
fn value_of(block: &str, key: &str) -> String {
    let prefix = format!("{key}:");
    block
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in:\n{block}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

/// "9", "10s", "1m": whole seconds.
fn seconds(s: &str) -> u64 {
    let (n, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    n.parse::<u64>()
        .unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
        * unit
}

fn read(rel: &str) -> String {
    let path = Path::new(TOP).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
