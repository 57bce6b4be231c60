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

use validator::{Validate, ValidateArgs, ValidationError, ValidationErrors};

use super::error::ApiError;
use super::validate::{check, rule, Rules};

/// Largest `metadata` object, serialised.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Shortest `timeout_ms` accepted: a run needs time to start (and a shorter limit would turn
/// ordinary runs into timeouts).
pub const MIN_TIMEOUT_MS: i64 = 1000;
/// Largest `max_turns` accepted.
pub const MAX_TURNS_LIMIT: i64 = 10_000;
/// The range of `priority`, as the request's integer.
pub const PRIORITY_MIN: i64 = Priority::MIN as i64;
pub const PRIORITY_MAX: i64 = Priority::MAX as i64;

/// The fields of `api.md` § POST /api/claude. Unknown fields are ignored, so clients of the
/// Node original keep working. Types are strict: `"async":"false"` or `"priority":"9"` fail.
/// The rules are derived (`validator`); those that read the live config take it as context.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema, Validate)]
#[validate(context = Config)]
pub struct RunRequest {
    /// Sent to the CLI on stdin; at most `limits.maxPromptBytes` bytes.
    #[schema(min_length = 1)]
    #[validate(
        custom(function = "not_blank"),
        custom(function = "within_prompt_limit", use_context)
    )]
    pub prompt: String,
    /// Working directory under `allowedProjectRoots` (default `defaultProjectPath`). Ignored on
    /// a session turn: the session's own directory is used.
    #[validate(custom(function = "project_path_rule", use_context))]
    pub project_path: Option<String>,
    /// Default `defaultModel`; one of `allowedModels` when that is set.
    #[validate(custom(function = "model_rule", use_context))]
    pub model: Option<String>,
    /// Continue this session (same as `POST /api/sessions/{id}/continue`).
    #[schema(format = Uuid)]
    #[validate(custom(function = "uuid_rule"))]
    pub session_id: Option<String>,
    #[validate(custom(function = "no_nul"))]
    pub system_prompt: Option<String>,
    #[validate(custom(function = "no_nul"))]
    pub append_system_prompt: Option<String>,
    /// Cap of the run in USD (default `maxBudgetUsd`); on a session turn, the session's budget.
    #[schema(exclusive_minimum = 0.0)]
    #[validate(range(
        exclusive_min = 0.0,
        exclusive_max = f64::INFINITY,
        message = "must be a number greater than 0"
    ))]
    pub max_budget_usd: Option<f64>,
    #[schema(minimum = 1, maximum = 10000)]
    #[validate(range(min = 1, max = MAX_TURNS_LIMIT, message = "must be an integer from 1 to 10000"))]
    pub max_turns: Option<i64>,
    #[validate(custom(function = "tool_names"))]
    pub allowed_tools: Option<Vec<String>>,
    #[validate(custom(function = "tool_names"))]
    pub disallowed_tools: Option<Vec<String>>,
    /// One of `permissions.allowedModes`.
    #[validate(custom(function = "permission_mode_rule", use_context))]
    pub permission_mode: Option<String>,
    #[validate(custom(function = "no_nul"))]
    pub agent: Option<String>,
    /// A file under an allowed root; only with `mcp.allowRequestConfig`.
    #[validate(custom(function = "mcp_config_rule", use_context))]
    pub mcp_config: Option<String>,
    /// Wall-clock limit of the run, from 1000 ms to `taskQueue.maxTimeout`.
    #[schema(minimum = 1000)]
    #[validate(custom(function = "timeout_rule", use_context))]
    pub timeout_ms: Option<i64>,
    /// Queue the run and answer 202 at once.
    #[serde(rename = "async")]
    pub is_async: Option<bool>,
    /// 1 (last) to 10 (first); default 10 for sync runs, 5 for async ones.
    #[schema(minimum = 1, maximum = 10)]
    #[validate(range(min = PRIORITY_MIN, max = PRIORITY_MAX, message = "must be an integer from 1 to 10"))]
    pub priority: Option<i64>,
    /// http(s) URL notified when the task ends.
    #[validate(custom(function = "webhook_url_rule", use_context))]
    pub webhook_url: Option<String>,
    /// Answer with Server-Sent Events.
    pub stream: Option<bool>,
    /// An object stored with the task; at most 16 KiB as JSON.
    #[schema(value_type = Option<Object>)]
    #[validate(custom(function = "metadata_rule"))]
    pub metadata: Option<Value>,
    /// Send a `/command` prompt verbatim (needs `permissions.allowSlashCommands`).
    #[validate(custom(function = "slash_command_rule", use_context))]
    pub slash_command: Option<bool>,
    /// Ask over HTTP before a tool call that needs permission (approvals) instead of denying
    /// it; default `permissions.approvalsDefault`.
    pub approvals: Option<bool>,
}

impl Rules for RunRequest {
    /// The order the API has always checked them in.
    const FIELDS: &'static [&'static str] = &[
        "prompt",
        "slash_command",
        "project_path",
        "model",
        "max_budget_usd",
        "max_turns",
        "timeout_ms",
        "priority",
        "permission_mode",
        "allowed_tools",
        "disallowed_tools",
        "mcp_config",
        "metadata",
        "webhook_url",
        "session_id",
        "system_prompt",
        "append_system_prompt",
        "agent",
    ];

    fn rules(&self, config: &Config) -> Result<(), ValidationErrors> {
        self.validate_with_args(config)
    }
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

/// Check the request's rules, then turn it into a run: defaults from the config, paths
/// resolved, the prompt neutralised, tools intersected with `permissions.allowedTools`.
pub fn validate(req: RunRequest, config: &Config) -> Result<ValidatedRun, ApiError> {
    check(&req, config)?;
    let is_async = req.is_async.unwrap_or(false);
    let prompt = neutralise_prompt(&req.prompt, req.slash_command.unwrap_or(false));
    // Resolving can still fail: the default directory is the config's, and a path may go
    // between the check and here.
    let project_path = resolve_project_path(req.project_path.as_deref(), config)?;
    let mcp_config = resolve_mcp_config(req.mcp_config.as_deref(), config)?;
    let priority = match req.priority.and_then(Priority::new) {
        Some(p) => p,
        None if is_async => Priority::ASYNC_DEFAULT,
        None => Priority::SYNC_DEFAULT,
    };
    let allowed_tools = req.allowed_tools.unwrap_or_default();
    let allowed_tools = match &config.permissions.allowed_tools {
        Some(allowed) => allowed_tools
            .into_iter()
            .filter(|t| allowed.contains(t))
            .collect(),
        None => allowed_tools,
    };
    Ok(ValidatedRun {
        task_id: Uuid::new_v4(),
        requested_budget: req.max_budget_usd,
        spec: RunSpec {
            prompt,
            project_path,
            model: Some(req.model.unwrap_or_else(|| config.default_model.clone())),
            system_prompt: req.system_prompt,
            append_system_prompt: req.append_system_prompt,
            max_budget_usd: Some(req.max_budget_usd.unwrap_or(config.max_budget_usd)),
            max_turns: req.max_turns.map(|t| t as u32),
            allowed_tools,
            disallowed_tools: req.disallowed_tools.unwrap_or_default(),
            permission_mode: req.permission_mode,
            agent: req.agent,
            mcp_config,
            session: SessionMode::None,
            timeout_ms: req
                .timeout_ms
                .map_or(config.task_queue.default_timeout, |t| t as u64),
            approvals: req
                .approvals
                .unwrap_or(config.permissions.approvals_default),
        },
        priority,
        is_async,
        stream: req.stream.unwrap_or(false),
        webhook_url: req.webhook_url,
        metadata: req.metadata,
        session_id: req
            .session_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok()),
    })
}

// ---- The rules (`validator` custom functions). The field's name comes from the derive.

fn not_blank(text: &str) -> Result<(), ValidationError> {
    if text.trim().is_empty() {
        return Err(rule("must not be empty"));
    }
    Ok(())
}

fn within_prompt_limit(prompt: &str, config: &Config) -> Result<(), ValidationError> {
    let limit = config.limits.max_prompt_bytes;
    if prompt.len() as u64 > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "Field `prompt` is larger than the limit of {limit} bytes (limits.maxPromptBytes)."
            ),
        )
        .with_details(serde_json::json!({"field": "prompt", "limit_bytes": limit}))
        .into());
    }
    Ok(())
}

fn slash_command_rule(slash_command: &bool, config: &Config) -> Result<(), ValidationError> {
    if *slash_command && !config.permissions.allow_slash_commands {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "Slash commands are disabled on this server (permissions.allowSlashCommands).",
        )
        .into());
    }
    Ok(())
}

pub fn project_path_rule(path: &str, config: &Config) -> Result<(), ValidationError> {
    resolve_project_path(Some(path), config)?;
    Ok(())
}

/// Whether the server runs `model`: any name when `allowedModels` is empty, else the default
/// model and the listed ones.
pub fn model_allowed(model: &str, config: &Config) -> bool {
    config.allowed_models.is_empty()
        || model == config.default_model
        || config.allowed_models.iter().any(|m| m == model)
}

pub fn model_rule(model: &str, config: &Config) -> Result<(), ValidationError> {
    if model.trim().is_empty() || model.contains('\0') {
        return Err(rule("must be a non-empty model name"));
    }
    if !model_allowed(model, config) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("Model `{model}` is not allowed on this server (allowedModels)."),
        )
        .with_details(serde_json::json!({"field": "model", "allowed": config.allowed_models}))
        .into());
    }
    Ok(())
}

fn timeout_rule(timeout_ms: i64, config: &Config) -> Result<(), ValidationError> {
    let max = config.task_queue.max_timeout;
    if timeout_ms < MIN_TIMEOUT_MS || timeout_ms as u64 > max {
        return Err(rule(format!(
            "must be an integer from {MIN_TIMEOUT_MS} to {max} (taskQueue.maxTimeout)"
        )));
    }
    Ok(())
}

fn permission_mode_rule(mode: &str, config: &Config) -> Result<(), ValidationError> {
    let allowed = &config.permissions.allowed_modes;
    if !actors::config::KNOWN_PERMISSION_MODES.contains(&mode) {
        return Err(rule(format!("must be one of: {}", allowed.join(", "))));
    }
    if !allowed.iter().any(|m| m == mode) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("Field `permission_mode`: mode `{mode}` is not allowed on this server (permissions.allowedModes)."),
        )
        .with_details(serde_json::json!({"field": "permission_mode", "allowed": allowed}))
        .into());
    }
    Ok(())
}

fn tool_names(tools: &[String]) -> Result<(), ValidationError> {
    if tools
        .iter()
        .any(|t| t.trim().is_empty() || t.contains(',') || t.contains('\0'))
    {
        return Err(rule(
            "must be a list of non-empty tool names without commas",
        ));
    }
    Ok(())
}

fn mcp_config_rule(path: &str, config: &Config) -> Result<(), ValidationError> {
    resolve_mcp_config(Some(path), config)?;
    Ok(())
}

pub fn metadata_rule(metadata: &Value) -> Result<(), ValidationError> {
    if !metadata.is_object() {
        return Err(rule("must be an object"));
    }
    let size = metadata.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(rule(format!(
            "must be at most {MAX_METADATA_BYTES} bytes as JSON (it is {size})"
        )));
    }
    Ok(())
}

fn webhook_url_rule(url: &str, config: &Config) -> Result<(), ValidationError> {
    validate_webhook_url(url, config)?;
    Ok(())
}

fn uuid_rule(id: &str) -> Result<(), ValidationError> {
    Uuid::parse_str(id).map_err(|_| rule("must be a UUID"))?;
    Ok(())
}

fn no_nul(text: &str) -> Result<(), ValidationError> {
    if text.contains('\0') {
        return Err(rule("must not contain NUL characters"));
    }
    Ok(())
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

/// The URL's form: http(s), a host, no credentials; and, unless `webhook.allowPrivateTargets`,
/// no private/loopback/link-local IP literal or `localhost` host (names are checked again, after
/// resolution, at every delivery). Checked even when webhooks are disabled, so a task never
/// stores a URL that would be refused once they are enabled.
pub fn validate_webhook_url(url: &str, config: &Config) -> Result<(), ApiError> {
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
    actors::webhook::policy::check_url(url, config.webhook.allow_private_targets)
        .map(drop)
        .map_err(|refusal| invalid(&refusal.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The defaults, with one allowed root (a temporary directory holding a file).
    fn config(root: &Path) -> Config {
        let mut c = Config::from_merged(actors::config::load::defaults_doc()).expect("defaults");
        c.allowed_project_roots = vec![root.display().to_string()];
        c.default_project_path = Some(root.display().to_string());
        c
    }

    /// The (code, field, rule) of the refusal of `body` (the prompt `hi` added unless given).
    fn refusal(config: &Config, mut body: Value) -> (ErrorCode, String, String) {
        if body.get("prompt").is_none() {
            body["prompt"] = json!("hi");
        }
        let req: RunRequest = serde_json::from_value(body).expect("shape");
        let e = validate(req, config).expect_err("refused");
        let details = e.details.unwrap_or_default();
        let text = |k: &str| details[k].as_str().unwrap_or_default().to_string();
        (e.code, text("field"), text("rule"))
    }

    #[test]
    fn each_rule_names_its_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("mcp.json");
        std::fs::write(&file, "{}").expect("file");
        let mut c = config(dir.path());
        c.permissions.allowed_modes = vec!["default".into()];
        c.mcp.allow_request_config = true;
        let (nul, tools, turns) = (
            "must not contain NUL characters",
            "must be a list of non-empty tool names without commas",
            "must be an integer from 1 to 10000",
        );
        let timeout = format!(
            "must be an integer from 1000 to {} (taskQueue.maxTimeout)",
            c.task_queue.max_timeout
        );
        let big = format!(
            "must be at most {MAX_METADATA_BYTES} bytes as JSON (it is {})",
            MAX_METADATA_BYTES + 8
        );
        // (body, field, rule): 400 `validation_error`.
        let rules = [
            (json!({"prompt": "  "}), "prompt", "must not be empty"),
            (
                json!({"project_path": ""}),
                "project_path",
                "must be a non-empty path",
            ),
            (
                json!({"project_path": "rel"}),
                "project_path",
                "must be an absolute path",
            ),
            (
                json!({"model": " "}),
                "model",
                "must be a non-empty model name",
            ),
            (json!({"session_id": "x"}), "session_id", "must be a UUID"),
            (json!({"system_prompt": "a\u{0}"}), "system_prompt", nul),
            (
                json!({"append_system_prompt": "\u{0}"}),
                "append_system_prompt",
                nul,
            ),
            (json!({"agent": "\u{0}"}), "agent", nul),
            (
                json!({"max_budget_usd": 0}),
                "max_budget_usd",
                "must be a number greater than 0",
            ),
            (json!({"max_turns": 0}), "max_turns", turns),
            (json!({"max_turns": 10_001}), "max_turns", turns),
            (json!({"allowed_tools": ["a,b"]}), "allowed_tools", tools),
            (json!({"disallowed_tools": [""]}), "disallowed_tools", tools),
            (
                json!({"permission_mode": "nope"}),
                "permission_mode",
                "must be one of: default",
            ),
            (
                json!({"mcp_config": dir.path()}),
                "mcp_config",
                "must name an existing file",
            ),
            (json!({"timeout_ms": 999}), "timeout_ms", &timeout),
            (
                json!({"priority": 11}),
                "priority",
                "must be an integer from 1 to 10",
            ),
            (
                json!({"priority": 0}),
                "priority",
                "must be an integer from 1 to 10",
            ),
            (json!({"metadata": [1]}), "metadata", "must be an object"),
            (
                json!({"metadata": {"k": "x".repeat(MAX_METADATA_BYTES)}}),
                "metadata",
                &big,
            ),
            (
                json!({"webhook_url": "ftp://x"}),
                "webhook_url",
                "must be an http or https URL",
            ),
        ];
        for (body, field, rule) in rules {
            let code = if field == "webhook_url" {
                ErrorCode::InvalidWebhookUrl
            } else {
                ErrorCode::ValidationError
            };
            let expected = (code, field.to_string(), rule.to_string());
            assert_eq!(refusal(&c, body.clone()), expected, "{body}");
        }
        // (field, value, code): another code, `details.field` naming the field.
        use ErrorCode::{Forbidden, ForbiddenPath, InvalidProjectPath};
        let refusals = [
            ("permission_mode", json!("plan"), Forbidden),
            (
                "project_path",
                json!("/nonexistent-ccs"),
                InvalidProjectPath,
            ),
            ("project_path", json!(file), InvalidProjectPath),
            ("project_path", json!("/"), ForbiddenPath),
            ("mcp_config", json!("/"), ForbiddenPath),
        ];
        for (field, value, code) in refusals {
            let expected = (code, field.to_string(), String::new());
            assert_eq!(refusal(&c, json!({ field: value })), expected, "{value}");
        }
    }

    #[test]
    fn config_refusals_keep_their_code_message_and_details() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        c.allowed_models = vec!["a".into()];
        c.limits.max_prompt_bytes = 4;
        let run = |body: Value| {
            let req: RunRequest = serde_json::from_value(body).expect("shape");
            validate(req, &c).expect_err("refused")
        };
        let e = run(json!({"prompt": "hi", "model": "b"}));
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            e.message,
            "Model `b` is not allowed on this server (allowedModels)."
        );
        assert_eq!(e.details, Some(json!({"field": "model", "allowed": ["a"]})));
        let e = run(json!({"prompt": "hello"}));
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        assert_eq!(
            e.details,
            Some(json!({"field": "prompt", "limit_bytes": 4}))
        );
        let e = run(json!({"prompt": "/x", "slash_command": true}));
        assert_eq!((e.code, e.details), (ErrorCode::Forbidden, None));
        let e = run(json!({"prompt": "hi", "mcp_config": "/x"}));
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(
            e.message.contains("mcp.allowRequestConfig"),
            "{}",
            e.message
        );
        let e = run(json!({"prompt": "hi", "webhook_url": "http://127.0.0.1/h"}));
        assert_eq!(e.code, ErrorCode::InvalidWebhookUrl);
        assert_eq!(
            e.details.as_ref().map(|d| d["field"].clone()),
            Some(json!("webhook_url"))
        );
    }

    #[test]
    fn the_first_failing_field_is_the_one_checked_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path());
        // Every field wrong at once: the order of `RunRequest::FIELDS` decides.
        let mut body = json!({"prompt": " ", "project_path": "", "model": "", "max_budget_usd": -1,
            "max_turns": 0, "timeout_ms": 1, "priority": 0, "permission_mode": "x",
            "allowed_tools": [""], "disallowed_tools": [""], "metadata": 1, "webhook_url": "x",
            "session_id": "x", "system_prompt": "\u{0}", "append_system_prompt": "\u{0}", "agent": "\u{0}"});
        for field in RunRequest::FIELDS {
            if *field == "slash_command" || *field == "mcp_config" {
                continue;
            }
            let req: RunRequest = serde_json::from_value(body.clone()).expect("shape");
            let e = validate(req, &c).expect_err("refused");
            assert_eq!(
                e.details.as_ref().map(|d| d["field"].clone()),
                Some(json!(field))
            );
            if let Some(obj) = body.as_object_mut() {
                obj.remove(*field);
            }
            body["prompt"] = json!("hi");
        }
    }

    #[test]
    fn a_valid_request_gets_the_config_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        c.permissions.allowed_tools = Some(vec!["Read".into()]);
        let req: RunRequest = serde_json::from_value(
            json!({"prompt": "hi", "async": true, "allowed_tools": ["Read", "Bash"], "session_id": Uuid::nil()}),
        )
        .expect("shape");
        let run = validate(req, &c).expect("valid");
        assert_eq!(run.priority, Priority::ASYNC_DEFAULT);
        assert_eq!(run.spec.allowed_tools, vec!["Read".to_string()]);
        assert_eq!(run.spec.model.as_deref(), Some(c.default_model.as_str()));
        assert_eq!(run.spec.timeout_ms, c.task_queue.default_timeout);
        assert_eq!(run.session_id, Some(Uuid::nil()));
        assert_eq!(
            run.spec.project_path,
            std::fs::canonicalize(dir.path()).expect("dir")
        );
    }
}
