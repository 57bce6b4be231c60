//! Logging: JSON lines to `logFile` (rotated by size), human-readable lines to stderr when the
//! server runs in the foreground, and a level that a config reload changes at once.
//!
//! Only `serve` calls [`init`]; the tests build the application without it, so they never
//! write log files (a test may install its own subscriber). [`apply`] is a no-op then.
//!
//! `CCS_LOG` (an `EnvFilter` directive such as `info,actors=debug`) wins over `logLevel`, also
//! across reloads, for debugging one module without editing the config.
//!
//! Lines are written by a thread per destination, in batches ([`background`]); [`flush`]
//! before the process exits.

pub mod background;
pub mod rotating;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use actors::config::load::{from_file_doc, Environment};
use actors::config::{Config, LogLevel};

use background::{Background, LineWriter, Stderr};
use rotating::RotatingFile;

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
    /// The writer threads, for [`flush`].
    writers: Vec<Background>,
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
    let file_writer = file
        .clone()
        .and_then(|file| writer_thread("log-file", file));
    let stderr_writer = opts
        .stderr
        .then(|| writer_thread("log-stderr", Stderr))
        .flatten();
    let file_layer = file_writer.clone().map(|bg| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || LineWriter(bg.clone()))
    });
    let stderr_layer = stderr_writer.clone().map(|bg| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(move || LineWriter(bg.clone()))
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
        writers: file_writer.into_iter().chain(stderr_writer).collect(),
        env_override: env_directive.is_some(),
        level: Mutex::new(opts.level),
    });
    Ok(())
}

fn writer_thread(name: &str, sink: impl background::Sink) -> Option<Background> {
    match Background::spawn(name, sink) {
        Ok(bg) => Some(bg),
        Err(e) => {
            eprintln!("claude-code-server: cannot start the {name} writer thread: {e}");
            None
        }
    }
}

/// Write every line logged so far (waiting at most 2 s for a slow disk). Call before the
/// process exits; a no-op when [`init`] was not called.
pub fn flush() {
    if let Some(control) = CONTROL.get() {
        for writer in &control.writers {
            writer.flush(Duration::from_secs(2));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_libraries_stay_quiet() {
        let d = directives(LogLevel::Debug);
        assert!(d.starts_with("debug,"), "{d}");
        assert!(d.contains("hyper=warn"), "{d}");
        assert!(EnvFilter::try_new(&d).is_ok());
        assert!(directives(LogLevel::Error).contains("hyper=error"));
    }
}
