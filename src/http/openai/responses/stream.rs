//! The Responses stream of a run, read from the task's event log: named events whose `data`
//! carries the same `type` and a `sequence_number` (see [`StreamEvent`] for the sequence).
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
//! comments keep a quiet stream open; a client that goes away cancels the run.

use std::collections::VecDeque;
use std::sync::Arc;

use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::Value;

use actors::events::EventSource;
use actors::model::TaskId;
use actors::store::Store;

use super::super::super::claude::CancelOnDrop;
use super::super::super::compat::{cut_short_body, stored_usage, usage_of, Piece, RunReader};
use super::super::super::events::PING_INTERVAL;
use super::super::super::sse::{self, Event};
use super::response::{output_text, Envelope, Outcome, ResponseError, Status, StreamEvent};

struct Writer {
    /// The run's events: its local log, or with Redis the copy of a run on another instance.
    log: EventSource,
    after: u64,
    reader: RunReader,
    env: Envelope,
    /// Where the run's record is: a run cut short reports its usage only there.
    store: Arc<dyn Store>,
    task_id: TaskId,
    /// The text so far.
    text: String,
    /// Events ready to send, in order.
    out: VecDeque<Event>,
    /// The next event's `sequence_number`.
    sequence: u64,
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
    let mut w = Writer {
        log,
        after: 0,
        reader: RunReader::default(),
        env,
        store,
        task_id,
        text: String::new(),
        out: VecDeque::new(),
        sequence: 0,
        done: false,
        guard,
    };
    w.start();
    let events = futures_util::stream::unfold(w, |mut w| async move {
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
    sse::response(events, PING_INTERVAL)
}

impl Writer {
    fn next(&mut self) -> u64 {
        let n = self.sequence;
        self.sequence += 1;
        n
    }

    /// The response in progress, its message, its empty part.
    fn start(&mut self) {
        let (s0, s1, s2, s3) = (self.next(), self.next(), self.next(), self.next());
        let (env, out) = (&self.env, &mut self.out);
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

    async fn write(&mut self, piece: Piece) {
        if self.done {
            return;
        }
        match piece {
            Piece::Text { text, after_tool } => {
                let delta = if after_tool {
                    format!("\n\n{text}")
                } else {
                    text
                };
                self.text.push_str(&delta);
                let n = self.next();
                push(
                    &mut self.out,
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
            Piece::Done(native) => self.finish(Outcome::Completed(usage_of(&native))),
            Piece::Failed(_, native) if cut_short_body(&native) => {
                let usage = stored_usage(self.store.as_ref(), self.task_id).await;
                self.finish(Outcome::Incomplete(usage));
            }
            Piece::Failed(_, native) => self.fail(&native),
        }
    }

    /// The text, part and message done, then the response's end.
    fn finish(&mut self, outcome: Outcome) {
        let status = match outcome {
            Outcome::Incomplete(_) => Status::Incomplete,
            _ => Status::Completed,
        };
        let (s0, s1, s2, s3) = (self.next(), self.next(), self.next(), self.next());
        let (env, out, text) = (&self.env, &mut self.out, &self.text);
        push(
            out,
            &StreamEvent::OutputTextDone {
                item_id: &env.item_id,
                output_index: 0,
                content_index: 0,
                text,
                logprobs: [],
                sequence_number: s0,
            },
        );
        push(
            out,
            &StreamEvent::ContentPartDone {
                item_id: &env.item_id,
                output_index: 0,
                content_index: 0,
                part: output_text(text),
                sequence_number: s1,
            },
        );
        push(
            out,
            &StreamEvent::OutputItemDone {
                output_index: 0,
                item: env.item(Some(text), status),
                sequence_number: s2,
            },
        );
        let response = env.response(Some(text), outcome);
        let last = match status {
            Status::Incomplete => StreamEvent::Incomplete {
                response,
                sequence_number: s3,
            },
            _ => StreamEvent::Completed {
                response,
                sequence_number: s3,
            },
        };
        push(out, &last);
        self.end();
    }

    fn fail(&mut self, native: &Value) {
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
            &mut self.out,
            &StreamEvent::Failed {
                response: self.env.response(None, Outcome::Failed(error)),
                sequence_number: n,
            },
        );
        self.end();
    }

    fn end(&mut self) {
        self.done = true;
        // The run is over: a client leaving now cancels nothing.
        self.guard.disarm();
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
