//! Running the CLI: spawn, feed, read, time out, stop, and make sure nothing survives.
//!
//! The rules (`docs/architecture.md` § Child processes), and how they are kept here:
//! * **No shell**: the program is exec'd directly with the argv of [`build_args`].
//! * **Own process group** (`process_group(0)`): every signal goes to the whole group
//!   (`kill(-pgid, …)`), so the CLI's tool subprocesses die with it.
//! * **Dies with the daemon**: every run carries the daemon's watchdog marker
//!   (`CCS_DAEMON_ID`, [`super::watchdog`]); when the daemon dies, its watchdog kills every
//!   process carrying it, the CLI's tools included. This replaced `PR_SET_PDEATHSIG`, set in a
//!   `pre_exec` hook: any hook makes std fork the daemon instead of using `posix_spawn`
//!   (vfork-like), and that fork was about a third of the server's CPU per run. Nothing runs in
//!   the child between spawn and exec now.
//! * `kill_on_drop(true)` plus a group guard: if the future running [`run`] is dropped midway,
//!   the group is still SIGKILLed.
//! * **Prompt on stdin** from a separate task, then closed, so a large prompt cannot deadlock
//!   against a child that fills stdout before reading stdin. A run with approvals
//!   (`--permission-prompt-tool=stdio`) keeps stdin open instead: the writer sends the
//!   `initialize` request and the prompt as stream-json, then each permission answer as it
//!   comes, and closes stdin after the result line (the CLI exits then). While a permission
//!   request waits for its answer the CLI is silent by design, so the idle timeout is paused.
//! * stdout is read with a bounded line length; stderr is kept as a bounded tail.
//! * Wall-clock timeout, idle timeout and the stop channel all end the same way: SIGTERM to the
//!   group, `kill_grace`, SIGKILL to the group. After the CLI exits the group is SIGKILLed
//!   anyway, and [`run`] returns only once no live process of the group remains (or a deadline
//!   passed, which is logged as an error).

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::argv::build_args;
use super::classify::{classify, Exit, Finished, Stopped};
use super::stream::{fill_from_init, parse_events, result_errors, LineReader};
use super::{CliEvent, ControlAnswer, RunnerSettings, StopReason};
use crate::model::{RunOutcome, RunReport, RunSpec};

/// After the result line, how long the CLI may take to exit before it is stopped (the real
/// CLI exits within milliseconds; one that lingers must not hold a queue slot).
const POST_RESULT_EXIT_WAIT: Duration = Duration::from_secs(10);
/// After the CLI exited (and its group was killed), how long to keep draining stdout/stderr.
/// The pipes close as soon as the group is dead; only a process that escaped the group
/// (`setsid`) could hold them open longer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for every process of the group to be gone.
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(5);
const GROUP_POLL: Duration = Duration::from_millis(10);
/// `claude --version` must answer within this.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Spawning a just-written executable can fail with ETXTBSY while another thread's fork still
/// holds its write descriptor (and an npm update can cause the same); retried this often.
const SPAWN_ATTEMPTS: u32 = 5;
const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(20);
/// A far-away instant for "never" (adding a huge `timeout_ms` to `now` must not overflow).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Run the CLI for `spec` to the end and say how it went.
///
/// Every event the CLI prints is passed to `on_event` as it arrives (the `Result` event's
/// report is already completed with the init line's session id, model and version). A value
/// on `stop` stops the run (SIGTERM, grace, SIGKILL); a stop that arrives after the result line
/// still ends the process but no longer changes the outcome. Never panics on anything the
/// child does.
pub async fn run(
    spec: &RunSpec,
    settings: &RunnerSettings,
    stop: watch::Receiver<Option<StopReason>>,
    on_event: &mut (dyn FnMut(CliEvent) + Send),
) -> RunOutcome {
    run_with_answers(spec, settings, stop, on_event, None).await
}

/// [`run`] for a run with approvals: the answers to its [`CliEvent::PermissionRequest`]s
/// arrive on `answers` and are written to the CLI's stdin.
pub async fn run_with_answers(
    spec: &RunSpec,
    settings: &RunnerSettings,
    mut stop: watch::Receiver<Option<StopReason>>,
    on_event: &mut (dyn FnMut(CliEvent) + Send),
    answers: Option<mpsc::UnboundedReceiver<ControlAnswer>>,
) -> RunOutcome {
    let started = Instant::now();
    // Stopped before it started (cancelled while queued, shutdown): do not spawn at all.
    let already = *stop.borrow_and_update();
    if let Some(reason) = already {
        return finish(started, Observed::new(stopped_for(reason), Exit::Unknown));
    }
    let mut child = match spawn(spec, settings).await {
        Ok(child) => child,
        Err(e) => {
            let reason = spawn_failure_reason(&e, &spec.project_path);
            return finish(
                started,
                Observed::new(Stopped::No, Exit::SpawnFailed(reason)),
            );
        }
    };
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        // Cannot happen for a child we just spawned and have not waited for.
        return finish(started, Observed::new(Stopped::No, Exit::Unknown));
    };
    let mut guard = GroupGuard {
        pgid,
        marker: settings.run_marker.clone(),
        armed: true,
    };
    let mut sup = Supervisor::new(spec, settings, pgid, started);
    let writer = if spec.approvals {
        let (lines, rx) = mpsc::unbounded_channel();
        sup.stdin_lines = Some(lines);
        feed_control(&mut child, &spec.prompt, rx)
    } else {
        feed_stdin(&mut child, &spec.prompt)
    };
    sup.supervise(&mut child, &mut stop, on_event, answers)
        .await;
    writer.abort();
    // Tools that left the group are ours to kill when we stopped the run or the CLI died
    // without reporting (a CLI that reported has ended its tools itself).
    let sweep_marked = sup.terminating || sup.observed.report.is_none();
    let marker = settings.run_marker.as_deref().filter(|_| sweep_marked);
    if !wait_group_gone(pgid, GROUP_GONE_TIMEOUT).await {
        log::error!(pgid = pgid; "processes of a finished CLI run survive SIGKILL");
    } else {
        // The group is gone: its id may be reused by an unrelated process from now on.
        guard.armed = false;
    }
    if let Some(marker) = marker {
        if !wait_marked_gone(marker, GROUP_GONE_TIMEOUT).await {
            log::error!(
                run = marker;
                "processes of a stopped CLI run survive SIGKILL"
            );
        }
    }
    finish(started, sup.observed)
}

/// Start the CLI, retrying a busy executable a few times.
async fn spawn(spec: &RunSpec, settings: &RunnerSettings) -> io::Result<Child> {
    let mut attempt = 1;
    loop {
        match command(spec, settings).spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(SPAWN_RETRY_DELAY).await;
            }
            other => return other,
        }
    }
}

fn command(spec: &RunSpec, settings: &RunnerSettings) -> Command {
    let mut cmd = Command::new(&settings.claude_path);
    cmd.args(build_args(spec))
        .current_dir(&spec.project_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    apply_env(&mut cmd, settings);
    // No `pre_exec` hook here (see the module docs): it would turn posix_spawn into a fork.
    cmd
}

/// Inherited environment, plus what every run needs, then `claudeEnv` last so that the
/// operator can override anything. `IS_SANDBOX` (which lets the CLI bypass permissions as
/// root) is removed from what the daemon inherited: only `claudeEnv` may set it, so a
/// daemon started from a sandboxed shell does not hand that power to every caller. The
/// server's own API key (`CCS_API_KEY`) is removed too: a prompt that runs `env` must not
/// read it.
fn apply_env(cmd: &mut Command, settings: &RunnerSettings) {
    cmd.env_remove("IS_SANDBOX");
    cmd.env_remove(crate::config::load::API_KEY_ENV);
    match &settings.run_marker {
        Some(marker) => cmd.env(super::marker::RUN_MARKER_ENV, marker),
        None => cmd.env_remove(super::marker::RUN_MARKER_ENV),
    };
    // This daemon's watchdog kills what carries its marker when the daemon dies; a marker
    // inherited from elsewhere (a daemon started by a run of another) is replaced or removed.
    match super::watchdog::daemon_marker() {
        Some(marker) => cmd.env(super::watchdog::DAEMON_MARKER_ENV, marker),
        None => cmd.env_remove(super::watchdog::DAEMON_MARKER_ENV),
    };
    cmd.env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    if let Some(prefix) = &settings.path_prefix {
        cmd.env("PATH", prefixed_path(prefix, std::env::var_os("PATH")));
    }
    for (k, v) in &settings.env {
        cmd.env(k, v);
    }
}

/// `prefix:PATH` (just `prefix` when PATH is unset or empty).
fn prefixed_path(prefix: &Path, path: Option<OsString>) -> OsString {
    let mut out = OsString::from(prefix.as_os_str());
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        out.push(":");
        out.push(path);
    }
    out
}

/// What to say when the CLI could not be started: the OS error, and whether the working
/// directory (not the program) was the problem. Never the prompt or the argv.
fn spawn_failure_reason(e: &io::Error, cwd: &Path) -> String {
    if !cwd.is_dir() {
        format!("the working directory does not exist ({e})")
    } else {
        e.to_string()
    }
}

/// Write the prompt and close stdin, in its own task: the child may fill stdout before it
/// reads stdin, and our reader must keep draining stdout meanwhile.
fn feed_stdin(child: &mut Child, prompt: &str) -> tokio::task::JoinHandle<()> {
    let stdin = child.stdin.take();
    let prompt = prompt.as_bytes().to_vec();
    tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        // A child that exits without reading gives EPIPE: nothing to do about it, the
        // outcome is decided from what it printed.
        if let Err(e) = stdin.write_all(&prompt).await {
            log::debug!(error:% = e; "could not write the whole prompt to the CLI");
        }
        let _ = stdin.shutdown().await;
        // Dropping `stdin` closes the pipe: the CLI sees end of input.
    })
}

/// The stream-json stdin of a run with approvals: `initialize`, the prompt as a user message,
/// then every line sent on `lines` (permission answers); stdin closes when `lines` does.
fn feed_control(
    child: &mut Child,
    prompt: &str,
    mut lines: mpsc::UnboundedReceiver<String>,
) -> tokio::task::JoinHandle<()> {
    let stdin = child.stdin.take();
    let opening = format!(
        "{}\n{}\n",
        serde_json::json!({
            "type": "control_request",
            "request_id": format!("init-{}", uuid::Uuid::new_v4().simple()),
            "request": {"subtype": "initialize"},
        }),
        serde_json::json!({
            "type": "user",
            "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": null,
            "session_id": "",
        })
    );
    tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        if let Err(e) = stdin.write_all(opening.as_bytes()).await {
            log::debug!(error:% = e; "could not write the prompt to the CLI");
            return;
        }
        while let Some(line) = lines.recv().await {
            if let Err(e) = stdin.write_all(line.as_bytes()).await {
                log::debug!(error:% = e; "could not write a permission answer to the CLI");
                return;
            }
        }
        let _ = stdin.shutdown().await;
    })
}

fn stopped_for(reason: StopReason) -> Stopped {
    match reason {
        StopReason::Cancelled => Stopped::Cancelled,
        StopReason::Shutdown => Stopped::Shutdown,
    }
}

fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

// ------------------------------------------------------------------------------------------------
// Supervision

/// Everything the outcome is built from.
struct Observed {
    report: Option<RunReport>,
    errors: Vec<String>,
    init: Option<CliEvent>,
    exit: Exit,
    stopped: Stopped,
    stderr: StderrTail,
}

impl Observed {
    fn new(stopped: Stopped, exit: Exit) -> Observed {
        Observed {
            report: None,
            errors: Vec::new(),
            init: None,
            exit,
            stopped,
            stderr: StderrTail::new(0),
        }
    }
}

struct Supervisor<'a> {
    settings: &'a RunnerSettings,
    pgid: i32,
    timeout_ms: u64,
    deadline: Instant,
    last_output: Instant,
    /// Set once SIGTERM went out; a second stop request changes nothing.
    terminating: bool,
    /// When SIGKILL is due (after SIGTERM and the grace).
    kill_at: Option<Instant>,
    result_at: Option<Instant>,
    non_json_lines: u64,
    observed: Observed,
    /// With approvals: the lines still to write to the CLI's stdin; dropped (stdin closes)
    /// after the result line.
    stdin_lines: Option<mpsc::UnboundedSender<String>>,
    /// Permission requests the CLI waits on (their `request_id`s): the idle clock is paused
    /// while there is any.
    awaiting: std::collections::HashSet<String>,
}

impl<'a> Supervisor<'a> {
    fn new(spec: &RunSpec, settings: &'a RunnerSettings, pgid: i32, started: Instant) -> Self {
        let mut observed = Observed::new(Stopped::No, Exit::Unknown);
        observed.stderr = StderrTail::new(settings.stderr_tail_bytes);
        Supervisor {
            settings,
            pgid,
            timeout_ms: spec.timeout_ms,
            deadline: after(started, Duration::from_millis(spec.timeout_ms)),
            last_output: started,
            terminating: false,
            kill_at: None,
            result_at: None,
            non_json_lines: 0,
            observed,
            stdin_lines: None,
            awaiting: std::collections::HashSet::new(),
        }
    }

    /// Read, watch the clocks and the stop channel until the CLI has exited and its output is
    /// drained.
    async fn supervise(
        &mut self,
        child: &mut Child,
        stop: &mut watch::Receiver<Option<StopReason>>,
        on_event: &mut (dyn FnMut(CliEvent) + Send),
        mut answers: Option<mpsc::UnboundedReceiver<ControlAnswer>>,
    ) {
        let mut stdout = child
            .stdout
            .take()
            .map(|s| LineReader::new(s, self.settings.max_line_bytes));
        let mut stderr = child.stderr.take();
        let mut stop = Some(stop);
        let mut exited = false;
        let mut drain_until: Option<Instant> = None;
        let mut buf = vec![0u8; 8192];
        loop {
            if exited && stdout.is_none() && stderr.is_none() {
                break;
            }
            let idle_at = self.idle_deadline();
            let escalate_at = self.kill_at;
            let linger_at = self.linger_deadline();
            let clocks_on = !exited && !self.terminating;
            tokio::select! {
                status = child.wait(), if !exited => {
                    exited = true;
                    self.on_exit(status);
                    drain_until = Some(after(Instant::now(), DRAIN_TIMEOUT));
                }
                line = next_line(stdout.as_mut()) => match line {
                    Ok(Some(line)) => self.on_line(&line, on_event),
                    Ok(None) => stdout = None,
                    Err(e) => {
                        log::warn!(error:% = e; "reading the CLI's stdout failed");
                        stdout = None;
                    }
                },
                n = read_some(stderr.as_mut(), &mut buf) => match n {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => {
                        self.last_output = Instant::now();
                        self.observed.stderr.push(&buf[..n]);
                    }
                },
                answer = next_answer(answers.as_mut()) => match answer {
                    Some(answer) => self.on_answer(answer),
                    None => answers = None,
                },
                reason = stop_requested(stop.as_deref_mut()), if clocks_on => match reason {
                    Some(reason) => self.stop_for(stopped_for(reason)),
                    // The sender is gone: nobody can stop this run any more.
                    None => stop = None,
                },
                _ = sleep_until(self.deadline), if clocks_on => {
                    self.stop_for(Stopped::Timeout { after_ms: self.timeout_ms });
                }
                _ = sleep_opt(idle_at), if clocks_on => {
                    let after_ms = self.settings.idle_timeout.map_or(0, duration_ms);
                    self.stop_for(Stopped::IdleTimeout { after_ms });
                }
                _ = sleep_opt(linger_at), if clocks_on => {
                    log::warn!("the CLI did not exit after its result line; stopping it");
                    self.terminate();
                }
                _ = sleep_opt(escalate_at), if !exited => {
                    self.kill_at = None;
                    signal_group(self.pgid, libc::SIGKILL);
                    self.signal_escapees(libc::SIGKILL);
                }
                _ = sleep_opt(drain_until) => {
                    log::warn!("the CLI's output stayed open after it exited; giving up on it");
                    break;
                }
            }
        }
        if self.non_json_lines > 0 {
            log::debug!(lines = self.non_json_lines; "ignored non-JSON stdout lines");
        }
    }

    /// The CLI exited: record how, and kill whatever it left behind in its group (tool
    /// subprocesses must not outlive it, whatever it did).
    fn on_exit(&mut self, status: io::Result<std::process::ExitStatus>) {
        self.observed.exit = match status {
            Ok(status) => Exit::from_status(status),
            Err(e) => {
                log::warn!(error:% = e; "waiting for the CLI failed");
                Exit::Unknown
            }
        };
        signal_group(self.pgid, libc::SIGKILL);
    }

    fn idle_deadline(&self) -> Option<Instant> {
        if !self.awaiting.is_empty() {
            return None;
        }
        self.settings
            .idle_timeout
            .map(|idle| after(self.last_output, idle))
    }

    fn linger_deadline(&self) -> Option<Instant> {
        self.result_at.map(|at| after(at, POST_RESULT_EXIT_WAIT))
    }

    fn on_line(&mut self, line: &[u8], on_event: &mut (dyn FnMut(CliEvent) + Send)) {
        self.last_output = Instant::now();
        let events = match parse_events(line) {
            Ok(events) => events,
            Err(_) => {
                self.non_json_lines += 1;
                return;
            }
        };
        for event in events {
            let event = match event {
                CliEvent::Init { .. } => {
                    self.observed.init = Some(event.clone());
                    event
                }
                CliEvent::Result(mut report) => {
                    if let Some(init) = &self.observed.init {
                        fill_from_init(&mut report, init);
                    }
                    self.observed.errors = result_errors(line);
                    self.observed.report = Some((*report).clone());
                    self.result_at = Some(Instant::now());
                    // The run is over: closing stdin lets the CLI exit.
                    self.stdin_lines = None;
                    self.awaiting.clear();
                    CliEvent::Result(report)
                }
                CliEvent::PermissionRequest(request) => {
                    self.awaiting.insert(request.request_id.clone());
                    CliEvent::PermissionRequest(request)
                }
                other => other,
            };
            on_event(event);
        }
    }

    /// Write an answer to a permission request the CLI waits on; the idle clock restarts.
    fn on_answer(&mut self, answer: ControlAnswer) {
        if !self.awaiting.remove(&answer.request_id) {
            log::debug!(request_id:% = answer.request_id; "an answer for no waiting permission request; dropped");
            return;
        }
        self.last_output = Instant::now();
        if let Some(lines) = &self.stdin_lines {
            let _ = lines.send(answer.to_line());
        }
    }

    /// Stop the run for `reason`. Only the first reason counts, and only before the result
    /// line: once the CLI has reported, the run is over and stopping it is mere cleanup.
    fn stop_for(&mut self, reason: Stopped) {
        if self.observed.report.is_none() && self.observed.stopped == Stopped::No {
            self.observed.stopped = reason;
        }
        self.terminate();
    }

    /// SIGTERM to the group now, SIGKILL after the grace.
    fn terminate(&mut self) {
        if self.terminating {
            return;
        }
        self.terminating = true;
        signal_group(self.pgid, libc::SIGTERM);
        self.signal_escapees(libc::SIGTERM);
        self.kill_at = Some(after(Instant::now(), self.settings.kill_grace));
    }

    /// Signal the run's processes outside its group (tools in their own session).
    fn signal_escapees(&self, sig: libc::c_int) {
        if let Some(marker) = &self.settings.run_marker {
            super::marker::signal_marked(marker, sig);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The next permission answer; `None` once when the sender is gone, never without a receiver.
async fn next_answer(
    rx: Option<&mut mpsc::UnboundedReceiver<ControlAnswer>>,
) -> Option<ControlAnswer> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next stdout line, or never when stdout is closed (a disabled `select!` branch).
async fn next_line(reader: Option<&mut LineReader<ChildStdout>>) -> io::Result<Option<Vec<u8>>> {
    match reader {
        Some(r) => Ok(r.next_line().await?.map(<[u8]>::to_vec)),
        None => std::future::pending().await,
    }
}

/// Some stderr bytes, or never when stderr is closed.
async fn read_some(stderr: Option<&mut ChildStderr>, buf: &mut [u8]) -> io::Result<usize> {
    match stderr {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The next stop request; `None` (once) when the sender is gone, never without a receiver.
async fn stop_requested(
    rx: Option<&mut watch::Receiver<Option<StopReason>>>,
) -> Option<StopReason> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return None;
        }
        let value = *rx.borrow_and_update();
        if let Some(reason) = value {
            return Some(reason);
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn finish(started: Instant, o: Observed) -> RunOutcome {
    let stderr = o.stderr.into_string();
    let mut report = o.report;
    if let (Some(report), Some(init)) = (report.as_mut(), o.init.as_ref()) {
        fill_from_init(report, init);
    }
    let (status, error) = classify(&Finished {
        report: report.as_ref(),
        result_errors: &o.errors,
        exit: &o.exit,
        stderr_tail: &stderr,
        stopped: o.stopped,
    });
    RunOutcome {
        status,
        cost_usd: report.as_ref().map_or(0.0, |r| r.reported_cost_usd),
        report,
        error,
        duration_ms: duration_ms(started.elapsed()),
    }
}

// ------------------------------------------------------------------------------------------------
// The stderr tail

/// The last `cap` bytes of stderr. When bytes were dropped, the (partial) first line is
/// dropped too, so the tail starts at a line boundary.
struct StderrTail {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl StderrTail {
    fn new(cap: usize) -> Self {
        StderrTail {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.cap {
            self.truncated |= !self.buf.is_empty() || bytes.len() > self.cap;
            self.buf.clear();
            self.buf.extend_from_slice(&bytes[bytes.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        if overflow > 0 {
            self.truncated = true;
            self.buf.drain(..overflow);
        }
        self.buf.extend_from_slice(bytes);
    }

    fn into_string(self) -> String {
        let mut bytes = &self.buf[..];
        if self.truncated {
            if let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
                bytes = &bytes[nl + 1..];
            }
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

// ------------------------------------------------------------------------------------------------
// Process groups

/// Send `sig` to every process of the group. Refuses ids that would address more than one
/// group (`kill(0)`, `kill(-1)`), whatever a bug upstream passes in.
fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill takes plain integers; a negative pid addresses exactly the group `pgid`.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// SIGKILLs the group if a run is abandoned midway (its future dropped), so no process
/// outlives it even then.
struct GroupGuard {
    pgid: i32,
    marker: Option<String>,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
            if let Some(m) = &self.marker {
                super::marker::signal_marked(m, libc::SIGKILL);
            }
        }
    }
}

/// Poll until no live process carries the run's marker, SIGKILLing them each time.
async fn wait_marked_gone(marker: &str, timeout: Duration) -> bool {
    let deadline = after(Instant::now(), timeout);
    loop {
        if super::marker::signal_marked(marker, libc::SIGKILL) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Poll until no live process of the group remains, SIGKILLing it again each time; `false`
/// when `timeout` passed first.
async fn wait_group_gone(pgid: i32, timeout: Duration) -> bool {
    let deadline = after(Instant::now(), timeout);
    loop {
        if !group_has_live_members(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        signal_group(pgid, libc::SIGKILL);
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Whether any process of group `pgid` is still alive.
///
/// `kill(-pgid, 0)` failing with ESRCH proves the group is gone. It also counts zombies,
/// though: grandchildren are reparented to PID 1 (or a subreaper), which may reap them only
/// seconds later. A zombie has released everything and runs nothing, so when `kill` still
/// finds the group, `/proc` is consulted for a member that is not a zombie.
pub fn group_has_live_members(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(-pgid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    live_member_in_proc(pgid).unwrap_or(true)
}

/// Whether process `pid` is alive (a zombie is not).
pub fn process_is_live(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match proc_stat(pid) {
        Some((state, _)) => !is_dead_state(state),
        // With /proc, no stat means it vanished between the two checks; without /proc,
        // kill() is all there is.
        None => !Path::new("/proc/self").exists(),
    }
}

/// `Some(true)` if /proc lists a non-zombie member of the group, `None` without /proc.
fn live_member_in_proc(pgid: i32) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let live = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(proc_stat)
        .any(|(state, group)| group == pgid && !is_dead_state(state));
    Some(live)
}

/// `(state, pgrp)` from `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

// ------------------------------------------------------------------------------------------------
// Version

/// The CLI's version (`claude --version` → `2.1.197 (Claude Code)` → `2.1.197`), or `None` if
/// it cannot be run, fails, prints something else or takes over 10 s.
pub async fn cli_version(settings: &RunnerSettings) -> Option<String> {
    cli_version_within(settings, VERSION_TIMEOUT).await
}

async fn cli_version_within(settings: &RunnerSettings, limit: Duration) -> Option<String> {
    let mut cmd = Command::new(&settings.claude_path);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    apply_env(&mut cmd, settings);
    let child = cmd.spawn().ok()?;
    // Whatever happens (answer, failure, timeout), nothing it started may stay behind.
    let _guard = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(|pgid| GroupGuard {
            pgid,
            marker: None,
            armed: true,
        });
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The first word of the first non-blank line, if it looks like a version (`2.1.197`,
/// `2.1.0-beta.1`).
pub fn parse_version(text: &str) -> Option<String> {
    let word = text
        .lines()
        .find(|l| !l.trim().is_empty())?
        .split_whitespace()
        .next()?;
    let ok = word.starts_with(|c: char| c.is_ascii_digit())
        && word.contains('.')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    ok.then(|| word.to_string())
}

#[cfg(test)]
mod tests;
