//! The QueueSupervisor and its WorkerActors as actors, on an [`ActorSystem`] of their own:
//! messages in (submissions, cancels, priority changes, shutdown, each of the supervisor's
//! message types), state and replies out (the live figures, the order runs start in, final
//! records, the answers to `WaitFor`, `Leases` and `Shutdown`, the processes left). The CLI is
//! a shell script that records each prompt and answers with a recorded real run, or hangs.
//!
//! The shared-queue tests (Redis: this binary's private redis-server, a namespace per test)
//! start the supervisor alone, without the claim poll, the lease keeper or the control
//! channel (`claims::start`), so each shared-queue message is the test's to send.
//!
//! Every wait is for an event or a poll with a deadline; nothing sleeps to synchronise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::supervisor::{
    ClaimAnswered, EndedElsewhere, Finished, Leases, Read, Tick, WaitFor, Wake, Watch,
};
use super::*;
use crate::config::load::{from_file_doc, Environment};
use crate::model::RunSpec;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::system::ActorSystem;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/claude-cli/m_stream_partial.stdout"
);

/// Longest wait for anything in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

/// The fake CLI in `dir`: it appends each prompt to `dir/runs`; a prompt with "hang" in it
/// writes its pid to `dir/pid` (and appends it to `dir/pids`) and hangs until killed.
fn fake_cli(dir: &Path) -> PathBuf {
    let script = dir.join("claude");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
prompt=$(cat)
echo "$prompt" >> "{dir}/runs"
case "$prompt" in
  *hang*) echo $$ > "{dir}/pid"; echo $$ >> "{dir}/pids"; exec sleep 1000 ;;
esac
cat "{FIXTURE}""#,
            dir = dir.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// A config with `concurrency` slots running the fake CLI in `dir`.
fn config(dir: &Path, concurrency: u32) -> Config {
    let env = Environment {
        home: Some(dir.to_path_buf()),
        port: None,
        host: None,
        path: std::env::var_os("PATH"),
        cwd: dir.to_path_buf(),
        api_key: None,
    };
    let doc = json!({
        "claudePath": fake_cli(dir).display().to_string(),
        "defaultProjectPath": dir.display().to_string(),
        "taskQueue": {"concurrency": concurrency, "killGraceMs": 500},
    });
    let (config, _) = from_file_doc(&doc, &env).expect("config");
    config
}

fn events() -> Arc<EventHub> {
    Arc::new(EventHub::new(Arc::new(|t: &Task| {
        ("end", json!({"id": t.id}))
    })))
}

fn new_task(dir: &Path, prompt: &str, priority: i64) -> Task {
    let spec = RunSpec::new(prompt, dir.to_path_buf(), 30_000);
    Task::new(
        spec,
        Priority::new(priority).expect("priority"),
        TaskMode::Async,
    )
}

/// The prompts the CLI was started with in `dir`, in order.
fn runs_in(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The process groups of the hanging runs started in `dir`.
fn hung_pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Poll `check` until it holds, or fail after [`PATIENCE`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `fut`'s output, or fail after [`PATIENCE`].
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("not within {PATIENCE:?}: {what}"))
}

/// `task` ended `cancelled` now, as [`Queue::cancel`] writes it.
fn cancelled(task: &Task) -> Task {
    let mut task = task.clone();
    let outcome = RunOutcome {
        status: TaskStatus::Cancelled,
        report: None,
        error: Some(TaskError::new(
            ErrorCode::Cancelled,
            CancelReason::Requested.message(),
        )),
        cost_usd: 0.0,
        duration_ms: 0,
    };
    task.finish(&outcome, Utc::now());
    task
}

/// Ask the supervisor in the background (for answers that come later).
fn ask_later<M>(tx: &SupervisorTx, msg: M) -> tokio::task::JoinHandle<Result<M::Result, QueueError>>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    QueueSupervisor: actix::Handler<M>,
{
    let tx = tx.clone();
    tokio::spawn(async move { tx.ask(msg).await })
}

struct Fixture {
    dir: tempfile::TempDir,
    queue: Queue,
    system: ActorSystem,
}

/// A queue with `concurrency` slots over a memory store.
async fn start(concurrency: u32) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), concurrency);
    let system = ActorSystem::start("queue-test", 2).expect("actor system");
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::new());
    let sessions = crate::session::SessionHandle::start(system.arbiter(), store.clone());
    let queue = Queue::start(store, Arc::new(config), events(), None, sessions, &system)
        .await
        .expect("queue");
    Fixture { dir, queue, system }
}

impl Fixture {
    fn task(&self, prompt: &str, priority: i64) -> Task {
        new_task(self.dir.path(), prompt, priority)
    }

    /// The prompts the CLI was started with, in order.
    fn runs(&self) -> Vec<String> {
        runs_in(self.dir.path())
    }

    async fn wait_until(&self, what: &str, check: impl Fn(&Fixture) -> bool) {
        eventually(what, || check(self)).await
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

// ---- the supervisor's messages, one by one (local queue)

/// `WaitFor` answers with the final record of a task the supervisor follows, and `None` at
/// once for one it does not; `Watch` hands the same record to a waiter's channel; `Cancelled`
/// of a pending task ends both.
#[tokio::test]
async fn wait_for_answers_a_followed_task_s_final_record_and_none_for_others() {
    let f = start(1).await;
    let tx = f.queue.tx.clone();
    let (blocker, _) = f.hanging_run().await;
    let queued = f
        .queue
        .submit(f.task("queued", 5), false, false)
        .await
        .expect("submit");
    let id = queued.task.id;

    let unknown = within("an unknown task", tx.ask(WaitFor(TaskId::new_v4()))).await;
    assert_eq!(unknown.expect("an answer"), None);

    let asked = ask_later(&tx, WaitFor(id));
    let (waiter, watched) = oneshot::channel();
    tx.send(Watch { id, waiter }).map_err(|_| ()).expect("sent");
    f.queue
        .cancel(id, CancelReason::Requested)
        .await
        .expect("cancel");
    let answer = within("WaitFor's answer", asked)
        .await
        .expect("joined")
        .expect("an answer")
        .expect("the final record");
    assert_eq!((answer.id, answer.status), (id, TaskStatus::Cancelled));
    let watched = within("Watch's waiter", watched).await.expect("the record");
    assert_eq!(watched.status, TaskStatus::Cancelled);
    assert_eq!(f.queue.live_status().pending, 0);
    assert_eq!(f.runs(), ["hang"], "a cancelled pending task never runs");

    // Final now, so no longer followed: `None`, and `Queue::wait_for` reads the store.
    let again = within("a final task", tx.ask(WaitFor(id))).await;
    assert_eq!(again.expect("an answer"), None);
    let stored = f.queue.wait_for(id).await.expect("stored");
    assert_eq!(stored.status, TaskStatus::Cancelled);

    f.queue
        .cancel(blocker.task.id, CancelReason::Requested)
        .await
        .expect("cancel the blocker");
    f.system.stop();
}

/// `Subscribe`: a listener hears every final record once (a run's, through `Finished`), and
/// an `Announce`d one, which holds no slot and changes no figure.
#[tokio::test]
async fn listeners_hear_each_final_record_once_and_announced_ones_take_no_slot() {
    let f = start(1).await;
    let mut finished = f.queue.subscribe_finished();
    let run = f
        .queue
        .submit(f.task("quick", 5), true, false)
        .await
        .expect("submit");
    let done = within("the run", run.done.expect("a waiter"))
        .await
        .expect("the final record");
    let heard = within("the listener", finished.recv())
        .await
        .expect("a record");
    assert_eq!((heard.id, heard.status), (done.id, TaskStatus::Completed));

    let mut lost = new_task(f.dir.path(), "lost", 5);
    lost.status = TaskStatus::Failed;
    f.queue
        .tx
        .send(Announce(Box::new(lost.clone())))
        .map_err(|_| ())
        .expect("sent");
    let heard = within("the announcement", finished.recv())
        .await
        .expect("a record");
    assert_eq!((heard.id, heard.status), (lost.id, TaskStatus::Failed));
    let live = f.queue.live_status();
    assert_eq!((live.running, live.pending), (0, 0), "{live:?}");
    // Each once: nothing else is waiting once the supervisor has answered a later message.
    let (running, _) = f.queue.tx.ask(Leases).await.expect("leases");
    assert!(running.is_empty());
    assert!(finished.try_recv().is_err(), "a record was told twice");
    f.system.stop();
}

/// `Reconfigure` with a higher limit starts a pending task at once; `Leases` answers the runs
/// going on and the config in force. `Shutdown` is answered once the runs it ended are gone.
#[tokio::test]
async fn reconfigure_applies_a_new_limit_at_once_and_leases_show_the_runs() {
    let f = start(1).await;
    let first = f
        .queue
        .submit(f.task("hang-1", 5), false, false)
        .await
        .expect("first");
    f.wait_until("the first runs", |f| f.runs().len() == 1)
        .await;
    let second = f
        .queue
        .submit(f.task("hang-2", 5), false, false)
        .await
        .expect("second");
    let status = f.queue.live_status();
    assert_eq!((status.running, status.pending), (1, 1), "{status:?}");
    let (running, config) = f.queue.tx.ask(Leases).await.expect("leases");
    assert_eq!(running, [first.task.id]);
    assert_eq!(config.task_queue.concurrency, 1);

    let mut raised = (*config).clone();
    raised.task_queue.concurrency = 2;
    f.queue.reconfigure(Arc::new(raised));
    f.wait_until("the second runs", |f| f.runs().len() == 2)
        .await;
    let status = f.queue.live_status();
    assert_eq!(
        (status.running, status.pending, status.concurrency),
        (2, 0, 2),
        "{status:?}"
    );
    let (mut running, config) = f.queue.tx.ask(Leases).await.expect("leases");
    running.sort();
    let mut expected = vec![first.task.id, second.task.id];
    expected.sort();
    assert_eq!(running, expected);
    assert_eq!(config.task_queue.concurrency, 2);

    within("the shutdown", f.queue.shutdown(Duration::from_millis(100))).await;
    let pids = hung_pids_in(f.dir.path());
    assert_eq!(pids.len(), 2);
    assert!(
        pids.iter().all(|p| !group_alive(*p)),
        "a run outlived the shutdown's answer"
    );
    f.system.stop();
}

/// With nothing running, `Shutdown` is answered at once, whatever the grace, and the
/// supervisor stops: asking fails, and nothing more is queued.
#[tokio::test]
async fn a_shutdown_with_nothing_running_is_answered_at_once_and_stops_the_supervisor() {
    let f = start(1).await;
    within(
        "a shutdown with nothing to wait for",
        f.queue.shutdown(Duration::from_secs(3600)),
    )
    .await;
    let tx = f.queue.tx.clone();
    eventually("the supervisor stops", || tx.send(Wake).is_err()).await;
    let asked = tx.ask(Leases).await;
    assert!(matches!(asked, Err(QueueError::ShuttingDown)), "{asked:?}");
    // A second shutdown finds it gone and returns.
    within(
        "a second shutdown",
        f.queue.shutdown(Duration::from_secs(1)),
    )
    .await;
    f.system.stop();
}

/// A stray `Finished` (a task that is not running here) frees nothing and wakes no one.
#[tokio::test]
async fn a_finished_for_a_task_not_running_here_changes_nothing() {
    let f = start(1).await;
    let (run, pgid) = f.hanging_run().await;
    f.queue
        .tx
        .send(Finished {
            id: TaskId::new_v4(),
            task: None,
            wrote: false,
            handover: None,
        })
        .map_err(|_| ())
        .expect("sent");
    let (running, _) = f.queue.tx.ask(Leases).await.expect("leases");
    assert_eq!(running, [run.task.id]);
    assert_eq!(f.queue.live_status().running, 1);
    assert!(group_alive(pgid));
    f.queue
        .cancel(run.task.id, CancelReason::Requested)
        .await
        .expect("cancel");
    f.wait_until("the group is gone", gone_within(pgid)).await;
    f.system.stop();
}

// ---- the shared queue (Redis)

struct SharedFixture {
    dir: tempfile::TempDir,
    cluster: Arc<Cluster>,
    config: Arc<Config>,
    system: ActorSystem,
}

impl SharedFixture {
    /// An instance of the shared queue on a fresh namespace, its supervisor not yet started.
    async fn new(concurrency: u32) -> SharedFixture {
        let url = crate::store::redis::test_server::shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = crate::store::redis::test_server::test_namespace();
        let store = RedisStore::connect(&url, &ns).await.expect("connect");
        let cluster = Cluster::join(&url, Arc::new(store)).expect("join");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Arc::new(config(dir.path(), concurrency));
        let system = ActorSystem::start("shared-queue-test", 2).expect("actor system");
        SharedFixture {
            dir,
            cluster,
            config,
            system,
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        self.cluster.store().clone()
    }

    /// Start the supervisor alone (see the module docs); its first dispatch claims.
    fn supervise(&self) -> SupervisorTx {
        let store = self.store();
        let sessions = crate::session::SessionHandle::start(self.system.arbiter(), store.clone());
        let setup = Setup {
            store,
            config: self.config.clone(),
            shared: Arc::new(Shared::new(&self.config, 0, HashMap::new())),
            mode: Mode::shared(self.cluster.clone()),
            events: events(),
            workers: self.system.worker_pool(),
            sessions,
        };
        QueueSupervisor::start(self.system.arbiter(), setup)
    }

    /// A task stored pending in Redis, claimable by any instance.
    async fn insert(&self, prompt: &str) -> Task {
        let task = new_task(self.dir.path(), prompt, 5);
        self.store().insert_task(task).await.expect("insert")
    }

    /// `task` ended elsewhere: its record is final in Redis, written by someone else.
    async fn end_elsewhere(&self, task: &Task) -> Task {
        let task = self
            .store()
            .get_task(task.id)
            .await
            .expect("get")
            .expect("task");
        let ended = cancelled(&task);
        assert!(self.store().finish_task(&ended).await.expect("finish"));
        ended
    }

    async fn status_of(&self, id: TaskId) -> TaskStatus {
        self.store()
            .get_task(id)
            .await
            .expect("get")
            .expect("task")
            .status
    }

    fn runs(&self) -> Vec<String> {
        runs_in(self.dir.path())
    }
}

/// `ClaimAnswered`: of the tasks a claim brought, those the free slots allow run; the others
/// go back to the queue, and the freed slot's final write claims them (`Finished` with a
/// handover). `WaitFor` answers with their final records.
#[tokio::test]
async fn shared_a_claim_runs_what_the_free_slots_allow_and_releases_the_rest() {
    let f = SharedFixture::new(1).await;
    let one = f.insert("one").await;
    let two = f.insert("two").await;
    // Leased to this instance before its supervisor starts, whose own first claim then finds
    // nothing.
    let claimed = f
        .cluster
        .store()
        .claim(
            f.cluster.instance().as_str(),
            f.config.task_queue.lease_ms,
            0,
            2,
        )
        .await
        .expect("claim");
    assert_eq!(claimed.ids(), [one.id, two.id]);
    let tx = f.supervise();
    let first = ask_later(&tx, WaitFor(one.id));
    let second = ask_later(&tx, WaitFor(two.id));
    tx.send(ClaimAnswered {
        asked: 2,
        tasks: claimed.tasks,
    })
    .map_err(|_| ())
    .expect("sent");
    for (waited, id) in [(first, one.id), (second, two.id)] {
        let done = within("a final record", waited)
            .await
            .expect("joined")
            .expect("an answer")
            .expect("final");
        assert_eq!((done.id, done.status), (id, TaskStatus::Completed));
    }
    assert_eq!(f.runs(), ["one", "two"], "one at a time, in run order");
    within("the shutdown", tx.ask(Shutdown { grace: PATIENCE }))
        .await
        .expect("answered");
    f.system.stop();
}

/// `Wake` makes an idle instance claim (here nothing else would: no poll runs); `Leases`
/// answers the runs holding a lease; `EndedElsewhere` stops a run of this instance.
#[tokio::test]
async fn shared_wake_claims_leases_show_the_run_and_ended_elsewhere_stops_it() {
    let f = SharedFixture::new(1).await;
    let tx = f.supervise();
    let task = f.insert("hang").await;
    // Sent once: a `Wake` that arrives while the first claim is still out (it may have read
    // before the insert) is kept past that claim's empty answer, and claims again.
    tx.send(Wake).map_err(|_| ()).expect("sent");
    eventually("a wake claims the task", || {
        f.dir.path().join("pid").exists()
    })
    .await;
    let pgid = hung_pids_in(f.dir.path())[0];
    let (leases, _) = tx.ask(Leases).await.expect("leases");
    assert_eq!(leases, [task.id]);

    let ended = f.end_elsewhere(&task).await;
    let waited = ask_later(&tx, WaitFor(task.id));
    tx.send(EndedElsewhere(task.id))
        .map_err(|_| ())
        .expect("sent");
    let answer = within("the waiter", waited)
        .await
        .expect("joined")
        .expect("an answer")
        .expect("final");
    assert_eq!(answer.status, ended.status);
    assert!(!group_alive(pgid), "the run outlived its end");
    let (leases, _) = tx.ask(Leases).await.expect("leases");
    assert!(leases.is_empty());
    within("the shutdown", tx.ask(Shutdown { grace: PATIENCE }))
        .await
        .expect("answered");
    f.system.stop();
}

/// Waiters of tasks other instances end: `Tick` re-reads what they wait for, `EndedElsewhere`
/// reads that one task, `Read` hands over a final record (and a live one wakes no one).
/// `Cancelled` written here tells the listeners once, and stops a run of this instance.
#[tokio::test]
async fn shared_waiters_hear_of_tasks_ended_elsewhere_and_a_cancel_is_told_once() {
    let f = SharedFixture::new(1).await;
    let tx = f.supervise();
    let (listener, mut finished) = mpsc::unbounded_channel();
    tx.send(Subscribe(listener)).map_err(|_| ()).expect("sent");
    let blocker = f.insert("hang").await;
    eventually("the blocker runs", || {
        let _ = tx.send(Wake);
        f.dir.path().join("pid").exists()
    })
    .await;
    // The only slot is taken: these stay pending in Redis, however often a claim is wanted.
    let by_tick = f.insert("b").await;
    let by_read = f.insert("c").await;
    let by_notice = f.insert("d").await;
    let tick_waiter = ask_later(&tx, WaitFor(by_tick.id));
    let notice_waiter = ask_later(&tx, WaitFor(by_notice.id));
    let (waiter, read_waiter) = oneshot::channel();
    tx.send(Watch {
        id: by_read.id,
        waiter,
    })
    .map_err(|_| ())
    .expect("sent");

    f.end_elsewhere(&by_tick).await;
    tx.send(Tick).map_err(|_| ()).expect("sent");
    let answer = within("Tick's read", tick_waiter)
        .await
        .expect("joined")
        .expect("an answer")
        .expect("final");
    assert_eq!(answer.status, TaskStatus::Cancelled);

    f.end_elsewhere(&by_notice).await;
    tx.send(EndedElsewhere(by_notice.id))
        .map_err(|_| ())
        .expect("sent");
    let answer = within("EndedElsewhere's read", notice_waiter)
        .await
        .expect("joined")
        .expect("an answer")
        .expect("final");
    assert_eq!(answer.status, TaskStatus::Cancelled);

    // A live record wakes no one; a final one does.
    tx.send(Read(Box::new(by_read.clone())))
        .map_err(|_| ())
        .expect("sent");
    let ended = cancelled(&by_read);
    tx.send(Read(Box::new(ended.clone())))
        .map_err(|_| ())
        .expect("sent");
    let heard = within("Read's waiter", read_waiter)
        .await
        .expect("a record");
    assert_eq!(heard.status, TaskStatus::Cancelled);
    assert_eq!(f.status_of(by_read.id).await, TaskStatus::Pending);

    // This instance cancels its own run: listeners hear it at once, and once.
    let pgid = hung_pids_in(f.dir.path())[0];
    let blocker_waiter = ask_later(&tx, WaitFor(blocker.id));
    let cancelled_run = f.end_elsewhere(&blocker).await;
    tx.send(Cancelled {
        id: blocker.id,
        task: Box::new(cancelled_run),
    })
    .map_err(|_| ())
    .expect("sent");
    let heard = within("the listener", finished.recv())
        .await
        .expect("a record");
    assert_eq!(
        (heard.id, heard.status),
        (blocker.id, TaskStatus::Cancelled)
    );
    let answer = within("the run's waiter", blocker_waiter)
        .await
        .expect("joined")
        .expect("an answer")
        .expect("final");
    assert_eq!(answer.status, TaskStatus::Cancelled);
    assert!(!group_alive(pgid), "the run outlived its end");
    // Its slot freed, the task still pending in Redis ("c") is claimed and runs.
    eventually("the freed slot takes the pending task", || {
        f.runs().iter().any(|r| r == "c")
    })
    .await;
    within("the shutdown", tx.ask(Shutdown { grace: PATIENCE }))
        .await
        .expect("answered");
    let told: Vec<TaskId> = std::iter::from_fn(|| finished.try_recv().ok())
        .map(|t| t.id)
        .collect();
    assert!(
        !told.contains(&blocker.id),
        "the cancel was told twice: {told:?}"
    );
    f.system.stop();
}
