//! Anthropic's Messages API over raw HTTP: the exact events of a stream, the shape of a
//! message, sessions by `X-Session-Id`, folded history, a run cut short by the CLI's own
//! limits, `GET /v1/models` in Anthropic's shape, and Anthropic-shaped errors from every layer.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const MESSAGES: &str = "/v1/messages";
const VERSION: &str = "2023-06-01";

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// A Messages request as the Anthropic SDK sends it (`x-api-key`, `anthropic-version`).
async fn post(app: &TestApp, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(MESSAGES))
        .header("anthropic-version", VERSION)
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send")
}

fn session_header(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Session-Id header: {:?}", resp.headers()))
        .to_string()
}

/// The task behind a message id (`msg_<task id without dashes>`).
fn task_of(message_id: &str) -> String {
    let simple = message_id
        .strip_prefix("msg_")
        .unwrap_or_else(|| panic!("a message id: {message_id}"));
    uuid::Uuid::parse_str(simple).expect("a uuid").to_string()
}

/// Assert Anthropic's error shape: `{"type":"error","error":{"type","message","details"},"request_id"}`.
fn assert_anthropic_error(
    status: u16,
    body: &Value,
    want_status: u16,
    want_type: &str,
    want_code: &str,
) {
    assert_eq!(status, want_status, "status; body: {body}");
    assert_eq!(body["type"], "error", "{body}");
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "request_id", "type"], "{body}");
    assert_eq!(body["error"]["type"], want_type, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        body["error"]["details"],
        json!({"error_code": want_code}),
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_is_anthropic_events_in_order_and_adds_up() {
    let app = spawn_app().await;
    let resp = post(
        &app,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
               "messages": [user("[[fake:chunks=4]] [[fake:chunk_ms=20]] stream me")]}),
        &[],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let sid = session_header(&resp);
    let body = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("the stream ends")
        .expect("body");
    let events = sse_events(&body);
    for (name, data) in &events {
        assert_eq!(
            data["type"],
            json!(name),
            "the data's type is the event's name"
        );
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let n = names.len();
    assert_eq!(
        names[..3],
        ["message_start", "ping", "content_block_start"],
        "{names:?}"
    );
    assert_eq!(
        names[n - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{names:?}"
    );
    assert!(
        names[3..n - 3].iter().all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    assert!(n - 6 >= 2, "the text came in several deltas: {names:?}");

    let start = &events[0].1["message"];
    let id = start["id"].as_str().expect("id");
    assert_eq!(
        *start,
        json!({"id": id, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [], "stop_reason": null, "stop_sequence": null,
               "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0, "output_tokens": 0}})
    );
    assert_eq!(events[1].1, json!({"type": "ping"}));
    assert_eq!(
        events[2].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let mut text = String::new();
    for (_, delta) in &events[3..n - 3] {
        assert_eq!(delta["index"], 0);
        assert_eq!(delta["delta"]["type"], "text_delta");
        text.push_str(delta["delta"]["text"].as_str().expect("text"));
    }
    assert_eq!(text, "fake reply #1 to: stream me");
    assert_eq!(
        events[n - 3].1,
        json!({"type": "content_block_stop", "index": 0})
    );

    // The usage is the task's own; the task and the session are the message's.
    let task = app
        .wait_for_task(&task_of(id), |t| t["status"] == "completed")
        .await;
    assert_eq!(task["session_id"], json!(sid));
    let u = &task["usage"];
    assert_eq!(
        events[n - 2].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"input_tokens": u["input_tokens"], "cache_creation_input_tokens": u["cache_creation_input_tokens"],
                         "cache_read_input_tokens": u["cache_read_input_tokens"], "output_tokens": u["output_tokens"]}})
    );
    assert!(u["output_tokens"].as_u64().is_some_and(|t| t > 0), "{task}");
    app.shutdown().await;
}

#[tokio::test]
async fn text_around_a_tool_call_comes_in_two_blocks() {
    let app = spawn_app().await;
    let resp = post(
        &app,
        json!({"max_tokens": 64, "stream": true, "messages": [user("[[fake:tool=Bash]] go")]}),
        &[],
    )
    .await;
    let events = sse_events(&resp.text().await.expect("body"));
    // (block index, its text) per block event, deltas of a block joined.
    let mut blocks: Vec<(String, u64, String)> = Vec::new();
    for (name, data) in events
        .iter()
        .filter(|(n, _)| n.starts_with("content_block"))
    {
        let index = data["index"].as_u64().expect("index");
        let text = data["delta"]["text"].as_str().unwrap_or("");
        match blocks.last_mut() {
            Some((last, i, t)) if last == name && *i == index => t.push_str(text),
            _ => blocks.push((name.clone(), index, text.to_string())),
        }
    }
    let delta = |i: u64, t: &str| ("content_block_delta".to_string(), i, t.to_string());
    let edge = |name: &str, i: u64| (name.to_string(), i, String::new());
    assert_eq!(
        blocks,
        [
            edge("content_block_start", 0),
            delta(0, "I'll run a command."),
            edge("content_block_stop", 0),
            edge("content_block_start", 1),
            delta(1, "fake reply #1 to: go"),
            edge("content_block_stop", 1),
        ],
        "{events:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_message_has_anthropic_shape_and_the_system_prompt_is_appended() {
    let app = spawn_app().await;
    let resp = post(
        &app,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "temperature": 0.3, "top_k": 5,
               "stop_sequences": ["\n\n"], "metadata": {"user_id": "u-42"},
               "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Speak English."}],
               "messages": [user("hello")]}),
        &[],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let raw = resp.text().await.expect("body");
    let body: Value = serde_json::from_str(&raw).expect("json");
    let id = body["id"].as_str().expect("id");
    let task_id = task_of(id);
    let (_, t) = json_body(app.get(&format!("/api/tasks/{task_id}")).await).await;
    let u = &t["task"]["usage"];
    // Byte for byte, in Anthropic's order.
    assert_eq!(
        raw,
        format!(
            r#"{{"id":"{id}","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{{"type":"text","text":"fake reply #1 to: hello"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":{},"cache_creation_input_tokens":{},"cache_read_input_tokens":{},"output_tokens":{}}}}}"#,
            u["input_tokens"],
            u["cache_creation_input_tokens"],
            u["cache_read_input_tokens"],
            u["output_tokens"]
        )
    );
    // A task like any other: the metadata, the session, the system prompt flag.
    assert_eq!(t["task"]["metadata"], json!({"user_id": "u-42"}), "{t}");
    assert_eq!(t["task"]["session_id"], json!(sid));
    let calls = app.calls();
    assert_eq!(calls.len(), 1);
    assert!(
        argv(&calls[0]).contains(&"--append-system-prompt=Be brief.\nSpeak English.".to_string()),
        "{:?}",
        argv(&calls[0])
    );
    assert_eq!(calls[0]["stdin"], "hello");
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_continues_by_header_and_history_is_folded_without_one() {
    let app = spawn_app().await;
    let history = json!([user("What is 2+2?"), {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
                         user("And times 3?")]);
    let resp = post(
        &app,
        json!({"max_tokens": 64, "system": "sys", "messages": history}),
        &[],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let (_, b) = json_body(resp).await;
    let folded = "<conversation_history>\n<user>\nWhat is 2+2?\n</user>\n<assistant>\n4\n</assistant>\n</conversation_history>\n\nAnd times 3?";
    assert_eq!(
        b["content"][0]["text"],
        json!(format!("fake reply #1 to: {folded}"))
    );

    // Continued: only the last message is sent; the session has the rest.
    let resp = post(
        &app,
        json!({"max_tokens": 64, "messages": [user("What is 2+2?"), {"role": "assistant", "content": "4"}, user("next")]}),
        &[("X-Session-Id", &sid)],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(session_header(&resp), sid);
    let (_, b) = json_body(resp).await;
    assert_eq!(b["content"][0]["text"], "fake reply #2 to: next");
    let calls = app.calls();
    let stdins: Vec<&str> = calls.iter().filter_map(|c| c["stdin"].as_str()).collect();
    assert_eq!(stdins, [folded, "next"]);
    assert!(
        argv(&calls[1]).contains(&format!("--resume={sid}")),
        "{:?}",
        argv(&calls[1])
    );

    // An unknown session is 404 in Anthropic's shape.
    let other = uuid::Uuid::new_v4().to_string();
    let (s, b) = json_body(
        post(
            &app,
            json!({"max_tokens": 1, "messages": [user("x")]}),
            &[("X-Session-Id", &other)],
        )
        .await,
    )
    .await;
    assert_anthropic_error(s, &b, 404, "not_found_error", "not_found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_run_the_cli_stops_at_its_budget_is_a_truncated_message() {
    // One model call costs more than this: the CLI stops after the first (its tool call).
    let app = spawn_app_with(json!({"maxBudgetUsd": 0.0001})).await;
    let (s, b) = json_body(
        post(
            &app,
            json!({"max_tokens": 64, "messages": [user("[[fake:tool=Bash]] go")]}),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stop_reason"], "max_tokens", "{b}");
    assert_eq!(
        b["content"],
        json!([{"type": "text", "text": "I'll run a command."}]),
        "{b}"
    );
    let task = app
        .wait_for_task(&task_of(b["id"].as_str().expect("id")), |t| {
            t["status"] == "failed"
        })
        .await;
    assert_eq!(task["error"]["code"], "budget_exceeded", "{task}");
    assert_eq!(
        b["usage"]["output_tokens"], task["usage"]["output_tokens"],
        "{b} {task}"
    );

    let resp = post(
        &app,
        json!({"max_tokens": 64, "stream": true, "messages": [user("[[fake:tool=Bash]] go")]}),
        &[],
    )
    .await;
    let events = sse_events(&resp.text().await.expect("body"));
    let mut names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    names.dedup();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "I'll run a command.");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens", "{delta}");
    // The usage is the record's (the CLI reports none on a budget stop, as the real one does).
    let id = events[0].1["message"]["id"].as_str().expect("id");
    let task = app
        .wait_for_task(&task_of(id), |t| t["status"] == "failed")
        .await;
    assert_eq!(
        delta["usage"]["output_tokens"], task["usage"]["output_tokens"],
        "{delta} {task}"
    );
    assert_eq!(
        delta["usage"]["input_tokens"], task["usage"]["input_tokens"],
        "{delta} {task}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn errors_from_every_layer_are_anthropic_shaped() {
    const KEY: &str = "sk-ant-test-0123456789";
    let app = spawn_app_with(json!({
        "auth": {"apiKeys": [{"name": "a", "key": KEY}]},
        "defaultModel": "claude-sonnet-4-5",
        "allowedModels": ["claude-opus-4-1"],
    }))
    .await;
    let key = [("x-api-key", KEY)];
    let ok = json!({"max_tokens": 8, "messages": [user("hi")]});

    let resp = post(&app, ok.clone(), &[]).await;
    assert!(resp.headers().contains_key("www-authenticate"));
    let (s, b) = json_body(resp).await;
    assert_anthropic_error(s, &b, 401, "authentication_error", "unauthorized");
    let (s, b) = json_body(post(&app, ok.clone(), &[("x-api-key", "sk-wrong")]).await).await;
    assert_anthropic_error(s, &b, 401, "authentication_error", "unauthorized");
    // The request id of the answer is the one in the body.
    let resp = post(
        &app,
        ok.clone(),
        &[("x-api-key", "sk-wrong"), ("x-request-id", "req-7")],
    )
    .await;
    let (_, b) = json_body(resp).await;
    assert_eq!(b["request_id"], "req-7");

    let image = json!({"max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]});
    let (s, b) = json_body(post(&app, image, &key).await).await;
    assert_anthropic_error(s, &b, 400, "invalid_request_error", "validation_error");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("messages[0].content[1]") && message.contains("image"),
        "{b}"
    );
    for (body, field) in [
        (json!({"max_tokens": 8, "messages": "hi"}), "messages"),
        (
            json!({"max_tokens": "8", "messages": [user("a")]}),
            "max_tokens",
        ),
        (
            json!({"max_tokens": 8, "stream": "yes", "messages": [user("a")]}),
            "stream",
        ),
        (
            json!({"max_tokens": 8, "messages": [user("a"), {"role": "assistant", "content": "b"}]}),
            "messages",
        ),
        (
            json!({"max_tokens": 8, "tools": [{"name": "t"}], "messages": [user("a")]}),
            "tools",
        ),
        (
            json!({"max_tokens": 8, "model": "", "messages": [user("a")]}),
            "model",
        ),
        (json!({"max_tokens": 8}), "messages"),
    ] {
        let (s, b) = json_body(post(&app, body.clone(), &key).await).await;
        assert_anthropic_error(s, &b, 400, "invalid_request_error", "validation_error");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{field}`")), "{body} → {b}");
    }
    let resp = app
        .client
        .post(app.url(MESSAGES))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(r#"{"max_tokens": 8, "messages": [}"#)
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_anthropic_error(s, &b, 400, "invalid_request_error", "invalid_json");
    // A model the server does not run is not found, as Anthropic answers it.
    let (s, b) = json_body(
        post(
            &app,
            json!({"model": "claude-x", "max_tokens": 8, "messages": [user("a")]}),
            &key,
        )
        .await,
    )
    .await;
    assert_anthropic_error(s, &b, 404, "not_found_error", "not_found");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("claude-x"),
        "{b}"
    );
    // Unknown routes and wrong methods under /v1/messages.
    let (s, b) = json_body(post_to(&app, "/v1/messages/count_tokens", &key).await).await;
    assert_anthropic_error(s, &b, 404, "not_found_error", "route_not_found");
    let resp = app
        .client
        .get(app.url(MESSAGES))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_anthropic_error(s, &b, 405, "invalid_request_error", "method_not_allowed");
    assert!(app.calls().is_empty(), "nothing ran");

    // The run's own failures: the model API overloaded (529) or failing.
    let (s, b) = json_body(
        post(
            &app,
            json!({"max_tokens": 8, "messages": [user("[[fake:api_error=529]] x")]}),
            &key,
        )
        .await,
    )
    .await;
    assert_anthropic_error(s, &b, 502, "overloaded_error", "cli_api_error");
    let resp = post(
        &app,
        json!({"max_tokens": 8, "messages": [user("[[fake:api_error=500]] x")]}),
        &key,
    )
    .await;
    assert!(
        uuid::Uuid::parse_str(&session_header(&resp)).is_ok(),
        "a failed run names its session"
    );
    let (s, b) = json_body(resp).await;
    assert_anthropic_error(s, &b, 502, "api_error", "cli_api_error");
    // After the stream began: an `error` event, and nothing after it.
    let resp = post(
        &app,
        json!({"max_tokens": 8, "stream": true, "messages": [user("[[fake:api_error=500]] x")]}),
        &key,
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200, "the stream had begun");
    let events = sse_events(&resp.text().await.expect("body"));
    let (name, err) = events.last().expect("events");
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(err["error"]["type"], "api_error", "{err}");
    assert_eq!(
        err["error"]["details"]["error_code"], "cli_api_error",
        "{err}"
    );
    assert_eq!(events[0].0, "message_start");
    app.shutdown().await;

    // A run over its time limit (a short one, on a daemon of its own so no other run hits it).
    let app = spawn_app_with(json!({"taskQueue": {"defaultTimeout": 300}})).await;
    let hang = json!({"max_tokens": 8, "messages": [user("[[fake:hang]] x")]});
    let (s, b) = json_body(post(&app, hang, &[]).await).await;
    assert_anthropic_error(s, &b, 504, "timeout_error", "timeout");
    app.shutdown().await;
}

async fn post_to(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.client.post(app.url(path)).json(&json!({}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send")
}

#[tokio::test]
async fn models_and_rate_limits_answer_in_anthropic_shape_with_its_header() {
    let app = spawn_app_with(json!({
        "defaultModel": "claude-sonnet-4-5",
        "allowedModels": ["claude-opus-4-1", "claude-sonnet-4-5"],
        "rateLimit": {"enabled": true, "windowMs": 60000, "maxRequests": 4},
    }))
    .await;
    let get = |path: &str| {
        app.client
            .get(app.url(path))
            .header("anthropic-version", VERSION)
            .send()
    };
    let (s, b) = json_body(get("/v1/models").await.expect("send")).await;
    assert_eq!(s, 200, "{b}");
    let created_at = b["data"][0]["created_at"]
        .as_str()
        .expect("created_at")
        .to_string();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&created_at).is_ok(),
        "{b}"
    );
    assert_eq!(
        b,
        json!({"data": [
            {"type": "model", "id": "claude-sonnet-4-5", "display_name": "claude-sonnet-4-5", "created_at": created_at},
            {"type": "model", "id": "claude-opus-4-1", "display_name": "claude-opus-4-1", "created_at": created_at}],
            "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-opus-4-1"})
    );
    let (s, m) = json_body(get("/v1/models/claude-opus-4-1").await.expect("send")).await;
    assert_eq!(s, 200);
    assert_eq!(m, b["data"][1]);
    let (s, e) = json_body(get("/v1/models/gpt-4o").await.expect("send")).await;
    assert_anthropic_error(s, &e, 404, "not_found_error", "not_found");
    // Without the header: OpenAI's shapes, unchanged.
    let (_, b) = json_body(app.get("/v1/models").await).await;
    assert_eq!(b["object"], "list", "{b}");
    // The fifth request in the window.
    let resp = get("/v1/models").await.expect("send");
    assert!(resp.headers().contains_key("retry-after"));
    let (s, b) = json_body(resp).await;
    assert_anthropic_error(s, &b, 429, "rate_limit_error", "rate_limited");
    app.shutdown().await;
}

#[tokio::test]
async fn a_streaming_client_that_leaves_cancels_its_run() {
    let app = spawn_app().await;
    let resp = post(
        &app,
        json!({"max_tokens": 8, "stream": true, "messages": [user("[[fake:hang]] x")]}),
        &[],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let start = first_data(&mut body).await;
    let task_id = task_of(start["message"]["id"].as_str().expect("id"));
    hang_up_and_check_the_run_is_cancelled(&app, body, &task_id).await;
    app.shutdown().await;
}

/// Messages and responses count like any run: the HTTP metrics by route, the statistics.
#[tokio::test]
async fn messages_and_responses_count_in_the_metrics_and_statistics() {
    let app = spawn_app().await;
    let (s, _) = json_body(
        post(
            &app,
            json!({"max_tokens": 8, "messages": [user("counted")]}),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = json_body(
        app.post_json("/v1/responses", &json!({"input": "counted too"}))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    for route in ["/v1/messages", "/v1/responses"] {
        let line =
            format!(r#"ccs_http_requests_total{{method="POST",route="{route}",status="200"}} 1"#);
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // The statistics count a run when its record is final: polled, within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, b) = json_body(app.get("/api/statistics/summary").await).await;
        if b["summary"]["requests"]["total"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both runs are in the statistics: {b}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown().await;
}
