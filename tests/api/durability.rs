//! A 2xx means stored: the daemon is killed with SIGKILL right after accepting tasks, and a new
//! daemon on the same data finds every one of them; the run that was going ends `interrupted`
//! and no process of it is left, and so does a sync run that was waiting (its caller is gone).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const SERVER: &str = env!("CARGO_BIN_EXE_claude-code-server");

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The daemon binary as a child process (to kill it with SIGKILL).
pub(crate) struct Daemon {
    pub child: Child,
    pub base: String,
}

pub(crate) async fn start_daemon(
    config: &std::path::Path,
    home: &std::path::Path,
    port: u16,
) -> Daemon {
    start_daemon_with_env(config, home, port, &[]).await
}

/// [`start_daemon`] with more environment variables (e.g. a failpoint).
pub(crate) async fn start_daemon_with_env(
    config: &std::path::Path,
    home: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
) -> Daemon {
    let child = Command::new(SERVER)
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("HOME", home)
        .env_remove("PORT")
        .env_remove("HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    // From here on a failed assertion kills it (`Drop`).
    let daemon = Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let base = &daemon.base;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() || r.status().as_u16() == 503 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not answer /health"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon
}

/// A test that fails (or simply ends) must not leave its daemon running: SIGKILL it, as the
/// tests themselves do. Killing one already killed and waited for is a harmless error.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files of a daemon run as a child process: a temp dir with its config (the fake CLI,
/// SQLite in `data/`, a free port, no rate limit, `extra` merged over), and its calls log.
pub(crate) struct DaemonDir {
    /// Kept for the life of the test.
    pub _dir: tempfile::TempDir,
    pub root: std::path::PathBuf,
    pub config: std::path::PathBuf,
    pub calls: std::path::PathBuf,
    pub port: u16,
}

pub(crate) fn daemon_dir(extra: Value) -> DaemonDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let project = root.join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    let calls = root.join("calls.jsonl");
    let port = free_port();
    let config = root.join("config.json");
    let mut doc = json!({
        "port": port,
        "claudePath": FAKE_CLAUDE,
        "claudeEnv": {
            "CLAUDE_CONFIG_DIR": root.join("claude-home").display().to_string(),
            "FAKE_CLAUDE_LOG": calls.display().to_string(),
        },
        "defaultProjectPath": project.display().to_string(),
        "dataDir": root.join("data").display().to_string(),
        "pidFile": root.join("server.pid").display().to_string(),
        "logFile": root.join("server.log").display().to_string(),
        "rateLimit": {"enabled": false},
    });
    actors::config::merge::merge_patch(&mut doc, &extra);
    std::fs::write(&config, doc.to_string()).expect("config");
    DaemonDir {
        _dir: dir,
        root,
        config,
        calls,
        port,
    }
}

#[tokio::test]
async fn accepted_tasks_survive_kill_9_and_the_running_one_is_interrupted_once() {
    let DaemonDir {
        _dir,
        root,
        config,
        calls,
        port,
    } = daemon_dir(json!({"taskQueue": {"concurrency": 1}}));

    let mut daemon = start_daemon(&config, &root, port).await;
    let client = reqwest::Client::new();
    let submit = |prompt: String| {
        let client = client.clone();
        let url = format!("{}/api/claude", daemon.base);
        async move {
            let resp = client
                .post(url)
                .json(&json!({"prompt": prompt, "async": true}))
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status().as_u16(), 202);
            resp.json::<Value>().await.expect("json")["task_id"]
                .as_str()
                .expect("id")
                .to_string()
        }
    };
    let running = submit("[[fake:hang]] running when killed".into()).await;
    // Wait until it runs, so it is `processing` when the daemon dies.
    let started = poll_until(Duration::from_secs(10), || {
        read_log(&calls)
            .into_iter()
            .find(|c| c["event"] == "start" && c["argv"] != json!(["--version"]))
    })
    .await
    .expect("the first run started");
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(submit(format!("queued {i}")).await);
    }
    // A sync run waits behind them; its caller will lose its connection with the daemon.
    let waiting = tokio::spawn(
        client
            .post(format!("{}/api/claude", daemon.base))
            .json(&json!({"prompt": "sync, waiting when killed"}))
            .send(),
    );
    let pending_sync = || {
        let client = client.clone();
        let url = format!("{}/api/tasks?status=pending&limit=100", daemon.base);
        async move {
            let page: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            page["tasks"]
                .as_array()?
                .iter()
                .find(|t| t["mode"] == "sync")
                .and_then(|t| t["id"].as_str().map(String::from))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let sync_id = loop {
        if let Some(id) = pending_sync().await {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the sync run was not stored as pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The last 202 has just arrived: kill -9 now.
    daemon.child.kill().expect("SIGKILL");
    let _ = daemon.child.wait();
    let cut = waiting.await.expect("join");
    assert!(
        cut.is_err() || cut.is_ok_and(|r| !r.status().is_success()),
        "the sync caller got an answer from a killed daemon"
    );

    // The hanging CLI dies with the daemon (its watchdog kills the run), before any restart.
    let pgid = started["pgid"].as_i64().expect("pgid");
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)).await,
        "the run of the killed daemon outlived it"
    );
    let mut daemon = start_daemon(&config, &root, port).await;

    let get = |id: String| {
        let client = client.clone();
        let url = format!("{}/api/tasks/{id}", daemon.base);
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")["task"]
                .clone()
        }
    };
    let t = get(running.clone()).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "interrupted");
    assert_eq!(t["attempts"], 1);
    let t = get(sync_id).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"]["code"], "interrupted");
    assert_eq!(t["attempts"], 0, "{t}");
    for id in &pending {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = get(id.clone()).await;
            if t["status"] == "completed" {
                assert_eq!(t["attempts"], 1, "{t}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not complete after the restart: {t}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Each queued prompt ran exactly once, in submission order; the interrupted ones never (again).
    let runs: Vec<String> = read_log(&calls)
        .into_iter()
        .filter(|c| c["event"] == "exit" && c["argv"] != json!(["--version"]))
        .filter_map(|c| c["stdin"].as_str().map(String::from))
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("queued {i}")).collect();
    assert_eq!(runs, expected);
    // The interrupted run was announced like any other end: the statistics count it.
    let summary: Value = client
        .get(format!("{}/api/statistics/summary", daemon.base))
        .send()
        .await
        .expect("statistics")
        .json()
        .await
        .expect("json");
    assert_eq!(summary["summary"]["requests"]["failed"], 2, "{summary}");
    assert_eq!(
        summary["summary"]["requests"]["successful"], 20,
        "{summary}"
    );
    daemon.child.kill().expect("stop");
    let _ = daemon.child.wait();
}
