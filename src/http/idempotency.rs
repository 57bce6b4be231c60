//! `Idempotency-Key` on the POSTs that create tasks: a retry with the same key (from the same
//! API key, within 24 hours) gets the original task's answer instead of running the prompt
//! again. The key is claimed in storage, atomically, before anything else is stored, naming the
//! task ids the request will create; a retry finds the claim and answers from those tasks.
//!
//! A claim is only worth keeping once its tasks are stored. A request that fails after its
//! claim (queue full, storage down, a refusal, its client gone) gives the key back through its
//! [`ClaimGuard`], so the retry runs. A claim left behind by a process that died between the
//! claim and the store names tasks that will never exist: a retry that finds such a claim,
//! older than [`ABANDONED_AFTER`] and with none of its tasks stored, takes it over.

use std::time::Duration;

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
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

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = Ready<Result<IdempotencyKey, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(IdempotencyKey::of(req))
    }
}

impl IdempotencyKey {
    fn of(req: &HttpRequest) -> Result<IdempotencyKey, ApiError> {
        let route = format!("{} {}", req.method(), req.path());
        let Some(v) = req.headers().get("idempotency-key") else {
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
    /// The compatible APIs (`POST /v1/chat/completions`, `/v1/messages`, `/v1/responses`): 200
    /// with the answer in the route's shape (a streamed request's retry gets the answer, not
    /// the stream, as a native stream's retry gets the answer).
    Chat,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Async => "async",
            Kind::TaskCreated => "task_created",
            Kind::BatchAsync => "batch_async",
            Kind::BatchSync => "batch_sync",
            Kind::Chat => "chat",
        }
    }

    fn parse(s: Option<&str>) -> Kind {
        match s {
            Some("async") => Kind::Async,
            Some("task_created") => Kind::TaskCreated,
            Some("batch_async") => Kind::BatchAsync,
            Some("batch_sync") => Kind::BatchSync,
            Some("chat") => Kind::Chat,
            _ => Kind::Sync,
        }
    }
}

/// What [`claim`] decided.
pub enum Claim {
    /// A retry of an earlier request: its answer, from the original tasks.
    Replay(Replay),
    /// Go ahead; the guard gives the key back unless the request's tasks get stored.
    Proceed(ClaimGuard),
}

/// The answer of a retry, from the original request's tasks (final where the answer needs
/// them). The response itself is built by the handler ([`Replay::into_response`]): claims are
/// made on a task of their own (`turns::admit`), and a response is not `Send`.
pub struct Replay {
    kind: Kind,
    tasks: Vec<Task>,
    finished_answer: fn(&[Task]) -> HttpResponse,
}

impl Replay {
    pub fn into_response(self) -> HttpResponse {
        let first = self.tasks.first();
        match (self.kind, first) {
            (Kind::Async, Some(t)) => {
                HttpResponse::build(StatusCode::ACCEPTED).json(async_answer(t))
            }
            (Kind::TaskCreated, Some(t)) => HttpResponse::build(StatusCode::CREATED)
                .json(json!({"success": true, "task": task_json(t)})),
            (Kind::Sync, Some(t)) => sync_answer(t),
            (Kind::BatchAsync, _) => super::batch::batch_async_answer(self.tasks.iter()),
            (Kind::BatchSync | Kind::Chat, _) => (self.finished_answer)(&self.tasks),
            // `claim` answers these with `in_progress` instead.
            (Kind::Async | Kind::TaskCreated | Kind::Sync, None) => in_progress().into_response(),
        }
    }
}

/// The claim this request made (nothing when it sent no key). Call [`ClaimGuard::keep`] once
/// the request's tasks are stored, or [`ClaimGuard::release`] on failure; dropped while held
/// (an early `?`, the client gone), it releases the key on a task of its own.
#[must_use = "a claim is released unless kept"]
pub struct ClaimGuard(Option<Held>);

struct Held {
    store: std::sync::Arc<dyn actors::store::Store>,
    key: String,
    value: Value,
}

impl Held {
    async fn release(self) {
        if let Err(e) = self
            .store
            .release_idempotency_key(&self.key, &self.value)
            .await
        {
            // The claim then stays until a retry finds it abandoned and takes it over.
            log::warn!(error:% = e; "could not release an idempotency key");
        }
    }
}

impl ClaimGuard {
    /// The request's tasks are stored: the key answers retries for [`KEY_TTL_HOURS`].
    pub fn keep(mut self) {
        self.0 = None;
    }

    /// The request failed before its tasks were stored: give the key back now, so a retry
    /// sent right after this answer runs.
    pub async fn release(mut self) {
        if let Some(held) = self.0.take() {
            held.release().await;
        }
    }

    /// Keep the key when `result` is a success, release it otherwise; pass `result` on.
    pub async fn settle<T>(self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        match result {
            Ok(v) => {
                self.keep();
                Ok(v)
            }
            Err(e) => {
                self.release().await;
                Err(e)
            }
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            // Drop cannot await; with no runtime left (shutdown) the claim is found abandoned.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(held.release());
            }
        }
    }
}

/// A claim none of whose tasks is stored this long after it was made was left by a request
/// that died between the claim and the store (a live request stores its tasks within
/// milliseconds): a retry takes it over.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(5);

/// Claim the key for these task ids: [`Claim::Proceed`] to go ahead, or [`Claim::Replay`] with
/// the answer built from the original tasks (`finished_answer` builds it for the kinds that
/// answer with finished tasks in a shape of their own: [`Kind::BatchSync`], [`Kind::Chat`]).
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    state: &AppState,
    caller: &Caller,
    key: &IdempotencyKey,
    kind: Kind,
    task_ids: &[Uuid],
    what: &str,
    finished_answer: fn(&[Task]) -> HttpResponse,
) -> Result<Claim, ApiError> {
    let Some(header) = &key.0 else {
        return Ok(Claim::Proceed(ClaimGuard(None)));
    };
    // Scoped by API key, so tenants cannot collide (or probe each other's keys).
    let scoped = format!("{}\u{1f}{header}", caller.key_name.as_deref().unwrap_or(""));
    let fingerprint = fingerprint(&key.1, kind, what);
    let deadline = tokio::time::Instant::now() + FIRST_REQUEST_WAIT;
    let prior = loop {
        let now = Utc::now();
        let value = json!({
            "kind": kind.as_str(),
            "task_ids": task_ids,
            "fingerprint": fingerprint,
            "claimed_at": now.timestamp_millis(),
        });
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
            failpoint_after_claim().await;
            return Ok(Claim::Proceed(ClaimGuard(Some(Held {
                store: state.store.clone(),
                key: scoped,
                value,
            }))));
        };
        if prior["fingerprint"].as_str() != Some(fingerprint.as_str()) {
            // Replaying another request's answer would mislead the client.
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                "This Idempotency-Key was already used for a different request; use a new key.",
            ));
        }
        if any_stored(state, &prior).await? {
            break prior;
        }
        // None of its tasks is stored: the first request is between its claim and its store,
        // or failed (its release may still be on its way), or died.
        let age_ms = now.timestamp_millis() - prior["claimed_at"].as_i64().unwrap_or(i64::MAX);
        let abandoned =
            age_ms >= ABANDONED_AFTER.as_millis() as i64 || tokio::time::Instant::now() >= deadline;
        if abandoned {
            log::info!("taking over an idempotency key whose request stored nothing");
            state.store.release_idempotency_key(&scoped, &prior).await?;
            continue; // and claim it
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids = task_ids_of(&prior);
    let kind = Kind::parse(prior["kind"].as_str());
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        tasks.push(stored_task(state, id).await?);
    }
    let answers_with_one = matches!(kind, Kind::Async | Kind::TaskCreated | Kind::Sync);
    if answers_with_one && tasks.is_empty() {
        return Err(in_progress());
    }
    // These answer with the run's result: wait for it, as the first request did.
    if matches!(kind, Kind::Sync | Kind::BatchSync | Kind::Chat) {
        let mut done = Vec::with_capacity(tasks.len());
        for t in &tasks {
            done.push(wait_final(state, t).await?);
        }
        tasks = done;
    }
    Ok(Claim::Replay(Replay {
        kind,
        tasks,
        finished_answer,
    }))
}

/// A test hook, in debug builds only: with `CCS_FAILPOINT=after_idempotency_claim` in the
/// daemon's environment a request that made a claim stops right after it, for good, so a test
/// can kill -9 the daemon between the claim and the store (tests/api/idempotency.rs).
async fn failpoint_after_claim() {
    #[cfg(debug_assertions)]
    if std::env::var("CCS_FAILPOINT").as_deref() == Ok("after_idempotency_claim") {
        log::warn!("failpoint after_idempotency_claim: this request stops here");
        std::future::pending::<()>().await;
    }
}

fn task_ids_of(claim: &Value) -> Vec<Uuid> {
    claim["task_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any task the claim names is stored (a batch stores its tasks one by one).
async fn any_stored(state: &AppState, claim: &Value) -> Result<bool, ApiError> {
    for id in task_ids_of(claim) {
        if state.store.get_task(id).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `finished_answer` of the kinds that never answer with finished tasks of their own
/// ([`claim`] does not call it for them).
pub fn no_finished_answer(_: &[Task]) -> HttpResponse {
    HttpResponse::InternalServerError().finish()
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
