//! Everything before the real server starts: directories and their owner on every start,
//! and on the first start the official image's initialisation (initdb, pg_hba.conf, a
//! temporary socket-only server, POSTGRES_DB, /docker-entrypoint-initdb.d).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};
use tokio::sync::oneshot;

use crate::logs;
use crate::runtime::process::{self, ChildSetup, Reaper, Spawned};
use crate::supervisor::Exit;

use super::{ready, Binaries, Settings};

/// The pid of the child `prepare` is waiting for, so that a stop signal arriving during
/// initialisation can be sent to that child's process group.
pub type ChildSlot = Arc<Mutex<Option<Pid>>>;

/// Created in PGDATA right after initdb succeeds, removed when initialisation is complete: if
/// it is there at start, a first start died half way.
pub const INIT_MARKER: &str = "tandem-init.incomplete";

/// How long the temporary server may take to create POSTGRES_DB before we give up.
const CREATE_DB_TIMEOUT: Duration = Duration::from_secs(60);

/// Prepares PGDATA on every start; initialises it on the first. See the module doc.
pub async fn prepare(
    settings: &Settings,
    bins: &Binaries,
    reaper: &Reaper,
    child_slot: &ChildSlot,
) -> Result<(), String> {
    prepare_dirs(settings)?;

    let data = &settings.data_dir;
    let marker = data.join(INIT_MARKER);
    if is_initialised(data) {
        if marker.exists() {
            return Err(format!(
                "a previous first start of {} did not finish (initdb ran but the initialisation scripts or \
                 database creation did not complete, see {}); remove the directory's contents to initialise again",
                data.display(),
                marker.display()
            ));
        }
        tracing::info!(
            "PostgreSQL data directory {} already holds a database; skipping initialisation",
            data.display()
        );
        return Ok(());
    }
    check_password(settings)?;
    let ctx = Ctx {
        settings,
        bins,
        reaper,
        child_slot,
    };
    ctx.first_start().await
}

/// PG_VERSION present and not empty, the official image's test.
fn is_initialised(data: &Path) -> bool {
    std::fs::metadata(data.join("PG_VERSION")).is_ok_and(|m| m.len() > 0)
}

/// The official image refuses to create a superuser without a password unless told to trust.
fn check_password(settings: &Settings) -> Result<(), String> {
    let trust = settings.host_auth_method == "trust";
    if settings.password.is_none() && !trust {
        return Err(format!(
            "PGDATA {} is not initialised and POSTGRES_PASSWORD is not set: set POSTGRES_PASSWORD (or \
             POSTGRES_PASSWORD_FILE) to a non-empty superuser password, or set POSTGRES_HOST_AUTH_METHOD=trust \
             to allow all connections without a password (not recommended)",
            settings.data_dir.display()
        ));
    }
    if trust {
        tracing::warn!(
            "POSTGRES_HOST_AUTH_METHOD=trust: ANYONE who can reach port {} can connect as any user WITHOUT A \
             PASSWORD, even if POSTGRES_PASSWORD is set; use it only for local testing",
            settings.port
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Directories and ownership

/// Whose the directories must be, and whether we may change them.
struct Owner {
    uid: Uid,
    gid: Option<Gid>,
    name: String,
    /// tandem is root and may chown.
    fix: bool,
}

impl Owner {
    fn of(settings: &Settings) -> Owner {
        match &settings.os_user {
            Some(i) if Uid::effective().is_root() => Owner {
                uid: i.uid,
                gid: Some(i.gid),
                name: i.name.clone(),
                fix: true,
            },
            _ => Owner {
                uid: Uid::effective(),
                gid: None,
                name: nix::unistd::User::from_uid(Uid::effective())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| "tandem's user".into()),
                fix: false,
            },
        }
    }
}

/// Creates PGDATA (0700), the socket directory (3775) and the WAL directory, and makes sure
/// PostgreSQL's user owns everything in them, as the official entrypoint does on every start.
fn prepare_dirs(settings: &Settings) -> Result<(), String> {
    let owner = Owner::of(settings);
    make_dir(&settings.data_dir, 0o700, "PGDATA", &owner)?;
    make_dir(&settings.socket_dir, 0o3775, "the socket directory", &owner)?;
    if let Some(wal) = &settings.waldir {
        make_dir(wal, 0o700, "POSTGRES_INITDB_WALDIR", &owner)?;
    }
    Ok(())
}

fn make_dir(dir: &Path, mode: u32, what: &str, owner: &Owner) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{what} {} exists and is not a directory",
                dir.display()
            ))
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode & 0o777)
            .create(dir)
            .map_err(|e| format!("cannot create {what} {}: {e}", dir.display()))?,
    }
    if owner.fix {
        chown_tree(dir, what, owner)?;
    } else {
        check_owner(dir, what, owner)?;
    }
    // Like the official image's `chmod ... || :`: a directory we may not chmod (a mount
    // point, say) is left for PostgreSQL to judge.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    Ok(())
}

/// Not root: we cannot change owners, so a directory owned by someone else is an error now
/// rather than a PostgreSQL failure later.
fn check_owner(dir: &Path, what: &str, owner: &Owner) -> Result<(), String> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect {what} {}: {e}", dir.display()))?;
    if meta.uid() != owner.uid.as_raw() {
        return Err(format!(
            "{what} {} is owned by uid {}, not {} (uid {}), and cannot be changed: tandem is not root; \
             chown it to uid {} (on the host or in the image) or run the container as uid {}",
            dir.display(),
            meta.uid(),
            owner.name,
            owner.uid,
            owner.uid,
            meta.uid()
        ));
    }
    Ok(())
}

/// Gives `root` and everything below it not already owned by `owner` to `owner`, without
/// following symbolic links (the official image's `find \! -user postgres -exec chown`).
fn chown_tree(root: &Path, what: &str, owner: &Owner) -> Result<(), String> {
    let fail = |path: &Path, found: u32, e: &dyn std::fmt::Display| {
        let inside = if path == root {
            String::new()
        } else {
            format!(" ({} inside it)", path.display())
        };
        format!(
            "{what} {}{inside} is owned by uid {found}, not {} (uid {}), and cannot be changed: {e}; \
             chown it to uid {} on the host, or use a volume whose files tandem may chown",
            root.display(),
            owner.name,
            owner.uid,
            owner.uid
        )
    };
    // The root itself is followed if it is a symbolic link, as `chown` on it would.
    let meta = std::fs::metadata(root)
        .map_err(|e| format!("cannot inspect {what} {}: {e}", root.display()))?;
    if meta.uid() != owner.uid.as_raw() {
        std::os::unix::fs::chown(
            root,
            Some(owner.uid.as_raw()),
            owner.gid.map(|g| g.as_raw()),
        )
        .map_err(|e| fail(root, meta.uid(), &e))?;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path)
                .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
            if m.uid() != owner.uid.as_raw() {
                std::os::unix::fs::lchown(&path, Some(owner.uid.as_raw()), None)
                    .map_err(|e| fail(&path, m.uid(), &e))?;
            }
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// First start

struct Ctx<'a> {
    settings: &'a Settings,
    bins: &'a Binaries,
    reaper: &'a Reaper,
    child_slot: &'a ChildSlot,
}

/// The temporary server, stopped with SIGINT if `prepare` is dropped before stopping it.
struct TempServer {
    pid: Pid,
    exit: Option<oneshot::Receiver<Exit>>,
}

impl Drop for TempServer {
    fn drop(&mut self) {
        if self.exit.is_some() {
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGINT);
        }
    }
}

impl Ctx<'_> {
    async fn first_start(&self) -> Result<(), String> {
        let s = self.settings;
        let data = &s.data_dir;
        tracing::info!(
            "initialising PostgreSQL data directory {} (first start)",
            data.display()
        );

        let started = Instant::now();
        self.initdb().await?;
        tracing::info!("initdb done in {} ms", started.elapsed().as_millis());
        let marker = data.join(INIT_MARKER);
        self.write_owned(
            &marker,
            b"tandem started initialising this directory and did not finish; remove the directory's contents to start over\n",
        )?;
        let method = &s.host_auth_method;
        let hba_comment = if method == "trust" {
            "# warning trust is enabled for all connections\n"
        } else {
            ""
        };
        self.append(
            &data.join("pg_hba.conf"),
            &format!("\n{hba_comment}host all all all {method}\n"),
        )?;
        self.append(&data.join("postgresql.conf"), "\nlisten_addresses = '*'\n")?;

        let phase = Instant::now();
        let mut server = self.start_temp_server().await?;
        tracing::info!(
            "temporary server ready in {} ms",
            phase.elapsed().as_millis()
        );
        let work = async {
            self.create_database().await?;
            self.run_init_scripts().await
        }
        .await;
        let stopped = self.stop_temp_server(&mut server).await;
        work?;
        stopped?;
        std::fs::remove_file(&marker)
            .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
        tracing::info!(
            "PostgreSQL init process complete in {} ms (temporary server phase {} ms); ready for start up",
            started.elapsed().as_millis(),
            phase.elapsed().as_millis()
        );
        Ok(())
    }

    fn setup(&self, new_session: bool) -> ChildSetup {
        ChildSetup {
            identity: self.settings.os_user.clone(),
            new_session,
        }
    }

    /// Runs initdb with the password in a private file, never in argv.
    async fn initdb(&self) -> Result<(), String> {
        let s = self.settings;
        let mut cmd = Command::new(self.bins.program("initdb"));
        cmd.arg("-D")
            .arg(&s.data_dir)
            .arg(format!("--username={}", s.user));
        let pwfile = match &s.password {
            Some(pw) => Some(PwFile::create(
                pw,
                s.os_user.as_ref().map(|i| (i.uid, i.gid)),
            )?),
            None => None,
        };
        if let Some(f) = &pwfile {
            let mut arg = OsString::from("--pwfile=");
            arg.push(f.file.as_os_str());
            cmd.arg(arg);
        }
        if let Some(wal) = &s.waldir {
            let mut arg = OsString::from("--waldir=");
            arg.push(wal.as_os_str());
            cmd.arg(arg);
        }
        // Last, so the user's arguments win over ours as they do in the official image.
        cmd.args(&s.initdb_args);
        let exit = self.run(&mut cmd, "initdb", None).await;
        drop(pwfile);
        match exit? {
            e if e.success() => Ok(()),
            e => Err(format!(
                "initdb {e} while initialising {}; see its output above",
                s.data_dir.display()
            )),
        }
    }

    /// Starts the server on the Unix socket only and waits until it is ready.
    async fn start_temp_server(&self) -> Result<TempServer, String> {
        let s = self.settings;
        let mut cmd = Command::new(self.bins.program("postgres"));
        cmd.arg("-D")
            .arg(&s.data_dir)
            .arg("-c")
            .arg("listen_addresses=")
            .arg("-p")
            .arg(s.port.to_string())
            .arg("-k")
            .arg(&s.socket_dir);
        let spawned = self.spawn(&mut cmd, None, true)?;
        let pid = spawned.pid;
        self.set_slot(Some(pid));
        let mut exit = spawned.exit;
        let result = tokio::select! {
            r = ready::wait_ready(s, pid) => r,
            e = &mut exit => Err(match e {
                Ok(e) => format!("the temporary PostgreSQL server {e} before it was ready; see its output above"),
                Err(_) => "lost track of the temporary PostgreSQL server".into(),
            }),
        };
        let mut server = TempServer {
            pid,
            exit: Some(exit),
        };
        if let Err(e) = result {
            // Still running (readiness itself failed) or already gone: stop it either way.
            let _ = self.stop_temp_server(&mut server).await;
            return Err(e);
        }
        Ok(server)
    }

    /// Fast shutdown (SIGINT) and wait; the slot keeps the pid so a stop signal still reaches it.
    async fn stop_temp_server(&self, server: &mut TempServer) -> Result<(), String> {
        let Some(exit) = server.exit.take() else {
            return Ok(());
        };
        self.set_slot(Some(server.pid));
        let _ = nix::sys::signal::kill(server.pid, Signal::SIGINT);
        let result = exit.await;
        self.set_slot(None);
        match result {
            Ok(e) if e.success() => Ok(()),
            Ok(e) => Err(format!(
                "the temporary PostgreSQL server {e} while stopping"
            )),
            Err(_) => Err("lost track of the temporary PostgreSQL server".into()),
        }
    }

    /// CREATE DATABASE POSTGRES_DB unless it exists (it may be `postgres`).
    async fn create_database(&self) -> Result<(), String> {
        let s = self.settings;
        let fail = |e: tokio_postgres::Error| {
            format!("cannot create database {:?}: {}", s.database, db_error(&e))
        };
        let (client, connection) = ready::config(s, "postgres", CREATE_DB_TIMEOUT)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(fail)?;
        let conn = tokio::spawn(connection);
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&s.database],
            )
            .await
            .map_err(fail)?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&s.database)))
                .await
                .map_err(fail)?;
            tracing::info!("created database {:?}", s.database);
        }
        drop(client);
        let _ = conn.await;
        Ok(())
    }

    /// Runs the first-start scripts in sorted order, as the official image does.
    async fn run_init_scripts(&self) -> Result<(), String> {
        let dir = &self.settings.initdb_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            // A shell glob `*` skips hidden files.
            if !entry.file_name().as_encoded_bytes().starts_with(b".") {
                files.push(entry.path());
            }
        }
        files.sort();
        for file in files {
            self.run_init_file(&file).await?;
        }
        Ok(())
    }

    async fn run_init_file(&self, file: &Path) -> Result<(), String> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = std::fs::metadata(file)
            .map_err(|e| format!("cannot inspect {}: {e}", file.display()))?;
        let decompressor = [(".sql.gz", "gzip"), (".sql.xz", "xz"), (".sql.zst", "zstd")]
            .into_iter()
            .find(|(ext, _)| name.ends_with(ext))
            .map(|(_, prog)| prog);
        let kind = if meta.is_dir() {
            None
        } else if name.ends_with(".sh") {
            Some("sh")
        } else if name.ends_with(".sql") || decompressor.is_some() {
            Some("sql")
        } else {
            None
        };
        let Some(kind) = kind else {
            tracing::info!("ignoring {}", file.display());
            return Ok(());
        };
        tracing::info!("running {}", file.display());
        let started = Instant::now();
        let fail = |what: &str, e: Exit| {
            format!(
                "initialisation script {} failed: {what} {e}",
                file.display()
            )
        };
        if kind == "sh" {
            let mut cmd = if meta.permissions().mode() & 0o111 != 0 {
                Command::new(file)
            } else {
                let mut c = Command::new("bash");
                c.arg(file);
                c
            };
            self.script_env(&mut cmd);
            let e = self.run(&mut cmd, &name, None).await?;
            if !e.success() {
                return Err(fail(&name, e));
            }
        } else {
            let mut psql = self.psql();
            match decompressor {
                None => {
                    psql.arg("-f").arg(file);
                    let e = self.run(&mut psql, "psql", None).await?;
                    if !e.success() {
                        return Err(fail("psql", e));
                    }
                }
                Some(prog) => {
                    let mut dec = Command::new(prog);
                    dec.arg("-dc").arg(file);
                    self.script_env(&mut dec);
                    let mut dec = self.spawn(&mut dec, None, false)?;
                    let out = dec.child.stdout.take().map(Stdio::from);
                    // psql is the one to signal: when it dies, the decompressor gets SIGPIPE.
                    let psql_exit = self.run(&mut psql, "psql", out).await;
                    let dec_exit = dec.exit.await.map_err(|_| format!("lost track of {prog}"));
                    let psql_exit = psql_exit?;
                    if !psql_exit.success() {
                        return Err(fail("psql", psql_exit));
                    }
                    let dec_exit = dec_exit?;
                    if !dec_exit.success() {
                        return Err(fail(prog, dec_exit));
                    }
                }
            }
        }
        tracing::info!(
            "{} done in {} ms",
            file.display(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// psql into POSTGRES_DB as POSTGRES_USER over the socket, stopping at the first error.
    fn psql(&self) -> Command {
        let s = self.settings;
        let mut cmd = Command::new(self.bins.program("psql"));
        cmd.args(["-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password"])
            .arg("--username")
            .arg(&s.user)
            .arg("--dbname")
            .arg(&s.database);
        self.script_env(&mut cmd);
        cmd
    }

    /// The environment scripts written for the official image expect, pointing at the
    /// temporary server's socket.
    fn script_env(&self, cmd: &mut Command) {
        let s = self.settings;
        let mut env: HashMap<&str, OsString> = HashMap::from([
            ("POSTGRES_USER", s.user.clone().into()),
            ("POSTGRES_DB", s.database.clone().into()),
            ("PGDATA", s.data_dir.clone().into()),
            ("PGPORT", s.port.to_string().into()),
            ("PGHOST", s.socket_dir.clone().into()),
            ("PGUSER", s.user.clone().into()),
        ]);
        if let Some(pw) = &s.password {
            env.insert("POSTGRES_PASSWORD", pw.into());
            env.insert("PGPASSWORD", pw.into());
        }
        // These would send psql somewhere other than the temporary server.
        cmd.env_remove("PGHOSTADDR")
            .env_remove("PGSERVICE")
            .env_remove("PGDATABASE");
        cmd.envs(env);
    }

    /// Spawns `cmd` as PostgreSQL's user in its own session, stdin from `stdin` (default
    /// nothing), its stderr and, with `log_stdout`, its stdout prefixed `postgres | `.
    fn spawn(
        &self,
        cmd: &mut Command,
        stdin: Option<Stdio>,
        log_stdout: bool,
    ) -> Result<Spawned, String> {
        cmd.stdin(stdin.unwrap_or_else(Stdio::null))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/");
        process::prepare(cmd, &self.setup(true));
        let mut spawned = self.reaper.spawn(cmd).map_err(|e| e.to_string())?;
        if let Some(err) = spawned.child.stderr.take() {
            logs::pump("postgres".into(), logs::Stream::Stderr, OwnedFd::from(err));
        }
        if log_stdout {
            logs::pump_child("postgres", &mut spawned.child);
        }
        Ok(spawned)
    }

    /// Spawns `cmd`, records it in the slot while waiting, and returns how it ended. A
    /// child killed by a signal is an error: during initialisation that means we are being
    /// stopped.
    async fn run(
        &self,
        cmd: &mut Command,
        what: &str,
        stdin: Option<Stdio>,
    ) -> Result<Exit, String> {
        let spawned = self.spawn(cmd, stdin, true)?;
        self.set_slot(Some(spawned.pid));
        let exit = spawned.exit.await;
        self.set_slot(None);
        match exit {
            Ok(Exit::Signal(sig)) => Err(format!(
                "{what} was {} during initialisation",
                Exit::Signal(sig)
            )),
            Ok(e) => Ok(e),
            Err(_) => Err(format!("lost track of {what}")),
        }
    }

    fn set_slot(&self, pid: Option<Pid>) {
        *self.child_slot.lock().unwrap_or_else(|p| p.into_inner()) = pid;
    }

    /// Appends to a configuration file initdb wrote (and PostgreSQL's user owns).
    fn append(&self, path: &Path, text: &str) -> Result<(), String> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot append to {}: {e}", path.display()))
    }

    /// Writes a new file in PGDATA owned by PostgreSQL's user.
    fn write_owned(&self, path: &Path, contents: &[u8]) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        f.write_all(contents).map_err(fail)?;
        if let Some(i) = self
            .settings
            .os_user
            .as_ref()
            .filter(|_| Uid::effective().is_root())
        {
            std::os::unix::fs::fchown(&f, Some(i.uid.as_raw()), Some(i.gid.as_raw()))
                .map_err(fail)?;
        }
        Ok(())
    }
}

/// The superuser's password for `initdb --pwfile`: a 0600 file in a private 0700 directory,
/// both owned by PostgreSQL's user, removed on drop (also when initdb fails).
struct PwFile {
    dir: PathBuf,
    file: PathBuf,
}

impl PwFile {
    fn create(password: &str, owner: Option<(Uid, Gid)>) -> Result<PwFile, String> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("tandem-initdb-{}-{nanos}", std::process::id()));
        // Not recursive: an existing path (someone else's, or a symbolic link) is an error.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                format!(
                    "cannot create a private directory {} for initdb's password file: {e}",
                    dir.display()
                )
            })?;
        let pw = PwFile {
            file: dir.join("pwfile"),
            dir,
        };
        let fail = |e: std::io::Error| {
            format!(
                "cannot write initdb's password file {}: {e}",
                pw.file.display()
            )
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pw.file)
            .map_err(fail)?;
        f.write_all(format!("{password}\n").as_bytes())
            .map_err(fail)?;
        if let Some((uid, gid)) = owner.filter(|_| Uid::effective().is_root()) {
            std::os::unix::fs::fchown(&f, Some(uid.as_raw()), Some(gid.as_raw())).map_err(fail)?;
            std::os::unix::fs::chown(&pw.dir, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(fail)?;
        }
        Ok(pw)
    }
}

impl Drop for PwFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `name` as an SQL identifier: in double quotes, inner double quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The server's message when there is one (tokio-postgres' Display says only "db error").
pub(crate) fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
