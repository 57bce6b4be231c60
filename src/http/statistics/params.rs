//! Query parameters of the statistics routes: `limit`, `offset`, `start`, `end`. A bad value is
//! 400 `validation_error` naming the parameter; unknown parameters are ignored.

use std::collections::HashMap;

use chrono::NaiveDate;

use crate::http::error::ApiError;
use crate::http::params::QueryMap;

pub const MAX_LIMIT: usize = 1000;

pub struct Params(HashMap<String, String>);

impl Params {
    pub fn from_query(QueryMap(map): QueryMap) -> Params {
        Params(map)
    }

    /// `limit`: an integer from 1 to [`MAX_LIMIT`]; `default` when absent.
    pub fn limit(&self, default: usize) -> Result<usize, ApiError> {
        match self.0.get("limit") {
            None => Ok(default),
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::field("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                }),
        }
    }

    /// `offset`: an integer ≥ 0; 0 when absent.
    pub fn offset(&self) -> Result<usize, ApiError> {
        match self.0.get("offset") {
            None => Ok(0),
            Some(raw) => raw
                .parse::<usize>()
                .map_err(|_| ApiError::field("offset", "must be an integer of 0 or more")),
        }
    }

    /// A required date parameter, `YYYY-MM-DD`.
    pub fn date(&self, name: &str) -> Result<NaiveDate, ApiError> {
        let raw = self
            .0
            .get(name)
            .ok_or_else(|| ApiError::field(name, "is required (a date YYYY-MM-DD)"))?;
        parse_date(raw).ok_or_else(|| ApiError::field(name, "must be a date YYYY-MM-DD"))
    }
}

/// Strictly `YYYY-MM-DD` (chrono alone would take `2026-1-5`).
fn parse_date(raw: &str) -> Option<NaiveDate> {
    let b = raw.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use actors::error::ErrorCode;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn dates_are_strict() {
        assert!(parse_date("2026-03-04").is_some());
        for bad in [
            "2026-3-4",
            "2026-02-30",
            "26-03-04",
            "2026/03/04",
            "",
            "2026-03-04T00",
        ] {
            assert!(parse_date(bad).is_none(), "{bad}");
        }
        let e = params(&[("start", "yesterday")])
            .date("start")
            .expect_err("bad");
        assert_eq!(
            e.details.as_ref().map(|d| d["field"].clone()),
            Some("start".into())
        );
        let e = params(&[]).date("end").expect_err("missing");
        assert_eq!(e.code, ErrorCode::ValidationError);
    }

    #[test]
    fn limits_and_offsets() {
        assert_eq!(params(&[]).limit(30).ok(), Some(30));
        assert_eq!(params(&[("limit", "1000")]).limit(30).ok(), Some(1000));
        for bad in ["0", "1001", "-1", "2.5", "x"] {
            assert!(params(&[("limit", bad)]).limit(30).is_err(), "{bad}");
        }
        assert_eq!(params(&[("offset", "3")]).offset().ok(), Some(3));
        assert!(params(&[("offset", "-3")]).offset().is_err());
    }
}
