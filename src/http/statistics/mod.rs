//! `GET /api/statistics` and its sub-resources: figures per UTC day, per requested model and
//! per API key, from the StatsActor.
//!
//! * `/api/statistics` — summary of every retained day, the last 7 days, the top 5 models.
//! * `/summary` — the summary alone.
//! * `/daily?limit=&offset=` — days with requests, oldest first; the newest `limit` (default
//!   30) after skipping the newest `offset`.
//! * `/range?start=YYYY-MM-DD&end=YYYY-MM-DD` — summary and days of that range (inclusive).
//! * `/models?limit=&offset=` — models by request count (default 50).
//!
//! Tenancy: a non-admin key sees its own key's figures only; an admin sees everyone's and a
//! per-key breakdown (`by_key`). With `statistics.enabled` false nothing new is recorded and
//! the answers say `"enabled": false`.

use actix_web::web::Json;
use chrono::NaiveDate;

use actors::stats::{DaySelection, Rollup, Scope, StatsError};

use super::auth::Caller;
use super::error::ApiError;
use crate::http::params::QueryMap;
use crate::state::AppState;

mod params;
pub mod render;

use params::Params;
use render::{
    StatsDailyAnswer, StatsDay, StatsEnvelope, StatsModelsAnswer, StatsOverview,
    StatsOverviewAnswer, StatsRangeAnswer, StatsScope, StatsSummaryAnswer,
};

/// Days in the overview of `GET /api/statistics`.
const RECENT_DAYS: usize = 7;
const TOP_MODELS: usize = 5;

fn scope_of(caller: &Caller) -> Scope {
    if caller.admin {
        Scope::All
    } else {
        Scope::Key(caller.key_name.clone())
    }
}

fn unavailable(e: StatsError) -> ApiError {
    match e {
        // Shared statistics (Redis storage) cannot be read: a storage outage.
        StatsError::Store(e) => e.into(),
        StatsError::Stopped => ApiError::new(
            actors::error::ErrorCode::ShuttingDown,
            "Statistics are not available: the server is shutting down.",
        ),
    }
}

/// What every answer starts with.
fn envelope(state: &AppState, caller: &Caller) -> StatsEnvelope {
    StatsEnvelope {
        success: true,
        enabled: state.config().statistics.enabled,
        scope: if caller.admin {
            StatsScope::All
        } else {
            StatsScope::Own
        },
    }
}

async fn daily(
    state: &AppState,
    days: DaySelection,
    scope: &Scope,
) -> Result<Vec<(NaiveDate, Rollup)>, ApiError> {
    state
        .stats
        .daily(days, scope.clone())
        .await
        .map_err(unavailable)
}

/// The days' figures summed, and the dates they cover.
fn sum(per_day: &[(NaiveDate, Rollup)]) -> (Rollup, Vec<NaiveDate>) {
    let mut total = Rollup::default();
    for (_, r) in per_day {
        total.merge(r);
    }
    (total, per_day.iter().map(|(d, _)| *d).collect())
}

fn render_days(per_day: &[(NaiveDate, Rollup)], admin: bool) -> Vec<StatsDay> {
    per_day
        .iter()
        .map(|(d, r)| render::day(*d, r, admin))
        .collect()
}

#[utoipa::path(get, path = "/api/statistics", tag = "statistics", operation_id = "getStatistics",
    summary = "Statistics overview: summary, recent days, top models",
    responses((status = 200, description = "Summary of every retained day, the last 7 days, the top 5 models", body = StatsOverviewAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn overview(
    state: AppState,
    caller: Caller,
) -> Result<Json<StatsOverviewAnswer>, ApiError> {
    let per_day = daily(&state, DaySelection::All, &scope_of(&caller)).await?;
    let (all, dates) = sum(&per_day);
    let summary = render::summary(&all, &dates, caller.admin);
    let recent = render_days(
        &per_day[per_day.len().saturating_sub(RECENT_DAYS)..],
        caller.admin,
    );
    let top_models: Vec<_> = all
        .top_models(TOP_MODELS)
        .into_iter()
        .map(|(m, c)| render::model(m, c))
        .collect();
    Ok(Json(StatsOverviewAnswer {
        envelope: envelope(&state, &caller),
        statistics: StatsOverview {
            summary: summary.clone(),
            recent_daily: recent.clone(),
            top_models: top_models.clone(),
        },
        summary,
        daily: recent,
        top_models,
    }))
}

#[utoipa::path(get, path = "/api/statistics/summary", tag = "statistics", operation_id = "getStatisticsSummary",
    summary = "Statistics summary of every retained day",
    responses((status = 200, description = "Totals of every retained day, as `summary` and (the seed's name) `statistics`", body = StatsSummaryAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn summary(
    state: AppState,
    caller: Caller,
) -> Result<Json<StatsSummaryAnswer>, ApiError> {
    let per_day = daily(&state, DaySelection::All, &scope_of(&caller)).await?;
    let (all, dates) = sum(&per_day);
    let summary = render::summary(&all, &dates, caller.admin);
    Ok(Json(StatsSummaryAnswer {
        envelope: envelope(&state, &caller),
        statistics: summary.clone(),
        summary,
    }))
}

#[utoipa::path(get, path = "/api/statistics/daily", tag = "statistics", operation_id = "listStatisticsDays",
    summary = "Statistics per day",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Days to return (default 30)"), ("offset" = Option<u32>, Query, description = "Newest days to skip")),
    responses((status = 200, description = "Days with requests, oldest first: the newest `limit` after skipping the newest `offset`", body = StatsDailyAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn daily_list(
    state: AppState,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<StatsDailyAnswer>, ApiError> {
    let p = Params::from_query(query);
    let limit = p.limit(30)?;
    let offset = p.offset()?;
    let per_day = daily(&state, DaySelection::All, &scope_of(&caller)).await?;
    let total = per_day.len();
    // The newest `limit` after skipping the newest `offset`, oldest first.
    let end = total.saturating_sub(offset);
    let start = end.saturating_sub(limit);
    let days = render_days(&per_day[start..end], caller.admin);
    Ok(Json(StatsDailyAnswer {
        envelope: envelope(&state, &caller),
        count: days.len() as u64,
        total: total as u64,
        daily: days,
    }))
}

#[utoipa::path(get, path = "/api/statistics/range", tag = "statistics", operation_id = "getStatisticsRange",
    summary = "Statistics of a date range",
    params(("start" = String, Query, format = Date, description = "First day, YYYY-MM-DD (UTC)"), ("end" = String, Query, format = Date, description = "Last day, YYYY-MM-DD (UTC), inclusive")),
    responses((status = 200, description = "Summary and days of the range; the days also as (the seed's name) `statistics`", body = StatsRangeAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn range(
    state: AppState,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<StatsRangeAnswer>, ApiError> {
    let p = Params::from_query(query);
    let from = p.date("start")?;
    let to = p.date("end")?;
    if to < from {
        return Err(ApiError::field("end", "must not be before `start`"));
    }
    let selection = DaySelection::Range { from, to };
    let per_day = daily(&state, selection, &scope_of(&caller)).await?;
    let (all, dates) = sum(&per_day);
    let days = render_days(&per_day, caller.admin);
    Ok(Json(StatsRangeAnswer {
        envelope: envelope(&state, &caller),
        start: from.to_string(),
        end: to.to_string(),
        summary: render::summary(&all, &dates, caller.admin),
        count: days.len() as u64,
        statistics: days.clone(),
        daily: days,
    }))
}

#[utoipa::path(get, path = "/api/statistics/models", tag = "statistics", operation_id = "listStatisticsModels",
    summary = "Statistics per model",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Models to return (default 50)"), ("offset" = Option<u32>, Query, description = "Models to skip")),
    responses((status = 200, description = "Models by request count, most first", body = StatsModelsAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn models(
    state: AppState,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<StatsModelsAnswer>, ApiError> {
    let p = Params::from_query(query);
    let limit = p.limit(50)?;
    let offset = p.offset()?;
    let all = state
        .stats
        .rollup(DaySelection::All, scope_of(&caller))
        .await
        .map_err(unavailable)?;
    let ranked = all.top_models(usize::MAX);
    let total = ranked.len();
    let models: Vec<_> = ranked
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(m, c)| render::model(m, c))
        .collect();
    Ok(Json(StatsModelsAnswer {
        envelope: envelope(&state, &caller),
        count: models.len() as u64,
        total: total as u64,
        models,
    }))
}
