//! The answers of `/v1/responses`: the response object and the events of its stream, as
//! structs whose fields are in OpenAI's order (serde_json keeps struct order).

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use actors::model::Usage;

/// The id of a response: the task's id inside (`resp_<task id without dashes>`), so it leads to
/// `GET /api/tasks/:id` and, as `previous_response_id`, to the task's session.
pub fn response_id(task_id: Uuid) -> String {
    format!("resp_{}", task_id.simple())
}

/// The task of a response id, if it is one.
pub fn task_of_response(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id.strip_prefix("resp_")?).ok()
}

/// The id of the response's one output message.
pub fn item_id(task_id: Uuid) -> String {
    format!("msg_{}", task_id.simple())
}

/// What a response (and every event of its stream) repeats.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `resp_<task id>`.
    pub id: String,
    /// `msg_<task id>`: the output message.
    pub item_id: String,
    /// Unix seconds: when the task was created.
    pub created_at: i64,
    /// The model as requested (a session turn runs on the session's model).
    pub model: String,
    /// The system prompt the run got: `instructions` and any system/developer messages.
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    /// The task's metadata (an object).
    pub metadata: Value,
}

/// `completed`, `incomplete` (the CLI stopped the run at its own limits — max turns, the run's
/// budget — see [`compat::cut_short`](super::super::super::compat::cut_short)), `failed` (in a
/// stream only: a plain request that fails is an HTTP error) or `in_progress` (the first events
/// of a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }
}

/// `object: response`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiResponse)]
pub struct ResponseObject<'a> {
    /// `resp_<task id>`.
    pub id: &'a str,
    pub object: &'static str,
    pub created_at: i64,
    /// `completed`, `incomplete`, `failed` or `in_progress`.
    pub status: &'static str,
    /// Set when `failed`: the service's error code and message.
    #[schema(required = true)]
    pub error: Option<ResponseError>,
    /// Set when `incomplete`: `{"reason": "max_output_tokens"}`.
    #[schema(required = true)]
    pub incomplete_details: Option<IncompleteDetails>,
    #[schema(required = true)]
    pub instructions: Option<&'a str>,
    pub model: &'a str,
    /// One assistant message, or none yet.
    pub output: Vec<OutputMessage<'a>>,
    /// Always false: no function calling.
    pub parallel_tool_calls: bool,
    #[schema(required = true)]
    pub previous_response_id: Option<&'a str>,
    /// `none`: no function calling.
    pub tool_choice: &'static str,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub tools: [(); 0],
    /// Null until the run ends.
    #[schema(required = true)]
    pub usage: Option<ResponseUsage>,
    #[schema(value_type = Object)]
    pub metadata: &'a Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiResponseError)]
pub struct ResponseError {
    /// The service's own snake_case code (`cli_api_error`, `timeout`, ...).
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiIncompleteDetails)]
pub struct IncompleteDetails {
    /// `max_output_tokens`: the CLI stopped the run at its own limits.
    pub reason: &'static str,
}

/// `type: message`, the assistant's.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiOutputMessage)]
pub struct OutputMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `msg_<task id>`.
    pub id: &'a str,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    pub role: &'static str,
    /// One `output_text` part, or none yet.
    pub content: Vec<OutputText<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenAiOutputText)]
pub struct OutputText<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub annotations: [(); 0],
}

pub fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        text,
        annotations: [],
    }
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(as = OpenAiResponseUsage)]
pub struct ResponseUsage {
    /// Everything the model read: input + cache reads + cache writes.
    pub input_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(as = OpenAiInputTokensDetails)]
pub struct InputTokensDetails {
    /// Cache reads.
    pub cached_tokens: u64,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(as = OpenAiOutputTokensDetails)]
pub struct OutputTokensDetails {
    /// Always 0: the CLI does not report them apart.
    pub reasoning_tokens: u64,
}

impl From<Usage> for ResponseUsage {
    fn from(u: Usage) -> ResponseUsage {
        let input = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
        ResponseUsage {
            input_tokens: input,
            input_tokens_details: InputTokensDetails {
                cached_tokens: u.cache_read_input_tokens,
            },
            output_tokens: u.output_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: input + u.output_tokens,
        }
    }
}

/// How a response ended, with what it needs to say so.
#[derive(Debug)]
pub enum Outcome {
    /// The run went on: no output yet, no usage.
    Running,
    Completed(Usage),
    Incomplete(Usage),
    Failed(ResponseError),
}

impl Envelope {
    /// The output message holding `text` (`status` of the item follows the response's).
    pub fn item<'a>(&'a self, text: Option<&'a str>, status: Status) -> OutputMessage<'a> {
        OutputMessage {
            kind: "message",
            id: &self.item_id,
            status: match status {
                Status::Failed => Status::Incomplete.as_str(),
                other => other.as_str(),
            },
            role: "assistant",
            content: text.map(output_text).into_iter().collect(),
        }
    }

    /// The response: `text` is the answer's, absent while running or after a failure.
    pub fn response<'a>(&'a self, text: Option<&'a str>, outcome: Outcome) -> ResponseObject<'a> {
        let (status, usage, error, incomplete) = match outcome {
            Outcome::Running => (Status::InProgress, None, None, None),
            Outcome::Completed(u) => (Status::Completed, Some(u.into()), None, None),
            Outcome::Incomplete(u) => (
                Status::Incomplete,
                Some(u.into()),
                None,
                Some(IncompleteDetails {
                    reason: "max_output_tokens",
                }),
            ),
            Outcome::Failed(e) => (Status::Failed, None, Some(e), None),
        };
        let output = match (status, text) {
            (Status::InProgress | Status::Failed, _) | (_, None) => Vec::new(),
            (_, Some(text)) => vec![self.item(Some(text), status)],
        };
        ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status: status.as_str(),
            error,
            incomplete_details: incomplete,
            instructions: self.instructions.as_deref(),
            model: &self.model,
            output,
            parallel_tool_calls: false,
            previous_response_id: self.previous_response_id.as_deref(),
            tool_choice: "none",
            tools: [],
            usage,
            metadata: &self.metadata,
        }
    }
}

/// The metadata a response echoes: the task's, or `{}`.
pub fn metadata_of(metadata: Option<&Value>) -> Value {
    match metadata {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Object(Map::new()),
    }
}

/// One event of a streamed response: the `data:` of an SSE event named after its `type`.
///
/// `response.created`, `response.in_progress`, `response.output_item.added`,
/// `response.content_part.added`, one `response.output_text.delta` per text delta as the CLI
/// produces it, `response.output_text.done`, `response.content_part.done`,
/// `response.output_item.done`, then `response.completed` (or `response.incomplete` for a run
/// the CLI stopped at its own limits); a run that fails ends with `response.failed` instead.
/// `sequence_number` counts the events from 0.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type")]
#[schema(as = OpenAiResponseStreamEvent)]
pub enum StreamEvent<'a> {
    #[serde(rename = "response.created")]
    Created {
        response: ResponseObject<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.in_progress")]
    InProgress {
        response: ResponseObject<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        output_index: u32,
        item: OutputMessage<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: OutputText<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        delta: &'a str,
        #[schema(value_type = Vec<Object>)]
        logprobs: [(); 0],
        sequence_number: u64,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        text: &'a str,
        #[schema(value_type = Vec<Object>)]
        logprobs: [(); 0],
        sequence_number: u64,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: OutputText<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        output_index: u32,
        item: OutputMessage<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.completed")]
    Completed {
        response: ResponseObject<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.incomplete")]
    Incomplete {
        response: ResponseObject<'a>,
        sequence_number: u64,
    },
    #[serde(rename = "response.failed")]
    Failed {
        response: ResponseObject<'a>,
        sequence_number: u64,
    },
}

impl StreamEvent<'_> {
    /// The SSE event name: the `type`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Created { .. } => "response.created",
            StreamEvent::InProgress { .. } => "response.in_progress",
            StreamEvent::OutputItemAdded { .. } => "response.output_item.added",
            StreamEvent::ContentPartAdded { .. } => "response.content_part.added",
            StreamEvent::OutputTextDelta { .. } => "response.output_text.delta",
            StreamEvent::OutputTextDone { .. } => "response.output_text.done",
            StreamEvent::ContentPartDone { .. } => "response.content_part.done",
            StreamEvent::OutputItemDone { .. } => "response.output_item.done",
            StreamEvent::Completed { .. } => "response.completed",
            StreamEvent::Incomplete { .. } => "response.incomplete",
            StreamEvent::Failed { .. } => "response.failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Envelope {
        Envelope {
            id: "resp_1".into(),
            item_id: "msg_1".into(),
            created_at: 7,
            model: "m".into(),
            instructions: Some("Be brief.".into()),
            previous_response_id: None,
            metadata: json!({}),
        }
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("json")
    }

    #[test]
    fn a_response_in_openai_order() {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_creation_input_tokens: 2,
            cache_read_input_tokens: 3,
        };
        let e = env();
        assert_eq!(
            json(&e.response(Some("hi"), Outcome::Completed(usage))),
            r#"{"id":"resp_1","object":"response","created_at":7,"status":"completed","error":null,"incomplete_details":null,"instructions":"Be brief.","model":"m","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"hi","annotations":[]}]}],"parallel_tool_calls":false,"previous_response_id":null,"tool_choice":"none","tools":[],"usage":{"input_tokens":15,"input_tokens_details":{"cached_tokens":3},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":20},"metadata":{}}"#
        );
        let incomplete = e.response(Some("so far"), Outcome::Incomplete(Usage::default()));
        assert_eq!(incomplete.status, "incomplete");
        assert_eq!(incomplete.output[0].status, "incomplete");
        assert_eq!(
            json(&incomplete.incomplete_details),
            r#"{"reason":"max_output_tokens"}"#
        );
        let error = ResponseError {
            code: "cli_api_error".into(),
            message: "x".into(),
        };
        let failed = e.response(Some("partial"), Outcome::Failed(error));
        assert_eq!((failed.status, failed.output.len()), ("failed", 0));
        assert_eq!(
            json(&failed.error),
            r#"{"code":"cli_api_error","message":"x"}"#
        );
        let running = e.response(None, Outcome::Running);
        assert_eq!((running.status, running.usage), ("in_progress", None));
    }

    #[test]
    fn ids_lead_to_the_task() {
        let id = Uuid::new_v4();
        assert_eq!(task_of_response(&response_id(id)), Some(id));
        assert_eq!(task_of_response(&format!("resp_{id}")), Some(id));
        assert_eq!(task_of_response(&id.to_string()), None);
        assert_eq!(task_of_response("resp_nope"), None);
        assert!(item_id(id).starts_with("msg_"));
    }

    #[test]
    fn stream_events_are_named_after_their_type() {
        let e = env();
        let events = [
            StreamEvent::OutputTextDelta {
                item_id: &e.item_id,
                output_index: 0,
                content_index: 0,
                delta: "hi",
                logprobs: [],
                sequence_number: 4,
            },
            StreamEvent::OutputItemAdded {
                output_index: 0,
                item: e.item(None, Status::InProgress),
                sequence_number: 2,
            },
        ];
        assert_eq!(
            json(&events[0]),
            r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"hi","logprobs":[],"sequence_number":4}"#
        );
        assert_eq!(
            json(&events[1]),
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"message","id":"msg_1","status":"in_progress","role":"assistant","content":[]},"sequence_number":2}"#
        );
        for e in &events {
            assert!(json(e).starts_with(&format!(r#"{{"type":"{}""#, e.name())));
        }
    }
}
