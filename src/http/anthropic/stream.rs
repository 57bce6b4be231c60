//! The Anthropic stream of a run: named events whose `data` carries the same `type`.
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
//! [`PING_INTERVAL`]. A client that goes away cancels the run (the driver,
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
use super::response::{
    text_block, text_delta, Envelope, MessageDelta, StreamEvent, END_TURN, MAX_TOKENS,
};

/// The SSE response for a submitted run.
pub fn respond(
    log: EventSource,
    env: Envelope,
    store: Arc<dyn Store>,
    task_id: TaskId,
    guard: CancelOnDrop,
) -> HttpResponse {
    let events = stream::events(log, Blocks::new(env), store, task_id, guard);
    let ping = Event::default()
        .event(StreamEvent::Ping.name())
        .data(r#"{"type": "ping"}"#);
    sse::response_with_ping(events, PING_INTERVAL, ping)
}

/// The encoder: the message's text blocks.
struct Blocks {
    env: Envelope,
    /// The index of the open text block, if one is open.
    open: Option<usize>,
    /// The index the next block gets.
    next_index: usize,
}

impl Blocks {
    fn new(env: Envelope) -> Blocks {
        Blocks {
            env,
            open: None,
            next_index: 0,
        }
    }

    fn close_block(&mut self, out: &mut VecDeque<Event>) {
        if let Some(index) = self.open.take() {
            out.push_back(event(&StreamEvent::ContentBlockStop { index }));
        }
    }
}

impl Encoder for Blocks {
    fn start(&mut self, out: &mut VecDeque<Event>) {
        out.push_back(event(&StreamEvent::MessageStart {
            message: self.env.start(),
        }));
        // As Anthropic's API does: a ping right after the start.
        out.push_back(event(&StreamEvent::Ping));
    }

    fn text(&mut self, text: &str, after_tool: bool, out: &mut VecDeque<Event>) {
        if after_tool {
            self.close_block(out);
        }
        let index = match self.open {
            Some(index) => index,
            None => {
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some(index);
                out.push_back(event(&StreamEvent::ContentBlockStart {
                    index,
                    content_block: text_block(""),
                }));
                index
            }
        };
        out.push_back(event(&StreamEvent::ContentBlockDelta {
            index,
            delta: text_delta(text),
        }));
    }

    fn finish(&mut self, usage: Usage, cut_short: bool, out: &mut VecDeque<Event>) {
        self.close_block(out);
        let stop_reason = if cut_short { MAX_TOKENS } else { END_TURN };
        out.push_back(event(&StreamEvent::MessageDelta {
            delta: MessageDelta {
                stop_reason,
                stop_sequence: None,
            },
            usage: usage.into(),
        }));
        out.push_back(event(&StreamEvent::MessageStop));
    }

    fn fail(&mut self, status: StatusCode, native: &Value, out: &mut VecDeque<Event>) {
        let body = data(&from_native(status, native, None));
        out.push_back(Event::default().event("error").data(body));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The events of `out` as (name, data) pairs.
    fn read(out: VecDeque<Event>) -> Vec<(String, Value)> {
        out.into_iter()
            .map(|e| {
                let frame = String::from_utf8_lossy(&e.into_frame()).to_string();
                let mut lines = frame.lines();
                let name = lines.next().and_then(|l| l.strip_prefix("event: "));
                let data = lines.next().and_then(|l| l.strip_prefix("data: "));
                let data = data.and_then(|d| serde_json::from_str(d).ok());
                (name.unwrap_or("").to_string(), data.unwrap_or(Value::Null))
            })
            .collect()
    }

    fn blocks() -> Blocks {
        Blocks::new(Envelope {
            id: "msg_1".into(),
            model: "m".into(),
        })
    }

    #[test]
    fn text_around_a_tool_is_two_blocks_then_the_stop_reason_and_usage() {
        let mut b = blocks();
        let mut out = VecDeque::new();
        b.start(&mut out);
        b.text("a", false, &mut out);
        b.text("b", false, &mut out);
        b.text("c", true, &mut out);
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        };
        b.finish(usage, false, &mut out);
        let events = read(out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], json!(name));
        }
        assert_eq!(events[6].1["index"], 1);
        assert_eq!(
            events[7].1["delta"],
            json!({"type": "text_delta", "text": "c"})
        );
        assert_eq!(
            events[9].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 4}})
        );
    }

    #[test]
    fn a_run_cut_short_is_max_tokens_and_a_failure_an_error_event() {
        let mut b = blocks();
        let mut out = VecDeque::new();
        b.finish(Usage::default(), true, &mut out);
        let events = read(out);
        assert_eq!(events[0].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(events.len(), 2, "no block was opened: {events:?}");

        let mut b = blocks();
        let mut out = VecDeque::new();
        b.text("partial", false, &mut out);
        let native =
            json!({"error": "The model API returned an error: 500", "code": "cli_api_error"});
        b.fail(StatusCode::BAD_GATEWAY, &native, &mut out);
        let events = read(out);
        let (name, err) = events.last().expect("an event");
        assert_eq!(name, "error");
        assert_eq!(
            *err,
            json!({"type": "error", "error": {"type": "api_error",
                   "message": "The model API returned an error: 500",
                   "details": {"error_code": "cli_api_error"}}})
        );
    }
}
