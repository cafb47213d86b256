//! Knowing the moment the server accepts connections: watch `postmaster.pid` the way
//! `pg_ctl -w` reads it, then confirm with one protocol round trip.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_postgres::error::SqlState;

use super::Settings;

/// Re-read `postmaster.pid` this often even without an inotify event, in case one is missed
/// (a data directory on a filesystem without inotify support, say). Never on the fast path.
const FALLBACK_TICK: Duration = Duration::from_millis(100);
/// Backoff between round trips the server answers with "cannot connect now": it said it is
/// ready, so the first retries come quickly; the cap keeps a server stuck in recovery from
/// being hammered.
const RETRY_FIRST: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(50);
/// One round trip over a local socket; a server that does not answer within this is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns when the server with `pid` is ready: `postmaster.pid` line 1 is `pid` and line 8
/// reads `ready` or `standby`, then one protocol round trip gets an answer other than
/// "cannot connect now" (an authentication error or a missing database still means up).
/// Cancel-safe: it holds nothing but local state, so the caller may drop it at any await.
pub async fn wait_ready(settings: &Settings, pid: Pid) -> Result<(), String> {
    wait_ready_in(&settings.data_dir, settings, pid).await
}

/// [`wait_ready`] for a server whose data directory is `data_dir` (the first start's).
pub async fn wait_ready_in(data_dir: &Path, settings: &Settings, pid: Pid) -> Result<(), String> {
    wait_pid_file(data_dir, pid).await?;
    let mut delay = RETRY_FIRST;
    while !round_trip(settings).await {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
    Ok(())
}

/// Waits until `postmaster.pid` in `data_dir` says `pid` is ready.
pub(crate) async fn wait_pid_file(data_dir: &Path, pid: Pid) -> Result<(), String> {
    let pid_file = data_dir.join("postmaster.pid");
    // Watch before the first read, so a change between the two is not lost.
    let watch = Watch::new(data_dir)?;
    let Some(fd) = &watch.fd else {
        return Err(format!("cannot watch {}", data_dir.display()));
    };
    let mut tick = tokio::time::interval(FALLBACK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if pid_file_ready(&pid_file, pid) {
            return Ok(());
        }
        tokio::select! {
            r = fd.readable() => {
                let mut guard = r.map_err(|e| format!("cannot watch {}: {e}", data_dir.display()))?;
                // Drain: the events only say "look again".
                loop {
                    match guard.get_inner().0.read_events() {
                        Ok(_) => continue,
                        Err(Errno::EAGAIN) => break,
                        Err(e) => return Err(format!("cannot watch {}: {e}", data_dir.display())),
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {}
        }
    }
}

/// Whether the lock file names `pid` (line 1) with status `ready` or `standby` (line 8).
fn pid_file_ready(pid_file: &Path, pid: Pid) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    lines.first().and_then(|l| l.trim().parse::<i32>().ok()) == Some(pid.as_raw())
        && matches!(lines.get(7).map(|l| l.trim()), Some("ready" | "standby"))
}

/// An inotify watch on a directory, readable through tokio.
struct Watch {
    /// Always `Some` until dropped.
    fd: Option<AsyncFd<InotifyFd>>,
}

impl Drop for Watch {
    /// Closing an inotify descriptor waits for an RCU grace period in the kernel (10-20 ms
    /// measured here), right when PostgreSQL has become ready: close it on a thread of its
    /// own so the readiness round trip, and the app's start, do not wait for it.
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let inotify = fd.into_inner();
            // If no thread can be had, the closure (and the descriptor) is dropped here.
            let _ = std::thread::Builder::new()
                .name("inotify-close".into())
                .stack_size(64 * 1024)
                .spawn(move || drop(inotify));
        }
    }
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Watch {
    fn new(dir: &Path) -> Result<Watch, String> {
        let what = || format!("cannot watch {} for postmaster.pid", dir.display());
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("{}: inotify: {e}", what()))?;
        // postmaster.pid is created, then rewritten in place (status line) and closed.
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO;
        inotify
            .add_watch(dir, mask)
            .map_err(|e| format!("{}: {e}", what()))?;
        // SAFETY: `Inotify` owns its descriptor and never replaces or closes it while the
        // `AsyncFd` holds it, so the registered fd stays the same open file throughout.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            .map_err(|e| format!("{}: {}", what(), e))?;
        Ok(Watch { fd: Some(fd) })
    }
}

/// One protocol round trip over the Unix socket, with `pg_isready` semantics: true when the
/// server answered anything but SQLSTATE 57P03; false when it said "cannot connect now" or
/// could not be reached (refused, no socket yet, timed out).
async fn round_trip(settings: &Settings) -> bool {
    match connect(settings, &settings.database, CONNECT_TIMEOUT).await {
        Ok(()) => true,
        Err(e) => match e.code() {
            Some(code) => *code != SqlState::CANNOT_CONNECT_NOW,
            None => false,
        },
    }
}

/// Connects over the Unix socket to `dbname`; the goodbye (Terminate) is sent in the
/// background so the caller does not wait for the backend to exit.
pub(crate) async fn connect(
    settings: &Settings,
    dbname: &str,
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = config(settings, dbname, timeout)
        .connect(tokio_postgres::NoTls)
        .await?;
    // Dropping the client makes the connection send Terminate and finish on its own.
    drop(client);
    tokio::spawn(connection);
    Ok(())
}

/// A client configuration for the Unix socket as the superuser.
pub(crate) fn config(
    settings: &Settings,
    dbname: &str,
    timeout: Duration,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&settings.socket_dir)
        .port(settings.port)
        .user(&settings.user)
        .dbname(dbname)
        .application_name("tandem")
        .connect_timeout(timeout);
    if let Some(pw) = &settings.password {
        config.password(pw);
    }
    config
}
