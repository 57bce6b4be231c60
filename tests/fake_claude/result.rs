//! The result object, in the field set and order of the imitated version.
//!
//! Every field is built once; the generation's key list then picks and orders them. By
//! default `type` comes first (as ≤2.1.197 print it); `FAKE_CLAUDE_REAL_ORDER=1` keeps the
//! 2.1.330 order, where `type` sits in the middle, to test that a parser does not depend on it.

use crate::json::J;
use crate::messages::{new_uuid, Ctx};
use crate::usage::{self, ModelUsage, Tokens};
use crate::version::Generation;

/// The order 2.1.330 prints (union of the success, error and stream variants).
const CURRENT_ORDER: &[&str] = &[
    "duration_api_ms",
    "stop_reason",
    "session_id",
    "total_cost_usd",
    "usage",
    "modelUsage",
    "permission_denials",
    "terminal_reason",
    "fast_mode_state",
    "fast_mode_disabled_reason",
    "subagent_stats",
    "safety_stops",
    "is_error",
    "num_turns",
    "subtype",
    "api_error_status",
    "api_error_type",
    "api_error",
    "result",
    "errors",
    "local_command",
    "ttft_ms",
    "type",
    "duration_ms",
    "uuid",
    "begun_message_ids",
    "ttft_stream_ms",
    "time_to_request_ms",
    "first_content_frame_ms",
    "queued_turn_count",
    "result_index",
    "model_usage_since_last_result",
];

/// 2.1.112 … 2.1.197.
const MID_ORDER: &[&str] = &[
    "type",
    "subtype",
    "is_error",
    "api_error_status",
    "duration_ms",
    "duration_api_ms",
    "ttft_ms",
    "ttft_stream_ms",
    "time_to_request_ms",
    "num_turns",
    "result",
    "stop_reason",
    "session_id",
    "total_cost_usd",
    "usage",
    "modelUsage",
    "permission_denials",
    "terminal_reason",
    "fast_mode_state",
    "uuid",
    "errors",
];

/// 1.0.x / 2.0.x.
const LEGACY_ORDER: &[&str] = &[
    "type",
    "subtype",
    "is_error",
    "duration_ms",
    "duration_api_ms",
    "num_turns",
    "result",
    "session_id",
    "total_cost_usd",
    "usage",
    "modelUsage",
    "permission_denials",
    "uuid",
];

/// What kind of ending a result reports.
#[derive(Debug, Clone)]
pub enum Outcome {
    Success {
        text: String,
    },
    /// API or auth failure: `subtype:"success"` with `is_error:true`.
    ApiError {
        text: String,
        status: Option<u16>,
        error_type: Option<&'static str>,
        /// `"connection_failed"` for a refused connection.
        api_error: Option<&'static str>,
    },
    MaxTurns {
        limit: i64,
    },
    Budget {
        limit: f64,
    },
    /// `--resume` of an unknown session (stream-json) or SIGINT.
    DuringExecution {
        errors: Vec<String>,
        terminal_reason: Option<&'static str>,
        /// Failed before the conversation started (unknown session): the short field set.
        early: bool,
    },
    /// A local slash command such as `/cost`.
    LocalCommand {
        name: String,
        text: String,
    },
}

pub struct ResultSpec<'a> {
    pub outcome: Outcome,
    pub num_turns: u32,
    pub stop_reason: Option<&'a str>,
    /// This run's usage (`usage`).
    pub run: Tokens,
    /// The `modelUsage` to report (this run, or the session so far in cumulative mode).
    pub model_usage: ModelUsage,
    /// This run's per-model usage (`model_usage_since_last_result`).
    pub run_model_usage: ModelUsage,
    pub total_cost: f64,
    pub duration_ms: u64,
    pub duration_api_ms: u64,
    pub ttft_ms: u64,
    pub permission_denials: Vec<J>,
    pub begun_message_ids: Option<Vec<String>>,
}

pub fn build(ctx: &Ctx, spec: ResultSpec<'_>) -> J {
    let g = ctx.generation;
    let mut r = obj! {
        "type" => "result",
        "session_id" => ctx.session_id.as_str(),
        "duration_ms" => spec.duration_ms,
        "duration_api_ms" => spec.duration_api_ms,
        "num_turns" => spec.num_turns,
        "stop_reason" => spec.stop_reason,
        "total_cost_usd" => spec.total_cost,
        "usage" => usage::usage_json(spec.run, g),
        "modelUsage" => usage::model_usage_json(&spec.model_usage, g),
        "permission_denials" => J::Arr(spec.permission_denials.clone()),
        "fast_mode_state" => "off",
        "fast_mode_disabled_reason" => "sdk_opt_in_required",
        "subagent_stats" => subagent_stats(),
        "safety_stops" => 0,
        "uuid" => new_uuid(),
        "queued_turn_count" => 0,
        "result_index" => 0,
    };
    match &spec.outcome {
        Outcome::Success { text } => {
            r.set("subtype", "success");
            r.set("is_error", false);
            r.set("api_error_status", J::Null);
            r.set("result", text.as_str());
            r.set("terminal_reason", "completed");
            r.set("ttft_ms", spec.ttft_ms);
            r.set("ttft_stream_ms", spec.ttft_ms);
            r.set("time_to_request_ms", 0);
            r.set("first_content_frame_ms", spec.ttft_ms);
            if let Some(ids) = &spec.begun_message_ids {
                r.set("begun_message_ids", ids.clone());
            }
        }
        Outcome::ApiError {
            text,
            status,
            error_type,
            api_error,
        } => {
            r.set("subtype", "success");
            r.set("is_error", true);
            r.set("api_error_status", status.map(u32::from));
            if let Some(t) = error_type {
                r.set("api_error_type", *t);
            }
            if let Some(a) = api_error {
                r.set("api_error", *a);
            }
            r.set("result", text.as_str());
            // 2.1.112–2.1.197 called an API failure a completed turn.
            let reason = if g == Generation::Mid {
                "completed"
            } else {
                "api_error"
            };
            r.set("terminal_reason", reason);
        }
        Outcome::MaxTurns { limit } => {
            // 1.0.x/2.0.x did not count hitting the turn limit as an error.
            r.set("subtype", "error_max_turns");
            r.set("is_error", g != Generation::Legacy);
            r.set("terminal_reason", "max_turns");
            r.set(
                "errors",
                vec![format!("Reached maximum number of turns ({limit})")],
            );
        }
        Outcome::Budget { limit } => {
            r.set("subtype", "error_max_budget_usd");
            r.set("is_error", true);
            r.set("terminal_reason", "budget_exhausted");
            r.set("errors", vec![format!("Reached maximum budget (${limit})")]);
        }
        Outcome::DuringExecution {
            errors,
            terminal_reason,
            early,
        } => {
            r.set("subtype", "error_during_execution");
            r.set("is_error", true);
            if let Some(t) = terminal_reason {
                r.set("terminal_reason", *t);
            }
            r.set("errors", errors.clone());
            if *early {
                r = r.without(&[
                    "fast_mode_state",
                    "fast_mode_disabled_reason",
                    "subagent_stats",
                    "safety_stops",
                    "queued_turn_count",
                ]);
            }
        }
        Outcome::LocalCommand { name, text } => {
            r.set("subtype", "success");
            r.set("is_error", false);
            r.set("result", text.as_str());
            r.set("local_command", name.as_str());
        }
    }
    if ctx.stream_mode
        && g == Generation::Current
        && !matches!(spec.outcome, Outcome::DuringExecution { .. })
    {
        r.set(
            "model_usage_since_last_result",
            usage::model_usage_json(&spec.run_model_usage, g),
        );
    }
    order(r, g)
}

fn order(r: J, g: Generation) -> J {
    match g {
        Generation::Legacy => r.select(LEGACY_ORDER),
        Generation::Mid => r.select(MID_ORDER),
        Generation::Current => {
            let ordered = r.select(CURRENT_ORDER);
            if std::env::var("FAKE_CLAUDE_REAL_ORDER").is_ok_and(|v| v == "1") {
                ordered
            } else {
                ordered.key_first("type")
            }
        }
    }
}

fn subagent_stats() -> J {
    obj! {
        "spawned" => 0,
        "requested" => obj! {"background" => 0, "foreground" => 0, "unset" => 0},
        "started_in_background" => 0,
        "max_depth" => 0,
        "spawned_by_subagents" => 0,
        "completed" => 0,
        "failed" => 0,
        "killed" => obj! {"parent" => 0, "user" => 0, "system" => 0},
        "refused" => obj! {"depth_limit" => 0, "concurrency_limit" => 0, "budget" => 0},
        "by_type" => J::Obj(vec![]),
    }
}
