//! Reading the prompt from stdin the way 2.1.330 does.
//!
//! stdin is read to EOF unless it is a terminal. When a prompt argument is present and stdin
//! yields neither data nor EOF within 3 s, the CLI warns and carries on without it: that is
//! how a test notices a service that forgets to close the child's stdin. A reader thread and
//! a channel with a timeout give exactly that without blocking the process on the pipe.

use std::io::{BufRead, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// The real CLI's wait before giving up on stdin. Not scaled by `FAKE_CLAUDE_TIME_SCALE`:
/// it is the CLI's own timeout, not a simulated model delay.
const NO_DATA_TIMEOUT: Duration = Duration::from_secs(3);

pub const NO_DATA_WARNING: &str = "Warning: no stdin data received in 3s, proceeding without it. \
If piping from a slow command, redirect stdin explicitly: < /dev/null to skip, or wait longer.";

#[derive(Debug, Default)]
pub struct StdinText {
    /// What was read (lossy UTF-8); `None` when stdin is a terminal.
    pub text: Option<String>,
    /// EOF was seen.
    pub closed: bool,
}

enum Chunk {
    Data(Vec<u8>),
    End,
}

pub fn is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Reads the prompt part that comes from stdin.
pub fn read_prompt(has_arg: bool) -> StdinText {
    if is_terminal() {
        return StdinText::default();
    }
    let (tx, rx) = mpsc::channel();
    // The thread is left behind when we stop waiting; it dies with the process.
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Chunk::End);
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Chunk::Data(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    if spawned.is_err() {
        return StdinText::default();
    }

    let mut bytes = Vec::new();
    let first = if has_arg {
        rx.recv_timeout(NO_DATA_TIMEOUT)
    } else {
        rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
    };
    match first {
        Ok(Chunk::End) => {
            return StdinText {
                text: Some(String::new()),
                closed: true,
            }
        }
        Ok(Chunk::Data(d)) => bytes.extend_from_slice(&d),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = writeln!(std::io::stderr(), "{NO_DATA_WARNING}");
            return StdinText {
                text: Some(String::new()),
                closed: false,
            };
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => return StdinText::default(),
    }
    // Data has started to flow: from here on, wait for EOF however long it takes.
    let mut closed = false;
    while let Ok(chunk) = rx.recv() {
        match chunk {
            Chunk::Data(d) => bytes.extend_from_slice(&d),
            Chunk::End => {
                closed = true;
                break;
            }
        }
    }
    StdinText {
        text: Some(String::from_utf8_lossy(&bytes).into_owned()),
        closed,
    }
}

/// Input lines read while waiting for a permission answer that were not that answer (a
/// further user message, say): handed out again, in order, before stdin is read further.
static DEFERRED: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Puts `line` back for the next [`read_line`].
pub fn defer(line: String) {
    DEFERRED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(line);
}

/// One line of `--input-format stream-json` input, or `None` at EOF.
pub fn read_line() -> Option<String> {
    if let Some(line) = DEFERRED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
    {
        return Some(line);
    }
    read_stdin_line()
}

/// The next line straight from stdin (what a permission wait reads).
pub fn read_stdin_line() -> Option<String> {
    let mut line = Vec::new();
    match std::io::stdin().lock().read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).into_owned()),
    }
}
