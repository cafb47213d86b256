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
use docker_support::*;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Everything the tests run, built at once.
const TARGETS: [&str; 4] = ["genie", "agent", "genie-example", "agent-example"];

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn genie_example_image_becomes_healthy_and_serves_its_api() {
    let Some(mut scope) = Scope::new(&TARGETS) else {
        return;
    };
    becomes_healthy_and_serves_its_api(&mut scope, GENIE_EXAMPLE);
}

#[test]
fn agent_example_image_becomes_healthy_and_serves_its_api() {
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
        return;
    };
    hive_serves_keeps_vectors_and_stops_cleanly(&mut scope, GENIE);
}

#[test]
fn hive_agent_serves_another_container_keeps_vectors_and_stops_cleanly() {
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
    let Some(mut scope) = Scope::new(&TARGETS) else {
        return;
    };
    frozen_server_turns_unhealthy_and_is_restarted(&mut scope, GENIE);
}

#[test]
fn hive_agent_frozen_server_turns_unhealthy_and_tandem_restarts_it() {
    let Some(mut scope) = Scope::new(&TARGETS) else {
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
