//! A private `redis-server` for the Redis storage measurements: started on a free loopback port
//! for one benchmark server, without persistence (the figures are the server's overhead; a
//! deployment's `appendfsync` setting adds Redis's own disk cost), killed with it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct RedisChild {
    child: Child,
    pub port: u16,
}

impl RedisChild {
    /// Start `redis-server` (installed by `scripts/bench.sh`) with its files under `dir`, and
    /// wait (10 s at most) until it answers `PING`.
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<RedisChild> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (./scripts/bench.sh installs it)")?;
        let mut redis = RedisChild { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pong(port) {
            if let Some(status) = redis.child.try_wait()? {
                bail!("redis-server exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer PING within 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// CPU time (user + system) redis-server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::server::cpu_seconds(self.child.id())
    }

    /// Calls and time per command so far (`INFO commandstats`:
    /// `cmdstat_evalsha:calls=12,usec=340,...`). The `INFO` itself counts too.
    pub fn command_stats(&self) -> anyhow::Result<Commands> {
        let text = info(self.port, "commandstats")?;
        let mut per: BTreeMap<String, Calls> = BTreeMap::new();
        for line in text.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| -> anyhow::Result<u64> {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no {key} in INFO commandstats line {line:?}"))
            };
            let calls = Calls {
                calls: field("calls=")?,
                usec: field("usec=")?,
            };
            per.insert(name.to_string(), calls);
        }
        Ok(Commands { per })
    }
}

/// How often one command ran and the time Redis spent in it (µs; a script's time includes its
/// inner commands).
#[derive(Debug, Clone, Copy, Default)]
pub struct Calls {
    pub calls: u64,
    pub usec: u64,
}

/// Redis commands executed, by name (a script's inner commands are counted by name too, and
/// the script itself as `evalsha`).
#[derive(Debug, Clone, Default)]
pub struct Commands {
    pub per: BTreeMap<String, Calls>,
}

impl Commands {
    /// What was executed since `before`, by name (names with no calls left out).
    pub fn since(&self, before: &Commands) -> Commands {
        let per = self
            .per
            .iter()
            .filter_map(|(k, v)| {
                let old = before.per.get(k).copied().unwrap_or_default();
                let d = Calls {
                    calls: v.calls.saturating_sub(old.calls),
                    usec: v.usec.saturating_sub(old.usec),
                };
                (d.calls > 0).then(|| (k.clone(), d))
            })
            .collect();
        Commands { per }
    }

    /// Every command run, those inside scripts included.
    pub fn total(&self) -> u64 {
        self.per.values().map(|c| c.calls).sum()
    }

    /// Scripts run (`EVALSHA`, `EVAL`).
    pub fn scripts(&self) -> u64 {
        ["evalsha", "eval"]
            .iter()
            .filter_map(|k| self.per.get(*k))
            .map(|c| c.calls)
            .sum()
    }
}

/// One `INFO <section>` over a fresh connection: the bulk string's text.
fn info(port: u16, section: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("INFO {section}\r\n").as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    // `$<len>\r\n<text>\r\n`: read until the announced length has arrived.
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("redis-server closed the connection during INFO");
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n") {
            let len: usize = head
                .strip_prefix('$')
                .and_then(|l| l.parse().ok())
                .with_context(|| format!("INFO answered {head:?}"))?;
            if body.len() >= len {
                return Ok(body[..len].to_string());
            }
        }
    }
}

fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
