//! Sessions: multi-turn conversations pinned to one project directory and one model.
//!
//! * [`accounting`] — what a turn cost and how it changes the session record, for CLIs that
//!   report cost per run and for those that report it cumulatively per session.
//! * [`actor`] — the SessionActor: the single writer of session records on this instance
//!   (create, status, delete, a turn's accounting); the writes over an existing record one at
//!   a time, in order.
//!
//! Turns of one session never overlap: the QueueSupervisor keeps one lane per session (see
//! `queue::lanes`) and runs a session's next turn only after the previous one ended; the
//! worker has a turn's accounting written (by the SessionActor, or on Redis in the run's final
//! script) before it frees the lane.

pub mod accounting;
pub mod actor;

pub use actor::{SessionActor, SessionHandle};

/// Records for the tests of sessions.
#[cfg(test)]
pub(crate) mod fixtures {
    use chrono::{DateTime, Utc};

    use crate::model::{Priority, RunSpec, Session, SessionStatus, Task, TaskMode, TaskStatus};

    /// A new active session in `project_path`, created and updated `at`.
    pub(crate) fn session(
        project_path: impl Into<std::path::PathBuf>,
        at: DateTime<Utc>,
    ) -> Session {
        Session {
            id: uuid::Uuid::new_v4(),
            created_at: at,
            updated_at: at,
            status: SessionStatus::Active,
            model: None,
            project_path: project_path.into(),
            messages_count: 0,
            total_cost_usd: 0.0,
            last_reported_cost_usd: 0.0,
            last_task_id: None,
            owner: None,
            metadata: serde_json::json!({}),
        }
    }

    /// A completed sync turn.
    pub(crate) fn completed_task() -> Task {
        let spec = RunSpec::new("x", "/p", 1000);
        let mut t = Task::new(spec, Priority::SYNC_DEFAULT, TaskMode::Sync);
        t.status = TaskStatus::Completed;
        t
    }
}
