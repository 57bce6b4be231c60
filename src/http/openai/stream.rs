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

use actors::events::{EventSource, TaskEvent};

use super::super::claude::CancelOnDrop;
use super::super::compat::{usage_of, Piece, RunReader};
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
    reader: RunReader,
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
        reader: RunReader::default(),
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
                None => w.write(Piece::ended_without_answer()),
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
        if let Some(piece) = self.reader.take(e) {
            self.write(piece);
        }
    }

    fn write(&mut self, piece: Piece) {
        match piece {
            Piece::Text { text, after_tool } => {
                let text = if after_tool {
                    format!("\n\n{text}")
                } else {
                    text
                };
                let line = data(&self.env.text_chunk(&text, self.include_usage));
                self.out.push_back(line);
            }
            Piece::Done(native) => {
                self.out
                    .push_back(data(&self.env.finish_chunk(self.include_usage)));
                if self.include_usage {
                    self.out
                        .push_back(data(&self.env.usage_chunk(usage_of(&native))));
                }
                self.end();
            }
            Piece::Failed(status, native) => self.fail(status, &native),
        }
    }

    fn fail(&mut self, status: StatusCode, native: &Value) {
        self.out
            .push_back(data(&from_native(status, native, "messages")));
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
