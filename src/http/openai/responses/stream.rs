//! The Responses stream of a run: named events whose `data` carries the same `type` and a
//! `sequence_number` (see [`StreamEvent`] for the sequence).
//!
//! The answer is one assistant message with one `output_text` part; text written before and
//! after a tool call the CLI made is kept apart by a blank line (tool calls are not relayed:
//! the client did not give those tools). The final `response.completed` carries the text the
//! deltas add up to, and the run's usage.
//!
//! A run the CLI stopped at its own limits ends with `response.incomplete`
//! (`incomplete_details.reason: max_output_tokens`); any other failure after the stream began
//! (the status is already 200) with `response.failed`, whose `response.error` holds the
//! service's code and message — as OpenAI ends a stream whose response failed. `: ping`
//! comments keep a quiet stream open; a client that goes away cancels the run (the driver,
//! [`compat::stream`](super::super::super::compat::stream), reads the run's log).

use std::collections::VecDeque;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::Value;

use actors::events::EventSource;
use actors::model::{TaskId, Usage};
use actors::store::Store;

use super::super::super::claude::CancelOnDrop;
use super::super::super::compat::stream::{self, Encoder};
use super::super::super::events::PING_INTERVAL;
use super::super::super::sse::{self, Event};
use super::response::{output_text, Envelope, Outcome, ResponseError, Status, StreamEvent};

/// The SSE response for a submitted run.
pub fn respond(
    log: EventSource,
    env: Envelope,
    store: Arc<dyn Store>,
    task_id: TaskId,
    guard: CancelOnDrop,
) -> HttpResponse {
    let encoder = Response {
        env,
        text: String::new(),
        sequence: 0,
    };
    sse::response(
        stream::events(log, encoder, store, task_id, guard),
        PING_INTERVAL,
    )
}

/// The encoder: one message, one text part.
struct Response {
    env: Envelope,
    /// The text so far.
    text: String,
    /// The next event's `sequence_number`.
    sequence: u64,
}

impl Response {
    fn next(&mut self) -> u64 {
        let n = self.sequence;
        self.sequence += 1;
        n
    }
}

impl Encoder for Response {
    /// The response in progress, its message, its empty part.
    fn start(&mut self, out: &mut VecDeque<Event>) {
        let (s0, s1, s2, s3) = (self.next(), self.next(), self.next(), self.next());
        let env = &self.env;
        push(
            out,
            &StreamEvent::Created {
                response: env.response(None, Outcome::Running),
                sequence_number: s0,
            },
        );
        push(
            out,
            &StreamEvent::InProgress {
                response: env.response(None, Outcome::Running),
                sequence_number: s1,
            },
        );
        push(
            out,
            &StreamEvent::OutputItemAdded {
                output_index: 0,
                item: env.item(None, Status::InProgress),
                sequence_number: s2,
            },
        );
        push(
            out,
            &StreamEvent::ContentPartAdded {
                item_id: &env.item_id,
                output_index: 0,
                content_index: 0,
                part: output_text(""),
                sequence_number: s3,
            },
        );
    }

    fn text(&mut self, text: &str, after_tool: bool, out: &mut VecDeque<Event>) {
        let delta = if after_tool {
            format!("\n\n{text}")
        } else {
            text.to_string()
        };
        self.text.push_str(&delta);
        let n = self.next();
        push(
            out,
            &StreamEvent::OutputTextDelta {
                item_id: &self.env.item_id,
                output_index: 0,
                content_index: 0,
                delta: &delta,
                logprobs: [],
                sequence_number: n,
            },
        );
    }

    /// The text, part and message done, then the response's end.
    fn finish(&mut self, usage: Usage, cut_short: bool, out: &mut VecDeque<Event>) {
        let (status, outcome) = if cut_short {
            (Status::Incomplete, Outcome::Incomplete(usage))
        } else {
            (Status::Completed, Outcome::Completed(usage))
        };
        let (s0, s1, s2, s3) = (self.next(), self.next(), self.next(), self.next());
        let (env, text) = (&self.env, self.text.as_str());
        let (item_id, output_index, content_index) = (env.item_id.as_str(), 0, 0);
        push(
            out,
            &StreamEvent::OutputTextDone {
                item_id,
                output_index,
                content_index,
                text,
                logprobs: [],
                sequence_number: s0,
            },
        );
        push(
            out,
            &StreamEvent::ContentPartDone {
                item_id,
                output_index,
                content_index,
                part: output_text(text),
                sequence_number: s1,
            },
        );
        push(
            out,
            &StreamEvent::OutputItemDone {
                output_index,
                item: env.item(Some(text), status),
                sequence_number: s2,
            },
        );
        let response = env.response(Some(text), outcome);
        let last = if cut_short {
            StreamEvent::Incomplete {
                response,
                sequence_number: s3,
            }
        } else {
            StreamEvent::Completed {
                response,
                sequence_number: s3,
            }
        };
        push(out, &last);
    }

    fn fail(&mut self, _: StatusCode, native: &Value, out: &mut VecDeque<Event>) {
        let error = ResponseError {
            code: native
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("internal_error")
                .to_string(),
            message: native
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("The run failed.")
                .to_string(),
        };
        let n = self.next();
        push(
            out,
            &StreamEvent::Failed {
                response: self.env.response(None, Outcome::Failed(error)),
                sequence_number: n,
            },
        );
    }
}

fn push(out: &mut VecDeque<Event>, e: &StreamEvent<'_>) {
    out.push_back(Event::default().event(e.name()).data(data(e)));
}

fn data<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"type":"error","code":"internal_error","message":"Internal error.","param":null}"#
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn response() -> Response {
        Response {
            env: Envelope {
                id: "resp_1".into(),
                item_id: "msg_1".into(),
                created_at: 7,
                model: "m".into(),
                instructions: None,
                previous_response_id: Some("resp_0".into()),
                metadata: json!({}),
            },
            text: String::new(),
            sequence: 0,
        }
    }

    #[test]
    fn the_deltas_add_up_to_the_completed_text_and_sequence_numbers_count() {
        let mut r = response();
        let mut out = VecDeque::new();
        r.start(&mut out);
        r.text("a", false, &mut out);
        r.text("b", true, &mut out);
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 4,
            ..Usage::default()
        };
        r.finish(usage, false, &mut out);
        let events = read(out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], json!(name));
            assert_eq!(data["sequence_number"], json!(i));
        }
        assert_eq!(events[5].1["delta"], "\n\nb");
        assert_eq!(events[6].1["text"], "a\n\nb");
        let done = &events[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "a\n\nb");
        assert_eq!(done["usage"]["total_tokens"], 7);
        assert_eq!(done["previous_response_id"], "resp_0");
    }

    #[test]
    fn cut_short_is_incomplete_and_a_failure_is_failed() {
        let mut r = response();
        let mut out = VecDeque::new();
        r.text("so far", false, &mut out);
        r.finish(Usage::default(), true, &mut out);
        let events = read(out);
        let (name, last) = events.last().expect("events");
        assert_eq!(name, "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(events[3].1["item"]["status"], "incomplete");

        let mut r = response();
        let mut out = VecDeque::new();
        let native = json!({"error": "The run exceeded its time limit.", "code": "timeout"});
        r.fail(StatusCode::GATEWAY_TIMEOUT, &native, &mut out);
        let events = read(out);
        assert_eq!(events[0].0, "response.failed");
        assert_eq!(
            events[0].1["response"]["error"],
            json!({"code": "timeout", "message": "The run exceeded its time limit."})
        );
        assert_eq!(events[0].1["response"]["status"], "failed");
    }
}
