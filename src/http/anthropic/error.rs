//! Anthropic's error shape, for `/v1` requests in Anthropic's dialect (see [`Dialect`]):
//! `{"type":"error","error":{"type","message","details":{"error_code"}},"request_id"}`.
//!
//! The status stays the native one (the table of `ErrorCode`); `error.type` is Anthropic's name
//! for it, `error.details.error_code` the service's own code (`validation_error`,
//! `session_busy`, `cli_api_error`, ...), which the Anthropic SDKs expose as `error_code`.
//! Like OpenAI's, the body is converted once, on its way out ([`convert_errors`]), and a
//! mid-stream `error` event is converted with the same function.
//!
//! [`Dialect`]: crate::http::dialect::Dialect
//! [`convert_errors`]: crate::http::dialect::convert_errors

use actix_web::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// `{"type":"error","error":{...},"request_id"}`: every error in Anthropic's dialect.
#[derive(Debug, Serialize, PartialEq, ToSchema)]
#[schema(as = AnthropicError)]
pub struct ErrorEnvelope {
    /// `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub error: ErrorObject,
    /// The request's `X-Request-Id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, ToSchema)]
#[schema(as = AnthropicErrorObject)]
pub struct ErrorObject {
    /// `invalid_request_error` (400, 405, 409, 415, 422), `authentication_error` (401),
    /// `permission_error` (403), `not_found_error` (404), `request_too_large` (413),
    /// `rate_limit_error` (429), `api_error` (500, 502), `overloaded_error` (503, and 502 when
    /// the model API was overloaded) or `timeout_error` (504).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

#[derive(Debug, Serialize, PartialEq, ToSchema)]
#[schema(as = AnthropicErrorDetails)]
pub struct ErrorDetails {
    /// The service's own snake_case code (`code` of the native error body).
    pub error_code: String,
}

/// Anthropic's error `type` for a native error: by status, and for a failed model call by the
/// model API's own status (`details.api_error_status`: 529 is Anthropic's "overloaded").
fn error_type(status: StatusCode, native: &Value) -> &'static str {
    let upstream = native
        .get("details")
        .and_then(|d| d.get("api_error_status"))
        .and_then(Value::as_u64);
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        504 => "timeout_error",
        502 if upstream == Some(529) => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The Anthropic form of a native error body (`{"success":false,"error","code","details"?}`).
/// Anything else (not expected) still gets a well-formed error named after the status.
pub fn from_native(
    status: StatusCode,
    native: &Value,
    request_id: Option<String>,
) -> ErrorEnvelope {
    let message = super::super::dialect::native_message(status, native);
    let details = native
        .get("code")
        .and_then(Value::as_str)
        .map(|code| ErrorDetails {
            error_code: code.to_string(),
        });
    ErrorEnvelope {
        kind: "error",
        error: ErrorObject {
            kind: error_type(status, native),
            message,
            details,
        },
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(status: u16, native: Value) -> &'static str {
        let status = StatusCode::from_u16(status).expect("status");
        from_native(status, &native, None).error.kind
    }

    #[test]
    fn native_bodies_become_anthropic_errors() {
        let native = json!({"success": false, "error": "Field `max_tokens` is invalid.",
                            "code": "validation_error", "details": {"field": "max_tokens"}});
        let e = from_native(StatusCode::BAD_REQUEST, &native, Some("req-1".into()));
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Field `max_tokens` is invalid.","details":{"error_code":"validation_error"}},"request_id":"req-1"}"#
        );
        let e = from_native(StatusCode::UNAUTHORIZED, &Value::Null, None);
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"type":"error","error":{"type":"authentication_error","message":"The request failed (401 Unauthorized)."}}"#
        );
    }

    #[test]
    fn types_follow_the_status_and_the_model_api() {
        let code = |c: &str| json!({"error": "x", "code": c});
        assert_eq!(kind(400, code("invalid_json")), "invalid_request_error");
        assert_eq!(kind(403, code("forbidden")), "permission_error");
        assert_eq!(kind(404, code("not_found")), "not_found_error");
        assert_eq!(
            kind(405, code("method_not_allowed")),
            "invalid_request_error"
        );
        assert_eq!(kind(409, code("session_busy")), "invalid_request_error");
        assert_eq!(kind(413, code("payload_too_large")), "request_too_large");
        assert_eq!(kind(429, code("budget_exceeded")), "rate_limit_error");
        assert_eq!(kind(500, code("internal_error")), "api_error");
        assert_eq!(kind(502, code("cli_crashed")), "api_error");
        let overloaded =
            json!({"error": "x", "code": "cli_api_error", "details": {"api_error_status": 529}});
        assert_eq!(kind(502, overloaded), "overloaded_error");
        let failed =
            json!({"error": "x", "code": "cli_api_error", "details": {"api_error_status": 500}});
        assert_eq!(kind(502, failed), "api_error");
        assert_eq!(kind(503, code("queue_full")), "overloaded_error");
        assert_eq!(kind(504, code("timeout")), "timeout_error");
    }
}
