//! Tasks: a paged list filtered by status, and a detail screen (result or error) from which a
//! pending task's priority is changed, a task is cancelled, or its live output followed.

use std::sync::{Arc, Mutex};

use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::views::{LinearLayout, OnEventView, SelectView, TextView};
use cursive::Cursive;
use serde_json::{json, Value};

use super::format::{clip, f, millis, n, s, short_id, thousands, time, usd};
use super::widgets::{confirm, ctx, message, prompt, push_screen, set_text, text_area};
use super::worker::{unique_name, Ctx};
use crate::client::{encode_segment, ClientError};

pub const PAGE: usize = 20;
/// The list's place in the screen's layout (after the info line and the column titles).
const LIST_INDEX: usize = 2;
/// The status filter, cycled with `f`; `None` is every task.
pub const FILTERS: &[Option<&str>] = &[
    None,
    Some("pending"),
    Some("processing"),
    Some("completed"),
    Some("failed"),
    Some("cancelled"),
    Some("timeout"),
];

#[derive(Debug, Default, Clone)]
struct ListState {
    filter: usize,
    offset: usize,
    total: usize,
}

#[derive(Clone)]
struct List {
    c: Ctx,
    state: Arc<Mutex<ListState>>,
    list: String,
    info: String,
    /// The screen's layout: the list is focused in it once it has rows (an empty list
    /// cannot take the focus, so the layout starts on the header).
    layout: String,
}

impl List {
    fn state(&self) -> ListState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut ListState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s)
        }
    }

    fn load(&self, siv: &mut Cursive) {
        set_text(siv, &self.info, "Loading…");
        let st = self.state();
        let mut path = format!("/api/tasks?limit={PAGE}&offset={}", st.offset);
        if let Some(Some(status)) = FILTERS.get(st.filter) {
            path.push_str(&format!("&status={status}"));
        }
        let me = self.clone();
        self.c.spawn(move || async move {
            let result = me.c.client().get_json(&path).await;
            let ui = me.c.ui.clone();
            ui.update(move |siv| me.show(siv, result));
        });
    }

    fn show(&self, siv: &mut Cursive, result: Result<Value, ClientError>) {
        let body = match result {
            Ok(b) => b,
            Err(e) => {
                set_text(siv, &self.info, format!("Error: {e}"));
                return;
            }
        };
        let tasks = body
            .get("tasks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let total = n(&body, "total") as usize;
        self.update(|s| s.total = total);
        let st = self.state();
        siv.call_on_name(&self.list, |v: &mut SelectView<String>| {
            v.clear();
            for t in &tasks {
                v.add_item(row(t), s(t, "id"));
            }
        });
        siv.call_on_name(&self.layout, |l: &mut LinearLayout| {
            let _ = l.set_focus_index(LIST_INDEX);
        });
        let filter = FILTERS.get(st.filter).copied().flatten().unwrap_or("all");
        let range = if tasks.is_empty() {
            "none".to_string()
        } else {
            format!("{}–{} of {total}", st.offset + 1, st.offset + tasks.len())
        };
        set_text(
            siv,
            &self.info,
            format!("Tasks {range}   filter: {filter} (f to change)"),
        );
    }
}

fn row(t: &Value) -> String {
    format!(
        "{}  {:<10} p{:<2} {:<5} {}  {:>9}  {}",
        short_id(&s(t, "id")),
        s(t, "status"),
        n(t, "priority"),
        s(t, "mode"),
        time(t, "created_at"),
        t.get("cost_usd")
            .and_then(Value::as_f64)
            .map(usd)
            .unwrap_or_else(|| "-".into()),
        clip(&s(t, "prompt"), 50),
    )
}

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let list = List {
        c,
        state: Arc::new(Mutex::new(ListState::default())),
        list: unique_name("tasks.list"),
        info: unique_name("tasks.info"),
        layout: unique_name("tasks.layout"),
    };
    let mut select = SelectView::<String>::new();
    let on_submit = list.clone();
    select.set_on_submit(move |siv, id: &String| open_details(siv, &on_submit, id));
    let body = LinearLayout::vertical()
        .child(TextView::new("Loading…").with_name(&list.info))
        .child(TextView::new(
            "id        status     pri mode  created                   cost  prompt",
        ))
        .child(select.with_name(&list.list).scrollable().full_screen())
        .with_name(&list.layout);
    let (filter, next, prev, reload) = (list.clone(), list.clone(), list.clone(), list.clone());
    let view = OnEventView::new(body)
        .on_event('f', move |siv| {
            filter.update(|s| {
                s.filter = (s.filter + 1) % FILTERS.len();
                s.offset = 0;
            });
            filter.load(siv);
        })
        .on_event('n', move |siv| {
            let st = next.state();
            if st.offset + PAGE < st.total {
                next.update(|s| s.offset += PAGE);
                next.load(siv);
            }
        })
        .on_event('p', move |siv| {
            if prev.state().offset > 0 {
                prev.update(|s| s.offset = s.offset.saturating_sub(PAGE));
                prev.load(siv);
            }
        })
        .on_event('r', move |siv| reload.load(siv));
    push_screen(
        siv,
        "Tasks",
        view,
        "Enter details · f filter by status · n/p next/previous page · r refresh",
    );
    list.load(siv);
}

#[derive(Clone)]
struct Detail {
    list: List,
    id: String,
    name: String,
    /// The priority shown, offered when changing it.
    priority: Arc<Mutex<u64>>,
}

fn open_details(siv: &mut Cursive, list: &List, id: &str) {
    let detail = Detail {
        list: list.clone(),
        id: id.to_string(),
        name: unique_name("task.body"),
        priority: Arc::new(Mutex::new(5)),
    };
    let (prio, cancel, follow, reload) = (
        detail.clone(),
        detail.clone(),
        detail.clone(),
        detail.clone(),
    );
    let view = OnEventView::new(text_area(&detail.name, "Loading…"))
        .on_event('p', move |siv| prio.ask_priority(siv))
        .on_event('x', move |siv| cancel.ask_cancel(siv))
        .on_event('o', move |siv| super::task_output::open(siv, &follow.id))
        .on_event('r', move |siv| reload.load(siv, None));
    push_screen(
        siv,
        &format!("Task {id}"),
        view,
        "p change priority · x cancel · o follow live output · r refresh",
    );
    detail.load(siv, None);
}

impl Detail {
    fn load(&self, _siv: &mut Cursive, note: Option<String>) {
        let me = self.clone();
        self.list.c.spawn(move || async move {
            let path = format!("/api/tasks/{}", encode_segment(&me.id));
            let result = me.list.c.client().get_json(&path).await;
            if let Ok(b) = &result {
                if let (Some(p), Ok(mut mine)) = (
                    b.get("task")
                        .and_then(|t| t.get("priority"))
                        .and_then(Value::as_u64),
                    me.priority.lock(),
                ) {
                    *mine = p;
                }
            }
            let mut text = note.map(|n| format!("{n}\n\n")).unwrap_or_default();
            text.push_str(&details_text(result));
            let ui = me.list.c.ui.clone();
            ui.update(move |siv| set_text(siv, &me.name, text));
        });
    }

    fn ask_priority(&self, siv: &mut Cursive) {
        let current = self.priority.lock().map(|p| *p).unwrap_or(5);
        let me = self.clone();
        prompt(
            siv,
            "Change priority",
            "New priority, 1–10 (10 runs first; pending tasks only):",
            &current.to_string(),
            move |siv, text| match text.trim().parse::<u8>() {
                Ok(p) if (1..=10).contains(&p) => me.set_priority(siv, p),
                _ => message(
                    siv,
                    "Priority",
                    format!(
                        "\"{}\" is not a priority: give a whole number from 1 to 10.",
                        text.trim()
                    ),
                ),
            },
        );
    }

    fn set_priority(&self, siv: &mut Cursive, priority: u8) {
        set_text(siv, &self.name, "Changing the priority…");
        let me = self.clone();
        self.list.c.spawn(move || async move {
            let path = format!("/api/tasks/{}/priority", encode_segment(&me.id));
            let result = me
                .list
                .c
                .client()
                .patch_json(&path, &json!({"priority": priority}))
                .await;
            let note = match result {
                Ok(_) => format!("Priority set to {priority}."),
                Err(e) => format!("Could not change the priority: {e}"),
            };
            let ui = me.list.c.ui.clone();
            ui.update(move |siv| {
                me.load(siv, Some(note));
                me.list.load(siv);
            });
        });
    }

    fn ask_cancel(&self, siv: &mut Cursive) {
        let me = self.clone();
        confirm(
            siv,
            format!(
                "Cancel task {}? A running task's processes are killed.",
                self.id
            ),
            move |siv| me.cancel(siv),
        );
    }

    fn cancel(&self, siv: &mut Cursive) {
        set_text(siv, &self.name, "Cancelling…");
        let me = self.clone();
        self.list.c.spawn(move || async move {
            let path = format!("/api/tasks/{}", encode_segment(&me.id));
            let result = me.list.c.client().delete(&path).await;
            let note = match result {
                Ok(_) => "Task cancelled.".to_string(),
                Err(e) => format!("Could not cancel: {e}"),
            };
            let ui = me.list.c.ui.clone();
            ui.update(move |siv| {
                me.load(siv, Some(note));
                me.list.load(siv);
            });
        });
    }
}

/// The detail screen's text; pure.
pub fn details_text(result: Result<Value, ClientError>) -> String {
    let t = match result {
        Ok(b) => b.get("task").cloned().unwrap_or(Value::Null),
        Err(e) => return format!("Error: {e}"),
    };
    let mut out = vec![
        format!("id:        {}", s(&t, "id")),
        format!("status:    {}", s(&t, "status")),
        format!("priority:  {}", n(&t, "priority")),
        format!("mode:      {}", s(&t, "mode")),
        format!("model:     {}", s(&t, "model")),
        format!("session:   {}", s(&t, "session_id")),
        format!("project:   {}", s(&t, "project_path")),
        format!(
            "created:   {}   started: {}   completed: {}",
            time(&t, "created_at"),
            time(&t, "started_at"),
            time(&t, "completed_at")
        ),
    ];
    if let Some(ms) = t.get("duration_ms").and_then(Value::as_f64) {
        out.push(format!("duration:  {}", millis(ms)));
    }
    if t.get("cost_usd").is_some_and(|c| !c.is_null()) {
        let usage = t.get("usage").cloned().unwrap_or(Value::Null);
        out.push(format!(
            "cost:      {}   tokens in {} out {}",
            usd(f(&t, "cost_usd")),
            thousands(n(&usage, "input_tokens")),
            thousands(n(&usage, "output_tokens"))
        ));
    }
    out.push(String::new());
    out.push("Prompt:".into());
    out.push(s(&t, "prompt"));
    if let Some(err) = t.get("error").filter(|e| !e.is_null()) {
        out.push(String::new());
        out.push(format!("Error ({}): {}", s(err, "code"), s(err, "message")));
        if let Some(d) = err.get("details").filter(|d| !d.is_null()) {
            out.push(format!("  details: {}", clip(&d.to_string(), 400)));
        }
    }
    if let Some(Value::String(result)) = t.get("result") {
        out.push(String::new());
        out.push("Result:".into());
        out.push(result.clone());
    }
    out.join("\n")
}
