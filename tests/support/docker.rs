//! What the container tests share: is there an engine, run `docker`, read what it said.
//! Included by tests/container.rs and tests/split.rs (`#[path]`), not by the others.

#![allow(dead_code)] // each test binary uses a part

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Whether the engine answers; without it tests skip, or fail under CI.
pub fn engine_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let result = READY.get_or_init(|| {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(stderr(&o)),
            Err(e) => Err(format!("cannot run docker: {e}")),
        }
    });
    match result {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but no Docker engine answers ({why}); run images/install-docker.sh first")
        }
        Err(why) => {
            eprintln!("skipped: no Docker engine ({why}); images/install-docker.sh starts one");
            false
        }
    }
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run docker")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Everything a command said, for a failure message.
pub fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    )
}
