//! The MetricsActor: an actix actor on the [`ActorSystem`](crate::system::ActorSystem)'s
//! arbiter that folds every final task record into [`Metrics`].
//!
//! It listens to [`crate::queue::Queue::subscribe_finished`] rather than being called by the
//! handlers, so every run is counted once whichever way it ended (sync, async, batch, session
//! turn, cancel, timeout, shutdown) and a handler cannot forget it. The subscription is its
//! input, taken in as records arrive (a [`Feed`]); [`Settle`] is its one message: it answers
//! once every record already sent is counted. It stops by itself when the queue is gone (the
//! subscription closes) and nobody holds its address.
//!
//! The registry itself stays shared (`Arc<Metrics>`, one lock per family): the HTTP layer
//! counts every request and renders `GET /metrics` synchronously, and a lock held for one map
//! update is cheaper than a message per request through one thread.

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::sync::mpsc;

use super::Metrics;
use crate::model::Task;
use crate::system::{drain, Feed};

pub struct MetricsActor {
    metrics: Arc<Metrics>,
    /// The queue's subscription; `None` once closed.
    finished: Option<mpsc::UnboundedReceiver<Arc<Task>>>,
    /// Records counted since the start.
    counted: u64,
}

/// Count every final record already sent; answers how many were counted since the start.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Settle;

impl MetricsActor {
    /// Start counting `finished` (subscribed before any task can end, so none is missed) on
    /// `arbiter`.
    pub fn start(
        arbiter: &ArbiterHandle,
        metrics: Arc<Metrics>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
    ) -> Addr<MetricsActor> {
        let finished = Some(finished);
        MetricsActor::start_in_arbiter(arbiter, move |_| MetricsActor {
            metrics,
            finished,
            counted: 0,
        })
    }

    fn count(&mut self, task: &Task) {
        self.metrics.task_finished(task);
        self.counted += 1;
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Feed {
            rx: |a: &mut MetricsActor| &mut a.finished,
            take: |a, task, _| a.count(&task),
        });
    }
}

impl Handler<Settle> for MetricsActor {
    type Result = MessageResult<Settle>;

    fn handle(&mut self, _: Settle, _: &mut Context<Self>) -> Self::Result {
        for task in drain(&mut self.finished) {
            self.count(&task);
        }
        MessageResult(self.counted)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{Priority, RunSpec, TaskMode, TaskStatus};
    use crate::system::ActorSystem;

    fn task(status: TaskStatus, cost: f64) -> Arc<Task> {
        let mut t = Task::new(
            RunSpec::new("p", PathBuf::from("/tmp"), 1000),
            Priority::ASYNC_DEFAULT,
            TaskMode::Sync,
        );
        t.status = status;
        t.cost_usd = Some(cost);
        t.duration_ms = Some(1500);
        Arc::new(t)
    }

    /// Records in, counted metrics out; `Settle` answers after everything already sent.
    #[tokio::test]
    async fn final_records_are_counted_once_each() {
        let system = ActorSystem::start("test-metrics", 1).expect("system");
        let metrics = Arc::new(Metrics::default());
        let (feed, finished) = mpsc::unbounded_channel();
        let actor = MetricsActor::start(system.arbiter(), metrics.clone(), finished);
        for status in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Completed,
        ] {
            feed.send(task(status, 0.25)).expect("feed");
        }
        // A record that is not final (never sent by the queue) changes nothing but the count.
        feed.send(task(TaskStatus::Processing, 1.0)).expect("feed");
        assert_eq!(actor.send(Settle).await.expect("settle"), 4);
        assert_eq!(metrics.tasks_finished_count(TaskStatus::Completed), 2.0);
        assert_eq!(metrics.tasks_finished_count(TaskStatus::Failed), 1.0);
        let live = crate::queue::LiveStatus {
            pending: 0,
            running: 0,
            concurrency: 1,
            accepting: true,
        };
        let text = metrics.render(live, None, Default::default());
        assert!(
            text.lines().any(|l| l == "ccs_cost_usd_total 0.75"),
            "{text}"
        );

        // The queue gone: the actor still answers while it has an address, with what it had.
        drop(feed);
        assert_eq!(actor.send(Settle).await.expect("settle"), 4);
        // And stops (dropping its share of the registry) once nobody holds one.
        drop(actor);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&metrics) > 1 {
            assert!(std::time::Instant::now() < deadline, "still running");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        system.stop();
    }
}
