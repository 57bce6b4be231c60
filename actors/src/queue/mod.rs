//! The scheduler: every run is a task, and every task goes through one [`Queue`].
//!
//! * [`order`]      — pending tasks in run order (pure).
//! * [`supervisor`] — the QueueSupervisor: an actix actor that owns the pending order, the
//!   running set and the concurrency limit, and is driven by messages (a type each, with its
//!   handler). Whether the queue is this instance's or shared through Redis is chosen once,
//!   at start (its `Mode`).
//! * [`worker`]     — the WorkerActor: one per run; starts the task in the store, runs the CLI,
//!   writes the final record, reports back.
//!
//! Store writes happen in the callers' tasks, not in the supervisor's loop, so the mailbox never
//! waits on disk and concurrent submissions share one SQLite commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{Cluster, Control};
use crate::config::Config;
use crate::error::ErrorCode;
use crate::events::EventHub;
use crate::model::{
    Priority, RunOutcome, SessionId, Task, TaskError, TaskId, TaskMode, TaskStatus,
};
use crate::recent::{Recent, HEALTH_MAX_AGE};
use crate::store::redis::Refused;
use crate::store::{Store, StoreError};

mod claims;
pub mod lanes;
pub mod order;
pub mod supervisor;
pub mod worker;

#[cfg(test)]
mod tests;

use crate::session::SessionHandle;
use crate::system::ActorSystem;
use supervisor::{
    Announce, Cancelled, Enqueue, Mode, QueueSupervisor, Reconfigure, Reprioritise, Setup,
    Shutdown, Subscribe, SupervisorTx, WaitFor, Wake, Watch,
};

/// Why a submission or a control request failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QueueError {
    #[error("the queue is full ({0} tasks pending); try again later")]
    QueueFull(u64),
    #[error("the server is shutting down and accepts no new runs")]
    ShuttingDown,
    #[error("task not found")]
    NotFound,
    #[error("the task has already finished ({0})")]
    AlreadyFinished(&'static str),
    #[error("only a pending task can change priority (this one is {0})")]
    NotPending(&'static str),
    #[error("another turn of this session is running; try again when it has finished")]
    SessionBusy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueError {
    pub fn code(&self) -> ErrorCode {
        match self {
            QueueError::QueueFull(_) => ErrorCode::QueueFull,
            QueueError::ShuttingDown => ErrorCode::ShuttingDown,
            QueueError::NotFound => ErrorCode::NotFound,
            QueueError::AlreadyFinished(_) | QueueError::NotPending(_) => ErrorCode::InvalidState,
            QueueError::SessionBusy => ErrorCode::SessionBusy,
            QueueError::Store(_) => ErrorCode::StorageUnavailable,
        }
    }
}

/// The channel of a caller who waits for a task's final record (`wait`), or none.
fn waiter(
    wait: bool,
) -> (
    Option<oneshot::Sender<Task>>,
    Option<oneshot::Receiver<Task>>,
) {
    if wait {
        let (t, r) = oneshot::channel();
        (Some(t), Some(r))
    } else {
        (None, None)
    }
}

/// Why a task is being cancelled: recorded in its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// `DELETE /api/tasks/:id`.
    Requested,
    /// The sync client went away (`cancelOnDisconnect`).
    ClientDisconnected,
}

impl CancelReason {
    fn message(self) -> &'static str {
        match self {
            CancelReason::Requested => "The task was cancelled.",
            CancelReason::ClientDisconnected => {
                "The task was cancelled because its client disconnected."
            }
        }
    }
}

/// A submitted task, and for sync callers the receiver of its final record.
pub struct Submitted {
    pub task: Task,
    pub done: Option<oneshot::Receiver<Task>>,
}

/// Live figures of the scheduler (from memory, no storage access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveStatus {
    pub pending: u64,
    pub running: u64,
    pub concurrency: u64,
    pub accepting: bool,
}

/// Counters shared between the handle and the supervisor.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Pending tasks, including submissions reserved but not yet stored (so `maxPending`
    /// cannot be overshot by concurrent submissions).
    pending: AtomicU64,
    running: AtomicU64,
    concurrency: AtomicU64,
    max_pending: AtomicU64,
    accepting: AtomicBool,
    /// Live (pending or running) tasks per session: a sync turn on a busy session is refused
    /// under this lock, so two requests cannot both see it idle.
    session_tasks: Mutex<HashMap<SessionId, u32>>,
}

impl Shared {
    /// The figures at start: `pending` tasks recovered, of which `session_tasks` per session.
    fn new(config: &Config, pending: u64, session_tasks: HashMap<SessionId, u32>) -> Shared {
        Shared {
            pending: AtomicU64::new(pending),
            running: AtomicU64::new(0),
            concurrency: AtomicU64::new(config.task_queue.concurrency.into()),
            max_pending: AtomicU64::new(config.task_queue.max_pending),
            accepting: AtomicBool::new(true),
            session_tasks: Mutex::new(session_tasks),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, u32>> {
        self.session_tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a new live task of `sid`; with `exclusive`, only if the session is idle.
    fn session_task_started(&self, sid: SessionId, exclusive: bool) -> Result<(), QueueError> {
        let mut map = self.sessions();
        let n = map.entry(sid).or_insert(0);
        if exclusive && *n > 0 {
            return Err(QueueError::SessionBusy);
        }
        *n += 1;
        Ok(())
    }

    pub(crate) fn session_task_ended(&self, sid: SessionId) {
        let mut map = self.sessions();
        if let Some(n) = map.get_mut(&sid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&sid);
                crate::mem::shrink_sparse(&mut *map);
            }
        }
    }
}

/// The handle every HTTP handler uses. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: SupervisorTx,
    /// Tasks this start-up ended `interrupted`, told to the listeners by
    /// [`Queue::announce_interrupted`] once they have subscribed.
    interrupted: Arc<Mutex<Vec<TaskId>>>,
    store: Arc<dyn Store>,
    /// The SessionActor its workers record turns with.
    sessions: SessionHandle,
    shared: Arc<Shared>,
    events: Arc<EventHub>,
    /// With Redis storage: the instances sharing the queue.
    cluster: Option<Arc<Cluster>>,
    /// With Redis: the namespace's pending count, read at most every
    /// [`crate::recent::HEALTH_MAX_AGE`] however often `/health` and the status are polled.
    shared_pending: Arc<Recent<Option<u64>>>,
}

impl Queue {
    /// Recover from a previous run (tasks left `processing` end `failed`/`interrupted`, and so
    /// do pending sync runs, whose callers were connected to the previous process; pending
    /// async and batch tasks are queued again in order) and start the supervisor. `sessions`
    /// (the SessionActor) records each turn on its session.
    pub async fn start(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        events: Arc<EventHub>,
        cluster: Option<Arc<Cluster>>,
        sessions: SessionHandle,
        system: &ActorSystem,
    ) -> Result<Queue, StoreError> {
        events.set_replay_bytes(config.limits.event_replay_bytes);
        if let Some(cluster) = cluster {
            return Ok(Queue::start_shared(
                store, config, events, cluster, sessions, system,
            ));
        }
        let mut interrupted = store.interrupt_processing(Utc::now()).await?;
        if !interrupted.is_empty() {
            log::warn!(
                count = interrupted.len();
                "tasks that were running when the server stopped are marked failed/interrupted"
            );
            // Their CLI processes and tools may have outlived the daemon (a tool's grandchild
            // does not get the parent-death signal): end every process marked with their ids.
            let markers = interrupted.iter().map(|id| id.to_string()).collect();
            let killed = crate::claude::marker::signal_all(&markers, libc::SIGKILL);
            if killed > 0 {
                log::warn!(count = killed; "killed processes left by interrupted runs");
            }
        }
        let (pending, orphaned): (Vec<Task>, Vec<Task>) = store
            .pending_tasks()
            .await?
            .into_iter()
            .partition(|t| t.mode != TaskMode::Sync);
        // Nobody waits for these any more; running one now would spend money on an answer no
        // one receives, or run a second time a prompt whose caller got its answer before a
        // power cut took the record of it (a sync run's records are written lazily).
        if !orphaned.is_empty() {
            log::warn!(
                count = orphaned.len();
                "sync runs still pending when the server stopped are marked failed/interrupted"
            );
        }
        for mut task in orphaned {
            crate::store::rules::interrupt_with(
                &mut task,
                Utc::now(),
                "The server stopped before this sync run started; its caller was gone.",
            );
            if store.finish_task(&task).await? {
                interrupted.push(task.id);
            }
        }
        let mut session_tasks: HashMap<SessionId, u32> = HashMap::new();
        for sid in pending.iter().filter_map(|t| t.session_id) {
            *session_tasks.entry(sid).or_insert(0) += 1;
        }
        let shared = Arc::new(Shared::new(&config, pending.len() as u64, session_tasks));
        if !pending.is_empty() {
            log::info!(
                count = pending.len();
                "pending tasks recovered from storage"
            );
        }
        let setup = Setup {
            store,
            config,
            shared,
            mode: Mode::local(pending),
            events,
            workers: system.worker_pool(),
            sessions,
        };
        Ok(Queue::launch(system, setup, interrupted, None))
    }

    /// Start the supervisor on the actor system's arbiter, and the handle over it.
    fn launch(
        system: &ActorSystem,
        setup: Setup,
        interrupted: Vec<TaskId>,
        cluster: Option<Arc<Cluster>>,
    ) -> Queue {
        let store = setup.store.clone();
        let shared = setup.shared.clone();
        let events = setup.events.clone();
        let sessions = setup.sessions.clone();
        Queue {
            tx: QueueSupervisor::start(system.arbiter(), setup),
            interrupted: Arc::new(Mutex::new(interrupted)),
            store,
            sessions,
            shared,
            events,
            cluster,
            shared_pending: Arc::new(Recent::new(HEALTH_MAX_AGE)),
        }
    }

    /// With Redis storage: the queue is shared by every instance on the namespace. Nothing is
    /// recovered at start-up: pending tasks wait in Redis for any instance to claim them, and a
    /// run left by a dead instance is ended by whichever instance reaps its expired lease.
    fn start_shared(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        events: Arc<EventHub>,
        cluster: Arc<Cluster>,
        sessions: SessionHandle,
        system: &ActorSystem,
    ) -> Queue {
        let shared = Arc::new(Shared::new(&config, 0, HashMap::new()));
        let lease_ms = config.task_queue.lease_ms;
        let setup = Setup {
            store,
            config,
            shared,
            mode: Mode::shared(cluster.clone()),
            events,
            workers: system.worker_pool(),
            sessions,
        };
        let queue = Queue::launch(system, setup, Vec::new(), Some(cluster.clone()));
        claims::start(cluster, queue.tx.clone(), lease_ms);
        queue
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The SessionActor the queue's workers record turns with: the writer of session records.
    pub fn sessions(&self) -> &SessionHandle {
        &self.sessions
    }

    /// With Redis storage: this instance among those sharing the queue.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The live events of runs.
    pub fn events(&self) -> &Arc<EventHub> {
        &self.events
    }

    /// Store a new task durably, then queue it. With `wait`, also return a receiver for its
    /// final record. A returned `Ok` means the task is on disk (SQLite) and will run.
    ///
    /// A session turn (`task.session_id`) runs after the session's earlier turns; with
    /// `exclusive` it is refused (`SessionBusy`) while another turn is pending or running.
    pub async fn submit(
        &self,
        task: Task,
        wait: bool,
        exclusive: bool,
    ) -> Result<Submitted, QueueError> {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Err(QueueError::ShuttingDown);
        }
        if let Some(cluster) = &self.cluster {
            return self
                .submit_shared(cluster.clone(), task, wait, exclusive)
                .await;
        }
        let session = task.session_id;
        if let Some(sid) = session {
            self.shared.session_task_started(sid, exclusive)?;
        }
        let undo = move |shared: &Shared, pending_reserved: bool| {
            if pending_reserved {
                shared.pending.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(sid) = session {
                shared.session_task_ended(sid);
            }
        };
        if let Err(e) = self.reserve_pending_slot() {
            undo(&self.shared, false);
            return Err(e);
        }
        let (done_tx, done_rx) = waiter(wait);
        // Storing and queueing must happen together: a caller's future may be dropped at any
        // await (actix-web drops a handler whose client went away), and a task stored but never
        // queued would wait until the next restart. So both run on their own task.
        let queue = self.clone();
        let stored = tokio::spawn(async move {
            // A waiting caller's answer is the final record, durable itself (see the stores).
            let inserted = if wait {
                queue.store.insert_task_lazily(task).await
            } else {
                queue.store.insert_task(task).await
            };
            let stored = match inserted {
                Ok(t) => t,
                Err(e) => {
                    undo(&queue.shared, true);
                    return Err(QueueError::from(e));
                }
            };
            let msg = Enqueue {
                id: stored.id,
                priority: stored.priority,
                seq: stored.seq,
                session,
                waiter: done_tx,
            };
            if queue.tx.send(msg).is_err() {
                // The supervisor is gone (shutdown): the task stays pending in storage and
                // runs after the next start.
                return Err(QueueError::ShuttingDown);
            }
            Ok(stored)
        })
        .await
        .map_err(|_| {
            QueueError::Store(StoreError::Unavailable("the submission task failed".into()))
        })??;
        Ok(Submitted {
            task: stored,
            done: done_rx,
        })
    }

    /// [`Queue::submit`] on the shared queue: Redis checks the session and `maxPending` and
    /// stores the task in one script; any instance may then claim it.
    async fn submit_shared(
        &self,
        cluster: Arc<Cluster>,
        task: Task,
        wait: bool,
        exclusive: bool,
    ) -> Result<Submitted, QueueError> {
        let max_pending = self.shared.max_pending.load(Ordering::SeqCst);
        let (done_tx, done_rx) = waiter(wait);
        // As in `submit`: storing and announcing happen together even if the caller goes away.
        // On the connections' runtime: two Redis calls in a row, and only the answer crosses
        // back to the caller's thread.
        let queue = self.clone();
        let stored = cluster
            .io()
            .spawn(async move {
                let stored = match cluster
                    .store()
                    .insert_checked(task, exclusive, max_pending)
                    .await?
                {
                    Ok(t) => t,
                    Err(Refused::SessionBusy) => return Err(QueueError::SessionBusy),
                    Err(Refused::QueueFull(n)) => return Err(QueueError::QueueFull(n)),
                };
                queue.shared.pending.fetch_add(1, Ordering::SeqCst);
                if let Some(waiter) = done_tx {
                    let _ = queue.tx.send(Watch {
                        id: stored.id,
                        waiter,
                    });
                }
                let _ = queue.tx.send(Wake);
                // The other instances hear of it without the caller waiting for Redis's answer.
                tokio::spawn(async move { cluster.publish(&Control::Enqueued).await });
                Ok(stored)
            })
            .await
            .map_err(|_| {
                QueueError::Store(StoreError::Unavailable("the submission task failed".into()))
            })??;
        Ok(Submitted {
            task: stored,
            done: done_rx,
        })
    }

    fn reserve_pending_slot(&self) -> Result<(), QueueError> {
        let max = self.shared.max_pending.load(Ordering::SeqCst);
        self.shared
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(QueueError::QueueFull)
    }

    /// Wait for the final record of a task that is already queued (e.g. a batch item).
    pub async fn wait_for(&self, id: TaskId) -> Result<Task, QueueError> {
        match self.tx.ask(WaitFor(id)).await {
            Ok(Some(task)) => Ok(task),
            // Not followed by the supervisor: it is already final (or unknown). Or the
            // supervisor is gone: the store has the last word either way.
            Ok(None) | Err(_) => self.store.get_task(id).await?.ok_or(QueueError::NotFound),
        }
    }

    /// Cancel a task. Pending: it never runs. Running: its final status is written as
    /// `cancelled` now, and its process group is killed; the slot frees once it is dead.
    pub async fn cancel(&self, id: TaskId, reason: CancelReason) -> Result<Task, QueueError> {
        let mut task = self.store.get_task(id).await?.ok_or(QueueError::NotFound)?;
        if task.status.is_final() {
            return Err(QueueError::AlreadyFinished(task.status.as_str()));
        }
        let now = Utc::now();
        let ran_ms = task
            .started_at
            .map(|s| (now - s).num_milliseconds().max(0) as u64)
            .unwrap_or(0);
        let outcome = RunOutcome {
            status: TaskStatus::Cancelled,
            report: None,
            error: Some(TaskError::new(ErrorCode::Cancelled, reason.message())),
            cost_usd: 0.0,
            duration_ms: ran_ms,
        };
        task.finish(&outcome, now);
        // Writing `cancelled` and telling the supervisor (which kills the run) must happen
        // together, even if the caller's future is dropped in between: run them on their own task.
        let queue = self.clone();
        tokio::spawn(async move {
            if !queue.store.finish_task(&task).await? {
                let current = queue
                    .store
                    .get_task(id)
                    .await?
                    .ok_or(QueueError::NotFound)?;
                return Err(QueueError::AlreadyFinished(current.status.as_str()));
            }
            let _ = queue.tx.send(Cancelled {
                id,
                task: Box::new(task.clone()),
            });
            if let Some(cluster) = &queue.cluster {
                // The instance running it kills it; callers waiting elsewhere wake.
                cluster.publish(&Control::Cancel { task: id }).await;
            }
            Ok(task)
        })
        .await
        .map_err(|_| QueueError::Store(StoreError::Unavailable("the cancel task failed".into())))?
    }

    /// Change a pending task's priority; it takes its new place at once.
    pub async fn set_priority(&self, id: TaskId, priority: Priority) -> Result<Task, QueueError> {
        // The stored priority and the supervisor's order change together (see `cancel`).
        let queue = self.clone();
        let changed = tokio::spawn(async move {
            let changed = queue.store.set_priority(id, priority).await?;
            if changed {
                let _ = queue.tx.send(Reprioritise { id, priority });
            }
            Ok::<bool, QueueError>(changed)
        })
        .await
        .map_err(|_| {
            QueueError::Store(StoreError::Unavailable("the priority change failed".into()))
        })??;
        let task = self.store.get_task(id).await?.ok_or(QueueError::NotFound)?;
        if !changed {
            return Err(QueueError::NotPending(task.status.as_str()));
        }
        Ok(task)
    }

    /// Tell the listeners (statistics, webhooks, metrics) about the tasks that start-up ended
    /// `interrupted`: call once, after they have subscribed. Each is told once.
    pub async fn announce_interrupted(&self) -> Result<usize, StoreError> {
        let ids = std::mem::take(&mut *self.interrupted.lock().unwrap_or_else(|p| p.into_inner()));
        let mut told = 0;
        for id in ids {
            if let Some(task) = self.store.get_task(id).await? {
                let _ = self.tx.send(Announce(Box::new(task)));
                told += 1;
            }
        }
        Ok(told)
    }

    /// Receive every task's final record from now on (completed, failed, cancelled, timeout),
    /// exactly once per task. Unbounded: a slow listener never holds up the queue.
    pub fn subscribe_finished(&self) -> mpsc::UnboundedReceiver<Arc<Task>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.tx.send(Subscribe(tx));
        rx
    }

    pub fn live_status(&self) -> LiveStatus {
        LiveStatus {
            pending: self.shared.pending.load(Ordering::SeqCst),
            running: self.shared.running.load(Ordering::SeqCst),
            concurrency: self.shared.concurrency.load(Ordering::SeqCst),
            accepting: self.shared.accepting.load(Ordering::SeqCst),
        }
    }

    /// [`Queue::live_status`], where with Redis `pending` counts the whole namespace (read from
    /// Redis at most [`HEALTH_MAX_AGE`] ago; the in-memory figure is only as fresh as this
    /// instance's last claim).
    pub async fn status(&self) -> LiveStatus {
        let mut live = self.live_status();
        if let Some(cluster) = &self.cluster {
            let counted = self
                .shared_pending
                .get(|| async { cluster.store().pending_count().await.ok() })
                .await;
            if let Some(n) = counted {
                live.pending = n;
            }
        }
        live
    }

    /// Apply a new config: concurrency, limits and runner settings take effect for the next
    /// dispatch.
    pub fn reconfigure(&self, config: Arc<Config>) {
        self.shared
            .max_pending
            .store(config.task_queue.max_pending, Ordering::SeqCst);
        self.events
            .set_replay_bytes(config.limits.event_replay_bytes);
        let _ = self.tx.send(Reconfigure(config));
    }

    /// Stop accepting runs; give running ones `grace` to finish, then kill them (they end
    /// `failed`/`interrupted`). Pending tasks stay pending in storage. Returns when no run is left.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        // Answered once no run is left; an error means the supervisor is gone, and so are its
        // runs.
        let _ = self.tx.ask(Shutdown { grace }).await;
    }
}
