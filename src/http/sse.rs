//! Server-Sent Events on actix-web: the frames (`id`, `event`, `data` fields, a blank line),
//! and a `: ping` comment whenever the stream has been quiet for the keep-alive interval, so
//! proxies do not close it (SSE clients skip comments). A stream whose protocol has its own
//! keep-alive event (Anthropic's `ping`) sends that instead ([`response_with_ping`]).
//!
//! The body is a stream actix-web polls as the socket drains; when the client goes away,
//! actix-web drops it, and with it whatever the event stream owns (the `CancelOnDrop` guard of
//! a streamed run).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::header;
use actix_web::HttpResponse;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// One event, its fields written in the order they were set.
#[derive(Debug, Default)]
pub struct Event(BytesMut);

impl Event {
    pub fn id(self, id: impl AsRef<str>) -> Event {
        self.field("id", id.as_ref())
    }

    pub fn event(self, name: impl AsRef<str>) -> Event {
        self.field("event", name.as_ref())
    }

    /// The data; a value with several lines is sent as several `data:` lines, which the
    /// client joins back with newlines.
    pub fn data(mut self, data: impl AsRef<str>) -> Event {
        for line in data.as_ref().split('\n') {
            self = self.field("data", line.strip_suffix('\r').unwrap_or(line));
        }
        self
    }

    fn field(mut self, name: &str, value: &str) -> Event {
        self.0.reserve(name.len() + value.len() + 3);
        self.0.put_slice(name.as_bytes());
        self.0.put_slice(b": ");
        self.0.put_slice(value.as_bytes());
        self.0.put_u8(b'\n');
        self
    }

    /// The bytes sent for the event: its fields and the blank line that ends it.
    pub(crate) fn into_frame(mut self) -> Bytes {
        self.0.put_u8(b'\n');
        self.0.freeze()
    }
}

/// The keep-alive comment.
const PING: &[u8] = b": ping\n\n";

/// The response: `text/event-stream`, not cached, each event written as it comes.
pub fn response<S>(events: S, ping_every: Duration) -> HttpResponse
where
    S: Stream<Item = Event> + 'static,
{
    streaming(events, ping_every, Bytes::from_static(PING))
}

/// [`response`] with `ping` as the keep-alive instead of the comment.
pub fn response_with_ping<S>(events: S, ping_every: Duration, ping: Event) -> HttpResponse
where
    S: Stream<Item = Event> + 'static,
{
    streaming(events, ping_every, ping.into_frame())
}

fn streaming<S>(events: S, ping_every: Duration, ping: Bytes) -> HttpResponse
where
    S: Stream<Item = Event> + 'static,
{
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(KeepAlive {
            events: Box::pin(events),
            quiet: Box::pin(tokio::time::sleep(ping_every)),
            every: ping_every,
            ping,
        })
}

/// Frames of `events`, with a ping after each `every` without one.
struct KeepAlive {
    events: Pin<Box<dyn Stream<Item = Event>>>,
    quiet: Pin<Box<Sleep>>,
    every: Duration,
    /// The keep-alive frame.
    ping: Bytes,
}

impl Stream for KeepAlive {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next_ping = Instant::now() + self.every;
        match self.events.as_mut().poll_next(cx) {
            Poll::Ready(Some(event)) => {
                self.quiet.as_mut().reset(next_ping);
                Poll::Ready(Some(Ok(event.into_frame())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.quiet.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.quiet.as_mut().reset(next_ping);
                    Poll::Ready(Some(Ok(self.ping.clone())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn frames() {
        let e = Event::default()
            .id("7")
            .event("text")
            .data(r#"{"text":"hi"}"#);
        assert_eq!(
            &e.into_frame()[..],
            b"id: 7\nevent: text\ndata: {\"text\":\"hi\"}\n\n"
        );
        let e = Event::default().data("a\nb\r\nc");
        assert_eq!(&e.into_frame()[..], b"data: a\ndata: b\ndata: c\n\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_is_pinged_and_events_reset_the_clock() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let events =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            );
        let mut body = KeepAlive {
            events: Box::pin(events),
            quiet: Box::pin(tokio::time::sleep(Duration::from_secs(15))),
            every: Duration::from_secs(15),
            ping: Bytes::from_static(PING),
        };
        // Nothing for 15 s: a ping (time is paused and auto-advances while all wait).
        let first = body.next().await.and_then(Result::ok);
        assert_eq!(first.as_deref(), Some(PING));
        tx.send(Event::default().data("x")).ok();
        let second = body.next().await.and_then(Result::ok);
        assert_eq!(second.as_deref(), Some(&b"data: x\n\n"[..]));
        drop(tx);
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_protocol_with_its_own_ping_event_gets_that_instead() {
        let ping = Event::default().event("ping").data(r#"{"type": "ping"}"#);
        let mut body = KeepAlive {
            events: Box::pin(futures_util::stream::pending::<Event>()),
            quiet: Box::pin(tokio::time::sleep(Duration::from_secs(15))),
            every: Duration::from_secs(15),
            ping: ping.into_frame(),
        };
        let first = body.next().await.and_then(Result::ok);
        assert_eq!(
            first.as_deref(),
            Some(&b"event: ping\ndata: {\"type\": \"ping\"}\n\n"[..])
        );
    }
}
