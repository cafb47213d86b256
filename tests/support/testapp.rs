//! testapp: the app the integration tests run under tandem.
//!
//! A hand-written HTTP/1.1 server on `127.0.0.1:$TESTAPP_PORT` (one request per connection,
//! answered with `Content-Length` and `Connection: close`) that talks to the database named by
//! `DATABASE_URL`. Every endpoint exists so that a test can observe one promise of tandem:
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `ok` if `SELECT 1` works and health is not forced bad, else 503 |
//! | `POST /health/bad`, `POST /health/good` | force health bad / back to normal |
//! | `GET /env/NAME` | the value of the environment variable NAME, 404 if unset |
//! | `GET /whoami` | JSON `{"database", "user"}` as the server sees the connection |
//! | `GET /pid` | this process's pid (as seen in its pid namespace) |
//! | `POST /rows?value=X`, `GET /rows` | insert into / list table `testapp_rows` (JSON array) |
//! | `POST /orphans?n=N[&hold=1]` | `sh` starts N background subshells and exits: N orphans |
//! | `POST /orphans/release` | held orphans exit (all at once) |
//! | `POST /exit?code=N` | answer, then exit with N |
//! | `POST /kill-self?signal=N` | answer, then die of signal N (default disposition) |
//!
//! Signals: SIGTERM runs one query on a fresh connection and prints
//! `testapp SIGTERM: database answered` (or `... database failed: ERR`), then exits 0; a fresh
//! connection is refused once PostgreSQL has begun shutting down, so the line proves the app
//! was stopped first. With `TESTAPP_IGNORE_TERM=1` SIGTERM is logged and ignored.
//! SIGHUP, SIGUSR1, SIGUSR2 and SIGWINCH are logged as `testapp got SIGNAME`.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Set by `POST /health/bad`, cleared by `POST /health/good`.
static FORCED_BAD: AtomicBool = AtomicBool::new(false);

/// Write ends of the pipes that keep `POST /orphans?hold=1` orphans alive until released.
static HELD_ORPHANS: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// A query that takes longer than this counts as failed: the tests wait far longer than this.
const DB_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests are tiny (everything is in the request line); a larger head is refused.
const MAX_HEAD: usize = 16 * 1024;

fn main() {
    // Core dumps from `POST /kill-self?signal=6` would only litter the working directory.
    let no_core = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; failure only means a core file may appear.
    unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &no_core) };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("testapp: cannot build the tokio runtime");
    std::process::exit(runtime.block_on(run()));
}

async fn run() -> i32 {
    let port: u16 = match std::env::var("TESTAPP_PORT").map(|p| p.parse()) {
        Ok(Ok(port)) => port,
        _ => {
            eprintln!("testapp: TESTAPP_PORT must be set to a port number");
            return 2;
        }
    };
    // Install the handlers before announcing readiness, so that a test signalling right
    // after `listening` cannot hit a default disposition.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
    let mut usr2 = signal(SignalKind::user_defined2()).expect("SIGUSR2 handler");
    let mut winch = signal(SignalKind::window_change()).expect("SIGWINCH handler");
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("testapp: cannot listen on 127.0.0.1:{port}: {err}");
            return 2;
        }
    };
    println!("testapp listening on {port}");
    let ignore_term = std::env::var("TESTAPP_IGNORE_TERM").as_deref() == Ok("1");

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                Err(err) => eprintln!("testapp: accept failed: {err}"),
            },
            _ = term.recv() => {
                if ignore_term {
                    println!("testapp ignoring SIGTERM");
                    continue;
                }
                match query_one("SELECT 1").await {
                    Ok(_) => println!("testapp SIGTERM: database answered"),
                    Err(err) => println!("testapp SIGTERM: database failed: {err}"),
                }
                return 0;
            }
            _ = hup.recv() => println!("testapp got SIGHUP"),
            _ = usr1.recv() => println!("testapp got SIGUSR1"),
            _ = usr2.recv() => println!("testapp got SIGUSR2"),
            _ = winch.recv() => println!("testapp got SIGWINCH"),
        }
    }
}

/// What happens after the response has been written.
enum After {
    Nothing,
    Exit(i32),
    Raise(i32),
}

struct Response {
    status: u16,
    body: String,
    after: After,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            body: body.into(),
            after: After::Nothing,
        }
    }
}

async fn serve(mut stream: TcpStream) {
    let response = match read_request_line(&mut stream).await {
        Ok(line) => route(&line).await,
        Err(err) => Response::new(400, err),
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.body.len()
    );
    let written = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(response.body.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    }
    .await;
    if let Err(err) = written {
        eprintln!("testapp: cannot write the response: {err}");
    }
    match response.after {
        After::Nothing => {}
        After::Exit(code) => {
            println!("testapp exiting with {code}");
            std::process::exit(code);
        }
        After::Raise(signal) => {
            println!("testapp raising signal {signal}");
            // SAFETY: plain libc calls; restoring the default disposition first makes a signal
            // tokio handles (SIGTERM, SIGUSR1, ...) kill the process too.
            unsafe {
                nix::libc::signal(signal, nix::libc::SIG_DFL);
                nix::libc::raise(signal);
            }
            // Only reached for signals whose default action is not to terminate.
            println!("testapp survived signal {signal}");
        }
    }
}

/// Reads the request head and returns its first line (`METHOD TARGET VERSION`).
async fn read_request_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the end of the request head".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    Ok(head.lines().next().unwrap_or_default().to_string())
}

async fn route(request_line: &str) -> Response {
    let mut parts = request_line.split(' ');
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(method), Some(target)) => (method, target),
        _ => return Response::new(400, "bad request line"),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
    };
    match (method, path) {
        ("GET", "/health") => {
            if FORCED_BAD.load(Ordering::SeqCst) {
                return Response::new(503, "forced bad");
            }
            match query_one("SELECT 1").await {
                Ok(_) => Response::new(200, "ok"),
                Err(err) => Response::new(503, err),
            }
        }
        ("POST", "/health/bad") => {
            FORCED_BAD.store(true, Ordering::SeqCst);
            Response::new(200, "bad")
        }
        ("POST", "/health/good") => {
            FORCED_BAD.store(false, Ordering::SeqCst);
            Response::new(200, "good")
        }
        ("GET", "/pid") => Response::new(200, std::process::id().to_string()),
        ("GET", "/whoami") => {
            match query_one("SELECT current_database()::text || '|' || current_user::text").await {
                Ok(row) => {
                    let (database, user) = row.split_once('|').unwrap_or((&row, ""));
                    let body = serde_json::json!({ "database": database, "user": user });
                    Response::new(200, body.to_string())
                }
                Err(err) => Response::new(503, err),
            }
        }
        ("POST", "/rows") => match param("value") {
            Some(value) => match insert_row(&value).await {
                Ok(()) => Response::new(200, "inserted"),
                Err(err) => Response::new(500, err),
            },
            None => Response::new(400, "missing value"),
        },
        ("GET", "/rows") => match list_rows().await {
            Ok(values) => Response::new(200, serde_json::json!(values).to_string()),
            Err(err) => Response::new(500, err),
        },
        ("POST", "/orphans") => {
            let n: u32 = match param("n").map(|n| n.parse()) {
                Some(Ok(n)) => n,
                _ => return Response::new(400, "n must be a number"),
            };
            let hold = param("hold").as_deref() == Some("1");
            // A blocking wait on our own `sh` is fine: the tests send one request at a time.
            match spawn_orphans(n) {
                Ok(release) if hold => {
                    HELD_ORPHANS.lock().unwrap().push(release);
                    Response::new(200, format!("holding {n}"))
                }
                Ok(release) => {
                    drop(release);
                    Response::new(200, format!("released {n}"))
                }
                Err(err) => Response::new(500, err),
            }
        }
        ("POST", "/orphans/release") => {
            let held = std::mem::take(&mut *HELD_ORPHANS.lock().unwrap());
            Response::new(200, format!("released {} batches", held.len()))
        }
        ("POST", "/exit") => match param("code").map(|c| c.parse()) {
            Some(Ok(code)) => Response {
                after: After::Exit(code),
                ..Response::new(200, format!("exiting with {code}"))
            },
            _ => Response::new(400, "code must be a number"),
        },
        ("POST", "/kill-self") => match param("signal").map(|s| s.parse()) {
            Some(Ok(signal)) => Response {
                after: After::Raise(signal),
                ..Response::new(200, format!("raising {signal}"))
            },
            _ => Response::new(400, "signal must be a number"),
        },
        _ => match path.strip_prefix("/env/") {
            Some(name) if method == "GET" => match std::env::var(percent_decode(name)) {
                Ok(value) => Response::new(200, value),
                Err(_) => Response::new(404, "unset"),
            },
            _ => Response::new(404, "no such endpoint"),
        },
    }
}

/// `sh` puts N subshells in the background and exits at once, so all N are re-parented to
/// the nearest subreaper (tandem). Each blocks reading a pipe whose only write end is the
/// returned fd (close-on-exec, so `sh` never had it): dropping it makes all N exit together,
/// N zombies for tandem to reap. Orphans that exited before `sh` did could be reaped by `sh`
/// itself (dash reaps finished jobs), which would let a non-reaping tandem pass.
fn spawn_orphans(n: u32) -> Result<OwnedFd, String> {
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))?;
    // Background jobs get /dev/null as stdin unless redirected, hence fd 3.
    let script = "exec 3<&0; i=0; \
                  while [ \"$i\" -lt \"$1\" ]; do (read -r x <&3) & i=$((i+1)); done";
    let status = std::process::Command::new("sh")
        .args(["-c", script, "orphans", &n.to_string()])
        .stdin(Stdio::from(read_end))
        .status()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if status.success() {
        Ok(write_end)
    } else {
        Err(format!("sh failed: {status}"))
    }
}

/// Opens a fresh connection from `DATABASE_URL`, so that every answer reflects the server now.
async fn connect() -> Result<tokio_postgres::Client, String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_string())?;
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("DATABASE_URL: {e}"))?;
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // The connection's end is reported through the client's next query.
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs a query returning one text value.
async fn query_one(sql: &str) -> Result<String, String> {
    let work = async {
        let client = connect().await?;
        let row = client
            .query_one(sql, &[])
            .await
            .map_err(|e| e.to_string())?;
        // `SELECT 1` answers an int4; everything else here answers text.
        match row.try_get::<_, String>(0) {
            Ok(text) => Ok(text),
            Err(_) => row
                .try_get::<_, i32>(0)
                .map(|n| n.to_string())
                .map_err(|e| e.to_string()),
        }
    };
    tokio::time::timeout(DB_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn insert_row(value: &str) -> Result<(), String> {
    let work = async {
        let client = connect().await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS testapp_rows (id serial PRIMARY KEY, value text NOT NULL)",
            )
            .await
            .map_err(|e| e.to_string())?;
        client
            .execute("INSERT INTO testapp_rows (value) VALUES ($1)", &[&value])
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    tokio::time::timeout(DB_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn list_rows() -> Result<Vec<String>, String> {
    let work = async {
        let client = connect().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('testapp_rows') IS NOT NULL", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = client
            .query("SELECT value FROM testapp_rows ORDER BY id", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    };
    tokio::time::timeout(DB_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Decodes `%XX` escapes and `+` (as a space) in a query-string value or path segment.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
