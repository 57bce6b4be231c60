//! Approvals over HTTP (`api.md` § Approvals): a run with `approvals` asks before each tool call
//! that needs permission; these routes list the requests and decide them.
//!
//! Tenancy is the task's: a key sees and decides the approvals of its own tasks, an admin key
//! those of every task; anything else is "not found". A decision is a compare-and-set in the
//! store (the first decision, or the expiry, wins: a later one is 409), after which the run is
//! woken, wherever it runs, and answers its CLI from the stored record.

use actix_web::web;
use actix_web::web::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use validator::{Validate, ValidationError, ValidationErrors};

use actors::approval::{ApprovalFilter, ApprovalStatus, Decided, Decision};
use actors::config::Config;
use actors::error::ErrorCode;

use super::auth::Caller;
use super::error::ApiError;
use super::params::{page, text, QueryMap, MAX_LIMIT};
use super::tasks::visible_task;
use super::validate::{rule, Rules, ValidatedJson};
use crate::state::AppState;

/// The body of `POST /api/tasks/{id}/approvals/{approval_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema, Validate)]
pub struct DecisionRequest {
    /// `allow` (the tool runs) or `deny` (the model is told `message`).
    #[schema(value_type = String, required = true, pattern = "^(allow|deny)$")]
    #[validate(
        required(message = "is required: allow or deny"),
        custom(function = "decision_rule")
    )]
    pub decision: Option<String>,
    /// Stored with the decision; for `deny`, the text the model receives as the tool's error.
    #[validate(custom(function = "no_nul"))]
    pub message: Option<String>,
    /// With `allow`: run the tool with this input (an object) instead of the requested one.
    #[schema(value_type = Option<Object>)]
    #[validate(custom(function = "object_rule"))]
    pub updated_input: Option<Value>,
}

impl Rules for DecisionRequest {
    const FIELDS: &'static [&'static str] = &["decision", "message", "updated_input"];

    fn rules(&self, _: &Config) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

fn decision_rule(decision: &str) -> Result<(), ValidationError> {
    match decision {
        "allow" | "deny" => Ok(()),
        _ => Err(rule("must be allow or deny")),
    }
}

fn no_nul(text: &str) -> Result<(), ValidationError> {
    if text.contains('\0') {
        return Err(rule("must not contain NUL characters"));
    }
    Ok(())
}

fn object_rule(value: &Value) -> Result<(), ValidationError> {
    if !value.is_object() {
        return Err(rule("must be an object"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/tasks/{id}/approvals", tag = "approvals", operation_id = "listTaskApprovals",
    summary = "A task's approvals", params(("id" = String, Path, description = "Task id (UUID)")),
    responses((status = 200, description = "Oldest request first; empty for a run without approvals", body = crate::http::schema::ApprovalList), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn task_approvals(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let approvals = state.store.task_approvals(task.id).await?;
    let items: Vec<Value> = approvals.iter().map(|a| a.to_api_json()).collect();
    Ok(Json(json!({"success": true, "approvals": items})))
}

#[utoipa::path(get, path = "/api/approvals", tag = "approvals", operation_id = "listApprovals",
    summary = "Approvals the caller may see",
    params(("status" = Option<String>, Query, description = "pending|allowed|denied|expired"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 1000)")),
    responses((status = 200, description = "Oldest request first", body = crate::http::schema::ApprovalList), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_approvals(
    state: AppState,
    caller: Caller,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let status = match text(&q, "status") {
        None => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::field(
                "status",
                "must be one of: pending, allowed, denied, expired",
            )
        })?),
    };
    let limit = if q.contains_key("limit") {
        page(&q)?.limit
    } else {
        MAX_LIMIT
    };
    let filter = ApprovalFilter {
        status,
        owner: caller.owner_filter(),
        limit,
    };
    let approvals = state.store.list_approvals(&filter).await?;
    let items: Vec<Value> = approvals.iter().map(|a| a.to_api_json()).collect();
    Ok(Json(json!({"success": true, "approvals": items})))
}

#[utoipa::path(post, path = "/api/tasks/{id}/approvals/{approval_id}", tag = "approvals", operation_id = "decideApproval",
    summary = "Allow or deny a pending approval", request_body = crate::http::approvals::DecisionRequest,
    params(("id" = String, Path, description = "Task id (UUID)"), ("approval_id" = String, Path, description = "Approval id (UUID)")),
    responses((status = 200, body = crate::http::schema::ApprovalEnvelope),
        (status = 409, description = "The approval is no longer pending", body = crate::http::schema::ErrorBody),
        crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn decide(
    state: AppState,
    caller: Caller,
    path: web::Path<(String, String)>,
    ValidatedJson(req): ValidatedJson<DecisionRequest>,
) -> Result<Json<Value>, ApiError> {
    let (task_id, approval_id) = path.into_inner();
    let task = visible_task(&state, &caller, &task_id).await?;
    let approval_id = Uuid::parse_str(&approval_id).map_err(|_| ApiError::not_found("Approval"))?;
    let decision = match req.decision.as_deref() {
        Some("allow") => Decision::Allow {
            message: req.message,
            updated_input: req.updated_input,
        },
        // The rules admit only allow and deny.
        _ => Decision::Deny {
            message: req.message,
        },
    };
    // A run that has ended cannot be answered: a pending approval left by it (its expiry
    // could not be written then) expires now instead of recording a decision nobody acts on.
    let state_now = if task.status.is_final() {
        actors::approval::expired(Utc::now())
    } else {
        decision.into_state(caller.key_name.clone(), Utc::now())
    };
    match state
        .store
        .decide_approval(task.id, approval_id, state_now)
        .await?
    {
        Decided::Now(a) if task.status.is_final() => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("Approval {} is no longer pending: its run has ended.", a.id),
        )
        .with_details(json!({"status": a.status().as_str(), "approval": a.to_api_json()}))),
        Decided::Now(a) => {
            log::info!(task_id:% = task.id, approval_id:% = a.id, status = a.status().as_str(), by:? = caller.key_name; "approval decided");
            state.queue.events().approvals().wake(task.id).await;
            Ok(Json(json!({"success": true, "approval": a.to_api_json()})))
        }
        Decided::Already(a) => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!(
                "Approval {} is no longer pending (it is {}).",
                a.id,
                a.status().as_str()
            ),
        )
        .with_details(json!({"status": a.status().as_str(), "approval": a.to_api_json()}))),
        Decided::Missing => Err(ApiError::not_found("Approval")),
    }
}
