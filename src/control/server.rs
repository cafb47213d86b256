//! The control socket's server: bound 0600, every connection bounded in time and size.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::events::{Dropped, EventLog, Record, MAX_WATCHERS};
use super::wire::{
    encode, parse_request, Ask, Request, Response, MAX_REQUEST, READ_TIMEOUT, WRITE_TIMEOUT,
};

/// Requests answered at once (each health request runs every probe). Beyond it, a request
/// that has arrived waits for a place.
const MAX_ANSWERING: usize = 32;

/// Connections open at once. A connection that has not sent its request yet costs a task
/// and a 512-byte buffer (about 2 KiB in all, so at most ~2 MiB); beyond the limit, or when
/// tandem runs out of descriptors, the oldest of them is closed to make room, so clients
/// that connect and say nothing never keep a health check out.
const MAX_OPEN: usize = 1024;

/// The connections that have not sent their request yet, oldest first (shared with the
/// HTTP endpoint, which bounds its connections the same way).
#[derive(Default)]
pub(super) struct Waiting {
    next: u64,
    open: usize,
    pub(super) idle: std::collections::BTreeMap<u64, tokio::task::AbortHandle>,
}

impl Waiting {
    pub(super) fn lock(w: &std::sync::Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
        w.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the oldest connection still waiting for its request; false if there is none.
    pub(super) fn evict_oldest(&mut self) -> bool {
        match self.idle.pop_first() {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// Counts a connection as open until its task ends, however it ends (aborted included).
pub(super) struct OpenGuard {
    id: u64,
    waiting: Arc<std::sync::Mutex<Waiting>>,
}

impl OpenGuard {
    /// A place for one more connection, making room by closing the oldest silent one when
    /// `max` are open; `None` when every open one is being answered. Register the
    /// connection's task under [`OpenGuard::id`] in `idle` before it can run.
    pub(super) fn admit(waiting: &Arc<std::sync::Mutex<Waiting>>, max: usize) -> Option<OpenGuard> {
        let mut w = Waiting::lock(waiting);
        if w.open >= max && !w.evict_oldest() {
            return None;
        }
        w.open += 1;
        w.next += 1;
        Some(OpenGuard {
            id: w.next,
            waiting: Arc::clone(waiting),
        })
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request is in: no longer one to evict.
    pub(super) fn arrived(&self) {
        self.lock().idle.remove(&self.id);
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut w = self.lock();
        w.idle.remove(&self.id);
        w.open -= 1;
    }
}

/// The running server. Dropping it stops accepting and removes the socket file (unless
/// another process has replaced it since).
pub struct ServerGuard {
    path: PathBuf,
    /// The socket file's identity, so that we never remove someone else's.
    id: (u64, u64),
    accept: tokio::task::AbortHandle,
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
    events: EventLog,
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

    let accept = tokio::spawn(accept_loop(listener, requests, answer_limit, events)).abort_handle();
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

async fn accept_loop(
    listener: UnixListener,
    requests: mpsc::Sender<Ask>,
    answer_limit: Duration,
    events: EventLog,
) {
    let answering = Arc::new(Semaphore::new(MAX_ANSWERING));
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: make room by closing the oldest silent connection; with
                // none, give the others time to close rather than spin on the error.
                let evicted = waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .evict_oldest();
                if !evicted {
                    tracing::warn!("control socket: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        // With every open connection being answered, this one waits its turn no more.
        let Some(guard) = OpenGuard::admit(&waiting, MAX_OPEN) else {
            continue;
        };
        let id = guard.id();
        let (requests, answering) = (requests.clone(), Arc::clone(&answering));
        let events = events.clone();
        let task = tokio::spawn(async move {
            let link = Link {
                requests: &requests,
                answer_limit,
                answering: &answering,
                events: &events,
            };
            connection(stream, link, &guard).await;
        });
        // The task has not run yet (one thread): it is registered before it can finish.
        waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle
            .insert(id, task.abort_handle());
    }
}

/// What a connection reaches: the runtime, and the event log.
struct Link<'a> {
    requests: &'a mpsc::Sender<Ask>,
    answer_limit: Duration,
    answering: &'a Semaphore,
    events: &'a EventLog,
}

/// One connection: one line in, one line out, closed (`events`: the event stream until
/// the client goes). Every step is bounded in time.
async fn connection(mut stream: UnixStream, link: Link<'_>, guard: &OpenGuard) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Response::Error {
            message: format!("no request within {} ms", READ_TIMEOUT.as_millis()),
        },
        Ok(Err(message)) => Response::Error { message },
        Ok(Ok(Request::Events)) => {
            guard.arrived();
            return stream_events(stream, link.events).await;
        }
        Ok(Ok(req)) => {
            guard.arrived();
            match link.answering.acquire().await {
                Ok(_slot) => ask(req, link.requests, link.answer_limit).await,
                Err(_) => Response::Error {
                    message: "tandem is shutting down".into(),
                },
            }
        }
    };
    let bytes = encode(&response);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// `tandem events`: the history, then each event as it happens, one JSON line each. A
/// watcher that falls behind by more than its queue gets a last line saying so; one that
/// does not take a line within the write timeout is simply closed. Either way the
/// supervisor never waits for it.
async fn stream_events(mut stream: UnixStream, log: &EventLog) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(mut watch) = log.watch() else {
        let refused = Response::Error {
            message: format!("{MAX_WATCHERS} watchers already; try again later"),
        };
        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&encode(&refused))).await;
        return;
    };
    let (mut from, mut to) = stream.split();
    for record in std::mem::take(&mut watch.history) {
        if !send_record(&mut to, &record).await {
            return;
        }
    }
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            got = watch.live.recv() => match got {
                Ok(record) => {
                    if !send_record(&mut to, &record).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!("tandem events: a watcher fell {missed} events behind; dropped it");
                    let note = Dropped {
                        dropped: format!("you fell {missed} events behind; tandem dropped this watch (run tandem events again)"),
                    };
                    let mut line = serde_json::to_vec(&note).unwrap_or_default();
                    line.push(b'\n');
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, to.write_all(&line)).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            // The client went (or sent something, which is ignored).
            n = from.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

/// One record as a line; false when the watcher is gone or did not take it in time.
async fn send_record(to: &mut tokio::net::unix::WriteHalf<'_>, record: &Record) -> bool {
    let Ok(mut line) = serde_json::to_vec(record) else {
        return true;
    };
    line.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, to.write_all(&line)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::warn!(
                "tandem events: a watcher took no events for {} ms; dropped it",
                WRITE_TIMEOUT.as_millis()
            );
            false
        }
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(512, stream.take(MAX_REQUEST as u64 + 1));
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    parse_request(&line)
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
