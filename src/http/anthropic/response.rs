//! The answers of `/v1/messages` and of `/v1/models` in Anthropic's dialect, as structs whose
//! fields are in Anthropic's order (serde_json keeps struct order).

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use actors::model::Usage;

/// The id of a message: the task's id inside (`msg_<task id without dashes>`), so it leads to
/// `GET /api/tasks/:id`.
pub fn message_id(task_id: Uuid) -> String {
    format!("msg_{}", task_id.simple())
}

/// The schema of a field that is always null (`stop_sequence`).
fn always_null() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Null)
        .build()
}

/// What the answer (or every event of its stream) repeats.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `msg_<task id>`.
    pub id: String,
    /// The model as requested (a session turn runs on the session's model).
    pub model: String,
}

/// Why the answer ended.
///
/// - `end_turn`: the run completed. `max_tokens` is not enforced and `stop_sequences` are not
///   applied (the CLI has neither), so nothing else ends a completed run.
/// - `max_tokens`: the CLI stopped the run at one of its own limits — `max_turns` or the run's
///   `max_budget_usd` (see [`compat::cut_short`](super::super::compat::cut_short)). The answer
///   is then truncated like a reply cut at its token limit: what the model wrote stands, and
///   continuing the session (`X-Session-Id`) goes on from there. Not `pause_turn`, which
///   clients treat as a server-tool pause to be sent back as is.
pub const END_TURN: &str = "end_turn";
pub const MAX_TOKENS: &str = "max_tokens";

/// Anthropic's usage: the native figures as they are (`input_tokens` excludes the cache).
#[derive(Debug, Serialize, Clone, Copy, Default, PartialEq, Eq, ToSchema)]
#[schema(as = AnthropicUsage)]
pub struct UsageOut {
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> UsageOut {
        UsageOut {
            input_tokens: u.input_tokens,
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            cache_read_input_tokens: u.cache_read_input_tokens,
            output_tokens: u.output_tokens,
        }
    }
}

/// `type: message`: the answer, and (empty, without a stop reason) the start of a stream.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AnthropicMessage)]
pub struct Message<'a> {
    /// `msg_<task id>`.
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    /// Text blocks; none when the run wrote no text.
    pub content: Vec<TextBlock<'a>>,
    /// `end_turn`, or `max_tokens` for a run the CLI stopped at its own limits; null in
    /// `message_start`.
    #[schema(required = true)]
    pub stop_reason: Option<&'static str>,
    /// Always null.
    #[schema(schema_with = always_null, required = true)]
    pub stop_sequence: Option<()>,
    pub usage: UsageOut,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AnthropicTextBlock)]
pub struct TextBlock<'a> {
    /// `text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
}

pub fn text_block(text: &str) -> TextBlock<'_> {
    TextBlock { kind: "text", text }
}

impl Envelope {
    /// The answer. Blank blocks are left out.
    pub fn message<'a>(
        &'a self,
        blocks: &'a [String],
        stop_reason: &'static str,
        usage: Usage,
    ) -> Message<'a> {
        Message {
            content: blocks
                .iter()
                .filter(|b| !b.is_empty())
                .map(|b| text_block(b))
                .collect(),
            stop_reason: Some(stop_reason),
            usage: usage.into(),
            ..self.start()
        }
    }

    /// The message of `message_start`: no content, no stop reason, usage to come.
    pub fn start(&self) -> Message<'_> {
        Message {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: UsageOut::default(),
        }
    }
}

/// One event of a streamed answer: the `data:` of an SSE event named after its `type`.
///
/// `message_start`, `ping`, then per block of text `content_block_start`,
/// `content_block_delta`s (`text_delta`, as the CLI produces them) and `content_block_stop`,
/// then `message_delta` (stop reason and the run's usage) and `message_stop`. A run that fails
/// after the stream began ends with an `error` event in Anthropic's error shape instead.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = AnthropicStreamEvent)]
pub enum StreamEvent<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: TextBlock<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: TextDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta,
        /// The run's usage, all of it (Anthropic's figures are cumulative).
        usage: UsageOut,
    },
    MessageStop,
    Ping,
}

impl StreamEvent<'_> {
    /// The SSE event name: the `type`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Ping => "ping",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AnthropicTextDelta)]
pub struct TextDelta<'a> {
    /// `text_delta`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
}

pub fn text_delta(text: &str) -> TextDelta<'_> {
    TextDelta {
        kind: "text_delta",
        text,
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AnthropicMessageDelta)]
pub struct MessageDelta {
    pub stop_reason: &'static str,
    /// Always null.
    #[schema(schema_with = always_null, required = true)]
    pub stop_sequence: Option<()>,
}

/// `GET /v1/models` with `anthropic-version`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AnthropicModelList)]
pub struct ModelList {
    pub data: Vec<ModelInfo>,
    /// Always false: every model is on the one page.
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// A model: `type: model`.
#[derive(Debug, Serialize, Clone, ToSchema)]
#[schema(as = AnthropicModelInfo)]
pub struct ModelInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    /// The id: the server knows models by their names only.
    pub display_name: String,
    /// RFC 3339: the server's start, as `created` of OpenAI's model objects.
    pub created_at: String,
}

/// A model object; `created` in Unix seconds.
pub fn model_info(id: String, created: i64) -> ModelInfo {
    let created_at = DateTime::from_timestamp(created, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    ModelInfo {
        kind: "model",
        display_name: id.clone(),
        id,
        created_at,
    }
}

pub fn model_list(data: Vec<ModelInfo>) -> ModelList {
    ModelList {
        first_id: data.first().map(|m| m.id.clone()),
        last_id: data.last().map(|m| m.id.clone()),
        data,
        has_more: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            id: "msg_1".into(),
            model: "m".into(),
        }
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("json")
    }

    #[test]
    fn a_message_in_anthropic_order() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_creation_input_tokens: 2,
            cache_read_input_tokens: 3,
        };
        let e = env();
        let blocks = ["hello".to_string(), String::new()];
        assert_eq!(
            json(&e.message(&blocks, END_TURN, usage)),
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":2,"cache_read_input_tokens":3,"output_tokens":5}}"#
        );
        assert_eq!(
            json(&StreamEvent::MessageStart { message: e.start() }),
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}}"#
        );
        assert_eq!(
            message_id(Uuid::nil()),
            "msg_00000000000000000000000000000000"
        );
    }

    #[test]
    fn stream_events_are_named_after_their_type() {
        let events = [
            StreamEvent::ContentBlockStart {
                index: 0,
                content_block: text_block(""),
            },
            StreamEvent::ContentBlockDelta {
                index: 0,
                delta: text_delta("hi"),
            },
            StreamEvent::ContentBlockStop { index: 0 },
            StreamEvent::MessageDelta {
                delta: MessageDelta {
                    stop_reason: MAX_TOKENS,
                    stop_sequence: None,
                },
                usage: UsageOut::default(),
            },
            StreamEvent::MessageStop,
            StreamEvent::Ping,
        ];
        let lines: Vec<String> = events.iter().map(json).collect();
        assert_eq!(
            lines,
            [
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
                r#"{"type":"content_block_stop","index":0}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}"#,
                r#"{"type":"message_stop"}"#,
                r#"{"type":"ping"}"#,
            ]
        );
        for (e, line) in events.iter().zip(&lines) {
            assert!(line.starts_with(&format!(r#"{{"type":"{}""#, e.name())));
        }
    }

    #[test]
    fn models_in_anthropic_shape() {
        let list = model_list(vec![model_info("a".into(), 0), model_info("b".into(), 60)]);
        assert_eq!(
            json(&list),
            r#"{"data":[{"type":"model","id":"a","display_name":"a","created_at":"1970-01-01T00:00:00Z"},{"type":"model","id":"b","display_name":"b","created_at":"1970-01-01T00:01:00Z"}],"has_more":false,"first_id":"a","last_id":"b"}"#
        );
        let empty = model_list(Vec::new());
        assert_eq!(empty.first_id, None);
    }
}
