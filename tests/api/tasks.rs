//! The queue over HTTP: order, priority changes, cancel, batch, limits.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

async fn submit_async(app: &TestApp, prompt: &str, priority: i64) -> String {
    app.enqueue(json!({"prompt": prompt, "priority": priority}))
        .await
}

async fn delete(app: &TestApp, id: &str) -> (u16, Value) {
    json_body(
        app.client
            .delete(app.url(&format!("/api/tasks/{id}")))
            .send()
            .await
            .expect("delete"),
    )
    .await
}

/// Occupy the only slot with a run that hangs; returns its task id and process group.
async fn block_the_queue(app: &TestApp) -> (String, i64) {
    let id = submit_async(app, "[[fake:hang]] blocker", 10).await;
    let starts = app.wait_for_starts(1).await;
    (id, starts[0]["pgid"].as_i64().expect("pgid"))
}

fn prompts_in_run_order(app: &TestApp) -> Vec<String> {
    let mut calls = app.calls();
    calls.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
    calls
        .iter()
        .map(|c| c["stdin"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn priority_then_fifo_and_a_priority_change_reorders_at_once() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 1}})).await;
    let (blocker, pgid) = block_the_queue(&app).await;
    let low = submit_async(&app, "low", 1).await;
    let mid_a = submit_async(&app, "mid a", 5).await;
    let high = submit_async(&app, "high", 9).await;
    let mid_b = submit_async(&app, "mid b", 5).await;

    let (_, l) = json_body(app.get("/api/tasks?status=pending").await).await;
    let order: Vec<&str> = l["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        order,
        vec![high.as_str(), mid_a.as_str(), mid_b.as_str(), low.as_str()]
    );
    assert_eq!(l["total"], 4);

    let resp = app
        .client
        .patch(app.url(&format!("/api/tasks/{low}/priority")))
        .json(&json!({"priority": 10}))
        .send()
        .await
        .expect("patch");
    let (s, b) = json_body(resp).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["task"]["priority"], 10);
    // The seed's answer shape, beside the task.
    assert_eq!(b["task_id"], json!(low), "{b}");
    assert_eq!(
        (b["old_priority"].clone(), b["new_priority"].clone()),
        (json!(1), json!(10)),
        "{b}"
    );
    assert!(
        b["message"].as_str().is_some_and(|m| m.contains(&low)),
        "{b}"
    );
    let (_, l) = json_body(app.get("/api/tasks?status=pending&limit=1").await).await;
    assert_eq!(l["tasks"][0]["id"], json!(low));

    // Free the slot: the rest run one by one in the new order.
    let (s, _) = delete(&app, &blocker).await;
    assert_eq!(s, 200);
    assert!(wait_group_gone(pgid, Duration::from_secs(5)).await);
    for id in [&low, &high, &mid_a, &mid_b] {
        app.wait_for_task(id, |t| t["status"] == "completed").await;
    }
    assert_eq!(
        prompts_in_run_order(&app)[1..],
        ["low", "high", "mid a", "mid b"]
    );

    // A finished task's priority cannot change.
    let resp = app
        .client
        .patch(app.url(&format!("/api/tasks/{low}/priority")))
        .json(&json!({"priority": 3}))
        .send()
        .await
        .expect("patch");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 409, "invalid_state");
    let resp = app
        .client
        .patch(app.url(&format!("/api/tasks/{low}/priority")))
        .json(&json!({"priority": 11}))
        .send()
        .await
        .expect("patch");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 400, "validation_error");
    app.shutdown().await;
}

#[tokio::test]
async fn cancelling_kills_a_running_task_and_a_pending_one_never_runs() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 1}})).await;
    let (running, pgid) = block_the_queue(&app).await;
    let pending = submit_async(&app, "never run me", 5).await;
    let (s, b) = delete(&app, &pending).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["task"]["status"], "cancelled");
    let (s, b) = delete(&app, &running).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["task"]["status"], "cancelled");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)).await,
        "the cancelled run left a process"
    );
    // The slot is free again and the killed run's late end does not overwrite `cancelled`.
    let after = submit_async(&app, "after", 5).await;
    app.wait_for_task(&after, |t| t["status"] == "completed")
        .await;
    for id in [&running, &pending] {
        let (_, t) = json_body(app.get(&format!("/api/tasks/{id}")).await).await;
        assert_eq!(t["task"]["status"], "cancelled", "{t}");
        assert_eq!(t["task"]["error"]["code"], "cancelled");
    }
    assert!(!prompts_in_run_order(&app)
        .iter()
        .any(|p| p == "never run me"));
    let (s, b) = delete(&app, &after).await;
    assert_error(s, &b, 409, "invalid_state");
    let (s, b) = delete(&app, &uuid::Uuid::new_v4().to_string()).await;
    assert_error(s, &b, 404, "not_found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_sync_client_sees_409_when_its_task_is_cancelled() {
    let app = spawn_app().await;
    let waiter = {
        let client = app.client.clone();
        let url = app.url("/api/claude");
        tokio::spawn(async move {
            json_body(
                client
                    .post(url)
                    .json(&json!({"prompt": "[[fake:hang]] x"}))
                    .send()
                    .await
                    .expect("send"),
            )
            .await
        })
    };
    app.wait_for_starts(1).await;
    let (_, l) = json_body(app.get("/api/tasks?status=processing").await).await;
    let id = l["tasks"][0]["id"]
        .as_str()
        .expect("running task")
        .to_string();
    delete(&app, &id).await;
    let (s, b) = waiter.await.expect("join");
    assert_error(s, &b, 409, "cancelled");
    assert_eq!(b["task_id"], json!(id));
    app.shutdown().await;
}

#[tokio::test]
async fn batch_answers_in_order_and_never_exceeds_the_concurrency_limit() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 2}})).await;
    let prompts: Vec<String> = (0..5)
        .map(|i| format!("[[fake:latency_ms=100]] item {i}"))
        .collect();
    let mut body_prompts = prompts.clone();
    body_prompts[3] = "[[fake:api_error=500]] item 3".into();
    let (s, b) = json_body(
        app.post_json("/api/claude/batch", &json!({"prompts": body_prompts}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let results = b["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert_eq!(r["success"], false);
            assert_eq!(r["code"], "cli_api_error");
        } else {
            assert_eq!(
                r["result"],
                json!(format!("fake reply #1 to: item {i}")),
                "{r}"
            );
        }
    }
    assert_eq!(b["summary"]["total"], 5);
    assert_eq!(b["summary"]["successful"], 4);
    assert_eq!(b["summary"]["failed"], 1);
    let calls = app.calls();
    let most = most_alive_at_once(&calls);
    assert!(most <= 2, "{most} batch runs at once: {calls:?}");

    let (s, b) = json_body(
        app.post_json(
            "/api/claude/batch",
            &json!({"prompts": ["a", "b"], "async": true, "priority": 3}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["task_ids"].as_array().map(Vec::len), Some(2));
    assert_eq!(b["tasks"][0]["priority"], 3);
    for id in b["task_ids"].as_array().expect("ids") {
        let t = app
            .wait_for_task(id.as_str().unwrap_or(""), |t| t["status"] == "completed")
            .await;
        assert_eq!(t["mode"], "batch");
    }

    let too_many: Vec<String> = (0..11).map(|i| format!("p{i}")).collect();
    let (s, b) = json_body(
        app.post_json("/api/claude/batch", &json!({"prompts": too_many}))
            .await,
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    let (s, b) = json_body(
        app.post_json("/api/claude/batch", &json!({"prompts": []}))
            .await,
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    let (s, b) = json_body(
        app.post_json("/api/claude/batch", &json!({"prompts": ["ok", ""]}))
            .await,
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    assert_eq!(b["details"]["field"], "prompts[1]");
    app.shutdown().await;
}

#[tokio::test]
async fn max_pending_answers_503_queue_full() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 1, "maxPending": 2}})).await;
    block_the_queue(&app).await;
    submit_async(&app, "one", 5).await;
    submit_async(&app, "two", 5).await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "three", "async": true}))
            .await,
    )
    .await;
    assert_error(s, &b, 503, "queue_full");
    let (_, q) = json_body(app.get("/api/tasks/queue/status").await).await;
    assert_eq!(q["queue"]["pending"], 2, "{q}");
    assert_eq!(q["queue"]["processing"], 1, "{q}");
    assert_eq!(q["queue"]["active_tasks"], 1, "{q}");
    assert_eq!(q["queue"]["concurrency"], 1, "{q}");
    assert_eq!(q["queue"]["total"], 3, "{q}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_run_is_killed_with_idle_timeout() {
    let app = spawn_app_with(json!({"taskQueue": {"idleTimeout": 300}})).await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:hang]] quiet"}))
            .await,
    )
    .await;
    assert_error(s, &b, 504, "idle_timeout");
    let starts = app.wait_for_starts(1).await;
    assert!(
        wait_group_gone(
            starts[0]["pgid"].as_i64().expect("pgid"),
            Duration::from_secs(5)
        )
        .await
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
async fn tasks_async_endpoint_and_list_filters() {
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_json(
            "/api/tasks/async",
            &json!({"prompt": "via tasks", "priority": 8, "metadata": {"k": 1}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["task"]["id"].as_str().expect("id").to_string();
    assert_eq!(b["task"]["priority"], 8);
    assert_eq!(b["task"]["metadata"]["k"], 1);
    let t = app.wait_for_task(&id, |t| t["status"] == "completed").await;
    let sid = t["session_id"].as_str().expect("session").to_string();
    let (_, l) = json_body(app.get(&format!("/api/tasks?session_id={sid}")).await).await;
    assert_eq!(l["total"], 1, "{l}");
    let (_, l) = json_body(app.get("/api/tasks?status=completed").await).await;
    assert_eq!(l["total"], 1, "{l}");
    for bad in ["status=done", "session_id=nope", "limit=0", "offset=x"] {
        let (s, b) = json_body(app.get(&format!("/api/tasks?{bad}")).await).await;
        assert_error(s, &b, 400, "validation_error");
    }
    app.shutdown().await;
}
