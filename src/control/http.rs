//! The HTTP endpoint (`TANDEM_HTTP`, off by default): `GET /healthz` (liveness),
//! `GET /readyz` (the healthcheck's verdict from the supervisor's state, no probe run) and
//! `GET /metrics` (Prometheus). Read-only: GET and HEAD, nothing else.
//!
//! Bounded like the control socket: at most [`MAX_OPEN`] connections (the oldest that has
//! not sent its request yet is closed to make room), a request head of at most
//! [`MAX_HEAD`] bytes within [`READ_TIMEOUT`] (a slowloris client is closed when it is
//! up), no body read, one answer per connection (`Connection: close`) written within the
//! write timeout. Each answer comes from the event loop through the same channel as the
//! socket's; a connection only ever holds its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::server::{OpenGuard, Waiting};
use super::wire::{Ask, Request, Response, WRITE_TIMEOUT};

/// Connections open at once (about 10 KiB each at most, the head buffer included).
pub const MAX_OPEN: usize = 256;
/// Requests being answered at once; beyond, a request waits for a place.
const MAX_ANSWERING: usize = 16;
/// The request line and headers; a kubelet's or Prometheus' are a few hundred bytes.
pub const MAX_HEAD: usize = 8192;
/// The whole request head must arrive within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the event loop may take to answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(2);
/// After answering, what a client still sends (a body we do not read) is taken and
/// dropped for this long, at most [`DRAIN_MAX`] bytes, so that closing does not reset the
/// connection under our answer.
const DRAIN_TIME: Duration = Duration::from_millis(100);
const DRAIN_MAX: usize = 1 << 20;

/// The running endpoint; dropping it stops accepting.
pub struct HttpGuard {
    accept: tokio::task::AbortHandle,
}

impl Drop for HttpGuard {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens on `addr` and answers from `requests`. Must run inside a tokio runtime.
pub async fn serve(addr: SocketAddr, requests: mpsc::Sender<Ask>) -> Result<HttpGuard, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (TANDEM_HTTP): {e}"))?;
    let accept = tokio::spawn(accept_loop(listener, requests)).abort_handle();
    Ok(HttpGuard { accept })
}

async fn accept_loop(listener: TcpListener, requests: mpsc::Sender<Ask>) {
    let answering = Arc::new(Semaphore::new(MAX_ANSWERING));
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                let evicted = Waiting::lock(&waiting).evict_oldest();
                if !evicted {
                    tracing::warn!("http endpoint: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Some(guard) = OpenGuard::admit(&waiting, MAX_OPEN) else {
            continue;
        };
        let (requests, answering) = (requests.clone(), Arc::clone(&answering));
        let id = guard.id();
        let task = tokio::spawn(async move {
            connection(stream, &requests, &answering, &guard).await;
        });
        Waiting::lock(&waiting).idle.insert(id, task.abort_handle());
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Live,
    Ready,
    Metrics,
    Index,
    NotFound,
    /// Not GET or HEAD.
    NotAllowed,
    Bad(&'static str),
}

/// Reads the request line out of a complete head (`None` while incomplete).
fn parse_head(head: &[u8]) -> Option<(Route, bool)> {
    let end = find(head, b"\r\n\r\n").or_else(|| find(head, b"\n\n"))?;
    let text = std::str::from_utf8(&head[..end]).ok();
    let Some(line) = text.and_then(|t| t.lines().next()) else {
        return Some((Route::Bad("the request head is not text"), false));
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some((Route::Bad("malformed request line"), false));
    };
    if !version.starts_with("HTTP/1.") {
        return Some((Route::Bad("only HTTP/1.x is spoken here"), false));
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return Some((Route::NotAllowed, false));
    }
    let path = target.split('?').next().unwrap_or(target);
    let route = match path {
        "/healthz" | "/livez" => Route::Live,
        "/readyz" => Route::Ready,
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    };
    Some((route, head_only))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads until the head is complete, at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Result<(Route, bool), Route> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|_| Route::Bad("cannot read the request"))?;
        if n == 0 {
            return Err(Route::Bad("closed before the request was complete"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(parsed) = parse_head(&head) {
            return Ok(parsed);
        }
        if head.len() > MAX_HEAD {
            return Err(Route::Bad("request head too large"));
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    requests: &mpsc::Sender<Ask>,
    answering: &Semaphore,
    guard: &OpenGuard,
) {
    let (route, head_only) = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await
    {
        Err(_) => return, // Too slow: closed, nothing said.
        Ok(Err(Route::Bad(why))) if why.starts_with("closed") => return,
        Ok(Err(route)) => (route, false),
        Ok(Ok(parsed)) => parsed,
    };
    guard.arrived();
    let (status, content_type, body) = match route {
        Route::Live => match ask(Request::Live, requests, answering).await {
            Ok(Response::Live { live: true, detail }) => (200, TEXT, detail + "\n"),
            Ok(Response::Live {
                live: false,
                detail,
            }) => (503, TEXT, detail + "\n"),
            Ok(_) => (500, TEXT, "unexpected answer\n".to_string()),
            Err(e) => (503, TEXT, e + "\n"),
        },
        Route::Ready => match ask(Request::Ready, requests, answering).await {
            Ok(Response::Health(report)) => {
                let status = if report.healthy { 200 } else { 503 };
                (status, TEXT, report.line() + "\n")
            }
            Ok(_) => (500, TEXT, "unexpected answer\n".to_string()),
            Err(e) => (503, TEXT, format!("unhealthy: {e}\n")),
        },
        Route::Metrics => match ask(Request::Metrics, requests, answering).await {
            Ok(Response::Metrics { text }) => (200, METRICS, text),
            Ok(_) => (500, TEXT, "unexpected answer\n".to_string()),
            Err(e) => (503, TEXT, e + "\n"),
        },
        Route::Index => (
            200,
            TEXT,
            "tandem: GET /healthz (live), /readyz (healthy), /metrics (Prometheus)\n".to_string(),
        ),
        Route::NotFound => (
            404,
            TEXT,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
        Route::NotAllowed => (405, TEXT, "only GET and HEAD\n".to_string()),
        Route::Bad(why) => (400, TEXT, format!("bad request: {why}\n")),
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut buf = [0u8; 4096];
            let mut taken = 0;
            while taken < DRAIN_MAX {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => taken += n,
                }
            }
        })
        .await;
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

async fn ask(
    req: Request,
    requests: &mpsc::Sender<Ask>,
    answering: &Semaphore,
) -> Result<Response, String> {
    let _slot = answering
        .acquire()
        .await
        .map_err(|_| "tandem is shutting down".to_string())?;
    let work = async {
        let (tx, rx) = oneshot::channel();
        requests
            .send((req, tx))
            .await
            .map_err(|_| "tandem is shutting down".to_string())?;
        rx.await
            .map_err(|_| "tandem dropped the request (shutting down?)".to_string())
    };
    match tokio::time::timeout(ANSWER_LIMIT, work).await {
        Ok(Ok(Response::Error { message })) => Err(message),
        Ok(r) => r,
        Err(_) => Err(format!(
            "tandem is not answering (no answer within {} ms)",
            ANSWER_LIMIT.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_routed_and_only_reads_allowed() {
        let p = |s: &str| parse_head(s.as_bytes());
        assert_eq!(
            p("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some((Route::Ready, false))
        );
        assert_eq!(
            p("HEAD /healthz HTTP/1.0\r\n\r\n"),
            Some((Route::Live, true))
        );
        assert_eq!(
            p("GET /metrics?x=1 HTTP/1.1\n\n"),
            Some((Route::Metrics, false))
        );
        assert_eq!(p("GET /readyz HTTP/1.1\r\nHost: x\r\n"), None, "incomplete");
        assert_eq!(
            p("POST /readyz HTTP/1.1\r\n\r\n"),
            Some((Route::NotAllowed, false))
        );
        assert_eq!(
            p("GET /nope HTTP/1.1\r\n\r\n"),
            Some((Route::NotFound, false))
        );
        assert!(matches!(p("GET /readyz\r\n\r\n"), Some((Route::Bad(_), _))));
        assert!(matches!(
            p("GET / SPDY/3\r\n\r\n"),
            Some((Route::Bad(_), _))
        ));
        assert!(matches!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Some((Route::Bad(_), _))
        ));
    }
}
