//! Embedded PostgreSQL, honouring the official `postgres` image's contract.
//!
//! - [`settings`]: POSTGRES_*, their `_FILE` variants, PGDATA, PGPORT -> [`Settings`].
//! - [`binaries`]: which installation to run -> [`Binaries`].
//! - [`init`]: directories and owners on every start; initdb, a temporary socket-only
//!   server, POSTGRES_DB and `/docker-entrypoint-initdb.d` on the first ([`prepare`]).
//! - [`ready`]: `postmaster.pid` watched with inotify, then one protocol round trip
//!   ([`wait_ready`]).
//!
//! Starting, signalling and reaping the real server belong to the runtime; this module hands
//! it the command ([`server_command`]) and the app's environment ([`app_env`]).

use std::process::Command;

pub mod binaries;
pub mod init;
pub mod ready;
pub mod settings;
#[cfg(test)]
pub(crate) mod testutil;

pub use binaries::{locate_binaries, Binaries};
pub use init::{prepare, ChildSlot, INIT_MARKER};
pub use ready::wait_ready;
pub use settings::Settings;

/// The real server: `postgres -D PGDATA -p PGPORT -k SOCKET_DIR`. User and session are not
/// applied here: the runtime calls `process::prepare` with `settings.os_user`.
pub fn server_command(settings: &Settings, bins: &Binaries) -> Command {
    let mut cmd = Command::new(bins.program("postgres"));
    cmd.arg("-D")
        .arg(&settings.data_dir)
        .arg("-p")
        .arg(settings.port.to_string())
        .arg("-k")
        .arg(&settings.socket_dir)
        // PostgreSQL's user may not be able to enter tandem's working directory.
        .current_dir("/");
    cmd
}

/// What the app gets unless the user set it already: `DATABASE_URL` and libpq's PG*
/// variables, pointing at the server over loopback TCP.
pub fn app_env(settings: &Settings) -> Vec<(String, String)> {
    let mut userinfo = percent_encode(&settings.user);
    if let Some(pw) = &settings.password {
        userinfo.push(':');
        userinfo.push_str(&percent_encode(pw));
    }
    let url = format!(
        "postgresql://{userinfo}@127.0.0.1:{}/{}",
        settings.port,
        percent_encode(&settings.database)
    );
    vec![
        ("DATABASE_URL".into(), url),
        ("PGHOST".into(), "127.0.0.1".into()),
        ("PGPORT".into(), settings.port.to_string()),
        ("PGUSER".into(), settings.user.clone()),
        ("PGDATABASE".into(), settings.database.clone()),
    ]
}

/// Everything but RFC 3986's unreserved characters, as UTF-8 bytes in `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn app_env_points_at_loopback_and_encodes_names() {
        let env = HashMap::from([
            ("POSTGRES_USER".to_string(), "my cool user".to_string()),
            ("POSTGRES_DB".to_string(), "hive/genie".to_string()),
            ("PGPORT".to_string(), "6000".to_string()),
        ]);
        let s = Settings::from_env(&env).unwrap();
        let vars = app_env(&s);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("DATABASE_URL"),
            Some("postgresql://my%20cool%20user@127.0.0.1:6000/hive%2Fgenie")
        );
        assert_eq!(get("PGHOST"), Some("127.0.0.1"));
        assert_eq!(get("PGPORT"), Some("6000"));
        assert_eq!(get("PGUSER"), Some("my cool user"));
        assert_eq!(get("PGDATABASE"), Some("hive/genie"));

        let with_pw = Settings {
            password: Some("p@ss:w/rd é".into()),
            ..s
        };
        assert_eq!(
            app_env(&with_pw)[0].1,
            "postgresql://my%20cool%20user:p%40ss%3Aw%2Frd%20%C3%A9@127.0.0.1:6000/hive%2Fgenie"
        );
    }

    #[test]
    fn server_command_is_postgres_with_data_port_and_socket() {
        let s = Settings::from_env(&HashMap::from([("PGPORT".to_string(), "6001".to_string())]))
            .unwrap();
        let bins = Binaries {
            dir: "/usr/lib/postgresql/15/bin".into(),
            version: "15.18".into(),
            source: "config",
        };
        let cmd = server_command(&s, &bins);
        assert_eq!(cmd.get_program(), "/usr/lib/postgresql/15/bin/postgres");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-D",
                "/var/lib/postgresql/data",
                "-p",
                "6001",
                "-k",
                "/var/run/postgresql"
            ]
        );
    }
}
