//! `GET /api/tasks/:id/webhooks`: every delivery attempt made for a task, oldest first.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use actors::model::rfc3339;
use actors::webhook::WebhookAttempt;

use super::auth::Caller;
use super::error::ApiError;
use super::tasks::visible_task;
use crate::state::AppState;

/// One attempt as the API shows it (`api.md` § Precise answers).
pub fn attempt_json(a: &WebhookAttempt) -> Value {
    json!({
        "webhook_id": a.webhook_id,
        "event": a.event,
        "url": a.url,
        "attempt": a.attempt,
        "status_code": a.status_code,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "at": rfc3339(&a.at),
    })
}

#[utoipa::path(get, path = "/api/tasks/{id}/webhooks", tag = "tasks", params(("id" = String, Path, description = "Task id (UUID)")),
    responses((status = 200, description = "Every delivery attempt of the task's webhook", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let attempts = state.store.webhook_attempts(task.id).await?;
    let deliveries: Vec<Value> = attempts.iter().map(attempt_json).collect();
    Ok(Json(json!({
        "success": true,
        "count": deliveries.len(),
        "deliveries": deliveries,
    })))
}
