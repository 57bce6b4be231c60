//! Statistics per day, model and key; persistence across a restart; daily budgets.

use chrono::Utc;
use serde_json::{json, Value};

use crate::helpers::*;

pub(crate) const KEY_A: &str = "key-a-0123456789";
pub(crate) const KEY_B: &str = "key-b-0123456789";
pub(crate) const KEY_ADMIN: &str = "key-admin-0123456789";

pub(crate) fn keys() -> Value {
    json!({"auth": {"apiKeys": [
        {"name": "a", "key": KEY_A},
        {"name": "b", "key": KEY_B},
        {"name": "root", "key": KEY_ADMIN, "admin": true}
    ]}})
}

pub(crate) async fn get(app: &TestApp, path: &str, key: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET");
    json_body(resp).await
}

pub(crate) async fn run(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/api/claude"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("POST");
    json_body(resp).await
}

fn today() -> String {
    Utc::now().date_naive().to_string()
}

/// Five runs: three complete, one API error (no cost), one stopped at max turns (billed).
async fn five_runs(app: &TestApp) {
    five_runs_across(&[app]).await;
}

/// [`five_runs`], sent to `apps` in turn (instances of one cluster).
pub(crate) async fn five_runs_across(apps: &[&TestApp]) {
    let runs = [
        (
            KEY_A,
            json!({"model": "m-one", "prompt": "[[fake:cost=0.5]] [[fake:in_tokens=100]] [[fake:out_tokens=50]] [[fake:cache_read=7]] one"}),
            200,
        ),
        (
            KEY_A,
            json!({"model": "m-two", "prompt": "[[fake:cost=0.25]] [[fake:in_tokens=10]] [[fake:out_tokens=5]] two"}),
            200,
        ),
        (
            KEY_B,
            json!({"model": "m-one", "prompt": "[[fake:cost=0.125]] [[fake:in_tokens=1000]] [[fake:out_tokens=500]] [[fake:cache_create=3]] three"}),
            200,
        ),
        (
            KEY_B,
            json!({"model": "m-one", "prompt": "[[fake:api_error=500]] four"}),
            502,
        ),
        (
            KEY_A,
            json!({"model": "m-one", "max_turns": 1, "prompt": "[[fake:tool_loop]] [[fake:cost=0.0625]] [[fake:in_tokens=9]] five"}),
            422,
        ),
    ];
    for (i, (key, body, want)) in runs.into_iter().enumerate() {
        let (s, b) = run(apps[i % apps.len()], key, body).await;
        assert_eq!(s, want, "{b}");
    }
}

/// The admin's view after [`five_runs`].
pub(crate) fn assert_admin_summary(s: &Value) {
    assert_eq!(s["requests"]["total"], 5, "{s}");
    assert_eq!(s["requests"]["successful"], 3);
    assert_eq!(s["requests"]["failed"], 2);
    assert_eq!(
        s["requests"]["by_status"],
        json!({"completed": 3, "failed": 2, "cancelled": 0, "timeout": 0})
    );
    // Tokens and cost of completed runs only; the billed failure is reported apart.
    // `total_input`/`total_output`: the seed's names for `input`/`output`.
    assert_eq!(
        s["tokens"],
        json!({"input": 1110, "output": 555, "cache_read": 7, "cache_creation": 3, "total": 1665,
               "total_input": 1110, "total_output": 555})
    );
    assert_eq!(s["costs"]["total_usd"], json!(0.875));
    assert_eq!(s["costs"]["failed_runs_usd"], json!(0.0625));
    let one = &s["models"]["m-one"];
    assert_eq!(
        (&one["requests"], &one["successful"], &one["failed"]),
        (&json!(4), &json!(2), &json!(2))
    );
    assert_eq!(one["cost_usd"], json!(0.625));
    assert_eq!(one["input_tokens"], 1100);
    // `count`: the seed's name for `requests`.
    assert_eq!(one["count"], 4);
    assert_eq!(s["models"]["m-two"]["requests"], 1);
    assert_eq!(s["models"]["m-two"]["count"], 1);
    assert_eq!(s["models"]["m-two"]["cost_usd"], json!(0.25));
    let by_key = s["by_key"].as_array().expect("by_key for admins");
    let key = |name: &str| {
        by_key
            .iter()
            .find(|k| k["key_name"] == name)
            .unwrap_or_else(|| panic!("no key {name} in {s}"))
            .clone()
    };
    let a = key("a");
    assert_eq!((&a["requests"], &a["failed"]), (&json!(3), &json!(1)));
    assert_eq!(a["count"], 3);
    assert_eq!(a["cost_usd"], json!(0.75));
    assert_eq!(a["failed_runs_cost_usd"], json!(0.0625));
    let b = key("b");
    assert_eq!((&b["requests"], &b["failed"]), (&json!(2), &json!(1)));
    assert_eq!(b["cost_usd"], json!(0.125));
    assert_eq!(by_key.len(), 2);
    // Durations: three completed runs, percentiles ordered.
    let d = &s["durations"];
    let (p50, p95) = (
        d["p50_ms"].as_u64().expect("p50"),
        d["p95_ms"].as_u64().expect("p95"),
    );
    assert!(p50 <= p95, "{d}");
    assert!(d["avg_ms"].as_f64().is_some_and(|x| x >= 0.0), "{d}");
}

#[tokio::test]
async fn figures_by_day_model_and_key_survive_a_restart() {
    let app = spawn_app_with(keys()).await;
    five_runs(&app).await;

    let (s, b) = get(&app, "/api/statistics/summary", KEY_ADMIN).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((&b["success"], &b["enabled"]), (&json!(true), &json!(true)));
    assert_eq!(b["scope"], "all");
    assert_admin_summary(&b["summary"]);
    assert_eq!(b["summary"]["period"]["days"], 1);

    // A key sees its own figures only, and no breakdown by key.
    let (_, b) = get(&app, "/api/statistics/summary", KEY_A).await;
    let s = &b["summary"];
    assert_eq!(b["scope"], "own");
    assert_eq!(s["requests"]["total"], 3, "{s}");
    assert_eq!(s["costs"]["total_usd"], json!(0.75));
    assert_eq!(s["tokens"]["input"], 110);
    assert_eq!(s["models"]["m-one"]["requests"], 2);
    assert!(s.get("by_key").is_none(), "{s}");
    let (_, b) = get(&app, "/api/statistics/summary", KEY_B).await;
    assert_eq!(b["summary"]["requests"]["total"], 2);
    assert!(b["summary"]["models"].get("m-two").is_none());

    // Daily: one day, the seed's field names.
    let (s, b) = get(&app, "/api/statistics/daily", KEY_ADMIN).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((&b["count"], &b["total"]), (&json!(1), &json!(1)));
    let day = &b["daily"][0];
    assert_seed_day(day);
    assert_eq!(day["total_cache_read_tokens"], 7);
    assert_eq!(day["models"]["m-one"]["requests"], 4);
    assert_eq!(day["by_key"].as_array().map(Vec::len), Some(2));

    // Range of today = the same figures; a range without runs is empty.
    let t = today();
    let (s, b) = get(
        &app,
        &format!("/api/statistics/range?start={t}&end={t}"),
        KEY_ADMIN,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_admin_summary(&b["summary"]);
    assert_eq!(b["daily"][0]["date"], t);
    let (_, b) = get(
        &app,
        "/api/statistics/range?start=2001-01-01&end=2001-12-31",
        KEY_ADMIN,
    )
    .await;
    assert_eq!(b["count"], 0);
    assert_eq!(b["summary"]["requests"]["total"], 0);

    // Models by requests; limit applies.
    let (_, b) = get(&app, "/api/statistics/models?limit=1", KEY_ADMIN).await;
    assert_eq!((&b["count"], &b["total"]), (&json!(1), &json!(2)));
    assert_eq!(b["models"][0]["model"], "m-one");

    // The overview: summary, recent days, top models.
    let (_, b) = get(&app, "/api/statistics", KEY_ADMIN).await;
    assert_admin_summary(&b["summary"]);
    assert_eq!(b["daily"].as_array().map(Vec::len), Some(1));
    assert_eq!(b["top_models"][0]["model"], "m-one");
    assert_eq!(b["top_models"][1]["model"], "m-two");

    // Restart on the same data: the same figures, and new runs add to them.
    let dir = app.shutdown().await;
    let app = spawn_app_in(dir, keys()).await;
    let (_, b) = get(&app, "/api/statistics/summary", KEY_ADMIN).await;
    assert_admin_summary(&b["summary"]);
    let (s, b) = run(
        &app,
        KEY_B,
        json!({"model": "m-two", "prompt": "[[fake:cost=0.5]] after restart"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = get(&app, "/api/statistics/summary", KEY_ADMIN).await;
    assert_eq!(b["summary"]["requests"]["total"], 6);
    assert_eq!(b["summary"]["costs"]["total_usd"], json!(1.375));
    assert_eq!(b["summary"]["models"]["m-two"]["requests"], 2);
    app.shutdown().await;
}

/// After [`five_runs`], the admin's answer of `path`: 200 with `success`, `enabled`, `scope`.
async fn admin_answer_after_five_runs(path: &str) -> (TestApp, Value) {
    let app = spawn_app_with(keys()).await;
    five_runs(&app).await;
    let (s, b) = get(&app, path, KEY_ADMIN).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (&b["success"], &b["enabled"], &b["scope"]),
        (&json!(true), &json!(true), &json!("all")),
        "{b}"
    );
    (app, b)
}

/// The seed's model list entries after [`five_runs`]: `name` and `count` beside `model` and
/// `requests`, most requests first.
fn assert_seed_models(models: &Value) {
    let models = models.as_array().expect("a list of models");
    let seen: Vec<_> = models
        .iter()
        .map(|m| (&m["name"], &m["count"], &m["cost_usd"]))
        .collect();
    assert_eq!(
        seen,
        [
            (&json!("m-one"), &json!(4), &json!(0.625)),
            (&json!("m-two"), &json!(1), &json!(0.25))
        ],
        "{models:?}"
    );
    for m in models {
        assert_eq!(
            (&m["model"], &m["requests"]),
            (&m["name"], &m["count"]),
            "{m}"
        );
    }
}

/// The seed's day after [`five_runs`] (admin).
fn assert_seed_day(day: &Value) {
    assert_eq!(day["date"], today(), "{day}");
    assert_eq!(day["total_requests"], 5);
    assert_eq!(day["successful_requests"], 3);
    assert_eq!(day["failed_requests"], 2);
    assert_eq!(day["total_cost_usd"], json!(0.875));
    assert_eq!(day["total_input_tokens"], 1110);
    assert_eq!(day["total_output_tokens"], 555);
    assert!(
        day["avg_duration_ms"].as_f64().is_some_and(|x| x >= 0.0),
        "{day}"
    );
    assert_eq!(day["models"]["m-one"]["count"], 4);
    assert_eq!(day["models"]["m-two"]["cost_usd"], json!(0.25));
}

#[tokio::test]
async fn the_summary_answers_in_the_seeds_shape() {
    let (app, b) = admin_answer_after_five_runs("/api/statistics/summary").await;
    // `statistics` (the seed's) and `summary` (this server's) are one object.
    let st = &b["statistics"];
    assert_eq!(st, &b["summary"]);
    assert_admin_summary(st);
    assert_eq!(
        (
            &st["requests"]["total"],
            &st["requests"]["successful"],
            &st["requests"]["failed"]
        ),
        (&json!(5), &json!(3), &json!(2))
    );
    assert_eq!(
        (&st["tokens"]["total_input"], &st["tokens"]["total_output"]),
        (&json!(1110), &json!(555))
    );
    assert_eq!(st["costs"]["total_usd"], json!(0.875));
    assert_eq!(
        (
            &st["models"]["m-one"]["count"],
            &st["models"]["m-one"]["cost_usd"]
        ),
        (&json!(4), &json!(0.625))
    );
    // A key's own view has the same shape.
    let (_, b) = get(&app, "/api/statistics/summary", KEY_A).await;
    assert_eq!(b["scope"], "own");
    assert_eq!(b["statistics"], b["summary"]);
    assert_eq!(b["statistics"]["tokens"]["total_input"], 110);
    assert_eq!(b["statistics"]["models"]["m-one"]["count"], 2);
    app.shutdown().await;
}

#[tokio::test]
async fn the_overview_answers_in_the_seeds_shape() {
    let (app, b) = admin_answer_after_five_runs("/api/statistics").await;
    let st = &b["statistics"];
    assert_admin_summary(&st["summary"]);
    assert_eq!(st["summary"], b["summary"]);
    let recent = st["recent_daily"].as_array().expect("recent_daily");
    assert_eq!(recent.len(), 1, "{st}");
    assert_seed_day(&recent[0]);
    assert_eq!(st["recent_daily"], b["daily"]);
    assert_seed_models(&st["top_models"]);
    assert_eq!(st["top_models"], b["top_models"]);
    app.shutdown().await;
}

#[tokio::test]
async fn the_range_answers_in_the_seeds_shape() {
    let t = today();
    let (app, b) =
        admin_answer_after_five_runs(&format!("/api/statistics/range?start={t}&end={t}")).await;
    assert_eq!((&b["start"], &b["end"]), (&json!(t), &json!(t)));
    assert_eq!(b["count"], 1);
    let days = b["statistics"].as_array().expect("statistics: the days");
    assert_eq!(days.len(), 1, "{b}");
    assert_seed_day(&days[0]);
    assert_eq!(b["statistics"], b["daily"]);
    assert_admin_summary(&b["summary"]);
    // A range without runs: no days.
    let (_, b) = get(
        &app,
        "/api/statistics/range?start=2001-01-01&end=2001-12-31",
        KEY_ADMIN,
    )
    .await;
    assert_eq!(
        (&b["count"], &b["statistics"], &b["daily"]),
        (&json!(0), &json!([]), &json!([]))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_daily_list_answers_in_the_seeds_shape() {
    let (app, b) = admin_answer_after_five_runs("/api/statistics/daily").await;
    assert_eq!((&b["count"], &b["total"]), (&json!(1), &json!(1)));
    let days = b["daily"].as_array().expect("daily");
    assert_eq!(days.len(), 1, "{b}");
    assert_seed_day(&days[0]);
    app.shutdown().await;
}

#[tokio::test]
async fn the_model_list_answers_in_the_seeds_shape() {
    let (app, b) = admin_answer_after_five_runs("/api/statistics/models").await;
    assert_eq!((&b["count"], &b["total"]), (&json!(2), &json!(2)));
    assert_seed_models(&b["models"]);
    app.shutdown().await;
}

#[tokio::test]
async fn disabled_statistics_record_nothing() {
    let mut overrides = keys();
    overrides["statistics"] = json!({"enabled": false});
    let app = spawn_app_with(overrides).await;
    let (s, b) = run(&app, KEY_A, json!({"prompt": "[[fake:cost=0.5]] hi"})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = get(&app, "/api/statistics/summary", KEY_ADMIN).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["enabled"], false);
    assert_eq!(b["summary"]["requests"]["total"], 0);
    assert_eq!(b["summary"]["costs"]["total_usd"], json!(0.0));
    let (_, b) = get(&app, "/api/statistics/daily", KEY_ADMIN).await;
    assert_eq!(b["daily"], json!([]));
    let (_, b) = get(&app, "/api/statistics/models", KEY_ADMIN).await;
    assert_eq!(b["total"], 0);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_field() {
    let app = spawn_app_with(keys()).await;
    for (path, field) in [
        (
            "/api/statistics/range?start=2026-13-01&end=2026-12-31",
            "start",
        ),
        (
            "/api/statistics/range?start=2026-1-1&end=2026-12-31",
            "start",
        ),
        (
            "/api/statistics/range?start=2026-03-02&end=2026-03-01",
            "end",
        ),
        ("/api/statistics/range?start=2026-03-01&end=tomorrow", "end"),
        ("/api/statistics/range?start=2026-03-01", "end"),
        ("/api/statistics/range", "start"),
        ("/api/statistics/daily?limit=0", "limit"),
        ("/api/statistics/daily?limit=1001", "limit"),
        ("/api/statistics/daily?limit=ten", "limit"),
        ("/api/statistics/daily?offset=-1", "offset"),
        ("/api/statistics/models?limit=2.5", "limit"),
    ] {
        let (s, b) = get(&app, path, KEY_A).await;
        assert_error(s, &b, 400, "validation_error");
        assert_eq!(b["details"]["field"], field, "{path}: {b}");
    }
    // Without a key: 401, as everywhere under /api.
    let resp = app.get("/api/statistics").await;
    assert_eq!(resp.status().as_u16(), 401);
    app.shutdown().await;
}

#[tokio::test]
async fn a_spent_daily_budget_refuses_new_runs_until_midnight() {
    let app = spawn_app_with(json!({"auth": {"apiKeys": [
        {"name": "capped", "key": KEY_A, "dailyBudgetUsd": 0.5},
        {"name": "free", "key": KEY_B}
    ]}}))
    .await;
    let (s, b) = run(&app, KEY_A, json!({"prompt": "[[fake:cost=0.6]] pricey"})).await;
    assert_eq!(s, 200, "{b}");
    let calls = app.calls().len();

    for body in [
        json!({"prompt": "again"}),
        json!({"prompt": "again", "async": true}),
    ] {
        let resp = app
            .client
            .post(app.url("/api/claude"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let retry_after: u64 = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        let (s, b) = json_body(resp).await;
        assert_error(s, &b, 429, "budget_exceeded");
        assert!((1..=86_400).contains(&retry_after), "{retry_after}");
        assert_eq!(b["retry_after"], retry_after);
        assert_eq!(b["details"]["daily_budget_usd"], json!(0.5));
        assert_eq!(b["details"]["spent_today_usd"], json!(0.6));
    }
    // Nothing ran; another key is not affected.
    assert_eq!(app.calls().len(), calls);
    let (s, b) = run(&app, KEY_B, json!({"prompt": "[[fake:cost=0.6]] mine"})).await;
    assert_eq!(s, 200, "{b}");
    app.shutdown().await;
}
