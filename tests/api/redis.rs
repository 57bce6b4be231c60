//! The daemon on Redis storage (`storageType: "redis"`), against this test binary's own
//! redis-server (see `redis_server`), each test under its own namespace: runs, listings and
//! sessions work, and a restarted daemon on the same Redis finds everything.

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::*;
use crate::redis_server::{shared_url, test_namespace};

async fn redis_app(dir: TempDir, url: &str, namespace: &str) -> TestApp {
    spawn_app_in(
        dir,
        json!({"storageType": "redis", "redisUrl": url, "redisNamespace": namespace}),
    )
    .await
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let (status, body) = json_body(app.get(path).await).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn a_daemon_on_redis_runs_lists_keeps_sessions_and_finds_its_tasks_after_a_restart() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    let app = redis_app(tempfile::tempdir().expect("tempdir"), &url, &ns).await;

    let health = get_json(&app, "/health").await;
    assert_eq!(
        health["storage"],
        json!({"type": "redis", "ok": true}),
        "{health}"
    );

    // A sync run, which starts a session, and a second turn of that session.
    let (s, b) = json_body(app.post_claude(json!({"prompt": "one"})).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #1 to: one");
    let sid = b["session_id"].as_str().expect("session id").to_string();
    let (s, b) = json_body(
        app.post_json(
            &format!("/api/sessions/{sid}/continue"),
            &json!({"prompt": "two"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #2 to: two");

    // An async run, listed.
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "later", "async": true, "priority": 7}))
            .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let async_id = b["task_id"].as_str().expect("task id").to_string();
    let t = app
        .wait_for_task(&async_id, |t| t["status"] == "completed")
        .await;
    assert_eq!(t["status"], "completed", "{t}");
    let list = get_json(&app, "/api/tasks").await;
    assert_eq!(list["total"], 3, "{list}");
    assert_eq!(
        list["tasks"][0]["id"],
        json!(async_id),
        "newest first: {list}"
    );
    let session = get_json(&app, &format!("/api/sessions/{sid}")).await;
    assert_eq!(session["session"]["messages_count"], 2, "{session}");
    let done = get_json(&app, "/api/tasks?status=completed").await;
    assert_eq!(done["total"], 3, "{done}");

    // Nothing went to SQLite: the data is in Redis only.
    let db = app.dir.path().join("data/claude-code-server.db");
    assert!(!db.exists(), "{} was created", db.display());

    // A new daemon on the same Redis and namespace finds the tasks and the session.
    let dir = app.shutdown().await;
    let app = redis_app(dir, &url, &ns).await;
    let t = get_json(&app, &format!("/api/tasks/{async_id}")).await;
    assert_eq!(t["task"]["status"], "completed", "{t}");
    assert_eq!(t["task"]["priority"], 7, "{t}");
    let list = get_json(&app, "/api/tasks").await;
    assert_eq!(list["total"], 3, "{list}");
    let (s, b) = json_body(
        app.post_json(
            &format!("/api/sessions/{sid}/continue"),
            &json!({"prompt": "three"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #3 to: three");
    let session = get_json(&app, &format!("/api/sessions/{sid}")).await;
    assert_eq!(session["session"]["messages_count"], 3, "{session}");
    let queue = get_json(&app, "/api/tasks/queue/status").await;
    assert_eq!(queue["queue"]["total"], 4, "{queue}");
    assert_eq!(queue["queue"]["completed"], 4, "{queue}");
    assert!(
        queue["queue"]["total_cost_usd"]
            .as_f64()
            .is_some_and(|c| c > 0.0),
        "{queue}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn another_namespace_on_the_same_redis_sees_nothing() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let a = redis_app(
        tempfile::tempdir().expect("tempdir"),
        &url,
        &test_namespace(),
    )
    .await;
    let (s, b) = json_body(a.post_claude(json!({"prompt": "mine"})).await).await;
    assert_eq!(s, 200, "{b}");
    let b_app = redis_app(
        tempfile::tempdir().expect("tempdir"),
        &url,
        &test_namespace(),
    )
    .await;
    assert_eq!(get_json(&b_app, "/api/tasks").await["total"], 0);
    assert_eq!(get_json(&a, "/api/tasks").await["total"], 1);
    a.shutdown().await;
    b_app.shutdown().await;
}

#[tokio::test]
async fn health_is_503_promptly_while_redis_is_down_and_ok_when_it_is_back() {
    let mut server = crate::redis_server::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let port = server.port();
    let app = redis_app(
        tempfile::tempdir().expect("tempdir"),
        &server.url(),
        &test_namespace(),
    )
    .await;
    // Polled while Redis is up: the answer may be reused for `actors::recent::HEALTH_MAX_AGE`
    // (100 ms), no longer.
    let (s, body) = json_body(app.get("/health").await).await;
    assert_eq!(s, 200, "{body}");
    server.kill();
    let t0 = std::time::Instant::now();
    let body = loop {
        let resp = app.get("/health").await;
        let status = resp.status().as_u16();
        let (_, body) = json_body(resp).await;
        if status == 503 {
            break body;
        }
        assert!(
            // A reconnection attempt takes about 0.3 s here, plus at most 100 ms of reuse.
            t0.elapsed() < std::time::Duration::from_secs(5),
            "still {status} {:?} after Redis died: {body}",
            t0.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(
        body["storage"],
        json!({"type": "redis", "ok": false}),
        "{body}"
    );
    let (s, b) = json_body(app.post_claude(json!({"prompt": "x", "async": true})).await).await;
    assert_error(s, &b, 503, "storage_unavailable");

    let _back = crate::redis_server::RedisServer::start_on(port).unwrap_or_else(|e| panic!("{e}"));
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = json_body(app.get("/health").await).await;
        if body["storage"]["ok"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "storage did not come back: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}
