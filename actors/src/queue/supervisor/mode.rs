//! Where the supervisor's work comes from, chosen once at start-up (an enum, [`Mode`]), so the
//! supervisor's own code is one path and the local/shared difference is here, method by method:
//!
//! * [`Mode::Local`] — this instance alone (memory or SQLite storage): the pending order is
//!   the supervisor's ([`Schedule`]: priority, then FIFO, one lane per session), recovered
//!   from storage at start and fed by `Enqueue`; a free slot pops the next task.
//! * [`Mode::Shared`] — Redis storage, any number of instances: the pending order is Redis's.
//!   A free slot claims tasks ([`claims::claim`]), one claim at a time; each run holds a
//!   lease, dropped (and often handed over to the next claim) by its final write; a task
//!   cancelled or ended elsewhere is told here by the control channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::super::claims;
use super::super::lanes::Schedule;
use super::super::worker::{RunMode, SharedRun};
use super::Core;
use crate::cluster::{Cluster, Control};
use crate::model::{Priority, SessionId, Task, TaskId};
use crate::store::redis::{Claimed, Leased};

/// See the module docs.
pub(crate) enum Mode {
    Local(LocalQueue),
    Shared(SharedQueue),
}

/// The pending order of an instance alone.
pub(crate) struct LocalQueue {
    pending: Schedule,
}

/// The supervisor's view of the shared queue.
pub(crate) struct SharedQueue {
    cluster: Arc<Cluster>,
    /// One claim at a time, so this instance never claims more than its free slots.
    claiming: bool,
    /// Something happened since the last claim that may have made work claimable.
    wanted: bool,
}

impl Mode {
    /// An instance alone, with the pending tasks recovered from storage.
    pub(crate) fn local(recovered: Vec<Task>) -> Mode {
        // Lanes need each session's turns in submission order.
        let mut recovered = recovered;
        recovered.sort_by_key(|t| t.seq);
        let mut pending = Schedule::default();
        for t in &recovered {
            pending.push(t.id, t.priority, t.seq, t.session_id);
        }
        Mode::Local(LocalQueue { pending })
    }

    /// One of the instances sharing the queue of `cluster`'s namespace, its runs on
    /// [`Cluster::io`]. Nothing is recovered: pending tasks wait in Redis, and the first
    /// dispatch claims.
    pub(crate) fn shared(cluster: Arc<Cluster>) -> Mode {
        Mode::Shared(SharedQueue {
            cluster,
            claiming: false,
            wanted: true,
        })
    }

    /// A task was stored as pending on this instance.
    pub(super) fn enqueue(
        &mut self,
        id: TaskId,
        priority: Priority,
        seq: u64,
        session: Option<SessionId>,
    ) {
        match self {
            Mode::Local(l) => l.pending.push(id, priority, seq, session),
            // Never sent: a shared submission is stored in Redis and comes back by a claim.
            Mode::Shared(_) => {
                log::warn!(task_id:% = id; "a local enqueue on the shared queue is ignored; the task waits in Redis");
            }
        }
    }

    /// A caller waits for `id`'s end.
    pub(super) fn watch(&mut self, core: &mut Core, id: TaskId, waiter: oneshot::Sender<Task>) {
        match self {
            Mode::Local(l) => {
                // Only tasks still tracked here can end later; for others the sender is
                // dropped and the caller reads the store.
                if l.pending.is_pending(id) || core.running.contains_key(&id) {
                    core.add_waiter(id, waiter);
                }
            }
            Mode::Shared(_) => {
                // Any instance may run it: wait, and read it now in case it already ended.
                core.add_waiter(id, waiter);
                core.read_waited(vec![id]);
            }
        }
    }

    /// The store now says `cancelled` (written by this instance).
    pub(super) fn cancelled(&mut self, core: &mut Core, id: TaskId, task: &Task) {
        match self {
            Mode::Local(l) => {
                if l.pending.remove_pending(id) {
                    core.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    core.notify(id, task);
                } else {
                    // The worker reports `Finished` once the process group is gone; that
                    // report tells the listeners.
                    core.stop_run(id);
                }
            }
            Mode::Shared(_) => {
                // This instance wrote `cancelled`: it tells the listeners. The instance
                // running it (told on the control channel) kills it.
                core.tell_listeners(task);
                if !core.stop_run(id) {
                    core.wake_waiters(id, task);
                }
            }
        }
    }

    /// A pending task's priority changed in storage.
    pub(super) fn reprioritise(&mut self, id: TaskId, priority: Priority) {
        match self {
            Mode::Local(l) => {
                l.pending.reprioritise(id, priority);
            }
            // Redis's order changed with the stored priority.
            Mode::Shared(_) => {}
        }
    }

    /// A run is over and its worker gone from `core.running`. `task` is the final record when
    /// readable; `wrote`: the worker wrote it; `handover` (shared queue): what the final write
    /// did with the lease (see `Finished`).
    pub(super) fn finished(
        &mut self,
        core: &mut Core,
        id: TaskId,
        task: Option<Box<Task>>,
        wrote: bool,
        handover: Option<Claimed>,
    ) {
        match self {
            Mode::Local(l) => {
                // The session's next turn may run.
                l.pending.finished(id);
                // Whoever wrote it (a canceller too) told no listener yet: tell them now.
                match task {
                    Some(task) => core.notify(id, &task),
                    // Unreadable: its waiters, dropped, read the store.
                    None => drop(core.take_waiters(id)),
                }
            }
            Mode::Shared(sq) => sq.finished(core, id, task, wrote, handover),
        }
    }

    /// Start what the free slots allow (nothing once shutdown began).
    pub(super) fn dispatch(&mut self, core: &mut Core) {
        if core.closing() {
            return;
        }
        let limit = core.limit();
        match self {
            Mode::Local(l) => {
                while core.running.len() < limit {
                    let Some(id) = l.pending.pop() else { break };
                    core.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    core.spawn_worker(id, RunMode::Local);
                }
            }
            Mode::Shared(sq) => {
                let free = limit.saturating_sub(core.running.len());
                if free > 0 && sq.wanted && !sq.claiming {
                    sq.claiming = true;
                    sq.wanted = false;
                    claims::claim(
                        sq.cluster.clone(),
                        core.config.clone(),
                        free,
                        core.shared.clone(),
                        core.tx.clone(),
                    );
                }
            }
        }
    }

    /// Shared queue: a claim for `asked` tasks came back with these, leased to this instance.
    pub(super) fn claimed(&mut self, core: &mut Core, asked: usize, tasks: Vec<Leased>) {
        match self {
            Mode::Shared(sq) => {
                sq.claiming = false;
                sq.wanted = wanted_after_claim(sq.wanted, asked, tasks.len());
                sq.run_claimed(core, tasks);
            }
            // Never sent: an instance alone does not claim.
            Mode::Local(_) => {}
        }
    }

    /// Shared queue: there may be work to claim (a task was queued somewhere).
    pub(super) fn wake(&mut self) {
        match self {
            Mode::Shared(sq) => sq.wanted = true,
            Mode::Local(_) => {}
        }
    }

    /// Shared queue: the periodic check: claim (a slot may have freed on another instance) and
    /// re-read the tasks local callers wait for (a "finished" message may have been lost).
    pub(super) fn tick(&mut self, core: &mut Core) {
        match self {
            Mode::Shared(sq) => {
                sq.wanted = true;
                let waited: Vec<TaskId> = core
                    .waiters
                    .keys()
                    .filter(|id| !core.running.contains_key(id))
                    .copied()
                    .collect();
                core.read_waited(waited);
            }
            Mode::Local(_) => {}
        }
    }

    /// Pending tasks held here (the shared queue's are Redis's).
    pub(super) fn pending_len(&self) -> usize {
        match self {
            Mode::Local(l) => l.pending.pending_len(),
            Mode::Shared(_) => 0,
        }
    }

    /// Work asked for that has not come back yet: a claim in flight, which a shutdown waits
    /// for (it would come back to nobody, and its tasks wait for their leases to expire; it
    /// is released on arrival).
    pub(super) fn in_flight(&self) -> bool {
        match self {
            Mode::Local(_) => false,
            Mode::Shared(sq) => sq.claiming,
        }
    }
}

impl SharedQueue {
    fn finished(
        &mut self,
        core: &mut Core,
        id: TaskId,
        task: Option<Box<Task>>,
        wrote: bool,
        handover: Option<Claimed>,
    ) {
        match &handover {
            // The lease is still to be released.
            None => {
                self.wanted = true;
                claims::release(self.cluster.clone(), id);
            }
            // Nothing was ready for the freed slot (or it was not to be kept): claiming again
            // now would find the same.
            Some(claimed) if claimed.tasks.is_empty() => {}
            Some(claimed) => {
                self.wanted = true;
                core.shared
                    .pending
                    .store(claims::left(claimed), Ordering::SeqCst);
            }
        }
        if let Some(claimed) = handover {
            self.run_claimed(core, claimed.tasks);
        }
        match task {
            Some(task) if wrote => {
                core.notify(id, &task);
                claims::publish(self.cluster.clone(), Control::Finished { task: id });
            }
            // A canceller or a reaper wrote it, and told the listeners.
            Some(task) => {
                core.events.finish(&task);
                core.wake_waiters(id, &task);
            }
            // Unreadable (storage gone): its waiters read the store.
            None => drop(core.take_waiters(id)),
        }
    }

    /// Run tasks leased to this instance while slots are free; the others (a shutdown began,
    /// or `concurrency` was lowered meanwhile) go back to the queue for the other instances.
    fn run_claimed(&mut self, core: &mut Core, tasks: Vec<Leased>) {
        let limit = core.limit();
        for leased in tasks {
            if core.closing() || core.running.len() >= limit {
                claims::release(self.cluster.clone(), leased.task.id);
                continue;
            }
            let id = leased.task.id;
            let run = SharedRun {
                cluster: self.cluster.clone(),
                leased,
                queue: core.shared.clone(),
            };
            core.spawn_worker(id, RunMode::Shared(Box::new(run)));
        }
    }
}

/// Whether to claim again once a claim for `asked` tasks came back with `got`. A full claim may
/// have left more behind; a short one emptied what was ready when it read — but a wake that
/// came while it was in flight (`woken`: `wanted` is cleared when a claim begins) announces a
/// task it may not have seen, and must not be lost to its answer.
fn wanted_after_claim(woken: bool, asked: usize, got: usize) -> bool {
    woken || (asked > 0 && got >= asked)
}

#[cfg(test)]
mod tests {
    use super::wanted_after_claim;

    #[test]
    fn a_wake_during_a_claim_outlives_its_short_answer() {
        assert!(wanted_after_claim(true, 2, 0), "the wake is kept");
        assert!(
            !wanted_after_claim(false, 2, 1),
            "a short claim emptied the queue"
        );
        assert!(
            wanted_after_claim(false, 2, 2),
            "a full claim may have left more"
        );
        assert!(!wanted_after_claim(false, 0, 0));
    }
}
