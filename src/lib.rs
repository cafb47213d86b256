//! tandem: PID 1 for an all-in-one container running an embedded PostgreSQL and an app.
//!
//! Layout, one concern a module:
//! - [`config`]: the environment (zero-config mode), validated into one [`config::Plan`].
//! - [`supervisor`]: the decisions. Pure code: events and `now` in, actions and deadlines out.
//! - [`runtime`]: the edges. Spawning, the reaper, signals, timers; feeds the supervisor.
//! - [`postgres`]: the embedded PostgreSQL: binaries, first-start initialisation, readiness.
//! - [`logs`]: child output prefixed per service, and tandem's own events.
//! - [`health`]: the probes: postgres, http, tcp, exec.
//! - [`control`]: the Unix-socket protocol behind `tandem healthcheck` and `tandem status`.

pub mod config;
pub mod control;
pub mod health;
pub mod logs;
pub mod postgres;
pub mod runtime;
pub mod supervisor;
