//! OpenAI's Responses API, `POST /v1/responses` (plain and streamed), which OpenAI's newer
//! clients speak. A response is a run like any other, admitted as a turn of a session; its id
//! is `resp_<task id>`, and `previous_response_id` continues the session of that response's
//! task (a response the caller cannot see is 404, like an unknown one).

use actix_web::HttpResponse;
use serde_json::json;

use actors::error::ErrorCode;
use actors::model::{SessionId, Task, TaskStatus};

use super::super::auth::Caller;
use super::super::claude::wait_submitted;
use super::super::compat::{task_cut_short, with_session_header, written_text};
use super::super::error::ApiError;
use super::super::extract::ApiJson;
use super::super::idempotency::IdempotencyKey;
use super::super::run_request::validate;
use super::super::turns::{Queued, Target};
use crate::state::AppState;

pub mod request;
pub mod response;
pub mod stream;

use request::ResponsesRequest;
use response::{item_id, metadata_of, response_id, task_of_response, Envelope, Outcome};

/// `POST /v1/responses`. Takes `Idempotency-Key` like the native run routes.
#[utoipa::path(post, path = "/v1/responses", tag = "openai", operation_id = "createResponse",
    summary = "Create a response (OpenAI Responses API)",
    description = "A run like any other (queue, budgets, statistics, webhooks) in the Responses API's shapes. `input` is a string or a list of messages, the last of them the user's (the prompt; earlier ones are folded into it); `instructions` and system/developer messages are appended to the CLI's system prompt; `previous_response_id` continues the session of that response. `max_output_tokens` is accepted and not enforced. A run the CLI stopped at its own limits (max turns, the run's budget) is `incomplete`. Errors are OpenAI's `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
    request_body = ResponsesRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key runs once")),
    responses((status = 200, description = "The response; with `stream: true`, Server-Sent Events named after their `type`, from `response.created` to `response.completed` (or `response.incomplete`, `response.failed`)",
            headers(("X-Session-Id" = String, description = "The session of the response")),
            content((response::ResponseObject = "application/json"), (response::StreamEvent = "text/event-stream"))),
        crate::http::schema::OpenAiErrors, crate::http::schema::ResponsesRunErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create(
    state: AppState,
    caller: Caller,
    idem: IdempotencyKey,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> Result<HttpResponse, ApiError> {
    let config = state.config();
    let translated = request::translate(req)?;
    let run = validate(translated.run, &config)?;
    let target = match translated.previous_response_id.as_deref() {
        Some(id) => Target::Continue(session_of(&state, &caller, id).await?),
        None => Target::NewSession,
    };
    let Queued {
        submitted,
        guard,
        session_id,
        ..
    } = match crate::http::compat::admit(&state, &caller, &idem, run, target, replay).await? {
        Ok(queued) => queued,
        Err(replayed) => return Ok(replayed),
    };
    let task = &submitted.task;
    let env = Envelope {
        model: translated
            .model
            .unwrap_or_else(|| config.default_model.clone()),
        previous_response_id: translated.previous_response_id,
        ..envelope(task)
    };
    let resp = if translated.stream {
        let source = state.queue.events().source(task, state.queue.store());
        stream::respond(source, env, state.store.clone(), task.id, guard)
    } else {
        let finished = wait_submitted(&state.queue, submitted, guard)
            .await
            .map_err(|e| e.with_session(session_id))?;
        let written = if task_cut_short(&finished) {
            let source = state.queue.events().source(&finished, state.queue.store());
            written_text(source).await
        } else {
            Vec::new()
        };
        answer(&env, &finished, &written)
    };
    Ok(with_session_header(resp, &session_id.to_string()))
}

/// The session of the response `id`: the caller's, or 404 naming `previous_response_id`.
async fn session_of(state: &AppState, caller: &Caller, id: &str) -> Result<SessionId, ApiError> {
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("The response `{id}` was not found (previous_response_id)."),
        )
        .with_details(json!({"field": "previous_response_id"}))
    };
    let task_id = task_of_response(id).ok_or_else(not_found)?;
    match state.store.get_task(task_id).await? {
        Some(task) if caller.can_see(&task.owner) => task.session_id.ok_or_else(not_found),
        _ => Err(not_found()),
    }
}

/// What the task says of the response; the handler fills in what the request says.
fn envelope(task: &Task) -> Envelope {
    Envelope {
        id: response_id(task.id),
        item_id: item_id(task.id),
        created_at: task.created_at.timestamp(),
        model: task.spec.model.clone().unwrap_or_default(),
        instructions: task.spec.append_system_prompt.clone(),
        previous_response_id: None,
        metadata: metadata_of(task.metadata.as_ref()),
    }
}

/// The response of a finished run, or its error (converted to OpenAI's shape by the router).
/// `written`: the text a run cut short wrote (it has no final answer of its own).
fn answer(env: &Envelope, finished: &Task, written: &[String]) -> HttpResponse {
    let report = finished.report.clone().unwrap_or_default();
    if finished.status == TaskStatus::Completed {
        let text = report.result.unwrap_or_default();
        let body = env.response(Some(&text), Outcome::Completed(report.usage));
        return HttpResponse::Ok().json(body);
    }
    if task_cut_short(finished) {
        // Stretches of text between tool calls, apart as in the stream.
        let text = written.join("\n\n");
        let body = env.response(Some(&text), Outcome::Incomplete(report.usage));
        return HttpResponse::Ok().json(body);
    }
    ApiError::from_task(finished).into_response()
}

/// A retry's answer (same `Idempotency-Key`): the first request's response (without its
/// `previous_response_id`, which the task does not keep; a run cut short without its text,
/// which lives only in the run's event log, for a while).
fn replay(finished: &[Task]) -> HttpResponse {
    let Some(task) = finished.first() else {
        return ApiError::new(ErrorCode::InternalError, "The original run is missing.")
            .into_response();
    };
    let resp = answer(&envelope(task), task, &[]);
    let session_id = task.session_id.map(|s| s.to_string()).unwrap_or_default();
    with_session_header(resp, &session_id)
}
