//! The TUI driven headless (cursive's puppet backend) against a real daemon: in-process on
//! port 0 for the screens (as `tests/api` starts it), and the built binary for start/stop.
//! Every assertion is on the text of the screen.

use std::path::PathBuf;
use std::time::Duration;

use cursive::event::{Event, Key};
use serde_json::{json, Value};

use actors::config::load::Environment;
use claude_code_server::daemon::{is_gone, Control};

#[path = "tui/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use harness::Tui;
use helpers::{json_body, spawn_app_with, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_claude-code-server");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn root_of(app: &TestApp) -> PathBuf {
    app.dir.path().canonicalize().expect("canonical")
}

fn env_for(root: &std::path::Path) -> Environment {
    Environment {
        home: Some(root.to_path_buf()),
        port: None,
        host: None,
        path: std::env::var_os("PATH"),
        cwd: root.to_path_buf(),
        api_key: None,
    }
}

/// The TUI's view of an in-process daemon: its config file, and its URL (the file says port 0).
fn control_for(app: &TestApp) -> Control {
    let root = root_of(app);
    Control {
        config_path: root.join("config.json"),
        env: env_for(&root),
        url: Some(app.address.clone()),
        api_key: None,
        exe: PathBuf::from(BIN),
        start_timeout: Duration::from_secs(15),
    }
}

/// Start a daemon in `rt` with `overrides` and open the TUI on it.
fn setup(rt: &tokio::runtime::Runtime, overrides: Value) -> (TestApp, Tui) {
    let app = rt.block_on(spawn_app_with(overrides));
    let tui = Tui::new(control_for(&app));
    (app, tui)
}

fn post(rt: &tokio::runtime::Runtime, app: &TestApp, path: &str, body: Value) -> Value {
    rt.block_on(async {
        let (status, body) = json_body(app.post_json(path, &body).await).await;
        assert!(status < 300, "{path}: {status} {body}");
        body
    })
}

fn get(rt: &tokio::runtime::Runtime, app: &TestApp, path: &str) -> (u16, Value) {
    rt.block_on(async { json_body(app.get(path).await).await })
}

#[test]
fn menu_and_dashboard_show_the_live_queue() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({"taskQueue": {"concurrency": 2}}));
    let menu = tui.screen();
    for entry in [
        "[1] ▶ Start the daemon",
        "[d] Dashboard",
        "[s] Sessions",
        "[t] Tasks",
        "[v] Approvals",
        "[a] Statistics",
        "[l] Logs",
        "[h] API docs",
        "[c] Settings",
        "[p] Test API",
        "q quit",
    ] {
        assert!(menu.contains(entry), "{entry} missing:\n{menu}");
    }
    post(&rt, &app, "/api/claude", json!({"prompt": "hello"}));
    post(
        &rt,
        &app,
        "/api/claude",
        json!({"prompt": "[[fake:hang]] long", "async": true}),
    );
    tui.press('d');
    let screen = tui.wait_for_all(&["running    1", "concurrency   2", "requests 1   ok 1"]);
    assert!(
        screen.contains("Esc/q back"),
        "key bindings on screen:\n{screen}"
    );
    // Closing the screen goes back to the menu.
    tui.key(Key::Esc);
    tui.wait_for("[q] Quit");
    rt.block_on(app.shutdown());
}

#[test]
fn a_daemon_that_is_down_reads_as_a_message() {
    let rt = runtime();
    let app = rt.block_on(spawn_app_with(json!({})));
    let mut control = control_for(&app);
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    control.url = Some(format!("http://127.0.0.1:{port}"));
    let mut tui = Tui::new(control);
    tui.press('d');
    tui.wait_for("the daemon is not running");
    tui.key(Key::Esc);
    tui.press('s');
    tui.wait_for("Error: the daemon is not running");
    rt.block_on(app.shutdown());
}

#[test]
fn the_config_key_is_used_and_a_wrong_key_reads_as_a_message() {
    let rt = runtime();
    let keys = json!({"auth": {"apiKeys": [
        {"name": "ops", "key": "ops-key-123456", "admin": true}
    ]}});
    let (app, mut tui) = setup(&rt, keys);
    // The first admin key of the config file is sent.
    tui.press('t');
    tui.wait_for("Tasks none");
    drop(tui);
    let mut control = control_for(&app);
    control.api_key = Some("wrong-key-123456".into());
    let mut tui = Tui::new(control);
    tui.press('t');
    tui.wait_for("the API key was refused (401)");
    rt.block_on(app.shutdown());
}

#[test]
fn sessions_list_search_archive_and_delete() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({}));
    let mut ids = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let b = post(
            &rt,
            &app,
            "/api/sessions",
            json!({"metadata": {"name": name}}),
        );
        ids.push(b["session"]["id"].as_str().expect("id").to_string());
    }
    tui.press('s');
    tui.wait_for("Sessions 1–3 of 3");
    tui.press('/');
    tui.wait_for("Search sessions");
    tui.type_text("beta");
    tui.key(Key::Enter);
    tui.wait_for_all(&["Sessions 1–1 of 1", "search: \"beta\""]);
    tui.key(Key::Enter);
    tui.wait_for_all(&[
        &format!("id:        {}", ids[1]),
        "status:    active",
        "Recent messages",
    ]);
    tui.press('a');
    tui.wait_for_all(&["Status set to archived.", "status:    archived"]);
    tui.press('d');
    tui.wait_for("Delete session");
    tui.press('y');
    tui.wait_for(&format!("Deleted session {}", ids[1]));
    let (status, _) = get(&rt, &app, &format!("/api/sessions/{}", ids[1]));
    assert_eq!(status, 404, "deleted on the daemon");
    tui.press('c');
    tui.wait_for("Sessions 1–2 of 2");
    rt.block_on(app.shutdown());
}

#[test]
fn tasks_priority_change_cancel_and_live_output() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({"taskQueue": {"concurrency": 1}}));
    let running = post(
        &rt,
        &app,
        "/api/tasks/async",
        json!({"prompt": "[[fake:hang]] first"}),
    );
    let pending = post(
        &rt,
        &app,
        "/api/tasks/async",
        json!({"prompt": "[[fake:hang]] second", "priority": 5}),
    );
    let pending_id = pending["task"]["id"].as_str().expect("id").to_string();
    rt.block_on(app.wait_for_starts(1));

    tui.press('t');
    tui.wait_for("Tasks 1–2 of 2");
    tui.press('f'); // all → pending
    tui.wait_for_all(&["Tasks 1–1 of 1", "filter: pending"]);
    tui.key(Key::Enter);
    tui.wait_for_all(&[&format!("id:        {pending_id}"), "priority:  5"]);

    tui.press('p');
    tui.wait_for("Change priority");
    tui.key(Key::Backspace);
    tui.type_text("9");
    tui.key(Key::Enter);
    tui.wait_for_all(&["Priority set to 9.", "priority:  9"]);
    let (_, t) = get(&rt, &app, &format!("/api/tasks/{pending_id}"));
    assert_eq!(t["task"]["priority"], json!(9));

    // A priority out of range is refused before any request.
    tui.press('p');
    tui.wait_for("Change priority");
    tui.key(Key::Backspace);
    tui.type_text("11");
    tui.key(Key::Enter);
    tui.wait_for("is not a priority");
    tui.key(Key::Enter);

    // The live output window follows the task's event stream (still pending: nothing yet).
    tui.press('o');
    tui.wait_for(&format!("Live output of task {pending_id}"));
    tui.key(Key::Esc);

    tui.press('x');
    tui.wait_for("Cancel task");
    tui.press('y');
    tui.wait_for_all(&["Task cancelled.", "status:    cancelled"]);
    let (_, t) = get(&rt, &app, &format!("/api/tasks/{pending_id}"));
    assert_eq!(t["task"]["status"], json!("cancelled"));

    // Cancelling again is refused by the daemon; its sentence is shown.
    tui.press('x');
    tui.press('y');
    tui.wait_for("Could not cancel:");

    let running_id = running["task"]["id"].as_str().expect("id").to_string();
    rt.block_on(async {
        app.client
            .delete(app.url(&format!("/api/tasks/{running_id}")))
            .send()
            .await
            .expect("cancel");
    });
    rt.block_on(app.shutdown());
}

#[test]
fn statistics_api_docs_and_test_prompt() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({}));
    post(
        &rt,
        &app,
        "/api/claude",
        json!({"prompt": "[[fake:cost=0.25]] counted"}),
    );
    tui.press('a');
    tui.wait_for_all(&[
        "requests 1",
        "cost $0.2500",
        "claude-sonnet-4-5",
        "Last 14 days",
    ]);
    tui.key(Key::Esc);

    tui.press('h');
    tui.wait_for_all(&[
        "from the daemon's /api/openapi.json",
        "/api/tasks/{id}/priority",
    ]);
    tui.key(Key::Esc);

    tui.press('p');
    tui.wait_for("Test API");
    tui.press(Event::CtrlChar('t'));
    tui.wait_for("\"status\": \"ok\"");
    tui.key(Key::Enter); // the prompt field holds the default prompt
    tui.wait_for_all(&[
        "fake reply #1 to: Reply with the single word: pong",
        "— cost $",
    ]);
    rt.block_on(app.shutdown());
}

#[test]
fn settings_refuse_an_invalid_value_naming_the_key_then_save() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({}));
    let config = root_of(&app).join("config.json");
    tui.press('c');
    tui.wait_for("taskQueue.concurrency");
    // Fields: port, host, taskQueue.concurrency.
    tui.key(Key::Down);
    tui.key(Key::Down);
    tui.key(Key::End);
    tui.key(Key::Backspace);
    tui.type_text("0");
    tui.press(Event::CtrlChar('s'));
    tui.wait_for("Not saved — taskQueue.concurrency: must be at least 1");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
    assert!(
        doc["taskQueue"].get("concurrency").is_none(),
        "nothing written: {doc}"
    );

    tui.key(Key::Backspace);
    tui.type_text("4");
    tui.press(Event::CtrlChar('s'));
    tui.wait_for("Saved");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
    assert_eq!(doc["taskQueue"]["concurrency"], json!(4), "{doc}");
    assert_eq!(
        doc["taskQueue"]["killGraceMs"],
        json!(2000),
        "other keys kept: {doc}"
    );
    rt.block_on(app.shutdown());
}

#[test]
fn logs_are_formatted_searched_and_followed() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({}));
    let log = root_of(&app).join("server.log");
    std::fs::write(
        &log,
        concat!(
            r#"{"timestamp":"2025-03-04T05:06:07.123456Z","level":"INFO","fields":{"message":"listening","port":3000},"target":"app"}"#,
            "\n",
            "\u{1b}[2m2025-03-04T05:06:08.000000Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m app: storage is down\n",
        ),
    )
    .expect("write log");
    tui.press('l');
    tui.wait_for_all(&[
        "2025-03-04 05:06:07.123 INFO  listening  port=3000",
        "2025-03-04 05:06:08.000 ERROR storage is down",
        "2 lines",
    ]);
    tui.press('/');
    tui.type_text("STORAGE");
    tui.key(Key::Enter);
    let screen = tui.wait_for("1 matching");
    assert!(!screen.contains("listening"), "{screen}");
    tui.press('c');
    tui.press('f');
    tui.wait_for("follow ON");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    std::io::Write::write_all(&mut f, b"plain line appended later\n").expect("append");
    tui.wait_for_all(&["plain line appended later", "3 lines"]);
    rt.block_on(app.shutdown());
}

/// Start and stop the built binary from the TUI.
#[test]
fn start_and_stop_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = root.join("config.json");
    std::fs::create_dir_all(root.join("project")).expect("project");
    let doc = json!({
        "port": port,
        "host": "127.0.0.1",
        "claudePath": helpers::FAKE_CLAUDE,
        "defaultProjectPath": root.join("project").display().to_string(),
        "logFile": root.join("logs/server.log").display().to_string(),
        "pidFile": root.join("server.pid").display().to_string(),
        "dataDir": root.join("data").display().to_string(),
        "shutdownGraceMs": 500,
    });
    std::fs::write(&config, serde_json::to_vec(&doc).expect("json")).expect("write");
    let control = Control {
        config_path: config.clone(),
        env: env_for(&root),
        url: None,
        api_key: None,
        exe: PathBuf::from(BIN),
        start_timeout: Duration::from_secs(15),
    };
    // Stops the daemon if an assertion fails half-way.
    struct Guard(PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::process::Command::new(BIN)
                .args(["stop", "--config"])
                .arg(&self.0)
                .output();
        }
    }
    let _guard = Guard(config);

    let mut tui = Tui::new(control);
    tui.press('3');
    tui.wait_for("claude-code-server is not running");
    tui.press('s');
    let screen = tui.wait_for_all(&[
        "started (pid",
        "claude-code-server is running",
        "version:  ",
    ]);
    let pid: i32 = screen
        .split("started (pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|p| p.parse().ok())
        .expect("pid on screen");
    assert!(screen.contains(&format!("127.0.0.1:{port}")), "{screen}");
    tui.press('x');
    tui.wait_for("Stop the daemon?");
    tui.press('y');
    tui.wait_for_all(&[
        &format!("stopped (pid {pid})"),
        "claude-code-server is not running",
    ]);
    assert!(is_gone(pid));
    assert!(!root.join("server.pid").exists());
}

/// Wait (10 s at most) until `task` has `n` approvals, the last one pending.
fn wait_pending(rt: &tokio::runtime::Runtime, app: &TestApp, task: &str, n: usize) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, b) = get(rt, app, &format!("/api/tasks/{task}/approvals"));
        let list = b["approvals"].as_array().cloned().unwrap_or_default();
        if list.len() == n && list[n - 1]["status"] == "pending" {
            return;
        }
        assert!(std::time::Instant::now() < end, "no pending approval: {b}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn approvals_are_listed_and_allowed_or_denied_with_a_key() {
    let rt = runtime();
    let (app, mut tui) = setup(&rt, json!({}));
    let body = post(
        &rt,
        &app,
        "/api/tasks/async",
        json!({"prompt": "[[fake:asks=2]] two dirs", "approvals": true}),
    );
    let id = body["task"]["id"].as_str().expect("id").to_string();
    wait_pending(&rt, &app, &id, 1);
    tui.press('v');
    tui.wait_for_all(&[
        "1 pending",
        "Bash",
        "mkdir x1 && echo made",
        "a allow · x deny",
    ]);
    tui.press('a');
    tui.wait_for("Allowed Bash of task");
    // The run goes on and asks again; the list refreshes by itself.
    tui.wait_for("mkdir x2 && echo made");
    tui.press('x');
    tui.wait_for_all(&["Denied Bash of task", "No approval is pending."]);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = get(&rt, &app, &format!("/api/tasks/{id}"));
        if t["task"]["status"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < end, "not completed: {t}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(app.project.join("x1").is_dir());
    assert!(!app.project.join("x2").exists());
    let (_, list) = get(&rt, &app, &format!("/api/tasks/{id}/approvals"));
    assert_eq!(list["approvals"][0]["status"], "allowed");
    assert_eq!(list["approvals"][1]["status"], "denied");
    rt.block_on(app.shutdown());
}
