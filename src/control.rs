//! `claude-code-server start | stop | status`: run a [`daemon`](crate::daemon) action, print
//! its outcome for a shell, and pick the exit code (LSB conventions: `stop` of a stopped
//! service succeeds; `status` is 0 running, 3 not running, 1 error).

use std::process::ExitCode;

use crate::daemon::{Control, DaemonError, StartOutcome, StopOutcome};

pub async fn start(control: &Control) -> ExitCode {
    match control.start().await {
        Ok(StartOutcome::AlreadyRunning { pid, url }) => {
            println!("claude-code-server is already running (pid {pid}) at {url}");
            ExitCode::SUCCESS
        }
        Ok(StartOutcome::Started { pid, url, stale }) => {
            if let Some(s) = stale {
                println!("removed a stale pid file: {s}");
            }
            println!("claude-code-server started (pid {pid}) at {url}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub async fn stop(control: &Control) -> ExitCode {
    match control.stop().await {
        Ok(StopOutcome::NotRunning { stale }) => {
            if let Some(s) = stale {
                println!("removed a stale pid file: {s}");
            }
            println!("claude-code-server is not running");
            ExitCode::SUCCESS
        }
        Ok(StopOutcome::Stopped { pid, forced }) => {
            if forced {
                println!("claude-code-server (pid {pid}) did not stop in time and was killed");
            } else {
                println!("claude-code-server (pid {pid}) stopped");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub async fn status(control: &Control) -> ExitCode {
    match control.status().await {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => fail(e),
    }
}

fn fail(e: DaemonError) -> ExitCode {
    eprintln!("claude-code-server: {e}");
    if let DaemonError::StartFailed { log_tail, .. } = &e {
        if log_tail.is_empty() {
            eprintln!("(the log file is empty)");
        } else {
            eprintln!("last lines of the log file:");
            for line in log_tail {
                eprintln!("  {line}");
            }
        }
    }
    ExitCode::FAILURE
}
