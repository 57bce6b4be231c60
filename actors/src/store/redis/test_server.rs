//! Private `redis-server` processes for tests: never a shared instance, whose contents no test
//! may depend on.
//!
//! * [`shared_url`]: one server per test binary, started on first use; each test then works
//!   under its own key namespace ([`test_namespace`]), so tests run in parallel without seeing
//!   each other's keys.
//! * [`RedisServer::start`]: a server owned by one test (to stop it and see an outage); it is
//!   killed when dropped.
//!
//! Cleanup: every server is spawned with `--daemonize no` and `PR_SET_PDEATHSIG = SIGKILL`, so
//! the kernel kills it when the thread that spawned it ends: at the latest when the test binary
//! exits, however it exits (end of the run, a panic, SIGKILL). The shared one is spawned by a
//! thread that lives as long as the process (a static is never dropped, so a `Drop` guard alone
//! would leave it behind). A Redis `timeout` setting would not help: it closes idle client
//! connections, it does not stop the server.
//!
//! Missing `redis-server` is an error for the caller to turn into a failed test, never a skip:
//! the message says to run `./scripts/test.sh`, which installs it.
//!
//! This file is also compiled into the HTTP tests (`tests/api/main.rs` includes it by path), so
//! it uses nothing but `std` and `libc`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Ports tried before giving up (a free port can be taken between the probe and the start).
const PORT_TRIES: usize = 5;

/// A `redis-server` child on 127.0.0.1, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Start a server on a free loopback port, without persistence, and wait until it answers.
    pub fn start() -> Result<RedisServer, String> {
        Self::start_with(None)
    }

    /// Start a server that writes every change to an append-only file in `dir` before it
    /// answers (`appendfsync always`), so one started again on the same `dir` finds everything.
    #[allow(dead_code)] // used by the HTTP tests (tests/api includes this file)
    pub fn start_persistent(dir: &Path) -> Result<RedisServer, String> {
        Self::start_with(Some(dir))
    }

    fn start_with(persist: Option<&Path>) -> Result<RedisServer, String> {
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            let port = free_port()?;
            match spawn(port, persist) {
                Ok(server) => return Ok(server),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) => last = e,
            }
        }
        Err(format!(
            "redis-server did not start in {PORT_TRIES} tries: {last}"
        ))
    }

    /// Start a server on `port` (e.g. again where a killed one was).
    pub fn start_on(port: u16) -> Result<RedisServer, String> {
        Self::start_on_with(port, None)
    }

    /// [`RedisServer::start_persistent`] on `port` (again where a killed one was, same `dir`).
    #[allow(dead_code)] // used by the HTTP tests (tests/api includes this file)
    pub fn start_on_persistent(port: u16, dir: &Path) -> Result<RedisServer, String> {
        Self::start_on_with(port, Some(dir))
    }

    fn start_on_with(port: u16, persist: Option<&Path>) -> Result<RedisServer, String> {
        match spawn(port, persist) {
            Ok(server) => Ok(server),
            Err(Failure::Fatal(e) | Failure::Retry(e)) => Err(e),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stop the server now (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Failure {
    /// Worth another port (the server exited at once, e.g. the port was taken meanwhile).
    Retry(String),
    /// No point trying again (no binary, or it started but never answered).
    Fatal(String),
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

fn spawn(port: u16, persist: Option<&Path>) -> Result<RedisServer, Failure> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--daemonize", "no"])
        .args(["--loglevel", "warning"]);
    match persist {
        Some(dir) => {
            cmd.args(["--appendonly", "yes"])
                .args(["--appendfsync", "always"])
                .arg("--dir")
                .arg(dir);
        }
        None => {
            // Nothing is saved, but a server must never write into the tests' working
            // directory.
            cmd.args(["--appendonly", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir());
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid); an error makes `spawn` fail cleanly.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        Failure::Fatal(if e.kind() == std::io::ErrorKind::NotFound {
            "redis-server is not on PATH: run ./scripts/test.sh, which installs it \
             (apt-get install redis-server)"
                .to_string()
        } else {
            format!("cannot start redis-server: {e}")
        })
    })?;
    let mut server = RedisServer { child, port };
    wait_ready(&mut server)?;
    Ok(server)
}

/// Poll with `PING` until the server answers `+PONG`; an early exit means the port was lost.
fn wait_ready(server: &mut RedisServer) -> Result<(), Failure> {
    let end = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(Failure::Retry(format!(
                "redis-server on port {} exited at once ({status})",
                server.port
            )));
        }
        if ping(server.port) {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(Failure::Fatal(format!(
                "redis-server on port {} did not answer PING within {READY_WITHIN:?}",
                server.port
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The URL of this test binary's shared server, starting it on first use.
pub fn shared_url() -> Result<String, String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    SHARED.get_or_init(start_kept).clone()
}

/// Start a server from a thread that lives as long as the process and keeps it: the death
/// signal fires when that thread ends, i.e. when the test binary exits.
fn start_kept() -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-redis-server".into())
        .spawn(move || match RedisServer::start() {
            Ok(server) => {
                let _ = tx.send(Ok(server.url()));
                loop {
                    // Parked for good: `server` must stay alive (and this thread too).
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| format!("cannot start the redis-server thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the redis-server thread ended without an answer".to_string())?
}

/// A key namespace no other test uses.
pub fn test_namespace() -> String {
    format!("ccs-test-{}", uuid_like())
}

/// A unique enough token from the clock and a counter, without depending on `uuid` (this file
/// is shared with the HTTP tests).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
