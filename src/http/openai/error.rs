//! OpenAI's error shape for everything under `/v1`: `{"error":{"message","type","param","code"}}`.
//!
//! Every layer of the service (authentication, rate limiting, JSON extraction, validation, the
//! run itself) answers with the native error body. Rather than teach each of them a second
//! dialect, one middleware converts the native body of any `/v1/*` error response on its way
//! out, keeping the status and the headers (`Retry-After`, `RateLimit-*`, `WWW-Authenticate`).
//! The stream writer converts a mid-stream `error` event with the same function.

use actix_web::body::{to_bytes_limited, BoxBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::SESSION_HEADER;

/// A native error body is small; anything larger is not one and is not read whole.
const MAX_NATIVE_ERROR_BYTES: usize = 256 * 1024;

/// `{"error": {...}}`, fields in OpenAI's order: every error under `/v1`.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
#[schema(as = OpenAiError)]
pub struct ErrorEnvelope {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, PartialEq, ToSchema)]
#[schema(as = OpenAiErrorObject)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `rate_limit_error`, `insufficient_quota` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault (`details.field` of the native body), else null.
    #[schema(required = true)]
    pub param: Option<String>,
    /// The service's own snake_case code (`cli_api_error`, `rate_limited`, ...).
    #[schema(required = true)]
    pub code: Option<String>,
}

/// Whether `path` is under `/v1`.
pub fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// OpenAI's error `type` for a status (and, for 429, the native code: a spent budget is
/// `insufficient_quota`, as OpenAI calls an exhausted balance).
fn error_type(status: StatusCode, code: Option<&str>) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 if code == Some("budget_exceeded") => "insufficient_quota",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// The OpenAI form of a native error body (`{"success":false,"error","code","details"?}`).
/// Anything else (not expected) still gets a well-formed error named after the status.
pub fn from_native(status: StatusCode, native: &Value) -> ErrorEnvelope {
    let code = native.get("code").and_then(Value::as_str);
    let message = native
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "The request failed ({} {}).",
                status.as_u16(),
                status.canonical_reason().unwrap_or("error")
            )
        });
    let param = native
        .get("details")
        .and_then(|d| d.get("field"))
        .and_then(Value::as_str)
        .map(request_field);
    ErrorEnvelope {
        error: ErrorObject {
            message,
            kind: error_type(status, code),
            param,
            code: code.map(str::to_string),
        },
    }
}

/// Fields the handler fills from the messages carry the name of the native field they went
/// into; an OpenAI client knows them as `messages`.
fn request_field(native: &str) -> String {
    match native {
        "prompt" | "append_system_prompt" | "system_prompt" => "messages".to_string(),
        other => other.to_string(),
    }
}

/// Middleware (outermost, so it sees 401s, 429s and unknown routes too): rewrite the body of
/// every `/v1/*` error response into OpenAI's shape.
pub async fn convert_errors(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !is_v1(req.path()) {
        return next.call(req).await;
    }
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
    let bytes = serde_json::to_vec(&from_native(status, &native)).unwrap_or_else(|_| {
        br#"{"error":{"message":"Internal error.","type":"server_error","param":null,"code":null}}"#
            .to_vec()
    });
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
    use serde_json::json;

    #[test]
    fn native_bodies_become_openai_errors() {
        let native = json!({"success": false, "error": "Field `n` must be 1.", "code": "validation_error",
                            "details": {"field": "n", "rule": "must be 1"}});
        let e = from_native(StatusCode::BAD_REQUEST, &native);
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"error":{"message":"Field `n` must be 1.","type":"invalid_request_error","param":"n","code":"validation_error"}}"#
        );
        let e = from_native(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": "spent", "code": "budget_exceeded"}),
        );
        assert_eq!(e.error.kind, "insufficient_quota");
        let e = from_native(
            StatusCode::BAD_GATEWAY,
            &json!({"error": "x", "code": "cli_api_error"}),
        );
        assert_eq!((e.error.kind, e.error.param), ("server_error", None));
        let e = from_native(StatusCode::UNAUTHORIZED, &Value::Null);
        assert_eq!(e.error.kind, "authentication_error");
        assert!(e.error.message.contains("401"));
        let e = from_native(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": "big", "code": "payload_too_large", "details": {"field": "prompt"}}),
        );
        assert_eq!(e.error.param.as_deref(), Some("messages"));
    }

    #[test]
    fn only_v1_paths() {
        assert!(is_v1("/v1") && is_v1("/v1/models") && is_v1("/v1/x/y"));
        assert!(!is_v1("/v10") && !is_v1("/api/claude") && !is_v1("/"));
    }
}
