//! Anthropic's Messages API, so the Anthropic SDKs and the tools built on them can use the
//! server: `POST /v1/messages` (plain and streamed), and `GET /v1/models` in Anthropic's shape
//! when the request carries `anthropic-version` (served by the OpenAI module's route, which
//! asks the [`Dialect`]).
//!
//! A message is a run like any other: translated into the native request, admitted as a turn of
//! a session (`turns::admit`) and queued as a task, under the same concurrency limit, budgets,
//! rate limits, statistics and webhooks. Only the shapes differ; errors are converted to
//! Anthropic's shape in one place ([`dialect::convert_errors`]).
//!
//! [`Dialect`]: super::dialect::Dialect
//! [`dialect::convert_errors`]: super::dialect::convert_errors

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};

use actors::error::ErrorCode;
use actors::model::{Task, TaskStatus};

use super::auth::Caller;
use super::claude::wait_submitted;
use super::compat::{header_session, task_cut_short, with_session_header, written_text};
use super::error::ApiError;
use super::extract::ApiJson;
use super::idempotency::IdempotencyKey;
use super::run_request::validate;
use super::turns::{Queued, Target};
use crate::state::AppState;

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

use request::MessagesRequest;
use response::{message_id, Envelope, END_TURN, MAX_TOKENS};

/// The Anthropic routes (authentication, rate limits and error conversion come from `http::app`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::routing::{post, resource};
    cfg.service(resource("/v1/messages").route(post().to(messages)));
}

/// `POST /v1/messages`. Takes `Idempotency-Key` like the native run routes.
#[utoipa::path(post, path = "/v1/messages", tag = "anthropic", operation_id = "createMessage",
    summary = "Create a message (Anthropic-compatible)",
    description = "A run like any other (queue, budgets, statistics, webhooks) in Anthropic's shapes. The last user message is the prompt; `system` is appended to the CLI's system prompt; earlier messages are folded into the prompt unless a session is continued (`X-Session-Id`), whose history the CLI keeps. `max_tokens` is accepted and not enforced. `stop_reason` is `end_turn`, or `max_tokens` when the CLI stopped the run at its own limits (max turns, the run's budget). Errors are Anthropic's `{\"type\": \"error\", \"error\": {\"type\", \"message\"}}`.",
    request_body = MessagesRequest,
    params(("X-Session-Id" = Option<String>, Header, description = "Continue this session (UUID)"),
        ("anthropic-version" = Option<String>, Header, description = "Sent by the Anthropic SDKs; not required"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key runs once")),
    responses((status = 200, description = "The message; with `stream: true`, Server-Sent Events named after their `type` (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`, or `error`)",
            headers(("X-Session-Id" = String, description = "The session of the conversation: send it back to continue")),
            content((response::Message = "application/json"), (response::StreamEvent = "text/event-stream"))),
        crate::http::schema::AnthropicErrors, crate::http::schema::AnthropicRunErrors),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn messages(
    state: AppState,
    caller: Caller,
    idem: IdempotencyKey,
    http: HttpRequest,
    ApiJson(req): ApiJson<MessagesRequest>,
) -> Result<HttpResponse, ApiError> {
    let config = state.config();
    let msg = request::translate(req, header_session(http.headers())?, &config)?;
    let run = validate(msg.run, &config)?;
    let target = Target::of(run.session_id);
    let Queued {
        submitted,
        guard,
        session_id,
        ..
    } = match crate::http::compat::admit(&state, &caller, &idem, run, target, replay).await? {
        Ok(queued) => queued,
        Err(replayed) => return Ok(replayed),
    };
    let env = Envelope {
        id: message_id(submitted.task.id),
        model: msg.model.unwrap_or_else(|| config.default_model.clone()),
    };
    let resp = if msg.stream {
        let task = &submitted.task;
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
        answer(&env, &finished, written)
    };
    Ok(with_session_header(resp, &session_id.to_string()))
}

/// The message of a finished run, or its error (converted to Anthropic's shape by the router).
/// `written`: the text a run cut short wrote (it has no final answer of its own).
fn answer(env: &Envelope, finished: &Task, written: Vec<String>) -> HttpResponse {
    let report = finished.report.clone().unwrap_or_default();
    let (blocks, stop_reason) = if finished.status == TaskStatus::Completed {
        (vec![report.result.unwrap_or_default()], END_TURN)
    } else if task_cut_short(finished) {
        (written, MAX_TOKENS)
    } else {
        return ApiError::from_task(finished).into_response();
    };
    HttpResponse::Ok().json(env.message(&blocks, stop_reason, report.usage))
}

/// A retry's answer (same `Idempotency-Key`): the first request's message (a run cut short
/// answers without its text: that lives only in the run's event log, for a while).
fn replay(finished: &[Task]) -> HttpResponse {
    let Some(task) = finished.first() else {
        return ApiError::new(ErrorCode::InternalError, "The original run is missing.")
            .into_response();
    };
    let env = Envelope {
        id: message_id(task.id),
        model: task.spec.model.clone().unwrap_or_default(),
    };
    let resp = answer(&env, task, Vec::new());
    let session_id = task.session_id.map(|s| s.to_string()).unwrap_or_default();
    with_session_header(resp, &session_id)
}
