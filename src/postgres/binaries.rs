//! Finding the PostgreSQL programs: the configured directory, PG_BINDIR, `pg_config
//! --bindir`, the newest Debian-style `/usr/lib/postgresql/*/bin`, then PATH.

use crate::process::{self, ChildSpec, Output, Reaper};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::Settings;

/// The programs tandem runs; a directory counts only if it has all of them.
const REQUIRED: [&str; 3] = ["initdb", "postgres", "psql"];
/// Where Debian and Ubuntu install each major version side by side.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The chosen PostgreSQL installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// Directory holding initdb, postgres and psql.
    pub dir: PathBuf,
    /// The server's version: the major version when the Debian layout names it ("15"),
    /// otherwise as `postgres --version` prints it ("15.18").
    pub version: String,
    /// How the directory was found: "config", "PG_BINDIR", "pg_config",
    /// "/usr/lib/postgresql" or "PATH".
    pub source: &'static str,
}

impl Binaries {
    /// The full path of one program in the directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Finds the binaries in the documented order. A directory the user named explicitly (config
/// or PG_BINDIR) that lacks a program is an error rather than a reason to look elsewhere.
/// May run `pg_config --bindir` and `postgres --version` through `reaper`, and waits for them
/// to be reaped, so the reaping loop must be running.
pub fn locate_binaries(
    settings: &Settings,
    env: &HashMap<String, String>,
    reaper: &Reaper,
) -> Result<Binaries, String> {
    let (dir, source) = find_dir(settings, env, reaper)?;
    // The Debian layout (also the official image's) names the major version: one process
    // fewer on every start.
    let version = match debian_major(&dir) {
        Some(major) => major,
        None => server_version(&dir, settings, reaper)?,
    };
    Ok(Binaries {
        dir,
        version,
        source,
    })
}

fn find_dir(
    settings: &Settings,
    env: &HashMap<String, String>,
    reaper: &Reaper,
) -> Result<(PathBuf, &'static str), String> {
    if let Some(dir) = &settings.bin_dir {
        return check_dir(dir)
            .map(|()| (dir.clone(), "config"))
            .map_err(|e| format!("the configured PostgreSQL bin_dir {}: {e}", dir.display()));
    }
    let env_var = |name: &str| env.get(name).filter(|v| !v.is_empty());
    if let Some(dir) = env_var("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return check_dir(&dir)
            .map(|()| (dir.clone(), "PG_BINDIR"))
            .map_err(|e| format!("PG_BINDIR={}: {e}", dir.display()));
    }
    let path_var = env_var("PATH").map(|p| p.as_str());
    let mut tried = vec!["PG_BINDIR (unset)".to_string()];

    match process::resolve_program("pg_config".as_ref(), path_var.map(|p| p.as_ref())) {
        Err(_) => tried.push("pg_config (not on PATH)".into()),
        Ok(pg_config) => {
            match first_line_of(ChildSpec::new(&pg_config).arg("--bindir"), settings, reaper) {
                Ok(line) if !line.is_empty() => {
                    let dir = PathBuf::from(line);
                    match check_dir(&dir) {
                        Ok(()) => return Ok((dir, "pg_config")),
                        Err(e) => tried.push(format!("pg_config --bindir {} ({e})", dir.display())),
                    }
                }
                Ok(_) => tried.push(format!("{} --bindir (no answer)", pg_config.display())),
                Err(e) => tried.push(format!("pg_config ({e})")),
            }
        }
    }

    match newest_debian_dir(Path::new(DEBIAN_ROOT)) {
        Some(dir) => return Ok((dir, DEBIAN_ROOT)),
        None => tried.push(format!("{DEBIAN_ROOT}/*/bin (none complete)")),
    }

    if let Some(path) = path_var {
        for dir in std::env::split_paths(path) {
            if check_dir(&dir).is_ok() {
                return Ok((dir, "PATH"));
            }
        }
    }
    tried.push("PATH".into());
    Err(format!(
        "no PostgreSQL installation found (need {}): tried {}; install PostgreSQL or set PG_BINDIR to the directory holding its programs",
        REQUIRED.join(", "),
        tried.join(", ")
    ))
}

/// Where PostgreSQL is installed, as far as a quick look tells (PG_BINDIR, the Debian
/// layout, PATH), without running anything: for deciding whether to embed it at all. A
/// PG_BINDIR says so by itself (when it lacks a program, that is reported as an error).
pub fn installed(env: &HashMap<String, String>) -> Option<PathBuf> {
    installed_in(env, Path::new(DEBIAN_ROOT))
}

fn installed_in(env: &HashMap<String, String>, debian_root: &Path) -> Option<PathBuf> {
    if let Some(dir) = env.get("PG_BINDIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = newest_debian_dir(debian_root) {
        return Some(dir);
    }
    let path = env.get("PATH")?;
    std::env::split_paths(path).find(|d| check_dir(d).is_ok())
}

/// Ok when `dir` holds every required program, each executable.
fn check_dir(dir: &Path) -> Result<(), String> {
    for name in REQUIRED {
        process::resolve_program(dir.join(name).as_os_str(), None).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The highest version under `root` (`9.6 < 10 < 16`) whose `bin` has every program.
fn newest_debian_dir(root: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = version_key(&name)?;
            let bin = e.path().join("bin");
            check_dir(&bin).is_ok().then_some((key, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, dir)| dir)
}

/// "9.6" -> [9, 6], "16" -> [16]; None for names that are not versions.
fn version_key(name: &str) -> Option<Vec<u64>> {
    name.split('.')
        .map(|part| part.parse::<u64>().ok())
        .collect()
}

/// "/usr/lib/postgresql/15/bin" -> "15".
fn debian_major(dir: &Path) -> Option<String> {
    let parent = dir.strip_prefix(DEBIAN_ROOT).ok()?;
    let mut parts = parent.components();
    let major = parts.next()?.as_os_str().to_str()?;
    let rest: Vec<_> = parts.collect();
    (rest.len() == 1 && rest[0].as_os_str() == "bin" && version_key(major).is_some())
        .then(|| major.to_string())
}

fn server_version(dir: &Path, settings: &Settings, reaper: &Reaper) -> Result<String, String> {
    let postgres = dir.join("postgres");
    let line = first_line_of(ChildSpec::new(&postgres).arg("--version"), settings, reaper)
        .map_err(|e| format!("cannot learn the version of {}: {e}", postgres.display()))?;
    parse_version(&line).ok_or_else(|| {
        format!(
            "cannot learn the version of {}: it printed {line:?}",
            postgres.display()
        )
    })
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18".
fn parse_version(line: &str) -> Option<String> {
    let rest = line.split_once("(PostgreSQL)")?.1.trim_start();
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_string())
}

/// Runs `cmd` as PostgreSQL's user and returns the first line of its stdout. The reaper
/// collects the exit status whenever it next runs; nothing here waits for it, since the
/// output is all we need and EOF tells us the program is done writing.
fn first_line_of(spec: ChildSpec, settings: &Settings, reaper: &Reaper) -> Result<String, String> {
    let program = spec.program.clone();
    let spec = spec
        .stderr(Output::Null)
        .user(settings.os_user.clone())
        .cwd("/")
        .same_session();
    let mut spawned = reaper.spawn(spec).map_err(|e| e.to_string())?;
    let mut out = String::new();
    if let Some(mut stdout) = spawned.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|e| format!("cannot read the output of {}: {e}", program.display()))?;
    }
    // Wait for it to be reaped, so nothing we started is still exiting when we move on (or
    // exit on an error). The caller has the reaper running. The wait happens on a thread of
    // its own because tokio forbids blocking receives on a runtime's thread (tests call this
    // from async code; tandem itself before its runtime starts).
    let exit = spawned.exit;
    std::thread::scope(|s| {
        let _ = s.spawn(move || exit.blocking_recv()).join();
    });
    Ok(out.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    #[test]
    fn installed_looks_at_pg_bindir_the_debian_layout_and_path() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let nowhere = Path::new("/nonexistent-tandem");
        assert_eq!(
            installed_in(&env(&[("PATH", "/usr/bin:/bin")]), nowhere),
            None
        );
        assert_eq!(
            installed_in(&env(&[("PG_BINDIR", "/opt/pg/bin")]), nowhere),
            Some(PathBuf::from("/opt/pg/bin")),
            "named explicitly: a wrong one is an error later, not a reason to skip"
        );
        if Path::new("/usr/lib/postgresql/15/bin/postgres").exists() {
            assert!(installed_in(&env(&[]), Path::new(DEBIAN_ROOT)).is_some());
            let on_path = env(&[("PATH", "/usr/lib/postgresql/15/bin")]);
            assert_eq!(
                installed_in(&on_path, nowhere),
                Some(PathBuf::from("/usr/lib/postgresql/15/bin"))
            );
        }
    }

    #[test]
    fn version_keys_compare_numerically() {
        let mut v = ["16", "9.6", "10", "15"].map(|s| version_key(s).unwrap());
        v.sort();
        assert_eq!(v, [vec![9, 6], vec![10], vec![15], vec![16]]);
        assert_eq!(version_key("common"), None);
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").as_deref(),
            Some("15.18")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn finds_postgres_15_here() {
        let reaper = testutil::reaper();
        let settings = Settings::from_env(&HashMap::new()).unwrap();
        let env: HashMap<String, String> = std::env::vars().collect();
        let bins = locate_binaries(&settings, &env, &reaper).unwrap();
        assert_eq!(bins.dir, PathBuf::from("/usr/lib/postgresql/15/bin"));
        assert_eq!(bins.version, "15", "{bins:?}");
        assert!(server_version(&bins.dir, &settings, &reaper)
            .unwrap()
            .starts_with("15."));
        assert_eq!(debian_major(Path::new("/opt/pg/bin")), None);
        assert!(
            ["pg_config", DEBIAN_ROOT].contains(&bins.source),
            "{bins:?}"
        );

        // Without pg_config on PATH, the Debian directory is found.
        let env = HashMap::from([("PATH".to_string(), "/nonexistent".to_string())]);
        let bins = locate_binaries(&settings, &env, &reaper).unwrap();
        assert_eq!(
            (bins.dir.as_path(), bins.source),
            (Path::new("/usr/lib/postgresql/15/bin"), DEBIAN_ROOT)
        );

        // An explicit directory wins, and a wrong one is an error, not a fallback.
        let env = HashMap::from([(
            "PG_BINDIR".to_string(),
            "/usr/lib/postgresql/15/bin".to_string(),
        )]);
        assert_eq!(
            locate_binaries(&settings, &env, &reaper).unwrap().source,
            "PG_BINDIR"
        );
        let env = HashMap::from([("PG_BINDIR".to_string(), "/usr/bin".to_string())]);
        let err = locate_binaries(&settings, &env, &reaper).unwrap_err();
        assert!(
            err.starts_with("PG_BINDIR=/usr/bin: cannot run /usr/bin/initdb: not found"),
            "{err}"
        );
        let mut configured = settings.clone();
        configured.bin_dir = Some("/usr/lib/postgresql/15/bin".into());
        assert_eq!(
            locate_binaries(&configured, &env, &reaper).unwrap().source,
            "config"
        );
    }
}
