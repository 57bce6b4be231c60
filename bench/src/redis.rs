//! A private `redis-server` for the Redis storage measurements: started on a free loopback port
//! for one benchmark server, without persistence (the figures are the server's overhead; a
//! deployment's `appendfsync` setting adds Redis's own disk cost), killed with it.

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
