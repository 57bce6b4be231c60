//! `GET /api/tasks/:id/webhooks`: every delivery attempt made for a task, oldest first.

use actix_web::web;
use actix_web::web::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use actors::model::rfc3339;
use actors::webhook::WebhookAttempt;

use super::auth::Caller;
use super::error::ApiError;
use super::tasks::visible_task;
use crate::state::AppState;

/// One delivery attempt as the API shows it (`api.md` § Precise answers).
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// Stable across the retries of one event (the `webhook-id` header).
    pub webhook_id: String,
    /// `task.completed`, `task.failed`, `task.timeout` or `task.cancelled`.
    pub event: String,
    pub url: String,
    /// 1 for the first attempt, then 2, 3, ...
    pub attempt: u32,
    /// The receiver's status; null when it did not answer.
    #[schema(required = true)]
    pub status_code: Option<u16>,
    /// Why the attempt failed; null on success.
    #[schema(required = true)]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// When the attempt started (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&WebhookAttempt> for Delivery {
    fn from(a: &WebhookAttempt) -> Delivery {
        Delivery {
            webhook_id: a.webhook_id.clone(),
            event: a.event.clone(),
            url: a.url.clone(),
            attempt: a.attempt,
            status_code: a.status_code,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
            at: rfc3339(&a.at),
        }
    }
}

#[utoipa::path(get, path = "/api/tasks/{id}/webhooks", tag = "tasks", operation_id = "listWebhookDeliveries",
    summary = "A task's webhook deliveries",
    params(("id" = String, Path, description = "Task id (UUID)")),
    responses((status = 200, description = "Every delivery attempt of the task's webhook, oldest first", body = crate::http::schema::WebhookDeliveries), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_deliveries(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let attempts = state.store.webhook_attempts(task.id).await?;
    let deliveries: Vec<Delivery> = attempts.iter().map(Delivery::from).collect();
    Ok(Json(json!({
        "success": true,
        "count": deliveries.len(),
        "deliveries": deliveries,
    })))
}
