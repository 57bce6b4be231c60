//! Every failure is JSON with the contract's status and code.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let app = spawn_app().await;
    let (s, b) = json_body(app.get("/nope").await).await;
    assert_error(s, &b, 404, "route_not_found");
    let (s, b) = json_body(app.get("/api/claude").await).await;
    assert_error(s, &b, 405, "method_not_allowed");
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_json_wrong_type_and_too_large() {
    let app =
        spawn_app_with(json!({"limits": {"maxBodyBytes": 4096, "maxPromptBytes": 1024}})).await;
    let url = app.url("/api/claude");
    let resp = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 400, "invalid_json");

    let resp = app
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("send");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 415, "unsupported_media_type");

    let resp = app.client.post(&url).body("{}").send().await.expect("send");
    let (s, b) = json_body(resp).await;
    assert_error(s, &b, 415, "unsupported_media_type");

    let big = json!({"prompt": "x".repeat(5000)});
    let (s, b) = json_body(app.post_claude(big).await).await;
    assert_error(s, &b, 413, "payload_too_large");

    let prompt_over = json!({"prompt": "x".repeat(2000)});
    let (s, b) = json_body(app.post_claude(prompt_over).await).await;
    assert_error(s, &b, 413, "payload_too_large");
    assert_eq!(b["details"]["field"], "prompt");
    app.shutdown().await;
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "hi", "async": "false"}), "async"),
        (json!({"prompt": "hi", "priority": "9"}), "priority"),
        (json!({"prompt": "hi", "priority": 9.5}), "priority"),
        (json!({"prompt": "hi", "priority": 11}), "priority"),
        (json!({"prompt": "hi", "priority": 0}), "priority"),
        (
            json!({"prompt": "hi", "max_budget_usd": "0"}),
            "max_budget_usd",
        ),
        (
            json!({"prompt": "hi", "max_budget_usd": 0}),
            "max_budget_usd",
        ),
        (
            json!({"prompt": "hi", "max_budget_usd": -1.5}),
            "max_budget_usd",
        ),
        (json!({"prompt": "hi", "max_turns": 0}), "max_turns"),
        (
            json!({"prompt": "hi", "timeout_ms": 99999999999u64}),
            "timeout_ms",
        ),
        (json!({"prompt": "hi", "timeout_ms": 999}), "timeout_ms"),
        (json!({"prompt": "hi", "stream": "yes"}), "stream"),
        (json!({"prompt": "hi", "metadata": [1, 2]}), "metadata"),
        (
            json!({"prompt": "hi", "metadata": {"big": "x".repeat(17000)}}),
            "metadata",
        ),
        (
            json!({"prompt": "hi", "allowed_tools": "Bash"}),
            "allowed_tools",
        ),
        (
            json!({"prompt": "hi", "session_id": "not-a-uuid"}),
            "session_id",
        ),
        (
            json!({"prompt": "hi", "permission_mode": "yolo"}),
            "permission_mode",
        ),
        (json!({"prompt": 42}), "prompt"),
    ];
    for (body, field) in cases {
        let (s, b) = json_body(app.post_claude(body.clone()).await).await;
        assert_error(s, &b, 400, "validation_error");
        assert_eq!(b["details"]["field"], json!(field), "body {body} → {b}");
    }
    assert!(
        app.calls().is_empty(),
        "no run may start for an invalid request"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn project_path_rules() {
    let app = spawn_app().await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "project_path": "/definitely/not/here"}))
            .await,
    )
    .await;
    assert_error(s, &b, 400, "invalid_project_path");
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "project_path": "/tmp"}))
            .await,
    )
    .await;
    assert_error(s, &b, 403, "forbidden_path");
    // A symlink inside the root that points outside it is outside.
    let link = app.project.join("escape");
    std::os::unix::fs::symlink("/", &link).expect("symlink");
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "project_path": link}))
            .await,
    )
    .await;
    assert_error(s, &b, 403, "forbidden_path");
    let dotdot = format!("{}/../../..", app.project.display());
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "project_path": dotdot}))
            .await,
    )
    .await;
    assert_error(s, &b, 403, "forbidden_path");
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "mcp_config": "/etc/passwd"}))
            .await,
    )
    .await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "permission_mode": "bypassPermissions"}))
            .await,
    )
    .await;
    assert_error(s, &b, 403, "forbidden");
    // Like every field error, the refusal names its field.
    assert_eq!(b["details"]["field"], "permission_mode", "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap_or("")
            .contains("permission_mode"),
        "{b}"
    );
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "hi", "webhook_url": "ftp://x"}))
            .await,
    )
    .await;
    assert_error(s, &b, 400, "invalid_webhook_url");
    app.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_host_without_keys_refuses_to_start() {
    let result =
        build_with_config(json!({"host": "0.0.0.0", "port": 0, "storageType": "memory"})).await;
    let err = result.err().expect("refuses to start").to_string();
    assert!(
        err.contains("auth.apiKeys") && err.contains("allowAnonymous"),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_config_names_the_key() {
    let result = build_with_config(json!({"taskQueue": {"concurrency": "three"}})).await;
    let err = format!("{:#}", result.err().expect("refuses to start"));
    assert!(err.contains("taskQueue.concurrency"), "{err}");
}

/// Build (not run) the application on a config file holding `config`, in a clean environment.
async fn build_with_config(
    config: serde_json::Value,
) -> anyhow::Result<claude_code_server::app::Application> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("write");
    claude_code_server::app::Application::build(claude_code_server::app::Options {
        config_path: path,
        env: Some(actors::config::load::Environment {
            home: Some(dir.path().to_path_buf()),
            cwd: dir.path().to_path_buf(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
}
