//! The Claude CLI as a child process.
//!
//! * [`argv`]     — the argument vector for a [`RunSpec`](crate::model::RunSpec) (`--flag=value` only).
//! * [`stream`]   — a line-bounded reader and the stream-json parser into [`CliEvent`]s.
//! * [`classify`] — what a finished run means: status, error code, details.
//! * [`process`]  — spawning (own process group, `posix_spawn`, stdin written then closed, or
//!   kept open for the permission answers of a run with approvals),
//!   reading, timeouts, and killing the whole group.
//! * [`marker`]   — finding a run's processes by the marker in their environment.
//! * [`watchdog`] — the process that kills what the daemon's runs left when the daemon dies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::approval::PermissionRequest;
use crate::model::RunReport;

pub mod argv;
pub mod classify;
pub mod marker;
pub mod process;
pub mod stream;
pub mod transcript;
pub mod watchdog;

/// One thing the CLI said, as the rest of the service cares about it. Unknown event types and
/// subtypes are dropped by the parser, never an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CliEvent {
    /// `system/init`: the session id, model and CLI version the run uses.
    Init {
        session_id: Option<String>,
        model: Option<String>,
        cli_version: Option<String>,
    },
    /// A text delta (`stream_event` / `content_block_delta` / `text_delta`).
    TextDelta { text: String },
    /// A complete assistant text block (`assistant` line with a `text` block).
    AssistantText { text: String },
    /// The model asked for a tool.
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// A tool's answer (from a `user` line).
    ToolResult {
        tool_use_id: String,
        content: serde_json::Value,
        is_error: bool,
    },
    /// The result line: the run's report.
    Result(Box<RunReport>),
    /// `can_use_tool` (`--permission-prompt-tool=stdio`): the CLI waits for the answer.
    PermissionRequest(PermissionRequest),
}

/// The answer to a [`CliEvent::PermissionRequest`], written to the CLI's stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlAnswer {
    pub request_id: String,
    /// `{"behavior":"allow","updatedInput":…}` or `{"behavior":"deny","message":…}`.
    pub response: serde_json::Value,
}

impl ControlAnswer {
    /// The stdin line (`control_response`), newline included.
    pub fn to_line(&self) -> String {
        let line = serde_json::json!({
            "type": "control_response",
            "response": {
                "subtype": "success",
                "request_id": self.request_id,
                "response": self.response,
            },
        });
        format!("{line}\n")
    }
}

/// Why the service stopped a run itself. Decides the final status when the CLI dies of our signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The task was cancelled (DELETE, or its sync client went away).
    Cancelled,
    /// The server is shutting down and the grace period is over.
    Shutdown,
}

/// How to start the CLI: taken from the config when a run starts, so a hot reload applies to
/// the next run.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The executable (absolute path, or a name looked up on `PATH`).
    pub claude_path: PathBuf,
    /// Prepended to the child's `PATH` (`nvmBin`).
    pub path_prefix: Option<PathBuf>,
    /// Extra environment (`claudeEnv`), applied last.
    pub env: BTreeMap<String, String>,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    /// Kill a run that prints nothing for this long (`None`: off).
    pub idle_timeout: Option<Duration>,
    /// Longest stdout line kept; a longer line is skipped (and counted), never buffered whole.
    pub max_line_bytes: usize,
    /// How much of stderr is kept (the tail).
    pub stderr_tail_bytes: usize,
    /// Marks every process of the run (`CCS_RUN_ID`, see [`marker`]) so that tools which left
    /// the CLI's process group are killed with it. `None`: group only.
    pub run_marker: Option<String>,
}

impl RunnerSettings {
    /// Defaults suitable for tests; the service builds its settings from the config.
    pub fn new(claude_path: impl Into<PathBuf>) -> Self {
        RunnerSettings {
            claude_path: claude_path.into(),
            path_prefix: None,
            env: BTreeMap::new(),
            kill_grace: Duration::from_secs(5),
            idle_timeout: None,
            max_line_bytes: 64 * 1024 * 1024,
            stderr_tail_bytes: 8 * 1024,
            run_marker: None,
        }
    }
}
