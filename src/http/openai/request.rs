//! The body of `POST /v1/chat/completions` and its translation into a native [`RunRequest`].
//!
//! - The last message must come from the user: it is the prompt.
//! - `system` and `developer` messages, wherever they stand, are joined (blank line between)
//!   into `--append-system-prompt`, so the CLI keeps its own system prompt (tools, working
//!   directory) and the client's instructions come on top.
//! - Continuing a session (`X-Session-Id` or `session_id`): only the last user message is sent;
//!   the history lives in the CLI's session.
//! - Otherwise earlier user/assistant messages are folded into the prompt
//!   ([`compat::fold`](super::super::compat::fold)).
//! - Sampling fields (`temperature`, `top_p`, `max_tokens`, `max_completion_tokens`, `stop`,
//!   `seed`, penalties, `logit_bias`, `response_format`, ...) are accepted and ignored: the CLI
//!   has no such knobs. `n` must be 1; `tools`/`functions` are refused (no function calling).

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use validator::{Validate, ValidationErrors};

use super::super::compat::{content_text, prompt_of, task_metadata, Prompt, Role, Turn};
use super::super::error::ApiError;
use super::super::run_request::RunRequest;
use super::super::validate::{first_error, Rules};

/// OpenAI's chat completion request. Sampling fields (`temperature`, `top_p`, `max_tokens`,
/// `stop`, `seed`, penalties, `response_format`, ...) are accepted and ignored.
#[derive(Debug, Deserialize, ToSchema, Validate)]
pub struct ChatRequest {
    /// Optional here (OpenAI requires it): absent means `defaultModel`.
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Stored in the task's metadata (`metadata.user`).
    pub user: Option<String>,
    /// OpenAI's own request metadata: stored with the task like native `metadata`.
    pub metadata: Option<Value>,
    /// Must be 1.
    #[validate(range(min = 1, max = 1, message = "must be 1 (one choice per request)"))]
    pub n: Option<i64>,
    /// Refused unless empty: no function calling.
    #[validate(length(
        max = 0,
        message = "is not supported: the server does not do function calling"
    ))]
    pub tools: Option<Vec<Value>>,
    /// Refused unless empty: no function calling.
    #[validate(length(
        max = 0,
        message = "is not supported: the server does not do function calling"
    ))]
    pub functions: Option<Vec<Value>>,
    // ---- extensions (send them with the SDKs' `extra_body`)
    /// Continue this session (same as the `X-Session-Id` header).
    pub session_id: Option<String>,
    /// The run's working directory, as in `POST /api/claude`.
    pub project_path: Option<String>,
}

#[derive(Debug, Deserialize, Default, ToSchema)]
#[schema(as = ChatStreamOptions)]
pub struct StreamOptions {
    /// Send a last chunk with the run's `usage`.
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// The last message must be the user's.
    #[schema(value_type = ChatRole)]
    pub role: String,
    /// A string, an array of content parts, or null (an assistant message with tool calls).
    pub content: Option<Value>,
}

/// The roles a message may have (`tool` and `function` are refused): the schema of
/// [`ChatMessage::role`], which stays a string so a refused role is answered by name.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
}

/// What the handler needs besides the native request.
#[derive(Debug)]
pub struct ChatRun {
    pub run: RunRequest,
    /// The model as the client named it: echoed in every answer.
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The derived rules are the request's own; the messages are checked as they are translated
/// (a refusal names the message and the content part), then the run's rules apply to the
/// native request.
impl Rules for ChatRequest {
    const FIELDS: &'static [&'static str] = &["n", "tools", "functions"];

    fn rules(&self, _: &actors::config::Config) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

/// Translate the request. `header_session` is the `X-Session-Id` header, if sent.
pub fn translate(req: ChatRequest, header_session: Option<String>) -> Result<ChatRun, ApiError> {
    req.validate()
        .map_err(|e| first_error(&e, ChatRequest::FIELDS))?;
    let session_id = match (header_session, req.session_id) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::field(
                "session_id",
                "must match the X-Session-Id header when both are sent",
            ))
        }
        (h, b) => h.or(b),
    };
    let turns = turns(&req.messages)?;
    let Prompt { prompt, system } = prompt_of(&turns, session_id.is_none(), "messages")?;
    let metadata = task_metadata(req.metadata, req.user)?;
    let stream = req.stream.unwrap_or(false);
    Ok(ChatRun {
        model: req.model.clone(),
        stream,
        include_usage: stream
            && req
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        run: RunRequest {
            prompt,
            model: req.model,
            session_id,
            append_system_prompt: system,
            project_path: req.project_path,
            stream: Some(stream),
            metadata,
            ..RunRequest::default()
        },
    })
}

/// Every message with its text, checked: roles are OpenAI's (`tool` and `function` are
/// refused), content parts must be text (images and other media get a 400 that says so).
fn turns(messages: &[ChatMessage]) -> Result<Vec<Turn>, ApiError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => {
                    return Err(ApiError::field(
                        &format!("messages[{i}].role"),
                        "must be one of: system, developer, user, assistant",
                    ))
                }
            };
            let field = format!("messages[{i}].content");
            let text = match &m.content {
                // An assistant message with tool calls has no content.
                None | Some(Value::Null) => String::new(),
                Some(content) => content_text(content, &field, &["text", "input_text"])?,
            };
            Ok(Turn { role, text, field })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(body: Value) -> ChatRequest {
        serde_json::from_value(body).expect("request")
    }

    #[test]
    fn a_single_user_message_is_the_prompt_and_system_messages_are_appended() {
        let r = translate(
            req(json!({"model": "m", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
                {"role": "user", "content": "hi"}]})),
            None,
        )
        .expect("valid");
        assert_eq!(r.run.prompt, "hi");
        assert_eq!(
            r.run.append_system_prompt.as_deref(),
            Some("Be brief.\n\nUse English.")
        );
        assert!(!r.stream && !r.include_usage);
    }

    #[test]
    fn history_is_folded_unless_a_session_continues() {
        let body = json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]}]});
        let r = translate(req(body.clone()), None).expect("valid");
        assert_eq!(
            r.run.prompt,
            "<conversation_history>\n<user>\none\n</user>\n<assistant>\ntwo\n</assistant>\n</conversation_history>\n\nthree\nfour"
        );
        let r = translate(req(body), Some("sid".into())).expect("valid");
        assert_eq!(r.run.prompt, "three\nfour");
        assert_eq!(r.run.session_id.as_deref(), Some("sid"));
    }

    #[test]
    fn refusals_name_the_field() {
        let field = |body: Value, header: Option<&str>| {
            let e = translate(req(body), header.map(str::to_string)).expect_err("refused");
            e.details
                .and_then(|d| d["field"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(field(image, None), "messages[0].content[1]");
        let last_assistant = json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
        assert_eq!(field(last_assistant, None), "messages");
        assert_eq!(field(json!({"messages": []}), None), "messages");
        let n = json!({"n": 2, "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(field(n, None), "n");
        let n = json!({"n": 0, "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(field(n, None), "n");
        let functions = json!({"functions": [{}], "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(field(functions, None), "functions");
        // The first field in the order they were always checked.
        let both = json!({"functions": [{}], "n": 3, "messages": []});
        assert_eq!(field(both, None), "n");
        let tools = json!({"tools": [{"type": "function"}], "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(field(tools, None), "tools");
        let role = json!({"messages": [{"role": "tool", "content": "a"}, {"role": "user", "content": "b"}]});
        assert_eq!(field(role, None), "messages[0].role");
        let empty = json!({"messages": [{"role": "user", "content": "  "}]});
        assert_eq!(field(empty, None), "messages[0].content");
        let both = json!({"session_id": "a", "messages": [{"role": "user", "content": "b"}]});
        assert_eq!(field(both, Some("b")), "session_id");
    }

    #[test]
    fn user_goes_into_metadata_and_usage_needs_a_stream() {
        let r = translate(
            req(json!({"user": "u-1", "metadata": {"k": "v"}, "stream_options": {"include_usage": true},
                       "temperature": 0.2, "max_tokens": 5, "stop": ["x"],
                       "messages": [{"role": "user", "content": "a"}]})),
            None,
        )
        .expect("valid");
        assert_eq!(r.run.metadata, Some(json!({"k": "v", "user": "u-1"})));
        assert!(!r.include_usage, "usage chunks exist only in a stream");
    }
}
