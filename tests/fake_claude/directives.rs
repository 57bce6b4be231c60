//! How a test steers the fake: `[[fake:KEY=VALUE]]` tokens in the prompt, `FAKE_CLAUDE_<KEY>`
//! environment defaults, and an optional script of per-invocation scenarios.
//!
//! Precedence: prompt directive > script entry > environment. Prompt directives exist because
//! the service may clear the child's environment; the environment exists for defaults that
//! should apply to every spawn of a test.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::str::FromStr;

use crate::json::J;

/// Every key the fake understands; the environment is only consulted for these, so
/// `FAKE_CLAUDE_LOG` and friends are never mistaken for directives.
pub const KEYS: &[&str] = &[
    "reply",
    "startup_ms",
    "latency_ms",
    "chunk_ms",
    "chunks",
    "tool",
    "tool_loop",
    "deny_tool",
    "api_error",
    "retries",
    "retry_ms",
    "not_logged_in",
    "hang",
    "hang_after_partial",
    "ignore_sigterm",
    "crash",
    "exit_code",
    "garbage",
    "stderr",
    "big",
    "cost",
    "in_tokens",
    "out_tokens",
    "cache_read",
    "cache_create",
    "model_echo",
];

const OPEN: &str = "[[fake:";
const CLOSE: &str = "]]";

/// The effective settings of one turn. A key maps to `None` when given without a value.
#[derive(Debug, Clone, Default)]
pub struct Directives {
    map: BTreeMap<String, Option<String>>,
}

impl Directives {
    /// Environment defaults for every known key.
    pub fn from_env() -> Directives {
        let mut map = BTreeMap::new();
        for key in KEYS {
            let var = format!("FAKE_CLAUDE_{}", key.to_ascii_uppercase());
            if let Ok(value) = std::env::var(var) {
                map.insert((*key).to_string(), Some(value));
            }
        }
        Directives { map }
    }

    /// Layers `other` on top of `self` (other wins).
    pub fn overlay(&self, other: &Directives) -> Directives {
        let mut map = self.map.clone();
        map.extend(other.map.iter().map(|(k, v)| (k.clone(), v.clone())));
        Directives { map }
    }

    /// A switch: present without a value, or with anything but an explicit "off" value.
    pub fn flag(&self, key: &str) -> bool {
        match self.map.get(key) {
            None => false,
            Some(None) => true,
            Some(Some(v)) => !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "false" | "no" | "off"
            ),
        }
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(|v| v.as_deref())
    }

    /// A number; an unreadable value counts as absent rather than failing the run.
    pub fn num<T: FromStr>(&self, key: &str) -> Option<T> {
        self.text(key).and_then(|v| v.trim().parse().ok())
    }

    pub fn to_json(&self) -> J {
        J::Obj(
            self.map
                .iter()
                .map(|(k, v)| (k.clone(), J::from(v.clone())))
                .collect(),
        )
    }
}

/// Splits the prompt into its directives and the text the fake echoes back (directives
/// removed, surrounding whitespace trimmed).
pub fn extract(prompt: &str) -> (Directives, String) {
    let mut map = BTreeMap::new();
    let mut text = String::with_capacity(prompt.len());
    let mut rest = prompt;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else {
            break;
        };
        text.push_str(&rest[..start]);
        let body = &after[..end];
        let (key, value) = match body.split_once('=') {
            Some((k, v)) => (k, Some(unescape(v))),
            None => (body, None),
        };
        map.insert(key.trim().to_ascii_lowercase(), value);
        rest = &after[end + CLOSE.len()..];
    }
    text.push_str(rest);
    (Directives { map }, text.trim().to_string())
}

/// `\n` in a directive value stands for a newline, so `stderr=` can produce several lines.
fn unescape(value: &str) -> String {
    value.replace("\\n", "\n")
}

/// The entry of `FAKE_CLAUDE_SCRIPT` for this invocation, if any.
///
/// The script is a JSON array; entry *i* applies to the *i*-th invocation (counted in
/// `<script>.counter`, under an exclusive `flock` so parallel fakes each take their own
/// entry). An entry is an object of directive keys (`{"api_error":"500"}`, `true` for a
/// switch) or a string of `[[fake:…]]` tokens. Past the end of the list nothing applies.
pub fn from_script() -> Result<Directives, String> {
    let Ok(path) = std::env::var("FAKE_CLAUDE_SCRIPT") else {
        return Ok(Directives::default());
    };
    let content = std::fs::read_to_string(&path)
        .map_err(|e| format!("fake-claude: cannot read FAKE_CLAUDE_SCRIPT {path}: {e}"))?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&content)
        .map_err(|e| format!("fake-claude: FAKE_CLAUDE_SCRIPT {path} is not a JSON array: {e}"))?;
    let index = next_counter(&format!("{path}.counter"))
        .map_err(|e| format!("fake-claude: cannot update {path}.counter: {e}"))?;
    let Some(entry) = entries.get(index) else {
        return Ok(Directives::default());
    };
    Ok(match entry {
        serde_json::Value::String(s) => extract(s).0,
        serde_json::Value::Object(fields) => Directives {
            map: fields
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        serde_json::Value::Bool(true) | serde_json::Value::Null => None,
                        serde_json::Value::Bool(false) => Some("0".to_string()),
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    };
                    (k.to_ascii_lowercase(), value)
                })
                .collect(),
        },
        _ => Directives::default(),
    })
}

/// Reads and increments the counter file; returns the value before the increment.
fn next_counter(path: &str) -> std::io::Result<usize> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a descriptor we own; the lock is released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let current: usize = text.trim().parse().unwrap_or(0);
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all((current + 1).to_string().as_bytes())?;
    Ok(current)
}
