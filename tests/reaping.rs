//! Orphans re-parented to tandem are reaped: as PID 1 of a pid namespace, and as a subreaper
//! when tandem is an ordinary child.
//!
//! The app's `sh` starts the orphans and exits; they stay blocked until released, so the test
//! first sees all of them adopted by tandem (without that, a tandem that is not a subreaper
//! would pass: the orphans would go to the container's init), then releases them and waits
//! until no zombie is left.

mod support;

use nix::unistd::Pid;
use support::*;

const ORPHANS: usize = 1000;

/// What may legitimately be running under tandem while the app is up.
fn expected_comm(comm: &str) -> bool {
    matches!(comm, "tandem" | "testapp" | "postgres")
}

fn describe(procs: &[Proc]) -> String {
    let mut out = format!("{} processes:", procs.len());
    for p in procs.iter().take(20) {
        out.push_str(&format!(
            "\n  pid {} ppid {} state {} comm {}",
            p.pid, p.ppid, p.state, p.comm
        ));
    }
    out
}

/// Creates ORPHANS orphans from the app, checks tandem adopted them all, releases them, and
/// waits until none of them (and no zombie) is left among `procs()`.
fn orphans_are_reaped(tandem: &mut Tandem, sandbox: &Sandbox, procs: impl Fn() -> Vec<Proc>) {
    let tandem_pid: Pid = tandem.pid();
    // Returns once the app's `sh` has exited: every orphan has been re-parented by then.
    tandem.app_ok(sandbox, "POST", &format!("/orphans?n={ORPHANS}&hold=1"));
    let adopted: Vec<Proc> = procs()
        .into_iter()
        .filter(|p| p.ppid == tandem_pid.as_raw() && p.comm == "sh")
        .collect();
    if adopted.len() != ORPHANS {
        tandem.fail(&format!(
            "{} of {ORPHANS} orphans have tandem (pid {tandem_pid}) as parent",
            adopted.len()
        ));
    }
    // All exit at once: ORPHANS zombies for tandem to reap.
    tandem.app_ok(sandbox, "POST", "/orphans/release");
    let mut last = Vec::new();
    let clean = poll_until(SHORT_TIMEOUT, || {
        last = procs()
            .into_iter()
            .filter(|p| p.state == 'Z' || !expected_comm(&p.comm))
            .collect();
        last.is_empty().then_some(())
    });
    if clean.is_none() {
        tandem.fail(&format!(
            "zombies or stray processes left: {}",
            describe(&last)
        ));
    }
    assert_eq!(tandem.app_ok(sandbox, "GET", "/health"), "ok");
}

#[test]
fn orphans_are_reaped_by_tandem_as_pid_1() {
    let sandbox = Sandbox::new("orphans-pid1");
    let mut tandem = Tandem::start(&sandbox.env_with_db());
    tandem.wait_app_ready();
    let pid = tandem.pid();
    // Everything in tandem's pid namespace.
    orphans_are_reaped(&mut tandem, &sandbox, || procs_in_namespace_of(pid));
    assert_eq!(tandem.stop(), 0);
}

#[test]
fn orphans_are_reaped_by_tandem_as_a_subreaper() {
    let sandbox = Sandbox::new("orphans-subreaper");
    let testapp = testapp_bin();
    let mut tandem = Tandem::start_with(
        Mode::Child,
        &sandbox.env_with_db(),
        &[testapp.to_str().unwrap()],
    );
    tandem.wait_app_ready();
    let pid = tandem.pid();
    // tandem's children (no namespace here).
    orphans_are_reaped(&mut tandem, &sandbox, || {
        all_procs()
            .into_iter()
            .filter(|p| p.ppid == pid.as_raw())
            .collect()
    });
    assert_eq!(tandem.stop(), 0);
}

/// Killing a child orphans its own children, which come back to tandem: as a subreaper (not
/// PID 1, whose exit would take the namespace) it goes round until none is left, so nothing
/// it started outlives it, not even a grandchild in a session of its own whose parent ignored
/// SIGTERM. Fails with a single sweep of direct children.
#[test]
fn nothing_outlives_a_subreaper_tandem_not_even_grandchildren_in_other_sessions() {
    let sandbox = Sandbox::new("grandchildren");
    let mut env = sandbox.env();
    env.set("TANDEM_POSTGRES", "off");
    let script = "setsid sh -c 'trap \"\" TERM; setsid sleep 1001 & echo grandchild-up; wait' & \
                  exec sleep 1000";
    let mut tandem = Tandem::start_raw(
        Mode::Wrapped { mount_ro: false },
        &env,
        &["--"],
        &["sh", "-c", script],
        None,
    );
    tandem.wait_for_line("app | grandchild-up", START_TIMEOUT);
    tandem.signal(nix::sys::signal::Signal::SIGTERM);
    let code = tandem.wait_exit_code(STOP_TIMEOUT);
    let leftovers = tandem.leftovers();
    if !leftovers.is_empty() {
        tandem.fail(&format!(
            "still running after tandem exited: {leftovers:#?}"
        ));
    }
    assert_eq!(
        code, 0,
        "the app (exec sleep) was ended by tandem's SIGTERM: a clean stop"
    );
}
