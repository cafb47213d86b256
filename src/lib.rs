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
//! - [`control`]: the control socket behind `tandem healthcheck` and `tandem status`.
//! - [`runtime`]: the event loop: signals, the reaper, timers; feeds the supervisor and
//!   carries out its actions.

pub mod config;
pub mod control;
pub mod health;
pub mod logs;
pub mod postgres;
pub mod process;
pub mod runtime;
pub mod supervisor;
