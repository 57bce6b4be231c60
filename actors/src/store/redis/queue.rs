//! The shared queue's operations on the Redis backend: admission, claims, leases, reaping.
//!
//! Every instance on one namespace takes its work from the same sets (see the data model in
//! the parent module): `q-ready` (claimable now, in run order), `t-lane:<session>` (a session's
//! live turns), `q-lease` + `q-owner` (claimed tasks: lease expiry by Redis's clock, and the
//! instance holding each). The task scripts keep `q-ready` and the lanes right on every write,
//! so a claim is one `ZRANGE` on `q-ready` however many tasks wait behind a busy session.
//!
//! Life of a task in the shared queue: inserted `pending` (in `q-ready` unless its session has
//! an earlier live turn) → claimed by an instance (out of `q-ready`, leased) → started by it
//! (`processing`) → final → released by it (lease dropped). An instance renews its leases while
//! it runs them; a lease that expires (the instance died or lost Redis for longer than the
//! lease) is reaped by another: a task that never started is queued again (it never ran, so it
//! still runs exactly once), a `processing` one ends `failed`/`interrupted` (never run twice).

use chrono::{DateTime, Utc};

use super::{rules, scripts, RedisStore};
use crate::model::{Task, TaskId, TaskStatus};
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Tasks pending in the namespace when the claim ran (all instances).
    pub pending: u64,
    /// The tasks now leased to the claimant, in run order; still `pending` until it starts them.
    pub ids: Vec<TaskId>,
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
        let mut it = reply.into_iter();
        let pending = it
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StoreError::Corrupt("a claim answered without a count".into()))?;
        let ids = it.map(|raw| parse_id(&raw)).collect::<StoreResult<_>>()?;
        Ok(Claimed { pending, ids })
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

fn parse_id(raw: &str) -> StoreResult<TaskId> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("the queue holds {raw:?}, not a task id")))
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{shared_url, test_namespace};
    use super::*;
    use crate::store::conformance::fixtures::{at, finished, task};
    use crate::store::Store;

    async fn fresh() -> RedisStore {
        let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
        RedisStore::connect(&url, &test_namespace())
            .await
            .expect("connect")
    }

    async fn claim_all(store: &RedisStore, who: &str) -> Vec<TaskId> {
        store.claim(who, 60_000, 0, 100).await.expect("claim").ids
    }

    #[tokio::test]
    async fn claims_follow_run_order_and_never_hand_a_task_out_twice() {
        let store = fresh().await;
        let low = store.insert_task(task(2)).await.expect("insert");
        let high = store.insert_task(task(9)).await.expect("insert");
        let mid = store.insert_task(task(5)).await.expect("insert");
        let first = store.claim("a", 60_000, 0, 2).await.expect("claim");
        assert_eq!(first.pending, 3);
        assert_eq!(first.ids, vec![high.id, mid.id]);
        assert_eq!(claim_all(&store, "b").await, vec![low.id]);
        assert!(claim_all(&store, "a").await.is_empty());
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
                .ids
                .len(),
            2
        );
        assert_eq!(
            store
                .claim("b", 60_000, 3, 2)
                .await
                .expect("claim")
                .ids
                .len(),
            1
        );
        assert!(store
            .claim("b", 60_000, 3, 2)
            .await
            .expect("claim")
            .ids
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
            store.claim("b", 1, 0, 1).await.expect("claim").ids,
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
            store.claim("a", 1, 0, 1).await.expect("claim").ids,
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
