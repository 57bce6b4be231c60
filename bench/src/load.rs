//! HTTP loops where wrk does not fit: latency of sync runs, enqueueing with bounded
//! concurrency, one-at-a-time requests, polling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::stats::Latencies;

/// Builds request number `i`.
pub type MakeRequest =
    Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// What a loop measured, and the bodies when asked for.
pub struct LoopResult {
    pub latencies: Latencies,
    pub bodies: Vec<Value>,
}

/// `n` requests, `concurrency` in flight: each must answer 2xx; its body is read to the end.
pub async fn run_loop(
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
    make: MakeRequest,
    keep_bodies: bool,
) -> anyhow::Result<LoopResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let client = client.clone();
        let next = next.clone();
        let make = make.clone();
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut bodies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                let resp = make(&client, i).send().await?;
                let status = resp.status();
                let bytes = resp.bytes().await?;
                times.push(t0.elapsed());
                if !status.is_success() {
                    bail!(
                        "request {i} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                if keep_bodies {
                    bodies.push(serde_json::from_slice(&bytes)?);
                }
            }
            anyhow::Ok((times, bodies))
        }));
    }
    let mut times = Vec::with_capacity(n);
    let mut bodies = Vec::new();
    for w in workers {
        let (t, b) = w.await??;
        times.extend(t);
        bodies.extend(b);
    }
    Ok(LoopResult {
        latencies: Latencies::new(&times, started.elapsed()),
        bodies,
    })
}

/// GET a JSON document (2xx required).
pub async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await.context("not JSON")?;
    if !status.is_success() {
        bail!("GET {url} answered {status}: {body}");
    }
    Ok(body)
}

/// Poll `GET /health` every `every` until `done(queue)` holds or `timeout` passes.
pub async fn wait_queue(
    client: &reqwest::Client,
    base: &str,
    every: Duration,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let url = format!("{base}/health");
    loop {
        let health = get_json(client, &url).await?;
        if done(&health["queue"]) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "the queue did not reach the expected state within {timeout:?}: {}",
                health["queue"]
            );
        }
        tokio::time::sleep(every).await;
    }
}
