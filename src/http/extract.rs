//! `ApiJson<T>`: the JSON body extractor. Checks the content type (415), the size against
//! `limits.maxBodyBytes` read live from the config (413), the syntax (400 `invalid_json`) and
//! the shape, naming the field that does not fit (400 `validation_error`).

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use actors::error::ErrorCode;

use super::error::ApiError;
use crate::state::AppState;

/// The state every handler reads: registered once as app data (`http::app`).
impl FromRequest for AppState {
    type Error = ApiError;
    type Future = Ready<Result<AppState, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state_of(req))
    }
}

/// The app's state, from a request of the app.
pub fn state_of(req: &HttpRequest) -> Result<AppState, ApiError> {
    req.app_data::<AppState>()
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorCode::InternalError, "The app has no state."))
}

pub struct ApiJson<T>(pub T);

/// How long a refused (non-JSON) body may take to arrive before the answer goes out without it.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

impl<T: DeserializeOwned + 'static> FromRequest for ApiJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let state = state_of(req);
        let headers = req.headers();
        let is_json = is_json(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let payload = payload.take();
        Box::pin(async move {
            let limit = state?.config().limits.max_body_bytes;
            if !is_json {
                // Read (and drop) a body within the limit that arrives promptly, so the
                // connection stays usable; past either, the answer says `Connection: close`
                // (unread_body.rs).
                let _ = tokio::time::timeout(DRAIN_WITHIN, read_body(payload, limit)).await;
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "The body must be JSON, sent with `Content-Type: application/json`.",
                ));
            }
            if declared.is_some_and(|n| n > limit) {
                return Err(too_large(limit));
            }
            let bytes = read_body(payload, limit).await?;
            parse_json(&bytes).map(ApiJson)
        })
    }
}

/// The whole body, refused (413) as soon as it passes `limit` bytes.
async fn read_body(mut payload: Payload, limit: u64) -> Result<BytesMut, ApiError> {
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidJson,
                "The request body could not be read.",
            )
        })?;
        if body.len().saturating_add(chunk.len()) > max {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("The body is larger than the limit of {limit} bytes (limits.maxBodyBytes)."),
    )
    .with_details(json!({"limit_bytes": limit}))
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parse a body into `T`: syntax errors are `invalid_json`, shape errors name the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("The body is not valid JSON: {inner}."),
            )
        } else {
            let msg = inner.to_string();
            if let Some(name) = missing_field(&msg) {
                let field = if path == "." {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
                return ApiError::field(&field, "is required");
            }
            let field = if path == "." {
                "(body)".to_string()
            } else {
                path
            };
            ApiError::field(&field, describe_serde_error(&msg))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("The body is not valid JSON: {e}."),
        )
    })?;
    Ok(value)
}

/// `missing field `prompt`` → `prompt`.
fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// serde's messages end with " at line 1 column 20"; the field path already says where.
fn describe_serde_error(msg: &str) -> String {
    let trimmed = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    format!("is invalid: {trimmed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        prompt: String,
        #[serde(rename = "async")]
        is_async: Option<bool>,
        priority: Option<i64>,
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Req>(br#"{"prompt":"x","async":"false"}"#).expect_err("string bool");
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(
            e.details.as_ref().and_then(|d| d["field"].as_str()),
            Some("async")
        );
        let e = parse_json::<Req>(br#"{"prompt":"x","priority":"9"}"#).expect_err("string int");
        assert_eq!(
            e.details.as_ref().and_then(|d| d["field"].as_str()),
            Some("priority")
        );
        let e = parse_json::<Req>(br#"{"prompt":"x","priority":9.5}"#).expect_err("float");
        assert_eq!(
            e.details.as_ref().and_then(|d| d["field"].as_str()),
            Some("priority")
        );
        let e = parse_json::<Req>(br#"{"prompt":"x""#).expect_err("syntax");
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let e = parse_json::<Req>(br#"{}"#).expect_err("missing");
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(
            e.details.as_ref().and_then(|d| d["field"].as_str()),
            Some("prompt")
        );
        assert_eq!(
            e.details.as_ref().and_then(|d| d["rule"].as_str()),
            Some("is required")
        );
        let e = parse_json::<Req>(br#"{"prompt":"x"} {}"#).expect_err("trailing");
        assert_eq!(e.code, ErrorCode::InvalidJson);
    }
}
