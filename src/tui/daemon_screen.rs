//! Start, stop and status of the daemon, through [`crate::daemon`] (the same code as the
//! `start` / `stop` / `status` commands).

use cursive::views::{LinearLayout, TextView};
use cursive::Cursive;

use super::widgets::{confirm, ctx, push_screen, set_text, text_area};
use super::worker::{unique_name, Ctx};
use crate::daemon::{DaemonError, StartOutcome, StopOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Status,
}

/// Open the daemon screen and run `action` (stopping asks first).
pub fn open(siv: &mut Cursive, action: Action) {
    let Some(c) = ctx(siv) else { return };
    let name = unique_name("daemon.body");
    let body = LinearLayout::vertical()
        .child(TextView::new(format!(
            "config: {}",
            c.control.config_path.display()
        )))
        .child(text_area(&name, ""));
    let keys = "s start · x stop · r refresh status";
    let start = {
        let (c, name) = (c.clone(), name.clone());
        move |s: &mut Cursive| run(s, &c, &name, Action::Start)
    };
    let stop = {
        let (c, name) = (c.clone(), name.clone());
        move |s: &mut Cursive| ask_stop(s, &c, &name)
    };
    let status = {
        let (c, name) = (c.clone(), name.clone());
        move |s: &mut Cursive| run(s, &c, &name, Action::Status)
    };
    let view = cursive::views::OnEventView::new(body)
        .on_event('s', start)
        .on_event('x', stop)
        .on_event('r', status);
    push_screen(siv, "Daemon", view, keys);
    match action {
        Action::Stop => ask_stop(siv, &c, &name),
        a => run(siv, &c, &name, a),
    }
}

fn ask_stop(siv: &mut Cursive, c: &Ctx, name: &str) {
    let (c, name) = (c.clone(), name.to_string());
    confirm(
        siv,
        "Stop the daemon? Running tasks get shutdownGraceMs to finish.",
        move |s| run(s, &c, &name, Action::Stop),
    );
}

fn run(siv: &mut Cursive, c: &Ctx, name: &str, action: Action) {
    let doing = match action {
        Action::Start => "Starting the daemon…",
        Action::Stop => "Stopping the daemon (waiting for running tasks)…",
        Action::Status => "Checking…",
    };
    set_text(siv, name, doing);
    let (c, name) = (c.clone(), name.to_string());
    c.clone().spawn(move || async move {
        let mut lines = match action {
            Action::Start => start_lines(&c).await,
            Action::Stop => stop_lines(&c).await,
            Action::Status => Vec::new(),
        };
        if !lines.is_empty() {
            lines.push(String::new());
        }
        // After any action, the status as it now is.
        match c.control.status().await {
            Ok(report) => lines.extend(report.lines()),
            Err(e) => lines.push(format!("error: {e}")),
        }
        let text = lines.join("\n");
        c.ui.update(move |s| set_text(s, &name, text));
    });
}

async fn start_lines(c: &Ctx) -> Vec<String> {
    let out = match c.control.start().await {
        Ok(StartOutcome::AlreadyRunning { pid, url }) => {
            vec![format!("already running (pid {pid}) at {url}")]
        }
        Ok(StartOutcome::Started { pid, url, stale }) => {
            let mut v: Vec<String> = stale
                .map(|s| format!("removed a stale pid file: {s}"))
                .into_iter()
                .collect();
            v.push(format!("started (pid {pid}) at {url}"));
            v
        }
        Err(e) => error_lines(e),
    };
    // The config may name another address than when the TUI opened.
    c.refresh_client();
    out
}

async fn stop_lines(c: &Ctx) -> Vec<String> {
    match c.control.stop().await {
        Ok(StopOutcome::NotRunning { stale }) => {
            let mut v: Vec<String> = stale
                .map(|s| format!("removed a stale pid file: {s}"))
                .into_iter()
                .collect();
            v.push("the daemon was not running".into());
            v
        }
        Ok(StopOutcome::Stopped { pid, forced: false }) => vec![format!("stopped (pid {pid})")],
        Ok(StopOutcome::Stopped { pid, forced: true }) => {
            vec![format!("pid {pid} did not stop in time and was killed")]
        }
        Err(e) => error_lines(e),
    }
}

fn error_lines(e: DaemonError) -> Vec<String> {
    let mut v = vec![format!("failed: {e}")];
    if let DaemonError::StartFailed { log_tail, .. } = e {
        if !log_tail.is_empty() {
            v.push("last lines of the log file:".into());
            v.extend(log_tail.into_iter().map(|l| format!("  {l}")));
        }
    }
    v
}
