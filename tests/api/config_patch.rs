//! `PATCH /api/config`: a JSON merge patch (RFC 7396) over the config file, admin only,
//! validated, written atomically and applied like a hot reload.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN: &str = "key-admin-0123456789";
const USER: &str = "key-user-0123456789";

fn keys() -> Value {
    json!({"auth": {"apiKeys": [
        {"name": "root", "key": ADMIN, "admin": true},
        {"name": "user", "key": USER}
    ]}})
}

fn config_path(app: &TestApp) -> PathBuf {
    app.dir
        .path()
        .canonicalize()
        .expect("canonical tempdir")
        .join("config.json")
}

fn file_doc(app: &TestApp) -> Value {
    let text = std::fs::read_to_string(config_path(app)).expect("read config");
    serde_json::from_str(&text).expect("config JSON")
}

async fn patch(app: &TestApp, key: Option<&str>, body: &Value) -> (u16, Value, String) {
    let mut req = app
        .client
        .patch(app.url("/api/config"))
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("PATCH");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value, text)
}

async fn metrics_value(app: &TestApp, line_prefix: &str) -> f64 {
    let text = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_admin_patch_is_applied_written_and_never_echoes_secrets() {
    let app = spawn_app_with(keys()).await;
    let secret = "whsec_dG9wLXNlY3JldC1mb3ItdGVzdHM=";
    let (status, body, text) = patch(
        &app,
        Some(ADMIN),
        &json!({
            "taskQueue": {"concurrency": 4},
            "webhook": {"secret": secret},
            "rateLimit": {"maxRequests": 11}
        }),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["success"], true);
    assert_eq!(body["config"]["taskQueue"]["concurrency"], 4);
    assert_eq!(body["config"]["rateLimit"]["maxRequests"], 11);
    assert_eq!(body["restart_required"], json!([]));
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains(ADMIN) && !text.contains(USER), "{text}");

    // Written to the file, over what it held (the test paths are still there).
    let doc = file_doc(&app);
    assert_eq!(doc["taskQueue"]["concurrency"], 4);
    assert_eq!(doc["taskQueue"]["killGraceMs"], 2000);
    assert_eq!(doc["webhook"]["secret"], secret);
    assert_eq!(doc["claudePath"], FAKE_CLAUDE);

    // In force: the queue (its supervisor takes the new limit from its mailbox) and the
    // rate limiter.
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, h) = json_body(app.get("/health").await).await;
        if h["queue"]["concurrency"] == 4 {
            break;
        }
        assert!(Instant::now() < end, "{h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = app
        .client
        .get(app.url("/api/tasks"))
        .bearer_auth(USER)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.headers()["ratelimit-limit"], "11");

    // The watcher sees our own write, finds the same document in force and does nothing:
    // this is a check that nothing happens, so it needs some time to pass.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        metrics_value(&app, "ccs_config_reloads_total{result=\"applied\"}").await,
        1.0
    );
    let (_, h) = json_body(app.get("/health").await).await;
    assert!(h["config"]["last_reload_error"].is_null(), "{h}");
    app.shutdown().await;
}

#[tokio::test]
async fn null_restores_a_default_and_restart_keys_are_named() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 2}})).await;
    // No keys configured: the local caller is the admin.
    let (status, body, text) = patch(
        &app,
        None,
        &json!({"taskQueue": {"concurrency": null}, "port": 45679}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["config"]["taskQueue"]["concurrency"], 3);
    assert_eq!(body["restart_required"], json!(["port"]));
    // The effective config keeps the running port; the file holds the new one.
    assert_eq!(body["config"]["port"], 0);
    let doc = file_doc(&app);
    assert_eq!(doc["port"], 45679);
    assert!(doc["taskQueue"].get("concurrency").is_none(), "{doc}");
    app.shutdown().await;
}

#[tokio::test]
async fn only_admins_may_patch() {
    let app = spawn_app_with(keys()).await;
    let before = std::fs::read(config_path(&app)).expect("read");
    let body = json!({"taskQueue": {"concurrency": 5}});
    let (status, err, _) = patch(&app, Some(USER), &body).await;
    assert_error(status, &err, 403, "forbidden");
    let (status, err, _) = patch(&app, None, &body).await;
    assert_error(status, &err, 401, "unauthorized");
    assert_eq!(std::fs::read(config_path(&app)).expect("read"), before);
    app.shutdown().await;
}

#[tokio::test]
async fn an_invalid_patch_is_400_naming_the_key_and_changes_nothing() {
    let app = spawn_app_with(keys()).await;
    let before = std::fs::read(config_path(&app)).expect("read");

    let (status, err, _) = patch(
        &app,
        Some(ADMIN),
        &json!({"taskQueue": {"concurrency": 0}, "rateLimit": {"maxRequests": 5}}),
    )
    .await;
    assert_error(status, &err, 400, "validation_error");
    assert_eq!(err["details"]["field"], "taskQueue.concurrency", "{err}");

    let (status, err, _) = patch(&app, Some(ADMIN), &json!({"storageType": "mongo"})).await;
    assert_error(status, &err, 400, "validation_error");
    assert_eq!(err["details"]["field"], "storageType", "{err}");

    // A refused secret is named, never repeated.
    let (status, err, text) = patch(
        &app,
        Some(ADMIN),
        &json!({"webhook": {"secret": "whsec_$$hunter2$$"}}),
    )
    .await;
    assert_error(status, &err, 400, "validation_error");
    assert_eq!(err["details"]["field"], "webhook.secret", "{err}");
    assert!(!text.contains("hunter2"), "{text}");

    // A wrong type beside a new key: the key is not repeated.
    let (status, err, text) = patch(
        &app,
        Some(ADMIN),
        &json!({"auth": {"apiKeys": [{"name": "x", "key": "sk-new-secret-key", "admin": "yes"}]}}),
    )
    .await;
    assert_error(status, &err, 400, "validation_error");
    assert_eq!(err["details"]["field"], "auth.apiKeys[0].admin", "{err}");
    assert!(!text.contains("sk-new-secret-key"), "{text}");

    // Not JSON: 400 invalid_json.
    let resp = app
        .client
        .patch(app.url("/api/config"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/merge-patch+json")
        .body("{")
        .send()
        .await
        .expect("PATCH");
    let (status, err) = json_body(resp).await;
    assert_error(status, &err, 400, "invalid_json");

    assert_eq!(std::fs::read(config_path(&app)).expect("read"), before);
    let (_, cfg) = json_body(
        app.client
            .get(app.url("/api/config"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(cfg["config"]["taskQueue"]["concurrency"], 3);
    assert_eq!(cfg["config"]["rateLimit"]["maxRequests"], 100);
    app.shutdown().await;
}
