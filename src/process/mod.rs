//! The ground floor: one description of a child ([`ChildSpec`]), one way to start it
//! ([`Reaper::spawn`], through the single reaper), who it runs as ([`Identity`]) and how it
//! ended ([`Exit`]). Everything tandem starts goes through here: services, PostgreSQL and
//! each step of its first start, exec probes, `pg_config`. Nothing here knows about services.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Uid;

pub mod procfs;
mod reaper;
mod users;

pub use reaper::{resolve_program, signal_group, Reaper, Spawned};
pub use users::Identity;

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited on its own with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// The code a shell would report: the exit code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The end of a sentence about it: "exited with code 3", "was killed by SIGTERM".
    pub fn ended(self) -> String {
        match self {
            Exit::Code(_) => self.to_string(),
            Exit::Signal(_) => format!("was {self}"),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// The child's environment.
#[derive(Debug, Clone)]
pub enum Env {
    /// Exactly these variables, nothing inherited (services and exec probes: the plan
    /// decided their whole environment).
    Exactly(Vec<(OsString, OsString)>),
    /// tandem's own environment with these changes (`None` removes the variable).
    Inherit(Vec<(OsString, Option<OsString>)>),
}

/// Where the child's standard input comes from.
#[derive(Debug)]
pub enum Stdin {
    Null,
    /// An open descriptor (the read end of a pipe from another child).
    Fd(OwnedFd),
    /// These bytes, through a pipe the child makes itself after it has switched user, so
    /// the pipe is its own (it may reopen it as `/dev/stdin`) and the bytes never touch a
    /// file: how initdb gets the superuser's password.
    Secret(Vec<u8>),
}

/// Where the child's standard output or error goes.
#[derive(Debug)]
pub enum Output {
    Null,
    /// A pipe, handed back in [`Spawned`] for the logs.
    Pipe,
    /// An open descriptor (a pipe of the caller's).
    Fd(OwnedFd),
}

/// Everything about a child, decided before `fork`; argv stays a vector from the plan to
/// `execve`.
#[derive(Debug)]
pub struct ChildSpec {
    /// The executable: a path, or a name looked up in PATH.
    pub program: PathBuf,
    /// argv, argv[0] included.
    pub argv: Vec<OsString>,
    pub env: Env,
    /// Run as this user with its groups (only when tandem is root and it is someone else).
    pub identity: Option<Identity>,
    /// Working directory; `None` keeps tandem's.
    pub cwd: Option<PathBuf>,
    /// Its own session and process group (setsid), so the whole of it can be signalled.
    pub new_session: bool,
    pub stdin: Stdin,
    pub stdout: Output,
    pub stderr: Output,
}

impl ChildSpec {
    /// `program` with argv[0] = `program`, tandem's environment, no stdin, both outputs
    /// piped, its own session.
    pub fn new(program: impl Into<PathBuf>) -> ChildSpec {
        let program = program.into();
        ChildSpec {
            argv: vec![program.clone().into_os_string()],
            program,
            env: Env::Inherit(Vec::new()),
            identity: None,
            cwd: None,
            new_session: true,
            stdin: Stdin::Null,
            stdout: Output::Pipe,
            stderr: Output::Pipe,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> ChildSpec {
        self.argv.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> ChildSpec {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets (or, with [`Env::Inherit`], overrides) one variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ChildSpec {
        let (key, value) = (key.into(), value.into());
        match &mut self.env {
            Env::Exactly(vars) => {
                vars.retain(|(k, _)| *k != key);
                vars.push((key, value));
            }
            Env::Inherit(changes) => changes.push((key, Some(value))),
        }
        self
    }

    pub fn env_remove(mut self, key: impl Into<OsString>) -> ChildSpec {
        let key = key.into();
        match &mut self.env {
            Env::Exactly(vars) => vars.retain(|(k, _)| *k != key),
            Env::Inherit(changes) => changes.push((key, None)),
        }
        self
    }

    pub fn user(mut self, identity: Option<Identity>) -> ChildSpec {
        self.identity = identity;
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> ChildSpec {
        self.cwd = Some(dir.into());
        self
    }

    pub fn stdin(mut self, stdin: Stdin) -> ChildSpec {
        self.stdin = stdin;
        self
    }

    pub fn stdout(mut self, out: Output) -> ChildSpec {
        self.stdout = out;
        self
    }

    pub fn stderr(mut self, out: Output) -> ChildSpec {
        self.stderr = out;
        self
    }

    /// Stays in tandem's process group (a quick helper such as `pg_config`).
    pub fn same_session(mut self) -> ChildSpec {
        self.new_session = false;
        self
    }

    /// The std command that carries this out, with the child's set-up between `fork` and
    /// `exec`: an empty signal mask (tandem blocks the signals it handles, and masks are
    /// inherited across `exec`), SIGPIPE back to default (Rust ignores it, and ignored
    /// dispositions are inherited too), its own session, the user and groups, and the
    /// secret stdin. tandem installs no handlers, so every other disposition is already the
    /// default.
    pub(crate) fn command(self) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some((argv0, rest)) = self.argv.split_first() {
            cmd.arg0(argv0);
            cmd.args(rest);
        }
        let ident = self
            .identity
            .filter(|i| Uid::effective().is_root() && !i.is_current());
        match self.env {
            Env::Exactly(vars) => {
                cmd.env_clear().envs(vars);
            }
            Env::Inherit(changes) => {
                for (k, v) in changes {
                    match v {
                        Some(v) => cmd.env(k, v),
                        None => cmd.env_remove(k),
                    };
                }
            }
        }
        if let Some(i) = &ident {
            cmd.env("HOME", &i.home)
                .env("USER", &i.name)
                .env("LOGNAME", &i.name);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let secret = match self.stdin {
            Stdin::Null => {
                cmd.stdin(Stdio::null());
                None
            }
            Stdin::Fd(fd) => {
                cmd.stdin(Stdio::from(fd));
                None
            }
            Stdin::Secret(bytes) => {
                cmd.stdin(Stdio::null());
                Some(bytes)
            }
        };
        let stdio = |o: Output| match o {
            Output::Null => Stdio::null(),
            Output::Pipe => Stdio::piped(),
            Output::Fd(fd) => Stdio::from(fd),
        };
        cmd.stdout(stdio(self.stdout)).stderr(stdio(self.stderr));
        let new_session = self.new_session;
        // SAFETY: the closure only makes async-signal-safe syscalls and allocates nothing:
        // the group list and the secret were built before fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                )
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
                if let Some(bytes) = &secret {
                    // Made after the switch, so the pipe belongs to the child's user: it
                    // may open it again by name (`/dev/stdin`), as initdb's --pwfile does.
                    secret_stdin(bytes)?;
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Fills a fresh pipe with `bytes`, closes its write end and makes the read end stdin.
/// Runs in the child between fork and exec: syscalls only.
fn secret_stdin(bytes: &[u8]) -> io::Result<()> {
    let (r, w) = nix::unistd::pipe().map_err(io::Error::from)?;
    if bytes.len() >= PIPE_DEFAULT_CAPACITY {
        // The child writes before anyone reads: the pipe must hold it all.
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&w),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(bytes.len() as i32 + 1),
        )
        .map_err(io::Error::from)?;
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(&w, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    drop(w);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&r);
    if raw != 0 {
        nix::unistd::dup2(raw, 0).map_err(io::Error::from)?;
    } else {
        // Already stdin: keep it open past the end of this function.
        std::mem::forget(r);
    }
    Ok(())
}

/// Linux's default pipe buffer: a secret this long or longer needs a bigger one.
const PIPE_DEFAULT_CAPACITY: usize = 65536;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn a_secret_reaches_stdin_and_dev_stdin_without_a_file() {
        let reaper = crate::testutil::reaper();
        for size in [10usize, 100_000] {
            let secret: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            // Read it back by name, as initdb --pwfile=/dev/stdin does.
            let spec = ChildSpec::new("sh")
                .args(["-c", "cat /dev/stdin"])
                .stdin(Stdin::Secret(secret.clone()))
                .stderr(Output::Null);
            let mut spawned = reaper.spawn(spec).unwrap();
            let mut out = Vec::new();
            spawned
                .stdout
                .take()
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(spawned.exit.await.unwrap(), Exit::Code(0));
            assert_eq!(out.len(), secret.len());
            assert!(out == secret, "the secret came back changed");
        }
    }

    #[test]
    fn exits_read_like_a_shell() {
        assert_eq!(Exit::Signal(15).shell_code(), 143);
        assert_eq!(Exit::Signal(15).ended(), "was killed by SIGTERM");
        assert_eq!(Exit::Code(3).ended(), "exited with code 3");
    }
}
