//! The one error type of the HTTP layer. Every failure, from routing to the CLI, becomes
//! `{"success":false,"error","code","details"?,"task_id"?,"session_id"?}` with the status the
//! error-code table gives.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Value};
use uuid::Uuid;

use actors::error::ErrorCode;
use actors::model::{Task, TaskError};
use actors::queue::QueueError;
use actors::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    pub task_id: Option<Uuid>,
    pub session_id: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: None,
            task_id: None,
            session_id: None,
            retry_after_secs: None,
        }
    }

    /// A field failed a rule: 400 with `details.field` and `details.rule`.
    pub fn field(field: &str, rule: impl Into<String>) -> ApiError {
        let rule = rule.into();
        ApiError::new(
            ErrorCode::ValidationError,
            format!("Field `{field}` {rule}."),
        )
        .with_details(json!({"field": field, "rule": rule}))
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found."))
    }

    pub fn with_session(mut self, id: Uuid) -> ApiError {
        self.session_id = Some(id.to_string());
        self
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// The error a task ended with, carrying its ids.
    pub fn from_task(task: &Task) -> ApiError {
        let fallback = TaskError::new(
            ErrorCode::InternalError,
            "The task ended without an error record.",
        );
        let err = task.error.as_ref().unwrap_or(&fallback);
        ApiError {
            code: err.code,
            message: err.message.clone(),
            details: err.details.clone(),
            task_id: Some(task.id),
            session_id: task
                .session_id
                .map(|s| s.to_string())
                .or_else(|| task.report.as_ref().and_then(|r| r.session_id.clone())),
            retry_after_secs: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn body(&self) -> Value {
        let mut body = json!({"success": false, "error": self.message, "code": self.code});
        if let Some(obj) = body.as_object_mut() {
            if let Some(d) = &self.details {
                obj.insert("details".into(), d.clone());
            }
            if let Some(t) = self.task_id {
                obj.insert("task_id".into(), json!(t));
            }
            if let Some(s) = &self.session_id {
                obj.insert("session_id".into(), json!(s));
            }
            if let Some(r) = self.retry_after_secs {
                obj.insert("retry_after".into(), json!(r));
            }
        }
        body
    }
}

impl ApiError {
    /// The response: the status of the code, the JSON body, and `Retry-After` when set.
    pub fn into_response(self) -> HttpResponse {
        self.error_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// Handlers and extractors return `Result<_, ApiError>`; actix-web answers the error with this.
impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        if self.code == ErrorCode::InternalError {
            log::error!(message:% = self.message; "internal error");
        }
        let mut resp = HttpResponse::build(self.status());
        if let Some(secs) = self.retry_after_secs {
            resp.insert_header((header::RETRY_AFTER, secs));
        }
        resp.json(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        log::error!(error:% = e; "storage error");
        ApiError::new(
            ErrorCode::StorageUnavailable,
            "Storage is unavailable; try again shortly.",
        )
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        match e {
            QueueError::Store(s) => s.into(),
            QueueError::NotFound => ApiError::not_found("Task"),
            other => ApiError::new(other.code(), format!("{}.", capitalise(&other.to_string()))),
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Answer for unknown routes (the app's default service).
pub async fn route_not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("No route for {}.", req.path()),
    )
    .into_response()
}

/// Answer for a known route called with the wrong method (each resource's default service).
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("Method {} is not allowed on {}.", req.method(), req.path()),
    )
    .into_response()
}
