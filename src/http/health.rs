//! `GET /health`: liveness and readiness for load balancers (503 when degraded).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use chrono::Utc;
use serde_json::json;

use actors::model::rfc3339;

use crate::state::AppState;

#[utoipa::path(get, path = "/health", tag = "operations", operation_id = "getHealth",
    summary = "Health of storage, Claude CLI and queue",
    responses((status = 200, description = "OK: storage and Claude CLI answer", body = crate::http::schema::Health), (status = 503, description = "Degraded: storage down or CLI missing", body = crate::http::schema::Health)),
    security(()))]
pub async fn health(state: AppState) -> HttpResponse {
    let config = state.config();
    let storage_ok = state
        .storage_health
        .get(|| async { state.store.ping().await.is_ok() })
        .await;
    let claude = state.claude_info();
    // Until the version check has run, the CLI is not counted as missing.
    let claude_ok = !claude.checked || claude.version.is_some();
    let ok = storage_ok && claude_ok;
    let live = state.queue.status().await;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "uptime": state.started.elapsed().as_secs_f64(),
        "timestamp": rfc3339(&Utc::now()),
        "version": env!("CARGO_PKG_VERSION"),
        "storage": {"type": state.store.kind(), "ok": storage_ok},
        "claude": {"path": config.claude_path, "version": claude.version, "ok": claude_ok},
        "queue": {
            "running": live.running,
            "pending": live.pending,
            "concurrency": live.concurrency,
            "accepting": live.accepting,
        },
        // A refused config file, until a good one is applied (the old config is in force).
        "config": {
            "last_reload_error": state.reload.last_error().as_ref().map(crate::reload::failure_json),
        },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(body)
}
