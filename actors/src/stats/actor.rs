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
//!
//! With a cluster (Redis storage) the figures are shared by every instance instead
//! ([`super::shared`]): each final record is added at once to the day's counters in Redis, and
//! queries and budget checks read those counters, so they count the runs of every instance as
//! soon as they ended. Records that could not be added (Redis unavailable) wait in memory, are
//! counted in this instance's answers meanwhile, and are added when Redis answers again
//! (retried every [`SHARED_RETRY`]); only a stop before that loses them. Queries fail with
//! [`StoreError::Unavailable`] while Redis is away. `collectionInterval` does not apply.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::aggregate::{day_of, key_bucket, DayStats, Rollup, Scope};
use super::budget::{self, BudgetError};
use super::shared::SharedStats;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::model::{Task, TaskId};
use crate::store::{Store, StoreError};

/// Days kept: today and the 365 before it.
pub const RETENTION_DAYS: u64 = 365;

/// The shortest interval between two writes, whatever the config says (the config itself
/// refuses less than 1000 ms; tests of this module use short intervals).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

const MAILBOX: usize = 256;

/// With a cluster: how soon records that could not be added to the shared counters are tried
/// again.
pub const SHARED_RETRY: Duration = Duration::from_secs(1);
/// Runs added to the shared counters in one script at most (bounds the script's arguments).
const ADD_BATCH: usize = 100;

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
        reply: oneshot::Sender<Result<Rollup, StoreError>>,
    },
    Daily {
        days: DaySelection,
        scope: Scope,
        reply: oneshot::Sender<Result<Vec<(NaiveDate, Rollup)>, StoreError>>,
    },
    SpentToday {
        owner: Option<String>,
        reply: oneshot::Sender<Result<f64, StoreError>>,
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
        Ok(self
            .ask(|reply| Msg::Rollup { days, scope, reply })
            .await??)
    }

    /// Per day (ascending), only days with requests that `scope` may see.
    pub async fn daily(
        &self,
        days: DaySelection,
        scope: Scope,
    ) -> Result<Vec<(NaiveDate, Rollup)>, StatsError> {
        Ok(self
            .ask(|reply| Msg::Daily { days, scope, reply })
            .await??)
    }

    /// What runs of `owner` (`None`: anonymous) cost today (UTC), failed runs included.
    pub async fn spent_today(&self, owner: Option<&str>) -> Result<f64, StatsError> {
        let owner = owner.map(str::to_string);
        Ok(self.ask(|reply| Msg::SpentToday { owner, reply }).await??)
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
        let spent = self.spent_today(owner).await.map_err(|e| match e {
            StatsError::Stopped => BudgetError::Unavailable,
            StatsError::Store(e) => BudgetError::Storage(e),
        })?;
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
    /// With a cluster: the shared counters (then `days` stays empty).
    shared: Option<Shared>,
}

/// The shared counters and this instance's records not yet added to them.
struct Shared {
    stats: SharedStats,
    pending: VecDeque<Pending>,
    /// Set while Redis fails: when to try again.
    retry_at: Option<Instant>,
}

/// One run's figures, to add to its day.
struct Pending {
    task: TaskId,
    day: NaiveDate,
    delta: DayStats,
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
        Self::start_in(store, finished, config, None).await
    }

    /// [`StatsActor::start`]; with `cluster`, on the counters every instance shares (nothing
    /// is loaded: queries read Redis).
    pub async fn start_in(
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: watch::Receiver<Arc<Config>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<StatsHandle, StoreError> {
        let today = Utc::now().date_naive();
        if let Some(cluster) = cluster {
            let (tx, rx) = mpsc::channel(MAILBOX);
            let actor = StatsActor {
                store,
                config,
                finished: Some(finished),
                days: BTreeMap::new(),
                dirty: BTreeSet::new(),
                last_write: Instant::now(),
                pruned_for: today,
                shared: Some(Shared {
                    stats: SharedStats::new(cluster, RETENTION_DAYS),
                    pending: VecDeque::new(),
                    retry_at: None,
                }),
            };
            tokio::spawn(actor.run(rx));
            return Ok(StatsHandle { tx });
        }
        let oldest = oldest_kept(today);
        let newest = newest_kept(today);
        let mut days = BTreeMap::new();
        for (day, doc) in store.load_stats_days(oldest, newest).await? {
            match serde_json::from_value::<DayStats>(doc) {
                Ok(stats) => {
                    days.insert(day, stats);
                }
                Err(e) => {
                    log::error!(day:% = day, error:% = e; "unreadable statistics for this day; it starts again from zero")
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
            shared: None,
        };
        tokio::spawn(actor.run(rx));
        Ok(StatsHandle { tx })
    }

    fn interval(&self) -> Duration {
        if self.shared.is_some() {
            return SHARED_RETRY;
        }
        Duration::from_millis(self.config.borrow().statistics.collection_interval).max(MIN_INTERVAL)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let write_at = self.last_write + self.interval();
            tokio::select! {
                // Records first: a query that arrives together with them must see them.
                biased;
                task = recv_or_pending(&mut self.finished) => match task {
                    Some(task) => {
                        self.record(&task);
                        // With the others that ended meanwhile: one script for all of them.
                        self.take_waiting_records();
                        let _ = self.add_shared(false).await;
                    }
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
            log::error!(error:% = e; "statistics could not be saved before stopping");
        }
    }

    async fn handle(&mut self, msg: Msg) {
        self.take_waiting_records();
        // Added first, so the answer comes from Redis rather than from what waits here.
        let _ = self.add_shared(false).await;
        match msg {
            Msg::Rollup { days, scope, reply } => {
                let r = self.view(days).await.map(|view| {
                    let mut r = Rollup::default();
                    for (_, day) in select(&view, days, &scope) {
                        r.add_day(day, &scope);
                    }
                    r
                });
                let _ = reply.send(r);
            }
            Msg::Daily { days, scope, reply } => {
                let v = self.view(days).await.map(|view| {
                    select(&view, days, &scope)
                        .into_iter()
                        .map(|(d, day)| (d, Rollup::of_day(day, &scope)))
                        .collect()
                });
                let _ = reply.send(v);
            }
            Msg::SpentToday { owner, reply } => {
                let _ = reply.send(self.spent_today(owner.as_deref()).await);
            }
            Msg::Flush { reply } => {
                let _ = reply.send(self.write().await);
            }
        }
    }

    /// The days a query may need: this instance's, or the shared ones (with this instance's
    /// records not yet added to them).
    async fn view(
        &self,
        days: DaySelection,
    ) -> Result<Cow<'_, BTreeMap<NaiveDate, DayStats>>, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(Cow::Borrowed(&self.days));
        };
        let today = Utc::now().date_naive();
        let (from, to) = match days {
            DaySelection::Range { from, to } => (from.max(oldest_kept(today)), to),
            DaySelection::All | DaySelection::Latest { .. } => {
                (oldest_kept(today), newest_kept(today))
            }
        };
        let mut loaded = if from <= to {
            shared.stats.load(from, to).await?
        } else {
            BTreeMap::new()
        };
        for p in &shared.pending {
            if (from..=to).contains(&p.day) {
                loaded.entry(p.day).or_default().merge(&p.delta);
            }
        }
        Ok(Cow::Owned(loaded))
    }

    async fn spent_today(&self, owner: Option<&str>) -> Result<f64, StoreError> {
        let today = Utc::now().date_naive();
        let Some(shared) = &self.shared else {
            return Ok(self.days.get(&today).map_or(0.0, |d| d.spent(owner)));
        };
        let stored = shared.stats.spent(today, key_bucket(owner)).await?;
        let waiting: f64 = shared
            .pending
            .iter()
            .filter(|p| p.day == today)
            .map(|p| p.delta.spent(owner))
            .sum();
        Ok(stored + waiting)
    }

    /// Add the records waiting for the shared counters, oldest first, stopping at the first
    /// failure. Unless `now`, does nothing while a retry is not yet due (so a Redis outage
    /// does not hold up every record and query with a failing call).
    async fn add_shared(&mut self, now: bool) -> Result<(), StoreError> {
        let Some(shared) = self.shared.as_mut() else {
            return Ok(());
        };
        if !now && shared.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        // Runs of one day go in batches; after a batch Redis refused, one at a time, so that
        // only the run it cannot take is left out.
        let mut batch = ADD_BATCH;
        while let Some(p) = shared.pending.front() {
            let day = p.day;
            let n = shared
                .pending
                .iter()
                .take(batch)
                .take_while(|p| p.day == day)
                .count();
            let runs: Vec<(TaskId, &DayStats)> = shared
                .pending
                .iter()
                .take(n)
                .map(|p| (p.task, &p.delta))
                .collect();
            match shared.stats.add(day, &runs).await {
                Ok(_) => {
                    shared.pending.drain(..n);
                }
                Err(StoreError::Corrupt(_)) if n > 1 => batch = 1,
                Err(StoreError::Corrupt(e)) => {
                    // Trying again would fail again and hold up every record behind it.
                    log::error!(task_id:% = p.task, day:% = p.day, error:% = e; "a run could not be added to the shared statistics; it is left out");
                    shared.pending.pop_front();
                }
                Err(e) => {
                    if shared.retry_at.is_none() {
                        log::warn!(error:% = e, waiting = shared.pending.len(); "statistics cannot be shared now; runs are kept here and added when Redis answers");
                    }
                    shared.retry_at = Some(Instant::now() + SHARED_RETRY);
                    return Err(e);
                }
            }
        }
        if shared.retry_at.take().is_some() {
            log::info!("the runs kept during the Redis outage were added to the shared statistics",);
        }
        Ok(())
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
        if let Some(shared) = self.shared.as_mut() {
            let mut delta = DayStats::default();
            delta.record(task, enabled);
            if !delta.is_empty() {
                shared.pending.push_back(Pending {
                    task: task.id,
                    day,
                    delta,
                });
            }
            return;
        }
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
        if self.shared.is_some() {
            // Shared counters are written as records come; this only retries what failed.
            return self.add_shared(true).await;
        }
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
                log::warn!(day:% = day, error:% = e; "statistics not saved; retrying at the next interval");
                self.dirty.insert(day);
                result = Err(e);
            }
        }
        result
    }
}

/// The selected days (ascending) that hold requests `scope` may see.
fn select<'a>(
    stored: &'a BTreeMap<NaiveDate, DayStats>,
    days: DaySelection,
    scope: &Scope,
) -> Vec<(NaiveDate, &'a DayStats)> {
    let visible = |d: &DayStats| d.visible(scope).has_requests();
    match days {
        DaySelection::All => stored
            .iter()
            .filter(|(_, d)| visible(d))
            .map(|(k, d)| (*k, d))
            .collect(),
        DaySelection::Range { from, to } if from <= to => stored
            .range(from..=to)
            .filter(|(_, d)| visible(d))
            .map(|(k, d)| (*k, d))
            .collect(),
        DaySelection::Range { .. } => Vec::new(),
        DaySelection::Latest { limit } => {
            let mut v: Vec<_> = stored
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

/// The oldest day kept for `today`.
fn oldest_kept(today: NaiveDate) -> NaiveDate {
    today
        .checked_sub_days(Days::new(RETENTION_DAYS))
        .unwrap_or(NaiveDate::MIN)
}

/// The newest day read for `today`: a day or two ahead, in case the clock was set back since
/// they were written.
fn newest_kept(today: NaiveDate) -> NaiveDate {
    today.checked_add_days(Days::new(2)).unwrap_or(today)
}

async fn prune_store(store: &Arc<dyn Store>, oldest: NaiveDate) {
    match store.prune_stats_before(oldest).await {
        Ok(0) => {}
        Ok(n) => log::info!(
            days = n;
            "pruned statistics older than {RETENTION_DAYS} days"
        ),
        Err(e) => log::warn!(error:% = e; "could not prune old statistics"),
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
        start_in(store, cfg, None).await
    }

    async fn start_in(
        store: Arc<dyn Store>,
        cfg: Arc<Config>,
        cluster: Option<Arc<Cluster>>,
    ) -> Fixture {
        let (feed, finished) = mpsc::unbounded_channel();
        let (config, config_rx) = watch::channel(cfg);
        let stats = StatsActor::start_in(store, finished, config_rx, cluster)
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

    // ---- shared statistics (Redis)

    async fn cluster_on(url: &str, ns: &str) -> Arc<Cluster> {
        let store = crate::store::redis::RedisStore::connect(url, ns)
            .await
            .expect("connect");
        Cluster::join(url, Arc::new(store)).expect("join")
    }

    async fn start_shared(cluster: Arc<Cluster>, cfg: Arc<Config>) -> Fixture {
        start_in(Arc::new(MemoryStore::new()), cfg, Some(cluster)).await
    }

    #[tokio::test]
    async fn instances_of_a_cluster_count_each_others_runs_at_once() {
        let url = crate::store::redis::test_server::shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = crate::store::redis::test_server::test_namespace();
        let cfg = config(true, 3_600_000);
        let a = start_shared(cluster_on(&url, &ns).await, cfg.clone()).await;
        let b = start_shared(cluster_on(&url, &ns).await, cfg.clone()).await;

        a.feed
            .send(task(Some("a"), "m1", TaskStatus::Completed, 0.25))
            .expect("feed");
        let yesterday = Utc::now() - chrono::Duration::days(1);
        let old = task_at(Some("b"), "m2", TaskStatus::Failed, 0.125, yesterday);
        b.feed.send(old.clone()).expect("feed");
        // The same end announced twice (a retry, or two instances) counts once.
        a.feed.send(old).expect("feed");
        // Taken in by each actor's next query; then both see everything.
        a.stats.flush().await.expect("flush");
        b.stats.flush().await.expect("flush");
        for f in [&a, &b] {
            let r = f
                .stats
                .rollup(DaySelection::All, Scope::All)
                .await
                .expect("rollup");
            assert_eq!((r.total.requests, r.total.failed), (2, 1));
            assert_eq!(r.total.cost_usd, 0.25);
            assert_eq!(r.total.failed_cost_usd, 0.125);
            assert_eq!(r.by_model["m1"].p50_duration_ms(), 10);
            let days = f
                .stats
                .daily(
                    DaySelection::Latest { limit: 1 },
                    Scope::Key(Some("b".into())),
                )
                .await
                .expect("daily");
            assert_eq!(days.len(), 1);
            assert_eq!(days[0].0, yesterday.date_naive());
        }

        // A budget spent on A refuses on B.
        assert_eq!(b.stats.check_budget(Some("a"), &cfg).await, Ok(()));
        a.feed
            .send(task(Some("a"), "m1", TaskStatus::Completed, 0.25))
            .expect("feed");
        assert_eq!(a.stats.spent_today(Some("a")).await.expect("spent"), 0.5);
        assert!(matches!(
            b.stats.check_budget(Some("a"), &cfg).await,
            Err(BudgetError::Exceeded { spent_usd, .. }) if spent_usd == 0.5
        ));
    }

    #[tokio::test]
    async fn runs_that_ended_together_are_added_by_one_script_per_day_and_once_each() {
        let server = crate::store::redis::test_server::RedisServer::start()
            .unwrap_or_else(|e| panic!("{e}"));
        let cfg = config(true, 3_600_000);
        let cluster = cluster_on(&server.url(), "st").await;
        let scripts = || {
            let mut conn = cluster.conn();
            async move {
                let text: String = ::redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut conn)
                    .await
                    .expect("info");
                // Calls that ran: the first one of a script fails (NOSCRIPT) and is sent again.
                let line = text
                    .lines()
                    .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
                    .unwrap_or_default();
                let field = |name: &str| -> u64 {
                    line.split(',')
                        .find_map(|f| f.strip_prefix(name))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                field("calls=") - field("failed_calls=")
            }
        };
        let a = start_shared(cluster.clone(), cfg).await;
        let before = scripts().await;
        // Sent before the actor runs: it takes them in together.
        let one = task(Some("a"), "m", TaskStatus::Completed, 0.25);
        a.feed.send(one.clone()).expect("feed");
        a.feed
            .send(task(Some("a"), "m", TaskStatus::Failed, 0.125))
            .expect("feed");
        a.feed.send(one).expect("feed");
        let yesterday = Utc::now() - chrono::Duration::days(1);
        a.feed
            .send(task_at(
                Some("b"),
                "m",
                TaskStatus::Completed,
                0.5,
                yesterday,
            ))
            .expect("feed");
        a.stats.flush().await.expect("flush");
        let r = a
            .stats
            .rollup(DaySelection::All, Scope::All)
            .await
            .expect("rollup");
        assert_eq!((r.total.requests, r.total.failed), (3, 1));
        assert_eq!(r.total.cost_usd, 0.75);
        assert_eq!(scripts().await - before, 2, "one script per day");
    }

    #[tokio::test]
    async fn runs_ended_during_a_redis_outage_are_added_when_it_is_back() {
        let mut server = crate::store::redis::test_server::RedisServer::start()
            .unwrap_or_else(|e| panic!("{e}"));
        let port = server.port();
        let cfg = config(true, 3_600_000);
        let a = start_shared(cluster_on(&server.url(), "st").await, cfg.clone()).await;
        a.feed
            .send(task(Some("a"), "m", TaskStatus::Completed, 0.125))
            .expect("feed");
        a.stats.flush().await.expect("flush");

        server.kill();
        a.feed
            .send(task(Some("a"), "m", TaskStatus::Completed, 0.25))
            .expect("feed");
        assert!(matches!(
            a.stats.rollup(DaySelection::All, Scope::All).await,
            Err(StatsError::Store(StoreError::Unavailable(_)))
        ));
        assert!(matches!(
            a.stats.check_budget(Some("a"), &cfg).await,
            Err(BudgetError::Storage(_))
        ));

        // Same port, empty server (no persistence): the run kept here is added by the retry
        // (the one before the outage is gone with the old server's memory).
        let _again = crate::store::redis::test_server::RedisServer::start_on(port)
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = a.stats.rollup(DaySelection::All, Scope::All).await {
                assert_eq!(r.total.requests, 1);
                assert_eq!(r.total.cost_usd, 0.25);
                break;
            }
            assert!(Instant::now() < deadline, "Redis did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Written to Redis, not only answered from memory: another instance sees it.
        let b = start_shared(
            cluster_on(&format!("redis://127.0.0.1:{port}/"), "st").await,
            cfg,
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = b
                .stats
                .rollup(DaySelection::All, Scope::All)
                .await
                .expect("rollup");
            if r.total.requests == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the kept run was not added");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
