//! The configuration: one JSON file, camelCase keys as in the seed.
//!
//! Defaults live in exactly one place, `config/default.json`, embedded here. A user's file is
//! merged over it ([`merge::merge_patch`], RFC 7396), so a key missing from the file takes its
//! default and `null` in a patch restores it. The merged document is then deserialised with the
//! failing key's path reported, and [`Config::validate`] checks ranges and relations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod load;
pub mod merge;

/// `config/default.json`: every key with its default.
pub const DEFAULT_JSON: &str = include_str!("../../../config/default.json");

/// A config the service refuses, with the key that is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid config key `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Memory,
    Sqlite,
    Redis,
}

impl StorageType {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::Memory => "memory",
            StorageType::Sqlite => "sqlite",
            StorageType::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// The effective configuration. Paths are `~`-expanded and auto values resolved by
/// [`load::resolve`]; `claude_path` and `default_project_path` are always `Some` after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub port: u16,
    pub host: String,
    pub claude_path: Option<String>,
    pub nvm_bin: Option<String>,
    pub claude_env: BTreeMap<String, String>,
    pub default_project_path: Option<String>,
    pub allowed_project_roots: Vec<String>,
    pub log_file: String,
    /// The log file is rotated when a line would take it past this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept (`server.log.1` … `server.log.N`) besides the live one.
    pub log_max_files: u32,
    pub pid_file: String,
    pub data_dir: String,
    pub storage_type: StorageType,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (`<namespace>:`), so deployments can share one server.
    pub redis_namespace: String,
    pub session_retention_days: u32,
    pub task_retention_days: u32,
    pub task_queue: TaskQueueConfig,
    pub shutdown_grace_ms: u64,
    pub cancel_on_disconnect: bool,
    pub webhook: WebhookConfig,
    pub rate_limit: RateLimitConfig,
    pub auth: AuthConfig,
    pub default_model: String,
    pub allowed_models: Vec<String>,
    pub max_budget_usd: f64,
    pub permissions: PermissionsConfig,
    pub statistics: StatisticsConfig,
    pub mcp: McpConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub log_level: LogLevel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskQueueConfig {
    pub concurrency: u32,
    pub default_timeout: u64,
    pub max_timeout: u64,
    pub idle_timeout: u64,
    pub kill_grace_ms: u64,
    pub max_pending: u64,
    pub global_concurrency: Option<u32>,
    /// With Redis: how long a claimed task stays an instance's without renewal.
    pub lease_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfig {
    pub enabled: bool,
    pub default_url: Option<String>,
    pub timeout: u64,
    pub retries: u32,
    pub secret: Option<String>,
    pub backoff_ms: u64,
    pub allow_private_targets: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub window_ms: u64,
    pub max_requests: u64,
}

/// A per-key override of the rate limit (`auth.apiKeys[].rateLimit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRateLimit {
    pub window_ms: Option<u64>,
    pub max_requests: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub rate_limit: Option<KeyRateLimit>,
    #[serde(default)]
    pub daily_budget_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    pub api_keys: Vec<ApiKeyConfig>,
    pub allow_anonymous: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionsConfig {
    pub allowed_modes: Vec<String>,
    pub allowed_tools: Option<Vec<String>>,
    pub allow_slash_commands: bool,
    /// `approvals` of a run request that does not say.
    pub approvals_default: bool,
    /// An approval unanswered this long (ms) expires and is answered as a denial.
    pub approval_timeout_ms: u64,
    /// Permission requests one run may turn into approvals; past it, each is denied at once
    /// (nothing stored or announced), so a looping run cannot flood the store and the people
    /// who decide.
    pub max_approvals_per_run: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatisticsConfig {
    pub enabled: bool,
    pub collection_interval: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpConfig {
    pub enabled: bool,
    pub config_path: Option<String>,
    pub allow_request_config: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitsConfig {
    pub max_prompt_bytes: u64,
    pub max_body_bytes: u64,
    pub max_batch: u32,
    /// Longest line of CLI output kept (a result line holds the whole reply).
    pub max_output_line_bytes: u64,
    /// How much of the CLI's stderr is kept for error details.
    pub stderr_tail_bytes: u64,
    /// Memory for the events of finished runs kept for SSE replay (`Last-Event-ID`), besides
    /// the count and time bounds of [`crate::events`].
    pub event_replay_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsConfig {
    pub public: bool,
}

/// Permission modes the CLI knows (2.1.197 and 2.1.330 together).
pub const KNOWN_PERMISSION_MODES: &[&str] = &[
    "default",
    "acceptEdits",
    "plan",
    "bypassPermissions",
    "dontAsk",
    "auto",
    "manual",
];

impl Config {
    /// Deserialise a complete (already merged) document, naming the key that does not fit.
    pub fn from_merged(doc: serde_json::Value) -> Result<Config, ConfigError> {
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            ConfigError::new(key, message)
        })
    }

    /// Ranges and relations serde cannot express. The first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn at_least(key: &str, v: u64, min: u64) -> Result<(), ConfigError> {
            if v < min {
                return Err(ConfigError::new(
                    key,
                    format!("must be at least {min}, got {v}"),
                ));
            }
            Ok(())
        }
        if self.host.trim().is_empty() {
            return Err(ConfigError::new("host", "must not be empty"));
        }
        let q = &self.task_queue;
        at_least("taskQueue.concurrency", q.concurrency.into(), 1)?;
        if q.concurrency > 1024 {
            return Err(ConfigError::new(
                "taskQueue.concurrency",
                "must be at most 1024",
            ));
        }
        at_least("taskQueue.defaultTimeout", q.default_timeout, 1)?;
        at_least("taskQueue.maxTimeout", q.max_timeout, 1)?;
        if q.default_timeout > q.max_timeout {
            return Err(ConfigError::new(
                "taskQueue.defaultTimeout",
                format!(
                    "must not exceed taskQueue.maxTimeout ({} > {})",
                    q.default_timeout, q.max_timeout
                ),
            ));
        }
        at_least("taskQueue.maxPending", q.max_pending, 1)?;
        if let Some(g) = q.global_concurrency {
            at_least("taskQueue.globalConcurrency", g.into(), 1)?;
        }
        at_least("taskQueue.leaseMs", q.lease_ms, 500)?;
        if q.lease_ms > 600_000 {
            return Err(ConfigError::new(
                "taskQueue.leaseMs",
                "must be at most 600000 (10 minutes)",
            ));
        }
        if self.storage_type == StorageType::Redis && self.redis_url.is_none() {
            return Err(ConfigError::new(
                "redisUrl",
                "is required when storageType is \"redis\"",
            ));
        }
        if !crate::store::redis::valid_namespace(&self.redis_namespace) {
            return Err(ConfigError::new(
                "redisNamespace",
                "must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
            ));
        }
        if self.rate_limit.enabled {
            at_least("rateLimit.windowMs", self.rate_limit.window_ms, 1)?;
            at_least("rateLimit.maxRequests", self.rate_limit.max_requests, 1)?;
        }
        if !(self.max_budget_usd.is_finite() && self.max_budget_usd > 0.0) {
            return Err(ConfigError::new(
                "maxBudgetUsd",
                "must be a number greater than 0",
            ));
        }
        if self.default_model.trim().is_empty() {
            return Err(ConfigError::new("defaultModel", "must not be empty"));
        }
        for (i, mode) in self.permissions.allowed_modes.iter().enumerate() {
            if !KNOWN_PERMISSION_MODES.contains(&mode.as_str()) {
                return Err(ConfigError::new(
                    format!("permissions.allowedModes[{i}]"),
                    format!(
                        "unknown permission mode {mode:?} (known: {})",
                        KNOWN_PERMISSION_MODES.join(", ")
                    ),
                ));
            }
        }
        at_least(
            "permissions.approvalTimeoutMs",
            self.permissions.approval_timeout_ms,
            1000,
        )?;
        at_least(
            "permissions.maxApprovalsPerRun",
            u64::from(self.permissions.max_approvals_per_run),
            1,
        )?;
        let l = &self.limits;
        at_least("limits.maxPromptBytes", l.max_prompt_bytes, 1)?;
        at_least("limits.maxBodyBytes", l.max_body_bytes, 1024)?;
        at_least("limits.maxBatch", l.max_batch.into(), 1)?;
        at_least("limits.maxOutputLineBytes", l.max_output_line_bytes, 4096)?;
        at_least("limits.stderrTailBytes", l.stderr_tail_bytes, 256)?;
        at_least(
            "statistics.collectionInterval",
            self.statistics.collection_interval,
            1000,
        )?;
        at_least("webhook.timeout", self.webhook.timeout, 1)?;
        at_least("logMaxBytes", self.log_max_bytes, 4096)?;
        at_least("logMaxFiles", self.log_max_files.into(), 1)?;
        if self.log_max_files > 100 {
            return Err(ConfigError::new("logMaxFiles", "must be at most 100"));
        }
        if let Some(url) = &self.webhook.default_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::new(
                    "webhook.defaultUrl",
                    "must be an http(s) URL",
                ));
            }
        }
        if let Some(secret) = self.webhook.secret.as_deref().filter(|s| !s.is_empty()) {
            // The message never repeats the secret.
            crate::webhook::sign::SigningKey::from_secret(secret)
                .map_err(|e| ConfigError::new("webhook.secret", e.to_string()))?;
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, k) in self.auth.api_keys.iter().enumerate() {
            if k.name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("auth.apiKeys[{i}].name"),
                    "must not be empty",
                ));
            }
            if k.key.len() < 8 {
                return Err(ConfigError::new(
                    format!("auth.apiKeys[{i}].key"),
                    "must be at least 8 characters",
                ));
            }
            if !names.insert(k.name.as_str()) {
                return Err(ConfigError::new(
                    format!("auth.apiKeys[{i}].name"),
                    "is used twice",
                ));
            }
            if !keys.insert(k.key.as_str()) {
                return Err(ConfigError::new(
                    format!("auth.apiKeys[{i}].key"),
                    "is used twice",
                ));
            }
            if let Some(rl) = &k.rate_limit {
                let key = format!("auth.apiKeys[{i}].rateLimit");
                if let Some(w) = rl.window_ms {
                    at_least(&format!("{key}.windowMs"), w, 1)?;
                }
                if let Some(m) = rl.max_requests {
                    at_least(&format!("{key}.maxRequests"), m, 1)?;
                }
            }
            if let Some(b) = k.daily_budget_usd {
                if !(b.is_finite() && b > 0.0) {
                    return Err(ConfigError::new(
                        format!("auth.apiKeys[{i}].dailyBudgetUsd"),
                        "must be a number greater than 0",
                    ));
                }
            }
        }
        for key in self.claude_env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ConfigError::new(
                    format!("claudeEnv.{key}"),
                    "is not a valid variable name",
                ));
            }
        }
        Ok(())
    }
}

/// Shown instead of a secret.
pub const REDACTED: &str = "[redacted]";

impl Config {
    /// The config as JSON with every secret replaced: API keys, the webhook secret, the Redis
    /// password, and `claudeEnv` values whose names suggest a credential.
    pub fn redacted(&self) -> serde_json::Value {
        let mut doc = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(keys) = doc
            .pointer_mut("/auth/apiKeys")
            .and_then(|v| v.as_array_mut())
        {
            for k in keys {
                if let Some(obj) = k.as_object_mut() {
                    obj.insert("key".into(), REDACTED.into());
                }
            }
        }
        if let Some(secret) = doc.pointer_mut("/webhook/secret") {
            if !secret.is_null() {
                *secret = REDACTED.into();
            }
        }
        if let Some(url) = doc.get_mut("redisUrl") {
            if let Some(s) = url.as_str() {
                *url = redact_url_password(s).into();
            }
        }
        if let Some(env) = doc.get_mut("claudeEnv").and_then(|v| v.as_object_mut()) {
            for (name, value) in env.iter_mut() {
                let upper = name.to_ascii_uppercase();
                if ["KEY", "TOKEN", "SECRET", "PASSWORD", "AUTH"]
                    .iter()
                    .any(|w| upper.contains(w))
                {
                    *value = REDACTED.into();
                }
            }
        }
        doc
    }
}

/// `redis://user:pass@host` → `redis://user:[redacted]@host`.
fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    format!(
        "{}://{}:{}@{}",
        &url[..scheme_end],
        user,
        REDACTED,
        &rest[at + 1..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_secret() {
        let env = load::Environment::default();
        let doc = serde_json::json!({
            "auth": {"apiKeys": [{"name": "a", "key": "sk-very-secret-1"}]},
            "webhook": {"secret": "whsec_abc"},
            "redisUrl": "redis://u:hunter2@localhost:6379/0",
            "claudeEnv": {"ANTHROPIC_API_KEY": "sk-ant-x", "LANG": "C"}
        });
        let (c, _) = load::from_file_doc(&doc, &env).expect("valid");
        let text = c.redacted().to_string();
        for secret in ["sk-very-secret-1", "whsec_abc", "hunter2", "sk-ant-x"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("\"LANG\":\"C\""));
        assert!(text.contains("redis://u:[redacted]@localhost:6379/0"));
    }

    #[test]
    fn an_unusable_webhook_secret_is_refused_without_echoing_it() {
        let env = load::Environment::default();
        let doc = serde_json::json!({"webhook": {"secret": "whsec_$$hunter2$$"}});
        let err = load::from_file_doc(&doc, &env).expect_err("invalid base64");
        let text = err.to_string();
        assert!(text.contains("webhook.secret"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        for ok in [
            "whsec_dG9wLXNlY3JldA==",
            "whsec_dG9wLXNlY3JldA",
            "plain text",
        ] {
            let doc = serde_json::json!({"webhook": {"secret": ok}});
            assert!(load::from_file_doc(&doc, &env).is_ok(), "{ok}");
        }
    }
}
