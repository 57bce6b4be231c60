//! The one test suite every [`Store`] backend must pass.
//!
//! `conformance_suite!(name, factory)` expands to a module `name` with one `#[tokio::test]` per
//! check in [`checks`]. `factory` is a closure returning a future of [`Fixture`]: the store, and
//! a guard kept alive until the check has finished and dropped the store (a temp dir, a Redis
//! key prefix to clean up, ...). A new backend adds one invocation at the bottom of this file.

use std::any::Any;
use std::sync::Arc;

use super::memory::MemoryStore;
use super::redis::{test_server, RedisStore};
use super::sqlite::SqliteStore;
use super::Store;

/// A store under test and whatever must outlive it.
pub(crate) type Fixture = (Arc<dyn Store>, Box<dyn Any + Send>);

macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        conformance_suite!(@each $name, $make, [
            kind_and_ping,
            insert_get_round_trip,
            insert_keeps_milliseconds,
            insert_duplicate_id_is_rejected,
            seq_increases,
            start_task_only_from_pending,
            finish_task_writes_once,
            finish_pending_task_for_cancel,
            finish_with_live_status_writes_nothing,
            finish_keeps_store_owned_fields,
            set_priority_only_pending,
            list_pending_in_run_order,
            list_unfiltered_newest_first,
            list_filters,
            list_limit_offset_total,
            pending_tasks_in_run_order,
            interrupt_processing,
            task_counts_and_cost,
            delete_tasks_finished_before_keeps_live,
            sessions_crud,
            sessions_list_newest_first_with_filters,
            sessions_query,
            sessions_limit_offset_total,
            delete_sessions_idle_since,
            stats_days,
            idempotency_claims,
            webhook_outbox,
            webhook_attempts_in_order,
            webhook_attempts_pruned,
            webhook_claims,
            approvals_decided_once,
            approvals_listed_and_deleted_with_their_task,
        ]);
    };
    (@each $name:ident, $make:expr, [$($check:ident),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, guard): super::Fixture = ($make)().await;
                    super::checks::$check(store).await;
                    drop(guard);
                }
            )*
        }
    };
}

conformance_suite!(memory, || async {
    (
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Box::new(()) as Box<dyn Any + Send>,
    )
});

conformance_suite!(sqlite, || async {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("nested/dir/store.db")).expect("open sqlite");
    (
        Arc::new(store) as Arc<dyn Store>,
        Box::new(dir) as Box<dyn Any + Send>,
    )
});

// One redis-server per test binary (started on first use, killed when the binary exits), one
// namespace per test. Without redis-server every test here fails, saying how to get it.
conformance_suite!(redis, || async {
    let url = test_server::shared_url().unwrap_or_else(|e| panic!("{e}"));
    let store = RedisStore::connect(&url, &test_server::test_namespace())
        .await
        .expect("connect to the test redis-server");
    (
        Arc::new(store) as Arc<dyn Store>,
        Box::new(()) as Box<dyn Any + Send>,
    )
});

/// Records to test with.
pub(crate) mod fixtures {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use crate::error::ErrorCode;
    use crate::model::{
        Priority, RunReport, RunSpec, Session, SessionMode, SessionStatus, Task, TaskError,
        TaskMode, Usage,
    };

    /// A fixed time with milliseconds, plus `ms`.
    pub fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_767_225_600_123 + ms).expect("valid time")
    }

    pub fn prio(p: i64) -> Priority {
        Priority::new(p).expect("valid priority")
    }

    pub fn spec(prompt: &str) -> RunSpec {
        RunSpec::new(prompt, "/srv/project", 60_000)
    }

    /// A plain pending task.
    pub fn task(p: i64) -> Task {
        let mut t = Task::new(spec("hello"), prio(p), TaskMode::Async);
        t.created_at = at(0);
        t
    }

    /// A task with every optional field set.
    pub fn full_task() -> Task {
        let mut t = task(7);
        t.mode = TaskMode::Batch;
        t.spec = RunSpec {
            prompt: "\\/review the diff — ünïcode ✓".into(),
            project_path: "/srv/Projekt Ä".into(),
            model: Some("claude-sonnet-4".into()),
            system_prompt: Some("be brief".into()),
            append_system_prompt: Some("and kind".into()),
            max_budget_usd: Some(1.25),
            max_turns: Some(9),
            allowed_tools: vec!["Read".into(), "Bash(git:*)".into()],
            disallowed_tools: vec!["Write".into()],
            permission_mode: Some("plan".into()),
            agent: Some("reviewer".into()),
            mcp_config: Some("/etc/mcp.json".into()),
            session: SessionMode::Resume {
                id: uuid::Uuid::new_v4(),
            },
            timeout_ms: 123_456,
            approvals: true,
        };
        t.session_id = Some(uuid::Uuid::new_v4());
        t.owner = Some("team-a".into());
        t.started_at = Some(at(1_500));
        t.completed_at = Some(at(9_876));
        t.duration_ms = Some(8_376);
        t.cost_usd = Some(0.0375);
        t.report = Some(RunReport {
            result: Some("done".into()),
            session_id: Some("cli-session".into()),
            reported_cost_usd: 0.5,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 20,
                cache_creation_input_tokens: 30,
                cache_read_input_tokens: 40,
            },
            num_turns: 3,
            duration_ms: 8_000,
            permission_denials: vec![json!({"tool": "Bash"})],
            resolved_model: Some("claude-sonnet-4-20250514".into()),
            subtype: Some("success".into()),
            is_error: false,
            api_error_status: Some(529),
            cli_version: Some("2.0.1".into()),
        });
        t.error = Some(
            TaskError::new(ErrorCode::CliApiError, "overloaded").with_details(json!({"a": [1, 2]})),
        );
        t.webhook_url = Some("https://example.test/hook".into());
        t.metadata = Some(json!({"ticket": "ABC-1", "nested": {"n": 1.5, "ok": true}}));
        t.attempts = 0;
        t
    }

    /// A final copy of `t` with `status`, cost and completion time.
    pub fn finished(t: &Task, status: crate::model::TaskStatus, cost: f64, ms: i64) -> Task {
        let mut f = t.clone();
        f.status = status;
        f.completed_at = Some(at(ms));
        f.cost_usd = Some(cost);
        f.duration_ms = Some(10);
        if status != crate::model::TaskStatus::Completed {
            f.error = Some(TaskError::new(ErrorCode::CliError, "it failed"));
        }
        f
    }

    pub fn session(created_ms: i64) -> Session {
        Session {
            id: uuid::Uuid::new_v4(),
            created_at: at(created_ms),
            updated_at: at(created_ms),
            status: SessionStatus::Active,
            model: Some("claude-opus-4".into()),
            project_path: "/srv/project".into(),
            messages_count: 0,
            total_cost_usd: 0.0,
            last_reported_cost_usd: 0.0,
            last_task_id: None,
            owner: None,
            metadata: json!({}),
        }
    }

    /// A delivery in the outbox, created at `at(created_ms)` (sub-millisecond part included,
    /// to check that stores keep milliseconds).
    pub fn webhook_job(task_id: uuid::Uuid, created_ms: i64) -> crate::webhook::WebhookJob {
        let created = at(created_ms) + chrono::Duration::microseconds(456);
        crate::webhook::WebhookJob {
            webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            task_id,
            event: "task.completed".into(),
            url: "https://hooks.example/ü?token=a b".into(),
            body: r#"{"event":"task.completed","data":{"result":"ünïcode ✓"}}"#.into(),
            attempts: 0,
            created_at: created,
            next_attempt_at: created,
        }
    }

    /// One recorded attempt.
    pub fn webhook_attempt(
        job: &crate::webhook::WebhookJob,
        n: u32,
        ms: i64,
        status: Option<u16>,
    ) -> crate::webhook::WebhookAttempt {
        crate::webhook::WebhookAttempt {
            webhook_id: job.webhook_id.clone(),
            task_id: job.task_id,
            event: job.event.clone(),
            url: job.url.clone(),
            attempt: n,
            status_code: status,
            error: (status != Some(200)).then(|| "the receiver answered HTTP 500".into()),
            duration_ms: 12,
            at: at(ms) + chrono::Duration::microseconds(789),
        }
    }
}

pub(crate) mod checks {
    use std::collections::HashSet;
    use std::sync::Arc;

    use chrono::{NaiveDate, Utc};
    use serde_json::json;

    use super::fixtures::*;
    use crate::approval::{
        expired, Approval, ApprovalFilter, ApprovalStatus, Decided, Decision, PermissionRequest,
    };
    use crate::error::ErrorCode;
    use crate::model::{SessionStatus, Task, TaskId, TaskStatus};
    use crate::store::{SessionFilter, Store, TaskFilter};

    type S = Arc<dyn Store>;

    async fn insert(s: &S, t: Task) -> Task {
        s.insert_task(t).await.expect("insert")
    }

    async fn get(s: &S, id: TaskId) -> Task {
        s.get_task(id).await.expect("get").expect("present")
    }

    fn ids(tasks: &[Task]) -> Vec<TaskId> {
        tasks.iter().map(|t| t.id).collect()
    }

    async fn list(s: &S, f: TaskFilter) -> (Vec<TaskId>, u64) {
        let (tasks, total) = s.list_tasks(&f).await.expect("list");
        (ids(&tasks), total)
    }

    fn by_status(status: TaskStatus) -> TaskFilter {
        TaskFilter {
            status: Some(status),
            ..TaskFilter::default()
        }
    }

    pub async fn kind_and_ping(s: S) {
        assert!(["memory", "sqlite", "redis"].contains(&s.kind()));
        s.ping().await.expect("ping");
    }

    pub async fn insert_get_round_trip(s: S) {
        let t = full_task();
        let stored = insert(&s, t.clone()).await;
        assert!(stored.seq > 0);
        let mut expected = t.clone();
        expected.seq = stored.seq;
        assert_eq!(stored, expected);
        assert_eq!(get(&s, t.id).await, expected);
        assert_eq!(s.get_task(uuid::Uuid::new_v4()).await.expect("get"), None);
    }

    pub async fn insert_keeps_milliseconds(s: S) {
        let mut t = task(5);
        t.created_at = at(0) + chrono::Duration::nanoseconds(456_789);
        let stored = insert(&s, t.clone()).await;
        assert_eq!(stored.created_at, at(0));
        assert_eq!(get(&s, t.id).await, stored);
    }

    pub async fn insert_duplicate_id_is_rejected(s: S) {
        let t = task(5);
        let first = insert(&s, t.clone()).await;
        let mut again = t.clone();
        again.priority = prio(9);
        assert!(s.insert_task(again).await.is_err());
        assert_eq!(get(&s, t.id).await, first);
        // The store still works after the rejected write.
        insert(&s, task(5)).await;
    }

    pub async fn seq_increases(s: S) {
        let mut last = 0;
        for i in 0..20 {
            let mut t = task(1 + i % 10);
            t.seq = 999_999; // ignored: the store assigns it
            let stored = insert(&s, t).await;
            assert!(stored.seq > last, "seq {} after {last}", stored.seq);
            assert_eq!(get(&s, stored.id).await.seq, stored.seq);
            last = stored.seq;
        }
        // Deleting the newest tasks does not make their seqs come back.
        for t in s.pending_tasks().await.expect("pending") {
            let gone = finished(&t, TaskStatus::Cancelled, 0.0, 1);
            assert!(s.finish_task(&gone).await.expect("finish"));
        }
        assert_eq!(
            s.delete_tasks_finished_before(at(2)).await.expect("delete"),
            20
        );
        assert!(insert(&s, task(5)).await.seq > last);
    }

    pub async fn start_task_only_from_pending(s: S) {
        let t = insert(&s, task(5)).await;
        let started = s.start_task(t.id, at(100)).await.expect("start");
        let started = started.expect("was pending");
        assert_eq!(started.status, TaskStatus::Processing);
        assert_eq!(started.started_at, Some(at(100)));
        assert_eq!(started.attempts, 1);
        assert_eq!(started.seq, t.seq);
        assert_eq!(get(&s, t.id).await, started);

        assert_eq!(s.start_task(t.id, at(200)).await.expect("start"), None);
        assert_eq!(get(&s, t.id).await.attempts, 1);
        assert_eq!(
            s.start_task(uuid::Uuid::new_v4(), at(200))
                .await
                .expect("start"),
            None
        );

        let c = insert(&s, task(5)).await;
        assert!(s
            .finish_task(&finished(&c, TaskStatus::Cancelled, 0.0, 50))
            .await
            .expect("finish"));
        assert_eq!(s.start_task(c.id, at(300)).await.expect("start"), None);
        assert_eq!(get(&s, c.id).await.status, TaskStatus::Cancelled);
    }

    pub async fn finish_task_writes_once(s: S) {
        let t = insert(&s, task(5)).await;
        let started = s
            .start_task(t.id, at(10))
            .await
            .expect("start")
            .expect("pending");
        let done = finished(&started, TaskStatus::Completed, 0.25, 500);
        assert!(s.finish_task(&done).await.expect("finish"));
        assert_eq!(get(&s, t.id).await, done);

        let late = finished(&started, TaskStatus::Timeout, 9.0, 900);
        assert!(!s.finish_task(&late).await.expect("finish"));
        assert_eq!(get(&s, t.id).await, done);

        let ghost = finished(&task(5), TaskStatus::Failed, 0.0, 1);
        assert!(!s.finish_task(&ghost).await.expect("finish"));
        assert_eq!(s.get_task(ghost.id).await.expect("get"), None);
    }

    pub async fn finish_pending_task_for_cancel(s: S) {
        let a = insert(&s, task(5)).await;
        let b = insert(&s, task(5)).await;
        let cancelled = finished(&a, TaskStatus::Cancelled, 0.0, 20);
        assert!(s.finish_task(&cancelled).await.expect("finish"));
        assert_eq!(get(&s, a.id).await, cancelled);
        // The worker's completion after the cancel loses.
        let late = finished(&a, TaskStatus::Completed, 1.0, 30);
        assert!(!s.finish_task(&late).await.expect("finish"));
        assert_eq!(get(&s, a.id).await, cancelled);
        let pending = s.pending_tasks().await.expect("pending");
        assert_eq!(ids(&pending), vec![b.id]);
        assert_eq!(
            list(&s, by_status(TaskStatus::Pending)).await,
            (vec![b.id], 1)
        );
        assert!(!s.set_priority(a.id, prio(9)).await.expect("set"));
    }

    pub async fn finish_with_live_status_writes_nothing(s: S) {
        let t = insert(&s, task(5)).await;
        let mut bogus = t.clone();
        bogus.status = TaskStatus::Processing;
        bogus.priority = prio(1);
        assert!(!s.finish_task(&bogus).await.expect("finish"));
        assert_eq!(get(&s, t.id).await, t);
    }

    pub async fn finish_keeps_store_owned_fields(s: S) {
        let t = insert(&s, task(5)).await;
        s.start_task(t.id, at(10))
            .await
            .expect("start")
            .expect("pending");
        // A copy taken before the start (e.g. by a cancel racing the worker).
        let mut stale = finished(&t, TaskStatus::Cancelled, 0.0, 30);
        stale.seq = 0;
        assert!(s.finish_task(&stale).await.expect("finish"));
        let got = get(&s, t.id).await;
        assert_eq!(got.status, TaskStatus::Cancelled);
        assert_eq!(got.seq, t.seq);
        assert_eq!(got.attempts, 1);
        assert_eq!(got.started_at, Some(at(10)));
        assert_eq!(got.completed_at, Some(at(30)));
    }

    pub async fn set_priority_only_pending(s: S) {
        let t = insert(&s, task(5)).await;
        assert!(s.set_priority(t.id, prio(8)).await.expect("set"));
        assert_eq!(get(&s, t.id).await.priority, prio(8));
        s.start_task(t.id, at(1))
            .await
            .expect("start")
            .expect("pending");
        assert!(!s.set_priority(t.id, prio(2)).await.expect("set"));
        assert_eq!(get(&s, t.id).await.priority, prio(8));
        assert!(!s
            .set_priority(uuid::Uuid::new_v4(), prio(2))
            .await
            .expect("set"));
    }

    pub async fn list_pending_in_run_order(s: S) {
        let a = insert(&s, task(5)).await;
        let b = insert(&s, task(9)).await;
        let c = insert(&s, task(5)).await;
        let d = insert(&s, task(1)).await;
        let e = insert(&s, task(9)).await;
        let running = insert(&s, task(10)).await;
        s.start_task(running.id, at(1)).await.expect("start");
        let f = by_status(TaskStatus::Pending);
        assert_eq!(
            list(&s, f.clone()).await,
            (vec![b.id, e.id, a.id, c.id, d.id], 5)
        );

        // Raised to the front of its new priority? No: FIFO by seq within the priority.
        assert!(s.set_priority(c.id, prio(9)).await.expect("set"));
        assert!(s.set_priority(b.id, prio(1)).await.expect("set"));
        assert_eq!(list(&s, f).await, (vec![c.id, e.id, a.id, b.id, d.id], 5));
    }

    pub async fn list_unfiltered_newest_first(s: S) {
        let a = insert(&s, task(10)).await;
        let b = insert(&s, task(1)).await;
        let c = insert(&s, task(5)).await;
        s.start_task(b.id, at(1)).await.expect("start");
        s.finish_task(&finished(&c, TaskStatus::Cancelled, 0.0, 3))
            .await
            .expect("finish");
        assert_eq!(
            list(&s, TaskFilter::default()).await,
            (vec![c.id, b.id, a.id], 3)
        );
        // Any status other than pending: newest first too.
        let d = insert(&s, task(5)).await;
        s.finish_task(&finished(&d, TaskStatus::Cancelled, 0.0, 4))
            .await
            .expect("finish");
        assert_eq!(
            list(&s, by_status(TaskStatus::Cancelled)).await,
            (vec![d.id, c.id], 2)
        );
    }

    pub async fn list_filters(s: S) {
        let sess = uuid::Uuid::new_v4();
        let mut t1 = task(5);
        t1.owner = Some("alice".into());
        t1.session_id = Some(sess);
        let mut t2 = task(5);
        t2.owner = Some("bob".into());
        let t3 = task(5); // anonymous
        let mut t4 = task(5);
        t4.owner = Some("alice".into());
        let mut t5 = task(3);
        t5.session_id = Some(sess);
        let (t1, t2, t3, t4, t5) = (
            insert(&s, t1).await,
            insert(&s, t2).await,
            insert(&s, t3).await,
            insert(&s, t4).await,
            insert(&s, t5).await,
        );
        s.start_task(t4.id, at(1)).await.expect("start");
        s.finish_task(&finished(&t2, TaskStatus::Failed, 0.1, 2))
            .await
            .expect("finish");

        let owner = |o: Option<&str>| TaskFilter {
            owner: Some(o.map(str::to_owned)),
            ..TaskFilter::default()
        };
        assert_eq!(
            list(&s, owner(Some("alice"))).await,
            (vec![t4.id, t1.id], 2)
        );
        assert_eq!(list(&s, owner(Some("bob"))).await, (vec![t2.id], 1));
        assert_eq!(list(&s, owner(None)).await, (vec![t5.id, t3.id], 2));
        assert_eq!(list(&s, owner(Some("carol"))).await, (vec![], 0));

        let by_sess = TaskFilter {
            session_id: Some(sess),
            ..TaskFilter::default()
        };
        assert_eq!(list(&s, by_sess.clone()).await, (vec![t5.id, t1.id], 2));
        let sess_pending = TaskFilter {
            status: Some(TaskStatus::Pending),
            ..by_sess.clone()
        };
        assert_eq!(list(&s, sess_pending).await, (vec![t1.id, t5.id], 2));
        let sess_anon = TaskFilter {
            owner: Some(None),
            ..by_sess
        };
        assert_eq!(list(&s, sess_anon).await, (vec![t5.id], 1));

        assert_eq!(
            list(&s, by_status(TaskStatus::Processing)).await,
            (vec![t4.id], 1)
        );
        assert_eq!(
            list(&s, by_status(TaskStatus::Failed)).await,
            (vec![t2.id], 1)
        );
        assert_eq!(list(&s, by_status(TaskStatus::Timeout)).await, (vec![], 0));
        let pending_alice = TaskFilter {
            status: Some(TaskStatus::Pending),
            owner: Some(Some("alice".into())),
            ..TaskFilter::default()
        };
        assert_eq!(list(&s, pending_alice).await, (vec![t1.id], 1));
    }

    pub async fn list_limit_offset_total(s: S) {
        let mut all = Vec::new();
        for i in 0..7 {
            all.push(insert(&s, task(if i % 2 == 0 { 8 } else { 4 })).await);
        }
        let newest: Vec<TaskId> = all.iter().rev().map(|t| t.id).collect();
        let page = |limit, offset| TaskFilter {
            limit,
            offset,
            ..TaskFilter::default()
        };
        assert_eq!(list(&s, page(3, 0)).await, (newest[0..3].to_vec(), 7));
        assert_eq!(list(&s, page(3, 3)).await, (newest[3..6].to_vec(), 7));
        assert_eq!(list(&s, page(3, 6)).await, (newest[6..].to_vec(), 7));
        assert_eq!(list(&s, page(3, 10)).await, (vec![], 7));
        // limit 0: no limit.
        assert_eq!(list(&s, page(0, 2)).await, (newest[2..].to_vec(), 7));

        // Run order pages: priority 8 (seq 0, 2, 4, 6) then 4 (1, 3, 5).
        let order: Vec<TaskId> = [0, 2, 4, 6, 1, 3, 5].iter().map(|&i| all[i].id).collect();
        let pending_page = |limit, offset| TaskFilter {
            status: Some(TaskStatus::Pending),
            limit,
            offset,
            ..TaskFilter::default()
        };
        assert_eq!(
            list(&s, pending_page(2, 0)).await,
            (order[0..2].to_vec(), 7)
        );
        assert_eq!(
            list(&s, pending_page(2, 3)).await,
            (order[3..5].to_vec(), 7)
        );
        assert_eq!(list(&s, pending_page(0, 5)).await, (order[5..].to_vec(), 7));
        assert_eq!(list(&s, pending_page(5, 7)).await, (vec![], 7));
    }

    pub async fn pending_tasks_in_run_order(s: S) {
        assert!(s.pending_tasks().await.expect("pending").is_empty());
        let a = insert(&s, task(2)).await;
        let b = insert(&s, task(7)).await;
        let c = insert(&s, task(2)).await;
        let d = insert(&s, task(7)).await;
        let x = insert(&s, task(10)).await;
        s.start_task(x.id, at(1)).await.expect("start");
        let got = s.pending_tasks().await.expect("pending");
        assert_eq!(ids(&got), vec![b.id, d.id, a.id, c.id]);
        assert!(got.iter().all(|t| t.status == TaskStatus::Pending));
        assert_eq!(got[0], b);
    }

    pub async fn interrupt_processing(s: S) {
        let p = insert(&s, task(5)).await;
        let r1 = insert(&s, task(5)).await;
        let r2 = insert(&s, task(5)).await;
        let done = insert(&s, task(5)).await;
        s.start_task(r1.id, at(1_000)).await.expect("start");
        s.start_task(r2.id, at(2_000)).await.expect("start");
        s.start_task(done.id, at(500)).await.expect("start");
        let done_final = finished(&get(&s, done.id).await, TaskStatus::Completed, 0.5, 600);
        s.finish_task(&done_final).await.expect("finish");

        let mut hit = s.interrupt_processing(at(5_000)).await.expect("interrupt");
        hit.sort();
        let mut want = vec![r1.id, r2.id];
        want.sort();
        assert_eq!(hit, want);
        for id in [r1.id, r2.id] {
            let t = get(&s, id).await;
            assert_eq!(t.status, TaskStatus::Failed);
            assert_eq!(t.completed_at, Some(at(5_000)));
            assert_eq!(
                t.error.as_ref().map(|e| e.code),
                Some(ErrorCode::Interrupted)
            );
            assert_eq!(t.attempts, 1);
        }
        assert_eq!(get(&s, r1.id).await.duration_ms, Some(4_000));
        assert_eq!(get(&s, p.id).await, p);
        assert_eq!(get(&s, done.id).await, done_final);
        // Final now: a late finish loses, and nothing is left to interrupt.
        assert!(!s
            .finish_task(&finished(&r1, TaskStatus::Completed, 1.0, 6_000))
            .await
            .expect("finish"));
        assert!(s
            .interrupt_processing(at(7_000))
            .await
            .expect("again")
            .is_empty());
    }

    pub async fn task_counts_and_cost(s: S) {
        let c = s.task_counts().await.expect("counts");
        assert_eq!(c.total(), 0);
        assert_eq!(c.total_cost_usd, 0.0);

        let _p1 = insert(&s, task(5)).await;
        let _p2 = insert(&s, task(5)).await;
        let r = insert(&s, task(5)).await;
        let d1 = insert(&s, task(5)).await;
        let d2 = insert(&s, task(5)).await;
        let f = insert(&s, task(5)).await;
        s.start_task(r.id, at(1)).await.expect("start");
        for (t, st, cost) in [
            (&d1, TaskStatus::Completed, 0.25),
            (&d2, TaskStatus::Completed, 0.5),
            (&f, TaskStatus::Failed, 0.125),
        ] {
            assert!(s
                .finish_task(&finished(t, st, cost, 9))
                .await
                .expect("finish"));
        }
        let c = s.task_counts().await.expect("counts");
        assert_eq!(c.get(TaskStatus::Pending), 2);
        assert_eq!(c.get(TaskStatus::Processing), 1);
        assert_eq!(c.get(TaskStatus::Completed), 2);
        assert_eq!(c.get(TaskStatus::Failed), 1);
        assert_eq!(c.get(TaskStatus::Cancelled), 0);
        assert_eq!(c.total(), 6);
        assert!(
            (c.total_cost_usd - 0.875).abs() < 1e-9,
            "{}",
            c.total_cost_usd
        );

        // Deleting a task takes its cost out.
        s.delete_tasks_finished_before(at(100))
            .await
            .expect("delete");
        let c = s.task_counts().await.expect("counts");
        assert_eq!(c.total(), 3);
        assert_eq!(c.get(TaskStatus::Completed), 0);
        assert!(c.total_cost_usd.abs() < 1e-9);
    }

    pub async fn delete_tasks_finished_before_keeps_live(s: S) {
        let pending = insert(&s, task(5)).await;
        let running = insert(&s, task(5)).await;
        s.start_task(running.id, at(1)).await.expect("start");
        let old = insert(&s, task(5)).await;
        let recent = insert(&s, task(5)).await;
        let boundary = insert(&s, task(5)).await;
        s.finish_task(&finished(&old, TaskStatus::Completed, 0.0, 1_000))
            .await
            .expect("finish");
        s.finish_task(&finished(&recent, TaskStatus::Failed, 0.0, 9_000))
            .await
            .expect("finish");
        s.finish_task(&finished(&boundary, TaskStatus::Cancelled, 0.0, 5_000))
            .await
            .expect("finish");

        assert_eq!(
            s.delete_tasks_finished_before(at(5_000))
                .await
                .expect("delete"),
            1
        );
        assert_eq!(s.get_task(old.id).await.expect("get"), None);
        for id in [pending.id, running.id, recent.id, boundary.id] {
            assert!(s.get_task(id).await.expect("get").is_some());
        }
        // Live tasks stay whatever the cut-off.
        let far = Utc::now() + chrono::Duration::days(3650);
        assert_eq!(
            s.delete_tasks_finished_before(far).await.expect("delete"),
            2
        );
        let (left, total) = list(&s, TaskFilter::default()).await;
        assert_eq!(total, 2);
        assert_eq!(left, vec![running.id, pending.id]);
        assert_eq!(
            ids(&s.pending_tasks().await.expect("pending")),
            vec![pending.id]
        );
    }

    pub async fn sessions_crud(s: S) {
        let mut a = session(0);
        a.owner = Some("alice".into());
        a.metadata = json!({"title": "Refactor", "tags": ["x"]});
        a.last_task_id = Some(uuid::Uuid::new_v4());
        a.total_cost_usd = 0.75;
        s.insert_session(&a).await.expect("insert");
        assert_eq!(s.get_session(a.id).await.expect("get"), Some(a.clone()));
        assert!(s.insert_session(&a).await.is_err());
        assert_eq!(
            s.get_session(uuid::Uuid::new_v4()).await.expect("get"),
            None
        );

        let mut b = a.clone();
        b.messages_count = 3;
        b.status = SessionStatus::Archived;
        b.updated_at = at(5_000);
        b.total_cost_usd = 1.5;
        assert!(s.update_session(&b).await.expect("update"));
        assert_eq!(s.get_session(a.id).await.expect("get"), Some(b.clone()));
        let stranger = session(1);
        assert!(!s.update_session(&stranger).await.expect("update"));
        assert_eq!(s.get_session(stranger.id).await.expect("get"), None);

        // A read-change-write: answers and stores the changed record, durably or lazily.
        for lazily in [false, true] {
            let changed = s
                .modify_session(a.id, lazily, Box::new(|x| x.messages_count += 1))
                .await
                .expect("modify");
            let stored = s.get_session(a.id).await.expect("get");
            assert_eq!(
                changed.as_ref().map(|x| x.messages_count),
                stored.as_ref().map(|x| x.messages_count)
            );
        }
        assert_eq!(
            s.get_session(a.id)
                .await
                .expect("get")
                .map(|x| x.messages_count),
            Some(5)
        );
        assert_eq!(
            s.modify_session(stranger.id, true, Box::new(|x| x.messages_count += 1))
                .await
                .expect("modify"),
            None,
            "no record: nothing written"
        );
        assert_eq!(s.get_session(stranger.id).await.expect("get"), None);

        assert!(s.delete_session(a.id).await.expect("delete"));
        assert!(!s.delete_session(a.id).await.expect("delete"));
        assert_eq!(s.get_session(a.id).await.expect("get"), None);
    }

    async fn session_ids(s: &S, f: SessionFilter) -> (Vec<uuid::Uuid>, u64) {
        let (list, total) = s.list_sessions(&f).await.expect("list sessions");
        (list.iter().map(|x| x.id).collect(), total)
    }

    pub async fn sessions_list_newest_first_with_filters(s: S) {
        let a = session(0);
        let mut b = session(1_000);
        b.status = SessionStatus::Closed;
        b.owner = Some("bob".into());
        let mut c = session(2_000);
        c.project_path = "/srv/other".into();
        c.owner = Some("alice".into());
        let mut d = session(3_000);
        d.status = SessionStatus::Archived;
        for x in [&c, &a, &d, &b] {
            s.insert_session(x).await.expect("insert");
        }
        assert_eq!(
            session_ids(&s, SessionFilter::default()).await,
            (vec![d.id, c.id, b.id, a.id], 4)
        );
        let f = |status| SessionFilter {
            status: Some(status),
            ..SessionFilter::default()
        };
        assert_eq!(
            session_ids(&s, f(SessionStatus::Active)).await,
            (vec![c.id, a.id], 2)
        );
        assert_eq!(
            session_ids(&s, f(SessionStatus::Closed)).await,
            (vec![b.id], 1)
        );
        let path = |p: &str| SessionFilter {
            project_path: Some(p.into()),
            ..SessionFilter::default()
        };
        assert_eq!(
            session_ids(&s, path("/srv/project")).await,
            (vec![d.id, b.id, a.id], 3)
        );
        assert_eq!(session_ids(&s, path("/srv/other")).await, (vec![c.id], 1));
        assert_eq!(session_ids(&s, path("/srv")).await, (vec![], 0));
        let owner = |o: Option<&str>| SessionFilter {
            owner: Some(o.map(str::to_owned)),
            ..SessionFilter::default()
        };
        assert_eq!(session_ids(&s, owner(Some("alice"))).await, (vec![c.id], 1));
        assert_eq!(session_ids(&s, owner(None)).await, (vec![d.id, a.id], 2));
        let combined = SessionFilter {
            status: Some(SessionStatus::Active),
            project_path: Some("/srv/project".into()),
            owner: Some(None),
            ..SessionFilter::default()
        };
        assert_eq!(session_ids(&s, combined).await, (vec![a.id], 1));
    }

    pub async fn sessions_query(s: S) {
        let mut a = session(0);
        a.project_path = "/home/Dev/WebShop".into();
        let mut b = session(1);
        b.metadata = json!({"title": "Quarterly REPORT", "n": 42});
        let c = session(2);
        for x in [&a, &b, &c] {
            s.insert_session(x).await.expect("insert");
        }
        let q = |q: &str| SessionFilter {
            query: Some(q.into()),
            ..SessionFilter::default()
        };
        assert_eq!(session_ids(&s, q("webshop")).await, (vec![a.id], 1));
        assert_eq!(session_ids(&s, q("DEV/web")).await, (vec![a.id], 1));
        assert_eq!(
            session_ids(&s, q("quarterly report")).await,
            (vec![b.id], 1)
        );
        assert_eq!(session_ids(&s, q("\"n\":42")).await, (vec![b.id], 1));
        let id_part = c.id.to_string()[..13].to_uppercase();
        assert_eq!(session_ids(&s, q(&id_part)).await, (vec![c.id], 1));
        assert_eq!(session_ids(&s, q("no such thing")).await, (vec![], 0));
        // Combined with another filter.
        let f = SessionFilter {
            query: Some("srv/project".into()),
            status: Some(SessionStatus::Active),
            ..SessionFilter::default()
        };
        assert_eq!(session_ids(&s, f).await, (vec![c.id, b.id], 2));
        // Query text that means something to SQL LIKE is taken literally.
        assert_eq!(session_ids(&s, q("%")).await, (vec![], 0));
        assert_eq!(session_ids(&s, q("_")).await, (vec![], 0));
    }

    pub async fn sessions_limit_offset_total(s: S) {
        let mut all = Vec::new();
        for i in 0..5 {
            let x = session(i * 10);
            s.insert_session(&x).await.expect("insert");
            all.push(x.id);
        }
        all.reverse();
        let page = |limit, offset| SessionFilter {
            limit,
            offset,
            ..SessionFilter::default()
        };
        assert_eq!(session_ids(&s, page(2, 0)).await, (all[0..2].to_vec(), 5));
        assert_eq!(session_ids(&s, page(2, 4)).await, (all[4..].to_vec(), 5));
        assert_eq!(session_ids(&s, page(2, 5)).await, (vec![], 5));
        assert_eq!(session_ids(&s, page(0, 1)).await, (all[1..].to_vec(), 5));
    }

    pub async fn delete_sessions_idle_since(s: S) {
        let mut old = session(0);
        old.updated_at = at(1_000);
        let mut edge = session(0);
        edge.updated_at = at(5_000);
        let mut fresh = session(0);
        fresh.updated_at = at(9_000);
        for x in [&old, &edge, &fresh] {
            s.insert_session(x).await.expect("insert");
        }
        assert_eq!(
            s.delete_sessions_idle_since(at(5_000))
                .await
                .expect("delete"),
            1
        );
        assert_eq!(s.get_session(old.id).await.expect("get"), None);
        assert!(s.get_session(edge.id).await.expect("get").is_some());
        assert!(s.get_session(fresh.id).await.expect("get").is_some());
        // Touching a session keeps it.
        let mut touched = edge.clone();
        touched.updated_at = at(20_000);
        assert!(s.update_session(&touched).await.expect("update"));
        assert_eq!(
            s.delete_sessions_idle_since(at(10_000))
                .await
                .expect("delete"),
            1
        );
        let (left, total) = session_ids(&s, SessionFilter::default()).await;
        assert_eq!((left, total), (vec![edge.id], 1));
    }

    pub async fn stats_days(s: S) {
        let d = |day: u32| NaiveDate::from_ymd_opt(2026, 1, day).expect("date");
        assert!(s
            .load_stats_days(d(1), d(31))
            .await
            .expect("load")
            .is_empty());
        s.save_stats_day(d(3), &json!({"runs": 3}))
            .await
            .expect("save");
        s.save_stats_day(d(1), &json!({"runs": 1}))
            .await
            .expect("save");
        s.save_stats_day(d(2), &json!({"runs": 2, "by_model": {"m": 1.5}}))
            .await
            .expect("save");
        s.save_stats_day(d(3), &json!({"runs": 33}))
            .await
            .expect("overwrite");
        s.save_stats_day(d(10), &json!({"runs": 10}))
            .await
            .expect("save");

        let got = s.load_stats_days(d(1), d(3)).await.expect("load");
        assert_eq!(
            got,
            vec![
                (d(1), json!({"runs": 1})),
                (d(2), json!({"runs": 2, "by_model": {"m": 1.5}})),
                (d(3), json!({"runs": 33})),
            ]
        );
        let days: Vec<NaiveDate> = s
            .load_stats_days(d(2), d(30))
            .await
            .expect("load")
            .into_iter()
            .map(|(day, _)| day)
            .collect();
        assert_eq!(days, vec![d(2), d(3), d(10)]);
        assert!(s
            .load_stats_days(d(4), d(9))
            .await
            .expect("load")
            .is_empty());
        assert!(s
            .load_stats_days(d(3), d(1))
            .await
            .expect("load")
            .is_empty());

        assert_eq!(s.prune_stats_before(d(3)).await.expect("prune"), 2);
        let days: HashSet<NaiveDate> = s
            .load_stats_days(d(1), d(31))
            .await
            .expect("load")
            .into_iter()
            .map(|(day, _)| day)
            .collect();
        assert_eq!(days, HashSet::from([d(3), d(10)]));
        assert_eq!(s.prune_stats_before(d(3)).await.expect("prune"), 0);
    }

    pub async fn idempotency_claims(s: S) {
        let now = chrono::Utc::now();
        let later = now + chrono::Duration::hours(24);
        let first = json!({"task_ids": ["a"]});
        assert_eq!(
            s.claim_idempotency_key("k1", &first, now, later)
                .await
                .expect("claim"),
            None
        );
        // A second claim gets the first value back, unchanged.
        let again = s
            .claim_idempotency_key("k1", &json!({"task_ids": ["b"]}), now, later)
            .await
            .expect("claim");
        assert_eq!(again, Some(first.clone()));
        // Other keys are independent.
        assert_eq!(
            s.claim_idempotency_key("k2", &json!(2), now, later)
                .await
                .expect("claim"),
            None
        );
        // After expiry the key can be claimed anew.
        let after = later + chrono::Duration::seconds(1);
        assert_eq!(
            s.claim_idempotency_key(
                "k1",
                &json!("new"),
                after,
                after + chrono::Duration::hours(1)
            )
            .await
            .expect("claim"),
            None
        );
        assert_eq!(
            s.claim_idempotency_key("k1", &json!("x"), after, after)
                .await
                .expect("claim"),
            Some(json!("new"))
        );
        // A claim is given back only while it holds the value its maker gave it.
        let mine = json!({"task_ids": ["c"], "claimed_at": 1});
        assert_eq!(
            s.claim_idempotency_key("k3", &mine, now, later)
                .await
                .expect("claim"),
            None
        );
        assert!(!s
            .release_idempotency_key("k3", &json!({"task_ids": ["other"]}))
            .await
            .expect("release"));
        assert!(s
            .release_idempotency_key("k3", &mine)
            .await
            .expect("release"));
        assert!(!s
            .release_idempotency_key("k3", &mine)
            .await
            .expect("release"));
        // Released: the next claim is made, not answered with the old value.
        assert_eq!(
            s.claim_idempotency_key("k3", &json!("next"), now, later)
                .await
                .expect("claim"),
            None
        );
    }

    fn ms_of(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).expect("valid time")
    }

    pub async fn webhook_outbox(s: S) {
        assert!(s.pending_webhook_jobs().await.expect("load").is_empty());
        let task_id = uuid::Uuid::new_v4();
        let late = webhook_job(task_id, 5_000);
        let early = webhook_job(task_id, 1_000);
        s.save_webhook_job(&late).await.expect("save");
        s.save_webhook_job(&early).await.expect("save");

        let got = s.pending_webhook_jobs().await.expect("load");
        assert_eq!(
            got.iter().map(|j| j.webhook_id.clone()).collect::<Vec<_>>(),
            vec![early.webhook_id.clone(), late.webhook_id.clone()],
            "oldest first"
        );
        let mut expected = early.clone();
        expected.created_at = ms_of(early.created_at);
        expected.next_attempt_at = ms_of(early.next_attempt_at);
        assert_eq!(
            got[0], expected,
            "round trip, times kept to the millisecond"
        );

        // Saving again replaces (after a failed attempt).
        let mut retried = early.clone();
        retried.attempts = 2;
        retried.next_attempt_at = at(9_000);
        s.save_webhook_job(&retried).await.expect("update");
        let got = s.pending_webhook_jobs().await.expect("load");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].attempts, 2);
        assert_eq!(got[0].next_attempt_at, at(9_000));

        assert!(s
            .delete_webhook_job(&early.webhook_id)
            .await
            .expect("delete"));
        assert!(!s
            .delete_webhook_job(&early.webhook_id)
            .await
            .expect("delete again"));
        assert!(!s
            .delete_webhook_job("msg_unknown")
            .await
            .expect("delete unknown"));
        let got = s.pending_webhook_jobs().await.expect("load");
        assert_eq!(
            got.iter().map(|j| j.webhook_id.clone()).collect::<Vec<_>>(),
            vec![late.webhook_id]
        );
    }

    pub async fn webhook_attempts_in_order(s: S) {
        let a = webhook_job(uuid::Uuid::new_v4(), 0);
        let b = webhook_job(uuid::Uuid::new_v4(), 0);
        assert!(s
            .webhook_attempts(a.task_id)
            .await
            .expect("read")
            .is_empty());
        // Recorded out of time order on purpose: the history keeps recording order.
        let first = webhook_attempt(&a, 1, 300, Some(500));
        let second = webhook_attempt(&a, 2, 200, None);
        let third = webhook_attempt(&a, 3, 400, Some(200));
        for att in [
            &first,
            &webhook_attempt(&b, 1, 100, Some(200)),
            &second,
            &third,
        ] {
            s.record_webhook_attempt(att).await.expect("record");
        }
        let got = s.webhook_attempts(a.task_id).await.expect("read");
        assert_eq!(
            got.iter().map(|x| x.attempt).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let mut expected = first.clone();
        expected.at = ms_of(first.at);
        assert_eq!(got[0], expected);
        assert_eq!(got[1].status_code, None);
        assert!(got[2].succeeded() && !got[0].succeeded());
        assert_eq!(s.webhook_attempts(b.task_id).await.expect("read").len(), 1);
        // The history is independent of the outbox.
        assert!(s.pending_webhook_jobs().await.expect("load").is_empty());
    }

    pub async fn webhook_attempts_pruned(s: S) {
        let a = webhook_job(uuid::Uuid::new_v4(), 0);
        for (n, ms) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
            s.record_webhook_attempt(&webhook_attempt(&a, n, ms, Some(500)))
                .await
                .expect("record");
        }
        // `at(2_000)` + 789 µs is kept as at(2_000): not before at(2_000).
        assert_eq!(
            s.prune_webhook_attempts_before(at(2_000))
                .await
                .expect("prune"),
            1
        );
        let left: Vec<u32> = s
            .webhook_attempts(a.task_id)
            .await
            .expect("read")
            .iter()
            .map(|x| x.attempt)
            .collect();
        assert_eq!(left, vec![2, 3]);
        assert_eq!(
            s.prune_webhook_attempts_before(at(10_000))
                .await
                .expect("prune"),
            2
        );
        assert!(s
            .webhook_attempts(a.task_id)
            .await
            .expect("read")
            .is_empty());
    }

    /// What every backend grants: a claim on a stored delivery (by its owner, again and again)
    /// returns the delivery as stored now; a delivery that is not (or no longer) in the outbox
    /// cannot be claimed. Exclusivity between owners is the shared backend's (Redis) and is
    /// tested with it.
    pub async fn webhook_claims(s: S) {
        let ttl = std::time::Duration::from_secs(30);
        assert_eq!(
            s.claim_webhook_job("msg_unknown", "i1", ttl)
                .await
                .expect("claim"),
            None
        );
        let job = webhook_job(uuid::Uuid::new_v4(), 1_000);
        s.save_webhook_job(&job).await.expect("save");
        let got = s
            .claim_webhook_job(&job.webhook_id, "i1", ttl)
            .await
            .expect("claim")
            .expect("granted");
        assert_eq!(got.webhook_id, job.webhook_id);
        assert_eq!(got.attempts, 0);
        // Renewed by its owner; it sees the latest version saved.
        let mut retried = job.clone();
        retried.attempts = 1;
        s.save_webhook_job(&retried).await.expect("update");
        let got = s
            .claim_webhook_job(&job.webhook_id, "i1", ttl)
            .await
            .expect("renew")
            .expect("granted");
        assert_eq!(got.attempts, 1);
        s.release_webhook_job(&job.webhook_id, "i1")
            .await
            .expect("release");
        s.release_webhook_job("msg_unknown", "i1")
            .await
            .expect("release of nothing");
        assert!(s
            .claim_webhook_job(&job.webhook_id, "i2", ttl)
            .await
            .expect("claim after release")
            .is_some());
        // Delivered (deleted): nothing left to claim, for anyone.
        assert!(s.delete_webhook_job(&job.webhook_id).await.expect("delete"));
        for owner in ["i1", "i2"] {
            assert_eq!(
                s.claim_webhook_job(&job.webhook_id, owner, ttl)
                    .await
                    .expect("claim"),
                None
            );
        }
    }

    fn approval(task: &Task, owner: Option<&str>, ms: i64) -> Approval {
        let request = PermissionRequest {
            request_id: format!("req-{ms}"),
            tool_name: "Bash".into(),
            input: serde_json::json!({"command": "mkdir x"}),
            description: Some("Make x".into()),
        };
        Approval::new(task.id, owner.map(str::to_string), &request, at(ms))
    }

    pub async fn approvals_decided_once(s: S) {
        let t = insert(&s, task(5)).await;
        let a = approval(&t, Some("team-a"), 1_000);
        s.insert_approval(&a).await.expect("insert");
        assert_eq!(s.task_approvals(t.id).await.expect("read"), vec![a.clone()]);
        let allow = Decision::Allow {
            message: Some("ok".into()),
            updated_input: Some(serde_json::json!({"command": "mkdir y"})),
        }
        .into_state(Some("alice".into()), at(2_000));
        let Decided::Now(won) = s
            .decide_approval(t.id, a.id, allow.clone())
            .await
            .expect("decide")
        else {
            panic!("a pending approval is decided");
        };
        assert_eq!(won.state, allow);
        // Later decisions (a second caller, the expiry) lose and see the winner.
        match s
            .decide_approval(t.id, a.id, expired(at(3_000)))
            .await
            .expect("decide again")
        {
            Decided::Already(seen) => assert_eq!(seen, won),
            other => panic!("expected Already, got {other:?}"),
        }
        assert_eq!(
            s.decide_approval(t.id, uuid::Uuid::new_v4(), expired(at(3_000)))
                .await
                .expect("decide unknown"),
            Decided::Missing
        );
        let other_task = uuid::Uuid::new_v4();
        assert_eq!(
            s.decide_approval(other_task, a.id, expired(at(3_000)))
                .await
                .expect("decide under another task"),
            Decided::Missing
        );
        assert_eq!(s.task_approvals(t.id).await.expect("read"), vec![won]);
    }

    pub async fn approvals_listed_and_deleted_with_their_task(s: S) {
        let t1 = insert(&s, task(5)).await;
        let t2 = insert(&s, task(5)).await;
        let a1 = approval(&t1, Some("team-a"), 1_000);
        let a2 = approval(&t2, Some("team-b"), 2_000);
        let a3 = approval(&t1, None, 3_000);
        for a in [&a3, &a1, &a2] {
            s.insert_approval(a).await.expect("insert");
        }
        let ids = |v: Vec<Approval>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
        let all = ApprovalFilter::default();
        assert_eq!(
            ids(s.list_approvals(&all).await.expect("list")),
            vec![a1.id, a2.id, a3.id]
        );
        assert_eq!(
            ids(s.task_approvals(t1.id).await.expect("read")),
            vec![a1.id, a3.id]
        );
        s.decide_approval(t2.id, a2.id, expired(at(4_000)))
            .await
            .expect("expire");
        let pending = ApprovalFilter {
            status: Some(ApprovalStatus::Pending),
            ..ApprovalFilter::default()
        };
        assert_eq!(
            ids(s.list_approvals(&pending).await.expect("list")),
            vec![a1.id, a3.id]
        );
        let mine = ApprovalFilter {
            owner: Some(Some("team-a".into())),
            ..ApprovalFilter::default()
        };
        assert_eq!(
            ids(s.list_approvals(&mine).await.expect("list")),
            vec![a1.id]
        );
        let anon = ApprovalFilter {
            owner: Some(None),
            ..ApprovalFilter::default()
        };
        assert_eq!(
            ids(s.list_approvals(&anon).await.expect("list")),
            vec![a3.id]
        );
        let expired_only = ApprovalFilter {
            status: Some(ApprovalStatus::Expired),
            limit: 1,
            ..ApprovalFilter::default()
        };
        assert_eq!(
            ids(s.list_approvals(&expired_only).await.expect("list")),
            vec![a2.id]
        );
        // Retention deletes a task's approvals with it.
        s.finish_task(&finished(&t1, TaskStatus::Completed, 0.0, 1_000))
            .await
            .expect("finish");
        s.delete_tasks_finished_before(at(5_000))
            .await
            .expect("delete");
        assert!(s.task_approvals(t1.id).await.expect("read").is_empty());
        assert_eq!(
            ids(s.list_approvals(&all).await.expect("list")),
            vec![a2.id]
        );
    }
}
