//! What the store keeps for webhooks: the outbox ([`WebhookJob`], one per delivery not yet
//! finished) and the history ([`WebhookAttempt`], one per HTTP attempt, kept after delivery).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{time_format, TaskId};

/// A delivery still to be made. Saved before the first attempt and after every failed one, and
/// deleted once it succeeded or gave up, so what is stored is exactly what a restart resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookJob {
    /// `webhook-id`: the same for every attempt, so receivers can deduplicate.
    pub webhook_id: String,
    pub task_id: TaskId,
    /// `task.completed`, `task.failed`, `task.timeout` or `task.cancelled`.
    pub event: String,
    /// Chosen when the task ended (its `webhook_url`, else `webhook.defaultUrl`).
    pub url: String,
    /// The exact body: every attempt sends, and signs, the same bytes.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    #[serde(with = "time_format")]
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, so a restart keeps the backoff instead of hammering.
    #[serde(with = "time_format")]
    pub next_attempt_at: DateTime<Utc>,
}

/// One HTTP attempt of a delivery, as `GET /api/tasks/:id/webhooks` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    pub webhook_id: String,
    pub task_id: TaskId,
    pub event: String,
    pub url: String,
    /// 1 for the first attempt, then 2, 3, ...
    pub attempt: u32,
    /// The receiver's status, when it answered at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why the attempt failed (non-2xx, timeout, refused address, ...); `None` on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// When the attempt started.
    #[serde(with = "time_format")]
    pub at: DateTime<Utc>,
}

impl WebhookAttempt {
    /// A 2xx answer: the delivery is done.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}
