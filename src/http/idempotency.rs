//! `Idempotency-Key` on the POSTs that create tasks: a retry with the same key (from the same
//! API key, within 24 hours) gets the original task's answer instead of running the prompt
//! again. The key is claimed in storage, atomically, before anything else is stored, naming the
//! task ids the request will create; a retry finds the claim and answers from those tasks.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use actors::error::ErrorCode;
use actors::model::{Task, TaskStatus};

use super::auth::Caller;
use super::claude::{async_answer, sync_answer};
use super::error::ApiError;
use super::tasks::task_json;
use crate::state::AppState;

/// How long a key is remembered.
pub const KEY_TTL_HOURS: i64 = 24;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// How long a retry waits for the first request to store its task.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(5);

/// The header's value, if sent, and the route it came with (part of the request's fingerprint).
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>, pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let route = format!("{} {}", parts.method, parts.uri.path());
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None, route));
        };
        let key = v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
            .ok_or_else(|| {
                ApiError::field(
                    "Idempotency-Key",
                    format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
                )
            })?;
        Ok(IdempotencyKey(Some(key.to_string()), route))
    }
}

/// How the original request was answered, so a retry answers the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /api/claude` (or a turn) without `async`: 200 with the result.
    Sync,
    /// With `async: true`: 202 with the task id.
    Async,
    /// `POST /api/tasks/async`: 201 with the task.
    TaskCreated,
    /// `POST /api/claude/batch` with `async: true`: 202 with the ids.
    BatchAsync,
    /// `POST /api/claude/batch`: 200 with every result.
    BatchSync,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Async => "async",
            Kind::TaskCreated => "task_created",
            Kind::BatchAsync => "batch_async",
            Kind::BatchSync => "batch_sync",
        }
    }
}

/// Claim the key for these task ids. `Ok(None)`: go ahead. `Ok(Some(response))`: a retry —
/// answer with the response built from the original tasks.
pub async fn claim(
    state: &AppState,
    caller: &Caller,
    key: &IdempotencyKey,
    kind: Kind,
    task_ids: &[Uuid],
    what: &str,
    batch_answer: impl FnOnce(&[Task]) -> Response,
) -> Result<Option<Response>, ApiError> {
    let Some(header) = &key.0 else {
        return Ok(None);
    };
    // Scoped by API key, so tenants cannot collide (or probe each other's keys).
    let scoped = format!("{}\u{1f}{header}", caller.key_name.as_deref().unwrap_or(""));
    let now = Utc::now();
    let fingerprint = fingerprint(&key.1, kind, what);
    let value = json!({"kind": kind.as_str(), "task_ids": task_ids, "fingerprint": fingerprint});
    let Some(prior) = state
        .store
        .claim_idempotency_key(
            &scoped,
            &value,
            now,
            now + chrono::Duration::hours(KEY_TTL_HOURS),
        )
        .await?
    else {
        return Ok(None);
    };
    if prior["fingerprint"].as_str() != Some(fingerprint.as_str()) {
        // Replaying another request's answer would mislead the client.
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            "This Idempotency-Key was already used for a different request; use a new key.",
        ));
    }
    let ids: Vec<Uuid> = prior["task_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    let kind = match prior["kind"].as_str() {
        Some("async") => Kind::Async,
        Some("task_created") => Kind::TaskCreated,
        Some("batch_async") => Kind::BatchAsync,
        Some("batch_sync") => Kind::BatchSync,
        _ => Kind::Sync,
    };
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        tasks.push(stored_task(state, id).await?);
    }
    let response = match kind {
        Kind::Async => match tasks.first() {
            Some(t) => (StatusCode::ACCEPTED, Json(async_answer(t))).into_response(),
            None => return Err(in_progress()),
        },
        Kind::TaskCreated => match tasks.first() {
            Some(t) => (
                StatusCode::CREATED,
                Json(json!({"success": true, "task": task_json(t)})),
            )
                .into_response(),
            None => return Err(in_progress()),
        },
        Kind::Sync => match tasks.first() {
            Some(t) => sync_answer(&wait_final(state, t).await?),
            None => return Err(in_progress()),
        },
        Kind::BatchAsync => {
            let items: Vec<Value> = tasks
                .iter()
                .map(|t| json!({"task_id": t.id, "status": t.status, "priority": t.priority}))
                .collect();
            let ids: Vec<Value> = tasks.iter().map(|t| json!(t.id)).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({"success": true, "task_ids": ids, "tasks": items})),
            )
                .into_response()
        }
        Kind::BatchSync => {
            let mut done = Vec::with_capacity(tasks.len());
            for t in &tasks {
                done.push(wait_final(state, t).await?);
            }
            batch_answer(&done)
        }
    };
    Ok(Some(response))
}

/// What identifies a request: its route, how it is answered, and what it runs.
fn fingerprint(route: &str, kind: Kind, what: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{route}\n{}\n{what}", kind.as_str()).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn in_progress() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidState,
        "A request with this Idempotency-Key is still being processed; retry shortly.",
    )
}

/// The task of the first request; it may still be on its way into storage.
async fn stored_task(state: &AppState, id: Uuid) -> Result<Task, ApiError> {
    let deadline = tokio::time::Instant::now() + FIRST_REQUEST_WAIT;
    loop {
        if let Some(t) = state.store.get_task(id).await? {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(in_progress());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_final(state: &AppState, task: &Task) -> Result<Task, ApiError> {
    if task.status.is_final() {
        return Ok(task.clone());
    }
    let t = state.queue.wait_for(task.id).await?;
    if t.status == TaskStatus::Pending || t.status == TaskStatus::Processing {
        return Err(in_progress());
    }
    Ok(t)
}
