//! Approvals: the pending tool calls of runs with `approvals` (`GET /api/approvals?status=
//! pending`), refreshed every few seconds; the selected one is allowed with `a` or denied with
//! `x` (`POST /api/tasks/:id/approvals/:approval_id`).

use std::sync::{Arc, Mutex};

use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::views::{LinearLayout, OnEventView, SelectView, TextView};
use cursive::Cursive;
use serde_json::{json, Value};

use super::dashboard::REFRESH_EVERY;
use super::format::{clip, s, short_id, time};
use super::widgets::{ctx, push_screen, set_text};
use super::worker::{unique_name, Ctx, Live};
use crate::client::{encode_segment, ClientError};

/// The list's place in the screen's layout (after the info line and the column titles).
const LIST_INDEX: usize = 2;

/// What a row stands for: the task and the approval.
type Row = (String, String);

#[derive(Clone)]
struct Screen {
    c: Ctx,
    live: Live,
    list: String,
    info: String,
    layout: String,
    /// The outcome of the last decision, shown above the list until the next one.
    note: Arc<Mutex<String>>,
}

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let screen = Screen {
        c: c.clone(),
        live: Live::new(),
        list: unique_name("approvals.list"),
        info: unique_name("approvals.info"),
        layout: unique_name("approvals.layout"),
        note: Arc::new(Mutex::new(String::new())),
    };
    let body = LinearLayout::vertical()
        .child(TextView::new("Loading…").with_name(&screen.info))
        .child(TextView::new(
            "task      requested                 tool      what",
        ))
        .child(
            SelectView::<Row>::new()
                .with_name(&screen.list)
                .scrollable()
                .full_screen(),
        )
        .with_name(&screen.layout);
    let (allow, deny, reload) = (screen.clone(), screen.clone(), screen.clone());
    let view = OnEventView::new(body)
        .on_event('a', move |siv| allow.decide(siv, "allow"))
        .on_event('x', move |siv| deny.decide(siv, "deny"))
        .on_event('r', move |_| reload.load_once());
    push_screen(
        siv,
        "Approvals (pending tool use)",
        view,
        &format!(
            "a allow · x deny · r refresh (every {} s)",
            REFRESH_EVERY.as_secs()
        ),
    );
    let me = screen.clone();
    c.spawn(move || async move {
        // Until the screen closes (its list is gone) or the TUI quits.
        while me.live.is_live() {
            me.render().await;
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    });
}

impl Screen {
    fn load_once(&self) {
        let me = self.clone();
        self.c.spawn(move || async move { me.render().await });
    }

    async fn render(&self) {
        let result = self
            .c
            .client()
            .get_json("/api/approvals?status=pending")
            .await;
        let rows = rows(&result);
        let note = self.note.lock().map(|n| n.clone()).unwrap_or_default();
        let info = info_text(&result, rows.len(), &note);
        let (info_name, layout) = (self.info.clone(), self.layout.clone());
        self.c
            .ui
            .update_view(&self.live, &self.list, move |v: &mut SelectView<Row>| {
                // Keep the selection on the same approval when it is still listed.
                let selected = v.selection().map(|r| (*r).clone());
                v.clear();
                for (label, row) in rows {
                    v.add_item(label, row);
                }
                let at = selected.and_then(|sel| v.iter().position(|(_, r)| *r == sel));
                if let Some(i) = at {
                    // The callback it returns is for focus changes made by a user: none here.
                    let _ = v.set_selection(i);
                }
            });
        self.c.ui.update(move |siv| {
            set_text(siv, &info_name, info);
            siv.call_on_name(&layout, |l: &mut LinearLayout| {
                let _ = l.set_focus_index(LIST_INDEX);
            });
        });
    }

    fn decide(&self, siv: &mut Cursive, decision: &'static str) {
        let selected = siv
            .call_on_name(&self.list, |v: &mut SelectView<Row>| {
                v.selection().map(|r| (*r).clone())
            })
            .flatten();
        let Some((task, approval)) = selected else {
            return;
        };
        set_text(siv, &self.info, "Sending the decision…");
        let me = self.clone();
        self.c.spawn(move || async move {
            let path = format!(
                "/api/tasks/{}/approvals/{}",
                encode_segment(&task),
                encode_segment(&approval)
            );
            let body =
                json!({"decision": decision, "message": format!("{decision} (operator console)")});
            let note = match me.c.client().post_json(&path, &body).await {
                Ok(b) => format!(
                    "{} {} of task {}.",
                    capitalised(&s(&b["approval"], "status")),
                    s(&b["approval"], "tool_name"),
                    short_id(&task)
                ),
                Err(e) => format!("Could not {decision}: {e}"),
            };
            if let Ok(mut n) = me.note.lock() {
                *n = note;
            }
            me.render().await;
        });
    }
}

fn capitalised(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The rows of the list: label and (task, approval); pure.
fn rows(result: &Result<Value, ClientError>) -> Vec<(String, Row)> {
    let Ok(body) = result else {
        return Vec::new();
    };
    body.get("approvals")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|a| (row(a), (s(a, "task_id"), s(a, "id"))))
                .collect()
        })
        .unwrap_or_default()
}

/// One approval on one line: task, when, tool, and what it would do; pure.
pub fn row(a: &Value) -> String {
    let input = a.get("input").cloned().unwrap_or(Value::Null);
    let what = input
        .get("command")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            a.get("description")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| input.to_string());
    format!(
        "{}  {}  {:<8}  {}",
        short_id(&s(a, "task_id")),
        time(a, "requested_at"),
        clip(&s(a, "tool_name"), 8),
        clip(&what, 60),
    )
}

/// The line above the list; pure.
pub fn info_text(result: &Result<Value, ClientError>, count: usize, note: &str) -> String {
    let head = match result {
        Err(e) => format!("Error: {e}"),
        Ok(_) if count == 0 => "No approval is pending.".to_string(),
        Ok(_) => format!("{count} pending"),
    };
    if note.is_empty() {
        head
    } else {
        format!("{head}   —   {note}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_the_command_and_falls_back_to_the_description() {
        let a = json!({"task_id": "0123456789abcdef", "id": "x", "tool_name": "Bash",
            "input": {"command": "mkdir build"}, "requested_at": "2026-01-02T03:04:05.678Z"});
        let r = row(&a);
        assert!(r.contains("Bash") && r.contains("mkdir build"), "{r}");
        let b = json!({"task_id": "t", "tool_name": "Write", "input": {"file_path": "/x"},
            "description": "Write x"});
        assert!(row(&b).contains("Write x"));
        assert_eq!(info_text(&Ok(json!({})), 0, ""), "No approval is pending.");
        assert_eq!(
            info_text(&Ok(json!({})), 2, "Allowed Bash"),
            "2 pending   —   Allowed Bash"
        );
    }
}
