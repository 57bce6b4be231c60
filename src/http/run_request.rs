//! The body of a run request (`POST /api/claude` and friends) and its validation into a
//! [`RunSpec`]: every rule of the API contract and the config's policy is checked here, once,
//! before anything is stored or spawned.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use actors::claude::argv::neutralise_prompt;
use actors::config::Config;
use actors::error::ErrorCode;
use actors::model::{Priority, RunSpec, SessionMode};

use super::error::ApiError;

/// Largest `metadata` object, serialised.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Shortest `timeout_ms` accepted: a run needs time to start (and a shorter limit would turn
/// ordinary runs into timeouts).
pub const MIN_TIMEOUT_MS: i64 = 1000;
/// Largest `max_turns` accepted.
pub const MAX_TURNS_LIMIT: i64 = 10_000;

/// The fields of `api.md` § POST /api/claude. Unknown fields are ignored, so clients of the
/// Node original keep working. Types are strict: `"async":"false"` or `"priority":"9"` fail.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
pub struct RunRequest {
    /// Sent to the CLI on stdin; at most `limits.maxPromptBytes` bytes.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Working directory under `allowedProjectRoots` (default `defaultProjectPath`). Ignored on
    /// a session turn: the session's own directory is used.
    pub project_path: Option<String>,
    /// Default `defaultModel`; one of `allowedModels` when that is set.
    pub model: Option<String>,
    /// Continue this session (same as `POST /api/sessions/{id}/continue`).
    #[schema(format = Uuid)]
    pub session_id: Option<String>,
    pub system_prompt: Option<String>,
    pub append_system_prompt: Option<String>,
    /// Cap of the run in USD (default `maxBudgetUsd`); on a session turn, the session's budget.
    #[schema(exclusive_minimum = 0.0)]
    pub max_budget_usd: Option<f64>,
    #[schema(minimum = 1, maximum = 10000)]
    pub max_turns: Option<i64>,
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Option<Vec<String>>,
    /// One of `permissions.allowedModes`.
    pub permission_mode: Option<String>,
    pub agent: Option<String>,
    /// A file under an allowed root; only with `mcp.allowRequestConfig`.
    pub mcp_config: Option<String>,
    /// Wall-clock limit of the run, from 1000 ms to `taskQueue.maxTimeout`.
    #[schema(minimum = 1000)]
    pub timeout_ms: Option<i64>,
    /// Queue the run and answer 202 at once.
    #[serde(rename = "async")]
    pub is_async: Option<bool>,
    /// 1 (last) to 10 (first); default 10 for sync runs, 5 for async ones.
    #[schema(minimum = 1, maximum = 10)]
    pub priority: Option<i64>,
    /// http(s) URL notified when the task ends.
    pub webhook_url: Option<String>,
    /// Answer with Server-Sent Events.
    pub stream: Option<bool>,
    /// An object stored with the task; at most 16 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Send a `/command` prompt verbatim (needs `permissions.allowSlashCommands`).
    pub slash_command: Option<bool>,
}

/// A request that passed every rule.
#[derive(Debug)]
pub struct ValidatedRun {
    /// The id the task will have: chosen here so an idempotency claim can name it before
    /// anything is stored.
    pub task_id: Uuid,
    pub spec: RunSpec,
    /// `max_budget_usd` as the request gave it (the spec carries the default otherwise).
    pub requested_budget: Option<f64>,
    pub priority: Priority,
    pub is_async: bool,
    pub stream: bool,
    pub webhook_url: Option<String>,
    pub metadata: Option<Value>,
    pub session_id: Option<Uuid>,
}

pub fn validate(req: RunRequest, config: &Config) -> Result<ValidatedRun, ApiError> {
    let is_async = req.is_async.unwrap_or(false);
    let prompt = validate_prompt(&req.prompt, req.slash_command.unwrap_or(false), config)?;
    let project_path = resolve_project_path(req.project_path.as_deref(), config)?;
    let model = match req.model {
        Some(m) => Some(validate_model(m, config)?),
        None => Some(config.default_model.clone()),
    };
    let max_budget_usd = match req.max_budget_usd {
        Some(b) if b.is_finite() && b > 0.0 => Some(b),
        Some(_) => {
            return Err(ApiError::field(
                "max_budget_usd",
                "must be a number greater than 0",
            ))
        }
        None => Some(config.max_budget_usd),
    };
    let max_turns = match req.max_turns {
        Some(t) if (1..=MAX_TURNS_LIMIT).contains(&t) => Some(t as u32),
        Some(_) => {
            return Err(ApiError::field(
                "max_turns",
                format!("must be an integer from 1 to {MAX_TURNS_LIMIT}"),
            ))
        }
        None => None,
    };
    let timeout_ms = match req.timeout_ms {
        Some(t) if t >= MIN_TIMEOUT_MS && (t as u64) <= config.task_queue.max_timeout => t as u64,
        Some(_) => {
            return Err(ApiError::field(
                "timeout_ms",
                format!(
                    "must be an integer from {MIN_TIMEOUT_MS} to {} (taskQueue.maxTimeout)",
                    config.task_queue.max_timeout
                ),
            ))
        }
        None => config.task_queue.default_timeout,
    };
    let priority = match req.priority {
        Some(p) => Priority::new(p)
            .ok_or_else(|| ApiError::field("priority", "must be an integer from 1 to 10"))?,
        None if is_async => Priority::ASYNC_DEFAULT,
        None => Priority::SYNC_DEFAULT,
    };
    let permission_mode = req
        .permission_mode
        .map(|m| validate_permission_mode(m, config))
        .transpose()?;
    let allowed_tools = validate_tools(
        "allowed_tools",
        req.allowed_tools.unwrap_or_default(),
        config,
    )?;
    let disallowed_tools = validate_tools(
        "disallowed_tools",
        req.disallowed_tools.unwrap_or_default(),
        config,
    )?;
    let mcp_config = resolve_mcp_config(req.mcp_config.as_deref(), config)?;
    let metadata = req.metadata.map(validate_metadata).transpose()?;
    let webhook_url = req
        .webhook_url
        .map(|u| validate_webhook_url(u, config))
        .transpose()?;
    let session_id = req
        .session_id
        .map(|s| Uuid::parse_str(&s).map_err(|_| ApiError::field("session_id", "must be a UUID")))
        .transpose()?;
    for (name, value) in [
        ("system_prompt", &req.system_prompt),
        ("append_system_prompt", &req.append_system_prompt),
        ("agent", &req.agent),
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::field(name, "must not contain NUL characters"));
        }
    }
    Ok(ValidatedRun {
        task_id: Uuid::new_v4(),
        requested_budget: req.max_budget_usd,
        spec: RunSpec {
            prompt,
            project_path,
            model,
            system_prompt: req.system_prompt,
            append_system_prompt: req.append_system_prompt,
            max_budget_usd,
            max_turns,
            allowed_tools,
            disallowed_tools,
            permission_mode,
            agent: req.agent,
            mcp_config,
            session: SessionMode::None,
            timeout_ms,
        },
        priority,
        is_async,
        stream: req.stream.unwrap_or(false),
        webhook_url,
        metadata,
        session_id,
    })
}

fn validate_prompt(prompt: &str, slash_command: bool, config: &Config) -> Result<String, ApiError> {
    if prompt.trim().is_empty() {
        return Err(ApiError::field("prompt", "must not be empty"));
    }
    if prompt.len() as u64 > config.limits.max_prompt_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "Field `prompt` is larger than the limit of {} bytes (limits.maxPromptBytes).",
                config.limits.max_prompt_bytes
            ),
        )
        .with_details(
            serde_json::json!({"field": "prompt", "limit_bytes": config.limits.max_prompt_bytes}),
        ));
    }
    if slash_command && !config.permissions.allow_slash_commands {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "Slash commands are disabled on this server (permissions.allowSlashCommands).",
        ));
    }
    Ok(neutralise_prompt(prompt, slash_command))
}

pub fn validate_model(model: String, config: &Config) -> Result<String, ApiError> {
    if model.trim().is_empty() || model.contains('\0') {
        return Err(ApiError::field("model", "must be a non-empty model name"));
    }
    if !config.allowed_models.is_empty()
        && !config.allowed_models.contains(&model)
        && model != config.default_model
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("Model `{model}` is not allowed on this server (allowedModels)."),
        )
        .with_details(serde_json::json!({"field": "model", "allowed": config.allowed_models})));
    }
    Ok(model)
}

fn validate_permission_mode(mode: String, config: &Config) -> Result<String, ApiError> {
    if !actors::config::KNOWN_PERMISSION_MODES.contains(&mode.as_str()) {
        return Err(ApiError::field(
            "permission_mode",
            format!(
                "must be one of: {}",
                config.permissions.allowed_modes.join(", ")
            ),
        ));
    }
    if !config.permissions.allowed_modes.contains(&mode) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("Field `permission_mode`: mode `{mode}` is not allowed on this server (permissions.allowedModes)."),
        )
        .with_details(serde_json::json!({
            "field": "permission_mode",
            "allowed": config.permissions.allowed_modes,
        })));
    }
    Ok(mode)
}

/// Tool lists are intersected with `permissions.allowedTools` when it is set: a tool the server
/// does not allow is dropped, not passed through.
fn validate_tools(
    field: &str,
    tools: Vec<String>,
    config: &Config,
) -> Result<Vec<String>, ApiError> {
    for t in &tools {
        if t.trim().is_empty() || t.contains(',') || t.contains('\0') {
            return Err(ApiError::field(
                field,
                "must be a list of non-empty tool names without commas",
            ));
        }
    }
    Ok(match (&config.permissions.allowed_tools, field) {
        (Some(allowed), "allowed_tools") => {
            tools.into_iter().filter(|t| allowed.contains(t)).collect()
        }
        _ => tools,
    })
}

fn resolve_mcp_config(
    requested: Option<&str>,
    config: &Config,
) -> Result<Option<PathBuf>, ApiError> {
    match requested {
        Some(path) => {
            if !config.mcp.allow_request_config {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "A request may not name its own MCP config on this server (mcp.allowRequestConfig).",
                ));
            }
            let resolved = confine(Path::new(path), config, "mcp_config")?;
            if !resolved.is_file() {
                return Err(ApiError::field("mcp_config", "must name an existing file"));
            }
            Ok(Some(resolved))
        }
        None if config.mcp.enabled => Ok(config.mcp.config_path.as_deref().map(PathBuf::from)),
        None => Ok(None),
    }
}

pub fn validate_metadata(metadata: Value) -> Result<Value, ApiError> {
    if !metadata.is_object() {
        return Err(ApiError::field("metadata", "must be an object"));
    }
    let size = metadata.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::field(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes as JSON (it is {size})"),
        ));
    }
    Ok(metadata)
}

/// The URL's form: http(s), a host, no credentials; and, unless `webhook.allowPrivateTargets`,
/// no private/loopback/link-local IP literal or `localhost` host (names are checked again, after
/// resolution, at every delivery). Checked even when webhooks are disabled, so a task never
/// stores a URL that would be refused once they are enabled.
pub fn validate_webhook_url(url: String, config: &Config) -> Result<String, ApiError> {
    let invalid = |why: &str| {
        ApiError::new(
            ErrorCode::InvalidWebhookUrl,
            format!("Field `webhook_url` {why}."),
        )
        .with_details(serde_json::json!({"field": "webhook_url", "rule": why}))
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid("must be an http or https URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(invalid("must name a host"));
    }
    if authority.contains('@') {
        return Err(invalid("must not carry credentials"));
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "must be a well-formed URL of at most 2048 characters",
        ));
    }
    actors::webhook::policy::check_url(&url, config.webhook.allow_private_targets)
        .map_err(|refusal| invalid(&refusal.to_string()))?;
    Ok(url)
}

/// The project directory: the request's or `defaultProjectPath`, which must exist and resolve
/// (symlinks and `..` included) under one of `allowedProjectRoots`.
pub fn resolve_project_path(requested: Option<&str>, config: &Config) -> Result<PathBuf, ApiError> {
    let raw = match requested {
        Some(p) if p.trim().is_empty() || p.contains('\0') => {
            return Err(ApiError::field("project_path", "must be a non-empty path"))
        }
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(config.default_project_path.as_deref().unwrap_or(".")),
    };
    let resolved = confine(&raw, config, "project_path")?;
    if !resolved.is_dir() {
        return Err(ApiError::new(
            ErrorCode::InvalidProjectPath,
            "Field `project_path` must be a directory.",
        )
        .with_details(serde_json::json!({"field": "project_path"})));
    }
    Ok(resolved)
}

/// Canonicalise `path` and require it under an allowed root (both sides canonical, compared by
/// path components, so `/srv/a-evil` is not under `/srv/a`).
fn confine(path: &Path, config: &Config, field: &str) -> Result<PathBuf, ApiError> {
    if !path.is_absolute() {
        return Err(ApiError::field(field, "must be an absolute path"));
    }
    let resolved = std::fs::canonicalize(path).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidProjectPath,
            format!("Field `{field}` names a path that does not exist."),
        )
        .with_details(serde_json::json!({"field": field}))
    })?;
    let allowed = config
        .allowed_project_roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|root| resolved.starts_with(&root));
    if !allowed {
        return Err(ApiError::new(
            ErrorCode::ForbiddenPath,
            format!("Field `{field}` is outside the directories this server allows (allowedProjectRoots)."),
        )
        .with_details(serde_json::json!({"field": field})));
    }
    Ok(resolved)
}
