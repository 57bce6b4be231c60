//! OpenAI's Responses API over raw HTTP: the events of a stream, the shape of a response,
//! `previous_response_id` (its session continued; an unknown or another key's id is 404), a run
//! cut short by the CLI's own limits, and OpenAI-shaped errors naming `input`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const RESPONSES: &str = "/v1/responses";

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json(RESPONSES, &body).await
}

/// The task behind a response id (`resp_<task id without dashes>`).
fn task_of(response_id: &str) -> String {
    let simple = response_id
        .strip_prefix("resp_")
        .unwrap_or_else(|| panic!("a response id: {response_id}"));
    uuid::Uuid::parse_str(simple).expect("a uuid").to_string()
}

fn session_header(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Session-Id header: {:?}", resp.headers()))
        .to_string()
}

fn assert_openai_error(status: u16, body: &Value, want_status: u16, want_code: &str, param: Value) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert!(
        body["error"]["type"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_is_response_events_in_order_and_adds_up() {
    let app = spawn_app().await;
    let resp = create(
        &app,
        json!({"model": "claude-sonnet-4-5", "stream": true, "instructions": "Be brief.",
               "input": "[[fake:chunks=4]] [[fake:chunk_ms=20]] stream me"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let body = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("the stream ends")
        .expect("body");
    let events = sse_events(&body);
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], json!(name), "{data}");
        assert_eq!(data["sequence_number"], json!(i), "{data}");
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let n = names.len();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[n - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert!(
        names[4..n - 4]
            .iter()
            .all(|e| *e == "response.output_text.delta"),
        "{names:?}"
    );
    assert!(n - 8 >= 2, "several deltas: {names:?}");

    let created = &events[0].1["response"];
    let id = created["id"].as_str().expect("id");
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["usage"], Value::Null);
    assert_eq!(created["instructions"], "Be brief.");
    let text: String = events[4..n - 4]
        .iter()
        .map(|(_, d)| d["delta"].as_str().expect("delta"))
        .collect();
    assert_eq!(text, "fake reply #1 to: stream me");
    assert_eq!(events[n - 4].1["text"], json!(text));
    let done = &events[n - 1].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], json!(text));
    assert_eq!(done["output"][0]["status"], "completed");
    let task = app
        .wait_for_task(&task_of(id), |t| t["status"] == "completed")
        .await;
    assert_eq!(task["session_id"], json!(sid));
    assert_eq!(
        done["usage"]["output_tokens"], task["usage"]["output_tokens"],
        "{done}"
    );
    assert!(
        done["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{done}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_response_has_openai_shape_and_continues_by_previous_response_id() {
    let app = spawn_app().await;
    let resp = create(
        &app,
        json!({"model": "claude-sonnet-4-5", "instructions": "Be brief.", "temperature": 0.2,
               "max_output_tokens": 64, "metadata": {"k": "v"}, "input": "first"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let sid = session_header(&resp);
    let (_, r) = json_body(resp).await;
    let id = r["id"].as_str().expect("id").to_string();
    let (_, t) = json_body(app.get(&format!("/api/tasks/{}", task_of(&id))).await).await;
    let u = &t["task"]["usage"];
    let input = u["input_tokens"].as_u64().unwrap_or(0)
        + u["cache_read_input_tokens"].as_u64().unwrap_or(0)
        + u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    let output = u["output_tokens"].as_u64().unwrap_or(0);
    let item = id.replace("resp_", "msg_");
    assert_eq!(
        r,
        json!({"id": id, "object": "response", "created_at": r["created_at"], "status": "completed",
               "error": null, "incomplete_details": null, "instructions": "Be brief.",
               "model": "claude-sonnet-4-5",
               "output": [{"type": "message", "id": item, "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": "fake reply #1 to: first", "annotations": []}]}],
               "parallel_tool_calls": false, "previous_response_id": null, "tool_choice": "none", "tools": [],
               "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": u["cache_read_input_tokens"]},
                         "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": input + output},
               "metadata": {"k": "v"}})
    );
    assert!((chrono::Utc::now().timestamp() - r["created_at"].as_i64().unwrap_or(0)).abs() < 60);
    assert_eq!(t["task"]["metadata"], json!({"k": "v"}));
    assert!(argv(&app.calls()[0]).contains(&"--append-system-prompt=Be brief.".to_string()));

    // The next turn of the same session: the model has seen the first.
    let resp = create(
        &app,
        json!({"previous_response_id": id, "input": [{"role": "user", "content": "second"}]}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(session_header(&resp), sid);
    let (_, r2) = json_body(resp).await;
    assert_eq!(
        r2["output"][0]["content"][0]["text"], "fake reply #2 to: second",
        "{r2}"
    );
    assert_eq!(r2["previous_response_id"], json!(id));
    let calls = app.calls();
    assert!(
        argv(&calls[1]).contains(&format!("--resume={sid}")),
        "{:?}",
        argv(&calls[1])
    );
    assert_eq!(calls[1]["stdin"], "second");

    // Unknown, malformed: 404 naming the field.
    for unknown in [
        format!("resp_{}", uuid::Uuid::new_v4().simple()),
        "resp_x".to_string(),
        sid.clone(),
    ] {
        let (s, b) =
            json_body(create(&app, json!({"previous_response_id": unknown, "input": "x"})).await)
                .await;
        assert_openai_error(s, &b, 404, "not_found", json!("previous_response_id"));
        assert_eq!(b["error"]["type"], "invalid_request_error");
    }
    assert_eq!(app.calls().len(), 2, "nothing more ran");
    app.shutdown().await;
}

#[tokio::test]
async fn another_keys_response_is_not_found() {
    let app = spawn_app_with(json!({"auth": {"apiKeys": [
        {"name": "a", "key": "sk-a-0123456789"}, {"name": "b", "key": "sk-b-0123456789"}]}}))
    .await;
    let post = |key: &'static str, body: Value| {
        app.client
            .post(app.url(RESPONSES))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let (s, r) = json_body(
        post("sk-a-0123456789", json!({"input": "mine"}))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let id = r["id"].as_str().expect("id");
    let (s, b) = json_body(
        post(
            "sk-b-0123456789",
            json!({"previous_response_id": id, "input": "theirs"}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_openai_error(s, &b, 404, "not_found", json!("previous_response_id"));
    let (s, _) = json_body(
        post(
            "sk-a-0123456789",
            json!({"previous_response_id": id, "input": "mine again"}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(s, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_run_the_cli_stops_at_its_budget_is_incomplete() {
    let app = spawn_app_with(json!({"maxBudgetUsd": 0.0001})).await;
    let (s, r) = json_body(create(&app, json!({"input": "[[fake:tool=Bash]] go"})).await).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "incomplete", "{r}");
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(r["output"][0]["status"], "incomplete");
    assert_eq!(r["output"][0]["content"][0]["text"], "I'll run a command.");

    let resp = create(
        &app,
        json!({"stream": true, "input": "[[fake:tool=Bash]] go"}),
    )
    .await;
    let events = sse_events(&resp.text().await.expect("body"));
    let (name, last) = events.last().expect("events");
    assert_eq!(name, "response.incomplete", "{events:?}");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        "I'll run a command."
    );
    app.shutdown().await;
}

#[tokio::test]
async fn errors_are_openai_shaped_and_name_input() {
    let app = spawn_app_with(json!({"limits": {"maxPromptBytes": 64}})).await;
    let image = json!({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]});
    let (s, b) = json_body(create(&app, image).await).await;
    assert_openai_error(s, &b, 400, "validation_error", json!("input[0].content[1]"));
    for (body, param) in [
        (json!({}), "input"),
        (json!({"input": 3}), "input"),
        (
            json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}),
            "input[0].type",
        ),
        (
            json!({"input": "a", "tools": [{"type": "function", "name": "f"}]}),
            "tools",
        ),
        (json!({"input": "a", "stream": "yes"}), "stream"),
    ] {
        let (s, b) = json_body(create(&app, body.clone()).await).await;
        assert_openai_error(s, &b, 400, "validation_error", json!(param));
    }
    // A prompt over its limit names the field it came from.
    let (s, b) = json_body(create(&app, json!({"input": "x".repeat(100)})).await).await;
    assert_openai_error(s, &b, 413, "payload_too_large", json!("input"));
    assert!(app.calls().is_empty(), "nothing ran");

    let (s, b) = json_body(create(&app, json!({"input": "[[fake:api_error=500]] x"})).await).await;
    assert_openai_error(s, &b, 502, "cli_api_error", Value::Null);
    assert_eq!(b["error"]["type"], "server_error");

    // After the stream began: `response.failed`, with the service's code.
    let resp = create(
        &app,
        json!({"stream": true, "input": "[[fake:api_error=529]] x"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let events = sse_events(&resp.text().await.expect("body"));
    let (name, last) = events.last().expect("events");
    assert_eq!(name, "response.failed", "{events:?}");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "cli_api_error", "{last}");
    assert!(last["response"]["error"]["message"].is_string(), "{last}");
    app.shutdown().await;
}
