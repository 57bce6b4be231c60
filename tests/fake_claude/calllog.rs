//! `FAKE_CLAUDE_LOG=/path/calls.jsonl`: what each invocation received, for the service's tests.
//!
//! Lines, each one `write` on an `O_APPEND` descriptor so parallel fakes never interleave:
//! * `{"event":"start","pid","pgid","argv","cwd","started_at"}` at once, so a test can find
//!   the pid of a fake that is later SIGKILLed (which leaves no other trace);
//! * `{"event":"hang","pid","child_pid"}` when `hang` starts waiting (the `sleep` child's pid);
//! * `{"event":"exit",…}` the full record at exit, also on SIGTERM/SIGINT.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::clock::now_iso;

struct Log {
    path: String,
    record: Map<String, Value>,
}

static LOG: Mutex<Option<Log>> = Mutex::new(None);
static FINAL_WRITTEN: AtomicBool = AtomicBool::new(false);

fn append(path: &str, line: &Value) {
    let text = format!("{line}\n");
    if let Ok(mut f) = OpenOptions::new().append(true).create(true).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

fn env_subset() -> Value {
    let keep = |k: &str| {
        k.starts_with("ANTHROPIC_")
            || k.starts_with("CLAUDE_")
            || k.starts_with("DISABLE_")
            || k.starts_with("CCS_")
            || matches!(k, "HOME" | "IS_SANDBOX" | "PATH")
    };
    let map: Map<String, Value> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            keep(&k).then(|| (k, Value::from(v.to_string_lossy().into_owned())))
        })
        .collect();
    Value::Object(map)
}

pub fn pgid() -> i32 {
    // SAFETY: getpgid(0) queries the calling process.
    unsafe { libc::getpgid(0) }
}

/// Starts the record and writes the `start` line (no-op without `FAKE_CLAUDE_LOG`).
pub fn start(argv: &[String], cwd: &str) {
    let Ok(path) = std::env::var("FAKE_CLAUDE_LOG") else {
        return;
    };
    if path.is_empty() {
        return;
    }
    let started_at = now_iso();
    let pid = std::process::id();
    append(
        &path,
        &json!({"event": "start", "pid": pid, "pgid": pgid(), "argv": argv, "cwd": cwd, "started_at": started_at}),
    );
    let mut record = Map::new();
    record.insert("event".into(), "exit".into());
    record.insert("argv".into(), json!(argv));
    record.insert("cwd".into(), cwd.into());
    record.insert("env".into(), env_subset());
    record.insert("pid".into(), pid.into());
    record.insert("pgid".into(), pgid().into());
    record.insert("started_at".into(), started_at.into());
    record.insert("stdin".into(), Value::Null);
    record.insert("stdin_closed".into(), false.into());
    record.insert("prompt".into(), Value::Null);
    record.insert("parsed_flags".into(), Value::Null);
    record.insert("concurrent_session".into(), false.into());
    *LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Log { path, record });
}

/// Sets one field of the final record.
pub fn set(key: &str, value: Value) {
    if let Some(log) = LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        log.record.insert(key.to_string(), value);
    }
}

/// Writes an extra event line now (e.g. `hang`).
pub fn event(name: &str, fields: Value) {
    let guard = LOG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(log) = guard.as_ref() {
        let mut line = Map::new();
        line.insert("event".into(), name.into());
        line.insert("pid".into(), std::process::id().into());
        if let Value::Object(extra) = fields {
            line.extend(extra);
        }
        append(&log.path, &Value::Object(line));
    }
}

/// Writes the final record once, whichever exit path comes first.
pub fn finish(exit_code: i32, signal: Option<&str>) {
    if FINAL_WRITTEN.swap(true, Ordering::SeqCst) {
        return;
    }
    let guard = LOG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(log) = guard.as_ref() {
        let mut record = log.record.clone();
        record.insert("ended_at".into(), now_iso().into());
        record.insert("exit_code".into(), exit_code.into());
        record.insert("signal".into(), signal.map_or(Value::Null, Value::from));
        append(&log.path, &Value::Object(record));
    }
}
