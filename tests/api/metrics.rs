//! `GET /metrics`: valid Prometheus text with the expected families and sensible values after
//! a few runs, webhook deliveries and rate-limit rejections; access when not public.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use serde_json::json;

use crate::helpers::*;

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the exposition format strictly enough to catch a malformed line: every non-comment
/// line is `name{labels} value`, every sample belongs to a family with a `# TYPE` line before
/// it. Returns the samples and the type of each family.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            match kind {
                Some("TYPE") => {
                    let t = tail.unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "bad TYPE line: {line}"
                    );
                    let name = name.unwrap_or_else(|| panic!("TYPE without a name: {line}"));
                    assert!(valid_name(name), "bad metric name in {line}");
                    types.insert(name.to_owned(), t.to_owned());
                }
                Some("HELP") => assert!(name.is_some_and(valid_name), "bad HELP: {line}"),
                _ => panic!("unknown comment line: {line}"),
            }
            continue;
        }
        let sample = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                sample
                    .name
                    .strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&sample.name)
            .to_owned();
        assert!(
            types.contains_key(&family),
            "sample before its TYPE line: {line}"
        );
        samples.push(sample);
    }
    (samples, types)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad name: {line}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // `}` or `key="value"` followed by `,` or `}`.
            let (i, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            if c == '}' {
                break i;
            }
            let mut key = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            assert!(valid_name(&key), "bad label name {key:?}: {line}");
            assert_eq!(
                chars.next().map(|x| x.1),
                Some('"'),
                "unquoted label: {line}"
            );
            let mut value = String::new();
            loop {
                match chars.next().map(|x| x.1) {
                    Some('\\') => match chars.next().map(|x| x.1) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            }
            labels.insert(key, value);
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => break i,
                other => panic!("bad label separator {other:?}: {line}"),
            }
        };
        rest = &after[end + 1..];
    }
    let value_text = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line}"));
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// The value of the sample named `name` whose labels include `labels` (0 when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> (Vec<Sample>, HashMap<String, String>) {
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&resp.text().await.expect("body"))
}

/// Scrape until `pred` holds (the MetricsActor counts a run just after its caller is answered).
async fn scrape_until(
    app: &TestApp,
    pred: impl Fn(&[Sample]) -> bool,
) -> (Vec<Sample>, HashMap<String, String>) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (samples, types) = scrape(app).await;
        if pred(&samples) {
            return (samples, types);
        }
        assert!(Instant::now() < end, "metrics never matched: {samples:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_parse_and_count_runs_requests_and_tokens() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 2}})).await;
    let mut cost = 0.0;
    let mut input_tokens = 0.0;
    for i in 0..3 {
        let (status, body) = json_body(
            app.post_claude(json!({"prompt": format!("hello {i}")}))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        cost += body["cost_usd"].as_f64().unwrap_or(0.0);
        input_tokens += body["usage"]["input_tokens"].as_f64().unwrap_or(0.0);
    }
    let (status, _) = json_body(app.get("/api/nothing-here").await).await;
    assert_eq!(status, 404);
    let (status, _) = json_body(app.get("/api/tasks/not-a-uuid").await).await;
    assert_eq!(status, 404);

    let (samples, types) = scrape_until(&app, |s| {
        value(s, "ccs_tasks_finished_total", &[("status", "completed")]) >= 3.0
    })
    .await;
    for (name, kind) in [
        ("ccs_http_requests_total", "counter"),
        ("ccs_http_request_duration_seconds", "histogram"),
        ("ccs_tasks_finished_total", "counter"),
        ("ccs_run_duration_seconds", "histogram"),
        ("ccs_cost_usd_total", "counter"),
        ("ccs_tokens_total", "counter"),
        ("ccs_webhook_deliveries_total", "counter"),
        ("ccs_rate_limited_total", "counter"),
        ("ccs_queue_pending", "gauge"),
        ("ccs_queue_running", "gauge"),
        ("ccs_queue_concurrency", "gauge"),
        ("ccs_tasks", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let route = |r: &str, status: &str| {
        value(
            &samples,
            "ccs_http_requests_total",
            &[("route", r), ("status", status)],
        )
    };
    assert_eq!(route("/api/claude", "200"), 3.0);
    // Route templates, not concrete paths; unmatched paths share one series.
    assert_eq!(route("/api/tasks/{id}", "404"), 1.0);
    assert_eq!(route("unmatched", "404"), 1.0);
    assert!(samples.iter().all(|s| !s
        .labels
        .get("route")
        .is_some_and(|r| r.contains("not-a-uuid"))));

    assert_eq!(
        value(
            &samples,
            "ccs_run_duration_seconds_count",
            &[("status", "completed")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "ccs_run_duration_seconds_bucket",
            &[("status", "completed"), ("le", "+Inf")]
        ),
        3.0
    );
    let counted_cost = value(&samples, "ccs_cost_usd_total", &[]);
    assert!(
        cost > 0.0 && (counted_cost - cost).abs() < 1e-9,
        "{counted_cost} vs {cost}"
    );
    assert_eq!(
        value(&samples, "ccs_tokens_total", &[("kind", "input")]),
        input_tokens
    );
    assert!(value(&samples, "ccs_tokens_total", &[("kind", "output")]) > 0.0);
    assert_eq!(value(&samples, "ccs_queue_concurrency", &[]), 2.0);
    assert_eq!(value(&samples, "ccs_queue_pending", &[]), 0.0);
    assert_eq!(value(&samples, "ccs_queue_running", &[]), 0.0);
    assert_eq!(
        value(&samples, "ccs_tasks", &[("status", "completed")]),
        3.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn rate_limit_rejections_are_counted() {
    let app = spawn_app_with(json!({"rateLimit": {"maxRequests": 2, "windowMs": 60000}})).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.get("/api/tasks").await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    let (samples, _) = scrape(&app).await;
    assert_eq!(value(&samples, "ccs_rate_limited_total", &[]), 2.0);
    assert_eq!(
        value(
            &samples,
            "ccs_http_requests_total",
            &[("route", "/api/tasks"), ("status", "429")]
        ),
        2.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn webhook_deliveries_are_counted() {
    // A receiver that answers 200, and a port nothing listens on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let receiver = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let router = Router::new().route("/hook", post(|| async { "ok" }));
        let _ = axum::serve(listener, router).await;
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let app = spawn_app_with(json!({
        "webhook": {"enabled": true, "allowPrivateTargets": true, "retries": 0, "timeout": 2000}
    }))
    .await;
    for url in [
        format!("http://{receiver}/hook"),
        format!("http://{closed}/hook"),
    ] {
        let (status, body) = json_body(
            app.post_claude(json!({"prompt": "hi", "webhook_url": url}))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (samples, _) = scrape_until(&app, |s| {
        value(
            s,
            "ccs_webhook_deliveries_total",
            &[("result", "delivered")],
        ) >= 1.0
            && value(s, "ccs_webhook_deliveries_total", &[("result", "failed")]) >= 1.0
    })
    .await;
    assert_eq!(
        value(&samples, "ccs_webhook_attempts_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "ccs_webhook_attempts_total",
            &[("result", "error")]
        ),
        1.0
    );
    app.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn private_metrics_need_an_admin_key() {
    const ADMIN: &str = "key-admin-0123456789";
    const USER: &str = "key-user-0123456789";
    let app = spawn_app_with(json!({
        "metrics": {"public": false},
        "auth": {"apiKeys": [
            {"name": "root", "key": ADMIN, "admin": true},
            {"name": "user", "key": USER}
        ]}
    }))
    .await;
    let get = |key: Option<&'static str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let resp = get(None).await.expect("GET");
    let (status, body) = json_body(resp).await;
    assert_error(status, &body, 401, "unauthorized");
    let resp = get(Some(USER)).await.expect("GET");
    let (status, body) = json_body(resp).await;
    assert_error(status, &body, 403, "forbidden");
    let resp = get(Some(ADMIN)).await.expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
    let (samples, _) = parse(&resp.text().await.expect("body"));
    assert!(
        value(
            &samples,
            "ccs_http_requests_total",
            &[("route", "/metrics"), ("status", "403")]
        ) >= 1.0
    );
    app.shutdown().await;
}

/// The parser itself rejects what it should (a checker that accepts anything proves nothing).
#[test]
#[should_panic(expected = "bad value")]
fn the_parser_refuses_a_malformed_line() {
    parse("# TYPE x counter\nx{a=\"b\"} twelve\n");
}

#[test]
fn the_parser_reads_labels_with_escapes() {
    let (s, _) = parse("# TYPE x counter\nx{a=\"q\\\"\\\\\",b=\"2\"} 1.5\n");
    assert_eq!(s[0].labels["a"], "q\"\\");
    assert_eq!(s[0].value, 1.5);
}
