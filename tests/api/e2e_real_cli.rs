//! End to end: the daemon runs the REAL Claude CLI (pinned 2.1.197, installed by
//! `./scripts/test.sh`), which talks to the in-process mock of the Anthropic API.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;
use crate::mock_anthropic::*;

const CLI_VERSION: &str = "2.1.197";

/// The real CLI: `CCS_REAL_CLAUDE`, else the cache `./scripts/test.sh` fills. Never skips.
pub fn real_claude() -> PathBuf {
    if let Some(path) = std::env::var_os("CCS_REAL_CLAUDE") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "CCS_REAL_CLAUDE={} does not exist: run ./scripts/test.sh to install the real Claude CLI",
            path.display()
        );
        return path;
    }
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        ".cache/claude-cli-{CLI_VERSION}/node_modules/.bin/claude"
    ));
    assert!(
        default.exists(),
        "the real Claude CLI is not installed (no CCS_REAL_CLAUDE, no {}): run ./scripts/test.sh, \
         which installs it and runs these tests",
        default.display()
    );
    default
}

/// What keeps the real CLI offline, quick and pointed at the mock.
pub fn cli_env(mock: &MockAnthropic) -> Vec<(&'static str, String)> {
    vec![
        ("ANTHROPIC_BASE_URL", mock.base_url()),
        ("ANTHROPIC_API_KEY", "sk-ant-mock-e2e".to_string()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
        ("DISABLE_TELEMETRY", "1".to_string()),
        ("DISABLE_ERROR_REPORTING", "1".to_string()),
    ]
}

/// A daemon running the real CLI against `mock` (its own CLAUDE_CONFIG_DIR from the defaults).
pub async fn spawn_real(mock: &MockAnthropic) -> TestApp {
    spawn_real_with(mock, json!({})).await
}

/// [`spawn_real`] with more config (`overrides`' top-level keys).
pub async fn spawn_real_with(mock: &MockAnthropic, overrides: Value) -> TestApp {
    let mut env = serde_json::Map::new();
    for (k, v) in cli_env(mock) {
        env.insert(k.to_string(), json!(v));
    }
    // The fake CLI's variables mean nothing to the real one.
    env.insert("FAKE_CLAUDE_LOG".into(), Value::Null);
    env.insert("FAKE_CLAUDE_VERSION".into(), Value::Null);
    let mut config = json!({
        "claudePath": real_claude().display().to_string(),
        "claudeEnv": env,
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), overrides.as_object()) {
        config.extend(extra.clone());
    }
    spawn_app_with(config).await
}

/// The test's temp dir, which the environment of each of its CLI processes names (through
/// `CLAUDE_CONFIG_DIR`).
fn root_of(app: &TestApp) -> String {
    app.dir
        .path()
        .canonicalize()
        .expect("canonical tempdir")
        .display()
        .to_string()
}

/// Live processes (zombies left out) whose environment contains `needle`: the CLI of a test
/// and everything it started. `(pid, "ppid= pgid= sid= command line")`.
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        // `pid (comm) state ppid pgrp session ...`
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' ').collect())
            .unwrap_or_default();
        if fields.len() < 4 || matches!(fields[0], "Z" | "X") {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push((
            pid,
            format!(
                "ppid={} pgid={} sid={} {}",
                fields[1],
                fields[2],
                fields[3],
                cmdline.trim()
            ),
        ));
    }
    found
}

/// Poll until no process of the test is left; else SIGKILL the survivors (so a failing test
/// leaves nothing behind) and return them.
async fn wait_all_gone(needle: &str, within: Duration) -> Result<(), Vec<(u32, String)>> {
    if poll_until(within, || processes_naming(needle).is_empty().then_some(()))
        .await
        .is_some()
    {
        return Ok(());
    }
    let left = processes_naming(needle);
    for (pid, _) in &left {
        // SAFETY: plain kill(2) of a pid just listed as running with this test's environment.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    Err(left)
}

#[tokio::test]
async fn e2e_sync_run_answers_with_the_mock_reply_cost_usage_and_session() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "hello ALPHA"})).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["success"], true, "{b}");
    assert_eq!(
        b["result"], "mock reply: turns=1 first=\"hello ALPHA\"",
        "{b}"
    );
    assert_eq!(b["is_error"], false, "{b}");
    assert!(b["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{b}");
    assert_eq!(b["usage"]["input_tokens"], INPUT_TOKENS, "{b}");
    assert_eq!(b["usage"]["output_tokens"], OUTPUT_TOKENS, "{b}");
    assert_eq!(b["num_turns"], 1, "{b}");
    let session = b["session_id"].as_str().expect("a session id");
    assert!(uuid::Uuid::parse_str(session).is_ok(), "{b}");

    let seen = mock.message_requests();
    let main: Vec<&SeenRequest> = seen.iter().filter(|r| r.stream).collect();
    assert_eq!(main.len(), 1, "one streamed model call: {seen:#?}");
    assert_eq!(main[0].user_texts, ["hello ALPHA"], "{:#?}", main[0]);
    assert_eq!(main[0].model.as_deref(), b["model"].as_str(), "{b}");
    assert!(main[0].system.is_some(), "the CLI sends its system prompt");
    assert_eq!(main[0].api_key.as_deref(), Some("sk-ant-mock-e2e"));
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.method == "HEAD" && r.path == "/"),
        "the CLI probes HEAD /: {:#?}",
        mock.requests()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_prompts_reach_the_cli_intact_through_stdin() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;

    let dash = "--version -p are words here, not flags";
    let (s, b) = json_body(app.post_claude(json!({"prompt": dash})).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["result"], format!("mock reply: turns=1 first=\"{dash}\""));

    // Over the 128 KiB limit of one argv string: only stdin can carry it.
    let mut big = String::from("BEGIN ");
    while big.len() < 200 * 1024 - 4 {
        big.push_str(&format!("{} ", big.len()));
    }
    big.push_str(" END");
    let (s, b) = json_body(app.post_claude(json!({"prompt": big})).await).await;
    assert_eq!(s, 200, "{}", b["error"]);
    let last = mock
        .message_requests()
        .into_iter()
        .rfind(|r| r.stream)
        .expect("a model call");
    let got = last.first_user_text().unwrap_or("");
    assert_eq!(got.len(), big.len(), "the 200 KiB prompt was cut");
    assert!(got == big, "the 200 KiB prompt arrived altered");
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_api_errors_are_502_with_the_cli_message_and_status() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;

    let (s, b) = json_body(app.post_claude(json!({"prompt": "fail ERR500"})).await).await;
    assert_error(s, &b, 502, "cli_api_error");
    assert_eq!(b["details"]["api_error_status"], 500, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("500") && e.contains("Internal server error")),
        "the CLI's message is in the error: {b}"
    );

    let (s, b) = json_body(app.post_claude(json!({"prompt": "fail ERR401"})).await).await;
    assert_error(s, &b, 502, "cli_not_authenticated");
    assert_eq!(b["details"]["api_error_status"], 401, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("Invalid API key")),
        "the CLI's message is in the error: {b}"
    );
    let replies: Vec<String> = mock
        .message_requests()
        .into_iter()
        .map(|r| r.reply)
        .collect();
    assert_eq!(
        replies,
        ["error 500", "error 401"],
        "no retries (CLAUDE_CODE_MAX_RETRIES=0)"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_max_turns_is_422() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "TOOLLOOP", "max_turns": 1, "allowed_tools": ["Bash"]}))
            .await,
    )
    .await;
    assert_error(s, &b, 422, "max_turns_exceeded");
    assert_eq!(b["details"]["subtype"], "error_max_turns", "{b}");
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_budget_exceeded_is_429() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "BIG spender", "max_budget_usd": 0.0001}))
            .await,
    )
    .await;
    assert_error(s, &b, 429, "budget_exceeded");
    assert_eq!(b["details"]["subtype"], "error_max_budget_usd", "{b}");
    app.shutdown().await;
}

#[tokio::test]
async fn e2e_a_denied_tool_call_is_listed_in_permission_denials() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (s, b) = json_body(app.post_claude(json!({"prompt": "make a dir TOOLW"})).await).await;
    assert_eq!(s, 200, "{b}");
    let denials = b["permission_denials"]
        .as_array()
        .expect("permission_denials");
    assert_eq!(denials.len(), 1, "{b}");
    assert_eq!(denials[0]["tool_name"], "Bash", "{b}");
    assert_eq!(denials[0]["tool_input"]["command"], WRITE_COMMAND, "{b}");
    assert!(
        !app.project.join("x").exists(),
        "the denied command must not have run"
    );
    // The model got the refusal back as an error tool_result.
    let seen = mock.message_requests();
    assert_eq!(
        seen.iter().filter(|r| !r.tool_results.is_empty()).count(),
        1,
        "{seen:#?}"
    );
    app.shutdown().await;
}

/// Send `prompt` with `timeout_ms`; wait (racing the request) until `ready` holds, then return
/// the test's processes seen at that moment and the (504) answer.
async fn run_until_timeout(
    app: &TestApp,
    body: Value,
    what: &str,
    ready: impl Fn(&[(u32, String)]) -> bool,
) -> (Vec<(u32, String)>, u16, Value) {
    let root = root_of(app);
    let request = app.post_claude(body);
    tokio::pin!(request);
    let seen = tokio::select! {
        resp = &mut request => {
            let (s, b) = json_body(resp).await;
            panic!("the request ended ({s}: {b}) before {what}");
        }
        seen = poll_until(Duration::from_secs(30), || {
            let procs = processes_naming(&root);
            ready(&procs).then_some(procs)
        }) => seen.unwrap_or_else(|| panic!("{what} never happened")),
    };
    let (s, b) = json_body(request.await).await;
    (seen, s, b)
}

#[tokio::test]
async fn e2e_a_timeout_is_504_and_kills_the_cli() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let root = root_of(&app);
    let (procs, s, b) = run_until_timeout(
        &app,
        // Roomy: the CLI must reach the mock first, even on a loaded machine.
        json!({"prompt": "HANG forever", "timeout_ms": 8000}),
        "the CLI called the mock",
        |_| mock.hanging() > 0,
    )
    .await;
    assert!(
        procs.iter().any(|(_, cmd)| cmd.contains("claude")),
        "the CLI runs while the mock hangs: {procs:?}"
    );
    assert_error(s, &b, 504, "timeout");
    if let Err(left) = wait_all_gone(&root, Duration::from_secs(10)).await {
        panic!("processes of the run survived its timeout: {left:?}");
    }
    assert!(
        poll_until(Duration::from_secs(5), || (mock.hanging() == 0)
            .then_some(()))
        .await
        .is_some(),
        "the killed CLI's connection to the API is closed"
    );
    app.shutdown().await;
}

/// The CLI 2.1.197 runs its Bash tool detached (`setsid`: its own session and process group),
/// so the tool is out of the CLI's group. On SIGTERM within about the first 3 s of a tool's
/// life the CLI exits at once and leaves the tool running; later (once the command became a
/// background "task") it kills the task itself. Stopping the run as soon as the tool appears
/// lands in the first window every time: only the run marker sweep can catch the tool there.
#[tokio::test]
async fn e2e_stopping_a_run_also_kills_the_tools_the_cli_started() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let root = root_of(&app);
    let (s, b) = json_body(
        app.post_claude(json!({"prompt": "TOOLSLEEP", "allowed_tools": ["Bash"], "async": true}))
            .await,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let id = b["task_id"].as_str().expect("task id").to_string();
    let procs = poll_until(Duration::from_secs(30), || {
        let procs = processes_naming(&root);
        procs
            .iter()
            .any(|(_, cmd)| cmd.contains(SLEEP_COMMAND) && !cmd.contains("claude"))
            .then_some(procs)
    })
    .await
    .expect("the CLI's Bash tool started the sleep");
    assert!(procs.len() >= 2, "the CLI and its tool: {procs:?}");
    let resp = app
        .client
        .delete(app.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(resp.status().as_u16(), 200);
    if let Err(left) = wait_all_gone(&root, Duration::from_secs(10)).await {
        panic!("processes of the run survived its cancel: {left:?}");
    }
    app.shutdown().await;
}

/// Run the real CLI directly (no daemon) once: stdin prompt, stream-json; its output lines.
async fn run_cli_directly(
    mock: &MockAnthropic,
    config_dir: &Path,
    cwd: &Path,
    session_flag: &str,
    prompt: &str,
) -> Vec<Value> {
    let mut child = tokio::process::Command::new(real_claude())
        .args([
            "-p",
            "--output-format=stream-json",
            "--verbose",
            "--model=claude-sonnet-4-5",
            session_flag,
        ])
        .current_dir(cwd)
        .env_remove("IS_SANDBOX")
        .envs(cli_env(mock))
        .env("CLAUDE_CONFIG_DIR", config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the real CLI starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(prompt.as_bytes())
        .await
        .expect("write the prompt");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CLI finishes within 60 s")
        .expect("the CLI's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{session_flag}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn result_line(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rfind(|l| l["type"] == "result")
        .unwrap_or_else(|| panic!("no result line in {lines:?}"))
}

/// Validates the mock for sessions: a resumed conversation reaches it with its history.
#[tokio::test]
async fn e2e_the_mock_sees_the_history_of_a_resumed_session() {
    let mock = MockAnthropic::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path().join("project");
    std::fs::create_dir_all(&cwd).expect("project dir");
    let config_dir = dir.path().join("claude-home");
    let session = uuid::Uuid::new_v4().to_string();

    let first = run_cli_directly(
        &mock,
        &config_dir,
        &cwd,
        &format!("--session-id={session}"),
        "first message ALPHA",
    )
    .await;
    let r = result_line(&first);
    assert_eq!(
        r["result"], "mock reply: turns=1 first=\"first message ALPHA\"",
        "{r}"
    );
    assert_eq!(r["session_id"], session.as_str(), "{r}");

    let second = run_cli_directly(
        &mock,
        &config_dir,
        &cwd,
        &format!("--resume={session}"),
        "second message BETA",
    )
    .await;
    let r = result_line(&second);
    assert_eq!(
        r["result"], "mock reply: turns=2 first=\"first message ALPHA\"",
        "{r}"
    );
    assert_eq!(r["session_id"], session.as_str(), "{r}");

    let last = mock
        .message_requests()
        .into_iter()
        .rfind(|r| r.stream)
        .expect("a model call");
    assert_eq!(
        last.user_texts,
        ["first message ALPHA", "second message BETA"],
        "{last:#?}"
    );
}

/// Poll a task's approvals until one is pending (60 s at most: the real CLI starts slowly).
async fn wait_real_pending(app: &TestApp, id: &str) -> Value {
    let found = poll_until_async(Duration::from_secs(60), || async {
        let (_, b) = json_body(app.get(&format!("/api/tasks/{id}/approvals")).await).await;
        b["approvals"]
            .as_array()
            .and_then(|l| l.iter().find(|a| a["status"] == "pending").cloned())
    })
    .await;
    found.unwrap_or_else(|| panic!("no pending approval for {id}"))
}

async fn wait_real_final(app: &TestApp, id: &str) -> Value {
    poll_until_async(Duration::from_secs(60), || async {
        let (_, b) = json_body(app.get(&format!("/api/tasks/{id}")).await).await;
        let done = ["completed", "failed", "cancelled", "timeout"]
            .contains(&b["task"]["status"].as_str().unwrap_or(""));
        done.then(|| b["task"].clone())
    })
    .await
    .unwrap_or_else(|| panic!("task {id} did not end"))
}

#[tokio::test]
async fn e2e_approvals_allow_and_deny_a_mkdir_over_http() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;

    // Allowed: the CLI runs the command, and the model is told its result.
    let id = app
        .enqueue(json!({"prompt": "make a dir TOOLW", "approvals": true}))
        .await;
    let a = wait_real_pending(&app, &id).await;
    assert_eq!(a["tool_name"], "Bash", "{a}");
    assert_eq!(a["input"]["command"], WRITE_COMMAND, "{a}");
    let (_, t) = json_body(app.get(&format!("/api/tasks/{id}")).await).await;
    assert_eq!(t["task"]["status"], "processing");
    assert_eq!(t["task"]["pending_approvals"], 1);
    let path = format!(
        "/api/tasks/{id}/approvals/{}",
        a["id"].as_str().expect("id")
    );
    let (s, b) = json_body(app.post_json(&path, &json!({"decision": "allow"})).await).await;
    assert_eq!(s, 200, "{b}");
    let task = wait_real_final(&app, &id).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert!(app.project.join("x").is_dir(), "the allowed mkdir ran");
    assert_eq!(task["permission_denials"], json!([]), "{task}");
    assert!(
        task["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("tool said:")),
        "the model got the tool's result: {task}"
    );
    let tool_results: Vec<String> = mock
        .message_requests()
        .iter()
        .flat_map(|r| r.tool_results.clone())
        .collect();
    assert_eq!(tool_results.len(), 1, "{tool_results:?}");

    // Denied: the command does not run, and the denial message reaches the model.
    let elsewhere = app.project.join("deny-here");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let id = app
        .enqueue(json!({"prompt": "make a dir TOOLW", "approvals": true,
                        "project_path": elsewhere.display().to_string()}))
        .await;
    let a = wait_real_pending(&app, &id).await;
    let path = format!(
        "/api/tasks/{id}/approvals/{}",
        a["id"].as_str().expect("id")
    );
    let message = "No directories today";
    let (s, b) = json_body(
        app.post_json(&path, &json!({"decision": "deny", "message": message}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["approval"]["status"], "denied");
    let task = wait_real_final(&app, &id).await;
    assert_eq!(task["status"], "completed", "{task}");
    // The real CLI lists a denial answered over stdin like any other (the fake does the same).
    assert_eq!(task["permission_denials"][0]["tool_name"], "Bash", "{task}");
    assert!(
        !elsewhere.join("x").exists(),
        "the denied mkdir did not run"
    );
    assert!(
        task["result"].as_str().is_some_and(|r| r.contains(message)),
        "the model was told the denial: {task}"
    );
    let told = mock
        .message_requests()
        .iter()
        .flat_map(|r| r.tool_results.clone())
        .any(|t| t.contains(message));
    assert!(told, "the denial reached the API as the tool's result");
    app.shutdown().await;
}

/// The last streamed model call the mock saw (the CLI's main conversation call).
fn last_model_call(mock: &MockAnthropic) -> SeenRequest {
    mock.message_requests()
        .into_iter()
        .rfind(|r| r.stream)
        .expect("a model call")
}

/// Anthropic's Messages API through the real CLI: a plain message, then a streamed one
/// continuing its session; the system prompt reaches the model on top of the CLI's own.
#[tokio::test]
async fn e2e_anthropic_messages_plain_and_streamed() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let post = |body: Value, session: Option<&str>| {
        let mut req = app
            .client
            .post(app.url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        if let Some(sid) = session {
            req = req.header("X-Session-Id", sid);
        }
        req.send()
    };
    let resp = post(
        json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "system": "Answer as a pirate.",
               "messages": [{"role": "user", "content": "hello ALPHA"}]}),
        None,
    )
    .await
    .expect("send");
    let sid = resp
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("X-Session-Id")
        .to_string();
    let (s, b) = json_body(resp).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["content"],
        json!([{"type": "text", "text": "mock reply: turns=1 first=\"hello ALPHA\""}]),
        "{b}"
    );
    assert_eq!(b["stop_reason"], "end_turn", "{b}");
    assert_eq!(b["usage"]["input_tokens"], INPUT_TOKENS, "{b}");
    assert_eq!(b["usage"]["output_tokens"], OUTPUT_TOKENS, "{b}");
    let call = last_model_call(&mock);
    let system = call.system.unwrap_or_default();
    assert!(
        system.contains("Answer as a pirate.") && system.len() > "Answer as a pirate.".len(),
        "appended to the CLI's own system prompt: {system:.300}"
    );

    let resp = post(
        json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": true,
               "messages": [{"role": "user", "content": "again BETA"}]}),
        Some(&sid),
    )
    .await
    .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let events = sse_events(&resp.text().await.expect("body"));
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(
        names[names.len() - 2..],
        ["message_delta", "message_stop"],
        "{names:?}"
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    // The session went on: the model saw both turns and the first prompt.
    assert_eq!(
        text, "mock reply: turns=2 first=\"hello ALPHA\"",
        "{events:?}"
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{delta}");
    assert_eq!(delta["usage"]["output_tokens"], OUTPUT_TOKENS, "{delta}");
    assert_eq!(
        last_model_call(&mock).user_texts,
        ["hello ALPHA", "again BETA"]
    );
    app.shutdown().await;
}

/// OpenAI's Responses API through the real CLI: a plain response, then a streamed one
/// continuing it by `previous_response_id`.
#[tokio::test]
async fn e2e_responses_plain_and_streamed() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real(&mock).await;
    let (s, r) = json_body(
        app.post_json(
            "/v1/responses",
            &json!({"model": "claude-sonnet-4-5", "instructions": "Answer as a pirate.", "input": "hello GAMMA"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(
        r["output"][0]["content"][0]["text"], "mock reply: turns=1 first=\"hello GAMMA\"",
        "{r}"
    );
    assert_eq!(r["usage"]["output_tokens"], OUTPUT_TOKENS, "{r}");
    assert!(last_model_call(&mock)
        .system
        .is_some_and(|s| s.contains("Answer as a pirate.")));

    let resp = app
        .post_json(
            "/v1/responses",
            &json!({"model": "claude-sonnet-4-5", "stream": true, "previous_response_id": r["id"],
                    "input": [{"role": "user", "content": "again DELTA"}]}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let events = sse_events(&resp.text().await.expect("body"));
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "response.completed", "{events:?}");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(
        text, "mock reply: turns=2 first=\"hello GAMMA\"",
        "{events:?}"
    );
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        json!(text)
    );
    assert_eq!(done["response"]["previous_response_id"], r["id"]);
    assert_eq!(
        last_model_call(&mock).user_texts,
        ["hello GAMMA", "again DELTA"]
    );
    app.shutdown().await;
}

/// A run the real CLI stops at its budget is a truncated message: the text it wrote, and
/// `stop_reason: max_tokens` (both plain and streamed).
#[tokio::test]
async fn e2e_a_budget_stop_is_a_truncated_message() {
    let mock = MockAnthropic::start().await;
    let app = spawn_real_with(&mock, json!({"maxBudgetUsd": 0.0001})).await;
    let body = json!({"max_tokens": 64, "messages": [{"role": "user", "content": "BIG spender"}]});
    let (s, b) = json_body(app.post_json("/v1/messages", &body).await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["stop_reason"], "max_tokens", "{b}");
    let written = "mock reply: turns=1 first=\"BIG spender\"";
    assert_eq!(
        b["content"],
        json!([{"type": "text", "text": written}]),
        "{b}"
    );

    let mut body = body;
    body["stream"] = json!(true);
    let resp = app.post_json("/v1/messages", &body).await;
    let events = sse_events(&resp.text().await.expect("body"));
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, written, "{events:?}");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens", "{delta}");
    app.shutdown().await;
}
