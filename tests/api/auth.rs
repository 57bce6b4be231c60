//! API keys and tenancy.

use serde_json::{json, Value};

use crate::helpers::*;

const KEY_A: &str = "key-a-0123456789";
const KEY_B: &str = "key-b-0123456789";
const KEY_ADMIN: &str = "key-admin-0123456789";

async fn app_with_keys() -> TestApp {
    spawn_app_with(json!({"auth": {"apiKeys": [
        {"name": "a", "key": KEY_A},
        {"name": "b", "key": KEY_B},
        {"name": "root", "key": KEY_ADMIN, "admin": true}
    ]}}))
    .await
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    json_body(req.send().await.expect("send")).await
}

#[tokio::test]
async fn without_a_key_every_api_route_is_401_and_health_is_open() {
    let app = app_with_keys().await;
    use reqwest::Method;
    for (method, path) in [
        (Method::POST, "/api/claude"),
        (Method::GET, "/api/config"),
        (
            Method::GET,
            "/api/tasks/00000000-0000-4000-8000-000000000000",
        ),
        (Method::GET, "/api/anything"),
    ] {
        let (s, b) = call(
            &app,
            method.clone(),
            path,
            None,
            Some(json!({"prompt": "hi"})),
        )
        .await;
        assert_error(s, &b, 401, "unauthorized");
        let (s, b) = call(
            &app,
            method,
            path,
            Some("wrong-key-123456"),
            Some(json!({"prompt": "hi"})),
        )
        .await;
        assert_error(s, &b, 401, "unauthorized");
    }
    let resp = app.get("/health").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(app.calls().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_key_sees_only_its_own_tasks_and_admin_sees_all() {
    let app = app_with_keys().await;
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/claude",
        Some(KEY_A),
        Some(json!({"prompt": "mine"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let path = format!("/api/tasks/{}", b["task_id"].as_str().expect("task id"));
    let (s, _) = call(&app, reqwest::Method::GET, &path, Some(KEY_A), None).await;
    assert_eq!(s, 200);
    let (s, b2) = call(&app, reqwest::Method::GET, &path, Some(KEY_B), None).await;
    assert_error(s, &b2, 404, "not_found");
    let (s, _) = call(&app, reqwest::Method::GET, &path, Some(KEY_ADMIN), None).await;
    assert_eq!(s, 200);
    // X-API-Key works as well as Bearer.
    let resp = app
        .client
        .get(app.url(&path))
        .header("X-API-Key", KEY_A)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    app.shutdown().await;
}

#[tokio::test]
async fn config_needs_an_admin_key_and_shows_no_key() {
    let app = app_with_keys().await;
    let (s, b) = call(&app, reqwest::Method::GET, "/api/config", Some(KEY_A), None).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = call(
        &app,
        reqwest::Method::GET,
        "/api/config",
        Some(KEY_ADMIN),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let text = b.to_string();
    for k in [KEY_A, KEY_B, KEY_ADMIN] {
        assert!(!text.contains(k), "a key leaked: {text}");
    }
    assert_eq!(b["config"]["auth"]["apiKeys"][0]["name"], "a");
    app.shutdown().await;
}

/// Every operation under /api in the OpenAPI document (so a new route cannot be forgotten)
/// answers 401 without a key and with a wrong one, and runs nothing.
#[tokio::test]
async fn every_documented_api_route_needs_a_key() {
    let app = app_with_keys().await;
    let (_, doc) = json_body(app.get("/api/openapi.json").await).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        if !path.starts_with("/api/") || path == "/api/openapi.json" {
            continue;
        }
        let concrete = path.replace("{id}", "00000000-0000-4000-8000-000000000000");
        for method in item.as_object().expect("operations").keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            for key in [None, Some("wrong-key-123456")] {
                let (s, b) = call(
                    &app,
                    m.clone(),
                    &concrete,
                    key,
                    Some(json!({"prompt": "hi"})),
                )
                .await;
                assert_error(s, &b, 401, "unauthorized");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 25,
        "only {checked} operations documented under /api"
    );
    assert!(app.calls().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_key_cannot_see_or_continue_another_keys_session() {
    let app = app_with_keys().await;
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/claude",
        Some(KEY_A),
        Some(json!({"prompt": "mine"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let sid = b["session_id"].as_str().expect("session").to_string();
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/sessions/{sid}")),
        (
            reqwest::Method::GET,
            format!("/api/sessions/{sid}/messages"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/sessions/{sid}/continue"),
        ),
        (reqwest::Method::POST, format!("/api/sessions/{sid}/fork")),
        (reqwest::Method::DELETE, format!("/api/sessions/{sid}")),
    ] {
        let (s, b) = call(
            &app,
            method,
            &path,
            Some(KEY_B),
            Some(json!({"prompt": "theirs"})),
        )
        .await;
        assert_error(s, &b, 404, "not_found");
    }
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/claude",
        Some(KEY_B),
        Some(json!({"prompt": "x", "session_id": sid})),
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    let (_, l) = call(
        &app,
        reqwest::Method::GET,
        "/api/sessions",
        Some(KEY_B),
        None,
    )
    .await;
    assert_eq!(l["total"], 0, "{l}");
    let (_, l) = call(&app, reqwest::Method::GET, "/api/tasks", Some(KEY_B), None).await;
    assert_eq!(l["total"], 0, "{l}");
    let (_, l) = call(
        &app,
        reqwest::Method::GET,
        "/api/sessions",
        Some(KEY_ADMIN),
        None,
    )
    .await;
    assert_eq!(l["total"], 1, "{l}");
    assert_eq!(app.calls().len(), 1, "nothing ran for key B");
    app.shutdown().await;
}
