//! Live events over SSE: `stream: true` and `GET /api/tasks/:id/events`.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Parse a complete SSE body (comments such as `: ping` are skipped).
pub(crate) fn parse_sse(text: &str) -> Vec<Sse> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
        let mut any = false;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
                any = true;
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
                any = true;
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
                any = true;
            }
        }
        if any {
            out.push(Sse {
                id,
                event,
                data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
            });
        }
    }
    out
}

pub(crate) async fn read_stream(resp: reqwest::Response) -> Vec<Sse> {
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    let body = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("the stream ends")
        .expect("body");
    parse_sse(&body)
}

pub(crate) fn kinds(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[tokio::test]
async fn stream_true_sends_text_deltas_before_the_result_and_ends() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/claude"))
        .json(
            &json!({"prompt": "[[fake:chunks=5]] [[fake:chunk_ms=30]] stream me", "stream": true}),
        )
        .send()
        .await
        .expect("send");
    let events = read_stream(resp).await;
    let k = kinds(&events);
    assert_eq!(k.first(), Some(&"init"), "{k:?}");
    assert_eq!(k.last(), Some(&"result"), "{k:?}");
    let texts: Vec<&Sse> = events.iter().filter(|e| e.event == "text").collect();
    assert!(texts.len() >= 2, "several deltas: {k:?}");
    let joined: String = texts
        .iter()
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    let result = &events.last().expect("result").data;
    assert_eq!(result["result"], json!(joined), "{result}");
    assert_eq!(result["result"], "fake reply #1 to: stream me");
    assert!(result["task_id"].is_string() && result["session_id"].is_string());
    assert_eq!(events[0].data["task_id"], result["task_id"]);
    // Ids count up from 1.
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
    app.shutdown().await;
}

#[tokio::test]
async fn several_listeners_and_a_replay_from_last_event_id() {
    let app = spawn_app().await;
    let (_, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:chunks=4]] [[fake:chunk_ms=80]] [[fake:latency_ms=200]] shared", "async": true}))
            .await,
    )
    .await;
    let id = b["task_id"].as_str().expect("id").to_string();
    let url = app.url(&format!("/api/tasks/{id}/events"));
    let (a, b2) = tokio::join!(app.client.get(&url).send(), app.client.get(&url).send());
    let (a, b2) = tokio::join!(read_stream(a.expect("a")), read_stream(b2.expect("b")));
    assert_eq!(a, b2, "every listener sees the same events");
    assert_eq!(kinds(&a).last(), Some(&"result"));
    assert!(kinds(&a).contains(&"text"));
    let resp = app
        .client
        .get(&url)
        .header("Last-Event-ID", "two")
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 400, "validation_error");
    // Reconnect after event 2: only what followed.
    let resp = app
        .client
        .get(&url)
        .header("Last-Event-ID", "2")
        .send()
        .await
        .expect("send");
    let rest = read_stream(resp).await;
    assert_eq!(rest, a[2..].to_vec());
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_run_ends_with_an_error_event_and_old_tasks_replay_from_storage() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/claude"))
        .json(&json!({"prompt": "[[fake:api_error=529]] x", "stream": true}))
        .send()
        .await
        .expect("send");
    let events = read_stream(resp).await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "cli_api_error");
    let id = last.data["task_id"].as_str().expect("task id").to_string();
    // After a restart the live log is gone: init and the final event come from the record.
    let dir = app.shutdown().await;
    let app = spawn_app_in(dir, json!({})).await;
    let resp = app
        .client
        .get(app.url(&format!("/api/tasks/{id}/events")))
        .send()
        .await
        .expect("send");
    let events = read_stream(resp).await;
    assert_eq!(kinds(&events), vec!["init", "error"]);
    assert_eq!(events[1].data["code"], "cli_api_error");
    let (s, b) = json_body(
        app.get(&format!("/api/tasks/{}/events", uuid::Uuid::new_v4()))
            .await,
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_turn_can_stream_and_tool_events_are_relayed() {
    let app = spawn_app().await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "first"})).await).await;
    let sid = b["session_id"].as_str().expect("sid").to_string();
    let resp = app
        .client
        .post(app.url(&format!("/api/sessions/{sid}/continue")))
        .json(&json!({"prompt": "[[fake:tool=Bash]] use a tool", "stream": true}))
        .send()
        .await
        .expect("send");
    let events = read_stream(resp).await;
    let k = kinds(&events);
    let tool_use = k
        .iter()
        .position(|e| *e == "tool_use")
        .expect("tool_use event");
    let tool_result = k
        .iter()
        .position(|e| *e == "tool_result")
        .expect("tool_result event");
    assert!(tool_use < tool_result && tool_result < k.len() - 1, "{k:?}");
    assert_eq!(events[tool_use].data["name"], "Bash");
    assert_eq!(events.last().expect("last").data["session_id"], json!(sid));
    app.shutdown().await;
}

#[tokio::test]
async fn a_streaming_client_that_leaves_cancels_its_run() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/claude"))
        .json(&json!({"prompt": "[[fake:hang]] x", "stream": true}))
        .send()
        .await
        .expect("send");
    let mut body = resp.bytes_stream();
    // Read until the run has started (its init event), then hang up.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("an event");
    assert!(first.is_some());
    let starts = app.wait_for_starts(1).await;
    drop(body);
    let pgid = starts[0]["pgid"].as_i64().expect("pgid");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)).await,
        "the run outlived its streaming client"
    );
    app.shutdown().await;
}
