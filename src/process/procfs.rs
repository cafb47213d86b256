//! What /proc says about processes: resident memory and CPU time, of tandem itself and
//! summed over process groups (every service tandem starts leads its own group, so a
//! group is the service: PostgreSQL's backends, the app's workers).

use std::collections::HashMap;

/// Resident memory and CPU time (user + system).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    /// Processes counted.
    pub processes: u32,
}

/// The fields of `/proc/PID/stat` we use: (process group, user + system ticks, rss pages).
/// The command name (field 2) may hold spaces and parentheses, so fields are counted
/// after its last `)`.
fn parse_stat(stat: &str) -> Option<(i32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) ... utime(14) stime(15) ... rss(24).
    let pgrp = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss = f.get(21)?.parse().ok()?;
    Some((pgrp, utime + stime, rss))
}

fn units() -> (u64, f64) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64);
    (page, ticks)
}

/// tandem's own usage.
pub fn own() -> Usage {
    let (page, ticks) = units();
    match std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
    {
        Some((_, cpu, rss)) => Usage {
            rss_bytes: rss * page,
            cpu_seconds: cpu as f64 / ticks,
            processes: 1,
        },
        None => Usage::default(),
    }
}

/// The usage of each of these process groups, from one pass over /proc. A group with no
/// process left is absent.
pub fn groups(pgids: &[i32]) -> HashMap<i32, Usage> {
    let mut out: HashMap<i32, Usage> = HashMap::new();
    if pgids.is_empty() {
        return out;
    }
    let (page, ticks) = units();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may be gone between the listing and the read: skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((pgrp, cpu, rss)) = parse_stat(&stat) else {
            continue;
        };
        if pgids.contains(&pgrp) {
            let u = out.entry(pgrp).or_default();
            u.rss_bytes += rss * page;
            u.cpu_seconds += cpu as f64 / ticks;
            u.processes += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 \
                    123 4096000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some((4242, 10, 250)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_real_group_is_measured_and_tandem_itself_too() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let usage = groups(&[pgid]);
        let _ = child.kill();
        let _ = child.wait();
        let u = usage.get(&pgid).expect("the sleep's group");
        assert_eq!(u.processes, 1);
        assert!(u.rss_bytes > 0, "{u:?}");
        let me = own();
        assert!(me.rss_bytes > 1 << 20, "{me:?}");
        assert!(groups(&[pgid]).is_empty(), "gone once it is reaped");
    }
}
