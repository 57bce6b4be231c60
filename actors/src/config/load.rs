//! Reading the config file: first-start creation, `~` expansion, `PORT`/`HOST` overrides,
//! auto-detection of the CLI and the default project directory, and atomic writes.
//!
//! Everything that touches the process environment goes through [`Environment`], so tests can
//! run the whole pipeline with a made-up one.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::merge::{overlay, unknown_keys};
use super::{ApiKeyConfig, Config, ConfigError, DEFAULT_JSON, REDACTED};

/// The environment variable that adds an API key to `auth.apiKeys`.
pub const API_KEY_ENV: &str = "CCS_API_KEY";

/// The parts of the process environment the config depends on.
#[derive(Clone, Default)]
pub struct Environment {
    pub home: Option<PathBuf>,
    pub port: Option<String>,
    pub host: Option<String>,
    /// `PATH`, searched for `claude`.
    pub path: Option<OsString>,
    pub cwd: PathBuf,
    /// `CCS_API_KEY`: one more admin key, named `CCS_API_KEY`, for containers and service
    /// managers that hand secrets over as environment variables (see [`add_env_api_key`]).
    /// Never printed: `Debug` shows it redacted.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("home", &self.home)
            .field("port", &self.port)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("cwd", &self.cwd)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl Environment {
    pub fn from_process() -> Environment {
        Environment {
            home: std::env::var_os("HOME").map(PathBuf::from),
            port: std::env::var("PORT").ok().filter(|s| !s.is_empty()),
            host: std::env::var("HOST").ok().filter(|s| !s.is_empty()),
            path: std::env::var_os("PATH"),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            api_key: std::env::var(API_KEY_ENV).ok().filter(|s| !s.is_empty()),
        }
    }
}

/// A loaded config and what was noticed while loading it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file as written by the user (not merged): the base for `PATCH /api/config`.
    pub file_doc: Value,
    /// Unknown keys and auto-detection notes, to be logged.
    pub warnings: Vec<String>,
    /// The file did not exist and was written with every default.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write config file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// `~/.claude-code-server/config.json`.
pub fn default_config_path(env: &Environment) -> PathBuf {
    let home = env.home.clone().unwrap_or_else(|| PathBuf::from("."));
    home.join(".claude-code-server").join("config.json")
}

/// Load `path`, writing the defaults there first when it does not exist.
pub fn load(path: &Path, env: &Environment) -> Result<Loaded, LoadError> {
    let mut created = false;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic(path, DEFAULT_JSON.as_bytes()).map_err(|source| LoadError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            created = true;
            DEFAULT_JSON.to_string()
        }
        Err(source) => {
            return Err(LoadError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file_doc: Value = serde_json::from_str(&text).map_err(|e| LoadError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (config, warnings) =
        from_file_doc(&file_doc, env).map_err(|source| LoadError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Loaded {
        config,
        file_doc,
        warnings,
        created,
    })
}

/// The defaults as a JSON document.
pub fn defaults_doc() -> Value {
    // The file is part of the binary and checked by a unit test, so this cannot fail at run time.
    serde_json::from_str(DEFAULT_JSON).unwrap_or(Value::Null)
}

/// From a user's document to a valid effective config: overlay on the defaults, apply
/// `PORT`/`HOST`, deserialise, add the `CCS_API_KEY` key, resolve auto values, validate. Pure but for the file-system
/// probes of auto-detection.
pub fn from_file_doc(
    file_doc: &Value,
    env: &Environment,
) -> Result<(Config, Vec<String>), ConfigError> {
    if !file_doc.is_object() {
        return Err(ConfigError::new(
            "(root)",
            "the config must be a JSON object",
        ));
    }
    let defaults = defaults_doc();
    let mut warnings: Vec<String> = unknown_keys(&defaults, file_doc)
        .into_iter()
        .map(|k| format!("unknown config key `{k}` is ignored"))
        .collect();
    let mut merged = overlay(&defaults, file_doc);
    if let (Some(port), Value::Object(map)) = (&env.port, &mut merged) {
        let port: u16 = port.parse().map_err(|_| {
            ConfigError::new(
                "PORT",
                format!("environment value {port:?} is not a port number"),
            )
        })?;
        map.insert("port".into(), Value::from(port));
    }
    if let (Some(host), Value::Object(map)) = (&env.host, &mut merged) {
        map.insert("host".into(), Value::from(host.clone()));
    }
    let mut config = Config::from_merged(merged)?;
    if let Some(key) = env.api_key.as_deref() {
        add_env_api_key(&mut config, key)?;
    }
    warnings.extend(resolve(&mut config, env));
    config.validate()?;
    Ok((config, warnings))
}

/// Add the key of `CCS_API_KEY` to `auth.apiKeys` as an admin key named `CCS_API_KEY` (last, so
/// the file's keys keep their order). A key the file already lists is not added twice. It lives
/// only in the effective config: never written to the file, redacted in `GET /api/config` like
/// every key, and no error message repeats it.
pub fn add_env_api_key(config: &mut Config, key: &str) -> Result<(), ConfigError> {
    if key.len() < 8 {
        return Err(ConfigError::new(
            API_KEY_ENV,
            "must be at least 8 characters",
        ));
    }
    let keys = &mut config.auth.api_keys;
    if keys.iter().any(|k| k.key == key) {
        return Ok(());
    }
    if keys.iter().any(|k| k.name == API_KEY_ENV) {
        return Err(ConfigError::new(
            API_KEY_ENV,
            format!("auth.apiKeys already has a key named {API_KEY_ENV:?}; rename it or unset the variable"),
        ));
    }
    keys.push(ApiKeyConfig {
        name: API_KEY_ENV.into(),
        key: key.into(),
        admin: true,
        rate_limit: None,
        daily_budget_usd: None,
    });
    Ok(())
}

/// `~` or `~/...` → the home directory.
pub fn expand_tilde(s: &str, home: Option<&Path>) -> String {
    match (s, home) {
        ("~", Some(h)) => h.display().to_string(),
        (s, Some(h)) if s.starts_with("~/") => h.join(&s[2..]).display().to_string(),
        _ => s.to_string(),
    }
}

/// Expand `~` everywhere a path is expected and fill the auto values. Returns notes to log.
pub fn resolve(config: &mut Config, env: &Environment) -> Vec<String> {
    let mut notes = Vec::new();
    let home = env.home.as_deref();
    let exp = |s: &mut String| *s = expand_tilde(s, home);
    exp(&mut config.log_file);
    exp(&mut config.pid_file);
    exp(&mut config.data_dir);
    for r in &mut config.allowed_project_roots {
        exp(r);
    }
    for p in [
        &mut config.claude_path,
        &mut config.nvm_bin,
        &mut config.default_project_path,
    ]
    .into_iter()
    .flatten()
    {
        exp(p);
    }
    if let Some(p) = config.mcp.config_path.as_mut() {
        exp(p);
    }
    if config.claude_path.is_none() {
        match detect_claude(env) {
            Some(p) => config.claude_path = Some(p.display().to_string()),
            None => {
                notes.push("claudePath: no `claude` found on PATH or in nvm directories; runs will fail until it is installed or claudePath is set".into());
                config.claude_path = Some("claude".into());
            }
        }
    }
    if config.nvm_bin.is_none() {
        // The CLI is a Node script: its directory usually holds the right `node` too.
        config.nvm_bin = config
            .claude_path
            .as_deref()
            .map(Path::new)
            .filter(|p| p.is_absolute())
            .and_then(Path::parent)
            .map(|p| p.display().to_string());
    }
    if config.default_project_path.is_none() {
        let workspace = home.map(|h| h.join("workspace")).filter(|p| p.is_dir());
        let chosen = workspace.unwrap_or_else(|| env.cwd.clone());
        config.default_project_path = Some(chosen.display().to_string());
    }
    if config.allowed_project_roots.is_empty() {
        config.allowed_project_roots = config.default_project_path.iter().cloned().collect();
    }
    notes
}

/// Find `claude`: on `PATH`, then in nvm's node versions (newest first), then the usual
/// install locations.
pub fn detect_claude(env: &Environment) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = &env.path {
        candidates.extend(std::env::split_paths(path).map(|d| d.join("claude")));
    }
    if let Some(home) = &env.home {
        let nvm = home.join(".nvm/versions/node");
        if let Ok(entries) = std::fs::read_dir(&nvm) {
            let mut versions: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            versions.sort();
            versions.reverse();
            candidates.extend(versions.into_iter().map(|v| v.join("bin/claude")));
        }
        candidates.push(home.join(".claude/local/claude"));
        candidates.push(home.join(".local/bin/claude"));
    }
    candidates.push(PathBuf::from("/usr/local/bin/claude"));
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Write a file so that readers see either the old or the new content, never a half: a
/// temporary file in the same directory, fsync, then rename over.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageType, TaskQueueConfig};
    use serde_json::json;

    fn env(home: &Path) -> Environment {
        Environment {
            home: Some(home.to_path_buf()),
            port: None,
            host: None,
            path: Some(OsString::new()),
            cwd: home.to_path_buf(),
            api_key: None,
        }
    }

    #[test]
    fn defaults_parse_and_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _) = from_file_doc(&json!({}), &env(dir.path())).expect("defaults are valid");
        assert_eq!(c.port, 3000);
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.storage_type, StorageType::Sqlite);
        assert_eq!(
            c.task_queue,
            TaskQueueConfig {
                concurrency: 3,
                default_timeout: 300_000,
                max_timeout: 3_600_000,
                idle_timeout: 0,
                kill_grace_ms: 5000,
                max_pending: 10_000,
                global_concurrency: None,
                lease_ms: 15_000,
            }
        );
        assert_eq!(
            c.default_project_path.as_deref(),
            Some(dir.path().to_str().expect("utf8"))
        );
        assert_eq!(
            c.allowed_project_roots,
            vec![dir.path().display().to_string()]
        );
        assert_eq!(c.claude_path.as_deref(), Some("claude"));
    }

    #[test]
    fn first_load_writes_every_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/config.json");
        let loaded = load(&path, &env(dir.path())).expect("load");
        assert!(loaded.created);
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(written, defaults_doc());
        let again = load(&path, &env(dir.path())).expect("load again");
        assert!(!again.created);
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = env(dir.path());
        let err =
            from_file_doc(&json!({"taskQueue": {"concurrency": "many"}}), &e).expect_err("type");
        assert_eq!(err.key, "taskQueue.concurrency");
        let err = from_file_doc(&json!({"taskQueue": {"concurrency": 0}}), &e).expect_err("range");
        assert_eq!(err.key, "taskQueue.concurrency");
        let err = from_file_doc(
            &json!({"taskQueue": {"defaultTimeout": 10, "maxTimeout": 5}}),
            &e,
        )
        .expect_err("relation");
        assert_eq!(err.key, "taskQueue.defaultTimeout");
        let err = from_file_doc(&json!({"storageType": "redis"}), &e).expect_err("redis url");
        assert_eq!(err.key, "redisUrl");
        let err = from_file_doc(&json!({"redisNamespace": "a:b"}), &e).expect_err("namespace");
        assert_eq!(err.key, "redisNamespace");
        let err = from_file_doc(&json!({"storageType": "mongo"}), &e).expect_err("enum");
        assert_eq!(err.key, "storageType");
        let err = from_file_doc(&json!({"maxBudgetUsd": 0}), &e).expect_err("budget");
        assert_eq!(err.key, "maxBudgetUsd");
        let err = from_file_doc(&json!({"logLevel": "loud"}), &e).expect_err("level");
        assert_eq!(err.key, "logLevel");
    }

    #[test]
    fn unknown_keys_warn_but_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, warnings) = from_file_doc(
            &json!({"prot": 1, "webhook": {"secrett": "x"}}),
            &env(dir.path()),
        )
        .expect("loads");
        assert!(
            warnings.iter().any(|w| w.contains("`prot`")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("`webhook.secrett`")),
            "{warnings:?}"
        );
    }

    #[test]
    fn env_overrides_and_tilde() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut e = env(dir.path());
        e.port = Some("4100".into());
        e.host = Some("0.0.0.0".into());
        let (c, _) = from_file_doc(&json!({"dataDir": "~/d", "port": 1}), &e).expect("load");
        assert_eq!(c.port, 4100);
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.data_dir, dir.path().join("d").display().to_string());
        e.port = Some("http".into());
        assert_eq!(
            from_file_doc(&json!({}), &e).expect_err("bad PORT").key,
            "PORT"
        );
    }

    #[test]
    fn detects_claude_in_nvm() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join(".nvm/versions/node/v22.1.0/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let claude = bin.join("claude");
        std::fs::write(&claude, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (c, _) = from_file_doc(&json!({}), &env(dir.path())).expect("load");
        assert_eq!(
            c.claude_path.as_deref(),
            Some(claude.to_str().expect("utf8"))
        );
        assert_eq!(c.nvm_bin.as_deref(), Some(bin.to_str().expect("utf8")));
    }

    #[test]
    fn ccs_api_key_adds_a_redacted_admin_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut e = env(dir.path());
        let secret = "env-secret-0123456789";
        e.api_key = Some(secret.into());
        let file = json!({"auth": {"apiKeys": [{"name": "app", "key": "app-key-0123"}]}});
        let (c, warnings) = from_file_doc(&file, &e).expect("load");
        let names: Vec<(&str, bool)> = c
            .auth
            .api_keys
            .iter()
            .map(|k| (k.name.as_str(), k.admin))
            .collect();
        assert_eq!(names, vec![("app", false), (API_KEY_ENV, true)]);
        assert_eq!(c.auth.api_keys[1].key, secret);
        // Shown nowhere: not in the redacted config, a warning or the environment's Debug.
        assert!(!c.redacted().to_string().contains(secret));
        assert!(!format!("{warnings:?}").contains(secret));
        assert!(!format!("{e:?}").contains(secret), "{e:?}");
        // With no key in the file it is the only one: the bind policy is satisfied.
        let (c, _) = from_file_doc(&json!({}), &e).expect("load");
        assert_eq!(c.auth.api_keys.len(), 1);
        // Already in the file: not added twice.
        let same = json!({"auth": {"apiKeys": [{"name": "ops", "key": secret, "admin": true}]}});
        let (c, _) = from_file_doc(&same, &e).expect("load");
        assert_eq!(c.auth.api_keys.len(), 1);
        assert_eq!(c.auth.api_keys[0].name, "ops");
    }

    #[test]
    fn a_bad_ccs_api_key_names_the_variable_without_echoing_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut e = env(dir.path());
        e.api_key = Some("short".into());
        let err = from_file_doc(&json!({}), &e).expect_err("too short");
        assert_eq!(err.key, API_KEY_ENV);
        assert!(!err.to_string().contains("short"), "{err}");
        e.api_key = Some("long-enough-key".into());
        let taken = json!({"auth": {"apiKeys": [{"name": "CCS_API_KEY", "key": "another-key-1"}]}});
        let err = from_file_doc(&taken, &e).expect_err("name taken");
        assert_eq!(err.key, API_KEY_ENV);
        assert!(!err.to_string().contains("long-enough-key"), "{err}");
    }
}
