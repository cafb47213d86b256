//! Shared harness for tandem's integration tests: real PostgreSQL, real processes, real signals.
//!
//! - [`Sandbox`]: one test's temp dir (PGDATA, socket dirs, initdb.d) and ports, removed on drop.
//! - [`Tandem`]: a running tandem, as PID 1 of a fresh pid namespace (`unshare`), as a plain
//!   child (the subreaper path), or wrapped so that what it leaves running can be listed.
//!   Output is captured line by line; every failure message carries the whole log.
//! - helpers to talk to the test app over HTTP and to PostgreSQL over TCP, and to look at
//!   `/proc` for zombies.
//!
//! Nothing here sleeps on a guess: every wait polls a condition until a deadline and fails with
//! what it saw.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(15);
/// Generous bound for anything that involves initdb or a PostgreSQL start on a busy 2-core box.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound for an orderly stop when no budget is under test (tandem's default budget is 9 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for quick observable effects (a signal's log line, an HTTP answer).
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(15);

/// The app's readiness line, as relayed by tandem.
pub const APP_READY: &str = "app | testapp listening on";

/// The PATH every child gets; the environment is otherwise only what the test sets.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn tandem_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

/// `.../debug/tandem` -> `.../debug/examples/testapp` (cargo builds examples for `cargo test`).
pub fn testapp_bin() -> PathBuf {
    let bin = tandem_bin();
    let path = bin.parent().unwrap().join("examples").join("testapp");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples`",
        path.display()
    );
    path
}

/// Polls `probe` every [`POLL`] until it returns `Some`, or `None` once `timeout` has passed.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Runs a future to completion on a fresh single-threaded runtime (tests are synchronous).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// A port nobody listens on right now, on every IPv4 address (the kernel picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind an ephemeral port")
        .port()
}

static SANDBOX_SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's private world: a 0755 dir under /tmp (so the `postgres` user can traverse it)
/// with PGDATA, the PostgreSQL socket dir, initdb.d and tandem's control socket, plus ports.
pub struct Sandbox {
    pub root: PathBuf,
    pub pgdata: PathBuf,
    pub pg_socket_dir: PathBuf,
    pub initdb_dir: PathBuf,
    pub control_socket: PathBuf,
    pub pg_port: u16,
    pub app_port: u16,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let seq = SANDBOX_SEQ.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!(
            "/tmp/tandem-test-{name}-{}-{seq}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        mkdir(&root, 0o755);
        let initdb_dir = root.join("initdb.d");
        mkdir(&initdb_dir, 0o755);
        let pg_port = free_port();
        let mut app_port = free_port();
        while app_port == pg_port {
            app_port = free_port();
        }
        Sandbox {
            pgdata: root.join("pgdata"),
            // Left for tandem to create, as the official image creates /var/run/postgresql.
            pg_socket_dir: root.join("pg-socket"),
            control_socket: root.join("tandem.sock"),
            initdb_dir,
            root,
            pg_port,
            app_port,
        }
    }

    /// The environment of a zero-config tandem with the embedded PostgreSQL for this sandbox.
    /// The caller adds POSTGRES_* (which is what turns PostgreSQL on).
    pub fn env(&self) -> Env {
        let mut env = Env::default();
        env.set("PGDATA", self.pgdata.to_str().unwrap())
            .set("PGPORT", &self.pg_port.to_string())
            .set("TANDEM_PG_SOCKET_DIR", self.pg_socket_dir.to_str().unwrap())
            .set("TANDEM_INITDB_DIR", self.initdb_dir.to_str().unwrap())
            .set("TANDEM_SOCKET", self.control_socket.to_str().unwrap())
            .set("TESTAPP_PORT", &self.app_port.to_string());
        env
    }

    /// [`Sandbox::env`] with a plain user, password and database.
    pub fn env_with_db(&self) -> Env {
        let mut env = self.env();
        env.set("POSTGRES_USER", "tester")
            .set("POSTGRES_PASSWORD", "s3cret-test-pw")
            .set("POSTGRES_DB", "testdb");
        env
    }

    /// The database of [`Sandbox::env_with_db`], over TCP from 127.0.0.1 (trust).
    pub fn test_db<'a>(&self, env: &'a Env) -> Db<'a> {
        Db {
            host: "127.0.0.1",
            source: None,
            port: self.pg_port,
            user: "tester",
            password: env.get("POSTGRES_PASSWORD"),
            dbname: "testdb",
        }
    }

    /// Writes a file into initdb.d.
    pub fn init_script(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.initdb_dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    pub fn app_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.app_port)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.root) {
            if err.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cannot remove {}: {err}", self.root.display());
            }
        }
    }
}

pub fn mkdir(path: &Path, mode: u32) {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    // The umask may have narrowed the mode.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chown_to(path: &Path, uid: u32, gid: u32) {
    chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// An ordered environment: a child gets exactly these variables plus PATH.
#[derive(Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Values that are not UTF-8, set as raw bytes.
    raw: BTreeMap<String, Vec<u8>>,
}

impl Env {
    pub fn set(&mut self, key: &str, value: &str) -> &mut Env {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Env {
        self.vars.remove(key);
        self.raw.remove(key);
        self
    }

    /// A value as raw bytes (not UTF-8, say).
    pub fn set_bytes(&mut self, key: &str, value: &[u8]) -> &mut Env {
        self.vars.remove(key);
        self.raw.insert(key.to_string(), value.to_vec());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    fn apply(&self, command: &mut Command) {
        command.env_clear().env("PATH", PATH);
        for (key, value) in &self.vars {
            command.env(key, value);
        }
        for (key, value) in &self.raw {
            use std::os::unix::ffi::OsStrExt;
            command.env(key, std::ffi::OsStr::from_bytes(value));
        }
    }
}

/// Which stream a captured line came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Everything a run printed, line by line, in arrival order.
#[derive(Clone, Default)]
pub struct Log {
    lines: Arc<Mutex<Vec<(Stream, String)>>>,
    /// How many of the captured streams reached end-of-file.
    closed: Arc<AtomicU32>,
}

impl Log {
    fn capture(&self, stream: Stream, reader: impl Read + Send + 'static) {
        let lines = Arc::clone(&self.lines);
        let closed = Arc::clone(&self.closed);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        // tandem right-aligns service names (`     app | `) so the `|`s line
                        // up; the tests match on `app | ...`.
                        let line = line.trim_end_matches(['\n', '\r']).trim_start().to_string();
                        lines.lock().unwrap().push((stream, line));
                    }
                }
            }
            closed.fetch_add(1, Ordering::SeqCst);
        });
    }

    /// True once stdout and stderr both reached end-of-file: nothing more will arrive.
    pub fn complete(&self) -> bool {
        self.closed.load(Ordering::SeqCst) == 2
    }

    pub fn lines(&self) -> Vec<(Stream, String)> {
        self.lines.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines()
            .iter()
            .map(|(stream, line)| {
                let tag = if *stream == Stream::Stdout {
                    "out"
                } else {
                    "err"
                };
                format!("[{tag}] {line}\n")
            })
            .collect()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines()
            .iter()
            .filter(|(_, line)| line.contains(needle))
            .count()
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// Whether a line containing `needle` arrived after the first line containing `marker`.
    /// Used to skip what the temporary server of a first start logged (it is stopped with a
    /// fast shutdown too).
    pub fn contains_after(&self, marker: &str, needle: &str) -> bool {
        let lines = self.lines();
        match lines.iter().position(|(_, line)| line.contains(marker)) {
            Some(start) => lines[start + 1..].iter().any(|(_, l)| l.contains(needle)),
            None => false,
        }
    }

    /// Index (in arrival order) of the first line containing `needle`.
    pub fn position(&self, needle: &str) -> Option<usize> {
        self.lines()
            .iter()
            .position(|(_, line)| line.contains(needle))
    }
}

/// How tandem is started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// PID 1 of a new pid namespace: `unshare --pid --fork --mount-proc --kill-child=SIGKILL`.
    Pid1,
    /// A plain child of the test: not PID 1, so tandem must be a subreaper.
    Child,
    /// In a new pid (and mount) namespace whose PID 1 is `sh`, which runs `prelude`, then
    /// tandem (not PID 1), then lists every process still there as `leftover-process: STAT`.
    Wrapped { mount_ro: bool },
}

/// A running (or finished) tandem.
pub struct Tandem {
    pub mode: Mode,
    /// `unshare` in the namespaced modes, tandem itself in [`Mode::Child`].
    child: Child,
    pub log: Log,
    /// The secret that must never appear in the output, if any.
    pub secret: Option<String>,
    status: Option<ExitStatus>,
    /// When the last exit was observed (for budget checks).
    pub exited_at: Option<Instant>,
    /// pgdata, for the [`Mode::Child`] clean-up: PostgreSQL outlives a SIGKILLed tandem.
    pgdata: Option<PathBuf>,
}

impl Tandem {
    /// Starts `tandem -- testapp` as PID 1 of a new pid namespace.
    pub fn start(env: &Env) -> Tandem {
        Tandem::start_with(Mode::Pid1, env, &[testapp_bin().to_str().unwrap()])
    }

    /// Starts tandem with `args` after `--` (the CMD) in the given mode.
    pub fn start_with(mode: Mode, env: &Env, cmd: &[&str]) -> Tandem {
        Tandem::start_raw(mode, env, &["--"], cmd, None)
    }

    /// Starts tandem with arguments `tandem_args` then `cmd`; in [`Mode::Wrapped`] with
    /// `mount_ro`, `ro_dir` is bind-mounted read-only onto itself first.
    pub fn start_raw(
        mode: Mode,
        env: &Env,
        tandem_args: &[&str],
        cmd: &[&str],
        ro_dir: Option<&Path>,
    ) -> Tandem {
        let tandem = tandem_bin();
        let mut command = match mode {
            Mode::Pid1 => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"])
                    .arg(&tandem);
                c
            }
            Mode::Child => Command::new(&tandem),
            Mode::Wrapped { mount_ro } => {
                let prelude = match (mount_ro, ro_dir) {
                    (true, Some(dir)) => {
                        let d = dir.to_str().unwrap();
                        assert!(!d.contains('\''), "quote in {d}");
                        format!(
                            "mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}' || exit 90\n"
                        )
                    }
                    (true, None) => panic!("Wrapped {{ mount_ro: true }} needs ro_dir"),
                    _ => String::new(),
                };
                let script = format!(
                    "{prelude}\"$@\"\nrc=$?\n\
                     for d in /proc/[0-9]*; do\n\
                     [ \"${{d#/proc/}}\" = 1 ] && continue\n\
                     read -r st < \"$d/stat\" 2>/dev/null && echo \"leftover-process: $st\" >&2\n\
                     done\nexit $rc\n"
                );
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]);
                if mount_ro {
                    c.arg("--mount");
                }
                c.args(["sh", "-c", &script, "wrapper"]).arg(&tandem);
                c
            }
        };
        command.args(tandem_args).args(cmd);
        env.apply(&mut command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot spawn tandem");
        let log = Log::default();
        log.capture(Stream::Stdout, child.stdout.take().unwrap());
        log.capture(Stream::Stderr, child.stderr.take().unwrap());
        Tandem {
            mode,
            child,
            log,
            secret: env.get("POSTGRES_PASSWORD").map(str::to_string),
            status: None,
            exited_at: None,
            pgdata: env.get("PGDATA").map(PathBuf::from),
        }
    }

    /// Panics with `msg` and the whole log.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n---- tandem log ({:?}) ----\n{}---- end ----",
            self.mode,
            self.log.text()
        );
    }

    /// Waits for a line containing `needle`; fails with the log if it does not come, or if
    /// tandem exits first (its output is then complete).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let found = poll_until(timeout, || {
            if self.log.contains(needle) {
                return Some(true);
            }
            if self.poll_exit().is_some() && self.output_closed() && !self.log.contains(needle) {
                return Some(false);
            }
            None
        });
        match found {
            Some(true) => {}
            Some(false) => self.fail(&format!(
                "tandem exited ({:?}) without printing {needle:?}",
                self.status
            )),
            None => self.fail(&format!("no line {needle:?} within {timeout:?}")),
        }
    }

    /// Waits until the n-th line containing `needle` has arrived.
    pub fn wait_for_count(&mut self, needle: &str, n: usize, timeout: Duration) {
        if poll_until(timeout, || (self.log.count(needle) >= n).then_some(())).is_none() {
            self.fail(&format!(
                "expected {n} lines containing {needle:?} within {timeout:?}, saw {}",
                self.log.count(needle)
            ));
        }
    }

    /// Waits until the app listens (which implies PostgreSQL is ready, by tandem's contract).
    pub fn wait_app_ready(&mut self) {
        self.wait_for_line(APP_READY, START_TIMEOUT);
    }

    /// Fails unless the real server (not the temporary one of a first start) logged both
    /// halves of a clean fast shutdown after the app started.
    pub fn assert_clean_postgres_stop(&self) {
        for line in [
            "received fast shutdown request",
            "database system is shut down",
        ] {
            if !self.log.contains_after(APP_READY, line) {
                self.fail(&format!(
                    "no {line:?} from PostgreSQL after the app started"
                ));
            }
        }
    }

    /// The exit status, if tandem (or its wrapper) has exited.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                self.exited_at = Some(Instant::now());
            }
        }
        self.status
    }

    /// Waits for tandem to exit and for its output to be drained; fails with the log otherwise.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match poll_until(timeout, || self.poll_exit()) {
            Some(status) => {
                // Whatever inherited the pipes may hold them a moment longer; the last lines
                // arrive when they close. Bounded: a test then fails on what it saw.
                poll_until(Duration::from_secs(5), || {
                    self.output_closed().then_some(())
                });
                status
            }
            None => self.fail(&format!("tandem did not exit within {timeout:?}")),
        }
    }

    /// True once tandem's output is complete (both pipes closed: tandem and everything that
    /// inherited them are gone).
    fn output_closed(&self) -> bool {
        self.log.complete()
    }

    /// Waits for the exit and returns the code; fails if tandem died of a signal.
    pub fn wait_exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_exit(timeout);
        match status.code() {
            Some(code) => code,
            None => self.fail(&format!("tandem died of a signal: {status:?}")),
        }
    }

    /// tandem's pid as the test sees it.
    pub fn pid(&self) -> Pid {
        match self.mode {
            Mode::Child => Pid::from_raw(self.child.id() as i32),
            // unshare's child is tandem.
            Mode::Pid1 => self.first_child(self.child.id() as i32),
            // unshare's child is the wrapper's sh, whose child is tandem.
            Mode::Wrapped { .. } => {
                let sh = self.first_child(self.child.id() as i32);
                self.first_child(sh.as_raw())
            }
        }
    }

    fn first_child(&self, parent: i32) -> Pid {
        let path = format!("/proc/{parent}/task/{parent}/children");
        let pid = poll_until(SHORT_TIMEOUT, || {
            let text = std::fs::read_to_string(&path).ok()?;
            text.split_whitespace().next()?.parse::<i32>().ok()
        });
        match pid {
            Some(pid) => Pid::from_raw(pid),
            None => self.fail(&format!("no child in {path}")),
        }
    }

    pub fn signal(&self, signal: Signal) {
        let pid = self.pid();
        if let Err(err) = kill(pid, signal) {
            self.fail(&format!("kill({pid}, {signal}) failed: {err}"));
        }
    }

    /// Lines tandem itself printed (`tandem | ` prefix).
    pub fn own_lines(&self) -> Vec<String> {
        self.log
            .lines()
            .into_iter()
            .filter(|(_, line)| line.starts_with("tandem | "))
            .map(|(_, line)| line)
            .collect()
    }

    /// Fails if the password appears anywhere in the output.
    pub fn assert_secret_absent(&self) {
        if let Some(secret) = &self.secret {
            if !secret.is_empty() && self.log.text().contains(secret.as_str()) {
                self.fail("the password appears in the output");
            }
        }
    }

    /// Fails if any line reports a panic.
    pub fn assert_no_panic(&self) {
        if self.log.contains("panicked at") {
            self.fail("tandem panicked");
        }
    }

    /// [`Mode::Wrapped`]: the processes (`/proc/PID/stat` lines) still alive after tandem
    /// exited. Excluded: zombies (dead; the wrapper's sh just has not reaped them) and
    /// processes already exiting (PF_EXITING), such as a `postgres --version` whose output
    /// tandem read to the end without waiting for its exit.
    pub fn leftovers(&self) -> Vec<String> {
        self.log
            .lines()
            .into_iter()
            .filter_map(|(_, line)| line.strip_prefix("leftover-process: ").map(str::to_string))
            .filter(|stat| stat_state(stat) != Some('Z') && !stat_exiting(stat))
            .collect()
    }

    /// The PostgreSQL log: lines tandem relayed with the `postgres | ` prefix.
    pub fn postgres_lines(&self) -> Vec<String> {
        self.log
            .lines()
            .into_iter()
            .filter(|(_, line)| line.starts_with("postgres | "))
            .map(|(_, line)| line)
            .collect()
    }

    /// Fails if this run's PostgreSQL log says the previous stop was not clean.
    pub fn assert_no_recovery(&self) {
        for bad in ["not properly shut down", "automatic recovery in progress"] {
            if self.log.contains(bad) {
                self.fail(&format!("PostgreSQL log contains {bad:?}"));
            }
        }
    }

    /// SIGTERM and wait for the exit code (for tests where stopping is not what is tested).
    pub fn stop(&mut self) -> i32 {
        self.signal(Signal::SIGTERM);
        self.wait_exit_code(STOP_TIMEOUT)
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        // `TANDEM_TEST_LOG=1 cargo test -- --nocapture` shows what passing tests saw too.
        if std::env::var_os("TANDEM_TEST_LOG").is_some() {
            eprintln!(
                "---- tandem log ({:?}, {:?}) ----\n{}---- end ----",
                self.mode,
                self.status,
                self.log.text()
            );
        }
        if self.poll_exit().is_some() {
            return;
        }
        match self.mode {
            // Killing unshare kills tandem (--kill-child), and PID 1's death the namespace.
            // SIGKILL to the namespace's PID 1 kills everything in it; unshare then reaps it
            // and exits, so once unshare is reaped nothing of this run is left.
            Mode::Pid1 | Mode::Wrapped { .. } => {
                let unshare = self.child.id();
                let first_child =
                    std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                        .ok()
                        .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
                if let Some(pid) = first_child {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let reaped = poll_until(Duration::from_secs(10), || {
                    self.child.try_wait().ok().flatten()
                });
                if reaped.is_none() {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                }
            }
            // A plain child: ask nicely, then make sure PostgreSQL and the app do not outlive it.
            Mode::Child => {
                let pid = Pid::from_raw(self.child.id() as i32);
                let children = child_pids(pid);
                let _ = kill(pid, Signal::SIGTERM);
                if poll_until(STOP_TIMEOUT, || self.child.try_wait().ok().flatten()).is_none() {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    for child in children {
                        let _ = kill(Pid::from_raw(-child), Signal::SIGKILL);
                        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
                    }
                    if let Some(pid) = self.pgdata.as_deref().and_then(postmaster_pid) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Line 1 of PGDATA/postmaster.pid (the postmaster's pid in its own pid namespace).
pub fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The state letter of a `/proc/PID/stat` line (the field after the parenthesised comm).
pub fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether the `flags` field of a `/proc/PID/stat` line has PF_EXITING (the process is dying).
pub fn stat_exiting(stat: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0)
}

/// A process as read from /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub comm: String,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone.
pub fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let (comm, rest) = stat[open + 1..].rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        state,
        comm: comm.to_string(),
    })
}

/// Every process visible in /proc.
pub fn all_procs() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// The processes in the same pid namespace as `pid` (itself included).
pub fn procs_in_namespace_of(pid: Pid) -> Vec<Proc> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return Vec::new();
    };
    all_procs()
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{}/ns/pid", p.pid)).ok() == Some(ns.clone()))
        .collect()
}

pub fn child_pids(parent: Pid) -> Vec<i32> {
    all_procs()
        .into_iter()
        .filter(|p| p.ppid == parent.as_raw())
        .map(|p| p.pid)
        .collect()
}

/// The host pid of the process whose pid in its own namespace is `ns_pid`, among the
/// processes in tandem's namespace (from the last field of `NSpid:` in /proc/PID/status).
pub fn host_pid_in_namespace(tandem: Pid, ns_pid: i32) -> Option<i32> {
    procs_in_namespace_of(tandem).into_iter().find_map(|p| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).ok()?;
        let nspid = status.lines().find(|l| l.starts_with("NSpid:"))?;
        let inner: i32 = nspid.split_whitespace().last()?.parse().ok()?;
        (inner == ns_pid).then_some(p.pid)
    })
}

/// An HTTP exchange with the test app: (status, body).
pub fn http(method: &str, url: &str) -> Result<(u16, String), String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let url = url.to_string();
    block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .request(method, &url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    })
}

/// One raw HTTP/1.x request (`request` is the whole head, and body if any) on a fresh
/// connection, read to its end: (status, body). For tandem's own HTTP endpoint, where the
/// test controls every byte (methods, heads, garbage).
pub fn http_raw(addr: &str, request: &str) -> Result<(u16, String), String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let status = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// `GET path` on a fresh connection (`Connection: close`, as a kubelet's probe).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n"),
    )
}

/// A process's resident memory (VmRSS) in KiB; 0 once it is gone.
pub fn rss_kib(pid: Pid) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

impl Tandem {
    /// An HTTP request to the app that must answer 200; returns the body.
    pub fn app_ok(&self, sandbox: &Sandbox, method: &str, path: &str) -> String {
        match http(method, &sandbox.app_url(path)) {
            Ok((200, body)) => body,
            Ok((status, body)) => self.fail(&format!("{method} {path}: {status} {body:?}")),
            Err(err) => self.fail(&format!("{method} {path}: {err}")),
        }
    }
}

/// Connection parameters for a direct PostgreSQL connection from the test.
pub struct Db<'a> {
    /// An IP address (TCP) or a socket directory.
    pub host: &'a str,
    /// The client address to connect from. pg_hba.conf matches the *client* address, and a
    /// connection to any 127.x address still comes from 127.0.0.1 (on trust by initdb's
    /// default) unless the socket is bound first.
    pub source: Option<&'a str>,
    pub port: u16,
    pub user: &'a str,
    pub password: Option<&'a str>,
    pub dbname: &'a str,
}

impl Db<'_> {
    fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host)
            .port(self.port)
            .user(self.user)
            .dbname(self.dbname)
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = self.password {
            config.password(password);
        }
        config
    }

    /// Runs `sql` (a query returning one text column); rows in order.
    pub fn query_texts(&self, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
        let config = self.config();
        let sql = sql.to_string();
        let source = self
            .source
            .map(|s| s.parse::<std::net::IpAddr>().expect("source IP"));
        let server = source.map(|_| {
            let ip = self
                .host
                .parse()
                .expect("with a source, host must be an IP");
            std::net::SocketAddr::new(ip, self.port)
        });
        block_on(async move {
            let client = match source.zip(server) {
                None => {
                    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client
                }
                Some((source, server)) => {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket
                        .bind(std::net::SocketAddr::new(source, 0))
                        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
                    let stream = socket
                        .connect(server)
                        .await
                        .unwrap_or_else(|e| panic!("connect {server} from {source}: {e}"));
                    let (client, connection) =
                        config.connect_raw(stream, tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client
                }
            };
            let rows = client.query(sql.as_str(), &[]).await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }
}

/// Whether this machine can run tandem as PID 1 with the embedded PostgreSQL: root (PostgreSQL
/// runs as `postgres`, tandem chowns its directories), `unshare`, the `postgres` user and a
/// PostgreSQL installation. If not, prints why and returns false so the test can return;
/// with `CI` set it fails instead, because CI must run every test.
pub fn can_run_postgres_as_pid1() -> bool {
    let Some(why) = missing_for_postgres_as_pid1() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so this test may not be skipped: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

fn missing_for_postgres_as_pid1() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the test does not run as root".into());
    }
    let unshare = Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !unshare.is_ok_and(|s| s.success()) {
        return Some("`unshare` (util-linux) is not installed".into());
    }
    if !matches!(nix::unistd::User::from_name("postgres"), Ok(Some(_))) {
        return Some("there is no `postgres` user".into());
    }
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|e| e.path().join("bin/initdb").exists());
    let pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !debian && !pg_config {
        return Some(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no pg_config)"
                .into(),
        );
    }
    None
}

/// A password no earlier run can have written anywhere: the test's tag, the test process and
/// the time. [`SecretWatch`] relies on that.
pub fn fresh_password(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pw-{tag}-{}-{nanos}-do-not-store", std::process::id())
}

/// Finds the files that hold a password: everything under the sandbox (PGDATA included), and
/// everything under what appeared directly in /tmp, /var/tmp, /dev/shm or /run since the
/// watch began (where a temporary password file would go). The password must be fresh ([`fresh_password`]): nothing older than
/// the watch can hold it, which keeps the scan of a busy, shared /tmp small and leaves other
/// people's files alone. Other tests' sandboxes are skipped: the tandem under test knows
/// nothing of them. Devices, FIFOs and sockets are skipped, symbolic links not followed.
///
/// On drop, removes what it finds outside the sandbox (the sandbox goes with its
/// [`Sandbox`]), so that a failing run leaves no password behind.
pub struct SecretWatch {
    secret: String,
    sandbox: PathBuf,
    since: std::time::SystemTime,
}

impl SecretWatch {
    /// Starts watching; call before tandem starts.
    pub fn new(sandbox: &Sandbox, secret: &str) -> SecretWatch {
        assert!(secret.len() >= 16, "not a distinctive password: {secret:?}");
        SecretWatch {
            secret: secret.to_string(),
            sandbox: sandbox.root.clone(),
            // File times are coarser than the clock: a little slack.
            since: std::time::SystemTime::now() - Duration::from_secs(2),
        }
    }

    /// Files under the sandbox or new in the temporary directories that contain the password.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut roots = self.new_in_tmp();
        roots.push(self.sandbox.clone());
        self.grep(&roots)
    }

    /// [`SecretWatch::files`] without PGDATA (`pgdata` in the sandbox): cheap enough to poll
    /// while initdb fills PGDATA. A password file cannot be in PGDATA then: initdb refuses a
    /// directory that is not empty.
    pub fn files_outside_pgdata(&self) -> Vec<PathBuf> {
        let mut roots = self.new_in_tmp();
        if let Ok(entries) = std::fs::read_dir(&self.sandbox) {
            roots.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name() != "pgdata")
                    .map(|e| e.path()),
            );
        }
        self.grep(&roots)
    }

    /// Entries made since the watch began directly in the machine's temporary directories
    /// (/tmp, /var/tmp, /dev/shm, /run), other than test sandboxes.
    fn new_in_tmp(&self) -> Vec<PathBuf> {
        ["/tmp", "/var/tmp", "/dev/shm", "/run"]
            .into_iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with("tandem-test-"))
            .filter(|e| {
                e.metadata()
                    .ok()
                    .and_then(|m| m.created().or_else(|_| m.modified()).ok())
                    .is_some_and(|t| t >= self.since)
            })
            .map(|e| e.path())
            .collect()
    }

    /// `grep -r` (fixed string, names only) over `roots`. Files that vanish or cannot be read
    /// while it runs are not errors: they hold nothing any more.
    fn grep(&self, roots: &[PathBuf]) -> Vec<PathBuf> {
        if roots.is_empty() {
            return Vec::new();
        }
        let output = Command::new("grep")
            .args(["-r", "-l", "-s", "-F", "--devices=skip", "-e"])
            .arg(&self.secret)
            .arg("--")
            .args(roots)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("cannot run grep");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(PathBuf::from)
            .collect()
    }
}

impl Drop for SecretWatch {
    fn drop(&mut self) {
        for file in self.grep(&self.new_in_tmp()) {
            let _ = std::fs::remove_file(&file);
            // The private directory around it, if that leaves it empty.
            if let Some(dir) = file.parent().filter(|d| {
                !["/tmp", "/var/tmp", "/dev/shm", "/run"].contains(&d.to_str().unwrap_or("/"))
            }) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl Tandem {
    /// Waits for a line containing `needle`, then sends `signal` to tandem; returns when it
    /// was sent (for timing the stop).
    pub fn signal_at_line(&mut self, needle: &str, signal: Signal) -> Instant {
        self.wait_for_line(needle, START_TIMEOUT);
        let sent = Instant::now();
        self.signal(signal);
        sent
    }

    /// [`Mode::Pid1`]: SIGKILL to tandem as soon as a line containing `needle` arrives, then
    /// waits until the namespace is gone (the kernel kills everything in a pid namespace
    /// with its PID 1, so nothing of the run survives: a container killed by the OOM killer
    /// or a power cut).
    pub fn sigkill_at_line(&mut self, needle: &str) {
        assert_eq!(self.mode, Mode::Pid1, "SIGKILL of PID 1 needs Mode::Pid1");
        self.signal_at_line(needle, Signal::SIGKILL);
        self.wait_exit(SHORT_TIMEOUT);
    }

    /// [`Mode::Wrapped`], after the exit: fails with the list if anything outlived tandem.
    pub fn assert_no_leftovers(&self) {
        assert!(
            matches!(self.mode, Mode::Wrapped { .. }),
            "leftovers are listed in Mode::Wrapped only"
        );
        assert!(self.status.is_some(), "tandem has not exited yet");
        let leftovers = self.leftovers();
        if !leftovers.is_empty() {
            self.fail(&format!(
                "still running after tandem exited: {leftovers:#?}"
            ));
        }
    }

    /// Fails unless a line containing each of `needles` arrived, each after the one before.
    pub fn assert_in_order(&self, needles: &[&str]) {
        let lines = self.log.lines();
        let mut from = 0;
        for needle in needles {
            match lines[from..].iter().position(|(_, l)| l.contains(needle)) {
                Some(i) => from += i + 1,
                None if self.log.contains(needle) => self.fail(&format!(
                    "{needle:?} came too early: expected in this order: {needles:#?}"
                )),
                None => self.fail(&format!("no line {needle:?}")),
            }
        }
    }
}

impl Tandem {
    /// Starts `tandem --config FILE` (no CMD) in the given mode.
    pub fn start_config(mode: Mode, env: &Env, config: &Path) -> Tandem {
        Tandem::start_raw(
            mode,
            env,
            &["--config", config.to_str().unwrap()],
            &[],
            None,
        )
    }

    /// [`Tandem::assert_clean_postgres_stop`] for runs without the test app: both halves of
    /// a clean fast shutdown after the first line containing `marker` (e.g. tandem's
    /// `postgres is ready`, which the temporary server of a first start never reaches).
    pub fn assert_clean_postgres_stop_after(&self, marker: &str) {
        for line in [
            "received fast shutdown request",
            "database system is shut down",
        ] {
            if !self.log.contains_after(marker, line) {
                self.fail(&format!("no {line:?} from PostgreSQL after {marker:?}"));
            }
        }
    }
}

/// Runs a tandem (`-- CMD`) that must fail, in [`Mode::Wrapped`], and checks everything the
/// contract promises about failing: exactly one `tandem | ` error line, naming at least one
/// of `keywords`; the exit code; no panic, no password in the output, the app never started,
/// nothing left running.
pub fn expect_failure(
    env: &Env,
    cmd: &[&str],
    ro_dir: Option<&Path>,
    expected_code: i32,
    keywords: &[&str],
) -> Tandem {
    expect_failure_raw(env, &["--"], cmd, ro_dir, expected_code, keywords)
}

/// [`expect_failure`] with tandem's own arguments first (`--config FILE`, say).
pub fn expect_failure_raw(
    env: &Env,
    tandem_args: &[&str],
    cmd: &[&str],
    ro_dir: Option<&Path>,
    expected_code: i32,
    keywords: &[&str],
) -> Tandem {
    let mode = Mode::Wrapped {
        mount_ro: ro_dir.is_some(),
    };
    let mut tandem = Tandem::start_raw(mode, env, tandem_args, cmd, ro_dir);
    let code = tandem.wait_exit_code(START_TIMEOUT);
    tandem.assert_no_panic();
    tandem.assert_secret_absent();
    if code == 90 {
        tandem.fail("the test's read-only bind mount failed");
    }
    let errors: Vec<String> = tandem
        .own_lines()
        .into_iter()
        .filter(|line| line.to_lowercase().contains("error"))
        .collect();
    if errors.len() != 1 {
        tandem.fail(&format!(
            "expected exactly one `tandem | ` error line, got {}: {errors:#?}",
            errors.len()
        ));
    }
    if !keywords.iter().any(|k| errors[0].contains(k)) {
        tandem.fail(&format!(
            "the error line names none of {keywords:?}: {:?}",
            errors[0]
        ));
    }
    let leftovers = tandem.leftovers();
    if !leftovers.is_empty() {
        tandem.fail(&format!(
            "still running after tandem exited: {leftovers:#?}"
        ));
    }
    if tandem.log.contains("testapp listening") {
        tandem.fail("the app was started");
    }
    if code != expected_code {
        tandem.fail(&format!("exit code {code}, expected {expected_code}"));
    }
    tandem
}
