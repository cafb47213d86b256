//! Everything about the embedded server, read from the environment the way the official
//! `postgres` image reads it (POSTGRES_*, their `_FILE` variants, PGDATA, PGPORT).

use std::collections::HashMap;
use std::path::PathBuf;

use nix::unistd::Uid;

use crate::process::Identity;

/// Where the official image keeps its data.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/postgresql/data";
/// Where the official image puts the server's Unix socket (libpq's compiled-in default on Debian).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Where the official image looks for first-start scripts.
pub const DEFAULT_INITDB_DIR: &str = "/docker-entrypoint-initdb.d";
/// What `password_encryption` says on PostgreSQL 14+, which the official image falls back to.
pub const DEFAULT_HOST_AUTH_METHOD: &str = "scram-sha-256";

/// Why [`read_bounded`] gave nothing.
#[derive(Debug)]
pub enum ReadError {
    /// Longer than the limit.
    TooLong,
    /// Cannot be read (the OS's reason), or is not a file to read a value from.
    Failed(String),
}

/// Reads a file tandem was pointed at for a value (a `_FILE` secret, an env file, the config
/// file), at most `max` bytes: more is [`ReadError::TooLong`], never memory spent on a
/// mistake such as `/dev/zero`. It never waits: the file is opened without blocking, and a
/// FIFO or socket is refused (one nobody writes to would hang tandem before it handles
/// signals, so that even `docker stop` waits for its SIGKILL). Docker and Kubernetes
/// secrets are regular files.
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ReadError::Failed(e.to_string()))?;
    let kind = file
        .metadata()
        .map_err(|e| ReadError::Failed(e.to_string()))?
        .file_type();
    if kind.is_fifo() || kind.is_socket() {
        let what = if kind.is_fifo() { "a FIFO" } else { "a socket" };
        return Err(ReadError::Failed(format!(
            "it is {what}, not a file; tandem reads values from files and does not wait for a writer"
        )));
    }
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Failed(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLong);
    }
    Ok(bytes)
}

/// The embedded server, resolved from the environment.
#[derive(Clone)]
pub struct Settings {
    /// PGDATA: initialised on first start, then handed to `postgres -D`.
    pub data_dir: PathBuf,
    /// PGPORT: the TCP port, also part of the Unix socket's name.
    pub port: u16,
    /// Directory of the Unix socket (TANDEM_PG_SOCKET_DIR, for tests).
    pub socket_dir: PathBuf,
    /// POSTGRES_USER: the superuser created by initdb.
    pub user: String,
    /// POSTGRES_PASSWORD: the superuser's password; `None` when unset or empty.
    pub password: Option<String>,
    /// POSTGRES_DB: created on first start when it does not exist.
    pub database: String,
    /// POSTGRES_INITDB_ARGS, split like a shell would (no variable expansion).
    pub initdb_args: Vec<String>,
    /// POSTGRES_INITDB_WALDIR: initdb `--waldir`.
    pub waldir: Option<PathBuf>,
    /// POSTGRES_HOST_AUTH_METHOD: the method in the appended `host all all all` line.
    pub host_auth_method: String,
    /// First-start scripts (TANDEM_INITDB_DIR, for tests).
    pub initdb_dir: PathBuf,
    /// A bin dir from the config file; PG_BINDIR is read by `locate_binaries`.
    pub bin_dir: Option<PathBuf>,
    /// `-c name=value` for the server (the config file's `[postgres] settings`).
    pub server_settings: Vec<(String, String)>,
    /// Who PostgreSQL runs as: the `postgres` user when tandem is root, else `None` (ourselves).
    pub os_user: Option<Identity>,
    /// What to do with a data directory an older major made (TANDEM_PG_UPGRADE and its kin).
    pub upgrade: Upgrade,
    /// TANDEM_PG_SYNC_PASSWORD: on an existing directory whose superuser's stored password
    /// is not POSTGRES_PASSWORD, set it to POSTGRES_PASSWORD (otherwise only warn).
    pub sync_password: bool,
}

/// The assisted major upgrade's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// TANDEM_PG_UPGRADE=auto: upgrade a data directory of an older major with pg_upgrade.
    pub enabled: bool,
    /// TANDEM_PG_OLD_BINDIR: the older major's programs (default
    /// `/usr/lib/postgresql/OLD/bin`).
    pub old_bin_dir: Option<PathBuf>,
    /// TANDEM_PG_UPGRADE_MODE: hard links when old and new share a filesystem, or forced.
    pub mode: UpgradeMode,
    /// TANDEM_PG_UPGRADE_KEEP_OLD=on: keep the old cluster's files after the new one started.
    pub keep_old: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeMode {
    /// `--link` when both clusters are on one filesystem, `--copy` otherwise.
    Auto,
    Link,
    Copy,
}

impl Default for Upgrade {
    fn default() -> Self {
        Upgrade {
            enabled: false,
            old_bin_dir: None,
            mode: UpgradeMode::Auto,
            keep_old: false,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("initdb_args", &self.initdb_args)
            .field("waldir", &self.waldir)
            .field("host_auth_method", &self.host_auth_method)
            .field("initdb_dir", &self.initdb_dir)
            .field("bin_dir", &self.bin_dir)
            .field("server_settings", &self.server_settings)
            .field("os_user", &self.os_user.as_ref().map(|i| &i.name))
            .field("upgrade", &self.upgrade)
            .field("sync_password", &self.sync_password)
            .finish()
    }
}

impl Settings {
    /// `env` is the process environment as a map (so tests need not mutate the real one).
    /// Handles `X` and `X_FILE` for POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB and
    /// POSTGRES_INITDB_ARGS. Empty values count as unset, as `${X:-default}` does in the
    /// official entrypoint.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Settings, String> {
        let plain = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();

        let data_dir = PathBuf::from(plain("PGDATA").unwrap_or_else(|| DEFAULT_DATA_DIR.into()));
        if !data_dir.is_absolute() {
            return Err(format!(
                "PGDATA={:?} is not an absolute path; set it to one such as {DEFAULT_DATA_DIR}",
                data_dir.display()
            ));
        }
        let port = match plain("PGPORT") {
            None => 5432,
            Some(p) => parse_port(&p)?,
        };
        let socket_dir = PathBuf::from(
            plain("TANDEM_PG_SOCKET_DIR").unwrap_or_else(|| DEFAULT_SOCKET_DIR.into()),
        );

        let user = secret(env, "POSTGRES_USER")?.unwrap_or_else(|| "postgres".to_string());
        let password = secret(env, "POSTGRES_PASSWORD")?;
        let database = secret(env, "POSTGRES_DB")?.unwrap_or_else(|| user.clone());
        for (name, value) in [("POSTGRES_USER", &user), ("POSTGRES_DB", &database)] {
            if value.contains('\0') {
                return Err(format!(
                    "{name} contains a NUL byte, which PostgreSQL names cannot hold"
                ));
            }
            if value.len() > MAX_NAME {
                return Err(format!(
                    "{name} is {} bytes long; PostgreSQL names are at most {MAX_NAME} bytes: choose a shorter one",
                    value.len()
                ));
            }
        }
        if password
            .as_deref()
            .is_some_and(|p| p.contains('\0') || p.contains('\n'))
        {
            // initdb reads the password as one line of a file.
            return Err("POSTGRES_PASSWORD contains a newline or NUL byte inside it; initdb cannot take such a password".into());
        }
        let initdb_args = match secret(env, "POSTGRES_INITDB_ARGS")? {
            None => Vec::new(),
            Some(a) => split_words(&a).map_err(|e| format!("POSTGRES_INITDB_ARGS: {e}"))?,
        };
        let waldir = plain("POSTGRES_INITDB_WALDIR").map(PathBuf::from);
        let host_auth_method =
            plain("POSTGRES_HOST_AUTH_METHOD").unwrap_or_else(|| DEFAULT_HOST_AUTH_METHOD.into());
        if host_auth_method.contains(['\n', '\r']) {
            return Err(
                "POSTGRES_HOST_AUTH_METHOD contains a newline; it must fit on one pg_hba.conf line"
                    .into(),
            );
        }
        let initdb_dir =
            PathBuf::from(plain("TANDEM_INITDB_DIR").unwrap_or_else(|| DEFAULT_INITDB_DIR.into()));

        let os_user = if Uid::effective().is_root() {
            let ident = Identity::lookup("postgres").map_err(|e| {
                format!(
                    "tandem runs as root and PostgreSQL must not, but there is no user to run it as ({e}); \
                     create a `postgres` user in the image or run the container as a non-root user"
                )
            })?;
            if ident.uid.is_root() {
                return Err("the `postgres` user has uid 0; PostgreSQL refuses to run as root, give it its own uid".into());
            }
            Some(ident)
        } else {
            None
        };

        let upgrade = Upgrade {
            enabled: match plain("TANDEM_PG_UPGRADE").as_deref() {
                None | Some("off") => false,
                Some("auto") => true,
                Some(v) => {
                    return Err(format!(
                        "TANDEM_PG_UPGRADE={v:?}: use auto (upgrade a data directory of an older PostgreSQL with pg_upgrade) or off"
                    ))
                }
            },
            old_bin_dir: plain("TANDEM_PG_OLD_BINDIR").map(PathBuf::from),
            mode: match plain("TANDEM_PG_UPGRADE_MODE").as_deref() {
                None | Some("auto") => UpgradeMode::Auto,
                Some("link") => UpgradeMode::Link,
                Some("copy") => UpgradeMode::Copy,
                Some(v) => {
                    return Err(format!(
                        "TANDEM_PG_UPGRADE_MODE={v:?}: use auto (hard links on one filesystem), link or copy"
                    ))
                }
            },
            keep_old: switch(env, "TANDEM_PG_UPGRADE_KEEP_OLD")?,
        };
        let sync_password = switch(env, "TANDEM_PG_SYNC_PASSWORD")?;

        Ok(Settings {
            data_dir,
            port,
            socket_dir,
            user,
            password,
            database,
            initdb_args,
            waldir,
            host_auth_method,
            initdb_dir,
            bin_dir: None,
            server_settings: Vec::new(),
            os_user,
            upgrade,
            sync_password,
        })
    }

    /// The path of the server's Unix socket.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }
}

/// An `on`/`off` variable (unset: off).
fn switch(env: &HashMap<String, String>, name: &str) -> Result<bool, String> {
    match env.get(name).map(String::as_str) {
        None | Some("") | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(v) => Err(format!("{name}={v:?}: use on or off")),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "PGPORT={p:?} is not a port number; set it to a number from 1 to 65535"
        )),
    }
}

/// Reads `name` or `name_FILE` (Docker and Kubernetes secrets). Setting both is an error;
/// trailing newlines of the file are stripped, as `$(< file)` does. The value itself is never
/// put in an error, since it may be a password.
fn secret(env: &HashMap<String, String>, name: &str) -> Result<Option<String>, String> {
    let file_var = format!("{name}_FILE");
    let value = env.get(name).filter(|v| !v.is_empty());
    let file = env.get(&file_var).filter(|v| !v.is_empty());
    match (value, file) {
        (Some(_), Some(_)) => Err(format!(
            "both {name} and {file_var} are set; set only one of them"
        )),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let bytes = match read_bounded(std::path::Path::new(path), MAX_SECRET as u64) {
                Ok(bytes) => bytes,
                Err(ReadError::TooLong) => {
                    return Err(format!(
                        "{file_var} {path} is longer than {} KiB, the most tandem reads for a value; is it the right file?",
                        MAX_SECRET / 1024
                    ))
                }
                Err(ReadError::Failed(e)) => {
                    return Err(format!("cannot read {file_var} {path}: {e}"))
                }
            };
            let mut text = String::from_utf8(bytes)
                .map_err(|_| format!("{file_var} {path} is not UTF-8 text"))?;
            while text.ends_with('\n') {
                text.pop();
            }
            Ok(Some(text).filter(|t| !t.is_empty()))
        }
    }
}

/// The longest value tandem reads from a `_FILE`.
pub const MAX_SECRET: usize = 64 * 1024;

/// PostgreSQL's names (users, databases) are at most NAMEDATALEN - 1 bytes; longer ones
/// are cut silently by the server, so a login with the whole name would fail.
pub const MAX_NAME: usize = 63;

/// Splits `s` into words as a POSIX shell would, without expansions: whitespace separates
/// words, single quotes keep everything literally, double quotes keep everything but a
/// backslash before `$`, `` ` ``, `"`, `\` or a newline, and a backslash outside quotes keeps
/// the next character (a backslash-newline disappears).
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word is open: `''` is an empty word, not nothing.
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(next) => {
                    word.push(next);
                    in_word = true;
                }
                None => {
                    word.push('\\');
                    in_word = true;
                }
            },
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unbalanced single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('$' | '`' | '"' | '\\')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unbalanced double quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unbalanced double quote".into()),
                    }
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn defaults_match_the_official_image() {
        let s = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/postgresql/data"));
        assert_eq!(s.port, 5432);
        assert_eq!(s.socket_dir, PathBuf::from("/var/run/postgresql"));
        assert_eq!(s.user, "postgres");
        assert_eq!(s.password, None);
        assert_eq!(s.database, "postgres");
        assert!(s.initdb_args.is_empty());
        assert_eq!(s.waldir, None);
        assert_eq!(s.host_auth_method, "scram-sha-256");
        assert_eq!(s.initdb_dir, PathBuf::from("/docker-entrypoint-initdb.d"));
        assert_eq!(s.bin_dir, None);
        assert_eq!(s.os_user.is_some(), Uid::effective().is_root());
        assert_eq!(
            s.socket_path(),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")
        );
    }

    #[test]
    fn database_defaults_to_the_user_and_empty_means_unset() {
        let s = Settings::from_env(&env(&[
            ("POSTGRES_USER", "my cool postgres user"),
            ("POSTGRES_DB", ""),
            ("POSTGRES_PASSWORD", ""),
            ("PGPORT", "6543"),
            ("PGDATA", "/data"),
        ]))
        .unwrap();
        assert_eq!(s.database, "my cool postgres user");
        assert_eq!(s.password, None);
        assert_eq!(s.port, 6543);
        assert_eq!(s.data_dir, PathBuf::from("/data"));
    }

    #[test]
    fn file_variants_are_read_and_trailing_newlines_stripped() {
        let pw = temp_file("pw", "s3cret pass\n\n");
        let user = temp_file("user", "app \"user\"\n");
        let s = Settings::from_env(&env(&[
            ("POSTGRES_PASSWORD_FILE", pw.to_str().unwrap()),
            ("POSTGRES_USER_FILE", user.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("s3cret pass"));
        assert_eq!(s.user, "app \"user\"");
        assert_eq!(s.database, "app \"user\"");
    }

    #[test]
    fn both_variable_and_file_is_an_error_naming_both() {
        let pw = temp_file("pw2", "x");
        let err = Settings::from_env(&env(&[
            ("POSTGRES_PASSWORD", "a"),
            ("POSTGRES_PASSWORD_FILE", pw.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert!(
            err.contains("POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_file_names_variable_path_and_errno() {
        let err = Settings::from_env(&env(&[("POSTGRES_DB_FILE", "/nonexistent/db")])).unwrap_err();
        assert_eq!(
            err,
            "cannot read POSTGRES_DB_FILE /nonexistent/db: No such file or directory (os error 2)"
        );
        if !Uid::effective().is_root() {
            let f = temp_file("locked", "x");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
            let err = Settings::from_env(&env(&[("POSTGRES_USER_FILE", f.to_str().unwrap())]))
                .unwrap_err();
            assert!(err.contains("os error 13"), "{err}");
        }
    }

    /// A FIFO nobody writes to is refused at once instead of blocking tandem before it
    /// handles signals (it used to hang in `open`).
    #[test]
    fn a_fifo_as_a_file_variable_is_refused_without_waiting() {
        let dir = crate::testutil::TempDir::new("fifo-secret");
        let fifo = dir.0.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let path = fifo.to_str().unwrap();
        let err = Settings::from_env(&env(&[("POSTGRES_PASSWORD_FILE", path)])).unwrap_err();
        assert_eq!(
            err,
            format!("cannot read POSTGRES_PASSWORD_FILE {path}: it is a FIFO, not a file; tandem reads values from files and does not wait for a writer")
        );
    }

    #[test]
    fn bad_port_is_rejected_clearly() {
        for bad in ["abc", "0", "70000", "-1", "54 32"] {
            let err = Settings::from_env(&env(&[("PGPORT", bad)])).unwrap_err();
            assert!(
                err.starts_with("PGPORT=") && err.contains("1 to 65535"),
                "{err}"
            );
        }
    }

    #[test]
    fn relative_pgdata_and_newline_in_method_are_rejected() {
        assert!(Settings::from_env(&env(&[("PGDATA", "data")]))
            .unwrap_err()
            .contains("absolute"));
        let err = Settings::from_env(&env(&[("POSTGRES_HOST_AUTH_METHOD", "trust\nhost all")]))
            .unwrap_err();
        assert!(err.contains("newline"), "{err}");
    }

    #[test]
    fn debug_redacts_the_password() {
        let s = Settings::from_env(&env(&[("POSTGRES_PASSWORD", "hunter2")])).unwrap();
        let text = format!("{s:?}");
        assert!(
            !text.contains("hunter2") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn initdb_args_are_split_like_a_shell() {
        let s = Settings::from_env(&env(&[(
            "POSTGRES_INITDB_ARGS",
            r#"--locale-provider=icu  --icu-locale="en US" -c 'work_mem=64 MB' a\ b "q\"x\\y\z" '' "#,
        )]))
        .unwrap();
        assert_eq!(
            s.initdb_args,
            [
                "--locale-provider=icu",
                "--icu-locale=en US",
                "-c",
                "work_mem=64 MB",
                "a b",
                r#"q"x\y\z"#,
                ""
            ]
        );
        assert_eq!(split_words(" \t\n").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("a\\\nb").unwrap(), ["ab"]);
        let err = Settings::from_env(&env(&[("POSTGRES_INITDB_ARGS", "--foo='bar")])).unwrap_err();
        assert_eq!(err, "POSTGRES_INITDB_ARGS: unbalanced single quote");
        assert_eq!(
            split_words(r#"a "b"#).unwrap_err(),
            "unbalanced double quote"
        );
    }
}
