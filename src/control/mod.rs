//! The control socket: how `tandem healthcheck` and `tandem status` talk to the running
//! tandem.
//!
//! The protocol ([`wire`]) is one JSON line each way over a Unix socket (mode 0600): the
//! client sends a [`Request`] (`"health"` or `"status"`), the server answers one [`Response`]
//! and closes. The server ([`serve`]) only parses and relays: each request goes to the
//! runtime through a channel with a oneshot for the answer, so the supervisor decides what
//! "health" means and a client, however slow or hostile, only ever holds its own task. The
//! client ([`request`]) is plain blocking std code, so `tandem healthcheck` needs no async
//! runtime to start. [`render`] turns answers into lines and tables for people.

mod client;
pub mod events;
pub mod http;
pub mod metrics;
pub mod render;
mod server;
pub mod wire;

pub use crate::supervisor::verdict::{HealthReport, ServiceHealth};
pub use client::{request, watch_events};
pub use events::EventLog;
pub use server::{serve, ServerGuard};
pub use wire::{Ask, Request, Response, StatusReport, StatusRow};

#[cfg(test)]
mod tests;
