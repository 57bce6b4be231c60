//! Logging: JSON lines to `logFile` (rotated by size), human-readable lines to stderr when the
//! server runs in the foreground, and a level that a config reload changes at once.
//!
//! Only `serve` calls [`init`]; the tests build the application without it, so they never
//! write log files (a test may install its own subscriber). [`apply`] is a no-op then.
//!
//! `CCS_LOG` (an `EnvFilter` directive such as `info,actors=debug`) wins over `logLevel`, also
//! across reloads, for debugging one module without editing the config.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use actors::config::load::{from_file_doc, Environment};
use actors::config::{Config, LogLevel};

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub level: LogLevel,
    /// JSON lines to this file, rotated.
    pub file: Option<FileOptions>,
    /// Human-readable lines to stderr (foreground).
    pub stderr: bool,
}

#[derive(Debug, Clone)]
pub struct FileOptions {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_files: u32,
}

impl LogOptions {
    /// `serve`'s logging, from the config file it is about to load. Read without writing the
    /// file (the application writes it on first start) and without failing: when the file
    /// is missing or invalid, the defaults apply here and the application reports the error.
    pub fn for_serve(config_path: &Path, env: &Environment) -> LogOptions {
        let doc = std::fs::read_to_string(config_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .unwrap_or_else(|| Value::Object(Default::default()));
        let config = from_file_doc(&doc, env)
            .or_else(|_| from_file_doc(&Value::Object(Default::default()), env))
            .map(|(c, _)| c)
            .ok();
        match config {
            Some(c) => LogOptions {
                level: c.log_level,
                file: Some(FileOptions {
                    path: PathBuf::from(&c.log_file),
                    max_bytes: c.log_max_bytes,
                    max_files: c.log_max_files,
                }),
                stderr: true,
            },
            None => LogOptions {
                level: LogLevel::Info,
                file: None,
                stderr: true,
            },
        }
    }
}

/// What a reload may change after [`init`].
struct Control {
    filter: reload::Handle<EnvFilter, Registry>,
    file: Option<Arc<RotatingFile>>,
    /// `CCS_LOG` was set: `logLevel` is not applied.
    env_override: bool,
    level: Mutex<LogLevel>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Install the global subscriber. Returns an error only if one is already installed. A log
/// file that cannot be opened is reported on stderr and left out: the server still starts.
pub fn init(opts: &LogOptions) -> Result<(), String> {
    let env_directive = std::env::var("CCS_LOG").ok().filter(|s| !s.is_empty());
    let filter = env_directive
        .as_deref()
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new(directives(opts.level)));
    let (filter, handle) = reload::Layer::new(filter);

    let file = opts.file.as_ref().and_then(|f| {
        match RotatingFile::open(&f.path, f.max_bytes, f.max_files) {
            Ok(file) => Some(Arc::new(file)),
            Err(e) => {
                eprintln!(
                    "claude-code-server: cannot open the log file {}: {e}; logging to stderr only",
                    f.path.display()
                );
                None
            }
        }
    });
    let file_layer = file.clone().map(|file| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || FileWriter(file.clone()))
    });
    let stderr_layer = opts.stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .map_err(|e| e.to_string())?;
    let _ = CONTROL.set(Control {
        filter: handle,
        file,
        env_override: env_directive.is_some(),
        level: Mutex::new(opts.level),
    });
    Ok(())
}

/// Apply a new config's logging keys (`logLevel`, `logMaxBytes`, `logMaxFiles`) at once.
pub fn apply(config: &Config) {
    let Some(control) = CONTROL.get() else {
        return;
    };
    if let Some(file) = &control.file {
        file.set_limits(config.log_max_bytes, config.log_max_files);
    }
    if control.env_override {
        return;
    }
    let mut level = control.level.lock().unwrap_or_else(|p| p.into_inner());
    if *level == config.log_level {
        return;
    }
    match control
        .filter
        .reload(EnvFilter::new(directives(config.log_level)))
    {
        Ok(()) => {
            *level = config.log_level;
            tracing::info!(level = config.log_level.as_str(), "log level changed");
        }
        Err(e) => tracing::error!(error = %e, "cannot change the log level"),
    }
}

/// The filter for `level`. The HTTP and TLS libraries are kept at `warn` (or quieter), or a
/// `debug` level would drown the server's own lines in connection details.
pub fn directives(level: LogLevel) -> String {
    let libs = if level == LogLevel::Error {
        "error"
    } else {
        "warn"
    };
    let mut d = level.as_str().to_owned();
    for lib in [
        "hyper",
        "hyper_util",
        "h2",
        "reqwest",
        "rustls",
        "notify",
        "inotify",
        "mio",
    ] {
        d.push_str(&format!(",{lib}={libs}"));
    }
    d
}

/// The renames that rotate `path` keeping `max_files` old files, in the order to perform
/// them: `path.{n-1}` → `path.{n}`, …, `path.1` → `path.2`, `path` → `path.1`. The oldest file
/// (`path.{n}`) is replaced by the first rename.
pub fn rotation_renames(path: &Path, max_files: u32) -> Vec<(PathBuf, PathBuf)> {
    let numbered = |i: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    };
    let mut out = Vec::new();
    for i in (1..max_files).rev() {
        out.push((numbered(i), numbered(i + 1)));
    }
    if max_files >= 1 {
        out.push((path.to_path_buf(), numbered(1)));
    }
    out
}

/// An append-only file rotated when a write would take it past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: AtomicU64,
    max_files: AtomicU32,
    state: Mutex<Open>,
}

struct Open {
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> std::io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes: AtomicU64::new(max_bytes),
            max_files: AtomicU32::new(max_files),
            state: Mutex::new(Open {
                file: Some(file),
                size,
            }),
        })
    }

    pub fn set_limits(&self, max_bytes: u64, max_files: u32) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.max_files.store(max_files, Ordering::Relaxed);
    }

    fn write_line(&self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.max_bytes.load(Ordering::Relaxed);
        if st.size > 0 && st.size.saturating_add(buf.len() as u64) > max {
            // A failed rotation keeps appending to the current file: losing log lines would be
            // worse than a file over its limit.
            st.file = None;
            for (from, to) in rotation_renames(&self.path, self.max_files.load(Ordering::Relaxed)) {
                match std::fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        eprintln!("claude-code-server: cannot rotate {}: {e}", from.display())
                    }
                }
            }
            st.size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        }
        if st.file.is_none() {
            st.file = Some(open_append(&self.path)?);
        }
        let file = st
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("log file not open"))?;
        file.write_all(buf)?;
        st.size = st.size.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Owner only: log lines name keys, tasks and paths.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The writer the JSON layer gets for each event (it writes a whole line at once).
struct FileWriter(Arc<RotatingFile>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_line(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_renames_oldest_first() {
        let p = Path::new("/l/server.log");
        let names: Vec<(String, String)> = rotation_renames(p, 3)
            .into_iter()
            .map(|(a, b)| (a.display().to_string(), b.display().to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/l/server.log.2".into(), "/l/server.log.3".into()),
                ("/l/server.log.1".into(), "/l/server.log.2".into()),
                ("/l/server.log".into(), "/l/server.log.1".into()),
            ]
        );
        assert_eq!(rotation_renames(p, 1).len(), 1);
    }

    #[test]
    fn the_file_rotates_at_its_limit_and_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/s.log");
        let f = RotatingFile::open(&path, 10, 2).expect("open");
        for line in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            f.write_line(line.as_bytes()).expect("write");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&path), "dddddddd\n");
        assert_eq!(read(&dir.path().join("logs/s.log.1")), "cccccccc\n");
        assert_eq!(read(&dir.path().join("logs/s.log.2")), "bbbbbbbb\n");
        assert!(!dir.path().join("logs/s.log.3").exists());
        // A line longer than the limit still goes into a file of its own.
        f.set_limits(4, 2);
        f.write_line(b"eeeeeeeeeeee\n").expect("write");
        assert_eq!(read(&path), "eeeeeeeeeeee\n");
    }

    #[test]
    fn noisy_libraries_stay_quiet() {
        let d = directives(LogLevel::Debug);
        assert!(d.starts_with("debug,"), "{d}");
        assert!(d.contains("hyper=warn"), "{d}");
        assert!(EnvFilter::try_new(&d).is_ok());
        assert!(directives(LogLevel::Error).contains("hyper=error"));
    }
}
