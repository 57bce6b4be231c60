//! Hot reload: the config file edited in place or replaced by rename (as editors save) is
//! applied without a restart; an invalid file changes nothing and is reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// A change must be in force within this long.
const DEADLINE: Duration = Duration::from_secs(2);

fn config_path(app: &TestApp) -> PathBuf {
    app.dir
        .path()
        .canonicalize()
        .expect("canonical tempdir")
        .join("config.json")
}

fn read_config(app: &TestApp) -> Value {
    let text = std::fs::read_to_string(config_path(app)).expect("read config");
    serde_json::from_str(&text).expect("config JSON")
}

/// The config file with `patch` merged in, written over the old one (truncate and write).
fn edit_in_place(app: &TestApp, patch: Value) {
    let mut doc = read_config(app);
    actors::config::merge::merge_patch(&mut doc, &patch);
    std::fs::write(
        config_path(app),
        serde_json::to_vec_pretty(&doc).expect("json"),
    )
    .expect("write config");
}

/// The config file with `patch` merged in, written to a temporary file renamed over it.
fn edit_by_rename(app: &TestApp, patch: Value) {
    let mut doc = read_config(app);
    actors::config::merge::merge_patch(&mut doc, &patch);
    let tmp = config_path(app).with_file_name(".config.json.swp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("json")).expect("write tmp");
    std::fs::rename(&tmp, config_path(app)).expect("rename over");
}

async fn health(app: &TestApp) -> Value {
    json_body(app.get("/health").await).await.1
}

/// Poll `/health` until `pred` holds; panics with the last body after `deadline`.
async fn wait_health(app: &TestApp, deadline: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let body = health(app).await;
        if pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < end,
            "not within {deadline:?}; /health: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue_concurrency(app: &TestApp) -> Value {
    let (status, body) = json_body(app.get("/api/tasks/queue/status").await).await;
    assert_eq!(status, 200, "{body}");
    body["queue"]["concurrency"].clone()
}

async fn rate_limit_header(app: &TestApp) -> String {
    let resp = app.get("/api/tasks").await;
    resp.headers()
        .get("ratelimit-limit")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn an_edit_in_place_applies_without_restart() {
    let app = spawn_app_with(json!({
        "taskQueue": {"concurrency": 2},
        "rateLimit": {"maxRequests": 50}
    }))
    .await;
    assert_eq!(queue_concurrency(&app).await, 2);
    assert_eq!(rate_limit_header(&app).await, "50");

    edit_in_place(
        &app,
        json!({"taskQueue": {"concurrency": 5}, "rateLimit": {"maxRequests": 7}}),
    );
    wait_health(&app, DEADLINE, |h| h["queue"]["concurrency"] == 5).await;
    assert_eq!(queue_concurrency(&app).await, 5);
    assert_eq!(rate_limit_header(&app).await, "7");
    app.shutdown().await;
}

#[tokio::test]
async fn a_save_by_rename_applies_and_the_watch_survives_it() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 2}})).await;
    edit_by_rename(
        &app,
        json!({"taskQueue": {"concurrency": 4}, "rateLimit": {"maxRequests": 9}}),
    );
    wait_health(&app, DEADLINE, |h| h["queue"]["concurrency"] == 4).await;
    assert_eq!(queue_concurrency(&app).await, 4);
    assert_eq!(rate_limit_header(&app).await, "9");
    // The directory is watched, not the replaced inode: a second save is seen too.
    edit_by_rename(&app, json!({"taskQueue": {"concurrency": 6}}));
    wait_health(&app, DEADLINE, |h| h["queue"]["concurrency"] == 6).await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_is_reported() {
    let app = spawn_app_with(json!({
        "taskQueue": {"concurrency": 2},
        "rateLimit": {"maxRequests": 50}
    }))
    .await;
    assert!(health(&app).await["config"]["last_reload_error"].is_null());

    let original = read_config(&app);
    // A value out of range, beside a valid change that must not be applied either.
    edit_in_place(
        &app,
        json!({"taskQueue": {"concurrency": 0}, "rateLimit": {"maxRequests": 7}}),
    );
    let h = wait_health(&app, DEADLINE, |h| {
        !h["config"]["last_reload_error"].is_null()
    })
    .await;
    let err = &h["config"]["last_reload_error"];
    assert_eq!(err["key"], "taskQueue.concurrency", "{err}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(h["queue"]["concurrency"], 2);
    assert_eq!(queue_concurrency(&app).await, 2);
    assert_eq!(rate_limit_header(&app).await, "50");

    // Not JSON at all.
    std::fs::write(config_path(&app), b"{\"taskQueue\": ").expect("write");
    wait_health(&app, DEADLINE, |h| {
        h["config"]["last_reload_error"]["key"] == "(file)"
    })
    .await;
    assert_eq!(rate_limit_header(&app).await, "50");

    // A good file clears the error and applies.
    let mut good = original;
    actors::config::merge::merge_patch(&mut good, &json!({"taskQueue": {"concurrency": 3}}));
    std::fs::write(
        config_path(&app),
        serde_json::to_vec_pretty(&good).expect("json"),
    )
    .expect("write config");
    let h = wait_health(&app, DEADLINE, |h| h["queue"]["concurrency"] == 3).await;
    assert!(h["config"]["last_reload_error"].is_null(), "{h}");
    app.shutdown().await;
}

#[tokio::test]
async fn restart_keys_keep_their_running_values() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 2}})).await;
    let data_dir = read_config(&app)["dataDir"].clone();
    edit_in_place(
        &app,
        json!({"port": 45678, "dataDir": "/nonexistent/elsewhere", "taskQueue": {"concurrency": 5}}),
    );
    wait_health(&app, DEADLINE, |h| h["queue"]["concurrency"] == 5).await;
    let (status, body) = json_body(app.get("/api/config").await).await;
    assert_eq!(status, 200);
    // What is in force, not what the file says.
    assert_eq!(body["config"]["port"], 0, "{body}");
    assert_eq!(body["config"]["dataDir"], data_dir, "{body}");
    assert_eq!(body["config"]["taskQueue"]["concurrency"], 5);
    // Still serving from the same storage.
    let (status, _) = json_body(app.get("/api/tasks").await).await;
    assert_eq!(status, 200);
    app.shutdown().await;
}
