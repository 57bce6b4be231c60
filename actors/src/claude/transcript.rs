//! Where the CLI keeps a session's transcript, and reading it back as messages.
//!
//! `$CLAUDE_CONFIG_DIR` (default `~/.claude`) `/projects/<cwd with every character outside
//! [A-Za-z0-9] replaced by '-'>/<session-id>.jsonl`, one JSON record per line, append-only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// The CLI's config directory for runs with this environment (`claudeEnv` first, then the
/// daemon's own `CLAUDE_CONFIG_DIR`, then `$HOME/.claude`).
pub fn config_dir(claude_env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(dir) = claude_env
        .get("CLAUDE_CONFIG_DIR")
        .filter(|d| !d.is_empty())
    {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let home = claude_env
        .get("HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))?;
    Some(home.join(".claude"))
}

/// `/tmp/a_b.c` → `-tmp-a-b-c`.
pub fn encode_cwd(cwd: &Path) -> String {
    cwd.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The transcript file of `session_id` run in `cwd`.
pub fn path(config_dir: &Path, cwd: &Path, session_id: &str) -> PathBuf {
    config_dir
        .join("projects")
        .join(encode_cwd(cwd))
        .join(format!("{session_id}.jsonl"))
}

/// One message of a conversation, as `GET /api/sessions/:id/messages` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Value,
    pub timestamp: Option<String>,
}

/// The user and assistant messages of a transcript, in order. Lines that are not JSON or not
/// messages are skipped (the file is the CLI's, with record types we do not know).
pub fn read_messages(text: &str) -> Vec<Message> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let role = match record.get("type").and_then(Value::as_str) {
            Some("user") => "user",
            Some("assistant") => "assistant",
            _ => continue,
        };
        if record.get("isMeta").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let timestamp = record
            .get("timestamp")
            .and_then(Value::as_str)
            .map(String::from);
        let content = record
            .pointer("/message/content")
            .cloned()
            .unwrap_or(Value::Null);
        match content {
            Value::String(text) => out.push(Message {
                role: role.into(),
                kind: "text".into(),
                content: Value::String(strip_reminders(&text)),
                timestamp,
            }),
            Value::Array(blocks) => {
                for block in blocks {
                    let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                    let content = match kind {
                        "text" => Value::String(strip_reminders(
                            block.get("text").and_then(Value::as_str).unwrap_or(""),
                        )),
                        "tool_use" => serde_json::json!({
                            "id": block.get("id"),
                            "name": block.get("name"),
                            "input": block.get("input"),
                        }),
                        "tool_result" => serde_json::json!({
                            "tool_use_id": block.get("tool_use_id"),
                            "content": block.get("content"),
                            "is_error": block.get("is_error"),
                        }),
                        _ => continue,
                    };
                    if content.as_str().is_some_and(str::is_empty) {
                        continue;
                    }
                    out.push(Message {
                        role: role.into(),
                        kind: kind.into(),
                        content,
                        timestamp: timestamp.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The CLI prefixes context in `<system-reminder>` blocks; they are not the user's words.
fn strip_reminders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<system-reminder>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</system-reminder>") {
            Some(end) => rest = &rest[start + end + "</system-reminder>".len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_cli_layout() {
        assert_eq!(encode_cwd(Path::new("/tmp/a_b.c")), "-tmp-a-b-c");
        assert_eq!(
            path(Path::new("/h/.claude"), Path::new("/w/p"), "abc"),
            PathBuf::from("/h/.claude/projects/-w-p/abc.jsonl")
        );
    }

    #[test]
    fn config_dir_prefers_claude_env() {
        let mut env = BTreeMap::new();
        env.insert("CLAUDE_CONFIG_DIR".to_string(), "/x/y".to_string());
        assert_eq!(config_dir(&env), Some(PathBuf::from("/x/y")));
    }

    #[test]
    fn messages_are_read_and_reminders_stripped() {
        let text = [
            r#"{"type":"user","message":{"role":"user","content":"<system-reminder>ctx</system-reminder>hello"},"timestamp":"2026-01-01T00:00:00.000Z"}"#,
            r#"{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]}}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok","is_error":false}]}}"#,
            r#"{"type":"summary","summary":"x"}"#,
            "not json",
        ]
        .join("\n");
        let m = read_messages(&text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].content, Value::String("hello".into()));
        assert_eq!(m[0].timestamp.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(
            (m[1].role.as_str(), m[1].kind.as_str()),
            ("assistant", "text")
        );
        assert_eq!(m[2].kind, "tool_use");
        assert_eq!(
            (m[3].role.as_str(), m[3].kind.as_str()),
            ("user", "tool_result")
        );
    }
}
