//! Per-key daily budgets (`auth.apiKeys[].dailyBudgetUsd`): the pure decision.
//!
//! A run is refused when the key's spend today (UTC) has reached its budget. The spend is what
//! finished runs cost; runs still going are not known yet, so concurrent runs can together pass
//! the budget by at most what they cost (the check happens before a run, as api.md asks).

use chrono::{DateTime, Days, Utc};

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("the daily budget of {limit_usd} USD is spent ({spent_usd} USD today)")]
    Exceeded {
        limit_usd: f64,
        spent_usd: f64,
        /// Seconds until the next UTC midnight, when the budget starts again.
        retry_after_secs: u64,
        /// That midnight.
        resets_at: DateTime<Utc>,
    },
    /// The spend could not be read (the statistics actor is gone: shutting down).
    #[error("the spend of this key could not be checked")]
    Unavailable,
    /// The spend could not be read from the shared statistics (Redis unavailable).
    #[error("the spend of this key could not be read: {0}")]
    Storage(crate::store::StoreError),
}

/// The daily budget of the key named `owner`, if it has one (anonymous callers have none).
pub fn daily_budget(config: &Config, owner: Option<&str>) -> Option<f64> {
    let name = owner?;
    config
        .auth
        .api_keys
        .iter()
        .find(|k| k.name == name)
        .and_then(|k| k.daily_budget_usd)
}

/// Refuse when `spent` has reached `limit`.
pub fn decide(limit: f64, spent: f64, now: DateTime<Utc>) -> Result<(), BudgetError> {
    if spent < limit {
        return Ok(());
    }
    let resets_at = next_utc_midnight(now);
    let secs = (resets_at - now).num_milliseconds().max(0) as u64;
    Err(BudgetError::Exceeded {
        limit_usd: limit,
        spent_usd: spent,
        // Rounded up so a client that waits this long finds the budget renewed.
        retry_after_secs: secs.div_ceil(1000).max(1),
        resets_at,
    })
}

pub fn next_utc_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let today = now.date_naive();
    let tomorrow = today.checked_add_days(Days::new(1)).unwrap_or(today);
    tomorrow.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32, ms: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 2, 28, h, m, s)
            .single()
            .expect("time")
            + chrono::Duration::milliseconds(ms.into())
    }

    #[test]
    fn spend_below_the_budget_passes() {
        assert_eq!(decide(0.5, 0.0, at(12, 0, 0, 0)), Ok(()));
        assert_eq!(decide(0.5, 0.499_999, at(12, 0, 0, 0)), Ok(()));
    }

    #[test]
    fn reaching_the_budget_refuses_until_midnight() {
        let Err(BudgetError::Exceeded {
            retry_after_secs,
            resets_at,
            ..
        }) = decide(0.5, 0.5, at(23, 0, 0, 0))
        else {
            panic!("expected a refusal");
        };
        assert_eq!(retry_after_secs, 3600);
        assert_eq!(resets_at.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        let Err(BudgetError::Exceeded {
            retry_after_secs, ..
        }) = decide(0.5, 0.6, at(23, 59, 59, 400))
        else {
            panic!("expected a refusal");
        };
        // 0.6 s left: rounded up, never 0.
        assert_eq!(retry_after_secs, 1);
    }

    #[test]
    fn budgets_come_from_the_key() {
        let mut doc: serde_json::Value =
            serde_json::from_str(crate::config::DEFAULT_JSON).expect("defaults");
        doc["auth"]["apiKeys"] = serde_json::json!([
            {"name": "a", "key": "key-aaaaaaaa", "dailyBudgetUsd": 2.5},
            {"name": "b", "key": "key-bbbbbbbb"}
        ]);
        let config = Config::from_merged(doc).expect("config");
        assert_eq!(daily_budget(&config, Some("a")), Some(2.5));
        assert_eq!(daily_budget(&config, Some("b")), None);
        assert_eq!(daily_budget(&config, Some("gone")), None);
        assert_eq!(daily_budget(&config, None), None);
    }
}
