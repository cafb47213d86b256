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
use std::sync::atomic::{AtomicI32, Ordering};
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
        resting: AtomicI32::new(0),
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
    if settings.user.contains(['"', '$', '\'', '\\']) {
        // initdb makes the superuser own the plpgsql extension, and PostgreSQL refuses
        // extension owners with these characters (since the 2022 security releases).
        return Err(format!(
            "POSTGRES_USER {:?} contains one of \" $ ' \\, which initdb refuses in the superuser's name; \
             choose a name without them",
            settings.user
        ));
    }
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
    make_dir(&settings.data_dir, 0o700, "PGDATA", &owner, false)?;
    make_dir(
        &settings.socket_dir,
        0o3775,
        "the socket directory",
        &owner,
        true,
    )?;
    if let Some(wal) = &settings.waldir {
        make_dir(wal, 0o700, "POSTGRES_INITDB_WALDIR", &owner, false)?;
    }
    Ok(())
}

/// `mkdir -p`, then the owner: as root, chown what is not the owner's; otherwise check it.
/// A `shared` directory (the socket's) need not be ours when we are not root, only writable,
/// as the official image's world-writable `/var/run/postgresql` is for arbitrary `--user`s.
fn make_dir(dir: &Path, mode: u32, what: &str, owner: &Owner, shared: bool) -> Result<(), String> {
    let create_fail = |e: std::io::Error| format!("cannot create {what} {}: {e}", dir.display());
    let mut created = false;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{what} {} exists and is not a directory",
                dir.display()
            ))
        }
        Err(_) => {
            // Parents get the usual 0755 so that PostgreSQL's user can reach the directory.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(create_fail)?;
            }
            match std::fs::DirBuilder::new().mode(mode & 0o777).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(create_fail(e))
                }
                Err(_) => {}
                Ok(()) => created = true,
            }
        }
    }
    if owner.fix && shared && !created && dir != Path::new(super::settings::DEFAULT_SOCKET_DIR) {
        // A socket directory the user chose and that already existed (TANDEM_PG_SOCKET_DIR):
        // never walk it or change its mode (it may be /tmp); only make sure PostgreSQL can
        // create its socket there, giving it the directory itself unless anyone may write.
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("cannot inspect {what} {}: {e}", dir.display()))?;
        if meta.mode() & 0o002 == 0 && meta.uid() != owner.uid.as_raw() {
            nix::unistd::chown(dir, Some(owner.uid), owner.gid).map_err(|e| {
                format!(
                    "cannot give {what} {} to {}: {e}",
                    dir.display(),
                    owner.name
                )
            })?;
        }
        return Ok(());
    }
    if owner.fix {
        chown_tree(dir, what, owner)?;
    } else if shared {
        use nix::unistd::{access, AccessFlags};
        if let Err(e) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            return Err(format!(
                "{what} {} is not writable by {} (uid {}): {}; make it writable (mode 3777, as the official \
                 image has it) or set TANDEM_PG_SOCKET_DIR",
                dir.display(),
                owner.name,
                owner.uid,
                std::io::Error::from(e)
            ));
        }
        return Ok(());
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
    /// What the slot holds when no short-lived child runs: the temporary server, or 0.
    resting: AtomicI32,
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
                "initdb {} while initialising {}; see its output above",
                ended(e),
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
        let mut server = TempServer {
            pid,
            exit: Some(spawned.exit),
        };
        let ready = match server.exit.as_mut() {
            Some(exit) => tokio::select! {
                r = ready::wait_ready(s, pid) => r,
                e = exit => {
                    server.exit = None;
                    self.set_slot(None);
                    return Err(match e {
                        Ok(e) => format!(
                            "the temporary PostgreSQL server {} before it was ready; see its output above",
                            ended(e)
                        ),
                        Err(_) => "lost track of the temporary PostgreSQL server".into(),
                    });
                }
            },
            None => Ok(()),
        };
        if let Err(e) = ready {
            let _ = self.stop_temp_server(&mut server).await;
            return Err(e);
        }
        // While no other child runs, a stop signal is for the server.
        self.resting.store(pid.as_raw(), Ordering::Relaxed);
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
        self.resting.store(0, Ordering::Relaxed);
        self.set_slot(None);
        match result {
            Ok(e) if e.success() => Ok(()),
            Ok(e) => Err(format!(
                "the temporary PostgreSQL server {} while stopping",
                ended(e)
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
                "initialisation script {} failed: {what} {}",
                file.display(),
                ended(e)
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
            // So that a bare `psql` lands where `psql --dbname "$POSTGRES_DB"` would.
            ("PGDATABASE", s.database.clone().into()),
        ]);
        if let Some(pw) = &s.password {
            env.insert("POSTGRES_PASSWORD", pw.into());
            env.insert("PGPASSWORD", pw.into());
        }
        // The official image puts the server's bin dir on PATH; scripts call `psql` bare.
        let mut path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        if !std::env::split_paths(&path).any(|p| p == self.bins.dir) {
            path.push(":");
            path.push(self.bins.dir.as_os_str());
        }
        env.insert("PATH", path);
        // These would send psql somewhere other than the temporary server.
        cmd.env_remove("PGHOSTADDR").env_remove("PGSERVICE");
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
        let resting = self.resting.load(Ordering::Relaxed);
        self.set_slot((resting != 0).then(|| Pid::from_raw(resting)));
        match exit {
            Ok(e @ Exit::Signal(_)) => Err(format!("{what} {} during initialisation", ended(e))),
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

/// How a child ended, as the end of a sentence: "exited with code 3", "was killed by SIGTERM".
fn ended(e: Exit) -> String {
    match e {
        Exit::Code(_) => e.to_string(),
        Exit::Signal(_) => format!("was {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::testutil::{self, TempDir};
    use crate::postgres::{app_env, locate_binaries, server_command, wait_ready};
    use crate::runtime::process::Identity;
    use std::os::unix::fs::symlink;
    use tokio::net::TcpSocket;

    fn env_for(root: &Path, pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("PGDATA".into(), root.join("data").display().to_string());
        env.insert("PGPORT".into(), testutil::port().to_string());
        env.insert(
            "TANDEM_PG_SOCKET_DIR".into(),
            root.join("sock").display().to_string(),
        );
        env.insert(
            "TANDEM_INITDB_DIR".into(),
            root.join("initdb.d").display().to_string(),
        );
        env
    }

    fn setup(env: &HashMap<String, String>) -> (Settings, Binaries) {
        let settings = Settings::from_env(env).unwrap();
        let path: HashMap<String, String> = std::env::vars().collect();
        let bins = locate_binaries(&settings, &path, &testutil::reaper()).unwrap();
        (settings, bins)
    }

    fn slot() -> ChildSlot {
        Arc::new(Mutex::new(None))
    }

    /// The real server, stopped with SIGINT when dropped even if an assertion failed.
    struct Server {
        pid: Pid,
        exit: Option<oneshot::Receiver<Exit>>,
    }

    impl Server {
        /// Returns the server and how long after spawn its pid file said ready, and the
        /// round trip confirmed it.
        async fn start(settings: &Settings, bins: &Binaries) -> (Server, Duration, Duration) {
            let mut cmd = server_command(settings, bins);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            process::prepare(
                &mut cmd,
                &ChildSetup {
                    identity: settings.os_user.clone(),
                    new_session: true,
                },
            );
            let started = Instant::now();
            let mut spawned = testutil::reaper().spawn(&mut cmd).unwrap();
            logs::pump_child("postgres", &mut spawned.child);
            let mut server = Server {
                pid: spawned.pid,
                exit: Some(spawned.exit),
            };
            let exit = server.exit.as_mut().unwrap();
            let pid_file = tokio::select! {
                r = ready::wait_pid_file(&settings.data_dir, spawned.pid) => { r.unwrap(); started.elapsed() }
                e = &mut *exit => panic!("server {e:?} before ready"),
            };
            tokio::select! {
                r = wait_ready(settings, spawned.pid) => r.unwrap(),
                e = exit => panic!("server {e:?} before ready"),
            }
            (server, pid_file, started.elapsed())
        }

        async fn stop(mut self) -> Exit {
            nix::sys::signal::kill(self.pid, Signal::SIGINT).unwrap();
            self.exit.take().unwrap().await.unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(mut exit) = self.exit.take() {
                let _ = nix::sys::signal::kill(self.pid, Signal::SIGINT);
                // The reaper runs on its own thread, so polling here cannot deadlock.
                for _ in 0..1000 {
                    if exit.try_recv().is_ok() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Connects over TCP from 127.0.0.2, which only the appended `host all all all` line
    /// matches (initdb's loopback line is 127.0.0.1/32 trust).
    async fn connect_tcp(
        settings: &Settings,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = socket
            .connect(([127, 0, 0, 1], settings.port).into())
            .await
            .unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .user(&settings.user)
            .dbname(&settings.database)
            .password(password);
        let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn write(path: &Path, contents: &[u8], mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn owners_under(dir: &Path) -> Vec<(PathBuf, u32)> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                out.push((p.clone(), m.uid()));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn first_start_initialises_like_the_official_image_then_skips() {
        if !Uid::effective().is_root() {
            testutil::skip("needs root to run PostgreSQL as the postgres user");
            return;
        }
        crate::logs::init(false);
        let root = TempDir::new("first");
        let scripts = root.path().join("initdb.d");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&scripts)
            .unwrap();
        write(
            &scripts.join("01-table.sql"),
            b"CREATE TABLE log (n serial, what text);\nINSERT INTO log (what) VALUES ('sql');\n",
            0o644,
        );
        write(
            &scripts.join("02-data.sql"),
            b"INSERT INTO log (what) VALUES ('gz');\n",
            0o644,
        );
        assert!(
            testutil::run(Command::new("gzip").arg(scripts.join("02-data.sql")))
                .await
                .success()
        );
        // Not executable: run with bash, like the official image sourcing it.
        write(
            &scripts.join("03-env.sh"),
            br#"set -e
[ "$PGPASSWORD" = "$POSTGRES_PASSWORD" ] && [ -n "$PGPASSWORD" ] && [ -d "$PGDATA" ] && [ -n "$PGPORT" ]
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<EOSQL
INSERT INTO log (what) VALUES ('sh:$(id -un)');
EOSQL
"#,
            0o644,
        );
        write(
            &scripts.join("04-exec.sh"),
            b"#!/bin/sh\nexec psql -v ON_ERROR_STOP=1 -c \"INSERT INTO log (what) VALUES ('exec:' || current_database())\"\n",
            0o755,
        );
        write(&scripts.join("05-notes.txt"), b"ignored\n", 0o644);
        write(&scripts.join(".hidden.sql"), b"THIS IS NOT SQL;\n", 0o644);

        // Spaces, as in the official image's tests; quotes are refused by initdb (see check_password).
        let user = "my cool user";
        let password = r#"pa ss"wörd:@/"#;
        let env = env_for(
            root.path(),
            &[
                ("POSTGRES_USER", user),
                ("POSTGRES_PASSWORD", password),
                ("POSTGRES_DB", r#"my "cool" db"#),
            ],
        );
        let (settings, bins) = setup(&env);
        let slot = slot();

        let t = Instant::now();
        prepare(&settings, &bins, &testutil::reaper(), &slot)
            .await
            .unwrap();
        let init_took = t.elapsed();
        assert_eq!(*slot.lock().unwrap(), None);
        let data = &settings.data_dir;
        assert!(!data.join(INIT_MARKER).exists());
        assert_eq!(
            std::fs::metadata(data).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&settings.socket_dir)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o3775
        );
        let pg_uid = settings.os_user.as_ref().unwrap().uid.as_raw();
        for (path, uid) in owners_under(data) {
            assert_eq!(uid, pg_uid, "{} not owned by postgres", path.display());
        }
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
        assert!(hba.ends_with("\nhost all all all scram-sha-256\n"), "{hba}");
        let conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        assert!(conf.ends_with("\nlisten_addresses = '*'\n"));

        let (server, pid_file, ready_took) = Server::start(&settings, &bins).await;
        eprintln!(
            "timings: first prepare {} ms; real server spawn to postmaster.pid ready {:.1} ms, to round trip done {:.1} ms",
            init_took.as_millis(),
            pid_file.as_secs_f64() * 1000.0,
            ready_took.as_secs_f64() * 1000.0
        );

        // Password authentication through the appended line: right and wrong password.
        let client = connect_tcp(&settings, password).await.unwrap();
        let rows = client
            .query("SELECT what FROM log ORDER BY n", &[])
            .await
            .unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(got, ["sql", "gz", "sh:postgres", r#"exec:my "cool" db"#]);
        let row = client
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            (user.to_string(), r#"my "cool" db"#.to_string())
        );
        drop(client);
        let Err(err) = connect_tcp(&settings, "wrong").await else {
            panic!("a wrong password must be refused");
        };
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{err:?}"
        );

        // The app's DATABASE_URL round-trips the names and password.
        let vars = app_env(&settings);
        let url = &vars.iter().find(|(k, _)| k == "DATABASE_URL").unwrap().1;
        assert!(!url.contains(' ') && !url.contains('"'), "{url}");
        let parsed: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(parsed.get_user(), Some(user));
        assert_eq!(parsed.get_password(), Some(password.as_bytes()));
        assert_eq!(parsed.get_dbname(), Some(r#"my "cool" db"#));
        let (client, connection) = parsed.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.unwrap();
        drop(client);

        assert_eq!(server.stop().await, Exit::Code(0));

        // Second start: nothing is initialised again.
        let t = Instant::now();
        prepare(&settings, &bins, &testutil::reaper(), &slot)
            .await
            .unwrap();
        eprintln!(
            "timings: second prepare {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        let (server, pid_file, ready_took) = Server::start(&settings, &bins).await;
        eprintln!(
            "timings: restart spawn to postmaster.pid ready {:.1} ms, to round trip done {:.1} ms",
            pid_file.as_secs_f64() * 1000.0,
            ready_took.as_secs_f64() * 1000.0
        );
        assert_eq!(server.stop().await, Exit::Code(0));

        // A file root left behind in PGDATA is given back to postgres on the next start.
        write(&data.join("stray"), b"", 0o600);
        prepare(&settings, &bins, &testutil::reaper(), &slot)
            .await
            .unwrap();
        assert_eq!(std::fs::metadata(data.join("stray")).unwrap().uid(), pg_uid);

        // A marker left by a half-finished first start stops us.
        write(&data.join(INIT_MARKER), b"", 0o600);
        let err = prepare(&settings, &bins, &testutil::reaper(), &slot)
            .await
            .unwrap_err();
        assert!(
            err.starts_with(&format!(
                "a previous first start of {} did not finish",
                data.display()
            )),
            "{err}"
        );
        assert!(
            err.contains("remove the directory's contents to initialise again"),
            "{err}"
        );
    }

    /// Where the time goes between spawn and ready; run with
    /// `cargo test --lib readiness_timings -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn readiness_timings() {
        let root = TempDir::new("bench");
        let env = env_for(root.path(), &[("POSTGRES_PASSWORD", "pw")]);
        let (settings, bins) = setup(&env);
        prepare(&settings, &bins, &testutil::reaper(), &slot())
            .await
            .unwrap();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        for _ in 0..8 {
            let (server, pid_file, ready) = Server::start(&settings, &bins).await;
            let t = Instant::now();
            ready::connect(&settings, &settings.database, Duration::from_secs(5))
                .await
                .unwrap();
            let warm = t.elapsed();
            eprintln!(
                "spawn->pid file ready {:.1} ms, ->round trip done {:.1} ms (round trip {:.1} ms; a second one {:.1} ms)",
                ms(pid_file),
                ms(ready),
                ms(ready - pid_file),
                ms(warm)
            );
            assert_eq!(server.stop().await, Exit::Code(0));
        }
    }

    #[tokio::test]
    async fn failing_script_stops_the_temp_server_and_blocks_the_next_start() {
        if !Uid::effective().is_root() {
            testutil::skip("needs root to run PostgreSQL as the postgres user");
            return;
        }
        let root = TempDir::new("failing");
        let scripts = root.path().join("initdb.d");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&scripts)
            .unwrap();
        write(&scripts.join("01-ok.sql"), b"SELECT 1;\n", 0o644);
        write(
            &scripts.join("02-bad.sql"),
            b"SELECT no_such_column;\n",
            0o644,
        );
        write(
            &scripts.join("03-never.sh"),
            b"touch /tmp/should-not-run\n",
            0o644,
        );
        // Trust without a password: no --pwfile, and the warning instead of the error.
        let env = env_for(root.path(), &[("POSTGRES_HOST_AUTH_METHOD", "trust")]);
        let (settings, bins) = setup(&env);
        let slot = slot();
        let err = prepare(&settings, &bins, &testutil::reaper(), &slot)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "initialisation script {} failed: psql exited with code 3",
                scripts.join("02-bad.sql").display()
            )
        );
        assert_eq!(*slot.lock().unwrap(), None);
        let data = &settings.data_dir;
        // Stopped cleanly: a postmaster removes its pid file on the way out.
        assert!(!data.join("postmaster.pid").exists());
        assert!(data.join(INIT_MARKER).exists());
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
        assert!(
            hba.ends_with(
                "# warning trust is enabled for all connections\nhost all all all trust\n"
            ),
            "{hba}"
        );
        let err = prepare(&settings, &bins, &testutil::reaper(), &slot)
            .await
            .unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
    }

    #[tokio::test]
    async fn missing_password_is_refused_before_initdb() {
        let root = TempDir::new("nopw");
        let env = env_for(root.path(), &[]);
        let (settings, bins) = setup(&env);
        let err = prepare(&settings, &bins, &testutil::reaper(), &slot())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "PGDATA {} is not initialised and POSTGRES_PASSWORD is not set: set POSTGRES_PASSWORD (or \
                 POSTGRES_PASSWORD_FILE) to a non-empty superuser password, or set POSTGRES_HOST_AUTH_METHOD=trust \
                 to allow all connections without a password (not recommended)",
                settings.data_dir.display()
            )
        );
        assert_eq!(
            std::fs::read_dir(&settings.data_dir).unwrap().count(),
            0,
            "initdb must not have run"
        );
    }

    #[test]
    fn password_file_is_private_and_removed() {
        let owner = Identity::lookup("postgres").ok().map(|i| (i.uid, i.gid));
        let pw = PwFile::create("se cret", owner).unwrap();
        let meta = std::fs::metadata(&pw.file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&pw.dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        if let (Some((uid, _)), true) = (owner, Uid::effective().is_root()) {
            assert_eq!(meta.uid(), uid.as_raw());
        }
        assert_eq!(std::fs::read_to_string(&pw.file).unwrap(), "se cret\n");
        let dir = pw.dir.clone();
        drop(pw);
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn double_quote_in_the_superuser_name_is_refused_before_initdb() {
        let root = TempDir::new("dquote");
        let env = env_for(
            root.path(),
            &[("POSTGRES_USER", r#"a"b"#), ("POSTGRES_PASSWORD", "x")],
        );
        let (settings, bins) = setup(&env);
        let err = prepare(&settings, &bins, &testutil::reaper(), &slot())
            .await
            .unwrap_err();
        assert!(
            err.starts_with(r#"POSTGRES_USER "a\"b" contains one of " $ ' \, which initdb"#),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&settings.data_dir).unwrap().count(), 0);
    }

    /// The runtime may `tokio::spawn` these futures, so they must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(s: &Settings, b: &Binaries, r: &Reaper, c: &ChildSlot) {
        fn send<T: Send>(_: T) {}
        send(prepare(s, b, r, c));
        send(wait_ready(s, Pid::from_raw(1)));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident(r#"my "cool" db"#), r#""my ""cool"" db""#);
    }

    #[test]
    fn not_root_a_directory_owned_by_someone_else_is_an_error() {
        if !Uid::effective().is_root() {
            return;
        }
        let root = TempDir::new("owner");
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(12345), None).unwrap();
        let owner = Owner {
            uid: Uid::from_raw(0),
            gid: None,
            name: "root".into(),
            fix: false,
        };
        let err = make_dir(&dir, 0o700, "PGDATA", &owner, false).unwrap_err();
        assert_eq!(
            err,
            format!(
                "PGDATA {} is owned by uid 12345, not root (uid 0), and cannot be changed: tandem is not root; \
                 chown it to uid 0 (on the host or in the image) or run the container as uid 12345",
                dir.display()
            )
        );
    }

    #[tokio::test]
    async fn as_root_ownership_is_fixed_without_following_links_and_failure_is_reported() {
        let Some(pg) = Identity::lookup("postgres")
            .ok()
            .filter(|_| Uid::effective().is_root())
        else {
            return;
        };
        let root = TempDir::new("chown");
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        write(&dir.join("sub/file"), b"", 0o600);
        let outside = root.path().join("outside");
        write(&outside, b"", 0o600);
        symlink(&outside, dir.join("link")).unwrap();
        let owner = Owner {
            uid: pg.uid,
            gid: Some(pg.gid),
            name: pg.name.clone(),
            fix: true,
        };
        make_dir(&dir, 0o700, "PGDATA", &owner, false).unwrap();
        for (path, uid) in owners_under(&dir) {
            assert_eq!(uid, pg.uid.as_raw(), "{}", path.display());
        }
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "the link was followed"
        );

        // An immutable file cannot be chowned even by root: the honest way to make chown fail.
        let stuck = dir.join("sub/stuck");
        write(&stuck, b"", 0o600);
        let exit = testutil::run(
            Command::new("chattr")
                .arg("+i")
                .arg(&stuck)
                .stderr(Stdio::null()),
        )
        .await;
        if !exit.success() {
            testutil::skip("the chown failure case: chattr +i is not supported here");
            return;
        }
        struct Unfreeze(PathBuf);
        impl Drop for Unfreeze {
            fn drop(&mut self) {
                // Best effort outside the reaper: the test is over either way.
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unfreeze = Unfreeze(stuck.clone());
        let err = make_dir(&dir, 0o700, "PGDATA", &owner, false).unwrap_err();
        assert_eq!(
            err,
            format!(
                "PGDATA {} ({} inside it) is owned by uid 0, not postgres (uid {}), and cannot be changed: \
                 Operation not permitted (os error 1); chown it to uid {} on the host, or use a volume whose \
                 files tandem may chown",
                dir.display(),
                stuck.display(),
                pg.uid,
                pg.uid
            )
        );
    }
}
