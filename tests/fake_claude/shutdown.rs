//! Every way out of the process: clean up (hang child, session lock, call log), then exit.

use std::io::Write;

use crate::{calllog, session, signals};

fn cleanup(code: i32, signal: Option<&str>) {
    signals::kill_child();
    session::release_lock();
    calllog::finish(code, signal);
}

/// The normal end of a run, from the main thread.
pub fn exit(code: i32) -> ! {
    cleanup(code, None);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The end forced by a signal, from the signal thread. `_exit` skips the runtime's stdout
/// flush: the main thread may hold the stdout lock while blocked on a full pipe, and nothing
/// more may be printed anyway.
pub fn exit_on_signal(code: i32, signal: &str) -> ! {
    cleanup(code, Some(signal));
    // SAFETY: terminates the process immediately; nothing is left to run.
    unsafe { libc::_exit(code) }
}
