//! Retention: a periodic sweep deletes sessions idle longer than `sessionRetentionDays`,
//! finished tasks (and their webhook attempts) older than `taskRetentionDays`. Live tasks are
//! never touched. A value of 0 keeps records forever.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::{Store, StoreResult};

/// How often the sweep runs (it also runs once at start-up).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: u64,
    pub tasks: u64,
    pub webhook_attempts: u64,
}

/// One sweep at `now` under `config`.
pub async fn sweep(store: &dyn Store, config: &Config, now: DateTime<Utc>) -> StoreResult<Swept> {
    let mut swept = Swept::default();
    if config.session_retention_days > 0 {
        let before = now - chrono::Duration::days(config.session_retention_days.into());
        swept.sessions = store.delete_sessions_idle_since(before).await?;
    }
    if config.task_retention_days > 0 {
        let before = now - chrono::Duration::days(config.task_retention_days.into());
        swept.tasks = store.delete_tasks_finished_before(before).await?;
        swept.webhook_attempts = store.prune_webhook_attempts_before(before).await?;
    }
    Ok(swept)
}

/// Run the sweep now and every [`SWEEP_INTERVAL`], reading the live config each time.
pub fn start(
    store: Arc<dyn Store>,
    config: Arc<dyn Fn() -> Arc<Config> + Send + Sync>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            match sweep(store.as_ref(), &config(), Utc::now()).await {
                Ok(s) if s != Swept::default() => log::info!(
                    sessions = s.sessions,
                    tasks = s.tasks,
                    webhook_attempts = s.webhook_attempts;
                    "retention sweep deleted old records"
                ),
                Ok(_) => {}
                Err(e) => log::warn!(error:% = e; "retention sweep failed; it runs again later"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{from_file_doc, Environment};
    use crate::model::{Priority, RunOutcome, RunSpec, Session, Task, TaskMode, TaskStatus};
    use crate::store::memory::MemoryStore;

    fn config(sessions: u32, tasks: u32) -> Config {
        let doc = serde_json::json!({"sessionRetentionDays": sessions, "taskRetentionDays": tasks});
        from_file_doc(
            &doc,
            &Environment {
                cwd: "/".into(),
                ..Default::default()
            },
        )
        .expect("config")
        .0
    }

    fn session(updated: DateTime<Utc>) -> Session {
        crate::session::fixtures::session("/", updated)
    }

    fn task() -> Task {
        let spec = RunSpec::new("p", "/", 1000);
        Task::new(spec, Priority::ASYNC_DEFAULT, TaskMode::Async)
    }

    #[tokio::test]
    async fn old_records_go_live_and_recent_ones_stay() {
        let store = MemoryStore::new();
        let now = Utc::now();
        let old = now - chrono::Duration::days(40);
        let (stale, fresh) = (session(old), session(now));
        store.insert_session(&stale).await.expect("insert");
        store.insert_session(&fresh).await.expect("insert");

        let done_old = store.insert_task(task()).await.expect("insert");
        let mut finished = done_old.clone();
        finished.finish(
            &RunOutcome {
                status: TaskStatus::Completed,
                report: None,
                error: None,
                cost_usd: 0.0,
                duration_ms: 1,
            },
            old,
        );
        assert!(store.finish_task(&finished).await.expect("finish"));
        let pending_old = store.insert_task(task()).await.expect("insert");

        let swept = sweep(&store, &config(30, 30), now).await.expect("sweep");
        assert_eq!((swept.sessions, swept.tasks), (1, 1));
        assert!(store.get_session(stale.id).await.expect("get").is_none());
        assert!(store.get_session(fresh.id).await.expect("get").is_some());
        assert!(store.get_task(done_old.id).await.expect("get").is_none());
        assert!(
            store.get_task(pending_old.id).await.expect("get").is_some(),
            "live tasks stay"
        );

        // 0 keeps everything.
        let another = session(old);
        store.insert_session(&another).await.expect("insert");
        assert_eq!(
            sweep(&store, &config(0, 0), now).await.expect("sweep"),
            Swept::default()
        );
        assert!(store.get_session(another.id).await.expect("get").is_some());
    }
}
