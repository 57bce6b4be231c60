//! A faithful fake of the Claude Code CLI (`claude -p …`) for the service's tests.
//!
//! It needs no network and no credentials, and reproduces what the service depends on: the
//! argv quirks, the stdout/stderr shapes of each output mode, exit codes, timing, sessions on
//! disk and signal handling. Tests steer it with `[[fake:KEY=VALUE]]` prompt directives or
//! `FAKE_CLAUDE_<KEY>` variables, and read what it received from `FAKE_CLAUDE_LOG`.
//! Specification: docs/fake-claude.md; recorded real runs: tests/fixtures/claude-cli/.
//!
//! Where the specification leaves room, the fake chooses:
//! * `FAKE_CLAUDE_LOG` holds three kinds of lines, told apart by `event`: `start` (at once),
//!   `hang` (`child_pid` of the `sleep` child, when `hang` starts waiting; a test can poll for
//!   it instead of sleeping) and `exit` (the full record, also written on SIGTERM/SIGINT).
//!   Select invocation records with `event == "exit"`.
//! * `cost=USD` is the cost of each model call (a plain reply is one call, a tool round trip
//!   two); `in_tokens`/`out_tokens`/`cache_read`/`cache_create` are per call as well.
//! * `api_error=400|403|429` use made-up messages (`API Error: 400 fake bad request`, …);
//!   an unknown value acts as 500. `not_logged_in` is never retried.
//! * `big=N` is exactly N ASCII bytes; `model_echo` prefixes `model=<id> flags=<json> `.
//! * `stderr=TEXT` turns `\n` into line breaks.
//! * More than one positional argument is commander's "too many arguments" error.
//! * `FAKE_CLAUDE_REAL_ORDER=1` prints 2.1.330 results in the real key order (`type` in the
//!   middle) instead of `type` first; `FAKE_CLAUDE_RESUME_ANY_CWD=0|1` and
//!   `FAKE_CLAUDE_COST_MODE=per_run|cumulative` override the version defaults.
//! * `FAKE_CLAUDE_SCRIPT=file.json`: a JSON array, entry *i* for the *i*-th invocation
//!   (`{"api_error":"500"}` or `"[[fake:…]]"` text); precedence prompt > script > env.
//! * `--input-format=stream-json --permission-prompt-tool=stdio` speaks the control protocol
//!   (see `control`): a tool that needs permission (`deny_tool` with `tool=Bash`, or `asks=N`:
//!   N calls in a row, each a `mkdir xK`) is asked as `can_use_tool` and answered on stdin; an
//!   allowed `mkdir DIR` really creates DIR in the cwd. Answers land in the call log's
//!   `permission_answers`; each request also writes a `can_use_tool` event line.

#[macro_use]
mod json;
mod api_error;
mod args;
mod calllog;
mod clock;
mod control;
mod conversation;
mod directives;
mod messages;
mod output;
mod result;
mod session;
mod settings;
mod shutdown;
mod signals;
mod stdin;
mod usage;
mod version;

use std::io::Write;
use std::time::Instant;

use serde_json::Value;

use crate::args::Exit;
use crate::conversation::Turn;
use crate::directives::Directives;
use crate::json::J;
use crate::messages::Ctx;
use crate::output::Mode;
use crate::result::{Outcome, ResultSpec};
use crate::session::{Session, SessionError, Store};
use crate::settings::Settings;
use crate::usage::{ModelUsage, Tokens};
use crate::version::Version;

const NO_INPUT: &str =
    "Error: Input must be provided either through stdin or as a prompt argument when using --print";

fn main() {
    // First, before any thread exists, so that every thread inherits the blocked mask.
    signals::install();
    let started = Instant::now();
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cwd = current_dir();
    calllog::start(&argv, &cwd);
    let code = run(&argv, &cwd, started);
    shutdown::exit(code);
}

/// The canonical absolute cwd (the session directory name is derived from it).
fn current_dir() -> String {
    std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .map(|d| d.to_string_lossy().into_owned())
        .or_else(|_| std::env::var("PWD"))
        .unwrap_or_else(|_| "/".to_string())
}

fn to_value(j: &J) -> Value {
    serde_json::to_value(j).unwrap_or(Value::Null)
}

fn run(argv: &[String], cwd: &str, started: Instant) -> i32 {
    let version = Version::from_env();
    let env_directives = Directives::from_env();
    if env_directives.flag("ignore_sigterm") {
        signals::ignore_sigterm();
    }
    let parsed = match args::parse(argv, version, &version.to_string()) {
        Ok(p) => p,
        Err(Exit::Info(text)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            return 0;
        }
        Err(Exit::Usage(text)) => {
            output::stderr_line(&text);
            return 1;
        }
    };
    calllog::set("parsed_flags", to_value(&parsed.to_json()));
    calllog::set("version", version.to_string().into());
    if !parsed.has("print") {
        // The real CLI would start its interactive UI: a service bug worth a distinct code.
        output::stderr_line("fake-claude: interactive mode not supported");
        return 2;
    }
    let settings = match settings::resolve(&parsed, cwd) {
        Ok(s) => s,
        Err(text) => {
            output::stderr_line(&text);
            return 1;
        }
    };
    output::init(settings.mode);
    let script = match directives::from_script() {
        Ok(d) => d,
        Err(text) => {
            output::stderr_line(&text);
            return 1;
        }
    };
    let base = env_directives.overlay(&script);
    if base.flag("ignore_sigterm") {
        signals::ignore_sigterm();
    }
    let mut ctx = make_ctx(&settings, cwd, version);
    if settings.stream_input {
        return run_stream_input(
            &settings,
            &mut ctx,
            &base,
            version,
            started,
            &parsed.to_json(),
        );
    }

    let arg = parsed.positionals.first().cloned().unwrap_or_default();
    let input = stdin::read_prompt(!arg.is_empty());
    calllog::set("stdin", input.text.clone().map_or(Value::Null, Value::from));
    calllog::set("stdin_closed", input.closed.into());
    let from_stdin = input.text.unwrap_or_default();
    let prompt = match (arg.is_empty(), from_stdin.is_empty()) {
        (false, false) => format!("{arg}\n{from_stdin}"),
        (false, true) => arg,
        (true, _) => from_stdin,
    };
    calllog::set("prompt", prompt.clone().into());
    if prompt.trim().is_empty() {
        if let Some(sw) = &parsed.swallow {
            output::stderr_line(&format!(
                "\"{}\" was read as a value of {flag}, not as a prompt · put a prompt before {flag} or after --",
                sw.last_value,
                flag = sw.flag
            ));
        }
        output::stderr_line(NO_INPUT);
        return 1;
    }

    let (prompt_directives, prompt_text) = directives::extract(&prompt);
    let d = base.overlay(&prompt_directives);
    calllog::set("directives", to_value(&d.to_json()));
    if d.flag("ignore_sigterm") {
        signals::ignore_sigterm();
    }
    clock::simulate(d.num("startup_ms").unwrap_or(0));

    let Some(session) = open_session(&settings, &mut ctx, version) else {
        return 1;
    };
    signals::set_interrupt_ctx(&ctx, started);
    let flags = parsed.to_json();
    let turn = Turn {
        settings: &settings,
        ctx: &ctx,
        d: &d,
        version,
        session: &session,
        turn_no: session.history.user_turns + 1,
        prompt_raw: &prompt,
        prompt_text: &prompt_text,
        prior: &session.history.model_usage,
        started,
        parsed_flags: &flags,
        replay: None,
    };
    conversation::run(&turn).exit_code
}

fn make_ctx(settings: &Settings, cwd: &str, version: Version) -> Ctx {
    let api_key_source = if std::env::var("ANTHROPIC_API_KEY").is_ok_and(|k| !k.is_empty()) {
        "ANTHROPIC_API_KEY"
    } else {
        "none"
    };
    Ctx {
        session_id: String::new(),
        model: settings.model.clone(),
        cwd: cwd.to_string(),
        version: version.to_string(),
        generation: version.generation(),
        tools: settings.tools.clone(),
        mcp_servers: settings.mcp_servers.clone(),
        permission_mode: settings.permission_mode.clone(),
        api_key_source,
        stream_mode: settings.mode == Mode::Stream,
    }
}

/// Finds or creates the session, takes its lock, and records both in the call log. On
/// failure prints the real error (and in stream-json the result line) and returns `None`.
fn open_session(settings: &Settings, ctx: &mut Ctx, version: Version) -> Option<Session> {
    let store = Store::new(&ctx.cwd);
    let any_cwd = match std::env::var("FAKE_CLAUDE_RESUME_ANY_CWD").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => version.resume_any_cwd(),
    };
    let request = session::Request {
        session_id: settings.session_id.as_deref(),
        resume: settings.resume.as_ref().map(Option::as_deref),
        continue_: settings.continue_,
        fork: settings.fork,
        persist: settings.persist,
        any_cwd,
    };
    let session = match session::resolve(&store, &request) {
        Ok(s) => s,
        Err(e) => {
            if let (SessionError::NotFound(id), Mode::Stream) = (&e, settings.mode) {
                ctx.session_id = id.clone();
                output::emit(result::build(
                    ctx,
                    ResultSpec {
                        outcome: Outcome::DuringExecution {
                            errors: vec![e.message()],
                            terminal_reason: None,
                            early: true,
                        },
                        num_turns: 0,
                        stop_reason: None,
                        run: Tokens::default(),
                        model_usage: ModelUsage::new(),
                        run_model_usage: ModelUsage::new(),
                        total_cost: 0.0,
                        duration_ms: 0,
                        duration_api_ms: 0,
                        ttft_ms: 0,
                        permission_denials: vec![],
                        begun_message_ids: None,
                    },
                ));
            }
            output::stderr_line(&e.message());
            return None;
        }
    };
    ctx.session_id = session.id.clone();
    calllog::set("session_id", session.id.clone().into());
    calllog::set(
        "session_file",
        session
            .file
            .as_ref()
            .map_or(Value::Null, |f| f.to_string_lossy().into_owned().into()),
    );
    let concurrent = session.lock();
    calllog::set("concurrent_session", concurrent.into());
    Some(session)
}

/// The prompt of one `--input-format stream-json` line: a string, or the text blocks.
fn streamed_prompt(line: &str) -> Option<(String, J)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let content = v.get("message")?.get("content")?;
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    Some((text, J::from(content)))
}

/// `--input-format stream-json`: one turn per input line, until EOF.
fn run_stream_input(
    settings: &Settings,
    ctx: &mut Ctx,
    base: &Directives,
    version: Version,
    started: Instant,
    flags: &J,
) -> i32 {
    clock::simulate(base.num("startup_ms").unwrap_or(0));
    let Some(session) = open_session(settings, ctx, version) else {
        return 1;
    };
    signals::set_interrupt_ctx(ctx, started);
    let mut totals = session.history.model_usage.clone();
    let mut turn_no = session.history.user_turns;
    let mut code = 0;
    let mut received = String::new();
    let mut prompts = Vec::new();
    while let Some(line) = stdin::read_line() {
        received.push_str(&line);
        calllog::set("stdin", received.clone().into());
        if line.trim().is_empty() {
            continue;
        }
        // Control messages are not turns: a request is answered, a late response is dropped.
        if serde_json::from_str::<Value>(&line).is_ok_and(|v| {
            control::handle_request(&v)
                || v.get("type").and_then(Value::as_str) == Some("control_response")
        }) {
            continue;
        }
        let Some((prompt, content)) = streamed_prompt(&line) else {
            output::stderr_line(&format!(
                "Error parsing streaming input line: {}",
                line.trim_end()
            ));
            continue;
        };
        prompts.push(prompt.clone());
        calllog::set("prompt", Value::from(prompts.join("\n")));
        turn_no += 1;
        let (turn_directives, prompt_text) = directives::extract(&prompt);
        let d = base.overlay(&turn_directives);
        if d.flag("ignore_sigterm") {
            signals::ignore_sigterm();
        }
        let turn = Turn {
            settings,
            ctx,
            d: &d,
            version,
            session: &session,
            turn_no,
            prompt_raw: &prompt,
            prompt_text: &prompt_text,
            prior: &totals,
            started: Instant::now(),
            parsed_flags: flags,
            replay: settings.replay.then(|| messages::replay_user(ctx, content)),
        };
        let end = conversation::run(&turn);
        totals = end.totals;
        code = end.exit_code;
    }
    calllog::set("stdin_closed", true.into());
    code
}
