//! The settings form's model, without any UI: which keys it edits, their current values, and
//! turning what was typed into a validated config file.
//!
//! Validation is the daemon's own: the edit is merged into the file's document
//! ([`merge_patch`]) and run through [`from_file_doc`], so the form refuses exactly what the
//! daemon would refuse, naming the same key.

use std::path::Path;

use serde_json::{Map, Value};

use actors::config::load::{defaults_doc, from_file_doc, write_atomic, Environment};
use actors::config::merge::{merge_patch, overlay};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number ≥ 0.
    Int,
    /// A number.
    Number,
    Text,
    /// Text; empty means `null` (the default).
    OptText,
    Bool,
    Choice(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The dotted config key.
    pub key: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// The keys the form edits, in order.
pub const FIELDS: &[Field] = &[
    Field {
        key: "port",
        kind: Kind::Int,
        help: "listen port (restart needed)",
    },
    Field {
        key: "host",
        kind: Kind::Text,
        help: "listen address (restart needed)",
    },
    Field {
        key: "taskQueue.concurrency",
        kind: Kind::Int,
        help: "CLI runs at once",
    },
    Field {
        key: "taskQueue.defaultTimeout",
        kind: Kind::Int,
        help: "ms per run",
    },
    Field {
        key: "defaultModel",
        kind: Kind::Text,
        help: "model when a request names none",
    },
    Field {
        key: "maxBudgetUsd",
        kind: Kind::Number,
        help: "default cap per run, USD",
    },
    Field {
        key: "rateLimit.enabled",
        kind: Kind::Bool,
        help: "limit requests per key",
    },
    Field {
        key: "rateLimit.windowMs",
        kind: Kind::Int,
        help: "window, ms",
    },
    Field {
        key: "rateLimit.maxRequests",
        kind: Kind::Int,
        help: "requests per window",
    },
    Field {
        key: "webhook.enabled",
        kind: Kind::Bool,
        help: "send webhooks",
    },
    Field {
        key: "webhook.defaultUrl",
        kind: Kind::OptText,
        help: "empty: none",
    },
    Field {
        key: "logLevel",
        kind: Kind::Choice(&["trace", "debug", "info", "warn", "error"]),
        help: "log verbosity",
    },
];

/// What a field holds in the form.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Bool(bool),
}

/// A refused edit, naming the config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The config file's document (`{}` when there is none yet: the daemon writes it at start).
pub fn read_file_doc(path: &Path) -> Result<Value, FormError> {
    let err = |message: String| FormError {
        key: "(file)".into(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| err(format!("{} is not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Object(Map::new())),
        Err(e) => Err(err(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The values the form starts with: the file over the defaults.
pub fn current_inputs(file_doc: &Value) -> Vec<(&'static str, Input)> {
    let effective = overlay(&defaults_doc(), file_doc);
    FIELDS
        .iter()
        .map(|f| {
            let v = get_path(&effective, f.key).cloned().unwrap_or(Value::Null);
            let input = match (f.kind, &v) {
                (Kind::Bool, v) => Input::Bool(v.as_bool().unwrap_or(false)),
                (_, Value::Null) => Input::Text(String::new()),
                (_, Value::String(s)) => Input::Text(s.clone()),
                (_, other) => Input::Text(other.to_string()),
            };
            (f.key, input)
        })
        .collect()
}

/// The merge patch for the fields whose value differs from `file_doc`'s effective one.
pub fn build_patch(file_doc: &Value, inputs: &[(&str, Input)]) -> Result<Value, FormError> {
    let before: std::collections::HashMap<&str, Input> =
        current_inputs(file_doc).into_iter().collect();
    let mut patch = Value::Object(Map::new());
    for (key, input) in inputs {
        if before.get(key) == Some(input) {
            continue;
        }
        let Some(field) = FIELDS.iter().find(|f| f.key == *key) else {
            continue;
        };
        let value = to_json(field, input)?;
        set_path(&mut patch, key, value);
    }
    Ok(patch)
}

fn to_json(field: &Field, input: &Input) -> Result<Value, FormError> {
    let refuse = |message: &str| FormError {
        key: field.key.into(),
        message: message.into(),
    };
    match (field.kind, input) {
        (Kind::Bool, Input::Bool(b)) => Ok(Value::Bool(*b)),
        (Kind::Bool, Input::Text(_)) => Err(refuse("must be true or false")),
        (_, Input::Bool(_)) => Err(refuse("must be text")),
        (Kind::Int, Input::Text(t)) => t
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| refuse(&format!("must be a whole number, got {:?}", t.trim()))),
        (Kind::Number, Input::Text(t)) => t
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| refuse(&format!("must be a number, got {:?}", t.trim()))),
        (Kind::OptText, Input::Text(t)) if t.trim().is_empty() => Ok(Value::Null),
        (Kind::Text | Kind::OptText | Kind::Choice(_), Input::Text(t)) => {
            Ok(Value::String(t.trim().to_string()))
        }
    }
}

/// Apply `patch` to the file's document and validate the result as the daemon would.
pub fn apply(file_doc: &Value, patch: &Value, env: &Environment) -> Result<Value, FormError> {
    let mut merged = file_doc.clone();
    merge_patch(&mut merged, patch);
    from_file_doc(&merged, env).map_err(|e| FormError {
        key: e.key,
        message: e.message,
    })?;
    Ok(merged)
}

/// Validate and write: re-read the file (so a concurrent edit of other keys is kept), apply,
/// write atomically (the daemon's hot reload sees the new file whole). Returns the keys
/// changed; none means nothing was written.
pub fn save(
    path: &Path,
    inputs: &[(&str, Input)],
    env: &Environment,
) -> Result<Vec<String>, FormError> {
    let file_doc = read_file_doc(path)?;
    let patch = build_patch(&file_doc, inputs)?;
    let changed = leaf_keys(&patch);
    if changed.is_empty() {
        return Ok(changed);
    }
    let merged = apply(&file_doc, &patch, env)?;
    let mut bytes = serde_json::to_vec_pretty(&merged).map_err(|e| FormError {
        key: "(file)".into(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|e| FormError {
        key: "(file)".into(),
        message: format!("cannot write {}: {e}", path.display()),
    })?;
    Ok(changed)
}

fn get_path<'a>(doc: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(doc, |v, k| v.get(k))
}

fn set_path(doc: &mut Value, dotted: &str, value: Value) {
    let mut cur = doc;
    let mut parts = dotted.split('.').peekable();
    while let Some(k) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        if parts.peek().is_none() {
            map.insert(k.to_string(), value);
            return;
        }
        cur = map
            .entry(k.to_string())
            .or_insert(Value::Object(Map::new()));
    }
}

fn leaf_keys(patch: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(v, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk(patch, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(home: &Path) -> Environment {
        Environment {
            home: Some(home.to_path_buf()),
            cwd: home.to_path_buf(),
            ..Environment::default()
        }
    }

    fn with(inputs: &mut [(&'static str, Input)], key: &str, v: Input) {
        for (k, i) in inputs.iter_mut() {
            if *k == key {
                *i = v.clone();
            }
        }
    }

    #[test]
    fn only_changed_keys_are_written_and_others_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"port": 4000, "claudeEnv": {"A": "b"}}"#).expect("write");
        let doc = read_file_doc(&path).expect("read");
        let mut inputs = current_inputs(&doc);
        assert!(inputs.contains(&("port", Input::Text("4000".into()))));
        assert!(inputs.contains(&("rateLimit.enabled", Input::Bool(true))));
        with(
            &mut inputs,
            "taskQueue.concurrency",
            Input::Text("7".into()),
        );
        with(&mut inputs, "webhook.enabled", Input::Bool(true));
        let changed = save(&path, &inputs, &env(dir.path())).expect("saves");
        assert_eq!(changed, vec!["taskQueue.concurrency", "webhook.enabled"]);
        let written = read_file_doc(&path).expect("read");
        assert_eq!(
            written,
            json!({"port": 4000, "claudeEnv": {"A": "b"}, "taskQueue": {"concurrency": 7}, "webhook": {"enabled": true}})
        );
        // Nothing changed: nothing written.
        let again = current_inputs(&written);
        assert!(save(&path, &again, &env(dir.path()))
            .expect("saves")
            .is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        let doc = json!({});
        let mut inputs = current_inputs(&doc);
        with(
            &mut inputs,
            "taskQueue.concurrency",
            Input::Text("0".into()),
        );
        let e = save(&path, &inputs, &env(dir.path())).expect_err("refused");
        assert_eq!(e.key, "taskQueue.concurrency");
        assert!(!path.exists(), "nothing written");
        let mut inputs = current_inputs(&doc);
        with(&mut inputs, "port", Input::Text("eighty".into()));
        assert_eq!(
            save(&path, &inputs, &env(dir.path()))
                .expect_err("refused")
                .key,
            "port"
        );
        let mut inputs = current_inputs(&doc);
        with(&mut inputs, "port", Input::Text("70000".into()));
        assert_eq!(
            save(&path, &inputs, &env(dir.path()))
                .expect_err("refused")
                .key,
            "port"
        );
    }

    #[test]
    fn empty_optional_text_is_null() {
        let doc = json!({"webhook": {"defaultUrl": "https://example.com/h"}});
        let mut inputs = current_inputs(&doc);
        with(&mut inputs, "webhook.defaultUrl", Input::Text(" ".into()));
        let patch = build_patch(&doc, &inputs).expect("patch");
        assert_eq!(patch, json!({"webhook": {"defaultUrl": null}}));
    }
}
