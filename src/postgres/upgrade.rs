//! The assisted major upgrade (`TANDEM_PG_UPGRADE=auto`): a data directory made by an older
//! PostgreSQL is upgraded in place with `pg_upgrade`, safe against a stop or a kill at any
//! moment.
//!
//! PGDATA is usually a volume's mount point, so it can be neither renamed nor replaced. Both
//! clusters therefore live inside it, beside a journal, in `PGDATA/.tandem-upgrade`:
//!
//! ```text
//! PGDATA/                    the old cluster, until the swap; then the new one
//! PGDATA/.tandem-upgrade/
//!     journal                the phase (written to journal.tmp, fsynced, renamed, dir fsynced)
//!     new/                   the new cluster: initdb, then pg_upgrade's output
//!     old/                   the old cluster's files, moved out of PGDATA by the swap
//! ```
//!
//! | journal     | what has happened                                   | the next start       |
//! |-------------|-----------------------------------------------------|----------------------|
//! | (none)      | the directory was being created                     | remove it            |
//! | `check`     | old settings read, new initdb, `pg_upgrade --check` | roll back            |
//! | `upgrading` | `pg_upgrade` ran (maybe half), configuration copied | roll back            |
//! | `upgraded`  | `pg_upgrade` finished, configuration checked        | finish the swap      |
//! | `swap-out`  | the old cluster's files moving into `old/`          | finish the swap      |
//! | `swap-in`   | all of them there; the new files moving up          | finish the swap      |
//! | `started`   | the swap is done; the new server may have run       | start it, clean up   |
//! | `done`      | kept with `TANDEM_PG_UPGRADE_KEEP_OLD=on`           | serve PGDATA         |
//!
//! Rolling back: in link mode pg_upgrade renames the old `global/pg_control` to
//! `pg_control.old` (so that nothing starts the old cluster by mistake); that is renamed
//! back, and `.tandem-upgrade` goes. The old cluster's files were never written to (hard
//! links share them, and nothing has run on the new cluster yet), so it is the cluster
//! it was, and an enabled upgrade simply starts again.
//!
//! The point of no return is `started`, written before the new server's first start: once it
//! has run, the files it shares with the old cluster by hard links have changed, and even
//! with a copy it may have accepted writes. From there on the only way is forward. The old
//! files are removed once the new server is ready (or kept, with their size logged).
//!
//! Each process is a supervisor step (reading the old cluster, initdb, `pg_upgrade --check`,
//! `pg_upgrade`, the configuration check), named `upgrading OLD -> NEW: ...`, which is what
//! `tandem healthcheck` shows meanwhile. A stop kills the step that runs (pg_upgrade's output
//! is thrown away) and begins nothing new: the journal tells the next start what to do.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Uid;

use super::settings::UpgradeMode;
use super::steps::{SetupError, Steps};
use super::{Binaries, Settings};
use crate::process::{ChildSpec, Exit, Stdin};
use crate::supervisor::StepKind;

/// The upgrade's own directory inside PGDATA.
pub const UPGRADE_DIR: &str = ".tandem-upgrade";
const JOURNAL: &str = "journal";
const NEW: &str = "new";
const OLD: &str = "old";

/// How long initdb of the new cluster may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the configuration check (`postgres -C`) may take.
const CONFIG_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the upgrade is, as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Check,
    Upgrading,
    Upgraded,
    SwapOut,
    SwapIn,
    Started,
    Done,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Check,
        Phase::Upgrading,
        Phase::Upgraded,
        Phase::SwapOut,
        Phase::SwapIn,
        Phase::Started,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Upgrading => "upgrading",
            Phase::Upgraded => "upgraded",
            Phase::SwapOut => "swap-out",
            Phase::SwapIn => "swap-in",
            Phase::Started => "started",
            Phase::Done => "done",
        }
    }

    /// Before `upgraded` the old cluster is whole and the new one unfinished: back.
    pub fn rolls_back(self) -> bool {
        matches!(self, Phase::Check | Phase::Upgrading)
    }
}

/// The journal's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub phase: Phase,
    /// The old and new majors ("15", "17").
    pub old: String,
    pub new: String,
    /// pg_upgrade --link (else --copy).
    pub link: bool,
    /// The clusters' superuser (the role with oid 10).
    pub superuser: String,
}

impl Journal {
    fn text(&self) -> String {
        format!(
            "phase={}\nold={}\nnew={}\nmode={}\nsuperuser={}\n",
            self.phase.as_str(),
            self.old,
            self.new,
            if self.link { "link" } else { "copy" },
            hex(self.superuser.as_bytes())
        )
    }

    fn parse(text: &str) -> Option<Journal> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let phase = get("phase")?;
        Some(Journal {
            phase: *Phase::ALL.iter().find(|p| p.as_str() == phase)?,
            old: get("old")?,
            new: get("new")?,
            link: get("mode")? == "link",
            superuser: String::from_utf8(unhex(&get("superuser")?)?).ok()?,
        })
    }

    fn versions(&self) -> String {
        format!("PostgreSQL {} to {}", self.old, self.new)
    }
}

/// What [`resume`] found and did.
pub enum Resumed {
    /// Rolled back: PGDATA holds the old cluster as it was.
    RolledBack,
    /// Far enough to go on: the new cluster is in PGDATA; finish after its start.
    Forward(Finish),
    /// A finished upgrade whose old files were kept.
    Done,
}

/// What is left once the new cluster is in PGDATA: its first start, then clean-up.
#[derive(Debug)]
pub struct Finish {
    data: PathBuf,
    journal: Journal,
    keep_old: bool,
}

impl Finish {
    /// Called once the new server is ready: the old files go (or stay, with their size);
    /// the journal goes, or says `done`. Blocking file work: run it off the event loop.
    pub fn clean_up(&self) -> Result<(), String> {
        let dir = self.data.join(UPGRADE_DIR);
        let old = dir.join(OLD);
        if self.keep_old && old.exists() {
            let (total, shared) = tree_size(&old);
            write_journal(
                &self.data,
                &Journal {
                    phase: Phase::Done,
                    ..self.journal.clone()
                },
            )?;
            tracing::info!(
                "kept the PostgreSQL {} files in {} (TANDEM_PG_UPGRADE_KEEP_OLD=on): {} MB, {} MB of it shared with the new cluster by hard links; \
                 they cannot be started once the new cluster has run; remove the directory to reclaim the space",
                self.journal.old,
                old.display(),
                total / 1_000_000,
                shared / 1_000_000
            );
            return Ok(());
        }
        let t = Instant::now();
        if old.exists() {
            remove_tree(&old)?;
        }
        remove_tree(&dir)?;
        sync_dir(&self.data)?;
        tracing::info!(
            "removed the PostgreSQL {} files after the new cluster's start ({} ms)",
            self.journal.old,
            t.elapsed().as_millis()
        );
        Ok(())
    }

    /// `vacuumdb --all --analyze-in-stages` over the local socket: pg_upgrade does not carry
    /// the planner's statistics over.
    pub fn analyze_spec(&self, settings: &Settings, bins: &Binaries) -> ChildSpec {
        let mut spec = ChildSpec::new(bins.program("vacuumdb"))
            .args(["--all", "--analyze-in-stages", "-h"])
            .arg(&settings.socket_dir)
            .arg("-p")
            .arg(settings.port.to_string())
            .arg("-U")
            .arg(&self.journal.superuser)
            .user(settings.os_user.clone())
            .cwd("/");
        if let Some(pw) = &settings.password {
            // For a socket that asks for a password; the environment, never argv.
            spec = spec.env("PGPASSWORD", pw);
        }
        spec
    }
}

/// Reads the journal; `Ok(None)` when the upgrade directory exists without one.
pub fn read_journal(data: &Path) -> Result<Option<Journal>, String> {
    let path = data.join(UPGRADE_DIR).join(JOURNAL);
    match std::fs::read_to_string(&path) {
        Ok(text) => Journal::parse(&text).map(Some).ok_or_else(|| {
            format!(
                "{} is not a journal tandem wrote; remove {} only if no upgrade is under way",
                path.display(),
                data.join(UPGRADE_DIR).display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Atomically: journal.tmp written and fsynced, renamed over the journal, directory fsynced.
fn write_journal(data: &Path, journal: &Journal) -> Result<(), String> {
    let dir = data.join(UPGRADE_DIR);
    let tmp = dir.join("journal.tmp");
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", tmp.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(journal.text().as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(JOURNAL))
        .map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
    sync_dir(&dir)?;
    test_pause(journal.phase);
    Ok(())
}

/// For tests only (tests/upgrade.rs): `TANDEM_TEST_UPGRADE_PAUSE=PHASE` stops tandem dead
/// (its whole event loop) right after the journal records PHASE, so that a test can SIGKILL
/// the container in exactly that state. Never set it otherwise.
fn test_pause(phase: Phase) {
    if std::env::var("TANDEM_TEST_UPGRADE_PAUSE").is_ok_and(|p| p == phase.as_str()) {
        tracing::warn!(
            "TANDEM_TEST_UPGRADE_PAUSE={}: paused for a test to kill it",
            phase.as_str()
        );
        loop {
            std::thread::park();
        }
    }
}

/// Picks up an upgrade the journal says was under way. See the module doc for each phase.
pub fn resume(settings: &Settings) -> Result<Resumed, String> {
    let data = &settings.data_dir;
    let dir = data.join(UPGRADE_DIR);
    let Some(journal) = read_journal(data)? else {
        // Cut short while the directory was made: nothing else was done.
        remove_tree(&dir)?;
        sync_dir(data)?;
        tracing::info!(
            "rolled back an upgrade of {} that had only just begun: nothing had changed",
            data.display()
        );
        return Ok(Resumed::RolledBack);
    };
    let what = journal.versions();
    match journal.phase {
        Phase::Done => {
            if settings.upgrade.keep_old {
                return Ok(Resumed::Done);
            }
            let t = Instant::now();
            remove_tree(&dir)?;
            sync_dir(data)?;
            tracing::info!(
                "removed the kept files of the upgrade from {what} ({}; TANDEM_PG_UPGRADE_KEEP_OLD is off now; {} ms)",
                dir.join(OLD).display(),
                t.elapsed().as_millis()
            );
            Ok(Resumed::Done)
        }
        p if p.rolls_back() => {
            roll_back(data)?;
            tracing::info!(
                "rolled back the upgrade of {} from {what}, interrupted in phase {}: the PostgreSQL {} cluster is back as it was",
                data.display(),
                p.as_str(),
                journal.old
            );
            Ok(Resumed::RolledBack)
        }
        p => {
            swap(data, &journal)?;
            tracing::info!(
                "finishing the upgrade of {} from {what}, interrupted in phase {}: the PostgreSQL {} cluster is in place",
                data.display(),
                p.as_str(),
                journal.new
            );
            Ok(Resumed::Forward(Finish {
                data: data.clone(),
                journal,
                keep_old: settings.upgrade.keep_old,
            }))
        }
    }
}

/// Back to the old cluster: pg_control renamed back if pg_upgrade had renamed it, the
/// upgrade directory removed. Only for phases before `upgraded`, when PGDATA still holds
/// every file of the old cluster.
fn roll_back(data: &Path) -> Result<(), String> {
    let control = data.join("global/pg_control");
    let renamed = data.join("global/pg_control.old");
    if !control.exists() && renamed.exists() {
        std::fs::rename(&renamed, &control)
            .map_err(|e| format!("cannot rename {} back: {e}", renamed.display()))?;
        sync_dir(&data.join("global"))?;
    }
    remove_tree(&data.join(UPGRADE_DIR))?;
    sync_dir(data)
}

/// The swap, from wherever it was cut short: the old cluster's files out of PGDATA into
/// `old/`, then the new one's up into PGDATA, `PG_VERSION` last; then `started`.
fn swap(data: &Path, journal: &Journal) -> Result<(), String> {
    let dir = data.join(UPGRADE_DIR);
    let (new, old) = (dir.join(NEW), dir.join(OLD));
    let with = |phase| Journal {
        phase,
        ..journal.clone()
    };
    if matches!(journal.phase, Phase::Upgraded | Phase::SwapOut) {
        if journal.phase == Phase::Upgraded {
            write_journal(data, &with(Phase::SwapOut))?;
        }
        if !old.exists() {
            make_dir(&old, None)?;
        }
        // Every entry of PGDATA but ours, hidden ones and lost+found is the old cluster's.
        for name in cluster_entries(data)? {
            rename(&data.join(&name), &old.join(&name))?;
        }
        sync_dir(data)?;
        sync_dir(&old)?;
        write_journal(data, &with(Phase::SwapIn))?;
    }
    if matches!(
        journal.phase,
        Phase::Upgraded | Phase::SwapOut | Phase::SwapIn
    ) {
        let mut names = cluster_entries(&new)?;
        names.retain(|n| n != "PG_VERSION");
        for name in names {
            rename(&new.join(&name), &data.join(&name))?;
        }
        sync_dir(data)?;
        if new.join("PG_VERSION").exists() {
            rename(&new.join("PG_VERSION"), &data.join("PG_VERSION"))?;
        }
        sync_dir(data)?;
        // The point of no return: the next thing is the new server's start.
        write_journal(data, &with(Phase::Started))?;
    }
    Ok(())
}

/// The names in `dir` that belong to a cluster: all but hidden ones and lost+found.
fn cluster_entries(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?
    {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && name != "lost+found" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The old cluster's settings the new one must share, read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OldCluster {
    superuser: String,
    encoding: String,
    collate: String,
    ctype: String,
    /// `c` (libc), `i` (ICU), `b` (builtin).
    provider: String,
    /// The ICU (or builtin) locale, when the provider is not libc.
    locale: String,
    checksums: bool,
    wal_segment_mb: u64,
}

/// Everything an upgrade run needs.
struct Ctx<'a> {
    settings: &'a Settings,
    bins: &'a Binaries,
    old_bin: PathBuf,
    steps: &'a Steps,
    data: &'a Path,
    dir: PathBuf,
    new: PathBuf,
    /// "upgrading 15 -> 17": what healthcheck says while a step runs.
    label: String,
}

/// Where an older major's programs are: the configured directory, else Debian's layout.
pub fn old_bin_dir(settings: &Settings, old: &str) -> PathBuf {
    settings
        .upgrade
        .old_bin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{old}/bin")))
}

/// Upgrades PGDATA, made by PostgreSQL `old`, to the binaries' major. Returns what is left
/// after the swap (the new server's first start, then clean-up).
pub async fn upgrade(
    settings: &Settings,
    bins: &Binaries,
    steps: &Steps,
    old: &str,
    new: &str,
) -> Result<Finish, SetupError> {
    let data = &settings.data_dir;
    let old_bin = old_bin_dir(settings, old);
    for (dir, program) in [
        (&old_bin, "postgres"),
        (&old_bin, "pg_controldata"),
        (&bins.dir, "pg_upgrade"),
        (&bins.dir, "initdb"),
    ] {
        if !dir.join(program).is_file() {
            return Err(SetupError::Other(format!(
                "PGDATA {} was initialised by PostgreSQL {old} and TANDEM_PG_UPGRADE=auto, but {} is missing: \
                 install PostgreSQL {old}'s server beside {new}'s (Debian: postgresql-{old}) or set TANDEM_PG_OLD_BINDIR to its bin directory; nothing was changed",
                data.display(),
                dir.join(program).display()
            )));
        }
    }
    refuse_unsupported(data, old)?;
    let dir = data.join(UPGRADE_DIR);
    if dir.exists() {
        // Only a finished upgrade's kept files can be there now (resume handled the rest).
        return Err(SetupError::Other(format!(
            "{} holds the files kept from the previous upgrade (TANDEM_PG_UPGRADE_KEEP_OLD=on): remove the directory, \
             or start once with TANDEM_PG_UPGRADE_KEEP_OLD off, before upgrading from PostgreSQL {old} to {new}; nothing was changed",
            dir.display()
        )));
    }
    let ctx = Ctx {
        settings,
        bins,
        old_bin,
        steps,
        data,
        new: dir.join(NEW),
        dir,
        label: format!("upgrading {old} -> {new}"),
    };
    let began = Instant::now();
    let link = match settings.upgrade.mode {
        UpgradeMode::Link => true,
        UpgradeMode::Copy => false,
        // Always one filesystem here (new/ is inside PGDATA) unless PGDATA's subdirectory is
        // a mount of its own; checked once new/ exists.
        UpgradeMode::Auto => true,
    };
    let mut journal = Journal {
        phase: Phase::Check,
        old: old.to_string(),
        new: new.to_string(),
        link,
        superuser: String::new(),
    };
    steps.check().map_err(interrupted)?;
    // The record that an upgrade has begun, before anything else is made.
    make_dir(&ctx.dir, settings.os_user.as_ref())?;
    sync_dir(data)?;
    write_journal(data, &journal)?;
    let result = ctx.run(&mut journal, began).await;
    match result {
        Ok(()) => Ok(Finish {
            data: data.clone(),
            journal,
            keep_old: settings.upgrade.keep_old,
        }),
        Err(SetupError::Interrupted(why)) => {
            tracing::info!(
                "the upgrade from {} was stopped in phase {} ({why}); the next start {} it",
                journal.versions(),
                journal.phase.as_str(),
                if journal.phase.rolls_back() {
                    "rolls back and retries"
                } else {
                    "finishes"
                }
            );
            Err(SetupError::Interrupted(why))
        }
        Err(e) if journal.phase.rolls_back() => {
            // Nothing of the old cluster has changed: undo at once, so that the next start
            // finds it as it was.
            roll_back(data)?;
            Err(SetupError::Other(format!(
                "{}; rolled back: the PostgreSQL {old} cluster in {} is unchanged",
                e.message(),
                data.display()
            )))
        }
        Err(e) => Err(e),
    }
}

/// What tandem does not upgrade, refused before anything is made.
fn refuse_unsupported(data: &Path, old: &str) -> Result<(), SetupError> {
    let wal = data.join("pg_wal");
    if std::fs::symlink_metadata(&wal).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(SetupError::Other(format!(
            "PGDATA {} keeps its WAL elsewhere ({} is a link, POSTGRES_INITDB_WALDIR): tandem does not upgrade such a directory; \
             dump it with PostgreSQL {old} and restore it into an empty PGDATA; nothing was changed",
            data.display(),
            wal.display()
        )));
    }
    let spaces = data.join("pg_tblspc");
    if std::fs::read_dir(&spaces).is_ok_and(|mut d| d.next().is_some()) {
        return Err(SetupError::Other(format!(
            "PGDATA {} has tablespaces ({}): tandem does not upgrade them; run pg_upgrade yourself, or dump and restore; nothing was changed",
            data.display(),
            spaces.display()
        )));
    }
    Ok(())
}

fn interrupted(e: SetupError) -> SetupError {
    match e {
        SetupError::Interrupted(_) => {
            SetupError::Interrupted("stopped before the upgrade was complete".into())
        }
        other => other,
    }
}

impl Ctx<'_> {
    async fn run(&self, journal: &mut Journal, began: Instant) -> Result<(), SetupError> {
        let s = self.settings;
        let old = self.read_old_cluster(journal).await?;
        journal.superuser = old.superuser.clone();
        write_journal(self.data, journal)?;
        self.initdb(&old).await?;
        if s.upgrade.mode == UpgradeMode::Auto {
            let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
            journal.link = dev(self.data).is_some() && dev(self.data) == dev(&self.new);
        }
        let how = if journal.link {
            "--link: hard links, old and new are on one filesystem"
        } else if s.upgrade.mode == UpgradeMode::Copy {
            "--copy: TANDEM_PG_UPGRADE_MODE=copy"
        } else {
            "--copy: old and new are on different filesystems"
        };
        tracing::info!(
            "upgrading {} from {} with pg_upgrade {how}",
            self.data.display(),
            journal.versions()
        );
        let t = Instant::now();
        self.pg_upgrade(journal, true).await?;
        tracing::info!(
            "pg_upgrade --check passed in {} ms",
            t.elapsed().as_millis()
        );
        journal.phase = Phase::Upgrading;
        write_journal(self.data, journal)?;
        let t = Instant::now();
        self.pg_upgrade(journal, false).await?;
        tracing::info!(
            "pg_upgrade {} done in {} ms",
            if journal.link { "--link" } else { "--copy" },
            t.elapsed().as_millis()
        );
        self.carry_configuration().await?;
        self.steps.check().map_err(interrupted)?;
        journal.phase = Phase::Upgraded;
        write_journal(self.data, journal)?;
        let t = Instant::now();
        swap(self.data, journal)?;
        journal.phase = Phase::Started;
        tracing::info!(
            "upgraded {} from {} in {:.1} s (swap {} ms); starting PostgreSQL {}",
            self.data.display(),
            journal.versions(),
            began.elapsed().as_secs_f64(),
            t.elapsed().as_millis(),
            journal.new
        );
        Ok(())
    }

    fn step_name(&self, what: &str) -> String {
        format!("{}: {what}", self.label)
    }

    /// Runs a step to its end; its stdout captured when `capture`, else relayed.
    async fn run_step(
        &self,
        spec: ChildSpec,
        what: &str,
        kind: StepKind,
        timeout: Option<Duration>,
        capture: bool,
    ) -> Result<(Exit, String), SetupError> {
        let mut step = self
            .steps
            .spawn(spec, &self.step_name(what), kind, timeout, !capture)
            .map_err(interrupted)?;
        let reader = step.stdout.take().map(|mut out| {
            tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                text
            })
        });
        let exit = self.steps.wait(step).await.map_err(|e| match e {
            SetupError::Interrupted(_) => SetupError::Interrupted(format!("{what} was stopped")),
            other => other,
        })?;
        let text = match reader {
            Some(r) => r.await.unwrap_or_default(),
            None => String::new(),
        };
        Ok((exit, text))
    }

    /// The old cluster's superuser, encoding and locale (a single-user backend of the old
    /// binaries: it needs no login, so no pg_hba.conf line, and it leaves the cluster shut
    /// down cleanly, as pg_upgrade requires, after a crash recovery if one is due), then
    /// its checksum setting and WAL segment size (pg_controldata).
    async fn read_old_cluster(&self, journal: &Journal) -> Result<OldCluster, SetupError> {
        let s = self.settings;
        let old_major: u32 = journal.old.parse().unwrap_or(0);
        let (provider, locale) = match old_major {
            0..=14 => ("'c'", "''"),
            15 | 16 => ("datlocprovider", "coalesce(daticulocale, '')"),
            _ => ("datlocprovider", "coalesce(datlocale, '')"),
        };
        // One hex string: names with spaces, quotes or newlines come through whole.
        let query = format!(
            "SELECT encode(convert_to(concat_ws(E'\\n', (SELECT rolname FROM pg_authid WHERE oid = 10), \
             pg_encoding_to_char(encoding), datcollate, datctype, {provider}, {locale}), 'UTF8'), 'hex') \
             FROM pg_database WHERE datname = 'template0';\n"
        );
        let spec = ChildSpec::new(self.old_bin.join("postgres"))
            .arg("--single")
            .arg("-D")
            .arg(self.data)
            .args(["-c", "listen_addresses=", "-c", "log_min_messages=warning"])
            .arg("template1")
            .stdin(Stdin::Secret(query.into_bytes()))
            .user(s.os_user.clone())
            .cwd("/");
        let (exit, out) = self
            .run_step(spec, "reading the old cluster", StepKind::Task, None, true)
            .await?;
        let fields = out
            .lines()
            .find_map(|l| l.split_once("= \"").and_then(|(_, r)| r.split_once('"')))
            .and_then(|(h, _)| unhex(h))
            .and_then(|b| String::from_utf8(b).ok());
        let (Some(fields), true) = (fields, exit.success()) else {
            return Err(SetupError::Other(format!(
                "cannot read the PostgreSQL {} cluster's settings: its single-user server {}; see its output above",
                journal.old,
                exit.ended()
            )));
        };
        let f: Vec<&str> = fields.split('\n').collect();
        if f.len() != 6 {
            return Err(SetupError::Other(format!(
                "cannot read the PostgreSQL {} cluster's settings: unexpected answer",
                journal.old
            )));
        }
        let spec = ChildSpec::new(self.old_bin.join("pg_controldata"))
            .arg(self.data)
            .env("LC_ALL", "C")
            .user(s.os_user.clone())
            .cwd("/");
        let (exit, control) = self
            .run_step(spec, "pg_controldata", StepKind::Task, None, true)
            .await?;
        let field = |name: &str| {
            control
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        let (Some(checksum), Some(segment), Some(state)) = (
            field("Data page checksum version"),
            field("Bytes per WAL segment"),
            field("Database cluster state"),
        ) else {
            return Err(SetupError::Other(format!(
                "cannot read the PostgreSQL {} cluster's control file: pg_controldata {}",
                journal.old,
                exit.ended()
            )));
        };
        if state != "shut down" {
            return Err(SetupError::Other(format!(
                "the PostgreSQL {} cluster is not shut down cleanly (pg_controldata: {state:?}) after its single-user start",
                journal.old
            )));
        }
        let old = OldCluster {
            superuser: f[0].to_string(),
            encoding: f[1].to_string(),
            collate: f[2].to_string(),
            ctype: f[3].to_string(),
            provider: f[4].to_string(),
            locale: f[5].to_string(),
            checksums: checksum != "0",
            wal_segment_mb: segment.parse::<u64>().unwrap_or(16 << 20) >> 20,
        };
        tracing::info!(
            "the PostgreSQL {} cluster: superuser {:?}, encoding {}, collate {:?}, ctype {:?}, locale provider {}{}, data checksums {}",
            journal.old,
            old.superuser,
            old.encoding,
            old.collate,
            old.ctype,
            old.provider,
            if old.locale.is_empty() { String::new() } else { format!(" ({})", old.locale) },
            if old.checksums { "on" } else { "off" }
        );
        Ok(old)
    }

    /// initdb of the new cluster with the old one's settings; no password (pg_upgrade
    /// brings every role's over, the superuser's too) and initdb's own local trust lines
    /// until the old pg_hba.conf replaces them.
    async fn initdb(&self, old: &OldCluster) -> Result<(), SetupError> {
        let s = self.settings;
        let mut spec = ChildSpec::new(self.bins.program("initdb"))
            .arg("-D")
            .arg(&self.new)
            .arg(format!("--username={}", old.superuser))
            .arg(format!("--encoding={}", old.encoding))
            .arg(format!("--lc-collate={}", old.collate))
            .arg(format!("--lc-ctype={}", old.ctype));
        spec = match old.provider.as_str() {
            "i" => spec
                .arg("--locale-provider=icu")
                .arg(format!("--icu-locale={}", old.locale)),
            "b" => spec
                .arg("--locale-provider=builtin")
                .arg(format!("--builtin-locale={}", old.locale)),
            _ => spec.arg("--locale-provider=libc"),
        };
        if old.checksums {
            spec = spec.arg("--data-checksums");
        }
        if old.wal_segment_mb != 16 {
            spec = spec.arg(format!("--wal-segsize={}", old.wal_segment_mb));
        }
        let spec = spec.user(s.os_user.clone()).cwd("/");
        let (exit, _) = self
            .run_step(
                spec,
                "initdb",
                StepKind::Scratch,
                Some(INITDB_TIMEOUT),
                false,
            )
            .await?;
        if !exit.success() {
            return Err(SetupError::Other(format!(
                "initdb of the new PostgreSQL cluster {}; see its output above",
                exit.ended()
            )));
        }
        Ok(())
    }

    /// `pg_upgrade` (`--check` first), relaying its progress lines; on failure its report.
    async fn pg_upgrade(&self, journal: &Journal, check: bool) -> Result<(), SetupError> {
        let s = self.settings;
        let mode = if journal.link { "--link" } else { "--copy" };
        let mut spec = ChildSpec::new(self.bins.program("pg_upgrade"));
        if check {
            spec = spec.arg("--check");
        }
        spec = spec
            .arg(mode)
            .arg("-b")
            .arg(&self.old_bin)
            .arg("-B")
            .arg(&self.bins.dir)
            .arg("-d")
            .arg(self.data)
            .arg("-D")
            .arg(&self.new)
            .arg("-U")
            .arg(&journal.superuser)
            .arg("-p")
            .arg(s.port.to_string())
            .arg("-P")
            .arg(s.port.to_string())
            .arg("-s")
            .arg(&s.socket_dir)
            .user(s.os_user.clone())
            .cwd(&self.dir);
        if let Some(pw) = &s.password {
            // For a local line that asks for a password; the environment, never argv.
            spec = spec.env("PGPASSWORD", pw);
        }
        let what = if check {
            "pg_upgrade --check".to_string()
        } else {
            format!("pg_upgrade {mode}")
        };
        // pg_upgrade itself is thrown away when stopped (its output is redone by the next
        // start): SIGKILL at once.
        let (exit, _) = self
            .run_step(spec, &what, StepKind::Scratch, None, false)
            .await?;
        if exit.success() {
            return Ok(());
        }
        self.show_report();
        Err(SetupError::Other(format!(
            "{what} {} upgrading {} from {}; see its report above",
            exit.ended(),
            self.data.display(),
            journal.versions()
        )))
    }

    /// pg_upgrade's report files (the objects that keep a cluster from being upgraded).
    fn show_report(&self) {
        let mut files = Vec::new();
        collect_files(&self.new.join("pg_upgrade_output.d"), &mut files);
        files.sort();
        for f in files {
            let is_report = f.extension().is_some_and(|e| e == "txt");
            if !is_report {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&f) {
                tracing::error!("pg_upgrade report {}:", f.display());
                for line in text.lines().take(50) {
                    tracing::error!("  {line}");
                }
            }
        }
    }

    /// The old cluster's authentication (pg_hba.conf and pg_ident.conf, as they are) and
    /// server settings (its postgresql.conf and postgresql.auto.conf lines the new server
    /// knows, after the new defaults; the others named in a warning), then a check that
    /// the new server accepts its configuration, while going back is still possible.
    async fn carry_configuration(&self) -> Result<(), SetupError> {
        for name in ["pg_hba.conf", "pg_ident.conf"] {
            let from = self.data.join(name);
            if from.exists() {
                copy_file(&from, &self.new.join(name))?;
            }
        }
        let spec = ChildSpec::new(self.bins.program("postgres"))
            .arg("--describe-config")
            .user(self.settings.os_user.clone())
            .cwd("/");
        let (exit, described) = self
            .run_step(
                spec,
                "the new server's settings",
                StepKind::Task,
                None,
                true,
            )
            .await?;
        if !exit.success() {
            return Err(SetupError::Other(format!(
                "postgres --describe-config {}",
                exit.ended()
            )));
        }
        let known: Vec<String> = described
            .lines()
            .filter_map(|l| l.split('\t').next())
            .map(str::to_ascii_lowercase)
            .collect();
        let mut dropped = Vec::new();
        let conf = std::fs::read_to_string(self.data.join("postgresql.conf")).unwrap_or_default();
        let (kept, gone) = known_settings(&conf, &known);
        dropped.extend(gone);
        if !kept.is_empty() {
            append(
                &self.new.join("postgresql.conf"),
                &format!(
                    "\n# The old cluster's settings, carried over by tandem ({}):\n{kept}",
                    self.label
                ),
            )?;
        }
        let auto = self.data.join("postgresql.auto.conf");
        if let Ok(text) = std::fs::read_to_string(&auto) {
            let (kept, gone) = known_settings(&text, &known);
            dropped.extend(gone);
            if !kept.is_empty() {
                append(&self.new.join("postgresql.auto.conf"), &kept)?;
            }
        }
        if !dropped.is_empty() {
            tracing::warn!(
                "settings of the old cluster that PostgreSQL {} does not know were left out: {}",
                self.bins.version,
                dropped.join(", ")
            );
        }
        let spec = ChildSpec::new(self.bins.program("postgres"))
            .arg("-D")
            .arg(&self.new)
            .args(["-C", "max_connections"])
            .args(super::settings_args(self.settings))
            .user(self.settings.os_user.clone())
            .cwd("/");
        let (exit, _) = self
            .run_step(
                spec,
                "checking the new configuration",
                StepKind::Task,
                Some(CONFIG_CHECK_TIMEOUT),
                true,
            )
            .await?;
        if !exit.success() {
            return Err(SetupError::Other(format!(
                "the new PostgreSQL {} server refuses the old cluster's configuration ({}); see its output above",
                self.bins.version,
                exit.ended()
            )));
        }
        Ok(())
    }
}

/// The active `name = value` lines of a configuration file whose names `known` holds (and
/// include directives), as text; and the names left out.
fn known_settings(conf: &str, known: &[String]) -> (String, Vec<String>) {
    let mut kept = String::new();
    let mut dropped = Vec::new();
    for line in conf.lines() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let include = matches!(
            name.as_str(),
            "include" | "include_dir" | "include_if_exists"
        );
        // Custom (extension) settings have a dot; the server accepts them as placeholders.
        if include || name.contains('.') || known.contains(&name) {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped.push(name);
        }
    }
    (kept, dropped)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Bytes under `dir`, and of them those in files also linked from elsewhere.
fn tree_size(dir: &Path) -> (u64, u64) {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    let (mut total, mut shared) = (0, 0);
    for f in files {
        if let Ok(m) = std::fs::symlink_metadata(&f) {
            total += m.len();
            if m.nlink() > 1 {
                shared += m.len();
            }
        }
    }
    (total, shared)
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to)
        .map_err(|e| format!("cannot move {} to {}: {e}", from.display(), to.display()))
}

fn make_dir(dir: &Path, owner: Option<&crate::process::Identity>) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if let Some(i) = owner.filter(|_| Uid::effective().is_root()) {
        nix::unistd::chown(dir, Some(i.uid), Some(i.gid))
            .map_err(|e| format!("cannot give {} to {}: {e}", dir.display(), i.name))?;
    }
    Ok(())
}

/// Copies a file over another, keeping the target's owner and mode.
fn copy_file(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .mode(0o600)
        .open(to)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .map_err(|e| format!("cannot write {}: {e}", to.display()))
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

fn remove_tree(path: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{write, TempDir};

    fn journal(phase: Phase) -> Journal {
        Journal {
            phase,
            old: "15".into(),
            new: "17".into(),
            link: true,
            superuser: "my \"cool\"\nuser".into(),
        }
    }

    #[test]
    fn the_journal_reads_back_what_was_written() {
        for p in Phase::ALL {
            let j = journal(p);
            assert_eq!(Journal::parse(&j.text()), Some(j));
        }
        assert_eq!(Journal::parse("phase=nonsense\n"), None);
    }

    #[test]
    fn only_phases_before_upgraded_roll_back() {
        let back: Vec<Phase> = Phase::ALL.into_iter().filter(|p| p.rolls_back()).collect();
        assert_eq!(back, [Phase::Check, Phase::Upgrading]);
    }

    /// A fake old cluster in PGDATA and a fake new one in new/, for the file moves.
    fn layout(root: &Path) -> PathBuf {
        let data = root.join("data");
        for d in [
            &data,
            &data.join("global"),
            &data.join("base"),
            &data.join("lost+found"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        write(&data.join("PG_VERSION"), b"15\n", 0o600);
        write(&data.join("global/pg_control.old"), b"old control", 0o600);
        write(&data.join("base/1"), b"old rows", 0o600);
        write(&data.join(".hidden"), b"", 0o600);
        let new = data.join(UPGRADE_DIR).join(NEW);
        std::fs::create_dir_all(new.join("global")).unwrap();
        std::fs::create_dir_all(new.join("base")).unwrap();
        write(&new.join("PG_VERSION"), b"17\n", 0o600);
        write(&new.join("global/pg_control"), b"new control", 0o600);
        write(&new.join("base/1"), b"new rows", 0o600);
        data
    }

    fn settings(data: &Path, keep_old: bool) -> Settings {
        let env =
            std::collections::HashMap::from([("PGDATA".to_string(), data.display().to_string())]);
        let mut s = Settings::from_env(&env).unwrap();
        s.upgrade.keep_old = keep_old;
        s
    }

    #[test]
    fn a_kill_before_upgraded_rolls_back_to_the_old_cluster() {
        for phase in [Phase::Check, Phase::Upgrading] {
            let root = TempDir::new("rollback");
            let data = layout(root.path());
            write_journal(&data, &journal(phase)).unwrap();
            let s = settings(&data, false);
            assert!(matches!(resume(&s), Ok(Resumed::RolledBack)));
            assert!(!data.join(UPGRADE_DIR).exists());
            assert_eq!(
                std::fs::read(data.join("global/pg_control")).unwrap(),
                b"old control"
            );
            assert_eq!(std::fs::read(data.join("PG_VERSION")).unwrap(), b"15\n");
            assert!(data.join(".hidden").exists() && data.join("lost+found").exists());
        }
        // No journal yet: the directory alone goes.
        let root = TempDir::new("rollback");
        let data = layout(root.path());
        assert!(matches!(
            resume(&settings(&data, false)),
            Ok(Resumed::RolledBack)
        ));
        assert!(!data.join(UPGRADE_DIR).exists());
    }

    #[test]
    fn a_kill_after_upgraded_finishes_the_swap_from_wherever_it_stopped() {
        // Each state a kill can leave: before any move, half the old files out, all out
        // and half the new ones up, everything up but PG_VERSION.
        for cut in 0..4 {
            let root = TempDir::new("forward");
            let data = layout(root.path());
            let dir = data.join(UPGRADE_DIR);
            let mut j = journal(Phase::Upgraded);
            if cut >= 1 {
                j.phase = Phase::SwapOut;
                std::fs::create_dir(dir.join(OLD)).unwrap();
                rename(&data.join("base"), &dir.join(OLD).join("base")).unwrap();
            }
            if cut >= 2 {
                j.phase = Phase::SwapIn;
                for n in ["global", "PG_VERSION"] {
                    rename(&data.join(n), &dir.join(OLD).join(n)).unwrap();
                }
                rename(&dir.join(NEW).join("base"), &data.join("base")).unwrap();
            }
            if cut >= 3 {
                rename(&dir.join(NEW).join("global"), &data.join("global")).unwrap();
            }
            write_journal(&data, &j).unwrap();
            let s = settings(&data, false);
            let Ok(Resumed::Forward(finish)) = resume(&s) else {
                panic!("cut {cut}: not forward");
            };
            assert_eq!(
                std::fs::read(data.join("PG_VERSION")).unwrap(),
                b"17\n",
                "cut {cut}"
            );
            assert_eq!(std::fs::read(data.join("base/1")).unwrap(), b"new rows");
            assert_eq!(
                std::fs::read(data.join("global/pg_control")).unwrap(),
                b"new control"
            );
            assert_eq!(
                std::fs::read(dir.join(OLD).join("base/1")).unwrap(),
                b"old rows"
            );
            assert_eq!(read_journal(&data).unwrap().unwrap().phase, Phase::Started);
            // Killed again right after: still forward, nothing moves twice.
            assert!(matches!(resume(&s), Ok(Resumed::Forward(_))));
            assert_eq!(std::fs::read(data.join("PG_VERSION")).unwrap(), b"17\n");
            finish.clean_up().unwrap();
            assert!(!dir.exists());
            assert!(data.join(".hidden").exists() && data.join("lost+found").exists());
        }
    }

    #[test]
    fn kept_old_files_are_journaled_done_and_removed_once_no_longer_wanted() {
        let root = TempDir::new("keep");
        let data = layout(root.path());
        write_journal(&data, &journal(Phase::Upgraded)).unwrap();
        let Ok(Resumed::Forward(finish)) = resume(&settings(&data, true)) else {
            panic!("not forward");
        };
        finish.clean_up().unwrap();
        assert_eq!(read_journal(&data).unwrap().unwrap().phase, Phase::Done);
        assert!(matches!(resume(&settings(&data, true)), Ok(Resumed::Done)));
        assert!(data.join(UPGRADE_DIR).join(OLD).join("base/1").exists());
        assert!(matches!(resume(&settings(&data, false)), Ok(Resumed::Done)));
        assert!(!data.join(UPGRADE_DIR).exists());
    }

    #[test]
    fn only_settings_the_new_server_knows_are_carried_over() {
        let known = vec!["max_connections".to_string(), "shared_buffers".to_string()];
        let conf = "# comment\nmax_connections = 100\t# note\n  shared_buffers = '128MB'\n\
                    vacuum_defer_cleanup_age = 5\ninclude_dir 'conf.d'\nvector.x = 1\n";
        let (kept, dropped) = known_settings(conf, &known);
        assert_eq!(
            kept,
            "max_connections = 100\t# note\n  shared_buffers = '128MB'\ninclude_dir 'conf.d'\nvector.x = 1\n"
        );
        assert_eq!(dropped, ["vacuum_defer_cleanup_age"]);
    }

    #[test]
    fn hex_round_trips() {
        let s = "my cool user\n\"x\"";
        assert_eq!(unhex(&hex(s.as_bytes())).unwrap(), s.as_bytes());
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
