//! The QueueSupervisor: an actix actor that owns the pending order, the running set and the
//! concurrency limit. It never awaits storage; it only reacts to messages ([`Msg`]) and starts
//! a [`WorkerActor`] per run, on the worker arbiters.
//! Two deadlines it keeps itself: the end of the shutdown grace (then it stops its runs) and
//! the quiet moment to give memory back; each is a timer re-armed after every message.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, SpawnHandle};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::lanes::Schedule;
use super::worker::{SharedRun, Stop, WorkerActor};
use super::{claims, worker, Shared};
use crate::claude::StopReason;
use crate::cluster::{Cluster, Control};
use crate::config::Config;
use crate::events::EventHub;
use crate::mem;
use crate::model::{Priority, SessionId, Task, TaskId};
use crate::session::SessionHandle;
use crate::store::redis::{Claimed, Leased};
use crate::store::Store;
use crate::system::WorkerPool;

/// What the supervisor is told. One enum, handled in one place, because every message ends the
/// same way: dispatch what the free slots allow, re-arm the timers, stop when shut down.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) enum Msg {
    /// A task was stored as pending: queue it (and remember who waits for its end).
    Enqueue {
        id: TaskId,
        priority: Priority,
        seq: u64,
        session: Option<SessionId>,
        waiter: Option<oneshot::Sender<Task>>,
    },
    /// Tell `waiter` when this task ends.
    Watch {
        id: TaskId,
        waiter: oneshot::Sender<Task>,
    },
    /// The store now says `cancelled`: drop it from the queue, or kill its run.
    Cancelled {
        id: TaskId,
        task: Box<Task>,
    },
    Reprioritise {
        id: TaskId,
        priority: Priority,
    },
    Reconfigure(Arc<Config>),
    /// A worker is done and its process is gone. `task` is the final record when readable;
    /// `wrote`: this worker wrote it (else a canceller or a reaper did, and told the listeners).
    /// `handover` (shared queue): the final write also dropped the lease and claimed these
    /// tasks for the freed slot; `None`: the lease is still to be released.
    Finished {
        id: TaskId,
        task: Option<Box<Task>>,
        wrote: bool,
        handover: Option<Claimed>,
    },
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
    /// Send every final record from now on to this listener.
    Subscribe(mpsc::UnboundedSender<Arc<Task>>),
    /// A task that ended without a run of this process (interrupted at start-up, or reaped
    /// from a dead instance): tell the listeners, wake its waiters and close its event log,
    /// nothing else (it holds no slot, lane or count).
    Announce(Box<Task>),
    /// Shared queue: a claim came back with these tasks, leased to this instance.
    Claimed {
        asked: usize,
        tasks: Vec<Leased>,
    },
    /// Shared queue: there may be work to claim (a task was queued somewhere).
    Wake,
    /// Shared queue: the periodic check: claim (a slot may have freed on another instance) and
    /// re-read the tasks local callers wait for (a "finished" message may have been lost).
    Tick,
    /// Shared queue: `id` ended elsewhere, or this instance lost its lease: stop its run if it
    /// is here, and wake its waiters once its final record is read.
    EndedElsewhere(TaskId),
    /// Shared queue: a task some local caller waits for was read final.
    Read(Box<Task>),
    /// Shared queue: the tasks this instance holds leases on (its runs), and the config.
    Leases(oneshot::Sender<(Vec<TaskId>, Arc<Config>)>),
}

/// The supervisor's address as its callers use it: a message is queued whatever the mailbox's
/// fill (`do_send`: the queue's callers must never wait on a full mailbox, nor lose a
/// message), and refused once the supervisor has stopped.
#[derive(Clone)]
pub(crate) struct SupervisorTx(Addr<QueueSupervisor>);

impl SupervisorTx {
    pub(crate) fn send(&self, msg: Msg) -> Result<(), Msg> {
        if self.0.connected() {
            self.0.do_send(msg);
            Ok(())
        } else {
            Err(msg)
        }
    }
}

struct ShutdownState {
    deadline: Instant,
    killed: bool,
    done: Vec<oneshot::Sender<()>>,
}

pub struct QueueSupervisor {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tx: SupervisorTx,
    /// Where the workers run.
    workers: WorkerPool,
    /// The SessionActor, handed to each worker.
    sessions: SessionHandle,
    /// The runtime the runs' I/O goes on (see `worker::Run::io`).
    io: tokio::runtime::Handle,
    pending: Schedule,
    /// The runs going on, by task: their WorkerActors (told [`Stop`] to end a run early).
    running: HashMap<TaskId, Addr<WorkerActor>>,
    waiters: HashMap<TaskId, Vec<oneshot::Sender<Task>>>,
    /// Listeners of final records (statistics, webhooks, sessions).
    finished: Vec<mpsc::UnboundedSender<Arc<Task>>>,
    events: Arc<EventHub>,
    shutdown: Option<ShutdownState>,
    /// With Redis: the shared queue, which replaces `pending` as the source of work.
    shared_queue: Option<SharedQueue>,
    /// Since when nothing has been pending or running, while a trim of the heap is due.
    quiet_since: Option<Instant>,
    /// The heap was trimmed since the queue last had work.
    trimmed: bool,
    /// The timer of the next deadline (shutdown grace, quiet trim), re-armed after each message.
    timer: Option<SpawnHandle>,
}

/// The supervisor's view of the shared queue.
struct SharedQueue {
    cluster: Arc<Cluster>,
    /// One claim at a time, so this instance never claims more than its free slots.
    claiming: bool,
    /// Something happened since the last claim that may have made work claimable.
    wanted: bool,
}

/// What a supervisor is started with.
pub(crate) struct Setup {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub recovered: Vec<Task>,
    pub events: Arc<EventHub>,
    pub cluster: Option<Arc<Cluster>>,
    pub workers: WorkerPool,
    /// The SessionActor, for the workers' turn accounting.
    pub sessions: SessionHandle,
    /// The runtime the runs' I/O goes on (see `worker::Run::io`).
    pub io: tokio::runtime::Handle,
}

impl Actor for QueueSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Recovered tasks start at once.
        self.after_message(ctx);
    }
}

impl Handler<Msg> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Msg, ctx: &mut Context<Self>) {
        self.handle_msg(msg);
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
            recovered,
            events,
            cluster,
            workers,
            sessions,
            io,
        } = setup;
        // Lanes need each session's turns in submission order.
        let mut recovered = recovered;
        recovered.sort_by_key(|t| t.seq);
        let mut pending = Schedule::default();
        for t in &recovered {
            pending.push(t.id, t.priority, t.seq, t.session_id);
        }
        QueueSupervisor {
            store,
            config,
            shared,
            tx,
            workers,
            sessions,
            io,
            pending,
            running: HashMap::new(),
            waiters: HashMap::new(),
            finished: Vec::new(),
            events,
            shutdown: None,
            shared_queue: cluster.map(|cluster| SharedQueue {
                cluster,
                claiming: false,
                wanted: true,
            }),
            quiet_since: None,
            trimmed: false,
            timer: None,
        }
    }

    /// What follows every message (and every deadline): start what the free slots allow, note
    /// whether the queue went quiet, re-arm the timer for the next deadline, and stop once a
    /// shutdown is complete.
    fn after_message(&mut self, ctx: &mut Context<Self>) {
        self.dispatch();
        self.note_quiet();
        if self.shutdown_complete() {
            ctx.stop();
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let kill_at = self
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
                    .shutdown
                    .as_ref()
                    .is_some_and(|s| !s.killed && s.deadline <= now)
                {
                    act.kill_all_running();
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

    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Enqueue {
                id,
                priority,
                seq,
                session,
                waiter,
            } => {
                if let Some(w) = waiter {
                    self.waiters.entry(id).or_default().push(w);
                }
                self.pending.push(id, priority, seq, session);
            }
            Msg::Watch { id, waiter } => {
                if self.shared_queue.is_some() {
                    // Any instance may run it: wait, and read it now in case it already ended.
                    self.waiters.entry(id).or_default().push(waiter);
                    self.read_waited(vec![id]);
                } else if self.pending.is_pending(id) || self.running.contains_key(&id) {
                    // Only tasks still tracked here can end later; for others the sender is
                    // dropped and the caller reads the store.
                    self.waiters.entry(id).or_default().push(waiter);
                }
            }
            Msg::Cancelled { id, task } if self.shared_queue.is_some() => {
                // This instance wrote `cancelled`: it tells the listeners. The instance running
                // it (told on the control channel) kills it.
                self.tell_listeners(&task);
                match self.running.get(&id) {
                    Some(stop) => {
                        stop.do_send(Stop(StopReason::Cancelled));
                    }
                    None => self.wake_waiters(id, &task),
                }
            }
            Msg::Cancelled { id, task } => {
                if self.pending.remove_pending(id) {
                    self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    self.notify(id, &task);
                } else if let Some(stop) = self.running.get(&id) {
                    // The worker reports `Finished` once the process group is gone.
                    stop.do_send(Stop(StopReason::Cancelled));
                }
            }
            Msg::Reprioritise { id, priority } => {
                self.pending.reprioritise(id, priority);
            }
            Msg::Reconfigure(config) => {
                self.shared
                    .concurrency
                    .store(config.task_queue.concurrency.into(), Ordering::SeqCst);
                self.config = config;
            }
            Msg::Finished {
                id,
                task,
                wrote,
                handover,
            } => {
                self.running.remove(&id);
                mem::shrink_sparse(&mut self.running);
                self.pending.finished(id);
                self.shared
                    .running
                    .store(self.running.len() as u64, Ordering::SeqCst);
                if let Some(sq) = self.shared_queue.as_mut() {
                    let cluster = sq.cluster.clone();
                    match &handover {
                        None => {
                            sq.wanted = true;
                            claims::release(cluster.clone(), id);
                        }
                        // Nothing was ready for the freed slot (or it was not to be kept):
                        // claiming again now would find the same.
                        Some(claimed) if claimed.tasks.is_empty() => {}
                        Some(claimed) => {
                            sq.wanted = true;
                            self.shared
                                .pending
                                .store(claims::left(claimed), Ordering::SeqCst);
                        }
                    }
                    if let Some(claimed) = handover {
                        self.run_claimed(claimed.tasks);
                    }
                    match task {
                        Some(task) if wrote => {
                            self.notify(id, &task);
                            claims::publish(cluster, Control::Finished { task: id });
                        }
                        Some(task) => {
                            self.events.finish(&task);
                            self.wake_waiters(id, &task);
                        }
                        // Unreadable (storage gone): its waiters read the store.
                        None => drop(self.take_waiters(id)),
                    }
                    return;
                }
                match task {
                    Some(task) => self.notify(id, &task),
                    // Unreadable: its waiters, dropped, read the store.
                    None => drop(self.take_waiters(id)),
                }
            }
            Msg::Shutdown { grace, done } => {
                let state = self.shutdown.get_or_insert_with(|| ShutdownState {
                    deadline: Instant::now() + grace,
                    killed: false,
                    done: Vec::new(),
                });
                state.done.push(done);
            }
            Msg::Subscribe(listener) => self.finished.push(listener),
            Msg::Announce(task) => {
                self.events.finish(&task);
                self.wake_waiters(task.id, &task);
                self.tell_listeners(&task);
            }
            Msg::Claimed { asked, tasks } => {
                let Some(sq) = self.shared_queue.as_mut() else {
                    return;
                };
                sq.claiming = false;
                // A full claim may have left more behind; a short one emptied what was ready.
                sq.wanted = tasks.len() >= asked && asked > 0;
                self.run_claimed(tasks);
            }
            Msg::Wake => {
                if let Some(sq) = self.shared_queue.as_mut() {
                    sq.wanted = true;
                }
            }
            Msg::Tick => {
                if let Some(sq) = self.shared_queue.as_mut() {
                    sq.wanted = true;
                }
                let waited: Vec<TaskId> = self
                    .waiters
                    .keys()
                    .filter(|id| !self.running.contains_key(id))
                    .copied()
                    .collect();
                self.read_waited(waited);
            }
            Msg::EndedElsewhere(id) => match self.running.get(&id) {
                Some(stop) => {
                    stop.do_send(Stop(StopReason::Cancelled));
                }
                None if self.waiters.contains_key(&id) => self.read_waited(vec![id]),
                None => {}
            },
            Msg::Leases(reply) => {
                let _ = reply.send((self.running.keys().copied().collect(), self.config.clone()));
            }
            Msg::Read(task) => {
                if task.status.is_final() && !self.running.contains_key(&task.id) {
                    self.wake_waiters(task.id, &task);
                }
            }
        }
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

    /// Shared queue: read these tasks and report the final ones (`Msg::Read`).
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
                        let _ = tx.send(Msg::Read(Box::new(task)));
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

    /// Start pending tasks while there are free slots (none once shutdown began).
    fn dispatch(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let limit = self.config.task_queue.concurrency as usize;
        if let Some(sq) = self.shared_queue.as_mut() {
            let free = limit.saturating_sub(self.running.len());
            if free > 0 && sq.wanted && !sq.claiming {
                sq.claiming = true;
                sq.wanted = false;
                claims::claim(
                    sq.cluster.clone(),
                    self.config.clone(),
                    free,
                    self.shared.clone(),
                    self.tx.clone(),
                );
            }
            return;
        }
        while self.running.len() < limit {
            let Some(id) = self.pending.pop() else { break };
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            self.spawn_worker(id, None);
        }
    }

    /// Shared queue: run tasks leased to this instance while slots are free; the others (a
    /// shutdown began, or `concurrency` was lowered meanwhile) go back to the queue for the
    /// other instances.
    fn run_claimed(&mut self, tasks: Vec<Leased>) {
        let Some(cluster) = self.shared_queue.as_ref().map(|sq| sq.cluster.clone()) else {
            return;
        };
        let limit = self.config.task_queue.concurrency as usize;
        for leased in tasks {
            if self.shutdown.is_some() || self.running.len() >= limit {
                claims::release(cluster.clone(), leased.task.id);
                continue;
            }
            let run = SharedRun {
                cluster: cluster.clone(),
                leased,
                queue: self.shared.clone(),
            };
            self.spawn_worker(run.leased.task.id, Some(run));
        }
    }

    fn spawn_worker(&mut self, id: TaskId, shared_run: Option<SharedRun>) {
        let worker = WorkerActor::start(
            self.workers.next(),
            worker::Run {
                id,
                store: self.store.clone(),
                config: self.config.clone(),
                tx: self.tx.clone(),
                events: self.events.clone(),
                shared: shared_run,
                sessions: self.sessions.clone(),
                io: self.io.clone(),
            },
        );
        self.running.insert(id, worker);
        self.shared
            .running
            .store(self.running.len() as u64, Ordering::SeqCst);
    }

    /// Track whether the queue has gone quiet (nothing pending or running), to give memory
    /// back once, [`mem::QUIET_AFTER`] later: after a burst, what its runs freed.
    fn note_quiet(&mut self) {
        let quiet = self.running.is_empty() && self.pending.pending_len() == 0;
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

    fn shutdown_complete(&mut self) -> bool {
        // A claim still in flight would come back to nobody and its tasks wait for their leases
        // to expire: wait for it (it is released on arrival).
        let claiming = self.shared_queue.as_ref().is_some_and(|sq| sq.claiming);
        let done = self.shutdown.is_some() && self.running.is_empty() && !claiming;
        if done {
            if let Some(s) = self.shutdown.take() {
                for d in s.done {
                    let _ = d.send(());
                }
            }
        }
        done
    }
}
