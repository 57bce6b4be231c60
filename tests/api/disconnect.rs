//! A client that goes away takes its run with it, on every route that waits for a run, and the
//! connection handling around that: a client that half-closes its side after the request is
//! gone too (the server reads its EOF), and pipelined requests are answered in order.
//! Driven over raw sockets, so the moment of leaving is the test's.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn post(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Send `request`, wait until its run has started (the `n`th start), then leave as `leave`
/// says; the run's whole process group must be gone within the kill grace, and its task
/// `cancelled`.
async fn leaves(app: &TestApp, name: &str, request: Vec<u8>, n: usize, half_close: bool) {
    let addr = app.address.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(&request).await.expect("write");
    let starts = app.wait_for_starts(n).await;
    let start = &starts[n - 1];
    let pgid = start["pgid"].as_i64().expect("pgid");
    if half_close {
        // The request is whole; only the client's writing side closes.
        sock.shutdown().await.expect("shutdown(write)");
    } else {
        drop(sock);
    }
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)).await,
        "{name}: the run of a client that left is still alive"
    );
    let (_, page) = json_body(app.get("/api/tasks?status=cancelled&limit=100").await).await;
    let cancelled = page["tasks"].as_array().map_or(0, Vec::len);
    assert_eq!(cancelled, n, "{name}: {page}");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_run_on_every_waiting_route() {
    let app = spawn_app_with(json!({"taskQueue": {"killGraceMs": 500}})).await;
    let (_, s) = json_body(app.post_json("/api/sessions", &json!({})).await).await;
    let sid = s["session"]["id"].as_str().expect("session id").to_string();
    let hang = "[[fake:hang]] left";
    let routes = [
        ("sync run", post("/api/claude", &json!({"prompt": hang}))),
        (
            "streamed run",
            post("/api/claude", &json!({"prompt": hang, "stream": true})),
        ),
        (
            "batch",
            post("/api/claude/batch", &json!({"prompts": [hang]})),
        ),
        (
            "session turn",
            post(
                &format!("/api/sessions/{sid}/continue"),
                &json!({"prompt": hang}),
            ),
        ),
        (
            "/v1 completion",
            post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": hang}]}),
            ),
        ),
        (
            "/v1 streamed completion",
            post(
                "/v1/chat/completions",
                &json!({"stream": true, "messages": [{"role": "user", "content": hang}]}),
            ),
        ),
    ];
    for (i, (name, request)) in routes.into_iter().enumerate() {
        leaves(&app, name, request, i + 1, false).await;
    }
    app.shutdown().await;
}

/// A client that shuts down its writing side after a whole request is taken as gone: the
/// server reads its EOF and drops the request (`h1_allow_half_closed(false)`, as hyper did by
/// default), so the run is cancelled rather than left running for nobody.
#[tokio::test]
async fn a_half_closing_client_is_taken_as_gone() {
    let app = spawn_app().await;
    let request = post("/api/claude", &json!({"prompt": "[[fake:hang]] half"}));
    leaves(&app, "half-closed sync run", request, 1, true).await;
    app.shutdown().await;
}

/// Requests sent back to back on one connection, before any answer: each is answered, in
/// order, the run's answer first.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = spawn_app().await;
    let addr = app.address.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let mut all = post(
        "/api/claude",
        &json!({"prompt": "[[fake:latency_ms=200]] first"}),
    );
    all.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    all.extend_from_slice(&post("/api/claude", &json!({"prompt": "third"})));
    all.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    sock.write_all(&all).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut raw))
        .await
        .expect("all answers within 20 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "404"], "{text}");
    let first = text.find("first").expect("the first run's answer");
    let third = text.find("third").expect("the third request's answer");
    let health = text.find("\"uptime\"").expect("the health answer");
    assert!(first < health && health < third, "out of order: {text}");
    app.shutdown().await;
}
