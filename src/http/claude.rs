//! `POST /api/claude`: run a prompt, synchronously (the request waits for its task) or
//! asynchronously (202 with the task id).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

use actors::error::ErrorCode;
use actors::model::{Task, TaskMode, TaskStatus};
use actors::queue::{CancelReason, Queue};

use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiJson;
use super::idempotency::IdempotencyKey;
use super::run_request::{validate, RunRequest, ValidatedRun};
use super::turns::{self, Target};
use crate::state::AppState;

#[utoipa::path(post, path = "/api/claude", tag = "runs", operation_id = "runPrompt",
    summary = "Run a prompt: sync, async or streamed", request_body = crate::http::run_request::RunRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key runs once")),
    responses((status = 200, description = "The run's answer (or an event stream with `stream: true`)", content((crate::http::schema::SyncAnswer = "application/json"), (crate::http::schema::SseEvent = "text/event-stream"))),
        (status = 202, description = "Queued (`async: true`)", body = crate::http::schema::AsyncAnswer), crate::http::schema::CommonErrors, crate::http::schema::RunErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn run_claude(
    state: AppState,
    caller: Caller,
    idem: IdempotencyKey,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<HttpResponse, ApiError> {
    let config = state.config();
    let run = validate(req, &config)?;
    let target = Target::of(run.session_id);
    turns::start(&state, &caller, run, target, &idem).await
}

pub fn build_task(run: ValidatedRun, mode: TaskMode, caller: &Caller) -> Task {
    let mut task = Task::new(run.spec, run.priority, mode);
    task.id = run.task_id;
    task.owner = caller.owner();
    task.webhook_url = run.webhook_url;
    task.metadata = run.metadata;
    task.session_id = run.session_id;
    task
}

/// Wait for the final record of a task submitted with `wait`. `guard` cancels the run if this
/// future is dropped before the end.
pub async fn wait_submitted(
    queue: &Queue,
    submitted: actors::queue::Submitted,
    mut guard: CancelOnDrop,
) -> Result<Task, ApiError> {
    let id = submitted.task.id;
    let finished = match submitted.done {
        Some(done) => match done.await {
            Ok(task) => task,
            Err(_) => queue.wait_for(id).await?,
        },
        None => queue.wait_for(id).await?,
    };
    guard.armed = false;
    if !finished.status.is_final() {
        // The supervisor stopped (shutdown) before the task ran; it stays pending.
        return Err(ApiError {
            task_id: Some(id),
            ..ApiError::new(
                ErrorCode::ShuttingDown,
                "The server is shutting down; the task is kept and runs after the restart.",
            )
        });
    }
    Ok(finished)
}

/// Tasks submitted together, each with the guard that cancels it if dropped while armed.
pub struct SubmittedAll(Vec<(actors::queue::Submitted, CancelOnDrop)>);

impl SubmittedAll {
    /// The stored tasks, in submission order.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> + Clone {
        self.0.iter().map(|(s, _)| &s.task)
    }

    /// Nothing waits for these tasks: they run whatever happens to the request.
    pub fn detach(self) {
        for (_, mut guard) in self.0 {
            guard.disarm();
        }
    }

    /// Wait for every task's final record (in submission order). If this future is dropped
    /// and `cancel_on_disconnect` is on, every task still running or pending is cancelled.
    pub async fn wait_all(
        self,
        queue: &Queue,
        cancel_on_disconnect: bool,
    ) -> Result<Vec<Task>, ApiError> {
        let mut guards = Vec::with_capacity(self.0.len());
        let mut finished = Vec::with_capacity(self.0.len());
        let mut receivers = Vec::with_capacity(self.0.len());
        for (submitted, mut guard) in self.0 {
            guard.armed = cancel_on_disconnect;
            guards.push(guard);
            receivers.push((submitted.task.id, submitted.done));
        }
        for (id, done) in receivers {
            let task = match done {
                Some(rx) => match rx.await {
                    Ok(t) => t,
                    Err(_) => queue.wait_for(id).await?,
                },
                None => queue.wait_for(id).await?,
            };
            finished.push(task);
        }
        for g in &mut guards {
            g.disarm();
        }
        Ok(finished)
    }
}

/// Submit several tasks (`wait`: to be waited for). If one submission fails, the ones already
/// queued are cancelled and the error is returned: a batch is queued whole or not.
pub async fn submit_all(
    queue: &Queue,
    tasks: Vec<Task>,
    wait: bool,
) -> Result<SubmittedAll, ApiError> {
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        // On an error the guards of what was queued cancel it.
        let submitted = queue.submit(task, wait, false).await?;
        let guard = CancelOnDrop::new(queue.clone(), submitted.task.id, true);
        all.push((submitted, guard));
    }
    Ok(SubmittedAll(all))
}

/// Cancels a task when dropped while armed: held by whatever waits for the task on behalf of a
/// client (a sync request, a stream), so a client that goes away takes its run with it.
pub struct CancelOnDrop {
    queue: Queue,
    id: actors::model::TaskId,
    armed: bool,
}

impl CancelOnDrop {
    pub fn new(queue: Queue, id: actors::model::TaskId, armed: bool) -> Self {
        CancelOnDrop { queue, id, armed }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let queue = self.queue.clone();
        let id = self.id;
        log::info!(task_id:% = id; "client disconnected; cancelling its run");
        // Drop cannot await; the cancel runs on its own task.
        tokio::spawn(async move {
            if let Err(e) = queue.cancel(id, CancelReason::ClientDisconnected).await {
                log::debug!(task_id:% = id, error:% = e; "cancel after disconnect not needed");
            }
        });
    }
}

/// The 202 body of an async submission.
pub fn async_answer(task: &Task) -> Value {
    json!({
        "success": true,
        "task_id": task.id,
        "status": task.status,
        "priority": task.priority,
        "session_id": task.session_id,
        "webhook_url": task.webhook_url,
    })
}

/// The answer for a finished task: 200 with the result, or its error with the right status.
pub fn sync_answer(task: &Task) -> HttpResponse {
    if task.status != TaskStatus::Completed {
        return ApiError::from_task(task).into_response();
    }
    HttpResponse::build(StatusCode::OK).json(success_body(task))
}

/// The body of a completed run (`api.md` § sync answer).
pub fn success_body(task: &Task) -> Value {
    let report = task.report.clone().unwrap_or_default();
    json!({
        "success": true,
        "result": report.result.unwrap_or_default(),
        "session_id": task.session_id.map(|s| s.to_string()).or(report.session_id),
        "task_id": task.id,
        "duration_ms": task.duration_ms.unwrap_or(report.duration_ms),
        "cost_usd": task.cost_usd.unwrap_or(0.0),
        "usage": report.usage,
        "num_turns": report.num_turns,
        "model": task.spec.model,
        "resolved_model": report.resolved_model,
        "permission_denials": report.permission_denials,
        "is_error": false,
    })
}
