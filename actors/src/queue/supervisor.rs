//! The QueueSupervisor: an actix actor that owns the pending order, the running set and the
//! concurrency limit. It never awaits storage; it only reacts to messages and starts a
//! [`WorkerActor`] per run, on the worker arbiters.
//!
//! * `protocol` — its messages, one type each with its handler; every handler ends with
//!   `after_message` (dispatch, timers, stop once shut down).
//! * `mode` — where the work comes from, chosen once at start-up: this instance's pending
//!   order, or the queue shared through Redis.
//!
//! Two deadlines it keeps itself: the end of the shutdown grace (then it stops its runs) and
//! the quiet moment to give memory back; each is a timer re-armed after every message.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, SpawnHandle};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::worker::{RunMode, Stop, WorkerActor};
use super::{worker, QueueError, Shared};
use crate::claude::StopReason;
use crate::config::Config;
use crate::events::EventHub;
use crate::mem;
use crate::model::{Task, TaskId};
use crate::session::SessionHandle;
use crate::store::Store;
use crate::system::WorkerPool;

mod mode;
mod protocol;

pub(crate) use mode::Mode;
pub(crate) use protocol::{
    Announce, Cancelled, ClaimAnswered, EndedElsewhere, Enqueue, Finished, Leases, Read,
    Reconfigure, Reprioritise, Shutdown, Subscribe, Tick, WaitFor, Wake, Watch,
};

/// The supervisor's address as its callers use it.
#[derive(Clone)]
pub(crate) struct SupervisorTx(Addr<QueueSupervisor>);

impl SupervisorTx {
    /// Queue a message that answers nothing, whatever the mailbox's fill (`do_send`: the
    /// queue's callers must never wait on a full mailbox, nor lose a message); refused, and
    /// given back, once the supervisor has stopped.
    pub(crate) fn send<M>(&self, msg: M) -> Result<(), M>
    where
        M: Message<Result = ()> + Send + 'static,
        QueueSupervisor: Handler<M>,
    {
        if self.0.connected() {
            self.0.do_send(msg);
            Ok(())
        } else {
            Err(msg)
        }
    }

    /// Ask, and wait for the answer (and, first, for room in the mailbox: not for hot paths).
    /// `ShuttingDown`: the supervisor has stopped, before it answered or without answering.
    pub(crate) async fn ask<M>(&self, msg: M) -> Result<M::Result, QueueError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        QueueSupervisor: Handler<M>,
    {
        self.0.send(msg).await.map_err(|e| {
            log::debug!(error:% = e; "the queue supervisor did not answer");
            QueueError::ShuttingDown
        })
    }
}

struct ShutdownState {
    deadline: Instant,
    killed: bool,
    /// The answers of the `Shutdown` messages, sent when no run is left.
    done: Vec<oneshot::Sender<()>>,
}

impl ShutdownState {
    fn new(deadline: Instant) -> ShutdownState {
        ShutdownState {
            deadline,
            killed: false,
            done: Vec::new(),
        }
    }
}

pub struct QueueSupervisor {
    core: Core,
    /// Where the work comes from: this instance's pending order, or the shared queue.
    mode: Mode,
    /// Since when nothing has been pending or running, while a trim of the heap is due.
    quiet_since: Option<Instant>,
    /// The heap was trimmed since the queue last had work.
    trimmed: bool,
    /// The timer of the next deadline (shutdown grace, quiet trim), re-armed after each message.
    timer: Option<SpawnHandle>,
}

/// What the supervisor keeps whichever its [`Mode`]: the running set, who waits and listens,
/// the shutdown, and what a worker is started with.
struct Core {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tx: SupervisorTx,
    /// Where the workers run.
    workers: WorkerPool,
    /// The SessionActor, handed to each worker.
    sessions: SessionHandle,
    /// The runs going on, by task: their WorkerActors (told [`Stop`] to end a run early).
    running: HashMap<TaskId, Addr<WorkerActor>>,
    waiters: HashMap<TaskId, Vec<oneshot::Sender<Task>>>,
    /// Listeners of final records (statistics, webhooks, sessions).
    finished: Vec<mpsc::UnboundedSender<Arc<Task>>>,
    events: Arc<EventHub>,
    shutdown: Option<ShutdownState>,
}

/// What a supervisor is started with.
pub(crate) struct Setup {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    /// Chosen once: an instance alone (with the tasks recovered from storage) or the shared queue.
    pub mode: Mode,
    pub events: Arc<EventHub>,
    pub workers: WorkerPool,
    /// The SessionActor, for the workers' turn accounting.
    pub sessions: SessionHandle,
}

impl Actor for QueueSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Recovered tasks start at once.
        self.after_message(ctx);
    }
}

impl QueueSupervisor {
    /// Start the supervisor on `arbiter`; its address, as the queue's callers use it.
    pub(crate) fn start(arbiter: &actix::prelude::ArbiterHandle, setup: Setup) -> SupervisorTx {
        let addr = QueueSupervisor::start_in_arbiter(arbiter, move |ctx| {
            QueueSupervisor::new(setup, SupervisorTx(ctx.address()))
        });
        SupervisorTx(addr)
    }

    fn new(setup: Setup, tx: SupervisorTx) -> QueueSupervisor {
        let Setup {
            store,
            config,
            shared,
            mode,
            events,
            workers,
            sessions,
        } = setup;
        QueueSupervisor {
            core: Core {
                store,
                config,
                shared,
                tx,
                workers,
                sessions,
                running: HashMap::new(),
                waiters: HashMap::new(),
                finished: Vec::new(),
                events,
                shutdown: None,
            },
            mode,
            quiet_since: None,
            trimmed: false,
            timer: None,
        }
    }

    /// What follows every message (and every deadline): start what the free slots allow, note
    /// whether the queue went quiet, re-arm the timer for the next deadline, and stop once a
    /// shutdown is complete.
    fn after_message(&mut self, ctx: &mut Context<Self>) {
        self.mode.dispatch(&mut self.core);
        self.note_quiet();
        if self.shutdown_complete() {
            ctx.stop();
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let kill_at = self
            .core
            .shutdown
            .as_ref()
            .filter(|s| !s.killed)
            .map(|s| s.deadline);
        let trim_at = self.quiet_since.map(|at| at + mem::QUIET_AFTER);
        let next = match (kill_at, trim_at) {
            (Some(k), Some(t)) => Some(k.min(t)),
            (k, t) => k.or(t),
        };
        if let Some(at) = next {
            let wait = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                let now = Instant::now();
                if act
                    .core
                    .shutdown
                    .as_ref()
                    .is_some_and(|s| !s.killed && s.deadline <= now)
                {
                    act.core.kill_all_running();
                }
                if act
                    .quiet_since
                    .is_some_and(|at| at + mem::QUIET_AFTER <= now)
                {
                    act.trim();
                }
                act.after_message(ctx);
            }));
        }
    }

    /// Track whether the queue has gone quiet (nothing pending or running), to give memory
    /// back once, [`mem::QUIET_AFTER`] later: after a burst, what its runs freed.
    fn note_quiet(&mut self) {
        let quiet = self.core.running.is_empty() && self.mode.pending_len() == 0;
        if !quiet {
            self.quiet_since = None;
            self.trimmed = false;
        } else if self.quiet_since.is_none() && !self.trimmed {
            self.quiet_since = Some(Instant::now());
        }
    }

    fn trim(&mut self) {
        self.quiet_since = None;
        self.trimmed = true;
        // It walks the whole heap under the allocator's locks: not on the runtime's threads.
        tokio::task::spawn_blocking(mem::trim_heap);
    }

    fn shutdown_complete(&mut self) -> bool {
        let done =
            self.core.shutdown.is_some() && self.core.running.is_empty() && !self.mode.in_flight();
        if done {
            if let Some(s) = self.core.shutdown.take() {
                for d in s.done {
                    let _ = d.send(());
                }
            }
        }
        done
    }
}

impl Core {
    /// Shutdown began: no new run starts.
    fn closing(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Runs at once (`taskQueue.concurrency`, as last configured).
    fn limit(&self) -> usize {
        self.config.task_queue.concurrency as usize
    }

    fn add_waiter(&mut self, id: TaskId, waiter: oneshot::Sender<Task>) {
        self.waiters.entry(id).or_default().push(waiter);
    }

    /// Wake the callers waiting for `id` with its final record.
    fn wake_waiters(&mut self, id: TaskId, task: &Task) {
        for w in self.take_waiters(id) {
            let _ = w.send(task.clone());
        }
    }

    /// The callers waiting for `id`, no longer kept here.
    fn take_waiters(&mut self, id: TaskId) -> Vec<oneshot::Sender<Task>> {
        let waiters = self.waiters.remove(&id).unwrap_or_default();
        mem::shrink_sparse(&mut self.waiters);
        waiters
    }

    /// Tell the listeners (statistics, webhooks, metrics) about a final record.
    fn tell_listeners(&mut self, task: &Task) {
        let shared = Arc::new(task.clone());
        self.finished.retain(|l| l.send(shared.clone()).is_ok());
    }

    /// Shared queue: read these tasks and report the final ones ([`Read`]).
    fn read_waited(&self, ids: Vec<TaskId>) {
        if ids.is_empty() {
            return;
        }
        let store = self.store.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            for id in ids {
                if let Ok(Some(task)) = store.get_task(id).await {
                    if task.status.is_final() {
                        let _ = tx.send(Read(Box::new(task)));
                    }
                }
            }
        });
    }

    /// A task reached its final record: wake its waiters and tell the listeners (once per
    /// task: this runs when the pending task is dropped or its worker is done).
    fn notify(&mut self, id: TaskId, task: &Task) {
        // The session is free before its caller hears: the caller's next turn must not find
        // it busy (the waiter's thread may run before this one goes on).
        if task.status.is_final() {
            if let Some(sid) = task.session_id {
                self.shared.session_task_ended(sid);
            }
        }
        self.wake_waiters(id, task);
        if task.status.is_final() {
            self.events.finish(task);
            self.tell_listeners(task);
        }
    }

    /// End `id`'s run early if it is here (its worker reports `Finished` once its process
    /// group is gone); whether it was.
    fn stop_run(&self, id: TaskId) -> bool {
        match self.running.get(&id) {
            Some(worker) => {
                worker.do_send(Stop(StopReason::Cancelled));
                true
            }
            None => false,
        }
    }

    /// Start a WorkerActor for `id`: on the next worker arbiter, or beside the supervisor for
    /// a shared run (see below).
    fn spawn_worker(&mut self, id: TaskId, mode: RunMode) {
        let arbiter = match mode {
            // The run goes on this worker's arbiter: the pool spreads runs over the cores.
            RunMode::Local => self.workers.next().clone(),
            // The run goes on the Redis connections' multi-threaded runtime, which spreads
            // runs over the cores; its worker only holds it (and is told `Stop`), so it lives
            // here, beside the supervisor: its start and its report cost no thread hand-off
            // (on a worker arbiter, two more per run, measured).
            RunMode::Shared(_) => actix::Arbiter::current(),
        };
        let worker = WorkerActor::start(
            &arbiter,
            worker::Run {
                id,
                store: self.store.clone(),
                config: self.config.clone(),
                tx: self.tx.clone(),
                events: self.events.clone(),
                mode,
                sessions: self.sessions.clone(),
            },
        );
        self.running.insert(id, worker);
        self.shared
            .running
            .store(self.running.len() as u64, Ordering::SeqCst);
    }

    /// `id`'s worker is done: its slot is free.
    fn run_ended(&mut self, id: TaskId) {
        self.running.remove(&id);
        mem::shrink_sparse(&mut self.running);
        self.shared
            .running
            .store(self.running.len() as u64, Ordering::SeqCst);
    }

    fn kill_all_running(&mut self) {
        if let Some(s) = self.shutdown.as_mut() {
            s.killed = true;
        }
        if !self.running.is_empty() {
            log::warn!(
                count = self.running.len();
                "shutdown grace is over: killing the runs still going"
            );
        }
        for stop in self.running.values() {
            stop.do_send(Stop(StopReason::Shutdown));
        }
    }
}
