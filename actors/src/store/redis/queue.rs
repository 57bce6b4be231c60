//! The shared queue's operations on the Redis backend: admission, claims, leases, reaping.
//!
//! Every instance on one namespace takes its work from the same sets (see the data model in
//! the parent module): `q-ready` (claimable now, in run order), `t-lane:<session>` (a session's
//! live turns), `q-lease` + `q-owner` (claimed tasks: lease expiry by Redis's clock, and the
//! instance holding each). The task scripts keep `q-ready` and the lanes right on every write,
//! so a claim is one `ZRANGE` on `q-ready` however many tasks wait behind a busy session.
//!
//! Life of a task in the shared queue: inserted `pending` (in `q-ready` unless its session has
//! an earlier live turn) → claimed by an instance (out of `q-ready`, leased; the claim hands
//! out the record with its revision) → started by it (`processing`, a compare-and-set over that
//! revision, so no read) → final and released in one script, which also stores the session's
//! transcript and accounting and claims the next task for the freed slot
//! ([`RedisStore::finish_leased`]; when someone else ended the task meanwhile, the final write
//! and the release go separately). Each Redis round trip holds a slot, so a drained run costs
//! two on its slot's path: the start, and the end with the next claim. An instance renews its leases while
//! it runs them; a lease that expires (the instance died or lost Redis for longer than the
//! lease) is reaped by another: a task that never started is queued again (it never ran, so it
//! still runs exactly once), a `processing` one ends `failed`/`interrupted` (never run twice).

use chrono::{DateTime, Utc};

use super::{rules, scripts, RedisStore};
use ::redis::ScriptInvocation;

use crate::model::{Session, SessionId, Task, TaskId, TaskStatus};
use crate::store::{StoreError, StoreResult};

/// Why the shared queue refused a new task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A sync turn on a session that has a live turn (on any instance).
    SessionBusy,
    /// `taskQueue.maxPending` tasks are pending across the instances.
    QueueFull(u64),
}

/// What a claim returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    /// Tasks pending in the namespace when the claim ran (all instances).
    pub pending: u64,
    /// The tasks now leased to the claimant, in run order; still `pending` until it starts them.
    pub tasks: Vec<Leased>,
}

impl Claimed {
    /// The claimed tasks' ids, in run order.
    pub fn ids(&self) -> Vec<TaskId> {
        self.tasks.iter().map(|l| l.task.id).collect()
    }
}

/// A task leased to this instance with the record as the claim (or the start) wrote or read
/// it, and that record's revision: the next write goes over that revision without reading the
/// task first, and reads only if someone else changed it meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub task: Task,
    rev: String,
}

/// A session's accounting for a turn, written with the turn's final record
/// ([`RedisStore::finish_leased`]).
#[derive(Debug, Clone, Copy)]
pub struct SessionTurn<'a> {
    /// The session as read before the run: the accounting is written only over that version.
    pub read: &'a Session,
    /// The session with the turn applied.
    pub updated: &'a Session,
}

/// A session's CLI transcript to store (see [`crate::cluster::transcripts`]): it replaces the
/// stored version `base` only, and only while the session exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptWrite {
    pub session: SessionId,
    /// SHA-256 (hex) of the stored version the turn started from (`""`: nothing stored).
    pub base: String,
    /// SHA-256 (hex) and length of the whole file.
    pub sha: String,
    pub len: u64,
    /// The instance storing it, and when (ms since the epoch).
    pub by: String,
    pub at_ms: i64,
    /// The file's content; `None` when it is too large to travel (only `sha` and `len` are
    /// stored).
    pub data: Option<Vec<u8>>,
}

impl TranscriptWrite {
    /// The arguments of the scripts' `transcript_save`.
    fn args(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.session.to_string())
            .arg(&self.base)
            .arg(&self.sha)
            .arg(self.len)
            .arg(&self.by)
            .arg(self.at_ms)
            .arg(if self.data.is_some() { "1" } else { "0" })
            .arg(self.data.as_deref().unwrap_or_default());
    }

    /// The script that stores it alone (namespace prefix `prefix`). Answers `saved`, `same`,
    /// `moved` (another save replaced `base` meanwhile: nothing written) or `deleted` (the
    /// session is gone: nothing written).
    pub fn invocation(&self, prefix: &str) -> ScriptInvocation<'static> {
        let mut inv = scripts::SAVE_TRANSCRIPT.prepare_invoke();
        inv.arg(prefix);
        self.args(&mut inv);
        inv
    }
}

/// What the end of a run wrote besides the final record ([`RedisStore::finish_leased`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// The tasks claimed for the freed slot.
    pub claimed: Claimed,
    /// The transcript's save, answered as [`TranscriptWrite::invocation`] (`None`: none given).
    pub transcript: Option<String>,
    /// Whether the session's accounting was written (`false`: none given, or the session
    /// changed since it was read, or is gone).
    pub accounted: bool,
}

/// Claims made by a run's final write for the slot it frees ([`RedisStore::finish_leased`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextClaim {
    pub lease_ms: u64,
    /// The global cap (`0`: none), as for [`RedisStore::claim`].
    pub cap: u32,
    /// Tasks to claim (`0`: none).
    pub want: usize,
}

/// Message of a task whose instance stopped renewing its lease.
const LOST_RUN: &str =
    "The server instance running the task stopped (its lease on the task expired).";

impl RedisStore {
    /// Claim up to `want` ready tasks for `instance`, each leased for `lease_ms`, while fewer
    /// than `cap` tasks are leased in the namespace (`0`: no cap).
    pub async fn claim(
        &self,
        instance: &str,
        lease_ms: u64,
        cap: u32,
        want: usize,
    ) -> StoreResult<Claimed> {
        let mut inv = scripts::CLAIM_TASKS.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(instance)
            .arg(lease_ms)
            .arg(cap)
            .arg(want);
        let reply: Vec<String> = self.run(&inv).await?;
        let Some((pending, rows)) = reply.split_first() else {
            return Err(StoreError::Corrupt("a claim answered nothing".into()));
        };
        parse_claimed(pending, rows)
    }

    /// Start a task this instance leased, from the record its claim read (one write; a read
    /// only if it changed since, e.g. a priority change). `None` when it is not pending any
    /// more (cancelled). The answer carries the revision written, for [`Self::finish_leased`].
    pub async fn start_leased(
        &self,
        leased: &Leased,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Leased>> {
        let known = (leased.task.clone(), leased.rev.clone());
        Ok(self
            .start_task_from(leased.task.id, Some(known), at)
            .await?
            .map(|(task, rev)| Leased { task, rev }))
    }

    /// The end of a run this instance started (`started`, from [`Self::start_leased`]), in one
    /// script: its final record `task` (merged as `finish_task` merges), this instance's lease
    /// dropped, the turn's `transcript` stored and the `session`'s accounting written (only
    /// over the version read before the run), and `next.want` tasks claimed for the freed
    /// slot. `None` when the record changed since the start (someone else ended the task):
    /// nothing was written, and the caller goes the usual way (`finish_task`, `release`, the
    /// transcript's own save, `update_session`).
    pub async fn finish_leased(
        &self,
        instance: &str,
        started: &Leased,
        task: &Task,
        session: Option<SessionTurn<'_>>,
        transcript: Option<&TranscriptWrite>,
        next: NextClaim,
    ) -> StoreResult<Option<RunEnd>> {
        if !task.status.is_final() {
            log::warn!(task:% = task.id, status = task.status.as_str(); "finish_leased called with a live status; nothing written");
            return Ok(None);
        }
        let new = rules::merge_final(&started.task, task);
        let mut inv = scripts::FINISH_RUN.prepare_invoke();
        self.task_args(&mut inv, &new, &started.rev)?;
        inv.arg(instance)
            .arg(next.lease_ms)
            .arg(next.cap)
            .arg(next.want);
        match session {
            Some(turn) => {
                let (_, read) = super::session_doc(turn.read)?;
                inv.arg("1").arg(read);
                super::session_args(&mut inv, turn.updated, "update")?;
            }
            None => {
                inv.arg("").arg("");
                for _ in 0..10 {
                    inv.arg("");
                }
            }
        }
        match transcript {
            Some(t) => {
                inv.arg("1");
                t.args(&mut inv);
            }
            None => {
                inv.arg("");
            }
        }
        let reply: Vec<String> = self.run(&inv).await?;
        match reply.as_slice() {
            [written] if written == "0" => Ok(None),
            [written, pending, saved, accounted, rest @ ..] if written == "1" => Ok(Some(RunEnd {
                claimed: parse_claimed(pending, rest)?,
                transcript: transcript.map(|_| saved.clone()),
                accounted: accounted == "1",
            })),
            _ => Err(StoreError::Corrupt(
                "the end of a run answered an unexpected shape".into(),
            )),
        }
    }

    /// Extend `instance`'s leases on `ids` by `lease_ms`. Returns those it must stop running:
    /// the lease is no longer its own, or the task is final (ended by another instance).
    pub async fn renew(
        &self,
        instance: &str,
        lease_ms: u64,
        ids: &[TaskId],
    ) -> StoreResult<Vec<TaskId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = scripts::RENEW_LEASES.prepare_invoke();
        inv.arg(&self.prefix).arg(instance).arg(lease_ms);
        for id in ids {
            inv.arg(id.to_string());
        }
        let reply: Vec<String> = self.run(&inv).await?;
        reply.iter().map(|raw| parse_id(raw)).collect()
    }

    /// `instance` is done with `id`: drop its lease; a task that never started is queued again.
    /// `false` when the lease was not (or no longer) its own.
    pub async fn release(&self, instance: &str, id: TaskId) -> StoreResult<bool> {
        let mut inv = scripts::RELEASE_LEASE.prepare_invoke();
        inv.arg(&self.prefix).arg(instance).arg(id.to_string());
        let released: i64 = self.run(&inv).await?;
        Ok(released == 1)
    }

    /// Take over up to `batch` expired leases for `instance` (and `processing` tasks nobody
    /// leases). Tasks that never started go back to the queue and are not returned; the others
    /// are returned with their status, leased to `instance`, which ends the `processing` ones
    /// with [`RedisStore::interrupt_lost`] and releases them all.
    pub async fn reap(
        &self,
        instance: &str,
        lease_ms: u64,
        batch: u32,
    ) -> StoreResult<Vec<(TaskId, Option<TaskStatus>)>> {
        let mut inv = scripts::REAP_LEASES.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(instance)
            .arg(lease_ms)
            .arg(batch.max(1));
        let reply: Vec<String> = self.run(&inv).await?;
        reply
            .chunks(2)
            .map(|pair| match pair {
                [id, status] => Ok((parse_id(id)?, TaskStatus::parse(status))),
                _ => Err(StoreError::Corrupt("a reap answered an odd list".into())),
            })
            .collect()
    }

    /// End a `processing` task whose run was lost `failed`/`interrupted`. `None` when it is not
    /// `processing` (it ended meanwhile).
    pub async fn interrupt_lost(&self, id: TaskId, at: DateTime<Utc>) -> StoreResult<Option<Task>> {
        self.update_task(id, |mut t| {
            (t.status == TaskStatus::Processing).then(|| {
                rules::interrupt_with(&mut t, at, LOST_RUN);
                t
            })
        })
        .await
    }

    /// Tasks pending in the namespace (all instances).
    pub async fn pending_count(&self) -> StoreResult<u64> {
        self.zcard("t-run").await
    }

    /// The instance holding a lease on `id`, if any.
    pub async fn lease_owner(&self, id: TaskId) -> StoreResult<Option<String>> {
        self.query(
            ::redis::cmd("HGET")
                .arg(self.key("q-owner"))
                .arg(id.to_string()),
        )
        .await
    }

    /// Tasks leased across the instances (claimed and not yet released).
    pub async fn leased_count(&self) -> StoreResult<u64> {
        self.zcard("q-lease").await
    }

    async fn zcard(&self, suffix: &str) -> StoreResult<u64> {
        self.query(::redis::cmd("ZCARD").arg(self.key(suffix)))
            .await
    }
}

/// A claim's answer: the pending count, then id, doc, seq and rev of each claimed task.
fn parse_claimed(pending: &str, rows: &[String]) -> StoreResult<Claimed> {
    let pending = pending
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("a claim answered a count of {pending:?}")))?;
    let tasks = rows
        .chunks(4)
        .map(|row| match row {
            [id, doc, seq, rev] => {
                let task = super::decode_task(doc, Some(seq))?;
                if task.id != parse_id(id)? {
                    return Err(StoreError::Corrupt(format!(
                        "the record under {id} is task {}",
                        task.id
                    )));
                }
                Ok(Leased {
                    task,
                    rev: rev.clone(),
                })
            }
            _ => Err(StoreError::Corrupt("a claim answered a short row".into())),
        })
        .collect::<StoreResult<_>>()?;
    Ok(Claimed { pending, tasks })
}

fn parse_id(raw: &str) -> StoreResult<TaskId> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("the queue holds {raw:?}, not a task id")))
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{shared_url, test_namespace};
    use super::*;
    use crate::store::conformance::fixtures::{at, finished, prio, session, task};
    use crate::store::Store;

    async fn fresh() -> RedisStore {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        RedisStore::connect(&url, &test_namespace())
            .await
            .expect("connect")
    }

    async fn claim_all(store: &RedisStore, who: &str) -> Vec<TaskId> {
        store.claim(who, 60_000, 0, 100).await.expect("claim").ids()
    }

    #[tokio::test]
    async fn claims_follow_run_order_and_never_hand_a_task_out_twice() {
        let store = fresh().await;
        let low = store.insert_task(task(2)).await.expect("insert");
        let high = store.insert_task(task(9)).await.expect("insert");
        let mid = store.insert_task(task(5)).await.expect("insert");
        let first = store.claim("a", 60_000, 0, 2).await.expect("claim");
        assert_eq!(first.pending, 3);
        assert_eq!(first.ids(), vec![high.id, mid.id]);
        assert_eq!(claim_all(&store, "b").await, vec![low.id]);
        assert!(claim_all(&store, "a").await.is_empty());
    }

    const NEXT: NextClaim = NextClaim {
        lease_ms: 60_000,
        cap: 0,
        want: 1,
    };

    async fn claim_one(store: &RedisStore, who: &str) -> Leased {
        let mut c = store.claim(who, 60_000, 0, 1).await.expect("claim");
        assert_eq!(c.tasks.len(), 1, "one task claimed");
        c.tasks.remove(0)
    }

    #[tokio::test]
    async fn a_claim_hands_out_the_record_and_its_start_writes_over_it() {
        let store = fresh().await;
        let t = store.insert_task(task(5)).await.expect("insert");
        let leased = claim_one(&store, "a").await;
        assert_eq!(leased.task, t, "the record as stored, seq included");
        let started = store
            .start_leased(&leased, at(1))
            .await
            .expect("start")
            .expect("pending");
        assert_eq!(started.task.status, TaskStatus::Processing);
        assert_eq!(started.task.attempts, 1);
        let stored = store.get_task(t.id).await.expect("get").expect("task");
        assert_eq!(stored, started.task);
        // The same claim cannot start it twice: its record moved on, and a fresh read says
        // it is not pending.
        assert_eq!(
            store.start_leased(&leased, at(2)).await.expect("start"),
            None
        );
    }

    #[tokio::test]
    async fn a_start_over_a_record_changed_since_the_claim_reads_it_again() {
        let store = fresh().await;
        let t = store.insert_task(task(5)).await.expect("insert");
        let leased = claim_one(&store, "a").await;
        // Still pending, so its priority can change after the claim.
        assert!(store.set_priority(t.id, prio(9)).await.expect("priority"));
        let started = store
            .start_leased(&leased, at(1))
            .await
            .expect("start")
            .expect("pending");
        assert_eq!(started.task.priority, prio(9));
        assert_eq!(started.task.status, TaskStatus::Processing);
    }

    /// Claim and start one task for `who`.
    async fn run_one(store: &RedisStore, who: &str) -> Leased {
        let leased = claim_one(store, who).await;
        store
            .start_leased(&leased, at(1))
            .await
            .expect("start")
            .expect("pending")
    }

    fn transcript(session: SessionId, base: &str, data: &[u8]) -> TranscriptWrite {
        TranscriptWrite {
            session,
            base: base.into(),
            sha: crate::cluster::transcripts::sha256_hex(data),
            len: data.len() as u64,
            by: "a".into(),
            at_ms: 1,
            data: Some(data.to_vec()),
        }
    }

    async fn stored_transcript(store: &RedisStore, session: SessionId) -> Option<Vec<u8>> {
        let mut conn = store.connection();
        ::redis::cmd("HGET")
            .arg(store.key(&format!("tr:{session}")))
            .arg("data")
            .query_async(&mut conn)
            .await
            .expect("read")
    }

    #[tokio::test]
    async fn the_end_of_a_run_writes_record_transcript_and_session_drops_the_lease_and_claims_the_next(
    ) {
        let store = fresh().await;
        let s = session(0);
        store.insert_session(&s).await.expect("session");
        let turn = |p| {
            let mut t = task(p);
            t.session_id = Some(s.id);
            t
        };
        let one = store.insert_task(turn(5)).await.expect("insert");
        let two = store.insert_task(turn(10)).await.expect("insert");
        let other = store.insert_task(task(1)).await.expect("insert");
        // Turn two waits for turn one, whatever its priority.
        let started = run_one(&store, "a").await;
        assert_eq!(started.task.id, one.id);
        let done = finished(&started.task, TaskStatus::Completed, 0.25, 2);
        let mut updated = s.clone();
        updated.messages_count = 2;
        updated.total_cost_usd = 0.25;
        updated.last_task_id = Some(one.id);
        let turn_one = SessionTurn {
            read: &s,
            updated: &updated,
        };
        let file = transcript(s.id, "", b"turn one\n");
        let end = store
            .finish_leased("a", &started, &done, Some(turn_one), Some(&file), NEXT)
            .await
            .expect("finish")
            .expect("written");
        // The final record opened the session's lane, and the same step claimed its next turn
        // (priority 10 before the other task's 1) with the transcript and accounting in place.
        assert_eq!(end.claimed.ids(), vec![two.id]);
        assert_eq!(end.claimed.pending, 2);
        assert_eq!(end.transcript.as_deref(), Some("saved"));
        assert!(end.accounted);
        let stored = store.get_task(one.id).await.expect("get").expect("task");
        assert_eq!(stored.status, TaskStatus::Completed);
        assert_eq!(stored.cost_usd, Some(0.25));
        assert_eq!(stored.attempts, 1);
        assert_eq!(store.lease_owner(one.id).await.expect("owner"), None);
        assert_eq!(
            store.lease_owner(two.id).await.expect("owner").as_deref(),
            Some("a")
        );
        assert_eq!(store.leased_count().await.expect("count"), 1);
        assert_eq!(
            store.get_session(s.id).await.expect("get"),
            Some(updated.clone())
        );
        assert_eq!(
            stored_transcript(&store, s.id).await.as_deref(),
            Some(&b"turn one\n"[..])
        );
        // Turn two: the session was archived during the run, so its accounting is not written
        // over that (the caller writes it after a new read); a transcript saved over a base
        // that is no longer stored is refused. Without a claim asked for, the other task
        // stays for anyone.
        let started = store
            .start_leased(&end.claimed.tasks[0], at(3))
            .await
            .expect("start")
            .expect("pending");
        let mut archived = updated.clone();
        archived.status = crate::model::SessionStatus::Archived;
        assert!(store.update_session(&archived).await.expect("archive"));
        let mut accounted = updated.clone();
        accounted.messages_count = 4;
        let turn_two = SessionTurn {
            read: &updated,
            updated: &accounted,
        };
        let stale = transcript(s.id, "not-the-stored-sha", b"turn two\n");
        let done = finished(&started.task, TaskStatus::Failed, 0.0, 4);
        let none = NextClaim { want: 0, ..NEXT };
        let end = store
            .finish_leased("a", &started, &done, Some(turn_two), Some(&stale), none)
            .await
            .expect("finish")
            .expect("written");
        assert!(end.claimed.tasks.is_empty());
        assert!(!end.accounted);
        assert_eq!(end.transcript.as_deref(), Some("moved"));
        assert_eq!(store.get_session(s.id).await.expect("get"), Some(archived));
        assert_eq!(
            stored_transcript(&store, s.id).await.as_deref(),
            Some(&b"turn one\n"[..])
        );
        let stored = store.get_task(two.id).await.expect("get").expect("task");
        assert_eq!(stored.status, TaskStatus::Failed);
        assert_eq!(store.leased_count().await.expect("count"), 0);
        assert_eq!(claim_all(&store, "b").await, vec![other.id]);
    }

    #[tokio::test]
    async fn the_end_of_a_run_ended_by_someone_else_writes_nothing() {
        let store = fresh().await;
        let s = session(0);
        store.insert_session(&s).await.expect("session");
        let mut t = task(5);
        t.session_id = Some(s.id);
        let t = store.insert_task(t).await.expect("insert");
        let waiting = store.insert_task(task(5)).await.expect("insert");
        let started = run_one(&store, "a").await;
        // A cancel (or a reaper) writes the final record first.
        let cancelled = finished(&started.task, TaskStatus::Cancelled, 0.0, 2);
        assert!(store.finish_task(&cancelled).await.expect("cancel"));
        let mut updated = s.clone();
        updated.messages_count = 2;
        let turn = SessionTurn {
            read: &s,
            updated: &updated,
        };
        let file = transcript(s.id, "", b"late\n");
        let done = finished(&started.task, TaskStatus::Completed, 0.5, 3);
        let answer = store
            .finish_leased("a", &started, &done, Some(turn), Some(&file), NEXT)
            .await
            .expect("finish");
        assert_eq!(answer, None);
        let stored = store.get_task(t.id).await.expect("get").expect("task");
        assert_eq!(stored.status, TaskStatus::Cancelled);
        assert_eq!(store.get_session(s.id).await.expect("get"), Some(s.clone()));
        assert_eq!(stored_transcript(&store, s.id).await, None);
        // The lease stays for the usual release, and nothing was claimed.
        assert_eq!(
            store.lease_owner(t.id).await.expect("owner").as_deref(),
            Some("a")
        );
        assert_eq!(claim_all(&store, "b").await, vec![waiting.id]);
    }

    #[tokio::test]
    async fn the_end_of_a_run_claims_under_the_global_cap() {
        let store = fresh().await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(store.insert_task(task(5)).await.expect("insert").id);
        }
        let capped = NextClaim {
            cap: 2,
            want: 2,
            ..NEXT
        };
        let started = run_one(&store, "a").await;
        claim_one(&store, "b").await;
        let done = finished(&started.task, TaskStatus::Completed, 0.0, 2);
        // Its own lease is dropped first, which leaves room for one under the cap of 2.
        let end = store
            .finish_leased("a", &started, &done, None, None, capped)
            .await
            .expect("finish")
            .expect("written");
        assert_eq!(end.claimed.ids(), vec![ids[2]]);
        assert_eq!(end.transcript, None);
        assert!(!end.accounted);
        assert_eq!(store.leased_count().await.expect("count"), 2);
    }

    /// Every sorted set of the namespace that holds `id`, with its score.
    async fn index_entries(store: &RedisStore, id: TaskId) -> Vec<(String, String)> {
        let mut conn = store.connection();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}*", store.prefix()))
            .query_async(&mut conn)
            .await
            .expect("keys");
        let mut out = Vec::new();
        for key in keys {
            let kind: String = ::redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("type");
            if kind != "zset" {
                continue;
            }
            let score: Option<String> = ::redis::cmd("ZSCORE")
                .arg(&key)
                .arg(id.to_string())
                .query_async(&mut conn)
                .await
                .expect("zscore");
            if let Some(score) = score {
                out.push((key.trim_start_matches(store.prefix()).to_string(), score));
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_write_over_a_task_leaves_exactly_the_index_entries_of_its_new_version() {
        let store = fresh().await;
        let s = session(0);
        let mut t = task(5);
        t.session_id = Some(s.id);
        t.owner = Some("k".into());
        let t = store.insert_task(t).await.expect("insert");
        let seq = t.seq.to_string();
        let band = |p: u64| ((10 - p) * (1 << 49) + t.seq).to_string();
        let common = |status: &str| {
            vec![
                ("t-all".to_string(), seq.clone()),
                ("t-owner:k".to_string(), seq.clone()),
                (format!("t-session:{}", s.id), seq.clone()),
                (format!("t-status:{status}"), seq.clone()),
            ]
        };
        let expect = |mut v: Vec<(String, String)>| {
            v.sort();
            v
        };
        // Pending, the head of its session's lane: ready.
        let mut want = common("pending");
        want.push((format!("t-lane:{}", s.id), seq.clone()));
        want.push(("t-run".into(), band(5)));
        want.push(("q-ready".into(), band(5)));
        assert_eq!(index_entries(&store, t.id).await, expect(want.clone()));
        // A new priority moves it in the run order and in the ready set.
        assert!(store.set_priority(t.id, prio(8)).await.expect("priority"));
        for entry in want
            .iter_mut()
            .filter(|(k, _)| k == "t-run" || k == "q-ready")
        {
            entry.1 = band(8);
        }
        assert_eq!(index_entries(&store, t.id).await, expect(want));
        // Claimed and started: leased, out of the ready set and the run order.
        let started = run_one(&store, "a").await;
        let mut want = common("processing");
        want.push((format!("t-lane:{}", s.id), seq.clone()));
        let leased = index_entries(&store, t.id).await;
        let lease = leased
            .iter()
            .find(|(k, _)| k == "q-lease")
            .cloned()
            .expect("leased");
        want.push(lease);
        assert_eq!(leased, expect(want));
        // Final: out of its lane, in the finished set, its cost counted once.
        let done = finished(&started.task, TaskStatus::Completed, 0.5, 9);
        let end = store
            .finish_leased("a", &started, &done, None, None, NEXT)
            .await
            .expect("finish")
            .expect("written");
        assert!(end.claimed.tasks.is_empty());
        let mut want = common("completed");
        want.push(("t-finished".into(), rules::ms(&at(9)).to_string()));
        assert_eq!(index_entries(&store, t.id).await, expect(want));
        assert_eq!(
            store.task_counts().await.expect("counts").total_cost_usd,
            0.5
        );
    }

    #[tokio::test]
    async fn a_priority_change_reorders_the_ready_set() {
        let store = fresh().await;
        let first = store.insert_task(task(5)).await.expect("insert");
        let second = store.insert_task(task(5)).await.expect("insert");
        assert!(store
            .set_priority(second.id, prio(9))
            .await
            .expect("priority"));
        assert_eq!(claim_all(&store, "a").await, vec![second.id, first.id]);
    }

    /// What Redis spends on a drained run's scripts (claim hand-over, start, end with session
    /// and transcript), alone on a private server: its CPU (`INFO cpu`) and the commands it
    /// ran (`INFO commandstats`, inner commands of scripts included), per run.
    /// `cargo test -p actors --release bench_run_scripts -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn bench_run_scripts() {
        const N: usize = 3000;
        let store = fresh().await;
        let mut sessions = std::collections::HashMap::new();
        for _ in 0..N {
            let s = session(0);
            store.insert_session(&s).await.expect("session");
            let mut t = task(5);
            t.session_id = Some(s.id);
            store.insert_task(t).await.expect("insert");
            sessions.insert(s.id, s);
        }
        let conn = store.connection();
        let info = |section: &'static str| {
            let mut conn = conn.clone();
            async move {
                let text: String = ::redis::cmd("INFO")
                    .arg(section)
                    .query_async(&mut conn)
                    .await
                    .expect("info");
                text
            }
        };
        let cpu = |text: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
                .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
                .sum()
        };
        let calls = |text: &str| -> u64 {
            text.lines()
                .filter_map(|l| {
                    l.split_once("calls=")?
                        .1
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        };
        let (cpu0, calls0) = (cpu(&info("cpu").await), calls(&info("commandstats").await));
        let t0 = std::time::Instant::now();
        let mut next = claim_one(&store, "a").await;
        for i in 0..N {
            let started = store
                .start_leased(&next, at(1))
                .await
                .expect("start")
                .expect("pending");
            let sid = started.task.session_id.expect("a session turn");
            let read = &sessions[&sid];
            let mut updated = read.clone();
            updated.messages_count += 1;
            let turn = SessionTurn {
                read,
                updated: &updated,
            };
            let file = transcript(sid, "", &[b'x'; 2000]);
            let done = finished(&started.task, TaskStatus::Completed, 0.01, 2);
            let want = NextClaim {
                want: usize::from(i + 1 < N),
                ..NEXT
            };
            let end = store
                .finish_leased("a", &started, &done, Some(turn), Some(&file), want)
                .await
                .expect("finish")
                .expect("written");
            assert!(end.accounted);
            if let Some(l) = end.claimed.tasks.into_iter().next() {
                next = l;
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, calls1) = (cpu(&info("cpu").await), calls(&info("commandstats").await));
        println!(
            "{N} runs: Redis CPU {:.1} µs per run, {:.1} commands per run (inner included), {:.1} µs wall per run",
            (cpu1 - cpu0) * 1e6 / N as f64,
            (calls1 - calls0) as f64 / N as f64,
            wall * 1e6 / N as f64
        );
    }

    #[tokio::test]
    async fn a_global_cap_counts_every_instances_leases() {
        let store = fresh().await;
        for _ in 0..5 {
            store.insert_task(task(5)).await.expect("insert");
        }
        assert_eq!(
            store
                .claim("a", 60_000, 3, 2)
                .await
                .expect("claim")
                .ids()
                .len(),
            2
        );
        assert_eq!(
            store
                .claim("b", 60_000, 3, 2)
                .await
                .expect("claim")
                .ids()
                .len(),
            1
        );
        assert!(store
            .claim("b", 60_000, 3, 2)
            .await
            .expect("claim")
            .ids()
            .is_empty());
        assert_eq!(store.leased_count().await.expect("count"), 3);
    }

    #[tokio::test]
    async fn a_sessions_turns_are_claimable_one_at_a_time_in_order() {
        let store = fresh().await;
        let sid = uuid::Uuid::new_v4();
        let turn = |p| {
            let mut t = task(p);
            t.session_id = Some(sid);
            t
        };
        let one = store.insert_task(turn(1)).await.expect("insert");
        let two = store.insert_task(turn(10)).await.expect("insert");
        let other = store.insert_task(task(5)).await.expect("insert");
        // The later turn's higher priority does not let it pass the earlier one.
        assert_eq!(claim_all(&store, "a").await, vec![other.id, one.id]);
        store.start_task(one.id, at(1)).await.expect("start");
        assert!(
            claim_all(&store, "b").await.is_empty(),
            "turn two while one runs"
        );
        // A sync turn is refused while the session has a live turn; with none left it passes.
        let refused = store
            .insert_checked(turn(5), true, 0)
            .await
            .expect("insert");
        assert_eq!(refused, Err(Refused::SessionBusy));
        let started = store.get_task(one.id).await.expect("get").expect("task");
        let done = finished(&started, TaskStatus::Completed, 0.0, 2);
        assert!(store.finish_task(&done).await.expect("finish"));
        assert_eq!(claim_all(&store, "b").await, vec![two.id]);
    }

    #[tokio::test]
    async fn max_pending_counts_the_whole_namespace() {
        let store = fresh().await;
        store
            .insert_checked(task(5), false, 2)
            .await
            .expect("insert")
            .expect("admitted");
        store
            .insert_checked(task(5), false, 2)
            .await
            .expect("insert")
            .expect("admitted");
        let full = store
            .insert_checked(task(5), false, 2)
            .await
            .expect("insert");
        assert_eq!(full, Err(Refused::QueueFull(2)));
    }

    #[tokio::test]
    async fn released_and_expired_claims_of_unstarted_tasks_go_back_to_the_queue() {
        let store = fresh().await;
        let t = store.insert_task(task(5)).await.expect("insert");
        assert_eq!(claim_all(&store, "a").await, vec![t.id]);
        // Only the holder can release.
        assert!(!store.release("b", t.id).await.expect("release"));
        assert!(store.release("a", t.id).await.expect("release"));
        assert_eq!(
            store.claim("b", 1, 0, 1).await.expect("claim").ids(),
            vec![t.id]
        );
        // B's 1 ms lease expires before it starts the task: reaping queues it again and
        // returns nothing to end.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut reaped = None;
        while std::time::Instant::now() < end {
            let r = store.reap("c", 60_000, 10).await.expect("reap");
            if store.leased_count().await.expect("count") == 0 {
                reaped = Some(r);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(reaped, Some(Vec::new()));
        assert_eq!(claim_all(&store, "c").await, vec![t.id]);
    }

    #[tokio::test]
    async fn an_expired_run_is_taken_over_and_its_holder_told_to_stop() {
        let store = fresh().await;
        let t = store.insert_task(task(5)).await.expect("insert");
        assert_eq!(
            store.claim("a", 1, 0, 1).await.expect("claim").ids(),
            vec![t.id]
        );
        store.start_task(t.id, at(1)).await.expect("start");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let taken = loop {
            let r = store.reap("b", 60_000, 10).await.expect("reap");
            if !r.is_empty() || std::time::Instant::now() >= end {
                break r;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(taken, vec![(t.id, Some(TaskStatus::Processing))]);
        let ended = store.interrupt_lost(t.id, at(2)).await.expect("interrupt");
        let ended = ended.expect("it was processing");
        assert_eq!(ended.status, TaskStatus::Failed);
        assert_eq!(
            ended.error.as_ref().map(|e| e.code),
            Some(crate::error::ErrorCode::Interrupted)
        );
        // The old holder's renewal says stop; the reaper's says the task is over.
        assert_eq!(
            store.renew("a", 60_000, &[t.id]).await.expect("renew"),
            vec![t.id]
        );
        assert_eq!(
            store.renew("b", 60_000, &[t.id]).await.expect("renew"),
            vec![t.id]
        );
        assert!(store.release("b", t.id).await.expect("release"));
        assert_eq!(store.leased_count().await.expect("count"), 0);
    }

    #[tokio::test]
    async fn renewal_keeps_a_live_run_and_reports_one_cancelled_elsewhere() {
        let store = fresh().await;
        let t = store.insert_task(task(5)).await.expect("insert");
        claim_all(&store, "a").await;
        let started = store
            .start_task(t.id, at(1))
            .await
            .expect("start")
            .expect("task");
        assert!(store
            .renew("a", 60_000, &[t.id])
            .await
            .expect("renew")
            .is_empty());
        let cancelled = finished(&started, TaskStatus::Cancelled, 0.0, 2);
        assert!(store.finish_task(&cancelled).await.expect("cancel"));
        assert_eq!(
            store.renew("a", 60_000, &[t.id]).await.expect("renew"),
            vec![t.id]
        );
    }

    #[tokio::test]
    async fn an_older_data_model_gets_the_queue_sets_built() {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = test_namespace();
        let store = RedisStore::connect(&url, &ns).await.expect("connect");
        let sid = uuid::Uuid::new_v4();
        let mut turn = task(5);
        turn.session_id = Some(sid);
        let turn = store.insert_task(turn).await.expect("insert");
        let plain = store.insert_task(task(3)).await.expect("insert");
        // What a schema-1 namespace looks like: no queue sets.
        let mut conn = store.connection();
        let _: () = ::redis::pipe()
            .del(store.key("q-ready"))
            .del(store.key(&format!("t-lane:{sid}")))
            .set(store.key("schema"), 1)
            .query_async(&mut conn)
            .await
            .expect("downgrade");
        let again = RedisStore::connect(&url, &ns).await.expect("connect");
        assert_eq!(claim_all(&again, "a").await, vec![turn.id, plain.id]);
        let schema: u32 = ::redis::cmd("GET")
            .arg(again.key("schema"))
            .query_async(&mut conn)
            .await
            .expect("schema");
        assert_eq!(schema, super::super::SCHEMA_VERSION);
    }
}
