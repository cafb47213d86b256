//! Spawning children and the one place that reaps them.
//!
//! Every process tandem starts (services, initdb, psql, exec probes) goes through
//! [`Reaper::spawn`], which registers the child's pid before anyone can reap it. The
//! signal thread calls [`Reaper::reap`] on every SIGCHLD; it drains `waitpid(-1)` and hands
//! each status to whoever spawned that pid. Pids nobody registered are orphans that were
//! re-parented to us: they are reaped and forgotten.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::sync::oneshot;

use crate::supervisor::Exit;

/// Who a child runs as: resolved before `fork` so the child only makes syscalls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, from the group database (what `initgroups` would set).
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

impl Identity {
    /// Looks a user up by name or numeric uid: in /etc/passwd and /etc/group first (a
    /// container's user database), then through NSS. Reading the files ourselves keeps
    /// glibc from loading NSS modules (libnss_systemd and its libraries: a third of a MiB
    /// of resident memory for the life of PID 1) when the files answer.
    pub fn lookup(user: &str) -> Result<Identity, String> {
        if let Some(found) = lookup_in_files(user, "/etc/passwd", "/etc/group") {
            return Ok(found);
        }
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?;
        let Some(u) = found else {
            return Err(format!("user {user:?} does not exist"));
        };
        let cname = CString::new(u.name.clone()).map_err(|_| format!("bad user name {user:?}"))?;
        let groups = nix::unistd::getgrouplist(&cname, u.gid)
            .map_err(|e| format!("cannot list the groups of {user:?}: {e}"))?;
        Ok(Identity {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
            groups,
            home: u.dir,
        })
    }

    /// Whether switching to this identity is a change from who we are.
    pub fn is_current(&self) -> bool {
        Uid::effective() == self.uid
    }
}

/// `user` (a name or a uid) from passwd/group files, with its supplementary groups: the
/// groups that list it as a member, plus its primary group. `None` when it is not there or
/// the files cannot be read.
fn lookup_in_files(user: &str, passwd: &str, group: &str) -> Option<Identity> {
    let passwd = std::fs::read_to_string(passwd).ok()?;
    let by_uid = user.parse::<u32>().ok();
    let (name, uid, gid, home) = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse::<u32>().ok()?;
        let hit = match by_uid {
            Some(want) => uid == want,
            None => f[0] == user,
        };
        hit.then(|| {
            (
                f[0].to_string(),
                uid,
                f[3].parse::<u32>().ok(),
                f[5].to_string(),
            )
        })
    })?;
    let gid = gid?;
    let groups_text = std::fs::read_to_string(group).ok()?;
    let mut groups = vec![Gid::from_raw(gid)];
    for line in groups_text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(g) = f[2].parse::<u32>() else { continue };
        if f[3].split(',').any(|m| m == name) && !groups.contains(&Gid::from_raw(g)) {
            groups.push(Gid::from_raw(g));
        }
    }
    Some(Identity {
        name,
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups,
        home: PathBuf::from(home),
    })
}

/// Options that apply in the child between `fork` and `exec`.
#[derive(Debug, Default, Clone)]
pub struct ChildSetup {
    /// Run as this user (only when tandem is root; otherwise it must be tandem's own user).
    pub identity: Option<Identity>,
    /// New session and process group, so a whole service can be signalled at once.
    pub new_session: bool,
}

/// Arranges `cmd` to start with a clean slate: an empty signal mask (tandem blocks the
/// signals it handles, and masks are inherited across `exec`), SIGPIPE back to default
/// (Rust ignores it, and ignored dispositions are inherited too), its own session, and the
/// configured user and groups. tandem installs no handlers, so every other disposition is
/// already the default.
pub fn prepare(cmd: &mut Command, setup: &ChildSetup) {
    let new_session = setup.new_session;
    let ident = setup
        .identity
        .clone()
        .filter(|i| Uid::effective().is_root() && !i.is_current());
    if let Some(i) = &ident {
        cmd.env("HOME", &i.home)
            .env("USER", &i.name)
            .env("LOGNAME", &i.name);
    }
    // SAFETY: the closure only makes async-signal-safe syscalls (no allocation: the
    // group list was built before fork).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(io::Error::from)?;
            nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl)
                .map_err(io::Error::from)?;
            if new_session {
                nix::unistd::setsid().map_err(io::Error::from)?;
            }
            if let Some(i) = &ident {
                // Groups first: once the uid is dropped we may no longer change them.
                nix::unistd::setgroups(&i.groups).map_err(io::Error::from)?;
                nix::unistd::setgid(i.gid).map_err(io::Error::from)?;
                nix::unistd::setuid(i.uid).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// A child that has been started and registered with the reaper.
pub struct Spawned {
    pub pid: Pid,
    /// The std handle, only for its stdio pipes: it is never waited on.
    pub child: Child,
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

    /// Starts `cmd` and registers it. The table lock is held across `spawn` so the reaper
    /// cannot collect the child (or std's own failed-exec child) before it is registered.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Spawned, SpawnError> {
        let mut table = self.lock();
        let child = cmd.spawn().map_err(|error| SpawnError {
            program: PathBuf::from(cmd.get_program()),
            error,
        })?;
        let pid = Pid::from_raw(child.id() as i32);
        let (tx, rx) = oneshot::channel();
        table.waiters.insert(pid, tx);
        Ok(Spawned {
            pid,
            child,
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
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 {
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
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied = Some(candidate),
            Err(_) => {}
        }
    }
    Err(match denied {
        Some(p) => SpawnError {
            program: p,
            error: io::Error::from(io::ErrorKind::PermissionDenied),
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
    fn users_from_files_match_nss_with_their_groups() {
        let dir = std::env::temp_dir().join(format!("tandem-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (passwd, group) = (dir.join("passwd"), dir.join("group"));
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nhive:x:1000:1000::/home/hive:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            &group,
            "hive:x:1000:\nssl-cert:x:103:postgres,hive\nother:x:5:root\n",
        )
        .unwrap();
        let (p, g) = (passwd.to_str().unwrap(), group.to_str().unwrap());
        let hive = lookup_in_files("hive", p, g).unwrap();
        assert_eq!((hive.uid.as_raw(), hive.gid.as_raw()), (1000, 1000));
        assert_eq!(hive.groups, vec![Gid::from_raw(1000), Gid::from_raw(103)]);
        assert_eq!(hive.home, PathBuf::from("/home/hive"));
        assert_eq!(lookup_in_files("1000", p, g).unwrap().name, "hive");
        assert!(lookup_in_files("nobody-here", p, g).is_none());
        let _ = std::fs::remove_dir_all(&dir);
        // The real database: the same answer as NSS for postgres.
        let from_files = lookup_in_files("postgres", "/etc/passwd", "/etc/group").unwrap();
        let u = User::from_name("postgres").unwrap().unwrap();
        let mut nss = nix::unistd::getgrouplist(&CString::new("postgres").unwrap(), u.gid).unwrap();
        let mut ours = from_files.groups.clone();
        nss.sort_by_key(|g| g.as_raw());
        ours.sort_by_key(|g| g.as_raw());
        assert_eq!((from_files.uid, ours), (u.uid, nss));
    }

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
