//! Live events across instances: a copy of every run's event log in a Redis Stream, which any
//! instance can replay and follow (`GET /api/tasks/:id/events` on an instance that does not run
//! the task).
//!
//! * Key `<ns>:ev:<task id>`, one entry per event. The entry id is `<event id>-0`, so the ids
//!   a client sees (and sends back as `Last-Event-ID`) are the same on every instance, and Redis
//!   itself refuses an entry that would go backwards (another instance already wrote further).
//!   Fields: `kind` (the SSE event name), `data` (its JSON), and `final` = `1` on the event
//!   that ends the run.
//! * Bounded: at most about [`STREAM_MAX_LEN`] entries (`XADD MAXLEN ~`; a longer run loses its
//!   oldest events from the copy, a replay from the start then skips them). Each batch of
//!   appends sets the key to expire [`LIVE_STREAM_TTL`] later (a stream whose instance died
//!   goes away), and the final event [`CLOSED_STREAM_TTL`] later, as long as a closed local log
//!   stays.
//! * Writing never slows a run: [`EventMirror::send`] puts the event in a bounded buffer that
//!   one background task drains in pipelined batches. When the buffer is full or Redis fails,
//!   the events are dropped (debug log, [`EventMirror::dropped`]); the local log still has
//!   them, and a remote reader then misses them (or gets the final event from the record).
//! * Reading ([`RemoteLog`]): `XRANGE` for what is already there, then `XREAD BLOCK` on a
//!   connection of the reader's own (a blocking read on the shared connection would hold up
//!   every other command), at most [`FOLLOW_BLOCK`] at a time; between two reads the reader
//!   rechecks the stored task. Once the record is final and the copy has no final event (the
//!   running instance died, or its copies were dropped), the reader waits at most
//!   [`FINAL_GRACE`] after the end for stragglers, then ends with the final event rebuilt from
//!   the record, numbered after the last event it sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, MultiplexedConnection};
use ::redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use ::redis::{AsyncConnectionConfig, RedisResult, Value as RedisValue};
use chrono::Utc;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::Cluster;
use crate::events::{init_data, known_kind, EventHub, TaskEvent, TaskLog};
use crate::model::{Task, TaskId};
use crate::store::Store;

/// Entries kept per stream, about (`MAXLEN ~`: Redis trims whole nodes, so a few more stay).
/// A run's log has one event per text delta; this is hours of a chatty run.
pub const STREAM_MAX_LEN: usize = 10_000;
/// A stream expires this long after its last append while the run goes on (so the copy of a
/// run whose instance died does not stay forever).
pub const LIVE_STREAM_TTL: Duration = Duration::from_secs(3600);
/// A stream expires this long after its final event: as long as a closed local log is kept.
pub const CLOSED_STREAM_TTL: Duration = crate::events::CLOSED_LOG_TTL;
/// Events waiting to be written; beyond, new ones are dropped rather than wait.
const WRITE_BUFFER: usize = 8192;
/// Events written in one pipelined round trip at most.
const WRITE_BATCH: usize = 256;
/// The longest a remote reader blocks in one read before rechecking the task's record (and
/// noticing a client that went away).
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(2);
/// After a task's record turned final, how long a reader still waits for the copy's final
/// event (the writer of the running instance may be a batch behind the record).
pub const FINAL_GRACE: Duration = Duration::from_secs(2);
/// Entries read per command at most.
const READ_BATCH: usize = 500;
const _: () = assert!(READ_BATCH <= STREAM_MAX_LEN);
/// A reply slower than this (beyond the blocking time asked for) is an outage.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts while Redis fails (doubles up to the max): the read failed at once,
/// so there is nothing to block on.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The stream of a task: `<ns>:ev:<task id>` (`prefix` is `"<ns>:"`).
pub fn stream_key(prefix: &str, task: TaskId) -> String {
    format!("{prefix}ev:{task}")
}

/// The entry id of event `id`.
pub fn entry_id(id: u64) -> String {
    format!("{id}-0")
}

/// The event id of an entry id written by [`entry_id`] (`None` for any other shape).
pub fn event_id(entry: &str) -> Option<u64> {
    match stream_pos(entry)? {
        (id, 0) if id > 0 => Some(id),
        _ => None,
    }
}

/// A stream entry id `<ms>-<seq>` as numbers, which order entries as Redis does.
fn stream_pos(entry: &str) -> Option<(u64, u64)> {
    let (ms, seq) = entry.split_once('-')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    Some((number(ms)?, number(seq)?))
}

/// One event on its way to Redis.
struct Copy {
    task: TaskId,
    event: Arc<TaskEvent>,
    last: bool,
}

/// The writer's end: cheap, never waits.
pub struct EventMirror {
    tx: mpsc::Sender<Copy>,
    dropped: Arc<AtomicU64>,
}

impl EventMirror {
    /// Start the background writer (it stops once the mirror is dropped and the buffer drained).
    pub fn start(cluster: &Cluster) -> EventMirror {
        let (tx, rx) = mpsc::channel(WRITE_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(
            rx,
            cluster.conn(),
            cluster.prefix().to_string(),
            dropped.clone(),
        ));
        EventMirror { tx, dropped }
    }

    /// Queue a copy of `event` of `task` (`last`: the final event). Full buffer: dropped.
    pub fn send(&self, task: TaskId, event: Arc<TaskEvent>, last: bool) {
        if self.tx.try_send(Copy { task, event, last }).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            log::debug!(task_id:% = task, dropped = n; "event copy buffer full; the copy is dropped");
        }
    }

    /// Events not copied so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Copy>,
    mut conn: ConnectionManager,
    prefix: String,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        append_batch(&mut pipe, &prefix, &batch);
        let results: RedisResult<Vec<RedisResult<RedisValue>>> = pipe.query_async(&mut conn).await;
        match results {
            Ok(results) => {
                for (c, r) in batch.iter().zip(results) {
                    if let Err(e) = r {
                        // Typically "ID equal or smaller": another instance already wrote
                        // this task's stream further (it ran the run this instance ended).
                        let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        log::debug!(task_id:% = c.task, event_id = c.event.id, error:% = e, dropped = n; "Redis refused an event copy");
                    }
                }
            }
            Err(e) => {
                let n =
                    dropped.fetch_add(batch.len() as u64, Ordering::Relaxed) + batch.len() as u64;
                log::debug!(error:% = e, events = batch.len(), dropped = n; "cannot copy events to Redis; they are dropped");
            }
        }
        batch.clear();
    }
}

/// The commands that store a batch of copies: each one's `XADD`, and each stream's new expiry
/// once, after its last copy in the batch (a run's events come in bursts: one expiry per event
/// would be most of the commands).
fn append_batch(pipe: &mut ::redis::Pipeline, prefix: &str, batch: &[Copy]) {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let mut last_of_task = vec![false; batch.len()];
    for (i, c) in batch.iter().enumerate().rev() {
        last_of_task[i] = seen.insert(c.task);
    }
    for (c, expire) in batch.iter().zip(last_of_task) {
        append_copy(pipe, prefix, c, expire);
    }
}

/// The commands that store one copy: `XADD` (capped) with the event's id, and with `expire`
/// the key's new expiry. The expiry is answered with nothing (ignored), so the results line up
/// with `XADD`s.
fn append_copy(pipe: &mut ::redis::Pipeline, prefix: &str, c: &Copy, expire: bool) {
    let key = stream_key(prefix, c.task);
    let data = c.event.data.get();
    let xadd = pipe
        .cmd("XADD")
        .arg(&key)
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAX_LEN)
        .arg(entry_id(c.event.id))
        .arg("kind")
        .arg(c.event.kind)
        .arg("data")
        .arg(data);
    if c.last {
        xadd.arg("final").arg(1);
    }
    if !expire {
        return;
    }
    let ttl = if c.last {
        CLOSED_STREAM_TTL
    } else {
        LIVE_STREAM_TTL
    };
    // Also when the XADD is refused: the stream was written further by an instance that is
    // gone, and this final event's expiry is the one that should apply.
    pipe.cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl.as_millis() as u64)
        .ignore();
}

/// Parse one stream entry; `None` (skipped, with a debug log) for an entry this build cannot
/// read, e.g. an event kind of a newer version.
fn parse_entry(entry: &StreamId) -> Option<(TaskEvent, bool)> {
    let id = event_id(&entry.id)?;
    let kind = entry.get::<String>("kind");
    let Some(kind) = kind.as_deref().and_then(known_kind) else {
        log::debug!(entry:% = entry.id, kind:? = kind; "skipping an event of unknown kind");
        return None;
    };
    let data = entry
        .get::<String>("data")
        .and_then(|d| RawValue::from_string(d).ok())
        .unwrap_or_else(|| RawValue::NULL.to_owned());
    let last = entry.get::<String>("final").as_deref() == Some("1");
    Some((TaskEvent { id, kind, data }, last))
}

/// The entries of a read, in order, cut after the final event: the events, and whether the
/// final event is among them.
fn to_events(entries: &[StreamId], after: u64) -> (Vec<Arc<TaskEvent>>, bool) {
    let mut out = Vec::new();
    for entry in entries {
        let Some((event, last)) = parse_entry(entry) else {
            continue;
        };
        if event.id <= after {
            continue;
        }
        out.push(Arc::new(event));
        if last {
            return (out, true);
        }
    }
    (out, false)
}

/// The events after `after` (ids `after+1`...) that end a run from its record: `init` when the
/// reader has nothing yet (as for a finished task without a log), then the final event.
fn closing_events(hub: &EventHub, task: &Task, after: u64) -> Vec<Arc<TaskEvent>> {
    let mut out = Vec::new();
    let mut id = after;
    if after == 0 {
        id += 1;
        out.push(Arc::new(TaskEvent::new(
            id,
            "init",
            &init_data(task, None, None),
        )));
    }
    let (kind, data) = hub.final_event(task);
    out.push(Arc::new(TaskEvent::new(id + 1, kind, &data)));
    out
}

/// What is left of a grace period that started when `task` ended.
fn grace_left(task: &Task) -> Duration {
    let Some(ended) = task.completed_at else {
        return Duration::ZERO;
    };
    let since = (Utc::now() - ended).to_std().unwrap_or(Duration::ZERO);
    FINAL_GRACE.saturating_sub(since)
}

/// A reader of a task's events from the cluster's copy (see the module doc).
pub struct RemoteLog {
    cluster: Arc<Cluster>,
    store: Arc<dyn Store>,
    hub: Arc<EventHub>,
    task: TaskId,
    key: String,
    /// The record once final.
    ended: Option<Task>,
    /// The reader's own connection for blocking reads, opened at the first one.
    conn: Option<MultiplexedConnection>,
    /// The local log, once this instance turned out to run the task.
    local: Option<Arc<TaskLog>>,
    /// The last entry read (events handed out, or entries skipped as unreadable), so the next
    /// read starts after it and an unreadable entry is not read again and again.
    cursor: (u64, u64),
    retry: Duration,
    done: bool,
}

impl RemoteLog {
    pub fn new(
        cluster: Arc<Cluster>,
        store: Arc<dyn Store>,
        hub: Arc<EventHub>,
        task: &Task,
    ) -> RemoteLog {
        RemoteLog {
            key: stream_key(cluster.prefix(), task.id),
            cluster,
            store,
            hub,
            task: task.id,
            ended: task.status.is_final().then(|| task.clone()),
            conn: None,
            local: None,
            cursor: (0, 0),
            retry: RETRY_MIN,
            done: false,
        }
    }

    /// The events after `after`, waiting for some; `None` once the final event was read (or
    /// the task was deleted).
    pub async fn next_after(&mut self, after: u64) -> Option<Vec<Arc<TaskEvent>>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(log) = &self.local {
                return log.next_after(after).await;
            }
            // The run is here after all (a claim after the reader came): its own log is
            // complete even while Redis is down. Same ids, so the switch is seamless.
            if let Some(log) = self.hub.local_run(self.task) {
                self.local = Some(log);
                continue;
            }
            let block = match &self.ended {
                None => Some(FOLLOW_BLOCK),
                Some(task) => {
                    let left = grace_left(task);
                    (!left.is_zero()).then_some(left.min(FOLLOW_BLOCK))
                }
            };
            match self.read(after, block).await {
                Ok(entries) => {
                    self.retry = RETRY_MIN;
                    if let Some(pos) = entries.last().and_then(|e| stream_pos(&e.id)) {
                        self.cursor = self.cursor.max(pos);
                    }
                    let (events, last) = to_events(&entries, after);
                    self.done = last;
                    if !events.is_empty() {
                        return Some(events);
                    }
                    if let Some(task) = &self.ended {
                        if block.is_none() {
                            // Everything copied was read and no final event came: end from
                            // the record.
                            self.done = true;
                            return Some(closing_events(&self.hub, task, after));
                        }
                        continue;
                    }
                    if !self.recheck().await {
                        return None;
                    }
                }
                Err(e) => {
                    log::debug!(task_id:% = self.task, error:% = e; "cannot read the task's events from Redis");
                    self.conn = None;
                    if let Some(task) = &self.ended {
                        // Redis fails and the task is over: end as a single instance would,
                        // from this instance's log or the record.
                        let log = self.hub.log_of_finished(task);
                        self.local = Some(log);
                        continue;
                    }
                    if !self.recheck().await {
                        return None;
                    }
                    tokio::time::sleep(self.retry).await;
                    self.retry = (self.retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Read the task's record again: `false` if it is gone (deleted).
    async fn recheck(&mut self) -> bool {
        match self.store.get_task(self.task).await {
            Ok(Some(task)) => {
                if task.status.is_final() {
                    self.ended = Some(task);
                }
                true
            }
            Ok(None) => {
                self.done = true;
                false
            }
            // Storage is down: keep following; the next read will tell.
            Err(_) => true,
        }
    }

    /// Entries after `after`: without `block`, what is there (`XRANGE`); with it, waiting at
    /// most that long for some (`XREAD BLOCK`, on the reader's own connection).
    async fn read(&mut self, after: u64, block: Option<Duration>) -> RedisResult<Vec<StreamId>> {
        let (ms, seq) = self.cursor.max((after, 0));
        let Some(block) = block else {
            // XRANGE's start is inclusive: the position right after the last one read.
            let start = match seq.checked_add(1) {
                Some(next) => format!("{ms}-{next}"),
                None => format!("{}-0", ms.saturating_add(1)),
            };
            let reply: StreamRangeReply = ::redis::cmd("XRANGE")
                .arg(&self.key)
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(READ_BATCH)
                .query_async(&mut self.cluster.conn())
                .await?;
            return Ok(reply.ids);
        };
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(FOLLOW_BLOCK + READ_TIMEOUT_MARGIN));
                let conn = self
                    .cluster
                    .client()
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                self.conn.insert(conn)
            }
        };
        // BLOCK 0 would wait forever: at least a millisecond.
        let block_ms = block.as_millis().clamp(1, FOLLOW_BLOCK.as_millis()) as u64;
        let reply: Option<StreamReadReply> = ::redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_BATCH)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(format!("{ms}-{seq}"))
            .query_async(conn)
            .await?;
        Ok(reply
            .and_then(|r| r.keys.into_iter().next())
            .map(|k| k.ids)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), RedisValue::BulkString(v.as_bytes().to_vec())))
                .collect::<HashMap<_, _>>(),
            ..StreamId::default()
        }
    }

    #[test]
    fn streams_are_named_per_task_under_the_namespace() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            stream_key("ccs:", id),
            "ccs:ev:00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn entry_ids_are_event_ids_and_read_back() {
        assert_eq!(entry_id(7), "7-0");
        for id in [1, 2, 10_000, u64::MAX] {
            assert_eq!(event_id(&entry_id(id)), Some(id));
        }
        // Ids this module never writes: Redis's own (`<ms>-<seq>` with a seq), junk, 0.
        for bad in ["7-1", "7", "-0", "x-0", "+7-0", "0-0", "1-0-0", ""] {
            assert_eq!(event_id(bad), None, "{bad}");
        }
        // Any entry id orders as Redis orders it.
        assert_eq!(stream_pos("12-3"), Some((12, 3)));
        assert!(stream_pos("9-5") < stream_pos("10-0"));
        assert_eq!(stream_pos("1-x"), None);
    }

    #[test]
    fn entries_become_events_after_the_last_seen_and_stop_at_the_final_one() {
        let entries = vec![
            entry("1-0", &[("kind", "init"), ("data", r#"{"a":1}"#)]),
            entry("2-0", &[("kind", "text"), ("data", r#"{"text":"x"}"#)]),
            entry("3-0", &[("kind", "someday"), ("data", "{}")]),
            entry("4-0", &[("kind", "result"), ("data", "{}"), ("final", "1")]),
            entry("5-0", &[("kind", "text"), ("data", "{}")]),
        ];
        let (events, last) = to_events(&entries, 0);
        assert!(last);
        assert_eq!(
            events.iter().map(|e| (e.id, e.kind)).collect::<Vec<_>>(),
            vec![(1, "init"), (2, "text"), (4, "result")]
        );
        assert_eq!(events[1].value(), serde_json::json!({"text": "x"}));
        let (events, last) = to_events(&entries[..2], 1);
        assert!(!last);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_run_ended_from_its_record_gets_init_only_when_the_reader_has_nothing() {
        let hub = EventHub::plain();
        let spec = crate::model::RunSpec::new("p", "/", 1000);
        let mut task = Task::new(
            spec,
            crate::model::Priority::SYNC_DEFAULT,
            crate::model::TaskMode::Async,
        );
        task.status = crate::model::TaskStatus::Failed;
        let fresh = closing_events(&hub, &task, 0);
        assert_eq!(
            fresh.iter().map(|e| (e.id, e.kind)).collect::<Vec<_>>(),
            vec![(1, "init"), (2, "error")]
        );
        let later = closing_events(&hub, &task, 5);
        assert_eq!(
            later.iter().map(|e| (e.id, e.kind)).collect::<Vec<_>>(),
            vec![(6, "error")]
        );
    }

    #[test]
    fn the_grace_counts_from_the_end_of_the_run() {
        let spec = crate::model::RunSpec::new("p", "/", 1000);
        let mut task = Task::new(
            spec,
            crate::model::Priority::SYNC_DEFAULT,
            crate::model::TaskMode::Async,
        );
        assert_eq!(grace_left(&task), Duration::ZERO);
        task.completed_at = Some(Utc::now());
        assert!(grace_left(&task) > FINAL_GRACE / 2);
        task.completed_at = Some(Utc::now() - chrono::Duration::seconds(60));
        assert_eq!(grace_left(&task), Duration::ZERO);
    }

    /// The commands of a pipeline as lists of arguments (from the RESP it would send).
    fn commands(pipe: &::redis::Pipeline) -> Vec<Vec<String>> {
        let packed = String::from_utf8(pipe.get_packed_pipeline()).expect("utf-8");
        let mut out: Vec<Vec<String>> = Vec::new();
        let mut lines = packed.split("\r\n");
        while let Some(line) = lines.next() {
            if line.starts_with('*') {
                out.push(Vec::new());
            } else if line.starts_with('$') {
                let arg = lines.next().expect("argument").to_string();
                out.last_mut().expect("a command").push(arg);
            }
        }
        out
    }

    #[test]
    fn a_copy_is_capped_and_expires_later_while_the_run_goes_on_than_after_it() {
        let task = uuid::Uuid::nil();
        let key = stream_key("ns:", task);
        let event =
            |id, kind| Arc::new(TaskEvent::new(id, kind, &serde_json::json!({"text": "a"})));
        let copy = |id, kind, last| Copy {
            task,
            event: event(id, kind),
            last,
        };
        let mut pipe = ::redis::pipe();
        append_batch(&mut pipe, "ns:", &[copy(3, "text", false)]);
        append_batch(&mut pipe, "ns:", &[copy(4, "result", true)]);
        let live = LIVE_STREAM_TTL.as_millis().to_string();
        let closed = CLOSED_STREAM_TTL.as_millis().to_string();
        let cap = STREAM_MAX_LEN.to_string();
        let want: Vec<Vec<&str>> = vec![
            vec![
                "XADD",
                &key,
                "MAXLEN",
                "~",
                &cap,
                "3-0",
                "kind",
                "text",
                "data",
                r#"{"text":"a"}"#,
            ],
            vec!["PEXPIRE", &key, &live],
            vec![
                "XADD",
                &key,
                "MAXLEN",
                "~",
                &cap,
                "4-0",
                "kind",
                "result",
                "data",
                r#"{"text":"a"}"#,
                "final",
                "1",
            ],
            vec!["PEXPIRE", &key, &closed],
        ];
        assert_eq!(commands(&pipe), want);
        // One batch: each stream's expiry once, after its last copy (the final one's, here).
        let other = uuid::Uuid::from_u128(1);
        let other_key = stream_key("ns:", other);
        let mut pipe = ::redis::pipe();
        append_batch(
            &mut pipe,
            "ns:",
            &[
                copy(3, "text", false),
                Copy {
                    task: other,
                    event: event(1, "init"),
                    last: false,
                },
                copy(4, "result", true),
            ],
        );
        let shape: Vec<(String, String)> = commands(&pipe)
            .into_iter()
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect();
        let pair = |cmd: &str, key: &str| (cmd.to_string(), key.to_string());
        assert_eq!(
            shape,
            vec![
                pair("XADD", &key),
                pair("XADD", &other_key),
                pair("PEXPIRE", &other_key),
                pair("XADD", &key),
                pair("PEXPIRE", &key),
            ]
        );
        assert_eq!(commands(&pipe)[4][2], closed);
        // A closed copy stays as long as a closed local log; a live one longer.
        assert!(CLOSED_STREAM_TTL >= crate::events::CLOSED_LOG_TTL);
        assert!(LIVE_STREAM_TTL > CLOSED_STREAM_TTL);
    }
}

/// Two instances on one Redis (two hubs, two cluster handles, one store).
#[cfg(test)]
mod redis_tests {
    use std::time::Instant;

    use super::*;
    use crate::events::EventSource;
    use crate::model::{Priority, RunSpec, TaskMode, TaskStatus};
    use crate::store::redis::test_server::{shared_url, test_namespace, RedisServer};
    use crate::store::redis::RedisStore;

    const WITHIN: Duration = Duration::from_secs(10);

    struct Instance {
        hub: Arc<EventHub>,
        cluster: Arc<Cluster>,
    }

    fn instance(url: &str, store: &Arc<RedisStore>) -> Instance {
        let cluster = Cluster::join(url, store.clone()).expect("join");
        let hub = Arc::new(EventHub::plain().with_cluster(cluster.clone()));
        Instance { hub, cluster }
    }

    async fn started_task(store: &Arc<dyn Store>) -> Task {
        let spec = RunSpec::new("p", "/", 1000);
        let task = store
            .insert_task(Task::new(spec, Priority::SYNC_DEFAULT, TaskMode::Async))
            .await
            .expect("insert");
        store
            .start_task(task.id, Utc::now())
            .await
            .expect("start")
            .expect("started")
    }

    /// Everything a reader gets after `after`, until the end (bounded by [`WITHIN`]).
    async fn read_all(mut source: EventSource, mut after: u64) -> Vec<(u64, &'static str)> {
        let mut seen = Vec::new();
        let read = async {
            while let Some(events) = source.next_after(after).await {
                for e in events {
                    after = e.id;
                    seen.push((e.id, e.kind));
                }
            }
        };
        tokio::time::timeout(WITHIN, read)
            .await
            .expect("the reader ends");
        seen
    }

    async fn stream_len(cluster: &Cluster, task: TaskId) -> usize {
        ::redis::cmd("XLEN")
            .arg(stream_key(cluster.prefix(), task))
            .query_async(&mut cluster.conn())
            .await
            .expect("XLEN")
    }

    async fn wait_stream_len(cluster: &Cluster, task: TaskId, n: usize) {
        let deadline = Instant::now() + WITHIN;
        while stream_len(cluster, task).await < n {
            assert!(Instant::now() < deadline, "{n} events were not copied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn another_instance_follows_a_run_with_the_same_ids_and_replays_from_an_id() {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let redis = Arc::new(
            RedisStore::connect(&url, &test_namespace())
                .await
                .expect("connect"),
        );
        let (a, b) = (instance(&url, &redis), instance(&url, &redis));
        let store: Arc<dyn Store> = redis.clone();
        let task = started_task(&store).await;
        // B follows before anything happened, and gets the events while the run goes on.
        let mut source = b.hub.source(&task, &store);
        assert!(matches!(source, EventSource::Remote(_)));
        a.hub.publish(task.id, "init", serde_json::json!({"n": 1}));
        a.hub
            .publish(task.id, "text", serde_json::json!({"text": "a"}));
        let mut live = Vec::new();
        while live.len() < 2 {
            let events = tokio::time::timeout(FOLLOW_BLOCK, source.next_after(live.len() as u64))
                .await
                .expect("an event in less than one blocking read")
                .expect("not the end");
            live.extend(events.iter().map(|e| (e.id, e.kind, e.value())));
        }
        assert_eq!(
            live,
            vec![
                (1, "init", serde_json::json!({"n": 1})),
                (2, "text", serde_json::json!({"text": "a"}))
            ]
        );
        let reader = tokio::spawn(async move {
            let mut seen = vec![(1, "init"), (2, "text")];
            seen.extend(read_all(source, 2).await);
            seen
        });
        a.hub
            .publish(task.id, "text", serde_json::json!({"text": "b"}));
        store.interrupt_processing(Utc::now()).await.expect("end");
        let ended = store.get_task(task.id).await.expect("get").expect("task");
        a.hub.finish(&ended);
        let want = vec![(1, "init"), (2, "text"), (3, "text"), (4, "error")];
        assert_eq!(reader.await.expect("reader"), want);
        // A reads its own log; B, reconnecting after event 2, gets the rest from the copy.
        assert!(matches!(
            a.hub.source(&ended, &store),
            EventSource::Local(_)
        ));
        assert_eq!(read_all(a.hub.source(&ended, &store), 0).await, want);
        assert_eq!(
            read_all(b.hub.source(&ended, &store), 2).await,
            want[2..].to_vec()
        );
        // The copy ends with the run: it expires like a closed local log.
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(stream_key(a.cluster.prefix(), task.id))
            .query_async(&mut a.cluster.conn())
            .await
            .expect("PTTL");
        assert!(
            ttl > 0 && ttl <= CLOSED_STREAM_TTL.as_millis() as i64,
            "{ttl}"
        );
        assert_eq!(a.hub.mirror_dropped() + b.hub.mirror_dropped(), 0);
    }

    #[tokio::test]
    async fn a_run_whose_instance_died_ends_with_the_final_event_of_its_record() {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let redis = Arc::new(
            RedisStore::connect(&url, &test_namespace())
                .await
                .expect("connect"),
        );
        let (a, b) = (instance(&url, &redis), instance(&url, &redis));
        let store: Arc<dyn Store> = redis.clone();
        let task = started_task(&store).await;
        a.hub.publish(task.id, "init", serde_json::Value::Null);
        a.hub
            .publish(task.id, "text", serde_json::json!({"text": "a"}));
        wait_stream_len(&a.cluster, task.id, 2).await;
        let reader = tokio::spawn(read_all(b.hub.source(&task, &store), 0));
        // A is gone without a final event; B (the survivor) ends the record. B's own final
        // event (id 1 in its empty log) is refused by the copy, which A wrote further.
        store.interrupt_processing(Utc::now()).await.expect("end");
        let ended = store.get_task(task.id).await.expect("get").expect("task");
        assert_eq!(ended.status, TaskStatus::Failed);
        b.hub.finish(&ended);
        let seen = reader.await.expect("reader");
        assert_eq!(seen, vec![(1, "init"), (2, "text"), (3, "error")]);
        let deadline = Instant::now() + WITHIN;
        while b.hub.mirror_dropped() == 0 {
            assert!(Instant::now() < deadline, "the out-of-order copy was taken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stream_len(&a.cluster, task.id).await, 2);
    }

    #[tokio::test]
    async fn with_redis_down_publishing_does_not_wait_and_the_copies_are_counted_as_dropped() {
        let mut server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let redis = Arc::new(
            RedisStore::connect(&server.url(), &test_namespace())
                .await
                .expect("connect"),
        );
        let a = instance(&server.url(), &redis);
        let id = uuid::Uuid::new_v4();
        server.kill();
        let started = Instant::now();
        for i in 0..100 {
            a.hub
                .publish(id, "text", serde_json::json!({"text": i.to_string()}));
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "publishing waited for Redis: {:?}",
            started.elapsed()
        );
        let deadline = Instant::now() + WITHIN;
        while a.hub.mirror_dropped() < 100 {
            assert!(
                Instant::now() < deadline,
                "dropped {}",
                a.hub.mirror_dropped()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The local log has them all.
        let log = a.hub.local_run(id).expect("the local log");
        assert_eq!(log.next_after(0).await.expect("events").len(), 100);
    }
}
