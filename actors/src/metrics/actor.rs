//! The MetricsActor: one tokio task that folds every final task record into [`Metrics`].
//!
//! It listens to [`crate::queue::Queue::subscribe_finished`] rather than being called by the
//! handlers, so every run is counted once whichever way it ended (sync, async, batch, session
//! turn, cancel, timeout, shutdown) and a handler cannot forget it. It stops by itself when the
//! queue is gone and the subscription closes.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Metrics;
use crate::model::Task;

pub struct MetricsActor;

impl MetricsActor {
    /// Start counting `finished` (subscribed before any task can end, so none is missed).
    pub fn start(
        metrics: Arc<Metrics>,
        mut finished: mpsc::UnboundedReceiver<Arc<Task>>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(task) = finished.recv().await {
                metrics.task_finished(&task);
            }
        })
    }
}
