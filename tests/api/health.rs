use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_reports_storage_cli_and_queue() {
    let app = spawn_app().await;
    // The CLI version check runs beside start-up: wait for it.
    let body = poll_until_json(&app, |b| b["claude"]["version"].is_string()).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["storage"]["type"], "sqlite");
    assert_eq!(body["storage"]["ok"], true);
    assert_eq!(body["claude"]["version"], "2.1.197");
    assert_eq!(body["queue"]["concurrency"], 3);
    assert!(body["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('.')));
    app.shutdown().await;
}

#[tokio::test]
async fn health_is_503_when_the_cli_is_missing() {
    let app = spawn_app_with(serde_json::json!({"claudePath": "/nonexistent/claude"})).await;
    let body = poll_until_json(&app, |b| b["status"] == "degraded").await;
    assert_eq!(body["claude"]["ok"], false);
    let resp = app.get("/health").await;
    assert_eq!(resp.status().as_u16(), 503);
    app.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_changes_the_cli_checks_it_again() {
    let app = spawn_app().await;
    let body = poll_until_json(&app, |b| b["claude"]["version"].is_string()).await;
    assert_eq!(body["claude"]["version"], "2.1.197");
    // No keys configured: the local caller is the admin.
    let set_path = |path: &str| {
        app.client
            .patch(app.url("/api/config"))
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::json!({ "claudePath": path }).to_string())
            .send()
    };
    let resp = set_path("/nonexistent/claude").await.expect("PATCH");
    assert_eq!(resp.status().as_u16(), 200);
    let body = poll_until_json(&app, |b| b["claude"]["ok"] == false).await;
    assert_eq!(body["claude"]["ok"], false, "{body}");
    assert_eq!(body["claude"]["path"], "/nonexistent/claude");
    assert!(body["claude"]["version"].is_null(), "{body}");
    assert_eq!(body["status"], "degraded");
    // Back to the working CLI: found again.
    let resp = set_path(FAKE_CLAUDE).await.expect("PATCH");
    assert_eq!(resp.status().as_u16(), 200);
    let body = poll_until_json(&app, |b| b["claude"]["version"].is_string()).await;
    assert_eq!(body["claude"]["version"], "2.1.197", "{body}");
    assert_eq!(body["status"], "ok");
    app.shutdown().await;
}

#[tokio::test]
async fn config_is_shown_without_secrets() {
    let app = spawn_app_with(serde_json::json!({
        "auth": {"apiKeys": []},
        "webhook": {"secret": "whsec_dG9wLXNlY3JldA=="},
        "claudeEnv": {"ANTHROPIC_API_KEY": "sk-ant-very-secret"}
    }))
    .await;
    let (status, body) = json_body(app.get("/api/config").await).await;
    assert_eq!(status, 200);
    let text = body.to_string();
    assert!(!text.contains("whsec_dG9wLXNlY3JldA=="), "{text}");
    assert!(!text.contains("sk-ant-very-secret"), "{text}");
    assert_eq!(body["config"]["taskQueue"]["concurrency"], 3);
    app.shutdown().await;
}

async fn poll_until_json(app: &TestApp, pred: impl Fn(&Value) -> bool) -> Value {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = json_body(app.get("/health").await).await;
        if pred(&body) || std::time::Instant::now() > end {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
