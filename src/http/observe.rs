//! Middleware: the request's `x-request-id` on every log line of the request (a task-local
//! read by the log formatter, see `logging::format::in_request`), one access log line, and the
//! HTTP metrics.
//!
//! Layered outside authentication (see `http::router`), so 401s and 429s are logged and counted
//! too; the key name comes back on the response from the authentication layer. The access line
//! holds the path without its query and the key's name, never the key or the body.

use std::time::Instant;

use super::auth::Caller;
use crate::logging::format::in_request;
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The route label of requests no route matched: one series, whatever the path.
const UNMATCHED: &str = "unmatched";

pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    in_request(request_id, async move {
        let resp = next.run(req).await;
        let elapsed = started.elapsed();
        let status = resp.status().as_u16();
        let key = resp
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.key_name.clone());
        state.metrics.http_request(
            method.as_str(),
            route.as_deref().unwrap_or(UNMATCHED),
            status,
            elapsed,
        );
        log::info!(
            target: "access",
            method:% = method,
            path:% = path,
            status = status,
            duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            key = key.as_deref().unwrap_or("-");
            "request"
        );
        resp
    })
    .await
}
