//! The official Python SDKs drive the compatible APIs against a daemon with the fake CLI:
//! `openai` the chat completions (tests/openai_sdk/test_sdk.py) and the Responses API
//! (tests/openai_sdk/test_responses.py), `anthropic` the Messages API
//! (tests/anthropic_sdk/test_sdk.py).
//!
//! The interpreter is the virtualenv `./scripts/test.sh` provisions (pinned versions, from
//! tests/python-requirements.txt) and names in `CCS_PY_VENV`. Without it these tests fail: they
//! are never skipped silently.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const KEY: &str = "sk-sdk-test-0123456789";
const MODEL: &str = "claude-sonnet-4-5";

/// A daemon with one key, `MODEL` as the only model (so any other is unknown).
async fn sdk_app() -> TestApp {
    spawn_app_with(json!({
        "auth": {"apiKeys": [{"name": "sdk", "key": KEY}]},
        "defaultModel": MODEL,
        "allowedModels": [MODEL],
    }))
    .await
}

/// Run `script` (relative to the crate) with the venv's Python and `env`; it must exit 0 and
/// print its `N passed (<package> <version>)` line.
async fn run_script(script: &str, env: &[(&str, String)], package: &str) {
    let python = py_venv().join("bin").join("python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        // The SDK must reach the daemon directly, whatever proxy the machine has.
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the SDK script finishes within 180 s")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    assert!(
        stdout.contains(&format!(" passed ({package} ")),
        "{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn the_official_openai_python_sdk_works_against_the_server() {
    let app = sdk_app().await;
    let env = [
        ("CCS_OPENAI_BASE_URL", app.url("/v1")),
        ("CCS_OPENAI_API_KEY", KEY.to_string()),
        ("CCS_OPENAI_MODEL", MODEL.to_string()),
    ];
    run_script("tests/openai_sdk/test_sdk.py", &env, "openai").await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_official_openai_python_sdk_speaks_the_responses_api() {
    let app = sdk_app().await;
    let env = [
        ("CCS_OPENAI_BASE_URL", app.url("/v1")),
        ("CCS_OPENAI_API_KEY", KEY.to_string()),
        ("CCS_OPENAI_MODEL", MODEL.to_string()),
    ];
    run_script("tests/openai_sdk/test_responses.py", &env, "openai").await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_official_anthropic_python_sdk_works_against_the_server() {
    let app = sdk_app().await;
    let env = [
        // The SDK adds `/v1`.
        ("CCS_ANTHROPIC_BASE_URL", app.url("")),
        ("CCS_ANTHROPIC_API_KEY", KEY.to_string()),
        ("CCS_ANTHROPIC_MODEL", MODEL.to_string()),
    ];
    run_script("tests/anthropic_sdk/test_sdk.py", &env, "anthropic").await;
    app.shutdown().await;
}
