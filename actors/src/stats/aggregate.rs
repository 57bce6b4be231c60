//! Folding final task records into per-day counters, and rolling them up.
//!
//! One UTC day ([`DayStats`]) holds one [`Counters`] per (API key, requested model) cell, the
//! finest grain the API shows; per-model, per-key and whole-day figures are sums of cells. A
//! day is also the unit of persistence (one JSON document per day in the store).
//!
//! What counts (api.md: "Failed runs count as requests but not as model usage"):
//! * every final task is one request, under its final status; `successful` = `completed`,
//!   `failed` = every other final status (failed, timeout, cancelled);
//! * tokens, `cost_usd` and durations come from completed runs only;
//! * what a run that did not complete still cost (a max-turns or budget stop is billed) is kept
//!   apart in `failed_cost_usd`, so no spend is hidden;
//! * the per-key spend ledger ([`DayStats::spend_usd`]), which daily budgets read, counts the
//!   cost of every run, completed or not, and is kept even when statistics are disabled: it is
//!   money, not a statistic.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::sketch::DurationSketch;
use crate::model::{Task, TaskStatus};

/// The map key of anonymous callers. API key names are never empty (the config refuses it),
/// so the empty string cannot collide with a key.
pub const ANONYMOUS_KEY: &str = "";

/// The model bucket of a task that names none (the HTTP layer always fills `defaultModel`).
pub const UNKNOWN_MODEL: &str = "unknown";

/// The map key for a task owner (`None`: anonymous).
pub fn key_bucket(owner: Option<&str>) -> &str {
    owner.unwrap_or(ANONYMOUS_KEY)
}

/// Requests by final status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByStatus {
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub timeout: u64,
}

impl ByStatus {
    fn add(&mut self, o: &ByStatus) {
        self.completed += o.completed;
        self.failed += o.failed;
        self.cancelled += o.cancelled;
        self.timeout += o.timeout;
    }
}

/// Everything counted for one cell (or any sum of cells).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub successful: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub by_status: ByStatus,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_creation_tokens: u64,
    /// Cost of completed runs.
    #[serde(default)]
    pub cost_usd: f64,
    /// Cost of runs that did not complete (billed all the same).
    #[serde(default)]
    pub failed_cost_usd: f64,
    /// Sum of completed runs' durations, for the average.
    #[serde(default)]
    pub duration_sum_ms: u64,
    /// Completed runs' durations, for p50/p95.
    #[serde(default)]
    pub durations: DurationSketch,
}

impl Counters {
    /// Count one final task.
    pub fn record(&mut self, task: &Task) {
        self.requests += 1;
        match task.status {
            TaskStatus::Completed => {
                self.successful += 1;
                self.by_status.completed += 1;
            }
            TaskStatus::Failed => self.by_status.failed += 1,
            TaskStatus::Cancelled => self.by_status.cancelled += 1,
            TaskStatus::Timeout => self.by_status.timeout += 1,
            // Live statuses never reach the statistics; counted as failed if they ever did.
            TaskStatus::Pending | TaskStatus::Processing => self.by_status.failed += 1,
        }
        let cost = cost_of(task);
        if task.status != TaskStatus::Completed {
            self.failed += 1;
            self.failed_cost_usd += cost;
            return;
        }
        if let Some(report) = &task.report {
            let u = &report.usage;
            self.input_tokens += u.input_tokens;
            self.output_tokens += u.output_tokens;
            self.cache_read_tokens += u.cache_read_input_tokens;
            self.cache_creation_tokens += u.cache_creation_input_tokens;
        }
        self.cost_usd += cost;
        let duration = task
            .duration_ms
            .or(task.report.as_ref().map(|r| r.duration_ms))
            .unwrap_or(0);
        self.duration_sum_ms = self.duration_sum_ms.saturating_add(duration);
        self.durations.add(duration);
    }

    pub fn merge(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.successful += o.successful;
        self.failed += o.failed;
        self.by_status.add(&o.by_status);
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_creation_tokens += o.cache_creation_tokens;
        self.cost_usd += o.cost_usd;
        self.failed_cost_usd += o.failed_cost_usd;
        self.duration_sum_ms = self.duration_sum_ms.saturating_add(o.duration_sum_ms);
        self.durations.merge(&o.durations);
    }

    /// Average duration of completed runs (0 when there are none).
    pub fn avg_duration_ms(&self) -> f64 {
        match self.durations.count() {
            0 => 0.0,
            n => self.duration_sum_ms as f64 / n as f64,
        }
    }

    pub fn p50_duration_ms(&self) -> u64 {
        self.durations.quantile(0.5).unwrap_or(0)
    }

    pub fn p95_duration_ms(&self) -> u64 {
        self.durations.quantile(0.95).unwrap_or(0)
    }

    /// Share of requests that completed (0 when there are none).
    pub fn success_rate(&self) -> f64 {
        match self.requests {
            0 => 0.0,
            n => self.successful as f64 / n as f64,
        }
    }
}

/// A task's cost, ignoring nonsense (negative or not finite) so one bad report cannot poison
/// every sum it is part of.
fn cost_of(task: &Task) -> f64 {
    task.cost_usd
        .filter(|c| c.is_finite() && *c > 0.0)
        .unwrap_or(0.0)
}

/// The UTC day a final task counts for: the day it ended.
pub fn day_of(task: &Task, now: DateTime<Utc>) -> NaiveDate {
    task.completed_at.unwrap_or(now).date_naive()
}

/// Everything counted on one UTC day. This is also the persisted document of the day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayStats {
    /// API key ([`ANONYMOUS_KEY`] for anonymous) → requested model → counters.
    #[serde(default)]
    pub cells: BTreeMap<String, BTreeMap<String, Counters>>,
    /// API key → what its runs cost this day (every run, for daily budgets).
    #[serde(default)]
    pub spend_usd: BTreeMap<String, f64>,
}

/// Whose figures a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every key (admin).
    All,
    /// One key's figures only (`None`: the anonymous caller's).
    Key(Option<String>),
}

impl Scope {
    fn admits(&self, key: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Key(k) => key_bucket(k.as_deref()) == key,
        }
    }
}

/// Totals of a set of cells, and their breakdowns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    pub total: Counters,
    pub by_model: BTreeMap<String, Counters>,
    /// Key bucket ([`ANONYMOUS_KEY`] for anonymous) → counters.
    pub by_key: BTreeMap<String, Counters>,
}

impl Rollup {
    pub fn add_day(&mut self, day: &DayStats, scope: &Scope) {
        for (key, models) in day.cells.iter().filter(|(k, _)| scope.admits(k)) {
            for (model, c) in models {
                self.total.merge(c);
                self.by_model.entry(model.clone()).or_default().merge(c);
                self.by_key.entry(key.clone()).or_default().merge(c);
            }
        }
    }

    pub fn merge(&mut self, other: &Rollup) {
        self.total.merge(&other.total);
        for (m, c) in &other.by_model {
            self.by_model.entry(m.clone()).or_default().merge(c);
        }
        for (k, c) in &other.by_key {
            self.by_key.entry(k.clone()).or_default().merge(c);
        }
    }

    pub fn of_day(day: &DayStats, scope: &Scope) -> Rollup {
        let mut r = Rollup::default();
        r.add_day(day, scope);
        r
    }

    /// Models by request count (then cost, then name), at most `limit`.
    pub fn top_models(&self, limit: usize) -> Vec<(&String, &Counters)> {
        let mut v: Vec<_> = self.by_model.iter().collect();
        v.sort_by(|a, b| {
            b.1.requests
                .cmp(&a.1.requests)
                .then(b.1.cost_usd.total_cmp(&a.1.cost_usd))
                .then(a.0.cmp(b.0))
        });
        v.truncate(limit);
        v
    }
}

impl DayStats {
    /// Count one final task: statistics only when `statistics` is on; the spend ledger always.
    pub fn record(&mut self, task: &Task, statistics: bool) {
        let key = key_bucket(task.owner.as_deref()).to_string();
        let cost = cost_of(task);
        if cost > 0.0 {
            *self.spend_usd.entry(key.clone()).or_insert(0.0) += cost;
        }
        if statistics {
            let model = task
                .spec
                .model
                .clone()
                .unwrap_or_else(|| UNKNOWN_MODEL.to_string());
            self.cells
                .entry(key)
                .or_default()
                .entry(model)
                .or_default()
                .record(task);
        }
    }

    /// Add `other`'s figures to these (days of several sources: the shared counters and the
    /// records not yet written to them).
    pub fn merge(&mut self, other: &DayStats) {
        for (key, models) in &other.cells {
            let mine = self.cells.entry(key.clone()).or_default();
            for (model, c) in models {
                mine.entry(model.clone()).or_default().merge(c);
            }
        }
        for (key, usd) in &other.spend_usd {
            *self.spend_usd.entry(key.clone()).or_insert(0.0) += usd;
        }
    }

    /// Nothing counted at all (not even spend).
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.spend_usd.is_empty()
    }

    /// A copy holding only what `scope` may see (the spend ledger is left out: it is not a
    /// statistic, and budgets read it through [`DayStats::spent`]).
    pub fn visible(&self, scope: &Scope) -> DayStats {
        DayStats {
            cells: self
                .cells
                .iter()
                .filter(|(k, _)| scope.admits(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            spend_usd: BTreeMap::new(),
        }
    }

    pub fn has_requests(&self) -> bool {
        self.cells
            .values()
            .any(|m| m.values().any(|c| c.requests > 0))
    }

    pub fn spent(&self, owner: Option<&str>) -> f64 {
        self.spend_usd
            .get(key_bucket(owner))
            .copied()
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use chrono::TimeZone;

    use super::*;
    use crate::model::{Priority, RunReport, RunSpec, TaskMode, Usage};

    /// A final task of `owner` on `model` (shared with the counters' tests).
    pub(crate) fn task(
        owner: Option<&str>,
        model: &str,
        status: TaskStatus,
        cost: f64,
        ms: u64,
    ) -> Task {
        let spec = RunSpec {
            model: Some(model.into()),
            ..RunSpec::new("p", PathBuf::from("/tmp"), 1000)
        };
        let mut t = Task::new(spec, Priority::ASYNC_DEFAULT, TaskMode::Async);
        t.owner = owner.map(str::to_string);
        t.status = status;
        t.cost_usd = Some(cost);
        t.duration_ms = Some(ms);
        t.completed_at = Some(
            Utc.with_ymd_and_hms(2026, 3, 4, 23, 59, 59)
                .single()
                .expect("time"),
        );
        t.report = Some(RunReport {
            usage: Usage {
                input_tokens: 100,
                output_tokens: 50,
                cache_creation_input_tokens: 3,
                cache_read_input_tokens: 7,
            },
            ..Default::default()
        });
        t
    }

    #[test]
    fn failed_runs_count_as_requests_not_as_usage() {
        let mut c = Counters::default();
        c.record(&task(Some("a"), "m", TaskStatus::Completed, 0.5, 100));
        c.record(&task(Some("a"), "m", TaskStatus::Failed, 0.25, 7000));
        c.record(&task(Some("a"), "m", TaskStatus::Timeout, 0.0, 9000));
        c.record(&task(Some("a"), "m", TaskStatus::Cancelled, 0.0, 5));
        assert_eq!((c.requests, c.successful, c.failed), (4, 1, 3));
        assert_eq!(
            c.by_status,
            ByStatus {
                completed: 1,
                failed: 1,
                cancelled: 1,
                timeout: 1
            }
        );
        assert_eq!((c.input_tokens, c.output_tokens), (100, 50));
        assert_eq!((c.cache_read_tokens, c.cache_creation_tokens), (7, 3));
        assert_eq!(c.cost_usd, 0.5);
        assert_eq!(c.failed_cost_usd, 0.25);
        // Durations describe completed runs only.
        assert_eq!(c.avg_duration_ms(), 100.0);
        assert_eq!((c.p50_duration_ms(), c.p95_duration_ms()), (100, 100));
        assert_eq!(c.success_rate(), 0.25);
    }

    #[test]
    fn bad_costs_are_ignored() {
        let mut c = Counters::default();
        c.record(&task(None, "m", TaskStatus::Completed, f64::NAN, 1));
        c.record(&task(None, "m", TaskStatus::Completed, -3.0, 1));
        assert_eq!(c.cost_usd, 0.0);
        assert_eq!(c.requests, 2);
    }

    #[test]
    fn days_roll_up_by_model_and_key_and_respect_scope() {
        let mut d = DayStats::default();
        d.record(&task(Some("a"), "m1", TaskStatus::Completed, 0.5, 10), true);
        d.record(
            &task(Some("a"), "m2", TaskStatus::Completed, 0.25, 20),
            true,
        );
        d.record(
            &task(Some("b"), "m1", TaskStatus::Completed, 0.125, 30),
            true,
        );
        d.record(&task(Some("b"), "m1", TaskStatus::Failed, 0.0625, 40), true);
        d.record(&task(None, "m2", TaskStatus::Completed, 1.0, 50), true);

        let all = Rollup::of_day(&d, &Scope::All);
        assert_eq!(all.total.requests, 5);
        assert_eq!(all.total.cost_usd, 1.875);
        assert_eq!(all.total.failed_cost_usd, 0.0625);
        assert_eq!(all.by_model["m1"].requests, 3);
        assert_eq!(all.by_model["m2"].cost_usd, 1.25);
        assert_eq!(all.by_key["a"].requests, 2);
        assert_eq!(all.by_key[ANONYMOUS_KEY].cost_usd, 1.0);
        let top: Vec<&str> = all
            .top_models(10)
            .into_iter()
            .map(|(m, _)| m.as_str())
            .collect();
        assert_eq!(top, ["m1", "m2"]);
        assert_eq!(all.top_models(1).len(), 1);

        let b = Rollup::of_day(&d, &Scope::Key(Some("b".into())));
        assert_eq!((b.total.requests, b.total.failed), (2, 1));
        assert_eq!(b.by_key.keys().collect::<Vec<_>>(), ["b"]);
        assert!(!b.by_model.contains_key("m2"));

        let mut twice = all.clone();
        twice.merge(&all);
        assert_eq!(twice.total.requests, 10);
        assert_eq!(twice.by_model["m1"].requests, 6);
        assert_eq!(twice.by_key["b"].failed, 2);

        let anon = Rollup::of_day(&d, &Scope::Key(None));
        assert_eq!(anon.total.requests, 1);
        assert!(d.visible(&Scope::Key(Some("zzz".into()))).cells.is_empty());

        // The ledger has every run's cost, failed ones included.
        assert_eq!(d.spent(Some("b")), 0.1875);
        assert_eq!(d.spent(None), 1.0);
        assert_eq!(d.spent(Some("nobody")), 0.0);
    }

    #[test]
    fn disabled_statistics_still_keep_the_spend_ledger() {
        let mut d = DayStats::default();
        d.record(&task(Some("a"), "m", TaskStatus::Completed, 0.6, 10), false);
        assert!(!d.has_requests());
        assert!(d.cells.is_empty());
        assert_eq!(d.spent(Some("a")), 0.6);
    }

    #[test]
    fn a_task_counts_for_the_utc_day_it_ended() {
        let t = task(None, "m", TaskStatus::Completed, 0.0, 1);
        assert_eq!(
            day_of(&t, Utc::now()),
            NaiveDate::from_ymd_opt(2026, 3, 4).expect("date")
        );
    }

    #[test]
    fn a_day_survives_a_json_round_trip() {
        let mut d = DayStats::default();
        d.record(&task(Some("a"), "m1", TaskStatus::Completed, 0.5, 10), true);
        d.record(&task(None, "m1", TaskStatus::Timeout, 0.0, 10), true);
        let doc = serde_json::to_value(&d).expect("serialise");
        let back: DayStats = serde_json::from_value(doc).expect("deserialise");
        assert_eq!(back, d);
    }
}
