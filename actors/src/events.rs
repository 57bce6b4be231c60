//! Live events of runs, for `GET /api/tasks/:id/events` and `stream: true`.
//!
//! Each task has a log: events numbered from 1, appended by its worker as the CLI prints them,
//! closed by the final event (`result` or `error`) when the task ends. A reader asks for the
//! events after the last id it saw, so several readers, late readers and reconnecting readers
//! (`Last-Event-ID`) all see the same sequence. A closed log is kept for a while, then dropped;
//! a reader of a finished task whose log is gone gets `init` and the final event rebuilt from
//! the stored record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::model::{Task, TaskId};

/// How long a closed log stays for late readers.
pub const CLOSED_LOG_TTL: Duration = Duration::from_secs(300);
/// At most this many closed logs are kept (the oldest go first).
pub const MAX_CLOSED_LOGS: usize = 1000;

/// One event: `id` is its position in the task's log (from 1), `kind` the SSE event name.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub id: u64,
    pub kind: &'static str,
    pub data: Value,
}

/// Builds the final event of a task (`("result", answer)` or `("error", error body)`). The
/// HTTP layer owns the answer's shape, so it hands this in.
pub type FinalEvent = Arc<dyn Fn(&Task) -> (&'static str, Value) + Send + Sync>;

#[derive(Debug, Default)]
struct LogState {
    events: Vec<Arc<TaskEvent>>,
    closed_at: Option<Instant>,
}

/// The event log of one task.
#[derive(Debug)]
pub struct TaskLog {
    state: Mutex<LogState>,
    /// Bumped on every append and on close, so readers wake up.
    version: watch::Sender<u64>,
}

impl TaskLog {
    fn new() -> TaskLog {
        TaskLog {
            state: Mutex::new(LogState::default()),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, kind: &'static str, data: Value) {
        let mut st = self.lock();
        if st.closed_at.is_some() {
            return;
        }
        let id = st.events.len() as u64 + 1;
        st.events.push(Arc::new(TaskEvent { id, kind, data }));
        drop(st);
        self.version.send_modify(|v| *v += 1);
    }

    fn close_with(&self, kind: &'static str, data: Value) {
        let mut st = self.lock();
        if st.closed_at.is_some() {
            return;
        }
        let id = st.events.len() as u64 + 1;
        st.events.push(Arc::new(TaskEvent { id, kind, data }));
        st.closed_at = Some(Instant::now());
        drop(st);
        self.version.send_modify(|v| *v += 1);
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed_at.is_some()
    }

    /// The events after `after` (an event id), waiting for some if there are none yet.
    /// `None` once the log is closed and everything was read.
    pub async fn next_after(&self, after: u64) -> Option<Vec<Arc<TaskEvent>>> {
        let mut rx = self.version.subscribe();
        loop {
            {
                let st = self.lock();
                let start = usize::try_from(after)
                    .unwrap_or(usize::MAX)
                    .min(st.events.len());
                if start < st.events.len() {
                    return Some(st.events[start..].to_vec());
                }
                if st.closed_at.is_some() {
                    return None;
                }
            }
            // Marked seen above under the lock's ordering: any later append bumps the version.
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// All live and recently closed logs.
pub struct EventHub {
    logs: Mutex<HashMap<TaskId, Arc<TaskLog>>>,
    final_event: FinalEvent,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").finish_non_exhaustive()
    }
}

impl EventHub {
    pub fn new(final_event: FinalEvent) -> EventHub {
        EventHub {
            logs: Mutex::new(HashMap::new()),
            final_event,
        }
    }

    /// A hub whose final events are plain records (for tests of the actors alone).
    pub fn plain() -> EventHub {
        EventHub::new(Arc::new(|t: &Task| {
            let kind = if t.status == crate::model::TaskStatus::Completed {
                "result"
            } else {
                "error"
            };
            (
                kind,
                serde_json::json!({"task_id": t.id, "status": t.status}),
            )
        }))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskLog>>> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log of a task, created empty if it has none (a reader may come before the run).
    pub fn log(&self, id: TaskId) -> Arc<TaskLog> {
        self.lock()
            .entry(id)
            .or_insert_with(|| Arc::new(TaskLog::new()))
            .clone()
    }

    /// The log of a task that already ended: the live one if still kept, else rebuilt from its
    /// record (init and the final event).
    pub fn log_of_finished(&self, task: &Task) -> Arc<TaskLog> {
        let log = self.log(task.id);
        if !log.is_closed() && log.lock().events.is_empty() {
            log.push("init", init_data(task, None, None));
            let (kind, data) = (self.final_event)(task);
            log.close_with(kind, data);
        }
        log
    }

    pub fn publish(&self, id: TaskId, kind: &'static str, data: Value) {
        self.log(id).push(kind, data);
    }

    /// The task ended: append its final event, close its log, and drop old closed logs.
    pub fn finish(&self, task: &Task) {
        let (kind, data) = (self.final_event)(task);
        self.log(task.id).close_with(kind, data);
        self.prune();
    }

    fn prune(&self) {
        let mut logs = self.lock();
        let now = Instant::now();
        logs.retain(|_, log| match log.lock().closed_at {
            Some(at) => now.duration_since(at) < CLOSED_LOG_TTL,
            None => true,
        });
        let mut closed: Vec<(Instant, TaskId)> = logs
            .iter()
            .filter_map(|(id, log)| log.lock().closed_at.map(|at| (at, *id)))
            .collect();
        if closed.len() > MAX_CLOSED_LOGS {
            closed.sort();
            for (_, id) in &closed[..closed.len() - MAX_CLOSED_LOGS] {
                logs.remove(id);
            }
        }
    }
}

/// The `init` event's data.
pub fn init_data(task: &Task, model: Option<&str>, cli_version: Option<&str>) -> Value {
    serde_json::json!({
        "task_id": task.id,
        "session_id": task.session_id,
        "model": model.map(str::to_string).or_else(|| task.spec.model.clone()),
        "cli_version": cli_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Priority, RunSpec, TaskMode, TaskStatus};

    fn task() -> Task {
        let spec = RunSpec {
            model: Some("m".into()),
            ..RunSpec::new("p", "/", 1000)
        };
        Task::new(spec, Priority::SYNC_DEFAULT, TaskMode::Sync)
    }

    #[tokio::test]
    async fn readers_see_every_event_in_order_and_replay_from_an_id() {
        let hub = EventHub::plain();
        let mut t = task();
        let log = hub.log(t.id);
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut after = 0;
                while let Some(events) = log.next_after(after).await {
                    for e in events {
                        after = e.id;
                        seen.push((e.id, e.kind));
                    }
                }
                seen
            })
        };
        hub.publish(t.id, "init", Value::Null);
        hub.publish(t.id, "text", serde_json::json!({"text": "a"}));
        hub.publish(t.id, "text", serde_json::json!({"text": "b"}));
        t.status = TaskStatus::Completed;
        hub.finish(&t);
        // Nothing after the final event.
        hub.publish(t.id, "text", serde_json::json!({"text": "late"}));
        let seen = reader.await.expect("reader");
        assert_eq!(
            seen,
            vec![(1, "init"), (2, "text"), (3, "text"), (4, "result")]
        );
        // A reconnecting reader resumes after the last id it saw.
        let rest = log.next_after(2).await.expect("events");
        assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        assert!(log.next_after(4).await.is_none());
    }

    #[tokio::test]
    async fn a_finished_task_without_a_log_gets_init_and_its_final_event() {
        let hub = EventHub::plain();
        let mut t = task();
        t.status = TaskStatus::Failed;
        let log = hub.log_of_finished(&t);
        let events = log.next_after(0).await.expect("events");
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec!["init", "error"]
        );
    }
}
