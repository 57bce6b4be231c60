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

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::NaiveDate;
use serde_json::{json, Value};

use actors::stats::{DaySelection, Rollup, Scope, StatsError};

use super::auth::Caller;
use super::error::ApiError;
use crate::state::AppState;

mod params;
mod render;

use params::Params;

type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

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
fn envelope(state: &AppState, caller: &Caller) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("success".into(), Value::Bool(true));
    m.insert(
        "enabled".into(),
        Value::Bool(state.config().statistics.enabled),
    );
    m.insert(
        "scope".into(),
        Value::from(if caller.admin { "all" } else { "own" }),
    );
    m
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

#[utoipa::path(get, path = "/api/statistics", tag = "statistics",
    responses((status = 200, description = "Summary, recent days and top models", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn overview(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let per_day = daily(&state, DaySelection::All, &scope_of(&caller)).await?;
    let (all, dates) = sum(&per_day);
    let recent = &per_day[per_day.len().saturating_sub(RECENT_DAYS)..];
    let mut body = envelope(&state, &caller);
    body.insert(
        "summary".into(),
        render::summary(&all, &dates, caller.admin),
    );
    body.insert(
        "daily".into(),
        recent
            .iter()
            .map(|(d, r)| render::day(*d, r, caller.admin))
            .collect(),
    );
    body.insert(
        "top_models".into(),
        all.top_models(TOP_MODELS)
            .into_iter()
            .map(|(m, c)| render::model(m, c))
            .collect(),
    );
    Ok(Json(Value::Object(body)))
}

#[utoipa::path(get, path = "/api/statistics/summary", tag = "statistics",
    responses((status = 200, description = "Totals of every retained day", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let per_day = daily(&state, DaySelection::All, &scope_of(&caller)).await?;
    let (all, dates) = sum(&per_day);
    let mut body = envelope(&state, &caller);
    body.insert(
        "summary".into(),
        render::summary(&all, &dates, caller.admin),
    );
    Ok(Json(Value::Object(body)))
}

#[utoipa::path(get, path = "/api/statistics/daily", tag = "statistics", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("offset" = Option<u32>, Query)),
    responses((status = 200, description = "Days, newest `limit`", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn daily_list(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<Value>, ApiError> {
    let p = Params::from_query(query)?;
    let limit = p.limit(30)?;
    let offset = p.offset()?;
    let per_day = daily(&state, DaySelection::All, &scope_of(&caller)).await?;
    let total = per_day.len();
    // The newest `limit` after skipping the newest `offset`, oldest first.
    let end = total.saturating_sub(offset);
    let start = end.saturating_sub(limit);
    let days: Vec<Value> = per_day[start..end]
        .iter()
        .map(|(d, r)| render::day(*d, r, caller.admin))
        .collect();
    let mut body = envelope(&state, &caller);
    body.insert("count".into(), json!(days.len()));
    body.insert("total".into(), json!(total));
    body.insert("daily".into(), Value::Array(days));
    Ok(Json(Value::Object(body)))
}

#[utoipa::path(get, path = "/api/statistics/range", tag = "statistics", params(("start" = String, Query, description = "YYYY-MM-DD"), ("end" = String, Query, description = "YYYY-MM-DD")),
    responses((status = 200, description = "Summary and days of a date range", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn range(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<Value>, ApiError> {
    let p = Params::from_query(query)?;
    let from = p.date("start")?;
    let to = p.date("end")?;
    if to < from {
        return Err(ApiError::field("end", "must not be before `start`"));
    }
    let days = DaySelection::Range { from, to };
    let per_day = daily(&state, days, &scope_of(&caller)).await?;
    let (all, dates) = sum(&per_day);
    let mut body = envelope(&state, &caller);
    body.insert("start".into(), json!(from.to_string()));
    body.insert("end".into(), json!(to.to_string()));
    body.insert(
        "summary".into(),
        render::summary(&all, &dates, caller.admin),
    );
    body.insert("count".into(), json!(per_day.len()));
    body.insert(
        "daily".into(),
        per_day
            .iter()
            .map(|(d, r)| render::day(*d, r, caller.admin))
            .collect(),
    );
    Ok(Json(Value::Object(body)))
}

#[utoipa::path(get, path = "/api/statistics/models", tag = "statistics", params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000), ("offset" = Option<u32>, Query)),
    responses((status = 200, description = "Models by request count", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn models(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryMap,
) -> Result<Json<Value>, ApiError> {
    let p = Params::from_query(query)?;
    let limit = p.limit(50)?;
    let offset = p.offset()?;
    let all = state
        .stats
        .rollup(DaySelection::All, scope_of(&caller))
        .await
        .map_err(unavailable)?;
    let ranked = all.top_models(usize::MAX);
    let total = ranked.len();
    let models: Vec<Value> = ranked
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(m, c)| render::model(m, c))
        .collect();
    let mut body = envelope(&state, &caller);
    body.insert("count".into(), json!(models.len()));
    body.insert("total".into(), json!(total));
    body.insert("models".into(), Value::Array(models));
    Ok(Json(Value::Object(body)))
}
