//! What travels over the control socket: one JSON line each way.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use crate::supervisor::verdict::HealthReport;

/// A request is one word; anything longer than this is not a request.
pub const MAX_REQUEST: usize = 4096;
/// An answer lists every service; this only guards the client against a runaway peer.
pub const MAX_RESPONSE: usize = 1 << 20;
/// How long a client may take to send its line, and to take our answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a client asks for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Probe every service now and report.
    Health,
    /// The process table: states, pids, uptimes, restarts, last probes, timelines.
    Status,
    /// The event history, then every event live, one JSON line each, until the client
    /// goes (answered by the socket server itself from the event log).
    Events,
    /// The health verdict from what the supervisor knows, without probing (`/readyz`).
    Ready,
    /// Whether the loop turns and no required service has failed for good (`/healthz`).
    Live,
    /// The Prometheus exposition (`/metrics`).
    Metrics,
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
    /// Where the start's time went, once everything has been healthy
    /// (`healthy after 1 642 ms: postgres init 1 104, ready 212, app healthy 318`).
    #[serde(default)]
    pub start_timeline: Option<String>,
    /// The stop so far, once one has begun.
    #[serde(default)]
    pub stop_timeline: Option<String>,
}

/// What the server sends back: one JSON object tagged by `type`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Response {
    Health(HealthReport),
    Status(StatusReport),
    Live { live: bool, detail: String },
    Metrics { text: String },
    Error { message: String },
}

/// A request on its way to the runtime, with where to send the answer.
pub type Ask = (Request, oneshot::Sender<Response>);

/// A request line: a JSON string (`"health"`, `"status"`, `"events"`, `"ready"`, `"live"`,
/// `"metrics"`), then a newline (or EOF).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line.trim_ascii_end()).map_err(|e| {
        format!("bad request ({e}); send \"health\", \"status\" or \"events\" as one JSON line")
    })
}

/// A response as one JSON line.
pub fn encode(response: &Response) -> Vec<u8> {
    // These types serialise without fail (strings, numbers, no maps with non-string keys);
    // should that ever change, the client still gets a valid line.
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","message":"cannot encode the answer: {e}"}}"#).into_bytes()
    });
    bytes.push(b'\n');
    bytes
}
