//! The HTTP front: actix-web owns every connection (HTTP/1 parsing, keep-alive, pipelining,
//! and — with `h1_allow_half_closed(false)` — dropping a request's handler when its client
//! goes away), and hands each request to the service behind it.
//!
//! This is stage 1 of moving the HTTP layer onto the design card's stack (issue 17): the
//! routes are still the axum [`Router`](axum::Router) of [`super::router`], called from here
//! as a tower service, with its layers (request id, observation, panics, authentication, rate
//! limits). Routes move to native actix-web handlers one by one; this module shrinks as they
//! do. Since the router's future is awaited inside the actix handler, dropping the handler
//! (the client went away) drops the route's future, and the `CancelOnDrop` guards of sync
//! runs, streams and batches cancel their runs as they did under hyper.
//!
//! actix-web 4 speaks `http` 0.2 and axum `http` 1: method, URI, headers and status cross by
//! their bytes. A request body crosses through a small channel (actix's payload is `!Send`,
//! axum's body must be `Send`); a response body with a known size is sent whole, any other
//! (event streams) streamed.

use std::net::SocketAddr;

use actix_web::http::header::{HeaderName as AHeaderName, HeaderValue as AHeaderValue};
use actix_web::http::StatusCode as AStatus;
use actix_web::{web, HttpRequest, HttpResponse};
use axum::body::{Body, Bytes};
use axum::http::{self, HeaderName, HeaderValue, Method, Request, Version};
use futures_util::StreamExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The client's address, in a request's extensions for the routes (authentication of the
/// anonymous local caller, rate limits by address).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Chunks of a request body in flight between the two sides.
const BODY_CHANNEL: usize = 4;

/// The actix-web default service: every request, answered by the router.
pub async fn to_router(
    req: HttpRequest,
    payload: web::Payload,
    router: web::Data<axum::Router>,
) -> HttpResponse {
    let request = match translate_request(&req, payload) {
        Ok(r) => r,
        Err(status) => return HttpResponse::new(status),
    };
    let response = match router.get_ref().clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    translate_response(response).await
}

fn translate_request(req: &HttpRequest, payload: web::Payload) -> Result<Request<Body>, AStatus> {
    let method = Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| AStatus::METHOD_NOT_ALLOWED)?;
    let uri: http::Uri = req
        .uri()
        .to_string()
        .parse()
        .map_err(|_| AStatus::BAD_REQUEST)?;
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .version(match req.version() {
            actix_web::http::Version::HTTP_10 => Version::HTTP_10,
            actix_web::http::Version::HTTP_2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        });
    if let Some(headers) = builder.headers_mut() {
        headers.reserve(req.headers().len());
        for (name, value) in req.headers() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let body = if has_body(req) {
        body_of(payload)
    } else {
        Body::empty()
    };
    let mut request = builder.body(body).map_err(|_| AStatus::BAD_REQUEST)?;
    if let Some(peer) = req.peer_addr() {
        request.extensions_mut().insert(PeerAddr(peer));
    }
    Ok(request)
}

/// Whether the request carries a body (a length above zero, or a chunked one).
fn has_body(req: &HttpRequest) -> bool {
    let h = req.headers();
    h.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || h.get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The actix payload as an axum body: a local task pumps it into a channel. When the route
/// stops reading (it refused the request early), the channel closes and the pump stops.
fn body_of(mut payload: web::Payload) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_CHANNEL);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

async fn translate_response(response: axum::response::Response) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let status = AStatus::from_u16(parts.status.as_u16()).unwrap_or(AStatus::INTERNAL_SERVER_ERROR);
    let mut out = HttpResponse::build(status);
    for (name, value) in &parts.headers {
        if name == http::header::CONNECTION {
            // actix writes the connection header itself from the connection type.
            if value.as_bytes().eq_ignore_ascii_case(b"close") {
                out.force_close();
            }
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            AHeaderName::from_bytes(name.as_str().as_bytes()),
            AHeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append_header((n, v));
        }
    }
    if body.size_hint().exact().is_some() {
        // A whole body (every JSON answer): no stream machinery.
        match body.collect().await {
            Ok(collected) => out.body(collected.to_bytes()),
            Err(_) => HttpResponse::InternalServerError().finish(),
        }
    } else {
        // An event stream: frames are written as they come; a failed write ends it.
        out.streaming(body.into_data_stream())
    }
}
