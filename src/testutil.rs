//! Unit-test helpers for every module: one reaper for the whole test binary, and per-test directories and ports.
//!
//! `Reaper::reap` collects *every* child of the process, so two reapers in one test binary
//! would steal each other's exit statuses: every test that spawns must use [`reaper`]. No
//! signal thread runs in unit tests, so a background thread drains it every millisecond.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{ChildSpec, Exit, Reaper};

/// The test binary's one reaper, drained by a background thread.
pub fn reaper() -> Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let reaper = Reaper::new();
            let r = reaper.clone();
            std::thread::spawn(move || loop {
                r.reap();
                std::thread::sleep(Duration::from_millis(1));
            });
            reaper
        })
        .clone()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A port in 20000..40000 unlikely to clash with other tests of this run or of another run.
pub fn port() -> u16 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (20000 + (std::process::id().wrapping_mul(37).wrapping_add(n * 7919)) % 20000) as u16
}

/// A fresh directory under /tmp that the `postgres` user can traverse (0755), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/tmp/tandem-pgtest-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `spec` through the shared reaper and returns how it ended.
pub async fn run(spec: ChildSpec) -> Exit {
    let spawned = reaper().spawn(spec).unwrap();
    spawned.exit.await.unwrap()
}

/// Leaves a test early because this machine lacks something it needs: a line on a
/// developer's machine, a failure in CI (`CI` set), where nothing may be skipped silently.
pub fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so this test may not be skipped: {reason}"
    );
    eprintln!("skipped: {reason}");
}

/// Writes a file with the given mode.
pub fn write(path: &Path, contents: &[u8], mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every path below `dir` with its owner's uid, links not followed.
pub fn owners_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), m.uid()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
