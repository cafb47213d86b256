//! What the container tests share: is there an engine, run `docker`, read what it said; the
//! images and their flavours, a [`Scope`] that removes what a test made, a [`Container`] and
//! its clean stop. Included by tests/container.rs, tests/split.rs and tests/faults.rs
//! (`#[path]`), not by the others.

#![allow(dead_code)] // each test binary uses a part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Whether the engine answers; without it tests skip, or fail under CI.
pub fn engine_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let result = READY.get_or_init(|| {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(stderr(&o)),
            Err(e) => Err(format!("cannot run docker: {e}")),
        }
    });
    match result {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but no Docker engine answers ({why}); run images/install-docker.sh first")
        }
        Err(why) => {
            eprintln!("skipped: no Docker engine ({why}); images/install-docker.sh starts one");
            false
        }
    }
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run docker")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Everything a command said, for a failure message.
pub fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Repository root: images/, Dockerfiles and examples/ are found from here.
pub const TOP: &str = env!("CARGO_MANIFEST_DIR");
/// The image the second (client) container runs: it has psql and python3, nothing of tandem's.
pub const CLIENT_IMAGE: &str = "tandem-base-trixie:local";
/// Start to healthy takes about two seconds with the example API and 6-10 s with the Hive
/// server; this bound is for a loaded 2-core CI machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A clean `docker stop` takes well under a second; Docker's own SIGKILL comes at 10 s.
pub const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(100);
/// Health-check timings for test containers: a quick first probe instead of the image's 5 s.
pub const HEALTH_FLAGS: [&str; 3] = [
    "--health-interval=500ms",
    "--health-timeout=5s",
    "--health-retries=3",
];
/// Lines PostgreSQL logs after an unclean stop; none may appear after a `docker stop`.
pub const RECOVERY_LINES: [&str; 2] = [
    "database system was not properly shut down",
    "automatic recovery in progress",
];
pub const CLEAN_SHUTDOWN: &str = "database system is shut down";
/// How a `docker stop` ends for both apps: uvicorn (0.29 and later: the Hive server's 0.35 and
/// Debian 13's 0.32 alike) shuts down gracefully on SIGTERM, then re-raises it and dies "killed
/// by SIGTERM"; a death by the signal tandem sent is a clean stop, exit 0 (TANDEM_STOP_EXIT
/// defaults to `clean`).
pub const STOP_EXIT: i32 = 0;
pub const INIT_SKIPPED: &str = "already holds a database";
/// The Hive server's master key, given at run time as users do (it must start with `hive_` and
/// be at least 37 characters); the example API ignores it.
pub const HIVE_API_KEY: &str = "hive_tandem-container-tests-0123456789abcdef";
/// What the Hive server's health endpoint says (a static answer: the server does not look at
/// its database there, which is why tandem probes PostgreSQL itself).
pub const HIVE_HEALTHY: &str = "System operational";

/// One of the images: genie or agent, with the Hive server or the example API.
#[derive(Clone, Copy)]
pub struct Flavor {
    /// `genie`, `agent`, `genie-example`, `agent-example`: the images/build.sh target.
    pub target: &'static str,
    pub port: u16,
    pub user: &'static str,
    pub db: &'static str,
}

impl Flavor {
    /// `tandem-TARGET:TAG`, as images/build.sh tags it.
    pub fn image(&self) -> String {
        format!("tandem-{}:{}", self.target, image_tag())
    }
}

pub const GENIE: Flavor = Flavor {
    target: "genie",
    port: 48886,
    user: "genie",
    db: "hive_genie",
};
pub const AGENT: Flavor = Flavor {
    target: "agent",
    port: 35532,
    user: "agent",
    db: "hive_agent",
};
pub const GENIE_EXAMPLE: Flavor = Flavor {
    target: "genie-example",
    ..GENIE
};
pub const AGENT_EXAMPLE: Flavor = Flavor {
    target: "agent-example",
    ..AGENT
};

/// images/build.sh's tag: TANDEM_IMAGE_TAG, default `local`.
pub fn image_tag() -> String {
    std::env::var("TANDEM_IMAGE_TAG")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "local".into())
}

// ---------------------------------------------------------------------------------------------
// Engine, images, scope

/// Builds the images of `targets` (images/build.sh targets) once per test binary: the first
/// call's list is the one built, so a binary passes the same list everywhere.
pub fn images_built(targets: &[&str]) {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(format!("{TOP}/images/build.sh"))
            .args(targets)
            .output()
            .map_err(|e| format!("cannot run images/build.sh: {e}"))?;
        let what = format!("images/build.sh {}", targets.join(" "));
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

pub fn have_compose() -> bool {
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
pub struct Scope {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
    pub images: Vec<String>,
    pub projects: Vec<Project>,
    pub dirs: Vec<PathBuf>,
}

impl Scope {
    /// None (after printing why) when the test should skip; builds `targets` first.
    pub fn new(targets: &[&str]) -> Option<Scope> {
        if !engine_ready() {
            return None;
        }
        images_built(targets);
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
    pub fn name(&mut self, what: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("tandem-test-{}-{n}-{what}", std::process::id())
    }

    pub fn volume(&mut self) -> String {
        let name = self.name("data");
        self.volumes.push(name.clone());
        docker_ok(&["volume", "create", &name]);
        name
    }

    pub fn network(&mut self) -> String {
        let name = self.name("net");
        self.networks.push(name.clone());
        docker_ok(&["network", "create", &name]);
        name
    }

    pub fn dir(&mut self, what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(self.name(what));
        self.dirs.push(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `docker build` of a directory with the legacy builder, as images/build.sh does.
    pub fn build_image(&mut self, dir: &Path) -> String {
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
    pub fn run(&mut self, image: &str, args: &[&str]) -> Container {
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
    pub fn run_app(
        &mut self,
        image: &str,
        flavor: Flavor,
        volume: &str,
        extra: &[&str],
    ) -> Container {
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

    pub fn compose_project(&mut self, files: &[&str], env: &[(&str, &str)]) -> Project {
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
pub struct Project {
    pub name: String,
    pub files: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Project {
    pub fn run(&self, args: &[&str]) -> Output {
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
pub struct Container {
    pub name: String,
}

impl Container {
    pub fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "--format", format, &self.name])
    }

    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    pub fn health(&self) -> String {
        self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    }

    /// Polls until Docker reports the container healthy; fails at once if it exits.
    pub fn wait_healthy(&self) {
        self.wait_healthy_within(START_TIMEOUT);
    }

    pub fn wait_healthy_within(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
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
                        "{} still {s} after {timeout:?}:\n{}",
                        self.name,
                        self.logs()
                    )
                }
                _ => thread::sleep(POLL),
            }
        }
    }

    pub fn wait_exit(&self, timeout: Duration) -> i32 {
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

    pub fn wait_log(&self, needle: &str) {
        self.wait_log_within(needle, Duration::from_secs(10));
    }

    /// Polls the log for `needle` for at most `timeout`; fails at once if the container
    /// exits without having printed it.
    pub fn wait_log_within(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log of {} after {timeout:?}:\n{}",
                self.name,
                self.logs()
            );
            assert!(
                self.running() || self.logs().contains(needle),
                "{} exited before {needle:?}:\n{}",
                self.name,
                self.logs()
            );
            thread::sleep(POLL);
        }
    }

    /// stdout and stderr together, as `docker logs` has them (each stream in order).
    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The host address a container port is published on.
    pub fn published(&self, port: u16) -> String {
        let out = docker_ok(&["port", &self.name, &format!("{port}/tcp")]);
        out.lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("port {port} is not published on 127.0.0.1: {out}"))
            .to_string()
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name];
        all.extend(args);
        docker(&all)
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "docker exec {args:?}: {}\n{}",
            show(&out),
            self.logs()
        );
        stdout(&out)
    }

    /// A query over the local socket, as the superuser, in the flavour's database.
    pub fn psql(&self, flavor: Flavor, sql: &str) -> String {
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

    pub fn start(&self) {
        docker_ok(&["start", &self.name]);
    }

    pub fn stop(&self) -> Duration {
        let started = Instant::now();
        docker_ok(&["stop", &self.name]);
        started.elapsed()
    }

    /// `docker stop`, then what a clean stop means: quick, the app's exit code ([`STOP_EXIT`]),
    /// the app stopped before PostgreSQL (by tandem's own lines, which share one stream),
    /// PostgreSQL shut down with a checkpoint, and no recovery at any start so far.
    pub fn stop_cleanly(&self) {
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

    pub fn remove(&self) {
        docker_ok(&["rm", "-v", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", show(&out));
    stdout(&out)
}

/// For clean-up: errors (already gone) do not matter.
pub fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn env_flags(vars: &[String]) -> Vec<&str> {
    vars.iter().flat_map(|v| ["-e", v.as_str()]).collect()
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
pub fn http(addr: &str, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
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
