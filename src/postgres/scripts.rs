//! `/docker-entrypoint-initdb.d`: the first start's scripts, run against the temporary
//! server in sorted order, as the official image runs them.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::first_start::Ctx;
use super::steps::SetupError;
use crate::process::{ChildSpec, Exit, Stdin};
use crate::supervisor::StepKind;

impl Ctx<'_> {
    /// Runs the first-start scripts in sorted order.
    pub(super) async fn run_init_scripts(&self) -> Result<(), SetupError> {
        let dir = &self.settings.initdb_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display()).into()),
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

    async fn run_init_file(&self, file: &Path) -> Result<(), SetupError> {
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
            SetupError::Failed(format!(
                "initialisation script {} failed: {what} {}",
                file.display(),
                e.ended()
            ))
        };
        let step = format!("init script {name}");
        if kind == "sh" {
            // Not executable: run with bash, as the official image sources it into its bash.
            let spec = if meta.permissions().mode() & 0o111 != 0 {
                ChildSpec::new(file)
            } else {
                ChildSpec::new("bash").arg(file)
            };
            let running =
                self.steps
                    .spawn(self.script_env(spec), &step, StepKind::Task, None, true)?;
            let e = self.steps.wait(running).await?;
            if !e.success() {
                return Err(fail(&name, e));
            }
        } else {
            let psql = self.psql();
            match decompressor {
                None => {
                    let running = self.steps.spawn(
                        psql.arg("-f").arg(file),
                        &step,
                        StepKind::Task,
                        None,
                        true,
                    )?;
                    let e = self.steps.wait(running).await?;
                    if !e.success() {
                        return Err(fail("psql", e));
                    }
                }
                Some(prog) => {
                    let dec = self.script_env(ChildSpec::new(prog).arg("-dc").arg(file));
                    let mut dec = self.steps.spawn(
                        dec,
                        &format!("{prog} for {name}"),
                        StepKind::Task,
                        None,
                        false,
                    )?;
                    let out = dec.stdout.take().map(OwnedFd::from);
                    let psql = match out {
                        Some(fd) => psql.stdin(Stdin::Fd(fd)),
                        None => psql,
                    };
                    // psql is the inner step, stopped first: when it dies, the decompressor
                    // gets SIGPIPE.
                    let psql_exit = match self.steps.spawn(psql, &step, StepKind::Task, None, true)
                    {
                        Ok(running) => self.steps.wait(running).await,
                        Err(e) => Err(e),
                    };
                    let dec_exit = self.steps.wait(dec).await;
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
    fn psql(&self) -> ChildSpec {
        let s = self.settings;
        let spec = ChildSpec::new(self.bins.program("psql"))
            .args(["-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password"])
            .arg("--username")
            .arg(&s.user)
            .arg("--dbname")
            .arg(&s.database);
        self.script_env(spec)
    }

    /// Runs as PostgreSQL's user, from `/`, with the environment scripts written for the
    /// official image expect, pointing at the temporary server's socket. `PGDATA` is where
    /// the cluster is while it is being made, so a script that edits `$PGDATA/...` edits it.
    fn script_env(&self, spec: ChildSpec) -> ChildSpec {
        let s = self.settings;
        let mut spec = spec
            .user(s.os_user.clone())
            .cwd("/")
            .env("POSTGRES_USER", &s.user)
            .env("POSTGRES_DB", &s.database)
            .env("PGDATA", &self.staging)
            .env("PGPORT", s.port.to_string())
            .env("PGHOST", &s.socket_dir)
            .env("PGUSER", &s.user)
            // So that a bare `psql` lands where `psql --dbname "$POSTGRES_DB"` would.
            .env("PGDATABASE", &s.database)
            // These would send psql somewhere other than the temporary server.
            .env_remove("PGHOSTADDR")
            .env_remove("PGSERVICE");
        if let Some(pw) = &s.password {
            spec = spec.env("POSTGRES_PASSWORD", pw).env("PGPASSWORD", pw);
        }
        // The official image puts the server's bin dir on PATH; scripts call `psql` bare.
        let mut path: OsString = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        if !std::env::split_paths(&path).any(|p| p == self.bins.dir) {
            path.push(":");
            path.push(self.bins.dir.as_os_str());
        }
        spec.env("PATH", path)
    }
}
