//! Storage behind one async trait. Backends: [`memory`] (nothing survives a restart),
//! [`sqlite`] (embedded, durable, the default) and [`redis`] (a Redis server, shareable by
//! several deployments under their own namespaces). Every backend passes [`conformance`].
//!
//! The store is the authority on a task's final status: [`Store::finish_task`] writes a final
//! record only over a live one, so whichever path ends a task first (completion, cancel,
//! timeout, shutdown) wins and later writers are told they lost.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::approval::{Approval, ApprovalFilter, ApprovalId, ApprovalState, Decided};
use crate::model::{Priority, Session, SessionId, SessionStatus, Task, TaskId, TaskStatus};
use crate::webhook::{WebhookAttempt, WebhookJob};

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;
pub mod redis;
pub(crate) mod rules;
pub mod sqlite;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    /// The backend cannot be reached or failed to write; the caller answers 503.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read back (a bug or a corrupted file).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A change to a session record, applied by [`Store::modify_session`].
pub type SessionChange = Box<dyn FnOnce(&mut Session) + Send>;

/// Filters for [`Store::list_tasks`].
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub session_id: Option<SessionId>,
    /// `Some(owner)`: only tasks of that key (`Some(None)`: anonymous ones). `None`: all.
    pub owner: Option<Option<String>>,
    pub limit: u32,
    pub offset: u32,
}

/// Filters for [`Store::list_sessions`].
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub status: Option<SessionStatus>,
    pub project_path: Option<String>,
    /// Case-insensitive substring of id, project path or metadata (JSON text).
    pub query: Option<String>,
    pub owner: Option<Option<String>>,
    pub limit: u32,
    pub offset: u32,
}

/// Counts of tasks per status and the cost of all stored tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskCounts {
    pub by_status: HashMap<TaskStatus, u64>,
    pub total_cost_usd: f64,
}

impl TaskCounts {
    pub fn get(&self, s: TaskStatus) -> u64 {
        self.by_status.get(&s).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.by_status.values().sum()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `memory`, `sqlite` or `redis`.
    fn kind(&self) -> &'static str;
    /// Cheap check that the backend answers (for `/health`).
    async fn ping(&self) -> StoreResult<()>;

    // ---- tasks
    /// Store a new task durably (on disk for SQLite when this returns). Assigns `seq`, which
    /// increases with every insert, and returns the stored record.
    async fn insert_task(&self, task: Task) -> StoreResult<Task>;
    /// [`Store::insert_task`] for a task whose caller gets no answer before its final record
    /// (a sync run): the final record's durable write makes the insert durable with it, so the
    /// backend may skip waiting for the disk here. Same result otherwise.
    async fn insert_task_lazily(&self, task: Task) -> StoreResult<Task> {
        self.insert_task(task).await
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>>;
    /// `pending` → `processing`, sets `started_at`, increments `attempts`. Returns the updated
    /// task, or `None` when it was not pending (cancelled meanwhile): then it must not run.
    /// Need not be durable on its own (SQLite: with the next durable write): if a power cut
    /// loses it, the task is found `pending` and runs again; a process crash loses nothing.
    async fn start_task(&self, id: TaskId, at: DateTime<Utc>) -> StoreResult<Option<Task>>;
    /// Write a final record (its status must be final) over a live one. Returns `false`, and
    /// writes nothing, when the stored task is already final or missing.
    async fn finish_task(&self, task: &Task) -> StoreResult<bool>;
    /// [`Store::finish_task`] for a sync run, whose answer carries the result itself: the
    /// backend may answer once the record is written where a crash of this process cannot
    /// lose it (SQLite: in the WAL), and make it durable against a power cut shortly after
    /// (SQLite: within [`sqlite::LAZY_SYNC_WITHIN`]). Same result otherwise.
    async fn finish_task_lazily(&self, task: &Task) -> StoreResult<bool> {
        self.finish_task(task).await
    }
    /// Change the priority of a pending task. `false` when it is not pending.
    async fn set_priority(&self, id: TaskId, priority: Priority) -> StoreResult<bool>;
    /// A page of tasks and the total matching. With `status = pending`: run order (priority
    /// desc, then seq asc); otherwise newest first (seq desc).
    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<(Vec<Task>, u64)>;
    /// Every pending task, in run order (used to rebuild the queue at start-up).
    async fn pending_tasks(&self) -> StoreResult<Vec<Task>>;
    /// Tasks left `processing` by a previous process: end each `failed` with code
    /// `interrupted` (never run again). Returns their ids.
    async fn interrupt_processing(&self, at: DateTime<Utc>) -> StoreResult<Vec<TaskId>>;
    async fn task_counts(&self) -> StoreResult<TaskCounts>;
    /// Delete final tasks completed before `before`, with their approvals. Returns how many tasks.
    async fn delete_tasks_finished_before(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    // ---- approvals: a run's permission requests, stored with its task (see `crate::approval`)
    /// Store a new approval (pending). Durable when this returns, like `insert_task`.
    async fn insert_approval(&self, approval: &Approval) -> StoreResult<()>;
    /// A task's approvals, oldest request first.
    async fn task_approvals(&self, task: TaskId) -> StoreResult<Vec<Approval>>;
    /// Approvals across tasks matching `filter`, oldest request first.
    async fn list_approvals(&self, filter: &ApprovalFilter) -> StoreResult<Vec<Approval>>;
    /// Compare-and-set: give a *pending* approval `state` (a decision or the expiry),
    /// atomically. Whoever decides first wins; later callers get the approval as it is.
    async fn decide_approval(
        &self,
        task: TaskId,
        id: ApprovalId,
        state: ApprovalState,
    ) -> StoreResult<Decided>;

    // ---- sessions
    async fn insert_session(&self, session: &Session) -> StoreResult<()>;
    /// [`Store::insert_session`] for a session whose first task is inserted next, before any
    /// answer names the session: the backend may make it durable only together with that
    /// task's insert (SQLite: one fsync for both instead of two). Same result otherwise.
    async fn insert_session_lazily(&self, session: &Session) -> StoreResult<()> {
        self.insert_session(session).await
    }
    async fn get_session(&self, id: SessionId) -> StoreResult<Option<Session>>;
    /// Replace a stored session. `false` when it does not exist.
    async fn update_session(&self, session: &Session) -> StoreResult<bool>;
    /// [`Store::update_session`] for bookkeeping no answer waits on (a run's accounting after
    /// its final record): the backend may make it durable with its next durable write. Same
    /// result otherwise; a killed daemon still loses nothing, only a power cut could.
    async fn update_session_lazily(&self, session: &Session) -> StoreResult<bool> {
        self.update_session(session).await
    }
    /// Read session `id`, `change` it and write it back (lazily: see
    /// [`Store::update_session_lazily`]); answers the session as written (`None`: there is
    /// none). Only the SessionActor calls it, one call at a time, so the default (a read, then
    /// a write) cannot interleave with another writer of the record on this instance; SQLite
    /// does both in one step of its writer thread, sparing the read's trip to a reader.
    async fn modify_session(
        &self,
        id: SessionId,
        lazily: bool,
        change: SessionChange,
    ) -> StoreResult<Option<Session>> {
        let Some(mut session) = self.get_session(id).await? else {
            return Ok(None);
        };
        change(&mut session);
        let written = if lazily {
            self.update_session_lazily(&session).await?
        } else {
            self.update_session(&session).await?
        };
        Ok(written.then_some(session))
    }
    async fn delete_session(&self, id: SessionId) -> StoreResult<bool>;
    /// Newest first (`created_at` desc) and the total matching.
    async fn list_sessions(&self, filter: &SessionFilter) -> StoreResult<(Vec<Session>, u64)>;
    /// Delete sessions whose `updated_at` is before `before`. Returns how many.
    async fn delete_sessions_idle_since(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    // ---- statistics: one JSON document per UTC day, owned by the statistics actor
    async fn save_stats_day(&self, day: NaiveDate, doc: &serde_json::Value) -> StoreResult<()>;
    /// Days in `from..=to`, ascending.
    async fn load_stats_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<(NaiveDate, serde_json::Value)>>;
    async fn prune_stats_before(&self, day: NaiveDate) -> StoreResult<u64>;

    // ---- idempotency keys
    /// Claim `key` (scoped by the caller, e.g. API key + header value) for `value` until
    /// `expires_at`, atomically. Returns `None` when this call made the claim, or the value of
    /// a live earlier claim. A claim whose `expires_at` is not after `now` counts as absent
    /// and is replaced.
    async fn claim_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<serde_json::Value>>;
    /// Give a claim back: delete `key` if its value is still `value` (compare and delete, so a
    /// claim someone else has made since is left alone). Returns whether it was deleted. A
    /// request that made a claim and then failed before storing its task calls this, so that
    /// a retry with the same key runs instead of waiting for a task that never comes.
    async fn release_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<bool>;

    // ---- webhooks: the outbox of deliveries not yet finished, and the attempts made
    /// Insert or replace (by `webhook_id`) a delivery still to be made. Durable when this
    /// returns, like `insert_task`.
    async fn save_webhook_job(&self, job: &WebhookJob) -> StoreResult<()>;
    /// Remove a delivery from the outbox. `false` when it was not there.
    async fn delete_webhook_job(&self, webhook_id: &str) -> StoreResult<bool>;
    /// Every delivery in the outbox, oldest first (`created_at`, then `webhook_id`).
    async fn pending_webhook_jobs(&self) -> StoreResult<Vec<WebhookJob>>;
    /// Claim the delivery `webhook_id` for `owner` (an instance) until `ttl` from now, or renew
    /// the claim `owner` holds, atomically. Returns the delivery as stored now; `None` when it
    /// is no longer in the outbox or another owner holds a live claim. Instances that share a
    /// store make a delivery only under its claim, so one of them makes it, and a claim not
    /// renewed (its instance died) lets another take the delivery over. Backends one process
    /// owns alone (memory, SQLite) have no other owner: every stored delivery is granted.
    async fn claim_webhook_job(
        &self,
        webhook_id: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<Option<WebhookJob>>;
    /// End `owner`'s claim on `webhook_id` (nothing when another owner holds it), so another
    /// instance can take the delivery at once.
    async fn release_webhook_job(&self, webhook_id: &str, owner: &str) -> StoreResult<()>;
    /// Append one attempt to a task's delivery history.
    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> StoreResult<()>;
    /// A task's attempts, in the order they were recorded.
    async fn webhook_attempts(&self, task_id: TaskId) -> StoreResult<Vec<WebhookAttempt>>;
    /// Delete attempts made before `before` (retention). Returns how many.
    async fn prune_webhook_attempts_before(&self, before: DateTime<Utc>) -> StoreResult<u64>;
}
