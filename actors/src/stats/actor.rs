//! The StatsActor: an actix actor on the [`ActorSystem`](crate::system::ActorSystem)'s
//! arbiter that owns the per-day figures, and [`StatsHandle`], the handle the HTTP layer calls.
//!
//! Its input is the queue's subscription of final task records (taken in as they arrive, a
//! [`Feed`]); each record is folded into the day the task ended. Its messages are queries
//! ([`QueryRollup`], [`QueryDaily`], [`SpentToday`], which budget checks read) and [`Flush`].
//! Every message first takes in the final records already waiting in the subscription. The
//! queue sends a task's record to its subscribers in the same step that wakes its sync caller,
//! so a client that got its answer and then asks for statistics (or starts another run against
//! a budget) always sees that run counted.
//!
//! Where the figures live is chosen once, at start (an enum, `Figures`):
//!
//! * This instance's: the actor keeps the days in memory, answers queries from them at once,
//!   and writes the days that changed to the store every `statistics.collectionInterval` ms
//!   (a timer that reads the live config), on [`Flush`] and when the last handle goes away. At
//!   start it loads the last [`RETENTION_DAYS`] days, so figures survive a restart; older days
//!   are pruned (at start and when the UTC day changes).
//! * Shared by a cluster (Redis storage, [`super::shared`]): each final record is added at
//!   once to the day's counters in Redis, and queries and budget checks read those counters,
//!   so they count the runs of every instance as soon as they ended. Records that could not be
//!   added (Redis unavailable) wait in memory, are counted in this instance's answers
//!   meanwhile, and are added when Redis answers again (retried every [`SHARED_RETRY`]); only
//!   a stop before that loses them. Queries fail with [`StoreError::Unavailable`] while Redis
//!   is away. `collectionInterval` does not apply.
//!
//! The mailbox never waits for storage: a handler does its in-memory part at once and hands
//! the I/O (a write, a Redis script or read) to a future in the actor's context
//! (`ResponseActFuture`). Those futures take turns (`Turns`): each starts when the one asked for
//! before it has ended and applied its result, so writes reach the store in order, a query
//! reads Redis after the runs taken in before it were added, and runs that end while a script
//! is on its way go together in the next one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use chrono::{Days, NaiveDate, Utc};
use tokio::sync::{mpsc, oneshot, watch};

use super::aggregate::{day_of, key_bucket, DayStats, Rollup, Scope};
use super::budget::{self, BudgetError};
use super::shared::SharedStats;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::model::{Task, TaskId};
use crate::store::{Store, StoreError};
use crate::system::{drain, Feed};

/// Days kept: today and the 365 before it.
pub const RETENTION_DAYS: u64 = 365;

/// The shortest interval between two writes, whatever the config says (the config itself
/// refuses less than 1000 ms; tests of this module use short intervals).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest the write timer sleeps before it reads the interval again (a changed
/// `collectionInterval` applies within it).
const TICK_MAX: Duration = Duration::from_secs(1);

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

/// The figures of the selected days that `scope` may see, summed.
#[derive(Message)]
#[rtype(result = "Result<Rollup, StoreError>")]
pub struct QueryRollup {
    pub days: DaySelection,
    pub scope: Scope,
}

/// Per day (ascending), only days with requests that `scope` may see.
#[derive(Message)]
#[rtype(result = "Result<Vec<(NaiveDate, Rollup)>, StoreError>")]
pub struct QueryDaily {
    pub days: DaySelection,
    pub scope: Scope,
}

/// What runs of `owner` (`None`: anonymous) cost today (UTC), failed runs included.
#[derive(Message)]
#[rtype(result = "Result<f64, StoreError>")]
pub struct SpentToday {
    pub owner: Option<String>,
}

/// Write every changed day now (shared: add every run still waiting).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Flush;

/// The handle handlers use. Cheap to clone; the actor stops (after a last write) when every
/// handle is gone.
#[derive(Clone)]
pub struct StatsHandle {
    addr: Addr<StatsActor>,
}

impl StatsHandle {
    async fn ask<M, T>(&self, msg: M) -> Result<T, StatsError>
    where
        M: Message<Result = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
        StatsActor: Handler<M>,
    {
        Ok(self
            .addr
            .send(msg)
            .await
            .map_err(|_| StatsError::Stopped)??)
    }

    /// The figures of the selected days that `scope` may see, summed.
    pub async fn rollup(&self, days: DaySelection, scope: Scope) -> Result<Rollup, StatsError> {
        self.ask(QueryRollup { days, scope }).await
    }

    /// Per day (ascending), only days with requests that `scope` may see.
    pub async fn daily(
        &self,
        days: DaySelection,
        scope: Scope,
    ) -> Result<Vec<(NaiveDate, Rollup)>, StatsError> {
        self.ask(QueryDaily { days, scope }).await
    }

    /// What runs of `owner` (`None`: anonymous) cost today (UTC), failed runs included.
    pub async fn spent_today(&self, owner: Option<&str>) -> Result<f64, StatsError> {
        let owner = owner.map(str::to_string);
        self.ask(SpentToday { owner }).await
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
        self.ask(Flush).await
    }
}

/// The actor's state.
pub struct StatsActor {
    config: watch::Receiver<Arc<Config>>,
    /// The queue's subscription; `None` once the queue has closed it (shutdown).
    finished: Option<mpsc::UnboundedReceiver<Arc<Task>>>,
    figures: Figures,
    turns: Turns,
    /// When the last write (shared: the last retry) started.
    last_write: Instant,
    /// A write (shared: an add) is asked for and not yet over: no other is queued meanwhile.
    writing: bool,
}

/// Where the figures live, chosen at start.
enum Figures {
    /// This instance's days, in memory and in the store.
    Local(LocalDays),
    /// The counters every instance shares (Redis).
    Shared(SharedDays),
}

struct LocalDays {
    store: Arc<dyn Store>,
    days: BTreeMap<NaiveDate, DayStats>,
    /// Days changed since they were last written.
    dirty: BTreeSet<NaiveDate>,
    /// The day retention was last applied for.
    pruned_for: NaiveDate,
}

/// The shared counters and this instance's records not yet added to them.
struct SharedDays {
    stats: Arc<SharedStats>,
    /// Oldest first; only a finished add removes runs, from the front.
    pending: VecDeque<Arc<Pending>>,
    /// Set while Redis fails: when to try again.
    retry_at: Option<Instant>,
}

/// One run's figures, to add to its day.
struct Pending {
    task: TaskId,
    day: NaiveDate,
    delta: DayStats,
}

/// Storage and Redis work, one piece at a time in the order it was asked for, without holding
/// the mailbox: [`Turns::next`] resolves when every piece asked for before has ended, and the
/// piece ends when its [`Turn`] is dropped (after it applied its result to the actor).
#[derive(Default)]
struct Turns {
    last: Option<oneshot::Receiver<()>>,
}

struct Turn {
    _done: oneshot::Sender<()>,
}

impl Turns {
    fn next(&mut self) -> impl Future<Output = Turn> + 'static {
        let (done, ended) = oneshot::channel();
        let before = self.last.replace(ended);
        async move {
            if let Some(before) = before {
                // Ended, or dropped with its actor: either way it is over.
                let _ = before.await;
            }
            Turn { _done: done }
        }
    }
}

impl StatsActor {
    /// Load the retained days (unless `cluster`: then the counters every instance shares are
    /// read instead, nothing is loaded), prune older ones and start the actor on `arbiter`.
    /// `finished` is the queue's subscription (`Queue::subscribe_finished`); `config` the live
    /// config. Fails when the store cannot be read: starting empty would overwrite today's
    /// saved figures at the next write.
    pub async fn start(
        arbiter: &ArbiterHandle,
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: watch::Receiver<Arc<Config>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<StatsHandle, StoreError> {
        let figures = match cluster {
            Some(cluster) => Figures::Shared(SharedDays {
                stats: Arc::new(SharedStats::new(cluster, RETENTION_DAYS)),
                pending: VecDeque::new(),
                retry_at: None,
            }),
            None => Figures::Local(LocalDays::load(store).await?),
        };
        let finished = Some(finished);
        let addr = StatsActor::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX);
            StatsActor {
                config,
                finished,
                figures,
                turns: Turns::default(),
                last_write: Instant::now(),
                writing: false,
            }
        });
        Ok(StatsHandle { addr })
    }

    fn interval(&self) -> Duration {
        match self.figures {
            Figures::Local(_) => {
                let ms = self.config.borrow().statistics.collection_interval;
                Duration::from_millis(ms).max(MIN_INTERVAL)
            }
            Figures::Shared(_) => SHARED_RETRY,
        }
    }

    fn shared(&mut self) -> Option<&mut SharedDays> {
        match &mut self.figures {
            Figures::Shared(s) => Some(s),
            Figures::Local(_) => None,
        }
    }

    /// Take in every record the queue has already sent.
    fn take_waiting_records(&mut self) {
        for task in drain(&mut self.finished) {
            self.record(&task);
        }
    }

    fn record(&mut self, task: &Task) {
        // Read the live config for each record: turning statistics off applies at once.
        let enabled = self.config.borrow().statistics.enabled;
        let day = day_of(task, Utc::now());
        match &mut self.figures {
            Figures::Local(l) => l.record(task, day, enabled),
            Figures::Shared(s) => s.record(task, day, enabled),
        }
    }

    /// After records came in: with a cluster, add them at once (with every other that ends
    /// before the script starts: one script for all of them).
    fn add_soon(&mut self, ctx: &mut Context<Self>) {
        if self.shared().is_some_and(|s| s.due()) {
            self.queue_write(ctx, false);
        }
    }

    /// Queue a write (shared: an add; `now` even while a retry is not due) unless one is
    /// queued already.
    fn queue_write(&mut self, ctx: &mut Context<Self>, now: bool) {
        if self.writing {
            return;
        }
        self.writing = true;
        let write = self.in_turn(move |act| act.write(now));
        ctx.spawn(write.map(|_, act, ctx| {
            act.writing = false;
            // Runs that ended while the script was on its way.
            act.add_soon(ctx);
        }));
    }

    /// The write timer: a write when the interval has passed; a last one, and the stop, when
    /// every handle is gone.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if !ctx.connected() {
            self.take_waiting_records();
            let last = self.in_turn(|act| act.write(true));
            ctx.spawn(last.map(|saved, _, ctx| {
                if let Err(e) = saved {
                    log::error!(error:% = e; "statistics could not be saved before stopping");
                }
                ctx.stop();
            }));
            return;
        }
        let interval = self.interval();
        if self.last_write.elapsed() >= interval {
            self.queue_write(ctx, true);
        }
        let next = interval
            .saturating_sub(self.last_write.elapsed())
            .clamp(MIN_INTERVAL, TICK_MAX);
        ctx.run_later(next, |act, ctx| act.tick(ctx));
    }

    /// `op` once every piece of storage work asked for before it has ended.
    fn in_turn<R: 'static>(
        &mut self,
        op: impl FnOnce(&mut Self) -> ResponseActFuture<Self, R> + 'static,
    ) -> ResponseActFuture<Self, R> {
        let turn = self.turns.next();
        Box::pin(turn.into_actor(self).then(move |turn, act, _| {
            op(act).map(move |r, _, _| {
                drop(turn);
                r
            })
        }))
    }

    /// Write the changed days (and apply retention when the UTC day has changed); a day that
    /// fails to write stays changed and is tried again next time. Shared: add the runs
    /// waiting (unless `now`, not while a retry is not yet due). Run in turn.
    fn write(&mut self, now: bool) -> ResponseActFuture<Self, Result<(), StoreError>> {
        self.last_write = Instant::now();
        match &mut self.figures {
            Figures::Local(l) => {
                let saving = l.take_changes();
                Box::pin(saving.into_actor(self).map(|(failed, result), act, _| {
                    if let Figures::Local(l) = &mut act.figures {
                        l.dirty.extend(failed);
                    }
                    result
                }))
            }
            Figures::Shared(s) => {
                if !now && !s.due() {
                    return Box::pin(fut::ready(Ok(())));
                }
                let runs: Vec<Arc<Pending>> = s.pending.iter().cloned().collect();
                let stats = s.stats.clone();
                let adding = async move { add_runs(&stats, &runs).await };
                Box::pin(adding.into_actor(self).map(
                    |(added, result), act, _| match act.shared() {
                        Some(s) => s.added(added, result),
                        None => result,
                    },
                ))
            }
        }
    }

    /// Answer from the selected days: this instance's at once, or the shared ones in turn
    /// (after the runs waiting here were added, and with those that could not be).
    fn query<R: 'static>(
        &mut self,
        days: DaySelection,
        answer: impl FnOnce(&BTreeMap<NaiveDate, DayStats>) -> R + 'static,
    ) -> ResponseActFuture<Self, Result<R, StoreError>> {
        self.take_waiting_records();
        let stats = match &self.figures {
            Figures::Local(l) => return Box::pin(fut::ready(Ok(answer(&l.days)))),
            Figures::Shared(s) => s.stats.clone(),
        };
        let (from, to) = shared_range(days);
        self.in_turn(move |act| {
            // Added first, so the answer comes from Redis rather than from what waits here.
            let loading = async move {
                if from <= to {
                    stats.load(from, to).await
                } else {
                    Ok(BTreeMap::new())
                }
            };
            Box::pin(
                act.write(false)
                    .then(move |_, act, _| loading.into_actor(act))
                    .map(move |loaded, act, _| {
                        let mut loaded = loaded?;
                        if let Some(s) = act.shared() {
                            s.merge_waiting(&mut loaded, from, to);
                        }
                        Ok(answer(&loaded))
                    }),
            )
        })
    }
}

impl Actor for StatsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Feed {
            rx: |a: &mut StatsActor| &mut a.finished,
            take: |a, task, ctx| {
                a.record(&task);
                a.add_soon(ctx);
            },
        });
        self.tick(ctx);
    }
}

impl Handler<QueryRollup> for StatsActor {
    type Result = ResponseActFuture<Self, Result<Rollup, StoreError>>;

    fn handle(&mut self, msg: QueryRollup, _: &mut Context<Self>) -> Self::Result {
        let QueryRollup { days, scope } = msg;
        self.query(days, move |view| {
            let mut r = Rollup::default();
            for (_, day) in select(view, days, &scope) {
                r.add_day(day, &scope);
            }
            r
        })
    }
}

impl Handler<QueryDaily> for StatsActor {
    type Result = ResponseActFuture<Self, Result<Vec<(NaiveDate, Rollup)>, StoreError>>;

    fn handle(&mut self, msg: QueryDaily, _: &mut Context<Self>) -> Self::Result {
        let QueryDaily { days, scope } = msg;
        self.query(days, move |view| {
            select(view, days, &scope)
                .into_iter()
                .map(|(d, day)| (d, Rollup::of_day(day, &scope)))
                .collect()
        })
    }
}

impl Handler<SpentToday> for StatsActor {
    type Result = ResponseActFuture<Self, Result<f64, StoreError>>;

    fn handle(&mut self, msg: SpentToday, _: &mut Context<Self>) -> Self::Result {
        self.take_waiting_records();
        let today = Utc::now().date_naive();
        let owner = msg.owner;
        let stats = match &self.figures {
            Figures::Local(l) => {
                let spent = l
                    .days
                    .get(&today)
                    .map_or(0.0, |d| d.spent(owner.as_deref()));
                return Box::pin(fut::ready(Ok(spent)));
            }
            Figures::Shared(s) => s.stats.clone(),
        };
        self.in_turn(move |act| {
            let key = key_bucket(owner.as_deref()).to_string();
            let reading = async move { stats.spent(today, &key).await };
            Box::pin(
                act.write(false)
                    .then(move |_, act, _| reading.into_actor(act))
                    .map(move |stored, act, _| {
                        let waiting = act
                            .shared()
                            .map_or(0.0, |s| s.waiting_spent(today, owner.as_deref()));
                        Ok(stored? + waiting)
                    }),
            )
        })
    }
}

impl Handler<Flush> for StatsActor {
    type Result = ResponseActFuture<Self, Result<(), StoreError>>;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        self.take_waiting_records();
        self.in_turn(|act| act.write(true))
    }
}

impl LocalDays {
    /// The retained days from `store`, older ones pruned.
    async fn load(store: Arc<dyn Store>) -> Result<LocalDays, StoreError> {
        let today = Utc::now().date_naive();
        let oldest = oldest_kept(today);
        let mut days = BTreeMap::new();
        for (day, doc) in store.load_stats_days(oldest, newest_kept(today)).await? {
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
        Ok(LocalDays {
            store,
            days,
            dirty: BTreeSet::new(),
            pruned_for: today,
        })
    }

    fn record(&mut self, task: &Task, day: NaiveDate, enabled: bool) {
        self.days.entry(day).or_default().record(task, enabled);
        // Disabled statistics change only the spend ledger, and only when the run cost money.
        if enabled || task.cost_usd.is_some_and(|c| c > 0.0) {
            self.dirty.insert(day);
        }
    }

    /// The changed days as documents (retention applied first when the UTC day has changed),
    /// and the storage work that saves them: it answers with the days that failed.
    fn take_changes(
        &mut self,
    ) -> impl Future<Output = (Vec<NaiveDate>, Result<(), StoreError>)> + 'static {
        let today = Utc::now().date_naive();
        let mut prune = None;
        if today != self.pruned_for {
            let oldest = oldest_kept(today);
            self.days = self.days.split_off(&oldest);
            self.dirty = self.dirty.split_off(&oldest);
            self.pruned_for = today;
            prune = Some(oldest);
        }
        let docs: Vec<(NaiveDate, Result<serde_json::Value, StoreError>)> =
            std::mem::take(&mut self.dirty)
                .into_iter()
                .filter_map(|day| {
                    let doc = serde_json::to_value(self.days.get(&day)?)
                        .map_err(|e| StoreError::Corrupt(e.to_string()));
                    Some((day, doc))
                })
                .collect();
        let store = self.store.clone();
        async move {
            if let Some(oldest) = prune {
                prune_store(&store, oldest).await;
            }
            let mut failed = Vec::new();
            let mut result = Ok(());
            for (day, doc) in docs {
                let saved = match doc {
                    Ok(doc) => store.save_stats_day(day, &doc).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = saved {
                    log::warn!(day:% = day, error:% = e; "statistics not saved; retrying at the next interval");
                    failed.push(day);
                    result = Err(e);
                }
            }
            (failed, result)
        }
    }
}

impl SharedDays {
    fn record(&mut self, task: &Task, day: NaiveDate, enabled: bool) {
        let mut delta = DayStats::default();
        delta.record(task, enabled);
        if !delta.is_empty() {
            self.pending.push_back(Arc::new(Pending {
                task: task.id,
                day,
                delta,
            }));
        }
    }

    /// Runs wait and no retry is pending: an add may go now.
    fn due(&self) -> bool {
        !self.pending.is_empty() && self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// An add ended: `added` runs from the front were added (or left out), then `result`.
    fn added(&mut self, added: usize, result: Result<(), StoreError>) -> Result<(), StoreError> {
        self.pending.drain(..added.min(self.pending.len()));
        match &result {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    log::info!(
                        "the runs kept during the Redis outage were added to the shared statistics"
                    );
                }
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    log::warn!(error:% = e, waiting = self.pending.len(); "statistics cannot be shared now; runs are kept here and added when Redis answers");
                }
                self.retry_at = Some(Instant::now() + SHARED_RETRY);
            }
        }
        result
    }

    /// Add the runs waiting here to the shared days read from Redis.
    fn merge_waiting(
        &self,
        loaded: &mut BTreeMap<NaiveDate, DayStats>,
        from: NaiveDate,
        to: NaiveDate,
    ) {
        for p in &self.pending {
            if (from..=to).contains(&p.day) {
                loaded.entry(p.day).or_default().merge(&p.delta);
            }
        }
    }

    fn waiting_spent(&self, today: NaiveDate, owner: Option<&str>) -> f64 {
        self.pending
            .iter()
            .filter(|p| p.day == today)
            .map(|p| p.delta.spent(owner))
            .sum()
    }
}

/// Add `runs` (oldest first) to the shared counters, stopping at the first failure; answers
/// how many from the front were dealt with (added, or left out as unaddable). Runs of one day
/// go in batches; after a batch Redis refused, one at a time, so that only the run it cannot
/// take is left out.
async fn add_runs(stats: &SharedStats, runs: &[Arc<Pending>]) -> (usize, Result<(), StoreError>) {
    let mut done = 0;
    let mut batch = ADD_BATCH;
    while let Some(first) = runs.get(done) {
        let day = first.day;
        let n = runs[done..]
            .iter()
            .take(batch)
            .take_while(|p| p.day == day)
            .count();
        let group: Vec<(TaskId, &DayStats)> = runs[done..done + n]
            .iter()
            .map(|p| (p.task, &p.delta))
            .collect();
        match stats.add(day, &group).await {
            Ok(_) => done += n,
            Err(StoreError::Corrupt(_)) if n > 1 => batch = 1,
            Err(StoreError::Corrupt(e)) => {
                // Trying again would fail again and hold up every record behind it.
                log::error!(task_id:% = first.task, day:% = day, error:% = e; "a run could not be added to the shared statistics; it is left out");
                done += 1;
            }
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// The days a shared query reads for `days`.
fn shared_range(days: DaySelection) -> (NaiveDate, NaiveDate) {
    let today = Utc::now().date_naive();
    match days {
        DaySelection::Range { from, to } => (from.max(oldest_kept(today)), to),
        DaySelection::All | DaySelection::Latest { .. } => (oldest_kept(today), newest_kept(today)),
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
        Ok(n) => log::info!(days = n; "pruned statistics older than {RETENTION_DAYS} days"),
        Err(e) => log::warn!(error:% = e; "could not prune old statistics"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::DateTime;

    use super::*;
    use crate::model::{Priority, RunSpec, TaskMode, TaskStatus};
    use crate::store::memory::MemoryStore;
    use crate::system::ActorSystem;

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
        system: ActorSystem,
    }

    async fn start(store: Arc<dyn Store>, cfg: Arc<Config>) -> Fixture {
        start_fed(store, cfg, None, Vec::new()).await
    }

    impl Fixture {
        /// The queue announces `task`'s end.
        fn end(&self, task: Arc<Task>) {
            self.feed.send(task).expect("feed");
        }
    }

    /// The actor on a system of its own, with `before` already sent when it starts.
    async fn start_fed(
        store: Arc<dyn Store>,
        cfg: Arc<Config>,
        cluster: Option<Arc<Cluster>>,
        before: Vec<Arc<Task>>,
    ) -> Fixture {
        let system = ActorSystem::start("test-stats", 1).expect("system");
        let (feed, finished) = mpsc::unbounded_channel();
        for task in before {
            feed.send(task).expect("feed");
        }
        let (config, config_rx) = watch::channel(cfg);
        let stats = StatsActor::start(system.arbiter(), store, finished, config_rx, cluster)
            .await
            .expect("start");
        Fixture {
            feed,
            config,
            stats,
            system,
        }
    }

    #[tokio::test]
    async fn records_are_visible_to_the_next_query_and_survive_a_restart() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let f = start(store.clone(), config(true, 3_600_000)).await;
        f.end(task(Some("a"), "m1", TaskStatus::Completed, 0.5));
        f.end(task(Some("b"), "m2", TaskStatus::Failed, 0.25));
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
        f.end(task(None, "m", TaskStatus::Completed, 0.1));
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

    /// Every handle gone (the system still running): the actor writes what changed and stops.
    #[tokio::test]
    async fn the_last_handle_gone_the_actor_writes_and_stops() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let f = start(store.clone(), config(true, 3_600_000)).await;
        f.end(task(Some("a"), "m", TaskStatus::Completed, 0.5));
        assert_eq!(f.stats.spent_today(Some("a")).await.expect("spent"), 0.5);
        let today = Utc::now().date_naive();
        assert!(store
            .load_stats_days(today, today)
            .await
            .expect("load")
            .is_empty());
        drop(f.stats);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Stopped: the subscription is dropped with it.
        while !f.feed.is_closed() {
            assert!(Instant::now() < deadline, "still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let saved = store.load_stats_days(today, today).await.expect("load");
        assert_eq!(saved.len(), 1, "written before stopping");
        f.system.stop();
    }

    #[tokio::test]
    async fn disabled_statistics_record_nothing_but_budgets_still_count() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cfg = config(false, 3_600_000);
        let f = start(store, cfg.clone()).await;
        f.end(task(Some("a"), "m", TaskStatus::Completed, 0.6));
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
        f.end(task(Some("a"), "m", TaskStatus::Completed, 0.1));
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
        f.end(task(Some("a"), "m", TaskStatus::Completed, 0.25));
        assert_eq!(f.stats.check_budget(Some("a"), &cfg).await, Ok(()));
        f.end(task(Some("a"), "m", TaskStatus::Failed, 0.25));
        assert!(matches!(
            f.stats.check_budget(Some("a"), &cfg).await,
            Err(BudgetError::Exceeded { .. })
        ));
        // No budget for b, none for anonymous callers.
        f.end(task(Some("b"), "m", TaskStatus::Completed, 100.0));
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
        f.end(task_at(Some("a"), "m", TaskStatus::Completed, 0.1, at(1)));
        f.end(task_at(Some("a"), "m", TaskStatus::Completed, 0.1, at(0)));

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
        start_fed(Arc::new(MemoryStore::new()), cfg, Some(cluster), Vec::new()).await
    }

    #[tokio::test]
    async fn instances_of_a_cluster_count_each_others_runs_at_once() {
        let url = crate::store::redis::test_server::shared_url().unwrap_or_else(|e| panic!("{e}"));
        let ns = crate::store::redis::test_server::test_namespace();
        let cfg = config(true, 3_600_000);
        let a = start_shared(cluster_on(&url, &ns).await, cfg.clone()).await;
        let b = start_shared(cluster_on(&url, &ns).await, cfg.clone()).await;

        a.end(task(Some("a"), "m1", TaskStatus::Completed, 0.25));
        let yesterday = Utc::now() - chrono::Duration::days(1);
        let old = task_at(Some("b"), "m2", TaskStatus::Failed, 0.125, yesterday);
        b.end(old.clone());
        // The same end announced twice (a retry, or two instances) counts once.
        a.end(old);
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
        a.end(task(Some("a"), "m1", TaskStatus::Completed, 0.25));
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
        let before = scripts().await;
        // Sent before the actor runs: it takes them in together.
        let one = task(Some("a"), "m", TaskStatus::Completed, 0.25);
        let yesterday = Utc::now() - chrono::Duration::days(1);
        let runs = vec![
            one.clone(),
            task(Some("a"), "m", TaskStatus::Failed, 0.125),
            one,
            task_at(Some("b"), "m", TaskStatus::Completed, 0.5, yesterday),
        ];
        let a = start_fed(
            Arc::new(MemoryStore::new()),
            cfg,
            Some(cluster.clone()),
            runs,
        )
        .await;
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
        a.end(task(Some("a"), "m", TaskStatus::Completed, 0.125));
        a.stats.flush().await.expect("flush");

        server.kill();
        a.end(task(Some("a"), "m", TaskStatus::Completed, 0.25));
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
