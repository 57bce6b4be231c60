//! Query-string parameters with the contract's rules: `limit` 1..=1000 (default 50),
//! `offset` ≥ 0; anything else is a 400 that names the parameter.

use std::collections::HashMap;

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};

use super::error::ApiError;

/// The query string as a map; a malformed one is a JSON 400 like every other error.
pub struct QueryMap(pub HashMap<String, String>);

impl FromRequest for QueryMap {
    type Error = ApiError;
    type Future = Ready<Result<QueryMap, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            serde_urlencoded::from_str::<HashMap<String, String>>(req.query_string())
                .map(QueryMap)
                .map_err(|_| ApiError::field("(query)", "is not a valid query string")),
        )
    }
}

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u32,
}

pub fn page(q: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| ApiError::field("offset", "must be a non-negative integer"))?,
    };
    Ok(Page { limit, offset })
}

/// A non-empty string parameter, if present.
pub fn text<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits_and_offsets() {
        assert_eq!(
            page(&q(&[])).ok(),
            Some(Page {
                limit: 50,
                offset: 0
            })
        );
        assert_eq!(
            page(&q(&[("limit", "1000"), ("offset", "7")])).ok(),
            Some(Page {
                limit: 1000,
                offset: 7
            })
        );
        for bad in ["0", "1001", "-1", "x", "2.5"] {
            let e = page(&q(&[("limit", bad)])).expect_err(bad);
            assert_eq!(
                e.details.as_ref().and_then(|d| d["field"].as_str()),
                Some("limit")
            );
        }
        assert!(page(&q(&[("offset", "-3")])).is_err());
    }
}
