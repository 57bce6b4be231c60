//! Sessions with the fake CLI: create/resume/fork flags, pinning, serialisation, accounting.

use serde_json::{json, Value};

use crate::helpers::*;

async fn continue_turn(app: &TestApp, sid: &str, body: Value) -> (u16, Value) {
    json_body(
        app.post_json(&format!("/api/sessions/{sid}/continue"), &body)
            .await,
    )
    .await
}

async fn session(app: &TestApp, sid: &str) -> Value {
    let (s, b) = json_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(s, 200, "{b}");
    b["session"].clone()
}

#[tokio::test]
async fn a_run_creates_a_session_and_later_turns_resume_it_in_its_own_directory() {
    let app = spawn_app().await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "one"})).await).await;
    assert_eq!(s, 200, "{b}");
    let sid = b["session_id"].as_str().expect("session id").to_string();
    assert_eq!(b["result"], "fake reply #1 to: one");

    // A turn through /api/claude with session_id, naming another directory: the session's is used.
    let other = app.dir.path().join("elsewhere");
    std::fs::create_dir_all(&other).expect("mkdir");
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "two", "session_id": sid, "project_path": other}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #2 to: two");
    assert_eq!(b["session_id"], json!(sid));
    let (s, b) = continue_turn(&app, &sid, json!({"prompt": "three"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #3 to: three");

    let calls = app.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        argv(&calls[0]).contains(&format!("--session-id={sid}")),
        "{:?}",
        argv(&calls[0])
    );
    for call in &calls[1..] {
        let a = argv(call);
        assert!(a.contains(&format!("--resume={sid}")), "{a:?}");
        assert!(!a.iter().any(|x| x.starts_with("--session-id")), "{a:?}");
        assert_eq!(call["cwd"], json!(app.project.display().to_string()));
    }
    let s = session(&app, &sid).await;
    assert_eq!(s["messages_count"], 3);
    assert_eq!(s["status"], "active");
    assert!(s["total_cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{s}");

    let (st, m) = json_body(app.get(&format!("/api/sessions/{sid}/messages")).await).await;
    assert_eq!(st, 200, "{m}");
    let texts: Vec<(String, String)> = m["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|x| x["type"] == "text")
        .map(|x| {
            (
                x["role"].as_str().unwrap_or("").to_string(),
                x["content"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        texts.iter().filter(|(r, _)| r == "user").count(),
        3,
        "{texts:?}"
    );
    assert_eq!(texts[0], ("user".to_string(), "one".to_string()));
    assert!(
        texts
            .iter()
            .any(|(r, t)| r == "assistant" && t == "fake reply #3 to: three"),
        "{texts:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn fork_copies_the_history_under_a_new_session() {
    let app = spawn_app().await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "base"})).await).await;
    let parent = b["session_id"].as_str().expect("sid").to_string();
    let (s, f) = json_body(
        app.post_json(
            &format!("/api/sessions/{parent}/fork"),
            &json!({"prompt": "branch"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{f}");
    let child = f["session_id"].as_str().expect("child").to_string();
    assert_ne!(child, parent);
    assert_eq!(f["forked_from"], json!(parent));
    assert_eq!(f["result"], "fake reply #2 to: branch");
    let a = argv(&app.calls()[1]);
    for want in [
        format!("--resume={parent}"),
        "--fork-session".into(),
        format!("--session-id={child}"),
    ] {
        assert!(a.contains(&want), "{want} missing from {a:?}");
    }
    let c = session(&app, &child).await;
    assert_eq!(c["metadata"]["forked_from"], json!(parent));
    assert_eq!(c["messages_count"], 1);
    // Both go on separately.
    let (_, b) = continue_turn(&app, &child, json!({"prompt": "child again"})).await;
    assert_eq!(b["result"], "fake reply #3 to: child again");
    let (_, b) = continue_turn(&app, &parent, json!({"prompt": "parent again"})).await;
    assert_eq!(b["result"], "fake reply #2 to: parent again");
    app.shutdown().await;
}

#[tokio::test]
async fn a_sync_turn_on_a_busy_session_is_409_and_async_turns_queue_in_order() {
    let app = spawn_app().await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "start"})).await).await;
    let sid = b["session_id"].as_str().expect("sid").to_string();
    // Three async turns, submitted in order; each takes a while.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, b) = continue_turn(
            &app,
            &sid,
            json!({"prompt": format!("[[fake:latency_ms=150]] async {i}"), "async": true}),
        )
        .await;
        assert_eq!(s, 202, "{b}");
        ids.push(b["task_id"].as_str().expect("id").to_string());
    }
    let (s, b) = continue_turn(&app, &sid, json!({"prompt": "sync now"})).await;
    assert_error(s, &b, 409, "session_busy");
    assert_eq!(b["session_id"], json!(sid));
    for (i, id) in ids.iter().enumerate() {
        let t = app.wait_for_task(id, |t| t["status"] == "completed").await;
        assert_eq!(
            t["result"],
            json!(format!("fake reply #{} to: async {i}", i + 2)),
            "{t}"
        );
    }
    // Never two CLI processes on the session at once.
    let calls = app.calls();
    assert!(
        calls.iter().all(|c| c["concurrent_session"] == false),
        "{calls:?}"
    );
    let mut spans: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c["started_at"].as_str().unwrap_or("").into(),
                c["ended_at"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "turns overlap: {spans:?}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn two_concurrent_sync_continues_never_run_together() {
    let app = spawn_app().await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "start"})).await).await;
    let sid = b["session_id"].as_str().expect("sid").to_string();
    let a = continue_turn(&app, &sid, json!({"prompt": "[[fake:latency_ms=300]] a"}));
    let b2 = continue_turn(&app, &sid, json!({"prompt": "[[fake:latency_ms=300]] b"}));
    let ((sa, ba), (sb, bb)) = tokio::join!(a, b2);
    let mut statuses = [sa, sb];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{ba} {bb}");
    assert_eq!(app.calls().len(), 2, "only one of the two turns ran");
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_budget_is_checked_before_the_turn_and_caps_it() {
    let app = spawn_app().await;
    let (_, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:cost=0.3]] pricey"}))
            .await,
    )
    .await;
    let sid = b["session_id"].as_str().expect("sid").to_string();
    assert_eq!(session(&app, &sid).await["total_cost_usd"], 0.3);
    let (s, b) = continue_turn(
        &app,
        &sid,
        json!({"prompt": "more", "max_budget_usd": 0.25}),
    )
    .await;
    assert_error(s, &b, 429, "budget_exceeded");
    assert_eq!(app.calls().len(), 1, "no run after the budget is spent");
    let (s, b) = continue_turn(&app, &sid, json!({"prompt": "more", "max_budget_usd": 1.0})).await;
    assert_eq!(s, 200, "{b}");
    let a = argv(&app.calls()[1]);
    assert!(
        a.contains(&"--max-budget-usd=0.7".to_string()),
        "the cap is what is left: {a:?}"
    );
    app.shutdown().await;
}

async fn three_turn_cost(version: &str) -> (f64, Vec<f64>) {
    let app = spawn_app_with(json!({"claudeEnv": {"FAKE_CLAUDE_VERSION": version}})).await;
    let (_, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:cost=0.1]] a"}))
            .await,
    )
    .await;
    let sid = b["session_id"].as_str().expect("sid").to_string();
    let mut costs = vec![b["cost_usd"].as_f64().expect("cost")];
    for p in ["b", "c"] {
        let (_, b) = continue_turn(
            &app,
            &sid,
            json!({"prompt": format!("[[fake:cost=0.1]] {p}")}),
        )
        .await;
        costs.push(b["cost_usd"].as_f64().expect("cost"));
    }
    let total = session(&app, &sid).await["total_cost_usd"]
        .as_f64()
        .expect("total");
    app.shutdown().await;
    (total, costs)
}

#[tokio::test]
async fn cost_is_counted_once_per_turn_for_both_cli_behaviours() {
    for version in ["2.1.197", "2.1.330"] {
        let (total, costs) = three_turn_cost(version).await;
        for c in &costs {
            assert!(
                (c - 0.1).abs() < 1e-9,
                "{version}: per-turn costs {costs:?}"
            );
        }
        assert!((total - 0.3).abs() < 1e-9, "{version}: total {total}");
    }
}

#[tokio::test]
async fn a_failed_first_turn_can_be_continued() {
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:api_error=500]] first"}))
            .await,
    )
    .await;
    assert_error(s, &b, 502, "cli_api_error");
    let sid = b["session_id"]
        .as_str()
        .expect("the error names the session")
        .to_string();
    let (s, b) = continue_turn(&app, &sid, json!({"prompt": "second"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(session(&app, &sid).await["messages_count"], 1);
    app.shutdown().await;
}

#[tokio::test]
async fn list_search_status_and_delete() {
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_json(
            "/api/sessions",
            &json!({"metadata": {"team": "Blue-Whale"}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let sid = b["session"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        b["session"]["project_path"],
        json!(app.project.display().to_string())
    );
    assert_eq!(b["session"]["messages_count"], 0);
    for _ in 0..2 {
        app.post_json("/api/sessions", &json!({})).await;
    }
    let (_, l) = json_body(app.get("/api/sessions?limit=2").await).await;
    assert_eq!(
        (l["count"].as_u64(), l["total"].as_u64()),
        (Some(2), Some(3)),
        "{l}"
    );
    let (_, l) = json_body(app.get("/api/sessions?limit=2&offset=2").await).await;
    assert_eq!(l["count"], 1);
    let (s, l) = json_body(app.get("/api/sessions?limit=5000").await).await;
    assert_error(s, &l, 400, "validation_error");
    let (_, f) = json_body(app.get("/api/sessions/search?q=blue-whale").await).await;
    assert_eq!(f["total"], 1, "{f}");
    assert_eq!(f["sessions"][0]["id"], json!(sid));

    let resp = app
        .client
        .patch(app.url(&format!("/api/sessions/{sid}/status")))
        .json(&json!({"status": "closed"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status().as_u16(), 200);
    let (_, l) = json_body(app.get("/api/sessions?status=closed").await).await;
    assert_eq!(l["total"], 1);
    let (s, b) = continue_turn(&app, &sid, json!({"prompt": "hi"})).await;
    assert_error(s, &b, 409, "session_closed");
    let resp = app
        .client
        .patch(app.url(&format!("/api/sessions/{sid}/status")))
        .json(&json!({"status": "gone"}))
        .send()
        .await
        .expect("patch");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 400, "validation_error");

    let (_, st) = json_body(app.get(&format!("/api/sessions/{sid}/stats")).await).await;
    assert_eq!(st["stats"]["tasks"]["total"], 0, "{st}");

    let resp = app
        .client
        .delete(app.url(&format!("/api/sessions/{sid}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 200);
    let (s, b) = json_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = json_body(app.get("/api/sessions/not-a-uuid").await).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "x", "session_id": uuid::Uuid::new_v4()}))
            .await,
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    app.shutdown().await;
}

#[tokio::test]
async fn pending_turns_survive_a_restart_and_run_in_order() {
    let app =
        spawn_app_with(json!({"taskQueue": {"concurrency": 1}, "shutdownGraceMs": 100})).await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "start"})).await).await;
    let sid = b["session_id"].as_str().expect("sid").to_string();
    // Block the only slot, then queue two turns behind it.
    let (_, blocker) = json_body(
        app.post_claude(json!({"prompt": "[[fake:hang]] block", "async": true}))
            .await,
    )
    .await;
    app.wait_for_starts(2).await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let (_, b) = continue_turn(
            &app,
            &sid,
            json!({"prompt": format!("queued {i}"), "async": true}),
        )
        .await;
        ids.push(b["task_id"].as_str().expect("id").to_string());
    }
    let dir = app.shutdown().await;
    let app = spawn_app_in(dir, json!({"taskQueue": {"concurrency": 1}})).await;
    for (i, id) in ids.iter().enumerate() {
        let t = app.wait_for_task(id, |t| t["status"] == "completed").await;
        assert_eq!(
            t["result"],
            json!(format!("fake reply #{} to: queued {i}", i + 2)),
            "{t}"
        );
    }
    let blocked = app
        .wait_for_task(blocker["task_id"].as_str().unwrap_or(""), |t| {
            t["status"] == "failed"
        })
        .await;
    assert_eq!(blocked["error"]["code"], "interrupted");
    app.shutdown().await;
}

#[tokio::test]
async fn forking_a_session_without_a_conversation_is_409() {
    let app = spawn_app().await;
    let (_, b) = json_body(app.post_json("/api/sessions", &json!({})).await).await;
    let sid = b["session"]["id"].as_str().expect("id").to_string();
    let (s, b) = json_body(
        app.post_json(
            &format!("/api/sessions/{sid}/fork"),
            &json!({"prompt": "x"}),
        )
        .await,
    )
    .await;
    assert_error(s, &b, 409, "invalid_state");
    assert!(app.calls().is_empty());
    app.shutdown().await;
}
