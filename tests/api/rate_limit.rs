//! Rate limiting per API key (per IP when anonymous), its headers, and what is never limited.

use serde_json::{json, Value};

use crate::helpers::*;

const KEY_A: &str = "key-a-0123456789";
const KEY_B: &str = "key-b-0123456789";
const KEY_C: &str = "key-c-0123456789";

async fn get(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("GET")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn num(resp: &reqwest::Response, name: &str) -> u64 {
    header(resp, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} header: {:?}", resp.headers()))
}

fn three_a_minute() -> Value {
    json!({
        "rateLimit": {"enabled": true, "windowMs": 60000, "maxRequests": 3},
        "auth": {"apiKeys": [
            {"name": "a", "key": KEY_A},
            {"name": "b", "key": KEY_B},
            {"name": "c", "key": KEY_C, "rateLimit": {"maxRequests": 1, "windowMs": 10000}}
        ]}
    })
}

#[tokio::test]
async fn the_fourth_request_in_the_window_is_429_with_headers() {
    let app = spawn_app_with(three_a_minute()).await;
    for remaining in [2u64, 1, 0] {
        let resp = get(&app, "/api/statistics/summary", Some(KEY_A)).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(num(&resp, "ratelimit-limit"), 3);
        assert_eq!(num(&resp, "ratelimit-remaining"), remaining);
        assert_eq!(header(&resp, "ratelimit-policy").as_deref(), Some("3;w=60"));
        // GCRA: each request takes 20 s of the 60 s window until the bucket is full again.
        let reset = num(&resp, "ratelimit-reset");
        assert!((1..=60).contains(&reset), "{reset}");
    }
    // Any route under /api counts, whatever it answers (here a 404).
    let resp = get(&app, "/api/tasks/not-a-task", Some(KEY_A)).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after = num(&resp, "retry-after");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(num(&resp, "ratelimit-limit"), 3);
    assert_eq!(num(&resp, "ratelimit-remaining"), 0);
    assert!(num(&resp, "ratelimit-reset") >= retry_after);
    let (status, body) = json_body(resp).await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({
            "success": false,
            "error": "Too many requests, please try again later.",
            "code": "rate_limited",
            "retry_after": retry_after
        })
    );
    // A refused request does not hold the run path either.
    let resp = app
        .client
        .post(app.url("/api/claude"))
        .bearer_auth(KEY_A)
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 429);
    assert!(app.calls().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn keys_are_limited_separately_and_overrides_apply() {
    let app = spawn_app_with(three_a_minute()).await;
    for _ in 0..3 {
        assert_eq!(
            get(&app, "/api/statistics", Some(KEY_A))
                .await
                .status()
                .as_u16(),
            200
        );
    }
    assert_eq!(
        get(&app, "/api/statistics", Some(KEY_A))
            .await
            .status()
            .as_u16(),
        429
    );
    // b has its own counter (authentication runs before the limiter, so it counts by key,
    // not by the address both keys share).
    let resp = get(&app, "/api/statistics", Some(KEY_B)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(num(&resp, "ratelimit-remaining"), 2);

    // c's override: one request per 10 s.
    let resp = get(&app, "/api/statistics", Some(KEY_C)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(num(&resp, "ratelimit-limit"), 1);
    assert_eq!(num(&resp, "ratelimit-remaining"), 0);
    assert_eq!(header(&resp, "ratelimit-policy").as_deref(), Some("1;w=10"));
    let resp = get(&app, "/api/statistics", Some(KEY_C)).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert!((1..=10).contains(&num(&resp, "retry-after")));

    // A request without a valid key is refused by authentication and counts for nobody.
    let resp = get(&app, "/api/statistics", None).await;
    assert_eq!(resp.status().as_u16(), 401);
    let resp = get(&app, "/api/statistics", Some(KEY_B)).await;
    assert_eq!(num(&resp, "ratelimit-remaining"), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn health_is_never_limited() {
    let app = spawn_app_with(three_a_minute()).await;
    for _ in 0..10 {
        let resp = get(&app, "/health", None).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert!(header(&resp, "ratelimit-limit").is_none());
    }
    app.shutdown().await;
}

#[tokio::test]
async fn anonymous_callers_are_limited_by_address() {
    // No keys: the local anonymous caller, counted under its IP.
    let app = spawn_app_with(json!({"rateLimit": {"windowMs": 60000, "maxRequests": 2}})).await;
    for _ in 0..2 {
        assert_eq!(
            get(&app, "/api/statistics", None).await.status().as_u16(),
            200
        );
    }
    let resp = get(&app, "/api/statistics", None).await;
    assert_eq!(resp.status().as_u16(), 429);
    app.shutdown().await;
}

#[tokio::test]
async fn disabled_rate_limiting_adds_no_headers() {
    let app = spawn_app_with(json!({"rateLimit": {"enabled": false, "maxRequests": 1}})).await;
    for _ in 0..3 {
        let resp = get(&app, "/api/statistics", None).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert!(header(&resp, "ratelimit-limit").is_none());
    }
    app.shutdown().await;
}
