//! The genie and agent images on a real Docker engine. With the Hive server (the images as
//! shipped): health from another container, pgvector, clean stops and restarts with data, a
//! frozen server restarted by tandem, the compose example. With the example API (`APP=example`,
//! quick to build and boot): the official postgres image's contract, data across stops and new
//! containers, signals, zombies.
//!
//! The images are built once per run with `images/build.sh genie agent genie-example
//! agent-example`, which reuses the local base image, the release binary and Docker's layer
//! cache (the Hive server's pip layer is built once and shared by both Hive images). Their tag
//! is `TANDEM_IMAGE_TAG` (default `local`), so two checkouts can share one engine. Without a
//! reachable engine every test prints a skip line and passes, unless `CI` is set: there they
//! fail, because CI must run them (`images/install-docker.sh` installs and starts an engine).
//!
//! Each test works in a [`Scope`]: every container, volume, network, image tag and compose
//! project it creates has a name unique to the run and is removed when the scope drops, whether
//! the test passed or not. Waits poll a condition until a deadline and fail with what they saw.

#[path = "support/docker.rs"]
mod docker_support;
use docker_support::{docker, engine_ready, show, stderr, stdout, write};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Repository root: images/, Dockerfiles and examples/ are found from here.
const TOP: &str = env!("CARGO_MANIFEST_DIR");
/// The image the second (client) container runs: it has psql and python3, nothing of tandem's.
const CLIENT_IMAGE: &str = "tandem-base-trixie:local";
/// Start to healthy takes about two seconds with the example API and 6-10 s with the Hive
/// server; this bound is for a loaded 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A clean `docker stop` takes well under a second; Docker's own SIGKILL comes at 10 s.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(100);
/// Health-check timings for test containers: a quick first probe instead of the image's 5 s.
const HEALTH_FLAGS: [&str; 3] = [
    "--health-interval=500ms",
    "--health-timeout=5s",
    "--health-retries=3",
];
/// Lines PostgreSQL logs after an unclean stop; none may appear after a `docker stop`.
const RECOVERY_LINES: [&str; 2] = [
    "database system was not properly shut down",
    "automatic recovery in progress",
];
const CLEAN_SHUTDOWN: &str = "database system is shut down";
/// How a `docker stop` ends for both apps: uvicorn (0.29 and later: the Hive server's 0.35 and
/// Debian 13's 0.32 alike) shuts down gracefully on SIGTERM, then re-raises it and dies "killed
/// by SIGTERM"; a death by the signal tandem sent is a clean stop, exit 0 (TANDEM_STOP_EXIT
/// defaults to `clean`).
const STOP_EXIT: i32 = 0;
const INIT_SKIPPED: &str = "already holds a database";
/// The Hive server's master key, given at run time as users do (it must start with `hive_` and
/// be at least 37 characters); the example API ignores it.
const HIVE_API_KEY: &str = "hive_tandem-container-tests-0123456789abcdef";
/// What the Hive server's health endpoint says (a static answer: the server does not look at
/// its database there, which is why tandem probes PostgreSQL itself).
const HIVE_HEALTHY: &str = "System operational";

/// One of the images: genie or agent, with the Hive server or the example API.
#[derive(Clone, Copy)]
struct Flavor {
    /// `genie`, `agent`, `genie-example`, `agent-example`: the images/build.sh target.
    target: &'static str,
    port: u16,
    user: &'static str,
    db: &'static str,
}

impl Flavor {
    /// `tandem-TARGET:TAG`, as images/build.sh tags it.
    fn image(&self) -> String {
        format!("tandem-{}:{}", self.target, image_tag())
    }
}

const GENIE: Flavor = Flavor {
    target: "genie",
    port: 48886,
    user: "genie",
    db: "hive_genie",
};
const AGENT: Flavor = Flavor {
    target: "agent",
    port: 35532,
    user: "agent",
    db: "hive_agent",
};
const GENIE_EXAMPLE: Flavor = Flavor {
    target: "genie-example",
    ..GENIE
};
const AGENT_EXAMPLE: Flavor = Flavor {
    target: "agent-example",
    ..AGENT
};
/// Everything the tests run, built at once.
const TARGETS: [&str; 4] = ["genie", "agent", "genie-example", "agent-example"];

/// images/build.sh's tag: TANDEM_IMAGE_TAG, default `local`.
fn image_tag() -> String {
    std::env::var("TANDEM_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "local".into())
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn genie_example_image_becomes_healthy_and_serves_its_api() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    becomes_healthy_and_serves_its_api(&mut scope, GENIE_EXAMPLE);
}

#[test]
fn agent_example_image_becomes_healthy_and_serves_its_api() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    becomes_healthy_and_serves_its_api(&mut scope, AGENT_EXAMPLE);
}

fn becomes_healthy_and_serves_its_api(scope: &mut Scope, flavor: Flavor) {
    let volume = scope.volume();
    let c = scope.run_app(&flavor.image(), flavor, &volume, &[]);
    let started = Instant::now();
    c.wait_healthy();
    eprintln!("{}: healthy after {:?}", flavor.image(), started.elapsed());

    let addr = c.published(flavor.port);
    let (status, body) = http(&addr, "GET", "/api/v1/health", None);
    assert_eq!(status, 200, "{body}\n{}", c.logs());
    assert!(
        body.contains(&format!("\"database\":\"{}\"", flavor.db)),
        "{body}"
    );

    // The image's HEALTHCHECK command answers in one line.
    let out = c.exec(&["tandem", "healthcheck"]);
    assert!(
        out.status.success(),
        "tandem healthcheck: {}\n{}",
        show(&out),
        c.logs()
    );
    let line = stdout(&out);
    assert!(
        line.starts_with("healthy") && line.lines().count() == 1,
        "{}",
        show(&out)
    );
    assert_processes(&c);
}

/// tandem is PID 1 as root, PostgreSQL runs as postgres and the app (uvicorn) as hive, uid 1000.
fn assert_processes(c: &Container) {
    let ps = c.exec_ok(&["ps", "-eo", "pid=,user:20=,comm="]);
    let procs: Vec<(u32, String, String)> = ps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.parse().ok()?,
                f.next()?.to_string(),
                f.next()?.to_string(),
            ))
        })
        .collect();
    let has = |pid: Option<u32>, user: &str, comm: &str| {
        procs
            .iter()
            .any(|(p, u, c)| pid.is_none_or(|x| x == *p) && u == user && c == comm)
    };
    assert!(
        has(Some(1), "root", "tandem"),
        "PID 1 is not tandem as root:\n{ps}"
    );
    assert!(
        has(None, "postgres", "postgres"),
        "no postgres process as postgres:\n{ps}"
    );
    assert!(
        procs
            .iter()
            .any(|(_, u, c)| u == "hive" && (c == "uvicorn" || c.starts_with("python3"))),
        "the app does not run as hive:\n{ps}"
    );
    assert!(
        !procs.iter().any(|(_, u, c)| u == "root" && c == "postgres"),
        "PostgreSQL runs as root:\n{ps}"
    );
    assert_eq!(c.exec_ok(&["id", "-u", "hive"]), "1000");
}

/// The official postgres image's test suite uses values with spaces (and quotes); they must
/// work for initdb, the database name, auth over TCP from another container, and the app's
/// DATABASE_URL (the container only turns healthy when the app reaches its database).
#[test]
fn postgres_variables_with_spaces_work_over_tcp_from_another_container() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    const USER: &str = "my cool postgres user";
    const PASSWORD: &str = "my 'cool' postgres password";
    const DB: &str = "my cool postgres database";
    let network = scope.network();
    let volume = scope.volume();
    let env = [
        format!("POSTGRES_USER={USER}"),
        format!("POSTGRES_PASSWORD={PASSWORD}"),
        format!("POSTGRES_DB={DB}"),
    ];
    let c = scope.run(
        &GENIE_EXAMPLE.image(),
        &[
            &["--network", &network],
            &["-v", &format!("{volume}:/var/lib/postgresql/data")][..],
            &env_flags(&env)[..],
        ]
        .concat(),
    );
    c.wait_healthy();

    let psql = |scope: &mut Scope, password: &str| {
        let name = scope.name("psql");
        scope.containers.push(name.clone());
        let host = &c.name;
        docker(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            &network,
            "-e",
            &format!("PGPASSWORD={password}"),
            CLIENT_IMAGE,
            "psql",
            "-h",
            host,
            "-U",
            USER,
            "-d",
            DB,
            "-X",
            "-At",
            "-c",
            "SELECT current_user || '|' || current_database()",
        ])
    };
    let out = psql(&mut scope, PASSWORD);
    assert!(
        out.status.success(),
        "psql over TCP failed: {}\n{}",
        show(&out),
        c.logs()
    );
    assert_eq!(stdout(&out), format!("{USER}|{DB}"));

    // Password authentication really is on for other hosts.
    let out = psql(&mut scope, "wrong password");
    assert!(
        !out.status.success(),
        "a wrong password was accepted: {}",
        show(&out)
    );
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        show(&out)
    );
}

/// Files added to /docker-entrypoint-initdb.d in a derived image run at the first start, in
/// order (the .sql creates the table the .sh writes to), and never again.
#[test]
fn initdb_scripts_in_a_derived_image_run_once() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    let dir = scope.dir("initdb");
    write(
        &dir.join("10-schema.sql"),
        concat!(
            "CREATE TABLE IF NOT EXISTS init_runs (script text NOT NULL);\n",
            "INSERT INTO init_runs VALUES ('10-schema.sql');\n",
        ),
    );
    // Not executable and written the way users write them for the official image.
    write(&dir.join("20-seed.sh"), concat!(
        "set -e\n",
        "psql -v ON_ERROR_STOP=1 --username \"$POSTGRES_USER\" --dbname \"$POSTGRES_DB\" <<'EOSQL'\n",
        "INSERT INTO init_runs VALUES ('20-seed.sh');\n",
        "EOSQL\n",
    ));
    write(
        &dir.join("Dockerfile"),
        &format!(
            "FROM {}\nCOPY 10-schema.sql 20-seed.sh /docker-entrypoint-initdb.d/\n",
            GENIE_EXAMPLE.image()
        ),
    );
    let image = scope.build_image(&dir);

    let volume = scope.volume();
    let c = scope.run_app(&image, GENIE_EXAMPLE, &volume, &[]);
    c.wait_healthy();
    let runs = || {
        c.psql(
            GENIE_EXAMPLE,
            "SELECT string_agg(script, ',' ORDER BY script) FROM init_runs",
        )
    };
    assert_eq!(runs(), "10-schema.sql,20-seed.sh", "{}", c.logs());

    c.stop();
    c.start();
    c.wait_healthy();
    assert_eq!(
        runs(),
        "10-schema.sql,20-seed.sh",
        "init scripts ran again:\n{}",
        c.logs()
    );
    assert_eq!(c.logs().matches(INIT_SKIPPED).count(), 1, "{}", c.logs());
}

/// Rows written through the API survive `docker stop` + `docker start` and a new container on
/// the same volume; every stop is quick, clean (no recovery at the next start) and exits 0.
#[test]
fn notes_survive_stop_start_and_a_new_container_on_the_same_volume() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    let volume = scope.volume();
    let first = scope.run_app(&GENIE_EXAMPLE.image(), GENIE_EXAMPLE, &volume, &[]);
    first.wait_healthy();
    let addr = first.published(GENIE_EXAMPLE.port);
    for text in ["one", "two", "three"] {
        let (status, body) = http(
            &addr,
            "POST",
            "/api/v1/notes",
            Some(&format!("{{\"text\":\"{text}\"}}")),
        );
        assert_eq!(status, 201, "{body}");
    }
    let notes = |c: &Container| {
        let (status, body) = http(
            &c.published(GENIE_EXAMPLE.port),
            "GET",
            "/api/v1/notes",
            None,
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["text"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let expected = ["one", "two", "three"];
    assert_eq!(notes(&first), expected);
    assert!(!first.logs().contains(INIT_SKIPPED), "{}", first.logs());

    first.stop_cleanly();
    first.start();
    first.wait_healthy();
    assert_eq!(notes(&first), expected, "{}", first.logs());
    let logs = first.logs();
    assert_eq!(
        logs.matches(INIT_SKIPPED).count(),
        1,
        "the second start did not skip init:\n{logs}"
    );
    first.stop_cleanly();
    first.remove();

    let second = scope.run_app(&GENIE_EXAMPLE.image(), GENIE_EXAMPLE, &volume, &[]);
    second.wait_healthy();
    assert_eq!(notes(&second), expected, "{}", second.logs());
    assert!(second.logs().contains(INIT_SKIPPED), "{}", second.logs());
    second.stop_cleanly();
}

/// SIGHUP reaches PostgreSQL as a reload. Health checks (Docker's own every 500 ms, 200
/// `docker exec tandem healthcheck`s) and orphans re-parented to PID 1 (what a health check
/// killed on timeout leaves, moby#47583) leave no zombie behind.
#[test]
fn sighup_reloads_postgres_and_health_checks_leave_no_zombies() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    let volume = scope.volume();
    let c = scope.run_app(&GENIE_EXAMPLE.image(), GENIE_EXAMPLE, &volume, &[]);
    c.wait_healthy();

    docker_ok(&["kill", "--signal", "HUP", &c.name]);
    c.wait_log("received SIGHUP, reloading configuration files");
    assert!(c.running(), "SIGHUP stopped the container:\n{}", c.logs());

    const CHECKS: usize = 200;
    const THREADS: usize = 8;
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..CHECKS / THREADS {
                    let out = c.exec(&["tandem", "healthcheck"]);
                    assert!(out.status.success(), "tandem healthcheck: {}", show(&out));
                }
            });
        }
        // Each `sh` exits at once; its sleeps are re-parented to PID 1, which must reap them.
        s.spawn(|| {
            for _ in 0..10 {
                c.exec_ok(&["sh", "-c", "sleep 0.2 & sleep 0.1 & exit 0"]);
            }
        });
    });
    // A burst of 200 orphaned health checks at once. tandem serves at most 32 control
    // connections and answers the rest "unhealthy" at once, so only their reaping is checked
    // (and only after the checks above, which must all pass).
    c.exec_ok(&[
        "sh",
        "-c",
        concat!(
            "i=0; while [ $i -lt 200 ]; do ",
            "tandem healthcheck >/dev/null 2>&1 & i=$((i+1)); done; exit 0",
        ),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = c.exec_ok(&["ps", "-eo", "stat=,pid=,ppid=,comm="]);
        let left: Vec<&str> = ps
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f[0].starts_with('Z') || f[3] == "sleep" || (f[3] == "tandem" && f[1] != "1")
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zombies or orphans left in the container:\n{ps}"
        );
        thread::sleep(POLL);
    }
    assert_eq!(c.health(), "healthy", "{}", c.logs());
}

/// Like the official image: no password on an empty volume is an error at once, with a message
/// that names POSTGRES_PASSWORD, and nothing half-initialised left on the volume.
#[test]
fn missing_password_on_an_empty_volume_fails_with_a_clear_message() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    let volume = scope.volume();
    let c = scope.run(
        &GENIE_EXAMPLE.image(),
        &["-v", &format!("{volume}:/var/lib/postgresql/data")],
    );
    let code = c.wait_exit(Duration::from_secs(30));
    let logs = c.logs();
    assert_ne!(code, 0, "exited 0 without a password:\n{logs}");
    assert!(
        logs.contains("POSTGRES_PASSWORD"),
        "the message does not name POSTGRES_PASSWORD:\n{logs}"
    );
    let listing = docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/data"),
        CLIENT_IMAGE,
        "ls",
        "-A",
        "/data",
    ]);
    assert_eq!(
        listing, "",
        "the volume is not empty after the failed start"
    );
}

/// `docker-compose up -d` of the genie example (Debian's docker-compose 1.29) with the Hive
/// server comes up healthy; `docker-compose down` stops it cleanly.
#[test]
fn compose_example_comes_up_healthy_and_goes_down_cleanly() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    if !have_compose() {
        return;
    }
    // The example's own health interval is 10 s; the test only shortens it, in an override
    // file the way users layer their own settings.
    let dir = scope.dir("compose");
    let override_file = dir.join("docker-compose.override.yml");
    write(
        &override_file,
        concat!(
            "version: \"2.4\"\n",
            "services:\n",
            "  genie-server:\n",
            "    healthcheck:\n",
            "      interval: 500ms\n",
        ),
    );
    let project = scope.compose_project(
        &[
            &format!("{TOP}/examples/compose/docker-compose-genie.yml"),
            override_file.to_str().unwrap(),
        ],
        &[
            ("GENIE_IMAGE", &GENIE.image()),
            ("GENIE_PORT", "127.0.0.1:"),
            ("GENIE_TANDEM_PORT", "127.0.0.1:"),
            ("POSTGRES_PASSWORD", "compose password"),
            ("HIVE_API_KEY", HIVE_API_KEY),
        ],
    );
    let out = project.run(&["up", "-d"]);
    assert!(out.status.success(), "docker-compose up: {}", show(&out));
    let id = stdout(&project.run(&["ps", "-q", "genie-server"]));
    assert!(
        !id.is_empty(),
        "docker-compose ps found no genie-server container"
    );
    let c = Container { name: id };
    c.wait_healthy();
    let (status, body) = http(&c.published(GENIE.port), "GET", "/api/v1/health", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(HIVE_HEALTHY), "{body}");
    // tandem's HTTP endpoint, as the example publishes it: the healthcheck's verdict and
    // the metrics, from outside the container.
    let tandem_port = c.published(9188);
    let (status, body) = http(&tandem_port, "GET", "/readyz", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("healthy: postgres ok"), "{body}");
    let (status, body) = http(&tandem_port, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("tandem_service_up{service=\"app\"} 1"),
        "{body}"
    );
    // `docker exec CONTAINER tandem events`, as the README has it: the history so far.
    let out = c.exec(&["timeout", "2", "tandem", "events", "--json"]);
    let events = String::from_utf8_lossy(&out.stdout);
    for needle in [r#""event":"boot""#, r#""event":"all_healthy""#] {
        assert!(
            events.contains(needle),
            "no {needle} in tandem events:\n{events}"
        );
    }

    // `down` removes the container; watch its exit code and logs from outside while it stops.
    let exit = Command::new("docker")
        .args(["wait", &c.name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Command::new("sh")
        .args(["-c", "exec docker logs -f \"$0\" 2>&1", &c.name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let out = project.run(&["down", "-v"]);
    let took = started.elapsed();
    assert!(out.status.success(), "docker-compose down: {}", show(&out));
    let code = String::from_utf8_lossy(&exit.wait_with_output().unwrap().stdout)
        .trim()
        .to_string();
    let logs = String::from_utf8_lossy(&logs.wait_with_output().unwrap().stdout).to_string();
    eprintln!("docker-compose down took {took:?}");
    assert_eq!(code, STOP_EXIT.to_string(), "exit code after down:\n{logs}");
    assert!(
        logs.contains(CLEAN_SHUTDOWN),
        "no clean PostgreSQL shutdown:\n{logs}"
    );
    assert!(took < STOP_LIMIT * 2, "docker-compose down took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// The Hive server

/// A nearest-neighbour query's table: three unit vectors; the query vector is nearest the second.
const VECTORS_SQL: &str = concat!(
    "CREATE EXTENSION IF NOT EXISTS vector;",
    "CREATE TABLE tandem_items (id int PRIMARY KEY, embedding vector(3) NOT NULL);",
    "INSERT INTO tandem_items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]');",
);
const NEAREST_SQL: &str =
    "SELECT id FROM tandem_items ORDER BY embedding <-> '[0.1,0.9,0.2]' LIMIT 1";

#[test]
fn hive_genie_serves_another_container_keeps_vectors_and_stops_cleanly() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    hive_serves_keeps_vectors_and_stops_cleanly(&mut scope, GENIE);
}

#[test]
fn hive_agent_serves_another_container_keeps_vectors_and_stops_cleanly() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    hive_serves_keeps_vectors_and_stops_cleanly(&mut scope, AGENT);
}

/// The image as shipped: the Hive server turns healthy with its database URL from tandem (the
/// image holds no password and no URL), answers `/api/v1/health` to a second container on a
/// user network, the embedded PostgreSQL 17 has pgvector and answers a nearest-neighbour
/// query; `docker stop` stops the server first, then PostgreSQL cleanly; the next start finds
/// the data, skips init and needs no recovery.
fn hive_serves_keeps_vectors_and_stops_cleanly(scope: &mut Scope, flavor: Flavor) {
    let network = scope.network();
    let volume = scope.volume();
    let c = scope.run_app(&flavor.image(), flavor, &volume, &["--network", &network]);
    let started = Instant::now();
    c.wait_healthy();
    eprintln!("{}: healthy after {:?}", flavor.image(), started.elapsed());
    assert_processes(&c);

    // From another container, by the container's name on the user network.
    let client = scope.name("client");
    scope.containers.push(client.clone());
    let url = format!("http://{}:{}/api/v1/health", c.name, flavor.port);
    let out = docker(&[
        "run",
        "--rm",
        "--name",
        &client,
        "--network",
        &network,
        CLIENT_IMAGE,
        "python3",
        "-c",
        concat!(
            "import sys, urllib.request\n",
            "r = urllib.request.urlopen(sys.argv[1], timeout=10)\n",
            "print(r.status, r.read().decode())\n",
        ),
        &url,
    ]);
    assert!(out.status.success(), "GET {url}: {}", show(&out));
    let answer = stdout(&out);
    assert!(
        answer.starts_with("200 ") && answer.contains(HIVE_HEALTHY),
        "GET {url}: {answer}"
    );

    // The server's URL came from tandem at run time, in the scheme it reads; the image
    // carries neither the password nor a URL.
    // (As hive: the exec'd root lacks CAP_SYS_PTRACE for another user's environ.)
    let app_env = docker_ok(&[
        "exec",
        "--user",
        "hive",
        &c.name,
        "sh",
        "-c",
        "tr '\\0' '\\n' < /proc/$(pgrep -o -u hive uvicorn)/environ",
    ]);
    let hive_url = app_env
        .lines()
        .find_map(|l| l.strip_prefix("HIVE_DATABASE_URL="))
        .unwrap_or_else(|| panic!("the server has no HIVE_DATABASE_URL:\n{app_env}"));
    assert_eq!(
        hive_url,
        format!(
            "postgresql+psycopg://{}:test%20password@127.0.0.1:5432/{}",
            flavor.user, flavor.db
        )
    );
    let image_env = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &flavor.image(),
    ]);
    for name in ["POSTGRES_PASSWORD=", "HIVE_DATABASE_URL=", "HIVE_API_KEY="] {
        assert!(
            !image_env.lines().any(|l| l.starts_with(name)),
            "{name} baked into the image:\n{image_env}"
        );
    }

    // pgvector: the server created the extension at boot; a similarity query works.
    assert_eq!(
        c.psql(
            flavor,
            "SELECT count(*) FROM pg_extension WHERE extname = 'vector'"
        ),
        "1",
        "{}",
        c.logs()
    );
    c.psql(flavor, VECTORS_SQL);
    assert_eq!(c.psql(flavor, NEAREST_SQL), "2");

    // docker stop: the server first, PostgreSQL after it, cleanly.
    c.stop_cleanly();

    // The second start: the data is there, no init, no recovery (checked by the last stop).
    c.start();
    c.wait_healthy();
    assert_eq!(c.psql(flavor, NEAREST_SQL), "2", "{}", c.logs());
    assert_eq!(c.psql(flavor, "SELECT count(*) FROM tandem_items"), "3");
    assert_eq!(c.logs().matches(INIT_SKIPPED).count(), 1, "{}", c.logs());
    c.stop_cleanly();
}

#[test]
fn hive_genie_frozen_server_turns_unhealthy_and_tandem_restarts_it() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    frozen_server_turns_unhealthy_and_is_restarted(&mut scope, GENIE);
}

#[test]
fn hive_agent_frozen_server_turns_unhealthy_and_tandem_restarts_it() {
    let Some(mut scope) = Scope::new() else {
        return;
    };
    frozen_server_turns_unhealthy_and_is_restarted(&mut scope, AGENT);
}

/// A Hive server that stops answering (SIGSTOP to its pid: the process is there, its port
/// is open, nothing answers) makes `tandem healthcheck` fail; tandem restarts it (SIGTERM,
/// then SIGKILL when it does not stop) and the container is healthy again with a new server,
/// without ever stopping. Then the server is killed outright: with TANDEM_APP_RESTART it is
/// started again in place, `tandem healthcheck` unhealthy meanwhile. Probe timings are
/// shortened at run time, as a user would.
fn frozen_server_turns_unhealthy_and_is_restarted(scope: &mut Scope, flavor: Flavor) {
    let volume = scope.volume();
    let c = scope.run_app(
        &flavor.image(),
        flavor,
        &volume,
        &[
            "-e",
            "TANDEM_APP_HEALTH_INTERVAL=1s",
            "-e",
            "TANDEM_APP_HEALTH_TIMEOUT=1s",
            "-e",
            "TANDEM_APP_HEALTH_RETRIES=2",
            "-e",
            "TANDEM_APP_RESTART=on-failure",
        ],
    );
    c.wait_healthy();
    let server = || c.exec_ok(&["pgrep", "-o", "-u", "hive", "uvicorn"]);
    let pid = server();
    c.exec_ok(&["kill", "-STOP", &pid]);

    let healthcheck = || {
        let out = c.exec(&["tandem", "healthcheck"]);
        (out.status.code(), stdout(&out))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, line) = healthcheck();
        if code == Some(1) && line.starts_with("unhealthy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tandem healthcheck still says {code:?} {line:?} with the server frozen:\n{}",
            c.logs()
        );
        thread::sleep(POLL);
    }

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let (code, line) = healthcheck();
        if code == Some(0) {
            assert!(line.starts_with("healthy"), "{line}");
            break;
        }
        assert!(
            c.running(),
            "the container stopped instead of restarting the server:\n{}",
            c.logs()
        );
        assert!(
            Instant::now() < deadline,
            "still {code:?} {line:?} after {START_TIMEOUT:?}:\n{}",
            c.logs()
        );
        thread::sleep(POLL);
    }
    let logs = c.logs();
    assert!(
        logs.contains("app is unhealthy")
            && logs.contains("starting it again in")
            && logs.contains("(restart 1)"),
        "{logs}"
    );
    let second = server();
    assert_ne!(second, pid, "the same server answers:\n{logs}");
    c.wait_healthy();

    // Killed: restarted in place after its backoff, unhealthy until it answers again.
    c.exec_ok(&["kill", "-KILL", &second]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_unhealthy = false;
    loop {
        let (code, line) = healthcheck();
        saw_unhealthy |= code == Some(1);
        if saw_unhealthy && code == Some(0) {
            break;
        }
        assert!(c.running(), "the container stopped:\n{}", c.logs());
        assert!(
            Instant::now() < deadline + START_TIMEOUT,
            "still {code:?} {line:?}:\n{}",
            c.logs()
        );
        thread::sleep(POLL);
    }
    let logs = c.logs();
    assert!(
        logs.contains("app killed by SIGKILL; restarting it in"),
        "{logs}"
    );
    assert_ne!(server(), second, "a new server:\n{logs}");
}

// ---------------------------------------------------------------------------------------------
// Engine, images, scope

/// Builds every image of [`TARGETS`] once per test binary.
fn images_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(format!("{TOP}/images/build.sh"))
            .args(TARGETS)
            .output()
            .map_err(|e| format!("cannot run images/build.sh: {e}"))?;
        let what = format!("images/build.sh {}", TARGETS.join(" "));
        if !out.status.success() {
            return Err(format!("{what} failed: {}", show(&out)));
        }
        eprintln!("{what}: {:?}\n{}", started.elapsed(), stdout(&out));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn have_compose() -> bool {
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but docker-compose is missing; run images/install-docker.sh"
    );
    eprintln!("skipped: docker-compose is not installed");
    false
}

/// Everything one test creates, removed on drop (also when the test panics).
struct Scope {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
    projects: Vec<Project>,
    dirs: Vec<PathBuf>,
}

impl Scope {
    /// None (after printing why) when the test should skip.
    fn new() -> Option<Scope> {
        if !engine_ready() {
            return None;
        }
        images_built();
        Some(Scope {
            containers: vec![],
            volumes: vec![],
            networks: vec![],
            images: vec![],
            projects: vec![],
            dirs: vec![],
        })
    }

    /// A name unique to this test run: pid and a counter.
    fn name(&mut self, what: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("tandem-test-{}-{n}-{what}", std::process::id())
    }

    fn volume(&mut self) -> String {
        let name = self.name("data");
        self.volumes.push(name.clone());
        docker_ok(&["volume", "create", &name]);
        name
    }

    fn network(&mut self) -> String {
        let name = self.name("net");
        self.networks.push(name.clone());
        docker_ok(&["network", "create", &name]);
        name
    }

    fn dir(&mut self, what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(self.name(what));
        self.dirs.push(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `docker build` of a directory with the legacy builder, as images/build.sh does.
    fn build_image(&mut self, dir: &Path) -> String {
        let tag = format!("{}:test", self.name("image"));
        self.images.push(tag.clone());
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(dir)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker build {}: {}",
            dir.display(),
            show(&out)
        );
        tag
    }

    /// `docker run -d` with the test health timings; `args` go before the image.
    fn run(&mut self, image: &str, args: &[&str]) -> Container {
        let name = self.name("c");
        self.containers.push(name.clone());
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend(HEALTH_FLAGS);
        all.extend(args);
        all.push(image);
        docker_ok(&all);
        Container { name }
    }

    /// An app container of `image` (the flavour's or one derived from it) with a password and
    /// the Hive server's API key, its data on `volume`, its API port published on loopback
    /// only; `extra` goes before the image.
    fn run_app(&mut self, image: &str, flavor: Flavor, volume: &str, extra: &[&str]) -> Container {
        let mount = format!("{volume}:/var/lib/postgresql/data");
        let publish = format!("127.0.0.1::{}", flavor.port);
        let key = format!("HIVE_API_KEY={HIVE_API_KEY}");
        let mut args = vec![
            "-e",
            "POSTGRES_PASSWORD=test password",
            "-e",
            &key,
            "-v",
            &mount,
            "-p",
            &publish,
        ];
        args.extend(extra);
        self.run(image, &args)
    }

    fn compose_project(&mut self, files: &[&str], env: &[(&str, &str)]) -> Project {
        let project = Project {
            name: self.name("compose").replace('-', ""),
            files: files.iter().map(|f| f.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.projects.push(project.clone());
        project
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for p in &self.projects {
            p.run(&["down", "-v", "--remove-orphans"]);
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.containers.iter().map(String::as_str));
            docker_quiet(&args);
        }
        for net in &self.networks {
            docker_quiet(&["network", "rm", net]);
        }
        for vol in &self.volumes {
            docker_quiet(&["volume", "rm", "-f", vol]);
        }
        for image in &self.images {
            docker_quiet(&["rmi", "-f", image]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A docker-compose project: its name, files and the environment its files interpolate.
#[derive(Clone)]
struct Project {
    name: String,
    files: Vec<String>,
    env: Vec<(String, String)>,
}

impl Project {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["--ansi", "never", "-p", &self.name]);
        for f in &self.files {
            cmd.args(["-f", f]);
        }
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("cannot run docker-compose")
    }
}

/// A container by name (or id).
struct Container {
    name: String,
}

impl Container {
    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "--format", format, &self.name])
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    fn health(&self) -> String {
        self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    }

    /// Polls until Docker reports the container healthy; fails at once if it exits.
    fn wait_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let state = self
                .inspect("{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}");
            match state.as_str() {
                "running healthy" => return,
                s if !s.starts_with("running") && !s.starts_with("created") => {
                    panic!(
                        "{} is {s} instead of turning healthy:\n{}",
                        self.name,
                        self.logs()
                    )
                }
                s if Instant::now() > deadline => {
                    panic!(
                        "{} still {s} after {START_TIMEOUT:?}:\n{}",
                        self.name,
                        self.logs()
                    )
                }
                _ => thread::sleep(POLL),
            }
        }
    }

    fn wait_exit(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "{} still runs after {timeout:?}:\n{}",
                self.name,
                self.logs()
            );
            thread::sleep(POLL);
        }
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.logs()
            );
            thread::sleep(POLL);
        }
    }

    /// stdout and stderr together, as `docker logs` has them (each stream in order).
    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The host address a container port is published on.
    fn published(&self, port: u16) -> String {
        let out = docker_ok(&["port", &self.name, &format!("{port}/tcp")]);
        out.lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("port {port} is not published on 127.0.0.1: {out}"))
            .to_string()
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name];
        all.extend(args);
        docker(&all)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "docker exec {args:?}: {}", show(&out));
        stdout(&out)
    }

    /// A query over the local socket, as the superuser, in the flavour's database.
    fn psql(&self, flavor: Flavor, sql: &str) -> String {
        self.exec_ok(&[
            "psql",
            "-X",
            "-At",
            "-U",
            flavor.user,
            "-d",
            flavor.db,
            "-c",
            sql,
        ])
    }

    fn start(&self) {
        docker_ok(&["start", &self.name]);
    }

    fn stop(&self) -> Duration {
        let started = Instant::now();
        docker_ok(&["stop", &self.name]);
        started.elapsed()
    }

    /// `docker stop`, then what a clean stop means: quick, the app's exit code ([`STOP_EXIT`]),
    /// the app stopped before PostgreSQL (by tandem's own lines, which share one stream),
    /// PostgreSQL shut down with a checkpoint, and no recovery at any start so far.
    fn stop_cleanly(&self) {
        let shutdowns = self.logs().matches(CLEAN_SHUTDOWN).count();
        let took = self.stop();
        eprintln!("docker stop {}: {took:?}", self.name);
        let logs = self.logs();
        assert!(took < STOP_LIMIT, "docker stop took {took:?}:\n{logs}");
        assert_eq!(
            self.inspect("{{.State.ExitCode}}"),
            STOP_EXIT.to_string(),
            "exit code after docker stop:\n{logs}"
        );
        let last_stop = logs
            .rfind("tandem | stopping postgres")
            .unwrap_or_else(|| panic!("tandem did not say it stopped PostgreSQL:\n{logs}"));
        // The last line about the app before that one: its exit during the stop.
        let app_line = logs[..last_stop]
            .rfind("tandem | app ")
            .and_then(|at| logs[at..].lines().next());
        assert!(
            app_line.is_some_and(|l| l.contains("after stopping for")),
            "PostgreSQL was stopped before the app had exited:\n{logs}"
        );
        assert_eq!(
            logs.matches(CLEAN_SHUTDOWN).count(),
            shutdowns + 1,
            "no clean shutdown:\n{logs}"
        );
        for line in RECOVERY_LINES {
            assert!(
                !logs.contains(line),
                "{line:?} after a docker stop:\n{logs}"
            );
        }
    }

    fn remove(&self) {
        docker_ok(&["rm", "-v", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", show(&out));
    stdout(&out)
}

/// For clean-up: errors (already gone) do not matter.
fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn env_flags(vars: &[String]) -> Vec<&str> {
    vars.iter().flat_map(|v| ["-e", v.as_str()]).collect()
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = json.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
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
