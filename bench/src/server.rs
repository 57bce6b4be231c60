//! The server under test: the release binary as a child process with a temp config.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::redis::RedisChild;

/// The binaries the benchmark runs (built by `cargo build --release --bins`).
#[derive(Debug, Clone)]
pub struct Bins {
    pub server: PathBuf,
    pub fake: PathBuf,
}

/// What a server is started with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `storageType`: memory, sqlite or redis (a private redis-server per server).
    pub storage: String,
    pub concurrency: u32,
    /// Extra `claudeEnv` entries (e.g. `FAKE_CLAUDE_LOG` for the argv probe).
    pub claude_env: Vec<(String, String)>,
    /// `CCS_LOG` for the server (None: its default, `info`).
    pub log_filter: Option<String>,
}

/// Resident memory, in MiB: the total (VmRSS) and its anonymous (heap, stacks) and
/// file-backed (the binary's pages touched so far, shared libraries) parts.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub total: f64,
    pub anon: f64,
    pub file: f64,
}

/// A running server; SIGKILLed if dropped without [`Server::stop`].
pub struct Server {
    child: Option<Child>,
    pub base: String,
    _dir: TempDir,
    pub root: PathBuf,
    pub project: PathBuf,
    /// From spawn to the first 200 on `/health`.
    pub startup: Duration,
    /// With Redis storage: its server, killed after this one (fields drop after `drop`).
    redis: Option<RedisChild>,
}

/// The config of a benchmark server: the fake CLI, no rate limit, statistics on, room for
/// 20,000 pending tasks, everything under `root`.
pub fn config_json(
    bins: &Bins,
    opts: &ServerOptions,
    root: &Path,
    port: u16,
    redis_url: Option<&str>,
) -> Value {
    let project = root.join("project");
    let mut claude_env = serde_json::Map::new();
    claude_env.insert(
        "CLAUDE_CONFIG_DIR".into(),
        json!(root.join("claude-home").display().to_string()),
    );
    for (k, v) in &opts.claude_env {
        claude_env.insert(k.clone(), json!(v));
    }
    let mut config = json!({
        "port": port,
        "host": "127.0.0.1",
        "claudePath": bins.fake.display().to_string(),
        "claudeEnv": claude_env,
        "defaultProjectPath": project.display().to_string(),
        "allowedProjectRoots": [root.display().to_string()],
        "logFile": root.join("server.log").display().to_string(),
        "pidFile": root.join("server.pid").display().to_string(),
        "dataDir": root.join("data").display().to_string(),
        "storageType": opts.storage,
        "taskQueue": {"concurrency": opts.concurrency, "maxPending": 20000},
        "rateLimit": {"enabled": false},
        "statistics": {"enabled": true},
        "shutdownGraceMs": 2000,
    });
    if let (Some(url), Some(obj)) = (redis_url, config.as_object_mut()) {
        obj.insert("redisUrl".into(), json!(url));
        obj.insert("redisNamespace".into(), json!("bench"));
    }
    config
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// One `GET /health` over a fresh connection: the status code, or `None` if it could not be
/// had (not listening yet).
fn health_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    // "HTTP/1.1 200 "
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

impl Server {
    /// Write the config, spawn the server and wait (polling every 1 ms, 10 s at most) for
    /// the first 200 on `/health`.
    pub fn start(bins: &Bins, opts: &ServerOptions) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new().prefix("ccs-bench-").tempdir()?;
        let root = dir.path().canonicalize()?;
        let project = root.join("project");
        std::fs::create_dir_all(&project)?;
        let port = free_port()?;
        let redis = match opts.storage.as_str() {
            "redis" => Some(RedisChild::start(&root, free_port()?)?),
            _ => None,
        };
        let config = config_json(
            bins,
            opts,
            &root,
            port,
            redis.as_ref().map(|r| r.url()).as_deref(),
        );
        let config_path = root.join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let stderr = std::fs::File::create(root.join("stderr.log"))?;
        let mut cmd = Command::new(&bins.server);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&root)
            .env("HOME", &root)
            .env_remove("PORT")
            .env_remove("HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        match &opts.log_filter {
            Some(f) => cmd.env("CCS_LOG", f),
            None => cmd.env_remove("CCS_LOG"),
        };
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bins.server.display()))?;
        let mut server = Server {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            root,
            project,
            startup: Duration::ZERO,
            redis,
        };
        let deadline = started + Duration::from_secs(10);
        loop {
            if health_status(port) == Some(200) {
                server.startup = started.elapsed();
                return Ok(server);
            }
            if let Some(c) = server.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "the server exited during start-up ({status}): {}",
                        server.stderr_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not answer 200 on /health within 10 s: {}",
                    server.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Resident memory of the server process (`/proc/<pid>/status`), in MiB.
    pub fn rss(&self) -> anyhow::Result<Rss> {
        let pid = self.pid().context("the server is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            Ok(kib / 1024.0)
        };
        Ok(Rss {
            total: field("VmRSS:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid().context("the server is not running")?)
    }

    /// CPU time (user + system) of the server's children it has waited for (its CLI runs), in
    /// seconds.
    pub fn children_cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.pid().context("the server is not running")?;
        Ok(proc_cpu(&pid.to_string())?.1)
    }

    /// Context switches of the server's threads so far, per thread. A voluntary one is a
    /// thread going to sleep to wait (for a message, a lock, I/O), so the count tells how many
    /// thread hand-offs a piece of work took. Only threads alive now: a thread that ended took
    /// its count with it (blocking-pool threads end after 10 s idle).
    pub fn context_switches(&self) -> anyhow::Result<ContextSwitches> {
        let pid = self.pid().context("the server is not running")?;
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let path = entry?.path();
            // A thread that ended since the listing: nothing to count.
            let (Ok(status), Ok(name)) = (
                std::fs::read_to_string(path.join("status")),
                std::fs::read_to_string(path.join("comm")),
            ) else {
                continue;
            };
            let field = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let counts = Switches {
                voluntary: field("voluntary_ctxt_switches:"),
                involuntary: field("nonvoluntary_ctxt_switches:"),
            };
            threads.insert(path, (name.trim().to_string(), counts));
        }
        Ok(ContextSwitches { threads })
    }

    /// With Redis storage: its private server.
    pub fn redis(&self) -> Option<&RedisChild> {
        self.redis.as_ref()
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or("").to_string()
    }

    /// SIGTERM, then wait (15 s at most, then SIGKILL).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())?;
        // SAFETY: kill with a pid we spawned and have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("the server exited with {status}: {}", self.stderr_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(proc_cpu(&pid.to_string())?.0)
}

/// CPU time (user + system), in seconds, of process `pid` (a number or `self`): its own, and
/// that of its children it has waited for (`/proc/<pid>/stat`).
pub fn proc_cpu(pid: &str) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("cannot parse /proc/<pid>/stat")?;
    // utime, stime, cutime, cstime are fields 14 to 17 of the line, 12 to 15 after ')'.
    let [utime, stime, cutime, cstime] = f[..] else {
        bail!("/proc/{pid}/stat is too short");
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(((utime + stime) / hz, (cutime + cstime) / hz))
}

/// Context switches of one thread, or summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switches {
    pub voluntary: u64,
    pub involuntary: u64,
}

/// The context switches of a process's threads at one moment ([`Server::context_switches`]).
pub struct ContextSwitches {
    /// By thread (its `/proc` path): its name and counts.
    threads: HashMap<PathBuf, (String, Switches)>,
}

impl ContextSwitches {
    /// What each thread name's threads did since `before` (a thread new since then counts
    /// from zero), the busiest first, and the total.
    pub fn since(&self, before: &ContextSwitches) -> (Vec<(String, Switches)>, Switches) {
        let mut by_name: HashMap<&str, Switches> = HashMap::new();
        let mut total = Switches::default();
        for (path, (name, now)) in &self.threads {
            let then = before
                .threads
                .get(path)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            let d = Switches {
                voluntary: now.voluntary.saturating_sub(then.voluntary),
                involuntary: now.involuntary.saturating_sub(then.involuntary),
            };
            let e = by_name.entry(name).or_default();
            e.voluntary += d.voluntary;
            e.involuntary += d.involuntary;
            total.voluntary += d.voluntary;
            total.involuntary += d.involuntary;
        }
        let mut by_name: Vec<(String, Switches)> = by_name
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        by_name.sort_by(|a, b| b.1.voluntary.cmp(&a.1.voluntary).then(a.0.cmp(&b.0)));
        (by_name, total)
    }
}
