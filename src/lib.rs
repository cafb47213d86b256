//! tandem: PID 1 for an all-in-one container running an embedded PostgreSQL and an app.
//!
//! Layout, one concern a module, each using only those above it in this list:
//! - [`process`]: the ground floor. One child description, one spawn path through the
//!   single reaper, users and groups, how a process ended.
//! - [`supervisor`]: the decisions. Pure code: events and `now` in, actions and deadlines
//!   out; one transition table; the container's health verdict.
//! - [`logs`]: child output prefixed per service, and tandem's own events.
//! - [`health`]: the probes: postgres, http, tcp, exec.
//! - [`postgres`]: the embedded PostgreSQL: binaries, first start as steps, readiness.
//! - [`config`]: the environment (zero-config mode), validated into one [`config::Plan`].
//! - [`control`]: the control socket behind `tandem healthcheck`, `status` and `events`,
//!   the event log, and the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
//! - [`runtime`]: the event loop: signals, the reaper, timers; feeds the supervisor and
//!   carries out its actions.

mod config;
mod control;
mod health;
mod logs;
mod postgres;
mod process;
mod runtime;
mod supervisor;
#[cfg(test)]
mod testutil;

// What the binary uses; everything else is private to the crate, so the compiler finds
// what nothing uses.
pub mod api {
    pub use crate::config::{
        client_socket, direct_probes, load, parse_duration, reads_variable, socket_path,
    };
    pub use crate::control::{
        request, watch_events, HealthReport, Request, Response, ServiceHealth,
    };
    pub use crate::health::Prober;
    pub use crate::logs::init as init_logs;
    pub use crate::process::Reaper;
    pub use crate::runtime::{block_signals, run, spawn_reaper_thread, spawn_signal_thread};
    pub use crate::supervisor::EXIT_START_FAILED;
}
