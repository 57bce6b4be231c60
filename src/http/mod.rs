//! The HTTP front: routes, and the layers every request passes through.
//!
//! Handlers validate input and talk to the actors; they hold no state of their own.

use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::state::AppState;

pub mod auth;
pub mod claude;
pub mod config_api;
pub mod error;
pub mod extract;
pub mod health;
pub mod run_request;
pub mod tasks;
pub mod webhooks;

pub fn router(state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/health", get(health::health))
        .route("/api/claude", post(claude::run_claude))
        .route("/api/config", get(config_api::get_config))
        .route("/api/tasks/{id}", get(tasks::get_task))
        .route("/api/tasks/{id}/webhooks", get(webhooks::list_deliveries))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
}

/// A panic in a handler is a bug: answer 500 JSON, never an HTML page or a dropped connection.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    error::ApiError::new(actors::error::ErrorCode::InternalError, "Internal error.").into_response()
}
