//! The deployment files: the Dockerfile (its paths, its pinned CLI version, hadolint), the
//! systemd unit (its essential directives, `systemd-analyze verify`), and the contract both
//! rely on: `serve` on 0.0.0.0 starts with `CCS_API_KEY`, keeps that key out of `/api/config`
//! and the CLI's environment, and refuses to start there without a key.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_claude-code-server");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_copies_only_what_exists_and_is_not_ignored() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let mut copied = 0;
    for inst in instructions(&read("Dockerfile")) {
        let words: Vec<&str> = inst.split_whitespace().collect();
        if !words[0].eq_ignore_ascii_case("COPY") && !words[0].eq_ignore_ascii_case("ADD") {
            continue;
        }
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let args: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (sources, _dest) = args.split_at(args.len() - 1);
        assert!(!sources.is_empty(), "{inst}");
        for src in sources {
            let path = Path::new(ROOT).join(src);
            assert!(
                path.exists(),
                "the Dockerfile copies {src}, which does not exist"
            );
            for pattern in &ignored {
                let plain = pattern.trim_end_matches('/');
                assert!(
                    !(src == &plain || src.starts_with(&format!("{plain}/"))),
                    "the Dockerfile copies {src}, which .dockerignore excludes ({pattern})"
                );
            }
            copied += 1;
        }
    }
    assert!(copied >= 4, "the Dockerfile copies the sources");
}

/// `NAME="VALUE"` or `NAME=VALUE` on a line of its own (after `ARG ` in the Dockerfile).
fn assignment(text: &str, prefix: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix}"));
    line[prefix.len()..].trim().trim_matches('"').to_string()
}

#[test]
fn the_cli_version_of_the_image_is_the_tested_one() {
    let tested = assignment(&read("scripts/test.sh"), "CLAUDE_CLI_VERSION=");
    let image = assignment(&read("Dockerfile"), "ARG CLAUDE_CLI_VERSION=");
    assert_eq!(
        image, tested,
        "Dockerfile ARG CLAUDE_CLI_VERSION vs scripts/test.sh"
    );
    let guide = read("systemd/README.md");
    assert!(
        guide.contains(&format!("@anthropic-ai/claude-code@{tested}")),
        "systemd/README.md installs another CLI version than {tested}"
    );
}

#[test]
fn hadolint_passes() {
    let hadolint = py_venv().join("bin/hadolint");
    let out = std::process::Command::new(&hadolint)
        .arg(Path::new(ROOT).join("Dockerfile"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", hadolint.display()));
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `[Service]` section: directive → values (a directive may repeat).
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().into())
                .or_default()
                .push(v.trim().into());
        }
    }
    out
}

#[test]
fn the_systemd_unit_has_the_essential_directives() {
    let unit = read("systemd/claude-code-server.service");
    let s = service_section(&unit);
    let one = |k: &str| -> &str {
        s.get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the unit has no {k}="))
    };
    for (k, v) in [
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    assert!(!one("User").is_empty());
    assert!(one("ExecStart").contains(" serve"), "ExecStart runs serve");
    // Longer than the defaults' graceful stop: shutdownGraceMs + killGraceMs + 5 s for the
    // connections, so systemd's SIGKILL never cuts a clean shutdown short.
    let defaults: Value = serde_json::from_str(&read("config/default.json")).expect("JSON");
    let graceful_ms = defaults["shutdownGraceMs"]
        .as_u64()
        .expect("shutdownGraceMs")
        + defaults["taskQueue"]["killGraceMs"]
            .as_u64()
            .expect("killGraceMs")
        + 5000;
    let stop = one("TimeoutStopSec");
    let stop_s: u64 = stop
        .strip_suffix('s')
        .unwrap_or(stop)
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop_s * 1000 > graceful_ms,
        "TimeoutStopSec={stop} must exceed {graceful_ms} ms"
    );
}

/// `systemd-analyze verify` in a throw-away root that has the unit, the system's own units and
/// stand-ins for the programs the unit runs.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for d in [
        "usr/local/bin",
        "bin",
        "etc/systemd/system",
        "usr/lib/systemd",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    let copy_units = std::process::Command::new("cp")
        .args(["-r", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .expect("cp");
    assert!(copy_units.success(), "copy the system's units");
    std::fs::copy("/bin/sh", r.join("bin/sh")).expect("sh");
    let exe = r.join("usr/local/bin/claude-code-server");
    std::fs::write(&exe, "#!/bin/sh\n").expect("stand-in");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::copy(
        Path::new(ROOT).join("systemd/claude-code-server.service"),
        r.join("etc/systemd/system/claude-code-server.service"),
    )
    .expect("unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("/etc/systemd/system/claude-code-server.service")
        .output()
        .expect("systemd-analyze runs (scripts/test.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// A config for `serve` in `dir`, with no host (the environment's `HOST` applies) and no keys.
fn container_config(dir: &Path) -> std::path::PathBuf {
    let project = dir.join("workspace");
    std::fs::create_dir_all(&project).expect("project");
    let config = dir.join("config.json");
    let doc = json!({
        "claudePath": FAKE_CLAUDE,
        "claudeEnv": {
            "CLAUDE_CONFIG_DIR": dir.join("claude-home").display().to_string(),
            "FAKE_CLAUDE_LOG": dir.join("calls.jsonl").display().to_string(),
        },
        "defaultProjectPath": project.display().to_string(),
        "logFile": dir.join("logs/server.log").display().to_string(),
        "pidFile": dir.join("server.pid").display().to_string(),
        "dataDir": dir.join("data").display().to_string(),
        "shutdownGraceMs": 500,
    });
    std::fs::write(&config, doc.to_string()).expect("write config");
    config
}

fn serve(dir: &Path, port: u16, api_key: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("serve")
        .env("CCS_CONFIG", container_config(dir))
        .env("HOME", dir)
        .env("HOST", "0.0.0.0")
        .env("PORT", port.to_string())
        // Inherited by the CLI like any variable, unlike CCS_API_KEY.
        .env("CCS_MARKER", "inherited")
        .env_remove("CCS_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"))
        .kill_on_drop(true);
    match api_key {
        Some(k) => cmd.env("CCS_API_KEY", k),
        None => cmd.env_remove("CCS_API_KEY"),
    };
    cmd
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn serve_on_every_interface_takes_its_key_from_ccs_api_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let key = "container-key-0123456789";
    let port = free_port();
    let mut child = serve(&root, port, Some(key)).spawn().expect("serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let up = poll_until_async(Duration::from_secs(15), || async {
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    assert!(up.is_some(), "the server answers /health on 0.0.0.0");

    let anonymous = client
        .get(format!("{base}/api/config"))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, body) = json_body(
        client
            .get(format!("{base}/api/config"))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(key), "the key is shown: {body}");
    assert_eq!(
        body["config"]["auth"]["apiKeys"],
        json!([{"name": "CCS_API_KEY", "key": "[redacted]", "admin": true, "rateLimit": null, "dailyBudgetUsd": null}])
    );
    assert_eq!(body["config"]["host"], "0.0.0.0");

    let (status, body) = json_body(
        client
            .post(format!("{base}/api/claude"))
            .bearer_auth(key)
            .json(&json!({"prompt": "hello"}))
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let calls: Vec<Value> = read_log(&root.join("calls.jsonl"))
        .into_iter()
        .filter(|c| c["event"] == "exit" && c["argv"] != json!(["--version"]))
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let env = &calls[0]["env"];
    assert_eq!(env["CCS_MARKER"], "inherited", "{env}");
    assert!(
        env.get("CCS_API_KEY").is_none(),
        "the CLI got the key: {env}"
    );

    let pid = child.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the server stops on SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    // Read after the exit: the log is written by a thread of its own and flushed at exit.
    let log = std::fs::read_to_string(root.join("logs/server.log")).unwrap_or_default();
    assert!(!log.is_empty(), "nothing was logged");
    assert!(!log.contains(key), "the key is in the log");
}

#[tokio::test]
async fn serve_on_every_interface_without_a_key_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let mut child = serve(&root, free_port(), None).spawn().expect("serve runs");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("serve exits")
        .expect("wait");
    let stderr = std::fs::read_to_string(root.join("stderr.log")).unwrap_or_default();
    assert!(!status.success(), "it must not start: {stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0 without API keys"),
        "{stderr}"
    );
}
