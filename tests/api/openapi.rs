//! The OpenAPI document: valid OpenAPI 3.1, served with Swagger UI, free of errors under
//! Redocly's recommended rules, and true to the server — a property-based fuzz run
//! (schemathesis) from the document finds no 5xx and no response that breaks its schemas.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::helpers::*;
use crate::statistics::{five_runs_across, get, keys, KEY_A, KEY_ADMIN};

const ADMIN_KEY: &str = "fuzz-admin-key-0123456789";

fn venv() -> PathBuf {
    py_venv()
}

#[tokio::test]
async fn the_document_is_valid_openapi_and_covers_every_route() {
    let app = spawn_app().await;
    let (s, doc) = json_body(app.get("/api/openapi.json").await).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let file = app.dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    // Awaited, not blocking: a blocked runtime cannot see the server close the idle pooled
    // connection (actix-web's 5 s keep-alive), and the next request would go out on it.
    let out = tokio::process::Command::new(venv().join("bin/python"))
        .args(["-c", "import json,sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))"])
        .arg(&file)
        .output()
        .await
        .expect("run the validator");
    assert!(
        out.status.success(),
        "invalid OpenAPI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in served_paths() {
        assert!(
            doc["paths"].get(&path).is_some(),
            "{path} is not documented"
        );
    }
    // The Swagger UI service serves these two.
    for path in ["/api/openapi.json", "/docs"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    assert_eq!(doc["servers"][0]["url"], "/", "{}", doc["servers"]);
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let what = format!("{} {path}", method.to_uppercase());
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(
                ids.insert(id.to_string()),
                "{what}: operationId {id} is not unique"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{what} has no summary"
            );
            assert!(op["security"].is_array(), "{what} has no security");
        }
    }
    // What needs no key says so with an empty requirement.
    for path in ["/health", "/metrics", "/api/openapi.json", "/docs"] {
        let security = doc["paths"][path]["get"]["security"]
            .as_array()
            .expect("security");
        assert!(security.contains(&json!({})), "{path}: {security:?}");
    }
    let resp = app.get("/docs/").await;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await.expect("html");
    assert!(html.contains("swagger"), "Swagger UI page: {html:.200}");
    app.shutdown().await;
}

/// The paths the app serves (`resource("…"` in its source), in OpenAPI's `{param}` form.
fn served_paths() -> Vec<String> {
    let sources = [
        include_str!("../../src/http/mod.rs"),
        include_str!("../../src/http/openai/mod.rs"),
        include_str!("../../src/http/anthropic/mod.rs"),
    ];
    let mut paths = Vec::new();
    for source in sources {
        for (_, rest) in source
            .match_indices("resource(")
            .map(|(i, _)| source.split_at(i + 9))
        {
            let rest = rest.trim_start();
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted.find('"').expect("a closing quote");
                paths.push(quoted[..end].to_string());
            }
        }
    }
    assert!(
        paths.len() > 20,
        "routes not found in the app's source: {paths:?}"
    );
    paths
}

/// The Redocly CLI that `./scripts/test.sh` installs and names in `CCS_REDOCLY` (by default
/// the one it leaves in `.cache`). Missing: the test fails, loudly.
fn redocly() -> PathBuf {
    let bin = std::env::var_os("CCS_REDOCLY")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.cache")).ok()?;
            cache
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("redocly-"))
                .map(|e| e.path().join("node_modules/.bin/redocly"))
                .max()
        })
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "the Redocly CLI is missing (CCS_REDOCLY={}): run ./scripts/test.sh, which installs it",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn redocly_finds_no_error_with_its_recommended_rules() {
    let bin = redocly();
    let app = spawn_app().await;
    let (s, doc) = json_body(app.get("/api/openapi.json").await).await;
    assert_eq!(s, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    // Pretty, so that the report's line numbers point somewhere.
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["lint", "--extends=recommended", "--format=stylish"])
            .arg(&file)
            // No redocly.yaml from anywhere but the command line.
            .current_dir(file.parent().expect("dir"))
            .env("REDOCLY_TELEMETRY", "off")
            .env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true")
            .env("NO_COLOR", "1")
            .output()
            .expect("run redocly")
    })
    .await
    .expect("join");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The warnings that remain, for whoever runs the test with --nocapture.
    println!("redocly lint --extends=recommended:\n{report}");
    assert!(
        out.status.success() && report.contains("Your API description is valid"),
        "Redocly's recommended rules find errors in the OpenAPI document:\n{report}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_fuzz_run_from_the_document_finds_no_server_error_or_schema_violation() {
    let app = spawn_app_with(json!({
        "auth": {"apiKeys": [{"name": "fuzz", "key": ADMIN_KEY, "admin": true}]},
        "rateLimit": {"enabled": false},
        "taskQueue": {"concurrency": 4},
    }))
    .await;
    let out = tokio::task::spawn_blocking({
        let url = app.url("/api/openapi.json");
        let bin = venv().join("bin/schemathesis");
        move || {
            Command::new(bin)
                .args(["run", &url])
                .args(["--header", &format!("Authorization: Bearer {ADMIN_KEY}")])
                // Examples and fuzzing; the coverage phase of this schemathesis version crashes
                // inside hypothesis on some schemas (an internal error, not a finding).
                .args([
                    "--phases",
                    "examples,fuzzing",
                    "--max-examples",
                    "25",
                    "--workers",
                    "2",
                ])
                .args(["--request-timeout", "30", "--generation-deterministic"])
                // Schema-valid but semantically wrong input (a path that does not exist, an id
                // that names nothing) is rightly refused: not a finding.
                .args(["--exclude-checks", "positive_data_acceptance"])
                .env("NO_COLOR", "1")
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .expect("join");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("passed") || report.contains("Test cases"),
        "{report}"
    );
    app.shutdown().await;
}

/// Checks `instance` against the document's `schema` (JSON Schema 2020-12, as OpenAPI 3.1's
/// are) for each case `(name, schema, instance)`; every violation, one a line.
fn schema_violations(doc: &serde_json::Value, cases: Vec<serde_json::Value>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cases.json");
    std::fs::write(&file, json!({"doc": doc, "cases": cases}).to_string()).expect("write");
    let script = r#"
import json, sys
from jsonschema import Draft202012Validator
d = json.load(open(sys.argv[1]))
for c in d["cases"]:
    root = dict(c["schema"], components=d["doc"]["components"])
    for e in Draft202012Validator(root).iter_errors(c["instance"]):
        print(c["name"], e.json_path, e.message)
"#;
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run the schema check");
    assert!(
        out.status.success(),
        "the schema check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A case for [`schema_violations`]: `body`, answered with `status` by `method` `route`, and the
/// JSON schema the document gives that answer.
fn case(
    doc: &serde_json::Value,
    method: &str,
    route: &str,
    status: u16,
    body: serde_json::Value,
) -> serde_json::Value {
    let schema = &doc["paths"][route][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {route}: no JSON schema for {status}"
    );
    json!({"name": format!("{method} {route} {status}"), "schema": schema, "instance": body})
}

async fn send(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    json_body(req.send().await.expect("send")).await
}

#[tokio::test]
async fn answers_of_typed_schemas_match_them() {
    let app = spawn_app_with(json!({"taskQueue": {"concurrency": 1}})).await;
    let (_, doc) = json_body(app.get("/api/openapi.json").await).await;
    let c = &app.client;
    let mut cases = Vec::new();
    let mut add = |op: &str, want: u16, (s, body): (u16, serde_json::Value)| {
        let (method, route) = op.split_once(' ').expect("METHOD route");
        assert_eq!(s, want, "{op}: {body}");
        cases.push(case(&doc, method, route, s, body));
    };
    add(
        "get /api/config",
        200,
        send(c.get(app.url("/api/config"))).await,
    );
    let patch = c
        .patch(app.url("/api/config"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"logLevel": "debug"}"#);
    add("patch /api/config", 200, send(patch).await);
    // OpenAI's shapes, errors included.
    let (s, models) = send(c.get(app.url("/v1/models"))).await;
    let model = models["data"][0]["id"]
        .as_str()
        .expect("a model")
        .to_string();
    add("get /v1/models", 200, (s, models));
    let one = c.get(app.url(&format!("/v1/models/{model}")));
    add("get /v1/models/{id}", 200, send(one).await);
    let none = c.get(app.url("/v1/models/no-such-model"));
    add("get /v1/models/{id}", 404, send(none).await);
    let chat = c
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "[[fake:cost=0.5]] hi"}]}));
    add("post /v1/chat/completions", 200, send(chat).await);
    let bad = c
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"n": 2, "messages": [{"role": "user", "content": "hi"}]}));
    add("post /v1/chat/completions", 400, send(bad).await);
    // A pending task's priority, behind a run that holds the only slot.
    let blocker = app
        .enqueue(json!({"prompt": "[[fake:hang]] blocker"}))
        .await;
    app.wait_for_starts(2).await;
    let pending = app
        .enqueue(json!({"prompt": "pending", "priority": 1}))
        .await;
    let change = c
        .patch(app.url(&format!("/api/tasks/{pending}/priority")))
        .json(&json!({"priority": 9}));
    add("patch /api/tasks/{id}/priority", 200, send(change).await);
    let deliveries = c.get(app.url(&format!("/api/tasks/{pending}/webhooks")));
    add("get /api/tasks/{id}/webhooks", 200, send(deliveries).await);
    let cancel = c.delete(app.url(&format!("/api/tasks/{blocker}")));
    add("delete /api/tasks/{id}", 200, send(cancel).await);
    let violations = schema_violations(&doc, cases);
    assert!(
        violations.is_empty(),
        "answers break their schemas:\n{violations}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_statistics_answers_match_their_schemas() {
    let app = spawn_app_with(keys()).await;
    five_runs_across(&[&app]).await;
    let (_, doc) = json_body(app.get("/api/openapi.json").await).await;
    let today = chrono::Utc::now().date_naive();
    let mut cases = Vec::new();
    for route in [
        "/api/statistics",
        "/api/statistics/summary",
        "/api/statistics/daily",
        "/api/statistics/range",
        "/api/statistics/models",
    ] {
        let query = if route.ends_with("/range") {
            format!("?start={today}&end={today}")
        } else {
            String::new()
        };
        // The admin's answer has `by_key`; a key's own has not.
        for key in [KEY_ADMIN, KEY_A] {
            let (s, body) = get(&app, &format!("{route}{query}"), key).await;
            assert_eq!(s, 200, "{route}: {body}");
            cases.push(case(&doc, "get", route, s, body));
        }
    }
    let violations = schema_violations(&doc, cases);
    assert!(
        violations.is_empty(),
        "answers break their schemas:\n{violations}"
    );
    app.shutdown().await;
}
