//! How the set-up of PostgreSQL tells the supervisor what it is doing: every process it
//! starts is a [`Step`] the supervisor knows (with its deadline and how to stop it), and a
//! stop the supervisor decided on reaches the set-up as a cancel, so it begins nothing new.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};

use crate::logs;
use crate::process::{ChildSpec, Exit, Reaper};
use crate::supervisor::{Event, Id, Step, StepKind};

/// Why the set-up did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// The directory's contents are at fault (initdb, an init script, the temporary server):
    /// recorded, so the next start refuses the directory rather than serving it.
    Failed(String),
    /// A stop was asked for (or a step was killed from outside): the directory was never
    /// served, so the next start may start over.
    Interrupted(String),
    /// Anything else (a directory that cannot be created); nothing is recorded.
    Other(String),
}

impl SetupError {
    pub fn message(&self) -> &str {
        match self {
            SetupError::Failed(m) | SetupError::Interrupted(m) | SetupError::Other(m) => m,
        }
    }
}

impl From<String> for SetupError {
    fn from(m: String) -> Self {
        SetupError::Other(m)
    }
}

/// Where the set-up reports to.
enum Sink {
    /// The supervisor's event channel.
    Supervisor(mpsc::UnboundedSender<Event>),
    /// No supervisor (unit tests of the set-up): a server step is stopped here, with a fast
    /// shutdown, when the set-up is done with it.
    #[cfg(test)]
    Alone(std::sync::Mutex<Option<Pid>>),
}

/// The set-up's handle on its service: report steps, learn of a cancel.
pub struct Steps {
    id: Id,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    reaper: Reaper,
}

/// A step's process, started and reported.
pub struct RunningStep {
    pub pid: Pid,
    pub stdout: Option<std::process::ChildStdout>,
    name: String,
    exit: oneshot::Receiver<Exit>,
    output: logs::Drained,
}

impl RunningStep {
    /// Resolves when the step's process exits (at most once: then hand the exit to
    /// [`Steps::ended`]).
    pub async fn exited(&mut self) -> Exit {
        match (&mut self.exit).await {
            Ok(e) => e,
            // The reaper is gone only when tandem is exiting; call it killed.
            Err(_) => Exit::Signal(nix::sys::signal::Signal::SIGKILL as i32),
        }
    }
}

impl Steps {
    pub fn new(
        id: Id,
        tx: mpsc::UnboundedSender<Event>,
        cancel: Arc<AtomicBool>,
        reaper: Reaper,
    ) -> Steps {
        Steps {
            id,
            sink: Sink::Supervisor(tx),
            cancel,
            reaper,
        }
    }

    #[cfg(test)]
    pub fn alone(reaper: Reaper) -> Steps {
        Steps {
            id: 0,
            sink: Sink::Alone(std::sync::Mutex::new(None)),
            cancel: Arc::new(AtomicBool::new(false)),
            reaper,
        }
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(Interrupted)` once a stop was asked for: the set-up must not go on.
    pub fn check(&self) -> Result<(), SetupError> {
        if self.cancelled() {
            Err(SetupError::Interrupted(
                "stopped before the first start was complete".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn report(&self, event: Event) {
        match &self.sink {
            Sink::Supervisor(tx) => {
                let _ = tx.send(event);
            }
            #[cfg(test)]
            Sink::Alone(server) => {
                let mut server = server.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    Event::StepStarted { step, pid, .. } if step.kind == StepKind::Server => {
                        *server = Some(pid)
                    }
                    Event::StepStopWanted { .. } => {
                        if let Some(pid) = *server {
                            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Starts `spec` as a step: its stderr (and, with `log_stdout`, its stdout) relayed as
    /// `postgres | ...`; the supervisor told its pid, kind and deadline.
    pub fn spawn(
        &self,
        spec: ChildSpec,
        name: &str,
        kind: StepKind,
        timeout: Option<Duration>,
        log_stdout: bool,
    ) -> Result<RunningStep, SetupError> {
        self.check()?;
        let mut spawned = self
            .reaper
            .spawn(spec)
            .map_err(|e| SetupError::Other(format!("{name}: {e}")))?;
        let mut ends = logs::Drained::default();
        if let Some(err) = spawned.stderr.take() {
            ends.add(logs::pump(super::SERVICE, logs::Stream::Stderr, err.into()));
        }
        let stdout = if log_stdout {
            if let Some(out) = spawned.stdout.take() {
                ends.add(logs::pump(super::SERVICE, logs::Stream::Stdout, out.into()));
            }
            None
        } else {
            spawned.stdout.take()
        };
        self.report(Event::StepStarted {
            id: self.id,
            step: Step {
                name: name.to_string(),
                kind,
                timeout,
            },
            pid: spawned.pid,
        });
        Ok(RunningStep {
            pid: spawned.pid,
            stdout,
            name: name.to_string(),
            exit: spawned.exit,
            output: ends,
        })
    }

    /// Waits for a step to end and reports it. A step killed by a signal means a stop (or
    /// someone from outside): the set-up is interrupted, not failed.
    pub async fn wait(&self, mut step: RunningStep) -> Result<Exit, SetupError> {
        let exit = step.exited().await;
        self.ended(step, exit).await
    }

    /// Reports a step whose exit was already awaited with [`RunningStep::exited`].
    pub async fn ended(&self, step: RunningStep, exit: Exit) -> Result<Exit, SetupError> {
        step.output.wait(logs::LAST_WORDS).await;
        self.report(Event::StepExited {
            id: self.id,
            pid: step.pid,
            exit,
        });
        match exit {
            Exit::Signal(_) => Err(SetupError::Interrupted(format!(
                "{} {} during the first start",
                step.name,
                exit.ended()
            ))),
            _ => Ok(exit),
        }
    }

    /// The server step is ready; its start deadline is met.
    pub fn server_ready(&self) {
        self.report(Event::StepReady { id: self.id });
    }

    /// The set-up is done with its server step: the supervisor stops it (fast shutdown).
    pub fn stop_server(&self) {
        self.report(Event::StepStopWanted { id: self.id });
    }
}
