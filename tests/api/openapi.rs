//! The OpenAPI document: valid OpenAPI 3.1, served with Swagger UI, and true to the server —
//! a property-based fuzz run (schemathesis) from the document finds no 5xx and no response that
//! breaks its schemas.

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
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", "import json,sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))"])
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        out.status.success(),
        "invalid OpenAPI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in [
        "/api/claude",
        "/api/claude/batch",
        "/api/tasks/{id}/events",
        "/api/sessions/{id}/fork",
        "/api/statistics/range",
        "/health",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let resp = app.get("/docs/").await;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await.expect("html");
    assert!(html.contains("swagger"), "Swagger UI page: {html:.200}");
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
        let schema = doc["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]
            .clone();
        assert!(schema.is_object(), "{route}: no JSON schema for 200");
        let query = if route.ends_with("/range") {
            format!("?start={today}&end={today}")
        } else {
            String::new()
        };
        // The admin's answer has `by_key`; a key's own has not.
        for key in [KEY_ADMIN, KEY_A] {
            let (s, body) = get(&app, &format!("{route}{query}"), key).await;
            assert_eq!(s, 200, "{route}: {body}");
            cases.push(json!({"name": route, "schema": schema, "instance": body}));
        }
    }
    let violations = schema_violations(&doc, cases);
    assert!(
        violations.is_empty(),
        "answers break their schemas:\n{violations}"
    );
    app.shutdown().await;
}
