//! Finding every process of a run, including the ones that left its process group.
//!
//! The real CLI starts its Bash tool in a new session (its own process group), so killing the
//! CLI's group misses it, and a timed-out run's `sleep 30` would live on. Every run therefore
//! carries `CCS_RUN_ID=<task id>` in its environment, which its tools inherit; killing a run
//! also signals every process whose environment holds that marker. The same scan finds
//! orphans of runs that were going when a previous daemon died.

use std::collections::HashSet;

/// The environment variable that marks a run's processes.
pub const RUN_MARKER_ENV: &str = "CCS_RUN_ID";

/// Pids of live processes (not zombies, not this process) whose environment carries
/// `CCS_RUN_ID=<marker>` for one of `markers`, with the marker found.
pub fn marked_processes(markers: &HashSet<String>) -> Vec<(i32, String)> {
    processes_with_env(RUN_MARKER_ENV, markers)
}

/// Pids of live processes (not zombies, not this process) whose environment sets `var` to one
/// of `values`, with the value found.
pub fn processes_with_env(var: &str, values: &HashSet<String>) -> Vec<(i32, String)> {
    if values.is_empty() {
        return Vec::new();
    }
    scan(var, |v| values.contains(v))
}

/// Every live process carrying any run marker, with its marker (to find the orphans of runs
/// whose ids this process does not know: those of a dead instance on this machine).
pub fn all_marked_processes() -> Vec<(i32, String)> {
    scan(RUN_MARKER_ENV, |_| true)
}

/// Live processes (not zombies, not this one) whose environment sets `var` to a value
/// `wanted` accepts, with that value.
fn scan(var: &str, wanted: impl Fn(&str) -> bool) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let prefix = format!("{var}=");
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Unreadable (another user's process, or gone meanwhile): not ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let marker = environ
            .split(|b| *b == 0)
            .filter_map(|var| std::str::from_utf8(var).ok())
            .find_map(|var| var.strip_prefix(prefix.as_str()));
        if let Some(m) = marker.filter(|m| wanted(m)) {
            if !is_zombie(pid) {
                found.push((pid, m.to_string()));
            }
        }
    }
    found
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].trim_start().chars().next())
        })
        .is_some_and(|state| matches!(state, 'Z' | 'X' | 'x'))
}

/// Send `sig` to every live process of the run `marker`. Returns how many were signalled.
pub fn signal_marked(marker: &str, sig: libc::c_int) -> usize {
    signal_all(&HashSet::from([marker.to_string()]), sig)
}

/// Send `sig` to every live process carrying one of `markers`.
pub fn signal_all(markers: &HashSet<String>, sig: libc::c_int) -> usize {
    signal_env(RUN_MARKER_ENV, markers, sig)
}

/// Send `sig` to every live process whose environment sets `var` to one of `values`.
pub fn signal_env(var: &str, values: &HashSet<String>, sig: libc::c_int) -> usize {
    let pids = processes_with_env(var, values);
    for (pid, _) in &pids {
        if *pid > 1 {
            // SAFETY: kill with a positive pid signals exactly that process.
            unsafe {
                libc::kill(*pid, sig);
            }
        }
    }
    pids.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn marked_processes_are_found_and_killed_even_in_another_session() {
        let marker = format!("test-{}", uuid::Uuid::new_v4());
        // A new session and group, as the CLI gives its tools (setsid() in the child itself:
        // the setsid utility may fork, which would race with the checks below).
        let mut cmd = Command::new("sleep");
        cmd.arg("30").env(RUN_MARKER_ENV, &marker);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn sleep in its own session");
        let markers = HashSet::from([marker.clone()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while marked_processes(&markers).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !marked_processes(&markers).is_empty(),
            "the marked sleep is found"
        );
        assert!(marked_processes(&HashSet::from(["other".to_string()])).is_empty());
        assert!(signal_marked(&marker, libc::SIGKILL) >= 1);
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marked_processes(&markers).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            marked_processes(&markers).is_empty(),
            "the marked sleep is gone"
        );
    }
}
