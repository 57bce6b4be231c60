//! Server-Sent Events: the parser (pure, fed any split of the bytes) and a stream over a
//! response body, for `GET /api/tasks/:id/events`.

use futures_util::StreamExt;

use super::ClientError;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; `message` when the server named none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen so far (SSE keeps it across events), for `Last-Event-ID`.
    pub id: Option<String>,
}

/// The SSE line protocol (WHATWG HTML § 9.2): `field: value` lines, `:` comments (the
/// server's pings), a blank line dispatches. Bytes may arrive split anywhere, even inside a
/// UTF-8 character or between `\r` and `\n`.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    last_id: Option<String>,
    /// The last byte was a `\r` (which ends a line): a `\n` right after it ends nothing more.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feed bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                // The `\n` of a `\r\n`: that line has ended already.
                b'\n' if after_cr => {}
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.end_line(&mut out);
                    self.after_cr = true;
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(SseEvent {
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data: self.data.join("\n"),
                    id: self.last_id.clone(),
                });
            }
            self.event = None;
            self.data.clear();
            return;
        }
        if line.starts_with(':') {
            return; // a comment: `: ping`
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {} // `retry` and unknown fields: nothing to do for a reader that reconnects itself
        }
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
}

/// The bytes of a response body as they arrive (awc's payload; `!Send`, like the client).
type Body = futures_util::stream::LocalBoxStream<'static, Result<bytes::Bytes, String>>;

/// The events of a response body, as they arrive.
pub struct EventStream {
    body: Body,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl EventStream {
    pub(super) fn new(resp: awc::ClientResponse) -> EventStream {
        EventStream {
            body: resp
                .map(|chunk| chunk.map_err(|e| e.to_string()))
                .boxed_local(),
            parser: SseParser::new(),
            ready: Default::default(),
        }
    }

    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<SseEvent, ClientError>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.ready.extend(self.parser.push(&bytes)),
                None => return None,
                Some(Err(e)) => return Some(Err(ClientError::Transport(e))),
            }
        }
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_event_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_at_once(s: &str) -> Vec<SseEvent> {
        SseParser::new().push(s.as_bytes())
    }

    fn byte_by_byte(s: &str) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        s.as_bytes().iter().flat_map(|b| p.push(&[*b])).collect()
    }

    #[test]
    fn events_comments_ids_and_multiline_data() {
        let text = ": ping\n\nid: 1\nevent: init\ndata: {\"task_id\":\"t\"}\n\nid: 2\nevent: text\ndata: a\ndata: b\n\n: ping\n\ndata: plain\n\n";
        for events in [all_at_once(text), byte_by_byte(text)] {
            assert_eq!(events.len(), 3, "{events:?}");
            assert_eq!(events[0].event, "init");
            assert_eq!(events[0].id.as_deref(), Some("1"));
            assert_eq!(events[1].event, "text");
            assert_eq!(events[1].data, "a\nb");
            assert_eq!(events[2].event, "message");
            assert_eq!(events[2].data, "plain");
            assert_eq!(events[2].id.as_deref(), Some("2"), "ids persist");
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_split_anywhere() {
        let text = "event: text\r\ndata: x\r\n\r\nevent: result\rdata: y\r\r";
        for events in [all_at_once(text), byte_by_byte(text)] {
            assert_eq!(events.len(), 2, "{events:?}");
            assert_eq!(
                (events[0].event.as_str(), events[0].data.as_str()),
                ("text", "x")
            );
            assert_eq!(
                (events[1].event.as_str(), events[1].data.as_str()),
                ("result", "y")
            );
        }
    }

    #[test]
    fn utf8_split_between_chunks() {
        let mut p = SseParser::new();
        let bytes = "data: héllo\n\n".as_bytes();
        let (a, b) = bytes.split_at(8); // inside `é`
        assert!(p.push(a).is_empty());
        let ev = p.push(b);
        assert_eq!(ev[0].data, "héllo");
    }
}
