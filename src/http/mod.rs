//! The HTTP front: routes, and the layers every request passes through.
//!
//! Handlers validate input and talk to the actors; they hold no state of their own.

use axum::routing::{get, patch, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::state::AppState;

pub mod auth;
pub mod batch;
pub mod budget;
pub mod claude;
pub mod config_api;
pub mod error;
pub mod events;
pub mod extract;
pub mod front;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod observe;
pub mod openai;
pub mod openapi;
pub mod params;
pub mod rate_limit;
pub mod run_request;
pub mod schema;
pub mod sessions;
pub mod statistics;
pub mod tasks;
pub mod turns;
pub mod unread_body;
pub mod validate;
pub mod webhooks;

pub fn router(state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/health", get(health::health))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/api/openapi.json", openapi::document()),
        )
        .route("/api/claude", post(claude::run_claude))
        .route("/api/claude/batch", post(batch::run_batch))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/api/config",
            get(config_api::get_config).patch(config_api::patch),
        )
        .route("/api/tasks", get(tasks::list_tasks))
        .route("/api/tasks/async", post(tasks::create_async))
        .route("/api/tasks/queue/status", get(tasks::queue_status))
        .route(
            "/api/tasks/{id}",
            get(tasks::get_task).delete(tasks::cancel),
        )
        .route("/api/tasks/{id}/priority", patch(tasks::set_priority))
        .route("/api/tasks/{id}/events", get(events::task_events))
        .route("/api/sessions", post(sessions::create).get(sessions::list))
        .route("/api/sessions/search", get(sessions::search))
        .route(
            "/api/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/api/sessions/{id}/stats", get(sessions::stats))
        .route("/api/sessions/{id}/status", patch(sessions::set_status))
        .route("/api/sessions/{id}/messages", get(sessions::messages))
        .route(
            "/api/sessions/{id}/continue",
            post(sessions::continue_session),
        )
        .route("/api/sessions/{id}/fork", post(sessions::fork))
        .route("/api/statistics", get(statistics::overview))
        .route("/api/statistics/summary", get(statistics::summary))
        .route("/api/statistics/daily", get(statistics::daily_list))
        .route("/api/statistics/range", get(statistics::range))
        .route("/api/statistics/models", get(statistics::models))
        .route("/api/tasks/{id}/webhooks", get(webhooks::list_deliveries))
        .merge(openai::routes())
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Layers added later run earlier: authentication runs first and sets the `Caller`
        // that rate limiting counts under.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state.clone())
        .layer(CatchPanicLayer::custom(panic_response))
        // Outside every layer that can refuse a request, so /v1 errors all leave in OpenAI's shape.
        .layer(axum::middleware::from_fn(openai::error::convert_errors))
        // Outside the panic catcher (a caught panic is logged as its 500) and inside the
        // request id layers (the id is set by then). `Router::layer` wraps each route, so the
        // matched route template is known here.
        .layer(axum::middleware::from_fn_with_state(
            state,
            observe::observe,
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        // Outermost: sees every answer, whichever layer gave it.
        .layer(axum::middleware::from_fn(unread_body::close_if_unread))
}

/// A panic in a handler is a bug: answer 500 JSON, never an HTML page or a dropped connection.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    error::ApiError::new(actors::error::ErrorCode::InternalError, "Internal error.").into_response()
}
