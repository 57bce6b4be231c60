//! `POST /api/claude/batch`: several prompts, each its own task in the one queue (so the
//! concurrency limit holds for batches too). Batch runs are one-off runs, not session turns.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Deserialize;
use serde_json::{json, Value};
use validator::{Validate, ValidateArgs, ValidationError, ValidationErrors};

use actors::config::Config;
use actors::model::{Task, TaskMode, TaskStatus};

use super::auth::Caller;
use super::claude::{build_task, submit_all, success_body};
use super::error::ApiError;
use super::idempotency::{self, Claim, IdempotencyKey, Kind};
use super::run_request::{validate, RunRequest};
use super::validate::{rule, Rules, ValidatedJson};
use crate::state::AppState;

/// The batch body: `prompts` plus the run fields shared by every prompt. Those fields, and each
/// prompt, are checked by [`RunRequest`]'s rules, one prompt at a time.
#[derive(Debug, Deserialize, utoipa::ToSchema, Validate)]
#[validate(context = Config)]
pub struct BatchRequest {
    /// 1 to `limits.maxBatch` prompts, each run as its own task.
    #[validate(custom(function = "batch_size", use_context))]
    pub prompts: Vec<String>,
    pub project_path: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub append_system_prompt: Option<String>,
    pub max_budget_usd: Option<f64>,
    pub max_turns: Option<i64>,
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Option<Vec<String>>,
    pub permission_mode: Option<String>,
    pub timeout_ms: Option<i64>,
    #[serde(rename = "async")]
    pub is_async: Option<bool>,
    pub priority: Option<i64>,
    pub webhook_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Ask over HTTP before tool calls that need permission; default `permissions.approvalsDefault`.
    pub approvals: Option<bool>,
}

impl Rules for BatchRequest {
    const FIELDS: &'static [&'static str] = &["prompts"];

    fn rules(&self, config: &Config) -> Result<(), ValidationErrors> {
        self.validate_with_args(config)
    }
}

fn batch_size(prompts: &[String], config: &Config) -> Result<(), ValidationError> {
    let max = config.limits.max_batch as usize;
    if prompts.is_empty() || prompts.len() > max {
        return Err(rule(format!(
            "must hold 1 to {max} prompts (limits.maxBatch)"
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/claude/batch", tag = "runs", operation_id = "runBatch",
    summary = "Run up to 10 prompts at once", request_body = crate::http::batch::BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key runs once")),
    responses((status = 200, body = crate::http::schema::BatchAnswer), (status = 202, body = crate::http::schema::BatchAsyncAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn run_batch(
    state: AppState,
    caller: Caller,
    idem: IdempotencyKey,
    ValidatedJson(req): ValidatedJson<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let config = state.config();
    state
        .stats
        .check_budget(caller.key_name.as_deref(), &config)
        .await?;
    let is_async = req.is_async.unwrap_or(false);
    let mut tasks = Vec::with_capacity(req.prompts.len());
    for (i, prompt) in req.prompts.iter().enumerate() {
        let one = RunRequest {
            prompt: prompt.clone(),
            project_path: req.project_path.clone(),
            model: req.model.clone(),
            system_prompt: req.system_prompt.clone(),
            append_system_prompt: req.append_system_prompt.clone(),
            max_budget_usd: req.max_budget_usd,
            max_turns: req.max_turns,
            allowed_tools: req.allowed_tools.clone(),
            disallowed_tools: req.disallowed_tools.clone(),
            permission_mode: req.permission_mode.clone(),
            timeout_ms: req.timeout_ms,
            is_async: req.is_async,
            priority: req.priority,
            webhook_url: req.webhook_url.clone(),
            metadata: req.metadata.clone(),
            approvals: req.approvals,
            ..Default::default()
        };
        let run = validate(one, &config).map_err(|mut e| {
            // Name the prompt the problem is in.
            if let Some(field) = e.details.as_mut().and_then(|d| d.get_mut("field")) {
                if field == "prompt" {
                    *field = json!(format!("prompts[{i}]"));
                    e.message = e.message.replace("`prompt`", &format!("`prompts[{i}]`"));
                }
            }
            e
        })?;
        tasks.push(build_task(run, TaskMode::Batch, &caller));
    }

    let ids: Vec<uuid::Uuid> = tasks.iter().map(|t| t.id).collect();
    let kind = if is_async {
        Kind::BatchAsync
    } else {
        Kind::BatchSync
    };
    let prompts = req.prompts.join("\u{1f}");
    // Claim the key and queue the tasks on a task of their own: a client that goes away
    // halfway must not leave some tasks queued, or a stored batch whose key was given back.
    let admitted = {
        let (state, caller) = (state.clone(), caller.clone());
        tokio::spawn(async move {
            let claim =
                idempotency::claim(&state, &caller, &idem, kind, &ids, &prompts, batch_answer);
            let key = match claim.await? {
                Claim::Replay(replay) => return Ok(Err(replay)),
                Claim::Proceed(key) => key,
            };
            let submitted = submit_all(&state.queue, tasks, !is_async).await;
            Ok::<_, ApiError>(Ok(key.settle(submitted).await?))
        })
        .await
        .map_err(|_| {
            ApiError::new(
                actors::error::ErrorCode::InternalError,
                "The batch could not be queued.",
            )
        })??
    };
    let submitted = match admitted {
        Ok(submitted) => submitted,
        Err(replay) => return Ok(replay.into_response()),
    };
    if is_async {
        let answer = batch_async_answer(submitted.tasks());
        submitted.detach();
        return Ok(answer);
    }
    let finished = submitted
        .wait_all(&state.queue, config.cancel_on_disconnect)
        .await?;
    Ok(batch_answer(&finished))
}

/// The 202 of an async batch (and of its retry): every task's id, status and priority.
pub fn batch_async_answer<'a>(tasks: impl Iterator<Item = &'a Task> + Clone) -> HttpResponse {
    let ids: Vec<Value> = tasks.clone().map(|t| json!(t.id)).collect();
    let items: Vec<Value> = tasks
        .map(|t| json!({"task_id": t.id, "status": t.status, "priority": t.priority}))
        .collect();
    HttpResponse::build(StatusCode::ACCEPTED)
        .json(json!({"success": true, "task_ids": ids, "tasks": items}))
}

/// The 200 body of a sync batch: every result in order, and the summary.
pub fn batch_answer(finished: &[Task]) -> HttpResponse {
    let mut results = Vec::with_capacity(finished.len());
    let (mut ok, mut failed, mut cost, mut duration) = (0u64, 0u64, 0.0f64, 0u64);
    for t in finished {
        cost += t.cost_usd.unwrap_or(0.0);
        duration += t.duration_ms.unwrap_or(0);
        if t.status == TaskStatus::Completed {
            ok += 1;
            results.push(success_body(t));
        } else {
            failed += 1;
            results.push(ApiError::from_task(t).body());
        }
    }
    HttpResponse::build(StatusCode::OK).json(json!({
        "success": true,
        "results": results,
        "summary": {
            "total": finished.len(),
            "successful": ok,
            "failed": failed,
            "total_cost_usd": cost,
            "total_duration_ms": duration,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::validate::check;

    #[test]
    fn prompts_hold_one_to_max_batch() {
        let mut config =
            Config::from_merged(actors::config::load::defaults_doc()).expect("defaults");
        config.limits.max_batch = 2;
        let body = |n: usize| {
            let prompts = vec!["p"; n];
            serde_json::from_value::<BatchRequest>(json!({ "prompts": prompts })).expect("shape")
        };
        for n in [0, 3] {
            let e = check(&body(n), &config).expect_err("refused");
            assert_eq!(
                e.details,
                Some(
                    json!({"field": "prompts", "rule": "must hold 1 to 2 prompts (limits.maxBatch)"})
                )
            );
        }
        assert!(check(&body(2), &config).is_ok());
    }
}
