//! Config changes while running: the ConfigWatcher actor (hot reload of the file) and the one
//! path every change takes, [`apply_new_config`], shared with `PATCH /api/config`.
//!
//! * The watcher watches the file's *directory*: editors save by writing a temporary file and
//!   renaming it over the config, which replaces the inode a file watch would be on. Events for
//!   other names are ignored; a burst of events is debounced ([`DEBOUNCE`]).
//! * A new document is compared with the one in force first: our own `PATCH` writes, and saves
//!   that change nothing, are not applied twice nor logged.
//! * A refused document leaves everything as it was; the refusal is logged once (naming the
//!   key) and kept for `/health` (`config.last_reload_error`) until a good one is applied.
//! * Keys that only take effect at start ([`RESTART_KEYS`]) keep their running values in the
//!   applied config, so `GET /api/config` shows what is in force; they are logged as needing a
//!   restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use actors::config::load::{from_file_doc, write_atomic, Environment};
use actors::config::merge::merge_patch;
use actors::config::{Config, ConfigError};

use crate::state::AppState;

/// Quiet time after the last file event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Top-level keys read only at start: the listener, storage, pid file and log file.
pub const RESTART_KEYS: &[&str] = &[
    "port",
    "host",
    "storageType",
    "redisUrl",
    "redisNamespace",
    "dataDir",
    "pidFile",
    "logFile",
];

/// What a successful change did.
#[derive(Debug, Clone)]
pub struct AppliedChange {
    /// The effective config now in force.
    pub config: Arc<Config>,
    /// Dotted keys whose effective value changed (names only: values may be secrets).
    pub changed: Vec<String>,
    /// Keys that changed in the file but keep their running value until a restart.
    pub restart_required: Vec<String>,
}

/// The last refused change, for `/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadFailure {
    pub key: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// Where the config came from, kept to apply later documents the same way.
#[derive(Debug, Clone, Default)]
struct Source {
    /// The file's document in force (not merged with the defaults).
    doc: Value,
    env: Environment,
    /// `--host` / `--port`, which win over the file at every reload too.
    host: Option<String>,
    port: Option<u16>,
}

/// The reload part of the shared state.
#[derive(Default)]
pub struct ReloadState {
    /// Held for a whole change (read, validate, write, apply): the watcher and `PATCH` never
    /// interleave.
    source: tokio::sync::Mutex<Source>,
    last_error: Mutex<Option<ReloadFailure>>,
}

impl ReloadState {
    /// Record where the running config came from (at start).
    pub async fn init(
        &self,
        doc: Value,
        env: Environment,
        host: Option<String>,
        port: Option<u16>,
    ) {
        *self.source.lock().await = Source {
            doc,
            env,
            host,
            port,
        };
    }

    pub fn last_error(&self) -> Option<ReloadFailure> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_last_error(&self, e: Option<ReloadFailure>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// Validate `new_doc` (the whole file document) and, if it is good, put it in force. The same
/// document as the one in force changes nothing (and reports no change). The error never
/// quotes a secret of `new_doc`.
pub async fn apply_new_config(
    state: &AppState,
    new_doc: Value,
) -> Result<AppliedChange, ConfigError> {
    let mut source = state.reload.source.lock().await;
    if new_doc == source.doc {
        // Our own PATCH, a save without changes, or the file put back as it was.
        state.reload.set_last_error(None);
        return Ok(AppliedChange {
            config: state.config(),
            changed: Vec::new(),
            restart_required: Vec::new(),
        });
    }
    let prepared = prepare(state, &source, &new_doc).map_err(|e| scrub(e, &new_doc))?;
    Ok(commit(state, &mut source, new_doc, prepared))
}

/// Why a `PATCH /api/config` failed.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Invalid(ConfigError),
    #[error("cannot write the config file: {0}")]
    Write(std::io::Error),
}

/// `PATCH /api/config`: merge `patch` (RFC 7396) over the file's document, validate, write the
/// file atomically, then apply it like a reload. The watcher will see the write, find the same
/// document in force and do nothing.
pub async fn patch_config(state: &AppState, patch: &Value) -> Result<AppliedChange, PatchError> {
    let mut source = state.reload.source.lock().await;
    // The file as it is now (an edit the watcher has not applied yet is kept); a file that is
    // missing or not JSON cannot be in force, so the document in force is the base then.
    let mut doc = read_doc(&state.config_path)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| source.doc.clone());
    merge_patch(&mut doc, patch);
    let prepared = prepare(state, &source, &doc).map_err(|e| {
        state.metrics.config_reload(false);
        PatchError::Invalid(scrub(e, &doc))
    })?;
    let mut text = serde_json::to_vec_pretty(&doc).map_err(|e| PatchError::Write(e.into()))?;
    text.push(b'\n');
    write_atomic(&state.config_path, &text).map_err(PatchError::Write)?;
    Ok(commit(state, &mut source, doc, prepared))
}

/// A validated document, not yet in force.
struct Prepared {
    config: Config,
    restart_required: Vec<String>,
}

/// The effective config `doc` would give, or why it is refused. Changes nothing.
fn prepare(state: &AppState, source: &Source, doc: &Value) -> Result<Prepared, ConfigError> {
    let (mut config, warnings) = from_file_doc(doc, &source.env)?;
    for w in warnings {
        log::warn!("{w}");
    }
    if let Some(h) = &source.host {
        config.host = h.clone();
    }
    if let Some(p) = source.port {
        config.port = p;
    }
    let running = state.config();
    let restart_required = restart_keys_changed(&config, &running);
    keep_running_values(&mut config, &running);
    config.validate()?;
    crate::app::check_bind_policy(&config)
        .map_err(|e| ConfigError::new("auth.apiKeys", e.to_string()))?;
    Ok(Prepared {
        config,
        restart_required,
    })
}

/// Put `config` in force: the shared config (read by handlers, the stats and webhook actors),
/// the queue (concurrency, maxPending, runner settings) and logging (level, rotation).
fn commit(state: &AppState, source: &mut Source, doc: Value, prepared: Prepared) -> AppliedChange {
    let Prepared {
        config,
        restart_required,
    } = prepared;
    let running = state.config();
    let old = serde_json::to_value(&*running).unwrap_or(Value::Null);
    let new = serde_json::to_value(&config).unwrap_or(Value::Null);
    let changed = changed_keys(&old, &new);
    let config = Arc::new(config);
    state.set_config(config.clone());
    state.queue.reconfigure(config.clone());
    crate::logging::apply(&config);
    if crate::cli_check::affected_by(&changed) {
        crate::cli_check::spawn(state, &config);
    }
    source.doc = doc;
    state.reload.set_last_error(None);
    state.metrics.config_reload(true);
    if !changed.is_empty() {
        log::info!(keys:% = changed.join(", "); "config applied");
    }
    for key in &restart_required {
        log::warn!(key:% = key; "config key `{key}` changed in the file but needs a restart; the running value stays in force");
    }
    AppliedChange {
        config,
        changed,
        restart_required,
    }
}

/// Keep the running values of the keys read only at start.
pub fn keep_running_values(new: &mut Config, running: &Config) {
    new.port = running.port;
    new.host = running.host.clone();
    new.storage_type = running.storage_type;
    new.redis_url = running.redis_url.clone();
    new.redis_namespace = running.redis_namespace.clone();
    new.data_dir = running.data_dir.clone();
    new.pid_file = running.pid_file.clone();
    new.log_file = running.log_file.clone();
}

/// Restart-only keys whose value in `new` (what the file asks for) differs from the running
/// one. Computed on effective configs, so `~` paths, `PORT`/`HOST` and `--port`/`--host` count
/// as they do at start.
pub fn restart_keys_changed(new: &Config, running: &Config) -> Vec<String> {
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let running = serde_json::to_value(running).unwrap_or(Value::Null);
    RESTART_KEYS
        .iter()
        .filter(|k| new.get(**k) != running.get(**k))
        .map(|k| (*k).to_owned())
        .collect()
}

/// Dotted paths of the leaves (arrays count as leaves) that differ between two documents.
pub fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    fn walk(old: Option<&Value>, new: Option<&Value>, prefix: &str, out: &mut Vec<String>) {
        match (old, new) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(a.get(k), b.get(k), &path, out);
                }
            }
            (a, b) if a != b => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(old), Some(new), "", &mut out);
    out
}

/// A refusal without any secret of `doc` in its message: serde quotes the offending value,
/// which could be an API key, the webhook secret or a password put in the wrong place.
pub fn scrub(e: ConfigError, doc: &Value) -> ConfigError {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(keys) = doc.pointer("/auth/apiKeys").and_then(Value::as_array) {
        for k in keys {
            if let Some(s) = k.get("key").and_then(Value::as_str) {
                secrets.push(s.to_owned());
            }
        }
    }
    for ptr in ["/webhook/secret", "/redisUrl"] {
        if let Some(s) = doc.pointer(ptr).and_then(Value::as_str) {
            secrets.push(s.to_owned());
        }
    }
    if let Some(env) = doc.get("claudeEnv").and_then(Value::as_object) {
        secrets.extend(env.values().filter_map(Value::as_str).map(str::to_owned));
    }
    if secrets
        .iter()
        .any(|s| s.len() >= 4 && e.message.contains(s.as_str()))
    {
        return ConfigError::new(
            e.key,
            "has an invalid value (not shown: it may be a secret)",
        );
    }
    e
}

fn read_doc(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("(file)", format!("cannot be read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| ConfigError::new("(file)", format!("is not valid JSON: {e}")))
}

/// Read the file and apply it if it differs from the document in force.
async fn reload_from_file(state: &AppState) {
    let path = state.config_path.clone();
    let doc = match tokio::task::spawn_blocking(move || read_doc(&path)).await {
        Ok(Ok(doc)) => doc,
        // Between an editor's delete and create: the next event brings the new file.
        Ok(Err(_)) if !state.config_path.exists() => return,
        Ok(Err(e)) => return refuse(state, e),
        Err(_) => return,
    };
    if let Err(e) = apply_new_config(state, doc).await {
        refuse(state, e);
    }
}

fn refuse(state: &AppState, e: ConfigError) {
    log::error!(key:% = e.key, path:% = state.config_path.display(); "config file refused, the running config stays: {e}");
    state.metrics.config_reload(false);
    state.reload.set_last_error(Some(ReloadFailure {
        key: e.key,
        message: e.message,
        at: Utc::now(),
    }));
}

/// Stops the watcher; dropping it stops the watcher too.
pub struct WatcherHandle {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl WatcherHandle {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.done).await;
    }
}

/// The ConfigWatcher actor.
pub struct ConfigWatcher;

impl ConfigWatcher {
    /// Watch the config file's directory. `None` (with an error logged) when no watcher can be
    /// set up: the server runs on, and `PATCH /api/config` still applies changes.
    pub fn start(state: AppState) -> Option<WatcherHandle> {
        let path = state.config_path.clone();
        let dir = watch_dir(&path);
        let name = path.file_name()?.to_owned();
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if is_change(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == Some(name.as_os_str()))
                {
                    let _ = tx.send(());
                }
            }
            Err(e) => log::warn!(error:% = e; "config file watcher error"),
        };
        let watcher = match watcher(handler, &dir) {
            Ok(w) => w,
            Err(e) => {
                log::error!(dir:% = dir.display(), error:% = e; "cannot watch the config file; hot reload is off (PATCH /api/config still works)");
                return None;
            }
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let done = tokio::spawn(run(state, watcher, rx, stop_rx));
        Some(WatcherHandle {
            stop: Some(stop_tx),
            done,
        })
    }
}

fn watch_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// inotify, or polling where inotify cannot be had (its per-user instance limit is reached).
fn watcher<F>(handler: F, dir: &Path) -> notify::Result<Box<dyn Watcher + Send>>
where
    F: Fn(notify::Result<notify::Event>) + Clone + Send + 'static,
{
    let native = notify::recommended_watcher(handler.clone()).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Box::new(w) as Box<dyn Watcher + Send>)
    });
    match native {
        Ok(w) => Ok(w),
        Err(e) => {
            log::warn!(error:% = e; "no native file watcher; polling the config file every 500 ms");
            let config = notify::Config::default()
                .with_poll_interval(Duration::from_millis(500))
                .with_compare_contents(true);
            let mut w = notify::PollWatcher::new(handler, config)?;
            w.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(Box::new(w))
        }
    }
}

/// Events that may have changed the file's content (opening and reading it do not).
fn is_change(kind: &EventKind) -> bool {
    use notify::event::AccessKind;
    match kind {
        EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn run(
    state: AppState,
    watcher: Box<dyn Watcher + Send>,
    mut events: mpsc::UnboundedReceiver<()>,
    mut stop: oneshot::Receiver<()>,
) {
    // Owned here: watching ends when this task does.
    let _watcher = watcher;
    loop {
        tokio::select! {
            // A stop, or the handle dropped.
            _ = &mut stop => return,
            ev = events.recv() => if ev.is_none() { return },
        }
        // Debounce: wait until the events have been quiet for DEBOUNCE.
        loop {
            tokio::select! {
                _ = &mut stop => return,
                ev = tokio::time::timeout(DEBOUNCE, events.recv()) => match ev {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                },
            }
        }
        reload_from_file(&state).await;
    }
}

/// `{"key","message","at"}` of a failure, for `/health`.
pub fn failure_json(f: &ReloadFailure) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), f.key.clone().into());
    m.insert("message".into(), f.message.clone().into());
    m.insert("at".into(), actors::model::rfc3339(&f.at).into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_keys_lists_leaves() {
        let old = json!({"a": 1, "q": {"c": 3, "d": [1]}, "gone": true});
        let new = json!({"a": 1, "q": {"c": 4, "d": [1, 2]}, "new": null});
        assert_eq!(changed_keys(&old, &new), vec!["gone", "new", "q.c", "q.d"]);
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn running_values_of_restart_keys_are_kept() {
        let env = Environment::default();
        let (running, _) = from_file_doc(&json!({"port": 1234}), &env).expect("valid");
        let (mut new, _) = from_file_doc(
            &json!({"port": 9, "dataDir": "/elsewhere", "taskQueue": {"concurrency": 7}}),
            &env,
        )
        .expect("valid");
        assert_eq!(
            restart_keys_changed(&new, &running),
            vec!["port", "dataDir"]
        );
        keep_running_values(&mut new, &running);
        assert!(restart_keys_changed(&new, &running).is_empty());
        assert_eq!(new.port, 1234);
        assert_eq!(new.data_dir, running.data_dir);
        assert_eq!(new.task_queue.concurrency, 7);
    }

    #[test]
    fn secrets_never_reach_an_error_message() {
        let doc = json!({"auth": {"apiKeys": [{"name": "a", "key": "sk-topsecret"}]}});
        let e = ConfigError::new(
            "port",
            "invalid type: string \"sk-topsecret\", expected u16",
        );
        let s = scrub(e, &doc);
        assert_eq!(s.key, "port");
        assert!(!s.message.contains("sk-topsecret"));
        let e = ConfigError::new("port", "must be a number");
        assert_eq!(scrub(e.clone(), &doc), e);
    }

    #[test]
    fn reads_and_opens_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
    }
}
