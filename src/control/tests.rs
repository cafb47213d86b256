//! The control socket through real sockets in temporary directories, and the formats.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::control::render::format_uptime;
use crate::control::wire::{parse_request, READ_TIMEOUT};
use crate::supervisor::verdict::State;
use crate::testutil::TempDir;

fn log() -> EventLog {
    EventLog::new(Instant::now())
}

fn svc(name: &str, healthy: bool, state: State) -> ServiceHealth {
    ServiceHealth {
        name: name.into(),
        healthy,
        state,
        kind: None,
        detail: None,
        latency_ms: None,
        tries: None,
    }
}

fn report() -> HealthReport {
    let mut pg = svc("postgres", true, State::Ok);
    pg.kind = Some("postgres".into());
    pg.latency_ms = Some(0.93);
    let mut app = svc("app", true, State::Ok);
    app.kind = Some("http".into());
    app.latency_ms = Some(2.8);
    HealthReport {
        healthy: true,
        services: vec![pg, app],
    }
}

/// Answers every request the way a runtime would, counting them.
fn runtime(answer: Option<Response>) -> (mpsc::Sender<Ask>, tokio::task::JoinHandle<usize>) {
    let (tx, mut rx) = mpsc::channel::<Ask>(8);
    let task = tokio::spawn(async move {
        let mut n = 0;
        while let Some((req, reply)) = rx.recv().await {
            n += 1;
            match (&answer, req) {
                (Some(a), _) => {
                    let _ = reply.send(a.clone());
                }
                // No answer: hold the oneshot, as a runtime stuck in a probe would.
                (None, _) => std::mem::forget(reply),
            }
        }
        n
    });
    (tx, task)
}

/// The blocking client, off the test's (single) runtime thread that also runs the server.
async fn call(path: &Path, req: Request, timeout: Duration) -> Result<Response, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || request(&path, req, timeout))
        .await
        .unwrap()
}

/// Sends raw bytes, reads the one line back.
async fn raw(path: &Path, bytes: Vec<u8>) -> Response {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        // The server stops reading early on oversized input; a failed write is expected.
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
            let _ = w.shutdown(std::net::Shutdown::Write);
        });
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let _ = writer.join();
        let line = out.split(|b| *b == b'\n').next().unwrap().to_vec();
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
    })
    .await
    .unwrap()
}

fn error_message(r: Response) -> String {
    match r {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn round_trip_through_a_0600_socket_that_is_removed_on_drop() {
    let dir = TempDir::new("ctl-rt");
    // The parent directory does not exist yet.
    let path = dir.path().join("run/tandem.sock");
    let (tx, task) = runtime(Some(Response::Health(report())));
    let guard = serve(&path, tx, Duration::from_secs(1), log())
        .await
        .unwrap();

    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    // Nothing left of the staging directory.
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        1
    );

    let mut times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let r = call(&path, Request::Health, Duration::from_secs(2))
            .await
            .unwrap();
        times.push(start.elapsed());
        let Response::Health(h) = r else {
            panic!("{r:?}")
        };
        assert_eq!(h.line(), "healthy: postgres ok 0.9ms, app ok 2.8ms");
    }
    times.sort();
    eprintln!(
        "control round trip: median {:?}, max {:?}",
        times[25], times[49]
    );

    drop(guard);
    assert!(!path.exists(), "the socket file outlived the server");
    let err = call(&path, Request::Health, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!("tandem is not running (no socket at {})", path.display())
    );
    assert_eq!(task.await.unwrap(), 50);
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_refused_other_files_kept() {
    let dir = TempDir::new("ctl-stale");
    let path = dir.path().join("tandem.sock");
    // A socket file left by a tandem that died: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let err = call(&path, Request::Status, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "tandem is not running (nothing listening on {})",
            path.display()
        )
    );

    let status = Response::Status(StatusReport {
        services: vec![],
        start_timeline: None,
        stop_timeline: None,
    });
    let (tx, _task) = runtime(Some(status));
    let _guard = serve(&path, tx.clone(), Duration::from_secs(1), log())
        .await
        .unwrap();
    let r = call(&path, Request::Status, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(matches!(r, Response::Status(_)), "{r:?}");

    let err = serve(&path, tx.clone(), Duration::from_secs(1), log())
        .await
        .err()
        .unwrap();
    assert_eq!(
        err,
        format!("another tandem is already running on {}", path.display())
    );
    // The first server is unharmed.
    assert!(call(&path, Request::Status, Duration::from_secs(2))
        .await
        .is_ok());

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = serve(&file, tx, Duration::from_secs(1), log())
        .await
        .err()
        .unwrap();
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn silent_client_does_not_block_others_and_is_dropped_after_a_second() {
    let dir = TempDir::new("ctl-slow");
    let path = dir.path().join("tandem.sock");
    let (tx, _task) = runtime(Some(Response::Health(report())));
    let _guard = serve(&path, tx, Duration::from_secs(1), log())
        .await
        .unwrap();

    let started = Instant::now();
    let p = path.clone();
    let silent = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out, started.elapsed())
    });
    // A client that sends its request and never reads the answer.
    let mut deaf = std::os::unix::net::UnixStream::connect(&path).unwrap();
    deaf.write_all(b"\"health\"\n").unwrap();

    let t = Instant::now();
    let r = call(&path, Request::Health, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(matches!(r, Response::Health(_)));
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );

    let (out, took) = silent.await.unwrap();
    let r: Response = serde_json::from_str(out.trim_end()).unwrap();
    assert_eq!(error_message(r), "no request within 1000 ms");
    assert!(
        took >= READ_TIMEOUT && took < READ_TIMEOUT + Duration::from_millis(300),
        "{took:?}"
    );
}

#[tokio::test]
async fn garbage_and_oversized_requests_get_an_error() {
    let dir = TempDir::new("ctl-bad");
    let path = dir.path().join("tandem.sock");
    let (tx, task) = runtime(Some(Response::Health(report())));
    let guard = serve(&path, tx, Duration::from_secs(1), log())
        .await
        .unwrap();

    let m = error_message(raw(&path, b"hello there\n".to_vec()).await);
    assert!(
        m.starts_with("bad request (") && m.contains("send \"health\", \"status\" or \"events\""),
        "{m}"
    );
    let m = error_message(raw(&path, b"\"reboot\"\n".to_vec()).await);
    assert!(m.contains("unknown variant `reboot`"), "{m}");
    let m = error_message(raw(&path, vec![b'x'; 1 << 20]).await);
    assert_eq!(m, "request longer than 4096 bytes");
    // A request without a newline, then EOF, is still a request.
    assert!(matches!(
        raw(&path, b"\"health\"".to_vec()).await,
        Response::Health(_)
    ));
    // Plain JSON spelling of the requests.
    assert_eq!(
        serde_json::to_string(&Request::Health).unwrap(),
        r#""health""#
    );
    assert_eq!(parse_request(b"\"status\"\r\n").unwrap(), Request::Status);

    drop(guard);
    // Only the well-formed request reached the runtime.
    assert_eq!(task.await.unwrap(), 1);
}

#[tokio::test]
async fn a_runtime_that_does_not_answer_is_bounded_on_both_sides() {
    let dir = TempDir::new("ctl-stuck");
    let path = dir.path().join("tandem.sock");
    let (tx, _task) = runtime(None);
    let _guard = serve(&path, tx, Duration::from_millis(300), log())
        .await
        .unwrap();

    let t = Instant::now();
    let r = call(&path, Request::Health, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(error_message(r), "no answer within 300 ms");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    let t = Instant::now();
    let err = call(&path, Request::Health, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "tandem is not answering on {} (timed out after 100 ms)",
            path.display()
        )
    );
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_runtime_that_is_gone_is_reported() {
    let dir = TempDir::new("ctl-gone");
    let path = dir.path().join("tandem.sock");
    let (tx, rx) = mpsc::channel::<Ask>(1);
    drop(rx);
    let _guard = serve(&path, tx, Duration::from_secs(1), log())
        .await
        .unwrap();
    let r = call(&path, Request::Status, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(error_message(r), "tandem is shutting down");
}

#[test]
fn health_line_names_what_is_wrong() {
    assert_eq!(report().line(), "healthy: postgres ok 0.9ms, app ok 2.8ms");

    let mut r = report();
    r.healthy = false;
    let app = &mut r.services[1];
    app.healthy = false;
    app.state = State::Failing;
    app.detail = Some("http 503".into());
    app.latency_ms = Some(1.0);
    app.tries = Some(3);
    assert_eq!(r.line(), "unhealthy: app http 503 after 3 tries");
    r.services[1].tries = Some(1);
    assert_eq!(r.line(), "unhealthy: app http 503");

    let mut pg = svc("postgres", false, State::Starting);
    pg.detail = Some("starting up".into());
    let r = HealthReport {
        healthy: false,
        services: vec![pg, svc("app", false, State::NotRunning)],
    };
    assert_eq!(r.line(), "unhealthy: postgres starting up, app not running");

    // A set-up under way (an upgrade's step) and the app waiting for it: starting.
    let mut pg = svc("postgres", false, State::Starting);
    pg.detail = Some("upgrading 15 -> 17: pg_upgrade --link".into());
    let mut app = svc("app", false, State::NotRunning);
    app.detail = Some("waiting for its dependencies".into());
    let r = HealthReport {
        healthy: false,
        services: vec![pg, app],
    };
    assert_eq!(
        r.line(),
        "starting: postgres upgrading 15 -> 17: pg_upgrade --link, app not running (waiting for its dependencies)"
    );
    // A probe failing inside its start period is not a start under way.
    let mut pg = svc("postgres", false, State::Starting);
    pg.detail = Some("password authentication failed".into());
    pg.latency_ms = Some(1.0);
    let r = HealthReport {
        healthy: false,
        services: vec![pg],
    };
    assert_eq!(
        r.line(),
        "unhealthy: postgres password authentication failed"
    );

    let mut app = svc("app", false, State::NotRunning);
    app.detail = Some("exited with code 1".into());
    let r = HealthReport {
        healthy: false,
        services: vec![svc("worker", true, State::Running), app],
    };
    assert_eq!(r.line(), "unhealthy: app not running (exited with code 1)");

    let r = HealthReport {
        healthy: true,
        services: vec![svc("worker", true, State::Running)],
    };
    assert_eq!(r.line(), "healthy: worker running");
    let json = serde_json::to_string(&Response::Health(r)).unwrap();
    assert!(
        json.starts_with(r#"{"type":"health","healthy":true,"services":[{"name":"worker""#),
        "{json}"
    );
}

#[test]
fn status_table_is_aligned() {
    let report = StatusReport {
        services: vec![
            StatusRow {
                name: "postgres".into(),
                state: "running".into(),
                health: "healthy".into(),
                pid: Some(42),
                uptime_ms: Some(192_300),
                restarts: 0,
                last_probe: Some("ok 1.2ms 3s ago".into()),
            },
            StatusRow {
                name: "migrate".into(),
                state: "done".into(),
                health: "-".into(),
                pid: None,
                uptime_ms: None,
                restarts: 0,
                last_probe: None,
            },
            StatusRow {
                name: "api".into(),
                state: "running".into(),
                health: "unhealthy".into(),
                pid: Some(12345),
                uptime_ms: Some(7_500_000),
                restarts: 2,
                last_probe: Some("http 503 1s ago".into()),
            },
        ],
        start_timeline: Some("healthy after 1 642 ms: postgres ready 212, api healthy 318".into()),
        stop_timeline: None,
    };
    let expected = "\
SERVICE   STATE    HEALTH     PID    UPTIME  RESTARTS  LAST PROBE
postgres  running  healthy    42     3m12s   0         ok 1.2ms 3s ago
migrate   done     -          -      -       0         -
api       running  unhealthy  12345  2h05m   2         http 503 1s ago
start: healthy after 1 642 ms: postgres ready 212, api healthy 318
";
    assert_eq!(report.table(), expected);
    assert_eq!(format_uptime(Duration::from_millis(900)), "0s");
    assert_eq!(format_uptime(Duration::from_secs(45)), "45s");
    assert_eq!(
        format_uptime(Duration::from_secs(3 * 86_400 + 4 * 3600 + 59)),
        "3d04h"
    );
    let json = serde_json::to_string(&Response::Status(report)).unwrap();
    let back: Response = serde_json::from_str(&json).unwrap();
    assert!(matches!(back, Response::Status(s) if s.services.len() == 3));
}

/// Clients that connect and say nothing (a sidecar leaking connections) never keep a health
/// check out: with 1 000 of them open, and then 1 500 more than the server keeps, and with
/// clients opening and closing as fast as they can, a health request is answered at once.
/// (With 32 slots held for the 1 s read timeout, the answer used to take seconds.)
#[tokio::test]
async fn idle_and_churning_clients_never_keep_a_health_check_out() {
    let dir = TempDir::new("ctl-idle");
    let path = dir.path().join("tandem.sock");
    let (tx, _task) = runtime(Some(Response::Health(report())));
    let _guard = serve(&path, tx, Duration::from_secs(1), log())
        .await
        .unwrap();

    let mut idle = Vec::new();
    for round in [1000usize, 1500] {
        // Off the runtime's thread: connect blocks while the server's backlog is full.
        let p = path.clone();
        let more = tokio::task::spawn_blocking(move || {
            (0..round)
                .map(|_| std::os::unix::net::UnixStream::connect(&p).unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        idle.extend(more);
        let t = Instant::now();
        let r = call(&path, Request::Health, Duration::from_secs(5))
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(matches!(r, Response::Health(_)), "{r:?}");
        eprintln!(
            "health answered in {took:?} with {} idle clients",
            idle.len()
        );
        assert!(
            took < Duration::from_millis(500),
            "{took:?} with {} idle",
            idle.len()
        );
    }
    drop(idle);

    let p = path.clone();
    let churn = tokio::task::spawn_blocking(move || {
        for _ in 0..3000 {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&p) {
                drop(s);
            }
        }
    });
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = call(&path, Request::Health, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(r, Response::Health(_)), "{r:?}");
        worst = worst.max(t.elapsed());
    }
    churn.await.unwrap();
    eprintln!("worst health answer while clients churned: {worst:?}");
    assert!(worst < Duration::from_millis(500), "{worst:?}");
}
