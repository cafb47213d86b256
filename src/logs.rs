//! Output: child lines re-emitted with their service's name, and tandem's own events
//! through `tracing`, both in the same format (plain, coloured on a TTY, or JSON lines).

use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// How lines are written, chosen once at start from `TANDEM_LOG_FORMAT` and the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Colour,
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// The width service names are right-aligned to, so every line's `|` is in one column.
static WIDTH: AtomicUsize = AtomicUsize::new(6);

/// Aligns the prefixes of every service in `names` (and tandem's own).
pub fn align(names: &[&str]) {
    let widest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    WIDTH.store(widest.max("tandem".len()), Ordering::Relaxed);
}

/// `source` right-aligned: `     app | `, `postgres | `, `  tandem | `.
fn prefix(source: &str) -> String {
    let width = WIDTH.load(Ordering::Relaxed);
    format!("{source:>width$} |")
}

/// Now as RFC 3339 UTC with milliseconds, for JSON lines.
fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

/// A time as RFC 3339 UTC with milliseconds: `2026-12-01T08:27:04.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let now = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// The copying tasks still running, so the last lines can be flushed before exit.
static PUMPS: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

fn format() -> Format {
    *FORMAT.get_or_init(|| Format::Plain)
}

/// Which of tandem's streams a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Sets the output format and installs the tracing subscriber for tandem's own events.
/// `TANDEM_LOG` sets the level (default `info`).
pub fn init(json: bool) {
    // https://no-color.org: set and not empty means no colour, even on a terminal.
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let fmt = if json {
        Format::Json
    } else if std::io::stderr().is_terminal() && !no_colour {
        Format::Colour
    } else {
        Format::Plain
    };
    let _ = FORMAT.set(fmt);
    let level = std::env::var("TANDEM_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(level)
            .event_format(OwnEvents)
            .with_writer(std::io::stderr)
            .finish(),
    );
}

/// A stable colour per service name, so interleaved output stays readable.
fn colour_of(name: &str) -> &'static str {
    const PALETTE: [&str; 5] = ["36", "35", "33", "32", "34"];
    if name == "tandem" {
        return "1";
    }
    let h = name
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    PALETTE[h % PALETTE.len()]
}

/// Writes one line from `source` in the current format. Lines are written whole, with one
/// `write` each, so lines from different services never interleave mid-line.
pub fn emit(source: &str, stream: Stream, line: &str) {
    let text = match format() {
        Format::Plain => format!("{} {line}\n", prefix(source)),
        Format::Colour => format!(
            "\x1b[{}m{}\x1b[0m {line}\n",
            colour_of(source),
            prefix(source)
        ),
        Format::Json => {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            let obj = serde_json::json!({
                "ts": timestamp(),
                "service": source,
                "stream": stream,
                "line": line,
            });
            format!("{obj}\n")
        }
    };
    // A closed stdout (the log reader went away) must not take PID 1 down with it.
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
        Stream::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
    };
}

/// Copies a child's pipe to our output line by line, prefixed with `source`, until EOF.
/// Bytes that are not UTF-8 are replaced rather than dropped.
/// The returned receiver resolves (with an error: its sender is dropped) at EOF.
pub fn pump(source: &str, stream: Stream, fd: OwnedFd) -> Option<oneshot::Receiver<()>> {
    let source = source.to_string();
    let rx = match pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!("cannot read the output of {source}: {e}");
            return None;
        }
    };
    let (eof_tx, eof_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let _eof = eof_tx;
        let mut reader = BufReader::new(rx);
        let mut line = Line::default();
        loop {
            let chunk = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            let n = chunk.len();
            for text in line.feed(chunk) {
                emit(&source, stream, &text);
            }
            reader.consume(n);
        }
        if let Some(text) = line.finish() {
            emit(&source, stream, &text);
        }
    });
    let mut pumps = PUMPS.lock().unwrap_or_else(|p| p.into_inner());
    pumps.retain(|h| !h.is_finished());
    pumps.push(handle);
    Some(eof_rx)
}

/// How long a child's last output may still take to arrive after its exit before the exit
/// is reported anyway (a grandchild holding the pipe open).
pub const LAST_WORDS: Duration = Duration::from_millis(50);

/// The longest line relayed whole; the rest of a longer one is dropped (not held in
/// memory) and the line ends with a marker saying how much was cut.
pub const MAX_LINE: usize = 16 * 1024;

/// One line being assembled from a child's output. A carriage return starts the line over
/// (a progress bar redrawing itself), so what is relayed is its final state.
#[derive(Default)]
struct Line {
    buf: Vec<u8>,
    /// Bytes dropped past [`MAX_LINE`].
    cut: usize,
    /// A `\r` was the last byte: a `\n` next ends the line (CRLF), anything else redraws.
    after_cr: bool,
}

impl Line {
    /// Takes `chunk`, returns the lines it completed.
    fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in chunk {
            match b {
                b'\n' => {
                    done.push(self.take());
                    self.after_cr = false;
                }
                b'\r' => self.after_cr = true,
                _ => {
                    if self.after_cr {
                        // Redrawn: only what comes after the carriage return counts.
                        self.buf.clear();
                        self.cut = 0;
                        self.after_cr = false;
                    }
                    if self.buf.len() < MAX_LINE {
                        self.buf.push(b);
                    } else {
                        self.cut += 1;
                    }
                }
            }
        }
        done
    }

    fn take(&mut self) -> String {
        let mut text = String::from_utf8_lossy(&self.buf).into_owned();
        if self.cut > 0 {
            text.push_str(&format!(" [... {} more bytes cut]", self.cut));
        }
        self.buf.clear();
        self.cut = 0;
        text
    }

    /// What is left at end of file, if anything.
    fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty() || self.cut > 0).then(|| self.take())
    }
}

/// The end of one child's output, to be awaited before its exit is reported, so that its
/// last lines (PostgreSQL's "database system is shut down") come before tandem's line
/// about its exit.
#[derive(Default)]
pub struct Drained(Vec<oneshot::Receiver<()>>);

impl Drained {
    /// One more pipe to wait for (none when its pump could not start).
    pub fn add(&mut self, eof: Option<oneshot::Receiver<()>>) {
        self.0.extend(eof);
    }

    /// Waits for EOF on every pipe, at most `limit`: a grandchild may keep a pipe open.
    pub async fn wait(self, limit: Duration) {
        let all = async {
            for eof in self.0 {
                let _ = eof.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}

/// Waits until every child's output has been copied out (its pipes closed), at most
/// `limit`: a grandchild that escaped its group may hold a pipe open forever.
pub async fn drain(limit: Duration) {
    let pumps = std::mem::take(&mut *PUMPS.lock().unwrap_or_else(|p| p.into_inner()));
    let all = async {
        for h in pumps {
            let _ = h.await;
        }
    };
    let _ = tokio::time::timeout(limit, all).await;
}

/// Attaches pumps to whatever stdout/stderr pipes `spawned` has.
pub fn pump_spawned(source: &str, spawned: &mut crate::process::Spawned) -> Drained {
    let mut ends = Drained::default();
    if let Some(out) = spawned.stdout.take() {
        ends.add(pump(source, Stream::Stdout, OwnedFd::from(out)));
    }
    if let Some(err) = spawned.stderr.take() {
        ends.add(pump(source, Stream::Stderr, OwnedFd::from(err)));
    }
    ends
}

/// tandem's own events, formatted like a child's lines under the name `tandem`.
struct OwnEvents;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for OwnEvents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut visitor = Collect::default();
        event.record(&mut visitor);
        let level = *event.metadata().level();
        let mut line = String::new();
        if level != tracing::Level::INFO {
            line.push_str(&level.to_string().to_lowercase());
            line.push_str(": ");
        }
        line.push_str(&visitor.message);
        for (k, v) in &visitor.fields {
            line.push_str(&format!(" {k}={v}"));
        }
        match format() {
            Format::Plain => writeln!(writer, "{} {line}", prefix("tandem")),
            Format::Colour => writeln!(writer, "\x1b[1m{}\x1b[0m {line}", prefix("tandem")),
            Format::Json => {
                let mut obj = serde_json::json!({
                    "ts": timestamp(),
                    "service": "tandem",
                    "stream": "stderr",
                    "level": level.to_string().to_lowercase(),
                    "line": visitor.message,
                });
                for (k, v) in visitor.fields {
                    obj[k] = serde_json::Value::String(v);
                }
                writeln!(writer, "{obj}")
            }
        }
    }
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(String, String)>,
}

impl tracing::field::Visit for Collect {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut line = Line::default();
        let mut out: Vec<String> = chunks.iter().flat_map(|c| line.feed(c)).collect();
        out.extend(line.finish());
        out
    }

    #[test]
    fn a_progress_bar_is_shown_as_its_final_state_and_crlf_is_one_line_end() {
        assert_eq!(
            lines(&[
                b"Loading  10%\rLoading  50%\r",
                b"Loading 100%\n",
                b"next\r\n"
            ]),
            ["Loading 100%", "next"]
        );
        assert_eq!(lines(&[b"a\n\nb"]), ["a", "", "b"]);
        assert_eq!(lines(&[b"\r\rdone\r"]), ["done"]);
    }

    #[test]
    fn a_very_long_line_is_cut_with_a_marker_and_not_held() {
        let long = vec![b'x'; MAX_LINE + 5000];
        let mut line = Line::default();
        assert!(line.feed(&long).is_empty());
        assert_eq!(line.buf.len(), MAX_LINE, "held no more than the limit");
        let out = line.feed(b"\nshort\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE + " [... 5000 more bytes cut]".len());
        assert!(out[0].ends_with(" [... 5000 more bytes cut]"));
        assert_eq!(out[1], "short");
    }

    #[test]
    fn prefixes_align_on_the_widest_name_and_timestamps_are_rfc3339() {
        align(&["postgres", "app", "migrate"]);
        assert_eq!(prefix("app"), "     app |");
        assert_eq!(prefix("postgres"), "postgres |");
        assert_eq!(prefix("tandem"), "  tandem |");
        align(&[]);
        assert_eq!(prefix("tandem"), "tandem |");
        let ts = timestamp();
        assert_eq!(ts.len(), "2026-12-01T08:27:04.123Z".len(), "{ts}");
        assert!(
            ts.starts_with("20") && ts.ends_with('Z') && &ts[10..11] == "T",
            "{ts}"
        );
        let now_year = 1970
            + SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 31_556_952;
        assert_eq!(ts[..4].parse::<u64>().unwrap(), now_year, "{ts}");
    }
}
