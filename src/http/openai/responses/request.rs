//! The body of `POST /v1/responses` (OpenAI's Responses API) and its translation into a native
//! [`RunRequest`], by the rules every compatible API shares ([`compat`]):
//!
//! - `input` is a string (the prompt) or a list of messages (`{"role", "content"}`, with or
//!   without `"type": "message"`) whose content is a string or `input_text`/`output_text`
//!   parts; other item types (function calls and their outputs, files, images) are refused with
//!   a 400 naming the item until they are supported. The last message must be the user's.
//! - `instructions`, and `system`/`developer` messages, go into `--append-system-prompt`.
//! - Every message before the last is folded into the prompt, with or without
//!   `previous_response_id`: the items of `input` are new turns (the API is stateful, a client
//!   does not resend the conversation), so none is already in the session.
//! - `max_output_tokens` is accepted and not enforced (the CLI has no cap on an answer's
//!   length); `temperature`, `top_p`, `store`, `reasoning`, `text`, `truncation`, `tool_choice`
//!   and the like are accepted and ignored; a non-empty `tools` is refused.
//!
//! [`compat`]: super::super::super::compat

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use validator::{Validate, ValidationErrors};

use super::super::super::compat::{content_text, prompt_of, task_metadata, Prompt, Role, Turn};
use super::super::super::error::ApiError;
use super::super::super::run_request::RunRequest;
use super::super::super::validate::{first_error, Rules};

/// OpenAI's Responses request.
#[derive(Debug, Deserialize, ToSchema, Validate)]
#[schema(as = ResponsesRequest)]
pub struct ResponsesRequest {
    /// Optional here: absent means `defaultModel`.
    pub model: Option<String>,
    /// A string, or a list of messages.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Appended to the CLI's system prompt.
    pub instructions: Option<String>,
    pub stream: Option<bool>,
    /// `resp_…` of an earlier response: this one continues its session.
    pub previous_response_id: Option<String>,
    /// Stored with the task like native `metadata`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Stored in the task's metadata (`metadata.user`).
    pub user: Option<String>,
    /// Accepted and not enforced: the CLI has no cap on an answer's length.
    #[schema(minimum = 1)]
    #[validate(range(min = 1, message = "must be an integer of at least 1"))]
    pub max_output_tokens: Option<i64>,
    /// Refused unless empty: no function calling.
    #[validate(length(
        max = 0,
        message = "is not supported: the server does not do function calling"
    ))]
    pub tools: Option<Vec<Value>>,
}

/// What the handler needs besides the native request.
#[derive(Debug)]
pub struct ResponsesRun {
    pub run: RunRequest,
    /// The model as the client named it: echoed in the answer.
    pub model: Option<String>,
    pub stream: bool,
    pub previous_response_id: Option<String>,
}

impl Rules for ResponsesRequest {
    const FIELDS: &'static [&'static str] = &["max_output_tokens", "tools"];

    fn rules(&self, _: &actors::config::Config) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

/// The part types read as text.
const TEXT: &[&str] = &["input_text", "output_text", "text"];

pub fn translate(req: ResponsesRequest) -> Result<ResponsesRun, ApiError> {
    req.validate()
        .map_err(|e| first_error(&e, ResponsesRequest::FIELDS))?;
    let mut turns = Vec::new();
    if let Some(instructions) = &req.instructions {
        turns.push(Turn {
            role: Role::System,
            text: instructions.clone(),
            field: "instructions".into(),
        });
    }
    turns.extend(input_turns(&req.input)?);
    let Prompt { prompt, system } = prompt_of(&turns, true, "input")?;
    let stream = req.stream.unwrap_or(false);
    Ok(ResponsesRun {
        model: req.model.clone(),
        stream,
        previous_response_id: req.previous_response_id,
        run: RunRequest {
            prompt,
            model: req.model,
            append_system_prompt: system,
            stream: Some(stream),
            metadata: task_metadata(req.metadata, req.user)?,
            ..RunRequest::default()
        },
    })
}

fn input_turns(input: &Value) -> Result<Vec<Turn>, ApiError> {
    let items = match input {
        Value::String(text) => {
            return Ok(vec![Turn {
                role: Role::User,
                text: text.clone(),
                field: "input".into(),
            }])
        }
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::field(
                "input",
                "must be a string or an array of messages",
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("input[{i}]");
            let Some(item) = item.as_object() else {
                return Err(ApiError::field(&at, "must be a message object"));
            };
            match item.get("type").and_then(Value::as_str) {
                None | Some("message") => {}
                Some(other) => {
                    return Err(ApiError::field(
                        &format!("{at}.type"),
                        format!("is `{other}`, which is not supported; send messages only"),
                    ))
                }
            }
            let role = match item.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system" | "developer") => Role::System,
                _ => {
                    return Err(ApiError::field(
                        &format!("{at}.role"),
                        "must be one of: user, assistant, system, developer",
                    ))
                }
            };
            let field = format!("{at}.content");
            let content = item
                .get("content")
                .ok_or_else(|| ApiError::field(&field, "is required"))?;
            let text = content_text(content, &field, TEXT)?;
            Ok(Turn { role, text, field })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn translated(body: Value) -> Result<ResponsesRun, ApiError> {
        translate(serde_json::from_value(body).expect("request"))
    }

    #[test]
    fn a_string_input_is_the_prompt_and_instructions_the_system_prompt() {
        let r = translated(
            json!({"model": "m", "input": "hi", "instructions": "Be brief.",
                                  "temperature": 0.5, "max_output_tokens": 16, "store": true,
                                  "metadata": {"k": "v"}, "user": "u"}),
        )
        .expect("valid");
        assert_eq!(r.run.prompt, "hi");
        assert_eq!(r.run.append_system_prompt.as_deref(), Some("Be brief."));
        assert_eq!(r.run.metadata, Some(json!({"k": "v", "user": "u"})));
        assert!(!r.stream && r.previous_response_id.is_none());
    }

    #[test]
    fn messages_fold_even_when_a_previous_response_is_continued() {
        let body = json!({"previous_response_id": "resp_x", "stream": true, "input": [
            {"role": "developer", "content": "Speak English."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
            {"role": "user", "content": "three"}]});
        let r = translated(body).expect("valid");
        assert_eq!(
            r.run.prompt,
            "<conversation_history>\n<user>\none\n</user>\n<assistant>\ntwo\n</assistant>\n</conversation_history>\n\nthree"
        );
        assert_eq!(
            r.run.append_system_prompt.as_deref(),
            Some("Speak English.")
        );
        assert_eq!(r.previous_response_id.as_deref(), Some("resp_x"));
        assert!(r.stream);
    }

    #[test]
    fn refusals_name_the_field() {
        let field = |body: Value| {
            translated(body)
                .expect_err("refused")
                .details
                .and_then(|d| d["field"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        assert_eq!(field(json!({"input": 3})), "input");
        assert_eq!(field(json!({"input": ""})), "input");
        assert_eq!(field(json!({"input": []})), "input");
        assert_eq!(field(json!({"input": ["hi"]})), "input[0]");
        let call =
            json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]});
        assert_eq!(field(call), "input[0].type");
        assert_eq!(
            field(json!({"input": [{"role": "tool", "content": "x"}]})),
            "input[0].role"
        );
        assert_eq!(
            field(json!({"input": [{"role": "user"}]})),
            "input[0].content"
        );
        let image = json!({"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is this"}, {"type": "input_image", "image_url": "data:"}]}]});
        assert_eq!(field(image), "input[0].content[1]");
        let last = json!({"input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
        assert_eq!(field(last), "input");
        assert_eq!(
            field(json!({"input": "a", "tools": [{"type": "function"}]})),
            "tools"
        );
        assert_eq!(
            field(json!({"input": "a", "max_output_tokens": 0})),
            "max_output_tokens"
        );
    }
}
