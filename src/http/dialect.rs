//! Which API a request speaks, decided in one place: the native API (`/api/*` and the rest),
//! OpenAI's or Anthropic's (both under `/v1`). The dialect picks the shape of every error body
//! ([`convert_errors`]) and of the answers two of them share (`GET /v1/models`).
//!
//! Under `/v1`, a request speaks Anthropic's dialect when its path is Anthropic's own
//! (`/v1/messages`) or when it carries `anthropic-version`, the header every Anthropic SDK
//! sends on every request; OpenAI's otherwise.

use actix_web::body::{to_bytes_limited, BoxBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpRequest;
use serde_json::Value;

use super::compat::SESSION_HEADER;
use super::observe::REQUEST_ID;
use super::{anthropic, openai};

/// The header every Anthropic SDK sends.
pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// A native error body is small; anything larger is not one and is not read whole.
const MAX_NATIVE_ERROR_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"success": false, "error", "code", "details"?}`.
    Native,
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl Dialect {
    pub fn of(path: &str, headers: &HeaderMap) -> Dialect {
        if !is_v1(path) {
            Dialect::Native
        } else if path == "/v1/messages"
            || path.starts_with("/v1/messages/")
            || headers.contains_key(ANTHROPIC_VERSION)
        {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }

    pub fn of_request(req: &HttpRequest) -> Dialect {
        Dialect::of(req.path(), req.headers())
    }
}

/// The message of a native error body (`{"success":false,"error",…}`), for either dialect's
/// error object; a body without one (not expected) gets one named after the status.
pub fn native_message(status: actix_web::http::StatusCode, native: &Value) -> String {
    native
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "The request failed ({} {}).",
                status.as_u16(),
                status.canonical_reason().unwrap_or("error")
            )
        })
}

/// Whether `path` is under `/v1`.
pub fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Middleware, outside every layer that can refuse a request (so it sees 401s, 429s and unknown
/// routes too): rewrite the body of every error response of the OpenAI and Anthropic dialects
/// into that dialect's shape, keeping the status and the headers (`Retry-After`,
/// `RateLimit-*`, `WWW-Authenticate`). Every layer of the service answers with the native body;
/// rather than teach each of them two more, the body is converted here, once.
pub async fn convert_errors(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let dialect = Dialect::of(req.path(), req.headers());
    if dialect == Dialect::Native {
        return next.call(req).await;
    }
    let prompt_field = openai::error::prompt_field(req.path());
    // Set by the request-id layer outside this one.
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = next.call(req).await?;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(resp);
    }
    let (req, resp) = resp.into_parts();
    let (mut resp, body) = resp.into_parts();
    let native = match to_bytes_limited(body, MAX_NATIVE_ERROR_BYTES).await {
        Ok(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let headers = resp.headers_mut();
    // A failed run still created (or continued) a session: say which, as a success would.
    if let Some(sid) = native.get("session_id").and_then(Value::as_str) {
        if let Ok(v) = HeaderValue::from_str(sid) {
            headers.insert(SESSION_HEADER, v);
        }
    }
    // Serialising these structs cannot fail; the fallbacks only keep the shape if it did.
    let bytes = match dialect {
        Dialect::Anthropic => {
            serde_json::to_vec(&anthropic::error::from_native(status, &native, request_id))
                .unwrap_or_else(|_| {
                    br#"{"type":"error","error":{"type":"api_error","message":"Internal error."}}"#
                        .to_vec()
                })
        }
        _ => serde_json::to_vec(&openai::error::from_native(status, &native, prompt_field))
            .unwrap_or_else(|_| {
                br#"{"error":{"message":"Internal error.","type":"server_error","param":null,"code":null}}"#
                    .to_vec()
            }),
    };
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(ServiceResponse::new(
        req,
        resp.set_body(BoxBody::new(bytes)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(path: &str, anthropic_version: bool) -> Dialect {
        let mut headers = HeaderMap::new();
        if anthropic_version {
            headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static("2023-06-01"));
        }
        Dialect::of(path, &headers)
    }

    #[test]
    fn the_path_and_the_anthropic_header_decide() {
        assert_eq!(of("/api/claude", true), Dialect::Native);
        assert_eq!(of("/v10/messages", false), Dialect::Native);
        assert_eq!(of("/v1/messages", false), Dialect::Anthropic);
        assert_eq!(of("/v1/messages/count_tokens", false), Dialect::Anthropic);
        assert_eq!(of("/v1/models", true), Dialect::Anthropic);
        assert_eq!(of("/v1/models", false), Dialect::OpenAi);
        assert_eq!(of("/v1/chat/completions", false), Dialect::OpenAi);
        assert_eq!(of("/v1/responses", false), Dialect::OpenAi);
        assert_eq!(of("/v1", false), Dialect::OpenAi);
        assert!(is_v1("/v1") && is_v1("/v1/models") && is_v1("/v1/x/y"));
        assert!(!is_v1("/v10") && !is_v1("/api/claude") && !is_v1("/"));
    }
}
