//! The control socket's client: blocking std code, every wait bounded.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::events::{Dropped, Record};
use super::wire::{Request, Response, MAX_RESPONSE};

fn connect(path: &Path) -> Result<UnixStream, String> {
    let shown = path.display();
    UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("tandem is not running (no socket at {shown})"),
        io::ErrorKind::ConnectionRefused => {
            format!("tandem is not running (nothing listening on {shown})")
        }
        io::ErrorKind::PermissionDenied => format!("permission denied on {shown}"),
        _ => format!("cannot connect to tandem on {shown}: {e}"),
    })
}

/// `tandem events`: hands each event (its JSON line and what it says) to `each` as it
/// comes, from the history on, until tandem exits (Ok) or drops this watcher, refuses it,
/// or `each` fails (Err, one line).
pub fn watch_events(
    path: &Path,
    mut each: impl FnMut(&str, &Record) -> io::Result<()>,
) -> Result<(), String> {
    let shown = path.display();
    let mut stream = connect(path)?;
    let mut line = serde_json::to_vec(&Request::Events)
        .map_err(|e| format!("cannot encode the request: {e}"))?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .and_then(|()| stream.write_all(&line))
        .map_err(|e| format!("lost the connection to tandem on {shown}: {e}"))?;
    let mut reader = io::BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match io::BufRead::read_line(&mut (&mut reader).take(MAX_RESPONSE as u64), &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("lost the connection to tandem on {shown}: {e}")),
        }
        let text = line.trim_end();
        if let Ok(record) = serde_json::from_str::<Record>(text) {
            if record.fact.contains_key("event") {
                each(text, &record).map_err(|e| format!("cannot write the events: {e}"))?;
                continue;
            }
        }
        if let Ok(d) = serde_json::from_str::<Dropped>(text) {
            return Err(d.dropped);
        }
        return Err(match serde_json::from_str::<Response>(text) {
            Ok(Response::Error { message }) => message,
            _ => format!("tandem on {shown} sent a line we cannot read: {text}"),
        });
    }
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

    let mut stream = connect(path)?;

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
