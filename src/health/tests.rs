//! Probes against real things: a PostgreSQL 15 server, HTTP servers on loopback, processes.

use super::*;
use crate::testutil::{self, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn prober() -> Prober {
    Prober::new(testutil::reaper()).unwrap()
}

fn fail(detail: &str) -> Outcome {
    Outcome::Fail(detail.to_string())
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A tiny HTTP server answering every request with the current `status` (and a Location
/// to `/elsewhere` for 3xx), counting requests. With `status` 0 it accepts and never answers.
struct HttpServer {
    port: u16,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

impl HttpServer {
    async fn start(status: u16) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(status));
        let hits = Arc::new(AtomicUsize::new(0));
        let (st, h) = (Arc::clone(&status), Arc::clone(&hits));
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (st, h) = (Arc::clone(&st), Arc::clone(&h));
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let code = st.load(Ordering::SeqCst);
                    if code == 0 {
                        std::future::pending::<()>().await;
                    }
                    let body = "a body nobody reads\n";
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\nLocation: /elsewhere\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        HttpServer { port, status, hits }
    }

    fn probe(&self) -> Probe {
        Probe::Http {
            url: format!("http://127.0.0.1:{}/health", self.port),
        }
    }
}

#[tokio::test]
async fn http_is_healthy_on_2xx_only_and_follows_the_switch() {
    let p = prober();
    let server = HttpServer::start(200).await;
    let t = Duration::from_secs(2);
    let first = p.run(&server.probe(), t).await;
    assert_eq!(first.outcome, Outcome::Ok);
    let mut lat = Vec::new();
    for _ in 0..20 {
        let r = p.run(&server.probe(), t).await;
        assert_eq!(r.outcome, Outcome::Ok);
        lat.push(r.latency);
    }
    lat.sort();
    eprintln!(
        "http probe latency: median {:?}, max {:?}",
        lat[10], lat[19]
    );

    server.status.store(503, Ordering::SeqCst);
    assert_eq!(p.run(&server.probe(), t).await.outcome, fail("http 503"));
    server.status.store(204, Ordering::SeqCst);
    assert_eq!(p.run(&server.probe(), t).await.outcome, Outcome::Ok);
    server.status.store(404, Ordering::SeqCst);
    assert_eq!(p.run(&server.probe(), t).await.outcome, fail("http 404"));
}

#[tokio::test]
async fn http_redirect_is_not_followed() {
    let server = HttpServer::start(302).await;
    let r = prober().run(&server.probe(), Duration::from_secs(2)).await;
    assert_eq!(r.outcome, fail("http 302"));
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn http_timeout_is_enforced_and_refusal_is_short() {
    let p = prober();
    let server = HttpServer::start(0).await;
    let timeout = Duration::from_millis(300);
    let r = p.run(&server.probe(), timeout).await;
    assert_eq!(r.outcome, fail("timed out after 300 ms"));
    assert!(
        r.latency >= timeout && r.latency < timeout + Duration::from_millis(50),
        "{:?}",
        r.latency
    );
    let refused = Probe::Http {
        url: format!("http://127.0.0.1:{}/", closed_port()),
    };
    assert_eq!(
        p.run(&refused, timeout).await.outcome,
        fail("connection refused")
    );
    let bad = Probe::Http {
        url: "not a url".into(),
    };
    let r = p.run(&bad, timeout).await;
    assert!(
        matches!(&r.outcome, Outcome::Fail(d) if d.starts_with("bad url")),
        "{r:?}"
    );
}

#[tokio::test]
async fn tcp_open_and_closed() {
    let p = prober();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = Probe::Tcp {
        addr: listener.local_addr().unwrap().to_string(),
    };
    let r = p.run(&open, Duration::from_secs(1)).await;
    assert_eq!(r.outcome, Outcome::Ok);
    eprintln!("tcp probe latency: {:?}", r.latency);
    let closed = Probe::Tcp {
        addr: format!("127.0.0.1:{}", closed_port()),
    };
    assert_eq!(
        p.run(&closed, Duration::from_secs(1)).await.outcome,
        fail("connection refused")
    );
}

fn sh(script: &str) -> Probe {
    Probe::Exec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("X".into(), "y".into()),
        ],
        user: None,
    }
}

#[tokio::test]
async fn exec_exit_status_output_and_environment() {
    let p = prober();
    let t = Duration::from_secs(5);
    assert_eq!(p.run(&sh("exit 0"), t).await.outcome, Outcome::Ok);
    // The environment is exactly the one given.
    assert_eq!(
        p.run(&sh(r#"test "$X" = y && test -z "$HOME""#), t)
            .await
            .outcome,
        Outcome::Ok
    );
    assert_eq!(p.run(&sh("exit 1"), t).await.outcome, fail("exit code 1"));
    assert_eq!(
        p.run(&sh("echo checking; echo 'db down' >&2; echo; exit 3"), t)
            .await
            .outcome,
        fail("exit code 3: db down")
    );
    let long = "x".repeat(300);
    let r = p.run(&sh(&format!("echo {long}; exit 2")), t).await;
    assert_eq!(r.outcome, fail(&format!("exit code 2: {}…", &long[..100])));
    assert_eq!(
        p.run(&sh("kill -TERM $$"), t).await.outcome,
        fail("killed by SIGTERM")
    );
    let missing = Probe::Exec {
        argv: vec!["/no/such/probe".into()],
        env: vec![],
        user: None,
    };
    assert_eq!(
        p.run(&missing, t).await.outcome,
        fail("cannot run /no/such/probe: not found")
    );
    let empty = Probe::Exec {
        argv: vec![],
        env: vec![],
        user: None,
    };
    assert_eq!(p.run(&empty, t).await.outcome, fail("empty command"));
}

#[tokio::test]
async fn exec_runs_as_the_given_user() {
    if !nix::unistd::Uid::effective().is_root() {
        crate::testutil::skip("needs root to switch users");
        return;
    }
    let pg = Identity::lookup("postgres").unwrap();
    let probe = Probe::Exec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(r#"test "$(id -u)" = {} && test "$USER" = postgres"#, pg.uid).into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        user: Some(pg),
    };
    assert_eq!(
        prober().run(&probe, Duration::from_secs(5)).await.outcome,
        Outcome::Ok
    );
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// Polls (this is a test) until `cond` holds, at most `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

#[tokio::test]
async fn exec_that_hangs_is_killed_at_its_timeout_with_its_group_and_reaped() {
    let dir = TempDir::new("exec-hang");
    let (leader, worker) = (dir.path().join("leader"), dir.path().join("worker"));
    let probe = sh(&format!(
        "sleep 60 & echo $! > {}; echo $$ > {}; wait",
        worker.display(),
        leader.display()
    ));
    let timeout = Duration::from_millis(300);
    let r = prober().run(&probe, timeout).await;
    assert_eq!(r.outcome, fail("timed out after 300 ms"));
    assert!(
        r.latency < timeout + Duration::from_millis(50),
        "{:?}",
        r.latency
    );
    let (leader, worker) = (read_pid(&leader), read_pid(&worker));
    // The probe's own process: killed and reaped, so gone from /proc altogether.
    assert!(
        eventually(Duration::from_secs(2), || !Path::new(&format!(
            "/proc/{leader}"
        ))
        .exists())
        .await,
        "probe process {leader} still in /proc"
    );
    // Its background child, in the same group: killed (reaped by whoever adopted it).
    assert!(
        eventually(Duration::from_secs(2), || !alive(worker)).await,
        "background process {worker} of the probe survived"
    );
}

#[tokio::test]
async fn exec_leftovers_are_killed_when_the_probe_ends() {
    let dir = TempDir::new("exec-bg");
    let worker = dir.path().join("worker");
    let probe = sh(&format!(
        "sleep 60 >/dev/null 2>&1 & echo $! > {}; exit 0",
        worker.display()
    ));
    let r = prober().run(&probe, Duration::from_secs(5)).await;
    assert_eq!(r.outcome, Outcome::Ok);
    let worker = read_pid(&worker);
    assert!(eventually(Duration::from_secs(2), || !alive(worker)).await);
}

#[test]
fn debug_hides_the_password_and_env_values() {
    let probe = Probe::Postgres {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "u".into(),
        password: Some("hunter2".into()),
        database: "d".into(),
    };
    let text = format!("{probe:?}");
    assert!(
        !text.contains("hunter2") && text.contains("<redacted>"),
        "{text}"
    );
    let exec = Probe::Exec {
        argv: vec!["true".into()],
        env: vec![("DATABASE_URL".into(), "postgresql://u:hunter2@h/d".into())],
        user: None,
    };
    let text = format!("{exec:?}");
    assert!(
        !text.contains("hunter2") && text.contains("DATABASE_URL"),
        "{text}"
    );
    assert_eq!(probe.kind(), "postgres");
    assert_eq!(exec.kind(), "exec");
}

#[test]
fn cannot_connect_now_is_starting_except_when_shutting_down() {
    let c = &SqlState::CANNOT_CONNECT_NOW;
    assert_eq!(
        classify_db_error(c, "the database system is starting up"),
        Outcome::Starting("starting up".into())
    );
    assert_eq!(
        classify_db_error(c, "the database system is in recovery mode"),
        Outcome::Starting("in recovery mode".into())
    );
    assert_eq!(
        classify_db_error(c, "the database system is shutting down"),
        fail("shutting down")
    );
    assert_eq!(
        classify_db_error(
            &SqlState::INVALID_PASSWORD,
            "password authentication failed for user \"x\""
        ),
        fail("password authentication failed for user \"x\"")
    );
}

#[test]
fn outcome_json_and_formats() {
    assert_eq!(
        serde_json::to_string(&Outcome::Ok).unwrap(),
        r#"{"outcome":"ok"}"#
    );
    assert_eq!(
        serde_json::to_string(&fail("http 503")).unwrap(),
        r#"{"outcome":"fail","detail":"http 503"}"#
    );
    let back: Outcome =
        serde_json::from_str(r#"{"outcome":"starting","detail":"starting up"}"#).unwrap();
    assert_eq!(back, Outcome::Starting("starting up".into()));
    assert_eq!(format_latency(Duration::from_micros(930)), "0.9ms");
    assert_eq!(format_latency(Duration::from_micros(12_400)), "12ms");
    assert_eq!(format_latency(Duration::from_millis(2140)), "2.1s");
    assert_eq!(
        io_detail(&io::Error::from_raw_os_error(111)),
        "connection refused"
    );
    assert_eq!(
        io_detail(&io::Error::from_raw_os_error(101)),
        "network is unreachable"
    );
}

/// A throwaway PostgreSQL 15 where every connection needs a password (initdb
/// `--auth=scram-sha-256`), so a wrong password fails even from loopback.
struct Pg {
    dir: TempDir,
    port: u16,
    pid: Option<Pid>,
    exit: Option<tokio::sync::oneshot::Receiver<Exit>>,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_USER: &str = "probe_user";
const PG_PASSWORD: &str = "right horse battery";

impl Pg {
    fn postgres_user() -> Option<Identity> {
        Some(Identity::lookup("postgres").unwrap())
    }

    fn chown_to_postgres(path: &Path) {
        let pg = Identity::lookup("postgres").unwrap();
        nix::unistd::chown(path, Some(pg.uid), Some(pg.gid)).unwrap();
    }

    async fn init() -> Pg {
        let dir = TempDir::new("probe-pg");
        for sub in ["data", "sock"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            Self::chown_to_postgres(&p);
        }
        let pw = dir.path().join("pw");
        std::fs::write(&pw, format!("{PG_PASSWORD}\n")).unwrap();
        Self::chown_to_postgres(&pw);
        let spec = ChildSpec::new(format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .arg(format!("--username={PG_USER}"))
            .arg(format!("--pwfile={}", pw.display()))
            .args(["--auth=scram-sha-256", "--no-sync", "--no-instructions"])
            .cwd("/")
            .user(Self::postgres_user())
            .stdout(Output::Null)
            .stderr(Output::Null);
        assert!(testutil::run(spec).await.success(), "initdb failed");
        Pg {
            dir,
            port: testutil::port(),
            pid: None,
            exit: None,
        }
    }

    fn start(&mut self, extra: &[&str]) {
        let spec = ChildSpec::new(format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(extra.iter().copied())
            .cwd("/")
            .user(Self::postgres_user())
            .stdout(Output::Null)
            .stderr(Output::Null);
        let spawned = testutil::reaper().spawn(spec).unwrap();
        self.pid = Some(spawned.pid);
        self.exit = Some(spawned.exit);
    }

    async fn stop(&mut self) {
        if let (Some(pid), Some(exit)) = (self.pid.take(), self.exit.take()) {
            let _ = kill(pid, Signal::SIGINT);
            let _ = exit.await;
        }
    }

    fn probe(&self, host: &str, password: Option<&str>, database: &str) -> Probe {
        Probe::Postgres {
            host: host.to_string(),
            port: self.port,
            user: PG_USER.into(),
            password: password.map(String::from),
            database: database.into(),
        }
    }

    fn tcp(&self, password: &str) -> Probe {
        self.probe("127.0.0.1", Some(password), "postgres")
    }

    /// Polls the probe (a test helper) until `done` says so; returns every distinct
    /// outcome seen on the way, the last one last.
    async fn poll(&self, probe: &Probe, done: impl Fn(&Outcome) -> bool) -> Vec<Outcome> {
        let p = prober();
        let start = Instant::now();
        let mut seen: Vec<Outcome> = Vec::new();
        loop {
            let r = p.run(probe, Duration::from_secs(2)).await;
            let finished = done(&r.outcome) || start.elapsed() > Duration::from_secs(20);
            if seen.last() != Some(&r.outcome) {
                seen.push(r.outcome);
            }
            if finished {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let (Some(pid), Some(mut exit)) = (self.pid.take(), self.exit.take()) {
            let _ = kill(pid, Signal::SIGQUIT);
            // The reaper has its own thread, so waiting here cannot deadlock.
            for _ in 0..500 {
                if exit.try_recv().is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[tokio::test]
async fn postgres_probe_logs_in_for_real() {
    if !nix::unistd::Uid::effective().is_root() || !Path::new(PG_BIN).exists() {
        crate::testutil::skip(&format!("needs root and PostgreSQL 15 in {PG_BIN}"));
        return;
    }
    let p = prober();
    let t = Duration::from_secs(2);
    let mut pg = Pg::init().await;
    // Nothing listening yet.
    assert_eq!(
        p.run(&pg.tcp(PG_PASSWORD), t).await.outcome,
        fail("connection refused")
    );
    let sock = pg.dir.path().join("sock").display().to_string();
    let r = p
        .run(&pg.probe(&sock, Some(PG_PASSWORD), "postgres"), t)
        .await;
    assert_eq!(
        r.outcome,
        fail(&format!("no socket at {sock}/.s.PGSQL.{}", pg.port))
    );

    pg.start(&[]);
    // On the way up: refused, perhaps "starting up" (57P03) if a probe lands in the window
    // between the socket opening and recovery finishing, then ok; never anything else.
    let seen = pg.poll(&pg.tcp(PG_PASSWORD), |o| *o == Outcome::Ok).await;
    eprintln!("postgres probe outcomes during start: {seen:?}");
    assert_eq!(seen.last(), Some(&Outcome::Ok), "{seen:?}");
    let starting = Outcome::Starting("starting up".into());
    assert!(
        seen.iter()
            .all(|o| *o == Outcome::Ok || *o == starting || *o == fail("connection refused")),
        "{seen:?}"
    );
    let mut lat = Vec::new();
    for _ in 0..20 {
        let r = p.run(&pg.tcp(PG_PASSWORD), t).await;
        assert_eq!(r.outcome, Outcome::Ok);
        lat.push(r.latency);
    }
    lat.sort();
    eprintln!(
        "postgres probe latency (tcp, scram): median {:?}, max {:?}",
        lat[10], lat[19]
    );
    // The Unix socket directory works as a host too.
    let r = p
        .run(&pg.probe(&sock, Some(PG_PASSWORD), "postgres"), t)
        .await;
    assert_eq!(r.outcome, Outcome::Ok);
    eprintln!(
        "postgres probe latency (unix socket, scram): {:?}",
        r.latency
    );

    // A wrong password fails while the server is up and pg_isready says it is fine.
    let r = p.run(&pg.tcp("wrong"), t).await;
    assert_eq!(
        r.outcome,
        fail(&format!(
            "password authentication failed for user \"{PG_USER}\""
        ))
    );
    let isready = ChildSpec::new(format!("{PG_BIN}/pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", PG_USER])
        .stdout(Output::Null);
    assert!(
        testutil::run(isready).await.success(),
        "pg_isready should say OK"
    );
    let r = p.run(&pg.probe("127.0.0.1", None, "postgres"), t).await;
    assert_eq!(r.outcome, fail("password missing"));
    let r = p
        .run(&pg.probe("127.0.0.1", Some(PG_PASSWORD), "nope"), t)
        .await;
    assert_eq!(r.outcome, fail("database \"nope\" does not exist"));

    // A standby without hot standby answers 57P03 for as long as it runs: starting.
    pg.stop().await;
    std::fs::write(pg.dir.path().join("data/standby.signal"), "").unwrap();
    pg.start(&["-c", "hot_standby=off"]);
    let seen = pg
        .poll(&pg.tcp(PG_PASSWORD), |o| {
            *o != fail("connection refused") && *o != starting
        })
        .await;
    assert_eq!(
        seen.last(),
        Some(&Outcome::Starting("not accepting connections".into())),
        "{seen:?}"
    );
    pg.stop().await;
}

/// With nothing listening on a local port in the ephemeral range, a connection from
/// 127.0.0.1 can take that port as its own and connect to itself (TCP simultaneous open):
/// the probe would say ok, and worse, the port then stays in TIME_WAIT and the app cannot
/// bind it (the Hive images saw a boot in fifty die of it). Probes of 127.0.0.1 come from
/// 127.0.0.2, so neither can happen: probed over the whole ephemeral range, the port is
/// still free. On the code before, a self-connection came within about 30 000 tries here.
#[tokio::test]
async fn probes_of_a_port_nobody_listens_on_never_take_it() {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Even: Linux gives connect() the even ports of the range (bind() the odd ones).
    let free = |p: &u16| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok();
    let port = ((lo / 2 + hi / 2)..hi)
        .filter(|p| p % 2 == 0)
        .find(free)
        .unwrap();
    let p = prober();
    let tries = 2 * (hi - lo) as usize;
    for probe in [
        Probe::Tcp {
            addr: format!("127.0.0.1:{port}"),
        },
        Probe::Http {
            url: format!("http://127.0.0.1:{port}/health"),
        },
    ] {
        let kind = probe.kind();
        for _ in 0..if kind == "tcp" { tries } else { tries / 4 } {
            let r = p.run(&probe, Duration::from_secs(1)).await;
            assert!(
                r.outcome != Outcome::Ok,
                "{kind}: 127.0.0.1:{port} has no listener, yet the probe said ok"
            );
        }
        assert!(free(&port), "{kind} probes left 127.0.0.1:{port} taken");
    }
}
