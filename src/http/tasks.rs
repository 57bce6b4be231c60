//! Task resources: the task object of the API and `GET /api/tasks/:id`.

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::web::Json;
use actix_web::HttpResponse;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use validator::{Validate, ValidationErrors};

use actors::approval::{ApprovalFilter, ApprovalStatus};
use actors::model::{rfc3339, Priority, Task, TaskStatus};
use actors::queue::CancelReason;
use actors::store::TaskFilter;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiJson;
use super::idempotency::{self, IdempotencyKey, Kind};
use super::params::{page, text, QueryMap};
use super::run_request::{validate, RunRequest, PRIORITY_MAX, PRIORITY_MIN};
use super::turns::{self, Admitted, Target};
use super::validate::{check, Rules};
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
        "approvals": task.spec.approvals,
        // Filled from storage where the task is read (see `with_pending_approvals`).
        "pending_approvals": 0,
    })
}

/// Task objects with `pending_approvals` counted: one storage read, and only when a task of
/// the list is a running run with approvals (nothing else can have pending ones).
pub async fn with_pending_approvals(
    state: &AppState,
    caller: &Caller,
    tasks: &[Task],
) -> Result<Vec<Value>, ApiError> {
    let mut items: Vec<Value> = tasks.iter().map(task_json).collect();
    let asking = |t: &Task| t.spec.approvals && t.status == TaskStatus::Processing;
    if !tasks.iter().any(asking) {
        return Ok(items);
    }
    let pending = if let [one] = tasks {
        state.store.task_approvals(one.id).await?
    } else {
        let filter = ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            owner: caller.owner_filter(),
            limit: 0,
        };
        state.store.list_approvals(&filter).await?
    };
    for (task, item) in tasks.iter().zip(items.iter_mut()) {
        if asking(task) {
            let n = pending
                .iter()
                .filter(|a| a.task_id == task.id && a.is_pending())
                .count();
            item["pending_approvals"] = json!(n);
        }
    }
    Ok(items)
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

#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", operation_id = "getTask",
    summary = "Get a task", params(("id" = String, Path, description = "Task id (UUID)")),
    responses((status = 200, body = crate::http::schema::TaskEnvelope), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_task(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let mut items = with_pending_approvals(&state, &caller, std::slice::from_ref(&task)).await?;
    let item = items.pop().unwrap_or_else(|| task_json(&task));
    Ok(Json(json!({"success": true, "task": item})))
}

/// `GET /api/tasks?status=&session_id=&limit=&offset=`: pending tasks in run order, the rest
/// newest first.
#[utoipa::path(get, path = "/api/tasks", tag = "tasks", operation_id = "listTasks",
    summary = "List tasks",
    params(("status" = Option<String>, Query, description = "pending|processing|completed|failed|cancelled|timeout"),
        ("session_id" = Option<String>, Query, description = "Session id (UUID)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("offset" = Option<u32>, Query)),
    responses((status = 200, description = "Pending tasks in run order, the rest newest first", body = crate::http::schema::TaskList), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_tasks(
    state: AppState,
    caller: Caller,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let p = page(&q)?;
    let status = match text(&q, "status") {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::field(
                "status",
                "must be one of: pending, processing, completed, failed, cancelled, timeout",
            )
        })?),
    };
    let session_id = text(&q, "session_id")
        .map(|s| Uuid::parse_str(s).map_err(|_| ApiError::field("session_id", "must be a UUID")))
        .transpose()?;
    let filter = TaskFilter {
        status,
        session_id,
        owner: caller.owner_filter(),
        limit: p.limit,
        offset: p.offset,
    };
    let (tasks, total) = state.store.list_tasks(&filter).await?;
    let items = with_pending_approvals(&state, &caller, &tasks).await?;
    Ok(Json(
        json!({"success": true, "count": items.len(), "total": total, "tasks": items}),
    ))
}

/// `POST /api/tasks/async`: queue a run; 201 with the stored task.
#[utoipa::path(post, path = "/api/tasks/async", tag = "tasks", operation_id = "createAsyncTask",
    summary = "Queue a run", request_body = crate::http::run_request::RunRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key runs once")),
    responses((status = 201, body = crate::http::schema::TaskEnvelope), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_async(
    state: AppState,
    caller: Caller,
    idem: IdempotencyKey,
    ApiJson(mut req): ApiJson<RunRequest>,
) -> Result<HttpResponse, ApiError> {
    req.is_async = Some(true);
    let run = validate(req, &state.config())?;
    let target = Target::of(run.session_id);
    let unused = idempotency::no_finished_answer;
    let admitted = turns::admit(
        &state,
        &caller,
        &idem,
        run,
        target,
        Kind::TaskCreated,
        unused,
    );
    let submitted = match admitted.await? {
        Admitted::Replay(replay) => return Ok(replay.into_response()),
        Admitted::Queued(q) => q.submitted.task,
    };
    Ok(HttpResponse::build(StatusCode::CREATED)
        .json(json!({"success": true, "task": task_json(&submitted)})))
}

#[derive(Debug, Deserialize, utoipa::ToSchema, Validate)]
pub struct PriorityChange {
    #[schema(minimum = 1, maximum = 10)]
    #[validate(range(min = PRIORITY_MIN, max = PRIORITY_MAX, message = "must be an integer from 1 to 10"))]
    pub priority: i64,
}

impl Rules for PriorityChange {
    const FIELDS: &'static [&'static str] = &["priority"];

    fn rules(&self, _: &actors::config::Config) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

/// `PATCH /api/tasks/:id/priority`: pending tasks only; the new place applies at once.
#[utoipa::path(patch, path = "/api/tasks/{id}/priority", tag = "tasks", operation_id = "setTaskPriority",
    summary = "Change a pending task's priority", params(("id" = String, Path, description = "Task id (UUID)")),
    request_body = crate::http::tasks::PriorityChange,
    responses((status = 200, body = crate::http::schema::PriorityChanged), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn set_priority(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
    ApiJson(req): ApiJson<PriorityChange>,
) -> Result<Json<Value>, ApiError> {
    // An unknown task is 404 before its body is judged.
    let task = visible_task(&state, &caller, &id).await?;
    check(&req, &state.config())?;
    let priority = Priority::new(req.priority).unwrap_or(task.priority);
    let old_priority = task.priority;
    let task = state.queue.set_priority(task.id, priority).await?;
    // The seed's fields (`message`, `task_id`, `old_priority`, `new_priority`) beside the task.
    Ok(Json(json!({
        "success": true,
        "message": format!(
            "Priority of task {} changed from {} to {}.",
            task.id,
            old_priority.get(),
            task.priority.get()
        ),
        "task_id": task.id,
        "old_priority": old_priority,
        "new_priority": task.priority,
        "task": task_json(&task),
    })))
}

/// `DELETE /api/tasks/:id`: a pending task never runs; a running one is killed (its whole
/// process group) and stays `cancelled`; a finished one is 409.
#[utoipa::path(delete, path = "/api/tasks/{id}", tag = "tasks", operation_id = "cancelTask",
    summary = "Cancel a task", params(("id" = String, Path, description = "Task id (UUID)")),
    responses((status = 200, description = "Cancelled: a pending task never runs; a running one is killed", body = crate::http::schema::TaskEnvelope), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cancel(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let task = state.queue.cancel(task.id, CancelReason::Requested).await?;
    Ok(Json(json!({"success": true, "task": task_json(&task)})))
}

/// `GET /api/tasks/queue/status`.
#[utoipa::path(get, path = "/api/tasks/queue/status", tag = "tasks", operation_id = "getQueueStatus",
    summary = "Queue status",
    responses((status = 200, body = crate::http::schema::QueueStatus), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn queue_status(state: AppState) -> Result<Json<Value>, ApiError> {
    let counts = state.store.task_counts().await?;
    let live = state.queue.status().await;
    Ok(Json(json!({
        "success": true,
        "queue": {
            "running": live.accepting,
            "paused": !live.accepting,
            "concurrency": live.concurrency,
            "active_tasks": live.running,
            "pending": counts.get(TaskStatus::Pending),
            "processing": counts.get(TaskStatus::Processing),
            "completed": counts.get(TaskStatus::Completed),
            "failed": counts.get(TaskStatus::Failed),
            "cancelled": counts.get(TaskStatus::Cancelled),
            "timeout": counts.get(TaskStatus::Timeout),
            "total": counts.total(),
            "total_cost_usd": counts.total_cost_usd,
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::validate::check;

    #[test]
    fn priority_is_from_1_to_10() {
        let config = actors::config::Config::from_merged(actors::config::load::defaults_doc())
            .expect("defaults");
        for (priority, ok) in [(0, false), (1, true), (10, true), (11, false)] {
            let result = check(&PriorityChange { priority }, &config);
            assert_eq!(result.is_ok(), ok, "{priority}");
            if let Err(e) = result {
                assert_eq!(
                    e.details,
                    Some(json!({"field": "priority", "rule": "must be an integer from 1 to 10"}))
                );
            }
        }
    }
}
