//! How a decision reaches its run, and how an approval reaches the webhooks.
//!
//! A decision is written to the store first (the authority, see the module docs above); the
//! [`ApprovalHub`] then only *wakes* the run, which reads the stored approval and answers the
//! CLI. A wake lost on the way (a pub/sub message missed while Redis reconnected) costs latency,
//! not correctness: a run with pending approvals also re-reads them every
//! [`super::desk::RECHECK_EVERY`].
//!
//! * In one process: the run registers its task id; [`ApprovalHub::wake`] signals it.
//! * Several instances (Redis): the decider also publishes [`Control::Approval`] on the
//!   cluster's control channel; every instance wakes the run if it is its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::cluster::{Cluster, Control};
use crate::model::TaskId;
use crate::webhook::WebhookJob;

/// Shared by the runs of this instance and its HTTP handlers.
#[derive(Default)]
pub struct ApprovalHub {
    runs: Mutex<HashMap<TaskId, mpsc::UnboundedSender<()>>>,
    cluster: Mutex<Option<Arc<Cluster>>>,
    /// Where `task.approval_requested` deliveries go (the webhook actor's stream), once it runs.
    webhooks: Mutex<Option<mpsc::UnboundedSender<WebhookJob>>>,
}

/// A run's registration: its wakes arrive on `wakes`; dropping it unregisters the run.
pub struct Registration {
    hub: Arc<ApprovalHub>,
    task: TaskId,
    pub wakes: mpsc::UnboundedReceiver<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.lock_runs().remove(&self.task);
    }
}

impl ApprovalHub {
    pub fn new() -> ApprovalHub {
        ApprovalHub::default()
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, mpsc::UnboundedSender<()>>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// With a cluster: decisions are announced to every instance, and the ones announced by
    /// others wake this instance's runs. Call once, at start-up.
    pub fn join_cluster(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let mut control = cluster.subscribe();
        *self.cluster.lock().unwrap_or_else(PoisonError::into_inner) = Some(cluster);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match control.recv().await {
                    Ok(Control::Approval { task }) => match weak.upgrade() {
                        Some(hub) => hub.wake_local(task),
                        None => return,
                    },
                    Ok(_) => {}
                    // Missed messages: wake every run, each re-reads its approvals.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let Some(hub) = weak.upgrade() else { return };
                        let runs: Vec<TaskId> = hub.lock_runs().keys().copied().collect();
                        for task in runs {
                            hub.wake_local(task);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Register the run of `task` (one at a time per task).
    pub fn register(self: &Arc<Self>, task: TaskId) -> Registration {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_runs().insert(task, tx);
        Registration {
            hub: self.clone(),
            task,
            wakes: rx,
        }
    }

    /// Whether `task` runs on this instance now.
    pub fn runs_here(&self, task: TaskId) -> bool {
        self.lock_runs().contains_key(&task)
    }

    fn wake_local(&self, task: TaskId) {
        if let Some(tx) = self.lock_runs().get(&task) {
            let _ = tx.send(());
        }
    }

    /// An approval of `task` was decided: wake its run, wherever it runs.
    pub async fn wake(&self, task: TaskId) {
        self.wake_local(task);
        let cluster = self
            .cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(cluster) = cluster {
            if !self.runs_here(task) {
                cluster.publish(&Control::Approval { task }).await;
            }
        }
    }

    /// The receiver of `task.approval_requested` deliveries, for the webhook actor (once).
    pub fn webhook_jobs(&self) -> mpsc::UnboundedReceiver<WebhookJob> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.webhooks.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }

    /// Hand a delivery to the webhook actor. `false` when none listens (then it is dropped).
    pub fn send_webhook(&self, job: WebhookJob) -> bool {
        self.webhooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|tx| tx.send(job).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_registered_run_until_it_unregisters() {
        let hub = Arc::new(ApprovalHub::new());
        let task = uuid::Uuid::new_v4();
        let mut reg = hub.register(task);
        assert!(hub.runs_here(task));
        hub.wake(task).await;
        assert_eq!(reg.wakes.recv().await, Some(()));
        drop(reg);
        assert!(!hub.runs_here(task));
        hub.wake(task).await;
    }
}
