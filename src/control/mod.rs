//! The control socket: how `tandem healthcheck` and `tandem status` talk to the running
//! tandem.
//!
//! The protocol is one JSON line each way over a Unix socket (mode 0600): the client sends
//! a [`Request`] (`"health"` or `"status"`), the server answers one [`Response`] and closes.
//! The server ([`serve`]) only parses and relays: each request goes to the runtime through a
//! channel with a oneshot for the answer, so the runtime decides what "health" means and a
//! client, however slow or hostile, only ever holds its own task. The client ([`request`]) is
//! plain blocking std code, so `tandem healthcheck` needs no async runtime to start.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::health::{format_latency, Outcome, ProbeResult};

/// Where the socket lives unless `TANDEM_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tandem.sock";

/// A request is one word; anything longer than this is not a request.
const MAX_REQUEST: usize = 4096;
/// An answer lists every service; this only guards the client against a runaway peer.
const MAX_RESPONSE: usize = 1 << 20;
/// How long a client may take to send its line, and to take our answer.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections served at once. Only root (the socket is 0600) can connect, so this is a
/// guard against a runaway script rather than an attacker; beyond it, new connections wait
/// in the listen backlog until one finishes.
const MAX_CONNECTIONS: usize = 32;

/// What a client asks for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Probe every service now and report.
    Health,
    /// The process table: states, pids, uptimes, restarts, last probes.
    Status,
}

/// One service in a [`HealthReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub name: String,
    pub healthy: bool,
    /// "ok" | "starting" | "failing" | "not running" | "running" (running, no probe).
    pub state: String,
    /// The probe's kind, when the service has one.
    pub kind: Option<String>,
    /// The probe's detail ("http 503"), or why the service is not running.
    pub detail: Option<String>,
    pub latency_ms: Option<f64>,
    /// Consecutive failures, when known.
    pub tries: Option<u32>,
}

/// The answer to [`Request::Health`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub services: Vec<ServiceHealth>,
}

impl HealthReport {
    /// One line for `tandem healthcheck`. Healthy: every service with its latency
    /// ("healthy: postgres ok 0.9ms, app ok 2.8ms"). Unhealthy: only what is wrong
    /// ("unhealthy: app http 503 after 3 tries").
    pub fn line(&self) -> String {
        let mut shown: Vec<&ServiceHealth> = if self.healthy {
            self.services.iter().collect()
        } else {
            self.services.iter().filter(|s| !s.healthy).collect()
        };
        if shown.is_empty() {
            // Unhealthy with every service healthy should not happen; show them all anyway.
            shown = self.services.iter().collect();
        }
        let parts: Vec<String> = shown.iter().map(|s| s.phrase()).collect();
        let verdict = if self.healthy { "healthy" } else { "unhealthy" };
        if parts.is_empty() {
            format!("{verdict}: no services")
        } else {
            format!("{verdict}: {}", parts.join(", "))
        }
    }
}

impl ServiceHealth {
    /// A service judged by one probe result (`None`: the probe did not finish).
    pub fn from_probe(name: &str, kind: &str, result: Option<ProbeResult>) -> ServiceHealth {
        let mut h = ServiceHealth {
            name: name.to_string(),
            healthy: false,
            state: "failing".into(),
            kind: Some(kind.to_string()),
            detail: Some(format!("{kind} probe did not finish")),
            latency_ms: None,
            tries: None,
        };
        let Some(r) = result else { return h };
        h.latency_ms = Some(r.latency.as_secs_f64() * 1000.0);
        match r.outcome {
            Outcome::Ok => {
                h.healthy = true;
                h.state = "ok".into();
                h.detail = None;
            }
            Outcome::Starting(d) => {
                h.state = "starting".into();
                h.detail = Some(d);
            }
            Outcome::Fail(d) => h.detail = Some(d),
        }
        h
    }

    /// "app ok 2.8ms", "app http 503 after 3 tries", "postgres starting up", "app not running".
    fn phrase(&self) -> String {
        let name = &self.name;
        let detail = self.detail.as_deref().filter(|d| !d.is_empty());
        let mut out = match (self.state.as_str(), detail) {
            ("ok", _) => match self.latency_ms {
                Some(ms) => format!(
                    "{name} ok {}",
                    format_latency(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
                ),
                None => format!("{name} ok"),
            },
            ("not running", Some(d)) => format!("{name} not running ({d})"),
            (_, Some(d)) => format!("{name} {d}"),
            (state, None) => format!("{name} {state}"),
        };
        if self.state == "failing" {
            if let Some(n) = self.tries.filter(|n| *n > 1) {
                out.push_str(&format!(" after {n} tries"));
            }
        }
        out
    }
}

/// One service in a [`StatusReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRow {
    pub name: String,
    /// waiting | starting | running | stopping | done
    pub state: String,
    /// starting | healthy | unhealthy | -
    pub health: String,
    pub pid: Option<i32>,
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    /// e.g. "ok 1.2ms 3s ago".
    pub last_probe: Option<String>,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub services: Vec<StatusRow>,
}

impl StatusReport {
    /// An aligned table for a person, with a header; "-" where there is nothing to show.
    pub fn table(&self) -> String {
        let header = [
            "SERVICE",
            "STATE",
            "HEALTH",
            "PID",
            "UPTIME",
            "RESTARTS",
            "LAST PROBE",
        ];
        let dash = || "-".to_string();
        let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
        for s in &self.services {
            rows.push([
                s.name.clone(),
                s.state.clone(),
                s.health.clone(),
                s.pid.map_or_else(dash, |p| p.to_string()),
                s.uptime_ms
                    .map_or_else(dash, |ms| format_uptime(Duration::from_millis(ms))),
                s.restarts.to_string(),
                s.last_probe.clone().unwrap_or_else(dash),
            ]);
        }
        let mut widths = [0usize; 7];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat(' ').take(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// An uptime for a person: "45s", "3m12s", "2h05m", "3d04h".
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// What the server sends back: one JSON object tagged by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Response {
    Health(HealthReport),
    Status(StatusReport),
    Error { message: String },
}

/// A request on its way to the runtime, with where to send the answer.
pub type Ask = (Request, oneshot::Sender<Response>);

/// The running server. Dropping it stops accepting and removes the socket file (unless
/// another process has replaced it since).
pub struct ServerGuard {
    path: PathBuf,
    /// The socket file's identity, so that we never remove someone else's.
    id: (u64, u64),
    accept: tokio::task::AbortHandle,
}

impl ServerGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds the control socket at `path` (mode 0600 from the moment it is reachable) and
/// serves it until the guard is dropped. Each connection gets one line (at most 4 KiB,
/// within 1 s), the request goes to `requests`, the answer back within `answer_limit`
/// (the runtime's probes may take their timeout), then written within 1 s.
///
/// A socket file already at `path` is replaced when nothing answers on it (a previous
/// tandem that died); if something does, that is another tandem and we refuse.
///
/// Must be called inside a tokio runtime with I/O and time enabled: the accept loop and
/// each connection are tasks on it.
pub async fn serve(
    path: &Path,
    requests: mpsc::Sender<Ask>,
    answer_limit: Duration,
) -> Result<ServerGuard, String> {
    let shown = path.display();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(file_name) = path.file_name() else {
        return Err(format!("control socket path {shown} has no file name"));
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    clear_stale(path).await?;

    // bind() creates the file with the process umask; changing the umask would affect
    // every thread. Instead bind inside a private 0700 directory next to the target, make
    // the socket 0600 there, and rename it into place: it is never reachable with a wider
    // mode. (Same directory, so same filesystem, so rename works.)
    let private = parent.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| format!("cannot create {}: {e}", private.display()))?;
    let staged = private.join("s");
    let bound = (|| -> io::Result<std::os::unix::net::UnixListener> {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound.map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    let listener =
        UnixListener::from_std(listener).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| format!("cannot listen on {shown}: {e}"))?;

    let accept = tokio::spawn(accept_loop(listener, requests, answer_limit)).abort_handle();
    Ok(ServerGuard {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
        accept,
    })
}

/// Makes way for our socket: nothing there, or a socket nobody answers on (removed).
async fn clear_stale(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot check {shown}: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{shown} exists and is not a socket; remove it or set TANDEM_SOCKET to another path"
        ));
    }
    // Asynchronously and bounded: a live server with a full backlog would block a plain
    // connect, and a server that is there but stuck is still there.
    match tokio::time::timeout(READ_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(_)) | Err(_) => Err(format!("another tandem is already running on {shown}")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!("removing stale control socket {shown}");
            std::fs::remove_file(path).map_err(|e| format!("cannot remove stale {shown}: {e}"))
        }
        Ok(Err(e)) => Err(format!("cannot check {shown}: {e}")),
    }
}

async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<Ask>, answer_limit: Duration) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // With every slot taken, stop accepting: further clients wait in the kernel's
        // backlog (each served connection is bounded in time), rather than being told
        // "unhealthy" because of a burst of health checks.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: give the others time to close
                // rather than spin on the error.
                tracing::warn!("control socket: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            connection(stream, &requests, answer_limit).await;
            drop(slot);
        });
    }
}

/// One connection: one line in, one line out, closed. Every step is bounded in time.
async fn connection(mut stream: UnixStream, requests: &mpsc::Sender<Ask>, answer_limit: Duration) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Response::Error {
            message: format!("no request within {} ms", READ_TIMEOUT.as_millis()),
        },
        Ok(Err(message)) => Response::Error { message },
        Ok(Ok(req)) => ask(req, requests, answer_limit).await,
    };
    let bytes = encode(&response);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    parse_request(&line)
}

/// A request line: a JSON string, `"health"` or `"status"`, then a newline (or EOF).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line.trim_ascii_end())
        .map_err(|e| format!("bad request ({e}); send \"health\" or \"status\" as one JSON line"))
}

/// Hands the request to the runtime and waits for its answer, at most `limit`.
async fn ask(req: Request, requests: &mpsc::Sender<Ask>, limit: Duration) -> Response {
    let work = async {
        let (tx, rx) = oneshot::channel();
        requests
            .send((req, tx))
            .await
            .map_err(|_| "tandem is shutting down".to_string())?;
        rx.await
            .map_err(|_| "tandem dropped the request (shutting down?)".to_string())
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(message)) => Response::Error { message },
        Err(_) => Response::Error {
            message: format!("no answer within {} ms", limit.as_millis()),
        },
    }
}

/// A response as one JSON line.
fn encode(response: &Response) -> Vec<u8> {
    // These types serialise without fail (strings, numbers, no maps with non-string keys);
    // should that ever change, the client still gets a valid line.
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","message":"cannot encode the answer: {e}"}}"#).into_bytes()
    });
    bytes.push(b'\n');
    bytes
}

/// Asks the tandem listening on `path`, waiting at most `timeout` overall once connected.
/// Blocking std code: `tandem healthcheck` starts no async runtime. Errors are one line
/// naming the socket.
pub fn request(path: &Path, req: Request, timeout: Duration) -> Result<Response, String> {
    let shown = path.display();
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        format!(
            "tandem is not answering on {shown} (timed out after {} ms)",
            timeout.as_millis()
        )
    };
    // Time left before the deadline; a zero timeout means "none" to std, so it is an error.
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)
    };
    let io_failed = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => format!("lost the connection to tandem on {shown}: {e}"),
    };

    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("tandem is not running (no socket at {shown})"),
        io::ErrorKind::ConnectionRefused => {
            format!("tandem is not running (nothing listening on {shown})")
        }
        io::ErrorKind::PermissionDenied => format!("permission denied on {shown}"),
        _ => format!("cannot connect to tandem on {shown}: {e}"),
    })?;

    let mut line =
        serde_json::to_vec(&req).map_err(|e| format!("cannot encode the request: {e}"))?;
    line.push(b'\n');
    stream.set_write_timeout(Some(left()?)).map_err(io_failed)?;
    stream.write_all(&line).map_err(io_failed)?;

    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(io_failed)?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failed(e)),
        };
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.contains(&b'\n') {
            break;
        }
        if answer.len() > MAX_RESPONSE {
            return Err(format!(
                "tandem on {shown} sent an answer larger than {MAX_RESPONSE} bytes"
            ));
        }
    }
    let answer = match answer.iter().position(|b| *b == b'\n') {
        Some(end) => &answer[..end],
        None if answer.is_empty() => {
            return Err(format!(
                "tandem closed the connection on {shown} without answering"
            ))
        }
        None => &answer[..],
    };
    serde_json::from_slice(answer)
        .map_err(|e| format!("tandem on {shown} sent an answer we cannot read: {e}"))
}

#[cfg(test)]
mod tests;
