//! One turn of the simulated conversation: from the init line to the result, including tool
//! round trips, turn and budget limits, API errors, partial-message streaming and the
//! failure modes the directives ask for.

use std::time::Instant;

use crate::api_error::{self, ApiFailure};
use crate::clock::{now_iso, simulate};
use crate::directives::Directives;
use crate::json::J;
use crate::messages::{self, new_uuid, Ctx};
use crate::output;
use crate::result::{self, Outcome, ResultSpec};
use crate::session::Session;
use crate::settings::Settings;
use crate::usage::{self, ModelUsage, Tokens};
use crate::version::{Generation, Version};
use crate::{control, shutdown, signals};

/// "Runs" an allowed tool: `mkdir DIR && …` creates DIR in the cwd (so a test can see that
/// an allowed command really ran) and answers `made`; anything else answers `tool-ran`.
fn execute(name: &str, input: &serde_json::Value, cwd: &str) -> String {
    let command = input.get("command").and_then(serde_json::Value::as_str);
    match command.and_then(|c| c.strip_prefix("mkdir ")) {
        Some(rest) if name == "Bash" => {
            let dir = rest.split_whitespace().next().unwrap_or("x");
            match std::fs::create_dir_all(std::path::Path::new(cwd).join(dir)) {
                Ok(()) => "made".to_string(),
                Err(e) => format!("mkdir: {dir}: {e}"),
            }
        }
        _ => TOOL_OUTPUT.to_string(),
    }
}

/// `tool_loop` without `--max-turns` stops asking for tools after this many calls.
const TOOL_LOOP_CAP: u32 = 50;
/// The largest `big=N` reply (256 MiB).
const MAX_BIG: usize = 256 << 20;
const TOOL_OUTPUT: &str = "tool-ran";
const TOOL_PREAMBLE: &str = "I'll run a command.";

/// Everything one turn needs.
pub struct Turn<'a> {
    pub settings: &'a Settings,
    pub ctx: &'a Ctx,
    pub d: &'a Directives,
    pub version: Version,
    pub session: &'a Session,
    /// User turns in the session including this one (the reply counter).
    pub turn_no: u32,
    /// The prompt as received (stored in the transcript).
    pub prompt_raw: &'a str,
    /// The prompt without directives (echoed back, counted for tokens).
    pub prompt_text: &'a str,
    /// Session totals before this turn.
    pub prior: &'a ModelUsage,
    /// Where `duration_ms` counts from.
    pub started: Instant,
    pub parsed_flags: &'a J,
    /// `--replay-user-messages`: the user message to echo after init.
    pub replay: Option<J>,
}

/// How the turn ended.
pub struct TurnEnd {
    pub exit_code: i32,
    /// Session totals after this turn.
    pub totals: ModelUsage,
}

/// A content block the simulated model produces.
enum Block {
    Text(String),
    ToolUse { id: String, name: String, input: J },
}

impl Block {
    fn to_json(&self) -> J {
        match self {
            Block::Text(t) => messages::text_block(t),
            Block::ToolUse { id, name, input } => messages::tool_use_block(id, name, input),
        }
    }
}

/// A reply of exactly `n` bytes (ASCII, so JSON escaping does not change its length).
fn big_text(n: usize) -> String {
    const PATTERN: &str = "fake big reply 0123456789 abcdefghijklmnopqrstuvwxyz ";
    PATTERN.chars().cycle().take(n).collect()
}

/// Splits `text` into `k` pieces of about equal length, on character boundaries.
fn chunks(text: &str, k: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let k = k.clamp(1, chars.len().max(1));
    let size = chars.len().div_ceil(k).max(1);
    let mut out: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// Appends the turn's records to the transcript, chaining `parentUuid`.
struct Recorder<'a> {
    session: &'a Session,
    ctx: &'a Ctx,
    parent: Option<String>,
}

impl Recorder<'_> {
    fn append(&mut self, mut record: J) {
        let id = new_uuid();
        record.set("uuid", id.as_str());
        record.set("parentUuid", self.parent.clone());
        record.set("sessionId", self.ctx.session_id.as_str());
        record.set("cwd", self.ctx.cwd.as_str());
        record.set("timestamp", now_iso());
        record.set("version", self.ctx.version.as_str());
        self.session.append(&record);
        self.parent = Some(id);
    }
}

/// The state of a running turn.
struct Run<'a> {
    t: &'a Turn<'a>,
    rec: Recorder<'a>,
    partial: bool,
    calls: u32,
    api_ms: u64,
    ttft_ms: u64,
    per_call: Tokens,
    run: Tokens,
    run_models: ModelUsage,
    message_ids: Vec<String>,
    denials: Vec<J>,
}

impl Run<'_> {
    fn latency(&mut self) {
        let slept = simulate(self.t.d.num("latency_ms").unwrap_or(0));
        if self.calls == 0 {
            self.ttft_ms = slept;
        }
        self.api_ms += slept;
    }

    fn stream_event(&self, msg_id: &str, event: J) {
        output::emit(messages::stream_event(self.t.ctx, msg_id, event));
    }

    /// One model call producing `blocks`. With `hang_early`, stops after the first piece of
    /// output and waits for a signal (`hang_after_partial`).
    fn model_call(&mut self, blocks: &[Block], stop_reason: &str, hang_early: bool) {
        let ctx = self.t.ctx;
        if self.partial && self.calls > 0 && ctx.generation != Generation::Legacy {
            output::emit(messages::status_requesting(ctx));
        }
        self.latency();
        self.calls += 1;
        let msg_id = messages::message_id();
        let request_id = messages::request_id();
        self.message_ids.push(msg_id.clone());
        let tokens = self.per_call;
        if self.partial {
            self.stream_event(
                &msg_id,
                obj! {"type" => "message_start", "message" => obj! {
                    "id" => msg_id.as_str(), "type" => "message", "role" => "assistant",
                    "model" => ctx.model.as_str(), "content" => J::Arr(vec![]),
                    "stop_reason" => J::Null, "stop_sequence" => J::Null,
                    "usage" => usage::message_usage(tokens),
                }},
            );
        }
        let k = self.t.d.num::<usize>("chunks").unwrap_or(2);
        let chunk_ms = self.t.d.num::<u64>("chunk_ms").unwrap_or(0);
        for (index, block) in blocks.iter().enumerate() {
            let first = index == 0;
            if self.partial {
                let (start, body, delta_type, field) = match block {
                    Block::Text(text) => (
                        obj! {"type" => "text", "text" => ""},
                        text.clone(),
                        "text_delta",
                        "text",
                    ),
                    Block::ToolUse { id, name, input } => (
                        obj! {"type" => "tool_use", "id" => id.as_str(), "name" => name.as_str(), "input" => J::Obj(vec![])},
                        input.to_line(),
                        "input_json_delta",
                        "partial_json",
                    ),
                };
                self.stream_event(
                    &msg_id,
                    obj! {"type" => "content_block_start", "index" => index, "content_block" => start},
                );
                for (i, piece) in chunks(&body, k).into_iter().enumerate() {
                    if i > 0 {
                        self.api_ms += simulate(chunk_ms);
                    }
                    let mut delta = obj! {"type" => delta_type};
                    delta.set(field, piece);
                    self.stream_event(
                        &msg_id,
                        obj! {"type" => "content_block_delta", "index" => index, "delta" => delta},
                    );
                    if hang_early && first {
                        signals::hang();
                    }
                }
            }
            output::emit(messages::assistant(
                ctx,
                &msg_id,
                &request_id,
                block.to_json(),
                tokens,
            ));
            if hang_early && first {
                signals::hang();
            }
            if self.partial {
                self.stream_event(
                    &msg_id,
                    obj! {"type" => "content_block_stop", "index" => index},
                );
            }
        }
        if self.partial {
            self.stream_event(
                &msg_id,
                obj! {"type" => "message_delta",
                "delta" => obj! {"stop_reason" => stop_reason, "stop_sequence" => J::Null},
                "usage" => obj! {"output_tokens" => tokens.output}},
            );
            self.stream_event(&msg_id, obj! {"type" => "message_stop"});
        }
        self.rec.append(obj! {
            "type" => "assistant",
            "message" => obj! {
                "id" => msg_id.as_str(), "type" => "message", "role" => "assistant",
                "model" => ctx.model.as_str(),
                "content" => J::Arr(blocks.iter().map(Block::to_json).collect()),
                "stop_reason" => stop_reason, "stop_sequence" => J::Null,
                "usage" => obj! {"input_tokens" => tokens.input, "output_tokens" => tokens.output},
            },
        });
        self.run += tokens;
        usage::add_model(&mut self.run_models, &ctx.model, tokens);
    }

    fn over_budget(&self) -> Option<f64> {
        self.t
            .settings
            .max_budget
            .filter(|limit| self.run.cost > *limit)
    }

    /// Runs the tool of the last call and reports its answer.
    fn run_tool(&mut self, id: &str, name: &str, input: &J) {
        let t = self.t;
        let ctx = t.ctx;
        let allowed = t
            .settings
            .allowed_tools
            .iter()
            .any(|a| a == name || a.starts_with(&format!("{name}(")));
        let lenient_mode = matches!(
            t.settings.permission_mode.as_str(),
            "acceptEdits" | "bypassPermissions"
        );
        let needs_permission = (t.d.flag("deny_tool") || t.d.num::<u32>("asks").is_some())
            && !allowed
            && !lenient_mode;
        let (content, denied) = if needs_permission && t.settings.prompt_stdio {
            let description = match input.get("description") {
                Some(J::Str(s)) => Some(s.clone()),
                _ => None,
            };
            match control::ask(name, input, description.as_deref()) {
                Some(control::Answer::Allow { input }) => (execute(name, &input, &ctx.cwd), false),
                Some(control::Answer::Deny { message }) => {
                    self.denials.push(
                        obj! {"tool_name" => name, "tool_use_id" => id, "tool_input" => input.clone()},
                    );
                    (message, true)
                }
                None => {
                    output::stderr_line(
                        "Error: stdin closed while waiting for a permission answer",
                    );
                    shutdown::exit(1);
                }
            }
        } else if needs_permission {
            let message = if name == "Bash" {
                format!(
                    "mkdir in '{cwd}/x' needs approval. The path is inside the working directories for this \
                     session ('{cwd}'), and Claude Code asks before a shell command creates, changes or removes \
                     files there.",
                    cwd = ctx.cwd
                )
            } else {
                format!(
                    "Claude requested permissions to use {name}, but you haven't granted it yet."
                )
            };
            output::emit(messages::permission_denied(ctx, name, id, &message));
            self.denials.push(
                obj! {"tool_name" => name, "tool_use_id" => id, "tool_input" => input.clone()},
            );
            (message, true)
        } else {
            (TOOL_OUTPUT.to_string(), false)
        };
        output::emit(messages::tool_result(ctx, id, &content, denied));
        self.rec.append(obj! {
            "type" => "user",
            "message" => obj! {"role" => "user", "content" => vec![obj! {
                "tool_use_id" => id, "type" => "tool_result", "content" => content, "is_error" => denied,
            }]},
        });
    }

    /// A call that asks for `name`; returns the tool_use to run.
    fn tool_call(&mut self, name: &str, hang_early: bool) -> (String, String, J) {
        let id = messages::tool_use_id();
        let input = if name == "Bash" && self.t.d.num::<u32>("asks").is_some() {
            let dir = format!("x{}", self.calls + 1);
            obj! {"command" => format!("mkdir {dir} && echo made"), "description" => format!("Make the directory {dir}")}
        } else if name == "Bash" && self.t.d.flag("deny_tool") {
            obj! {"command" => "mkdir x && echo made", "description" => "Make a dir"}
        } else if name == "Bash" {
            obj! {"command" => "echo tool-ran", "description" => "Echo a word"}
        } else {
            obj! {"input" => "fake tool input"}
        };
        let blocks = [
            Block::Text(TOOL_PREAMBLE.to_string()),
            Block::ToolUse {
                id: id.clone(),
                name: name.to_string(),
                input: input.clone(),
            },
        ];
        self.model_call(&blocks, "tool_use", hang_early);
        (id, name.to_string(), input)
    }
}

fn reply_text(t: &Turn<'_>) -> String {
    let base = if let Some(n) = t.d.num::<usize>("big") {
        // Capped so that a typo cannot make the fake die of memory exhaustion.
        big_text(n.min(MAX_BIG))
    } else if let Some(reply) = t.d.text("reply") {
        reply.to_string()
    } else {
        format!("fake reply #{} to: {}", t.turn_no, t.prompt_text)
    };
    if t.d.flag("model_echo") {
        format!(
            "model={} flags={} {base}",
            t.ctx.model,
            t.parsed_flags.to_line()
        )
    } else {
        base
    }
}

fn cumulative(version: Version) -> bool {
    match std::env::var("FAKE_CLAUDE_COST_MODE").as_deref() {
        Ok("per_run") => false,
        Ok("cumulative") => true,
        _ => version.cumulative_cost(),
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `/cost`, run locally without a model call.
fn local_cost(t: &Turn<'_>) -> TurnEnd {
    let totals: Tokens = t.prior.values().fold(Tokens::default(), |mut acc, x| {
        acc += *x;
        acc
    });
    let text = format!(
        "Estimated cost:        ${:.4}\nTotal duration (API):  0s\nTotal duration (wall): 0s\n\
         Total code changes:    0 lines added, 0 lines removed\n\
         Usage:                 {} input, {} output, {} cache read, {} cache write",
        totals.cost, totals.input, totals.output, totals.cache_read, totals.cache_create
    );
    let r = result::build(
        t.ctx,
        ResultSpec {
            outcome: Outcome::LocalCommand {
                name: "cost".into(),
                text: text.clone(),
            },
            num_turns: 0,
            stop_reason: None,
            run: Tokens::default(),
            model_usage: ModelUsage::new(),
            run_model_usage: ModelUsage::new(),
            total_cost: 0.0,
            duration_ms: elapsed_ms(t.started),
            duration_api_ms: 0,
            ttft_ms: 0,
            permission_denials: vec![],
            begun_message_ids: None,
        },
    );
    output::result(r, &text, true);
    TurnEnd {
        exit_code: 0,
        totals: t.prior.clone(),
    }
}

pub fn run(t: &Turn<'_>) -> TurnEnd {
    let ctx = t.ctx;
    let d = t.d;
    let partial = t.settings.partial && ctx.stream_mode;
    output::emit(messages::init(ctx));
    if let Some(replay) = &t.replay {
        output::emit(replay.clone());
    }
    if d.flag("garbage") {
        // Not real behaviour: proves the service's parser survives a non-JSON line.
        output::emit_raw_line("fake-claude garbage line: this is not JSON {");
    }
    if t.prompt_text == "/cost" {
        return local_cost(t);
    }

    let mut rec = Recorder {
        session: t.session,
        ctx,
        parent: t.session.history.last_uuid.clone(),
    };
    if let Some(name) = &t.settings.name {
        rec.append(obj! {"type" => "custom-title", "customTitle" => name.as_str()});
    }
    rec.append(
        obj! {"type" => "user", "message" => obj! {"role" => "user", "content" => t.prompt_raw}},
    );

    // `system/status` before each API call: recorded on 2.1.197 and 2.1.330, not on 2.0.x.
    if partial && ctx.generation != Generation::Legacy {
        output::emit(messages::status_requesting(ctx));
    }
    if d.flag("hang") {
        signals::hang();
    }

    let reply = reply_text(t);
    let mut run = Run {
        t,
        rec,
        partial,
        calls: 0,
        api_ms: 0,
        ttft_ms: 0,
        per_call: usage::per_call(t.prompt_text, &reply, d),
        run: Tokens::default(),
        run_models: ModelUsage::new(),
        message_ids: vec![],
        denials: vec![],
    };

    if let Some(failure) = api_error::from_directives(d, t.version) {
        return report_api_failure(&mut run, &failure);
    }

    if t.settings.model_unrecognized {
        output::stderr_line(&format!(
            "[claude-code:unrecognized_model] {{\"model\":{},\"query_source\":\"sdk\"}}",
            J::from(ctx.model.as_str()).to_line()
        ));
    }

    let ending = run.converse(&reply);
    maybe_crash(d);

    let mut totals = t.prior.clone();
    for (model, tokens) in &run.run_models {
        usage::add_model(&mut totals, model, *tokens);
    }
    run.rec.append(obj! {
        "type" => "cost-state",
        "total_cost_usd" => usage::total_cost(&totals),
        "modelUsage" => usage::model_usage_json(&totals, Generation::Current),
    });
    let reported = if cumulative(t.version) {
        totals.clone()
    } else {
        run.run_models.clone()
    };
    // The real CLI reports zero `usage` on a budget stop (only modelUsage has the numbers).
    let run_usage = if matches!(ending.outcome, Outcome::Budget { .. }) {
        Tokens::default()
    } else {
        run.run
    };
    let r = result::build(
        ctx,
        ResultSpec {
            outcome: ending.outcome,
            num_turns: ending.num_turns,
            stop_reason: Some(ending.stop_reason),
            run: run_usage,
            total_cost: usage::total_cost(&reported),
            model_usage: reported,
            run_model_usage: run.run_models.clone(),
            duration_ms: elapsed_ms(t.started),
            duration_api_ms: run.api_ms,
            ttft_ms: run.ttft_ms,
            permission_denials: run.denials.clone(),
            begun_message_ids: partial.then(|| run.message_ids.clone()),
        },
    );
    finish_turn(t, r, &ending.text, ending.newline);
    TurnEnd {
        exit_code: exit_override(d, ending.exit_code),
        totals,
    }
}

/// How the model calls of a turn ended (everything the result needs besides the usage).
struct Ending {
    outcome: Outcome,
    num_turns: u32,
    stop_reason: &'static str,
    /// What text mode prints.
    text: String,
    /// Text mode ends with a newline, except for the max-turns and budget messages.
    newline: bool,
    exit_code: i32,
}

impl Run<'_> {
    /// The model calls of the turn: a plain reply, one tool round trip (`tool=NAME`) or a
    /// tool on every call (`tool_loop`), stopped by `--max-turns` or `--max-budget-usd`.
    fn converse(&mut self, reply: &str) -> Ending {
        let t = self.t;
        let d = t.d;
        let tool_loop = d.flag("tool_loop");
        // `asks=N`: N calls in a row each ask for a Bash command that needs permission.
        let asks = d.num::<u32>("asks");
        let tool = d
            .text("tool")
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .or_else(|| (tool_loop || asks.is_some()).then(|| "Bash".to_string()));
        let hang_after_partial = d.flag("hang_after_partial");
        let legacy_turns = t.version.legacy_max_turns();
        loop {
            let call_no = self.calls + 1;
            // The limit is checked before each further call: N calls, then num_turns N+1.
            if let Some(limit) = t
                .settings
                .max_turns
                .filter(|l| call_no > 1 && i64::from(call_no) > *l)
            {
                return Ending {
                    outcome: Outcome::MaxTurns { limit },
                    num_turns: if legacy_turns { self.calls } else { call_no },
                    stop_reason: "tool_use",
                    text: format!("Error: Reached max turns ({limit})"),
                    newline: false,
                    exit_code: if legacy_turns { 0 } else { 1 },
                };
            }
            let wants_tool = match &tool {
                Some(_) if tool_loop => call_no <= TOOL_LOOP_CAP,
                Some(_) if asks.is_some() => call_no <= asks.unwrap_or(0),
                Some(_) => call_no == 1,
                None => false,
            };
            let hang_now = hang_after_partial && call_no == 1;
            let (stop, pending_tool) = match (&tool, wants_tool) {
                (Some(name), true) => ("tool_use", Some(self.tool_call(name, hang_now))),
                _ => {
                    self.model_call(&[Block::Text(reply.to_string())], "end_turn", hang_now);
                    ("end_turn", None)
                }
            };
            // Checked after each call, so the cost overshoots the limit as in the real CLI,
            // and before the tool runs (as recorded in m_budget).
            if let Some(limit) = self.over_budget() {
                return Ending {
                    outcome: Outcome::Budget { limit },
                    num_turns: self.calls,
                    stop_reason: stop,
                    text: format!("Error: Exceeded USD budget ({limit})"),
                    newline: false,
                    exit_code: 1,
                };
            }
            let Some((id, name, input)) = pending_tool else {
                return Ending {
                    outcome: Outcome::Success {
                        text: reply.to_string(),
                    },
                    num_turns: self.calls,
                    stop_reason: "end_turn",
                    text: reply.to_string(),
                    newline: true,
                    exit_code: 0,
                };
            };
            self.run_tool(&id, &name, &input);
        }
    }
}

/// An API or auth failure: retries (stream-json shows them), the synthetic assistant
/// message, and a `subtype:"success"` result with `is_error:true`.
fn report_api_failure(run: &mut Run<'_>, failure: &ApiFailure) -> TurnEnd {
    let t = run.t;
    let (ctx, d) = (t.ctx, t.d);
    if !failure.auth {
        let retries = d.num::<u32>("retries").unwrap_or(0);
        let retry_ms = d.num::<u64>("retry_ms").unwrap_or(500);
        for attempt in 1..=retries {
            output::emit(messages::api_retry(
                ctx,
                attempt,
                retries,
                retry_ms,
                failure.status,
                failure.retry_error,
            ));
            simulate(retry_ms);
        }
        simulate(d.num("latency_ms").unwrap_or(0));
    }
    let mut extra: Vec<(&str, J)> = Vec::new();
    if let Some(status) = failure.status {
        extra.push(("api_error_status", J::from(u32::from(status))));
    }
    if let Some(et) = failure.error_type {
        extra.push(("api_error_type", J::from(et)));
    }
    if failure.connection {
        extra.push(("api_error", J::from("connection_failed")));
    }
    let line = messages::api_error_assistant(ctx, &failure.text, failure.assistant_error, &extra);
    output::emit(line.clone());
    if let Some(message) = line.get("message") {
        run.rec.append(
            obj! {"type" => "assistant", "message" => message.clone(), "isApiErrorMessage" => true},
        );
    }
    maybe_crash(d);
    let r = result::build(
        ctx,
        ResultSpec {
            outcome: Outcome::ApiError {
                text: failure.text.clone(),
                status: failure.status,
                error_type: failure.error_type,
                api_error: failure.connection.then_some("connection_failed"),
            },
            num_turns: 1,
            stop_reason: Some("stop_sequence"),
            run: Tokens::default(),
            model_usage: ModelUsage::new(),
            run_model_usage: ModelUsage::new(),
            total_cost: 0.0,
            duration_ms: elapsed_ms(t.started),
            duration_api_ms: 0,
            ttft_ms: 0,
            permission_denials: vec![],
            begun_message_ids: None,
        },
    );
    finish_turn(t, r, &failure.text, true);
    TurnEnd {
        exit_code: exit_override(d, 1),
        totals: t.prior.clone(),
    }
}

/// `crash=CODE`: die after the streamed output, before the result line.
fn maybe_crash(d: &Directives) {
    if let Some(code) = d.num::<i32>("crash") {
        output::stderr_line(d.text("stderr").unwrap_or("fatal: fake crash"));
        shutdown::exit(code);
    }
}

/// Prints the result, then the `stderr=` extra lines.
fn finish_turn(t: &Turn<'_>, result: J, text: &str, newline: bool) {
    output::result(result, text, newline);
    if let Some(extra) = t.d.text("stderr") {
        output::stderr_line(extra);
    }
}

/// `exit_code=N` replaces the exit code after a normal result.
fn exit_override(d: &Directives, code: i32) -> i32 {
    d.num("exit_code").unwrap_or(code)
}
