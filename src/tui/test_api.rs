//! Test API: a health check and a test prompt (`POST /api/claude`), with the answer and what
//! it cost.

use cursive::event::Event;
use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::views::{Button, DummyView, EditView, LinearLayout, OnEventView, TextView};
use cursive::Cursive;
use serde_json::{json, Value};

use super::format::{f, millis, n, s, thousands, usd};
use super::widgets::{ctx, push_form_screen, set_text};
use super::worker::unique_name;
use crate::client::ClientError;

pub const DEFAULT_PROMPT: &str = "Reply with the single word: pong";

#[derive(Clone)]
struct Names {
    prompt: String,
    output: String,
}

pub fn open(siv: &mut Cursive) {
    let names = Names {
        prompt: unique_name("test_api.prompt"),
        output: unique_name("test_api.output"),
    };
    let send_enter = names.clone();
    let send_button = names.clone();
    let health_button = names.clone();
    let health_key = names.clone();
    let body = LinearLayout::vertical()
        .child(TextView::new(
            "Prompt (Enter sends it to POST /api/claude):",
        ))
        .child(
            EditView::new()
                .content(DEFAULT_PROMPT)
                .on_submit(move |s, text| send(s, &send_enter, text))
                .with_name(&names.prompt)
                .full_width(),
        )
        .child(
            LinearLayout::horizontal()
                .child(Button::new("Send prompt", move |s| {
                    let text = s
                        .call_on_name(&send_button.prompt, |e: &mut EditView| e.get_content())
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    send(s, &send_button, &text)
                }))
                .child(DummyView.fixed_width(2))
                .child(Button::new("Health check (Ctrl+T)", move |s| {
                    health(s, &health_button)
                })),
        )
        .child(DummyView)
        .child(
            TextView::new("Press Ctrl+T for a health check, or send the prompt.")
                .with_name(&names.output)
                .scrollable()
                .full_screen(),
        );
    let view =
        OnEventView::new(body).on_pre_event(Event::CtrlChar('t'), move |s| health(s, &health_key));
    push_form_screen(
        siv,
        "Test API",
        view,
        "Enter send prompt · Ctrl+T health check · Tab move",
    );
}

fn health(siv: &mut Cursive, names: &Names) {
    let Some(c) = ctx(siv) else { return };
    set_text(siv, &names.output, "GET /health …");
    let (c2, out) = (c.clone(), names.output.clone());
    c.spawn(move || async move {
        let client = c2.client();
        let url = client.url("/health");
        let text = match client.health().await {
            Ok(h) => format!(
                "GET {url}\n\n{}",
                serde_json::to_string_pretty(&h).unwrap_or_else(|_| h.to_string())
            ),
            Err(e) => format!("GET {url}\n\n✖ {e}"),
        };
        c2.ui.update(move |s| set_text(s, &out, text));
    });
}

fn send(siv: &mut Cursive, names: &Names, prompt: &str) {
    let Some(c) = ctx(siv) else { return };
    let prompt = prompt.trim().to_string();
    if prompt.is_empty() {
        set_text(siv, &names.output, "Type a prompt first.");
        return;
    }
    set_text(
        siv,
        &names.output,
        "POST /api/claude … (waiting for Claude; you can leave this screen)",
    );
    let (c2, out) = (c.clone(), names.output.clone());
    c.spawn(move || async move {
        let result = c2
            .client()
            .post_json_long("/api/claude", &json!({"prompt": prompt}))
            .await;
        let text = answer_text(result);
        c2.ui.update(move |s| set_text(s, &out, text));
    });
}

/// The answer of a test prompt; pure.
pub fn answer_text(result: Result<Value, ClientError>) -> String {
    match result {
        Ok(a) => {
            let usage = a.get("usage").cloned().unwrap_or(Value::Null);
            format!(
                "{}\n\n— cost {} · {} · tokens in {} out {} · model {} · session {} · task {}",
                s(&a, "result"),
                usd(f(&a, "cost_usd")),
                millis(f(&a, "duration_ms")),
                thousands(n(&usage, "input_tokens")),
                thousands(n(&usage, "output_tokens")),
                s(&a, "model"),
                s(&a, "session_id"),
                s(&a, "task_id"),
            )
        }
        Err(e) => format!("✖ {e}"),
    }
}
