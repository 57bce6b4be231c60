//! Authentication: who is calling. Keys come from `auth.apiKeys` and are sent as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//!
//! Keys are compared in constant time: both sides are hashed to 32 bytes and every configured
//! key is compared, so neither the position of a match nor a key's length shows in the timing.
//! A key never appears in a log line or a response.

use std::net::IpAddr;

use std::future::{ready, Ready};

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use actors::config::{ApiKeyConfig, Config};
use actors::error::ErrorCode;

use super::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The name of the API key used (`None`: anonymous, allowed when no keys are configured).
    pub key_name: Option<String>,
    pub admin: bool,
    pub ip: Option<IpAddr>,
}

impl Caller {
    /// What this caller may list: `None` = everything (admin), else only its own records.
    pub fn owner_filter(&self) -> Option<Option<String>> {
        if self.admin {
            None
        } else {
            Some(self.key_name.clone())
        }
    }

    /// Whether a record owned by `owner` is visible to this caller (others' records are 404).
    pub fn can_see(&self, owner: &Option<String>) -> bool {
        self.admin || *owner == self.key_name
    }

    /// The owner to record on what this caller creates.
    pub fn owner(&self) -> Option<String> {
        self.key_name.clone()
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::InternalError,
                "The request was not authenticated.",
            )
        }))
    }
}

/// Paths anyone may call: health for load balancers, metrics when `metrics.public`, the API
/// documents.
fn is_open(path: &str, config: &Config) -> bool {
    path == "/health"
        || (path == "/metrics" && config.metrics.public)
        // The API's description is public, like any published API reference.
        || path == "/api/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
}

/// Middleware: identify the caller, or answer 401.
pub async fn authenticate(
    state: AppState,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let config = state.config();
    let ip = req.peer_addr().map(|p| p.ip());
    let caller = if config.auth.api_keys.is_empty() {
        // No keys: the server listens on loopback only (or the operator allowed anonymous
        // access), and the local caller is the admin.
        Caller {
            key_name: None,
            admin: true,
            ip,
        }
    } else {
        match presented_key(req.headers()).and_then(|k| find_key(&config.auth.api_keys, k)) {
            Some(k) => Caller {
                key_name: Some(k.name.clone()),
                admin: k.admin,
                ip,
            },
            None if is_open(req.path(), &config) => Caller {
                key_name: None,
                admin: false,
                ip,
            },
            None => {
                let resp = unauthorized(presented_key(req.headers()).is_some());
                return Ok(req.into_response(resp));
            }
        }
    };
    // In the request's extensions: for the routes (the `Caller` extractor), the rate limit
    // layer, and the access log after the answer (it names the key, never the key itself).
    req.extensions_mut().insert(caller);
    next.call(req).await
}

fn unauthorized(had_key: bool) -> HttpResponse {
    let message = if had_key {
        "The API key is not valid."
    } else {
        "An API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."
    };
    let mut resp = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// The key the request carries, from `Authorization: Bearer` or `X-API-Key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    bearer
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|k| !k.is_empty())
}

/// Constant-time lookup: every configured key is compared, whatever matches first.
pub fn find_key<'a>(keys: &'a [ApiKeyConfig], presented: &str) -> Option<&'a ApiKeyConfig> {
    let presented_hash = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for k in keys {
        let hash = Sha256::digest(k.key.as_bytes());
        if bool::from(hash.as_slice().ct_eq(presented_hash.as_slice())) {
            found = Some(k);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, key: &str, admin: bool) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            key: key.into(),
            admin,
            rate_limit: None,
            daily_budget_usd: None,
        }
    }

    #[test]
    fn keys_are_found_by_value() {
        let keys = vec![
            key("a", "key-aaaaaaaa", false),
            key("b", "key-bbbbbbbb", true),
        ];
        assert_eq!(
            find_key(&keys, "key-bbbbbbbb").map(|k| k.name.as_str()),
            Some("b")
        );
        assert!(find_key(&keys, "key-bbbbbbb").is_none());
        assert!(find_key(&keys, "").is_none());
    }

    #[test]
    fn both_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented_key(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(presented_key(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(
            header::HeaderName::from_static("x-api-key"),
            header::HeaderValue::from_static("xyz"),
        );
        assert_eq!(presented_key(&h), Some("xyz"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Basic abc"),
        );
        assert_eq!(presented_key(&h), None);
    }

    #[test]
    fn tenancy() {
        let a = Caller {
            key_name: Some("a".into()),
            admin: false,
            ip: None,
        };
        let admin = Caller {
            key_name: Some("root".into()),
            admin: true,
            ip: None,
        };
        assert!(a.can_see(&Some("a".into())));
        assert!(!a.can_see(&Some("b".into())));
        assert!(!a.can_see(&None));
        assert!(admin.can_see(&Some("b".into())));
        assert_eq!(a.owner_filter(), Some(Some("a".into())));
        assert_eq!(admin.owner_filter(), None);
    }
}
