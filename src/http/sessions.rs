//! Session resources (`api.md` § Sessions).

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::web::Json;
use actix_web::HttpResponse;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use validator::{Validate, ValidateArgs, ValidationError, ValidationErrors};

use actors::claude::transcript;
use actors::cluster::transcripts;
use actors::config::Config;
use actors::error::ErrorCode;
use actors::model::{rfc3339, Session, SessionId, SessionStatus, TaskStatus};
use actors::store::{SessionFilter, TaskFilter};

use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiJson;
use super::idempotency::IdempotencyKey;
use super::params::{page, text, QueryMap};
use super::run_request::{
    metadata_rule, model_rule, project_path_rule, resolve_project_path, validate, RunRequest,
};
use super::turns::{self, Target};
use super::validate::{check, rule, Rules, ValidatedJson};
use crate::state::AppState;

/// The session object of the API.
pub fn session_json(s: &Session) -> Value {
    json!({
        "id": s.id,
        "created_at": rfc3339(&s.created_at),
        "updated_at": rfc3339(&s.updated_at),
        "status": s.status,
        "model": s.model,
        "project_path": s.project_path,
        "messages_count": s.messages_count,
        "total_cost_usd": s.total_cost_usd,
        "last_task_id": s.last_task_id,
        "metadata": s.metadata,
    })
}

fn parse_session_id(raw: &str) -> Result<SessionId, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("Session"))
}

/// A session the caller may see; another key's session is "not found", like an unknown one.
pub async fn visible_session(
    state: &AppState,
    caller: &Caller,
    id: SessionId,
) -> Result<Session, ApiError> {
    match state.store.get_session(id).await? {
        Some(s) if caller.can_see(&s.owner) => Ok(s),
        _ => Err(ApiError::not_found("Session")),
    }
}

async fn visible_session_raw(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<Session, ApiError> {
    visible_session(state, caller, parse_session_id(raw)?).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema, Validate)]
#[validate(context = Config)]
pub struct CreateSession {
    #[validate(custom(function = "project_path_rule", use_context))]
    pub project_path: Option<String>,
    #[validate(custom(function = "model_rule", use_context))]
    pub model: Option<String>,
    #[schema(value_type = Option<Object>)]
    #[validate(custom(function = "metadata_rule"))]
    pub metadata: Option<Value>,
}

impl Rules for CreateSession {
    const FIELDS: &'static [&'static str] = &["project_path", "model", "metadata"];

    fn rules(&self, config: &Config) -> Result<(), ValidationErrors> {
        self.validate_with_args(config)
    }
}

#[utoipa::path(post, path = "/api/sessions", tag = "sessions", operation_id = "createSession",
    summary = "Create a session", request_body = crate::http::sessions::CreateSession,
    responses((status = 201, body = crate::http::schema::SessionEnvelope), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create(
    state: AppState,
    caller: Caller,
    ValidatedJson(req): ValidatedJson<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    let config = state.config();
    // Resolving can still fail: the default directory is the config's.
    let project_path = resolve_project_path(req.project_path.as_deref(), &config)?;
    let model = req.model.unwrap_or_else(|| config.default_model.clone());
    let metadata = req.metadata.unwrap_or_else(|| json!({}));
    let now = Utc::now();
    let session = Session {
        id: Uuid::new_v4(),
        created_at: now,
        updated_at: now,
        status: SessionStatus::Active,
        model: Some(model),
        project_path,
        messages_count: 0,
        total_cost_usd: 0.0,
        last_reported_cost_usd: 0.0,
        last_task_id: None,
        owner: caller.owner(),
        metadata,
    };
    state.sessions.create(session.clone(), false).await?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .json(json!({"success": true, "session": session_json(&session)})))
}

const STATUS_RULE: &str = "must be one of: active, archived, closed";

fn session_status(name: &str) -> Option<SessionStatus> {
    match name {
        "active" => Some(SessionStatus::Active),
        "archived" => Some(SessionStatus::Archived),
        "closed" => Some(SessionStatus::Closed),
        _ => None,
    }
}

fn parse_status(q: &HashMap<String, String>) -> Result<Option<SessionStatus>, ApiError> {
    text(q, "status")
        .map(|s| session_status(s).ok_or_else(|| ApiError::field("status", STATUS_RULE)))
        .transpose()
}

#[utoipa::path(get, path = "/api/sessions", tag = "sessions", operation_id = "listSessions",
    summary = "List sessions",
    params(("status" = Option<String>, Query, description = "active|archived|closed"), ("project_path" = Option<String>, Query),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("offset" = Option<u32>, Query)),
    responses((status = 200, description = "Newest first", body = crate::http::schema::SessionList), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list(
    state: AppState,
    caller: Caller,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let p = page(&q)?;
    let filter = SessionFilter {
        status: parse_status(&q)?,
        project_path: text(&q, "project_path").map(String::from),
        query: None,
        owner: caller.owner_filter(),
        limit: p.limit,
        offset: p.offset,
    };
    let (sessions, total) = state.store.list_sessions(&filter).await?;
    let items: Vec<Value> = sessions.iter().map(session_json).collect();
    Ok(Json(
        json!({"success": true, "count": items.len(), "total": total, "sessions": items}),
    ))
}

#[utoipa::path(get, path = "/api/sessions/search", tag = "sessions", operation_id = "searchSessions",
    summary = "Search sessions",
    params(("q" = String, Query, description = "Case-insensitive text in id, project path or metadata"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("offset" = Option<u32>, Query)),
    responses((status = 200, body = crate::http::schema::SessionList), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn search(
    state: AppState,
    caller: Caller,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let p = page(&q)?;
    let query = text(&q, "q").ok_or_else(|| ApiError::field("q", "is required"))?;
    let filter = SessionFilter {
        query: Some(query.to_string()),
        owner: caller.owner_filter(),
        limit: p.limit,
        offset: p.offset,
        ..Default::default()
    };
    let (sessions, total) = state.store.list_sessions(&filter).await?;
    let items: Vec<Value> = sessions.iter().map(session_json).collect();
    Ok(Json(
        json!({"success": true, "query": query, "count": items.len(), "total": total, "sessions": items}),
    ))
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", operation_id = "getSession",
    summary = "Get a session", params(("id" = String, Path, description = "Session id (UUID)")),
    responses((status = 200, body = crate::http::schema::SessionEnvelope), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = visible_session_raw(&state, &caller, &id).await?;
    Ok(Json(
        json!({"success": true, "session": session_json(&session)}),
    ))
}

#[utoipa::path(get, path = "/api/sessions/{id}/stats", tag = "sessions", operation_id = "getSessionStats",
    summary = "A session's figures", params(("id" = String, Path, description = "Session id (UUID)")),
    responses((status = 200, body = crate::http::schema::SessionStats), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn stats(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = visible_session_raw(&state, &caller, &id).await?;
    let filter = TaskFilter {
        session_id: Some(session.id),
        limit: 0,
        ..Default::default()
    };
    let (tasks, total) = state.store.list_tasks(&filter).await?;
    let mut by_status: HashMap<&'static str, u64> =
        TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let (mut input, mut output, mut cache_read, mut cache_create, mut duration) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for t in &tasks {
        *by_status.entry(t.status.as_str()).or_insert(0) += 1;
        duration += t.duration_ms.unwrap_or(0);
        if let Some(r) = &t.report {
            input += r.usage.input_tokens;
            output += r.usage.output_tokens;
            cache_read += r.usage.cache_read_input_tokens;
            cache_create += r.usage.cache_creation_input_tokens;
        }
    }
    let finished = tasks.iter().filter(|t| t.status.is_final()).count() as u64;
    Ok(Json(json!({
        "success": true,
        "session_id": session.id,
        "stats": {
            "messages_count": session.messages_count,
            "total_cost_usd": session.total_cost_usd,
            "tasks": {"total": total, "by_status": by_status},
            "tokens": {"input": input, "output": output, "cache_read": cache_read, "cache_creation": cache_create},
            "total_duration_ms": duration,
            "avg_duration_ms": duration.checked_div(finished).unwrap_or(0),
            "created_at": rfc3339(&session.created_at),
            "updated_at": rfc3339(&session.updated_at),
            "last_task_id": session.last_task_id,
        }
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema, Validate)]
pub struct StatusChange {
    #[validate(custom(function = "status_rule"))]
    pub status: String,
}

impl Rules for StatusChange {
    const FIELDS: &'static [&'static str] = &["status"];

    fn rules(&self, _: &Config) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

fn status_rule(status: &str) -> Result<(), ValidationError> {
    session_status(status)
        .map(drop)
        .ok_or_else(|| rule(STATUS_RULE))
}

#[utoipa::path(patch, path = "/api/sessions/{id}/status", tag = "sessions", operation_id = "setSessionStatus",
    summary = "Change a session's status", params(("id" = String, Path, description = "Session id (UUID)")),
    request_body = crate::http::sessions::StatusChange,
    responses((status = 200, body = crate::http::schema::SessionEnvelope), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn set_status(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
    ApiJson(req): ApiJson<StatusChange>,
) -> Result<Json<Value>, ApiError> {
    // An unknown session is 404 before its body is judged.
    let session = visible_session_raw(&state, &caller, &id).await?;
    check(&req, &state.config())?;
    let status = session_status(&req.status).unwrap_or(session.status);
    // The SessionActor changes the record as it is then: a turn's accounting written
    // meanwhile stays.
    let Some(session) = state.sessions.set_status(session.id, status).await? else {
        return Err(ApiError::not_found("Session"));
    };
    Ok(Json(
        json!({"success": true, "session": session_json(&session)}),
    ))
}

#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "sessions", operation_id = "deleteSession",
    summary = "Delete a session", params(("id" = String, Path, description = "Session id (UUID)")),
    responses((status = 200, body = crate::http::schema::Deleted), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = visible_session_raw(&state, &caller, &id).await?;
    let live = TaskFilter {
        session_id: Some(session.id),
        status: Some(TaskStatus::Processing),
        limit: 1,
        ..Default::default()
    };
    let pending = TaskFilter {
        status: Some(TaskStatus::Pending),
        ..live.clone()
    };
    if state.store.list_tasks(&live).await?.1 > 0 || state.store.list_tasks(&pending).await?.1 > 0 {
        return Err(ApiError::new(
            ErrorCode::SessionBusy,
            "The session has a turn pending or running; cancel it first.",
        )
        .with_session(session.id));
    }
    state.sessions.delete(session.id).await?;
    // The CLI's transcript goes too: a deleted conversation should not stay readable on disk.
    if let Some(dir) = transcript::config_dir(&state.config().claude_env) {
        let _ = std::fs::remove_file(transcript::path(
            &dir,
            &session.project_path,
            &session.id.to_string(),
        ));
    }
    Ok(Json(json!({"success": true, "deleted": session.id})))
}

#[utoipa::path(get, path = "/api/sessions/{id}/messages", tag = "sessions", operation_id = "listSessionMessages",
    summary = "A session's messages", params(("id" = String, Path, description = "Session id (UUID)")),
    responses((status = 200, description = "The conversation, from the CLI's transcript (on Redis storage, its copy in Redis when this instance's file is missing or behind)", body = crate::http::schema::Messages), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn messages(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let session = visible_session_raw(&state, &caller, &id).await?;
    // With several instances the local file may be missing or behind: the stored copy counts.
    let text = transcripts::read(
        state.cluster.as_deref(),
        &state.config(),
        &session.project_path,
        session.id,
    )
    .await?;
    let messages = transcript::read_messages(&text);
    Ok(Json(
        json!({"success": true, "session_id": session.id, "count": messages.len(), "messages": messages}),
    ))
}

#[utoipa::path(post, path = "/api/sessions/{id}/continue", tag = "sessions", operation_id = "continueSession",
    summary = "Continue a session with a new turn",
    params(("id" = String, Path, description = "Session id (UUID)"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = crate::http::run_request::RunRequest,
    responses((status = 200, description = "The turn's answer (or an event stream with `stream: true`)", content((crate::http::schema::SyncAnswer = "application/json"), (crate::http::schema::SseEvent = "text/event-stream"))), (status = 202, body = crate::http::schema::AsyncAnswer), crate::http::schema::CommonErrors, crate::http::schema::RunErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn continue_session(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
    idem: IdempotencyKey,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<HttpResponse, ApiError> {
    let sid = parse_session_id(&id)?;
    let run = turn_request(&state, req)?;
    turns::start(&state, &caller, run, Target::Continue(sid), &idem).await
}

#[utoipa::path(post, path = "/api/sessions/{id}/fork", tag = "sessions", operation_id = "forkSession",
    summary = "Fork a session into a new one",
    params(("id" = String, Path, description = "Session id (UUID)"), ("Idempotency-Key" = Option<String>, Header)),
    request_body = crate::http::run_request::RunRequest,
    responses((status = 200, description = "The first turn of the new session (or an event stream with `stream: true`)", content((crate::http::schema::SyncAnswer = "application/json"), (crate::http::schema::SseEvent = "text/event-stream"))), (status = 202, body = crate::http::schema::AsyncAnswer), crate::http::schema::CommonErrors, crate::http::schema::RunErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn fork(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
    idem: IdempotencyKey,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<HttpResponse, ApiError> {
    let sid = parse_session_id(&id)?;
    let run = turn_request(&state, req)?;
    turns::start(&state, &caller, run, Target::Fork(sid), &idem).await
}

/// A turn's body: the run fields, where `project_path`, `model` and `session_id` are the
/// session's own (documented; a request's values are ignored).
fn turn_request(
    state: &AppState,
    mut req: RunRequest,
) -> Result<super::run_request::ValidatedRun, ApiError> {
    req.project_path = None;
    req.session_id = None;
    req.model = None;
    validate(req, &state.config())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_and_code(body: &impl Rules, config: &Config) -> (String, ErrorCode) {
        let e = check(body, config).expect_err("refused");
        let field = e.details.as_ref().and_then(|d| d["field"].as_str());
        (field.unwrap_or_default().to_string(), e.code)
    }

    #[test]
    fn status_is_one_of_three() {
        let config = Config::from_merged(actors::config::load::defaults_doc()).expect("defaults");
        for status in ["active", "archived", "closed"] {
            assert!(check(
                &StatusChange {
                    status: status.into()
                },
                &config
            )
            .is_ok());
        }
        let e = check(
            &StatusChange {
                status: "open".into(),
            },
            &config,
        )
        .expect_err("refused");
        assert_eq!(
            e.details,
            Some(json!({"field": "status", "rule": STATUS_RULE}))
        );
    }

    #[test]
    fn a_new_session_follows_the_run_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config =
            Config::from_merged(actors::config::load::defaults_doc()).expect("defaults");
        config.allowed_project_roots = vec![dir.path().display().to_string()];
        config.allowed_models = vec!["a".into()];
        let body = |project_path: Option<&str>, model: Option<&str>, metadata: Option<Value>| {
            CreateSession {
                project_path: project_path.map(String::from),
                model: model.map(String::from),
                metadata,
            }
        };
        let outside = body(Some("/"), Some("b"), Some(json!(1)));
        assert_eq!(
            field_and_code(&outside, &config),
            ("project_path".into(), ErrorCode::ForbiddenPath)
        );
        let model = body(None, Some("b"), Some(json!(1)));
        assert_eq!(
            field_and_code(&model, &config),
            ("model".into(), ErrorCode::Forbidden)
        );
        let metadata = body(None, None, Some(json!(1)));
        assert_eq!(
            field_and_code(&metadata, &config),
            ("metadata".into(), ErrorCode::ValidationError)
        );
        let dir = dir.path().to_str();
        assert!(check(&body(dir, Some("a"), Some(json!({}))), &config).is_ok());
    }
}
