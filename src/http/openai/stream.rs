//! The OpenAI stream of a run: `data: {chat.completion.chunk}` lines read from the task's event
//! log (the same [`TaskLog`] the native SSE reads), ending with `data: [DONE]`.
//!
//! Sequence: a chunk with `delta: {"role":"assistant","content":""}`; one chunk per `text`
//! event, as the CLI produces it; then, on `result`, a chunk with an empty delta and
//! `finish_reason`, the usage chunk (`choices: []`) when `stream_options.include_usage`, and
//! `[DONE]`. Text written before and after a tool call is kept apart by a blank line (tool
//! calls themselves are not relayed: OpenAI's stream has no place for tools the server ran).
//!
//! A run that fails after the stream began (the status is already 200) sends one data line with
//! an OpenAI error object (`{"error":{"message","type","param","code"}}`, which the SDKs raise as
//! an `APIError`), then `[DONE]` — a run the CLI stopped at its own limits too (chat
//! completions have no truncated answer). A client that goes away cancels the run (the driver,
//! [`compat::stream`](super::super::compat::stream), reads the run's log).

use std::collections::VecDeque;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::Value;

use actors::events::EventSource;
use actors::model::{TaskId, Usage};
use actors::store::Store;

use super::super::claude::CancelOnDrop;
use super::super::compat::stream::{self, Encoder};
use super::super::events::PING_INTERVAL;
use super::super::sse::{self, Event};
use super::error::from_native;
use super::response::Envelope;

/// The stream's last line, as OpenAI ends every stream.
pub const DONE: &str = "[DONE]";

/// The SSE response for a submitted run.
pub fn respond(
    log: EventSource,
    env: Envelope,
    include_usage: bool,
    store: Arc<dyn Store>,
    task_id: TaskId,
    guard: CancelOnDrop,
) -> HttpResponse {
    let chunks = Chunks { env, include_usage };
    // `: ping` comments keep proxies from closing a quiet stream; SSE clients skip them.
    sse::response(
        stream::events(log, chunks, store, task_id, guard),
        PING_INTERVAL,
    )
}

/// The encoder: `data:` lines of chunks.
struct Chunks {
    env: Envelope,
    include_usage: bool,
}

impl Encoder for Chunks {
    const TRUNCATES: bool = false;

    fn start(&mut self, out: &mut VecDeque<Event>) {
        out.push_back(line(&self.env.role_chunk(self.include_usage)));
    }

    fn text(&mut self, text: &str, after_tool: bool, out: &mut VecDeque<Event>) {
        let text = if after_tool {
            format!("\n\n{text}")
        } else {
            text.to_string()
        };
        out.push_back(line(&self.env.text_chunk(&text, self.include_usage)));
    }

    fn finish(&mut self, usage: Usage, _: bool, out: &mut VecDeque<Event>) {
        out.push_back(line(&self.env.finish_chunk(self.include_usage)));
        if self.include_usage {
            out.push_back(line(&self.env.usage_chunk(usage)));
        }
        out.push_back(Event::default().data(DONE));
    }

    fn fail(&mut self, status: StatusCode, native: &Value, out: &mut VecDeque<Event>) {
        out.push_back(line(&from_native(status, native, "messages")));
        out.push_back(Event::default().data(DONE));
    }
}

fn line<T: Serialize>(value: &T) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"error":{"message":"Internal error.","type":"server_error","param":null,"code":"internal_error"}}"#
            .to_string()
    }))
}
