//! The one table of error codes. Every error body the service sends, and every error a task
//! records, carries one of these codes; the HTTP status comes from here and nowhere else.

use serde::{Deserialize, Serialize};

/// A machine-readable error code (`code` in every error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // ---- request problems (4xx)
    /// Malformed JSON body.
    InvalidJson,
    /// A field failed validation (`details.field`, `details.rule`).
    ValidationError,
    /// `project_path` does not exist or is not a directory.
    InvalidProjectPath,
    /// `webhook_url` is not an acceptable http(s) URL.
    InvalidWebhookUrl,
    /// `project_path` resolves outside `allowedProjectRoots`.
    ForbiddenPath,
    /// A feature the config turns off, or an action the key may not take.
    Forbidden,
    /// Missing or wrong API key.
    Unauthorized,
    /// Unknown id.
    NotFound,
    /// Unknown route.
    RouteNotFound,
    /// Known route, wrong method.
    MethodNotAllowed,
    /// The task is not in a state that allows this (cancel a finished task, ...).
    InvalidState,
    /// Another turn of the session is running.
    SessionBusy,
    /// The session is closed or archived and takes no more turns.
    SessionClosed,
    /// Body over `limits.maxBodyBytes`.
    PayloadTooLarge,
    /// Body is not `application/json`.
    UnsupportedMediaType,
    /// Too many requests in the window.
    RateLimited,
    /// A budget (per run, per session, per key) is spent.
    BudgetExceeded,
    /// The run stopped at `max_turns`.
    MaxTurnsExceeded,
    // ---- the CLI failed (502)
    /// The CLI failed in a way not covered below.
    CliError,
    /// The CLI has no valid credentials.
    CliNotAuthenticated,
    /// The model API answered with an error (`details.api_error_status`).
    CliApiError,
    /// The CLI died without a result (crash or signal we did not send).
    CliCrashed,
    /// The CLI could not be started (missing or not executable).
    CliUnavailable,
    // ---- the run was stopped
    /// The run hit its wall-clock limit.
    Timeout,
    /// The run printed nothing for `taskQueue.idleTimeout`.
    IdleTimeout,
    /// The task was cancelled (DELETE, or the sync client went away).
    Cancelled,
    /// The server stopped while the task was running.
    Interrupted,
    // ---- the service
    /// More than `taskQueue.maxPending` tasks are waiting.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
    /// The storage backend cannot be reached.
    StorageUnavailable,
    /// A bug. Never expected.
    InternalError,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidJson | ValidationError | InvalidProjectPath | InvalidWebhookUrl => 400,
            Unauthorized => 401,
            ForbiddenPath | Forbidden => 403,
            NotFound | RouteNotFound => 404,
            MethodNotAllowed => 405,
            InvalidState | SessionBusy | SessionClosed | Cancelled => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            MaxTurnsExceeded => 422,
            RateLimited | BudgetExceeded => 429,
            CliError | CliNotAuthenticated | CliApiError | CliCrashed | CliUnavailable => 502,
            QueueFull | ShuttingDown | StorageUnavailable | Interrupted => 503,
            Timeout | IdleTimeout => 504,
            InternalError => 500,
        }
    }

    /// The snake_case name used in bodies.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidJson => "invalid_json",
            ValidationError => "validation_error",
            InvalidProjectPath => "invalid_project_path",
            InvalidWebhookUrl => "invalid_webhook_url",
            ForbiddenPath => "forbidden_path",
            Forbidden => "forbidden",
            Unauthorized => "unauthorized",
            NotFound => "not_found",
            RouteNotFound => "route_not_found",
            MethodNotAllowed => "method_not_allowed",
            InvalidState => "invalid_state",
            SessionBusy => "session_busy",
            SessionClosed => "session_closed",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RateLimited => "rate_limited",
            BudgetExceeded => "budget_exceeded",
            MaxTurnsExceeded => "max_turns_exceeded",
            CliError => "cli_error",
            CliNotAuthenticated => "cli_not_authenticated",
            CliApiError => "cli_api_error",
            CliCrashed => "cli_crashed",
            CliUnavailable => "cli_unavailable",
            Timeout => "timeout",
            IdleTimeout => "idle_timeout",
            Cancelled => "cancelled",
            Interrupted => "interrupted",
            QueueFull => "queue_full",
            ShuttingDown => "shutting_down",
            StorageUnavailable => "storage_unavailable",
            InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::CliNotAuthenticated,
            ErrorCode::MaxTurnsExceeded,
            ErrorCode::IdleTimeout,
            ErrorCode::StorageUnavailable,
        ] {
            let json = serde_json::to_value(code).expect("serialize");
            assert_eq!(json, serde_json::Value::String(code.as_str().to_string()));
        }
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ErrorCode::CliError.http_status(), 502);
        assert_eq!(ErrorCode::Timeout.http_status(), 504);
        assert_eq!(ErrorCode::QueueFull.http_status(), 503);
        assert_eq!(ErrorCode::ValidationError.http_status(), 400);
    }
}
