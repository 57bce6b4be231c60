//! Approvals (`api.md` § Approvals) with the fake CLI speaking the stdin permission protocol:
//! allow and deny reach the CLI, tenancy is the task's, an unanswered approval expires (and the
//! idle timeout waits meanwhile), a cancel while waiting leaves no process, the SSE `approval`
//! event (task events and `stream: true`), the `task.approval_requested` webhook, and a
//! decision posted to one instance of a Redis cluster reaching the run on the other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::redis_server::{shared_url, test_namespace};

fn keys() -> Value {
    json!({"auth": {"apiKeys": [
        {"name": "alice", "key": "alice-key-123"},
        {"name": "bob", "key": "bob-key-12345"},
        {"name": "root", "key": "root-key-1234", "admin": true},
    ]}, "rateLimit": {"enabled": false}})
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    json_body(req.send().await.expect("request")).await
}

async fn get_as(app: &TestApp, path: &str, key: Option<&str>) -> (u16, Value) {
    send(app, reqwest::Method::GET, path, key, None).await
}

async fn decide_as(
    app: &TestApp,
    task: &str,
    approval: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let path = format!("/api/tasks/{task}/approvals/{approval}");
    send(app, reqwest::Method::POST, &path, key, Some(body)).await
}

/// Queue an async run with approvals; returns the task id.
async fn submit(app: &TestApp, prompt: &str, key: Option<&str>, extra: Value) -> String {
    let mut body = json!({"prompt": prompt, "async": true, "approvals": true});
    actors::config::merge::merge_patch(&mut body, &extra);
    let (s, b) = send(app, reqwest::Method::POST, "/api/claude", key, Some(body)).await;
    assert_eq!(s, 202, "{b}");
    b["task_id"].as_str().expect("task id").to_string()
}

/// Wait (10 s at most) until the task has `n` approvals, the last one pending; returns them.
async fn wait_pending(app: &TestApp, task: &str, n: usize, key: Option<&str>) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = get_as(app, &format!("/api/tasks/{task}/approvals"), key).await;
        assert_eq!(s, 200, "{b}");
        let list = b["approvals"].as_array().cloned().unwrap_or_default();
        if list.len() == n && list[n - 1]["status"] == "pending" {
            return list;
        }
        assert!(Instant::now() < end, "no pending approval #{n}: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_final(app: &TestApp, task: &str, key: Option<&str>) -> Value {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, b) = get_as(app, &format!("/api/tasks/{task}"), key).await;
        let status = b["task"]["status"].as_str().unwrap_or("").to_string();
        if ["completed", "failed", "cancelled", "timeout"].contains(&status.as_str()) {
            return b["task"].clone();
        }
        assert!(Instant::now() < end, "the task did not end: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The permission answers the fake received (its call log's final record).
fn answers(app: &TestApp) -> Vec<Value> {
    let calls = app.calls();
    let last = calls.last().expect("a finished run");
    last["permission_answers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn allow_runs_the_tool_and_deny_reaches_the_model() {
    let app = spawn_app_with(keys()).await;
    let alice = Some("alice-key-123");
    let id = submit(&app, "make two dirs [[fake:asks=2]]", alice, json!({})).await;
    let first = wait_pending(&app, &id, 1, alice).await;
    let a1 = &first[0];
    assert_eq!(a1["task_id"], json!(id));
    assert_eq!(a1["tool_name"], "Bash");
    assert_eq!(a1["input"]["command"], "mkdir x1 && echo made");
    assert_eq!(a1["description"], "Make the directory x1");
    for k in ["decided_at", "decided_by", "message"] {
        assert_eq!(a1[k], Value::Null, "{k}");
    }
    let (_, t) = get_as(&app, &format!("/api/tasks/{id}"), alice).await;
    assert_eq!(t["task"]["status"], "processing");
    assert_eq!(t["task"]["pending_approvals"], 1);
    assert_eq!(t["task"]["approvals"], true);
    let (_, list) = get_as(&app, "/api/tasks?status=processing", alice).await;
    assert_eq!(list["tasks"][0]["pending_approvals"], 1, "{list}");

    let a1_id = a1["id"].as_str().expect("id");
    let (s, b) = decide_as(
        &app,
        &id,
        a1_id,
        alice,
        json!({"decision": "allow", "message": "fine"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["approval"]["status"], "allowed");
    assert_eq!(b["approval"]["decided_by"], "alice");
    assert_eq!(b["approval"]["message"], "fine");
    // Decided once: a second decision is refused.
    let (s, b) = decide_as(&app, &id, a1_id, alice, json!({"decision": "deny"})).await;
    assert_error(s, &b, 409, "invalid_state");

    let second = wait_pending(&app, &id, 2, alice).await;
    let a2_id = second[1]["id"].as_str().expect("id");
    let (s, b) = decide_as(
        &app,
        &id,
        a2_id,
        alice,
        json!({"decision": "deny", "message": "not x2"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["approval"]["status"], "denied");

    let task = wait_final(&app, &id, alice).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["pending_approvals"], 0);
    assert!(app.project.join("x1").is_dir(), "the allowed mkdir ran");
    assert!(!app.project.join("x2").exists(), "the denied mkdir did not");
    // The CLI got exactly the stored decisions, the denial's message included.
    let got = answers(&app);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["response"]["behavior"], "allow");
    assert_eq!(
        got[0]["response"]["updatedInput"]["command"],
        "mkdir x1 && echo made"
    );
    assert_eq!(got[1]["response"]["behavior"], "deny");
    assert_eq!(got[1]["response"]["message"], "not x2");
    let call = app.calls().pop().expect("call");
    let argv = argv(&call);
    assert!(
        argv.contains(&"--permission-prompt-tool=stdio".to_string()),
        "{argv:?}"
    );
    assert!(
        argv.contains(&"--input-format=stream-json".to_string()),
        "{argv:?}"
    );
    assert_eq!(call["stdin_closed"], true, "stdin closed after the result");
    let (_, all) = get_as(&app, &format!("/api/tasks/{id}/approvals"), alice).await;
    let statuses: Vec<&str> = all["approvals"]
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses, ["allowed", "denied"]);
    app.shutdown().await;
}

#[tokio::test]
async fn tenancy_validation_and_runs_without_approvals() {
    let app = spawn_app_with(keys()).await;
    let (alice, bob, root) = (
        Some("alice-key-123"),
        Some("bob-key-12345"),
        Some("root-key-1234"),
    );
    let id = submit(&app, "ask [[fake:asks=1]]", alice, json!({})).await;
    let a = wait_pending(&app, &id, 1, alice).await;
    let aid = a[0]["id"].as_str().expect("id").to_string();

    // Another key: the task and its approvals do not exist for it.
    let (s, b) = get_as(&app, &format!("/api/tasks/{id}/approvals"), bob).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = decide_as(&app, &id, &aid, bob, json!({"decision": "allow"})).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = get_as(&app, "/api/approvals?status=pending", bob).await;
    assert_eq!((s, b["approvals"].clone()), (200, json!([])));
    // The owner and an admin see it.
    for key in [alice, root] {
        let (s, b) = get_as(&app, "/api/approvals?status=pending", key).await;
        assert_eq!(s, 200);
        assert_eq!(b["approvals"][0]["id"], json!(aid), "{b}");
    }
    let (s, b) = get_as(&app, "/api/approvals?status=bogus", alice).await;
    assert_error(s, &b, 400, "validation_error");

    // Bodies: `decision` is named whatever is wrong with it.
    for body in [
        json!({}),
        json!({"decision": "maybe"}),
        json!({"decision": 1}),
    ] {
        let (s, b) = decide_as(&app, &id, &aid, alice, body.clone()).await;
        assert_error(s, &b, 400, "validation_error");
        assert_eq!(b["details"]["field"], "decision", "{body}: {b}");
    }
    let (s, b) = decide_as(
        &app,
        &id,
        &aid,
        alice,
        json!({"decision": "allow", "updated_input": "x"}),
    )
    .await;
    assert_error(s, &b, 400, "validation_error");
    let unknown = uuid::Uuid::new_v4();
    let (s, b) = decide_as(
        &app,
        &id,
        &unknown.to_string(),
        alice,
        json!({"decision": "allow"}),
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = decide_as(&app, &id, "not-a-uuid", alice, json!({"decision": "allow"})).await;
    assert_error(s, &b, 404, "not_found");

    // An admin decides another key's approval, with a changed input.
    let (s, b) = decide_as(
        &app,
        &id,
        &aid,
        root,
        json!({"decision": "allow", "updated_input": {"command": "mkdir other && echo made"}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["approval"]["decided_by"], "root");
    assert_eq!(
        b["approval"]["updated_input"]["command"],
        "mkdir other && echo made"
    );
    let task = wait_final(&app, &id, alice).await;
    assert_eq!(task["status"], "completed");
    assert!(app.project.join("other").is_dir(), "the updated input ran");
    assert!(!app.project.join("x1").exists());

    // A run without approvals: nothing asked, an empty list, today's flags.
    let (s, b) = send(
        &app,
        reqwest::Method::POST,
        "/api/claude",
        alice,
        Some(json!({"prompt": "plain [[fake:tool=Bash]] [[fake:deny_tool]]"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["permission_denials"][0]["tool_name"], "Bash");
    let plain = b["task_id"].as_str().expect("task id");
    let (s, b) = get_as(&app, &format!("/api/tasks/{plain}/approvals"), alice).await;
    assert_eq!((s, b), (200, json!({"success": true, "approvals": []})));
    let call = app.calls().pop().expect("call");
    assert!(!argv(&call)
        .iter()
        .any(|a| a.starts_with("--permission-prompt-tool")));
    app.shutdown().await;
}

#[tokio::test]
async fn an_unanswered_approval_expires_as_a_denial_and_the_idle_timeout_waits() {
    // The idle timeout (300 ms) is far shorter than the wait for the expiry (1 s): the run
    // survives it because the CLI is silent by design while it waits.
    let app = spawn_app_with(json!({
        "permissions": {"approvalTimeoutMs": 1000},
        "taskQueue": {"idleTimeout": 300},
    }))
    .await;
    let id = submit(&app, "ask [[fake:asks=1]]", None, json!({})).await;
    wait_pending(&app, &id, 1, None).await;
    let task = wait_final(&app, &id, None).await;
    assert_eq!(task["status"], "completed", "{task}");
    let (_, b) = get_as(&app, &format!("/api/tasks/{id}/approvals"), None).await;
    let a = &b["approvals"][0];
    assert_eq!(a["status"], "expired", "{b}");
    assert_eq!(a["decided_by"], Value::Null);
    assert!(a["decided_at"].is_string());
    let got = answers(&app);
    assert_eq!(got[0]["response"]["behavior"], "deny");
    assert_eq!(got[0]["response"]["message"], a["message"]);
    assert!(!app.project.join("x1").exists());
    // Too late now.
    let aid = a["id"].as_str().expect("id");
    let (s, b) = decide_as(&app, &id, aid, None, json!({"decision": "allow"})).await;
    assert_error(s, &b, 409, "invalid_state");
    app.shutdown().await;
}

#[tokio::test]
async fn a_cancel_while_waiting_expires_the_approval_and_leaves_no_process() {
    let app = spawn_app().await;
    let id = submit(&app, "ask [[fake:asks=1]]", None, json!({})).await;
    wait_pending(&app, &id, 1, None).await;
    let start = app.wait_for_starts(1).await.pop().expect("start");
    let pgid = start["pgid"].as_i64().expect("pgid");
    let (s, b) = send(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/tasks/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let task = wait_final(&app, &id, None).await;
    assert_eq!(task["status"], "cancelled");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(10)).await,
        "the CLI's group is gone"
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, b) = get_as(&app, &format!("/api/tasks/{id}/approvals"), None).await;
        if b["approvals"][0]["status"] == "expired" {
            break;
        }
        assert!(Instant::now() < end, "still not expired: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, b) = get_as(&app, "/api/approvals?status=pending", None).await;
    assert_eq!(b["approvals"], json!([]));
    app.shutdown().await;
}

// ---- SSE and webhooks

/// Server-Sent Events read from a streaming response, parsed as `(event, data)`.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// The next event whose name is `name` (others are skipped), within 10 s.
    async fn until(&mut self, name: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event == name {
                    return serde_json::from_str(&data).expect("event data is JSON");
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no `{name}` event in time"))
                .expect("stream")
                .unwrap_or_else(|| panic!("the stream ended before a `{name}` event"));
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[derive(Default)]
struct Hooks(Mutex<Vec<(HeaderMap, Value)>>);

async fn hook(State(hits): State<Arc<Hooks>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    hits.0.lock().expect("hooks").push((headers, v));
    StatusCode::OK
}

async fn receiver() -> (SocketAddr, Arc<Hooks>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(Hooks::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(hits.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits, server)
}

#[tokio::test]
async fn the_approval_is_an_sse_event_and_a_signed_webhook() {
    let (addr, hooks, server) = receiver().await;
    let app = spawn_app_with(json!({"webhook": {
        "enabled": true, "allowPrivateTargets": true, "secret": "plain-secret-text",
    }}))
    .await;
    let url = format!("http://{addr}/hook");
    let id = submit(
        &app,
        "ask [[fake:asks=1]]",
        None,
        json!({"webhook_url": url}),
    )
    .await;
    let resp = app.get(&format!("/api/tasks/{id}/events")).await;
    let mut events = Sse {
        resp,
        buf: String::new(),
    };
    let requested = events.until("approval").await;
    assert_eq!(requested["status"], "pending");
    assert_eq!(requested["task_id"], json!(id));
    let aid = requested["id"].as_str().expect("id").to_string();

    let hit = poll_until(Duration::from_secs(10), || {
        hooks
            .0
            .lock()
            .expect("hooks")
            .iter()
            .find(|(_, v)| v["event"] == "task.approval_requested")
            .cloned()
    })
    .await
    .expect("a task.approval_requested webhook");
    assert_eq!(hit.1["data"]["task_id"], json!(id));
    assert_eq!(hit.1["data"]["approval"]["id"], json!(aid));
    assert_eq!(hit.1["data"]["approval"]["status"], "pending");
    assert!(
        hit.0.contains_key("webhook-signature"),
        "signed: {:?}",
        hit.0
    );

    let (s, _) = decide_as(&app, &id, &aid, None, json!({"decision": "allow"})).await;
    assert_eq!(s, 200);
    let decided = events.until("approval").await;
    assert_eq!(decided["status"], "allowed");
    events.until("result").await;
    // The final webhook follows as ever.
    poll_until(Duration::from_secs(10), || {
        hooks
            .0
            .lock()
            .expect("hooks")
            .iter()
            .any(|(_, v)| v["event"] == "task.completed")
            .then_some(())
    })
    .await
    .expect("task.completed");
    app.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn a_streamed_answer_carries_the_approval_event() {
    let app = spawn_app().await;
    let resp = app
        .post_claude(json!({"prompt": "ask [[fake:asks=1]]", "stream": true, "approvals": true}))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = Sse {
        resp,
        buf: String::new(),
    };
    let requested = events.until("approval").await;
    let (task, aid) = (
        requested["task_id"].as_str().expect("task").to_string(),
        requested["id"].as_str().expect("id").to_string(),
    );
    let (s, _) = decide_as(
        &app,
        &task,
        &aid,
        None,
        json!({"decision": "deny", "message": "no"}),
    )
    .await;
    assert_eq!(s, 200);
    let result = events.until("result").await;
    assert_eq!(
        result["permission_denials"][0]["tool_name"], "Bash",
        "{result}"
    );
    app.shutdown().await;
}

// ---- several instances

#[tokio::test]
async fn a_decision_posted_to_another_instance_reaches_the_run() {
    let url = shared_url().expect("a redis-server for the tests");
    let ns = test_namespace();
    let config = json!({
        "storageType": "redis", "redisUrl": url, "redisNamespace": ns,
        "rateLimit": {"enabled": false},
    });
    let a = spawn_app_with(config.clone()).await;
    let b = spawn_app_with(config).await;
    let id = submit(&a, "ask [[fake:asks=1]]", None, json!({})).await;
    let pending = wait_pending(&a, &id, 1, None).await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    // Post the decision to the instance that does not run it.
    let runs_on_a = !a.starts().is_empty();
    let (runner, other) = if runs_on_a { (&a, &b) } else { (&b, &a) };
    assert!(other.starts().is_empty(), "one run, on one instance");
    let decided_at = Instant::now();
    let (s, body) = decide_as(other, &id, &aid, None, json!({"decision": "allow"})).await;
    assert_eq!(s, 200, "{body}");
    let task = wait_final(other, &id, None).await;
    assert_eq!(task["status"], "completed", "{task}");
    // Woken over the control channel, not found by the 2 s re-read (which would take about
    // 2 s from the request, i.e. nearly that from this decision).
    assert!(
        decided_at.elapsed() < Duration::from_millis(1500),
        "the decision took {:?} to reach the run",
        decided_at.elapsed()
    );
    assert_eq!(answers(runner)[0]["response"]["behavior"], "allow");
    assert!(a.project.join("x1").is_dir());
    // Both instances list it as decided.
    for app in [&a, &b] {
        let (_, l) = get_as(app, "/api/approvals?status=allowed", None).await;
        assert!(l["approvals"]
            .as_array()
            .expect("list")
            .iter()
            .any(|x| x["id"] == json!(aid)));
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_total_timeout_still_runs_while_an_approval_waits() {
    let app = spawn_app().await;
    let id = submit(
        &app,
        "ask [[fake:asks=1]]",
        None,
        json!({"timeout_ms": 1500}),
    )
    .await;
    wait_pending(&app, &id, 1, None).await;
    let pgid = app.wait_for_starts(1).await[0]["pgid"]
        .as_i64()
        .expect("pgid");
    let task = wait_final(&app, &id, None).await;
    assert_eq!(task["status"], "timeout", "{task}");
    assert!(wait_group_gone(pgid, Duration::from_secs(10)).await);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, b) = get_as(&app, &format!("/api/tasks/{id}/approvals"), None).await;
        if b["approvals"][0]["status"] == "expired" {
            break;
        }
        assert!(Instant::now() < end, "not expired: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_shutdown_while_waiting_expires_the_approval_which_survives_the_restart() {
    let app = spawn_app().await;
    let id = submit(&app, "ask [[fake:asks=1]]", None, json!({})).await;
    let pending = wait_pending(&app, &id, 1, None).await;
    let pgid = app.wait_for_starts(1).await[0]["pgid"]
        .as_i64()
        .expect("pgid");
    let dir = app.shutdown().await;
    assert!(group_is_gone(pgid), "no process outlives the shutdown");
    let app = spawn_app_in(dir, json!({})).await;
    let (_, b) = get_as(&app, &format!("/api/tasks/{id}/approvals"), None).await;
    assert_eq!(b["approvals"][0]["id"], pending[0]["id"], "{b}");
    assert_eq!(b["approvals"][0]["status"], "expired", "{b}");
    let (_, t) = get_as(&app, &format!("/api/tasks/{id}"), None).await;
    assert!(
        ["failed", "cancelled"].contains(&t["task"]["status"].as_str().unwrap_or("")),
        "ended as today: {t}"
    );
    let (_, l) = get_as(&app, "/api/approvals?status=pending", None).await;
    assert_eq!(l["approvals"], json!([]));
    app.shutdown().await;
}

#[tokio::test]
async fn session_turns_take_approvals_and_the_default_comes_from_the_config() {
    let app = spawn_app_with(json!({"permissions": {"approvalsDefault": true}})).await;
    // No `approvals` in the request: the config's default asks.
    let (s, b) = json_body(app.post_json("/api/sessions", &json!({})).await).await;
    assert_eq!(s, 201, "{b}");
    let sid = b["session"]["id"].as_str().expect("sid").to_string();
    let (s, b) = json_body(
        app.post_json(
            &format!("/api/sessions/{sid}/continue"),
            &json!({"prompt": "ask [[fake:asks=1]]", "async": true}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let id = b["task_id"].as_str().expect("task").to_string();
    let a = wait_pending(&app, &id, 1, None).await;
    let aid = a[0]["id"].as_str().expect("id");
    let (s, _) = decide_as(&app, &id, aid, None, json!({"decision": "allow"})).await;
    assert_eq!(s, 200);
    assert_eq!(wait_final(&app, &id, None).await["status"], "completed");
    // `approvals: false` turns it off for one run.
    let (s, b) = json_body(
        app.post_json(
            &format!("/api/sessions/{sid}/continue"),
            &json!({"prompt": "plain [[fake:asks=1]]", "approvals": false}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["permission_denials"][0]["tool_name"], "Bash", "{b}");
    app.shutdown().await;
}

/// Decide the first pending approval of `task` as soon as it appears.
async fn allow_when_asked(app: &TestApp, task: &str) {
    let a = wait_pending(app, task, 1, None).await;
    let aid = a[0]["id"].as_str().expect("id");
    let (s, b) = decide_as(app, task, aid, None, json!({"decision": "allow"})).await;
    assert_eq!(s, 200, "{b}");
}

/// The newest task the daemon lists (the one a request without an id in its answer made).
async fn newest_task(app: &TestApp) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, b) = get_as(app, "/api/tasks?status=processing&limit=1", None).await;
        if let Some(id) = b["tasks"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < end, "no running task: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sync_batch_and_fork_requests_take_approvals() {
    let app = spawn_app().await;
    // Sync: the answer waits while the approval does.
    let sync = app.post_claude(json!({"prompt": "sync [[fake:asks=1]]", "approvals": true}));
    let decide = async {
        let id = newest_task(&app).await;
        allow_when_asked(&app, &id).await;
    };
    let (resp, ()) = tokio::join!(sync, decide);
    let (s, b) = json_body(resp).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["permission_denials"], json!([]), "{b}");
    let session = b["session_id"].as_str().expect("session").to_string();

    // A fork (a session turn of its own kind).
    let (fork_path, fork_body) = (
        format!("/api/sessions/{session}/fork"),
        json!({"prompt": "fork [[fake:asks=1]]", "approvals": true}),
    );
    let fork = app.post_json(&fork_path, &fork_body);
    let decide = async {
        let id = newest_task(&app).await;
        allow_when_asked(&app, &id).await;
    };
    let (resp, ()) = tokio::join!(fork, decide);
    let (s, b) = json_body(resp).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["permission_denials"], json!([]), "{b}");

    // Batch items.
    let (s, b) = json_body(
        app.post_json(
            "/api/claude/batch",
            &json!({"prompts": ["one [[fake:asks=1]]"], "async": true, "approvals": true}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let id = b["task_ids"][0].as_str().expect("id").to_string();
    allow_when_asked(&app, &id).await;
    let task = wait_final(&app, &id, None).await;
    assert_eq!(
        (task["status"].clone(), task["approvals"].clone()),
        (json!("completed"), json!(true))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn after_a_kill_9_the_approval_is_history_and_expired_and_the_run_ends_interrupted() {
    use crate::durability::{daemon_dir, start_daemon};
    let d = daemon_dir(json!({}));
    let mut daemon = start_daemon(&d.config, &d.root, d.port).await;
    let client = reqwest::Client::new();
    let resp: Value = client
        .post(format!("{}/api/claude", daemon.base))
        .json(&json!({"prompt": "ask [[fake:asks=1]]", "async": true, "approvals": true}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let id = resp["task_id"].as_str().expect("id").to_string();
    let approvals_of = |base: String| {
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .get(format!("{base}/api/tasks/{id}/approvals"))
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")["approvals"]
                .clone()
        }
    };
    let end = Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let list = approvals_of(daemon.base.clone()).await;
        if list[0]["status"] == "pending" {
            break list[0].clone();
        }
        assert!(Instant::now() < end, "no pending approval: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.child.kill().expect("SIGKILL");
    let _ = daemon.child.wait();
    let daemon = start_daemon(&d.config, &d.root, d.port).await;
    let list = approvals_of(daemon.base.clone()).await;
    assert_eq!(list[0]["id"], pending["id"], "{list}");
    assert_eq!(list[0]["status"], "expired", "{list}");
    let t: Value = client
        .get(format!("{}/api/tasks/{id}", daemon.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(t["task"]["error"]["code"], "interrupted", "{t}");
    let mut daemon = daemon;
    daemon.child.kill().expect("stop");
    let _ = daemon.child.wait();
}

#[tokio::test]
async fn past_max_approvals_per_run_a_request_is_denied_without_an_approval() {
    let app = spawn_app_with(json!({"permissions": {"maxApprovalsPerRun": 1}})).await;
    let id = submit(&app, "make two dirs [[fake:asks=2]]", None, json!({})).await;
    let first = wait_pending(&app, &id, 1, None).await;
    let aid = first[0]["id"].as_str().expect("id");
    let (s, b) = decide_as(&app, &id, aid, None, json!({"decision": "allow"})).await;
    assert_eq!(s, 200, "{b}");
    let task = wait_final(&app, &id, None).await;
    assert_eq!(task["status"], "completed", "{task}");
    // The second request never became an approval: the run was told no at once, and why.
    let (_, all) = get_as(&app, &format!("/api/tasks/{id}/approvals"), None).await;
    assert_eq!(all["approvals"].as_array().map(Vec::len), Some(1), "{all}");
    let got = answers(&app);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["response"]["behavior"], "allow");
    assert_eq!(got[1]["response"]["behavior"], "deny");
    assert!(
        got[1]["response"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("as many permissions as the server allows")),
        "{got:?}"
    );
    assert!(app.project.join("x1").is_dir(), "the allowed mkdir ran");
    assert!(!app.project.join("x2").exists(), "the refused one did not");
    app.shutdown().await;
}
