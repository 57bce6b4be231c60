//! Live events of runs, for `GET /api/tasks/:id/events` and `stream: true`.
//!
//! Each task has a log: events numbered from 1, appended by its worker as the CLI prints them,
//! closed by the final event (`result` or `error`) when the task ends. A reader asks for the
//! events after the last id it saw, so several readers, late readers and reconnecting readers
//! (`Last-Event-ID`) all see the same sequence. A closed log is kept for a while, then dropped;
//! a reader of a finished task whose log is gone gets `init` and the final event rebuilt from
//! the stored record.
//!
//! With a [cluster](crate::cluster) (Redis storage), every event appended here is also copied,
//! in the background, to a Redis Stream with the same ids ([`crate::cluster::events`]), so a
//! reader on another instance can follow the run: [`EventHub::source`] picks the local log when
//! this instance runs the task, the stream otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::cluster::events::{EventMirror, RemoteLog};
use crate::cluster::Cluster;
use crate::model::{Task, TaskId};
use crate::store::Store;

/// How long a closed log stays for late readers.
pub const CLOSED_LOG_TTL: Duration = Duration::from_secs(300);
/// At most this many closed logs are kept (the oldest go first).
pub const MAX_CLOSED_LOGS: usize = 1000;

/// The SSE event names a run can produce (the last two end it).
pub const KINDS: [&str; 6] = ["init", "text", "tool_use", "tool_result", "result", "error"];

/// `kind` as one of [`KINDS`] (events read back from Redis carry their name as text).
pub fn known_kind(kind: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == kind)
}

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
    /// A run on this instance published events here (not only a final event written by
    /// whoever ended the task, nor a log rebuilt from the record): this log is the run's own.
    published: bool,
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
        self.append(kind, data, Append::Rebuilt, |_| {});
    }

    fn close_with(&self, kind: &'static str, data: Value) {
        self.append(kind, data, Append::Close, |_| {});
    }

    /// Append an event (nothing once closed). `copy` sees it under the log's lock, so copies
    /// (the cluster mirror) are made in id order whoever appends.
    fn append(
        &self,
        kind: &'static str,
        data: Value,
        how: Append,
        copy: impl FnOnce(&Arc<TaskEvent>),
    ) {
        let mut st = self.lock();
        if st.closed_at.is_some() {
            return;
        }
        let id = st.events.len() as u64 + 1;
        let event = Arc::new(TaskEvent { id, kind, data });
        copy(&event);
        st.events.push(event);
        match how {
            Append::Published => st.published = true,
            Append::Close => st.closed_at = Some(Instant::now()),
            Append::Rebuilt => {}
        }
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

#[derive(Debug, Clone, Copy)]
enum Append {
    /// An event of a run on this instance.
    Published,
    /// The final event.
    Close,
    /// An event rebuilt from a stored record.
    Rebuilt,
}

/// Where a reader gets a task's events: the local log, or the cluster's copy of a run on
/// another instance.
pub enum EventSource {
    Local(Arc<TaskLog>),
    Remote(Box<RemoteLog>),
}

impl EventSource {
    /// The events after `after`, waiting for some; `None` once the final event was read.
    pub async fn next_after(&mut self, after: u64) -> Option<Vec<Arc<TaskEvent>>> {
        match self {
            EventSource::Local(log) => log.next_after(after).await,
            EventSource::Remote(remote) => remote.next_after(after).await,
        }
    }
}

/// All live and recently closed logs.
pub struct EventHub {
    logs: Mutex<HashMap<TaskId, Arc<TaskLog>>>,
    final_event: FinalEvent,
    /// With a cluster: the copy of every event to Redis, and what readers follow there.
    cluster: Option<(Arc<Cluster>, EventMirror)>,
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
            cluster: None,
        }
    }

    /// Share the events with the other instances of `cluster`: every event is also copied to
    /// Redis (in the background), and [`EventHub::source`] follows runs of other instances
    /// there. Needs a tokio runtime (it starts the writer).
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> EventHub {
        let mirror = EventMirror::start(&cluster);
        self.cluster = Some((cluster, mirror));
        self
    }

    /// Events that could not be copied to Redis so far (buffer full, Redis down or refusing);
    /// the local logs have them all.
    pub fn mirror_dropped(&self) -> u64 {
        self.cluster.as_ref().map_or(0, |(_, m)| m.dropped())
    }

    /// The final event of `task`, as [`EventHub::finish`] appends it.
    pub fn final_event(&self, task: &Task) -> (&'static str, Value) {
        (self.final_event)(task)
    }

    /// The events of `task` for a reader (`GET /api/tasks/:id/events`): the local log when
    /// this instance runs (or ran) it, or without a cluster; else the cluster's copy, which
    /// ends with the stored record's final event if the copy has none. `store` is where the
    /// reader rechecks the task's status.
    pub fn source(self: &Arc<Self>, task: &Task, store: &Arc<dyn Store>) -> EventSource {
        if let Some(log) = self.local_run(task.id) {
            return EventSource::Local(log);
        }
        match &self.cluster {
            Some((cluster, _)) => EventSource::Remote(Box::new(RemoteLog::new(
                cluster.clone(),
                store.clone(),
                self.clone(),
                task,
            ))),
            None if task.status.is_final() => EventSource::Local(self.log_of_finished(task)),
            None => EventSource::Local(self.log(task.id)),
        }
    }

    /// The log of a run on this instance, once it published an event.
    pub fn local_run(&self, id: TaskId) -> Option<Arc<TaskLog>> {
        let log = self.lock().get(&id).cloned()?;
        let published = log.lock().published;
        published.then_some(log)
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
        self.log(id)
            .append(kind, data, Append::Published, |e| self.mirror(id, e, false));
    }

    /// The task ended: append its final event, close its log, and drop old closed logs.
    pub fn finish(&self, task: &Task) {
        let (kind, data) = (self.final_event)(task);
        self.log(task.id)
            .append(kind, data, Append::Close, |e| self.mirror(task.id, e, true));
        self.prune();
    }

    fn mirror(&self, id: TaskId, event: &Arc<TaskEvent>, last: bool) {
        if let Some((_, mirror)) = &self.cluster {
            mirror.send(id, event.clone(), last);
        }
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
