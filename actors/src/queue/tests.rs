//! The QueueSupervisor and its WorkerActors as actors, on an [`ActorSystem`] of their own:
//! messages in (submissions, cancels, priority changes, shutdown), state and replies out (the
//! live figures, the order runs start in, final records, the processes left). The CLI is a
//! shell script that records each prompt and answers with a recorded real run, or hangs.
//!
//! Every wait is for an event or a poll with a deadline; nothing sleeps to synchronise.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::config::load::{from_file_doc, Environment};
use crate::model::RunSpec;
use crate::store::memory::MemoryStore;
use crate::system::ActorSystem;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/claude-cli/m_stream_partial.stdout"
);

struct Fixture {
    dir: tempfile::TempDir,
    queue: Queue,
    system: ActorSystem,
}

/// A queue with `concurrency` slots over a memory store.
async fn start(concurrency: u32) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("claude");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
prompt=$(cat)
echo "$prompt" >> "{dir}/runs"
case "$prompt" in
  *hang*) echo $$ > "{dir}/pid"; exec sleep 1000 ;;
esac
cat "{FIXTURE}""#,
            dir = dir.path().display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let env = Environment {
        home: Some(dir.path().to_path_buf()),
        port: None,
        host: None,
        path: std::env::var_os("PATH"),
        cwd: dir.path().to_path_buf(),
        api_key: None,
    };
    let doc = json!({
        "claudePath": script.display().to_string(),
        "defaultProjectPath": dir.path().display().to_string(),
        "taskQueue": {"concurrency": concurrency, "killGraceMs": 500},
    });
    let (config, _) = from_file_doc(&doc, &env).expect("config");
    let system = ActorSystem::start("queue-test", 2).expect("actor system");
    let events = Arc::new(EventHub::new(Arc::new(|t: &Task| {
        ("end", json!({"id": t.id}))
    })));
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::new());
    let sessions = crate::session::SessionHandle::start(system.arbiter(), store.clone());
    let queue = Queue::start(store, Arc::new(config), events, None, sessions, &system)
        .await
        .expect("queue");
    Fixture { dir, queue, system }
}

impl Fixture {
    fn task(&self, prompt: &str, priority: i64) -> Task {
        let spec = RunSpec::new(prompt, self.dir.path().to_path_buf(), 30_000);
        Task::new(
            spec,
            Priority::new(priority).expect("priority"),
            TaskMode::Async,
        )
    }

    /// The prompts the CLI was started with, in order.
    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    async fn wait_until(&self, what: &str, check: impl Fn(&Fixture) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check(self) {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A run that hangs until it is stopped, started and waited for: its submission and its
    /// process group.
    async fn hanging_run(&self) -> (Submitted, i32) {
        let run = self
            .queue
            .submit(self.task("hang", 5), true, false)
            .await
            .expect("submit");
        self.wait_until("it runs", |f| f.dir.path().join("pid").exists())
            .await;
        (run, self.hung_pid())
    }

    fn hung_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .expect("the hanging run wrote its pid")
    }
}

/// Whether any process of group `pgid` is alive.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 checks for existence and sends nothing.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn gone_within(pgid: i32) -> impl Fn(&Fixture) -> bool {
    move |_| !group_alive(pgid)
}

#[tokio::test]
async fn runs_start_by_priority_within_the_limit_and_waiters_get_the_final_record() {
    let f = start(1).await;
    let blocker = f
        .queue
        .submit(f.task("hang", 10), false, false)
        .await
        .expect("submit");
    f.wait_until("the blocker runs", |f| f.runs().len() == 1)
        .await;
    f.queue
        .submit(f.task("low", 1), false, false)
        .await
        .expect("low");
    let high = f
        .queue
        .submit(f.task("high", 9), true, false)
        .await
        .expect("high");
    let mid = f
        .queue
        .submit(f.task("mid", 5), false, false)
        .await
        .expect("mid");
    let status = f.queue.live_status();
    assert_eq!((status.running, status.pending), (1, 3), "{status:?}");

    // The last becomes the first: a priority change reorders at once.
    f.queue
        .set_priority(mid.task.id, Priority::new(10).expect("priority"))
        .await
        .expect("reprioritise");
    f.queue
        .cancel(blocker.task.id, CancelReason::Requested)
        .await
        .expect("cancel");
    let done = high
        .done
        .expect("a waiter")
        .await
        .expect("the final record");
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    f.wait_until("every run", |f| f.runs().len() == 4).await;
    assert_eq!(f.runs(), ["hang", "mid", "high", "low"]);
    f.wait_until("the queue empties", |f| {
        let s = f.queue.live_status();
        s.running == 0 && s.pending == 0
    })
    .await;
    f.system.stop();
}

#[tokio::test]
async fn a_cancel_stops_the_worker_and_its_process_group_is_gone() {
    let f = start(2).await;
    let (run, pgid) = f.hanging_run().await;
    assert!(group_alive(pgid));
    let cancelled = f
        .queue
        .cancel(run.task.id, CancelReason::Requested)
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    // The waiter hears once the worker is done, which is after its process group is gone.
    let done = run.done.expect("a waiter").await.expect("the final record");
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert!(!group_alive(pgid), "the run's group outlived its worker");
    assert_eq!(f.queue.live_status().running, 0);
    // A finished task cannot be cancelled again.
    let again = f.queue.cancel(run.task.id, CancelReason::Requested).await;
    assert!(
        matches!(again, Err(QueueError::AlreadyFinished(_))),
        "{again:?}"
    );
    f.system.stop();
}

#[tokio::test]
async fn shutdown_ends_the_runs_after_the_grace_and_refuses_new_ones() {
    let f = start(1).await;
    let (run, pgid) = f.hanging_run().await;
    f.queue.shutdown(Duration::from_millis(100)).await;
    let done = run.done.expect("a waiter").await.expect("the final record");
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    f.wait_until("the group is gone", gone_within(pgid)).await;
    let refused = f.queue.submit(f.task("late", 5), false, false).await;
    assert!(
        matches!(refused, Err(QueueError::ShuttingDown)),
        "a run was taken"
    );
    assert_eq!(f.runs(), ["hang"]);
    f.system.stop();
}
