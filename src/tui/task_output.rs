//! A task's live output, from `GET /api/tasks/:id/events` (Server-Sent Events: `init`, `text`,
//! `tool_use`, `tool_result`, `result`, `error`; `: ping` comments; `id:` lines to resume).
//! A dropped stream is resumed with `Last-Event-ID`; a server without the route (404
//! `route_not_found`) is told apart from an unknown task.

use cursive::views::{OnEventView, TextView};
use cursive::Cursive;
use serde_json::Value;

use super::format::{clip, f, millis, s, usd};
use super::widgets::{ctx, push_screen, text_area};
use super::worker::{unique_name, Ctx, Live};
use crate::client::sse::SseEvent;

/// Reconnections after a stream breaks before `result`.
const MAX_RECONNECTS: usize = 3;
pub const NOT_AVAILABLE: &str = "live output not available on this server";

pub fn open(siv: &mut Cursive, task_id: &str) {
    let Some(c) = ctx(siv) else { return };
    let name = unique_name("task.output");
    let live = Live::new();
    push_screen(
        siv,
        &format!("Live output of task {task_id}"),
        OnEventView::new(text_area(&name, "Connecting…\n")),
        "↑/↓ PgUp/PgDn scroll",
    );
    let task_id = task_id.to_string();
    let c2 = c.clone();
    c.spawn(move || async move { follow(c2, task_id, name, live).await });
}

async fn follow(c: Ctx, task_id: String, name: String, live: Live) {
    let append = |text: String| {
        c.ui.update_view(&live, &name, move |v: &mut TextView| v.append(text));
    };
    let mut renderer = Renderer::default();
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    loop {
        let stream = c.client().task_events(&task_id, last_id.as_deref()).await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) if e.is_route_not_found() => return append(format!("{NOT_AVAILABLE}.\n")),
            Err(e) => return append(format!("\n✖ {e}\n")),
        };
        while let Some(event) = stream.next().await {
            if !live.is_live() {
                return; // the screen was closed
            }
            match event {
                Ok(ev) => {
                    last_id = ev.id.clone().or(last_id);
                    let (text, done) = renderer.feed(&ev);
                    if !text.is_empty() {
                        append(text);
                    }
                    if done {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        reconnects += 1;
        if reconnects > MAX_RECONNECTS || !live.is_live() {
            return append("\n[the stream ended before the task's result]\n".into());
        }
        append("\n[reconnecting…]\n".into());
    }
}

/// Turns events into text; pure, so it is tested without a server.
#[derive(Debug, Default)]
pub struct Renderer {
    saw_text: bool,
}

impl Renderer {
    /// The text for one event, and whether the stream is over.
    pub fn feed(&mut self, ev: &SseEvent) -> (String, bool) {
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        match ev.event.as_str() {
            "init" => (
                format!(
                    "▶ task {} · session {}\n\n",
                    s(&data, "task_id"),
                    s(&data, "session_id")
                ),
                false,
            ),
            "text" => {
                let t = data
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.saw_text |= !t.is_empty();
                (t, false)
            }
            "tool_use" => {
                let input = data
                    .get("input")
                    .map(|i| format!(" {}", clip(&i.to_string(), 120)))
                    .unwrap_or_default();
                (format!("\n[tool_use {}{input}]\n", s(&data, "name")), false)
            }
            "tool_result" => {
                let content = match data.get("content") {
                    Some(Value::String(t)) => clip(t, 120),
                    Some(v) if !v.is_null() => clip(&v.to_string(), 120),
                    _ => String::new(),
                };
                (format!("[tool_result] {content}\n"), false)
            }
            "result" => {
                let mut out = String::new();
                if !self.saw_text {
                    out.push_str(&s(&data, "result"));
                }
                out.push_str(&format!(
                    "\n\n✔ done · cost {} · {} · {} turn(s)\n",
                    usd(f(&data, "cost_usd")),
                    millis(f(&data, "duration_ms")),
                    s(&data, "num_turns")
                ));
                (out, true)
            }
            "error" => {
                let msg = data
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| ev.data.clone());
                let code = data
                    .get("code")
                    .and_then(Value::as_str)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                (format!("\n✖ error{code}: {msg}\n"), true)
            }
            _ => (String::new(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn a_run_reads_as_text() {
        let mut r = Renderer::default();
        assert!(r
            .feed(&ev("init", r#"{"task_id":"t1","session_id":"s1"}"#))
            .0
            .contains("t1"));
        assert_eq!(r.feed(&ev("text", r#"{"text":"Hel"}"#)).0, "Hel");
        assert!(r
            .feed(&ev(
                "tool_use",
                r#"{"name":"Bash","input":{"command":"ls"}}"#
            ))
            .0
            .contains("[tool_use Bash"));
        let (t, done) = r.feed(&ev(
            "result",
            r#"{"result":"Hello","cost_usd":0.01,"duration_ms":20}"#,
        ));
        assert!(done);
        assert!(!t.contains("Hello"), "the text came as deltas already: {t}");
        assert!(t.contains("$0.0100"), "{t}");
    }

    #[test]
    fn result_without_deltas_shows_the_text_and_errors_end() {
        let mut r = Renderer::default();
        assert!(r
            .feed(&ev("result", r#"{"result":"Hello"}"#))
            .0
            .contains("Hello"));
        let (t, done) =
            Renderer::default().feed(&ev("error", r#"{"error":"boom","code":"cli_error"}"#));
        assert!(done);
        assert!(t.contains("boom") && t.contains("cli_error"), "{t}");
    }
}
