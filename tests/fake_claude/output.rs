//! Where lines go in each output mode.
//!
//! * `stream-json`: every message is written and flushed at once, one line each.
//! * `json --verbose`: messages are collected and printed as one JSON array at the end.
//! * `json`: only the result line, at the end.
//! * `text`: only the result text.
//!
//! The state sits behind a process-wide lock because the signal thread prints the SIGINT
//! outcome (docs §7) with the same rules. The SIGTERM path never takes this lock: a writer
//! blocked on a full pipe must not stop the process from exiting.

use std::io::Write;
use std::sync::Mutex;

use crate::json::J;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Text,
    Json,
    JsonVerbose,
    Stream,
}

struct State {
    mode: Mode,
    collected: Vec<J>,
}

static OUT: Mutex<Option<State>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    let mut guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_mut().map(f)
}

/// Writes `text` to stdout and flushes. A closed stdout (EPIPE; SIGPIPE is ignored by the Rust
/// runtime) is not an error worth dying for: the run finishes and exits with its own code.
fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub fn init(mode: Mode) {
    let mut guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
    *guard = Some(State {
        mode,
        collected: Vec::new(),
    });
}

pub fn mode() -> Mode {
    with(|s| s.mode).unwrap_or(Mode::Text)
}

/// A message of the conversation (init, assistant, user, stream_event, system…).
pub fn emit(msg: J) {
    with(|s| match s.mode {
        Mode::Stream => write_stdout(&(msg.to_line() + "\n")),
        Mode::JsonVerbose => s.collected.push(msg),
        Mode::Json | Mode::Text => {}
    });
}

/// A raw line that is not JSON (the `garbage` directive; stream-json only).
pub fn emit_raw_line(line: &str) {
    with(|s| {
        if s.mode == Mode::Stream {
            write_stdout(&format!("{line}\n"));
        }
    });
}

/// The end of a turn: the result object, or in text mode `text` (with a trailing newline
/// unless `newline` is false, as for the max-turns and budget messages).
pub fn result(result: J, text: &str, newline: bool) {
    with(|s| match s.mode {
        Mode::Stream => write_stdout(&(result.to_line() + "\n")),
        Mode::Json => write_stdout(&(result.to_line() + "\n")),
        Mode::JsonVerbose => {
            s.collected.push(result);
            let all = J::Arr(std::mem::take(&mut s.collected));
            write_stdout(&(all.to_line() + "\n"));
        }
        Mode::Text => {
            if newline {
                write_stdout(&format!("{text}\n"));
            } else {
                write_stdout(text);
            }
        }
    });
}

/// Writes a line to stderr, ignoring a closed stderr.
pub fn stderr_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
    let _ = err.flush();
}
