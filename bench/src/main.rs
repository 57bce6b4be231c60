//! `ccs-bench`: how close claude-code-server comes to the physical limit on this machine.
//!
//! For every storage backend and every repeat it starts the release server binary as a child
//! process with a temp config (the release fake CLI, which answers at once), measures, stops it
//! with SIGTERM, and finally prints one markdown table of the medians. Run it through
//! `scripts/bench.sh`, which installs wrk and builds the binaries.

mod direct;
mod load;
mod redis;
mod server;
mod stats;
mod table;
mod wrk;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

use direct::DirectSpec;
use server::{Bins, Server, ServerOptions};
use table::{num, Cell, Row, Samples, Target};

/// The storage backends measured by default. Adding one is one entry here (and its connection
/// setting in `server::config_json`).
const STORAGES: &[&str] = &["memory", "sqlite", "redis"];

/// The prompt of every benchmark run (no directives: the fake answers at once).
const PROMPT: &str = "bench";

#[derive(Parser, Debug)]
#[command(
    name = "ccs-bench",
    about = "Benchmarks claude-code-server against the physical limit (the fake CLI spawned directly)"
)]
struct Opts {
    /// Storage backends to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = STORAGES.iter().map(|s| s.to_string()))]
    storage: Vec<String>,
    /// Repeats of every measurement; the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Async tasks enqueued and drained per repeat.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Sync runs per loop at concurrency 1 (twice as many at concurrency 8).
    #[arg(long, default_value_t = 200)]
    sync_runs: usize,
    /// Queue concurrency (and direct-spawn parallelism) for the concurrent measurements.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 3)]
    wrk_seconds: u32,
    /// Connections of each wrk run.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: u32,
    /// Where the release `claude-code-server` and `fake-claude` are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The wrk executable.
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// `CCS_LOG` for the servers (default: the server's own default, info).
    #[arg(long)]
    server_log: Option<String>,
    /// Model latency the fake CLI simulates in every run, in milliseconds (its `latency_ms`),
    /// for the server's runs and the direct ones alike. 0: it answers at once, so the runs
    /// are pure CPU and a small machine's cores are the limit; real runs wait seconds for the
    /// model, and with a latency the figures show what the server adds to such runs.
    #[arg(long, default_value_t = 0)]
    run_ms: u64,
}

struct Ctx {
    opts: Opts,
    bins: Bins,
    client: reqwest::Client,
    /// The argv the server gives the CLI (from a probe run), for the direct baseline.
    argv: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    match bench(opts).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccs-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[ccs-bench] {}", msg.as_ref());
}

/// With `CCS_BENCH_PHASES=1`: a phase boundary on stderr, stamped with CLOCK_MONOTONIC (the
/// clock of `perf record -k CLOCK_MONOTONIC`, so `perf report --time A,B` can cut out a phase).
fn phase(name: &str) {
    if std::env::var_os("CCS_BENCH_PHASES").is_none() {
        return;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    eprintln!(
        "[ccs-bench] phase {name} at {}.{:06}",
        ts.tv_sec,
        ts.tv_nsec / 1000
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

async fn bench(opts: Opts) -> anyhow::Result<()> {
    let bins = Bins {
        server: opts.bin_dir.join("claude-code-server"),
        fake: opts.bin_dir.join("fake-claude"),
    };
    for b in [&bins.server, &bins.fake] {
        if !b.is_file() {
            bail!(
                "{} is missing: run `cargo build --release --bins` (scripts/bench.sh does)",
                b.display()
            );
        }
    }
    let bins = Bins {
        server: bins.server.canonicalize()?,
        fake: bins.fake.canonicalize()?,
    };
    if opts.repeats == 0 || opts.tasks == 0 || opts.sync_runs == 0 {
        bail!("--repeats, --tasks and --sync-runs must be at least 1");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let load_before = load_average();
    let mut ctx = Ctx {
        opts,
        bins,
        client,
        argv: Vec::new(),
    };
    ctx.argv = probe_argv(&ctx).await?;
    say(format!(
        "the server runs the CLI as: fake-claude {}",
        ctx.argv.join(" ")
    ));

    let mut samples = Samples::default();
    let started = Instant::now();
    for r in 1..=ctx.opts.repeats {
        for backend in ctx.opts.storage.clone() {
            say(format!(
                "repeat {r}/{}: {backend}: run overhead",
                ctx.opts.repeats
            ));
            run_overhead(&ctx, &backend, &mut samples).await?;
            say(format!(
                "repeat {r}/{}: {backend}: queue, memory, control plane",
                ctx.opts.repeats
            ));
            queue_and_control(&ctx, &backend, &mut samples).await?;
        }
    }
    let backends = ctx.opts.storage.clone();
    let rows = build_rows(&ctx.opts, &backends, &samples);
    println!("{}", table::render(&backends, &rows));
    let latency = match ctx.opts.run_ms {
        0 => String::new(),
        ms => format!(" The fake CLI waits {ms} ms for its \"model\" in every run."),
    };
    println!(
        "Medians of {} repeats; {} tasks per queue repeat, {} sync runs per loop (×2 at c={}); wrk {} s, {} connections, {} threads.{latency} \
         Machine: {} cores, load average {} before / {} after; {:.0} s in all.",
        ctx.opts.repeats,
        ctx.opts.tasks,
        ctx.opts.sync_runs,
        ctx.opts.concurrency,
        ctx.opts.wrk_seconds,
        ctx.opts.connections,
        ctx.opts.wrk_threads,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_before,
        load_average(),
        started.elapsed().as_secs_f64()
    );
    print_raw(&samples, &backends);
    Ok(())
}

fn server_options(ctx: &Ctx, backend: &str) -> ServerOptions {
    ServerOptions {
        storage: backend.to_string(),
        concurrency: ctx.opts.concurrency,
        claude_env: fake_env(&ctx.opts),
        log_filter: ctx.opts.server_log.clone(),
    }
}

/// The fake CLI's settings every run gets, through the server and directly.
fn fake_env(opts: &Opts) -> Vec<(String, String)> {
    match opts.run_ms {
        0 => Vec::new(),
        ms => vec![("FAKE_CLAUDE_LATENCY_MS".into(), ms.to_string())],
    }
}

/// The direct baseline for runs of `server`'s configuration: same argv, same cwd, its own
/// CLAUDE_CONFIG_DIR.
fn direct_spec(ctx: &Ctx, server: &Server) -> DirectSpec {
    DirectSpec {
        program: ctx.bins.fake.clone(),
        args: ctx.argv.clone(),
        cwd: server.project.clone(),
        env: [(
            "CLAUDE_CONFIG_DIR".into(),
            server.root.join("claude-home-direct").display().to_string(),
        )]
        .into_iter()
        .chain(fake_env(&ctx.opts))
        .collect(),
        prompt: PROMPT.into(),
    }
}

/// Run one sync request on a server whose fake logs its calls, and read the argv it got.
async fn probe_argv(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let backend = ctx
        .opts
        .storage
        .first()
        .map(String::as_str)
        .unwrap_or("memory");
    let mut opts = server_options(ctx, backend);
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("calls.jsonl");
    opts.claude_env
        .push(("FAKE_CLAUDE_LOG".into(), log.display().to_string()));
    let server = Server::start(&ctx.bins, &opts)?;
    let resp = ctx
        .client
        .post(server.url("/api/claude"))
        .json(&json!({"prompt": PROMPT}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!("the probe run answered {status}: {body}");
    }
    server.stop()?;
    let text = std::fs::read_to_string(&log).context("the fake wrote no call log")?;
    for line in text.lines() {
        let Ok(rec) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if rec["event"] != "exit" || rec["argv"] == json!(["--version"]) {
            continue;
        }
        if rec["stdin"].as_str().is_some_and(|s| s != PROMPT) {
            bail!("the probe's prompt reached the CLI as {:?}", rec["stdin"]);
        }
        let argv: Vec<String> = serde_json::from_value(rec["argv"].clone())?;
        return Ok(argv);
    }
    bail!("no run in the fake's call log")
}

fn sync_request(base: &str) -> load::MakeRequest {
    let url = format!("{base}/api/claude");
    Arc::new(move |c: &reqwest::Client, _| c.post(&url).json(&json!({"prompt": PROMPT})))
}

/// 1. Sync run latency against direct spawning, at concurrency 1 and N.
async fn run_overhead(ctx: &Ctx, backend: &str, s: &mut Samples) -> anyhow::Result<()> {
    let server = Server::start(&ctx.bins, &server_options(ctx, backend))?;
    phase(&format!("server-pid-{}", server.pid().unwrap_or(0)));
    s.add("startup_ms", backend, server.startup.as_secs_f64() * 1e3);
    let spec = direct_spec(ctx, &server);
    let c = ctx.opts.concurrency as usize;
    let n1 = ctx.opts.sync_runs;
    let n8 = ctx.opts.sync_runs * 2;
    // Warm-up: page cache, connection pool, allocator.
    direct::run_many(&spec, 20, 1).await?;
    load::run_loop(&ctx.client, 20, 1, sync_request(&server.base), false).await?;

    phase("direct-c1");
    let d1 = direct::run_many(&spec, n1, 1).await?;
    phase("sync-c1");
    let s1 = load::run_loop(&ctx.client, n1, 1, sync_request(&server.base), false)
        .await?
        .latencies;
    phase("direct-cn");
    let d8 = direct::run_many(&spec, n8, c).await?;
    phase("sync-cn");
    let s8 = load::run_loop(&ctx.client, n8, c, sync_request(&server.base), false)
        .await?
        .latencies;
    phase("run-end");
    server.stop()?;
    say(format!(
        "  c=1 server p50 {:.3} ms p99 {:.3} ms {:.0}/s | direct p50 {:.3} ms p99 {:.3} ms {:.0}/s",
        s1.p50(),
        s1.p99(),
        s1.rate(),
        d1.p50(),
        d1.p99(),
        d1.rate()
    ));
    say(format!(
        "  c={c} server p50 {:.3} ms p99 {:.3} ms {:.0}/s | direct p50 {:.3} ms p99 {:.3} ms {:.0}/s",
        s8.p50(),
        s8.p99(),
        s8.rate(),
        d8.p50(),
        d8.p99(),
        d8.rate()
    ));
    for (key, l) in [
        ("c1.srv", &s1),
        ("c1.dir", &d1),
        ("cn.srv", &s8),
        ("cn.dir", &d8),
    ] {
        s.add(&format!("run.{key}.p50"), backend, l.p50());
        s.add(&format!("run.{key}.p99"), backend, l.p99());
        s.add(&format!("run.{key}.rate"), backend, l.rate());
    }
    s.add("run.c1.overhead", backend, s1.p50() - d1.p50());
    s.add("run.c1.ratio", backend, s1.p50() / d1.p50());
    s.add("run.cn.rate_ratio", backend, s8.rate() / d8.rate());
    s.add("run.cn_over_c1", backend, s8.rate() / s1.rate());
    Ok(())
}

fn queue_field(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(u64::MAX)
}

/// 2–4. Queue, memory and control plane on one fresh server.
async fn queue_and_control(ctx: &Ctx, backend: &str, s: &mut Samples) -> anyhow::Result<()> {
    let server = Server::start(&ctx.bins, &server_options(ctx, backend))?;
    phase(&format!("server-pid-{}", server.pid().unwrap_or(0)));
    s.add("startup_ms", backend, server.startup.as_secs_f64() * 1e3);
    let client = &ctx.client;
    let c = ctx.opts.concurrency as usize;
    let n = ctx.opts.tasks;

    // Idle: after start-up (and the CLI version check) has settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        load::get_json(client, &server.url("/health")).await?;
    }
    let rss_idle = server.rss()?;

    // Occupy every slot with a run that hangs until cancelled, so that the tasks stay pending.
    let blockers_url = server.url("/api/claude");
    let blockers = load::run_loop(
        client,
        c,
        c,
        Arc::new(move |cl: &reqwest::Client, _| {
            cl.post(&blockers_url)
                .json(&json!({"prompt": "[[fake:hang]] blocker", "async": true, "priority": 10}))
        }),
        true,
    )
    .await?;
    let blocker_ids = task_ids(&blockers.bodies)?;
    load::wait_queue(
        client,
        &server.base,
        Duration::from_millis(5),
        Duration::from_secs(10),
        |q| queue_field(q, "running") == c as u64,
    )
    .await?;

    // Enqueue.
    phase("enqueue");
    let cpu_enqueue = server.cpu_seconds()?;
    let url = server.url("/api/claude");
    let enq = load::run_loop(
        client,
        n,
        64,
        Arc::new(move |cl: &reqwest::Client, _| {
            cl.post(&url)
                .json(&json!({"prompt": PROMPT, "async": true}))
        }),
        true,
    )
    .await?;
    phase("enqueued");
    let cpu_enqueue = server.cpu_seconds()? - cpu_enqueue;
    let ids = task_ids(&enq.bodies)?;
    let enqueue_rate = enq.latencies.rate();
    load::wait_queue(
        client,
        &server.base,
        Duration::from_millis(5),
        Duration::from_secs(10),
        |q| queue_field(q, "pending") == n as u64,
    )
    .await?;
    let rss_pending = server.rss()?;

    // Reads and priority changes with n pending.
    let list_url = server.url("/api/tasks?status=pending");
    let page = load::get_json(client, &list_url).await?;
    if page["total"].as_u64() != Some(n as u64) {
        bail!(
            "GET /api/tasks?status=pending: total {} (expected {n})",
            page["total"]
        );
    }
    let list = load::run_loop(
        client,
        50,
        1,
        Arc::new(move |cl: &reqwest::Client, _| cl.get(&list_url)),
        false,
    )
    .await?
    .latencies;
    let patch_ids = Arc::new(ids.clone());
    let base = server.base.clone();
    let patch = load::run_loop(
        client,
        200,
        1,
        Arc::new(move |cl: &reqwest::Client, i| {
            let id = &patch_ids[(i * 37) % patch_ids.len()];
            cl.patch(format!("{base}/api/tasks/{id}/priority"))
                .json(&json!({"priority": (i % 9) + 1}))
        }),
        false,
    )
    .await?
    .latencies;

    // The physical limit of the drain, while the server sits idle (its runs hang in sleep).
    let spec = direct_spec(ctx, &server);
    phase("direct-drain");
    let machine = MachineCpu::now()?;
    let driver = server::proc_cpu("self")?;
    let direct = direct::run_many(&spec, n, c).await?;
    let machine_direct = MachineCpu::now()?.busy_since(&machine);
    let driver = {
        let now = server::proc_cpu("self")?;
        (now.0 - driver.0, now.1 - driver.1)
    };

    // Drain: release the slots and time until nothing is pending or running.
    let cpu_before = server.cpu_seconds()?;
    let switches_before = server.context_switches()?;
    let runs_before = server.children_cpu_seconds()?;
    let machine = MachineCpu::now()?;
    let redis_before = match server.redis() {
        Some(r) => Some((r.cpu_seconds()?, r.command_stats()?)),
        None => None,
    };
    phase("drain");
    let t0 = Instant::now();
    for id in &blocker_ids {
        let resp = client
            .delete(server.url(&format!("/api/tasks/{id}")))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("cancelling a blocker answered {}", resp.status());
        }
    }
    load::wait_queue(
        client,
        &server.base,
        Duration::from_millis(10),
        Duration::from_secs(600),
        |q| queue_field(q, "pending") == 0 && queue_field(q, "running") == 0,
    )
    .await?;
    let drain = t0.elapsed();
    phase("drained");
    let cpu_drain = server.cpu_seconds()? - cpu_before;
    let (switches_by_thread, switches) = server.context_switches()?.since(&switches_before);
    let machine_drain = MachineCpu::now()?.busy_since(&machine);
    let runs_drain = server.children_cpu_seconds()? - runs_before;
    let per_run = |secs: f64| secs * 1e3 / n as f64;
    let switches_per_run = (
        switches.voluntary as f64 / n as f64,
        switches.involuntary as f64 / n as f64,
    );
    let by_thread = switches_by_thread
        .iter()
        .map(|(name, s)| format!("{name} {:.2}", s.voluntary as f64 / n as f64))
        .collect::<Vec<_>>()
        .join(", ");
    say(format!(
        "  server context switches per drained run (the /health polls included): {:.1} voluntary (thread hand-offs), {:.1} involuntary; voluntary by thread name: {by_thread}",
        switches_per_run.0, switches_per_run.1
    ));
    say(format!(
        "  machine CPU busy (all cores, every process): {:.0} % during the direct spawns, {:.0} % during the drain; \
         CPU per run of the fake CLI: {:.3} ms direct, {:.3} ms drained; of the driver spawning directly: {:.3} ms",
        machine_direct * 100.0,
        machine_drain * 100.0,
        per_run(driver.1),
        per_run(runs_drain),
        per_run(driver.0)
    ));
    if let (Some(r), Some((cpu, commands))) = (server.redis(), redis_before) {
        // What the drain cost Redis (the /health polls above included: about one PING and
        // a few counts per 10 ms).
        let cpu = r.cpu_seconds()? - cpu;
        let commands = r.command_stats()?.since(&commands);
        let per_run = |x: u64| x as f64 / n as f64;
        let breakdown: Vec<String> = commands
            .per
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} {} ({} µs)",
                    num(per_run(v.calls)),
                    num(per_run(v.usec))
                )
            })
            .collect();
        say(format!(
            "  redis-server during the drain: {:.3} ms CPU per run; commands per run (Redis's time in them per run): {}",
            cpu * 1e3 / n as f64,
            breakdown.join(", ")
        ));
        s.add("q.redis.cpu_ms", backend, cpu * 1e3 / n as f64);
        s.add("q.redis.commands", backend, per_run(commands.total()));
        s.add("q.redis.scripts", backend, per_run(commands.scripts()));
    }

    // Nothing lost, nothing stuck.
    let status = load::get_json(client, &server.url("/api/tasks/queue/status")).await?;
    let q = &status["queue"];
    let completed = load::get_json(client, &server.url("/api/tasks?status=completed&limit=1"))
        .await?["total"]
        .as_u64()
        .unwrap_or(0);
    let stuck = queue_field(q, "pending") + queue_field(q, "processing");
    let lost = (n as u64).saturating_sub(completed) + stuck;
    if lost > 0 {
        say(format!("  LOST OR STUCK: {lost} (queue status {q})"));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_drained = server.rss()?;

    // Control plane, with n finished tasks in storage.
    let mut wrk_row = |name: &str, path: &str| -> anyhow::Result<()> {
        let r = wrk::run(
            &ctx.opts.wrk,
            &server.url(path),
            ctx.opts.wrk_threads,
            ctx.opts.connections,
            ctx.opts.wrk_seconds,
        )?;
        if r.non_2xx > 0 || r.socket_errors > 0 {
            bail!(
                "wrk {path}: {} non-2xx answers, {} socket errors",
                r.non_2xx,
                r.socket_errors
            );
        }
        say(format!(
            "  {path}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            r.requests_per_sec, r.p50_ms, r.p99_ms
        ));
        s.add(&format!("ctl.{name}.rps"), backend, r.requests_per_sec);
        s.add(&format!("ctl.{name}.p99"), backend, r.p99_ms);
        Ok(())
    };
    phase("wrk-health");
    wrk_row("health", "/health")?;
    phase("wrk-task");
    wrk_row("task", &format!("/api/tasks/{}", ids[0]))?;
    phase("wrk-status");
    wrk_row("status", "/api/tasks/queue/status")?;
    phase("wrk-end");
    // Up to 3 bursts: whether a client leaves at the wrong moment is a matter of timing.
    let mut stuck_after_abort = 0;
    for _ in 0..3 {
        stuck_after_abort = aborted_submissions(ctx, &server).await?;
        if stuck_after_abort > 0 {
            break;
        }
    }
    server.stop()?;

    let drain_rate = n as f64 / drain.as_secs_f64();
    say(format!(
        "  enqueue {enqueue_rate:.0}/s; drain {drain_rate:.0}/s vs direct {:.0}/s; list p50 {:.2} ms; patch p50 {:.2} ms; \
         RSS {:.1} / {:.1} / {:.1} MiB (anon {:.1} / {:.1} / {:.1}); server CPU {:.3} ms per enqueue, {:.3} ms per run; lost {lost}",
        direct.rate(),
        list.p50(),
        patch.p50(),
        rss_idle.total,
        rss_pending.total,
        rss_drained.total,
        rss_idle.anon,
        rss_pending.anon,
        rss_drained.anon,
        cpu_enqueue * 1e3 / n as f64,
        cpu_drain * 1e3 / n as f64
    ));
    s.add("q.enqueue.rate", backend, enqueue_rate);
    s.add("q.enqueue.p99", backend, enq.latencies.p99());
    s.add("q.enqueue.cpu_ms", backend, cpu_enqueue * 1e3 / n as f64);
    s.add("q.drain.rate", backend, drain_rate);
    s.add("q.direct.rate", backend, direct.rate());
    s.add("q.drain.ratio", backend, drain_rate / direct.rate());
    s.add("q.drain.cpu_ms", backend, cpu_drain * 1e3 / n as f64);
    s.add("q.drain.switches", backend, switches_per_run.0);
    s.add("q.list.p50", backend, list.p50());
    s.add("q.list.p99", backend, list.p99());
    s.add("q.patch.p50", backend, patch.p50());
    s.add("q.patch.p99", backend, patch.p99());
    s.add("q.lost", backend, lost as f64);
    s.add("q.aborted.stuck", backend, stuck_after_abort as f64);
    s.add("mem.idle", backend, rss_idle.total);
    s.add("mem.pending", backend, rss_pending.total);
    s.add("mem.drained", backend, rss_drained.total);
    s.add(
        "mem.drained_ratio",
        backend,
        rss_drained.total / rss_idle.total,
    );
    s.add("mem.idle.anon", backend, rss_idle.anon);
    s.add("mem.idle.file", backend, rss_idle.file);
    s.add("mem.drained.anon", backend, rss_drained.anon);
    s.add("mem.drained.file", backend, rss_drained.file);
    Ok(())
}

/// The machine's CPU time so far (`/proc/stat`, first line, in ticks): busy and all.
struct MachineCpu {
    busy: u64,
    all: u64,
}

impl MachineCpu {
    fn now() -> anyhow::Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let all: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Ok(MachineCpu {
            busy: all - idle,
            all,
        })
    }

    /// The share of the machine's CPU time that was busy since `before` (0..=1).
    fn busy_since(&self, before: &MachineCpu) -> f64 {
        let all = self.all.saturating_sub(before.all);
        if all == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(before.busy) as f64 / all as f64
    }
}

/// Async submissions whose clients give up after 0.3–6.2 ms (a spread that straddles a SQLite
/// commit), as clients with short timeouts do.
const ABORTED: usize = 400;

/// Submit [`ABORTED`] async tasks and drop each request after a short delay, wait for the queue
/// to settle, and count the tasks left pending or processing in storage (a task that was
/// stored must still run, whether or not its client saw the 202).
async fn aborted_submissions(ctx: &Ctx, server: &Server) -> anyhow::Result<u64> {
    let url = server.url("/api/claude");
    let mut clients = Vec::new();
    for i in 0..ABORTED {
        let client = ctx.client.clone();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let give_up = Duration::from_micros(300 + (i as u64 % 40) * 150);
            let request = client
                .post(&url)
                .json(&json!({"prompt": PROMPT, "async": true}))
                .send();
            let _ = tokio::time::timeout(give_up, request).await;
        }));
    }
    for c in clients {
        c.await?;
    }
    // Settled: nothing running and the store's pending count unchanged for a second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = u64::MAX;
    let mut stable_since = Instant::now();
    loop {
        let q = load::get_json(&ctx.client, &server.url("/api/tasks/queue/status")).await?;
        let left = queue_field(&q["queue"], "pending") + queue_field(&q["queue"], "processing");
        if left == 0 {
            return Ok(0);
        }
        if left != last {
            last = left;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(1)
            && queue_field(&q["queue"], "active_tasks") == 0
        {
            say(format!(
                "  {left} task(s) stuck after aborted submissions: {}",
                q["queue"]
            ));
            return Ok(left);
        }
        if Instant::now() > deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The task ids of 201/202 answers (`task_id`, or `task.id`).
fn task_ids(bodies: &[Value]) -> anyhow::Result<Vec<String>> {
    bodies
        .iter()
        .map(|b| {
            b["task_id"]
                .as_str()
                .or_else(|| b["task"]["id"].as_str())
                .map(str::to_string)
                .with_context(|| format!("no task id in {b}"))
        })
        .collect()
}

fn build_rows(opts: &Opts, backends: &[String], s: &Samples) -> Vec<Row> {
    let m = |key: &str, b: &str| s.median(key, b).unwrap_or(f64::NAN);
    let worst = |key: &str, b: &str| s.max(key, b).unwrap_or(f64::NAN);
    let c = opts.concurrency;
    let n = opts.tasks;
    let mut rows = Vec::new();
    let mut row = |label: String, target: &str, cell: &dyn Fn(&str) -> Cell| {
        rows.push(Row {
            label,
            target: target.to_string(),
            cells: backends.iter().map(|b| cell(b)).collect(),
        });
    };
    let pair = |a: f64, b: f64, unit: &str| format!("{} / {} {unit}", num(a), num(b));

    row(
        "Sync `POST /api/claude` p50 / p99, c=1".into(),
        "—",
        &|b| Cell::info(pair(m("run.c1.srv.p50", b), m("run.c1.srv.p99", b), "ms")),
    );
    row(
        "Direct spawn p50 / p99, 1 at a time (limit)".into(),
        "—",
        &|b| Cell::info(pair(m("run.c1.dir.p50", b), m("run.c1.dir.p99", b), "ms")),
    );
    row(
        "Run overhead over direct spawn, p50, c=1".into(),
        "≤ 2 ms",
        &|b| {
            let o = m("run.c1.overhead", b);
            Cell::judged(
                format!("{} ms (×{})", num(o), num(m("run.c1.ratio", b))),
                Target::AtMost(2.0).judge(o),
            )
        },
    );
    row(
        format!("Sync `POST /api/claude` p50 / p99, c={c}"),
        "—",
        &|b| Cell::info(pair(m("run.cn.srv.p50", b), m("run.cn.srv.p99", b), "ms")),
    );
    row(
        format!("Direct spawn p50 / p99, {c} at a time (limit)"),
        "—",
        &|b| Cell::info(pair(m("run.cn.dir.p50", b), m("run.cn.dir.p99", b), "ms")),
    );
    row(
        format!("Sync runs/s, c=1 → c={c}"),
        &format!("c={c} > c=1"),
        &|b| {
            let (r1, rn) = (m("run.c1.srv.rate", b), m("run.cn.srv.rate", b));
            Cell::judged(format!("{} → {}", num(r1), num(rn)), Some(rn > r1))
        },
    );
    row(
        format!("Sync runs/s at c={c} vs direct spawn at {c}"),
        "—",
        &|b| {
            Cell::info(format!(
                "{} vs {} ({}%)",
                num(m("run.cn.srv.rate", b)),
                num(m("run.cn.dir.rate", b)),
                num(m("run.cn.rate_ratio", b) * 100.0)
            ))
        },
    );
    let conns = opts.connections;
    for (key, label, target) in [
        ("health", "`GET /health`", Target::AtLeast(30_000.0)),
        ("task", "`GET /api/tasks/:id`", Target::AtLeast(15_000.0)),
        ("status", "`GET /api/tasks/queue/status`", Target::Info),
    ] {
        let t = match target {
            Target::AtLeast(x) => format!("≥ {x:.0} req/s"),
            _ => "—".into(),
        };
        row(
            format!("{label} req/s (p99), {conns} connections, {n} tasks stored"),
            &t,
            &|b| {
                let r = m(&format!("ctl.{key}.rps"), b);
                Cell::judged(
                    format!("{} ({} ms)", num(r), num(m(&format!("ctl.{key}.p99"), b))),
                    target.judge(r),
                )
            },
        );
    }
    row(
        format!("Enqueue {n} async tasks, 64 in flight (tasks/s)"),
        "≥ 5000/s",
        &|b| {
            let r = m("q.enqueue.rate", b);
            Cell::judged(
                format!("{} (p99 {} ms)", num(r), num(m("q.enqueue.p99", b))),
                Target::AtLeast(5000.0).judge(r),
            )
        },
    );
    row(
        format!("`GET /api/tasks?status=pending` p50 / p99, {n} pending"),
        "—",
        &|b| Cell::info(pair(m("q.list.p50", b), m("q.list.p99", b), "ms")),
    );
    row(
        format!("`PATCH /api/tasks/:id/priority` p50 / p99, {n} pending"),
        "—",
        &|b| Cell::info(pair(m("q.patch.p50", b), m("q.patch.p99", b), "ms")),
    );
    row(
        format!("Drain {n} tasks at concurrency {c} vs direct spawn at {c} (tasks/s)"),
        "≥ 90 %",
        &|b| {
            let ratio = m("q.drain.ratio", b);
            Cell::judged(
                format!(
                    "{} vs {} = {}%",
                    num(m("q.drain.rate", b)),
                    num(m("q.direct.rate", b)),
                    num(ratio * 100.0)
                ),
                Target::AtLeast(0.9).judge(ratio),
            )
        },
    );
    row(
        "Server CPU per enqueued task / per drained run".into(),
        "—",
        &|b| Cell::info(pair(m("q.enqueue.cpu_ms", b), m("q.drain.cpu_ms", b), "ms")),
    );
    row(
        "Server threads' voluntary context switches per drained run (thread hand-offs)".into(),
        "—",
        &|b| Cell::info(num(m("q.drain.switches", b))),
    );
    row(
        "Redis per drained run: redis-server CPU; scripts / all commands (inside scripts too)"
            .into(),
        "—",
        &|b| {
            if m("q.redis.cpu_ms", b).is_nan() {
                return Cell::info("—");
            }
            Cell::info(format!(
                "{} ms; {} / {}",
                num(m("q.redis.cpu_ms", b)),
                num(m("q.redis.scripts", b)),
                num(m("q.redis.commands", b))
            ))
        },
    );
    row(
        "Tasks lost or stuck after the drain (worst repeat)".into(),
        "0",
        &|b| {
            let l = worst("q.lost", b);
            Cell::judged(num(l), Target::AtMost(0.0).judge(l))
        },
    );
    row(
        format!("Tasks stuck after up to 3 × {ABORTED} submissions whose client went away (worst repeat)"),
        "0",
        &|b| {
            let l = worst("q.aborted.stuck", b);
            Cell::judged(num(l), Target::AtMost(0.0).judge(l))
        },
    );
    row(
        "Start-up to the first 200 on `/health`".into(),
        "≤ 50 ms",
        &|b| {
            let v = m("startup_ms", b);
            Cell::judged(format!("{} ms", num(v)), Target::AtMost(50.0).judge(v))
        },
    );
    row("RSS idle".into(), "≤ 20 MiB", &|b| {
        let v = m("mem.idle", b);
        Cell::judged(format!("{} MiB", num(v)), Target::AtMost(20.0).judge(v))
    });
    row(format!("RSS with {n} pending"), "≤ 60 MiB", &|b| {
        let v = m("mem.pending", b);
        Cell::judged(format!("{} MiB", num(v)), Target::AtMost(60.0).judge(v))
    });
    row(
        "RSS after the drain, vs idle".into(),
        "≤ idle + 10 %",
        &|b| {
            let r = m("mem.drained_ratio", b);
            Cell::judged(
                format!(
                    "{} MiB ({:+.0} %)",
                    num(m("mem.drained", b)),
                    (r - 1.0) * 100.0
                ),
                Target::AtMost(1.1).judge(r),
            )
        },
    );
    row(
        "RSS anon / file-backed: idle → after the drain".into(),
        "—",
        &|b| {
            Cell::info(format!(
                "{} / {} → {} / {} MiB",
                num(m("mem.idle.anon", b)),
                num(m("mem.idle.file", b)),
                num(m("mem.drained.anon", b)),
                num(m("mem.drained.file", b))
            ))
        },
    );
    rows
}

/// Every repeat's values, to stderr: the spread behind each median.
fn print_raw(s: &Samples, backends: &[String]) {
    let keys = [
        "run.c1.overhead",
        "run.c1.srv.p50",
        "run.c1.dir.p50",
        "run.c1.srv.rate",
        "run.cn.srv.rate",
        "run.cn.dir.rate",
        "ctl.health.rps",
        "ctl.task.rps",
        "ctl.status.rps",
        "q.enqueue.rate",
        "q.drain.rate",
        "q.direct.rate",
        "q.drain.ratio",
        "q.drain.cpu_ms",
        "q.drain.switches",
        "q.redis.cpu_ms",
        "q.redis.scripts",
        "q.redis.commands",
        "q.lost",
        "q.aborted.stuck",
        "startup_ms",
        "mem.idle",
        "mem.pending",
        "mem.drained",
    ];
    for b in backends {
        for k in keys {
            let vals: Vec<String> = s.all(k, b).iter().map(|v| num(*v)).collect();
            eprintln!("[ccs-bench] raw {b} {k}: {}", vals.join(", "));
        }
    }
}
