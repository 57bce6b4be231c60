//! Sync runs through the fake CLI: what the daemon sends it, and how each outcome is answered.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_sync_run_answers_with_the_result_and_calls_the_cli_correctly() {
    let app = spawn_app().await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "hello there"})).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["success"], true);
    assert_eq!(b["result"], "fake reply #1 to: hello there");
    assert_eq!(b["is_error"], false);
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert!(b["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{b}");
    assert!(
        b["usage"]["input_tokens"].as_u64().is_some_and(|t| t > 0),
        "{b}"
    );
    assert_eq!(b["num_turns"], 1);
    assert!(
        b["session_id"].as_str().is_some_and(|s| s.len() == 36),
        "{b}"
    );
    let task_id = b["task_id"].as_str().expect("task id").to_string();

    let calls = app.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    let args = argv(call);
    for want in [
        "-p",
        "--output-format=stream-json",
        "--verbose",
        "--include-partial-messages",
        "--model=claude-sonnet-4-5",
        "--max-budget-usd=10",
    ] {
        assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.contains("hello there")),
        "the prompt must not be on argv: {args:?}"
    );
    assert!(
        args.iter()
            .filter(|a| a.starts_with("--"))
            .all(|a| a.contains('=') || !needs_value(a)),
        "{args:?}"
    );
    assert_eq!(call["stdin"], "hello there");
    assert_eq!(call["stdin_closed"], true);
    assert_eq!(call["cwd"], json!(app.project.display().to_string()));
    assert_eq!(call["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
    assert!(
        call["env"].get("IS_SANDBOX").is_none_or(Value::is_null),
        "{call}"
    );

    let (s, t) = json_body(app.get(&format!("/api/tasks/{task_id}")).await).await;
    assert_eq!(s, 200);
    assert_eq!(t["task"]["status"], "completed");
    assert_eq!(t["task"]["mode"], "sync");
    assert_eq!(t["task"]["attempts"], 1);
    assert_eq!(t["task"]["priority"], 10);
    app.shutdown().await;
}

fn needs_value(flag: &str) -> bool {
    !matches!(
        flag,
        "--verbose" | "--include-partial-messages" | "--fork-session" | "--strict-mcp-config"
    )
}

#[tokio::test]
async fn request_options_reach_the_cli_as_flag_equals_value() {
    let app = spawn_app().await;
    let body = json!({
        "prompt": "opts",
        "model": "opus",
        "system_prompt": "be brief",
        "max_turns": 3,
        "max_budget_usd": 0.5,
        "allowed_tools": ["Bash", "Read"],
        "disallowed_tools": ["Write"],
        "permission_mode": "plan",
        "metadata": {"ticket": 7}
    });
    let (s, b) = json_body(app.post_claude(body).await).await;
    assert_eq!(s, 200, "{b}");
    let args = argv(&app.calls()[0]);
    for want in [
        "--model=opus",
        "--system-prompt=be brief",
        "--max-turns=3",
        "--max-budget-usd=0.5",
        "--allowedTools=Bash,Read",
        "--disallowedTools=Write",
        "--permission-mode=plan",
    ] {
        assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn prompts_starting_with_dash_or_slash_are_plain_text() {
    let app = spawn_app().await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "--help me"})).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #1 to: --help me");
    let (s, b) = json_body(app.post_claude(json!({"prompt": "/cost please"})).await).await;
    assert_eq!(s, 200, "{b}");
    let calls = app.calls();
    assert_eq!(calls[0]["stdin"], "--help me");
    // A leading space keeps the CLI from running a slash command.
    assert_eq!(calls[1]["stdin"], " /cost please");
    for call in &calls {
        assert!(!argv(call)
            .iter()
            .any(|a| a.contains("help me") || a.contains("cost please")));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_one_mebibyte_prompt_and_a_two_megabyte_reply() {
    let app = spawn_app().await;
    let prompt = "p".repeat(1024 * 1024);
    let (s, b) = json_body(app.post_claude(json!({"prompt": prompt})).await).await;
    assert_eq!(s, 200, "{}", b["error"]);
    assert_eq!(
        app.calls()[0]["stdin"].as_str().map(str::len),
        Some(1024 * 1024)
    );

    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:big=2000000]] big", "max_budget_usd": 100}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{}", b["error"]);
    assert_eq!(b["result"].as_str().map(str::len), Some(2_000_000));
    app.shutdown().await;
}

#[tokio::test]
async fn each_failure_class_has_its_status_and_code() {
    let app = spawn_app().await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"prompt": "[[fake:api_error=500]] x"}),
            502,
            "cli_api_error",
        ),
        (
            json!({"prompt": "[[fake:api_error=529]] x"}),
            502,
            "cli_api_error",
        ),
        (
            json!({"prompt": "[[fake:api_error=401]] x"}),
            502,
            "cli_not_authenticated",
        ),
        (
            json!({"prompt": "[[fake:not_logged_in]] x"}),
            502,
            "cli_not_authenticated",
        ),
        (
            json!({"prompt": "[[fake:tool_loop]] x", "max_turns": 1, "allowed_tools": ["Bash"]}),
            422,
            "max_turns_exceeded",
        ),
        (
            json!({"prompt": "[[fake:cost=5]] x", "max_budget_usd": 0.01}),
            429,
            "budget_exceeded",
        ),
        (
            json!({"prompt": "[[fake:crash=3]] [[fake:stderr=boom happened]] x"}),
            502,
            "cli_crashed",
        ),
    ];
    for (body, status, code) in cases {
        let (s, b) = json_body(app.post_claude(body.clone()).await).await;
        assert_error(s, &b, status, code);
        assert!(b["task_id"].as_str().is_some(), "{b}");
        let (_, t) = json_body(
            app.get(&format!(
                "/api/tasks/{}",
                b["task_id"].as_str().unwrap_or("")
            ))
            .await,
        )
        .await;
        assert_eq!(t["task"]["status"], "failed", "{body} → {t}");
        assert_eq!(t["task"]["error"]["code"], json!(code));
    }
    // API errors carry the model API's status; crashes carry the exit code and stderr.
    let (_, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:api_error=529]] x"}))
            .await,
    )
    .await;
    assert_eq!(b["details"]["api_error_status"], 529, "{b}");
    let (_, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:crash=3]] [[fake:stderr=boom happened]] x"}))
            .await,
    )
    .await;
    assert_eq!(b["details"]["exit_code"], 3, "{b}");
    assert!(
        b["details"]["stderr_tail"]
            .as_str()
            .is_some_and(|t| t.contains("boom happened")),
        "{b}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_garbage_line_in_the_output_is_ignored() {
    // Not real CLI behaviour: parser robustness.
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "[[fake:garbage]] ok"}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], "fake reply #1 to: ok");
    app.shutdown().await;
}

#[tokio::test]
async fn a_missing_cli_is_a_502() {
    let app = spawn_app_with(json!({"claudePath": "/nonexistent/claude"})).await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "hi"})).await).await;
    assert_error(s, &b, 502, "cli_unavailable");
    app.shutdown().await;
}

#[tokio::test]
async fn async_true_answers_202_and_the_task_runs() {
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "later", "async": true, "priority": 7}))
            .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["status"], "pending");
    assert_eq!(b["priority"], 7);
    let id = b["task_id"].as_str().expect("id").to_string();
    let last = app.wait_for_task(&id, |t| t["status"] == "completed").await;
    assert_eq!(last["status"], "completed", "{last}");
    assert_eq!(last["result"], "fake reply #1 to: later");
    assert_eq!(last["mode"], "async");
    let (s, b) = json_body(app.get("/api/tasks/not-a-uuid").await).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = json_body(
        app.get(&format!("/api/tasks/{}", uuid::Uuid::new_v4()))
            .await,
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    app.shutdown().await;
}
