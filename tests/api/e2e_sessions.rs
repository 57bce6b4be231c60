//! Sessions end to end with the real CLI: the model must see the whole conversation at every
//! turn (the mock answers with the number of user turns it was sent and the first one).

use serde_json::json;

use crate::e2e_real_cli::spawn_real;
use crate::helpers::*;
use crate::mock_anthropic::MockAnthropic;

fn expected(turns: usize, first: &str) -> String {
    format!("mock reply: turns={turns} first=\"{first}\"")
}

#[tokio::test]
async fn e2e_a_five_turn_session_keeps_its_whole_history() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "first message ALPHA"}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], expected(1, "first message ALPHA"));
    let sid = b["session_id"].as_str().expect("session").to_string();
    let other = app.dir.path().join("somewhere-else");
    std::fs::create_dir_all(&other).expect("mkdir");
    for turn in 2..=5 {
        // Turn 3 names another directory: the session's own is used, so the CLI finds it.
        let body = if turn == 3 {
            json!({"prompt": format!("turn {turn}"), "session_id": sid, "project_path": other})
        } else {
            json!({"prompt": format!("turn {turn}"), "session_id": sid})
        };
        let (s, b) = json_body(app.post_claude(body).await).await;
        assert_eq!(s, 200, "turn {turn}: {b}");
        assert_eq!(
            b["result"],
            expected(turn, "first message ALPHA"),
            "turn {turn}"
        );
        assert_eq!(b["session_id"], json!(sid));
    }
    let (_, s) = json_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(s["session"]["messages_count"], 5, "{s}");
    // 2.1.197 reports cost per run: the session's total is five runs' worth, each the same.
    let total = s["session"]["total_cost_usd"].as_f64().expect("cost");
    let (_, tasks) = json_body(app.get(&format!("/api/tasks?session_id={sid}")).await).await;
    let first_cost = tasks["tasks"][4]["cost_usd"]
        .as_f64()
        .expect("first turn cost");
    assert!(first_cost > 0.0);
    assert!(
        (total - 5.0 * first_cost).abs() < 1e-9,
        "total {total} vs 5 × {first_cost}"
    );
    let (_, m) = json_body(app.get(&format!("/api/sessions/{sid}/messages")).await).await;
    let users: Vec<&str> = m["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|x| x["role"] == "user" && x["type"] == "text")
        .filter_map(|x| x["content"].as_str())
        .collect();
    assert_eq!(
        users,
        vec![
            "first message ALPHA",
            "turn 2",
            "turn 3",
            "turn 4",
            "turn 5"
        ],
        "{m}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_fork_copies_the_history_and_both_sessions_go_on() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "root BETA"})).await).await;
    let parent = b["session_id"].as_str().expect("session").to_string();
    let (s, f) = json_body(
        app.post_json(
            &format!("/api/sessions/{parent}/fork"),
            &json!({"prompt": "branch"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["result"], expected(2, "root BETA"));
    assert_eq!(f["forked_from"], json!(parent));
    let child = f["session_id"].as_str().expect("child").to_string();
    assert_ne!(child, parent);
    let (_, c) = json_body(
        app.post_json(
            &format!("/api/sessions/{child}/continue"),
            &json!({"prompt": "child 2"}),
        )
        .await,
    )
    .await;
    assert_eq!(c["result"], expected(3, "root BETA"), "{c}");
    // The parent did not get the child's turns.
    let (_, p) = json_body(
        app.post_json(
            &format!("/api/sessions/{parent}/continue"),
            &json!({"prompt": "parent 2"}),
        )
        .await,
    )
    .await;
    assert_eq!(p["result"], expected(2, "root BETA"), "{p}");
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_concurrent_turns_of_one_session_are_serialised() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (_, b) = json_body(app.post_claude(json!({"prompt": "start GAMMA"})).await).await;
    let sid = b["session_id"].as_str().expect("session").to_string();
    // Three async turns at once: they run one after the other and each sees the ones before.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, b) = json_body(
            app.post_json(
                &format!("/api/sessions/{sid}/continue"),
                &json!({"prompt": format!("async {i}"), "async": true}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 202, "{b}");
        ids.push(b["task_id"].as_str().expect("id").to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let t = app
            .wait_for_task(id, |t| {
                t["status"] == "completed" || t["status"] == "failed"
            })
            .await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["result"], json!(expected(i + 2, "start GAMMA")), "{t}");
    }
    app.shutdown().await;
}
