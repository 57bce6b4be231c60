//! Server-Sent Events: `GET /api/tasks/:id/events`, and the answer of runs sent with
//! `stream: true`. Events: `init`, `text` (`{"text"}` deltas), `tool_use`, `tool_result`,
//! then `result` (the sync answer object) or `error` (the error body); `: ping` every 15 s.
//! Each event carries its `id`, so a client that reconnects with `Last-Event-ID` gets only
//! what it missed. The stream ends after `result` or `error`.
//!
//! With several instances on one Redis, a task's events can be read on any of them: an instance
//! that does not run the task replays and follows the copy the running instance keeps in Redis
//! (`actors::cluster::events`), with the same ids, so `Last-Event-ID` works whichever instance
//! the client reconnects to.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use actors::events::{EventSource, TaskEvent, TaskLog};
use actors::model::{Task, TaskStatus};

use super::auth::Caller;
use super::claude::{success_body, CancelOnDrop};
use super::error::ApiError;
use super::sse::{self, Event};
use super::tasks::visible_task;
use crate::state::AppState;

/// Comment lines that keep proxies from closing a quiet stream.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// The final event of a task: its answer, as a sync request would have had it.
pub fn final_event(task: &Task) -> (&'static str, Value) {
    if task.status == TaskStatus::Completed {
        ("result", success_body(task))
    } else {
        ("error", ApiError::from_task(task).body())
    }
}

/// `GET /api/tasks/:id/events`.
///
/// With Redis storage, any instance sharing the namespace streams any run, with the same event
/// ids (so `Last-Event-ID` works on whichever instance the client reconnects to).
#[utoipa::path(get, path = "/api/tasks/{id}/events", tag = "tasks", operation_id = "streamTaskEvents",
    summary = "Stream a task's events (SSE)",
    params(("id" = String, Path, description = "Task id (UUID)"), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")),
    responses((status = 200, description = "Server-Sent Events: init, text, tool_use, tool_result, then result or error", content_type = "text/event-stream", body = crate::http::schema::SseEvent), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn task_events(
    state: AppState,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let task = visible_task(&state, &caller, &id).await?;
    let after = last_event_id(req.headers())?;
    let source = state.queue.events().source(&task, &state.store);
    Ok(stream_source(source, after, None))
}

/// `Last-Event-ID`: the id of the last event the client saw (absent: from the start). Ids are
/// the numbers this server sent; anything else is a client bug worth a clear 400.
fn last_event_id(headers: &HeaderMap) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::field(
                    "Last-Event-ID",
                    "must be an event id this server sent (a number)",
                )
            }),
    }
}

struct Reader {
    source: EventSource,
    after: u64,
    buffered: VecDeque<Arc<TaskEvent>>,
    /// For `stream: true`: cancels the run if the client goes away before the end.
    guard: Option<CancelOnDrop>,
}

/// An SSE response reading `log` after event `after`.
pub fn stream(log: Arc<TaskLog>, after: u64, guard: Option<CancelOnDrop>) -> HttpResponse {
    stream_source(EventSource::Local(log), after, guard)
}

/// An SSE response reading `source` after event `after`.
pub fn stream_source(source: EventSource, after: u64, guard: Option<CancelOnDrop>) -> HttpResponse {
    let reader = Reader {
        source,
        after,
        buffered: VecDeque::new(),
        guard,
    };
    let events = futures_util::stream::unfold(reader, |mut r| async move {
        loop {
            if let Some(e) = r.buffered.pop_front() {
                r.after = e.id;
                // The data is compact JSON already: one line, sent as it is.
                let event = Event::default()
                    .id(e.id.to_string())
                    .event(e.kind)
                    .data(e.data.get());
                return Some((event, r));
            }
            match r.source.next_after(r.after).await {
                Some(batch) => r.buffered.extend(batch),
                None => {
                    // The run ended and the client has it all: nothing to cancel.
                    if let Some(g) = r.guard.as_mut() {
                        g.disarm();
                    }
                    return None;
                }
            }
        }
    });
    sse::response(events, PING_INTERVAL)
}
