//! Who a child runs as: users and their supplementary groups, resolved before `fork`.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// Who a child runs as: resolved before `fork` so the child only makes syscalls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, from the group database (what `initgroups` would set).
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

impl Identity {
    /// Looks a user up by name or numeric uid: in /etc/passwd and /etc/group first (a
    /// container's user database), then through NSS. Reading the files ourselves keeps
    /// glibc from loading NSS modules (libnss_systemd and its libraries: a third of a MiB
    /// of resident memory for the life of PID 1) when the files answer.
    pub fn lookup(user: &str) -> Result<Identity, String> {
        if let Some(found) = lookup_in_files(user, "/etc/passwd", "/etc/group") {
            return Ok(found);
        }
        let found = match user.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(user),
        }
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?;
        let Some(u) = found else {
            return Err(format!("user {user:?} does not exist"));
        };
        let cname = CString::new(u.name.clone()).map_err(|_| format!("bad user name {user:?}"))?;
        let groups = nix::unistd::getgrouplist(&cname, u.gid)
            .map_err(|e| format!("cannot list the groups of {user:?}: {e}"))?;
        Ok(Identity {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
            groups,
            home: u.dir,
        })
    }

    /// Whether switching to this identity is a change from who we are.
    pub fn is_current(&self) -> bool {
        Uid::effective() == self.uid
    }
}

/// `user` (a name or a uid) from passwd/group files, with its supplementary groups: the
/// groups that list it as a member, plus its primary group. `None` when it is not there or
/// the files cannot be read.
fn lookup_in_files(user: &str, passwd: &str, group: &str) -> Option<Identity> {
    let passwd = std::fs::read_to_string(passwd).ok()?;
    let by_uid = user.parse::<u32>().ok();
    let (name, uid, gid, home) = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse::<u32>().ok()?;
        let hit = match by_uid {
            Some(want) => uid == want,
            None => f[0] == user,
        };
        hit.then(|| {
            (
                f[0].to_string(),
                uid,
                f[3].parse::<u32>().ok(),
                f[5].to_string(),
            )
        })
    })?;
    let gid = gid?;
    let groups_text = std::fs::read_to_string(group).ok()?;
    let mut groups = vec![Gid::from_raw(gid)];
    for line in groups_text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(g) = f[2].parse::<u32>() else { continue };
        if f[3].split(',').any(|m| m == name) && !groups.contains(&Gid::from_raw(g)) {
            groups.push(Gid::from_raw(g));
        }
    }
    Some(Identity {
        name,
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups,
        home: PathBuf::from(home),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_from_files_match_nss_with_their_groups() {
        let dir = std::env::temp_dir().join(format!("tandem-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (passwd, group) = (dir.join("passwd"), dir.join("group"));
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nhive:x:1000:1000::/home/hive:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            &group,
            "hive:x:1000:\nssl-cert:x:103:postgres,hive\nother:x:5:root\n",
        )
        .unwrap();
        let (p, g) = (passwd.to_str().unwrap(), group.to_str().unwrap());
        let hive = lookup_in_files("hive", p, g).unwrap();
        assert_eq!((hive.uid.as_raw(), hive.gid.as_raw()), (1000, 1000));
        assert_eq!(hive.groups, vec![Gid::from_raw(1000), Gid::from_raw(103)]);
        assert_eq!(hive.home, PathBuf::from("/home/hive"));
        assert_eq!(lookup_in_files("1000", p, g).unwrap().name, "hive");
        assert!(lookup_in_files("nobody-here", p, g).is_none());
        let _ = std::fs::remove_dir_all(&dir);
        // The real database: the same answer as NSS for postgres.
        let from_files = lookup_in_files("postgres", "/etc/passwd", "/etc/group").unwrap();
        let u = User::from_name("postgres").unwrap().unwrap();
        let mut nss = nix::unistd::getgrouplist(&CString::new("postgres").unwrap(), u.gid).unwrap();
        let mut ours = from_files.groups.clone();
        nss.sort_by_key(|g| g.as_raw());
        ours.sort_by_key(|g| g.as_raw());
        assert_eq!((from_files.uid, ours), (u.uid, nss));
    }
}
