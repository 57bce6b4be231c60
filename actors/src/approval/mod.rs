//! Approvals: a run's tool calls that need permission, asked over HTTP.
//!
//! A run with `approvals` starts the CLI with `--permission-prompt-tool=stdio`; each
//! `can_use_tool` control request it prints becomes an [`Approval`], stored with the task. A
//! person (or a bot) decides it over HTTP; the run answers the CLI on its stdin.
//!
//! **The store decides who wins.** A decision (HTTP, on any instance), the expiry and the end of
//! the run all change an approval with one compare-and-set ([`Store::decide_approval`]): only a
//! pending approval can be decided, once. The run then reads the stored approval and answers the
//! CLI from it, so the CLI is told exactly what the record says.
//!
//! * [`desk`] — the run's side: store each request, announce it, wait for the decision or the
//!   expiry, answer the CLI, expire what is left when the run ends.
//! * [`bus`]  — how a decision reaches the run (in-process; across instances through the
//!   cluster's control channel).
//!
//! [`Store::decide_approval`]: crate::store::Store::decide_approval

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::model::{time_format, TaskId};

pub mod bus;
pub mod desk;

pub type ApprovalId = Uuid;

/// The CLI's denial text for an approval that nobody answered in time.
pub const EXPIRED_MESSAGE: &str =
    "Permission request expired: nobody approved this tool use in time.";
/// The CLI's denial text for a denial without a message.
pub const DENIED_MESSAGE: &str = "The user denied this tool use.";

/// One tool call the CLI asked permission for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: ApprovalId,
    pub task_id: TaskId,
    /// The task's owner (the API key's name), for tenancy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The CLI's `request_id`, which its answer must carry.
    pub request_id: String,
    pub tool_name: String,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(with = "time_format")]
    pub requested_at: DateTime<Utc>,
    /// The status and, with it, the decision's fields: a pending approval has none.
    #[serde(flatten)]
    pub state: ApprovalState,
}

/// Where an approval stands. Each decided state carries exactly the fields it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Allowed {
        #[serde(with = "time_format")]
        decided_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decided_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Run the tool with this input instead of the requested one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        updated_input: Option<Value>,
    },
    Denied {
        #[serde(with = "time_format")]
        decided_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decided_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Nobody answered in time, or the run ended first: the CLI was told "denied".
    Expired {
        #[serde(with = "time_format")]
        decided_at: DateTime<Utc>,
        message: String,
    },
}

/// The status alone (filters, counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalStatus {
    Pending,
    Allowed,
    Denied,
    Expired,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 4] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Allowed,
        ApprovalStatus::Denied,
        ApprovalStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Allowed => "allowed",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalStatus> {
        ApprovalStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl ApprovalState {
    pub fn status(&self) -> ApprovalStatus {
        match self {
            ApprovalState::Pending => ApprovalStatus::Pending,
            ApprovalState::Allowed { .. } => ApprovalStatus::Allowed,
            ApprovalState::Denied { .. } => ApprovalStatus::Denied,
            ApprovalState::Expired { .. } => ApprovalStatus::Expired,
        }
    }
}

impl Approval {
    /// A new pending approval for a `can_use_tool` request of `task_id`.
    pub fn new(
        task_id: TaskId,
        owner: Option<String>,
        request: &PermissionRequest,
        at: DateTime<Utc>,
    ) -> Approval {
        Approval {
            id: Uuid::new_v4(),
            task_id,
            owner,
            request_id: request.request_id.clone(),
            tool_name: request.tool_name.clone(),
            input: request.input.clone(),
            description: request.description.clone(),
            requested_at: at.trunc_subsecs(3),
            state: ApprovalState::Pending,
        }
    }

    pub fn status(&self) -> ApprovalStatus {
        self.state.status()
    }

    pub fn is_pending(&self) -> bool {
        self.state == ApprovalState::Pending
    }

    /// The `response` of the CLI's `control_response` for this approval (`None` while pending).
    pub fn cli_answer(&self) -> Option<Value> {
        match &self.state {
            ApprovalState::Pending => None,
            ApprovalState::Allowed { updated_input, .. } => Some(json!({
                "behavior": "allow",
                "updatedInput": updated_input.as_ref().unwrap_or(&self.input),
            })),
            ApprovalState::Denied { message, .. } => Some(json!({
                "behavior": "deny",
                "message": message.as_deref().unwrap_or(DENIED_MESSAGE),
            })),
            ApprovalState::Expired { message, .. } => Some(json!({
                "behavior": "deny",
                "message": message,
            })),
        }
    }

    /// The API's view: every field present, `null` when it does not apply.
    pub fn to_api_json(&self) -> Value {
        let (decided_at, decided_by, message, updated_input) = match &self.state {
            ApprovalState::Pending => (None, None, None, None),
            ApprovalState::Allowed {
                decided_at,
                decided_by,
                message,
                updated_input,
            } => (
                Some(decided_at),
                decided_by.clone(),
                message.clone(),
                updated_input.clone(),
            ),
            ApprovalState::Denied {
                decided_at,
                decided_by,
                message,
            } => (Some(decided_at), decided_by.clone(), message.clone(), None),
            ApprovalState::Expired {
                decided_at,
                message,
            } => (Some(decided_at), None, Some(message.clone()), None),
        };
        json!({
            "id": self.id,
            "task_id": self.task_id,
            "tool_name": self.tool_name,
            "input": self.input,
            "description": self.description,
            "status": self.status().as_str(),
            "requested_at": crate::model::rfc3339(&self.requested_at),
            "decided_at": decided_at.map(crate::model::rfc3339),
            "decided_by": decided_by,
            "message": message,
            "updated_input": updated_input,
        })
    }
}

/// A `can_use_tool` control request as the CLI printed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PermissionRequest {
    pub request_id: String,
    pub tool_name: String,
    pub input: Value,
    pub description: Option<String>,
}

/// What a caller decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow {
        message: Option<String>,
        updated_input: Option<Value>,
    },
    Deny {
        message: Option<String>,
    },
}

impl Decision {
    /// The state this decision by `by` at `at` writes.
    pub fn into_state(self, by: Option<String>, at: DateTime<Utc>) -> ApprovalState {
        // Stored times have millisecond precision: a record reads back equal to what was written.
        let at = at.trunc_subsecs(3);
        match self {
            Decision::Allow {
                message,
                updated_input,
            } => ApprovalState::Allowed {
                decided_at: at,
                decided_by: by,
                message,
                updated_input,
            },
            Decision::Deny { message } => ApprovalState::Denied {
                decided_at: at,
                decided_by: by,
                message,
            },
        }
    }
}

/// The state of an approval that expired at `at`.
pub fn expired(at: DateTime<Utc>) -> ApprovalState {
    ApprovalState::Expired {
        decided_at: at.trunc_subsecs(3),
        message: EXPIRED_MESSAGE.to_string(),
    }
}

/// What [`Store::decide_approval`](crate::store::Store::decide_approval) did.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// It was pending and now has the new state.
    Now(Approval),
    /// It was already decided (or expired): unchanged, as stored.
    Already(Approval),
    /// No such approval of that task.
    Missing,
}

/// Applies `state` to `a` when it is pending (the rule every backend's compare-and-set follows).
pub fn apply_decision(a: &mut Approval, state: ApprovalState) -> bool {
    if !a.is_pending() || state == ApprovalState::Pending {
        return false;
    }
    a.state = state;
    true
}

/// Filters for [`Store::list_approvals`](crate::store::Store::list_approvals).
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    /// `Some(owner)`: only approvals of that key's tasks (`Some(None)`: anonymous). `None`: all.
    pub owner: Option<Option<String>>,
    /// At most this many, oldest request first.
    pub limit: u32,
}

impl ApprovalFilter {
    pub fn matches(&self, a: &Approval) -> bool {
        self.status.is_none_or(|s| a.status() == s)
            && self.owner.as_ref().is_none_or(|o| *o == a.owner)
    }
}

/// At start-up: the pending approvals of tasks that are no longer running (a run interrupted by
/// a restart ends `failed`/`interrupted`, and nobody is left to answer) are expired. Approvals
/// of tasks still live (another instance's runs, on Redis) are left alone. Returns how many.
pub async fn expire_orphans(store: &dyn crate::store::Store) -> crate::store::StoreResult<u64> {
    let pending = store
        .list_approvals(&ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            owner: None,
            limit: 0,
        })
        .await?;
    let mut expired_count = 0;
    for a in pending {
        let live = store
            .get_task(a.task_id)
            .await?
            .is_some_and(|t| !t.status.is_final());
        if !live {
            if let Decided::Now(_) = store
                .decide_approval(a.task_id, a.id, expired(Utc::now()))
                .await?
            {
                expired_count += 1;
            }
        }
    }
    Ok(expired_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PermissionRequest {
        PermissionRequest {
            request_id: "r1".into(),
            tool_name: "Bash".into(),
            input: json!({"command": "mkdir x"}),
            description: Some("Make x".into()),
        }
    }

    #[test]
    fn state_round_trips_with_its_fields_flattened() {
        let mut a = Approval::new(Uuid::new_v4(), Some("k".into()), &request(), Utc::now());
        let text = serde_json::to_value(&a).unwrap_or_default();
        assert_eq!(text["status"], "pending");
        assert!(text.get("decided_at").is_none());
        a.state = Decision::Deny {
            message: Some("no".into()),
        }
        .into_state(Some("alice".into()), Utc::now());
        let text = serde_json::to_string(&a).unwrap_or_default();
        let back: Approval = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, a);
        assert_eq!(back.status(), ApprovalStatus::Denied);
    }

    #[test]
    fn only_a_pending_approval_is_decided_once() {
        let mut a = Approval::new(Uuid::new_v4(), None, &request(), Utc::now());
        assert!(!apply_decision(&mut a, ApprovalState::Pending));
        assert!(apply_decision(&mut a, expired(Utc::now())));
        let allow = Decision::Allow {
            message: None,
            updated_input: None,
        };
        assert!(!apply_decision(&mut a, allow.into_state(None, Utc::now())));
        assert_eq!(a.status(), ApprovalStatus::Expired);
    }

    #[test]
    fn cli_answers_follow_the_state() {
        let mut a = Approval::new(Uuid::new_v4(), None, &request(), Utc::now());
        assert_eq!(a.cli_answer(), None);
        a.state = Decision::Allow {
            message: None,
            updated_input: None,
        }
        .into_state(None, Utc::now());
        assert_eq!(
            a.cli_answer(),
            Some(json!({"behavior": "allow", "updatedInput": {"command": "mkdir x"}}))
        );
        a.state = Decision::Deny { message: None }.into_state(None, Utc::now());
        assert_eq!(
            a.cli_answer(),
            Some(json!({"behavior": "deny", "message": DENIED_MESSAGE}))
        );
        a.state = expired(Utc::now());
        assert_eq!(
            a.cli_answer().map(|v| v["behavior"].clone()),
            Some(json!("deny"))
        );
        let api = a.to_api_json();
        assert_eq!(api["status"], "expired");
        assert_eq!(api["decided_by"], Value::Null);
    }

    #[tokio::test]
    async fn orphans_of_ended_runs_expire_and_live_runs_keep_theirs() {
        use crate::model::{Priority, RunSpec, Task, TaskMode, TaskStatus};
        use crate::store::memory::MemoryStore;
        use crate::store::Store;
        let store = MemoryStore::new();
        let spec = RunSpec::new("p", "/tmp", 1000);
        let interrupted = store
            .insert_task(Task::new(
                spec.clone(),
                Priority::ASYNC_DEFAULT,
                TaskMode::Async,
            ))
            .await
            .expect("insert");
        store
            .start_task(interrupted.id, Utc::now())
            .await
            .expect("start");
        let finished = store
            .insert_task(Task::new(spec, Priority::ASYNC_DEFAULT, TaskMode::Async))
            .await
            .expect("insert");
        // A restart interrupts the run that was going.
        store
            .interrupt_processing(Utc::now())
            .await
            .expect("interrupt");
        store
            .start_task(finished.id, Utc::now())
            .await
            .expect("start");
        let mut gone = finished.clone();
        gone.status = TaskStatus::Failed;
        store.finish_task(&gone).await.expect("finish");
        let (a_interrupted, a_finished) = (
            Approval::new(interrupted.id, None, &request(), Utc::now()),
            Approval::new(finished.id, None, &request(), Utc::now()),
        );
        let vanished = Approval::new(Uuid::new_v4(), None, &request(), Utc::now());
        for a in [&a_interrupted, &a_finished, &vanished] {
            store.insert_approval(a).await.expect("insert");
        }
        // A run still going (on another instance, say) keeps its approval.
        let running = store
            .insert_task(Task::new(
                RunSpec::new("q", "/tmp", 1000),
                Priority::ASYNC_DEFAULT,
                TaskMode::Async,
            ))
            .await
            .expect("insert");
        store
            .start_task(running.id, Utc::now())
            .await
            .expect("start");
        let a_running = Approval::new(running.id, None, &request(), Utc::now());
        store.insert_approval(&a_running).await.expect("insert");
        assert_eq!(expire_orphans(&store).await.expect("expire"), 3);
        let status = |v: Vec<Approval>| v.first().map(Approval::status);
        assert_eq!(
            status(store.task_approvals(running.id).await.expect("read")),
            Some(ApprovalStatus::Pending)
        );
        for t in [interrupted.id, finished.id] {
            assert_eq!(
                status(store.task_approvals(t).await.expect("read")),
                Some(ApprovalStatus::Expired)
            );
        }
    }
}
