//! The log file of the real daemon: every line of a request names it (`span.request_id`), and
//! the access line of a request that queued a run names the run's task, as the run's own lines
//! (written outside the request) do — the link between the two.

use serde_json::{json, Value};

use crate::durability::{daemon_dir, start_daemon};
use crate::helpers::*;

#[tokio::test]
async fn a_runs_access_line_names_its_task_as_its_run_lines_do() {
    let d = daemon_dir(json!({}));
    let daemon = start_daemon(&d.config, &d.root, d.port).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/claude", daemon.base))
        .header("x-request-id", "req-run-1")
        .json(&json!({"prompt": "hello"}))
        .send()
        .await
        .expect("POST /api/claude");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let task_id = body["task_id"].as_str().expect("task_id").to_string();
    let resp = client
        .get(format!("{}/health", daemon.base))
        .header("x-request-id", "req-health-1")
        .send()
        .await
        .expect("GET /health");
    assert_eq!(resp.status().as_u16(), 200);

    // Lines reach the file a few milliseconds late (the writer batches them): poll.
    let log = d.root.join("server.log");
    let access = |lines: &[Value], request: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "access" && l["span"]["request_id"] == request)
            .cloned()
    };
    let (run, health, ended) = poll_until(std::time::Duration::from_secs(10), || {
        let lines = read_log(&log);
        let ended = lines
            .iter()
            .find(|l| l["message"] == "run ended" && l["task_id"] == task_id.as_str())
            .cloned()?;
        Some((
            access(&lines, "req-run-1")?,
            access(&lines, "req-health-1")?,
            ended,
        ))
    })
    .await
    .expect("the access lines and the run's end in the log file");
    assert_eq!(run["task_id"], task_id.as_str(), "{run}");
    assert_eq!(run["path"], "/api/claude");
    assert_eq!(ended["status"], "completed", "{ended}");
    // The run's lines are not the request's: they name the task, not the request.
    assert!(ended.get("span").is_none(), "{ended}");
    // A request that queued nothing names no task.
    assert!(health.get("task_id").is_none(), "{health}");
}
