//! Logging: JSON lines to `logFile` (rotated by size), human-readable lines to stderr when the
//! server runs in the foreground, and a level that a config reload changes at once.
//!
//! The code logs through the `log` facade with key-values (`log::info!(task_id:% = id; "run
//! started")`); env_logger formats the lines ([`format`]). Libraries that log through
//! `tracing` (hyper, h2, actix) reach the same logger: with no `tracing` subscriber installed,
//! `tracing` hands its events to `log`.
//!
//! Only `serve` calls [`init`]; the tests build the application without it, so they never
//! write log files (a test may install its own logger). [`apply`] is a no-op then.
//!
//! `CCS_LOG` (env_logger's filter syntax, such as `info,actors=debug`) wins over `logLevel`,
//! also across reloads, for debugging one module without editing the config.
//!
//! Lines are written by a thread per destination, in batches ([`background`]); [`flush`]
//! before the process exits.

pub mod background;
pub mod format;
pub mod rotating;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use env_filter::Filter;
use log::{LevelFilter, Log, Metadata, Record};
use serde_json::Value;

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

/// The level filter: `CCS_LOG` when set, else `logLevel`, changed by a reload at once.
///
/// Records pass this filter before any formatting; `log::set_max_level` follows it, so the
/// log macros skip what it would refuse without a call.
pub struct Levels {
    filter: RwLock<Filter>,
    /// `CCS_LOG` was set: `logLevel` is not applied, also across reloads.
    env_override: bool,
    level: Mutex<LogLevel>,
}

impl Levels {
    /// `env` is `CCS_LOG`'s directive (`info,actors=debug`: env_logger's `module=level`
    /// syntax). An empty or invalid one is reported on stderr and `level` applies.
    pub fn new(level: LogLevel, env: Option<&str>) -> Levels {
        let env = env.filter(|d| !d.trim().is_empty()).and_then(|d| {
            let filter = parse_filter(d);
            if filter.is_none() {
                eprintln!(
                    "claude-code-server: CCS_LOG={d:?} is not a valid filter; logLevel applies"
                );
            }
            filter
        });
        let env_override = env.is_some();
        let filter = env.unwrap_or_else(|| level_filter(level));
        Levels {
            filter: RwLock::new(filter),
            env_override,
            level: Mutex::new(level),
        }
    }

    pub fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.read().enabled(metadata)
    }

    /// The most verbose level any directive lets through (for `log::set_max_level`).
    pub fn max_level(&self) -> LevelFilter {
        self.read().filter()
    }

    /// Apply `logLevel` from a new config. Returns whether the filter changed (not when
    /// `CCS_LOG` wins, nor when the level is the same).
    pub fn set(&self, level: LogLevel) -> bool {
        if self.env_override {
            return false;
        }
        let mut current = self.level.lock().unwrap_or_else(|p| p.into_inner());
        if *current == level {
            return false;
        }
        *self.filter.write().unwrap_or_else(|p| p.into_inner()) = level_filter(level);
        *current = level;
        true
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Filter> {
        self.filter.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_filter(directives: &str) -> Option<Filter> {
    let mut builder = env_filter::Builder::new();
    builder.try_parse(directives).ok()?;
    Some(builder.build())
}

fn level_filter(level: LogLevel) -> Filter {
    // `directives` only ever yields valid directives; the fallback is the level alone.
    parse_filter(&directives(level)).unwrap_or_else(|| {
        env_filter::Builder::new()
            .filter_level(to_level_filter(level))
            .build()
    })
}

fn to_level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Trace => LevelFilter::Trace,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Error => LevelFilter::Error,
    }
}

/// The installed logger: one filter, then each destination's env_logger.
///
/// Why several env_loggers behind one `log::Log`: an env_logger has one format and one
/// target, and the destinations differ in both (JSON lines to the file, text to stderr).
/// Each is built without a filter of its own (`trace`) and writes through
/// `Target::Pipe` into its destination's [`Background`] writer; the level lives in
/// [`Levels`], where a reload changes it without rebuilding the loggers.
struct Logger {
    levels: Levels,
    sinks: Vec<env_logger::Logger>,
    /// The writer threads, for [`flush`].
    writers: Vec<Background>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.levels.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.levels.enabled(record.metadata()) {
            for sink in &self.sinks {
                sink.log(record);
            }
        }
    }

    fn flush(&self) {
        for writer in &self.writers {
            writer.flush(Duration::from_secs(2));
        }
    }
}

/// What a reload may change after [`init`].
struct Control {
    logger: Logger,
    file: Option<Arc<RotatingFile>>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// How a destination's lines are written.
#[derive(Clone, Copy)]
enum Format {
    Json,
    Text { ansi: bool },
}

/// An env_logger that formats every record it is given as `format` into `writer`.
fn sink(format: Format, writer: Background) -> env_logger::Logger {
    env_logger::Builder::new()
        .filter_level(LevelFilter::Trace)
        .target(env_logger::Target::Pipe(Box::new(LineWriter(writer))))
        .format(move |buf, record| {
            let time = format::timestamp();
            format::with_request_id(|request_id| match format {
                Format::Json => format::json_line(buf, &time, record, request_id),
                Format::Text { ansi } => format::text_line(buf, &time, record, request_id, ansi),
            })
        })
        .build()
}

/// Install the global logger. Returns an error only if one is already installed. A log
/// file that cannot be opened is reported on stderr and left out: the server still starts.
pub fn init(opts: &LogOptions) -> Result<(), String> {
    let env_directive = std::env::var("CCS_LOG").ok();
    let levels = Levels::new(opts.level, env_directive.as_deref());

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
        .and_then(|file| writer_thread("log-file", file))
        .map(|bg| (Format::Json, bg));
    let stderr_writer = opts
        .stderr
        .then(|| writer_thread("log-stderr", Stderr))
        .flatten()
        .map(|bg| {
            let ansi = std::io::stderr().is_terminal();
            (Format::Text { ansi }, bg)
        });
    let destinations: Vec<_> = file_writer.into_iter().chain(stderr_writer).collect();
    let logger = Logger {
        levels,
        sinks: destinations
            .iter()
            .map(|(format, bg)| sink(*format, bg.clone()))
            .collect(),
        writers: destinations.into_iter().map(|(_, bg)| bg).collect(),
    };
    if CONTROL.set(Control { logger, file }).is_err() {
        return Err("logging is already set up".into());
    }
    let Some(control) = CONTROL.get() else {
        return Err("logging is not set up".into());
    };
    log::set_logger(&control.logger).map_err(|e| e.to_string())?;
    log::set_max_level(control.logger.levels.max_level());
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
        control.logger.flush();
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
    let levels = &control.logger.levels;
    if levels.set(config.log_level) {
        log::set_max_level(levels.max_level());
        log::info!(level = config.log_level.as_str(); "log level changed");
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
        "actix_http",
        "actix_server",
        "actix_tls",
        "awc",
        "rustls",
        "notify",
        "inotify",
        "mio",
        // At `trace`, `tracing` turns every span of those libraries into log records too.
        "tracing",
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
        assert!(parse_filter(&d).is_some());
        assert!(directives(LogLevel::Error).contains("hyper=error"));
        let filter = level_filter(LogLevel::Debug);
        assert!(!filter.enabled(&meta(log::Level::Info, "hyper::proto::h1")));
        assert!(filter.enabled(&meta(log::Level::Warn, "hyper::proto::h1")));
        assert!(filter.enabled(&meta(log::Level::Debug, "actors::queue")));
    }

    fn meta(level: log::Level, target: &str) -> Metadata<'_> {
        Metadata::builder().level(level).target(target).build()
    }

    #[test]
    fn a_reload_changes_the_level_at_once() {
        let levels = Levels::new(LogLevel::Info, None);
        assert_eq!(levels.max_level(), LevelFilter::Info);
        assert!(!levels.enabled(&meta(log::Level::Debug, "actors::queue")));
        assert!(!levels.set(LogLevel::Info), "the same level is no change");
        assert!(levels.set(LogLevel::Debug));
        assert_eq!(levels.max_level(), LevelFilter::Debug);
        assert!(levels.enabled(&meta(log::Level::Debug, "actors::queue")));
        assert!(levels.set(LogLevel::Error));
        assert!(!levels.enabled(&meta(log::Level::Warn, "claude_code_server::app")));
        assert!(levels.enabled(&meta(log::Level::Error, "claude_code_server::app")));
    }

    #[test]
    fn ccs_log_wins_over_log_level_also_across_reloads() {
        let levels = Levels::new(LogLevel::Error, Some("warn,actors=debug"));
        assert!(levels.enabled(&meta(log::Level::Debug, "actors::queue::worker")));
        assert!(!levels.enabled(&meta(log::Level::Info, "claude_code_server::app")));
        assert!(levels.enabled(&meta(log::Level::Warn, "claude_code_server::app")));
        assert_eq!(levels.max_level(), LevelFilter::Debug);
        assert!(
            !levels.set(LogLevel::Trace),
            "a reload must not override CCS_LOG"
        );
        assert!(!levels.enabled(&meta(log::Level::Info, "claude_code_server::app")));
        assert_eq!(levels.max_level(), LevelFilter::Debug);
    }

    #[test]
    fn an_unusable_ccs_log_leaves_log_level_in_charge() {
        for env in [Some(""), Some("info,actors=loud"), None] {
            let levels = Levels::new(LogLevel::Warn, env);
            assert!(!levels.enabled(&meta(log::Level::Info, "app")), "{env:?}");
            assert!(levels.set(LogLevel::Info), "{env:?}");
            assert!(levels.enabled(&meta(log::Level::Info, "app")), "{env:?}");
        }
    }

    /// The installed path end to end: a record goes through the filter and env_logger into
    /// the writer thread, as one JSON line naming its request.
    #[test]
    fn records_reach_the_writer_as_json_lines() {
        #[derive(Clone, Default)]
        struct Collect(Arc<Mutex<Vec<u8>>>);
        impl background::Sink for Collect {
            fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
                self.0.lock().expect("collect").extend_from_slice(batch);
                Ok(())
            }
        }
        let sink_bytes = Collect::default();
        let bg = Background::spawn("test-log", sink_bytes.clone()).expect("spawn");
        let logger = Logger {
            levels: Levels::new(LogLevel::Info, None),
            sinks: vec![sink(Format::Json, bg.clone())],
            writers: vec![bg],
        };
        let kvs = [("status", 3u64)];
        let record = |level| {
            Record::builder()
                .level(level)
                .target("access")
                .args(format_args!("request"))
                .key_values(&kvs)
                .build()
        };
        logger.log(&record(log::Level::Debug)); // below the level: dropped
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(format::in_request("req-9".into(), async {
                logger.log(&record(log::Level::Info));
            }));
        logger.flush();
        let text = String::from_utf8(sink_bytes.0.lock().expect("collect").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        let (time, rest) = text
            .strip_prefix(r#"{"timestamp":""#)
            .and_then(|t| t.split_once('"'))
            .expect("the timestamp first");
        assert_eq!(time.len(), "2025-03-04T05:06:07.123456Z".len(), "{text}");
        assert_eq!(
            rest,
            concat!(
                r#","level":"INFO","message":"request","status":3,"target":"access","#,
                r#""span":{"request_id":"req-9","name":"request"}}"#,
                "\n"
            )
        );
    }
}
