//! The OpenAI-compatible API over raw HTTP: the exact chunk format of a stream, the shape of a
//! completion, sessions by `X-Session-Id`, folded history, and OpenAI-shaped errors from every
//! layer.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const COMPLETIONS: &str = "/v1/chat/completions";

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

async fn chat(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json(COMPLETIONS, &body).await
}

fn session_header(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Session-Id header: {:?}", resp.headers()))
        .to_string()
}

/// Assert OpenAI's error shape (`{"error":{"message","type","param","code"}}` and nothing else).
fn assert_openai_error(
    status: u16,
    body: &Value,
    want_status: u16,
    want_type: &str,
    want_code: &str,
) {
    assert_eq!(status, want_status, "status; body: {body}");
    let obj = body.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "only `error`: {body}");
    let err = body["error"].as_object().expect("error object");
    let mut keys: Vec<&str> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"]["type"], want_type, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
}

/// The `data:` payloads of an SSE body, in order (`: ping` comments skipped). Every event must
/// be a single `data: ` line followed by a blank line.
fn data_lines(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split_terminator("\n\n")
        .filter(|block| !block.starts_with(':'))
        .map(|block| {
            assert!(!block.contains('\n'), "one line per event: {block:?}");
            block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {block:?}"))
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_stream_is_openai_chunks_byte_for_byte_then_done() {
    let app = spawn_app().await;
    let resp = chat(
        &app,
        json!({"model": "claude-sonnet-4-5", "stream": true, "stream_options": {"include_usage": true},
               "messages": [user("[[fake:chunks=4]] [[fake:chunk_ms=20]] stream me")]}),
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
    let lines = data_lines(&body);
    assert!(
        lines.len() >= 6,
        "role, texts, finish, usage, done: {lines:?}"
    );

    // The fixed parts come from the first chunk; everything is then compared exactly.
    let first: Value = serde_json::from_str(&lines[0]).expect("json chunk");
    let id = first["id"].as_str().expect("id").to_string();
    let created = first["created"].as_i64().expect("created");
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert!((chrono::Utc::now().timestamp() - created).abs() < 60);
    assert_eq!(first["session_id"], json!(sid));
    let head = format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"claude-sonnet-4-5","choices":"#
    );
    let tail = format!(r#","usage":null,"session_id":"{sid}"}}"#);
    let delta = |delta: &str, finish: &str| {
        format!(
            r#"{head}[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]{tail}"#
        )
    };
    let n = lines.len();
    assert_eq!(
        lines[0],
        delta(r#"{"role":"assistant","content":""}"#, "null")
    );
    let mut text = String::new();
    for line in &lines[1..n - 3] {
        let chunk: Value = serde_json::from_str(line).expect("json chunk");
        let piece = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("a text chunk: {line}"));
        let content = serde_json::to_string(piece).expect("json string");
        assert_eq!(*line, delta(&format!(r#"{{"content":{content}}}"#), "null"));
        text.push_str(piece);
    }
    assert!(n - 4 >= 2, "the text came in several chunks: {lines:?}");
    assert_eq!(text, "fake reply #1 to: stream me");
    assert_eq!(lines[n - 3], delta("{}", r#""stop""#));

    // Usage: the task's own figures, prompt = input + cache read + cache creation.
    let task_id = id.trim_start_matches("chatcmpl-");
    let task = app
        .wait_for_task(task_id, |t| t["status"] == "completed")
        .await;
    let u = &task["usage"];
    let prompt = u["input_tokens"].as_u64().expect("input")
        + u["cache_read_input_tokens"].as_u64().unwrap_or(0)
        + u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    let completion = u["output_tokens"].as_u64().expect("output");
    assert!(prompt > 0 && completion > 0, "{task}");
    assert_eq!(
        lines[n - 2],
        format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","created":{created},"model":"claude-sonnet-4-5","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}},"session_id":"{sid}"}}"#,
            prompt + completion
        )
    );
    assert_eq!(lines[n - 1], "[DONE]");
    assert_eq!(task["session_id"], json!(sid));
    app.shutdown().await;
}

#[tokio::test]
async fn without_include_usage_chunks_carry_no_usage() {
    let app = spawn_app().await;
    let resp = chat(&app, json!({"stream": true, "messages": [user("plain")]})).await;
    let body = resp.text().await.expect("body");
    let lines = data_lines(&body);
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{lines:?}");
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    // No model named: the default model is echoed.
    assert!(chunks.iter().all(|c| c["model"] == "claude-sonnet-4-5"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_completion_has_openai_shape_and_the_system_prompt_is_appended() {
    let app = spawn_app().await;
    let resp = chat(
        &app,
        json!({"model": "claude-sonnet-4-5", "user": "u-42", "temperature": 0.3, "max_tokens": 50,
               "top_p": 0.9, "stop": ["\n\n"], "n": 1,
               "messages": [{"role": "system", "content": "Be brief."},
                            {"role": "developer", "content": [{"type": "text", "text": "Speak English."}]},
                            user("hello")]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let raw = resp.text().await.expect("body");
    // Keys in OpenAI's order.
    let order = [
        r#""id":"chatcmpl-"#,
        r#""object":"chat.completion""#,
        r#""created":"#,
        r#""model":"claude-sonnet-4-5""#,
        r#""choices":[{"index":0,"message":{"role":"assistant","content":"fake reply #1 to: hello"},"logprobs":null,"finish_reason":"stop"}]"#,
        r#""usage":{"prompt_tokens":"#,
        r#""session_id":"#,
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| raw.find(k).unwrap_or_else(|| panic!("{k} in {raw}")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{raw}");
    let body: Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(body["session_id"], json!(sid));
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().expect("prompt")
                + usage["completion_tokens"].as_u64().expect("completion")
        )
    );
    // The run is a task like any other: metadata.user, the session, the system prompt flag.
    let task_id = body["id"]
        .as_str()
        .expect("id")
        .trim_start_matches("chatcmpl-")
        .to_string();
    let (_, t) = json_body(app.get(&format!("/api/tasks/{task_id}")).await).await;
    assert_eq!(t["task"]["metadata"]["user"], "u-42", "{t}");
    assert_eq!(t["task"]["session_id"], json!(sid));
    let calls = app.calls();
    assert_eq!(calls.len(), 1);
    let argv: Vec<&str> = calls[0]["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        argv.contains(&"--append-system-prompt=Be brief.\n\nSpeak English."),
        "{argv:?}"
    );
    assert_eq!(calls[0]["stdin"], "hello");
    app.shutdown().await;
}

#[tokio::test]
async fn two_turns_by_session_id_send_only_the_last_message() {
    let app = spawn_app().await;
    let resp = chat(
        &app,
        json!({"model": "claude-sonnet-4-5", "messages": [user("first")]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let (_, b) = json_body(resp).await;
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "fake reply #1 to: first"
    );

    // The history in `messages` is ignored: the session has it.
    let history = json!([user("first"), {"role": "assistant", "content": "fake reply #1 to: first"}, user("second")]);
    let resp = app
        .client
        .post(app.url(COMPLETIONS))
        .header("X-Session-Id", &sid)
        .json(&json!({"model": "claude-sonnet-4-5", "messages": history}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(session_header(&resp), sid);
    let (_, b) = json_body(resp).await;
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "fake reply #2 to: second"
    );
    assert_eq!(b["session_id"], json!(sid));

    // The `session_id` field works the same.
    let (s, b) = json_body(
        chat(
            &app,
            json!({"session_id": sid, "messages": [user("third")]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "fake reply #3 to: third"
    );

    let calls = app.calls();
    let stdins: Vec<&str> = calls.iter().filter_map(|c| c["stdin"].as_str()).collect();
    assert_eq!(stdins, ["first", "second", "third"]);
    assert!(
        calls[1]["argv"]
            .as_array()
            .expect("argv")
            .contains(&json!(format!("--resume={sid}"))),
        "{}",
        calls[1]["argv"]
    );
    let (_, s) = json_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(s["session"]["messages_count"], 3, "{s}");

    // An unknown session is 404; header and field must agree.
    let (s, b) = json_body(
        chat(
            &app,
            json!({"session_id": uuid::Uuid::new_v4(), "messages": [user("x")]}),
        )
        .await,
    )
    .await;
    assert_openai_error(s, &b, 404, "invalid_request_error", "not_found");
    let resp = app
        .client
        .post(app.url(COMPLETIONS))
        .header("X-Session-Id", &sid)
        .json(&json!({"session_id": uuid::Uuid::new_v4(), "messages": [user("x")]}))
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_openai_error(s, &b, 400, "invalid_request_error", "validation_error");
    assert_eq!(b["error"]["param"], "session_id");
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_session_the_history_is_folded_into_a_new_session() {
    let app = spawn_app().await;
    let resp = chat(
        &app,
        json!({"messages": [
            {"role": "system", "content": "sys"},
            user("What is 2+2?"),
            {"role": "assistant", "content": "4"},
            user("And times 3?")]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let (_, b) = json_body(resp).await;
    let folded = "<conversation_history>\n<user>\nWhat is 2+2?\n</user>\n<assistant>\n4\n</assistant>\n</conversation_history>\n\nAnd times 3?";
    let calls = app.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["stdin"], folded);
    assert!(calls[0]["argv"]
        .as_array()
        .expect("argv")
        .contains(&json!(format!("--session-id={sid}"))));
    assert_eq!(
        b["choices"][0]["message"]["content"],
        json!(format!("fake reply #1 to: {folded}"))
    );
    // The new session continues like any other.
    let resp = app
        .client
        .post(app.url(COMPLETIONS))
        .header("X-Session-Id", &sid)
        .json(&json!({"messages": [user("next")]}))
        .send()
        .await
        .expect("send");
    let (_, b) = json_body(resp).await;
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "fake reply #2 to: next"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_openai_shaped_400s() {
    let app = spawn_app().await;
    let image = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    let (s, b) = json_body(chat(&app, image).await).await;
    assert_openai_error(s, &b, 400, "invalid_request_error", "validation_error");
    assert_eq!(b["error"]["param"], "messages[0].content[1]");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("image")),
        "{b}"
    );

    let resp = app
        .client
        .post(app.url(COMPLETIONS))
        .header("content-type", "application/json")
        .body(r#"{"model": "x", "messages": [}"#)
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_openai_error(s, &b, 400, "invalid_request_error", "invalid_json");
    assert_eq!(b["error"]["param"], Value::Null);

    for (body, param) in [
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": [user("a")], "n": 2}), "n"),
        (json!({"messages": [user("a")], "stream": "yes"}), "stream"),
        (
            json!({"messages": [user("a"), {"role": "assistant", "content": "b"}]}),
            "messages",
        ),
        (
            json!({"messages": [user("a")], "tools": [{"type": "function"}]}),
            "tools",
        ),
        (json!({"model": "", "messages": [user("a")]}), "model"),
    ] {
        let (s, b) = json_body(chat(&app, body.clone()).await).await;
        assert_openai_error(s, &b, 400, "invalid_request_error", "validation_error");
        assert_eq!(b["error"]["param"], param, "{body} → {b}");
    }
    let (s, b) = json_body(chat(&app, json!({"model": "m"})).await).await;
    assert_openai_error(s, &b, 400, "invalid_request_error", "validation_error");
    assert_eq!(b["error"]["param"], "messages");
    assert!(app.calls().is_empty(), "nothing ran");
    app.shutdown().await;
}

#[tokio::test]
async fn models_are_listed_and_unknown_ones_are_404() {
    let app = spawn_app_with(json!({"defaultModel": "claude-sonnet-4-5",
                                    "allowedModels": ["claude-opus-4-1", "claude-sonnet-4-5"]}))
    .await;
    let (s, b) = json_body(app.get("/v1/models").await).await;
    assert_eq!(s, 200);
    assert_eq!(b["object"], "list");
    let data = b["data"].as_array().expect("data");
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["claude-sonnet-4-5", "claude-opus-4-1"]);
    for m in data {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "anthropic");
        assert!(m["created"].as_i64().is_some_and(|c| c > 0), "{m}");
    }
    let (s, m) = json_body(app.get("/v1/models/claude-opus-4-1").await).await;
    assert_eq!(s, 200);
    assert_eq!(m, data[1]);
    let (s, b) = json_body(app.get("/v1/models/gpt-4o").await).await;
    assert_openai_error(s, &b, 404, "invalid_request_error", "not_found");
    // A model the server does not allow cannot be run either.
    let (s, b) =
        json_body(chat(&app, json!({"model": "gpt-4o", "messages": [user("a")]})).await).await;
    assert_openai_error(s, &b, 403, "permission_error", "forbidden");
    assert_eq!(b["error"]["param"], "model");
    // Unknown /v1 routes and wrong methods are OpenAI-shaped; /api keeps its own shape.
    let (s, b) = json_body(app.get("/v1/embeddings").await).await;
    assert_openai_error(s, &b, 404, "invalid_request_error", "route_not_found");
    let (s, b) = json_body(app.get(COMPLETIONS).await).await;
    assert_openai_error(s, &b, 405, "invalid_request_error", "method_not_allowed");
    let (s, b) = json_body(app.get("/api/nope").await).await;
    assert_error(s, &b, 404, "route_not_found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_cli_failure_is_a_502_and_mid_stream_an_error_line_then_done() {
    let app = spawn_app().await;
    let resp = chat(
        &app,
        json!({"messages": [user("[[fake:api_error=500]] x")]}),
    )
    .await;
    let sid = session_header(&resp);
    let (s, b) = json_body(resp).await;
    assert_openai_error(s, &b, 502, "server_error", "cli_api_error");
    assert!(uuid::Uuid::parse_str(&sid).is_ok());

    let resp = chat(
        &app,
        json!({"stream": true, "messages": [user("[[fake:api_error=529]] x")]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200, "the stream had begun");
    let body = resp.text().await.expect("body");
    let lines = data_lines(&body);
    let n = lines.len();
    assert_eq!(lines[n - 1], "[DONE]", "{lines:?}");
    let err: Value = serde_json::from_str(&lines[n - 2]).expect("json");
    assert_openai_error(502, &err, 502, "server_error", "cli_api_error");
    let first: Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    app.shutdown().await;
}

#[tokio::test]
async fn a_timeout_is_a_504() {
    let app = spawn_app_with(json!({"taskQueue": {"defaultTimeout": 300}})).await;
    let (s, b) = json_body(chat(&app, json!({"messages": [user("[[fake:hang]] x")]})).await).await;
    assert_openai_error(s, &b, 504, "server_error", "timeout");
    app.shutdown().await;
}

#[tokio::test]
async fn a_streaming_client_that_leaves_cancels_its_run() {
    let app = spawn_app().await;
    let resp = chat(
        &app,
        json!({"stream": true, "messages": [user("[[fake:hang]] x")]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let chunk = first_data(&mut body).await;
    let task_id = chunk["id"]
        .as_str()
        .expect("id")
        .trim_start_matches("chatcmpl-")
        .to_string();
    hang_up_and_check_the_run_is_cancelled(&app, body, &task_id).await;
    app.shutdown().await;
}

#[tokio::test]
async fn auth_and_rate_limits_answer_in_openai_shape() {
    const KEY: &str = "sk-test-0123456789";
    let app = spawn_app_with(json!({
        "auth": {"apiKeys": [{"name": "a", "key": KEY}]},
        "rateLimit": {"enabled": true, "windowMs": 60000, "maxRequests": 2},
    }))
    .await;
    let resp = app.get("/v1/models").await;
    assert!(resp.headers().contains_key("www-authenticate"));
    let (s, b) = json_body(resp).await;
    assert_openai_error(s, &b, 401, "authentication_error", "unauthorized");
    let resp = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("sk-wrong")
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_openai_error(s, &b, 401, "authentication_error", "unauthorized");
    // The SDKs send `Authorization: Bearer <key>`.
    let get = || {
        app.client
            .get(app.url("/v1/models"))
            .bearer_auth(KEY)
            .send()
    };
    assert_eq!(get().await.expect("send").status().as_u16(), 200);
    assert_eq!(get().await.expect("send").status().as_u16(), 200);
    let resp = get().await.expect("send");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers().contains_key("ratelimit-limit"));
    let (s, b) = json_body(resp).await;
    assert_openai_error(s, &b, 429, "rate_limit_error", "rate_limited");
    app.shutdown().await;

    // No keys configured: authentication is off, any bearer token is accepted.
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url(COMPLETIONS))
        .bearer_auth("sk-anything")
        .json(&json!({"messages": [user("hi")]}))
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_eq!(s, 200, "{b}");
    app.shutdown().await;
}
