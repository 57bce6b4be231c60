//! `ApiJson<T>`: the JSON body extractor. Checks the content type (415), the size against
//! `limits.maxBodyBytes` read live from the config (413), the syntax (400 `invalid_json`) and
//! the shape, naming the field that does not fit (400 `validation_error`).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::json;

use actors::error::ErrorCode;

use super::error::ApiError;
use crate::state::AppState;

pub struct ApiJson<T>(pub T);

/// How long a refused (non-JSON) body may take to arrive before the answer goes out without it.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config().limits.max_body_bytes;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(content_type) {
            // Read (and drop) a body within the limit that arrives promptly, so the connection
            // stays usable; past either, the answer says `Connection: close` (unread_body.rs).
            let drain = Limited::new(
                req.into_body(),
                usize::try_from(limit).unwrap_or(usize::MAX),
            )
            .collect();
            let _ = tokio::time::timeout(DRAIN_WITHIN, drain).await;
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "The body must be JSON, sent with `Content-Type: application/json`.",
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let body: Body = req.into_body();
        let bytes = match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large(limit))
            }
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidJson,
                    "The request body could not be read.",
                ))
            }
        };
        parse_json(&bytes).map(ApiJson)
    }
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
