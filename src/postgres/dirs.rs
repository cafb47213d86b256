//! PGDATA, the socket directory and the WAL directory: created with the official image's
//! modes and owned by PostgreSQL's user, on every start.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid};

use super::Settings;

/// Whose the directories must be, and whether we may change them.
pub(super) struct Owner {
    pub(super) uid: Uid,
    pub(super) gid: Option<Gid>,
    pub(super) name: String,
    /// tandem is root and may chown.
    pub(super) fix: bool,
}

impl Owner {
    pub(super) fn of(settings: &Settings) -> Owner {
        match &settings.os_user {
            Some(i) if Uid::effective().is_root() => Owner {
                uid: i.uid,
                gid: Some(i.gid),
                name: i.name.clone(),
                fix: true,
            },
            _ => Owner {
                uid: Uid::effective(),
                gid: None,
                name: nix::unistd::User::from_uid(Uid::effective())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| "tandem's user".into()),
                fix: false,
            },
        }
    }
}

/// Creates PGDATA (0700), the socket directory (3775) and the WAL directory, and makes sure
/// PostgreSQL's user owns everything in them, as the official entrypoint does on every start.
pub(super) fn prepare_dirs(settings: &Settings) -> Result<(), String> {
    let owner = Owner::of(settings);
    make_dir(&settings.data_dir, 0o700, "PGDATA", &owner, false)?;
    make_dir(
        &settings.socket_dir,
        0o3775,
        "the socket directory",
        &owner,
        true,
    )?;
    if let Some(wal) = &settings.waldir {
        make_dir(wal, 0o700, "POSTGRES_INITDB_WALDIR", &owner, false)?;
    }
    Ok(())
}

/// `mkdir -p`, then the owner: as root, chown what is not the owner's; otherwise check it.
/// A `shared` directory (the socket's) need not be ours when we are not root, only writable,
/// as the official image's world-writable `/var/run/postgresql` is for arbitrary `--user`s.
fn make_dir(dir: &Path, mode: u32, what: &str, owner: &Owner, shared: bool) -> Result<(), String> {
    let create_fail = |e: std::io::Error| format!("cannot create {what} {}: {e}", dir.display());
    let mut created = false;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{what} {} exists and is not a directory",
                dir.display()
            ))
        }
        // Under a file, say (ENOTDIR): the OS's reason is the one to show, not what mkdir
        // of the parent would say ("File exists").
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(create_fail(e)),
        Err(_) => {
            // Parents get the usual 0755 so that PostgreSQL's user can reach the directory.
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(create_fail)?;
            }
            match std::fs::DirBuilder::new().mode(mode & 0o777).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(create_fail(e))
                }
                Err(_) => {}
                Ok(()) => created = true,
            }
        }
    }
    if owner.fix && shared && !created && dir != Path::new(super::settings::DEFAULT_SOCKET_DIR) {
        // A socket directory the user chose and that already existed (TANDEM_PG_SOCKET_DIR):
        // never walk it or change its mode (it may be /tmp); only make sure PostgreSQL can
        // create its socket there, giving it the directory itself unless anyone may write.
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("cannot inspect {what} {}: {e}", dir.display()))?;
        if meta.mode() & 0o002 == 0 && meta.uid() != owner.uid.as_raw() {
            nix::unistd::chown(dir, Some(owner.uid), owner.gid).map_err(|e| {
                format!(
                    "cannot give {what} {} to {}: {e}",
                    dir.display(),
                    owner.name
                )
            })?;
        }
        return Ok(());
    }
    if owner.fix {
        chown_tree(dir, what, owner)?;
    } else if shared {
        use nix::unistd::{access, AccessFlags};
        if let Err(e) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            return Err(format!(
                "{what} {} is not writable by {} (uid {}): {}; make it writable (mode 3777, as the official \
                 image has it) or set TANDEM_PG_SOCKET_DIR",
                dir.display(),
                owner.name,
                owner.uid,
                std::io::Error::from(e)
            ));
        }
        return Ok(());
    } else {
        check_owner(dir, what, owner)?;
    }
    // Like the official image's `chmod ... || :`: a directory we may not chmod (a mount
    // point, say) is left for PostgreSQL to judge.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    Ok(())
}

/// Not root: we cannot change owners, so a directory owned by someone else is an error now
/// rather than a PostgreSQL failure later.
fn check_owner(dir: &Path, what: &str, owner: &Owner) -> Result<(), String> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect {what} {}: {e}", dir.display()))?;
    if meta.uid() != owner.uid.as_raw() {
        return Err(format!(
            "{what} {} is owned by uid {}, not {} (uid {}), and cannot be changed: tandem is not root; \
             chown it to uid {} (on the host or in the image) or run the container as uid {}",
            dir.display(),
            meta.uid(),
            owner.name,
            owner.uid,
            owner.uid,
            meta.uid()
        ));
    }
    Ok(())
}

/// Gives `root` and everything below it not already owned by `owner` to `owner`, without
/// following symbolic links (the official image's `find \! -user postgres -exec chown`).
fn chown_tree(root: &Path, what: &str, owner: &Owner) -> Result<(), String> {
    let fail = |path: &Path, found: u32, e: &dyn std::fmt::Display| {
        let inside = if path == root {
            String::new()
        } else {
            format!(" ({} inside it)", path.display())
        };
        format!(
            "{what} {}{inside} is owned by uid {found}, not {} (uid {}), and cannot be changed: {e}; \
             chown it to uid {} on the host, or use a volume whose files tandem may chown",
            root.display(),
            owner.name,
            owner.uid,
            owner.uid
        )
    };
    // The root itself is followed if it is a symbolic link, as `chown` on it would.
    let meta = std::fs::metadata(root)
        .map_err(|e| format!("cannot inspect {what} {}: {e}", root.display()))?;
    if meta.uid() != owner.uid.as_raw() {
        std::os::unix::fs::chown(
            root,
            Some(owner.uid.as_raw()),
            owner.gid.map(|g| g.as_raw()),
        )
        .map_err(|e| fail(root, meta.uid(), &e))?;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path)
                .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
            if m.uid() != owner.uid.as_raw() {
                std::os::unix::fs::lchown(&path, Some(owner.uid.as_raw()), None)
                    .map_err(|e| fail(&path, m.uid(), &e))?;
            }
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{ChildSpec, Identity};
    use crate::testutil::{self, owners_under, write, TempDir};
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    #[test]
    fn not_root_a_directory_owned_by_someone_else_is_an_error() {
        if !Uid::effective().is_root() {
            return;
        }
        let root = TempDir::new("owner");
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(12345), None).unwrap();
        let owner = Owner {
            uid: Uid::from_raw(0),
            gid: None,
            name: "root".into(),
            fix: false,
        };
        let err = make_dir(&dir, 0o700, "PGDATA", &owner, false).unwrap_err();
        assert_eq!(
            err,
            format!(
                "PGDATA {} is owned by uid 12345, not root (uid 0), and cannot be changed: tandem is not root; \
                 chown it to uid 0 (on the host or in the image) or run the container as uid 12345",
                dir.display()
            )
        );
    }

    #[tokio::test]
    async fn as_root_ownership_is_fixed_without_following_links_and_failure_is_reported() {
        let Some(pg) = Identity::lookup("postgres")
            .ok()
            .filter(|_| Uid::effective().is_root())
        else {
            return;
        };
        let root = TempDir::new("chown");
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        write(&dir.join("sub/file"), b"", 0o600);
        let outside = root.path().join("outside");
        write(&outside, b"", 0o600);
        symlink(&outside, dir.join("link")).unwrap();
        let owner = Owner {
            uid: pg.uid,
            gid: Some(pg.gid),
            name: pg.name.clone(),
            fix: true,
        };
        make_dir(&dir, 0o700, "PGDATA", &owner, false).unwrap();
        for (path, uid) in owners_under(&dir) {
            assert_eq!(uid, pg.uid.as_raw(), "{}", path.display());
        }
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "the link was followed"
        );

        // An immutable file cannot be chowned even by root: the honest way to make chown fail.
        let stuck = dir.join("sub/stuck");
        write(&stuck, b"", 0o600);
        let exit = testutil::run(
            ChildSpec::new("chattr")
                .arg("+i")
                .arg(&stuck)
                .stdout(crate::process::Output::Null)
                .stderr(crate::process::Output::Null),
        )
        .await;
        if !exit.success() {
            testutil::skip("the chown failure case: chattr +i is not supported here");
            return;
        }
        struct Unfreeze(PathBuf);
        impl Drop for Unfreeze {
            fn drop(&mut self) {
                // Best effort outside the reaper: the test is over either way.
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unfreeze = Unfreeze(stuck.clone());
        let err = make_dir(&dir, 0o700, "PGDATA", &owner, false).unwrap_err();
        assert_eq!(
            err,
            format!(
                "PGDATA {} ({} inside it) is owned by uid 0, not postgres (uid {}), and cannot be changed: \
                 Operation not permitted (os error 1); chown it to uid {} on the host, or use a volume whose \
                 files tandem may chown",
                dir.display(),
                stuck.display(),
                pg.uid,
                pg.uid
            )
        );
    }
}
