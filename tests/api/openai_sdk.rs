//! The official `openai` Python package drives the /v1 API (tests/openai_sdk/test_sdk.py).
//!
//! The interpreter is the virtualenv `./scripts/test.sh` provisions (pinned `openai` version)
//! and names in `CCS_PY_VENV`. Without it this test fails: it is never skipped silently.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const KEY: &str = "sk-sdk-test-0123456789";

fn venv_python() -> PathBuf {
    py_venv().join("bin").join("python")
}

#[tokio::test]
async fn the_official_openai_python_sdk_works_against_the_server() {
    let python = venv_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk/test_sdk.py");
    let app = spawn_app_with(json!({
        "auth": {"apiKeys": [{"name": "sdk", "key": KEY}]},
        "defaultModel": "claude-sonnet-4-5",
    }))
    .await;
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .env("CCS_OPENAI_BASE_URL", app.url("/v1"))
        .env("CCS_OPENAI_API_KEY", KEY)
        .env("CCS_OPENAI_MODEL", "claude-sonnet-4-5")
        // The SDK must reach the daemon directly, whatever proxy the machine has.
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the SDK script finishes within 180 s")
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed (openai "), "{stdout}\n{stderr}");
    app.shutdown().await;
}
