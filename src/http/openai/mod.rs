//! The OpenAI-compatible API, so the OpenAI SDKs and the tools built on them can use the
//! server: `POST /v1/chat/completions` (plain and streamed), `GET /v1/models`,
//! `GET /v1/models/{id}`.
//!
//! A chat completion is a run like any other: validated into the native request, started as a
//! turn of a session (`turns::prepare`) and queued as a task, under the same concurrency limit,
//! budgets, statistics and webhooks. Only the shapes differ; errors are converted to OpenAI's
//! shape in one place ([`error::convert_errors`]).

use std::sync::OnceLock;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::web::{self, Json};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;

use actors::config::Config;
use actors::error::ErrorCode;
use actors::model::{Task, TaskStatus};

use super::auth::Caller;
use super::claude::wait_submitted;
use super::error::ApiError;
use super::extract::ApiJson;
use super::idempotency::{IdempotencyKey, Kind};
use super::run_request::validate;
use super::turns::{self, Admitted, Queued, Target};
use crate::state::AppState;

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

use request::ChatRequest;
use response::{completion, completion_id, Envelope, ModelList, ModelObject};

/// The session of a chat: sent by the client to continue one, returned on every answer.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");

/// The `/v1` routes (authentication, rate limits and error conversion come from `http::app`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::routing::{get, post, resource};
    cfg.service(resource("/v1/chat/completions").route(post().to(chat_completions)))
        .service(resource("/v1/models").route(get().to(list_models)))
        .service(resource("/v1/models/{id}").route(get().to(get_model)));
}

/// `POST /v1/chat/completions`. Takes `Idempotency-Key` like the native run routes.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", operation_id = "createChatCompletion",
    summary = "Chat completion (OpenAI-compatible)",
    description = "A run like any other (queue, budgets, statistics, webhooks) in OpenAI's shapes. The last user message is the prompt; system and developer messages are appended to the CLI's system prompt; earlier messages are folded into the prompt unless a session is continued (`X-Session-Id` or `session_id`), whose history the CLI keeps. Errors are OpenAI's `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
    request_body = ChatRequest,
    params(("X-Session-Id" = Option<String>, Header, description = "Continue this session (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key runs once")),
    responses((status = 200, description = "The completion; with `stream: true`, Server-Sent Events whose `data:` are chunks, ending with `data: [DONE]`",
            headers(("X-Session-Id" = String, description = "The session of the chat: send it back to continue")),
            content((response::ChatCompletion = "application/json"), (response::Chunk = "text/event-stream"))),
        crate::http::schema::OpenAiErrors, crate::http::schema::OpenAiRunErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn chat_completions(
    state: AppState,
    caller: Caller,
    idem: IdempotencyKey,
    http: HttpRequest,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<HttpResponse, ApiError> {
    let chat = request::translate(req, header_session(http.headers())?)?;
    let config = state.config();
    let run = validate(chat.run, &config)?;
    let target = match run.session_id {
        Some(sid) => Target::Continue(sid),
        None => Target::NewSession,
    };
    let admitted = turns::admit(&state, &caller, &idem, run, target, Kind::Chat, replay);
    let Queued {
        submitted,
        guard,
        session_id,
        ..
    } = match admitted.await? {
        Admitted::Replay(replay) => return Ok(replay.into_response()),
        Admitted::Queued(q) => *q,
    };
    let env = Envelope {
        id: completion_id(submitted.task.id),
        created: submitted.task.created_at.timestamp(),
        model: chat.model.unwrap_or_else(|| config.default_model.clone()),
        session_id: session_id.to_string(),
    };
    let resp = if chat.stream {
        let source = state
            .queue
            .events()
            .source(&submitted.task, state.queue.store());
        stream::respond(source, env.clone(), chat.include_usage, guard)
    } else {
        let finished = wait_submitted(&state.queue, submitted, guard)
            .await
            .map_err(|e| e.with_session(session_id))?;
        answer(&env, finished)
    };
    Ok(with_session_header(resp, &env.session_id))
}

/// The completion of a finished run, or its error (converted to OpenAI's shape by the router).
fn answer(env: &Envelope, finished: Task) -> HttpResponse {
    if finished.status != TaskStatus::Completed {
        return ApiError::from_task(&finished).into_response();
    }
    let report = finished.report.unwrap_or_default();
    let content = report.result.unwrap_or_default();
    HttpResponse::Ok().json(completion(env, &content, report.usage))
}

/// A retry's answer (same `Idempotency-Key`): the first request's completion.
fn replay(finished: &[Task]) -> HttpResponse {
    let Some(task) = finished.first() else {
        return ApiError::new(ErrorCode::InternalError, "The original run is missing.")
            .into_response();
    };
    let session_id = task.session_id.map(|s| s.to_string()).unwrap_or_default();
    let env = Envelope {
        id: completion_id(task.id),
        created: task.created_at.timestamp(),
        model: task.spec.model.clone().unwrap_or_default(),
        session_id,
    };
    let resp = answer(&env, task.clone());
    with_session_header(resp, &env.session_id)
}

fn with_session_header(mut resp: HttpResponse, session_id: &str) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(session_id) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// The `X-Session-Id` header, if sent and not blank.
fn header_session(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::field("X-Session-Id", "must be a UUID"))?
        .trim();
    Ok((!v.is_empty()).then(|| v.to_string()))
}

/// The models a client may ask for: `defaultModel`, then `allowedModels` (when that list is
/// empty any model name is accepted, but only the default can be listed).
fn model_ids(config: &Config) -> Vec<String> {
    let mut ids = vec![config.default_model.clone()];
    for m in &config.allowed_models {
        if !ids.contains(m) {
            ids.push(m.clone());
        }
    }
    ids
}

/// `created` of the model objects: the server's start, fixed for the life of the process so
/// the list and the single lookups agree.
fn models_created(state: &AppState) -> i64 {
    static CREATED: OnceLock<i64> = OnceLock::new();
    *CREATED.get_or_init(|| {
        let up = chrono::Duration::from_std(state.started.elapsed()).unwrap_or_default();
        (Utc::now() - up).timestamp()
    })
}

fn model_object(id: String, created: i64) -> ModelObject {
    ModelObject {
        id,
        object: "model",
        created,
        owned_by: "anthropic",
    }
}

/// `GET /v1/models`.
#[utoipa::path(get, path = "/v1/models", tag = "openai", operation_id = "listModels",
    summary = "List models (OpenAI-compatible)",
    description = "`defaultModel`, then `allowedModels` (when that list is empty any model name is accepted, but only the default is listed).",
    responses((status = 200, description = "The models a client may ask for", body = ModelList), crate::http::schema::OpenAiErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_models(state: AppState) -> Json<ModelList> {
    let created = models_created(&state);
    Json(ModelList {
        object: "list",
        data: model_ids(&state.config())
            .into_iter()
            .map(|id| model_object(id, created))
            .collect(),
    })
}

/// `GET /v1/models/{id}`: 404 for a model the server does not list.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "openai", operation_id = "getModel",
    summary = "Get a model (OpenAI-compatible)",
    params(("id" = String, Path, description = "A model name, as listed by `GET /v1/models`")),
    responses((status = 200, description = "The model", body = ModelObject), crate::http::schema::OpenAiErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_model(
    state: AppState,
    id: web::Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let id = id.into_inner();
    if !model_ids(&state.config()).contains(&id) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("The model `{id}` does not exist on this server."),
        ));
    }
    Ok(Json(model_object(id, models_created(&state))))
}
