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

/// The idempotency claims in a daemon's SQLite database: a failed request leaves none (it gives
/// its key back before it answers), so a retry need not wait for the claim to be abandoned.
fn stored_claims(app: &TestApp) -> i64 {
    let db = rusqlite::Connection::open(app.dir.path().join("data/claude-code-server.db"))
        .expect("open the daemon's database");
    db.query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
        .expect("count claims")
}

/// Every run route with a key, each refused after its claim (the queue is full): the key is
/// given back, so the same request with the same key runs once the queue has room.
#[tokio::test]
async fn a_refused_request_gives_its_key_back_on_every_run_route() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 1, "maxPending": 1}})).await;
    let (_, session) = json_body(app.post_json("/api/sessions", &json!({})).await).await;
    let sid = session["session"]["id"]
        .as_str()
        .expect("session id")
        .to_string();
    let blocker = app
        .enqueue(json!({"prompt": "[[fake:hang]] blocker"}))
        .await;
    app.wait_for_starts(1).await;
    let filler = app.enqueue(json!({"prompt": "fills the queue"})).await;
    let requests = [
        ("/api/claude", json!({"prompt": "sync"})),
        ("/api/claude", json!({"prompt": "async", "async": true})),
        ("/api/tasks/async", json!({"prompt": "task"})),
        (
            "/api/claude/batch",
            json!({"prompts": ["b1"], "async": true}),
        ),
        (
            &format!("/api/sessions/{sid}/continue"),
            json!({"prompt": "turn", "async": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "chat"}]}),
        ),
    ];
    for (i, (path, body)) in requests.iter().enumerate() {
        let (s, b) = post_with_key(&app, path, &format!("full-{i}"), body.clone()).await;
        assert_eq!(s, 503, "{path}: {b}");
        let code = b["code"].as_str().or(b["error"]["code"].as_str());
        assert_eq!(code, Some("queue_full"), "{path}: {b}");
    }
    assert_eq!(stored_claims(&app), 0, "a refused request kept its claim");
    // Room again: each retry runs (sync ones to the end), none gets 409.
    let patch = json!({"taskQueue": {"maxPending": 100}});
    let resp = app
        .client
        .patch(app.url("/api/config"))
        .json(&patch)
        .send()
        .await;
    assert_eq!(resp.expect("patch config").status().as_u16(), 200);
    for id in [&filler, &blocker] {
        let (s, _) = json_body(
            app.client
                .delete(app.url(&format!("/api/tasks/{id}")))
                .send()
                .await
                .expect("delete"),
        )
        .await;
        assert_eq!(s, 200);
    }
    for (i, (path, body)) in requests.iter().enumerate() {
        let (s, b) = post_with_key(&app, path, &format!("full-{i}"), body.clone()).await;
        assert!((200..300).contains(&s), "{path}: retry answered {s} {b}");
    }
    let prompts: Vec<String> = app
        .calls()
        .iter()
        .map(|c| c["stdin"].as_str().unwrap_or("").to_string())
        .collect();
    for p in ["sync", "async", "task", "b1", "turn", "chat"] {
        poll_until(std::time::Duration::from_secs(10), || {
            app.calls().iter().any(|c| c["stdin"] == p).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{p} never ran: {prompts:?}"));
    }
    app.shutdown().await;
}

/// A 4xx decided after the claim (the session is closed) gives the key back too.
#[tokio::test]
async fn a_refusal_after_the_claim_gives_the_key_back() {
    let app = spawn_app().await;
    let (_, session) = json_body(app.post_json("/api/sessions", &json!({})).await).await;
    let sid = session["session"]["id"]
        .as_str()
        .expect("session id")
        .to_string();
    let set_status = |status: &'static str| {
        app.client
            .patch(app.url(&format!("/api/sessions/{sid}/status")))
            .json(&json!({"status": status}))
            .send()
    };
    assert_eq!(
        set_status("closed").await.expect("patch").status().as_u16(),
        200
    );
    let path = format!("/api/sessions/{sid}/continue");
    let (s, b) = post_with_key(&app, &path, "turn-1", json!({"prompt": "again"})).await;
    assert_error(s, &b, 409, "session_closed");
    assert_eq!(stored_claims(&app), 0, "a refused request kept its claim");
    assert_eq!(
        set_status("active").await.expect("patch").status().as_u16(),
        200
    );
    let (s, b) = post_with_key(&app, &path, "turn-1", json!({"prompt": "again"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(app.calls().len(), 1);
    app.shutdown().await;
}

/// Storage fails after the claim (SQLite refuses the task's insert): the answer is an error,
/// the key is given back, and once storage works the retry runs.
#[tokio::test]
async fn a_storage_failure_after_the_claim_gives_the_key_back() {
    let app = spawn_app().await;
    let db = rusqlite::Connection::open(app.dir.path().join("data/claude-code-server.db"))
        .expect("open the daemon's database");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    db.execute_batch(
        "CREATE TRIGGER refuse_tasks BEFORE INSERT ON tasks
         BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;",
    )
    .expect("trigger");
    let body = json!({"prompt": "stored later", "async": true});
    let (s, b) = post_with_key(&app, "/api/claude", "store-1", body.clone()).await;
    assert!(s >= 500, "{s} {b}");
    assert_eq!(stored_claims(&app), 0, "a failed request kept its claim");
    db.execute_batch("DROP TRIGGER refuse_tasks")
        .expect("drop trigger");
    let (s, b) = post_with_key(&app, "/api/claude", "store-1", body).await;
    assert_eq!(s, 202, "{b}");
    let id = b["task_id"].as_str().expect("id").to_string();
    app.wait_for_task(&id, |t| t["status"] == "completed").await;
    app.shutdown().await;
}

/// The daemon dies (kill -9) between a request's claim and its task's store: the claim names
/// a task that will never exist. After the restart a retry with the same key takes the claim
/// over (within `ABANDONED_AFTER`), gets 202 and the prompt runs once.
#[tokio::test]
async fn a_claim_left_by_a_killed_daemon_is_taken_over_by_the_retry() {
    use crate::durability::{daemon_dir, start_daemon, start_daemon_with_env, DaemonDir};
    let DaemonDir {
        _dir,
        root,
        config,
        calls,
        port,
    } = daemon_dir(json!({}));
    let failpoint = [("CCS_FAILPOINT", "after_idempotency_claim")];
    let mut daemon = start_daemon_with_env(&config, &root, port, &failpoint).await;
    let client = reqwest::Client::new();
    let request = |base: &str| {
        client
            .post(format!("{base}/api/claude"))
            .header("Idempotency-Key", "crash-1")
            .json(&json!({"prompt": "after the crash", "async": true}))
            .send()
    };
    // The request stops right after its claim, which is then in the database.
    let stuck = tokio::spawn(request(&daemon.base));
    let db_path = root.join("data/claude-code-server.db");
    poll_until(std::time::Duration::from_secs(10), || {
        let db = rusqlite::Connection::open(&db_path).ok()?;
        let n: i64 = db
            .query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
            .ok()?;
        (n == 1).then_some(())
    })
    .await
    .expect("the claim was made");
    daemon.child.kill().expect("SIGKILL");
    let _ = daemon.child.wait();
    assert!(
        stuck.await.expect("join").is_err(),
        "the stuck request got an answer"
    );

    let mut daemon = start_daemon(&config, &root, port).await;
    let resp = request(&daemon.base).await.expect("retry");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().expect("task id").to_string();
    let done = poll_until(std::time::Duration::from_secs(10), || {
        read_log(&calls)
            .into_iter()
            .any(|c| c["event"] == "exit" && c["stdin"] == "after the crash")
            .then_some(())
    })
    .await;
    assert!(done.is_some(), "task {id} never ran");
    // Once stored, the key answers with that task.
    let resp = request(&daemon.base).await.expect("second retry");
    let again: Value = resp.json().await.expect("json");
    assert_eq!(again["task_id"], json!(id));
    let runs = read_log(&calls)
        .into_iter()
        .filter(|c| c["event"] == "exit" && c["stdin"] == "after the crash")
        .count();
    assert_eq!(runs, 1);
    daemon.child.kill().expect("kill");
    let _ = daemon.child.wait();
}

/// `/v1/chat/completions` takes the key too: a retry gets the first completion, not a new run.
#[tokio::test]
async fn a_retried_chat_completion_runs_once() {
    let app = spawn_app().await;
    let body = json!({"messages": [{"role": "user", "content": "chat once"}]});
    let (s1, b1) = post_with_key(&app, "/v1/chat/completions", "chat-1", body.clone()).await;
    let (s2, b2) = post_with_key(&app, "/v1/chat/completions", "chat-1", body).await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1["id"], b2["id"]);
    assert_eq!(
        b1["choices"][0]["message"]["content"],
        b2["choices"][0]["message"]["content"]
    );
    assert_eq!(b1["session_id"], b2["session_id"]);
    assert_eq!(app.calls().len(), 1);
    app.shutdown().await;
}

/// `/v1/messages` and `/v1/responses` too: a retry gets the first answer, in the route's shape.
#[tokio::test]
async fn a_retried_message_or_response_runs_once() {
    let app = spawn_app().await;
    let body = json!({"max_tokens": 8, "messages": [{"role": "user", "content": "message once"}]});
    let (s1, b1) = post_with_key(&app, "/v1/messages", "msg-1", body.clone()).await;
    let (s2, b2) = post_with_key(&app, "/v1/messages", "msg-1", body).await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1, b2);
    assert_eq!(b1["content"][0]["text"], "fake reply #1 to: message once");

    let body = json!({"input": "response once", "instructions": "Be brief."});
    let (s1, b1) = post_with_key(&app, "/v1/responses", "resp-1", body.clone()).await;
    let (s2, b2) = post_with_key(&app, "/v1/responses", "resp-1", body).await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1, b2);
    assert_eq!(
        b1["output"][0]["content"][0]["text"],
        "fake reply #1 to: response once"
    );
    assert_eq!(app.calls().len(), 2);
    app.shutdown().await;
}
