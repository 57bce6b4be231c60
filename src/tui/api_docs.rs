//! API docs: the daemon's endpoints, from its `GET /api/openapi.json` when it has one, else
//! from the built-in list below.

use cursive::views::{OnEventView, TextView};
use cursive::Cursive;
use serde_json::Value;

use super::widgets::{ctx, push_screen, text_area};
use super::worker::{unique_name, Live};
use crate::client::ClientError;

/// The routes of this version (src/http/mod.rs), for daemons without `/api/openapi.json`.
/// The one place the TUI lists them.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/health",
        "liveness and readiness: status, version, uptime, queue (503 when degraded)",
    ),
    (
        "POST",
        "/api/claude",
        "run a prompt: sync (200), async (202), or stream (SSE)",
    ),
    (
        "POST",
        "/api/claude/batch",
        "several prompts as tasks in the same queue",
    ),
    (
        "GET",
        "/api/config",
        "the effective config, secrets redacted",
    ),
    (
        "GET",
        "/api/tasks",
        "list tasks (?status=&session_id=&limit=&offset=)",
    ),
    ("POST", "/api/tasks/async", "queue a prompt (201)"),
    (
        "GET",
        "/api/tasks/queue/status",
        "queue counts, concurrency, cost",
    ),
    (
        "GET",
        "/api/tasks/:id",
        "one task: status, result or error, cost, usage",
    ),
    (
        "DELETE",
        "/api/tasks/:id",
        "cancel a task (kills a running one's processes)",
    ),
    (
        "PATCH",
        "/api/tasks/:id/priority",
        "change a pending task's priority {\"priority\": 1..10}",
    ),
    (
        "GET",
        "/api/tasks/:id/events",
        "a task's events as Server-Sent Events",
    ),
    (
        "GET",
        "/api/tasks/:id/webhooks",
        "webhook delivery attempts of a task",
    ),
    (
        "POST",
        "/api/sessions",
        "create a session {project_path, model, metadata} (201)",
    ),
    (
        "GET",
        "/api/sessions",
        "list sessions (?status=&project_path=&limit=&offset=)",
    ),
    (
        "GET",
        "/api/sessions/search",
        "search sessions (?q=&limit=)",
    ),
    ("GET", "/api/sessions/:id", "one session"),
    ("DELETE", "/api/sessions/:id", "delete a session"),
    (
        "GET",
        "/api/sessions/:id/stats",
        "a session's tasks, tokens, cost, durations",
    ),
    (
        "PATCH",
        "/api/sessions/:id/status",
        "{\"status\": active|archived|closed}",
    ),
    (
        "GET",
        "/api/sessions/:id/messages",
        "the conversation so far",
    ),
    (
        "POST",
        "/api/sessions/:id/continue",
        "a new turn {prompt, ...}",
    ),
    (
        "POST",
        "/api/sessions/:id/fork",
        "a new session from this one's history",
    ),
    ("GET", "/api/statistics", "summary, recent days, top models"),
    (
        "GET",
        "/api/statistics/summary",
        "totals: requests, tokens, costs, durations",
    ),
    ("GET", "/api/statistics/daily", "per day (?limit=&offset=)"),
    (
        "GET",
        "/api/statistics/range",
        "per day between ?start=YYYY-MM-DD&end=YYYY-MM-DD",
    ),
    ("GET", "/api/statistics/models", "per model (?limit=)"),
    (
        "POST",
        "/v1/chat/completions",
        "OpenAI chat completion, plain or streamed (the OpenAI SDKs)",
    ),
    (
        "POST",
        "/v1/responses",
        "OpenAI Responses API, plain or streamed; previous_response_id",
    ),
    (
        "POST",
        "/v1/messages",
        "Anthropic Messages API, plain or streamed (the Anthropic SDKs)",
    ),
    (
        "GET",
        "/v1/models",
        "models, OpenAI's shape (Anthropic's with anthropic-version)",
    ),
    ("GET", "/v1/models/:id", "one model"),
];

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let name = unique_name("api_docs.body");
    let live = Live::new();
    push_screen(
        siv,
        "API docs",
        OnEventView::new(text_area(&name, "Loading…")),
        "↑/↓ PgUp/PgDn scroll · Authorization: Bearer <key> or X-API-Key on /api/* and /v1/*",
    );
    let c2 = c.clone();
    c.spawn(move || async move {
        let result = c2.client().get_json("/api/openapi.json").await;
        let text = docs_text(result);
        c2.ui
            .update_view(&live, &name, move |v: &mut TextView| v.set_content(text));
    });
}

/// The screen's text; pure.
pub fn docs_text(openapi: Result<Value, ClientError>) -> String {
    match openapi {
        Ok(doc) => match from_openapi(&doc) {
            Some(lines) if !lines.is_empty() => {
                let title = doc
                    .pointer("/info/title")
                    .and_then(Value::as_str)
                    .unwrap_or("API");
                let version = doc
                    .pointer("/info/version")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!(
                    "{title} {version} (from the daemon's /api/openapi.json)\n\n{}",
                    lines.join("\n")
                )
            }
            _ => builtin("the daemon's /api/openapi.json lists no paths"),
        },
        Err(ClientError::Api { status: 404, .. }) => {
            builtin("this daemon has no /api/openapi.json yet")
        }
        Err(e) => builtin(&format!("the daemon could not be asked ({e})")),
    }
}

fn builtin(why: &str) -> String {
    let mut out = vec![format!("Built-in list: {why}."), String::new()];
    out.extend(
        ROUTES
            .iter()
            .map(|(m, p, what)| format!("{m:<6} {p:<32} {what}")),
    );
    out.join("\n")
}

fn from_openapi(doc: &Value) -> Option<Vec<String>> {
    let paths = doc.get("paths")?.as_object()?;
    let mut out = Vec::new();
    for (path, item) in paths {
        let Some(ops) = item.as_object() else {
            continue;
        };
        for (method, op) in ops {
            const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let what = op
                .get("summary")
                .or_else(|| op.get("description"))
                .and_then(Value::as_str)
                .and_then(|s| s.lines().next())
                .unwrap_or("");
            out.push(format!("{:<6} {path:<32} {what}", method.to_uppercase()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openapi_paths_are_listed() {
        let doc = json!({"info": {"title": "claude-code-server", "version": "1"}, "paths": {
            "/health": {"get": {"summary": "Health"}, "parameters": []}}});
        let t = docs_text(Ok(doc));
        assert!(t.contains("GET    /health"), "{t}");
        assert!(t.contains("Health"), "{t}");
        assert!(!t.contains("PARAMETERS"), "{t}");
    }

    #[test]
    fn missing_route_falls_back() {
        let t = docs_text(Err(ClientError::Api {
            status: 404,
            code: Some("route_not_found".into()),
            message: "x".into(),
        }));
        assert!(t.starts_with("Built-in list"), "{t}");
        assert!(t.contains("/api/tasks/:id/priority"), "{t}");
        assert!(
            t.contains("/v1/messages") && t.contains("/v1/responses"),
            "{t}"
        );
    }
}
