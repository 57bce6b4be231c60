//! The QueueSupervisor: owns the pending order, the running set and the concurrency limit.
//! It never awaits storage; it only reacts to messages and dispatches workers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::lanes::Schedule;
use super::{worker, Shared};
use crate::claude::StopReason;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::events::EventHub;
use crate::model::{Priority, SessionId, Task, TaskId};
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
    /// A worker is done and its process is gone. `task` is the final record when readable.
    Finished {
        id: TaskId,
        task: Option<Box<Task>>,
    },
    Shutdown {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
    /// Send every final record from now on to this listener.
    Subscribe(mpsc::UnboundedSender<Arc<Task>>),
    /// A task that ended before this process ran it (interrupted at start-up): tell the
    /// listeners and close its event log, nothing else (it holds no slot, lane or count).
    Announce(Box<Task>),
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
    cluster: Option<Arc<Cluster>>,
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
            cluster,
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
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = sleep_until_opt(kill_at) => self.kill_all_running(),
            }
            self.dispatch();
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
                // Only tasks still tracked here can end later; for others the sender is dropped
                // and the caller reads the store.
                if self.pending.is_pending(id) || self.running.contains_key(&id) {
                    self.waiters.entry(id).or_default().push(waiter);
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
            Msg::Finished { id, task } => {
                self.running.remove(&id);
                self.pending.finished(id);
                self.shared
                    .running
                    .store(self.running.len() as u64, Ordering::SeqCst);
                match task {
                    Some(task) => self.notify(id, &task),
                    None => {
                        self.waiters.remove(&id);
                    }
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
                let shared = Arc::new(*task);
                self.finished.retain(|l| l.send(shared.clone()).is_ok());
            }
        }
    }

    /// A task reached its final record: wake its waiters and tell the listeners (once per
    /// task: this runs when the pending task is dropped or its worker is done).
    fn notify(&mut self, id: TaskId, task: &Task) {
        for w in self.waiters.remove(&id).unwrap_or_default() {
            let _ = w.send(task.clone());
        }
        if task.status.is_final() {
            self.events.finish(task);
            if let Some(sid) = task.session_id {
                self.shared.session_task_ended(sid);
            }
            let shared = Arc::new(task.clone());
            self.finished.retain(|l| l.send(shared.clone()).is_ok());
        }
    }

    /// Start pending tasks while there are free slots (none once shutdown began).
    fn dispatch(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let limit = self.config.task_queue.concurrency as usize;
        while self.running.len() < limit {
            let Some(id) = self.pending.pop() else { break };
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            let (stop_tx, stop_rx) = watch::channel(None);
            self.running.insert(id, stop_tx);
            tokio::spawn(worker::run_task(
                id,
                self.store.clone(),
                self.config.clone(),
                stop_rx,
                self.tx.clone(),
                self.events.clone(),
                self.cluster.clone(),
            ));
        }
        self.shared
            .running
            .store(self.running.len() as u64, Ordering::SeqCst);
    }

    fn kill_all_running(&mut self) {
        if let Some(s) = self.shutdown.as_mut() {
            s.killed = true;
        }
        if !self.running.is_empty() {
            tracing::warn!(
                count = self.running.len(),
                "shutdown grace is over: killing the runs still going"
            );
        }
        for stop in self.running.values() {
            let _ = stop.send(Some(StopReason::Shutdown));
        }
    }

    fn shutdown_complete(&mut self) -> bool {
        let done = self.shutdown.is_some() && self.running.is_empty();
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
