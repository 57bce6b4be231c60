//! The shared queue's background work (Redis storage, any number of instances): claiming
//! tasks for free slots, keeping this instance's leases alive, reaping the leases of instances
//! that died, and turning the control channel into supervisor messages.
//!
//! The supervisor stays the only owner of the running set; everything here talks to it by
//! message and never blocks it on Redis.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::supervisor::{
    Announce, ClaimAnswered, EndedElsewhere, Leases, SupervisorTx, Tick, Wake,
};
use super::Shared;
use crate::cluster::{Cluster, Control};
use crate::config::Config;
use crate::model::TaskStatus;
use crate::store::redis::Claimed;

/// How often an idle instance looks for claimable work and for the end of tasks its callers
/// wait for, should a control message have been lost. Bounded above by a third of the lease.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Expired leases taken over per reaping round.
const REAP_BATCH: u32 = 100;
/// How often this machine's processes are checked for orphans of dead runs (at least a lease).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Attempts to release a lease before leaving it to expire (it is then reaped harmlessly).
const RELEASE_TRIES: u32 = 5;

// The calls below go on `Cluster::io`, the runtime of the Redis connections' driver tasks, not
// on the supervisor's thread: Redis's answer then wakes no other thread (one hand-off fewer each).

/// Claim up to `want` tasks; the answer comes back as [`ClaimAnswered`].
pub(super) fn claim(
    cluster: Arc<Cluster>,
    config: Arc<Config>,
    want: usize,
    shared: Arc<Shared>,
    tx: SupervisorTx,
) {
    cluster.io().spawn(async move {
        let q = &config.task_queue;
        let claimed = cluster
            .store()
            .claim(
                cluster.instance().as_str(),
                q.lease_ms,
                q.global_concurrency.unwrap_or(0),
                want,
            )
            .await;
        let tasks = match claimed {
            Ok(c) => {
                shared.pending.store(left(&c), Ordering::SeqCst);
                c.tasks
            }
            Err(e) => {
                // The periodic wake tries again; meanwhile nothing is claimed.
                log::warn!(error:% = e; "cannot claim tasks from the shared queue");
                Vec::new()
            }
        };
        let _ = tx.send(ClaimAnswered { asked: want, tasks });
    });
}

/// The tasks a claim left pending in the namespace.
pub(super) fn left(claimed: &Claimed) -> u64 {
    claimed.pending.saturating_sub(claimed.tasks.len() as u64)
}

/// Drop this instance's lease on `id` (a task that never started goes back to the queue).
pub(super) fn release(cluster: Arc<Cluster>, id: crate::model::TaskId) {
    cluster.io().spawn(async move {
        let mut pause = Duration::from_millis(50);
        for _ in 0..RELEASE_TRIES {
            match cluster
                .store()
                .release(cluster.instance().as_str(), id)
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    log::debug!(task_id:% = id, error:% = e; "cannot release a lease; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        log::warn!(task_id:% = id; "could not release the lease; it will expire and be reaped");
    });
}

/// Tell the other instances, without holding up the caller.
pub(super) fn publish(cluster: Arc<Cluster>, msg: Control) {
    cluster
        .io()
        .spawn(async move { cluster.publish(&msg).await });
}

/// Start the background tasks of the shared queue for this instance's supervisor.
pub(super) fn start(cluster: Arc<Cluster>, tx: SupervisorTx, lease_ms: u64) {
    tokio::spawn(forward_control(cluster.subscribe(), tx.clone()));
    tokio::spawn(poll(tx.clone(), lease_ms));
    tokio::spawn(keep_leases(cluster, tx));
}

/// Control messages become supervisor messages.
async fn forward_control(mut rx: broadcast::Receiver<Control>, tx: SupervisorTx) {
    loop {
        let sent = match rx.recv().await {
            Ok(Control::Enqueued) => tx.send(Wake).is_ok(),
            Ok(Control::Cancel { task } | Control::Finished { task }) => {
                tx.send(EndedElsewhere(task)).is_ok()
            }
            // For the run's approval desk (`approval::bus`), not the queue.
            Ok(Control::Approval { .. }) => true,
            // Missed some: look at everything again.
            Err(broadcast::error::RecvError::Lagged(_)) => tx.send(Wake).is_ok(),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !sent {
            return;
        }
    }
}

/// The periodic wake: claims work and re-reads awaited tasks whatever messages were lost.
async fn poll(tx: SupervisorTx, lease_ms: u64) {
    let every = POLL_EVERY.min(Duration::from_millis(lease_ms / 3).max(Duration::from_millis(100)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.send(Tick).is_err() {
            return;
        }
    }
}

/// Renew this instance's leases every third of the lease, and reap expired ones.
///
/// Reaping waits until this instance has reached Redis without a failure for a whole lease:
/// after an outage every live instance renews within a third of a lease, so a lease that is
/// still expired after a whole one belongs to an instance that is really gone, not to one that
/// was cut off from Redis as we were.
async fn keep_leases(cluster: Arc<Cluster>, tx: SupervisorTx) {
    let instance = cluster.instance().as_str().to_string();
    let mut connected_since = Some(Instant::now());
    let mut last_reap = Instant::now();
    // At start-up first: a previous life of this instance may have left processes behind.
    let mut last_sweep: Option<Instant> = None;
    loop {
        // The supervisor gone, so are its runs and their leases.
        let Ok((ids, config)) = tx.ask(Leases).await else {
            return;
        };
        let lease_ms = config.task_queue.lease_ms;
        let lease = Duration::from_millis(lease_ms);
        match cluster.store().renew(&instance, lease_ms, &ids).await {
            Ok(stop) => {
                connected_since.get_or_insert_with(Instant::now);
                for id in stop {
                    log::warn!(task_id:% = id; "the task ended elsewhere or its lease was lost: stopping its run");
                    let _ = tx.send(EndedElsewhere(id));
                }
            }
            Err(e) => {
                connected_since = None;
                log::warn!(error:% = e; "cannot renew the leases of running tasks");
            }
        }
        if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY.max(lease)) {
            last_sweep = Some(Instant::now());
            if let Err(e) = sweep_orphans(&cluster, &ids).await {
                log::debug!(error:% = e; "cannot look for orphaned run processes");
            }
        }
        let steady = connected_since.is_some_and(|since| since.elapsed() >= lease);
        if steady && last_reap.elapsed() >= lease / 2 {
            last_reap = Instant::now();
            if let Err(e) = reap(&cluster, &tx, lease_ms).await {
                connected_since = None;
                log::warn!(error:% = e; "cannot reap expired leases");
            }
        }
        tokio::time::sleep(lease / 3).await;
    }
}

/// Kill the processes on this machine of runs that no live instance here is running: the task
/// (of this namespace) ended a while ago, or the instance holding it was on this machine and is dead (this one's
/// previous life after a crash, whose CLI's tools outlived it). Runs of this instance (`ours`)
/// and of instances on other machines are left alone.
async fn sweep_orphans(
    cluster: &Arc<Cluster>,
    ours: &[crate::model::TaskId],
) -> Result<(), crate::store::StoreError> {
    let procs = tokio::task::spawn_blocking(crate::claude::marker::all_marked_processes)
        .await
        .unwrap_or_default();
    let ids: HashSet<crate::model::TaskId> = procs
        .iter()
        .filter_map(|(_, marker)| marker.parse().ok())
        .filter(|id| !ours.contains(id))
        .collect();
    let store = cluster.store();
    for id in ids {
        let task = crate::store::Store::get_task(store.as_ref(), id).await?;
        let orphan = match task {
            // Not a task of this namespace: another deployment's run on this machine.
            None => false,
            // Not at once: the instance that runs it may be killing it gracefully right now.
            Some(t) if t.status.is_final() => t.completed_at.is_some_and(|at| {
                Utc::now() - at > chrono::Duration::from_std(SWEEP_EVERY).unwrap_or_default()
            }),
            Some(_) => match store.lease_owner(id).await? {
                Some(owner) => cluster
                    .instance()
                    .is_dead_neighbour(&owner, crate::cluster::pid_alive),
                None => false,
            },
        };
        if orphan {
            let n = crate::claude::marker::signal_marked(&id.to_string(), libc::SIGKILL);
            log::warn!(task_id:% = id, count = n; "killed processes left by a run that no live instance here runs");
        }
    }
    Ok(())
}

/// Take over expired leases: a run whose instance is gone ends `failed`/`interrupted` and is
/// announced here (statistics, webhooks, waiters); then the lease is dropped.
async fn reap(
    cluster: &Arc<Cluster>,
    tx: &SupervisorTx,
    lease_ms: u64,
) -> Result<(), crate::store::StoreError> {
    let store = cluster.store();
    let instance = cluster.instance().as_str();
    let taken = store.reap(instance, lease_ms, REAP_BATCH).await?;
    for (id, status) in taken {
        if status == Some(TaskStatus::Processing) {
            if let Some(task) = store.interrupt_lost(id, Utc::now()).await? {
                log::warn!(task_id:% = id; "the instance running this task is gone: it ends failed/interrupted");
                // Its processes may be on this machine (an instance restarted here).
                crate::claude::marker::signal_marked(&id.to_string(), libc::SIGKILL);
                let _ = tx.send(Announce(Box::new(task)));
                cluster.publish(&Control::Finished { task: id }).await;
            }
        }
        store.release(instance, id).await?;
    }
    Ok(())
}
