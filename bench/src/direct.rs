//! The physical limit: the same fake CLI spawned directly, as the server spawns it (same argv,
//! cwd, environment additions, prompt on stdin, own process group), waiting for its exit and
//! reading stdout and stderr to the end.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::stats::Latencies;

/// How to spawn one run.
#[derive(Debug, Clone)]
pub struct DirectSpec {
    pub program: PathBuf,
    /// The argv the server used; a `--session-id=` argument gets a fresh id per run.
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub prompt: String,
}

impl DirectSpec {
    fn args_for_run(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                if a.starts_with("--session-id=") {
                    format!("--session-id={}", uuid::Uuid::new_v4())
                } else {
                    a.clone()
                }
            })
            .collect()
    }
}

/// One run: spawn, feed the prompt, read both pipes to the end, wait. Fails unless exit 0 and
/// a result line.
pub async fn run_once(spec: &DirectSpec) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut cmd = Command::new(&spec.program);
    cmd.args(spec.args_for_run())
        .current_dir(&spec.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot spawn {}", spec.program.display()))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let prompt = spec.prompt.clone().into_bytes();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&prompt).await;
        let _ = stdin.shutdown().await;
    });
    let mut out = Vec::with_capacity(8192);
    let mut err = Vec::new();
    let (r1, r2) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    r1?;
    r2?;
    let status = child.wait().await?;
    let _ = writer.await;
    let elapsed = started.elapsed();
    if !status.success() || !out.windows(15).any(|w| w == b"\"type\":\"result\"") {
        bail!(
            "the direct run failed ({status}): {}",
            String::from_utf8_lossy(&err)
        );
    }
    Ok(elapsed)
}

/// `n` runs, `parallelism` at a time: every run's latency and the wall time.
pub async fn run_many(
    spec: &DirectSpec,
    n: usize,
    parallelism: usize,
) -> anyhow::Result<Latencies> {
    let spec = Arc::new(spec.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..parallelism.max(1) {
        let spec = spec.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                mine.push(run_once(&spec).await?);
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await??);
    }
    Ok(Latencies::new(&all, started.elapsed()))
}
