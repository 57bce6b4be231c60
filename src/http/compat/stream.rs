//! The stream of a run in a compatible API's events: one driver reads the task's event log
//! (the same log the native SSE reads) into [`Piece`]s, and the API's [`Encoder`] — pure, so
//! each is unit-tested on its own — turns them into its SSE events.
//!
//! The driver owns what every such stream needs: the run's usage from its record when the CLI
//! cut the run short (the final event is then an error body), the end of the stream after the
//! final event, and the guard that cancels the run if the client goes away before it.

use std::collections::VecDeque;
use std::sync::Arc;

use actix_web::http::StatusCode;
use futures_util::Stream;
use serde_json::Value;

use actors::events::EventSource;
use actors::model::{TaskId, Usage};
use actors::store::Store;

use super::super::claude::CancelOnDrop;
use super::super::sse::Event;
use super::{cut_short_body, stored_usage, usage_of, Piece, RunReader};

/// One API's events for a run's pieces. Each method appends the events to send to `out`.
pub trait Encoder {
    /// Whether the API has a truncated answer for a run the CLI cut short; without one
    /// (chat completions) such a run is a failure like any other.
    const TRUNCATES: bool = true;

    /// The events that open the stream.
    fn start(&mut self, out: &mut VecDeque<Event>);
    /// Text as the CLI produced it; `after_tool`: a tool ran since the previous text.
    fn text(&mut self, text: &str, after_tool: bool, out: &mut VecDeque<Event>);
    /// The run ended with an answer: completed, or `cut_short` by the CLI's own limits
    /// ([`cut_short`](super::cut_short)) — a truncated answer. `usage` is the run's.
    fn finish(&mut self, usage: Usage, cut_short: bool, out: &mut VecDeque<Event>);
    /// The run failed after the stream began: `native` is the error body, `status` its status.
    fn fail(&mut self, status: StatusCode, native: &Value, out: &mut VecDeque<Event>);
}

struct Driver<E> {
    /// The run's events: its local log, or with Redis the copy of a run on another instance.
    log: EventSource,
    after: u64,
    reader: RunReader,
    encoder: E,
    /// Where the run's record is: a run cut short reports its usage only there.
    store: Arc<dyn Store>,
    task_id: TaskId,
    /// Events ready to send, in order.
    out: VecDeque<Event>,
    /// The final event was read; nothing more comes after `out` is drained.
    done: bool,
    /// Cancels the run if the client leaves before the final event.
    guard: CancelOnDrop,
}

/// The events of the run `task_id` whose log is `log`, as `encoder` writes them.
pub fn events<E: Encoder + 'static>(
    log: EventSource,
    mut encoder: E,
    store: Arc<dyn Store>,
    task_id: TaskId,
    guard: CancelOnDrop,
) -> impl Stream<Item = Event> + 'static {
    let mut out = VecDeque::new();
    encoder.start(&mut out);
    let driver = Driver {
        log,
        after: 0,
        reader: RunReader::default(),
        encoder,
        store,
        task_id,
        out,
        done: false,
        guard,
    };
    futures_util::stream::unfold(driver, |mut d| async move {
        loop {
            if let Some(e) = d.out.pop_front() {
                return Some((e, d));
            }
            if d.done {
                return None;
            }
            match d.log.next_after(d.after).await {
                Some(batch) => {
                    for e in batch {
                        d.after = e.id;
                        if let Some(piece) = d.reader.take(&e) {
                            d.write(piece).await;
                        }
                    }
                }
                None => d.write(Piece::ended_without_answer()).await,
            }
        }
    })
}

impl<E: Encoder> Driver<E> {
    async fn write(&mut self, piece: Piece) {
        if self.done {
            return;
        }
        match piece {
            Piece::Text { text, after_tool } => self.encoder.text(&text, after_tool, &mut self.out),
            Piece::Done(native) => {
                self.encoder.finish(usage_of(&native), false, &mut self.out);
                self.end();
            }
            Piece::Failed(_, native) if E::TRUNCATES && cut_short_body(&native) => {
                let usage = stored_usage(self.store.as_ref(), self.task_id).await;
                self.encoder.finish(usage, true, &mut self.out);
                self.end();
            }
            Piece::Failed(status, native) => {
                self.encoder.fail(status, &native, &mut self.out);
                self.end();
            }
        }
    }

    fn end(&mut self) {
        self.done = true;
        // The run is over: a client leaving now cancels nothing.
        self.guard.disarm();
    }
}
