//! The OpenAI-compatible API, so the OpenAI SDKs and the tools built on them can use the
//! server: `POST /v1/chat/completions` (plain and streamed), `POST /v1/responses` (the
//! Responses API, plain and streamed), `GET /v1/models`, `GET /v1/models/{id}` (in Anthropic's
//! shape for a request in Anthropic's dialect).
//!
//! A chat completion is a run like any other: validated into the native request, started as a
//! turn of a session (`turns::prepare`) and queued as a task, under the same concurrency limit,
//! budgets, statistics and webhooks. Only the shapes differ; errors are converted to OpenAI's
//! shape in one place ([`convert_errors`](super::dialect::convert_errors)).

use std::sync::OnceLock;

use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;

use actors::config::Config;
use actors::error::ErrorCode;
use actors::model::{Task, TaskStatus};

use super::anthropic::response::{model_info, model_list};
use super::auth::Caller;
use super::claude::wait_submitted;
use super::compat::{header_session, with_session_header};
use super::dialect::Dialect;
use super::error::ApiError;
use super::extract::ApiJson;
use super::idempotency::IdempotencyKey;
use super::run_request::validate;
use super::turns::{Queued, Target};
use crate::state::AppState;

pub mod error;
pub mod request;
pub mod response;
pub mod responses;
pub mod stream;

use request::ChatRequest;
use response::{completion, completion_id, Envelope, ModelList, ModelObject};

/// The `/v1` routes (authentication, rate limits and error conversion come from `http::app`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::routing::{get, post, resource};
    cfg.service(resource("/v1/chat/completions").route(post().to(chat_completions)))
        .service(resource("/v1/responses").route(post().to(responses::create)))
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
        let (store, task_id) = (state.store.clone(), submitted.task.id);
        stream::respond(
            source,
            env.clone(),
            chat.include_usage,
            store,
            task_id,
            guard,
        )
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

/// `GET /v1/models`, in Anthropic's shape when the request speaks its dialect
/// (`anthropic-version`).
#[utoipa::path(get, path = "/v1/models", tag = "openai", operation_id = "listModels",
    summary = "List models (OpenAI- and Anthropic-compatible)",
    description = "`defaultModel`, then `allowedModels` (when that list is empty any model name is accepted, but only the default is listed). With the `anthropic-version` header (the Anthropic SDKs send it), the list and its errors are in Anthropic's shape (`AnthropicModelList`).",
    params(("anthropic-version" = Option<String>, Header, description = "Answer in Anthropic's shape")),
    responses((status = 200, description = "The models a client may ask for (`AnthropicModelList` with `anthropic-version`)", body = crate::http::schema::ModelListAnswer), crate::http::schema::SharedV1Errors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_models(state: AppState, http: HttpRequest) -> HttpResponse {
    let created = models_created(&state);
    let ids = model_ids(&state.config());
    if Dialect::of_request(&http) == Dialect::Anthropic {
        let data = ids.into_iter().map(|id| model_info(id, created)).collect();
        return HttpResponse::Ok().json(model_list(data));
    }
    HttpResponse::Ok().json(ModelList {
        object: "list",
        data: ids
            .into_iter()
            .map(|id| model_object(id, created))
            .collect(),
    })
}

/// `GET /v1/models/{id}`: 404 for a model the server does not list; in Anthropic's shape with
/// `anthropic-version`.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "openai", operation_id = "getModel",
    summary = "Get a model (OpenAI- and Anthropic-compatible)",
    params(("id" = String, Path, description = "A model name, as listed by `GET /v1/models`"),
        ("anthropic-version" = Option<String>, Header, description = "Answer in Anthropic's shape")),
    responses((status = 200, description = "The model (`AnthropicModelInfo` with `anthropic-version`)", body = crate::http::schema::ModelAnswer), crate::http::schema::SharedV1Errors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_model(
    state: AppState,
    id: web::Path<String>,
    http: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if !model_ids(&state.config()).contains(&id) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("The model `{id}` does not exist on this server."),
        ));
    }
    let created = models_created(&state);
    Ok(if Dialect::of_request(&http) == Dialect::Anthropic {
        HttpResponse::Ok().json(model_info(id, created))
    } else {
        HttpResponse::Ok().json(model_object(id, created))
    })
}
