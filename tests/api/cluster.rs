//! Several instances on one Redis namespace behave as one service (the shared queue): each sees
//! the other's tasks and sessions; tasks submitted to both run exactly once each, within each
//! instance's `concurrency` and the namespace's `globalConcurrency`; a run whose instance dies
//! ends `failed`/`interrupted` through another; a Redis outage answers 503 and loses nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::durability::{free_port, start_daemon};
use crate::helpers::*;
use crate::redis_server::{shared_url, test_namespace, RedisServer};

fn cluster_config(url: &str, ns: &str, extra: Value) -> Value {
    let mut config = json!({
        "storageType": "redis",
        "redisUrl": url,
        "redisNamespace": ns,
        "rateLimit": {"enabled": false},
    });
    actors::config::merge::merge_patch(&mut config, &extra);
    config
}

async fn instance(url: &str, ns: &str, extra: Value) -> TestApp {
    spawn_app_in(
        tempfile::tempdir().expect("tempdir"),
        cluster_config(url, ns, extra),
    )
    .await
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = json_body(app.get(path).await).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn submit_async(app: &TestApp, prompt: &str) -> String {
    app.enqueue(json!({"prompt": prompt})).await
}

/// Poll `GET /api/tasks/:id` on `app` until the task is final (`within` at most).
async fn wait_final(app: &TestApp, id: &str, within: Duration) -> Value {
    let end = Instant::now() + within;
    loop {
        let (_, body) = json_body(app.get(&format!("/api/tasks/{id}")).await).await;
        let status = body["task"]["status"].as_str().unwrap_or("").to_string();
        if ["completed", "failed", "cancelled", "timeout"].contains(&status.as_str())
            || Instant::now() >= end
        {
            return body["task"].clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn two_instances_see_each_others_tasks_and_sessions_and_either_runs_them() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    let a = instance(&url, &ns, json!({})).await;
    let b = instance(&url, &ns, json!({})).await;

    // A sync run answered by A: a task and a session B can read.
    let (s, run) = json_body(a.post_claude(json!({"prompt": "hello"})).await).await;
    assert_eq!(s, 200, "{run}");
    let sid = run["session_id"].as_str().expect("session id");
    let tid = run["task_id"].as_str().expect("task id");
    let task = get_ok(&b, &format!("/api/tasks/{tid}")).await;
    assert_eq!(task["task"]["status"], "completed", "{task}");
    let session = get_ok(&b, &format!("/api/sessions/{sid}")).await;
    assert_eq!(session["session"]["messages_count"], 1, "{session}");
    let listed = get_ok(&b, "/api/sessions").await;
    assert_eq!(listed["total"], 1, "{listed}");

    // Async tasks given to B, waited for on A: the same records everywhere.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(submit_async(&b, &format!("async {i}")).await);
    }
    for id in &ids {
        let t = wait_final(&a, id, Duration::from_secs(15)).await;
        assert_eq!(t["status"], "completed", "{t}");
    }
    let on_a = get_ok(&a, "/api/tasks?limit=100").await;
    let on_b = get_ok(&b, "/api/tasks?limit=100").await;
    assert_eq!(on_a["total"], 7, "{on_a}");
    assert_eq!(on_a["tasks"], on_b["tasks"]);
    // Each run happened on exactly one of them.
    assert_eq!(a.calls().len() + b.calls().len(), 7);
}

#[tokio::test]
async fn two_hundred_tasks_across_two_instances_run_exactly_once_within_the_limits() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    // Each instance may run 3 at once, the two together only 4.
    let limits = json!({"taskQueue": {"concurrency": 3, "globalConcurrency": 4}});
    let a = instance(&url, &ns, limits.clone()).await;
    let b = instance(&url, &ns, limits).await;

    let mut ids = Vec::new();
    for i in 0..200 {
        let app = if i % 2 == 0 { &a } else { &b };
        // A few ms each, so runs overlap and the limits are exercised.
        ids.push(submit_async(app, &format!("[[fake:latency_ms=15]] job {i}")).await);
    }
    let done = poll_until(Duration::from_secs(90), || {
        let n = a.calls().len() + b.calls().len();
        (n >= 200).then_some(n)
    })
    .await;
    assert!(done.is_some(), "not all 200 ran");
    for id in &ids {
        let t = wait_final(&a, id, Duration::from_secs(10)).await;
        assert_eq!(t["status"], "completed", "{t}");
    }

    // Exactly once: every prompt ran one time, on one instance.
    let (calls_a, calls_b) = (a.calls(), b.calls());
    let mut runs: HashMap<String, usize> = HashMap::new();
    for c in calls_a.iter().chain(&calls_b) {
        *runs
            .entry(c["prompt"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(runs.len(), 200, "distinct prompts run");
    assert!(runs.values().all(|&n| n == 1), "a task ran twice: {runs:?}");
    // Both took part, and the limits held.
    assert!(
        !calls_a.is_empty() && !calls_b.is_empty(),
        "one instance ran nothing: {} / {}",
        calls_a.len(),
        calls_b.len()
    );
    assert!(most_alive_at_once(&calls_a) <= 3, "A above its concurrency");
    assert!(most_alive_at_once(&calls_b) <= 3, "B above its concurrency");
    let all: Vec<Value> = calls_a.iter().chain(&calls_b).cloned().collect();
    let peak = most_alive_at_once(&all);
    assert!(peak <= 4, "{peak} runs at once across instances, cap 4");
    assert!(
        peak >= 2,
        "runs never overlapped ({peak}): the test proves nothing"
    );
}

#[tokio::test]
async fn a_turn_of_a_busy_session_is_refused_on_the_other_instance() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    // Sessions run in one project directory that every instance has (as in a deployment).
    let shared = tempfile::tempdir().expect("tempdir");
    let project = shared.path().canonicalize().expect("canonical");
    let same_project = json!({
        "defaultProjectPath": project.display().to_string(),
        "allowedProjectRoots": [project.display().to_string()],
    });
    let a = instance(&url, &ns, same_project.clone()).await;
    let b = instance(&url, &ns, same_project).await;
    let (s, first) = json_body(
        a.post_claude(json!({"prompt": "[[fake:hang]] long turn", "async": true}))
            .await,
    )
    .await;
    assert_eq!(s, 202, "{first}");
    let sid = first["session_id"]
        .as_str()
        .expect("session id")
        .to_string();
    let tid = first["task_id"].as_str().expect("task id").to_string();
    // Wait until it runs, on whichever instance claimed it.
    let started = poll_until(Duration::from_secs(10), || {
        let s: Vec<Value> = a.starts().into_iter().chain(b.starts()).collect();
        (!s.is_empty()).then_some(s)
    })
    .await
    .expect("the first turn started");
    // A sync turn on B while the first runs somewhere: 409, as on one instance.
    let (s, busy) = json_body(
        b.post_json(
            &format!("/api/sessions/{sid}/continue"),
            &json!({"prompt": "too soon"}),
        )
        .await,
    )
    .await;
    assert_error(s, &busy, 409, "session_busy");
    // Cancelled through B, wherever it runs: it ends, and its process is killed.
    let resp = b
        .client
        .delete(b.url(&format!("/api/tasks/{tid}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 200);
    let t = wait_final(&a, &tid, Duration::from_secs(10)).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    let starts: Vec<Value> = a.starts().into_iter().chain(b.starts()).collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    let pgid = started[0]["pgid"].as_i64().expect("pgid");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(10)).await,
        "the cancelled run's processes live on"
    );
}

#[tokio::test]
async fn a_run_whose_instance_dies_ends_interrupted_through_the_other() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    let lease = json!({"taskQueue": {"leaseMs": 1000}});

    // Instance A is the daemon binary, so it can be killed with SIGKILL.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let project = root.join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    let calls = root.join("calls.jsonl");
    let port = free_port();
    let mut config = json!({
        "port": port,
        "claudePath": FAKE_CLAUDE,
        "claudeEnv": {
            "CLAUDE_CONFIG_DIR": root.join("claude-home").display().to_string(),
            "FAKE_CLAUDE_LOG": calls.display().to_string(),
        },
        "defaultProjectPath": project.display().to_string(),
        "allowedProjectRoots": [root.display().to_string()],
        "pidFile": root.join("server.pid").display().to_string(),
        "logFile": root.join("server.log").display().to_string(),
    });
    actors::config::merge::merge_patch(&mut config, &cluster_config(&url, &ns, lease.clone()));
    let config_path = root.join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let mut a = start_daemon(&config_path, &root, port).await;

    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/claude", a.base))
        .json(&json!({"prompt": "[[fake:hang]] runs on A", "async": true}))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.expect("json")["task_id"]
        .as_str()
        .expect("id")
        .to_string();
    poll_until(Duration::from_secs(10), || {
        read_log(&calls)
            .into_iter()
            .find(|c| c["event"] == "start" && c["argv"] != json!(["--version"]))
    })
    .await
    .expect("the run started on A");

    // B joins, then A dies in the middle of the run.
    let b = instance(&url, &ns, lease).await;
    let t = get_ok(&b, &format!("/api/tasks/{id}")).await;
    assert_eq!(t["task"]["status"], "processing", "{t}");
    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();

    let t = wait_final(&b, &id, Duration::from_secs(15)).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "interrupted", "{t}");
    // Never run twice: B did not start it again.
    assert!(b.starts().is_empty(), "{:?}", b.starts());
    // B keeps serving.
    let (s, ok) = json_body(b.post_claude(json!({"prompt": "after"})).await).await;
    assert_eq!(s, 200, "{ok}");
}

#[tokio::test]
async fn a_redis_outage_answers_503_then_full_service_and_loses_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut server = RedisServer::start_persistent(data.path()).unwrap_or_else(|e| panic!("{e}"));
    let port = server.port();
    let url = server.url();
    let ns = test_namespace();
    let app = instance(&url, &ns, json!({})).await;

    // A run that is going when Redis goes away, and one done before.
    let (s, before) = json_body(app.post_claude(json!({"prompt": "before"})).await).await;
    assert_eq!(s, 200, "{before}");
    let slow = submit_async(&app, "[[fake:latency_ms=2500]] spans the outage").await;
    app.wait_for_starts(2).await;
    server.kill();

    // Meanwhile: requests that need storage get 503 storage_unavailable, /health says so.
    let (s, body) = json_body(app.get("/api/tasks").await).await;
    assert_error(s, &body, 503, "storage_unavailable");
    let (s, health) = json_body(app.get("/health").await).await;
    assert_eq!(s, 503, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");

    let _back =
        RedisServer::start_on_persistent(port, data.path()).unwrap_or_else(|e| panic!("{e}"));
    // Full service again without a restart, and the run that spanned the outage was not
    // killed: its result is stored.
    let t = wait_final(&app, &slow, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(
        t["result"]
            .as_str()
            .unwrap_or_default()
            .contains("spans the outage"),
        "{t}"
    );
    let health = get_ok(&app, "/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    let (s, after) = json_body(app.post_claude(json!({"prompt": "after"})).await).await;
    assert_eq!(s, 200, "{after}");
    let list = get_ok(&app, "/api/tasks").await;
    assert_eq!(list["total"], 3, "{list}");
}
