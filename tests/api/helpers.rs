//! `spawn_app()` and `TestApp`: each test gets its own daemon on port 0, its own temp dir,
//! config, storage and fake CLI (with its own CLAUDE_CONFIG_DIR and call log).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;

use actors::config::load::Environment;
use claude_code_server::app::{Application, Options};

pub const FAKE_CLAUDE: &str = env!("CARGO_BIN_EXE_fake-claude");

/// The virtualenv with the Python test tools (`tests/python-requirements.txt`), which
/// `./scripts/test.sh` makes and names in `CCS_PY_VENV`. Missing: the test fails, loudly.
pub fn py_venv() -> PathBuf {
    let dir = std::env::var_os("CCS_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/py-venv")));
    assert!(
        dir.join("bin/python").exists(),
        "the Python test tools are missing at {}: run ./scripts/test.sh, which installs them",
        dir.display()
    );
    dir
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub project: PathBuf,
    pub calls_log: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A daemon with the default test config.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(json!({})).await
}

/// A daemon whose config is the test defaults with `overrides` merged over them.
pub async fn spawn_app_with(overrides: Value) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    spawn_app_in(dir, overrides).await
}

/// A daemon in an existing directory (to restart on the same data).
pub async fn spawn_app_in(dir: TempDir, overrides: Value) -> TestApp {
    let root = dir.path().canonicalize().expect("canonical tempdir");
    let project = root.join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    let calls_log = root.join("calls.jsonl");
    let mut config = json!({
        "port": 0,
        "host": "127.0.0.1",
        "claudePath": FAKE_CLAUDE,
        "claudeEnv": {
            "CLAUDE_CONFIG_DIR": root.join("claude-home").display().to_string(),
            "FAKE_CLAUDE_LOG": calls_log.display().to_string(),
            "FAKE_CLAUDE_VERSION": "2.1.197",
        },
        "defaultProjectPath": project.display().to_string(),
        "allowedProjectRoots": [root.display().to_string()],
        "logFile": root.join("server.log").display().to_string(),
        "pidFile": root.join("server.pid").display().to_string(),
        "dataDir": root.join("data").display().to_string(),
        "storageType": "sqlite",
        "taskQueue": {"killGraceMs": 2000},
        "shutdownGraceMs": 500,
    });
    actors::config::merge::merge_patch(&mut config, &overrides);
    let config_path = root.join("config.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .expect("write config");
    let env = Environment {
        home: Some(root.clone()),
        port: None,
        host: None,
        path: std::env::var_os("PATH"),
        cwd: root.clone(),
        api_key: None,
    };
    let app = Application::build(Options {
        config_path: config_path.clone(),
        host: None,
        port: None,
        env: Some(env),
    })
    .await
    .expect("the application builds");
    let port = app.port();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder().build().expect("client"),
        dir,
        project,
        calls_log,
        stop: Some(stop_tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn post_claude(&self, body: Value) -> reqwest::Response {
        self.post_json("/api/claude", &body).await
    }

    /// `POST /api/claude` with `body` and `async: true`; asserts the 202 and returns the id.
    pub async fn enqueue(&self, mut body: Value) -> String {
        body["async"] = json!(true);
        let (s, b) = json_body(self.post_claude(body).await).await;
        assert_eq!(s, 202, "{b}");
        b["task_id"].as_str().expect("task id").to_string()
    }

    /// Start stopping the daemon the way SIGTERM does, without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stop the daemon the way SIGTERM does and wait for it; gives back the directory.
    pub async fn shutdown(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("clean shutdown");
        }
        let TestApp { dir, .. } = self;
        dir
    }

    /// Every run of the fake CLI logged so far (final records; not the start lines, and not
    /// the daemon's `--version` check).
    pub fn calls(&self) -> Vec<Value> {
        read_log(&self.calls_log)
            .into_iter()
            .filter(|c| c.get("event").and_then(Value::as_str) == Some("exit"))
            .filter(|c| c["argv"] != serde_json::json!(["--version"]))
            .collect()
    }

    /// The start lines: one per spawned run of the fake, with pid and pgid (not the daemon's
    /// `--version` check, which runs beside start-up).
    pub fn starts(&self) -> Vec<Value> {
        read_log(&self.calls_log)
            .into_iter()
            .filter(|c| c.get("event").and_then(Value::as_str) == Some("start"))
            .filter(|c| c["argv"] != serde_json::json!(["--version"]))
            .collect()
    }

    /// Poll `GET /api/tasks/:id` until `pred` holds (10 s at most); returns the last task seen.
    pub async fn wait_for_task(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = json_body(self.get(&format!("/api/tasks/{id}")).await).await;
            let task = body["task"].clone();
            if pred(&task) || Instant::now() >= end {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `n` fakes have started.
    pub async fn wait_for_starts(&self, n: usize) -> Vec<Value> {
        poll_until(Duration::from_secs(10), || {
            let s = self.starts();
            (s.len() >= n).then_some(s)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{n} CLI run(s) did not start; log: {:?}",
                read_log(&self.calls_log)
            )
        })
    }
}

/// The argv a logged fake run was called with.
pub fn argv(call: &Value) -> Vec<String> {
    call["argv"]
        .as_array()
        .expect("argv array")
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

/// The most runs alive at once, from the fake's logged start and end times (RFC 3339 UTC
/// strings compare in time order).
pub fn most_alive_at_once(calls: &[Value]) -> usize {
    let spans: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| {
            (
                c["started_at"].as_str().expect("started_at"),
                c["ended_at"].as_str().expect("ended_at"),
            )
        })
        .collect();
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

pub fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Poll `check` every 20 ms until it returns `Some` or the deadline passes.
pub async fn poll_until<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`poll_until`], for an async check (polled every 50 ms).
pub async fn poll_until_async<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True when no process is left in the process group `pgid`.
pub fn group_is_gone(pgid: i64) -> bool {
    // SAFETY: kill with signal 0 only checks for existence; a negative pid names a group.
    let r = unsafe { libc::kill(-(pgid as libc::pid_t), 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Wait (bounded) until the group is gone; false if something of it is still alive.
pub async fn wait_group_gone(pgid: i64, within: Duration) -> bool {
    poll_until(within, || group_is_gone(pgid).then_some(()))
        .await
        .is_some()
}

/// The first `data:` line of a streamed answer, as JSON (the stream stays open).
pub async fn first_data<S>(body: &mut S) -> Value
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first event")
        .expect("a body")
        .expect("bytes");
    let first = String::from_utf8_lossy(&first);
    let line = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    serde_json::from_str(line).expect("json data")
}

/// Hang up a streaming client once its run has started, and check the run goes with it: its
/// process group gone, task `task_id` cancelled.
pub async fn hang_up_and_check_the_run_is_cancelled(
    app: &TestApp,
    body: impl Sized,
    task_id: &str,
) {
    // The run's own start line: the daemon's `--version` check logs one too.
    let started = poll_until(Duration::from_secs(10), || {
        app.starts()
            .into_iter()
            .find(|s| s["argv"] != json!(["--version"]))
    })
    .await
    .expect("the run started");
    drop(body);
    let pgid = started["pgid"].as_i64().expect("pgid");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)).await,
        "the run outlived its streaming client"
    );
    let task = app
        .wait_for_task(task_id, |t| t["status"] == "cancelled")
        .await;
    assert_eq!(task["status"], "cancelled", "{task}");
}

pub async fn json_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value)
}

/// Assert the contract's error shape and return the body.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "status; body: {body}");
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["code"], json!(want_code), "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

/// The named events of an SSE body, `: ping` comments skipped: (`event:` name, `data:` JSON).
/// Every event must be exactly an `event:` line and one `data:` line.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split_terminator("\n\n")
        .filter(|block| !block.starts_with(':'))
        .map(|block| {
            let (name, data) = block
                .split_once('\n')
                .unwrap_or_else(|| panic!("an event line, then a data line: {block:?}"));
            let name = name
                .strip_prefix("event: ")
                .unwrap_or_else(|| panic!("an event line first: {block:?}"));
            let data = data
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("a data line second: {block:?}"));
            assert!(!data.contains('\n'), "one data line: {block:?}");
            let data =
                serde_json::from_str(data).unwrap_or_else(|_| panic!("JSON data: {block:?}"));
            (name.to_string(), data)
        })
        .collect()
}
