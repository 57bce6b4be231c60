//! Signals the way the real CLI answers them (docs §7), and the `hang` mode.
//!
//! SIGTERM and SIGINT are blocked in every thread (the mask is set before any thread starts
//! and inherited) and taken synchronously by one thread with `sigwait`, so the reaction can
//! do ordinary work: kill the `sleep` child, remove the session lock, write the call log.
//! * SIGTERM → exit 143 at once, nothing more on stdout (unless `ignore_sigterm`).
//! * SIGINT → json: an `error_during_execution` result; stream-json: the
//!   "[Request interrupted by user]" user line; text: nothing. Exit 0.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use crate::json::J;
use crate::messages::{self, Ctx};
use crate::output::{self, Mode};
use crate::result::{self, Outcome, ResultSpec};
use crate::usage::{ModelUsage, Tokens};
use crate::{calllog, shutdown};

static IGNORE_SIGTERM: AtomicBool = AtomicBool::new(false);
/// The pid of the `hang` child (`sleep 1000`), 0 when there is none.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// What the SIGINT reaction needs to print its result line.
static INTERRUPT_CTX: Mutex<Option<(Ctx, Instant)>> = Mutex::new(None);

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM/SIGINT and starts the thread that handles them. Call first thing in
/// `main`, before any other thread exists, so that every thread inherits the mask.
pub fn install() {
    let set = signal_set();
    // SAFETY: changes this thread's signal mask with a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits for one of the blocked signals in `set`.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            match sig {
                libc::SIGTERM if IGNORE_SIGTERM.load(Ordering::SeqCst) => {}
                libc::SIGTERM => shutdown::exit_on_signal(143, "SIGTERM"),
                libc::SIGINT => {
                    print_interrupted();
                    shutdown::exit_on_signal(0, "SIGINT");
                }
                _ => {}
            }
        });
    if spawned.is_err() {
        // Without the thread the signals would stay blocked forever; fall back to the
        // default dispositions, so SIGTERM still ends the process (killed, not exit 143).
        // SAFETY: unblocks the same set in this thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// `ignore_sigterm`: the fake and its `sleep` child (which inherits `SIG_IGN` through exec)
/// only die by SIGKILL. Not real behaviour: it tests the service's escalation.
pub fn ignore_sigterm() {
    IGNORE_SIGTERM.store(true, Ordering::SeqCst);
    // SAFETY: sets the disposition of SIGTERM to "ignore".
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

pub fn set_interrupt_ctx(ctx: &Ctx, started: Instant) {
    *INTERRUPT_CTX.lock().unwrap_or_else(|e| e.into_inner()) = Some((ctx.clone(), started));
}

fn print_interrupted() {
    let snapshot = INTERRUPT_CTX
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some((ctx, started)) = snapshot else {
        return;
    };
    match output::mode() {
        Mode::Stream => output::emit(messages::interrupted_user(&ctx.session_id)),
        Mode::Json | Mode::JsonVerbose => {
            let r = result::build(
                &ctx,
                ResultSpec {
                    outcome: Outcome::DuringExecution {
                        errors: vec![
                            "[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null"
                                .to_string(),
                        ],
                        terminal_reason: Some("aborted_streaming"),
                        early: false,
                    },
                    num_turns: 1,
                    stop_reason: None,
                    run: Tokens::default(),
                    model_usage: ModelUsage::new(),
                    run_model_usage: ModelUsage::new(),
                    total_cost: 0.0,
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    duration_api_ms: 0,
                    ttft_ms: 0,
                    permission_denials: Vec::<J>::new(),
                    begun_message_ids: None,
                },
            );
            output::result(r, "", false);
        }
        Mode::Text => {}
    }
}

/// Spawns the `sleep 1000` stand-in for a running tool, in our process group (no setsid), so
/// the service's group kill can be checked.
fn spawn_child() -> Option<i32> {
    for program in ["sleep", "/bin/sleep", "/usr/bin/sleep"] {
        let spawned = Command::new(program)
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = spawned {
            let pid = i32::try_from(child.id()).ok()?;
            CHILD.store(pid, Ordering::SeqCst);
            return Some(pid);
        }
    }
    None
}

/// Kills and reaps the `hang` child, so that it is gone (not a zombie) when we exit.
pub fn kill_child() {
    let pid = CHILD.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signals and reaps our own child process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
}

/// `hang`: start the child, announce it in the call log, and wait for a signal. The wait is
/// `park`, which sleeps in the kernel; the signal thread ends the process.
pub fn hang() -> ! {
    let child = spawn_child();
    calllog::event("hang", json!({"child_pid": child}));
    loop {
        std::thread::park();
    }
}
