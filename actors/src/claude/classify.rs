//! What a finished run means: its final status and, for every status but `Completed`, one
//! error (code from the table, one sentence, details).
//!
//! A pure function of what was observed, decided in this order:
//! 1. the CLI could not be started → `cli_unavailable`;
//! 2. the service stopped the run itself → that reason wins (whatever the CLI printed after
//!    our signal is a consequence of it, not a verdict);
//! 3. a result line came → it decides, **not** the exit code (API errors exit 1 with
//!    `subtype: success`; old CLIs exit 0 on `error_max_turns`; SIGINT exits 0 with an error);
//! 4. no result line → exit code, signal and stderr decide.
//!
//! Messages are built from the CLI's own error text and never from the prompt (which this
//! module never sees).

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use serde_json::{json, Map, Value};

use crate::error::ErrorCode;
use crate::model::{RunReport, TaskError, TaskStatus};

/// Longest message, in characters (CLI error texts can be long; details keep the rest).
const MAX_MESSAGE_CHARS: usize = 300;
/// Longest `details.stderr_tail`, in bytes ("a short stderr tail").
const MAX_DETAILS_STDERR: usize = 2000;

/// Whether, and why, the service stopped the run itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The run ended on its own.
    No,
    /// Wall-clock limit (`timeout_ms`) reached.
    Timeout { after_ms: u64 },
    /// No output for the idle limit.
    IdleTimeout { after_ms: u64 },
    /// The task was cancelled.
    Cancelled,
    /// The server is shutting down.
    Shutdown,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Never started (the OS error, e.g. "No such file or directory (os error 2)").
    SpawnFailed(String),
    /// Waiting for it failed; how it ended is not known.
    Unknown,
}

impl Exit {
    pub fn from_status(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Unknown,
        }
    }
}

/// Everything observed about a finished run.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The result line, if the CLI printed one.
    pub report: Option<&'a RunReport>,
    /// The result line's `errors[]` (see [`super::stream::result_errors`]).
    pub result_errors: &'a [String],
    pub exit: &'a Exit,
    /// The end of stderr (any size; details keep a short tail of it).
    pub stderr_tail: &'a str,
    pub stopped: Stopped,
}

/// The run's final status and error.
pub fn classify(f: &Finished<'_>) -> (TaskStatus, Option<TaskError>) {
    if let Exit::SpawnFailed(reason) = f.exit {
        let message = format!("The Claude CLI could not be started: {}.", clip(reason));
        let details = json!({ "spawn_error": reason });
        return failed(ErrorCode::CliUnavailable, message, details);
    }
    if let Some(verdict) = by_stop(f) {
        return verdict;
    }
    match f.report {
        Some(report) => by_result(f, report),
        None => by_exit(f),
    }
}

/// Our own stop: the reason we stopped it is the outcome.
fn by_stop(f: &Finished<'_>) -> Option<(TaskStatus, Option<TaskError>)> {
    let (status, code, message) = match f.stopped {
        Stopped::No => return None,
        Stopped::Timeout { after_ms } => (
            TaskStatus::Timeout,
            ErrorCode::Timeout,
            format!("The run exceeded its time limit of {after_ms} ms and was stopped."),
        ),
        Stopped::IdleTimeout { after_ms } => (
            TaskStatus::Timeout,
            ErrorCode::IdleTimeout,
            format!("The run printed nothing for {after_ms} ms and was stopped."),
        ),
        Stopped::Cancelled => (
            TaskStatus::Cancelled,
            ErrorCode::Cancelled,
            "The run was cancelled.".to_string(),
        ),
        Stopped::Shutdown => (
            TaskStatus::Failed,
            ErrorCode::Interrupted,
            "The run was interrupted because the server is shutting down.".to_string(),
        ),
    };
    let error = TaskError::new(code, message).with_details(details(f, None));
    Some((status, Some(error)))
}

/// A result line came: it decides.
fn by_result(f: &Finished<'_>, r: &RunReport) -> (TaskStatus, Option<TaskError>) {
    let subtype = r.subtype.as_deref().unwrap_or("success");
    match subtype {
        "success" if !r.is_error => (TaskStatus::Completed, None),
        "success" => reported_error(f, r),
        // Also when is_error is false and the exit code 0 (CLI 1.0.x / 2.0.0).
        "error_max_turns" => failed(
            ErrorCode::MaxTurnsExceeded,
            "The run reached its maximum number of turns before finishing.".to_string(),
            details(f, None),
        ),
        "error_max_budget_usd" => failed(
            ErrorCode::BudgetExceeded,
            "The run reached its cost limit (max_budget_usd) before finishing.".to_string(),
            details(f, None),
        ),
        "error_during_execution" => {
            let why = f
                .result_errors
                .iter()
                .map(|e| e.trim())
                .find(|e| !e.is_empty())
                .map(clip)
                .or_else(|| first_meaningful_line(f.stderr_tail).as_deref().map(clip));
            let message = match why {
                Some(why) => format!("The Claude CLI failed during execution: {why}"),
                None => "The Claude CLI failed during execution.".to_string(),
            };
            failed(ErrorCode::CliError, message, details(f, None))
        }
        // A subtype we do not know: trust is_error, and treat an "error…" name as an error.
        other if !r.is_error && !other.starts_with("error") => (TaskStatus::Completed, None),
        other => failed(
            ErrorCode::CliError,
            format!("The Claude CLI ended the run with '{}'.", clip(other)),
            details(f, None),
        ),
    }
}

/// `is_error` with subtype `success`: not logged in, the model API failed, or something else.
fn reported_error(f: &Finished<'_>, r: &RunReport) -> (TaskStatus, Option<TaskError>) {
    let text = r.result.as_deref().map(str::trim).unwrap_or("");
    let status = r.api_error_status.or_else(|| status_in_text(text));
    let shown = if text.is_empty() {
        "no details".to_string()
    } else {
        clip(text)
    };
    let (code, message) = if is_auth_failure(status, text) {
        (
            ErrorCode::CliNotAuthenticated,
            format!("The Claude CLI is not authenticated: {shown}"),
        )
    } else if status.is_some() || text.starts_with("API Error") {
        let reason = text.strip_prefix("API Error:").map(str::trim).map(clip);
        (
            ErrorCode::CliApiError,
            format!(
                "The model API returned an error: {}",
                reason.unwrap_or(shown)
            ),
        )
    } else {
        (
            ErrorCode::CliError,
            format!("The Claude CLI reported an error: {shown}"),
        )
    };
    failed(code, message, details(f, status))
}

/// No result line and not stopped by us: the process's end and stderr decide.
fn by_exit(f: &Finished<'_>) -> (TaskStatus, Option<TaskError>) {
    let line = first_meaningful_line(f.stderr_tail).as_deref().map(clip);
    match (f.exit, line) {
        // The CLI's usual way to refuse: one line on stderr, exit 1 (usage errors, bad flags,
        // "No conversation found", "Session ID … is already in use").
        (Exit::Code(1), Some(line)) => failed(
            ErrorCode::CliError,
            format!("The Claude CLI failed: {line}"),
            details(f, None),
        ),
        (exit, line) => {
            let how = match exit {
                Exit::Signal(s) => format!("was killed by {}", signal_name(*s)),
                Exit::Code(c) if *c > 128 => {
                    format!("exited with code {c} ({})", signal_name(c - 128))
                }
                Exit::Code(c) => format!("exited with code {c}"),
                _ => "ended in an unknown way".to_string(),
            };
            let message = match line {
                Some(line) => format!("The Claude CLI {how} before reporting a result: {line}"),
                None => format!("The Claude CLI {how} before reporting a result."),
            };
            failed(ErrorCode::CliCrashed, message, details(f, None))
        }
    }
}

fn failed(code: ErrorCode, message: String, details: Value) -> (TaskStatus, Option<TaskError>) {
    (
        TaskStatus::Failed,
        Some(TaskError::new(code, message).with_details(details)),
    )
}

/// `{"exit_code","signal","subtype","stderr_tail","api_error_status"}`, leaving out what is
/// unknown or empty.
fn details(f: &Finished<'_>, api_error_status: Option<u16>) -> Value {
    let mut m = Map::new();
    match f.exit {
        Exit::Code(c) => {
            m.insert("exit_code".into(), json!(c));
        }
        Exit::Signal(s) => {
            m.insert("signal".into(), json!(signal_name(*s)));
        }
        Exit::SpawnFailed(_) | Exit::Unknown => {}
    }
    if let Some(r) = f.report {
        if let Some(subtype) = &r.subtype {
            m.insert("subtype".into(), json!(subtype));
        }
        if let Some(status) = api_error_status.or(r.api_error_status) {
            m.insert("api_error_status".into(), json!(status));
        }
    }
    let tail = tail_of(f.stderr_tail.trim(), MAX_DETAILS_STDERR);
    if !tail.is_empty() {
        m.insert("stderr_tail".into(), json!(tail));
    }
    Value::Object(m)
}

/// 401, or the CLI's own wording for missing or bad credentials.
fn is_auth_failure(status: Option<u16>, text: &str) -> bool {
    if status == Some(401) {
        return true;
    }
    let lower = text.to_lowercase();
    [
        "not logged in",
        "invalid api key",
        "please run /login",
        "authentication_error",
        "oauth token has expired",
        "oauth token revoked",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// `API Error: 400 …` → 400 (CLIs before `api_error_status` existed only said it in the text).
fn status_in_text(text: &str) -> Option<u16> {
    let rest = text.strip_prefix("API Error:")?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let status: u16 = digits.parse().ok()?;
    let is_end = rest[digits.len()..]
        .chars()
        .next()
        .is_none_or(|c| !c.is_ascii_alphanumeric());
    ((100..600).contains(&status) && digits.len() == 3 && is_end).then_some(status)
}

/// The line of stderr that says what went wrong: the first `Error…` line (with the next line
/// when it ends in `:`, as "Invalid MCP configuration:" does), else the first line that is not
/// a warning or a `[tag]` diagnostic, else the first non-blank line. Prefixes like `Error: `
/// are removed.
pub fn first_meaningful_line(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_error = |l: &&str| l.to_ascii_lowercase().starts_with("error");
    let is_noise = |l: &&str| {
        let lower = l.to_ascii_lowercase();
        lower.starts_with("warning")
            || lower.starts_with('[')
            || lower.starts_with("(node:")
            || lower.contains("deprecationwarning")
    };
    let at = lines
        .iter()
        .position(is_error)
        .or_else(|| lines.iter().position(|l| !is_noise(l)))
        .or(if lines.is_empty() { None } else { Some(0) })?;
    let mut line = strip_error_prefix(lines[at]).to_string();
    if line.ends_with(':') {
        if let Some(next) = lines.get(at + 1) {
            line = format!("{line} {next}");
        }
    }
    Some(line)
}

fn strip_error_prefix(line: &str) -> &str {
    for prefix in ["Error:", "error:", "ERROR:"] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim_start();
        }
    }
    line
}

/// One line, at most MAX_MESSAGE_CHARS characters.
fn clip(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_MESSAGE_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The last `max` bytes of `s`, starting on a character boundary.
fn tail_of(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `SIGTERM`, `SIGKILL`, … (the number for others).
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests;
