//! The records every part of the service shares.
//!
//! A [`Task`] is one run of the CLI (sync, async, batch or a session turn). Its [`RunSpec`] says
//! exactly what to run; its outcome fields are filled once, when the run ends.

use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorCode;

pub type TaskId = Uuid;
pub type SessionId = Uuid;

/// RFC 3339 UTC with milliseconds, the only time format the API uses.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde helpers that write times as RFC 3339 with milliseconds.
pub mod time_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }

    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::rfc3339(t)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<DateTime<Utc>>::deserialize(d)
        }
    }
}

/// Where a task is in its life. `Pending` and `Processing` are live; the rest are final and a
/// final status is written exactly once (the store refuses to overwrite it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Processing,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Timeout,
    ];

    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Pending | TaskStatus::Processing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Processing => "processing",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Timeout => "timeout",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// How the task was submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskMode {
    Sync,
    Async,
    Batch,
}

/// Queue priority, 1 (last) to 10 (first). The only way to build one checks the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 10;
    /// Default for async runs.
    pub const ASYNC_DEFAULT: Priority = Priority(5);
    /// Default for sync runs: a caller is waiting.
    pub const SYNC_DEFAULT: Priority = Priority(10);

    pub fn new(p: i64) -> Option<Priority> {
        if (Self::MIN as i64..=Self::MAX as i64).contains(&p) {
            Some(Priority(p as u8))
        } else {
            None
        }
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Priority {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        Priority::new(v as i64).ok_or_else(|| format!("priority {v} is outside 1..=10"))
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

/// How a run relates to a CLI session. Each variant maps to exactly one set of CLI flags, so a
/// run can never be asked to both create and resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionMode {
    /// A one-off run; the CLI picks a session id (recorded from its output).
    #[default]
    None,
    /// First turn of a session: `--session-id=<id>`.
    Create { id: SessionId },
    /// A later turn: `--resume=<id>`.
    Resume { id: SessionId },
    /// `--resume=<from> --fork-session --session-id=<id>`: a new session `id` with the
    /// history of `from` copied (the CLI takes our id, so the new record exists before the run).
    Fork { from: SessionId, id: SessionId },
}

/// Everything needed to build the CLI's argv, cwd and stdin for one run. Validated and resolved
/// (defaults applied, paths checked) before it is stored, so a worker never has to decide policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Sent on stdin, then stdin is closed. Already neutralised (a leading `/` is escaped).
    pub prompt: String,
    /// The working directory (canonical, existing).
    pub project_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disallowed_tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_config: Option<PathBuf>,
    #[serde(default)]
    pub session: SessionMode,
    /// Wall-clock limit of this run, in ms.
    pub timeout_ms: u64,
    /// Tool calls that need permission are asked over HTTP (approvals) instead of denied:
    /// the CLI runs with `--permission-prompt-tool=stdio` and stream-json input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approvals: bool,
}

impl RunSpec {
    /// A plain run: no model, limits, tools, agent, MCP or session. Set what a run needs on top
    /// (struct update syntax or the fields); the HTTP layer fills every field from a request.
    pub fn new(
        prompt: impl Into<String>,
        project_path: impl Into<PathBuf>,
        timeout_ms: u64,
    ) -> RunSpec {
        RunSpec {
            prompt: prompt.into(),
            project_path: project_path.into(),
            model: None,
            system_prompt: None,
            append_system_prompt: None,
            max_budget_usd: None,
            max_turns: None,
            allowed_tools: Vec::new(),
            disallowed_tools: Vec::new(),
            permission_mode: None,
            agent: None,
            mcp_config: None,
            session: SessionMode::None,
            timeout_ms,
            approvals: false,
        }
    }
}

/// Token counts of one run (`usage` in the CLI's result).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// Why a task failed: one code from the table, one sentence, and whatever details help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl TaskError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: message.into(),
            details: None,
        }
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// What the CLI reported about a run, from its result line (and init line). Present for
/// successful runs and for failures that still produced a result line (API error, max turns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The final text (`result`), absent on error subtypes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The session id the CLI used (new, resumed or forked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `total_cost_usd` as the CLI printed it (per run or cumulative, depending on the version).
    #[serde(default)]
    pub reported_cost_usd: f64,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub num_turns: u32,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub permission_denials: Vec<serde_json::Value>,
    /// The model the CLI resolved (init line or `modelUsage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_error_status: Option<u16>,
    /// The CLI version from the init line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli_version: Option<String>,
}

/// How a run ended, decided once by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub status: TaskStatus,
    /// Present whenever the CLI printed a result line.
    pub report: Option<RunReport>,
    /// Present for every status but `Completed`.
    pub error: Option<TaskError>,
    /// What this run cost (per run, whatever the CLI version reports).
    pub cost_usd: f64,
    pub duration_ms: u64,
}

/// One task: a run of the CLI and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub status: TaskStatus,
    pub priority: Priority,
    pub mode: TaskMode,
    pub spec: RunSpec,
    /// The service-level session this task is a turn of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// The name of the API key that created it (`None`: anonymous). Tenancy filters on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(with = "time_format")]
    pub created_at: DateTime<Utc>,
    #[serde(
        default,
        with = "time_format::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "time_format::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<RunReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// How many times a worker started it (0 or 1: a task is never run twice).
    #[serde(default)]
    pub attempts: u32,
    /// FIFO order among equal priorities: assigned by the store, increasing.
    #[serde(default)]
    pub seq: u64,
}

impl Task {
    pub fn new(spec: RunSpec, priority: Priority, mode: TaskMode) -> Task {
        Task {
            id: Uuid::new_v4(),
            status: TaskStatus::Pending,
            priority,
            mode,
            spec,
            session_id: None,
            owner: None,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            duration_ms: None,
            cost_usd: None,
            report: None,
            error: None,
            webhook_url: None,
            metadata: None,
            attempts: 0,
            seq: 0,
        }
    }

    /// Apply a final outcome to the record (the store decides whether it may be written).
    pub fn finish(&mut self, outcome: &RunOutcome, at: DateTime<Utc>) {
        self.status = outcome.status;
        self.completed_at = Some(at);
        self.duration_ms = Some(outcome.duration_ms);
        self.cost_usd = Some(outcome.cost_usd);
        self.report = outcome.report.clone();
        self.error = outcome.error.clone();
    }
}

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Archived,
    Closed,
}

/// A multi-turn conversation pinned to one project directory and one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    #[serde(with = "time_format")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "time_format")]
    pub updated_at: DateTime<Utc>,
    pub status: SessionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub project_path: PathBuf,
    /// Completed turns.
    pub messages_count: u64,
    pub total_cost_usd: f64,
    /// The CLI's last reported `total_cost_usd` (for CLIs that report it cumulatively).
    #[serde(default)]
    pub last_reported_cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// One finished run as the statistics see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub task_id: TaskId,
    #[serde(with = "time_format")]
    pub at: DateTime<Utc>,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_range_is_enforced() {
        assert!(Priority::new(0).is_none());
        assert!(Priority::new(11).is_none());
        assert_eq!(Priority::new(10).map(Priority::get), Some(10));
        assert!(serde_json::from_str::<Priority>("0").is_err());
        assert_eq!(serde_json::from_str::<Priority>("3").ok(), Priority::new(3));
    }

    #[test]
    fn final_statuses() {
        assert!(!TaskStatus::Pending.is_final());
        assert!(!TaskStatus::Processing.is_final());
        assert!(TaskStatus::Cancelled.is_final());
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn time_stamps_have_milliseconds() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .expect("parse")
            .with_timezone(&Utc);
        assert_eq!(rfc3339(&t), "2026-01-02T03:04:05.678Z");
    }
}
