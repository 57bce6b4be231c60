//! Middleware: rate limiting of `/api/*` and `/v1/*` per API key (per client IP when
//! anonymous), with the `RateLimit-*` headers on every response of those routes and a 429
//! `rate_limited` over the limit. The count is kept by the RateLimitActor
//! (`actors::rate_limit::actor`): without Redis the check reads its table directly, with no
//! message; with Redis storage it is shared by every instance, so a key has one limit however
//! requests are balanced.
//!
//! It needs the [`Caller`] the authentication middleware sets, so it is layered inside it (see
//! `http::app`): a request is authenticated first, then counted under its key. Requests
//! refused by authentication are not counted against any key.

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse};

use actors::error::ErrorCode;
use actors::rate_limit::{limiter_key, policy_for, Decision, Policy};

use super::auth::Caller;
use super::error::ApiError;
use crate::state::AppState;

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `/api/*` and `/v1/*` are limited; `/health` and `/metrics` never are.
fn is_limited(path: &str) -> bool {
    ["/api", "/v1"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

pub async fn limit(
    state: AppState,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !is_limited(req.path()) {
        return next.call(req).await;
    }
    // Read the live config: a new limit applies to the next request.
    let config = state.config();
    let (key_name, ip) = match req.extensions().get::<Caller>() {
        Some(c) => (c.key_name.clone(), c.ip),
        // Only if the layers were ever reordered: still limit, by address.
        None => (None, req.peer_addr().map(|p| p.ip())),
    };
    let Some(policy) = policy_for(&config, key_name.as_deref()) else {
        return next.call(req).await;
    };
    let decision = state
        .rate_limiter
        .check(&limiter_key(key_name.as_deref(), ip), policy)
        .await;
    let mut resp = if decision.allowed {
        next.call(req).await?
    } else {
        log::info!(key:? = key_name, ip:? = ip; "rate limited");
        state.metrics.rate_limited();
        req.into_response(too_many_requests(&decision))
    };
    set_headers(resp.headers_mut(), &decision, &policy);
    Ok(resp)
}

fn too_many_requests(d: &Decision) -> HttpResponse {
    ApiError {
        retry_after_secs: Some(d.retry_after_secs().unwrap_or(1)),
        ..ApiError::new(
            ErrorCode::RateLimited,
            "Too many requests, please try again later.",
        )
    }
    .into_response()
}

fn set_headers(h: &mut HeaderMap, d: &Decision, policy: &Policy) {
    let values = [
        (LIMIT, d.limit.to_string()),
        (REMAINING, d.remaining.to_string()),
        (RESET, d.reset_secs().to_string()),
        (POLICY, policy.header()),
    ];
    for (name, value) in values {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn limited_paths() {
        for p in [
            "/api",
            "/api/claude",
            "/api/statistics/daily",
            "/v1/models",
            "/v1",
        ] {
            assert!(is_limited(p), "{p}");
        }
        for p in ["/health", "/metrics", "/", "/apix", "/v1x/models", "/docs"] {
            assert!(!is_limited(p), "{p}");
        }
    }

    #[test]
    fn header_values() {
        let policy = Policy::new(3, Duration::from_secs(60));
        let d = Decision {
            allowed: false,
            limit: 3,
            remaining: 0,
            reset: Duration::from_millis(59_001),
            retry_after: Some(Duration::from_millis(19_001)),
        };
        let mut h = HeaderMap::new();
        set_headers(&mut h, &d, &policy);
        assert_eq!(h.get(&LIMIT).map(HeaderValue::as_bytes), Some(&b"3"[..]));
        assert_eq!(
            h.get(&REMAINING).map(HeaderValue::as_bytes),
            Some(&b"0"[..])
        );
        assert_eq!(h.get(&RESET).map(HeaderValue::as_bytes), Some(&b"60"[..]));
        assert_eq!(
            h.get(&POLICY).map(HeaderValue::as_bytes),
            Some(&b"3;w=60"[..])
        );
        let resp = too_many_requests(&d);
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(
            resp.headers()
                .get(actix_web::http::header::RETRY_AFTER)
                .map(HeaderValue::as_bytes),
            Some(&b"20"[..])
        );
    }
}
