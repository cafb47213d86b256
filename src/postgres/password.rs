//! Password drift: POSTGRES_PASSWORD is applied by initdb only, so once it changes, logins
//! that check the password fail while the old password stays stored. On every start of an
//! existing directory with a password set, tandem compares it with what is stored, says so
//! in one line when they differ, and with `TANDEM_PG_SYNC_PASSWORD=on` stores the new one.
//!
//! How it is checked, and why this way: tandem connects to its own server over the Unix
//! socket as POSTGRES_USER once it is ready (with the sync on, before the app starts; else
//! beside the app's start, off its critical path) and reads `pg_authid.rolpassword`. It does
//! not log in over TCP with the password (that is the very login that may fail, and it
//! would depend on the `host` lines of pg_hba.conf). The socket's `local` line is initdb's
//! `trust` in the official image's layout, and then no password is sent at all: the stored
//! verifier is compared here (SCRAM-SHA-256, RFC 5802/7677: StoredKey and ServerKey
//! recomputed from the password with the stored salt and iteration count; or md5 of the
//! password and user name). Where the `local` line asks for a password instead, the
//! connection offers POSTGRES_PASSWORD, and the server's answer is the comparison (a refusal
//! with SQLSTATE 28P01 is drift). Either way nothing depends on a trust line for TCP, and
//! the password is never in argv, a file, or a log line.
//!
//! Setting it sends `ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'`: a verifier computed here
//! with a fresh salt, so not even the server's statement log could hold the password.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use super::first_start::{db_error, quote_ident};
use super::{ready, Settings};

/// How long the check may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `password` is the one `stored` (a `pg_authid.rolpassword` value) verifies, for
/// the role `user`. `None`: a form this does not know (a plain-text password of an old
/// server, say).
pub fn matches(stored: &str, user: &str, password: &str) -> Option<bool> {
    if let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") {
        return scram_matches(rest, password);
    }
    if stored.starts_with("md5") && stored.len() == 35 {
        return Some(postgres_protocol::password::md5(password.as_bytes(), user) == stored);
    }
    None
}

/// `<iterations>:<salt>$<StoredKey>:<ServerKey>`, salt and keys in base64.
fn scram_matches(verifier: &str, password: &str) -> Option<bool> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (params, keys) = verifier.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
    let salt = b64.decode(salt).ok()?;
    let stored_key = b64.decode(stored_key).ok()?;
    let server_key = b64.decode(server_key).ok()?;
    let salted = salted_password(&normalize(password), &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let server = hmac(&salted, b"Server Key");
    Some(Sha256::digest(client_key).as_slice() == stored_key && server == server_key.as_slice())
}

/// SASLprep, as PostgreSQL applies it: a password it rejects is used as it is.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// PBKDF2-HMAC-SHA-256 with one output block (RFC 5802's Hi()).
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut mac = new_mac(password);
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut prev: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = prev;
    for _ in 1..iterations {
        prev = hmac(password, &prev);
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    out
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = new_mac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The stored password is POSTGRES_PASSWORD.
    Same,
    /// It is not; `synced` when it has just been set.
    Differs { synced: bool },
    /// It could not be told, and why.
    Unknown(String),
}

/// Compares POSTGRES_PASSWORD with the superuser's stored password over the Unix socket and,
/// when they differ and `TANDEM_PG_SYNC_PASSWORD=on`, stores it. Logs one line about it
/// unless they are the same. Never fails the start: the app's own login tells the rest.
pub async fn check(settings: &Settings) -> Drift {
    let Some(password) = &settings.password else {
        return Drift::Same;
    };
    let drift = compare_and_sync(settings, password).await;
    let user = &settings.user;
    match &drift {
        Drift::Same => {}
        Drift::Differs { synced: true } => tracing::info!(
            "POSTGRES_PASSWORD differed from the stored password of {user:?}: set it to POSTGRES_PASSWORD (TANDEM_PG_SYNC_PASSWORD=on)"
        ),
        Drift::Differs { synced: false } => tracing::warn!(
            "POSTGRES_PASSWORD is not the stored password of {user:?} (it is applied only when the data directory is \
             initialised): logins that check the password (pg_hba.conf lines other than trust) will fail; set TANDEM_PG_SYNC_PASSWORD=on to store it, \
             or set POSTGRES_PASSWORD back"
        ),
        Drift::Unknown(why) => tracing::warn!(
            "cannot tell whether POSTGRES_PASSWORD is the stored password of {user:?}: {why}"
        ),
    }
    drift
}

async fn compare_and_sync(settings: &Settings, password: &str) -> Drift {
    let dbname = "postgres";
    let config = ready::config(settings, dbname, CONNECT_TIMEOUT);
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        // The socket asked for the password and the server refused it: that is drift, and
        // without the stored one tandem cannot log in to set it.
        Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
            if settings.sync_password {
                tracing::warn!(
                    "TANDEM_PG_SYNC_PASSWORD=on, but the Unix socket's pg_hba.conf line asks for the stored password, \
                     so tandem cannot log in to change it"
                );
            }
            return Drift::Differs { synced: false };
        }
        Err(e) => return Drift::Unknown(format!("the Unix socket refused: {}", db_error(&e))),
    };
    let conn = tokio::spawn(connection);
    let result = async {
        let row = client
            .query_opt(
                "SELECT rolpassword FROM pg_authid WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| format!("cannot read pg_authid: {}", db_error(&e)))?;
        let stored: Option<String> = row.and_then(|r| r.get(0));
        let same = match stored.as_deref() {
            None => false,
            Some(s) => matches(s, &settings.user, password).ok_or_else(|| {
                "the stored password is in a form tandem does not know".to_string()
            })?,
        };
        if same {
            return Ok(Drift::Same);
        }
        if !settings.sync_password {
            return Ok(Drift::Differs { synced: false });
        }
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The verifier holds only base64 and punctuation (no quote): safe in a literal. The
        // statement is never logged.
        client
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD '{verifier}'",
                quote_ident(&settings.user)
            ))
            .await
            .map_err(|e| format!("cannot set the password: {}", db_error(&e)))?;
        Ok(Drift::Differs { synced: true })
    }
    .await;
    // Dropping the client sends Terminate; the connection finishes on its own.
    drop(client);
    drop(conn);
    result.unwrap_or_else(Drift::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifiers made the way libpq makes them (postgres-protocol), SCRAM and md5; a real
    /// server's are checked by tests/password.rs.
    #[test]
    fn scram_verifiers_made_here_check_out_and_others_do_not() {
        let made = postgres_protocol::password::scram_sha_256(b"pa ss\"w\xc3\xb6rd");
        assert_eq!(matches(&made, "u", "pa ss\"wörd"), Some(true));
        assert_eq!(matches(&made, "u", "pa ss\"word"), Some(false));
        assert_eq!(matches("SCRAM-SHA-256$x:y$z:w", "u", "p"), None);
        let md5 = postgres_protocol::password::md5(b"secret", "my user");
        assert_eq!(matches(&md5, "my user", "secret"), Some(true));
        assert_eq!(matches(&md5, "other", "secret"), Some(false));
        assert_eq!(matches("plain", "u", "plain"), None);
    }

    /// What the SCRAM comparison costs (4096 iterations, PostgreSQL's default). Run with
    /// `cargo test --release --lib scram_check_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn scram_check_cost() {
        let made = postgres_protocol::password::scram_sha_256(b"pw");
        let t = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(matches(&made, "u", "pw"), Some(true));
        }
        eprintln!(
            "scram check: {:.2} ms each",
            t.elapsed().as_secs_f64() * 1000.0 / 20.0
        );
    }

    /// RFC 7677's example: password "pencil", its salt and iteration count; the expected
    /// SaltedPassword computed independently (Python's hashlib.pbkdf2_hmac).
    #[test]
    fn the_rfc_7677_example() {
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let salted = salted_password(b"pencil", &salt, 4096);
        let hex: String = salted.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "c4a49510323ab4f952cac1fa99441939e78ea74d6be81ddf7096e87513dc615d"
        );
    }
}
