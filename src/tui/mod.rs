//! The operator's TUI (`claude-code-server tui`): a cursive application that reaches the
//! daemon only over HTTP, through [`crate::client`], and controls it through
//! [`crate::daemon`].
//!
//! The UI thread never waits on the network or the disk: screens hand jobs to the
//! [`worker::Worker`], which pushes results back with cursive's `cb_sink()`. [`install`] sets
//! everything up on any `Cursive`, so the tests drive the same screens with the puppet backend.
//!
//! One module per screen; [`menu`] lists them with their shortcuts.

use std::process::ExitCode;
use std::sync::Arc;

use cursive::Cursive;

use crate::client::{Client, Target};
use crate::daemon::Control;

pub mod api_docs;
pub mod approvals;
pub mod daemon_screen;
pub mod dashboard;
pub mod format;
pub mod log_format;
pub mod logs;
pub mod menu;
pub mod sessions;
pub mod settings;
pub mod settings_form;
pub mod statistics;
pub mod task_output;
pub mod tasks;
pub mod test_api;
pub mod widgets;
pub mod worker;

/// Where the TUI looks when the config cannot be read: the default port on loopback.
const FALLBACK_URL: &str = "http://127.0.0.1:3000";

/// Set up the TUI on `siv`: the worker, the context every screen uses, and the main menu.
/// Returns the worker, which must live as long as the UI runs (dropping it stops every job).
pub fn install(siv: &mut Cursive, control: Control) -> std::io::Result<worker::Worker> {
    let worker_thread = worker::Worker::start()?;
    let (client, config_error) = match control.client() {
        Ok(c) => (c, None),
        Err(e) => {
            // The TUI still opens (Settings and Logs may help fix the problem); requests go
            // to the `--url`, or the default address.
            let target = Target {
                base_url: control.url.clone().unwrap_or_else(|| FALLBACK_URL.into()),
                api_key: control.api_key.clone(),
            };
            let client = Client::new(target).map_err(|e| std::io::Error::other(e.to_string()))?;
            (client, Some(e.to_string()))
        }
    };
    let ctx = worker::Ctx::new(
        worker::Ui::new(siv.cb_sink().clone()),
        Arc::new(control),
        client,
        worker_thread.spawner(),
    );
    siv.set_user_data(ctx);
    menu::open(siv, config_error);
    Ok(worker_thread)
}

/// Run the TUI in this terminal until the user quits.
pub fn run(control: Control) -> ExitCode {
    let mut siv = Cursive::new();
    let _worker = match install(&mut siv, control) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("claude-code-server: cannot start the TUI: {e}");
            return ExitCode::FAILURE;
        }
    };
    let backend = match cursive::backends::crossterm::Backend::init() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("claude-code-server: cannot open the terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let previous_hook = std::panic::take_hook();
    set_panic_hook(std::thread::current().id());
    // The runner owns the backend: on a panic it is dropped while unwinding, which gives the
    // terminal back (and clears it), so the panic messages are printed only after that.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        siv.runner(backend).run();
    }));
    std::panic::set_hook(previous_hook);
    for message in take_panics() {
        eprintln!("claude-code-server tui: {message}");
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // The exit code of a panicking Rust program.
        Err(_) => ExitCode::from(101),
    }
}

/// Panic messages kept while the TUI owns the terminal (printed then, they would be drawn over
/// or wiped by the UI).
static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn take_panics() -> Vec<String> {
    match PANICS.lock() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

/// Record every panic; on the UI thread, also give the terminal back at once (raw mode off,
/// main screen, cursor shown), in case unwinding does not reach the backend (a panic while
/// panicking aborts). A panic of a worker job only ends that job: the UI goes on.
fn set_panic_hook(ui_thread: std::thread::ThreadId) {
    std::panic::set_hook(Box::new(move |info| {
        let here = std::thread::current();
        if here.id() == ui_thread {
            restore_terminal();
        }
        let message = format!("thread '{}' {info}", here.name().unwrap_or("?"));
        match PANICS.lock() {
            Ok(mut p) => p.push(message),
            Err(poisoned) => poisoned.into_inner().push(message),
        }
    }));
}

fn restore_terminal() {
    use cursive::backends::crossterm::crossterm::{cursor, event, execute, terminal};
    let _ = terminal::disable_raw_mode();
    // The crossterm backend draws on /dev/tty; fall back to stdout.
    fn restore<W: std::io::Write>(out: &mut W) {
        let _ = execute!(
            out,
            event::DisableMouseCapture,
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
    }
    match std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        Ok(mut tty) => restore(&mut tty),
        Err(_) => restore(&mut std::io::stdout()),
    }
}
