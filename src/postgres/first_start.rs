//! The first start of an empty PGDATA, as the official image does it (initdb, pg_hba.conf,
//! a temporary socket-only server, POSTGRES_DB, /docker-entrypoint-initdb.d), made safe
//! against a stop or a kill at any moment.
//!
//! initdb refuses a directory that holds anything, so the record that a first start has
//! begun cannot sit in PGDATA beside it. Instead the whole first start happens one level
//! down, in `PGDATA/.tandem-first-start/data`, and only its very last step moves the files
//! up into PGDATA (`PG_VERSION` last, the marker removed after it). At the next start:
//!
//! | found                                     | means                          | then               |
//! |-------------------------------------------|--------------------------------|--------------------|
//! | `.tandem-upgrade`                         | an upgrade was under way       | see [`super::upgrade`] |
//! | `PG_VERSION`, no marker                   | initialised                    | serve it (an older major: upgrade or refuse) |
//! | marker with `failed`                      | initdb or a script failed      | refuse, say why    |
//! | marker and `PG_VERSION`                   | killed after the last move     | finish, serve it   |
//! | marker, no `PG_VERSION`                   | stopped or killed half way     | remove, start over |
//! | nothing (but `lost+found`, hidden files)  | empty                          | first start        |
//! | other files, no `PG_VERSION`              | not a database                 | refuse             |
//!
//! The superuser's password reaches initdb through a pipe (`--pwfile=/dev/stdin`): it is
//! never in a file, so nothing of it can outlive a kill.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Uid;

use super::steps::{SetupError, Steps};
use super::upgrade::{self, Resumed, UPGRADE_DIR};
use super::{dirs, ready, Binaries, Settings};
use crate::process::{ChildSpec, Stdin};
use crate::supervisor::StepKind;

/// The first start's own directory inside PGDATA; while it exists, PGDATA is not served.
pub const FIRST_START_DIR: &str = ".tandem-first-start";
/// Inside it: written when a step failed, with the reason.
const FAILED: &str = "failed";
/// Inside it: the cluster while it is being made.
const STAGING: &str = "data";
/// What an older tandem left in PGDATA during its first start (it is refused the same way).
pub const LEGACY_MARKER: &str = "tandem-init.incomplete";

/// How long initdb may take (about a second here; a slow disk is allowed much more).
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the temporary server may take to accept connections (pg_ctl's own default).
const TEMP_SERVER_READY: Duration = Duration::from_secs(60);
/// How long the temporary server may take to create POSTGRES_DB before we give up.
const CREATE_DB_TIMEOUT: Duration = Duration::from_secs(60);

/// What a start finds in PGDATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    Initialised,
    /// An upgrade's directory is there: it was under way, or its old files were kept.
    Upgrade,
    Empty,
    /// A first start was stopped or killed before it finished.
    Interrupted,
    /// A first start failed, for this reason.
    Failed(String),
    /// A first start was killed after it had moved every file into place.
    Moved,
    /// An older tandem's first start did not finish.
    Legacy,
    /// Files that are not a database (their names, a few).
    Foreign(Vec<String>),
}

/// Looks at PGDATA without changing anything.
pub fn inspect(data: &Path) -> Result<DataDir, String> {
    let has_version = std::fs::metadata(data.join("PG_VERSION")).is_ok_and(|m| m.len() > 0);
    let marker = data.join(FIRST_START_DIR);
    if data.join(LEGACY_MARKER).exists() {
        return Ok(DataDir::Legacy);
    }
    if data.join(UPGRADE_DIR).is_dir() {
        return Ok(DataDir::Upgrade);
    }
    if marker.is_dir() {
        if let Ok(reason) = std::fs::read_to_string(marker.join(FAILED)) {
            return Ok(DataDir::Failed(reason.trim().to_string()));
        }
        return Ok(if has_version {
            DataDir::Moved
        } else {
            DataDir::Interrupted
        });
    }
    if has_version {
        return Ok(DataDir::Initialised);
    }
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(data).map_err(|e| format!("cannot list {}: {e}", data.display()))?
    {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", data.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_left_alone(&name) {
            found.push(name);
        }
    }
    found.sort();
    Ok(if found.is_empty() {
        DataDir::Empty
    } else {
        DataDir::Foreign(found)
    })
}

/// What a first start never creates and never removes in PGDATA: hidden files and a mount
/// point's `lost+found`.
fn is_left_alone(name: &str) -> bool {
    name.starts_with('.') || name == "lost+found"
}

/// What a prepared PGDATA needs from the start that follows.
#[derive(Debug, Default)]
pub struct Prepared {
    /// It held a database already (no first start): the stored password may have drifted.
    pub existing: bool,
    /// An upgrade put a new cluster in place: clean up once its server is ready.
    pub upgrade: Option<upgrade::Finish>,
}

/// Prepares PGDATA on every start; initialises it on the first, upgrades it when an older
/// major made it and the upgrade is enabled. See the module doc.
pub async fn prepare(
    settings: &Settings,
    bins: &Binaries,
    steps: &Steps,
) -> Result<Prepared, SetupError> {
    dirs::prepare_dirs(settings)?;
    let data = &settings.data_dir;
    let existing = Prepared {
        existing: true,
        upgrade: None,
    };
    match inspect(data)? {
        DataDir::Upgrade => match upgrade::resume(settings)? {
            Resumed::Forward(finish) => {
                // Finished with other binaries than the upgrade's own (a downgrade, say):
                // said here rather than by the server.
                check_version(data, bins, false)?;
                Ok(Prepared {
                    existing: true,
                    upgrade: Some(finish),
                })
            }
            Resumed::RolledBack | Resumed::Done => initialised(settings, bins, steps).await,
        },
        DataDir::Initialised => initialised(settings, bins, steps).await,
        DataDir::Moved => {
            remove_marker(data)?;
            tracing::info!(
                "the previous first start of {} had put every file in place when it was cut short; completed it",
                data.display()
            );
            Ok(existing)
        }
        DataDir::Legacy => Err(SetupError::Other(format!(
            "a previous first start of {} did not finish (initdb ran but the initialisation scripts or \
             database creation did not complete, see {}); remove the directory's contents to initialise again",
            data.display(),
            data.join(LEGACY_MARKER).display()
        ))),
        DataDir::Failed(reason) => Err(SetupError::Other(format!(
            "a previous first start of {} failed: {reason}; fix the cause and empty the directory to initialise again",
            data.display()
        ))),
        DataDir::Foreign(names) => Err(SetupError::Other(format!(
            "PGDATA {} holds no database but is not empty ({}): initdb needs an empty directory; empty it or set PGDATA to an empty or new one",
            data.display(),
            shorten(&names)
        ))),
        DataDir::Interrupted => {
            check_password(settings)?;
            tracing::info!(
                "a previous first start of {} was interrupted before it finished; removing what it made and starting over",
                data.display()
            );
            remove_interrupted(settings)?;
            first_start(settings, bins, steps).await?;
            Ok(Prepared::default())
        }
        DataDir::Empty => {
            check_password(settings)?;
            first_start(settings, bins, steps).await?;
            Ok(Prepared::default())
        }
    }
}

/// An initialised PGDATA: served when its major is the binaries', upgraded when older and
/// the upgrade is enabled, refused otherwise.
async fn initialised(
    settings: &Settings,
    bins: &Binaries,
    steps: &Steps,
) -> Result<Prepared, SetupError> {
    let data = &settings.data_dir;
    match check_version(data, bins, settings.upgrade.enabled)? {
        Version::Same => {
            tracing::info!(
                "PostgreSQL data directory {} already holds a database; skipping initialisation",
                data.display()
            );
            Ok(Prepared {
                existing: true,
                upgrade: None,
            })
        }
        Version::Older { theirs, ours } => {
            let finish = upgrade::upgrade(settings, bins, steps, &theirs, &ours).await?;
            Ok(Prepared {
                existing: true,
                upgrade: Some(finish),
            })
        }
    }
}

fn shorten(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    if names.len() > 3 {
        shown.push("...");
    }
    shown.join(", ")
}

/// How PGDATA's major compares with the binaries'.
#[derive(Debug, PartialEq, Eq)]
enum Version {
    Same,
    /// Older, and the upgrade is enabled.
    Older {
        theirs: String,
        ours: String,
    },
}

/// The major version that made PGDATA must be the binaries' own: a server refuses the files
/// of another major, with a line buried in its log. Said up front instead, with the fix;
/// nothing is started and nothing on disk changes. An older one may be upgraded.
fn check_version(data: &Path, bins: &Binaries, upgrade: bool) -> Result<Version, String> {
    let file = data.join("PG_VERSION");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let made_by = text.trim();
    let ours = major(&bins.version);
    let (Some(theirs_n), Some(ours_n)) = (major_number(made_by), major_number(&ours)) else {
        return Ok(Version::Same); // An unusual version string: let the server judge.
    };
    let dir = data.display();
    if theirs_n > ours_n {
        return Err(format!(
            "PGDATA {dir} was initialised by PostgreSQL {made_by}, and these binaries ({}) are PostgreSQL {ours}: \
             a data directory cannot be downgraded; use an image with PostgreSQL {made_by} or newer",
            bins.dir.display()
        ));
    }
    if theirs_n < ours_n {
        if upgrade {
            return Ok(Version::Older {
                theirs: made_by.to_string(),
                ours,
            });
        }
        return Err(format!(
            "PGDATA {dir} was initialised by PostgreSQL {made_by}, and these binaries ({}) are PostgreSQL {ours}: \
             set TANDEM_PG_UPGRADE=auto to upgrade it in place with pg_upgrade (PostgreSQL {made_by}'s binaries \
             installed beside these, or TANDEM_PG_OLD_BINDIR), or dump it with PostgreSQL {made_by} and restore it \
             into an empty PGDATA; nothing was changed",
            bins.dir.display()
        ));
    }
    Ok(Version::Same)
}

/// "15.18" -> "15", "9.6.24" -> "9.6", "17" -> "17".
fn major(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if a.parse::<u32>().is_ok_and(|n| n < 10) => format!("{a}.{b}"),
        (Some(a), _) => a.to_string(),
        _ => version.to_string(),
    }
}

/// A major version as a number that orders: 9.6 -> 906, 15 -> 1500.
fn major_number(major: &str) -> Option<u32> {
    let mut parts = major.split('.');
    let first: u32 = parts.next()?.parse().ok()?;
    let second: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some(first * 100 + second)
}

/// The official image refuses to create a superuser without a password unless told to trust.
pub(super) fn check_password(settings: &Settings) -> Result<(), String> {
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

/// The first start's context: where the cluster is made, and how steps are reported.
pub(super) struct Ctx<'a> {
    pub(super) settings: &'a Settings,
    pub(super) bins: &'a Binaries,
    pub(super) steps: &'a Steps,
    /// `PGDATA/.tandem-first-start/data`: the cluster until the last step moves it up.
    pub(super) staging: PathBuf,
}

async fn first_start(
    settings: &Settings,
    bins: &Binaries,
    steps: &Steps,
) -> Result<(), SetupError> {
    let data = &settings.data_dir;
    tracing::info!(
        "initialising PostgreSQL data directory {} (first start)",
        data.display()
    );
    let marker = data.join(FIRST_START_DIR);
    let ctx = Ctx {
        settings,
        bins,
        steps,
        staging: marker.join(STAGING),
    };
    // The record that a first start has begun, on disk before initdb writes anything.
    ctx.make_owned_dir(&marker)?;
    ctx.make_owned_dir(&ctx.staging)?;
    sync_dir(data)?;
    match ctx.run().await {
        Err(SetupError::Failed(reason)) => {
            // Best effort: without it the next start starts over instead of refusing.
            if let Err(e) = ctx.write_owned(&marker.join(FAILED), format!("{reason}\n").as_bytes())
            {
                tracing::warn!("{e}");
            }
            Err(SetupError::Failed(reason))
        }
        other => other,
    }
}

impl Ctx<'_> {
    async fn run(&self) -> Result<(), SetupError> {
        let s = self.settings;
        let started = Instant::now();
        self.initdb().await?;
        tracing::info!("initdb done in {} ms", started.elapsed().as_millis());
        let method = &s.host_auth_method;
        let hba_comment = if method == "trust" {
            "# warning trust is enabled for all connections\n"
        } else {
            ""
        };
        append(
            &self.staging.join("pg_hba.conf"),
            &format!("\n{hba_comment}host all all all {method}\n"),
        )?;
        append(
            &self.staging.join("postgresql.conf"),
            "\nlisten_addresses = '*'\n",
        )?;

        let phase = Instant::now();
        let server = self.start_temp_server().await?;
        tracing::info!(
            "temporary server ready in {} ms",
            phase.elapsed().as_millis()
        );
        let work = async {
            self.create_database().await?;
            self.run_init_scripts().await
        }
        .await;
        // The server is stopped whatever happened: asked for here when the work is done (or
        // failed), by the supervisor's stop ladder when a stop is under way.
        if !self.steps.cancelled() {
            self.steps.stop_server();
        }
        let stopped = self.steps.wait(server).await;
        if self.steps.cancelled() {
            // Whatever failed, it failed because the server was being stopped under it.
            work.map_err(|e| SetupError::Interrupted(e.message().to_string()))?;
        } else {
            work?;
        }
        match stopped? {
            e if e.success() => {}
            e => {
                return Err(SetupError::Failed(format!(
                    "the temporary PostgreSQL server {} while stopping",
                    e.ended()
                )))
            }
        }
        self.move_into_place()?;
        tracing::info!(
            "PostgreSQL init process complete in {} ms (temporary server phase {} ms); ready for start up",
            started.elapsed().as_millis(),
            phase.elapsed().as_millis()
        );
        // Complete on disk; a stop that came meanwhile still keeps the real server down.
        self.steps.check()
    }

    /// initdb into the staging directory, the password through its stdin, never in argv or
    /// a file.
    async fn initdb(&self) -> Result<(), SetupError> {
        let s = self.settings;
        let mut spec = ChildSpec::new(self.bins.program("initdb"))
            .arg("-D")
            .arg(&self.staging)
            .arg(format!("--username={}", s.user))
            .user(s.os_user.clone())
            .cwd("/");
        if let Some(pw) = &s.password {
            spec = spec
                .arg("--pwfile=/dev/stdin")
                .stdin(Stdin::Secret(format!("{pw}\n").into_bytes()));
        }
        if let Some(wal) = &s.waldir {
            let mut arg = std::ffi::OsString::from("--waldir=");
            arg.push(wal.as_os_str());
            spec = spec.arg(arg);
        }
        // Last, so the user's arguments win over ours as they do in the official image.
        spec = spec.args(&s.initdb_args);
        let step = self.steps.spawn(
            spec,
            "initdb",
            StepKind::Scratch,
            Some(INITDB_TIMEOUT),
            true,
        )?;
        match self.steps.wait(step).await? {
            e if e.success() => Ok(()),
            e => Err(SetupError::Failed(format!(
                "initdb {} while initialising {}; see its output above",
                e.ended(),
                s.data_dir.display()
            ))),
        }
    }

    /// Starts the server on the Unix socket only and waits until it is ready.
    async fn start_temp_server(&self) -> Result<super::steps::RunningStep, SetupError> {
        let s = self.settings;
        let spec = ChildSpec::new(self.bins.program("postgres"))
            .arg("-D")
            .arg(&self.staging)
            .args(["-c", "listen_addresses="])
            .arg("-p")
            .arg(s.port.to_string())
            .arg("-k")
            .arg(&s.socket_dir)
            .args(super::settings_args(s))
            .user(s.os_user.clone())
            .cwd("/");
        let mut server = self.steps.spawn(
            spec,
            "the temporary server",
            StepKind::Server,
            Some(TEMP_SERVER_READY),
            true,
        )?;
        let pid = server.pid;
        let ready = tokio::select! {
            r = ready::wait_ready_in(&self.staging, s, pid) => r,
            e = server.exited() => {
                let exit = self.steps.ended(server, e).await?;
                return Err(SetupError::Failed(format!(
                    "the temporary PostgreSQL server {} before it was ready; see its output above",
                    exit.ended()
                )));
            }
        };
        if let Err(e) = ready {
            if !self.steps.cancelled() {
                self.steps.stop_server();
            }
            let _ = self.steps.wait(server).await;
            return Err(SetupError::Other(e));
        }
        self.steps.server_ready();
        Ok(server)
    }

    /// CREATE DATABASE POSTGRES_DB unless it exists (it may be `postgres`).
    async fn create_database(&self) -> Result<(), SetupError> {
        let s = self.settings;
        let fail = |e: tokio_postgres::Error| {
            SetupError::Failed(format!(
                "cannot create database {:?}: {}",
                s.database,
                db_error(&e)
            ))
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

    /// The last step: the cluster moves up into PGDATA, `PG_VERSION` last, then the marker
    /// goes. Each rename is atomic and stays in one directory's filesystem; a kill between
    /// any two leaves a state the next start recognises (see the module doc).
    fn move_into_place(&self) -> Result<(), SetupError> {
        let data = &self.settings.data_dir;
        let fail = |what: &Path, e: std::io::Error| {
            SetupError::Other(format!(
                "cannot move {} into {}: {e}",
                what.display(),
                data.display()
            ))
        };
        let entries = std::fs::read_dir(&self.staging)
            .map_err(|e| fail(&self.staging, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&self.staging, e))?;
        for entry in entries.iter().filter(|e| e.file_name() != "PG_VERSION") {
            std::fs::rename(entry.path(), data.join(entry.file_name()))
                .map_err(|e| fail(&entry.path(), e))?;
        }
        sync_dir(data)?;
        let version = self.staging.join("PG_VERSION");
        std::fs::rename(&version, data.join("PG_VERSION")).map_err(|e| fail(&version, e))?;
        sync_dir(data)?;
        remove_marker(data)?;
        Ok(())
    }

    fn make_owned_dir(&self, dir: &Path) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Some(i) = self
            .settings
            .os_user
            .as_ref()
            .filter(|_| Uid::effective().is_root())
        {
            nix::unistd::chown(dir, Some(i.uid), Some(i.gid))
                .map_err(|e| format!("cannot give {} to {}: {e}", dir.display(), i.name))?;
        }
        Ok(())
    }

    /// Writes a new file owned by PostgreSQL's user.
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
        f.sync_all().map_err(fail)?;
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

/// Removes what an interrupted first start made: the marker with its staging cluster, what
/// its last step had already moved into PGDATA (PGDATA held nothing else when it began),
/// and the WAL it wrote into POSTGRES_INITDB_WALDIR (initdb needs it empty; only what
/// PostgreSQL names its WAL is removed, in case the variable now names another directory).
fn remove_interrupted(settings: &Settings) -> Result<(), String> {
    let data = &settings.data_dir;
    let entries =
        std::fs::read_dir(data).map_err(|e| format!("cannot list {}: {e}", data.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", data.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != FIRST_START_DIR && is_left_alone(&name) {
            continue;
        }
        remove_any(&entry.path())?;
    }
    if let Some(wal) = &settings.waldir {
        if let Ok(entries) = std::fs::read_dir(wal) {
            for entry in entries.flatten() {
                if is_wal_name(&entry.file_name().to_string_lossy()) {
                    remove_any(&entry.path())?;
                }
            }
        }
    }
    sync_dir(data)
}

/// What PostgreSQL keeps in pg_wal: segments (24 hex digits), timeline histories, partial
/// and backup files, and its status directories.
fn is_wal_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("");
    let hex = stem.len() >= 8 && stem.chars().all(|c| c.is_ascii_hexdigit());
    hex || matches!(name, "archive_status" | "summaries")
}

fn remove_marker(data: &Path) -> Result<(), String> {
    let marker = data.join(FIRST_START_DIR);
    std::fs::remove_dir_all(&marker)
        .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
    sync_dir(data)
}

fn remove_any(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

/// Makes the directory's entries (renames, removals) durable.
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// Appends to a configuration file initdb wrote (and PostgreSQL's user owns).
fn append(path: &Path, text: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
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
    use crate::logs;
    use crate::postgres::{app_env, locate_binaries, server_spec, wait_ready};
    use crate::process::{ChildSpec, Exit};
    use crate::testutil::{self, owners_under, write, TempDir};
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;
    use std::collections::HashMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use tokio::net::TcpSocket;
    use tokio::sync::oneshot;

    fn steps() -> Steps {
        Steps::alone(testutil::reaper())
    }

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

    /// The real server, stopped with SIGINT when dropped even if an assertion failed.
    struct Server {
        pid: Pid,
        exit: Option<oneshot::Receiver<Exit>>,
    }

    impl Server {
        /// Returns the server and how long after spawn its pid file said ready, and the
        /// round trip confirmed it.
        async fn start(settings: &Settings, bins: &Binaries) -> (Server, Duration, Duration) {
            let started = Instant::now();
            let mut spawned = testutil::reaper()
                .spawn(server_spec(settings, bins))
                .unwrap();
            logs::pump_spawned("postgres", &mut spawned);
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
            testutil::run(ChildSpec::new("gzip").arg(scripts.join("02-data.sql")))
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

        let t = Instant::now();
        prepare(&settings, &bins, &steps()).await.unwrap();
        let init_took = t.elapsed();
        let data = &settings.data_dir;
        assert!(!data.join(FIRST_START_DIR).exists());
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
        prepare(&settings, &bins, &steps()).await.unwrap();
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
        prepare(&settings, &bins, &steps()).await.unwrap();
        assert_eq!(std::fs::metadata(data.join("stray")).unwrap().uid(), pg_uid);

        // An older tandem's marker of a half-finished first start stops us.
        write(&data.join(LEGACY_MARKER), b"", 0o600);
        let err = prepare(&settings, &bins, &steps()).await.unwrap_err();
        let err = err.message();
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

    /// Password drift against a real server: the stored SCRAM verifier matches the password
    /// initdb was given and no other; with TANDEM_PG_SYNC_PASSWORD=on the new one is stored
    /// (as a SCRAM verifier) and works over TCP, the old one no longer.
    #[tokio::test]
    async fn a_drifted_password_is_found_in_the_stored_verifier_and_synced() {
        use crate::postgres::password::{check, Drift};
        if !Uid::effective().is_root() {
            testutil::skip("needs root to run PostgreSQL as the postgres user");
            return;
        }
        crate::logs::init(false);
        let root = TempDir::new("drift");
        let env = env_for(
            root.path(),
            &[
                ("POSTGRES_USER", "drift user"),
                ("POSTGRES_PASSWORD", "first pw"),
            ],
        );
        let (mut settings, bins) = setup(&env);
        let prepared = prepare(&settings, &bins, &steps()).await.unwrap();
        assert!(!prepared.existing, "a first start");
        let (server, _, _) = Server::start(&settings, &bins).await;
        let t = Instant::now();
        assert_eq!(check(&settings).await, Drift::Same);
        eprintln!(
            "timings: the password check {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        let t = Instant::now();
        assert_eq!(check(&settings).await, Drift::Same);
        eprintln!(
            "timings: again, warm {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        settings.password = Some("second pw".into());
        assert_eq!(check(&settings).await, Drift::Differs { synced: false });
        connect_tcp(&settings, "first pw").await.unwrap();
        assert!(
            connect_tcp(&settings, "second pw").await.is_err(),
            "nothing was changed"
        );
        settings.sync_password = true;
        assert_eq!(check(&settings).await, Drift::Differs { synced: true });
        assert_eq!(check(&settings).await, Drift::Same);
        let client = connect_tcp(&settings, "second pw").await.unwrap();
        let row = client
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        let stored: String = row.get(0);
        assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
        assert!(connect_tcp(&settings, "first pw").await.is_err());
        drop(client);
        assert_eq!(server.stop().await, Exit::Code(0));
    }

    /// Where the time goes between spawn and ready; run with
    /// `cargo test --lib readiness_timings -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn readiness_timings() {
        let root = TempDir::new("bench");
        let env = env_for(root.path(), &[("POSTGRES_PASSWORD", "pw")]);
        let (settings, bins) = setup(&env);
        prepare(&settings, &bins, &steps()).await.unwrap();
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
        let err = prepare(&settings, &bins, &steps()).await.unwrap_err();
        let reason = format!(
            "initialisation script {} failed: psql exited with code 3",
            scripts.join("02-bad.sql").display()
        );
        assert_eq!(err, SetupError::Failed(reason.clone()));
        let data = &settings.data_dir;
        let staging = data.join(FIRST_START_DIR).join(STAGING);
        // Stopped cleanly: a postmaster removes its pid file on the way out.
        assert!(!staging.join("postmaster.pid").exists());
        assert!(!data.join("PG_VERSION").exists(), "never moved into place");
        assert_eq!(inspect(data), Ok(DataDir::Failed(reason.clone())));
        let hba = std::fs::read_to_string(staging.join("pg_hba.conf")).unwrap();
        assert!(
            hba.ends_with(
                "# warning trust is enabled for all connections\nhost all all all trust\n"
            ),
            "{hba}"
        );
        let err = prepare(&settings, &bins, &steps()).await.unwrap_err();
        assert_eq!(
            err.message(),
            format!(
                "a previous first start of {} failed: {reason}; fix the cause and empty the directory to initialise again",
                data.display()
            )
        );
    }

    #[tokio::test]
    async fn missing_password_is_refused_before_initdb() {
        let root = TempDir::new("nopw");
        let env = env_for(root.path(), &[]);
        let (settings, bins) = setup(&env);
        let err = prepare(&settings, &bins, &steps()).await.unwrap_err();
        assert_eq!(
            err.message(),
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

    #[tokio::test]
    async fn double_quote_in_the_superuser_name_is_refused_before_initdb() {
        let root = TempDir::new("dquote");
        let env = env_for(
            root.path(),
            &[("POSTGRES_USER", r#"a"b"#), ("POSTGRES_PASSWORD", "x")],
        );
        let (settings, bins) = setup(&env);
        let err = prepare(&settings, &bins, &steps()).await.unwrap_err();
        let err = err.message();
        assert!(
            err.starts_with(r#"POSTGRES_USER "a\"b" contains one of " $ ' \, which initdb"#),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&settings.data_dir).unwrap().count(), 0);
    }

    /// The runtime may `tokio::spawn` these futures, so they must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(s: &Settings, b: &Binaries, st: &Steps) {
        fn send<T: Send>(_: T) {}
        send(prepare(s, b, st));
        send(wait_ready(s, Pid::from_raw(1)));
    }

    #[test]
    fn what_a_start_finds_in_pgdata() {
        let root = TempDir::new("inspect");
        let data = root.path();
        assert_eq!(inspect(data), Ok(DataDir::Empty));
        std::fs::create_dir(data.join("lost+found")).unwrap();
        write(&data.join(".hidden"), b"", 0o600);
        assert_eq!(
            inspect(data),
            Ok(DataDir::Empty),
            "left alone like initdb's mount point"
        );
        let marker = data.join(FIRST_START_DIR);
        std::fs::create_dir_all(marker.join(STAGING)).unwrap();
        write(&data.join("base"), b"", 0o600);
        assert_eq!(inspect(data), Ok(DataDir::Interrupted), "moved half way");
        write(&data.join("PG_VERSION"), b"15\n", 0o600);
        assert_eq!(
            inspect(data),
            Ok(DataDir::Moved),
            "PG_VERSION is moved last"
        );
        write(&marker.join(FAILED), b"initdb exited with code 1\n", 0o600);
        assert_eq!(
            inspect(data),
            Ok(DataDir::Failed("initdb exited with code 1".into()))
        );
        std::fs::remove_dir_all(&marker).unwrap();
        assert_eq!(inspect(data), Ok(DataDir::Initialised));
        std::fs::remove_file(data.join("PG_VERSION")).unwrap();
        assert_eq!(inspect(data), Ok(DataDir::Foreign(vec!["base".into()])));
    }

    #[test]
    fn major_versions_compare_across_the_old_and_new_numbering() {
        assert_eq!(major("15.18"), "15");
        assert_eq!(major("9.6.24"), "9.6");
        assert_eq!(major("17"), "17");
        assert!(major_number("9.6") < major_number("10"));
        assert!(major_number("15") < major_number("17"));
        let bins = |v: &str| Binaries {
            dir: "/usr/lib/postgresql/15/bin".into(),
            version: v.into(),
            source: "test",
        };
        let root = TempDir::new("version");
        write(&root.path().join("PG_VERSION"), b"17\n", 0o600);
        let err = check_version(root.path(), &bins("15"), true).unwrap_err();
        assert!(
            err.contains("initialised by PostgreSQL 17") && err.contains("cannot be downgraded"),
            "{err}"
        );
        write(&root.path().join("PG_VERSION"), b"13\n", 0o600);
        let err = check_version(root.path(), &bins("15.18"), false).unwrap_err();
        assert!(
            err.contains("PostgreSQL 13")
                && err.contains("TANDEM_PG_UPGRADE=auto")
                && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(
            check_version(root.path(), &bins("15.18"), true),
            Ok(Version::Older {
                theirs: "13".into(),
                ours: "15".into()
            })
        );
        write(&root.path().join("PG_VERSION"), b"15\n", 0o600);
        assert_eq!(
            check_version(root.path(), &bins("15"), false),
            Ok(Version::Same)
        );
    }

    /// What the version guard adds to a normal start: looking for an upgrade's directory
    /// (part of `inspect`) and reading PG_VERSION against the binaries' major. Run with
    /// `cargo test --release --lib version_guard_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn version_guard_cost() {
        let root = TempDir::new("guard");
        write(&root.path().join("PG_VERSION"), b"15\n", 0o600);
        let bins = Binaries {
            dir: "/usr/lib/postgresql/15/bin".into(),
            version: "15".into(),
            source: "test",
        };
        let once = || {
            assert!(!root.path().join(UPGRADE_DIR).is_dir());
            assert_eq!(check_version(root.path(), &bins, false), Ok(Version::Same));
        };
        for _ in 0..100 {
            once();
        }
        let mut rounds: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..1000 {
                    once();
                }
                t.elapsed().as_secs_f64() * 1e6 / 1000.0
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        eprintln!(
            "version guard: {:.1} us per start (median of 20 rounds of 1000; {:.1}-{:.1} us), target < 1000 us",
            rounds[10], rounds[0], rounds[19]
        );
    }

    #[test]
    fn only_wal_is_taken_from_the_wal_directory() {
        for wal in [
            "000000010000000000000001",
            "00000002.history",
            "000000010000000000000002.partial",
            "archive_status",
            "summaries",
        ] {
            assert!(is_wal_name(wal), "{wal}");
        }
        for other in ["notes.txt", "lost+found", "backup", ".keep", "ABC"] {
            assert!(!is_wal_name(other), "{other}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident(r#"my "cool" db"#), r#""my ""cool"" db""#);
    }
}
