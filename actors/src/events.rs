//! Live events of runs, for `GET /api/tasks/:id/events` and `stream: true`.
//!
//! Each task has a log: events numbered from 1, appended by its worker as the CLI prints them,
//! closed by the final event (`result` or `error`) when the task ends. A reader asks for the
//! events after the last id it saw, so several readers, late readers and reconnecting readers
//! (`Last-Event-ID`) all see the same sequence. A closed log is kept for a while, compact (its
//! events' JSON in one block), within [`MAX_CLOSED_LOGS`], [`CLOSED_LOG_TTL`] and
//! `limits.eventReplayBytes`, then dropped; a reader of a finished task whose log is gone gets
//! `init` and the final event rebuilt from the stored record.
//!
//! With a [cluster](crate::cluster) (Redis storage), every event appended here is also copied,
//! in the background, to a Redis Stream with the same ids ([`crate::cluster::events`]), so a
//! reader on another instance can follow the run: [`EventHub::source`] picks the local log when
//! this instance runs the task, the stream otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::watch;

use crate::approval::bus::ApprovalHub;
use crate::cluster::events::{EventMirror, RemoteLog};
use crate::cluster::Cluster;
use crate::mem;
use crate::model::{Task, TaskId};
use crate::store::Store;

/// How long a closed log stays for late readers.
pub const CLOSED_LOG_TTL: Duration = Duration::from_secs(300);
/// At most this many closed logs are kept (the oldest go first).
pub const MAX_CLOSED_LOGS: usize = 1000;

/// The SSE event names a run can produce (the last two end it).
pub const KINDS: [&str; 7] = [
    "init",
    "text",
    "tool_use",
    "tool_result",
    "approval",
    "result",
    "error",
];

/// `kind` as one of [`KINDS`] (events read back from Redis carry their name as text).
pub fn known_kind(kind: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == kind)
}

/// One event: `id` is its position in the task's log (from 1), `kind` the SSE event name.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub id: u64,
    pub kind: &'static str,
    /// The data as compact JSON, serialized once when the event is made: what SSE sends and
    /// the cluster copies, and far smaller than a tree of values.
    pub data: Box<RawValue>,
}

impl TaskEvent {
    pub fn new(id: u64, kind: &'static str, data: &Value) -> TaskEvent {
        TaskEvent {
            id,
            kind,
            // A `Value` always serializes (its map keys are strings).
            data: serde_json::value::to_raw_value(data)
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
        }
    }

    /// The data as a value (for readers that look inside it).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.data.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for TaskEvent {
    fn eq(&self, other: &TaskEvent) -> bool {
        self.id == other.id && self.kind == other.kind && self.data.get() == other.data.get()
    }
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
        TaskLog::with_state(LogState::default())
    }

    fn with_state(state: LogState) -> TaskLog {
        TaskLog {
            state: Mutex::new(state),
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
        let event = Arc::new(TaskEvent::new(id, kind, &data));
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

/// A closed log kept for replay, compact: its events one after the other in one allocation,
/// each as its kind (the index in [`KINDS`]), its data's length (u32, little-endian) and its
/// data's JSON. Ids are positions, so they need no room. A finished run costs about the size
/// of its JSON, in one block instead of one per event and value.
#[derive(Debug)]
struct ClosedLog {
    task: TaskId,
    closed_at: Instant,
    published: bool,
    events: Box<[u8]>,
}

/// Bytes of a closed log's event besides its data: kind and length.
const EVENT_HEADER: usize = 5;

impl ClosedLog {
    /// `None` if an event cannot be encoded (data over 4 GiB, unknown kind).
    fn encode(task: TaskId, st: &LogState) -> Option<ClosedLog> {
        let size = st
            .events
            .iter()
            .map(|e| EVENT_HEADER + e.data.get().len())
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for e in &st.events {
            let kind = KINDS.iter().position(|k| *k == e.kind)?;
            let data = e.data.get().as_bytes();
            bytes.push(u8::try_from(kind).ok()?);
            bytes.extend_from_slice(&u32::try_from(data.len()).ok()?.to_le_bytes());
            bytes.extend_from_slice(data);
        }
        Some(ClosedLog {
            task,
            closed_at: st.closed_at?,
            published: st.published,
            events: bytes.into_boxed_slice(),
        })
    }

    /// The log again, closed, for a reader.
    fn decode(&self) -> TaskLog {
        let mut events = Vec::new();
        let mut rest = &self.events[..];
        while let Some((&kind, tail)) = rest.split_first() {
            let Some((len, tail)) = tail.split_first_chunk::<4>() else {
                break;
            };
            let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
            let (Some(kind), Some(data)) = (KINDS.get(usize::from(kind)), tail.get(..len)) else {
                break;
            };
            // Written by `encode` from a `RawValue`: valid JSON, so this never fails.
            let data = std::str::from_utf8(data)
                .ok()
                .and_then(|d| RawValue::from_string(d.to_string()).ok())
                .unwrap_or_else(|| RawValue::NULL.to_owned());
            events.push(Arc::new(TaskEvent {
                id: events.len() as u64 + 1,
                kind,
                data,
            }));
            rest = &tail[len..];
        }
        TaskLog::with_state(LogState {
            events,
            closed_at: Some(self.closed_at),
            published: self.published,
        })
    }

    /// What keeping it costs, counted against `limits.eventReplayBytes`.
    fn cost(&self) -> usize {
        self.events.len() + std::mem::size_of::<ClosedLog>() + std::mem::size_of::<(TaskId, u64)>()
    }
}

/// The closed logs kept for replay, oldest first: at most [`MAX_CLOSED_LOGS`], for
/// [`CLOSED_LOG_TTL`], and within a byte budget (`limits.eventReplayBytes`).
#[derive(Debug, Default)]
struct ClosedLogs {
    logs: VecDeque<ClosedLog>,
    /// Task → the number of its log: its position in `logs` plus `first`.
    index: HashMap<TaskId, u64>,
    first: u64,
    /// The cost of everything kept.
    bytes: usize,
}

impl ClosedLogs {
    fn get(&self, id: TaskId, now: Instant) -> Option<&ClosedLog> {
        let n = self.index.get(&id)?.checked_sub(self.first)?;
        let log = self.logs.get(usize::try_from(n).ok()?)?;
        (now.duration_since(log.closed_at) < CLOSED_LOG_TTL).then_some(log)
    }

    /// Keep `log`, dropping the oldest as the bounds require; one bigger than the whole budget
    /// is not kept.
    fn push(&mut self, log: ClosedLog, now: Instant, max_bytes: usize) {
        while self
            .logs
            .front()
            .is_some_and(|l| now.duration_since(l.closed_at) >= CLOSED_LOG_TTL)
        {
            self.pop_oldest();
        }
        let cost = log.cost();
        if cost > max_bytes {
            return;
        }
        while self.logs.len() >= MAX_CLOSED_LOGS || self.bytes + cost > max_bytes {
            self.pop_oldest();
        }
        self.index
            .insert(log.task, self.first + self.logs.len() as u64);
        self.bytes += cost;
        self.logs.push_back(log);
    }

    fn pop_oldest(&mut self) {
        let Some(log) = self.logs.pop_front() else {
            return;
        };
        // A task's log is kept again if it closed again after expiring: keep the newer one.
        if self.index.get(&log.task) == Some(&self.first) {
            self.index.remove(&log.task);
        }
        self.first += 1;
        self.bytes -= log.cost();
        mem::shrink_sparse(&mut self.logs);
        mem::shrink_sparse(&mut self.index);
    }
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

/// The logs of runs going on (and of tasks a reader waits for), and the closed ones kept.
#[derive(Debug, Default)]
struct Logs {
    live: HashMap<TaskId, Arc<TaskLog>>,
    closed: ClosedLogs,
}

/// All live and recently closed logs.
///
/// A log leaves `live` when it closes and is kept compact in `closed` ([`ClosedLog`]); a
/// reader of a closed log gets a copy rebuilt from it. Readers that hold the live log keep it
/// until they have read it.
pub struct EventHub {
    logs: Mutex<Logs>,
    final_event: FinalEvent,
    /// With a cluster: the copy of every event to Redis, and what readers follow there.
    cluster: Option<(Arc<Cluster>, EventMirror)>,
    /// `limits.eventReplayBytes`.
    replay_bytes: AtomicUsize,
    /// How decisions reach runs. Kept here because the hub, like the event logs, is what ties
    /// a run to the outside by task id, and it travels wherever the events go (queue,
    /// workers, HTTP handlers).
    approvals: Arc<ApprovalHub>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").finish_non_exhaustive()
    }
}

impl EventHub {
    pub fn new(final_event: FinalEvent) -> EventHub {
        EventHub {
            logs: Mutex::new(Logs::default()),
            final_event,
            cluster: None,
            // No byte bound until the queue applies the config (count and time still apply).
            replay_bytes: AtomicUsize::new(usize::MAX),
            approvals: Arc::new(ApprovalHub::new()),
        }
    }

    /// How approval decisions reach this instance's runs.
    pub fn approvals(&self) -> &Arc<ApprovalHub> {
        &self.approvals
    }

    /// Share the events with the other instances of `cluster`: every event is also copied to
    /// Redis (in the background), and [`EventHub::source`] follows runs of other instances
    /// there. Needs a tokio runtime (it starts the writer).
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> EventHub {
        let mirror = EventMirror::start(&cluster);
        self.approvals.join_cluster(cluster.clone());
        self.cluster = Some((cluster, mirror));
        self
    }

    /// The budget of the closed logs kept for replay (`limits.eventReplayBytes`); applies as
    /// the next log closes.
    pub fn set_replay_bytes(&self, bytes: u64) {
        self.replay_bytes.store(
            usize::try_from(bytes).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
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
        let logs = self.lock();
        if let Some(log) = logs.live.get(&id) {
            let published = log.lock().published;
            return published.then(|| log.clone());
        }
        let closed = logs.closed.get(id, Instant::now())?;
        closed.published.then(|| Arc::new(closed.decode()))
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

    fn lock(&self) -> MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log of a task: the live one, a copy of the closed one kept, or a new empty one (a
    /// reader may come before the run).
    pub fn log(&self, id: TaskId) -> Arc<TaskLog> {
        let mut logs = self.lock();
        if let Some(log) = logs.live.get(&id) {
            return log.clone();
        }
        if let Some(closed) = logs.closed.get(id, Instant::now()) {
            return Arc::new(closed.decode());
        }
        logs.live
            .entry(id)
            .or_insert_with(|| Arc::new(TaskLog::new()))
            .clone()
    }

    /// The log of a task that already ended: the run's own if still kept, else rebuilt from
    /// its record (init and the final event).
    pub fn log_of_finished(&self, task: &Task) -> Arc<TaskLog> {
        let log = self.log(task.id);
        if !log.is_closed() && log.lock().events.is_empty() {
            log.push("init", init_data(task, None, None));
            let (kind, data) = (self.final_event)(task);
            log.close_with(kind, data);
            self.retire(task.id);
        }
        log
    }

    pub fn publish(&self, id: TaskId, kind: &'static str, data: Value) {
        self.log(id)
            .append(kind, data, Append::Published, |e| self.mirror(id, e, false));
    }

    /// The task ended: append its final event and close its log, which is then kept compact
    /// for replay.
    pub fn finish(&self, task: &Task) {
        let (kind, data) = (self.final_event)(task);
        self.log(task.id)
            .append(kind, data, Append::Close, |e| self.mirror(task.id, e, true));
        self.retire(task.id);
    }

    fn mirror(&self, id: TaskId, event: &Arc<TaskEvent>, last: bool) {
        if let Some((_, mirror)) = &self.cluster {
            mirror.send(id, event.clone(), last);
        }
    }

    /// Move `id`'s log, once closed, from the live logs to the closed ones kept for replay.
    fn retire(&self, id: TaskId) {
        let max_bytes = self.replay_bytes.load(Ordering::Relaxed);
        let mut logs = self.lock();
        let Some(log) = logs.live.get(&id) else {
            return;
        };
        let closed = {
            let st = log.lock();
            if st.closed_at.is_none() {
                return;
            }
            ClosedLog::encode(id, &st)
        };
        logs.live.remove(&id);
        mem::shrink_sparse(&mut logs.live);
        if let Some(closed) = closed {
            logs.closed.push(closed, Instant::now(), max_bytes);
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

    /// Every event of a closed `log` as (id, kind, data).
    async fn all(log: &TaskLog) -> Vec<(u64, &'static str, Value)> {
        assert!(log.is_closed(), "a closed log");
        let events = log.next_after(0).await.unwrap_or_default();
        events.iter().map(|e| (e.id, e.kind, e.value())).collect()
    }

    /// A run of `task` on this hub: init, a text, a tool and its final event.
    fn run(hub: &EventHub, t: &mut Task) {
        hub.publish(t.id, "init", init_data(t, Some("m"), Some("1.0")));
        hub.publish(
            t.id,
            "text",
            serde_json::json!({"text": "é\n\"x\"", "n": 1.5}),
        );
        hub.publish(
            t.id,
            "tool_use",
            serde_json::json!({"id": "t1", "input": {"a": [1, null]}}),
        );
        t.status = TaskStatus::Completed;
        hub.finish(t);
    }

    #[tokio::test]
    async fn a_closed_log_is_kept_compact_and_replays_exactly() {
        let hub = EventHub::plain();
        let mut t = task();
        let live = hub.log(t.id);
        run(&hub, &mut t);
        let want = all(&live).await;
        assert_eq!(want.len(), 4);
        {
            let logs = hub.lock();
            assert!(logs.live.is_empty(), "the closed log left the live ones");
            assert_eq!(logs.closed.logs.len(), 1);
        }
        // Readers after the end get the same events, ids and bytes, from the compact copy.
        let replayed = hub.log(t.id);
        assert!(replayed.is_closed());
        assert_eq!(all(&replayed).await, want);
        let raw = |log: &TaskLog| {
            log.lock()
                .events
                .iter()
                .map(|e| e.data.get().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(raw(&replayed), raw(&live));
        let rest = replayed.next_after(2).await.expect("events");
        assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        // Still the run's own log (with a cluster, read here rather than from Redis).
        assert!(hub.local_run(t.id).is_some());
        assert_eq!(all(&hub.log_of_finished(&t)).await, want);
        // Late events and a second final event change nothing.
        hub.publish(t.id, "text", serde_json::json!({"text": "late"}));
        hub.finish(&t);
        assert_eq!(all(&hub.log(t.id)).await, want);
        assert_eq!(hub.lock().closed.logs.len(), 1);
    }

    #[tokio::test]
    async fn a_log_rebuilt_from_the_record_is_kept_like_a_run_and_not_rewritten() {
        let hub = EventHub::plain();
        let mut t = task();
        t.status = TaskStatus::Failed;
        let first = all(&hub.log_of_finished(&t)).await;
        assert_eq!(
            first.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec!["init", "error"]
        );
        // The queue's own end of the task comes after a reader rebuilt it: no third event.
        hub.finish(&t);
        assert_eq!(all(&hub.log(t.id)).await, first);
        // Not a run of this instance.
        assert!(hub.local_run(t.id).is_none());
    }

    #[tokio::test]
    async fn closed_logs_are_bounded_by_count_and_bytes_oldest_first() {
        let hub = EventHub::plain();
        let mut tasks: Vec<Task> = (0..MAX_CLOSED_LOGS + 1).map(|_| task()).collect();
        for t in &mut tasks {
            run(&hub, t);
        }
        assert_eq!(hub.lock().closed.logs.len(), MAX_CLOSED_LOGS);
        // The oldest is gone: a reader gets init and the final event from the record (and that
        // rebuilt log is kept in turn, so the next oldest goes).
        assert!(hub.local_run(tasks[0].id).is_none());
        let oldest = all(&hub.log_of_finished(&tasks[0])).await;
        assert_eq!(
            oldest.iter().map(|e| e.1).collect::<Vec<_>>(),
            vec!["init", "result"]
        );
        assert!(hub.local_run(tasks[1].id).is_none());
        assert_eq!(all(&hub.log(tasks[2].id)).await.len(), 4);

        // A budget of about two runs keeps the last two.
        let one = hub
            .lock()
            .closed
            .logs
            .iter()
            .map(ClosedLog::cost)
            .max()
            .expect("a log");
        hub.set_replay_bytes((2 * one + one / 2) as u64);
        let mut more: Vec<Task> = (0..3).map(|_| task()).collect();
        for t in &mut more {
            run(&hub, t);
        }
        {
            let logs = hub.lock();
            assert_eq!(logs.closed.logs.len(), 2);
            assert!(logs.closed.bytes <= 2 * one + one / 2);
            assert_eq!(logs.closed.index.len(), 2);
        }
        assert!(hub.local_run(more[0].id).is_none());
        assert_eq!(all(&hub.log(more[2].id)).await.len(), 4);
        // A run bigger than the whole budget is not kept; the others stay.
        hub.set_replay_bytes(one as u64);
        let mut big = task();
        hub.publish(
            big.id,
            "text",
            serde_json::json!({"text": "x".repeat(2 * one)}),
        );
        big.status = TaskStatus::Completed;
        hub.finish(&big);
        assert!(hub.local_run(big.id).is_none());
        assert!(hub.local_run(more[2].id).is_some());
        // Nothing kept at all with a budget of 0.
        hub.set_replay_bytes(0);
        let mut last = task();
        run(&hub, &mut last);
        assert!(hub.local_run(last.id).is_none());
    }
}
