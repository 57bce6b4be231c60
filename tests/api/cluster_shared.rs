//! Two instances on one Redis namespace behave as one service for rate limits, budgets,
//! statistics, idempotency keys and webhooks (each delivered once, a dead instance's taken
//! over). Every test starts two daemons on this binary's redis-server, under a namespace of
//! its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;

use actors::store::redis::RedisStore;
use actors::store::Store;
use actors::webhook::actor::SWEEP_EVERY;
use actors::webhook::WebhookJob;

use crate::helpers::*;
use crate::redis_server::{shared_url, test_namespace};
use crate::statistics::{
    assert_admin_summary, five_runs_across, get, keys, run, KEY_A, KEY_ADMIN, KEY_B,
};

/// Two daemons sharing `ns` on the test redis-server, with `overrides` merged into both.
async fn pair(ns: &str, overrides: Value) -> (TestApp, TestApp) {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let mut config = json!({"storageType": "redis", "redisUrl": url, "redisNamespace": ns});
    actors::config::merge::merge_patch(&mut config, &overrides);
    let a = spawn_app_in(tempfile::tempdir().expect("tempdir"), config.clone()).await;
    let b = spawn_app_in(tempfile::tempdir().expect("tempdir"), config).await;
    (a, b)
}

#[tokio::test]
async fn requests_balanced_across_instances_are_limited_as_one() {
    let (a, b) = pair(
        &test_namespace(),
        json!({
            "rateLimit": {"enabled": true, "windowMs": 60000, "maxRequests": 4},
            "auth": {"apiKeys": [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]}
        }),
    )
    .await;
    let mut remaining = Vec::new();
    for (i, app) in [&a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let resp = app
            .client
            .get(app.url("/api/tasks"))
            .bearer_auth(KEY_A)
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no {name} on request {i}"))
        };
        remaining.push(header("ratelimit-remaining"));
        assert_eq!(header("ratelimit-policy"), "4;w=60");
        if i < 4 {
            assert_eq!(status, 200, "request {i}");
        } else {
            assert_eq!(status, 429, "request {i} passed: the instances count apart");
            let retry: u64 = header("retry-after").parse().expect("Retry-After");
            assert!((1..=15).contains(&retry), "{retry}");
        }
    }
    assert_eq!(remaining, ["3", "2", "1", "0", "0", "0"]);
    // Another key has its own count, on either instance.
    let resp = b
        .client
        .get(b.url("/api/tasks"))
        .bearer_auth(KEY_B)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_budget_spent_through_one_instance_refuses_runs_on_the_other() {
    let (a, b) = pair(
        &test_namespace(),
        json!({"auth": {"apiKeys": [
            {"name": "capped", "key": KEY_A, "dailyBudgetUsd": 0.5},
            {"name": "free", "key": KEY_B}
        ]}}),
    )
    .await;
    let (s, body) = run(&a, KEY_A, json!({"prompt": "[[fake:cost=0.6]] pricey"})).await;
    assert_eq!(s, 200, "{body}");
    // A adds the run to the shared counters as it ends, beside its answer (within
    // milliseconds): once B's statistics show it, B's budget check counts it too.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = get(&b, "/api/statistics/summary", KEY_A).await;
        if body["summary"]["costs"]["total_usd"] == json!(0.6) {
            break;
        }
        assert!(Instant::now() < end, "B never saw A's run: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, body) = run(&b, KEY_A, json!({"prompt": "again"})).await;
    assert_error(s, &body, 429, "budget_exceeded");
    assert_eq!(body["details"]["spent_today_usd"], json!(0.6), "{body}");
    // Refused, so run nowhere (either instance may have run the first one).
    let ran_again = a
        .calls()
        .iter()
        .chain(&b.calls())
        .any(|c| c["stdin"] == "again");
    assert!(!ran_again, "the refused run ran anyway");
    let (s, body) = run(&b, KEY_B, json!({"prompt": "mine"})).await;
    assert_eq!(s, 200, "{body}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn statistics_on_either_instance_count_the_runs_of_both() {
    let ns = test_namespace();
    let (a, b) = pair(&ns, keys()).await;
    five_runs_across(&[&a, &b]).await;
    assert!(!a.calls().is_empty() && !b.calls().is_empty());
    for app in [&a, &b] {
        let (s, body) = get(app, "/api/statistics/summary", KEY_ADMIN).await;
        assert_eq!(s, 200, "{body}");
        assert_admin_summary(&body["summary"]);
        let (_, body) = get(app, "/api/statistics/summary", KEY_B).await;
        assert_eq!(body["summary"]["requests"]["total"], 2, "{body}");
        let (_, body) = get(app, "/api/statistics/daily", KEY_ADMIN).await;
        assert_eq!(body["daily"][0]["total_requests"], 5, "{body}");
    }
    // The figures live in Redis, not in an instance: with both stopped, a new one has them.
    a.shutdown().await;
    b.shutdown().await;
    let (c, _d) = pair(&ns, keys()).await;
    let (_, body) = get(&c, "/api/statistics/summary", KEY_ADMIN).await;
    assert_admin_summary(&body["summary"]);
}

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    json_body(
        app.client
            .post(app.url("/api/claude"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST"),
    )
    .await
}

#[tokio::test]
async fn an_idempotency_key_runs_once_whichever_instance_gets_the_retry() {
    let (a, b) = pair(&test_namespace(), json!({})).await;
    let body = json!({"prompt": "once"});
    let (s1, b1) = post_with_key(&a, "retry-1", &body).await;
    let (s2, b2) = post_with_key(&b, "retry-1", &body).await;
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1["task_id"], b2["task_id"]);
    assert_eq!(b1["result"], b2["result"]);
    assert_eq!(a.calls().len() + b.calls().len(), 1);

    // Sent to both at the same moment: one task.
    let body = json!({"prompt": "[[fake:latency_ms=100]] dup", "async": true});
    let (x, y) = tokio::join!(
        post_with_key(&a, "race", &body),
        post_with_key(&b, "race", &body)
    );
    assert_eq!((x.0, y.0), (202, 202), "{x:?} {y:?}");
    assert_eq!(x.1["task_id"], y.1["task_id"]);
    let id = x.1["task_id"].as_str().expect("id").to_string();
    let t = a.wait_for_task(&id, |t| t["status"] == "completed").await;
    assert_eq!(t["status"], "completed", "{t}");
    let (_, list) = json_body(b.get("/api/tasks").await).await;
    assert_eq!(list["total"], 2, "{list}");
    a.shutdown().await;
    b.shutdown().await;
}

// ---- webhooks

/// A receiver that records each request's `webhook-id` and answers only once the test opens
/// its gate, so a delivery stays in progress as long as the test needs.
struct Receiver {
    addr: std::net::SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    gate: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type ReceiverState = (Arc<Mutex<Vec<String>>>, watch::Receiver<bool>);

async fn receive(State((hits, mut gate)): State<ReceiverState>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    hits.lock().expect("hits").push(id);
    let _ = gate.wait_for(|open| *open).await;
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Receiver {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (gate, gate_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("address");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state((hits.clone(), gate_rx));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            hits,
            gate,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().expect("hits").clone()
    }

    async fn wait_for_hits(&self, n: usize) -> Vec<String> {
        poll_until(Duration::from_secs(20), || {
            let h = self.hits();
            (h.len() >= n).then_some(h)
        })
        .await
        .unwrap_or_else(|| panic!("{n} webhook request(s) did not arrive: {:?}", self.hits()))
    }

    /// With a delivery held in progress: a whole sweep period (plus slack) passes, time enough
    /// for the other instance to pick the delivery from the outbox if it did not respect the
    /// claim; then no second request may have come.
    async fn assert_no_second_delivery_within_a_sweep(&self) {
        let second = poll_until(SWEEP_EVERY + Duration::from_secs(1), || {
            (self.hits().len() > 1).then_some(())
        })
        .await;
        assert!(second.is_none(), "delivered twice: {:?}", self.hits());
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

fn delivering() -> Value {
    json!({"webhook": {
        "enabled": true,
        "allowPrivateTargets": true,
        "backoffMs": 50,
        "timeout": 30000,
        "retries": 3,
    }})
}

async fn store_of(ns: &str) -> RedisStore {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    RedisStore::connect(&url, ns).await.expect("connect")
}

/// Wait until the shared outbox is empty: nothing is left for any instance to deliver.
async fn wait_outbox_empty(store: &RedisStore) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = store.pending_webhook_jobs().await.expect("outbox");
        if jobs.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "the outbox keeps {jobs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_run_s_webhook_arrives_once_with_two_instances_up() {
    let ns = test_namespace();
    let receiver = Receiver::start().await;
    let (a, b) = pair(&ns, delivering()).await;
    let (s, body) = json_body(
        a.post_claude(json!({"prompt": "hook", "webhook_url": receiver.url()}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let task_id = body["task_id"].as_str().expect("task id").to_string();

    let hits = receiver.wait_for_hits(1).await;
    receiver.assert_no_second_delivery_within_a_sweep().await;
    receiver.open();
    let store = store_of(&ns).await;
    wait_outbox_empty(&store).await;
    assert_eq!(receiver.hits(), hits);
    // One attempt, recorded in the shared store: B lists it too.
    let (s, body) = json_body(b.get(&format!("/api/tasks/{task_id}/webhooks")).await).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(
        body["deliveries"][0]["webhook_id"],
        json!(hits[0]),
        "{body}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_delivery_left_by_a_dead_instance_is_made_once_by_another() {
    let ns = test_namespace();
    let receiver = Receiver::start().await;
    let store = store_of(&ns).await;
    // What a dead instance leaves: a delivery in the outbox, under a claim it no longer renews.
    let now = chrono::Utc::now();
    let job = WebhookJob {
        webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        task_id: uuid::Uuid::new_v4(),
        event: "task.completed".into(),
        url: receiver.url(),
        body: json!({"type": "task.completed", "data": {}}).to_string(),
        attempts: 1,
        created_at: now,
        next_attempt_at: now,
    };
    store.save_webhook_job(&job).await.expect("save");
    assert!(store
        .claim_webhook_job(&job.webhook_id, "dead-instance", Duration::from_secs(2))
        .await
        .expect("claim")
        .is_some());

    let (a, b) = pair(&ns, delivering()).await;
    // Held while the dead instance's claim lasts, then taken over by one instance.
    let hits = receiver.wait_for_hits(1).await;
    assert_eq!(hits, std::slice::from_ref(&job.webhook_id));
    receiver.assert_no_second_delivery_within_a_sweep().await;
    receiver.open();
    wait_outbox_empty(&store).await;
    assert_eq!(receiver.hits().len(), 1);
    // The attempt carries on the count the dead instance had reached.
    let attempts = store.webhook_attempts(job.task_id).await.expect("attempts");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].attempt, 2);
    a.shutdown().await;
    b.shutdown().await;
}
