//! `GET /metrics`: Prometheus text format. Open when `metrics.public` (the authentication layer
//! lets it through without a key), otherwise for admin keys only.

use actix_web::http::header;
use actix_web::HttpResponse;

use actors::error::ErrorCode;

use super::auth::Caller;
use super::error::ApiError;
use crate::state::AppState;

/// The classic Prometheus exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "getMetrics",
    summary = "Prometheus metrics",
    description = "Open to anyone when `metrics.public`; otherwise an admin key.",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), crate::http::schema::CommonErrors),
    security((), ("bearer" = []), ("api_key" = [])))]
pub async fn metrics(state: AppState, caller: Caller) -> Result<HttpResponse, ApiError> {
    if !state.config().metrics.public && !caller.admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "Reading the metrics needs an admin key (metrics.public is false).",
        ));
    }
    // Storage down: the other metrics still answer (and show what is wrong elsewhere).
    let stored = match state.store.task_counts().await {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!(error:% = e; "task counts unavailable for /metrics");
            None
        }
    };
    let body = state.metrics.render(
        state.queue.status().await,
        stored.as_ref(),
        state.started.elapsed(),
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
        .body(body))
}
