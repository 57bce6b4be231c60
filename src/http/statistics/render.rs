//! The JSON shapes of the statistics routes, as the types that serialize them: the OpenAPI
//! document takes its schemas from these same types, so it cannot drift from the answers.
//!
//! The seed's names are kept (`requests`, `tokens`, `costs`, `models`; per day `date`,
//! `total_requests`, `successful_requests`, `failed_requests`, `total_cost_usd`,
//! `total_input_tokens`, `total_output_tokens`, `avg_duration_ms`, `models`; `statistics` for the
//! answer's payload; `total_input`/`total_output` tokens; a model's `name` and `count`) beside
//! this server's own (`summary`, `input`/`output`, `model`, `requests`), and extended (status
//! split, cache tokens, failed runs' cost, p50/p95, per key).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use utoipa::ToSchema;

use actors::stats::aggregate::ByStatus;
use actors::stats::{Counters, Rollup, ANONYMOUS_KEY};

/// Dollars without float noise (0.1 + 0.2 shows as 0.3).
fn usd(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// Milliseconds to two decimals.
fn ms(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Requests by final status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsByStatus {
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timeout: u64,
}

impl From<&ByStatus> for StatsByStatus {
    fn from(b: &ByStatus) -> StatsByStatus {
        StatsByStatus {
            completed: b.completed,
            failed: b.failed,
            cancelled: b.cancelled,
            timeout: b.timeout,
        }
    }
}

/// One model's (or one key's) figures. Tokens and cost count completed runs; a run that did
/// not complete counts as a failed request and its cost as `failed_runs_cost_usd`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsFigures {
    pub requests: u64,
    /// The seed's name for `requests`.
    pub count: u64,
    pub successful: u64,
    pub failed: u64,
    pub by_status: StatsByStatus,
    /// `successful / requests`, 0 without requests.
    pub success_rate: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    /// `input_tokens + output_tokens`.
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub failed_runs_cost_usd: f64,
    pub avg_duration_ms: f64,
    pub p50_duration_ms: u64,
    pub p95_duration_ms: u64,
}

impl From<&Counters> for StatsFigures {
    fn from(c: &Counters) -> StatsFigures {
        StatsFigures {
            requests: c.requests,
            count: c.requests,
            successful: c.successful,
            failed: c.failed,
            by_status: (&c.by_status).into(),
            success_rate: c.success_rate(),
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_creation_tokens: c.cache_creation_tokens,
            total_tokens: c.input_tokens + c.output_tokens,
            cost_usd: usd(c.cost_usd),
            failed_runs_cost_usd: usd(c.failed_cost_usd),
            avg_duration_ms: ms(c.avg_duration_ms()),
            p50_duration_ms: c.p50_duration_ms(),
            p95_duration_ms: c.p95_duration_ms(),
        }
    }
}

/// One key's figures (admins only).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsKeyFigures {
    /// The key's name; null for anonymous callers.
    #[schema(required = true)]
    pub key_name: Option<String>,
    #[serde(flatten)]
    pub figures: StatsFigures,
}

/// One model's figures, in a list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsModelFigures {
    /// The model as requested.
    pub model: String,
    /// The seed's name for `model`.
    pub name: String,
    #[serde(flatten)]
    pub figures: StatsFigures,
}

/// A model entry of `/models` and `top_models`.
pub fn model(name: &str, c: &Counters) -> StatsModelFigures {
    StatsModelFigures {
        model: name.to_string(),
        name: name.to_string(),
        figures: c.into(),
    }
}

/// `models`: model name → figures.
fn models(r: &Rollup) -> BTreeMap<String, StatsFigures> {
    r.by_model
        .iter()
        .map(|(m, c)| (m.clone(), c.into()))
        .collect()
}

/// `by_key`, for admins only (others see one key: their own): one entry per key, most
/// requests first.
fn by_key(r: &Rollup, admin: bool) -> Option<Vec<StatsKeyFigures>> {
    if !admin {
        return None;
    }
    let mut keys: Vec<_> = r.by_key.iter().collect();
    keys.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
    Some(
        keys.into_iter()
            .map(|(k, c)| StatsKeyFigures {
                key_name: (k != ANONYMOUS_KEY).then(|| k.clone()),
                figures: c.into(),
            })
            .collect(),
    )
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsRequests {
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub by_status: StatsByStatus,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsTokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    /// `input + output`.
    pub total: u64,
    /// The seed's name for `input`.
    pub total_input: u64,
    /// The seed's name for `output`.
    pub total_output: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsCosts {
    /// Cost of completed runs.
    pub total_usd: f64,
    pub average_per_request_usd: f64,
    /// Cost of runs that did not complete (billed all the same).
    pub failed_runs_usd: f64,
}

/// Durations of completed runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsDurations {
    pub avg_ms: f64,
    pub p50_ms: u64,
    pub p95_ms: u64,
}

/// The days a summary covers (days with requests).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsPeriod {
    /// YYYY-MM-DD; null without days.
    #[schema(required = true, format = Date)]
    pub first_day: Option<String>,
    /// YYYY-MM-DD; null without days.
    #[schema(required = true, format = Date)]
    pub last_day: Option<String>,
    pub days: u64,
}

/// The totals of a set of days.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsSummary {
    pub requests: StatsRequests,
    pub tokens: StatsTokens,
    pub costs: StatsCosts,
    pub durations: StatsDurations,
    /// Model name → figures.
    pub models: BTreeMap<String, StatsFigures>,
    pub period: StatsPeriod,
    /// Per key, most requests first: admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub by_key: Option<Vec<StatsKeyFigures>>,
}

/// The summary of a set of days.
pub fn summary(r: &Rollup, days: &[NaiveDate], admin: bool) -> StatsSummary {
    let c = &r.total;
    StatsSummary {
        requests: StatsRequests {
            total: c.requests,
            successful: c.successful,
            failed: c.failed,
            success_rate: c.success_rate(),
            by_status: (&c.by_status).into(),
        },
        tokens: StatsTokens {
            input: c.input_tokens,
            output: c.output_tokens,
            cache_read: c.cache_read_tokens,
            cache_creation: c.cache_creation_tokens,
            total: c.input_tokens + c.output_tokens,
            total_input: c.input_tokens,
            total_output: c.output_tokens,
        },
        costs: StatsCosts {
            total_usd: usd(c.cost_usd),
            average_per_request_usd: if c.requests == 0 {
                0.0
            } else {
                usd(c.cost_usd / c.requests as f64)
            },
            failed_runs_usd: usd(c.failed_cost_usd),
        },
        durations: StatsDurations {
            avg_ms: ms(c.avg_duration_ms()),
            p50_ms: c.p50_duration_ms(),
            p95_ms: c.p95_duration_ms(),
        },
        models: models(r),
        period: StatsPeriod {
            first_day: days.first().map(|d| d.to_string()),
            last_day: days.last().map(|d| d.to_string()),
            days: days.len() as u64,
        },
        by_key: by_key(r, admin),
    }
}

/// One UTC day's figures.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsDay {
    /// YYYY-MM-DD (UTC).
    #[schema(format = Date)]
    pub date: String,
    pub total_requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    pub requests_by_status: StatsByStatus,
    pub total_cost_usd: f64,
    pub failed_runs_cost_usd: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_cache_read_tokens: u64,
    pub total_cache_creation_tokens: u64,
    pub avg_duration_ms: f64,
    pub p50_duration_ms: u64,
    pub p95_duration_ms: u64,
    /// Model name → figures.
    pub models: BTreeMap<String, StatsFigures>,
    /// Per key, most requests first: admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub by_key: Option<Vec<StatsKeyFigures>>,
}

/// One day of `daily[]`.
pub fn day(date: NaiveDate, r: &Rollup, admin: bool) -> StatsDay {
    let c = &r.total;
    StatsDay {
        date: date.to_string(),
        total_requests: c.requests,
        successful_requests: c.successful,
        failed_requests: c.failed,
        requests_by_status: (&c.by_status).into(),
        total_cost_usd: usd(c.cost_usd),
        failed_runs_cost_usd: usd(c.failed_cost_usd),
        total_input_tokens: c.input_tokens,
        total_output_tokens: c.output_tokens,
        total_cache_read_tokens: c.cache_read_tokens,
        total_cache_creation_tokens: c.cache_creation_tokens,
        avg_duration_ms: ms(c.avg_duration_ms()),
        p50_duration_ms: c.p50_duration_ms(),
        p95_duration_ms: c.p95_duration_ms(),
        models: models(r),
        by_key: by_key(r, admin),
    }
}

/// Whose figures an answer holds.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatsScope {
    /// An admin key (or no keys configured): every key's.
    All,
    /// The caller's key only.
    Own,
}

/// What every statistics answer starts with.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsEnvelope {
    /// Always true.
    pub success: bool,
    /// `statistics.enabled`: when false nothing new is recorded.
    pub enabled: bool,
    pub scope: StatsScope,
}

/// `GET /api/statistics/summary`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsSummaryAnswer {
    #[serde(flatten)]
    pub envelope: StatsEnvelope,
    /// Every retained day.
    pub summary: StatsSummary,
    /// The seed's name for `summary`: the same object.
    pub statistics: StatsSummary,
}

/// The seed's `statistics` of `GET /api/statistics`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOverview {
    pub summary: StatsSummary,
    /// The last 7 days with requests, oldest first.
    pub recent_daily: Vec<StatsDay>,
    /// At most 5, most requests first.
    pub top_models: Vec<StatsModelFigures>,
}

/// `GET /api/statistics`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOverviewAnswer {
    #[serde(flatten)]
    pub envelope: StatsEnvelope,
    /// Every retained day.
    pub summary: StatsSummary,
    /// The last 7 days with requests, oldest first.
    pub daily: Vec<StatsDay>,
    /// At most 5, most requests first.
    pub top_models: Vec<StatsModelFigures>,
    /// The same figures under the seed's names.
    pub statistics: StatsOverview,
}

/// `GET /api/statistics/daily`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsDailyAnswer {
    #[serde(flatten)]
    pub envelope: StatsEnvelope,
    /// Days in `daily`.
    pub count: u64,
    /// Days with requests, in all.
    pub total: u64,
    /// Oldest first.
    pub daily: Vec<StatsDay>,
}

/// `GET /api/statistics/range`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsRangeAnswer {
    #[serde(flatten)]
    pub envelope: StatsEnvelope,
    /// YYYY-MM-DD, as asked.
    #[schema(format = Date)]
    pub start: String,
    /// YYYY-MM-DD, as asked.
    #[schema(format = Date)]
    pub end: String,
    pub summary: StatsSummary,
    /// Days with requests in the range.
    pub count: u64,
    /// Oldest first.
    pub daily: Vec<StatsDay>,
    /// The seed's name for `daily`: the same days.
    pub statistics: Vec<StatsDay>,
}

/// `GET /api/statistics/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsModelsAnswer {
    #[serde(flatten)]
    pub envelope: StatsEnvelope,
    /// Models in `models`.
    pub count: u64,
    /// Models used, in all.
    pub total: u64,
    /// Most requests first.
    pub models: Vec<StatsModelFigures>,
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn anonymous_keys_are_null_and_costs_have_no_float_noise() {
        let mut r = Rollup::default();
        r.by_key.insert(ANONYMOUS_KEY.into(), Counters::default());
        r.total.cost_usd = 0.1 + 0.2;
        let s = serde_json::to_value(summary(&r, &[], true)).expect("json");
        assert_eq!(s["by_key"][0]["key_name"], Value::Null);
        assert_eq!(s["costs"]["total_usd"], json!(0.3));
        assert_eq!(
            s["period"],
            json!({"first_day": null, "last_day": null, "days": 0})
        );
        let own = serde_json::to_value(summary(&r, &[], false)).expect("json");
        assert!(own.get("by_key").is_none(), "{own}");
    }
}
