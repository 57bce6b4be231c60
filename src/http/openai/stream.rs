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
//! an `APIError`), then `[DONE]`. A client that goes away cancels the run.

use std::collections::VecDeque;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::Value;

use actors::error::ErrorCode;
use actors::events::{EventSource, TaskEvent};
use actors::model::Usage;

use super::super::claude::CancelOnDrop;
use super::super::events::PING_INTERVAL;
use super::super::sse::{self, Event};
use super::error::from_native;
use super::response::Envelope;

/// The stream's last line, as OpenAI ends every stream.
pub const DONE: &str = "[DONE]";

struct Writer {
    /// The run's events: its local log, or with Redis the copy of a run on another instance.
    log: EventSource,
    after: u64,
    env: Envelope,
    include_usage: bool,
    /// `data:` payloads ready to send, in order.
    out: VecDeque<String>,
    wrote_text: bool,
    /// A tool ran since the last text: the next text starts a new paragraph.
    tool_since_text: bool,
    /// The final event was read; nothing more comes after `out` is drained.
    done: bool,
    /// Cancels the run if the client leaves before the final event.
    guard: CancelOnDrop,
}

/// The SSE response for a submitted run.
pub fn respond(
    log: EventSource,
    env: Envelope,
    include_usage: bool,
    guard: CancelOnDrop,
) -> HttpResponse {
    let mut writer = Writer {
        log,
        after: 0,
        env,
        include_usage,
        out: VecDeque::new(),
        wrote_text: false,
        tool_since_text: false,
        done: false,
        guard,
    };
    writer
        .out
        .push_back(data(&writer.env.role_chunk(include_usage)));
    let events = futures_util::stream::unfold(writer, |mut w| async move {
        loop {
            if let Some(line) = w.out.pop_front() {
                return Some((Event::default().data(line), w));
            }
            if w.done {
                return None;
            }
            match w.log.next_after(w.after).await {
                Some(batch) => {
                    for e in batch {
                        w.after = e.id;
                        w.take(&e);
                    }
                }
                // A log always closes with its final event; if it ever did not, say so
                // rather than end the stream as if the answer were complete.
                None => w.fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": "The run ended without an answer.", "code": "internal_error"}),
                ),
            }
        }
    });
    // `: ping` comments keep proxies from closing a quiet stream; SSE clients skip them.
    sse::response(events, PING_INTERVAL)
}

impl Writer {
    fn take(&mut self, e: &TaskEvent) {
        if self.done {
            return;
        }
        // Parsed only for the kinds looked into.
        let value = || e.value();
        match e.kind {
            "text" => {
                let event = value();
                let Some(text) = event.get("text").and_then(Value::as_str) else {
                    return;
                };
                if text.is_empty() {
                    return;
                }
                let text = if self.tool_since_text && self.wrote_text {
                    format!("\n\n{text}")
                } else {
                    text.to_string()
                };
                self.tool_since_text = false;
                self.wrote_text = true;
                let line = data(&self.env.text_chunk(&text, self.include_usage));
                self.out.push_back(line);
            }
            "tool_use" | "tool_result" => self.tool_since_text = true,
            "result" => {
                self.out
                    .push_back(data(&self.env.finish_chunk(self.include_usage)));
                if self.include_usage {
                    let usage = value()
                        .get("usage")
                        .cloned()
                        .and_then(|u| serde_json::from_value::<Usage>(u).ok())
                        .unwrap_or_default();
                    self.out.push_back(data(&self.env.usage_chunk(usage)));
                }
                self.end();
            }
            "error" => {
                let event = value();
                let status = event
                    .get("code")
                    .cloned()
                    .and_then(|c| serde_json::from_value::<ErrorCode>(c).ok())
                    .and_then(|c| StatusCode::from_u16(c.http_status()).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                self.fail(status, &event);
            }
            // `init` is announced by the role chunk already.
            _ => {}
        }
    }

    fn fail(&mut self, status: StatusCode, native: &Value) {
        self.out.push_back(data(&from_native(status, native)));
        self.end();
    }

    fn end(&mut self) {
        self.out.push_back(DONE.to_string());
        self.done = true;
        // The run is over: a client leaving now cancels nothing.
        self.guard.disarm();
    }
}

fn data<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"error":{"message":"Internal error.","type":"server_error","param":null,"code":"internal_error"}}"#
            .to_string()
    })
}
