//! The QueueSupervisor: owns the pending order, the running set and the concurrency limit.
//! It never awaits storage; it only reacts to messages and dispatches workers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::lanes::Schedule;
use super::worker::SharedRun;
use super::{claims, worker, Shared};
use crate::claude::StopReason;
use crate::cluster::{Cluster, Control};
use crate::config::Config;
use crate::events::EventHub;
use crate::mem;
use crate::model::{Priority, SessionId, Task, TaskId};
use crate::store::redis::{Claimed, Leased};
use crate::store::Store;

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

struct ShutdownState {
    deadline: Instant,
    killed: bool,
    done: Vec<oneshot::Sender<()>>,
}

pub(crate) struct Supervisor {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    pending: Schedule,
    running: HashMap<TaskId, watch::Sender<Option<StopReason>>>,
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
}

/// The supervisor's view of the shared queue.
struct SharedQueue {
    cluster: Arc<Cluster>,
    /// One claim at a time, so this instance never claims more than its free slots.
    claiming: bool,
    /// Something happened since the last claim that may have made work claimable.
    wanted: bool,
}

impl Supervisor {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<Msg>,
        recovered: Vec<Task>,
        events: Arc<EventHub>,
        cluster: Option<Arc<Cluster>>,
    ) -> Supervisor {
        // Lanes need each session's turns in submission order.
        let mut recovered = recovered;
        recovered.sort_by_key(|t| t.seq);
        let mut pending = Schedule::default();
        for t in &recovered {
            pending.push(t.id, t.priority, t.seq, t.session_id);
        }
        Supervisor {
            store,
            config,
            shared,
            tx,
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
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.dispatch();
        loop {
            let kill_at = self
                .shutdown
                .as_ref()
                .filter(|s| !s.killed)
                .map(|s| s.deadline);
            let trim_at = self.quiet_since.map(|at| at + mem::QUIET_AFTER);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = sleep_until_opt(kill_at) => self.kill_all_running(),
                _ = sleep_until_opt(trim_at) => self.trim(),
            }
            self.dispatch();
            self.note_quiet();
            if self.shutdown_complete() {
                break;
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
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
                        let _ = stop.send(Some(StopReason::Cancelled));
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
                    let _ = stop.send(Some(StopReason::Cancelled));
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
                    let _ = stop.send(Some(StopReason::Cancelled));
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
        self.wake_waiters(id, task);
        if task.status.is_final() {
            self.events.finish(task);
            if let Some(sid) = task.session_id {
                self.shared.session_task_ended(sid);
            }
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
        let (stop_tx, stop_rx) = watch::channel(None);
        self.running.insert(id, stop_tx);
        tokio::spawn(worker::run_task(
            id,
            self.store.clone(),
            self.config.clone(),
            stop_rx,
            self.tx.clone(),
            self.events.clone(),
            shared_run,
        ));
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
            let _ = stop.send(Some(StopReason::Shutdown));
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
