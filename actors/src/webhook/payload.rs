//! The body of a webhook: `{"event","timestamp","data":{...}}` (`api.md` § Webhooks).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::approval::Approval;
use crate::model::{rfc3339, Task, TaskStatus};

/// The event a final status announces; `None` for a live status (nothing to announce).
pub fn event_name(status: TaskStatus) -> Option<&'static str> {
    match status {
        TaskStatus::Completed => Some("task.completed"),
        TaskStatus::Failed => Some("task.failed"),
        TaskStatus::Timeout => Some("task.timeout"),
        TaskStatus::Cancelled => Some("task.cancelled"),
        TaskStatus::Pending | TaskStatus::Processing => None,
    }
}

/// The event and its body for a final task record; `None` for a live one. `timestamp` is when
/// the task ended (or `now` if the record lacks it), not when the webhook is sent, so every
/// attempt carries the same body.
pub fn build(task: &Task, now: DateTime<Utc>) -> Option<(&'static str, Value)> {
    let event = event_name(task.status)?;
    let report = task.report.as_ref();
    let body = json!({
        "event": event,
        "timestamp": rfc3339(&task.completed_at.unwrap_or(now)),
        "data": {
            "task_id": task.id,
            "status": task.status,
            "result": report.and_then(|r| r.result.clone()),
            "error": task.error.as_ref().map(|e| json!({"code": e.code, "message": e.message, "details": e.details})),
            "duration_ms": task.duration_ms,
            "cost_usd": task.cost_usd,
            "usage": report.map(|r| r.usage),
            // The service-level session when the task is a turn of one, else the CLI's own.
            "session_id": task.session_id.map(|s| s.to_string()).or_else(|| report.and_then(|r| r.session_id.clone())),
            "metadata": task.metadata,
        },
    });
    Some((event, body))
}

/// The event announcing that a run waits for a decision on `approval`.
pub const APPROVAL_REQUESTED: &str = "task.approval_requested";

/// The body of `task.approval_requested`: `data: {task_id, approval}`, stamped with the time
/// the approval was requested (the same on every attempt).
pub fn approval_requested(approval: &Approval) -> Value {
    json!({
        "event": APPROVAL_REQUESTED,
        "timestamp": rfc3339(&approval.requested_at),
        "data": {
            "task_id": approval.task_id,
            "approval": approval.to_api_json(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::model::{RunReport, TaskError, Usage};
    use crate::store::conformance::fixtures::{at, task};

    #[test]
    fn every_final_status_has_an_event_and_live_ones_none() {
        for s in TaskStatus::ALL {
            assert_eq!(event_name(s).is_some(), s.is_final(), "{s:?}");
        }
        assert_eq!(event_name(TaskStatus::Timeout), Some("task.timeout"));
    }

    #[test]
    fn a_completed_task_carries_its_result_usage_and_metadata() {
        let mut t = task(5);
        t.status = TaskStatus::Completed;
        t.completed_at = Some(at(1500));
        t.duration_ms = Some(1500);
        t.cost_usd = Some(0.25);
        t.metadata = Some(json!({"ticket": 7}));
        t.report = Some(RunReport {
            result: Some("done".into()),
            session_id: Some("cli-session".into()),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Usage::default()
            },
            ..RunReport::default()
        });
        let (event, body) = build(&t, at(9999)).expect("final");
        assert_eq!(event, "task.completed");
        assert_eq!(body["event"], "task.completed");
        assert_eq!(body["timestamp"], rfc3339(&at(1500)));
        let d = &body["data"];
        assert_eq!(d["task_id"], json!(t.id));
        assert_eq!(d["status"], "completed");
        assert_eq!(d["result"], "done");
        assert_eq!(d["error"], Value::Null);
        assert_eq!(d["duration_ms"], 1500);
        assert_eq!(d["cost_usd"], 0.25);
        assert_eq!(d["usage"]["output_tokens"], 4);
        assert_eq!(d["session_id"], "cli-session");
        assert_eq!(d["metadata"], json!({"ticket": 7}));
    }

    #[test]
    fn a_failed_task_carries_its_error_and_live_tasks_nothing() {
        let mut t = task(5);
        assert!(build(&t, at(0)).is_none());
        t.status = TaskStatus::Failed;
        t.error = Some(TaskError::new(ErrorCode::CliApiError, "API Error: 500"));
        let (event, body) = build(&t, at(7)).expect("final");
        assert_eq!(event, "task.failed");
        assert_eq!(body["timestamp"], rfc3339(&at(7)));
        assert_eq!(body["data"]["error"]["code"], "cli_api_error");
        assert_eq!(body["data"]["result"], Value::Null);
    }
}
