//! The Anthropic stream of a run, read from the task's event log (the same log the native SSE
//! reads): named events whose `data` carries the same `type`.
//!
//! `message_start` (no content, zero usage: the figures come at the end), one `ping`, then for
//! each stretch of text the model wrote a text block — `content_block_start`, one
//! `content_block_delta` (`text_delta`) per text delta as the CLI produces it,
//! `content_block_stop` — a tool call the CLI made between two stretches closing one block and
//! the next text opening another (tool calls are not relayed: the client did not give those
//! tools). Then `message_delta` with the stop reason and the run's whole usage, and
//! `message_stop`.
//!
//! A run the CLI stopped at its own limits ends like a truncated answer (`max_tokens`, see
//! [`MAX_TOKENS`]); any other failure after the stream began (the status is already 200) ends
//! with an `error` event holding Anthropic's error object, which the SDKs raise. A quiet stream
//! gets Anthropic's own keep-alive, `event: ping` with `{"type": "ping"}`, every
//! [`PING_INTERVAL`]. A client that goes away cancels the run.

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
use super::super::compat::{cut_short_body, stored_usage, usage_of, Piece, RunReader};
use super::super::events::PING_INTERVAL;
use super::super::sse::{self, Event};
use super::error::from_native;
use super::response::{
    text_block, text_delta, Envelope, MessageDelta, StreamEvent, END_TURN, MAX_TOKENS,
};

struct Writer {
    /// The run's events: its local log, or with Redis the copy of a run on another instance.
    log: EventSource,
    after: u64,
    reader: RunReader,
    env: Envelope,
    /// Where the run's record is: a run cut short reports its usage only there.
    store: Arc<dyn Store>,
    task_id: TaskId,
    /// Events ready to send, in order.
    out: VecDeque<Event>,
    /// The index of the open text block, if one is open.
    open: Option<usize>,
    /// The index the next block gets.
    next_index: usize,
    /// The final event was read; nothing more comes after `out` is drained.
    done: bool,
    /// Cancels the run if the client leaves before the final event.
    guard: CancelOnDrop,
}

/// The SSE response for a submitted run.
pub fn respond(
    log: EventSource,
    env: Envelope,
    store: Arc<dyn Store>,
    task_id: TaskId,
    guard: CancelOnDrop,
) -> HttpResponse {
    let mut writer = Writer {
        log,
        after: 0,
        reader: RunReader::default(),
        env,
        store,
        task_id,
        out: VecDeque::new(),
        open: None,
        next_index: 0,
        done: false,
        guard,
    };
    let start = StreamEvent::MessageStart {
        message: writer.env.start(),
    };
    let start = event(&start);
    writer.out.push_back(start);
    // As Anthropic's API does: a ping right after the start.
    writer.out.push_back(event(&StreamEvent::Ping));
    let events = futures_util::stream::unfold(writer, |mut w| async move {
        loop {
            if let Some(e) = w.out.pop_front() {
                return Some((e, w));
            }
            if w.done {
                return None;
            }
            match w.log.next_after(w.after).await {
                Some(batch) => {
                    for e in batch {
                        w.after = e.id;
                        if let Some(piece) = w.reader.take(&e) {
                            w.write(piece).await;
                        }
                    }
                }
                None => w.write(Piece::ended_without_answer()).await,
            }
        }
    });
    let ping = Event::default()
        .event(StreamEvent::Ping.name())
        .data(r#"{"type": "ping"}"#);
    sse::response_with_ping(events, PING_INTERVAL, ping)
}

impl Writer {
    async fn write(&mut self, piece: Piece) {
        if self.done {
            return;
        }
        match piece {
            Piece::Text { text, after_tool } => {
                if after_tool {
                    self.close_block();
                }
                let index = match self.open {
                    Some(index) => index,
                    None => self.open_block(),
                };
                let delta = StreamEvent::ContentBlockDelta {
                    index,
                    delta: text_delta(&text),
                };
                self.out.push_back(event(&delta));
            }
            Piece::Done(native) => self.finish(END_TURN, usage_of(&native)),
            Piece::Failed(_, native) if cut_short_body(&native) => {
                let usage = stored_usage(self.store.as_ref(), self.task_id).await;
                self.finish(MAX_TOKENS, usage);
            }
            Piece::Failed(status, native) => self.fail(status, &native),
        }
    }

    fn open_block(&mut self) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some(index);
        let start = StreamEvent::ContentBlockStart {
            index,
            content_block: text_block(""),
        };
        self.out.push_back(event(&start));
        index
    }

    fn close_block(&mut self) {
        if let Some(index) = self.open.take() {
            self.out
                .push_back(event(&StreamEvent::ContentBlockStop { index }));
        }
    }

    fn finish(&mut self, stop_reason: &'static str, usage: Usage) {
        self.close_block();
        let delta = StreamEvent::MessageDelta {
            delta: MessageDelta {
                stop_reason,
                stop_sequence: None,
            },
            usage: usage.into(),
        };
        self.out.push_back(event(&delta));
        self.out.push_back(event(&StreamEvent::MessageStop));
        self.end();
    }

    fn fail(&mut self, status: StatusCode, native: &Value) {
        let body = data(&from_native(status, native, None));
        self.out
            .push_back(Event::default().event("error").data(body));
        self.end();
    }

    fn end(&mut self) {
        self.done = true;
        // The run is over: a client leaving now cancels nothing.
        self.guard.disarm();
    }
}

fn event(e: &StreamEvent<'_>) -> Event {
    Event::default().event(e.name()).data(data(e))
}

fn data<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"type":"error","error":{"type":"api_error","message":"Internal error."}}"#.to_string()
    })
}
