//! The run's side of approvals: it runs beside the CLI of a run with `approvals` and
//!
//! * stores each `can_use_tool` request as a pending [`Approval`], announces it (SSE `approval`
//!   event, webhook `task.approval_requested`) and starts its expiry clock
//!   (`permissions.approvalTimeoutMs`, read when the request arrives) — up to
//!   `permissions.maxApprovalsPerRun` of them; past it, a request is denied at once;
//! * when woken by a decision (or every [`RECHECK_EVERY`] while something waits, in case a
//!   wake was lost), reads the stored approvals and answers the CLI for each one decided;
//! * at the expiry, expires the approval in the store (compare-and-set: a decision that came
//!   first wins) and answers the CLI from what the store holds;
//! * when the run is over (the request channel closes: the CLI and its group are gone, whether
//!   it ended, was cancelled, timed out or the server shuts down), expires what still waits.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::bus::ApprovalHub;
use super::{expired, Approval, Decided, PermissionRequest, DENIED_MESSAGE};
use crate::claude::ControlAnswer;
use crate::config::Config;
use crate::events::EventHub;
use crate::model::Task;
use crate::store::Store;
use crate::webhook::actor::approval_job;

/// While approvals wait, the stored ones are re-read this often even without a wake: a
/// decision whose wake was lost (pub/sub is best effort) still reaches the run.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);
/// Storing a new approval is tried this often (with a short backoff) before the request is
/// denied: a request nobody can see could only expire.
const STORE_TRIES: u32 = 5;
const STORE_RETRY: Duration = Duration::from_millis(100);
/// The CLI's answer when an approval could not be stored.
const UNSTORED_MESSAGE: &str =
    "Permission request could not be recorded (storage unavailable); denied.";
/// The CLI's answer past `permissions.maxApprovalsPerRun`.
const TOO_MANY_MESSAGE: &str =
    "This run has asked for as many permissions as the server allows; denied without asking.";

/// One approval the CLI waits on.
struct Waiting {
    approval: Approval,
    expires_at: Instant,
}

/// See the module docs.
pub struct Desk<'a> {
    pub task: &'a Task,
    pub store: &'a Arc<dyn Store>,
    pub hub: &'a Arc<ApprovalHub>,
    pub events: &'a EventHub,
    pub config: &'a Config,
}

impl Desk<'_> {
    /// Serve the run's permission requests until `requests` closes (the run is over).
    pub async fn serve(
        self,
        mut requests: mpsc::UnboundedReceiver<PermissionRequest>,
        answers: mpsc::UnboundedSender<ControlAnswer>,
    ) {
        let mut registration = self.hub.register(self.task.id);
        let mut waiting: Vec<Waiting> = Vec::new();
        // Requests turned into approvals so far.
        let mut made: u32 = 0;
        loop {
            let expiry = waiting.iter().map(|w| w.expires_at).min();
            let recheck = (!waiting.is_empty()).then(|| Instant::now() + RECHECK_EVERY);
            tokio::select! {
                request = requests.recv() => match request {
                    Some(r) if made >= self.config.permissions.max_approvals_per_run => {
                        log::warn!(task_id:% = self.task.id, limit = made; "permission request past permissions.maxApprovalsPerRun: denied");
                        deny(&answers, r.request_id, TOO_MANY_MESSAGE);
                    }
                    Some(r) => {
                        made += 1;
                        self.on_request(r, &mut waiting, &answers).await;
                    }
                    None => break,
                },
                Some(()) = registration.wakes.recv() => {
                    self.recheck(&mut waiting, &answers).await;
                }
                _ = sleep_opt(recheck) => self.recheck(&mut waiting, &answers).await,
                _ = sleep_opt(expiry) => self.expire_due(&mut waiting, &answers).await,
            }
        }
        // The CLI is gone: nobody to answer, but the record must not stay pending.
        for w in waiting {
            self.expire(&w.approval).await;
        }
    }

    async fn on_request(
        &self,
        request: PermissionRequest,
        waiting: &mut Vec<Waiting>,
        answers: &mpsc::UnboundedSender<ControlAnswer>,
    ) {
        let task = self.task;
        let approval = Approval::new(task.id, task.owner.clone(), &request, Utc::now());
        log::info!(task_id:% = task.id, approval_id:% = approval.id, tool:% = approval.tool_name; "approval requested");
        log::debug!(task_id:% = task.id, approval_id:% = approval.id, input:% = approval.input; "approval input");
        if !self.insert(&approval).await {
            deny(answers, request.request_id, UNSTORED_MESSAGE);
            return;
        }
        self.events
            .publish(task.id, "approval", approval.to_api_json());
        if let Some(job) = approval_job(task, &approval, &self.config.webhook, Utc::now()) {
            if !self.hub.send_webhook(job) {
                log::debug!(task_id:% = task.id; "no webhook actor: task.approval_requested not sent");
            }
        }
        let timeout = Duration::from_millis(self.config.permissions.approval_timeout_ms);
        waiting.push(Waiting {
            approval,
            expires_at: Instant::now() + timeout,
        });
    }

    async fn insert(&self, approval: &Approval) -> bool {
        for attempt in 1..=STORE_TRIES {
            match self.store.insert_approval(approval).await {
                Ok(()) => return true,
                Err(e) => {
                    log::error!(task_id:% = approval.task_id, attempt = attempt, error:% = e; "cannot store an approval");
                    if attempt < STORE_TRIES {
                        tokio::time::sleep(STORE_RETRY * attempt).await;
                    }
                }
            }
        }
        false
    }

    /// Answer every waiting approval that the store says is decided.
    async fn recheck(
        &self,
        waiting: &mut Vec<Waiting>,
        answers: &mpsc::UnboundedSender<ControlAnswer>,
    ) {
        if waiting.is_empty() {
            return;
        }
        let stored = match self.store.task_approvals(self.task.id).await {
            Ok(s) => s,
            Err(e) => {
                log::warn!(task_id:% = self.task.id, error:% = e; "cannot read approvals; will retry");
                return;
            }
        };
        let mut still = Vec::with_capacity(waiting.len());
        for w in waiting.drain(..) {
            match stored.iter().find(|a| a.id == w.approval.id) {
                Some(a) if !a.is_pending() => self.answer(a, answers),
                _ => still.push(w),
            }
        }
        *waiting = still;
    }

    /// Expire the approvals whose time is up, and answer the CLI from the store's verdict.
    async fn expire_due(
        &self,
        waiting: &mut Vec<Waiting>,
        answers: &mpsc::UnboundedSender<ControlAnswer>,
    ) {
        let now = Instant::now();
        let mut still = Vec::with_capacity(waiting.len());
        for w in waiting.drain(..) {
            if w.expires_at > now {
                still.push(w);
                continue;
            }
            match self.expire(&w.approval).await {
                Some(a) => self.answer(&a, answers),
                // Storage failed: the CLI must not wait forever; try again shortly.
                None => still.push(Waiting {
                    approval: w.approval,
                    expires_at: now + STORE_RETRY * 10,
                }),
            }
        }
        *waiting = still;
    }

    /// Expire `approval` if still pending. Returns it as stored afterwards (`None`: storage
    /// failed, or it vanished).
    async fn expire(&self, approval: &Approval) -> Option<Approval> {
        match self
            .store
            .decide_approval(approval.task_id, approval.id, expired(Utc::now()))
            .await
        {
            Ok(Decided::Now(a)) => {
                log::info!(task_id:% = a.task_id, approval_id:% = a.id; "approval expired");
                self.events.publish(a.task_id, "approval", a.to_api_json());
                Some(a)
            }
            Ok(Decided::Already(a)) => Some(a),
            Ok(Decided::Missing) => None,
            Err(e) => {
                log::error!(task_id:% = approval.task_id, error:% = e; "cannot expire an approval");
                None
            }
        }
    }

    /// Tell the CLI what the store decided for `approval`.
    fn answer(&self, a: &Approval, answers: &mpsc::UnboundedSender<ControlAnswer>) {
        let response = a
            .cli_answer()
            .unwrap_or_else(|| serde_json::json!({"behavior": "deny", "message": DENIED_MESSAGE}));
        if !matches!(a.state, super::ApprovalState::Expired { .. }) {
            // Decisions are announced by the run, whose instance holds the task's event log.
            self.events.publish(a.task_id, "approval", a.to_api_json());
        }
        log::info!(task_id:% = a.task_id, approval_id:% = a.id, status = a.status().as_str(); "approval answered");
        let _ = answers.send(ControlAnswer {
            request_id: a.request_id.clone(),
            response,
        });
    }
}

/// Answer a request the run will not wait on: denied, with why.
fn deny(answers: &mpsc::UnboundedSender<ControlAnswer>, request_id: String, message: &str) {
    let _ = answers.send(ControlAnswer {
        request_id,
        response: serde_json::json!({"behavior": "deny", "message": message}),
    });
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
