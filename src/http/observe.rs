//! Middleware: the request id, then the request's observation.
//!
//! - `x-request-id`: the client's, or a new UUID; set on the request (handlers and the log
//!   formatter see it) and on the response.
//! - the id on every log line of the request (a task-local read by the log formatter, see
//!   `logging::format::in_request`), one access log line (with the `task_id` of the run the
//!   request queued, if any, which links it to the run's own lines), and the HTTP metrics.
//!
//! Layered outside authentication (see `http::app`), so 401s and 429s are logged and counted
//! too; the key name comes from the [`Caller`] the authentication layer left in the request's
//! extensions. The access line holds the path without its query and the key's name, never the
//! key or the body.

use std::time::Instant;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

use super::auth::Caller;
use crate::logging::format::{in_request, noted_task};
use crate::state::AppState;

/// The route label of requests no route matched: one series, whatever the path.
const UNMATCHED: &str = "unmatched";

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub async fn observe(
    state: AppState,
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = match req.headers().get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("-"));
            req.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let method = req.method().clone();
    let path = req.path().to_owned();
    let id_text = request_id.to_str().unwrap_or("").to_owned();
    in_request(id_text, async move {
        let mut resp = next.call(req).await?;
        resp.headers_mut().insert(REQUEST_ID, request_id);
        let elapsed = started.elapsed();
        let status = resp.status().as_u16();
        // After routing: the matched resource's pattern (`/api/tasks/{id}`), not the path.
        let route = resp.request().match_pattern();
        let key = resp
            .request()
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.key_name.clone());
        let task = noted_task().map(|t| t.to_string());
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
            key = key.as_deref().unwrap_or("-"),
            task_id = task.as_deref();
            "request"
        );
        Ok(resp)
    })
    .await
}
