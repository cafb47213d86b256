//! Seeing the lifecycle, end to end with tandem as a real PID 1: `tandem events` (history,
//! live, two watchers, a watcher that never reads), the start and stop timelines against the
//! events' timestamps, the HTTP endpoint (`/readyz` following the app's health as
//! `tandem healthcheck` does, memory; its abuse is in tests/faults.rs), `/metrics` through
//! `promtool check metrics` and a real Prometheus server that scrapes it.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// `tandem events --json`, run as a separate process the way a person runs it.
struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(socket: &Path) -> Watcher {
        poll_until(SHORT_TIMEOUT, || socket.exists().then_some(()))
            .unwrap_or_else(|| panic!("no control socket at {}", socket.display()));
        let mut child = Command::new(tandem_bin())
            .args(["events", "--json"])
            .env_clear()
            .env("PATH", PATH)
            .env("TANDEM_SOCKET", socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run tandem events");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Watcher {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for `tandem events` to end (tandem exited) and returns its events.
    fn finish(mut self) -> Vec<Value> {
        let status = poll_until(STOP_TIMEOUT, || self.child.try_wait().unwrap())
            .expect("tandem events did not end after tandem exited");
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "tandem events: {status} {err}");
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kind(e: &Value) -> &str {
    e["event"].as_str().unwrap_or("?")
}

fn service(e: &Value) -> &str {
    e["service"].as_str().unwrap_or("tandem")
}

fn t(e: &Value) -> f64 {
    e["t_ms"].as_f64().unwrap()
}

/// The kinds of one service's events, in order.
fn kinds_of<'a>(events: &'a [Value], svc: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| service(e) == svc)
        .map(kind)
        .collect()
}

/// The first event of `svc` of this kind at or after index `from`, with its index.
fn find<'a>(events: &'a [Value], from: usize, svc: &str, k: &str) -> (usize, &'a Value) {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| service(e) == svc && kind(e) == k)
        .unwrap_or_else(|| panic!("no {k} of {svc} after #{from} in {events:#?}"))
}

/// The figures of a timeline line: `healthy after 1 642 ms: postgres init 1 104, ready
/// 212, app healthy 326` gives [("", 1642), ("postgres init", 1104), ("ready", 212),
/// ("app healthy", 326)].
fn figures(line: &str) -> Vec<(String, u64)> {
    let (head, rest) = line.split_once(": ").unwrap();
    let total: String = head.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut out = vec![(String::new(), total.parse().unwrap())];
    let rest = rest.split(';').next().unwrap();
    for part in rest.split(", ") {
        let part = part.split(" (").next().unwrap();
        let words: Vec<&str> = part.split(' ').collect();
        let first_digit = words
            .iter()
            .position(|w| w.chars().all(|c| c.is_ascii_digit()))
            .unwrap();
        let label = words[..first_digit].join(" ");
        let n: String = words[first_digit..].concat();
        out.push((label, n.parse().unwrap()));
    }
    out
}

/// Timeline figures are whole milliseconds of the same instants the events carry in
/// microseconds: they agree to within one.
fn agrees(what: &str, figure: u64, from: &Value, to: &Value) {
    let exact = t(to) - t(from);
    assert!(
        (figure as f64 - exact).abs() <= 1.0,
        "{what}: the timeline says {figure} ms, the events {exact:.3} ms ({from} .. {to})"
    );
}

/// The start, a crash of the app and its restart, and the stop, as two watchers see them
/// (one from the start, one joining later and getting the history): the same events, in
/// order, with the restart delay and the stop steps; and the two timelines' figures are
/// those of the events.
#[test]
fn events_show_a_start_a_crash_a_restart_and_a_stop_and_the_timelines_agree() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("events");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"))
        .set("TANDEM_APP_RESTART", "on-failure");
    let mut tandem = Tandem::start(&env);
    let early = Watcher::start(&sandbox.control_socket);
    tandem.wait_for_line("tandem | healthy after", START_TIMEOUT);
    let late = Watcher::start(&sandbox.control_socket);

    // `tandem status` shows the start timeline too.
    let status = Command::new(tandem_bin())
        .arg("status")
        .env("TANDEM_SOCKET", &sandbox.control_socket)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    if !status.contains("\nstart: healthy after ") {
        tandem.fail(&format!("status without the start timeline:\n{status}"));
    }

    let _ = http("POST", &sandbox.app_url("/kill-self?signal=9"));
    tandem.wait_for_count("app is ready after", 2, START_TIMEOUT);
    // Both watchers have seen the second ready before the stop begins.
    let seen = |w: &Watcher| w.count();
    let before = (seen(&early), seen(&late));
    assert_eq!(tandem.stop(), 0);
    tandem.assert_clean_postgres_stop();
    let a = early.finish();
    let b = late.finish();
    assert!(before.0 > 0 && before.1 > 0);
    let seqs = |v: &[Value]| {
        v.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&a), seqs(&b), "both watchers see the same events");
    assert_eq!(a, b);
    let ev = a;
    assert!(
        seqs(&ev).windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no repeat: {:?}",
        seqs(&ev)
    );

    assert_eq!(
        kinds_of(&ev, "app"),
        [
            "starting",
            "spawned",
            "ready",
            "healthy",
            "exited",
            "restart_scheduled",
            "starting",
            "spawned",
            "ready",
            "healthy",
            "stop_step",
            "exited",
        ],
        "{ev:#?}"
    );
    let pg = kinds_of(&ev, "postgres");
    assert_eq!(pg[..2], ["starting", "step_started"], "{pg:?}");
    assert_eq!(pg[pg.len() - 2..], ["stop_step", "exited"], "{pg:?}");
    assert_eq!(
        kinds_of(&ev, "tandem"),
        ["boot", "all_healthy", "stopping", "stopped"]
    );
    let steps: Vec<&str> = ev
        .iter()
        .filter(|e| kind(e) == "step_exited")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&"initdb"), "{steps:?}");
    assert!(steps.contains(&"the temporary server"), "{steps:?}");

    // The crash and the restart: the exit's code, the delay, and a start that waited it.
    let (i, crash) = find(&ev, 0, "app", "exited");
    assert_eq!(crash["code"], 137, "{crash}");
    let (_, sched) = find(&ev, i, "app", "restart_scheduled");
    let delay = sched["delay_ms"].as_u64().unwrap();
    assert!((900..=1100).contains(&delay), "1 s +-10%: {sched}");
    assert_eq!(sched["restart"], 1);
    let (_, again) = find(&ev, i, "app", "starting");
    let waited = t(again) - t(crash);
    assert!(
        waited >= delay as f64 - 1.0,
        "restarted after {waited} ms, before its delay of {delay} ms"
    );

    // The stop: SIGTERM asked for it, the app got SIGTERM first, PostgreSQL SIGINT after
    // the app had gone, each with its deadline, exit code 0.
    let (s, stopping) = find(&ev, 0, "tandem", "stopping");
    assert_eq!(stopping["signal"], "SIGTERM");
    let (j, app_step) = find(&ev, s, "app", "stop_step");
    assert_eq!(app_step["signal"], "SIGTERM");
    assert!(app_step["deadline_ms"].as_u64().unwrap() > 0);
    let (k, app_gone) = find(&ev, j, "app", "exited");
    let (l, pg_step) = find(&ev, k, "postgres", "stop_step");
    assert_eq!(pg_step["signal"], "SIGINT");
    let (_, pg_gone) = find(&ev, l, "postgres", "exited");
    assert_eq!(pg_gone["code"], 0);
    let stopped = ev.last().unwrap();
    assert_eq!(kind(stopped), "stopped");
    assert_eq!(stopped["code"], 0);

    // The timelines, as logged, against the events.
    let line = |prefix: &str| {
        let own = tandem.own_lines();
        own.iter()
            .find_map(|l| {
                l.strip_prefix("tandem | ")
                    .filter(|l| l.starts_with(prefix))
            })
            .map(str::to_string)
            .unwrap_or_else(|| tandem.fail(&format!("no {prefix:?} line")))
    };
    let start = figures(&line("healthy after "));
    let (_, boot) = find(&ev, 0, "tandem", "boot");
    let (_, all) = find(&ev, 0, "tandem", "all_healthy");
    let (_, pg_asked) = find(&ev, 0, "postgres", "starting");
    let (_, pg_spawned) = find(&ev, 0, "postgres", "spawned");
    let (_, pg_ready) = find(&ev, 0, "postgres", "ready");
    let (_, app_asked) = find(&ev, 0, "app", "starting");
    let (_, app_ready) = find(&ev, 0, "app", "ready");
    let labels: Vec<&str> = start.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["", "postgres init", "ready", "app healthy"]);
    agrees("healthy after", start[0].1, boot, all);
    agrees("postgres init", start[1].1, pg_asked, pg_spawned);
    agrees("postgres ready", start[2].1, pg_spawned, pg_ready);
    agrees("app healthy", start[3].1, app_asked, app_ready);

    let stop_line = line("stopped after ");
    let stop = figures(&stop_line);
    let labels: Vec<&str> = stop.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["", "app", "postgres", "budget"], "{stop_line}");
    assert!(stop_line.contains("app ") && stop_line.contains(" (SIGTERM), postgres "));
    agrees("stopped after", stop[0].1, stopping, stopped);
    agrees("app's stop", stop[1].1, app_step, app_gone);
    agrees("postgres' stop", stop[2].1, pg_step, pg_gone);
    assert_eq!(stop[3].1, 9000);
    tandem.assert_secret_absent();
}

/// A watcher that asks for events and never reads them is dropped (tandem says so), and
/// supervision goes on: a service that restarts every millisecond keeps restarting, the
/// app stays healthy, and the stop is clean.
#[test]
fn a_watcher_that_never_reads_is_dropped_and_supervision_goes_on() {
    let sandbox = Sandbox::new("events-stuck");
    let testapp = testapp_bin();
    let config = sandbox.root.join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[service.flap]
command = ["sh", "-c", "exit 1"]
restart = {{ policy = "always", delay = "1ms", max_delay = "2ms", max_restarts = 1000000, window = "1s" }}
required = false

[service.app]
command = ["{}"]
main = true
health = {{ tcp = "127.0.0.1:{}", interval = "200ms" }}
"#,
            testapp.display(),
            sandbox.app_port
        ),
    )
    .unwrap();
    let mut env = Env::default();
    env.set("TANDEM_SOCKET", sandbox.control_socket.to_str().unwrap())
        .set("TESTAPP_PORT", &sandbox.app_port.to_string())
        .set("TANDEM_LOG", "warn");
    let mut tandem = Tandem::start_config(Mode::Pid1, &env, &config);
    poll_until(SHORT_TIMEOUT, || {
        sandbox.control_socket.exists().then_some(())
    })
    .unwrap_or_else(|| tandem.fail("no control socket"));
    let mut stuck = UnixStream::connect(&sandbox.control_socket).unwrap();
    stuck.write_all(b"\"events\"\n").unwrap();
    tandem.wait_for_line("tandem events: a watcher", SHORT_TIMEOUT);
    let before = flap_restarts(&sandbox.control_socket);

    // Still supervising: the flapping service goes on restarting, the app is healthy.
    let more = poll_until(SHORT_TIMEOUT, || {
        (flap_restarts(&sandbox.control_socket) > before + 50).then_some(())
    });
    if more.is_none() {
        tandem.fail("the flapping service stopped restarting after the watcher was dropped");
    }
    // The container as a whole is not healthy (flap never stays up); the app is.
    let health = Command::new(tandem_bin())
        .args(["healthcheck", "--json"])
        .env("TANDEM_SOCKET", &sandbox.control_socket)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&health.stdout).unwrap_or(Value::Null);
    let app_healthy = report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "app"))
        .is_some_and(|s| s["healthy"] == true);
    if !app_healthy {
        tandem.fail(&format!("healthcheck after the drop: {report}"));
    }
    // The stuck watcher's connection is closed: what was sent ends.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    if let Err(e) = stuck.read_to_end(&mut sink) {
        tandem.fail(&format!(
            "the dropped watcher's connection stayed open: {e}"
        ));
    }
    assert_eq!(tandem.stop(), 0);
    tandem.assert_no_panic();
}

/// The flapping service's restarts so far, from `tandem status --json`.
fn flap_restarts(socket: &Path) -> u64 {
    let out = Command::new(tandem_bin())
        .args(["status", "--json"])
        .env("TANDEM_SOCKET", socket)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "flap"))
        .and_then(|s| s["restarts"].as_u64())
        .unwrap_or(0)
}

/// `/readyz` follows the app's health as `tandem healthcheck` does (503 while its probe
/// fails, 200 again after), `/healthz` stays 200; only GET and HEAD; 1 000 requests leave
/// tandem's memory where it was. (Abusive clients: tests/faults.rs.)
#[test]
fn readyz_follows_health_like_healthcheck_and_requests_leave_memory_where_it_was() {
    if !can_run_postgres_as_pid1() {
        return;
    }
    let sandbox = Sandbox::new("http");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut env = sandbox.env_with_db();
    env.set("TANDEM_APP_HEALTH_URL", &sandbox.app_url("/health"))
        .set("TANDEM_APP_HEALTH_INTERVAL", "200ms")
        .set("TANDEM_APP_HEALTH_RETRIES", "1")
        .set("TANDEM_APP_ON_UNHEALTHY", "report")
        .set("TANDEM_HTTP", &addr);
    let mut tandem = Tandem::start(&env);
    tandem.wait_for_line("tandem | healthy after", START_TIMEOUT);
    let healthcheck = || {
        let out = Command::new(tandem_bin())
            .arg("healthcheck")
            .env("TANDEM_SOCKET", &sandbox.control_socket)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        )
    };
    let both = |tandem: &Tandem, want: u16| {
        let got = poll_until(SHORT_TIMEOUT, || {
            let r = http_get(&addr, "/readyz").ok()?;
            (r.0 == want).then_some(r)
        });
        let Some((_, body)) = got else {
            tandem.fail(&format!("/readyz never answered {want}"));
        };
        let (code, line) = healthcheck();
        let healthy = want == 200;
        if code != Some(i32::from(!healthy)) || line.starts_with("healthy") != healthy {
            tandem.fail(&format!(
                "/readyz {want} {body:?} but healthcheck {code:?} {line:?}"
            ));
        }
        body
    };
    let body = both(&tandem, 200);
    assert!(body.starts_with("healthy: postgres ok"), "{body}");
    tandem.app_ok(&sandbox, "POST", "/health/bad");
    let body = both(&tandem, 503);
    assert!(body.starts_with("unhealthy: app http 503"), "{body}");
    assert_eq!(
        http_get(&addr, "/healthz").unwrap().0,
        200,
        "alive while the app is not"
    );
    tandem.app_ok(&sandbox, "POST", "/health/good");
    both(&tandem, 200);

    // Read-only, and only what it serves.
    let post = http_raw(&addr, "POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(post.0, 405);
    assert_eq!(http_get(&addr, "/nope").unwrap().0, 404);
    let head = http_raw(&addr, "HEAD /readyz HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head, (200, String::new()));
    assert_eq!(http_raw(&addr, "GET /readyz\r\n\r\n").unwrap().0, 400);

    // Memory: 1 000 requests (after 200 to warm up) leave RSS within 256 KiB.
    let pid = tandem.pid();
    for _ in 0..200 {
        http_get(&addr, "/readyz").unwrap();
    }
    let before = rss_kib(pid);
    for n in 0..1000 {
        let p = ["/readyz", "/healthz", "/metrics"][n % 3];
        assert_eq!(http_get(&addr, p).unwrap().0, 200);
    }
    let after = rss_kib(pid);
    assert!(
        after <= before + 256,
        "RSS went from {before} KiB to {after} KiB over 1 000 requests"
    );

    assert_eq!(tandem.stop(), 0);
    tandem.assert_clean_postgres_stop();
    tandem.assert_no_panic();
}

/// Why Prometheus' tools are missing, if they are (Debian's `prometheus` package has both).
fn prometheus_missing() -> Option<String> {
    for tool in ["promtool", "prometheus"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install prometheus)"
            ));
        }
    }
    None
}

fn can_run_prometheus() -> bool {
    let Some(why) = prometheus_missing() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so this test may not be skipped: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

/// A Prometheus server started by the test on loopback, killed at the end.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

impl Prometheus {
    fn start(root: &Path, target: &str) -> Prometheus {
        let dir = root.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of an instant query's first sample, if it has one.
    fn query(&self, promql: &str) -> Option<String> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}")).ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string)
    }
}

/// `/metrics` passes `promtool check metrics`, and a real Prometheus that scrapes tandem
/// answers a PromQL query with the app's restart count after the app crashed once.
#[test]
fn prometheus_scrapes_tandem_and_sees_the_restart_of_the_app() {
    if !can_run_prometheus() {
        return;
    }
    let sandbox = Sandbox::new("prometheus");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = Env::default();
    env.set("TANDEM_SOCKET", sandbox.control_socket.to_str().unwrap())
        .set("TESTAPP_PORT", &sandbox.app_port.to_string())
        .set(
            "TANDEM_APP_HEALTH_TCP",
            &format!("127.0.0.1:{}", sandbox.app_port),
        )
        .set("TANDEM_APP_HEALTH_INTERVAL", "200ms")
        .set("TANDEM_APP_RESTART", "on-failure")
        .set("TANDEM_HTTP", &addr);
    let mut tandem = Tandem::start(&env);
    tandem.wait_app_ready();
    tandem.wait_for_line("tandem | healthy after", SHORT_TIMEOUT);

    let (status, text) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    if !out.status.success() || !out.stdout.is_empty() || !out.stderr.is_empty() {
        tandem.fail(&format!(
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for family in [
        "tandem_service_up{service=\"app\"} 1",
        "tandem_service_restarts_total{service=\"app\"} 0",
        "tandem_service_phase{service=\"app\",phase=\"ready\"} 1",
        "tandem_service_probe_duration_seconds_count{service=\"app\"}",
        "tandem_service_resident_memory_bytes{service=\"app\"}",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(family), "no {family:?} in\n{text}");
    }

    let prometheus = Prometheus::start(&sandbox.root, &addr);
    let restarts = r#"tandem_service_restarts_total{job="tandem",service="app"}"#;
    if poll_until(START_TIMEOUT, || {
        prometheus.query(restarts).filter(|v| v == "0")
    })
    .is_none()
    {
        tandem.fail("Prometheus never scraped a restart count of 0");
    }
    let _ = http("POST", &sandbox.app_url("/kill-self?signal=9"));
    tandem.wait_for_count(APP_READY, 2, START_TIMEOUT);
    if poll_until(START_TIMEOUT, || {
        prometheus.query(restarts).filter(|v| v == "1")
    })
    .is_none()
    {
        tandem.fail(&format!(
            "Prometheus never answered 1 for {restarts}; last {:?}",
            prometheus.query(restarts)
        ));
    }
    assert_eq!(
        prometheus.query(r#"up{job="tandem"}"#).as_deref(),
        Some("1"),
        "the scrape itself is healthy"
    );
    assert_eq!(tandem.stop(), 0);
}
