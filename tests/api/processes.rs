//! No process outlives its task: timeouts, escalation to SIGKILL, disconnects, shutdown; and
//! the one concurrency limit.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn pgid_of(start: &Value) -> i64 {
    start["pgid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pgid in {start}"))
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:hang]] x", "timeout_ms": 1000}))
            .await,
    )
    .await;
    assert_error(s, &b, 504, "timeout");
    let starts = app.wait_for_starts(1).await;
    let pgid = pgid_of(&starts[0]);
    assert_eq!(
        Some(pgid),
        starts[0]["pid"].as_i64(),
        "the CLI leads its own process group"
    );
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)).await,
        "a process of the run survived"
    );
    let (_, t) = json_body(
        app.get(&format!(
            "/api/tasks/{}",
            b["task_id"].as_str().unwrap_or("")
        ))
        .await,
    )
    .await;
    assert_eq!(t["task"]["status"], "timeout");
    app.shutdown().await;
}

#[tokio::test]
async fn a_cli_that_ignores_sigterm_is_killed_after_the_grace() {
    let app = spawn_app_with(json!({"taskQueue": {"killGraceMs": 200}})).await;
    let started = std::time::Instant::now();
    let (s, b) = json_body(
        app.post_claude(
            json!({"prompt": "[[fake:hang]] [[fake:ignore_sigterm]] x", "timeout_ms": 1000}),
        )
        .await,
    )
    .await;
    assert_error(s, &b, 504, "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "escalation took {:?}",
        started.elapsed()
    );
    let starts = app.wait_for_starts(1).await;
    assert!(wait_group_gone(pgid_of(&starts[0]), Duration::from_secs(5)).await);
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_run() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let result = client
        .post(app.url("/api/claude"))
        .json(&json!({"prompt": "[[fake:hang]] x"}))
        .send()
        .await;
    assert!(
        result.is_err(),
        "the request should time out on the client side"
    );
    drop(client);
    let starts = app.wait_for_starts(1).await;
    assert!(
        wait_group_gone(pgid_of(&starts[0]), Duration::from_secs(5)).await,
        "the run of a disconnected client is still alive"
    );
    // The slot is free again once the group is gone.
    let mut health = serde_json::Value::Null;
    for _ in 0..250 {
        health = json_body(app.get("/health").await).await.1;
        if health["queue"]["running"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health["queue"]["running"], 0, "{health}");
    app.shutdown().await;
}

#[tokio::test]
async fn with_cancel_on_disconnect_off_the_run_continues() {
    let app = spawn_app_with(json!({"cancelOnDisconnect": false})).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let result = client
        .post(app.url("/api/claude"))
        .json(&json!({"prompt": "[[fake:latency_ms=1500]] slow"}))
        .send()
        .await;
    assert!(result.is_err());
    let done = poll_until(Duration::from_secs(10), || {
        let calls = app.calls();
        (!calls.is_empty()).then_some(calls)
    })
    .await
    .expect("the run finished");
    assert_eq!(done[0]["exit_code"], 0, "{:?}", done[0]);
    app.shutdown().await;
}

#[tokio::test]
async fn runs_never_exceed_the_concurrency_limit() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 2}})).await;
    let mut handles = Vec::new();
    for i in 0..6 {
        let client = app.client.clone();
        let url = app.url("/api/claude");
        handles.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&json!({"prompt": format!("[[fake:latency_ms=150]] run {i}")}))
                .send()
                .await
                .expect("send");
            resp.status().as_u16()
        }));
    }
    for h in handles {
        assert_eq!(h.await.expect("join"), 200);
    }
    let calls = app.calls();
    assert_eq!(calls.len(), 6);
    // At any start time, at most 2 runs are alive.
    let most = most_alive_at_once(&calls);
    assert!(most <= 2, "{most} runs alive at once: {calls:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn while_shutting_down_new_runs_get_503_and_running_ones_finish() {
    let mut app = spawn_app_with(json!({"shutdownGraceMs": 10000})).await;
    let (_, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:latency_ms=1500]] finishing", "async": true}))
            .await,
    )
    .await;
    let id = b["task_id"].as_str().expect("id").to_string();
    app.wait_for_starts(1).await;
    app.begin_shutdown();
    // The queue stops taking runs at once (a request racing the signal may still get in);
    // the running one goes on.
    let (mut status, mut accepted) = (0, 0);
    for _ in 0..100 {
        let (s, b) = json_body(app.post_claude(json!({"prompt": "too late"})).await).await;
        status = s;
        if s == 503 {
            assert_eq!(b["code"], "shutting_down", "{b}");
            break;
        }
        accepted += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 503);
    let dir = app.shutdown().await;
    let app = spawn_app_in(dir, json!({})).await;
    let t = app.wait_for_task(&id, |t| t["status"] == "completed").await;
    assert_eq!(
        t["status"], "completed",
        "the running task finished within the grace: {t}"
    );
    let ran = app
        .calls()
        .iter()
        .filter(|c| c["stdin"] == "too late")
        .count();
    assert_eq!(ran, accepted, "a refused run never runs");
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_kills_runs_after_the_grace_and_marks_them_interrupted() {
    let app = spawn_app_with(json!({"shutdownGraceMs": 200})).await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:hang]] x", "async": true}))
            .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let id = b["task_id"].as_str().expect("id").to_string();
    let starts = app.wait_for_starts(1).await;
    let pgid = pgid_of(&starts[0]);
    let dir = app.shutdown().await;
    assert!(wait_group_gone(pgid, Duration::from_secs(5)).await);
    // The record says interrupted, read back by a new daemon on the same data.
    let app = spawn_app_in(dir, json!({})).await;
    let task = app.wait_for_task(&id, |t| t["status"] == "failed").await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "interrupted", "{task}");
    assert_eq!(task["attempts"], 1, "never run twice: {task}");
    app.shutdown().await;
}
