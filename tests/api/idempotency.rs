//! `Idempotency-Key`: a retried request runs once.

use serde_json::{json, Value};

use crate::helpers::*;

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: Value) -> (u16, Value) {
    json_body(
        app.client
            .post(app.url(path))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("send"),
    )
    .await
}

#[tokio::test]
async fn a_retried_sync_request_runs_once_and_gets_the_same_answer() {
    let app = spawn_app().await;
    let (s1, b1) = post_with_key(&app, "/api/claude", "retry-1", json!({"prompt": "once"})).await;
    let (s2, b2) = post_with_key(&app, "/api/claude", "retry-1", json!({"prompt": "once"})).await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1["task_id"], b2["task_id"]);
    assert_eq!(b1["result"], b2["result"]);
    assert_eq!(app.calls().len(), 1);
    // Another key runs again.
    let (_, b3) = post_with_key(&app, "/api/claude", "retry-2", json!({"prompt": "once"})).await;
    assert_ne!(b1["task_id"], b3["task_id"]);
    assert_eq!(app.calls().len(), 2);
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_async_requests_with_one_key_create_one_task() {
    let app = spawn_app().await;
    let body = json!({"prompt": "[[fake:latency_ms=100]] dup", "async": true});
    let (a, b) = tokio::join!(
        post_with_key(&app, "/api/claude", "same", body.clone()),
        post_with_key(&app, "/api/claude", "same", body.clone())
    );
    assert_eq!((a.0, b.0), (202, 202), "{a:?} {b:?}");
    assert_eq!(a.1["task_id"], b.1["task_id"]);
    let id = a.1["task_id"].as_str().expect("id").to_string();
    app.wait_for_task(&id, |t| t["status"] == "completed").await;
    let (_, l) = json_body(app.get("/api/tasks").await).await;
    assert_eq!(l["total"], 1, "{l}");
    app.shutdown().await;
}

#[tokio::test]
async fn tasks_async_and_batch_honour_the_key() {
    let app = spawn_app().await;
    let (s1, b1) = post_with_key(&app, "/api/tasks/async", "t-1", json!({"prompt": "t"})).await;
    let (s2, b2) = post_with_key(&app, "/api/tasks/async", "t-1", json!({"prompt": "t"})).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(b1["task"]["id"], b2["task"]["id"]);

    let (s1, b1) = post_with_key(
        &app,
        "/api/claude/batch",
        "b-1",
        json!({"prompts": ["x", "y"]}),
    )
    .await;
    let (s2, b2) = post_with_key(
        &app,
        "/api/claude/batch",
        "b-1",
        json!({"prompts": ["x", "y"]}),
    )
    .await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1["results"][1]["task_id"], b2["results"][1]["task_id"]);
    assert_eq!(b2["summary"]["total"], 2);
    let (_, l) = json_body(app.get("/api/tasks").await).await;
    assert_eq!(l["total"], 3, "{l}");

    let long = "k".repeat(300);
    let (s, b) = post_with_key(&app, "/api/claude", &long, json!({"prompt": "x"})).await;
    assert_error(s, &b, 400, "validation_error");
    app.shutdown().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let app = spawn_app().await;
    let (s, _) = post_with_key(&app, "/api/claude", "k-1", json!({"prompt": "first"})).await;
    assert_eq!(s, 200);
    let (s, b) = post_with_key(
        &app,
        "/api/claude",
        "k-1",
        json!({"prompt": "something else"}),
    )
    .await;
    assert_error(s, &b, 409, "invalid_state");
    let (s, b) = post_with_key(&app, "/api/tasks/async", "k-1", json!({"prompt": "first"})).await;
    assert_error(s, &b, 409, "invalid_state");
    assert_eq!(app.calls().len(), 1);
    app.shutdown().await;
}
