//! Per-key daily budgets as HTTP errors. Run handlers call
//! `state.stats.check_budget(caller.key_name.as_deref(), &config).await?` before accepting a
//! run; a spent budget is 429 `budget_exceeded` with `Retry-After` until the next UTC midnight.

use serde_json::json;

use actors::error::ErrorCode;
use actors::model::rfc3339;
use actors::stats::BudgetError;

use super::error::ApiError;

impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> ApiError {
        match e {
            BudgetError::Exceeded {
                limit_usd,
                spent_usd,
                retry_after_secs,
                resets_at,
            } => ApiError {
                retry_after_secs: Some(retry_after_secs),
                ..ApiError::new(
                    ErrorCode::BudgetExceeded,
                    format!(
                        "The daily budget of this API key ({limit_usd} USD) is spent; it renews at midnight UTC."
                    ),
                )
                .with_details(json!({
                    "daily_budget_usd": limit_usd,
                    "spent_today_usd": spent_usd,
                    "resets_at": rfc3339(&resets_at),
                }))
            },
            // Shared statistics (Redis) cannot be read: like any storage outage.
            BudgetError::Storage(e) => e.into(),
            // The statistics actor stops only after the queue: the server is shutting down.
            BudgetError::Unavailable => ApiError::new(
                ErrorCode::ShuttingDown,
                "The server is shutting down and accepts no new runs.",
            ),
        }
    }
}
