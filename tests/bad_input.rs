//! Bad input and start failures: a non-zero exit, exactly one clear `tandem | ` error line
//! naming what to fix, nothing left running, the password never printed.
//!
//! tandem runs in a pid namespace whose PID 1 is a small `sh` that, once tandem has exited,
//! lists every process still alive in the namespace (see [`Mode::Wrapped`]).

mod support;

use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::path::Path;

use nix::libc;
use support::*;

fn testapp() -> String {
    testapp_bin().to_str().unwrap().to_string()
}

#[test]
fn missing_password_on_empty_pgdata() {
    let sandbox = Sandbox::new("no-password");
    let mut env = sandbox.env_with_db();
    env.remove("POSTGRES_PASSWORD");
    expect_failure(&env, &[&testapp()], None, 1, &["POSTGRES_PASSWORD"]);
    assert!(
        !sandbox.pgdata.join("PG_VERSION").exists(),
        "PGDATA was initialised although the start was refused"
    );
}

#[test]
fn password_and_password_file_both_set() {
    let sandbox = Sandbox::new("password-twice");
    let file = sandbox.root.join("password");
    std::fs::write(&file, "file-secret-pw\n").unwrap();
    let mut env = sandbox.env_with_db();
    env.set("POSTGRES_PASSWORD_FILE", file.to_str().unwrap());
    let tandem = expect_failure(&env, &[&testapp()], None, 1, &["POSTGRES_PASSWORD_FILE"]);
    if tandem.log.contains("file-secret-pw") {
        tandem.fail("the password from the file appears in the output");
    }
}

#[test]
fn unreadable_password_file() {
    let sandbox = Sandbox::new("password-file-missing");
    let missing = sandbox.root.join("no-such-password-file");
    let mut env = sandbox.env_with_db();
    env.remove("POSTGRES_PASSWORD")
        .set("POSTGRES_PASSWORD_FILE", missing.to_str().unwrap());
    expect_failure(&env, &[&testapp()], None, 1, &["POSTGRES_PASSWORD_FILE"]);
}

#[test]
fn pg_bindir_without_binaries() {
    let sandbox = Sandbox::new("bad-bindir");
    let empty = sandbox.root.join("empty-bin");
    mkdir(&empty, 0o755);
    let mut env = sandbox.env_with_db();
    env.set("PG_BINDIR", empty.to_str().unwrap());
    expect_failure(&env, &[&testapp()], None, 1, &["PG_BINDIR"]);
}

#[test]
fn pgdata_owned_by_someone_else_on_a_read_only_mount() {
    let sandbox = Sandbox::new("foreign-pgdata");
    mkdir(&sandbox.pgdata, 0o700);
    chown_to(&sandbox.pgdata, 65534, 65534); // nobody:nogroup; chown back fails with EROFS
    let env = sandbox.env_with_db();
    let pgdata = sandbox.pgdata.to_str().unwrap();
    expect_failure(
        &env,
        &[&testapp()],
        Some(&sandbox.pgdata),
        1,
        &[pgdata, "PGDATA"],
    );
}

/// Holds `port` on 0.0.0.0 and on [::] (IPv6 only): PostgreSQL with listen_addresses='*'
/// only fails when it can bind neither, otherwise it warns and runs on the other family.
fn hold_port(port: u16) -> Vec<TcpListener> {
    let mut held = vec![TcpListener::bind(("0.0.0.0", port)).expect("cannot hold the IPv4 port")];
    if Path::new("/proc/net/if_inet6").exists() {
        // SAFETY: plain socket calls on a descriptor we own; it is handed to TcpListener,
        // which closes it.
        unsafe {
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket(AF_INET6) failed");
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of_val(&one) as libc::socklen_t,
            );
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addr.sin6_port = port.to_be();
            let bound = libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&addr) as libc::socklen_t,
            );
            assert_eq!(bound, 0, "cannot hold [::]:{port}");
            assert_eq!(libc::listen(fd, 8), 0, "listen on [::]:{port}");
            held.push(TcpListener::from_raw_fd(fd));
        }
    }
    held
}

#[test]
fn postgres_port_in_use() {
    let sandbox = Sandbox::new("port-in-use");
    let _held = hold_port(sandbox.pg_port);
    let env = sandbox.env_with_db();
    let port = sandbox.pg_port.to_string();
    expect_failure(&env, &[&testapp()], None, 1, &[&port, "PGPORT"]);
}

#[test]
fn command_not_found_exits_127() {
    // No PostgreSQL here: nothing POSTGRES_* or PGDATA is set.
    let mut env = Env::default();
    env.set("TANDEM_SOCKET", "/tmp/tandem-test-cmd-not-found.sock");
    expect_failure(
        &env,
        &["no-such-command-for-tandem"],
        None,
        127,
        &["no-such-command-for-tandem"],
    );
}

#[test]
fn command_not_executable_exits_126_and_stops_postgres() {
    let sandbox = Sandbox::new("not-executable");
    let script = sandbox.root.join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho should not run\n").unwrap();
    let env = sandbox.env_with_db();
    let path = script.to_str().unwrap();
    let tandem = expect_failure(&env, &[path], None, 126, &[path]);
    // Every server started (the temporary one of initdb, the real one) was shut down cleanly.
    let started = tandem
        .log
        .count("database system is ready to accept connections");
    let stopped = tandem.log.count("database system is shut down");
    if started != stopped {
        tandem.fail(&format!(
            "PostgreSQL started {started} times, shut down cleanly {stopped} times"
        ));
    }
}

#[test]
fn postgres_that_exits_before_ready_is_a_start_failure() {
    let sandbox = Sandbox::new("bad-conf");
    let env = sandbox.env_with_db();
    let mut first = Tandem::start(&env);
    first.wait_app_ready();
    assert_eq!(first.stop(), 0, "the first start stops cleanly");
    // A setting PostgreSQL refuses: the server exits at once, before it is ready.
    let conf = sandbox.pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nshared_buffers = 'lots'\n");
    std::fs::write(&conf, text).unwrap();
    let tandem = expect_failure(&env, &[&testapp()], None, 1, &["before it was ready"]);
    assert!(
        tandem.log.contains("shared_buffers"),
        "PostgreSQL's own reason is in the log"
    );
}

/// A variable tandem reads must be text: a value that is not UTF-8 is one error naming it,
/// never dropped in silence (it used to run with the database `postgres` instead).
#[test]
fn a_value_tandem_reads_that_is_not_utf8_is_refused_by_name() {
    let sandbox = Sandbox::new("not-utf8");
    let mut env = sandbox.env_with_db();
    env.set_bytes("POSTGRES_DB", b"\xff\xfe");
    let tandem = expect_failure(&env, &[&testapp()], None, 1, &["POSTGRES_DB"]);
    assert!(
        tandem.log.contains("not valid UTF-8"),
        "{}",
        tandem.log.text()
    );
}

/// Variables tandem does not read pass through to the app byte for byte.
#[test]
fn a_value_tandem_does_not_read_passes_through_byte_for_byte() {
    let sandbox = Sandbox::new("raw-passthrough");
    let mut env = sandbox.env();
    env.set("TANDEM_POSTGRES", "off");
    env.set_bytes("APP_RAW", b"a\xffb");
    let mut tandem = Tandem::start_with(
        Mode::Pid1,
        &env,
        &[
            "sh",
            "-c",
            "printf '%s' \"$APP_RAW\" | od -An -tx1 | tr -d ' \\n'; echo",
        ],
    );
    tandem.wait_for_line("app | 61ff62", SHORT_TIMEOUT);
    assert_eq!(tandem.wait_exit_code(STOP_TIMEOUT), 0);
}

/// A `_FILE` is read only up to 64 KiB: `/dev/zero` is an error naming the file, not a
/// process that reads until memory runs out.
#[test]
fn a_file_variable_over_the_limit_is_refused_naming_the_file() {
    let sandbox = Sandbox::new("huge-file");
    let mut env = sandbox.env_with_db();
    env.remove("POSTGRES_PASSWORD")
        .set("POSTGRES_PASSWORD_FILE", "/dev/zero");
    let tandem = expect_failure(&env, &[&testapp()], None, 1, &["/dev/zero"]);
    assert!(
        tandem.log.contains("longer than 64 KiB"),
        "{}",
        tandem.log.text()
    );
}

/// PostgreSQL cuts names at 63 bytes; tandem refuses a longer one before initdb runs.
#[test]
fn a_name_over_postgresqls_limit_is_refused_before_initdb() {
    let sandbox = Sandbox::new("long-name");
    let mut env = sandbox.env_with_db();
    env.set("POSTGRES_USER", &"u".repeat(64));
    let tandem = expect_failure(&env, &[&testapp()], None, 1, &["POSTGRES_USER"]);
    assert!(
        tandem.log.contains("at most 63 bytes"),
        "{}",
        tandem.log.text()
    );
    assert!(!tandem.log.contains("initdb"), "refused before initdb");
}

/// A directory given as the command is named as one, with the shell's 126.
#[test]
fn a_directory_as_the_command_says_so() {
    let sandbox = Sandbox::new("dir-cmd");
    let mut env = sandbox.env();
    env.set("TANDEM_POSTGRES", "off");
    let dir = sandbox.root.to_str().unwrap().to_string();
    let tandem = expect_failure(&env, &[&dir], None, 126, &["is a directory"]);
    drop(tandem);
}

/// A PGDATA made by another major version is refused before the server starts, with the
/// fix in the line, and its files stay as they were (the server would refuse it too, in a
/// line buried in its log).
#[test]
fn a_data_directory_of_another_major_version_is_refused_untouched() {
    for (theirs, words) in [("99", "cannot be downgraded"), ("9.6", "pg_upgrade")] {
        let sandbox = Sandbox::new("other-major");
        mkdir(&sandbox.pgdata, 0o700);
        let files = [
            ("PG_VERSION", format!("{theirs}\n")),
            ("base", String::new()),
        ];
        for (name, text) in &files {
            std::fs::write(sandbox.pgdata.join(name), text).unwrap();
        }
        let env = sandbox.env_with_db();
        let tandem = expect_failure(&env, &[&testapp()], None, 1, &["PostgreSQL"]);
        assert!(tandem.log.contains(words), "{}", tandem.log.text());
        assert!(tandem
            .log
            .contains(&format!("initialised by PostgreSQL {theirs}")));
        let mut found: Vec<String> = std::fs::read_dir(&sandbox.pgdata)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, ["PG_VERSION", "base"], "nothing added or removed");
        for (name, text) in &files {
            assert_eq!(
                &std::fs::read_to_string(sandbox.pgdata.join(name)).unwrap(),
                text
            );
        }
    }
}
