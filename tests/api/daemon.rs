//! `start` / `stop` / `status` from a shell: the built binary against a temp config with a
//! fixed free port (discovery reads the port from the config, so port 0 will not do).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use claude_code_server::daemon::is_gone;

use crate::helpers::FAKE_CLAUDE;

const BIN: &str = env!("CARGO_BIN_EXE_claude-code-server");

/// A config in a temp dir, and a guard that stops whatever daemon the test left running.
struct Setup {
    dir: TempDir,
    config: PathBuf,
    port: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let project = root.join("project");
        std::fs::create_dir_all(&project).expect("project");
        let port = free_port();
        let config = root.join("config.json");
        let doc = json!({
            "port": port,
            "host": "127.0.0.1",
            "claudePath": FAKE_CLAUDE,
            "claudeEnv": {"CLAUDE_CONFIG_DIR": root.join("claude-home").display().to_string()},
            "defaultProjectPath": project.display().to_string(),
            "allowedProjectRoots": [root.display().to_string()],
            "logFile": root.join("logs/server.log").display().to_string(),
            "pidFile": root.join("run/server.pid").display().to_string(),
            "dataDir": root.join("data").display().to_string(),
            "storageType": "sqlite",
            "shutdownGraceMs": 500,
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
        Setup { dir, config, port }
    }

    fn pid_file(&self) -> PathBuf {
        self.root().join("run/server.pid")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical")
    }

    /// Run `claude-code-server <cmd> --config <ours>` with a clean environment.
    async fn run(&self, cmd: &str) -> Output {
        let out = tokio::process::Command::new(BIN)
            .arg(cmd)
            .arg("--config")
            .arg(&self.config)
            .env("HOME", self.root())
            .env_remove("CCS_CONFIG")
            .env_remove("CCS_API_KEY")
            .env_remove("PORT")
            .env_remove("HOST")
            .output();
        tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("the command ends")
            .expect("the binary runs")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // A failed assertion must not leave a daemon behind.
        let _ = std::process::Command::new(BIN)
            .arg("stop")
            .arg("--config")
            .arg(&self.config)
            .env("HOME", self.dir.path())
            .output();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pid in "… (pid 1234) …".
fn pid_in(s: &str) -> i32 {
    let after = s
        .split("(pid ")
        .nth(1)
        .unwrap_or_else(|| panic!("no pid in {s}"));
    after
        .split(')')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {s}"))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn start_status_stop_and_stale_pid_files() {
    let s = Setup::new();

    let out = s.run("status").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stdout(&out).contains("not running"), "{}", text(&out));

    let out = s.run("start").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = pid_in(&stdout(&out));
    assert_eq!(read_pid(&s.pid_file()), Some(pid), "pid file written");
    let health = reqwest::get(format!("http://127.0.0.1:{}/health", s.port))
        .await
        .expect("health answers");
    assert_eq!(health.status().as_u16(), 200);

    let out = s.run("start").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("already running"), "{}", text(&out));

    let out = s.run("status").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let o = stdout(&out);
    assert!(o.contains(&format!("pid {pid}")), "{o}");
    assert!(o.contains(env!("CARGO_PKG_VERSION")), "{o}");
    assert!(o.contains(&format!("127.0.0.1:{}", s.port)), "{o}");
    assert!(o.contains("concurrency 3"), "{o}");

    let out = s.run("stop").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(is_gone(pid), "the daemon is gone");
    assert!(!s.pid_file().exists(), "pid file removed");

    let out = s.run("status").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = s.run("stop").await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stop when stopped succeeds: {}",
        text(&out)
    );
    assert!(stdout(&out).contains("not running"), "{}", text(&out));

    // A dead pid: reported, removed.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id() as i32;
    child.wait().expect("wait");
    std::fs::write(s.pid_file(), format!("{dead}\n")).expect("write");
    let out = s.run("status").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stdout(&out).contains("stale"), "{}", text(&out));
    assert!(!s.pid_file().exists(), "stale pid file removed");

    // A live pid of another program (this test): not ours, so stale as well.
    std::fs::write(s.pid_file(), format!("{}\n", std::process::id())).expect("write");
    let out = s.run("status").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stdout(&out).contains("another program"), "{}", text(&out));
    assert!(!s.pid_file().exists(), "reused pid file removed");

    // `start` over a stale pid file works.
    std::fs::write(s.pid_file(), format!("{dead}\n")).expect("write");
    let out = s.run("start").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("stale"), "{}", text(&out));
    let pid = pid_in(&stdout(&out));
    let out = s.run("stop").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(is_gone(pid));
}

#[tokio::test]
async fn a_failed_start_shows_the_log_and_exits_non_zero() {
    let s = Setup::new();
    // Someone else holds the port: `serve` cannot listen and exits.
    let _busy = std::net::TcpListener::bind(("127.0.0.1", s.port)).expect("hold the port");
    let out = s.run("start").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited during start-up"), "{}", text(&out));
    assert!(
        err.contains("cannot listen"),
        "the log tail is shown: {}",
        text(&out)
    );
    assert!(!s.pid_file().exists());
}
