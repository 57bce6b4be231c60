//! The StatsActor: one tokio task that owns the per-day figures.
//!
//! It folds every final task record from the queue's subscription into the day the task ended,
//! answers queries and budget checks through its mailbox, and writes the days that changed to
//! the store every `statistics.collectionInterval` ms, on [`StatsHandle::flush`] and when the
//! last handle goes away. At start it loads the last [`RETENTION_DAYS`] days, so figures
//! survive a restart; older days are pruned (at start and when the UTC day changes).
//!
//! Every query first takes in the final records already waiting in the subscription. The queue
//! sends a task's record to its subscribers in the same step that wakes its sync caller, so a
//! client that got its answer and then asks for statistics (or starts another run against a
//! budget) always sees that run counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::aggregate::{day_of, DayStats, Rollup, Scope};
use super::budget::{self, BudgetError};
use crate::config::Config;
use crate::model::Task;
use crate::store::{Store, StoreError};

/// Days kept: today and the 365 before it.
pub const RETENTION_DAYS: u64 = 365;

/// The shortest interval between two writes, whatever the config says (the config itself
/// refuses less than 1000 ms; tests of this module use short intervals).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

const MAILBOX: usize = 256;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StatsError {
    /// The actor is gone (only after shutdown).
    #[error("the statistics actor is not running")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which days a query covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaySelection {
    /// Every retained day.
    All,
    /// `from..=to`.
    Range { from: NaiveDate, to: NaiveDate },
    /// The newest `limit` days that have figures for the caller.
    Latest { limit: usize },
}

enum Msg {
    Rollup {
        days: DaySelection,
        scope: Scope,
        reply: oneshot::Sender<Rollup>,
    },
    Daily {
        days: DaySelection,
        scope: Scope,
        reply: oneshot::Sender<Vec<(NaiveDate, Rollup)>>,
    },
    SpentToday {
        owner: Option<String>,
        reply: oneshot::Sender<f64>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The handle handlers use. Cheap to clone; the actor stops (after a last write) when every
/// handle is gone.
#[derive(Clone)]
pub struct StatsHandle {
    tx: mpsc::Sender<Msg>,
}

impl StatsHandle {
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, StatsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| StatsError::Stopped)?;
        rx.await.map_err(|_| StatsError::Stopped)
    }

    /// The figures of the selected days that `scope` may see, summed.
    pub async fn rollup(&self, days: DaySelection, scope: Scope) -> Result<Rollup, StatsError> {
        self.ask(|reply| Msg::Rollup { days, scope, reply }).await
    }

    /// Per day (ascending), only days with requests that `scope` may see.
    pub async fn daily(
        &self,
        days: DaySelection,
        scope: Scope,
    ) -> Result<Vec<(NaiveDate, Rollup)>, StatsError> {
        self.ask(|reply| Msg::Daily { days, scope, reply }).await
    }

    /// What runs of `owner` (`None`: anonymous) cost today (UTC), failed runs included.
    pub async fn spent_today(&self, owner: Option<&str>) -> Result<f64, StatsError> {
        let owner = owner.map(str::to_string);
        self.ask(|reply| Msg::SpentToday { owner, reply }).await
    }

    /// Before accepting a run: refuse it when the key's spend today has reached its
    /// `dailyBudgetUsd`. Keys without a budget (and anonymous callers) are never asked about.
    pub async fn check_budget(
        &self,
        owner: Option<&str>,
        config: &Config,
    ) -> Result<(), BudgetError> {
        let Some(limit) = budget::daily_budget(config, owner) else {
            return Ok(());
        };
        let spent = self
            .spent_today(owner)
            .await
            .map_err(|_| BudgetError::Unavailable)?;
        budget::decide(limit, spent, Utc::now())
    }

    /// Write every changed day now (the app calls this before it exits).
    pub async fn flush(&self) -> Result<(), StatsError> {
        Ok(self.ask(|reply| Msg::Flush { reply }).await??)
    }
}

/// The actor's state.
pub struct StatsActor {
    store: Arc<dyn Store>,
    config: watch::Receiver<Arc<Config>>,
    /// `None` once the queue has closed it (shutdown).
    finished: Option<mpsc::UnboundedReceiver<Arc<Task>>>,
    days: BTreeMap<NaiveDate, DayStats>,
    dirty: BTreeSet<NaiveDate>,
    last_write: Instant,
    /// The day retention was last applied for.
    pruned_for: NaiveDate,
}

impl StatsActor {
    /// Load the retained days, prune older ones and start the actor. `finished` is the queue's
    /// subscription (`Queue::subscribe_finished`); `config` the live config. Fails when the
    /// store cannot be read: starting empty would overwrite today's saved figures at the next
    /// write.
    pub async fn start(
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: watch::Receiver<Arc<Config>>,
    ) -> Result<StatsHandle, StoreError> {
        let today = Utc::now().date_naive();
        let oldest = oldest_kept(today);
        // A day or two ahead, in case the clock was set back since they were written.
        let newest = today.checked_add_days(Days::new(2)).unwrap_or(today);
        let mut days = BTreeMap::new();
        for (day, doc) in store.load_stats_days(oldest, newest).await? {
            match serde_json::from_value::<DayStats>(doc) {
                Ok(stats) => {
                    days.insert(day, stats);
                }
                Err(e) => {
                    tracing::error!(%day, error = %e, "unreadable statistics for this day; it starts again from zero")
                }
            }
        }
        prune_store(&store, oldest).await;
        let (tx, rx) = mpsc::channel(MAILBOX);
        let actor = StatsActor {
            store,
            config,
            finished: Some(finished),
            days,
            dirty: BTreeSet::new(),
            last_write: Instant::now(),
            pruned_for: today,
        };
        tokio::spawn(actor.run(rx));
        Ok(StatsHandle { tx })
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.config.borrow().statistics.collection_interval).max(MIN_INTERVAL)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let write_at = self.last_write + self.interval();
            tokio::select! {
                // Records first: a query that arrives together with them must see them.
                biased;
                task = recv_or_pending(&mut self.finished) => match task {
                    Some(task) => self.record(&task),
                    None => self.finished = None,
                },
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(write_at) => {
                    let _ = self.write().await;
                }
            }
        }
        self.take_waiting_records();
        if let Err(e) = self.write().await {
            tracing::error!(error = %e, "statistics could not be saved before stopping");
        }
    }

    async fn handle(&mut self, msg: Msg) {
        self.take_waiting_records();
        match msg {
            Msg::Rollup { days, scope, reply } => {
                let mut r = Rollup::default();
                for (_, day) in self.select(days, &scope) {
                    r.add_day(day, &scope);
                }
                let _ = reply.send(r);
            }
            Msg::Daily { days, scope, reply } => {
                let v = self
                    .select(days, &scope)
                    .into_iter()
                    .map(|(d, day)| (d, Rollup::of_day(day, &scope)))
                    .collect();
                let _ = reply.send(v);
            }
            Msg::SpentToday { owner, reply } => {
                let today = Utc::now().date_naive();
                let spent = self
                    .days
                    .get(&today)
                    .map_or(0.0, |d| d.spent(owner.as_deref()));
                let _ = reply.send(spent);
            }
            Msg::Flush { reply } => {
                let _ = reply.send(self.write().await);
            }
        }
    }

    /// The selected days (ascending) that hold requests `scope` may see.
    fn select(&self, days: DaySelection, scope: &Scope) -> Vec<(NaiveDate, &DayStats)> {
        let visible = |d: &DayStats| d.visible(scope).has_requests();
        match days {
            DaySelection::All => self
                .days
                .iter()
                .filter(|(_, d)| visible(d))
                .map(|(k, d)| (*k, d))
                .collect(),
            DaySelection::Range { from, to } if from <= to => self
                .days
                .range(from..=to)
                .filter(|(_, d)| visible(d))
                .map(|(k, d)| (*k, d))
                .collect(),
            DaySelection::Range { .. } => Vec::new(),
            DaySelection::Latest { limit } => {
                let mut v: Vec<_> = self
                    .days
                    .iter()
                    .rev()
                    .filter(|(_, d)| visible(d))
                    .take(limit)
                    .map(|(k, d)| (*k, d))
                    .collect();
                v.reverse();
                v
            }
        }
    }

    /// Take in every record the queue has already sent.
    fn take_waiting_records(&mut self) {
        let mut waiting = Vec::new();
        if let Some(rx) = self.finished.as_mut() {
            while let Ok(task) = rx.try_recv() {
                waiting.push(task);
            }
        }
        for task in waiting {
            self.record(&task);
        }
    }

    fn record(&mut self, task: &Task) {
        // Read the live config for each record: turning statistics off applies at once.
        let enabled = self.config.borrow().statistics.enabled;
        let day = day_of(task, Utc::now());
        self.days.entry(day).or_default().record(task, enabled);
        // Disabled statistics change only the spend ledger, and only when the run cost money.
        if enabled || task.cost_usd.is_some_and(|c| c > 0.0) {
            self.dirty.insert(day);
        }
    }

    /// Write the changed days (and apply retention when the UTC day has changed). A day that
    /// fails to write stays changed and is tried again next time.
    async fn write(&mut self) -> Result<(), StoreError> {
        self.last_write = Instant::now();
        let today = Utc::now().date_naive();
        if today != self.pruned_for {
            let oldest = oldest_kept(today);
            self.days = self.days.split_off(&oldest);
            self.dirty = self.dirty.split_off(&oldest);
            prune_store(&self.store, oldest).await;
            self.pruned_for = today;
        }
        let mut result = Ok(());
        for day in std::mem::take(&mut self.dirty) {
            let Some(stats) = self.days.get(&day) else {
                continue;
            };
            let saved = match serde_json::to_value(stats) {
                Ok(doc) => self.store.save_stats_day(day, &doc).await,
                Err(e) => Err(StoreError::Corrupt(e.to_string())),
            };
            if let Err(e) = saved {
                tracing::warn!(%day, error = %e, "statistics not saved; retrying at the next interval");
                self.dirty.insert(day);
                result = Err(e);
            }
        }
        result
    }
}

/// The oldest day kept for `today`.
fn oldest_kept(today: NaiveDate) -> NaiveDate {
    today
        .checked_sub_days(Days::new(RETENTION_DAYS))
        .unwrap_or(NaiveDate::MIN)
}

async fn prune_store(store: &Arc<dyn Store>, oldest: NaiveDate) {
    match store.prune_stats_before(oldest).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            days = n,
            "pruned statistics older than {RETENTION_DAYS} days"
        ),
        Err(e) => tracing::warn!(error = %e, "could not prune old statistics"),
    }
}

async fn recv_or_pending(rx: &mut Option<mpsc::UnboundedReceiver<Arc<Task>>>) -> Option<Arc<Task>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::DateTime;

    use super::*;
    use crate::model::{Priority, RunSpec, TaskMode, TaskStatus};
    use crate::store::memory::MemoryStore;

    fn config(enabled: bool, interval_ms: u64) -> Arc<Config> {
        let mut doc: serde_json::Value =
            serde_json::from_str(crate::config::DEFAULT_JSON).expect("defaults");
        doc["statistics"] =
            serde_json::json!({"enabled": enabled, "collectionInterval": interval_ms});
        doc["auth"]["apiKeys"] = serde_json::json!([
            {"name": "a", "key": "key-aaaaaaaa", "dailyBudgetUsd": 0.5},
            {"name": "b", "key": "key-bbbbbbbb"}
        ]);
        Arc::new(Config::from_merged(doc).expect("config"))
    }

    fn task(owner: Option<&str>, model: &str, status: TaskStatus, cost: f64) -> Arc<Task> {
        task_at(owner, model, status, cost, Utc::now())
    }

    fn task_at(
        owner: Option<&str>,
        model: &str,
        status: TaskStatus,
        cost: f64,
        at: DateTime<Utc>,
    ) -> Arc<Task> {
        let spec = RunSpec {
            model: Some(model.into()),
            ..RunSpec::new("p", PathBuf::from("/tmp"), 1000)
        };
        let mut t = Task::new(spec, Priority::ASYNC_DEFAULT, TaskMode::Sync);
        t.owner = owner.map(str::to_string);
        t.status = status;
        t.cost_usd = Some(cost);
        t.duration_ms = Some(10);
        t.completed_at = Some(at);
        Arc::new(t)
    }

    struct Fixture {
        feed: mpsc::UnboundedSender<Arc<Task>>,
        config: watch::Sender<Arc<Config>>,
        stats: StatsHandle,
    }

    async fn start(store: Arc<dyn Store>, cfg: Arc<Config>) -> Fixture {
        let (feed, finished) = mpsc::unbounded_channel();
        let (config, config_rx) = watch::channel(cfg);
        let stats = StatsActor::start(store, finished, config_rx)
            .await
            .expect("start");
        Fixture {
            feed,
            config,
            stats,
        }
    }

    #[tokio::test]
    async fn records_are_visible_to_the_next_query_and_survive_a_restart() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let f = start(store.clone(), config(true, 3_600_000)).await;
        f.feed
            .send(task(Some("a"), "m1", TaskStatus::Completed, 0.5))
            .expect("feed");
        f.feed
            .send(task(Some("b"), "m2", TaskStatus::Failed, 0.25))
            .expect("feed");
        // No waiting: queries take in what is already queued.
        let r = f
            .stats
            .rollup(DaySelection::All, Scope::All)
            .await
            .expect("rollup");
        assert_eq!((r.total.requests, r.total.failed), (2, 1));
        assert_eq!(r.total.cost_usd, 0.5);
        let a = f
            .stats
            .rollup(DaySelection::All, Scope::Key(Some("a".into())))
            .await
            .expect("rollup");
        assert_eq!(a.total.requests, 1);

        f.stats.flush().await.expect("flush");
        drop(f);
        let again = start(store, config(true, 3_600_000)).await;
        let r = again
            .stats
            .rollup(DaySelection::All, Scope::All)
            .await
            .expect("rollup");
        assert_eq!(r.total.requests, 2);
        assert_eq!(
            again.stats.spent_today(Some("b")).await.expect("spent"),
            0.25
        );
    }

    #[tokio::test]
    async fn changed_days_are_written_every_interval() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let f = start(store.clone(), config(true, 20)).await;
        f.feed
            .send(task(None, "m", TaskStatus::Completed, 0.1))
            .expect("feed");
        let today = Utc::now().date_naive();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let saved = store.load_stats_days(today, today).await.expect("load");
            if let Some((_, doc)) = saved.first() {
                let day: DayStats = serde_json::from_value(doc.clone()).expect("doc");
                assert_eq!(day.spent(None), 0.1);
                break;
            }
            assert!(Instant::now() < deadline, "nothing was written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(f.config);
    }

    #[tokio::test]
    async fn disabled_statistics_record_nothing_but_budgets_still_count() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cfg = config(false, 3_600_000);
        let f = start(store, cfg.clone()).await;
        f.feed
            .send(task(Some("a"), "m", TaskStatus::Completed, 0.6))
            .expect("feed");
        let r = f
            .stats
            .rollup(DaySelection::All, Scope::All)
            .await
            .expect("rollup");
        assert_eq!(r.total.requests, 0);
        assert!(f
            .stats
            .daily(DaySelection::All, Scope::All)
            .await
            .expect("daily")
            .is_empty());
        let refused = f.stats.check_budget(Some("a"), &cfg).await;
        assert!(
            matches!(refused, Err(BudgetError::Exceeded { .. })),
            "{refused:?}"
        );
        // Turned on at run time: the next record counts.
        f.config.send_replace(config(true, 3_600_000));
        f.feed
            .send(task(Some("a"), "m", TaskStatus::Completed, 0.1))
            .expect("feed");
        let r = f
            .stats
            .rollup(DaySelection::All, Scope::All)
            .await
            .expect("rollup");
        assert_eq!(r.total.requests, 1);
    }

    #[tokio::test]
    async fn budgets_apply_per_key() {
        let cfg = config(true, 3_600_000);
        let f = start(Arc::new(MemoryStore::new()), cfg.clone()).await;
        assert_eq!(f.stats.check_budget(Some("a"), &cfg).await, Ok(()));
        f.feed
            .send(task(Some("a"), "m", TaskStatus::Completed, 0.25))
            .expect("feed");
        assert_eq!(f.stats.check_budget(Some("a"), &cfg).await, Ok(()));
        f.feed
            .send(task(Some("a"), "m", TaskStatus::Failed, 0.25))
            .expect("feed");
        assert!(matches!(
            f.stats.check_budget(Some("a"), &cfg).await,
            Err(BudgetError::Exceeded { .. })
        ));
        // No budget for b, none for anonymous callers.
        f.feed
            .send(task(Some("b"), "m", TaskStatus::Completed, 100.0))
            .expect("feed");
        assert_eq!(f.stats.check_budget(Some("b"), &cfg).await, Ok(()));
        assert_eq!(f.stats.check_budget(None, &cfg).await, Ok(()));
    }

    #[tokio::test]
    async fn days_are_selected_by_range_and_latest_and_old_ones_are_pruned() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let today = Utc::now().date_naive();
        let ago = |n: u64| today.checked_sub_days(Days::new(n)).expect("date");
        // Saved by an earlier process: one day past retention, one inside it.
        let mut old = DayStats::default();
        old.record(&task(None, "m", TaskStatus::Completed, 1.0), true);
        for d in [ago(RETENTION_DAYS + 1), ago(RETENTION_DAYS), ago(3)] {
            store
                .save_stats_day(d, &serde_json::to_value(&old).expect("doc"))
                .await
                .expect("save");
        }
        let f = start(store.clone(), config(true, 3_600_000)).await;
        let at = |n: u64| ago(n).and_hms_opt(12, 0, 0).expect("time").and_utc();
        f.feed
            .send(task_at(Some("a"), "m", TaskStatus::Completed, 0.1, at(1)))
            .expect("feed");
        f.feed
            .send(task_at(Some("a"), "m", TaskStatus::Completed, 0.1, at(0)))
            .expect("feed");

        let all = f
            .stats
            .daily(DaySelection::All, Scope::All)
            .await
            .expect("daily");
        let dates: Vec<_> = all.iter().map(|(d, _)| *d).collect();
        assert_eq!(dates, [ago(RETENTION_DAYS), ago(3), ago(1), ago(0)]);
        let latest = f
            .stats
            .daily(DaySelection::Latest { limit: 2 }, Scope::All)
            .await
            .expect("daily");
        assert_eq!(
            latest.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            [ago(1), ago(0)]
        );
        let range = f
            .stats
            .daily(
                DaySelection::Range {
                    from: ago(3),
                    to: ago(1),
                },
                Scope::All,
            )
            .await
            .expect("daily");
        assert_eq!(range.len(), 2);
        // Key a has no figures on the days saved before.
        let mine = f
            .stats
            .daily(DaySelection::All, Scope::Key(Some("a".into())))
            .await
            .expect("daily");
        assert_eq!(mine.len(), 2);
        assert!(store
            .load_stats_days(ago(RETENTION_DAYS + 1), ago(RETENTION_DAYS + 1))
            .await
            .expect("load")
            .is_empty());
    }
}
