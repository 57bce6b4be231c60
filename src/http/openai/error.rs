//! OpenAI's error shape, for `/v1` requests in OpenAI's dialect (see [`Dialect`]):
//! `{"error":{"message","type","param","code"}}`.
//!
//! Every layer of the service answers with the native error body; the dialect middleware
//! ([`convert_errors`]) converts it with [`from_native`] on its way out, and the stream writers
//! convert a mid-stream `error` event with the same function.
//!
//! [`Dialect`]: crate::http::dialect::Dialect
//! [`convert_errors`]: crate::http::dialect::convert_errors

use actix_web::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

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
/// `prompt_field` is the request field the prompt came from (`messages`, `input`): what a
/// refusal of the native `prompt` or system prompt names as `param`.
pub fn from_native(status: StatusCode, native: &Value, prompt_field: &str) -> ErrorEnvelope {
    let code = native.get("code").and_then(Value::as_str);
    let message = super::super::dialect::native_message(status, native);
    let param = native
        .get("details")
        .and_then(|d| d.get("field"))
        .and_then(Value::as_str)
        .map(|field| request_field(field, prompt_field));
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
/// into; an OpenAI client knows them by the field it sent (`messages`, `input`).
fn request_field(native: &str, prompt_field: &str) -> String {
    match native {
        "prompt" | "append_system_prompt" | "system_prompt" => prompt_field.to_string(),
        other => other.to_string(),
    }
}

/// The request field a route's prompt comes from: `input` on the Responses API, `messages`
/// everywhere else.
pub fn prompt_field(path: &str) -> &'static str {
    if path.starts_with("/v1/responses") {
        "input"
    } else {
        "messages"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn native_bodies_become_openai_errors() {
        let native = json!({"success": false, "error": "Field `n` must be 1.", "code": "validation_error",
                            "details": {"field": "n", "rule": "must be 1"}});
        let e = from_native(StatusCode::BAD_REQUEST, &native, "messages");
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"error":{"message":"Field `n` must be 1.","type":"invalid_request_error","param":"n","code":"validation_error"}}"#
        );
        let e = from_native(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": "spent", "code": "budget_exceeded"}),
            "messages",
        );
        assert_eq!(e.error.kind, "insufficient_quota");
        let e = from_native(
            StatusCode::BAD_GATEWAY,
            &json!({"error": "x", "code": "cli_api_error"}),
            "messages",
        );
        assert_eq!((e.error.kind, e.error.param), ("server_error", None));
        let e = from_native(StatusCode::UNAUTHORIZED, &Value::Null, "messages");
        assert_eq!(e.error.kind, "authentication_error");
        assert!(e.error.message.contains("401"));
        let e = from_native(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": "big", "code": "payload_too_large", "details": {"field": "prompt"}}),
            prompt_field("/v1/responses"),
        );
        assert_eq!(e.error.param.as_deref(), Some("input"));
        assert_eq!(prompt_field("/v1/chat/completions"), "messages");
    }
}
