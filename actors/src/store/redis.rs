//! [`RedisStore`]: storage on a Redis server, so that the data outlives any one process and
//! several deployments can share one server (each under its own namespace).
//!
//! # Several instances
//! Any number of instances may share a namespace and behave as one service: every
//! check-then-write is one Lua script, and the queue itself lives here ([`queue`]: claims,
//! leases, reaping). Deployments that must not share anything use different namespaces.
//!
//! # Data model
//! Every key starts with the namespace prefix `<ns>:` (`redisNamespace`, default `ccs`). `seq`,
//! times (ms since the epoch) and costs are integers in scores and fields.
//!
//! | key | type | content |
//! |---|---|---|
//! | `seq` | string | the last task seq handed out (`INCR`; never reused, even after deletes) |
//! | `t:<id>` | hash | `doc` (the task as JSON; its own `seq` is ignored), `seq`, `rev` (bumped by every write), and copies of the indexed fields: `status`, `prio`, `sess`, `owner` (absent: anonymous), `costn`, `fin` |
//! | `t-all` | zset | every task, score seq (newest first: `ZREVRANGE`) |
//! | `t-run` | zset | pending tasks in run order, score `(10 - priority) * 2^49 + seq` |
//! | `q-ready` | zset | pending tasks an instance may claim now (not claimed; a session's only if it is the session's earliest live turn), run-order score |
//! | `t-lane:<session>` | zset | a session's live (pending or processing) turns, score seq |
//! | `q-lease` + `q-owner` | zset + hash | claimed tasks: lease expiry (ms, Redis's clock), and the instance holding each |
//! | `t-status:<status>` | zset | tasks of one status, score seq (counts: `ZCARD`) |
//! | `t-session:<id>`, `t-owner:<name>`, `t-anon` | zset | tasks of a session / an API key / anonymous, score seq |
//! | `t-finished` | zset | final tasks, score finished at (retention) |
//! | `t-cost` | string | total cost of the stored tasks in nano-USD (exact integer sums) |
//! | `s:<id>` | hash | `doc` (session JSON), `created`, `updated`, `status`, `path`, `owner`, `search` |
//! | `s-all`, `s-status:<s>`, `s-path:<path>`, `s-owner:<name>`, `s-anon` | zset | sessions, score created at |
//! | `s-updated` | zset | sessions, score updated at (idle deletion) |
//! | `tr:<id>` | hash | the session's CLI transcript ([`cluster::transcripts`](crate::cluster::transcripts)): `data` (absent over the size limit), `sha` (SHA-256, hex), `len`, `by` (instance), `at` (ms); written only while `s:<id>` exists, deleted with it by the session delete scripts |
//! | `stats` + `stats-days` | hash + zset | day (`YYYY-MM-DD`) → statistics JSON; days scored by day number |
//! | `idem:<key>` | hash | idempotency claim: `value`, `until` (ms), with a TTL past `until` |
//! | `wh-jobs` + `wh-jobs-order` | hash + zset | the webhook outbox: id → JSON; ids scored by created at |
//! | `wh-lock:<id>` | string | the instance delivering outbox job `<id>`, with a TTL it renews while it does (`claim_webhook_job`) |
//! | `rl:<limiter key>` | string | shared rate limit state `"<TAT µs>:<remainder>:<scale>"`, expiring when the bucket is full ([`crate::rate_limit::shared`]) |
//! | `stc:<day>`, `stc-seen:<day>`, `stc-days` | hash, set, zset | shared statistics: the day's counters, the tasks counted, the days (scored by day number); expire after retention ([`crate::stats::shared`]) |
//! | `wh-att-seq`, `wh-att-docs`, `wh-att:<task>`, `wh-att-at` | string, hash, zset, zset | attempts: number → JSON; a task's numbers in recording order; `<task>:<n>` scored by time (retention) |
//! | `ev:<task id>` | stream | a run's live events, entry id `<event id>-0`, fields `kind`, `data`, `final` (see [`crate::cluster::events`]); capped, expires after the run |
//! | `ap-docs` + `ap-all`, `ap-pending`, `ap:<task>` | hash + zsets | approvals: `<task>:<id>` → JSON; all, the pending ones, a task's, scored by requested at; deleted with their task |
//! | `schema` | string | the data model's version ([`SCHEMA_VERSION`]); a newer one is refused |
//!
//! The run-order score: priority is 1..=10, so `(10 - priority)` is 0..=9 and each priority has a
//! band of 2^49 seqs; the largest score, 9 * 2^49 + 2^49 = 10 * 2^49 < 2^53, is exact in the
//! double Redis keeps. Insert refuses a seq of 2^49 or more (5.6e14 tasks) rather than mix bands.
//!
//! # Atomicity
//! Redis runs a Lua script with nothing interleaved, so every operation that two instances could
//! race is one script ([`scripts`]): `insert_task` (existence check, `INCR seq`, hash and every
//! index), the compare-and-set that `start_task`, `finish_task`, `set_priority` and
//! `interrupt_processing` end in, deletes with their indexes, session writes, idempotency
//! claims, webhook attempts. Changes that need the task's JSON (the shared `rules` decide the
//! new record in Rust, exactly as in the other backends) read the task with its `rev`, compute
//! the new version, and write it only if `rev` is unchanged; otherwise they read again (the
//! shared queue's start and end skip the first read: the claim handed out the record and its
//! `rev`, and the start's write gives the next). So a final status is written exactly once
//! whoever races. Multi-command writes without a decision
//! (statistics, the webhook outbox) go in `MULTI`/`EXEC`.
//!
//! # Efficiency (10,000+ tasks)
//! No path scans all tasks: a page of pending tasks in run order, of one status, of a session, of
//! an owner, or of everything is a `ZRANGE` on one index plus a `ZCARD` — O(log n + page). A
//! combination of filters scans the smallest of the indexes involved and tests membership in
//! the others (`ZSCORE`); sessions likewise, and a text query scans the smallest applicable
//! session index (substring search has no index). Counts are `ZCARD`s and one `GET`. Retention
//! deletes in batches of [`DELETE_BATCH`], each one script, so Redis is never blocked long.
//!
//! # Durability and errors
//! A write is answered once Redis has applied it; whether it survives a Redis restart is the
//! server's persistence setting (`appendonly yes` with `appendfsync always` for the SQLite
//! backend's guarantee, `everysec` to lose at most a second). Connection problems and timeouts
//! are [`StoreError::Unavailable`] (the `ConnectionManager` reconnects in the background);
//! stored data that cannot be read back is [`StoreError::Corrupt`]. Only a standalone server
//! (or a single shard) is supported: scripts compute key names, which Redis Cluster forbids.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, FromRedisValue, RedisError, ScriptInvocation};
use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::rules;
use super::{SessionFilter, Store, StoreError, StoreResult, TaskCounts, TaskFilter};
use crate::approval::{
    apply_decision, Approval, ApprovalFilter, ApprovalId, ApprovalState, ApprovalStatus, Decided,
};
use crate::model::{Priority, Session, SessionId, Task, TaskId, TaskStatus};
use crate::webhook::{WebhookAttempt, WebhookJob};

pub use queue::{Claimed, Leased, NextClaim, Refused, RunEnd, SessionTurn, TranscriptWrite};

mod queue;
mod scripts;
#[cfg(test)]
pub(crate) mod test_server;

/// The version of the data model above. Bump it (and migrate) when the layout changes.
/// 2: the shared queue's sets (`q-ready`, `t-lane:<session>`, `q-lease`, `q-owner`).
pub const SCHEMA_VERSION: u32 = 2;
/// Records a retention script deletes at most per call.
pub const DELETE_BATCH: u32 = 1000;
/// Reads and compare-and-set attempts before a change to a task that keeps changing gives up.
const CAS_TRIES: usize = 32;
/// A reply slower than this is an outage, not a wait.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection attempts behind one failed call, and the longest pause between them. A call made
/// while Redis is down waits for these, so they are few and short: `/health` and the API answer
/// 503 within about a second instead of hanging; the next call tries again.
const RECONNECT_TRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);
/// Idempotency claims stay this long past their expiry before Redis drops them, so that a
/// caller whose clock lags Redis's still finds a claim it considers live.
const CLAIM_GRACE_MS: i64 = 60_000;
/// Costs are summed as integers of this unit (nano-USD) so totals are exact and return to 0.
const COST_UNIT: f64 = 1e9;
/// One task's cost is clamped to ±this many units (a million USD) so sums cannot overflow.
const COST_CLAMP: f64 = 1e15;

/// The Redis backend. Cheap to clone the connection out of; safe to share behind an `Arc`.
pub struct RedisStore {
    conn: ConnectionManager,
    /// `"<namespace>:"`, the start of every key.
    prefix: String,
}

/// Whether `ns` can be a namespace: 1 to 64 of `A-Z a-z 0-9 _ - .`, so that no namespace is a
/// prefix of another one's keys (`a` vs `a:t`).
pub fn valid_namespace(ns: &str) -> bool {
    (1..=64).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl RedisStore {
    /// Connect to `url` (`redis://[user:password@]host:port/db`) and use the keys under
    /// `namespace`. Fails when the server does not answer or holds a newer data model.
    pub async fn connect(url: &str, namespace: &str) -> StoreResult<RedisStore> {
        if !valid_namespace(namespace) {
            return Err(StoreError::Unavailable(format!(
                "invalid Redis namespace {namespace:?}: use 1 to 64 of A-Z a-z 0-9 _ - ."
            )));
        }
        let client = ::redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid redisUrl: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(RECONNECT_TRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to Redis: {e}")))?;
        let store = RedisStore {
            conn,
            prefix: format!("{namespace}:"),
        };
        store.check_schema().await?;
        Ok(store)
    }

    /// A handle on the managed connection (for the [`cluster`](crate::cluster), which shares it).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `"<namespace>:"`, the start of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn task_key(&self, id: TaskId) -> String {
        self.key(&format!("t:{id}"))
    }

    /// Mark a new namespace with this build's version; bring an older one up to it; refuse one
    /// written by a newer build.
    async fn check_schema(&self) -> StoreResult<()> {
        let key = self.key("schema");
        let (stored,): (Option<String>,) = ::redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(SCHEMA_VERSION)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let stored = stored.unwrap_or_default();
        match stored.parse::<u32>() {
            Ok(1) => {
                let mut inv = scripts::MIGRATE_QUEUE.prepare_invoke();
                inv.arg(&self.prefix).arg(SCHEMA_VERSION);
                let _: i64 = self.run(&inv).await?;
                log::info!(namespace:% = self.prefix.trim_end_matches(':'); "Redis data model upgraded to version {SCHEMA_VERSION} (shared queue)");
                Ok(())
            }
            Ok(v) if v <= SCHEMA_VERSION => Ok(()),
            Ok(v) => Err(StoreError::Unavailable(format!(
                "the Redis data has schema version {v}, newer than this build's {SCHEMA_VERSION}"
            ))),
            Err(_) => Err(StoreError::Corrupt(format!(
                "unreadable schema version {stored:?} at {key}"
            ))),
        }
    }

    /// Run a prepared script on a clone of the managed connection.
    async fn run<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> StoreResult<T> {
        inv.invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &::redis::Cmd) -> StoreResult<T> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    async fn query_pipe<T: FromRedisValue>(&self, pipe: &::redis::Pipeline) -> StoreResult<T> {
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }

    // ---- tasks

    /// A task with the revision it was read at (`None`: missing).
    async fn read_task(&self, id: TaskId) -> StoreResult<Option<(Task, String)>> {
        let v: Vec<Option<String>> = self
            .query(
                ::redis::cmd("HMGET")
                    .arg(self.task_key(id))
                    .arg("doc")
                    .arg("seq")
                    .arg("rev"),
            )
            .await?;
        match v.as_slice() {
            [Some(doc), seq, rev] => {
                let task = decode_task(doc, seq.as_deref())?;
                Ok(Some((task, rev.clone().unwrap_or_default())))
            }
            [None, ..] => Ok(None),
            _ => Err(StoreError::Corrupt("HMGET answered an odd shape".into())),
        }
    }

    /// The arguments every task write ends with (`given` in the scripts' task library).
    fn task_args(
        &self,
        inv: &mut ScriptInvocation<'_>,
        t: &Task,
        mode_or_rev: &str,
    ) -> StoreResult<()> {
        let mut doc_task = t.clone();
        // The seq lives in the hash (the insert script assigns it); the JSON never decides it.
        doc_task.seq = 0;
        let doc = encode("task", &doc_task)?;
        let (has_owner, owner) = match &t.owner {
            Some(o) => ("1", o.as_str()),
            None => ("0", ""),
        };
        inv.arg(&self.prefix)
            .arg(t.id.to_string())
            .arg(mode_or_rev)
            .arg(doc)
            .arg(t.status.as_str())
            .arg(t.priority.get())
            .arg(t.session_id.map(|s| s.to_string()).unwrap_or_default())
            .arg(has_owner)
            .arg(owner)
            .arg(cost_units(t.cost_usd))
            .arg(
                rules::finished_at(t)
                    .map(|f| rules::ms(&f).to_string())
                    .unwrap_or_default(),
            );
        Ok(())
    }

    /// Insert a task, with the shared queue's admission checks: with `exclusive`, refuse a
    /// session turn while the session has a live turn; with `max_pending > 0`, refuse when that
    /// many tasks are pending. Both checks and the insert are one script, so two instances
    /// admitting at once cannot both pass.
    pub(crate) async fn insert_checked(
        &self,
        mut task: Task,
        exclusive: bool,
        max_pending: u64,
    ) -> StoreResult<Result<Task, Refused>> {
        rules::normalize_task(&mut task);
        let mut inv = scripts::INSERT_TASK.prepare_invoke();
        self.task_args(&mut inv, &task, "")?;
        inv.arg(if exclusive { "1" } else { "" }).arg(max_pending);
        let reply: String = self.run(&inv).await?;
        match reply.as_str() {
            "exists" => Err(StoreError::Corrupt(format!(
                "task {} already exists",
                task.id
            ))),
            "exhausted" => Err(StoreError::Unavailable(
                "no task seq left below 2^49 in this namespace".into(),
            )),
            "busy" => Ok(Err(Refused::SessionBusy)),
            other => {
                if let Some(n) = other.strip_prefix("full:") {
                    return Ok(Err(Refused::QueueFull(n.parse().unwrap_or(max_pending))));
                }
                task.seq = other
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("insert answered {other:?}")))?;
                Ok(Ok(task))
            }
        }
    }

    /// Write `new` over the version read at `rev`. `false`: it changed meanwhile.
    async fn cas_task(&self, new: &Task, rev: &str) -> StoreResult<bool> {
        let mut inv = scripts::CAS_TASK.prepare_invoke();
        self.task_args(&mut inv, new, rev)?;
        let written: i64 = self.run(&inv).await?;
        Ok(written == 1)
    }

    /// Read, decide, compare-and-set, until the write lands or `change` declines (`None`).
    async fn update_task<F>(&self, id: TaskId, change: F) -> StoreResult<Option<Task>>
    where
        F: FnMut(Task) -> Option<Task> + Send,
    {
        Ok(self
            .update_task_from(id, None, change)
            .await?
            .map(|(task, _)| task))
    }

    /// [`RedisStore::update_task`] starting from `known` (a record and the revision it was read
    /// at) instead of a read, when the caller has one. Returns the record written and its new
    /// revision.
    async fn update_task_from<F>(
        &self,
        id: TaskId,
        mut known: Option<(Task, String)>,
        mut change: F,
    ) -> StoreResult<Option<(Task, String)>>
    where
        F: FnMut(Task) -> Option<Task> + Send,
    {
        for _ in 0..CAS_TRIES {
            let read = match known.take() {
                Some(k) => Some(k),
                None => self.read_task(id).await?,
            };
            let Some((stored, rev)) = read else {
                return Ok(None);
            };
            let Some(new) = change(stored) else {
                return Ok(None);
            };
            if self.cas_task(&new, &rev).await? {
                return Ok(Some((new, next_rev(&rev)?)));
            }
        }
        Err(StoreError::Unavailable(format!(
            "task {id} kept changing during {CAS_TRIES} attempts to update it"
        )))
    }

    /// Start task `id` (`pending` → `processing`), from `known` when the caller read it (see
    /// [`RedisStore::update_task_from`]). `None` when it is not pending any more.
    async fn start_task_from(
        &self,
        id: TaskId,
        known: Option<(Task, String)>,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<(Task, String)>> {
        self.update_task_from(id, known, |mut t| {
            (t.status == TaskStatus::Pending).then(|| {
                t.status = TaskStatus::Processing;
                t.started_at = Some(rules::trunc(at));
                t.attempts += 1;
                t
            })
        })
        .await
    }

    /// Run the list script (see [`scripts::LIST`]).
    async fn list(&self, q: ListQuery) -> StoreResult<Page> {
        let ListQuery {
            record_prefix,
            order,
            asc,
            mut filters,
            needle,
            limit,
            offset,
        } = q;
        // A single filter in newest-first order is itself an index in that order (scored by
        // seq, or by created for sessions): page it directly instead of scanning it.
        let order = if !asc && filters.len() == 1 {
            filters.pop().unwrap_or(order)
        } else {
            order
        };
        let mut inv = scripts::LIST.prepare_invoke();
        inv.arg(record_prefix)
            .arg(order)
            .arg(if asc { "asc" } else { "desc" })
            .arg(offset)
            .arg(limit)
            .arg(needle);
        for f in filters {
            inv.arg(f);
        }
        let flat: Vec<Option<String>> = self.run(&inv).await?;
        parse_page(flat)
    }

    async fn list_task_page(
        &self,
        order: String,
        asc: bool,
        filters: Vec<String>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<Task>, u64)> {
        let page = self
            .list(ListQuery {
                record_prefix: self.key("t:"),
                order,
                asc,
                filters,
                needle: String::new(),
                limit,
                offset,
            })
            .await?;
        let tasks = page
            .rows
            .iter()
            .map(|(doc, seq)| decode_task(doc, seq.as_deref()))
            .collect::<StoreResult<_>>()?;
        Ok((tasks, page.total))
    }

    /// Run a batched delete script until a batch comes back short; returns the total deleted.
    async fn delete_in_batches(&self, script: &::redis::Script, cut_ms: i64) -> StoreResult<u64> {
        let mut deleted = 0u64;
        loop {
            let mut inv = script.prepare_invoke();
            inv.arg(&self.prefix).arg(cut_ms).arg(DELETE_BATCH);
            let (looked, gone): (u64, u64) = self.run(&inv).await?;
            deleted += gone;
            if looked < u64::from(DELETE_BATCH) {
                return Ok(deleted);
            }
        }
    }

    // ---- sessions

    async fn put_session(&self, session: &Session, mode: &str) -> StoreResult<bool> {
        let mut inv = scripts::PUT_SESSION.prepare_invoke();
        inv.arg(&self.prefix);
        session_args(&mut inv, session, mode)?;
        let written: i64 = self.run(&inv).await?;
        Ok(written == 1)
    }

    /// Members and values of a sorted set + hash pair, by score in `min..=max`.
    async fn read_range(
        &self,
        zset: &str,
        hash: &str,
        min: &str,
        max: &str,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut inv = scripts::READ_RANGE.prepare_invoke();
        inv.key(zset).key(hash).arg(min).arg(max);
        let flat: Vec<Option<String>> = self.run(&inv).await?;
        flat.chunks(2)
            .map(|pair| match pair {
                [Some(m), Some(v)] => Ok((m.clone(), v.clone())),
                _ => Err(StoreError::Corrupt(format!(
                    "{zset} names a member missing from {hash}"
                ))),
            })
            .collect()
    }
}

/// A session as stored: normalised, and its JSON (`doc` in `s:<id>`). Deterministic, so the
/// doc of a session read back equals the stored one as long as this build wrote it.
fn session_doc(session: &Session) -> StoreResult<(Session, String)> {
    let mut s = session.clone();
    rules::normalize_session(&mut s);
    let doc = encode("session", &s)?;
    Ok((s, doc))
}

/// The arguments of a session write (`session_put` in the scripts' session library): id, mode
/// (`insert` or `update`), then the record and the copies of its indexed fields.
fn session_args(inv: &mut ScriptInvocation<'_>, session: &Session, mode: &str) -> StoreResult<()> {
    let (s, doc) = session_doc(session)?;
    let (has_owner, owner) = match &s.owner {
        Some(o) => ("1", o.as_str()),
        None => ("0", ""),
    };
    inv.arg(s.id.to_string())
        .arg(mode)
        .arg(doc)
        .arg(rules::ms(&s.created_at))
        .arg(rules::ms(&s.updated_at))
        .arg(rules::session_status_str(s.status))
        .arg(s.project_path.to_string_lossy().as_ref())
        .arg(has_owner)
        .arg(owner)
        .arg(rules::session_search_text(&s));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// encoding and errors

/// The revision a compare-and-set over `rev` writes (the scripts' `cas`: one more).
fn next_rev(rev: &str) -> StoreResult<String> {
    rev.parse::<u64>()
        .ok()
        .and_then(|r| r.checked_add(1))
        .map(|r| r.to_string())
        .ok_or_else(|| StoreError::Corrupt(format!("a task has revision {rev:?}")))
}

fn redis_err(e: RedisError) -> StoreError {
    // A reply of the wrong type, or a key of the wrong type in our namespace, means the stored
    // data is not what this build wrote; everything else is the server or the network.
    if e.kind() == ErrorKind::UnexpectedReturnType || e.code() == Some("WRONGTYPE") {
        StoreError::Corrupt(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, doc: &str) -> StoreResult<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("stored {what}: {e}")))
}

/// A stored task: its JSON, with the seq kept beside it in the hash.
fn decode_task(doc: &str, seq: Option<&str>) -> StoreResult<Task> {
    let mut t: Task = decode("task", doc)?;
    let seq = seq.unwrap_or_default();
    t.seq = seq
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("task {} has seq {seq:?}", t.id)))?;
    Ok(t)
}

/// What the list script is asked for: records under `record_prefix` that are in every
/// `filters` set, in the order of the `order` set, matching `needle` (empty: any), one page.
struct ListQuery {
    record_prefix: String,
    order: String,
    asc: bool,
    filters: Vec<String>,
    needle: String,
    limit: u32,
    offset: u32,
}

/// A page of stored records: each one's JSON and (tasks only) its seq, and the total matching.
struct Page {
    total: u64,
    rows: Vec<(String, Option<String>)>,
}

/// Parse the list script's reply: total, then (id, doc, seq) triples.
fn parse_page(flat: Vec<Option<String>>) -> StoreResult<Page> {
    let mut it = flat.into_iter();
    let total = it
        .next()
        .flatten()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Corrupt("the list script answered no total".into()))?;
    let rest: Vec<Option<String>> = it.collect();
    let rows = rest
        .chunks(3)
        .map(|row| match row {
            [Some(_), Some(doc), seq] => Ok((doc.clone(), seq.clone())),
            [id, _, _] => Err(StoreError::Corrupt(format!(
                "an index names {:?}, which has no record",
                id.as_deref().unwrap_or("?")
            ))),
            _ => Err(StoreError::Corrupt(
                "the list script answered a short row".into(),
            )),
        })
        .collect::<StoreResult<_>>()?;
    Ok(Page { total, rows })
}

/// A cost as an integer number of [`COST_UNIT`]s (what the scripts add up).
fn cost_units(cost: Option<f64>) -> i64 {
    let c = cost.unwrap_or(0.0);
    if !c.is_finite() {
        return 0;
    }
    // `as` saturates; the clamp keeps any sum of stored tasks far from i64's limits.
    (c * COST_UNIT).round().clamp(-COST_CLAMP, COST_CLAMP) as i64
}

fn day_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn owner_filter(owner: &Option<Option<String>>, named: &str, anon: &str) -> Option<String> {
    match owner {
        None => None,
        Some(Some(o)) => Some(format!("{named}{o}")),
        Some(None) => Some(anon.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> StoreResult<()> {
        let pong: String = self.query(&::redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("PING answered {pong:?}")))
        }
    }

    async fn insert_task(&self, task: Task) -> StoreResult<Task> {
        match self.insert_checked(task, false, 0).await? {
            Ok(task) => Ok(task),
            Err(refused) => Err(StoreError::Corrupt(format!(
                "insert without admission checks was refused: {refused:?}"
            ))),
        }
    }

    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>> {
        Ok(self.read_task(id).await?.map(|(t, _)| t))
    }

    async fn start_task(&self, id: TaskId, at: DateTime<Utc>) -> StoreResult<Option<Task>> {
        Ok(self
            .start_task_from(id, None, at)
            .await?
            .map(|(task, _)| task))
    }

    async fn finish_task(&self, task: &Task) -> StoreResult<bool> {
        if !task.status.is_final() {
            log::warn!(task:% = task.id, status = task.status.as_str(); "finish_task called with a live status; nothing written");
            return Ok(false);
        }
        let written = self
            .update_task(task.id, |stored| {
                (!stored.status.is_final()).then(|| rules::merge_final(&stored, task))
            })
            .await?;
        Ok(written.is_some())
    }

    async fn set_priority(&self, id: TaskId, priority: Priority) -> StoreResult<bool> {
        let written = self
            .update_task(id, |mut t| {
                (t.status == TaskStatus::Pending).then(|| {
                    t.priority = priority;
                    t
                })
            })
            .await?;
        Ok(written.is_some())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<(Vec<Task>, u64)> {
        let mut filters = Vec::new();
        let (order, asc) = if filter.status == Some(TaskStatus::Pending) {
            // The run-order set holds exactly the pending tasks: it is the status filter too.
            (self.key("t-run"), true)
        } else {
            if let Some(st) = filter.status {
                filters.push(self.key(&format!("t-status:{}", st.as_str())));
            }
            (self.key("t-all"), false)
        };
        if let Some(s) = filter.session_id {
            filters.push(self.key(&format!("t-session:{s}")));
        }
        filters.extend(owner_filter(
            &filter.owner,
            &self.key("t-owner:"),
            &self.key("t-anon"),
        ));
        self.list_task_page(order, asc, filters, filter.limit, filter.offset)
            .await
    }

    async fn pending_tasks(&self) -> StoreResult<Vec<Task>> {
        let (tasks, _) = self
            .list_task_page(self.key("t-run"), true, Vec::new(), 0, 0)
            .await?;
        Ok(tasks)
    }

    async fn interrupt_processing(&self, at: DateTime<Utc>) -> StoreResult<Vec<TaskId>> {
        let ids: Vec<String> = self
            .query(
                ::redis::cmd("ZRANGE")
                    .arg(self.key("t-status:processing"))
                    .arg(0)
                    .arg(-1),
            )
            .await?;
        let mut hit = Vec::with_capacity(ids.len());
        for raw in ids {
            let id: TaskId = raw
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("task index holds {raw:?}")))?;
            let changed = self
                .update_task(id, |mut t| {
                    (t.status == TaskStatus::Processing).then(|| {
                        rules::interrupt(&mut t, at);
                        t
                    })
                })
                .await?;
            if changed.is_some() {
                hit.push(id);
            }
        }
        Ok(hit)
    }

    async fn task_counts(&self) -> StoreResult<TaskCounts> {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for st in TaskStatus::ALL {
            pipe.cmd("ZCARD")
                .arg(self.key(&format!("t-status:{}", st.as_str())));
        }
        pipe.cmd("GET").arg(self.key("t-cost"));
        // One reply per status, in `TaskStatus::ALL` order, then the cost sum.
        let (a, b, c, d, e, f, cost): (u64, u64, u64, u64, u64, u64, Option<i64>) =
            self.query_pipe(&pipe).await?;
        let cards = [a, b, c, d, e, f];
        let by_status = TaskStatus::ALL
            .into_iter()
            .zip(cards)
            .filter(|(_, n)| *n > 0)
            .collect();
        Ok(TaskCounts {
            by_status,
            total_cost_usd: cost.unwrap_or(0) as f64 / COST_UNIT,
        })
    }

    async fn delete_tasks_finished_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.delete_in_batches(&scripts::DELETE_FINISHED, rules::ms(&before))
            .await
    }

    // ---- approvals

    async fn insert_approval(&self, approval: &Approval) -> StoreResult<()> {
        let doc = encode("approval", approval)?;
        let member = format!("{}:{}", approval.task_id, approval.id);
        let at = rules::ms(&approval.requested_at);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.key("ap-docs"))
            .arg(&member)
            .arg(doc)
            .ignore()
            .cmd("ZADD")
            .arg(self.key("ap-all"))
            .arg(at)
            .arg(&member)
            .ignore()
            .cmd("ZADD")
            .arg(self.key(&format!("ap:{}", approval.task_id)))
            .arg(at)
            .arg(&member)
            .ignore();
        if approval.is_pending() {
            pipe.cmd("ZADD")
                .arg(self.key("ap-pending"))
                .arg(at)
                .arg(&member)
                .ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }

    async fn task_approvals(&self, task: TaskId) -> StoreResult<Vec<Approval>> {
        self.read_range(
            &self.key(&format!("ap:{task}")),
            &self.key("ap-docs"),
            "-inf",
            "+inf",
        )
        .await?
        .iter()
        .map(|(_, doc)| decode("approval", doc))
        .collect()
    }

    async fn list_approvals(&self, filter: &ApprovalFilter) -> StoreResult<Vec<Approval>> {
        // The pending ones have an index of their own (the list people poll); other statuses
        // are filtered from all approvals, which retention bounds with their tasks.
        let order = match filter.status {
            Some(ApprovalStatus::Pending) => "ap-pending",
            _ => "ap-all",
        };
        let mut out = Vec::new();
        for (_, doc) in self
            .read_range(&self.key(order), &self.key("ap-docs"), "-inf", "+inf")
            .await?
        {
            let a: Approval = decode("approval", &doc)?;
            if filter.matches(&a) {
                out.push(a);
                if filter.limit > 0 && out.len() >= filter.limit as usize {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn decide_approval(
        &self,
        task: TaskId,
        id: ApprovalId,
        state: ApprovalState,
    ) -> StoreResult<Decided> {
        let member = format!("{task}:{id}");
        let doc: Option<String> = self
            .query(::redis::cmd("HGET").arg(self.key("ap-docs")).arg(&member))
            .await?;
        let Some(doc) = doc else {
            return Ok(Decided::Missing);
        };
        let mut a: Approval = decode("approval", &doc)?;
        if !apply_decision(&mut a, state) {
            return Ok(Decided::Already(a));
        }
        let mut inv = scripts::DECIDE_APPROVAL.prepare_invoke();
        inv.key(self.key("ap-docs"))
            .key(self.key("ap-pending"))
            .arg(&member)
            .arg(encode("approval", &a)?);
        let (code, stored): (i64, Option<String>) = match self.run::<Vec<String>>(&inv).await? {
            v if v.len() == 2 => (v[0].parse().unwrap_or(0), Some(v[1].clone())),
            v => (v.first().and_then(|c| c.parse().ok()).unwrap_or(0), None),
        };
        match (code, stored) {
            (2, _) => Ok(Decided::Now(a)),
            (1, Some(doc)) => Ok(Decided::Already(decode("approval", &doc)?)),
            _ => Ok(Decided::Missing),
        }
    }

    // ---- sessions

    async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        if self.put_session(session, "insert").await? {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "session {} already exists",
                session.id
            )))
        }
    }

    async fn get_session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        let doc: Option<String> = self
            .query(
                ::redis::cmd("HGET")
                    .arg(self.key(&format!("s:{id}")))
                    .arg("doc"),
            )
            .await?;
        doc.as_deref().map(|d| decode("session", d)).transpose()
    }

    async fn update_session(&self, session: &Session) -> StoreResult<bool> {
        self.put_session(session, "update").await
    }

    async fn delete_session(&self, id: SessionId) -> StoreResult<bool> {
        let mut inv = scripts::DELETE_SESSION.prepare_invoke();
        inv.arg(&self.prefix).arg(id.to_string());
        let n: i64 = self.run(&inv).await?;
        Ok(n == 1)
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> StoreResult<(Vec<Session>, u64)> {
        let mut filters = Vec::new();
        if let Some(st) = filter.status {
            filters.push(self.key(&format!("s-status:{}", rules::session_status_str(st))));
        }
        if let Some(p) = &filter.project_path {
            filters.push(self.key(&format!("s-path:{p}")));
        }
        filters.extend(owner_filter(
            &filter.owner,
            &self.key("s-owner:"),
            &self.key("s-anon"),
        ));
        let needle = filter
            .query
            .as_deref()
            .map(rules::query_needle)
            .unwrap_or_default();
        // A needle that is empty matches everything, as `contains("")` does elsewhere.
        let page = self
            .list(ListQuery {
                record_prefix: self.key("s:"),
                order: self.key("s-all"),
                asc: false,
                filters,
                needle,
                limit: filter.limit,
                offset: filter.offset,
            })
            .await?;
        let sessions = page
            .rows
            .iter()
            .map(|(doc, _)| decode("session", doc))
            .collect::<StoreResult<_>>()?;
        Ok((sessions, page.total))
    }

    async fn delete_sessions_idle_since(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.delete_in_batches(&scripts::DELETE_IDLE_SESSIONS, rules::ms(&before))
            .await
    }

    // ---- statistics

    async fn save_stats_day(&self, day: NaiveDate, doc: &serde_json::Value) -> StoreResult<()> {
        let doc = encode("statistics", doc)?;
        let text = day_text(day);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.key("stats"))
            .arg(&text)
            .arg(doc)
            .ignore()
            .cmd("ZADD")
            .arg(self.key("stats-days"))
            .arg(day.num_days_from_ce())
            .arg(&text)
            .ignore();
        self.query_pipe::<()>(&pipe).await
    }

    async fn load_stats_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<(NaiveDate, serde_json::Value)>> {
        if from > to {
            return Ok(Vec::new());
        }
        let rows = self
            .read_range(
                &self.key("stats-days"),
                &self.key("stats"),
                &from.num_days_from_ce().to_string(),
                &to.num_days_from_ce().to_string(),
            )
            .await?;
        rows.into_iter()
            .map(|(day, doc)| {
                let d = NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                    .map_err(|e| StoreError::Corrupt(format!("stored day {day:?}: {e}")))?;
                Ok((d, decode("statistics", &doc)?))
            })
            .collect()
    }

    async fn prune_stats_before(&self, day: NaiveDate) -> StoreResult<u64> {
        let mut inv = scripts::PRUNE_RANGE.prepare_invoke();
        inv.key(self.key("stats-days"))
            .key(self.key("stats"))
            .arg(day.num_days_from_ce());
        self.run(&inv).await
    }

    // ---- idempotency

    async fn claim_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<serde_json::Value>> {
        let doc = encode("idempotency claim", value)?;
        let (now_ms, until_ms) = (rules::ms(&now), rules::ms(&expires_at));
        let ttl = until_ms.saturating_sub(now_ms).max(0) + CLAIM_GRACE_MS;
        let mut inv = scripts::CLAIM.prepare_invoke();
        inv.key(self.key(&format!("idem:{key}")))
            .arg(doc)
            .arg(now_ms)
            .arg(until_ms)
            .arg(ttl);
        let earlier: Option<String> = self.run(&inv).await?;
        earlier
            .as_deref()
            .map(|d| decode("idempotency claim", d))
            .transpose()
    }

    async fn release_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<bool> {
        let doc = encode("idempotency claim", value)?;
        let mut inv = scripts::RELEASE_CLAIM.prepare_invoke();
        inv.key(self.key(&format!("idem:{key}"))).arg(doc);
        let deleted: i64 = self.run(&inv).await?;
        Ok(deleted > 0)
    }

    // ---- webhooks

    async fn save_webhook_job(&self, job: &WebhookJob) -> StoreResult<()> {
        let mut job = job.clone();
        rules::normalize_webhook_job(&mut job);
        let doc = encode("webhook delivery", &job)?;
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.key("wh-jobs"))
            .arg(&job.webhook_id)
            .arg(doc)
            .ignore()
            .cmd("ZADD")
            .arg(self.key("wh-jobs-order"))
            .arg(rules::ms(&job.created_at))
            .arg(&job.webhook_id)
            .ignore();
        self.query_pipe::<()>(&pipe).await
    }

    async fn delete_webhook_job(&self, webhook_id: &str) -> StoreResult<bool> {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(self.key("wh-jobs"))
            .arg(webhook_id)
            .cmd("ZREM")
            .arg(self.key("wh-jobs-order"))
            .arg(webhook_id)
            .ignore();
        let (removed,): (i64,) = self.query_pipe(&pipe).await?;
        Ok(removed == 1)
    }

    async fn pending_webhook_jobs(&self) -> StoreResult<Vec<WebhookJob>> {
        self.read_range(
            &self.key("wh-jobs-order"),
            &self.key("wh-jobs"),
            "-inf",
            "+inf",
        )
        .await?
        .iter()
        .map(|(_, doc)| decode("webhook delivery", doc))
        .collect()
    }

    async fn claim_webhook_job(
        &self,
        webhook_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<Option<WebhookJob>> {
        let mut inv = scripts::CLAIM_WEBHOOK.prepare_invoke();
        inv.key(self.key(&format!("wh-lock:{webhook_id}")))
            .key(self.key("wh-jobs"))
            .arg(owner)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(webhook_id);
        let doc: Option<String> = self.run(&inv).await?;
        doc.as_deref()
            .map(|d| decode("webhook delivery", d))
            .transpose()
    }

    async fn release_webhook_job(&self, webhook_id: &str, owner: &str) -> StoreResult<()> {
        let mut inv = scripts::RELEASE_WEBHOOK.prepare_invoke();
        inv.key(self.key(&format!("wh-lock:{webhook_id}")))
            .arg(owner);
        self.run::<i64>(&inv).await.map(|_| ())
    }

    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> StoreResult<()> {
        let mut attempt = attempt.clone();
        rules::normalize_webhook_attempt(&mut attempt);
        let doc = encode("webhook attempt", &attempt)?;
        let mut inv = scripts::RECORD_ATTEMPT.prepare_invoke();
        inv.key(self.key("wh-att-seq"))
            .key(self.key("wh-att-docs"))
            .key(self.key(&format!("wh-att:{}", attempt.task_id)))
            .key(self.key("wh-att-at"))
            .arg(doc)
            .arg(rules::ms(&attempt.at))
            .arg(attempt.task_id.to_string());
        self.run::<String>(&inv).await.map(|_| ())
    }

    async fn webhook_attempts(&self, task_id: TaskId) -> StoreResult<Vec<WebhookAttempt>> {
        self.read_range(
            &self.key(&format!("wh-att:{task_id}")),
            &self.key("wh-att-docs"),
            "-inf",
            "+inf",
        )
        .await?
        .iter()
        .map(|(_, doc)| decode("webhook attempt", doc))
        .collect()
    }

    async fn prune_webhook_attempts_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let cut = rules::ms(&before);
        let mut deleted = 0u64;
        loop {
            let mut inv = scripts::PRUNE_ATTEMPTS.prepare_invoke();
            inv.arg(&self.prefix).arg(cut).arg(DELETE_BATCH);
            let n: u64 = self.run(&inv).await?;
            deleted += n;
            if n < u64::from(DELETE_BATCH) {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::test_server::{shared_url, test_namespace, RedisServer};
    use super::*;
    use crate::store::conformance::fixtures::{at, finished, session, task};

    async fn fresh() -> (RedisStore, String) {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = test_namespace();
        let store = RedisStore::connect(&url, &ns).await.expect("connect");
        (store, ns)
    }

    async fn raw(store: &RedisStore, args: &[&str]) -> ::redis::Value {
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        store.query(&cmd).await.expect("raw command")
    }

    #[test]
    fn namespaces_are_checked() {
        for ok in ["ccs", "prod-eu.1", "a_b", &"x".repeat(64)] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", "a:b", "a b", "ü", "{x}", &"x".repeat(65)] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn costs_are_exact_integers() {
        assert_eq!(cost_units(None), 0);
        assert_eq!(cost_units(Some(0.0375)), 37_500_000);
        assert_eq!(cost_units(Some(f64::NAN)), 0);
        assert_eq!(cost_units(Some(1e300)), 1e15 as i64);
        let sum = cost_units(Some(0.1)) + cost_units(Some(0.2));
        assert_eq!(sum as f64 / COST_UNIT, 0.3);
    }

    #[tokio::test]
    async fn run_order_holds_at_the_top_of_the_seq_range_and_past_it_inserts_are_refused() {
        let (store, _) = fresh().await;
        // Just below the band size, where a float score without care would lose the seq.
        let band: u64 = 1 << 49;
        let start = (band - 8).to_string();
        raw(&store, &["SET", &store.key("seq"), &start]).await;
        let low = store.insert_task(task(1)).await.expect("insert");
        let high = store.insert_task(task(10)).await.expect("insert");
        let mid_a = store.insert_task(task(5)).await.expect("insert");
        let mid_b = store.insert_task(task(5)).await.expect("insert");
        let high_b = store.insert_task(task(10)).await.expect("insert");
        assert_eq!(high_b.seq, band - 3);
        let order: Vec<TaskId> = store
            .pending_tasks()
            .await
            .expect("pending")
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(order, vec![high.id, high_b.id, mid_a.id, mid_b.id, low.id]);
        store.insert_task(task(5)).await.expect("band - 2");
        store.insert_task(task(5)).await.expect("band - 1");
        let refused = store.insert_task(task(5)).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        // Nothing half-written by the refused insert.
        assert_eq!(store.task_counts().await.expect("counts").total(), 7);
    }

    #[tokio::test]
    async fn two_instances_racing_write_a_final_status_once() {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = test_namespace();
        let a = Arc::new(RedisStore::connect(&url, &ns).await.expect("connect a"));
        let b = Arc::new(RedisStore::connect(&url, &ns).await.expect("connect b"));
        for round in 0..20 {
            let t = a.insert_task(task(5)).await.expect("insert");
            // Both try to start it: exactly one may run it.
            let (sa, sb) = tokio::join!(a.start_task(t.id, at(1)), b.start_task(t.id, at(2)));
            let started = [sa.expect("start a"), sb.expect("start b")];
            assert_eq!(started.iter().flatten().count(), 1, "round {round}");
            // Completion on one, cancel on the other: exactly one wins, and its record stays.
            let done = finished(&t, TaskStatus::Completed, 0.5, 10);
            let cancel = finished(&t, TaskStatus::Cancelled, 0.0, 11);
            let (fa, fb) = tokio::join!(a.finish_task(&done), b.finish_task(&cancel));
            let (fa, fb) = (fa.expect("finish a"), fb.expect("finish b"));
            assert!(fa ^ fb, "round {round}: {fa} {fb}");
            let stored = b.get_task(t.id).await.expect("get").expect("present");
            assert_eq!(stored.status, if fa { done.status } else { cancel.status });
            assert_eq!(stored.attempts, 1);
        }
        let counts = a.task_counts().await.expect("counts");
        assert_eq!(counts.get(TaskStatus::Processing), 0);
        assert_eq!(counts.total(), 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_from_two_instances_get_distinct_seqs() {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = test_namespace();
        let stores = [
            Arc::new(RedisStore::connect(&url, &ns).await.expect("connect")),
            Arc::new(RedisStore::connect(&url, &ns).await.expect("connect")),
        ];
        let mut handles = Vec::new();
        for i in 0..100 {
            let s = Arc::clone(&stores[i % 2]);
            handles.push(tokio::spawn(async move {
                s.insert_task(task(1 + (i % 10) as i64)).await
            }));
        }
        let mut seqs = std::collections::HashSet::new();
        for h in handles {
            let t = h.await.expect("join").expect("insert");
            assert!(seqs.insert(t.seq), "duplicate seq {}", t.seq);
        }
        let pending = stores[1].pending_tasks().await.expect("pending");
        assert_eq!(pending.len(), 100);
        assert!(pending
            .windows(2)
            .all(|w| (std::cmp::Reverse(w[0].priority), w[0].seq)
                < (std::cmp::Reverse(w[1].priority), w[1].seq)));
    }

    #[tokio::test]
    async fn namespaces_do_not_see_each_other_and_data_outlives_the_connection() {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let (a, ns_a) = fresh().await;
        let (b, _) = fresh().await;
        let t = a.insert_task(task(5)).await.expect("insert");
        let s = session(0);
        a.insert_session(&s).await.expect("session");
        assert_eq!(b.get_task(t.id).await.expect("get"), None);
        assert_eq!(b.task_counts().await.expect("counts").total(), 0);
        assert_eq!(
            b.list_sessions(&SessionFilter::default())
                .await
                .expect("list")
                .1,
            0
        );
        drop(a);
        // A new process on the same namespace: everything is there and seq continues.
        let again = RedisStore::connect(&url, &ns_a).await.expect("reconnect");
        assert_eq!(again.get_task(t.id).await.expect("get"), Some(t.clone()));
        assert_eq!(again.get_session(s.id).await.expect("get"), Some(s));
        assert!(again.insert_task(task(5)).await.expect("insert").seq > t.seq);
    }

    #[tokio::test]
    async fn unreadable_records_are_corrupt_not_panics() {
        let (store, _) = fresh().await;
        let t = store.insert_task(task(5)).await.expect("insert");
        let s = session(0);
        store.insert_session(&s).await.expect("session");
        let tkey = store.task_key(t.id);
        raw(&store, &["HSET", &tkey, "doc", "{\"id\": 1"]).await;
        raw(
            &store,
            &["HSET", &store.key(&format!("s:{}", s.id)), "doc", "null"],
        )
        .await;
        raw(&store, &["HSET", &store.key("stats"), "2026-13-45", "{}"]).await;
        raw(
            &store,
            &["ZADD", &store.key("stats-days"), "739617", "2026-13-45"],
        )
        .await;
        for r in [
            store.get_task(t.id).await.map(|_| ()),
            store.pending_tasks().await.map(|_| ()),
            store.start_task(t.id, at(1)).await.map(|_| ()),
            store.get_session(s.id).await.map(|_| ()),
            store
                .list_sessions(&SessionFilter::default())
                .await
                .map(|_| ()),
            store
                .load_stats_days(
                    NaiveDate::from_ymd_opt(1, 1, 1).expect("date"),
                    NaiveDate::from_ymd_opt(9999, 1, 1).expect("date"),
                )
                .await
                .map(|_| ()),
        ] {
            assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
        }
        // A key of another type where a hash belongs: corrupt too.
        let other = store.insert_task(task(5)).await.expect("insert");
        raw(&store, &["DEL", &store.task_key(other.id)]).await;
        raw(&store, &["SET", &store.task_key(other.id), "x"]).await;
        let r = store.get_task(other.id).await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
        // The store keeps serving everything else.
        let fine = store.insert_task(task(5)).await.expect("insert");
        assert!(store.get_task(fine.id).await.expect("get").is_some());
        store.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn a_newer_data_model_is_refused() {
        let (store, ns) = fresh().await;
        raw(
            &store,
            &[
                "SET",
                &store.key("schema"),
                &(SCHEMA_VERSION + 1).to_string(),
            ],
        )
        .await;
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let r = RedisStore::connect(&url, &ns).await;
        assert!(
            matches!(r, Err(StoreError::Unavailable(ref m)) if m.contains("newer")),
            "{:?}",
            r.err()
        );
        let bad = RedisStore::connect(&url, "a:b").await;
        assert!(matches!(bad, Err(StoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn an_outage_is_unavailable_and_the_store_recovers_when_redis_is_back() {
        let mut server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        let port = server.port();
        let store = RedisStore::connect(&server.url(), "ccs")
            .await
            .expect("connect");
        let t = store.insert_task(task(5)).await.expect("insert");
        server.kill();
        let t0 = Instant::now();
        for r in [
            store.ping().await.map(|_| ()),
            store.get_task(t.id).await.map(|_| ()),
            store.insert_task(task(5)).await.map(|_| ()),
            store.list_tasks(&TaskFilter::default()).await.map(|_| ()),
        ] {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        // Answered, not hung on reconnection attempts (about 0.3 s each here).
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
        // Nothing listens there any more: connecting anew is refused the same way.
        let url = format!("redis://127.0.0.1:{port}/");
        assert!(matches!(
            RedisStore::connect(&url, "ccs").await.err(),
            Some(StoreError::Unavailable(_))
        ));
        // A server back on the same port (empty: it kept nothing): the same store reconnects.
        let back = RedisServer::start_on(port).unwrap_or_else(|e| panic!("{e}"));
        let end = Instant::now() + Duration::from_secs(10);
        while store.ping().await.is_err() {
            assert!(Instant::now() < end, "the store did not reconnect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store
            .insert_task(task(5))
            .await
            .expect("insert after reconnecting");
        drop(back);
    }

    /// Efficiency with 10,000+ tasks on the machine at hand:
    /// `cargo test -p actors --release store::redis::tests::bench -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn bench_listing_10k_tasks() {
        const N: usize = 10_000;
        let (store, _) = fresh().await;
        let store = Arc::new(store);
        let sess = uuid::Uuid::new_v4();
        let t0 = Instant::now();
        let mut handles = Vec::with_capacity(N);
        for i in 0..N {
            let store = Arc::clone(&store);
            handles.push(tokio::spawn(async move {
                let mut t = task(1 + (i % 10) as i64);
                if i % 100 == 0 {
                    t.session_id = Some(sess);
                }
                t.owner = Some(format!("key-{}", i % 4));
                store.insert_task(t).await
            }));
        }
        for h in handles {
            h.await.expect("join").expect("insert");
        }
        let insert_s = t0.elapsed().as_secs_f64();
        let time = |label: &'static str, f: TaskFilter| {
            let store = Arc::clone(&store);
            async move {
                let t0 = Instant::now();
                for _ in 0..20 {
                    store.list_tasks(&f).await.expect("list");
                }
                println!(
                    "{label}: {:.2} ms",
                    t0.elapsed().as_secs_f64() * 1000.0 / 20.0
                );
            }
        };
        println!(
            "{N} concurrent inserts: {insert_s:.2} s = {:.0}/s",
            N as f64 / insert_s
        );
        let page = |status, session_id, owner| TaskFilter {
            status,
            session_id,
            owner,
            limit: 50,
            offset: 0,
        };
        time(
            "pending page of 50 in run order",
            page(Some(TaskStatus::Pending), None, None),
        )
        .await;
        time("newest 50 of all", page(None, None, None)).await;
        time("a session's tasks (100)", page(None, Some(sess), None)).await;
        time(
            "pending of one owner (2,500 scanned)",
            page(Some(TaskStatus::Pending), None, Some(Some("key-1".into()))),
        )
        .await;
        let t0 = Instant::now();
        store.task_counts().await.expect("counts");
        println!("task_counts: {:.2} ms", t0.elapsed().as_secs_f64() * 1000.0);
    }

    #[tokio::test]
    async fn one_instance_at_a_time_holds_a_webhook_delivery_until_its_claim_expires() {
        let (store, _) = fresh().await;
        let job = crate::store::conformance::fixtures::webhook_job(uuid::Uuid::new_v4(), 0);
        store.save_webhook_job(&job).await.expect("save");
        let id = job.webhook_id.as_str();
        let long = Duration::from_secs(30);
        assert!(store
            .claim_webhook_job(id, "a", long)
            .await
            .expect("claim")
            .is_some());
        assert!(store
            .claim_webhook_job(id, "b", long)
            .await
            .expect("claim")
            .is_none());
        // Releasing someone else's claim does nothing.
        store.release_webhook_job(id, "b").await.expect("release");
        assert!(store
            .claim_webhook_job(id, "b", long)
            .await
            .expect("claim")
            .is_none());
        store.release_webhook_job(id, "a").await.expect("release");
        // Released: b takes it, briefly; a renewal keeps it b's; once b stops renewing, the
        // claim expires and a can take it over.
        let short = Duration::from_millis(200);
        assert!(store
            .claim_webhook_job(id, "b", short)
            .await
            .expect("claim")
            .is_some());
        assert!(store
            .claim_webhook_job(id, "b", short)
            .await
            .expect("renew")
            .is_some());
        assert!(store
            .claim_webhook_job(id, "a", long)
            .await
            .expect("claim")
            .is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if store
                .claim_webhook_job(id, "a", long)
                .await
                .expect("claim")
                .is_some()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the claim never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store
            .claim_webhook_job(id, "b", long)
            .await
            .expect("claim")
            .is_none());
    }
}
