//! Signals, taken synchronously: every signal tandem cares about is blocked in all threads
//! (the mask is set before any thread exists, and threads inherit it), and one thread takes
//! them with `sigwait`. No handler ever runs, so nothing async-signal-unsafe can happen,
//! and SIGTTIN/SIGTTOU/SIGTSTP, being blocked, can never stop PID 1.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::process::Reaper;
use crate::supervisor::Event;

/// The signals tandem takes over. Children get an empty mask back before `exec`.
const HANDLED: [Signal; 13] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGTSTP,
    Signal::SIGALRM,
    Signal::SIGCONT,
];

/// Blocks the handled signals in the calling thread. Call before any other thread starts.
pub fn block_signals() -> Result<SigSet, String> {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(set)
}

/// Starts the thread that waits for signals: SIGCHLD drains the reaper, every other
/// signal becomes an [`Event::Signal`].
pub fn spawn_signal_thread(
    set: SigSet,
    reaper: Reaper,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => reaper.reap(),
                Ok(sig) => {
                    if tx.send(Event::Signal(sig)).is_err() {
                        return;
                    }
                }
                Err(_) => continue,
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// Our direct children right now (orphans re-parented to us included), from /proc.
pub fn children_of_self() -> Vec<Pid> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    pids
}

/// For short-lived commands that spawn (`healthcheck --direct` with an exec probe): reap on
/// SIGCHLD and leave every other signal at its default, so the command still dies on
/// SIGTERM or Ctrl-C. Call before any other thread starts.
pub fn spawn_reaper_thread(reaper: Reaper) -> Result<(), String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            if set.wait().is_ok() {
                reaper.reap();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the reaper thread: {e}"))
}
