//! Sessions: a paged list with search, and a detail screen (stats, recent messages) from which
//! a session is closed, archived, reopened or deleted.

use std::sync::{Arc, Mutex};

use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::views::{LinearLayout, OnEventView, SelectView, TextView};
use cursive::Cursive;
use serde_json::{json, Value};

use super::format::{clip, f, n, s, short_id, thousands, time, usd};
use super::widgets::{close_top, confirm, ctx, prompt, push_screen, set_text, text_area};
use super::worker::{unique_name, Ctx};
use crate::client::{encode_query, encode_segment};

pub const PAGE: usize = 20;
/// The list's place in the screen's layout (after the info line and the column titles).
const LIST_INDEX: usize = 2;
/// Messages shown on the detail screen (the newest).
const RECENT_MESSAGES: usize = 10;

#[derive(Debug, Default, Clone)]
struct ListState {
    offset: usize,
    total: usize,
    query: Option<String>,
}

/// Everything the list's key handlers share.
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

    /// Fetch the current page (or search) and show it.
    fn load(&self, siv: &mut Cursive) {
        self.load_with_note(siv, None)
    }

    /// Load, then show `note` (the outcome of an action) before the page's description.
    fn load_with_note(&self, siv: &mut Cursive, note: Option<String>) {
        set_text(siv, &self.info, "Loading…");
        let st = self.state();
        let path = match &st.query {
            Some(q) => format!(
                "/api/sessions/search?q={}&limit={PAGE}&offset={}",
                encode_query(q),
                st.offset
            ),
            None => format!("/api/sessions?limit={PAGE}&offset={}", st.offset),
        };
        let me = self.clone();
        self.c.spawn(move || async move {
            let result = me.c.client().get_json(&path).await;
            let ui = me.c.ui.clone();
            ui.update(move |siv| me.show(siv, result, note));
        });
    }

    fn show(
        &self,
        siv: &mut Cursive,
        result: Result<Value, crate::client::ClientError>,
        note: Option<String>,
    ) {
        let note = note.map(|n| format!("{n}   ")).unwrap_or_default();
        let body = match result {
            Ok(b) => b,
            Err(e) => {
                set_text(siv, &self.info, format!("{note}Error: {e}"));
                return;
            }
        };
        let sessions = body
            .get("sessions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let total = n(&body, "total") as usize;
        self.update(|s| s.total = total);
        let st = self.state();
        siv.call_on_name(&self.list, |v: &mut SelectView<String>| {
            v.clear();
            for sess in &sessions {
                v.add_item(row(sess), s(sess, "id"));
            }
        });
        siv.call_on_name(&self.layout, |l: &mut LinearLayout| {
            let _ = l.set_focus_index(LIST_INDEX);
        });
        let range = if sessions.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{}–{} of {total}",
                st.offset + 1,
                st.offset + sessions.len()
            )
        };
        let search = st
            .query
            .as_ref()
            .map(|q| format!("   search: \"{q}\""))
            .unwrap_or_default();
        set_text(siv, &self.info, format!("{note}Sessions {range}{search}"));
    }
}

fn row(sess: &Value) -> String {
    format!(
        "{}  {:<8} {:<18} {:>4} msgs {:>9}  {}  {}",
        short_id(&s(sess, "id")),
        s(sess, "status"),
        clip(&s(sess, "model"), 18),
        n(sess, "messages_count"),
        usd(f(sess, "total_cost_usd")),
        time(sess, "updated_at"),
        clip(&s(sess, "project_path"), 40),
    )
}

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let list = List {
        c,
        state: Arc::new(Mutex::new(ListState::default())),
        list: unique_name("sessions.list"),
        info: unique_name("sessions.info"),
        layout: unique_name("sessions.layout"),
    };
    let mut select = SelectView::<String>::new();
    let on_submit = list.clone();
    select.set_on_submit(move |siv, id: &String| open_details(siv, &on_submit, id));
    let body = LinearLayout::vertical()
        .child(TextView::new("Loading…").with_name(&list.info))
        .child(TextView::new(
            "id        status   model              messages      cost  updated              project",
        ))
        .child(
            select
                .with_name(&list.list)
                .scrollable()
                .full_screen(),
        )
        .with_name(&list.layout);
    let (next, prev, search, clear, reload) = (
        list.clone(),
        list.clone(),
        list.clone(),
        list.clone(),
        list.clone(),
    );
    let view = OnEventView::new(body)
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
        .on_event('/', move |siv| {
            let current = search.state().query.unwrap_or_default();
            let l = search.clone();
            prompt(
                siv,
                "Search sessions",
                "id, project path or metadata (empty: all):",
                &current,
                move |siv, q| {
                    let q = q.trim().to_string();
                    l.update(|s| {
                        s.query = (!q.is_empty()).then_some(q);
                        s.offset = 0;
                    });
                    l.load(siv);
                },
            );
        })
        .on_event('c', move |siv| {
            clear.update(|s| {
                s.query = None;
                s.offset = 0;
            });
            clear.load(siv);
        })
        .on_event('r', move |siv| reload.load(siv));
    push_screen(
        siv,
        "Sessions",
        view,
        "Enter details · / search · c clear search · n/p next/previous page · r refresh",
    );
    list.load(siv);
}

fn open_details(siv: &mut Cursive, list: &List, id: &str) {
    let name = unique_name("session.body");
    let detail = Detail {
        list: list.clone(),
        id: id.to_string(),
        name: name.clone(),
    };
    let (close, archive, reopen, delete, reload) = (
        detail.clone(),
        detail.clone(),
        detail.clone(),
        detail.clone(),
        detail.clone(),
    );
    let view = OnEventView::new(text_area(&name, "Loading…"))
        .on_event('c', move |siv| close.set_status(siv, "closed"))
        .on_event('a', move |siv| archive.set_status(siv, "archived"))
        .on_event('o', move |siv| reopen.set_status(siv, "active"))
        .on_event('d', move |siv| delete.ask_delete(siv))
        .on_event('r', move |siv| reload.load(siv));
    push_screen(
        siv,
        &format!("Session {id}"),
        view,
        "c close · a archive · o reopen (active) · d delete · r refresh",
    );
    detail.load(siv);
}

#[derive(Clone)]
struct Detail {
    list: List,
    id: String,
    name: String,
}

impl Detail {
    fn load(&self, siv: &mut Cursive) {
        self.load_with_note(siv, None);
    }

    fn load_with_note(&self, siv: &mut Cursive, note: Option<String>) {
        let _ = siv;
        let me = self.clone();
        let c = self.list.c.clone();
        c.spawn(move || async move {
            let client = me.list.c.client();
            let base = format!("/api/sessions/{}", encode_segment(&me.id));
            let (stats_path, messages_path) = (format!("{base}/stats"), format!("{base}/messages"));
            let (session, stats, messages) = tokio::join!(
                client.get_json(&base),
                client.get_json(&stats_path),
                client.get_json(&messages_path),
            );
            let mut text = String::new();
            if let Some(n) = note {
                text.push_str(&n);
                text.push_str("\n\n");
            }
            text.push_str(&details_text(session, stats, messages));
            me.list
                .c
                .ui
                .update(move |siv| set_text(siv, &me.name, text));
        });
    }

    fn set_status(&self, siv: &mut Cursive, status: &'static str) {
        set_text(siv, &self.name, format!("Setting the status to {status}…"));
        let me = self.clone();
        self.list.c.spawn(move || async move {
            let path = format!("/api/sessions/{}/status", encode_segment(&me.id));
            let result = me
                .list
                .c
                .client()
                .patch_json(&path, &json!({"status": status}))
                .await;
            let note = match result {
                Ok(_) => format!("Status set to {status}."),
                Err(e) => format!("Could not set the status: {e}"),
            };
            let ui = me.list.c.ui.clone();
            ui.update(move |siv| {
                me.load_with_note(siv, Some(note));
                me.list.load(siv);
            });
        });
    }

    fn ask_delete(&self, siv: &mut Cursive) {
        let me = self.clone();
        confirm(
            siv,
            format!("Delete session {}? This cannot be undone.", self.id),
            move |siv| me.delete(siv),
        );
    }

    fn delete(&self, siv: &mut Cursive) {
        set_text(siv, &self.name, "Deleting…");
        let me = self.clone();
        self.list.c.spawn(move || async move {
            let path = format!("/api/sessions/{}", encode_segment(&me.id));
            let result = me.list.c.client().delete(&path).await;
            let ui = me.list.c.ui.clone();
            ui.update(move |siv| match result {
                Ok(_) => {
                    // Back to the list, which no longer holds it.
                    if siv.find_name::<TextView>(&me.name).is_some() {
                        close_top(siv);
                    }
                    me.list
                        .load_with_note(siv, Some(format!("Deleted session {}.", me.id)));
                }
                Err(e) => set_text(siv, &me.name, format!("Could not delete: {e}")),
            });
        });
    }
}

/// The detail screen's text; pure.
pub fn details_text(
    session: Result<Value, crate::client::ClientError>,
    stats: Result<Value, crate::client::ClientError>,
    messages: Result<Value, crate::client::ClientError>,
) -> String {
    let mut out = Vec::new();
    match session {
        Ok(b) => {
            let sess = b.get("session").cloned().unwrap_or(Value::Null);
            out.push(format!("id:        {}", s(&sess, "id")));
            out.push(format!("status:    {}", s(&sess, "status")));
            out.push(format!("model:     {}", s(&sess, "model")));
            out.push(format!("project:   {}", s(&sess, "project_path")));
            out.push(format!("created:   {}", time(&sess, "created_at")));
            out.push(format!("updated:   {}", time(&sess, "updated_at")));
            out.push(format!("last task: {}", s(&sess, "last_task_id")));
            if let Some(m) = sess.get("metadata").filter(|m| !m.is_null()) {
                out.push(format!("metadata:  {}", clip(&m.to_string(), 200)));
            }
        }
        Err(e) => {
            out.push(format!("Error: {e}"));
            return out.join("\n");
        }
    }
    out.push(String::new());
    match stats {
        Ok(b) => {
            let st = b.get("stats").cloned().unwrap_or(Value::Null);
            let tasks = st.get("tasks").cloned().unwrap_or(Value::Null);
            let tok = st.get("tokens").cloned().unwrap_or(Value::Null);
            out.push(format!(
                "Stats: {} turns · {} tasks · cost {} · tokens in {} out {} · avg {} ms",
                n(&st, "messages_count"),
                n(&tasks, "total"),
                usd(f(&st, "total_cost_usd")),
                thousands(n(&tok, "input")),
                thousands(n(&tok, "output")),
                n(&st, "avg_duration_ms"),
            ));
            if let Some(by) = tasks.get("by_status").and_then(Value::as_object) {
                let parts: Vec<String> = by
                    .iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                if !parts.is_empty() {
                    out.push(format!("       tasks by status: {}", parts.join(", ")));
                }
            }
        }
        Err(e) => out.push(format!("Stats: {e}")),
    }
    out.push(String::new());
    match messages {
        Ok(b) => {
            let msgs = b
                .get("messages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            out.push(format!(
                "Recent messages ({} of {}):",
                msgs.len().min(RECENT_MESSAGES),
                msgs.len()
            ));
            for m in &msgs[msgs.len().saturating_sub(RECENT_MESSAGES)..] {
                let content = match m.get("content") {
                    Some(Value::String(t)) => t.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                out.push(format!(
                    "  [{} {}] {}  {}",
                    s(m, "role"),
                    s(m, "type"),
                    time(m, "timestamp"),
                    clip(&content, 300)
                ));
            }
        }
        Err(e) => out.push(format!("Messages: {e}")),
    }
    out.join("\n")
}
