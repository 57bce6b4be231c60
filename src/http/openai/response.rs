//! The answers of `/v1/chat/completions` and `/v1/models`, as structs whose fields are in
//! OpenAI's order: serde_json keeps struct order (its `preserve_order` feature is off, so a
//! `json!` map would come out sorted), and clients that compare bytes get stable output.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use actors::model::Usage;

/// The id of a completion: the task's id inside, so it leads to `GET /api/tasks/:id`.
pub fn completion_id(task_id: Uuid) -> String {
    format!("chatcmpl-{task_id}")
}

/// The schema of a field that is always null (`logprobs`).
fn always_null() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Null)
        .build()
}

/// What every completion and chunk of one request repeats.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    /// Unix seconds: when the task was created.
    pub created: i64,
    /// The model as requested (a session turn runs on the session's model).
    pub model: String,
    pub session_id: String,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(as = ChatUsage)]
pub struct UsageOut {
    /// Everything the model read: input + cache reads + cache writes.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> UsageOut {
        let prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
        UsageOut {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt + u.output_tokens,
        }
    }
}

/// Why the answer ended. Always `stop`: `max_tokens` is not enforced (the CLI has no such
/// limit), and a run the CLI cuts short (max turns, budget) is an error, not a partial answer.
pub const FINISH_STOP: &str = "stop";

/// `object: chat.completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion<'a> {
    /// `chatcmpl-<task id>`.
    pub id: &'a str,
    pub object: &'static str,
    pub created: i64,
    pub model: &'a str,
    pub choices: [Choice<'a>; 1],
    pub usage: UsageOut,
    /// Extension: the session to continue (also in the `X-Session-Id` header).
    pub session_id: &'a str,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ChatChoice)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    /// Always null.
    #[schema(schema_with = always_null, required = true)]
    pub logprobs: Option<()>,
    /// `stop`.
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ChatAssistantMessage)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

pub fn completion<'a>(env: &'a Envelope, content: &'a str, usage: Usage) -> ChatCompletion<'a> {
    ChatCompletion {
        id: &env.id,
        object: "chat.completion",
        created: env.created,
        model: &env.model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
            },
            logprobs: None,
            finish_reason: FINISH_STOP,
        }],
        usage: usage.into(),
        session_id: &env.session_id,
    }
}

/// One `chat.completion.chunk`: the `data:` of each Server-Sent Event of a streamed
/// completion, which ends with `data: [DONE]`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ChatCompletionChunk)]
pub struct Chunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: i64,
    pub model: &'a str,
    /// One choice, or none in the closing usage chunk.
    pub choices: Vec<ChunkChoice<'a>>,
    /// Present only with `stream_options.include_usage`: null on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<UsageOut>)]
    pub usage: Option<Option<UsageOut>>,
    /// Extension: the session, on every chunk (also in the `X-Session-Id` header).
    pub session_id: &'a str,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ChatChunkChoice)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    /// Always null.
    #[schema(schema_with = always_null, required = true)]
    pub logprobs: Option<()>,
    /// `stop` on the finishing chunk, else null.
    #[schema(required = true)]
    pub finish_reason: Option<&'static str>,
}

/// The change a chunk brings; an empty delta (`{}`) on the finishing chunk.
#[derive(Debug, Serialize, Default, ToSchema)]
#[schema(as = ChatDelta)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

impl Envelope {
    fn chunk<'a>(
        &'a self,
        choices: Vec<ChunkChoice<'a>>,
        usage: Option<Option<UsageOut>>,
    ) -> Chunk<'a> {
        Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
            session_id: &self.session_id,
        }
    }

    fn with_usage_slot(include_usage: bool) -> Option<Option<UsageOut>> {
        include_usage.then_some(None)
    }

    /// The opening chunk: the assistant's role and empty content.
    pub fn role_chunk(&self, include_usage: bool) -> Chunk<'_> {
        self.delta_chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            None,
            include_usage,
        )
    }

    /// A piece of the answer's text.
    pub fn text_chunk<'a>(&'a self, text: &'a str, include_usage: bool) -> Chunk<'a> {
        self.delta_chunk(
            Delta {
                role: None,
                content: Some(text),
            },
            None,
            include_usage,
        )
    }

    /// The closing chunk of the choice: empty delta and the finish reason.
    pub fn finish_chunk(&self, include_usage: bool) -> Chunk<'_> {
        self.delta_chunk(Delta::default(), Some(FINISH_STOP), include_usage)
    }

    /// After the finish chunk, with `include_usage`: no choices, the run's usage.
    pub fn usage_chunk(&self, usage: Usage) -> Chunk<'_> {
        self.chunk(Vec::new(), Some(Some(usage.into())))
    }

    fn delta_chunk<'a>(
        &'a self,
        delta: Delta<'a>,
        finish_reason: Option<&'static str>,
        include_usage: bool,
    ) -> Chunk<'a> {
        self.chunk(
            vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            Self::with_usage_slot(include_usage),
        )
    }
}

/// `GET /v1/models`: `object: list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// A model: `object: model`, `owned_by: anthropic`.
#[derive(Debug, Serialize, Clone, ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            session_id: "s".into(),
        }
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("json")
    }

    #[test]
    fn chunks_in_openai_order() {
        let e = env();
        assert_eq!(
            json(&e.role_chunk(false)),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"session_id":"s"}"#
        );
        assert_eq!(
            json(&e.text_chunk("hi", true)),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}],"usage":null,"session_id":"s"}"#
        );
        assert_eq!(
            json(&e.finish_chunk(false)),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"session_id":"s"}"#
        );
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_creation_input_tokens: 2,
            cache_read_input_tokens: 3,
        };
        assert_eq!(
            json(&e.usage_chunk(usage)),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":15,"completion_tokens":5,"total_tokens":20},"session_id":"s"}"#
        );
    }

    #[test]
    fn a_completion_in_openai_order() {
        let e = env();
        assert_eq!(
            json(&completion(&e, "hello", Usage::default())),
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0},"session_id":"s"}"#
        );
    }
}
