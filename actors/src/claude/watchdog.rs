//! The watchdog: a small process that outlives the daemon by a moment and kills what the
//! daemon's runs left behind when it dies.
//!
//! It replaces the parent-death signal (`prctl(PR_SET_PDEATHSIG)` set in each CLI between fork
//! and exec). That hook forced every spawn through `fork` — a `pre_exec` closure rules out
//! `posix_spawn`/`vfork` — and copying the daemon's page tables was about a third of the
//! server's CPU per run (measured with `scripts/bench.sh`, see docs/benchmarks.md). Without it,
//! std spawns with `posix_spawn` (`process_group(0)` is one of its attributes).
//!
//! How: `serve` starts this process once, before any run, with a random marker; every CLI
//! the daemon starts carries `CCS_DAEMON_ID=<marker>` in its environment, and so do the
//! CLI's tools, which inherit it. The watchdog holds the read end of a pipe whose only write
//! end is the daemon's (close-on-exec, so no CLI holds it). When the daemon exits — cleanly,
//! `kill -9`, OOM, a panic — the kernel closes the write end, the watchdog reads EOF and
//! SIGKILLs every process still carrying the marker, then exits.
//!
//! What it covers compared with the signal: the same event (the daemon's death), and more —
//! the parent-death signal reached only the CLI itself, while the marker reaches the tools
//! that left its process group too (the real CLI starts its Bash tool with `setsid`). What it
//! costs: one process (a few MiB, mostly shared with the daemon's executable), started once;
//! the kill comes a `/proc` scan (a few ms) after the death instead of at once; and a
//! watchdog that is itself killed (`kill -9` on it) protects nothing until the next start,
//! whose sweep of interrupted runs ([`crate::queue`]) remains the second line. It ignores
//! SIGINT/SIGTERM/SIGHUP, which a terminal or systemd send to both: it ends after the daemon,
//! never before.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::marker;

/// The environment variable that marks every process of this daemon's runs.
pub const DAEMON_MARKER_ENV: &str = "CCS_DAEMON_ID";

/// How many `/proc` scans a sweep makes at most: a process may fork while it is scanned, and
/// its child (which carries the marker) is then found by the next scan.
const SWEEP_ROUNDS: usize = 50;
/// Between two scans: lets the SIGKILLed processes die (become zombies, which scans skip).
const SWEEP_PAUSE: Duration = Duration::from_millis(5);
/// How long the daemon waits for the watchdog to exit when it stops cleanly.
const EXIT_WAIT: Duration = Duration::from_secs(2);

static DAEMON_MARKER: OnceLock<String> = OnceLock::new();

/// The marker this daemon's runs carry, once its watchdog runs (`None` in tests that run the
/// app in-process, and if the watchdog could not start).
pub fn daemon_marker() -> Option<&'static str> {
    DAEMON_MARKER.get().map(String::as_str)
}

/// The daemon's handle on its watchdog. Dropping it (the daemon stopping) closes the pipe;
/// the watchdog then sweeps (normally finding nothing) and exits.
pub struct Watchdog {
    child: Child,
    feed: Option<ChildStdin>,
}

impl Watchdog {
    /// Start the watchdog as `program args… <marker>` (the daemon's own executable and its
    /// hidden subcommand) and mark every later run with its marker. Call before any run starts.
    pub fn start(program: &Path, args: &[&str]) -> io::Result<Watchdog> {
        let marker = uuid::Uuid::new_v4().to_string();
        let mut child = Command::new(program)
            .args(args)
            .arg(&marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its one line (what it killed) goes where the daemon's stderr goes.
            .stderr(Stdio::inherit())
            // Its own group: killing the daemon's group (`kill -- -pgid`) must leave it to
            // do its work.
            .process_group(0)
            .spawn()?;
        let feed = child.stdin.take();
        if DAEMON_MARKER.set(marker).is_err() {
            // A second watchdog in one process: the first one's marker stays in use.
            log::warn!("a watchdog was already running; the new one watches nothing");
        }
        Ok(Watchdog { child, feed })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.feed.take());
        // Reap it, so a stopped daemon leaves nothing behind; bounded, since a stop must not
        // hang on it (init reaps it otherwise).
        let deadline = Instant::now() + EXIT_WAIT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        log::warn!(pid = self.child.id(); "the watchdog did not exit in time");
    }
}

/// The watchdog's body (in its own process): wait until the daemon is gone (EOF on stdin),
/// then kill every process carrying `marker`. Returns how many were killed.
pub fn watch(marker: &str) -> usize {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to "ignore" involves no handler code.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    wait_for_eof(&mut io::stdin().lock());
    sweep(marker)
}

/// Block until `input` ends (or fails: a broken pipe means the same).
fn wait_for_eof(input: &mut impl Read) {
    let mut buf = [0u8; 64];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// SIGKILL every live process carrying `marker`, scanning until none is left (or
/// [`SWEEP_ROUNDS`]). Returns how many signals were sent.
pub fn sweep(marker: &str) -> usize {
    let values = HashSet::from([marker.to_string()]);
    let mut sent = 0;
    for _ in 0..SWEEP_ROUNDS {
        let n = marker::signal_env(DAEMON_MARKER_ENV, &values, libc::SIGKILL);
        if n == 0 {
            break;
        }
        sent += n;
        std::thread::sleep(SWEEP_PAUSE);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A zombie is dead for our purpose: it holds no resources and runs nothing.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    #[test]
    fn a_sweep_kills_the_marked_processes_and_nothing_else() {
        let marker = format!("test-{}", uuid::Uuid::new_v4());
        let mut marked = Command::new("sleep")
            .arg("30")
            .env(DAEMON_MARKER_ENV, &marker)
            .process_group(0)
            .spawn()
            .expect("spawn marked sleep");
        let mut other = Command::new("sleep")
            .arg("30")
            .env(DAEMON_MARKER_ENV, "another-daemon")
            .spawn()
            .expect("spawn other sleep");
        // The new environment shows in /proc once exec has happened, which on a loaded machine
        // may be after spawn returns: sweep until it is found, within a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = sweep(&marker);
        while found == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = sweep(&marker);
        }
        assert!(found >= 1, "the marked process was not found");
        let status = marked.wait().expect("wait marked");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(alive(other.id()), "an unmarked process was killed");
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn the_wait_ends_at_eof() {
        let mut input: &[u8] = b"anything";
        wait_for_eof(&mut input);
        assert!(input.is_empty());
    }
}
