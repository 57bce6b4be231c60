//! Honest keep-alive after an early answer. When the server answers a request before reading
//! its whole body (413, 415, 401, 429, 404 …), the connection cannot be reused: the rest of the
//! body would be read as the next request. actix-web closes such a connection when the body is
//! unfinished, except a chunked one the handler dropped, which it drains — and draining a body
//! the client may never finish (a 413 over the limit) holds the connection for nothing. This
//! layer makes the rule one and plain: a response to a request whose body was not read to its
//! end says `Connection: close` and the connection closes after it. Otherwise (the body was
//! read, or there was none) the connection stays usable.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use bytes::Bytes;
use futures_util::Stream;

/// A request body that records when it has been read to its end.
struct Tracked {
    inner: Payload,
    ended: Rc<Cell<bool>>,
}

impl Stream for Tracked {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.ended.set(true);
        }
        polled
    }
}

/// The middleware (outermost, so every refusal passes through it).
pub async fn close_if_unread(
    mut req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let inner = req.parts_mut().1.take();
    if matches!(inner, Payload::None) {
        // No body (a GET, `Content-Length: 0`): nothing can be left unread.
        return next.call(req).await;
    }
    let ended = Rc::new(Cell::new(false));
    let tracked = Tracked {
        inner,
        ended: ended.clone(),
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(tracked),
    });
    let mut resp = next.call(req).await?;
    if !ended.get() {
        resp.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(resp)
}
