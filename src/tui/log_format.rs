//! One log line, read whatever its shape: a JSON object (the server's own lines, see
//! `logging::format`; `tracing`'s JSON format with nested `fields`; or a flat
//! `{"time","level","msg",...}`) or plain text (the server's text lines, colour codes and all,
//! or anything else a process printed).

use serde_json::{Map, Value};

use crate::daemon::strip_ansi;

/// A log line taken apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub time: Option<String>,
    pub level: Option<String>,
    pub target: Option<String>,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

const LEVELS: &[&str] = &["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

pub fn parse(line: &str) -> Entry {
    let line = strip_ansi(line);
    let trimmed = line.trim();
    if trimmed.starts_with('{') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) {
            return from_json(map);
        }
    }
    from_text(trimmed)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn from_json(mut map: Map<String, Value>) -> Entry {
    let take = |map: &mut Map<String, Value>, keys: &[&str]| {
        keys.iter()
            .find_map(|k| map.remove(*k))
            .map(|v| text_of(&v))
    };
    let time = take(&mut map, &["timestamp", "time", "ts"]);
    let level = take(&mut map, &["level", "lvl", "severity"]).map(|l| l.to_uppercase());
    let target = take(&mut map, &["target"]);
    let mut fields = Vec::new();
    let mut message = None;
    // tracing's JSON format nests the event's fields, message included; anything else under
    // that key is a field of its own.
    match map.remove("fields") {
        Some(Value::Object(inner)) => {
            for (k, v) in inner {
                if k == "message" {
                    message = Some(text_of(&v));
                } else {
                    fields.push((k, text_of(&v)));
                }
            }
        }
        Some(other) => fields.push(("fields".to_string(), text_of(&other))),
        None => {}
    }
    if message.is_none() {
        message = take(&mut map, &["message", "msg"]);
    }
    // Span context is noise in a one-line view; everything else is a field.
    for k in ["span", "spans", "threadId", "threadName"] {
        map.remove(k);
    }
    for (k, v) in map {
        fields.push((k, text_of(&v)));
    }
    Entry {
        time,
        level,
        target,
        message: message.unwrap_or_default(),
        fields,
    }
}

/// `2025-01-01T00:00:00.000000Z  INFO some::target: message key=value`, or any text.
fn from_text(line: &str) -> Entry {
    let mut rest = line;
    let mut entry = Entry::default();
    if let Some((first, after)) = rest.split_once(char::is_whitespace) {
        if looks_like_time(first) {
            entry.time = Some(first.to_string());
            rest = after.trim_start();
        }
    }
    if let Some((first, after)) = rest.split_once(char::is_whitespace) {
        if LEVELS.contains(&first) {
            entry.level = Some(first.to_string());
            rest = after.trim_start();
        }
    }
    if entry.level.is_some() {
        if let Some((first, after)) = rest.split_once(": ") {
            if !first.contains(char::is_whitespace)
                && (first.contains("::") || first.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                entry.target = Some(first.to_string());
                rest = after;
            }
        }
    }
    entry.message = rest.to_string();
    entry
}

fn looks_like_time(s: &str) -> bool {
    s.len() >= 19
        && s.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && s.as_bytes().get(4) == Some(&b'-')
        && s.contains('T')
}

/// `2025-01-01T12:34:56.789Z` → `2025-01-01 12:34:56.789`.
fn short_time(t: &str) -> String {
    if t.len() >= 19 && t.as_bytes().get(10) == Some(&b'T') {
        let end = t.len().min(23);
        t.get(..end)
            .map(|s| s.replacen('T', " ", 1))
            .unwrap_or_else(|| t.to_string())
    } else {
        t.to_string()
    }
}

impl Entry {
    /// One line: `time LEVEL message  key=value …`.
    pub fn display(&self) -> String {
        let mut out = String::new();
        if let Some(t) = &self.time {
            out.push_str(&short_time(t));
            out.push(' ');
        }
        if let Some(l) = &self.level {
            out.push_str(&format!("{l:<5} "));
        }
        out.push_str(&self.message);
        for (k, v) in &self.fields {
            out.push_str(&format!("  {k}={v}"));
        }
        out
    }
}

/// Whether `line` matches a search: case-insensitive, in the raw line or its display.
pub fn matches(line: &str, entry: &Entry, query_lower: &str) -> bool {
    query_lower.is_empty()
        || line.to_lowercase().contains(query_lower)
        || entry.display().to_lowercase().contains(query_lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_json_lines() {
        let e = parse(
            r#"{"timestamp":"2025-03-04T05:06:07.123456Z","level":"INFO","fields":{"message":"listening","port":3000,"host":"127.0.0.1"},"target":"claude_code_server::app"}"#,
        );
        assert_eq!(e.level.as_deref(), Some("INFO"));
        assert_eq!(e.message, "listening");
        assert!(e.fields.contains(&("port".into(), "3000".into())));
        assert_eq!(
            e.display(),
            "2025-03-04 05:06:07.123 INFO  listening  host=127.0.0.1  port=3000"
        );
    }

    #[test]
    fn flat_json_lines() {
        let e = parse(r#"{"time":"t","level":"warn","msg":"slow","task_id":"abc"}"#);
        assert_eq!(e.level.as_deref(), Some("WARN"));
        assert_eq!(e.message, "slow");
        assert_eq!(e.fields, vec![("task_id".to_string(), "abc".to_string())]);
        // A field that happens to be called `fields` (the statistics' count of bad counters).
        let e = parse(r#"{"level":"WARN","message":"skipped","fields":2}"#);
        assert_eq!(e.fields, vec![("fields".to_string(), "2".to_string())]);
    }

    #[test]
    fn plain_text_with_colours() {
        let raw = "\u{1b}[2m2025-03-04T05:06:07.123456Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mclaude_code_server::app\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening \u{1b}[3mport\u{1b}[0m\u{1b}[2m=\u{1b}[0m3000";
        let e = parse(raw);
        assert_eq!(e.time.as_deref(), Some("2025-03-04T05:06:07.123456Z"));
        assert_eq!(e.level.as_deref(), Some("INFO"));
        assert_eq!(e.target.as_deref(), Some("claude_code_server::app"));
        assert_eq!(e.message, "listening port=3000");
    }

    #[test]
    fn anything_else_is_a_message() {
        let e = parse("claude-code-server: cannot listen on 127.0.0.1:1: Permission denied");
        assert_eq!(e.level, None);
        assert_eq!(e.time, None);
        assert_eq!(
            e.display(),
            "claude-code-server: cannot listen on 127.0.0.1:1: Permission denied"
        );
        assert!(matches("x", &parse("Some Text"), "some"));
        assert!(!matches("x", &parse("Some Text"), "other"));
    }
}
