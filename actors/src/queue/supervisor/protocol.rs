//! The supervisor's messages, each a type of its own with its handler beside it.
//!
//! Every handler ends the same way, with `after_message`: dispatch what the free slots allow,
//! re-arm the timers, stop once a shutdown is complete.
//!
//! Most messages answer nothing (`()`) and are queued with `do_send`
//! ([`super::SupervisorTx::send`]): submissions, cancels, a run's end, the shared queue's
//! notices. Their senders must never wait on the mailbox, nor lose a message. Three are
//! asked, with `send` ([`super::SupervisorTx::ask`]), and the handler's result is the answer:
//! [`WaitFor`] (a task's final record, once it has one), [`Shutdown`] (answered when no run is
//! left) and [`Leases`]. [`Enqueue`] and [`Watch`] still carry a waiter's channel: it is the
//! receiver a sync submission hands its caller (`Submitted::done`), not a reply.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Context, Handler, Message, MessageResult, ResponseFuture};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{QueueSupervisor, ShutdownState};
use crate::config::Config;
use crate::model::{Priority, SessionId, Task, TaskId};
use crate::store::redis::{Claimed, Leased};

/// A task was stored as pending: queue it, and tell `waiter` (a sync caller) when it ends.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Enqueue {
    pub id: TaskId,
    pub priority: Priority,
    pub seq: u64,
    pub session: Option<SessionId>,
    pub waiter: Option<oneshot::Sender<Task>>,
}

impl Handler<Enqueue> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        if let Some(w) = msg.waiter {
            self.core.add_waiter(msg.id, w);
        }
        self.mode
            .enqueue(msg.id, msg.priority, msg.seq, msg.session);
        self.after_message(ctx);
    }
}

/// Tell `waiter` when this task ends (shared queue: a sync submission's caller).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Watch {
    pub id: TaskId,
    pub waiter: oneshot::Sender<Task>,
}

impl Handler<Watch> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Watch, ctx: &mut Context<Self>) {
        self.mode.watch(&mut self.core, msg.id, msg.waiter);
        self.after_message(ctx);
    }
}

/// The task's final record, once it has one. `None`: the supervisor does not follow the task
/// (already final, or unknown; on the local queue only tasks pending or running here are
/// followed): read the store.
#[derive(Message)]
#[rtype(result = "Option<Task>")]
pub(crate) struct WaitFor(pub TaskId);

impl Handler<WaitFor> for QueueSupervisor {
    type Result = ResponseFuture<Option<Task>>;

    fn handle(&mut self, msg: WaitFor, ctx: &mut Context<Self>) -> Self::Result {
        let (waiter, ended) = oneshot::channel();
        self.mode.watch(&mut self.core, msg.0, waiter);
        self.after_message(ctx);
        // The answer waits off the mailbox (on the arbiter, not in the actor's context): a
        // dropped waiter, not followed or gone with the supervisor, answers `None` at once.
        Box::pin(async move { ended.await.ok() })
    }
}

/// The store now says `cancelled`: drop it from the queue, or stop its run.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Cancelled {
    pub id: TaskId,
    pub task: Box<Task>,
}

impl Handler<Cancelled> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Cancelled, ctx: &mut Context<Self>) {
        self.mode.cancelled(&mut self.core, msg.id, &msg.task);
        self.after_message(ctx);
    }
}

/// A pending task's stored priority changed: it takes its new place at once.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Reprioritise {
    pub id: TaskId,
    pub priority: Priority,
}

impl Handler<Reprioritise> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Reprioritise, ctx: &mut Context<Self>) {
        self.mode.reprioritise(msg.id, msg.priority);
        self.after_message(ctx);
    }
}

/// A new config: concurrency and runner settings apply from the next dispatch.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Reconfigure(pub Arc<Config>);

impl Handler<Reconfigure> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) {
        let config = msg.0;
        self.core
            .shared
            .concurrency
            .store(config.task_queue.concurrency.into(), Ordering::SeqCst);
        self.core.config = config;
        // A raised limit starts pending tasks now.
        self.after_message(ctx);
    }
}

/// A worker is done and its process is gone. `task` is the final record when readable;
/// `wrote`: this worker wrote it (else a canceller or a reaper did, and told the listeners).
/// `handover` (shared queue): the final write also dropped the lease and claimed these tasks
/// for the freed slot; `None`: the lease is still to be released.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Finished {
    pub id: TaskId,
    pub task: Option<Box<Task>>,
    pub wrote: bool,
    pub handover: Option<Claimed>,
}

impl Handler<Finished> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        self.core.run_ended(msg.id);
        self.mode
            .finished(&mut self.core, msg.id, msg.task, msg.wrote, msg.handover);
        self.after_message(ctx);
    }
}

/// Start no more runs; give the running ones `grace`, then stop them. Answered once no run
/// is left (and no claim is in flight); the supervisor then stops. A second shutdown keeps the
/// first one's deadline.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown {
    pub grace: Duration,
}

impl Handler<Shutdown> for QueueSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        let (done, over) = oneshot::channel();
        let state = self
            .core
            .shutdown
            .get_or_insert_with(|| ShutdownState::new(Instant::now() + msg.grace));
        state.done.push(done);
        // Arms the grace timer, or, with nothing running, completes the shutdown at once.
        self.after_message(ctx);
        // Dropped (the supervisor gone some other way) is over too.
        Box::pin(async move {
            let _ = over.await;
        })
    }
}

/// Send every final record from now on to this listener.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe(pub mpsc::UnboundedSender<Arc<Task>>);

impl Handler<Subscribe> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        self.core.finished.push(msg.0);
        self.after_message(ctx);
    }
}

/// A task that ended without a run of this process (interrupted at start-up, or reaped from a
/// dead instance): tell the listeners, wake its waiters and close its event log, nothing else
/// (it holds no slot, lane or count).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Announce(pub Box<Task>);

impl Handler<Announce> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Announce, ctx: &mut Context<Self>) {
        let task = msg.0;
        self.core.events.finish(&task);
        self.core.wake_waiters(task.id, &task);
        self.core.tell_listeners(&task);
        self.after_message(ctx);
    }
}

/// Shared queue: a claim for `asked` tasks came back with these, leased to this instance.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ClaimAnswered {
    pub asked: usize,
    pub tasks: Vec<Leased>,
}

impl Handler<ClaimAnswered> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ClaimAnswered, ctx: &mut Context<Self>) {
        self.mode.claimed(&mut self.core, msg.asked, msg.tasks);
        self.after_message(ctx);
    }
}

/// Shared queue: there may be work to claim (a task was queued somewhere).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Wake;

impl Handler<Wake> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.mode.wake();
        self.after_message(ctx);
    }
}

/// Shared queue: the periodic check: claim (a slot may have freed on another instance) and
/// re-read the tasks local callers wait for (a "finished" message may have been lost).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Tick;

impl Handler<Tick> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        self.mode.tick(&mut self.core);
        self.after_message(ctx);
    }
}

/// Shared queue: the task ended elsewhere, or this instance lost its lease: stop its run if
/// it is here, and wake its waiters once its final record is read.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct EndedElsewhere(pub TaskId);

impl Handler<EndedElsewhere> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: EndedElsewhere, ctx: &mut Context<Self>) {
        let id = msg.0;
        // A run stopped here reports `Finished`, which wakes the waiters.
        if !self.core.stop_run(id) && self.core.waiters.contains_key(&id) {
            self.core.read_waited(vec![id]);
        }
        self.after_message(ctx);
    }
}

/// Shared queue: a task some local caller waits for was read final.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Read(pub Box<Task>);

impl Handler<Read> for QueueSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Read, ctx: &mut Context<Self>) {
        let task = msg.0;
        // A run of it here reports its own end (`Finished`), after its process is gone.
        if task.status.is_final() && !self.core.running.contains_key(&task.id) {
            self.core.wake_waiters(task.id, &task);
        }
        self.after_message(ctx);
    }
}

/// Shared queue: the tasks this instance holds leases on (its runs), and the config (the
/// lease's length), for the renewal.
#[derive(Message)]
#[rtype(result = "(Vec<TaskId>, Arc<Config>)")]
pub(crate) struct Leases;

impl Handler<Leases> for QueueSupervisor {
    type Result = MessageResult<Leases>;

    fn handle(&mut self, _: Leases, ctx: &mut Context<Self>) -> Self::Result {
        let ids = self.core.running.keys().copied().collect();
        let config = self.core.config.clone();
        self.after_message(ctx);
        MessageResult((ids, config))
    }
}
