//! Task resources: the task object of the API and `GET /api/tasks/:id`.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use uuid::Uuid;

use actors::model::{rfc3339, Task};

use super::auth::Caller;
use super::error::ApiError;
use crate::state::AppState;

/// The task object of `api.md` § Tasks and the queue.
pub fn task_json(task: &Task) -> Value {
    let report = task.report.as_ref();
    json!({
        "id": task.id,
        "status": task.status,
        "priority": task.priority,
        "prompt": task.spec.prompt,
        "project_path": task.spec.project_path,
        "model": task.spec.model,
        "resolved_model": report.and_then(|r| r.resolved_model.clone()),
        "session_id": task.session_id.map(|s| s.to_string()).or_else(|| report.and_then(|r| r.session_id.clone())),
        "mode": task.mode,
        "created_at": rfc3339(&task.created_at),
        "started_at": task.started_at.as_ref().map(rfc3339),
        "completed_at": task.completed_at.as_ref().map(rfc3339),
        "duration_ms": task.duration_ms,
        "cost_usd": task.cost_usd,
        "usage": report.map(|r| r.usage),
        "num_turns": report.map(|r| r.num_turns),
        "result": report.and_then(|r| r.result.clone()),
        "permission_denials": report.map(|r| r.permission_denials.clone()).unwrap_or_default(),
        "error": task.error.as_ref().map(|e| json!({"code": e.code, "message": e.message, "details": e.details})),
        "webhook_url": task.webhook_url,
        "metadata": task.metadata,
        "attempts": task.attempts,
    })
}

/// Parse a task id from the path: a malformed id is simply not found.
pub fn parse_task_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("Task"))
}

/// Load a task the caller may see; another key's task is "not found", like an unknown one.
pub async fn visible_task(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
) -> Result<Task, ApiError> {
    let id = parse_task_id(raw_id)?;
    match state.store.get_task(id).await? {
        Some(task) if caller.can_see(&task.owner) => Ok(task),
        _ => Err(ApiError::not_found("Task")),
    }
}

pub async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    Ok(Json(json!({"success": true, "task": task_json(&task)})))
}
