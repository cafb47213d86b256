//! Embedded PostgreSQL, honouring the official `postgres` image's contract.
//!
//! - [`settings`]: POSTGRES_*, their `_FILE` variants, PGDATA, PGPORT -> [`Settings`].
//! - [`binaries`]: which installation to run -> [`Binaries`].
//! - `dirs`: PGDATA, the socket and WAL directories and their owner, on every start.
//! - [`first_start`]: initdb, a temporary socket-only server, POSTGRES_DB, safe against a
//!   kill at any moment ([`prepare`]); `scripts`: `/docker-entrypoint-initdb.d`.
//! - [`upgrade`]: a data directory of an older major upgraded in place with pg_upgrade,
//!   crash-safe (`TANDEM_PG_UPGRADE=auto`).
//! - [`password`]: whether the superuser's stored password is still POSTGRES_PASSWORD, and
//!   setting it when asked (`TANDEM_PG_SYNC_PASSWORD=on`).
//! - [`steps`]: how the set-up reports each process it starts to the supervisor.
//! - [`ready`]: `postmaster.pid` watched with inotify, then one protocol round trip
//!   ([`wait_ready`]).
//!
//! Starting, signalling and reaping the real server belong to the runtime; this module hands
//! it the child ([`server_spec`]) and the app's environment ([`app_env`]).

use crate::process::ChildSpec;

pub mod binaries;
mod dirs;
pub mod first_start;
pub mod password;
pub mod ready;
mod scripts;
pub mod settings;
pub mod steps;
pub mod upgrade;

pub use binaries::{locate_binaries, Binaries};
pub use first_start::prepare;
pub use ready::wait_ready;
pub use settings::Settings;
pub use steps::{SetupError, Steps};

/// The embedded database's service name (and its log prefix).
pub const SERVICE: &str = "postgres";

/// The real server: `postgres -D PGDATA -p PGPORT -k SOCKET_DIR`, as PostgreSQL's user, in
/// its own session, from `/` (its user may not be able to enter tandem's directory).
pub fn server_spec(settings: &Settings, bins: &Binaries) -> ChildSpec {
    ChildSpec::new(bins.program("postgres"))
        .arg("-D")
        .arg(&settings.data_dir)
        .arg("-p")
        .arg(settings.port.to_string())
        .arg("-k")
        .arg(&settings.socket_dir)
        .args(settings_args(settings))
        .user(settings.os_user.clone())
        .cwd("/")
}

/// `-c name=value` for each configured server setting.
pub(crate) fn settings_args(settings: &Settings) -> Vec<String> {
    settings
        .server_settings
        .iter()
        .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")])
        .collect()
}

/// What the app gets unless the user set it already: `DATABASE_URL` and libpq's PG*
/// variables, pointing at the server over loopback TCP.
pub fn app_env(settings: &Settings) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), url(settings, "postgresql")),
        ("PGHOST".into(), "127.0.0.1".into()),
        ("PGPORT".into(), settings.port.to_string()),
        ("PGUSER".into(), settings.user.clone()),
        ("PGDATABASE".into(), settings.database.clone()),
    ]
}

/// The server's URL over loopback TCP with the given scheme: `postgresql`, a driver's own
/// (`postgresql+psycopg`, `postgres`), or `jdbc:postgresql`, whose URLs carry the user and
/// password as parameters rather than before the host. Names and password percent-encoded.
pub fn url(settings: &Settings, scheme: &str) -> String {
    let port = settings.port;
    let db = percent_encode(&settings.database);
    if scheme == JDBC_SCHEME {
        let mut url = format!(
            "{scheme}://127.0.0.1:{port}/{db}?user={}",
            percent_encode(&settings.user)
        );
        if let Some(pw) = &settings.password {
            url.push_str("&password=");
            url.push_str(&percent_encode(pw));
        }
        return url;
    }
    let mut userinfo = percent_encode(&settings.user);
    if let Some(pw) = &settings.password {
        userinfo.push(':');
        userinfo.push_str(&percent_encode(pw));
    }
    format!("{scheme}://{userinfo}@127.0.0.1:{port}/{db}")
}

/// JDBC's scheme, the one whose URLs put the credentials in parameters.
pub const JDBC_SCHEME: &str = "jdbc:postgresql";

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
    fn urls_in_each_drivers_scheme_encode_names_and_password() {
        let env = HashMap::from([
            ("POSTGRES_USER".to_string(), "my user@x".to_string()),
            ("POSTGRES_PASSWORD".to_string(), "p@ss:w/rd &=?".to_string()),
            ("POSTGRES_DB".to_string(), "hive genie".to_string()),
            ("PGPORT".to_string(), "6000".to_string()),
        ]);
        let s = Settings::from_env(&env).unwrap();
        assert_eq!(
            url(&s, "postgresql+psycopg"),
            "postgresql+psycopg://my%20user%40x:p%40ss%3Aw%2Frd%20%26%3D%3F@127.0.0.1:6000/hive%20genie"
        );
        assert_eq!(
            url(&s, JDBC_SCHEME),
            "jdbc:postgresql://127.0.0.1:6000/hive%20genie?user=my%20user%40x&password=p%40ss%3Aw%2Frd%20%26%3D%3F"
        );
        // What libpq itself makes of it: the same user, password and database.
        let parsed: tokio_postgres::Config = url(&s, "postgresql").parse().unwrap();
        assert_eq!(parsed.get_user(), Some("my user@x"));
        assert_eq!(parsed.get_password(), Some("p@ss:w/rd &=?".as_bytes()));
        assert_eq!(parsed.get_dbname(), Some("hive genie"));
    }

    #[test]
    fn server_spec_is_postgres_with_data_port_and_socket() {
        let s = Settings::from_env(&HashMap::from([("PGPORT".to_string(), "6001".to_string())]))
            .unwrap();
        let bins = Binaries {
            dir: "/usr/lib/postgresql/15/bin".into(),
            version: "15.18".into(),
            source: "config",
        };
        let spec = server_spec(&s, &bins);
        assert_eq!(
            spec.program.as_os_str(),
            "/usr/lib/postgresql/15/bin/postgres"
        );
        let args: Vec<_> = spec.argv[1..]
            .iter()
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
