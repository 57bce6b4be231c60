//! Webhooks: tell a task's `webhook_url` (or `webhook.defaultUrl`) that the task ended.
//!
//! * [`record`]   — the outbox record of one delivery and the record of one attempt (stored).
//! * [`payload`]  — the event body (pure).
//! * [`sign`]     — Standard Webhooks signing and verification (pure).
//! * [`schedule`] — when to retry (pure).
//! * [`policy`]   — which URLs and addresses may be called (pure): the SSRF guard.
//! * [`deliver`]  — one HTTP attempt over awc, connected only to addresses the policy allows.
//! * [`actor`]    — the WebhookActor (actix): listens to final records, keeps the outbox,
//!   retries.
//!
//! Delivery is at-least-once: a delivery is stored before its first attempt and deleted only
//! after it succeeded or ran out of retries, so a restart resumes it; a receiver may see the
//! same `webhook-id` twice (e.g. the process stopped mid-request) and should deduplicate on it.
//! With several instances on one Redis, each delivery is made by one instance at a time (a
//! claim with expiry; see [`actor`]), and a dead instance's deliveries are taken over.

pub mod actor;
pub mod deliver;
pub mod payload;
pub mod policy;
pub mod record;
pub mod schedule;
pub mod sign;
#[cfg(test)]
pub(crate) mod testing;

pub use actor::{
    ConfigSource, DeliveryObserver, Shutdown, WebhookActor, WebhookHandle, WebhookOptions,
};
pub use record::{WebhookAttempt, WebhookJob};
