//! Probes: is a service doing its job right now?
//!
//! Four kinds, each answering with a [`ProbeReport`]: an [`Outcome`] and its latency:
//! - `postgres`: a real connection as the configured user and `SELECT 1` (a wrong password
//!   fails, where `pg_isready` would say OK); SQLSTATE 57P03 is "starting", not a failure.
//! - `http`: GET, healthy on 2xx, redirects not followed, body not read.
//! - `tcp`: the connection is accepted.
//! - `exec`: a command exits 0. It is spawned through the [`Reaper`] in its own session, and
//!   its whole process group is SIGKILLed when it ends, times out, or the probe is dropped.
//!
//! [`Prober::run`] enforces the timeout around every kind, so a probe never takes longer
//! than asked. Failure details are a few words meant for one line of `tandem healthcheck`.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::error::SqlState;

use crate::process::{ChildSpec, Env, Exit, Identity, Output, Reaper};
pub use crate::supervisor::{Outcome, ProbeReport};

/// What to check, and how.
#[derive(Clone)]
pub enum Probe {
    /// A real connection as `user` to `database` and `SELECT 1`. `host` is a name or address
    /// such as "127.0.0.1", or an absolute path: the directory of the server's Unix socket.
    Postgres {
        host: String,
        port: u16,
        user: String,
        password: Option<String>,
        database: String,
    },
    /// GET; healthy on 2xx; redirects are not followed; the body is ignored.
    Http { url: String },
    /// A TCP connection to "host:port" is accepted.
    Tcp { addr: String },
    /// The command exits 0. `env` is its whole environment (nothing is inherited), as for
    /// services; `user` as for services (applied only when tandem is root).
    Exec {
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        user: Option<Identity>,
    },
}

impl Probe {
    /// The probe's kind as the config spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Postgres { .. } => "postgres",
            Probe::Http { .. } => "http",
            Probe::Tcp { .. } => "tcp",
            Probe::Exec { .. } => "exec",
        }
    }
}

/// By hand, so that the password never reaches a log line.
impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Postgres {
                host,
                port,
                user,
                password,
                database,
            } => f
                .debug_struct("Postgres")
                .field("host", host)
                .field("port", port)
                .field("user", user)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .field("database", database)
                .finish(),
            Probe::Http { url } => f.debug_struct("Http").field("url", url).finish(),
            Probe::Tcp { addr } => f.debug_struct("Tcp").field("addr", addr).finish(),
            Probe::Exec { argv, env, user } => f
                .debug_struct("Exec")
                .field("argv", argv)
                // Values may be secrets (DATABASE_URL holds a password): names only.
                .field("env", &env.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .field("user", &user.as_ref().map(|u| &u.name))
                .finish(),
        }
    }
}

/// A latency the way the one-line report shows it: "0.9ms", "12ms", "2.1s".
pub fn format_latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// How much of an exec probe's output we keep to explain a failure: its last line.
const EXEC_OUTPUT_TAIL: usize = 512;
/// The longest explanation taken from an exec probe's output, in characters.
const EXEC_DETAIL_MAX: usize = 100;

/// Runs probes. Cheap to clone: the HTTP client (and its connector) is built once.
#[derive(Clone)]
pub struct Prober {
    reaper: Reaper,
    http: reqwest::Client,
    /// The same, its connections from [`PROBE_SOURCE`]: for URLs on 127.0.0.1.
    http_loopback: reqwest::Client,
}

/// Probes of 127.0.0.1 connect from this address. An app's port in the ephemeral range
/// (48886 is) can otherwise be taken by a probe made before the app listens: the connect
/// picks that very port as its own source and connects to itself, and the port then stays
/// in TIME_WAIT for a minute, so the app cannot bind it. From another address the pair can
/// never be the same. All of 127.0.0.0/8 is the loopback interface's.
pub const PROBE_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

impl Prober {
    pub fn new(reaper: Reaper) -> Result<Prober, String> {
        let client = |source: Option<std::net::IpAddr>| {
            reqwest::Client::builder()
                // A 302 to a login page is not a healthy app.
                .redirect(reqwest::redirect::Policy::none())
                // HTTP_PROXY in the container is meant for the app's outbound traffic, not
                // for reaching the app itself over loopback.
                .no_proxy()
                // Every probe opens a fresh connection, as a new client would: a pooled one
                // could hide an app that no longer accepts connections.
                .pool_max_idle_per_host(0)
                .local_address(source)
                .user_agent(concat!(
                    "tandem/",
                    env!("CARGO_PKG_VERSION"),
                    " healthcheck"
                ))
                .build()
                .map_err(|e| format!("cannot set up the HTTP client for probes: {e}"))
        };
        Ok(Prober {
            reaper,
            http: client(None)?,
            http_loopback: client(Some(PROBE_SOURCE.into()))?,
        })
    }

    /// Runs every given probe at once, each with its own timeout; the results come back in
    /// the same places (`None` where no probe was given, or its task failed).
    pub async fn run_all(
        &self,
        probes: Vec<Option<(Probe, Duration)>>,
    ) -> Vec<Option<ProbeReport>> {
        let mut results = vec![None; probes.len()];
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (probe, timeout)) in probes
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p?)))
        {
            let prober = self.clone();
            tasks.spawn(async move { (i, prober.run(&probe, timeout).await) });
        }
        while let Some(Ok((i, r))) = tasks.join_next().await {
            results[i] = Some(r);
        }
        results
    }

    /// Runs `probe` once. Never takes much longer than `timeout`: when it runs out, the
    /// probe is abandoned (its connection closed, its process group killed) and reported as
    /// `Fail("timed out after N ms")`.
    pub async fn run(&self, probe: &Probe, timeout: Duration) -> ProbeReport {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.outcome(probe, timeout)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Fail(format!("timed out after {} ms", timeout.as_millis())),
        };
        ProbeReport {
            outcome,
            latency: started.elapsed(),
        }
    }

    async fn outcome(&self, probe: &Probe, timeout: Duration) -> Outcome {
        match probe {
            Probe::Postgres {
                host,
                port,
                user,
                password,
                database,
            } => postgres(host, *port, user, password.as_deref(), database, timeout).await,
            Probe::Http { url } => self.http(url).await,
            Probe::Tcp { addr } => match tcp_connect(addr).await {
                // With nothing listening on a port in the ephemeral range, a connection to
                // a local address can pick that very port as its own and "connect" to
                // itself (a TCP simultaneous open): that is not a listener.
                Ok(s) if s.local_addr().ok() == s.peer_addr().ok() => {
                    Outcome::Fail("connection refused (connected to itself)".into())
                }
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Fail(io_detail(&e)),
            },
            Probe::Exec { argv, env, user } => self.exec(argv, env, user.as_ref()).await,
        }
    }

    async fn http(&self, url: &str) -> Outcome {
        let on_loopback = reqwest::Url::parse(url).is_ok_and(|u| u.host_str() == Some("127.0.0.1"));
        let client = if on_loopback {
            &self.http_loopback
        } else {
            &self.http
        };
        match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => Outcome::Ok,
            Ok(resp) => Outcome::Fail(format!("http {}", resp.status().as_u16())),
            Err(e) if e.is_builder() => Outcome::Fail(format!("bad url: {}", innermost(&e))),
            Err(e) => Outcome::Fail(match find_io(&e) {
                Some(io) => io_detail(io),
                None => innermost(&e),
            }),
        }
    }

    async fn exec(
        &self,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        user: Option<&Identity>,
    ) -> Outcome {
        let Some((program, args)) = argv.split_first() else {
            return Outcome::Fail("empty command".into());
        };
        // One pipe for stdout and stderr, read for the last line to explain a failure.
        // CLOEXEC on both ends: children spawned concurrently must not inherit them.
        let (reader, writer) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return Outcome::Fail(format!("cannot create a pipe: {e}")),
        };
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return Outcome::Fail(format!("cannot create a pipe: {e}")),
        };
        let mut spec = ChildSpec::new(program)
            .args(args)
            .user(user.cloned())
            .stdout(Output::Fd(writer))
            .stderr(Output::Fd(writer2));
        spec.env = Env::Exactly(env.to_vec());
        // Our copies of the write end go with the spec, inside spawn.
        let spawned = match self.reaper.spawn(spec) {
            Ok(s) => s,
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        // From here on, however this future ends (done, timed out, dropped), nothing of the
        // probe survives: the guard SIGKILLs its process group, the reaper collects it.
        let _group = KillGroup(spawned.pid);
        let mut tail = Tail::default();
        let exit = tail.read_until_exit(reader, spawned.exit).await;
        match exit {
            Some(Exit::Code(0)) => Outcome::Ok,
            Some(Exit::Code(c)) => Outcome::Fail(tail.explain(format!("exit code {c}"))),
            Some(Exit::Signal(s)) => Outcome::Fail(format!(
                "killed by {}",
                Signal::try_from(s).map_or_else(|_| format!("signal {s}"), |s| s.as_str().into())
            )),
            None => Outcome::Fail("lost track of the probe command".into()),
        }
    }
}

/// Connects to `addr` (host:port), from [`PROBE_SOURCE`] when the host is 127.0.0.1.
async fn tcp_connect(addr: &str) -> io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        let attempt = if target.ip() == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((PROBE_SOURCE, 0).into())?;
            socket.connect(target).await
        } else {
            tokio::net::TcpStream::connect(target).await
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// SIGKILLs a probe's process group when dropped. The group is the child's own session,
/// made before `exec`; a group id is not reused while any member lives, and once the group
/// is empty `kill` only says ESRCH.
struct KillGroup(Pid);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.0.as_raw()), Signal::SIGKILL);
    }
}

/// The last bytes an exec probe wrote.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > EXEC_OUTPUT_TAIL {
            let cut = self.0.len() - EXEC_OUTPUT_TAIL;
            self.0.drain(..cut);
        }
    }

    /// Reads the output until the child exits, then what is left in the pipe without
    /// waiting: a background process of the probe may hold the pipe open forever.
    async fn read_until_exit(
        &mut self,
        reader: OwnedFd,
        mut exit: tokio::sync::oneshot::Receiver<Exit>,
    ) -> Option<Exit> {
        use tokio::io::AsyncReadExt;
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(reader) else {
            // Without the output we can still tell the exit status.
            return exit.await.ok();
        };
        let mut buf = [0u8; 1024];
        let mut open = true;
        let exit = loop {
            tokio::select! {
                e = &mut exit => break e.ok(),
                n = pipe.read(&mut buf), if open => match n {
                    Ok(0) | Err(_) => open = false,
                    Ok(n) => self.push(&buf[..n]),
                },
            }
        };
        // What is left, read straight from the (non-blocking) descriptor: tokio's
        // try_read only reads once the reactor has seen the pipe readable, and output
        // written just before the exit may not have been seen yet.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&pipe);
        while open {
            match nix::unistd::read(fd, &mut buf) {
                Ok(n) if n > 0 => self.push(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                _ => open = false,
            }
        }
        exit
    }

    /// `what`, followed by the last non-empty line of output when there is one.
    fn explain(&self, what: String) -> String {
        let text = String::from_utf8_lossy(&self.0);
        match text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(line) if line.chars().count() > EXEC_DETAIL_MAX => {
                let short: String = line.chars().take(EXEC_DETAIL_MAX).collect();
                format!("{what}: {short}…")
            }
            Some(line) => format!("{what}: {line}"),
            None => what,
        }
    }
}

/// Connects, runs `SELECT 1`, and says goodbye properly.
async fn postgres(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    database: &str,
    timeout: Duration,
) -> Outcome {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .dbname(database)
        .application_name("tandem healthcheck")
        .connect_timeout(timeout);
    if let Some(pw) = password {
        config.password(pw);
    }
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => return postgres_failure(&e, host, port),
    };
    // The connection is driven here rather than spawned, so a timeout that drops this
    // future closes the socket too.
    tokio::pin!(connection);
    let mut closed = false;
    let outcome = tokio::select! {
        r = client.simple_query("SELECT 1") => match r {
            Ok(_) => Outcome::Ok,
            Err(e) => postgres_failure(&e, host, port),
        },
        r = &mut connection => {
            closed = true;
            match r {
                Ok(()) => Outcome::Fail("the server closed the connection".into()),
                Err(e) => postgres_failure(&e, host, port),
            }
        }
    };
    // Dropping the client makes the connection send Terminate and finish.
    drop(client);
    if !closed {
        let _ = connection.await;
    }
    outcome
}

/// The server's own message for a database error, else the socket error in a few words.
fn postgres_failure(e: &tokio_postgres::Error, host: &str, port: u16) -> Outcome {
    if let Some(db) = e.as_db_error() {
        return classify_db_error(db.code(), db.message());
    }
    match find_io(e) {
        Some(io) if io.kind() == io::ErrorKind::NotFound && host.starts_with('/') => {
            Outcome::Fail(format!("no socket at {host}/.s.PGSQL.{port}"))
        }
        Some(io) => Outcome::Fail(io_detail(io)),
        // "invalid configuration" says less than its cause, "password missing".
        None => Outcome::Fail(innermost(e)),
    }
}

/// 57P03 (cannot connect now) is the server saying it is not ready yet: starting up, in
/// recovery, or a standby not accepting connections. Shutting down is the same code but
/// the opposite direction, so it is a failure. Everything else is the server's message.
fn classify_db_error(code: &SqlState, message: &str) -> Outcome {
    if *code != SqlState::CANNOT_CONNECT_NOW {
        return Outcome::Fail(message.to_string());
    }
    let short = message
        .strip_prefix("the database system is ")
        .unwrap_or(message)
        .to_string();
    if short.starts_with("shutting down") {
        Outcome::Fail(short)
    } else {
        Outcome::Starting(short)
    }
}

/// The first `io::Error` in an error's chain of sources.
fn find_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// The deepest cause's message: the outer layers of reqwest/hyper errors only say "error
/// sending request".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The OS's words for an I/O error, without the "(os error N)" suffix and in lower case:
/// "connection refused", "network is unreachable".
fn io_detail(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::TimedOut {
        return "timed out".into();
    }
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests;
