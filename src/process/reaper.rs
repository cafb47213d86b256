//! The one place that reaps, and the spawn path that registers every child with it.
//!
//! Every process tandem starts goes through [`Reaper::spawn`], which registers the child's
//! pid before anyone can reap it. The signal thread calls [`Reaper::reap`] on every SIGCHLD;
//! it drains `waitpid(-1)` and hands each status to whoever spawned that pid. Pids nobody
//! registered are orphans that were re-parented to us: they are reaped and forgotten.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::{ChildSpec, Exit};

/// A child that has been started and registered with the reaper.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Its output pipes, where the spec asked for them.
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    /// Fires once with the child's exit status, sent by the reaper.
    pub exit: oneshot::Receiver<Exit>,
}

/// Why a program could not be started, classified the way a shell reports it.
#[derive(Debug)]
pub struct SpawnError {
    pub program: PathBuf,
    pub error: io::Error,
}

impl SpawnError {
    /// 127 when the program is not there, 126 when it is there but cannot be run.
    pub fn exit_code(&self) -> i32 {
        match self.error.kind() {
            io::ErrorKind::NotFound => 127,
            _ => 126,
        }
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.error.kind() {
            io::ErrorKind::NotFound => "not found".to_string(),
            io::ErrorKind::PermissionDenied => "not executable (permission denied)".to_string(),
            io::ErrorKind::IsADirectory => "is a directory, not a program".to_string(),
            _ => self.error.to_string(),
        };
        write!(f, "cannot run {}: {what}", self.program.display())
    }
}

#[derive(Default)]
struct Table {
    waiters: HashMap<Pid, oneshot::Sender<Exit>>,
    orphans_reaped: u64,
}

/// The registry of our children and the reaping loop. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent (each
        // operation is a single insert or remove), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the child and registers it. The table lock is held across `spawn` so the
    /// reaper cannot collect the child (or std's own failed-exec child) before it is
    /// registered. The std handle is dropped unwaited: the reaper owns the exit status.
    pub fn spawn(&self, spec: ChildSpec) -> Result<Spawned, SpawnError> {
        let program = spec.program.clone();
        let mut cmd = spec.command();
        let mut table = self.lock();
        let mut child = cmd.spawn().map_err(|error| SpawnError { program, error })?;
        let pid = Pid::from_raw(child.id() as i32);
        let (tx, rx) = oneshot::channel();
        table.waiters.insert(pid, tx);
        drop(table);
        Ok(Spawned {
            pid,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            exit: rx,
        })
    }

    /// Collects every child that has exited, without blocking. Called on SIGCHLD.
    pub fn reap(&self) {
        let mut table = self.lock();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => table.deliver(pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    table.deliver(pid, Exit::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                // ECHILD: nothing left to wait for.
                Err(_) => break,
            }
        }
    }

    /// How many processes we reaped that we never started (re-parented orphans).
    pub fn orphans_reaped(&self) -> u64 {
        self.lock().orphans_reaped
    }
}

impl Table {
    fn deliver(&mut self, pid: Pid, exit: Exit) {
        match self.waiters.remove(&pid) {
            // The receiver may be gone (nobody cares any more); that is fine.
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                self.orphans_reaped += 1;
                tracing::debug!(%pid, ?exit, "reaped an orphan");
            }
        }
    }
}

/// Sends `sig` to the process group led by `pid` (every child is a group leader), falling
/// back to the process itself when the group is already gone.
pub fn signal_group(pid: Pid, sig: Signal) -> nix::Result<()> {
    match kill(Pid::from_raw(-pid.as_raw()), sig) {
        Err(Errno::ESRCH) => kill(pid, sig),
        other => other,
    }
}

/// Finds `program` the way `execvp` would, so a missing or non-executable command is
/// reported with its name before anything starts. Paths with a slash are taken as they are.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let check = |p: &Path| -> Result<(), io::Error> {
        let meta = std::fs::metadata(p)?;
        if meta.is_dir() {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        Ok(())
    };
    let as_path = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return check(as_path)
            .map(|_| as_path.to_path_buf())
            .map_err(|error| SpawnError {
                program: as_path.to_path_buf(),
                error,
            });
    }
    let mut denied = None;
    let path_var = path_var
        .map(|p| p.to_os_string())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(program);
        match check(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::IsADirectory
                ) =>
            {
                denied = Some((candidate, e.kind()))
            }
            Err(_) => {}
        }
    }
    Err(match denied {
        Some((p, kind)) => SpawnError {
            program: p,
            error: io::Error::from(kind),
        },
        None => SpawnError {
            program: as_path.to_path_buf(),
            error: io::Error::from(io::ErrorKind::NotFound),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_finds_programs_on_path_and_classifies_failures() {
        let sh = resolve_program(OsStr::new("sh"), None).expect("sh is on the default PATH");
        assert!(sh.is_absolute());
        let missing = resolve_program(OsStr::new("no-such-program-tandem"), None).unwrap_err();
        assert_eq!(missing.exit_code(), 127);
        let file = std::env::temp_dir().join(format!("tandem-not-exec-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let not_exec = resolve_program(file.as_os_str(), None).unwrap_err();
        let _ = std::fs::remove_file(&file);
        assert_eq!(not_exec.exit_code(), 126);
    }
}
