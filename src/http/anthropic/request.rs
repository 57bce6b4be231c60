//! The body of `POST /v1/messages` (Anthropic's Messages API) and its translation into a native
//! [`RunRequest`], by the rules every compatible API shares ([`compat`]):
//!
//! - `system` (a string or text blocks) goes into `--append-system-prompt`;
//! - the last message must be the user's: it is the prompt; `content` is a string or text
//!   blocks (images, documents, tool use and results, thinking are refused with a 400 naming
//!   the block until they are supported); a final assistant message (a "prefill") is refused;
//! - continuing a session (`X-Session-Id`): only the last user message is sent; otherwise
//!   earlier messages are folded into the prompt;
//! - `max_tokens` is accepted and not enforced: the CLI has no cap on an answer's length.
//!   `temperature`, `top_p`, `top_k`, `stop_sequences`, `thinking`, `tool_choice`,
//!   `service_tier` and `container` are accepted and ignored (the CLI has no such settings);
//!   a non-empty `tools` is refused (the CLI runs its own tools, not the client's).
//!
//! [`compat`]: super::super::compat

use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use validator::{Validate, ValidationErrors};

use actors::config::Config;
use actors::error::ErrorCode;

use super::super::compat::{content_text, prompt_of, task_metadata, Prompt, Role, Turn};
use super::super::error::ApiError;
use super::super::run_request::{model_allowed, RunRequest};
use super::super::validate::{first_error, Rules};

/// Anthropic's Messages request.
#[derive(Debug, Deserialize, ToSchema, Validate)]
#[schema(as = AnthropicMessagesRequest)]
pub struct MessagesRequest {
    /// Optional here (Anthropic requires it): absent means `defaultModel`. A model the server
    /// does not run is 404 `not_found_error`.
    pub model: Option<String>,
    /// Accepted and not enforced: the CLI has no cap on an answer's length.
    #[schema(minimum = 1)]
    #[validate(range(min = 1, message = "must be an integer of at least 1"))]
    pub max_tokens: Option<i64>,
    /// A string, or an array of text blocks: appended to the CLI's system prompt.
    #[schema(value_type = Option<Object>)]
    pub system: Option<Value>,
    #[schema(min_items = 1)]
    pub messages: Vec<MessageParam>,
    /// Stored with the task like native `metadata` (Anthropic's is `{"user_id"}`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub stream: Option<bool>,
    /// Refused unless empty: the CLI runs its own tools, not the client's.
    #[validate(length(
        max = 0,
        message = "is not supported: the CLI runs its own tools, not the client's"
    ))]
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = AnthropicMessageParam)]
pub struct MessageParam {
    #[schema(value_type = AnthropicRole)]
    pub role: String,
    /// A string, or an array of text blocks (`{"type":"text","text"}`).
    #[schema(value_type = Object)]
    pub content: Value,
}

/// The roles of Anthropic's messages: the schema of [`MessageParam::role`], which stays a
/// string so a refused role is answered by name.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum AnthropicRole {
    User,
    Assistant,
}

/// What the handler needs besides the native request.
#[derive(Debug)]
pub struct MessagesRun {
    pub run: RunRequest,
    /// The model as the client named it: echoed in the answer.
    pub model: Option<String>,
    pub stream: bool,
}

impl Rules for MessagesRequest {
    const FIELDS: &'static [&'static str] = &["max_tokens", "tools"];

    fn rules(&self, _: &Config) -> Result<(), ValidationErrors> {
        self.validate()
    }
}

/// The block types read as text.
const TEXT: &[&str] = &["text"];

/// Translate the request. `session` is the `X-Session-Id` header, if sent.
pub fn translate(
    req: MessagesRequest,
    session: Option<String>,
    config: &Config,
) -> Result<MessagesRun, ApiError> {
    req.validate()
        .map_err(|e| first_error(&e, MessagesRequest::FIELDS))?;
    if let Some(model) = req.model.as_deref() {
        // Anthropic answers a model it does not have with 404; a blank name is the run's
        // rules' 400.
        if !model.trim().is_empty() && !model_allowed(model, config) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("model: the model `{model}` does not exist on this server."),
            )
            .with_details(json!({"field": "model"})));
        }
    }
    let mut turns = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        turns.push(Turn {
            role: Role::System,
            text: content_text(system, "system", TEXT)?,
            field: "system".into(),
        });
    }
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => {
                return Err(ApiError::field(
                    &format!("messages[{i}].role"),
                    "must be one of: user, assistant",
                ))
            }
        };
        let field = format!("messages[{i}].content");
        let text = content_text(&m.content, &field, TEXT)?;
        turns.push(Turn { role, text, field });
    }
    let Prompt { prompt, system } = prompt_of(&turns, session.is_none(), "messages")?;
    let stream = req.stream.unwrap_or(false);
    Ok(MessagesRun {
        model: req.model.clone(),
        stream,
        run: RunRequest {
            prompt,
            model: req.model,
            session_id: session,
            append_system_prompt: system,
            stream: Some(stream),
            metadata: task_metadata(req.metadata, None)?,
            ..RunRequest::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::from_merged(actors::config::load::defaults_doc()).expect("defaults");
        c.default_model = "claude-sonnet-4-5".into();
        c
    }

    fn translated(body: Value, session: Option<&str>) -> Result<MessagesRun, ApiError> {
        let req: MessagesRequest = serde_json::from_value(body).expect("request");
        translate(req, session.map(str::to_string), &config())
    }

    #[test]
    fn system_in_both_forms_and_the_last_user_message_is_the_prompt() {
        let r = translated(
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "system": "Be brief.",
                   "temperature": 0.1, "stop_sequences": ["x"], "metadata": {"user_id": "u-1"},
                   "messages": [{"role": "user", "content": "hi"}]}),
            None,
        )
        .expect("valid");
        assert_eq!(r.run.prompt, "hi");
        assert_eq!(r.run.append_system_prompt.as_deref(), Some("Be brief."));
        assert_eq!(r.run.metadata, Some(json!({"user_id": "u-1"})));
        assert!(!r.stream);
        let r = translated(
            json!({"max_tokens": 1, "stream": true,
                   "system": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}}],
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
            None,
        )
        .expect("valid");
        assert_eq!(r.run.append_system_prompt.as_deref(), Some("One.\nTwo."));
        assert_eq!(r.run.prompt, "a\nb");
        assert!(r.stream && r.model.is_none());
    }

    #[test]
    fn history_is_folded_unless_a_session_continues() {
        let body = json!({"max_tokens": 8, "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "three"}]});
        let r = translated(body.clone(), None).expect("valid");
        assert_eq!(
            r.run.prompt,
            "<conversation_history>\n<user>\none\n</user>\n<assistant>\ntwo\n</assistant>\n</conversation_history>\n\nthree"
        );
        let r = translated(body, Some("sid")).expect("valid");
        assert_eq!(r.run.prompt, "three");
        assert_eq!(r.run.session_id.as_deref(), Some("sid"));
    }

    #[test]
    fn refusals_name_the_field_and_an_unknown_model_is_404() {
        let refused = |body: Value| {
            let e = translated(body, None).expect_err("refused");
            let field = e
                .details
                .as_ref()
                .and_then(|d| d["field"].as_str())
                .unwrap_or_default()
                .to_string();
            (e.code, field)
        };
        let bad = |field: &str| (ErrorCode::ValidationError, field.to_string());
        let image = json!({"max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]});
        assert_eq!(refused(image), bad("messages[0].content[1]"));
        let tool_result = json!({"max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]});
        assert_eq!(refused(tool_result), bad("messages[0].content[0]"));
        let prefill = json!({"max_tokens": 8, "messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]});
        assert_eq!(refused(prefill), bad("messages"));
        let system_role =
            json!({"max_tokens": 8, "messages": [{"role": "system", "content": "a"}]});
        assert_eq!(refused(system_role), bad("messages[0].role"));
        let system = json!({"max_tokens": 8, "system": [{"type": "image"}], "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(refused(system), bad("system[0]"));
        assert_eq!(
            refused(json!({"max_tokens": 0, "messages": [{"role": "user", "content": "a"}]})),
            bad("max_tokens")
        );
        let tools = json!({"max_tokens": 8, "tools": [{"name": "t"}], "messages": [{"role": "user", "content": "a"}]});
        assert_eq!(refused(tools), bad("tools"));
        let empty = json!({"max_tokens": 8, "messages": [{"role": "user", "content": ""}]});
        assert_eq!(refused(empty), bad("messages[0].content"));

        let req: MessagesRequest =
            serde_json::from_value(json!({"model": "claude-x", "max_tokens": 8,
            "messages": [{"role": "user", "content": "a"}]}))
            .expect("request");
        let mut c = config();
        c.allowed_models = vec!["claude-opus-4-1".into()];
        let e = translate(req, None, &c).expect_err("unknown model");
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("claude-x"), "{}", e.message);
    }
}
