//! Webhooks end to end: the daemon with the fake CLI, and a local receiver (a small axum server
//! on 127.0.0.1, port 0) whose answers a test scripts.
//!
//! The receiver is on loopback, so tests that deliver set `webhook.allowPrivateTargets`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use actors::webhook::sign::{timestamp_is_fresh, verify, SigningKey};

use crate::helpers::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the webhook body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    /// Statuses to answer first, in order; then `status`.
    script: Mutex<VecDeque<u16>>,
    status: AtomicU16,
    /// Never answer (the daemon's per-attempt timeout has to end the request).
    hang: AtomicBool,
    hits: Mutex<Vec<Hit>>,
    /// Requests answered (not counting hanging ones).
    answered: AtomicUsize,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    state.hits.lock().expect("hits").push(Hit {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    });
    if state.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let scripted = state.script.lock().expect("script").pop_front();
    let code = scripted.unwrap_or_else(|| state.status.load(Ordering::SeqCst));
    state.answered.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        state.status.store(200, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            state,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn script(&self, codes: &[u16]) {
        self.state
            .script
            .lock()
            .expect("script")
            .extend(codes.iter().copied());
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits").clone()
    }

    /// Wait (10 s at most) until `n` requests have arrived.
    async fn wait_for_hits(&self, n: usize) -> Vec<Hit> {
        poll_until(Duration::from_secs(10), || {
            let h = self.hits();
            (h.len() >= n).then_some(h)
        })
        .await
        .unwrap_or_else(|| panic!("{n} webhook request(s) did not arrive: {:?}", self.hits()))
    }
}

/// The daemon config for delivering to a loopback receiver quickly.
fn delivering(extra: Value) -> Value {
    let mut config = json!({"webhook": {
        "enabled": true,
        "allowPrivateTargets": true,
        "backoffMs": 50,
        "timeout": 2000,
        "retries": 3,
    }});
    actors::config::merge::merge_patch(&mut config, &extra);
    config
}

async fn deliveries(app: &TestApp, task_id: &str) -> (u16, Value) {
    json_body(app.get(&format!("/api/tasks/{task_id}/webhooks")).await).await
}

/// Poll the deliveries of a task until `pred` holds (10 s at most); returns the last list.
async fn wait_for_deliveries(
    app: &TestApp,
    task_id: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = deliveries(app, task_id).await;
        assert_eq!(s, 200, "{b}");
        let list = b["deliveries"].as_array().cloned().unwrap_or_default();
        assert_eq!(b["count"], json!(list.len()), "{b}");
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < end, "deliveries never matched: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sync run with a webhook URL; returns the task id.
async fn run_with_webhook(app: &TestApp, prompt: &str, url: &str) -> (u16, String) {
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": prompt, "webhook_url": url, "metadata": {"ticket": 42}}))
            .await,
    )
    .await;
    let id = b["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("task id in {b}"))
        .to_owned();
    (s, id)
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_delivery_is_signed_with_a_whsec_secret_and_carries_the_task() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = Receiver::start().await;
    let app = spawn_app_with(delivering(json!({"webhook": {"secret": SECRET}}))).await;
    let (s, task_id) = run_with_webhook(&app, "sign this", &receiver.url()).await;
    assert_eq!(s, 200);

    let hit = receiver.wait_for_hits(1).await.remove(0);
    let id = hit.header("webhook-id");
    assert!(id.starts_with("msg_"), "{:?}", hit.headers);
    let ts: i64 = hit
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!(timestamp_is_fresh(ts, now_secs(), 60));
    assert_eq!(hit.header("content-type"), "application/json");
    let key = SigningKey::from_secret(SECRET).expect("valid secret");
    assert!(
        verify(
            &key,
            id,
            ts,
            hit.body.as_bytes(),
            hit.header("webhook-signature")
        ),
        "signature {:?} does not verify",
        hit.header("webhook-signature")
    );
    let other = SigningKey::from_secret("whsec_c2VjcmV0LW9mLWFub3RoZXI=").expect("valid");
    assert!(!verify(
        &other,
        id,
        ts,
        hit.body.as_bytes(),
        hit.header("webhook-signature")
    ));

    let body = hit.json();
    assert_eq!(body["event"], "task.completed");
    assert!(
        body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let data = &body["data"];
    assert_eq!(data["task_id"], json!(task_id));
    assert_eq!(data["status"], "completed");
    assert_eq!(data["result"], "fake reply #1 to: sign this");
    assert_eq!(data["error"], Value::Null);
    assert_eq!(data["metadata"], json!({"ticket": 42}));
    assert!(data["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{body}");
    assert!(
        data["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{body}"
    );
    assert!(data["duration_ms"].is_u64(), "{body}");
    assert!(
        data["session_id"].as_str().is_some_and(|s| s.len() == 36),
        "{body}"
    );

    let list = wait_for_deliveries(&app, &task_id, |l| !l.is_empty()).await;
    assert_eq!(list.len(), 1);
    let d = &list[0];
    assert_eq!(d["webhook_id"], json!(id));
    assert_eq!(d["event"], "task.completed");
    assert_eq!(d["url"], json!(receiver.url()));
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["status_code"], 200);
    assert_eq!(d["error"], Value::Null);
    assert!(d["duration_ms"].is_u64() && d["at"].is_string(), "{d}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_run_is_announced_and_a_plain_secret_signs_with_its_bytes() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(delivering(
        json!({"webhook": {"secret": "plain text secret"}}),
    ))
    .await;
    let (s, task_id) = run_with_webhook(&app, "[[fake:api_error=500]] fail", &receiver.url()).await;
    assert_eq!(s, 502);
    let hit = receiver.wait_for_hits(1).await.remove(0);
    let ts: i64 = hit
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    let key = SigningKey::from_secret("plain text secret").expect("valid");
    assert!(verify(
        &key,
        hit.header("webhook-id"),
        ts,
        hit.body.as_bytes(),
        hit.header("webhook-signature")
    ));
    let body = hit.json();
    assert_eq!(body["event"], "task.failed");
    assert_eq!(body["data"]["task_id"], json!(task_id));
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["error"]["code"], "cli_api_error");
    app.shutdown().await;
}

#[tokio::test]
async fn an_unsigned_delivery_has_no_signature_header() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(delivering(json!({}))).await;
    run_with_webhook(&app, "no secret", &receiver.url()).await;
    let hit = receiver.wait_for_hits(1).await.remove(0);
    assert!(
        !hit.headers.contains_key("webhook-signature"),
        "{:?}",
        hit.headers
    );
    assert!(hit.header("webhook-id").starts_with("msg_"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_the_same_webhook_id_and_every_attempt_is_recorded() {
    let receiver = Receiver::start().await;
    receiver.script(&[500, 500]);
    let app = spawn_app_with(delivering(json!({"webhook": {"secret": "whsec_c2VjcmV0"}}))).await;
    let (_, task_id) = run_with_webhook(&app, "retry me", &receiver.url()).await;

    let list = wait_for_deliveries(&app, &task_id, |l| l.len() >= 3).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "one request per attempt");
    let id = hits[0].header("webhook-id").to_owned();
    assert!(
        hits.iter().all(|h| h.header("webhook-id") == id),
        "webhook-id changed"
    );
    assert!(
        hits.iter().all(|h| h.body == hits[0].body),
        "the body changed between attempts"
    );
    // Backoff: the first retry at least backoffMs later, the second at least twice that.
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(50));
    assert!(hits[2].at - hits[1].at >= Duration::from_millis(100));

    let summary: Vec<(u64, Value, bool)> = list
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap_or(0),
                d["status_code"].clone(),
                d["error"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, json!(500), false),
            (2, json!(500), false),
            (3, json!(200), true),
        ]
    );
    assert!(list.iter().all(|d| d["webhook_id"] == json!(id)));
    app.shutdown().await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_delay_the_next_run() {
    let receiver = Receiver::start().await;
    receiver.state.hang.store(true, Ordering::SeqCst);
    // One run at a time: if the webhook held the slot, the second run could not start.
    let app = spawn_app_with(delivering(json!({
        "taskQueue": {"concurrency": 1},
        "webhook": {"timeout": 30000, "retries": 0},
    })))
    .await;
    let (s, first) = run_with_webhook(&app, "first", &receiver.url()).await;
    assert_eq!(s, 200);
    receiver.wait_for_hits(1).await;

    let started = Instant::now();
    let (s, b) = json_body(app.post_claude(json!({"prompt": "second"})).await).await;
    assert_eq!(s, 200, "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // ... while the first task's webhook is still hanging: not answered, not yet recorded.
    assert_eq!(receiver.state.answered.load(Ordering::SeqCst), 0);
    let (_, d) = deliveries(&app, &first).await;
    assert_eq!(d["count"], 0, "{d}");
    // Shutdown stops the hanging delivery instead of waiting 30 s for it.
    let stopping = Instant::now();
    app.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn private_targets_are_refused_at_creation_unless_allowed() {
    let app = spawn_app().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://10.0.0.1/hook",
        "http://2130706433/hook",
    ] {
        let (s, b) = json_body(
            app.post_claude(json!({"prompt": "hi", "async": true, "webhook_url": url}))
                .await,
        )
        .await;
        assert_error(s, &b, 400, "invalid_webhook_url");
        assert_eq!(b["details"]["field"], "webhook_url", "{url}: {b}");
        assert!(
            b["error"]
                .as_str()
                .is_some_and(|e| e.contains("webhook.allowPrivateTargets")),
            "{url}: {b}"
        );
    }
    // A name is only resolved at delivery (webhooks are off here: nothing is sent).
    let (s, b) = json_body(
        app.post_claude(
            json!({"prompt": "hi", "async": true, "webhook_url": "https://hooks.example.com/x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    app.shutdown().await;

    let app = spawn_app_with(json!({"webhook": {"allowPrivateTargets": true}})).await;
    let (s, b) = json_body(
        app.post_claude(
            json!({"prompt": "hi", "async": true, "webhook_url": "http://127.0.0.1:9/hook"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_name_resolving_to_a_private_address_is_refused_at_delivery() {
    let receiver = Receiver::start().await;
    // `defaultUrl` is not checked per task; `localhost` resolves to loopback when delivered.
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let app = spawn_app_with(json!({"webhook": {
        "enabled": true, "defaultUrl": url, "retries": 0, "backoffMs": 50,
    }}))
    .await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "hi"})).await).await;
    assert_eq!(s, 200, "{b}");
    let task_id = b["task_id"].as_str().expect("task id").to_owned();
    let list = wait_for_deliveries(&app, &task_id, |l| !l.is_empty()).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status_code"], Value::Null);
    assert_eq!(list[0]["url"], json!(url));
    let error = list[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("loopback") && error.contains("allowPrivateTargets"),
        "{error}"
    );
    assert!(
        receiver.hits().is_empty(),
        "the blocked address was contacted"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn disabled_webhooks_send_nothing() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(delivering(json!({"webhook": {"enabled": false}}))).await;
    let (s, task_id) = run_with_webhook(&app, "quiet", &receiver.url()).await;
    assert_eq!(s, 200);
    // An absence can only be observed over a window: nothing arrives within 500 ms (a delivery
    // would have been made at once).
    let arrived = poll_until(Duration::from_millis(500), || {
        (!receiver.hits().is_empty()).then_some(())
    })
    .await;
    assert!(
        arrived.is_none(),
        "a webhook was sent: {:?}",
        receiver.hits()
    );
    let (_, d) = deliveries(&app, &task_id).await;
    assert_eq!(d["count"], 0, "{d}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_pending_delivery_resumes_after_a_restart() {
    let receiver = Receiver::start().await;
    receiver.state.status.store(503, Ordering::SeqCst);
    let config = delivering(json!({"webhook": {"retries": 50}}));
    let app = spawn_app_with(config.clone()).await;
    let (_, task_id) = run_with_webhook(&app, "survive", &receiver.url()).await;
    wait_for_deliveries(&app, &task_id, |l| l.len() >= 2).await;
    let dir = app.shutdown().await;

    let before = receiver.hits().len();
    receiver.state.status.store(200, Ordering::SeqCst);
    let app = spawn_app_in(dir, config).await;
    let list = wait_for_deliveries(&app, &task_id, |l| {
        l.last().is_some_and(|d| d["status_code"] == json!(200))
    })
    .await;
    let hits = receiver.hits();
    assert!(hits.len() > before, "nothing was sent after the restart");
    let id = hits[0].header("webhook-id");
    assert!(
        hits.iter().all(|h| h.header("webhook-id") == id),
        "one delivery, one webhook-id"
    );
    // Attempt numbers continue across the restart.
    let numbers: Vec<u64> = list
        .iter()
        .map(|d| d["attempt"].as_u64().unwrap_or(0))
        .collect();
    let expected: Vec<u64> = (1..=list.len() as u64).collect();
    assert_eq!(numbers, expected, "{list:?}");
    assert!(list[..list.len() - 1]
        .iter()
        .all(|d| d["status_code"] == json!(503)));
    app.shutdown().await;
}

#[tokio::test]
async fn deliveries_follow_task_tenancy() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(delivering(json!({"auth": {"apiKeys": [
        {"name": "a", "key": "key-a-0123456789"},
        {"name": "b", "key": "key-b-0123456789"},
    ]}})))
    .await;
    let resp = app
        .client
        .post(app.url("/api/claude"))
        .bearer_auth("key-a-0123456789")
        .json(&json!({"prompt": "mine", "webhook_url": receiver.url()}))
        .send()
        .await
        .expect("POST");
    let (s, b) = json_body(resp).await;
    assert_eq!(s, 200, "{b}");
    let task_id = b["task_id"].as_str().expect("task id").to_owned();
    receiver.wait_for_hits(1).await;
    let path = format!("/api/tasks/{task_id}/webhooks");
    let as_key = |key: &'static str| {
        let req = app.client.get(app.url(&path)).bearer_auth(key);
        async move { json_body(req.send().await.expect("GET")).await }
    };
    let (s, b) = as_key("key-b-0123456789").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = as_key("key-a-0123456789").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = json_body(
        app.client
            .get(app.url("/api/tasks/not-a-uuid/webhooks"))
            .bearer_auth("key-a-0123456789")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_error(s, &b, 404, "not_found");
    app.shutdown().await;
}
