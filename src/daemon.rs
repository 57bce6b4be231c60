//! Daemon control: the pid file, and `start` / `stop` / `status` as outcomes the CLI prints and
//! the TUI shows.
//!
//! The pid file is written by `serve` (see `app.rs`) once it listens, and removed when it stops.
//! A pid file can outlive its process (SIGKILL, a crash, a reboot) and its pid can be reused by
//! an unrelated program, so every reader checks `/proc/<pid>` (alive, not a zombie, argv[0]
//! named like our executable) before believing it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use actors::config::load::{load, Environment};
use actors::config::Config;

use crate::client::{Client, ClientError, Target};

/// How long `start` waits for `/health` to answer.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);
/// After SIGTERM the daemon takes up to `shutdownGraceMs` for running tasks, then up to
/// `taskQueue.killGraceMs` to kill them, then up to 5 s to close connections: this margin
/// covers the last step and a slow machine.
const STOP_MARGIN: Duration = Duration::from_secs(10);
/// After SIGKILL the kernel needs no grace; this only bounds a stuck exit (e.g. in D state).
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// Lines of the log file shown when `start` fails.
pub const LOG_TAIL_LINES: usize = 20;

/// What the control commands need to know, from flags and the environment.
#[derive(Debug, Clone)]
pub struct Control {
    pub config_path: PathBuf,
    pub env: Environment,
    /// `--url`: reach the daemon there instead of the config's host and port.
    pub url: Option<String>,
    /// `--api-key` / `CCS_API_KEY`: instead of the config's first admin key.
    pub api_key: Option<String>,
    /// The program `start` runs as `<exe> serve --config <path>` (ourselves, outside tests).
    pub exe: PathBuf,
    pub start_timeout: Duration,
}

/// The config as the control commands use it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    pub target: Target,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{message}")]
    StartFailed {
        message: String,
        /// The last lines of the log file, to show what went wrong.
        log_tail: Vec<String>,
    },
    #[error("{0}")]
    StopFailed(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// What the pid file says, checked against the live processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidState {
    /// No pid file: not running (or not started by `serve` with this config).
    NoFile,
    /// The pid file names a live process of our program.
    Running(i32),
    /// The pid file is wrong; `reason` says how. Callers remove it.
    Stale { pid: Option<i32>, reason: String },
}

/// How `start` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    AlreadyRunning {
        pid: i32,
        url: String,
    },
    Started {
        pid: i32,
        url: String,
        /// A stale pid file found (and removed) first.
        stale: Option<String>,
    },
}

/// How `stop` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    NotRunning { stale: Option<String> },
    Stopped { pid: i32, forced: bool },
}

/// What `status` found.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub pid_file: PathBuf,
    pub url: String,
    pub pid: Option<i32>,
    /// A stale pid file that was found and removed.
    pub stale: Option<String>,
    pub uptime: Option<Duration>,
    /// `GET /health`, when it answered.
    pub health: Option<Value>,
    pub health_error: Option<ClientError>,
}

impl StatusReport {
    pub fn running(&self) -> bool {
        self.pid.is_some()
    }

    /// LSB: 0 running, 3 not running, 1 running but not answering (an error).
    pub fn exit_code(&self) -> u8 {
        match (self.pid, &self.health) {
            (Some(_), Some(_)) => 0,
            (Some(_), None) => 1,
            (None, _) => 3,
        }
    }

    pub fn version(&self) -> Option<&str> {
        self.health.as_ref()?.get("version")?.as_str()
    }

    /// `running/pending/concurrency` of the queue, from `/health`.
    pub fn queue(&self) -> Option<(u64, u64, u64)> {
        let q = self.health.as_ref()?.get("queue")?;
        Some((
            q.get("running")?.as_u64()?,
            q.get("pending")?.as_u64()?,
            q.get("concurrency")?.as_u64()?,
        ))
    }

    /// The lines `status` prints (the TUI shows the same).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.stale {
            out.push(format!(
                "stale pid file {} removed: {s}",
                self.pid_file.display()
            ));
        }
        match self.pid {
            None => {
                out.push("claude-code-server is not running".into());
                if let Some(h) = &self.health {
                    let v = h.get("version").and_then(Value::as_str).unwrap_or("?");
                    out.push(format!(
                        "note: a server (version {v}) answers at {} but has no pid file here",
                        self.url
                    ));
                }
            }
            Some(pid) => {
                out.push(format!("claude-code-server is running (pid {pid})"));
                out.push(format!("url:      {}", self.url));
                if let Some(up) = self.uptime {
                    out.push(format!("uptime:   {}", format_duration(up)));
                }
                if let Some(h) = &self.health {
                    if let Some(v) = self.version() {
                        out.push(format!("version:  {v}"));
                    }
                    if let Some(s) = h.get("status").and_then(Value::as_str) {
                        out.push(format!("health:   {s}"));
                    }
                    if let Some((running, pending, concurrency)) = self.queue() {
                        out.push(format!(
                            "queue:    {running} running, {pending} pending, concurrency {concurrency}"
                        ));
                    }
                }
                if let Some(e) = &self.health_error {
                    out.push(format!("error:    {e}"));
                }
            }
        }
        out
    }
}

impl Control {
    /// Control with the process's own environment and executable.
    pub fn from_process(
        config_path: Option<PathBuf>,
        url: Option<String>,
        api_key: Option<String>,
    ) -> Control {
        let env = Environment::from_process();
        let config_path =
            config_path.unwrap_or_else(|| actors::config::load::default_config_path(&env));
        Control {
            config_path,
            env,
            url,
            api_key,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("claude-code-server")),
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// Read the config the way `serve` does (written with defaults when missing).
    pub fn resolve(&self) -> Result<Resolved, DaemonError> {
        let loaded =
            load(&self.config_path, &self.env).map_err(|e| DaemonError::Config(e.to_string()))?;
        let config = loaded.config;
        let target = Target::resolve(&config, self.url.as_deref(), self.api_key.as_deref());
        Ok(Resolved {
            pid_file: PathBuf::from(&config.pid_file),
            log_file: PathBuf::from(&config.log_file),
            target,
            config,
        })
    }

    pub fn client(&self) -> Result<Client, DaemonError> {
        Ok(Client::new(self.resolve()?.target)?)
    }

    /// The file name `/proc/<pid>/cmdline`'s argv[0] must have for a pid to be ours.
    fn program_name(&self) -> String {
        self.exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "claude-code-server".into())
    }

    /// The pid file checked; a stale one is removed (and reported).
    pub fn check_pid_file(&self, pid_file: &Path) -> Result<PidState, DaemonError> {
        let state = inspect_pid_file(pid_file, &self.program_name())?;
        if let PidState::Stale { .. } = state {
            remove_if_present(pid_file)?;
        }
        Ok(state)
    }

    /// Start `serve` in the background and wait until it answers.
    pub async fn start(&self) -> Result<StartOutcome, DaemonError> {
        let r = self.resolve()?;
        let url = r.target.base_url.clone();
        let stale = match self.check_pid_file(&r.pid_file)? {
            PidState::Running(pid) => return Ok(StartOutcome::AlreadyRunning { pid, url }),
            PidState::Stale { reason, .. } => Some(reason),
            PidState::NoFile => None,
        };
        let mut child = self.spawn_serve(&r.log_file)?;
        let pid = child.id() as i32;
        let client = Client::new(r.target.clone())?;
        let deadline = Instant::now() + self.start_timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(DaemonError::StartFailed {
                        message: format!("the server exited during start-up ({status})"),
                        log_tail: tail_lines(&r.log_file, LOG_TAIL_LINES),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(io_err("cannot watch the server process")(e)),
            }
            // Our child's pid in the pid file means it is listening: only then can an answer
            // at the URL be its own and not another server's on the same port.
            let listening = read_pid(&r.pid_file).ok().flatten() == Some(pid);
            if listening && client.health_within(Duration::from_secs(1)).await.is_ok() {
                reap_in_background(child);
                return Ok(StartOutcome::Started { pid, url, stale });
            }
            if Instant::now() >= deadline {
                // Do not leave a half-started server behind.
                signal(pid, libc::SIGTERM);
                reap_in_background(child);
                return Err(DaemonError::StartFailed {
                    message: format!(
                        "the server did not answer at {url}/health within {} s; it was stopped",
                        self.start_timeout.as_secs()
                    ),
                    log_tail: tail_lines(&r.log_file, LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `<exe> serve --config <path>` in a new session (no controlling terminal, so closing
    /// the terminal does not SIGHUP it), stdin from /dev/null, stdout and stderr appended to
    /// the log file. Its environment resolves the config the way ours did.
    fn spawn_serve(&self, log_file: &Path) -> Result<Child, DaemonError> {
        use std::os::unix::process::CommandExt;
        if let Some(dir) = log_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .map_err(io_err(format!(
                "cannot open the log file {}",
                log_file.display()
            )))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("cannot share the log file"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Our own config choice travels as the flag; a CCS_CONFIG must not contradict it.
            .env_remove("CCS_CONFIG");
        for (var, value) in [
            (
                "HOME",
                self.env.home.as_ref().map(|h| h.as_os_str().to_owned()),
            ),
            ("PORT", self.env.port.as_ref().map(Into::into)),
            ("HOST", self.env.host.as_ref().map(Into::into)),
        ] {
            match value {
                Some(v) => cmd.env(var, v),
                None => cmd.env_remove(var),
            };
        }
        // SAFETY: setsid() is async-signal-safe and touches no memory of the parent; it is all
        // that runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(io_err(format!("cannot run {} serve", self.exe.display())))
    }

    /// SIGTERM, wait for the graceful shutdown, SIGKILL if it does not come.
    pub async fn stop(&self) -> Result<StopOutcome, DaemonError> {
        let r = self.resolve()?;
        let pid = match self.check_pid_file(&r.pid_file)? {
            PidState::NoFile => return Ok(StopOutcome::NotRunning { stale: None }),
            PidState::Stale { reason, .. } => {
                return Ok(StopOutcome::NotRunning {
                    stale: Some(reason),
                })
            }
            PidState::Running(pid) => pid,
        };
        if let Err(e) = send_signal(pid, libc::SIGTERM) {
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(DaemonError::StopFailed(format!(
                    "cannot signal process {pid}: {e}"
                )));
            }
        }
        let grace = Duration::from_millis(
            r.config
                .shutdown_grace_ms
                .saturating_add(r.config.task_queue.kill_grace_ms),
        ) + STOP_MARGIN;
        let mut forced = false;
        if !wait_gone(pid, grace).await {
            forced = true;
            signal(pid, libc::SIGKILL);
            if !wait_gone(pid, KILL_WAIT).await {
                return Err(DaemonError::StopFailed(format!(
                    "process {pid} is still there after SIGKILL"
                )));
            }
        }
        // `serve` removes its pid file on a clean exit; after SIGKILL it is ours to remove.
        if read_pid(&r.pid_file).ok().flatten() == Some(pid) {
            remove_if_present(&r.pid_file)?;
        }
        Ok(StopOutcome::Stopped { pid, forced })
    }

    /// The pid file, the process and `/health`.
    pub async fn status(&self) -> Result<StatusReport, DaemonError> {
        let r = self.resolve()?;
        let (pid, stale) = match self.check_pid_file(&r.pid_file)? {
            PidState::Running(pid) => (Some(pid), None),
            PidState::Stale { reason, .. } => (None, Some(reason)),
            PidState::NoFile => (None, None),
        };
        let client = Client::new(r.target.clone())?;
        let (health, health_error) = match client.health_within(Duration::from_secs(3)).await {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(e)),
        };
        let uptime = pid.and_then(process_uptime).or_else(|| {
            let secs = health.as_ref()?.get("uptime")?.as_f64()?;
            Duration::try_from_secs_f64(secs).ok()
        });
        Ok(StatusReport {
            pid_file: r.pid_file,
            url: r.target.base_url,
            pid,
            stale,
            uptime: pid.and(uptime),
            health,
            health_error: pid.and(health_error),
        })
    }
}

/// Keep reaping a child we started so it never lingers as a zombie of a long-lived parent
/// (the TUI); when the parent is the short-lived CLI, the daemon is adopted by init instead.
fn reap_in_background(mut child: Child) {
    let _ = std::thread::Builder::new()
        .name("reap-serve".into())
        .spawn(move || {
            let _ = child.wait();
        });
}

/// What a pid file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidContent {
    Missing,
    /// Not a positive number (truncated, hand-edited).
    Garbage,
    Pid(i32),
}

fn read_pid_content(path: &Path) -> Result<PidContent, DaemonError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(match s.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => PidContent::Pid(pid),
            _ => PidContent::Garbage,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PidContent::Missing),
        Err(e) => Err(io_err(format!(
            "cannot read the pid file {}",
            path.display()
        ))(e)),
    }
}

/// The pid in the pid file, if it holds one.
pub fn read_pid(path: &Path) -> Result<Option<i32>, DaemonError> {
    Ok(match read_pid_content(path)? {
        PidContent::Pid(pid) => Some(pid),
        PidContent::Missing | PidContent::Garbage => None,
    })
}

/// Check a pid file against `/proc`: missing, live and ours, or stale (and why).
pub fn inspect_pid_file(path: &Path, program: &str) -> Result<PidState, DaemonError> {
    let pid = match read_pid_content(path)? {
        PidContent::Missing => return Ok(PidState::NoFile),
        PidContent::Garbage => {
            return Ok(PidState::Stale {
                pid: None,
                reason: "the pid file does not hold a process id".into(),
            })
        }
        PidContent::Pid(pid) => pid,
    };
    if is_gone(pid) {
        return Ok(PidState::Stale {
            pid: Some(pid),
            reason: format!("process {pid} is not running"),
        });
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => {
            // argv[0]'s file name, not a substring of the whole line: a program that merely
            // runs in a directory called claude-code-server is not ours.
            let argv0 = raw.split(|b| *b == 0).next().unwrap_or_default();
            let argv0 = String::from_utf8_lossy(argv0);
            let name = Path::new(argv0.as_ref())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == program {
                Ok(PidState::Running(pid))
            } else {
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                Ok(PidState::Stale {
                    pid: Some(pid),
                    reason: format!(
                        "pid {pid} now belongs to another program ({})",
                        cmdline.trim()
                    ),
                })
            }
        }
        // Alive but unreadable (another user's, hidepid): it cannot be told apart; assume ours
        // rather than delete the pid file of a running server.
        Err(_) => Ok(PidState::Running(pid)),
    }
}

/// The process no longer exists, or is a zombie waiting for its parent to reap it.
pub fn is_gone(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the pid exists.
    let r = unsafe { libc::kill(pid, 0) };
    if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return true;
    }
    proc_state(pid) == Some('Z')
}

async fn wait_gone(pid: i32, within: Duration) -> bool {
    let end = Instant::now() + within;
    loop {
        if is_gone(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn send_signal(pid: i32, sig: libc::c_int) -> std::io::Result<()> {
    if pid <= 0 {
        // 0 and negative pids name process groups: never what a pid file means.
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill() with a positive pid signals that one process; no memory is involved.
    if unsafe { libc::kill(pid, sig) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn signal(pid: i32, sig: libc::c_int) {
    let _ = send_signal(pid, sig);
}

fn remove_if_present(path: &Path) -> Result<(), DaemonError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("cannot remove {}", path.display()))(e)),
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and `)`).
fn proc_stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn proc_state(pid: i32) -> Option<char> {
    proc_stat_fields(pid)?.first()?.chars().next()
}

/// How long the process has run: its start time (field 22 of `/proc/<pid>/stat`, in clock
/// ticks after boot) against `/proc/uptime`.
pub fn process_uptime(pid: i32) -> Option<Duration> {
    // Field 22 overall is the 20th after the command name (fields 1 and 2).
    let start_ticks: f64 = proc_stat_fields(pid)?.get(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_sec <= 0 {
        return None;
    }
    let boot_uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let secs = boot_uptime - start_ticks / ticks_per_sec as f64;
    Duration::try_from_secs_f64(secs.max(0.0)).ok()
}

/// The last `n` lines of a file (read from its last 64 KiB); empty when it cannot be read.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| strip_ansi(l))
        .collect()
}

/// Remove terminal escape sequences: the daemon's text log carries colour codes even in a file.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `3d 04:05:06`, `04:05:06`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_are_checked_against_proc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.pid");
        assert_eq!(
            inspect_pid_file(&path, "x").expect("read"),
            PidState::NoFile
        );

        std::fs::write(&path, "garbage\n").expect("write");
        assert!(matches!(
            inspect_pid_file(&path, "x").expect("read"),
            PidState::Stale { pid: None, .. }
        ));

        // Our own pid is alive; whether it is "ours" depends on the program name.
        let me = std::process::id() as i32;
        std::fs::write(&path, format!("{me}\n")).expect("write");
        let exe = std::env::current_exe().expect("exe");
        let name = exe
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            inspect_pid_file(&path, &name).expect("read"),
            PidState::Running(me)
        );
        match inspect_pid_file(&path, "claude-code-server-not-this-one").expect("read") {
            PidState::Stale { pid, reason } => {
                assert_eq!(pid, Some(me));
                assert!(reason.contains("another program"), "{reason}");
            }
            other => panic!("expected stale, got {other:?}"),
        }
    }

    #[test]
    fn dead_pids_are_gone_and_our_uptime_is_known() {
        // pid_max is below 2^22 on Linux: this pid cannot exist.
        assert!(is_gone(i32::MAX));
        assert!(!is_gone(std::process::id() as i32));
        assert!(process_uptime(std::process::id() as i32).is_some());
    }

    #[test]
    fn tail_and_durations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail_lines(&path, 2), vec!["b", "c"]);
        assert!(tail_lines(&dir.path().join("none"), 2).is_empty());
        assert_eq!(format_duration(Duration::from_secs(3725)), "01:02:05");
        assert_eq!(format_duration(Duration::from_secs(90_061)), "1d 01:01:01");
    }
}
