//! The small rules every backend applies the same way, kept in one place so that the memory,
//! SQLite (and later Redis) stores cannot drift apart.

use chrono::{DateTime, SubsecRound, Utc};

use crate::error::ErrorCode;
use crate::model::{Session, SessionStatus, Task, TaskError, TaskStatus};

/// The text a session query (`SessionFilter::query`) is matched against: id, project path and
/// metadata (JSON text), lower-cased, separated by a control character so that a needle never
/// matches across two fields.
pub(super) fn session_search_text(s: &Session) -> String {
    let meta = serde_json::to_string(&s.metadata).unwrap_or_default();
    format!(
        "{}\u{1f}{}\u{1f}{}",
        s.id,
        s.project_path.to_string_lossy(),
        meta
    )
    .to_lowercase()
}

/// The needle of a session query, in the form [`session_search_text`] is matched against.
pub(super) fn query_needle(q: &str) -> String {
    q.to_lowercase()
}

pub(super) fn session_status_str(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Active => "active",
        SessionStatus::Archived => "archived",
        SessionStatus::Closed => "closed",
    }
}

/// The time a final task counts as finished for retention: `completed_at`, or `created_at` for
/// a final record that lacks one (so it cannot live forever). `None` for live tasks.
pub(super) fn finished_at(t: &Task) -> Option<DateTime<Utc>> {
    if t.status.is_final() {
        Some(t.completed_at.unwrap_or(t.created_at))
    } else {
        None
    }
}

/// The record `finish_task` writes: the caller's final record, keeping the fields only the store
/// owns (`seq`, `attempts`, and `started_at` when the caller's copy predates the start).
pub(super) fn merge_final(stored: &Task, new: &Task) -> Task {
    let mut t = new.clone();
    t.seq = stored.seq;
    t.attempts = stored.attempts.max(new.attempts);
    if t.started_at.is_none() {
        t.started_at = stored.started_at;
    }
    normalize_task(&mut t);
    t
}

/// Turn a task left `processing` by a previous process into `failed` / `interrupted`.
pub(super) fn interrupt(t: &mut Task, at: DateTime<Utc>) {
    interrupt_with(t, at, "The server stopped while the task was running.");
}

/// Turn a `processing` task whose run was lost into `failed` / `interrupted`, saying why.
pub(crate) fn interrupt_with(t: &mut Task, at: DateTime<Utc>, why: &str) {
    t.status = TaskStatus::Failed;
    t.completed_at = Some(trunc(at));
    if t.duration_ms.is_none() {
        t.duration_ms = t
            .started_at
            .map(|s| u64::try_from((at - s).num_milliseconds()).unwrap_or(0));
    }
    t.error = Some(TaskError::new(ErrorCode::Interrupted, why));
}

/// Milliseconds since the epoch: the precision every backend compares times at.
pub(super) fn ms(t: &DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Times are kept to the millisecond (the API's precision) by every backend, so what a write
/// returns equals what a later read returns, whatever the backend.
pub(super) fn normalize_task(t: &mut Task) {
    t.created_at = trunc(t.created_at);
    t.started_at = t.started_at.map(trunc);
    t.completed_at = t.completed_at.map(trunc);
}

pub(super) fn normalize_session(s: &mut Session) {
    s.created_at = trunc(s.created_at);
    s.updated_at = trunc(s.updated_at);
}

pub(super) fn trunc(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}

pub(super) fn normalize_webhook_job(j: &mut crate::webhook::WebhookJob) {
    j.created_at = trunc(j.created_at);
    j.next_attempt_at = trunc(j.next_attempt_at);
}

pub(super) fn normalize_webhook_attempt(a: &mut crate::webhook::WebhookAttempt) {
    a.at = trunc(a.at);
}
