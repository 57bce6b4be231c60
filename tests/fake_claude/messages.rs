//! Builders for the non-result lines of the stream (shapes copied from the recorded runs in
//! tests/fixtures/claude-cli/).

use crate::clock::now_iso;
use crate::json::J;
use crate::usage::{self, Tokens};
use crate::version::Generation;

/// What every line of one run shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub session_id: String,
    pub model: String,
    pub cwd: String,
    pub version: String,
    pub generation: Generation,
    pub tools: Vec<String>,
    /// `(name, status)` of each `--mcp-config` server.
    pub mcp_servers: Vec<(String, &'static str)>,
    pub permission_mode: String,
    pub api_key_source: &'static str,
    pub stream_mode: bool,
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `msg_` + 24 base62 characters.
pub fn message_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let bytes: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|u| u.as_bytes().to_vec())
        .collect();
    let id: String = bytes
        .iter()
        .take(24)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("msg_{id}")
}

/// `toolu_` + 24 hex digits.
pub fn tool_use_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("toolu_{}", &hex[..24])
}

pub fn init(ctx: &Ctx) -> J {
    obj! {
        "type" => "system",
        "subtype" => "init",
        "cwd" => ctx.cwd.as_str(),
        "session_id" => ctx.session_id.as_str(),
        "tools" => ctx.tools.clone(),
        "mcp_servers" => J::Arr(ctx.mcp_servers.iter().map(|(name, status)| obj! {"name" => name.as_str(), "status" => *status}).collect()),
        "model" => ctx.model.as_str(),
        "permissionMode" => ctx.permission_mode.as_str(),
        "slash_commands" => vec!["compact".to_string(), "cost".to_string(), "init".to_string()],
        "apiKeySource" => ctx.api_key_source,
        "claude_code_version" => ctx.version.as_str(),
        "output_style" => "default",
        "agents" => vec!["general-purpose".to_string()],
        "skills" => J::Arr(vec![]),
        "plugins" => J::Arr(vec![]),
        "uuid" => new_uuid(),
        "fast_mode_state" => "off",
    }
}

/// `system/status requesting`: 2.1.330 prints it before each API call with partial messages.
pub fn status_requesting(ctx: &Ctx) -> J {
    obj! {
        "type" => "system",
        "subtype" => "status",
        "status" => "requesting",
        "session_id" => ctx.session_id.as_str(),
        "uuid" => new_uuid(),
    }
}

/// One assistant line: one content block of the message `msg_id`.
pub fn assistant(ctx: &Ctx, msg_id: &str, request_id: &str, block: J, t: Tokens) -> J {
    obj! {
        "type" => "assistant",
        "message" => obj! {
            "id" => msg_id,
            "type" => "message",
            "role" => "assistant",
            "model" => ctx.model.as_str(),
            "content" => vec![block],
            "stop_reason" => J::Null,
            "stop_sequence" => J::Null,
            "usage" => usage::message_usage(t),
            "context_management" => J::Null,
        },
        "parent_tool_use_id" => J::Null,
        "session_id" => ctx.session_id.as_str(),
        "uuid" => new_uuid(),
        "timestamp" => now_iso(),
        "request_id" => request_id,
    }
}

/// `req_` + 24 hex digits, shared by the lines of one model call.
pub fn request_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("req_{}", &hex[..24])
}

pub fn text_block(text: &str) -> J {
    obj! {"type" => "text", "text" => text}
}

pub fn tool_use_block(id: &str, name: &str, input: &J) -> J {
    obj! {"type" => "tool_use", "id" => id, "name" => name, "input" => input.clone()}
}

/// The user line carrying a tool's answer.
pub fn tool_result(ctx: &Ctx, tool_id: &str, content: &str, denied: bool) -> J {
    let (block, tool_use_result) = if denied {
        (
            obj! {"type" => "tool_result", "content" => content, "is_error" => true, "tool_use_id" => tool_id},
            J::from(format!("Error: {content}")),
        )
    } else {
        (
            obj! {"tool_use_id" => tool_id, "type" => "tool_result", "content" => content, "is_error" => false},
            obj! {"stdout" => content, "stderr" => "", "interrupted" => false, "isImage" => false},
        )
    };
    obj! {
        "type" => "user",
        "message" => obj! {"role" => "user", "content" => vec![block]},
        "parent_tool_use_id" => J::Null,
        "session_id" => ctx.session_id.as_str(),
        "uuid" => new_uuid(),
        "timestamp" => now_iso(),
        "tool_use_result" => tool_use_result,
    }
}

pub fn permission_denied(ctx: &Ctx, tool_name: &str, tool_id: &str, message: &str) -> J {
    obj! {
        "type" => "system",
        "subtype" => "permission_denied",
        "tool_name" => tool_name,
        "tool_use_id" => tool_id,
        "message" => message,
        "uuid" => new_uuid(),
        "session_id" => ctx.session_id.as_str(),
    }
}

/// A `stream_event` envelope around a raw Messages-API event.
pub fn stream_event(ctx: &Ctx, msg_id: &str, event: J) -> J {
    obj! {
        "type" => "stream_event",
        "event" => event,
        "session_id" => ctx.session_id.as_str(),
        "parent_tool_use_id" => J::Null,
        "uuid" => new_uuid(),
        "api_message_id" => msg_id,
    }
}

pub fn api_retry(
    ctx: &Ctx,
    attempt: u32,
    max: u32,
    delay_ms: u64,
    status: Option<u16>,
    error: &str,
) -> J {
    obj! {
        "type" => "system",
        "subtype" => "api_retry",
        "attempt" => attempt,
        "max_retries" => max,
        "retry_delay_ms" => delay_ms,
        "error_status" => status.map(u32::from),
        "error" => error,
        "session_id" => ctx.session_id.as_str(),
        "uuid" => new_uuid(),
    }
}

/// The synthetic assistant message the CLI prints for an API or auth error.
pub fn api_error_assistant(ctx: &Ctx, text: &str, error: &str, extra: &[(&str, J)]) -> J {
    let zero_usage = obj! {
        "input_tokens" => 0,
        "output_tokens" => 0,
        "cache_creation_input_tokens" => 0,
        "cache_read_input_tokens" => 0,
        "server_tool_use" => obj! {"web_search_requests" => 0, "web_fetch_requests" => 0},
        "service_tier" => J::Null,
        "cache_creation" => obj! {"ephemeral_1h_input_tokens" => 0, "ephemeral_5m_input_tokens" => 0},
    };
    let mut line = obj! {
        "type" => "assistant",
        "message" => obj! {
            "diagnostics" => J::Null,
            "id" => new_uuid(),
            "container" => J::Null,
            "model" => "<synthetic>",
            "role" => "assistant",
            "stop_details" => J::Null,
            "stop_reason" => "stop_sequence",
            "stop_sequence" => "",
            "type" => "message",
            "usage" => zero_usage,
            "content" => vec![text_block(text)],
            "context_management" => J::Null,
        },
        "parent_tool_use_id" => J::Null,
        "session_id" => ctx.session_id.as_str(),
        "uuid" => new_uuid(),
        "timestamp" => now_iso(),
        "error" => error,
        "is_api_error_message" => true,
    };
    for (k, v) in extra {
        line.set(k, v.clone());
    }
    line
}

/// What stream-json prints when SIGINT interrupts a run.
pub fn interrupted_user(session_id: &str) -> J {
    obj! {
        "type" => "user",
        "message" => obj! {"role" => "user", "content" => vec![text_block("[Request interrupted by user]")]},
        "parent_tool_use_id" => J::Null,
        "session_id" => session_id,
        "uuid" => new_uuid(),
        "timestamp" => now_iso(),
    }
}

/// `--replay-user-messages`: the user message echoed back.
pub fn replay_user(ctx: &Ctx, content: J) -> J {
    obj! {
        "type" => "user",
        "message" => obj! {"role" => "user", "content" => content},
        "session_id" => ctx.session_id.as_str(),
        "parent_tool_use_id" => J::Null,
        "uuid" => new_uuid(),
        "timestamp" => now_iso(),
        "isReplay" => true,
    }
}
