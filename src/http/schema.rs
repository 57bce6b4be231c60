//! Types that describe the API's bodies in the OpenAPI document. Handlers build their JSON with
//! `json!`; these mirror those bodies field for field (the schemathesis run in the tests checks
//! every response against them, so a drift fails a test).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};
use uuid::Uuid;

/// Every error: one sentence, one code from the error table, details where useful.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    pub error: String,
    /// snake_case error code (see the error table of docs/api.md).
    pub code: String,
    /// What helps: `{field, rule}` for validation, `{exit_code, signal, subtype, stderr_tail,
    /// api_error_status}` for CLI failures.
    pub details: Option<HashMap<String, Value>>,
    pub task_id: Option<Uuid>,
    pub session_id: Option<String>,
    /// Seconds, with 429.
    pub retry_after: Option<u64>,
}

/// Errors any route may answer: status, and when.
const COMMON_ERRORS: [(u16, &str); 9] = [
    (
        400,
        "Malformed JSON, or a field that breaks a rule (named in `details.field`).",
    ),
    (401, "Missing or wrong API key."),
    (403, "An allowed key, a forbidden action."),
    (404, "Unknown id or route."),
    (
        409,
        "The state does not allow it (finished task, busy or closed session).",
    ),
    (413, "Body or prompt over its limit."),
    (415, "The body is not JSON."),
    (429, "Rate limit or budget."),
    (503, "Storage unavailable, queue full, shutting down."),
];

/// Errors of a run, on top of [`COMMON_ERRORS`].
const RUN_ERRORS: [(u16, &str); 3] = [
    (422, "The run stopped at `max_turns`."),
    (
        502,
        "The CLI failed (`cli_error`, `cli_api_error`, `cli_not_authenticated`, `cli_crashed`, \
         `cli_unavailable`).",
    ),
    (504, "The run timed out (`timeout`, `idle_timeout`)."),
];

/// `errors`, each answering the JSON schema named `schema`.
fn error_responses(errors: &[(u16, &str)], schema: &str) -> BTreeMap<String, RefOr<Response>> {
    errors
        .iter()
        .map(|(status, description)| {
            let content = Content::new(Some(Ref::from_schema_name(schema)));
            let response = ResponseBuilder::new()
                .description(*description)
                .content("application/json", content)
                .build();
            (status.to_string(), response.into())
        })
        .collect()
}

/// Errors any route under /api may answer ([`ErrorBody`]).
pub struct CommonErrors;

impl IntoResponses for CommonErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&COMMON_ERRORS, "ErrorBody")
    }
}

/// Errors of a run, on top of [`CommonErrors`].
pub struct RunErrors;

impl IntoResponses for RunErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&RUN_ERRORS, "ErrorBody")
    }
}

/// The errors of [`CommonErrors`] under `/v1`, in OpenAI's shape.
pub struct OpenAiErrors;

impl IntoResponses for OpenAiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&COMMON_ERRORS, OPENAI_ERROR)
    }
}

/// The errors of [`RunErrors`] under `/v1`, in OpenAI's shape.
pub struct OpenAiRunErrors;

impl IntoResponses for OpenAiRunErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&RUN_ERRORS, OPENAI_ERROR)
    }
}

/// The errors of [`CommonErrors`] in Anthropic's shape (`/v1/messages`, and `/v1/models`
/// with `anthropic-version`).
pub struct AnthropicErrors;

impl IntoResponses for AnthropicErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&COMMON_ERRORS, ANTHROPIC_ERROR)
    }
}

/// The errors of a run in Anthropic's shape: those of [`RunErrors`] but 422, since a run the
/// CLI stops at its own limits is a truncated message (`stop_reason: max_tokens`).
pub struct AnthropicRunErrors;

impl IntoResponses for AnthropicRunErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&truncating_run_errors(), ANTHROPIC_ERROR)
    }
}

/// The errors of a run on the Responses API, in OpenAI's shape: as [`AnthropicRunErrors`], a
/// run the CLI stops at its own limits is an answer (`status: incomplete`), not a 422.
pub struct ResponsesRunErrors;

impl IntoResponses for ResponsesRunErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&truncating_run_errors(), OPENAI_ERROR)
    }
}

/// [`RUN_ERRORS`] of a route that answers a run cut short as a truncated answer: no 422.
fn truncating_run_errors() -> Vec<(u16, &'static str)> {
    RUN_ERRORS
        .iter()
        .copied()
        .filter(|(status, _)| *status != 422)
        .collect()
}

/// The schema name of Anthropic's error body ([`crate::http::anthropic::error::ErrorEnvelope`]).
pub const ANTHROPIC_ERROR: &str = "AnthropicError";

/// The schema name of OpenAI's error body ([`crate::http::openai::error::ErrorEnvelope`]).
pub const OPENAI_ERROR: &str = "OpenAiError";

/// One Server-Sent Event: `id` counts from 1; `event` is init, text, tool_use, tool_result,
/// approval, result or error; `data` is a JSON object.
#[derive(ToSchema)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

#[derive(ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// The answer of a completed sync run.
#[derive(ToSchema)]
pub struct SyncAnswer {
    pub success: bool,
    pub result: String,
    pub session_id: Option<String>,
    pub task_id: Uuid,
    pub duration_ms: u64,
    pub cost_usd: f64,
    pub usage: Usage,
    pub num_turns: u32,
    pub model: Option<String>,
    pub resolved_model: Option<String>,
    pub permission_denials: Vec<Value>,
    pub is_error: bool,
    /// Forks only: the session forked.
    pub forked_from: Option<Uuid>,
}

/// The answer of an async submission.
#[derive(ToSchema)]
pub struct AsyncAnswer {
    pub success: bool,
    pub task_id: Uuid,
    /// `pending`.
    pub status: String,
    pub priority: u8,
    pub session_id: Option<Uuid>,
    pub webhook_url: Option<String>,
    pub forked_from: Option<Uuid>,
}

#[derive(ToSchema)]
pub struct TaskErrorBody {
    pub code: String,
    pub message: String,
    pub details: Option<HashMap<String, Value>>,
}

/// A task: one run of the CLI.
#[derive(ToSchema)]
pub struct TaskObject {
    pub id: Uuid,
    /// pending | processing | completed | failed | cancelled | timeout
    pub status: String,
    pub priority: u8,
    pub prompt: String,
    pub project_path: String,
    pub model: Option<String>,
    pub resolved_model: Option<String>,
    pub session_id: Option<String>,
    /// sync | async | batch
    pub mode: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub cost_usd: Option<f64>,
    pub usage: Option<Usage>,
    pub num_turns: Option<u32>,
    pub result: Option<String>,
    pub permission_denials: Vec<Value>,
    pub error: Option<TaskErrorBody>,
    pub webhook_url: Option<String>,
    pub metadata: Option<HashMap<String, Value>>,
    pub attempts: u32,
    /// Tool calls that need permission are asked over HTTP (`approvals` of the request).
    pub approvals: bool,
    /// Approvals waiting for a decision (the task stays `processing` meanwhile).
    pub pending_approvals: u32,
}

/// A tool call a run with `approvals` asked permission for.
#[derive(ToSchema)]
pub struct ApprovalObject {
    pub id: Uuid,
    pub task_id: Uuid,
    pub tool_name: String,
    /// The tool's input as the model asked for it.
    #[schema(value_type = Object)]
    pub input: Value,
    pub description: Option<String>,
    /// pending | allowed | denied | expired
    pub status: String,
    pub requested_at: String,
    pub decided_at: Option<String>,
    /// The name of the API key that decided (`null`: anonymous, or expired).
    pub decided_by: Option<String>,
    /// The decision's note; for a denial or an expiry, what the model was told.
    pub message: Option<String>,
    /// With `allow`: the input the tool ran with instead.
    #[schema(value_type = Option<Object>)]
    pub updated_input: Option<Value>,
}

/// `GET /api/tasks/:id/approvals`, `GET /api/approvals`.
#[derive(ToSchema)]
pub struct ApprovalList {
    pub success: bool,
    pub approvals: Vec<ApprovalObject>,
}

/// `POST /api/tasks/:id/approvals/:approval_id`.
#[derive(ToSchema)]
pub struct ApprovalEnvelope {
    pub success: bool,
    pub approval: ApprovalObject,
}

#[derive(ToSchema)]
pub struct TaskEnvelope {
    pub success: bool,
    pub task: TaskObject,
}

/// `PATCH /api/tasks/:id/priority`: the task, and the seed's fields beside it.
#[derive(ToSchema)]
pub struct PriorityChanged {
    pub success: bool,
    /// `Priority of task <id> changed from <old> to <new>.`
    pub message: String,
    pub task_id: Uuid,
    pub old_priority: u8,
    pub new_priority: u8,
    pub task: TaskObject,
}

#[derive(ToSchema)]
pub struct TaskList {
    pub success: bool,
    pub count: u64,
    pub total: u64,
    pub tasks: Vec<TaskObject>,
}

#[derive(ToSchema)]
pub struct QueueFigures {
    /// The queue takes runs (false while shutting down).
    pub running: bool,
    pub paused: bool,
    pub concurrency: u64,
    pub active_tasks: u64,
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timeout: u64,
    pub total: u64,
    pub total_cost_usd: f64,
}

#[derive(ToSchema)]
pub struct QueueStatus {
    pub success: bool,
    pub queue: QueueFigures,
}

#[derive(ToSchema)]
pub struct BatchAnswer {
    pub success: bool,
    /// Per prompt, in order: a sync answer or an error body.
    pub results: Vec<Value>,
    pub summary: BatchSummary,
}

#[derive(ToSchema)]
pub struct BatchSummary {
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub total_cost_usd: f64,
    pub total_duration_ms: u64,
}

#[derive(ToSchema)]
pub struct BatchQueued {
    pub task_id: Uuid,
    pub status: String,
    pub priority: u8,
}

#[derive(ToSchema)]
pub struct BatchAsyncAnswer {
    pub success: bool,
    pub task_ids: Vec<Uuid>,
    pub tasks: Vec<BatchQueued>,
}

/// A conversation pinned to one project directory and one model.
#[derive(ToSchema)]
pub struct SessionObject {
    pub id: Uuid,
    pub created_at: String,
    pub updated_at: String,
    /// active | archived | closed
    pub status: String,
    pub model: Option<String>,
    pub project_path: String,
    /// Completed turns.
    pub messages_count: u64,
    pub total_cost_usd: f64,
    pub last_task_id: Option<Uuid>,
    pub metadata: Value,
}

#[derive(ToSchema)]
pub struct SessionEnvelope {
    pub success: bool,
    pub session: SessionObject,
}

#[derive(ToSchema)]
pub struct SessionList {
    pub success: bool,
    pub count: u64,
    pub total: u64,
    pub sessions: Vec<SessionObject>,
    /// Search only.
    pub query: Option<String>,
}

#[derive(ToSchema)]
pub struct Message {
    /// user | assistant
    pub role: String,
    /// text | tool_use | tool_result
    pub r#type: String,
    pub content: Value,
    pub timestamp: Option<String>,
}

#[derive(ToSchema)]
pub struct Messages {
    pub success: bool,
    pub session_id: Uuid,
    pub count: u64,
    pub messages: Vec<Message>,
}

#[derive(ToSchema)]
pub struct SessionStats {
    pub success: bool,
    pub session_id: Uuid,
    pub stats: HashMap<String, Value>,
}

#[derive(ToSchema)]
pub struct Deleted {
    pub success: bool,
    pub deleted: Uuid,
}

#[derive(ToSchema)]
pub struct HealthStorage {
    pub r#type: String,
    pub ok: bool,
}

#[derive(ToSchema)]
pub struct HealthClaude {
    pub path: Option<String>,
    pub version: Option<String>,
    pub ok: bool,
}

#[derive(ToSchema)]
pub struct Health {
    /// ok | degraded
    pub status: String,
    pub uptime: f64,
    pub timestamp: String,
    pub version: String,
    pub storage: HealthStorage,
    pub claude: HealthClaude,
    pub queue: HashMap<String, Value>,
}

/// `GET /api/tasks/:id/webhooks`.
#[derive(ToSchema)]
pub struct WebhookDeliveries {
    pub success: bool,
    pub count: u64,
    /// Oldest first.
    pub deliveries: Vec<crate::http::webhooks::Delivery>,
}

/// `GET /api/config`.
#[derive(ToSchema)]
pub struct ConfigAnswer {
    pub success: bool,
    /// The effective config (camelCase keys, as in the file), secrets redacted.
    pub config: HashMap<String, Value>,
    /// The config file this server reads.
    pub config_path: String,
}

/// `PATCH /api/config`.
#[derive(ToSchema)]
pub struct ConfigPatched {
    pub success: bool,
    /// The new effective config, secrets redacted (a secret sent in the patch never comes
    /// back).
    pub config: HashMap<String, Value>,
    /// The changed keys that apply only after a restart (port, host, storage).
    pub restart_required: Vec<String>,
}

/// `GET /v1/models`: OpenAI's list, or Anthropic's with the `anthropic-version` header.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum ModelListAnswer {
    OpenAi(crate::http::openai::response::ModelList),
    Anthropic(crate::http::anthropic::response::ModelList),
}

/// `GET /v1/models/{id}`: OpenAI's model object, or Anthropic's with `anthropic-version`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum ModelAnswer {
    OpenAi(crate::http::openai::response::ModelObject),
    Anthropic(crate::http::anthropic::response::ModelInfo),
}

/// An error on a `/v1` route both dialects share (`/v1/models`): OpenAI's shape, or
/// Anthropic's with `anthropic-version`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum V1Error {
    OpenAi(crate::http::openai::error::ErrorEnvelope),
    Anthropic(crate::http::anthropic::error::ErrorEnvelope),
}

/// The errors of [`CommonErrors`] on a route both dialects share ([`V1Error`]).
pub struct SharedV1Errors;

impl IntoResponses for SharedV1Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&COMMON_ERRORS, "V1Error")
    }
}
