//! What the compatible APIs share — OpenAI's chat completions and Responses, Anthropic's
//! Messages: the session header, reading the text of message content, turning a conversation
//! into the CLI's prompt and system prompt, the task's metadata, and reading a run's events as
//! the text a compatible answer carries.
//!
//! Each API only names its own fields (`messages[2].content`, `input`, `system`); the rules are
//! the same everywhere:
//! - the last message must come from the user: it is the prompt;
//! - system messages (wherever they stand) are joined, a blank line between, into
//!   `--append-system-prompt`, so the CLI keeps its own system prompt (tools, working
//!   directory) and the client's instructions come on top;
//! - earlier user/assistant messages are folded into the prompt ([`fold`]), unless a session is
//!   continued, whose history the CLI keeps.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use actors::error::ErrorCode;
use actors::events::{EventSource, TaskEvent};
use actors::model::{Task, TaskId, TaskStatus, Usage};
use actors::store::Store;

use super::auth::Caller;
use super::error::ApiError;
use super::idempotency::{IdempotencyKey, Kind};
use super::run_request::ValidatedRun;
use super::turns::{self, Admitted, Queued, Target};
use crate::state::AppState;

pub mod stream;

/// The session of a conversation: sent by the client to continue one, returned on every answer.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");

/// Admit the run of a compatible API (every one answers a retry in its own shape, built by
/// `replay` from the original tasks): `Ok(Err(answer))` is that retry's answer.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    idem: &IdempotencyKey,
    run: ValidatedRun,
    target: Target,
    replay: fn(&[Task]) -> HttpResponse,
) -> Result<Result<Queued, HttpResponse>, ApiError> {
    match turns::admit(state, caller, idem, run, target, Kind::Chat, replay).await? {
        Admitted::Replay(r) => Ok(Err(r.into_response())),
        Admitted::Queued(q) => Ok(Ok(*q)),
    }
}

/// The `X-Session-Id` header, if sent and not blank.
pub fn header_session(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::field("X-Session-Id", "must be a UUID"))?
        .trim();
    Ok((!v.is_empty()).then(|| v.to_string()))
}

pub fn with_session_header(mut resp: HttpResponse, session_id: &str) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(session_id) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// Who wrote a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions: OpenAI's `system` and `developer`, Anthropic's `system`, the Responses
    /// API's `instructions`.
    System,
    User,
    Assistant,
}

impl Role {
    fn tag(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a request, its text read.
#[derive(Debug, Clone)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    /// Where its content stands in the request (`messages[2].content`, `input`): what a
    /// refusal names.
    pub field: String,
}

/// The text of a message's content: a string, or an array of parts whose `type` is one of
/// `text_types` (joined line by line: they are pieces of one message). Images and every other
/// kind of part are refused with a 400 naming the part (`field[j]`).
pub fn content_text(content: &Value, field: &str, text_types: &[&str]) -> Result<String, ApiError> {
    let parts = match content {
        Value::String(s) => return Ok(s.clone()),
        Value::Array(parts) => parts,
        _ => {
            return Err(ApiError::field(
                field,
                "must be a string or an array of content parts",
            ))
        }
    };
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let field = format!("{field}[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        if text_types.contains(&kind) {
            match part.get("text").and_then(Value::as_str) {
                Some(t) => texts.push(t.to_string()),
                None => return Err(ApiError::field(&field, "must have a string `text`")),
            }
            continue;
        }
        let rule = match kind {
            "" => "must have a `type`".to_string(),
            "image_url" | "input_image" | "image" | "image_file" => {
                "is an image; images are not supported yet, send text parts only".to_string()
            }
            other => format!("has type `{other}`, which is not supported; send text parts only"),
        };
        return Err(ApiError::field(&field, rule));
    }
    Ok(texts.join("\n"))
}

/// What a conversation sends to the CLI.
#[derive(Debug, PartialEq)]
pub struct Prompt {
    pub prompt: String,
    /// For `--append-system-prompt`.
    pub system: Option<String>,
}

/// The prompt and system prompt of `turns`. `list` is the request's field holding them
/// (`messages`, `input`), named when the conversation does not end with a user message.
/// `fold_history`: earlier turns go into the prompt ([`fold`]); off when a continued session
/// holds them already.
pub fn prompt_of(turns: &[Turn], fold_history: bool, list: &str) -> Result<Prompt, ApiError> {
    let last = turns
        .iter()
        .rposition(|t| t.role != Role::System)
        .filter(|&i| turns[i].role == Role::User)
        .ok_or_else(|| ApiError::field(list, "must end with a user message"))?;
    if turns[last].text.trim().is_empty() {
        return Err(ApiError::field(
            &turns[last].field,
            "must not be empty (the last user message is the prompt)",
        ));
    }
    let system: Vec<&str> = turns
        .iter()
        .filter(|t| t.role == Role::System && !t.text.trim().is_empty())
        .map(|t| t.text.as_str())
        .collect();
    let history: Vec<(&str, &str)> = turns[..last]
        .iter()
        .filter(|t| t.role != Role::System)
        .map(|t| (t.role.tag(), t.text.as_str()))
        .collect();
    let text = &turns[last].text;
    Ok(Prompt {
        prompt: if fold_history && !history.is_empty() {
            fold(&history, text)
        } else {
            text.clone()
        },
        system: (!system.is_empty()).then(|| system.join("\n\n")),
    })
}

/// A new conversation that arrives with history: the earlier turns, oldest first, in a
/// `<conversation_history>` block, a blank line, then the last user message as it was sent:
///
/// ```text
/// <conversation_history>
/// <user>
/// first question
/// </user>
/// <assistant>
/// first answer
/// </assistant>
/// </conversation_history>
///
/// latest question
/// ```
pub fn fold(history: &[(&str, &str)], last: &str) -> String {
    let mut out = String::from("<conversation_history>\n");
    for (role, text) in history {
        out.push_str(&format!("<{role}>\n{text}\n</{role}>\n"));
    }
    out.push_str("</conversation_history>\n\n");
    out.push_str(last);
    out
}

/// The task's metadata: the request's `metadata` object, with `user` added when given.
pub fn task_metadata(
    metadata: Option<Value>,
    user: Option<String>,
) -> Result<Option<Value>, ApiError> {
    let mut map = match metadata {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::field("metadata", "must be an object")),
    };
    if let Some(user) = user {
        map.insert("user".into(), json!(user));
    }
    Ok((!map.is_empty()).then_some(Value::Object(map)))
}

/// Whether a run that failed with `code` was stopped by the CLI's own limits — `max_turns`
/// or the run's `max_budget_usd` — after it may have written text. The compatible APIs answer
/// such a run as a truncated answer (Anthropic's `max_tokens`, the Responses API's
/// `incomplete`) rather than an error: what the model wrote stands, and the session, which
/// holds the work done, can be continued. Refusals before the run (a key's daily budget) are
/// never task outcomes, so they stay errors.
pub fn cut_short(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MaxTurnsExceeded | ErrorCode::BudgetExceeded
    )
}

/// [`cut_short`] for a finished task.
pub fn task_cut_short(task: &Task) -> bool {
    task.status != TaskStatus::Completed && task.error.as_ref().is_some_and(|e| cut_short(e.code))
}

/// [`cut_short`] for a native error body (`code` inside).
pub fn cut_short_body(native: &Value) -> bool {
    native_code(native).is_some_and(cut_short)
}

fn native_code(native: &Value) -> Option<ErrorCode> {
    serde_json::from_value(native.get("code")?.clone()).ok()
}

/// What a compatible answer makes of one event of a run's log.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// Text as the CLI produced it. `after_tool`: a tool ran since the previous text, so this
    /// text starts a new paragraph (or block); never true for the first text.
    Text { text: String, after_tool: bool },
    /// The run completed: the native answer (`result`, `usage`, ...).
    Done(Value),
    /// The run failed: the native error body and the status it has.
    Failed(StatusCode, Value),
}

impl Piece {
    /// A log always closes with its final event; if one ever did not, the answer says so
    /// rather than end as if it were complete.
    pub fn ended_without_answer() -> Piece {
        Piece::Failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "The run ended without an answer.", "code": "internal_error"}),
        )
    }
}

/// Reads a run's events (`init`, `text`, `tool_use`, `tool_result`, then `result` or `error`)
/// into [`Piece`]s. Tool calls are not relayed: the compatible APIs have no place for tools the
/// server ran, only for the text around them.
#[derive(Debug, Default)]
pub struct RunReader {
    wrote_text: bool,
    tool_since_text: bool,
}

impl RunReader {
    pub fn take(&mut self, e: &TaskEvent) -> Option<Piece> {
        match e.kind {
            "text" => {
                let text = e.value().get("text")?.as_str()?.to_string();
                if text.is_empty() {
                    return None;
                }
                let after_tool = self.tool_since_text && self.wrote_text;
                self.tool_since_text = false;
                self.wrote_text = true;
                Some(Piece::Text { text, after_tool })
            }
            "tool_use" | "tool_result" => {
                self.tool_since_text = true;
                None
            }
            "result" => Some(Piece::Done(e.value())),
            "error" => {
                let native = e.value();
                let status = native_code(&native)
                    .and_then(|c| StatusCode::from_u16(c.http_status()).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Some(Piece::Failed(status, native))
            }
            // `init`: the answers announce themselves.
            _ => None,
        }
    }
}

/// The `usage` of a native answer (the final `result` event), zero when absent.
pub fn usage_of(native: &Value) -> Usage {
    native
        .get("usage")
        .cloned()
        .and_then(|u| serde_json::from_value(u).ok())
        .unwrap_or_default()
}

/// The usage of a finished run, from its record: a run [`cut_short`] reports it only there
/// (its final event is an error body). Zero if it cannot be read: the answer still ends well.
pub async fn stored_usage(store: &dyn Store, task_id: TaskId) -> Usage {
    match store.get_task(task_id).await {
        Ok(Some(task)) => task.report.map(|r| r.usage).unwrap_or_default(),
        Ok(None) => Usage::default(),
        Err(e) => {
            log::warn!(task_id:% = task_id, error:% = e; "no usage for a run cut short");
            Usage::default()
        }
    }
}

/// The text a finished run wrote, one entry per stretch of text between tool calls, read from
/// its event log: what a run [`cut_short`] leaves, which has no final answer of its own. Empty
/// when the log is gone (only its final event is rebuilt then).
pub async fn written_text(mut log: EventSource) -> Vec<String> {
    let mut reader = RunReader::default();
    let mut blocks: Vec<String> = Vec::new();
    let mut after = 0;
    while let Some(batch) = log.next_after(after).await {
        for e in batch {
            after = e.id;
            match reader.take(&e) {
                Some(Piece::Text { text, after_tool }) => match blocks.last_mut() {
                    Some(last) if !after_tool => last.push_str(&text),
                    _ => blocks.push(text),
                },
                Some(Piece::Done(_) | Piece::Failed(..)) => return blocks,
                None => {}
            }
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, text: &str, field: &str) -> Turn {
        Turn {
            role,
            text: text.into(),
            field: field.into(),
        }
    }

    #[test]
    fn content_is_a_string_or_text_parts() {
        let text = ["text"];
        assert_eq!(
            content_text(&json!("hi"), "c", &text).ok(),
            Some("hi".into())
        );
        let parts = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(&parts, "c", &text).ok(), Some("a\nb".into()));
        let field = |v: Value| {
            content_text(&v, "m[0].content", &text)
                .expect_err("refused")
                .details
                .and_then(|d| d["field"].as_str().map(str::to_string))
        };
        assert_eq!(field(json!(3)).as_deref(), Some("m[0].content"));
        let image = json!([{"type": "text", "text": "a"}, {"type": "image", "source": {}}]);
        assert_eq!(field(image).as_deref(), Some("m[0].content[1]"));
        assert_eq!(
            field(json!([{"text": "a"}])).as_deref(),
            Some("m[0].content[0]")
        );
        assert_eq!(
            field(json!([{"type": "text"}])).as_deref(),
            Some("m[0].content[0]")
        );
        let e = content_text(&json!([{"type": "tool_use"}]), "c", &text).expect_err("tool");
        assert!(e.message.contains("`tool_use`"), "{}", e.message);
    }

    #[test]
    fn the_last_user_turn_is_the_prompt_and_history_folds_unless_continuing() {
        let turns = [
            turn(Role::System, "Be brief.", "system"),
            turn(Role::User, "one", "m[0].content"),
            turn(Role::Assistant, "two", "m[1].content"),
            turn(Role::System, " ", "m[2].content"),
            turn(Role::System, "English.", "m[3].content"),
            turn(Role::User, "three", "m[4].content"),
        ];
        let p = prompt_of(&turns, true, "m").expect("valid");
        assert_eq!(
            p.prompt,
            "<conversation_history>\n<user>\none\n</user>\n<assistant>\ntwo\n</assistant>\n</conversation_history>\n\nthree"
        );
        assert_eq!(p.system.as_deref(), Some("Be brief.\n\nEnglish."));
        let p = prompt_of(&turns, false, "m").expect("valid");
        assert_eq!(p.prompt, "three");
        let p = prompt_of(&turns[5..], true, "m").expect("valid");
        assert_eq!(
            p,
            Prompt {
                prompt: "three".into(),
                system: None
            }
        );
    }

    #[test]
    fn refusals_name_the_list_or_the_last_message() {
        let field = |turns: &[Turn]| {
            prompt_of(turns, true, "m")
                .expect_err("refused")
                .details
                .and_then(|d| d["field"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        assert_eq!(field(&[]), "m");
        assert_eq!(field(&[turn(Role::System, "s", "system")]), "m");
        let ends_with_assistant = [
            turn(Role::User, "a", "m[0].content"),
            turn(Role::Assistant, "b", "m[1].content"),
        ];
        assert_eq!(field(&ends_with_assistant), "m");
        assert_eq!(
            field(&[turn(Role::User, " \n", "m[0].content")]),
            "m[0].content"
        );
    }

    #[test]
    fn metadata_is_an_object_and_user_joins_it() {
        assert_eq!(task_metadata(None, None).ok(), Some(None));
        assert_eq!(
            task_metadata(Some(json!({"k": "v"})), Some("u".into())).ok(),
            Some(Some(json!({"k": "v", "user": "u"})))
        );
        assert!(task_metadata(Some(json!([1])), None).is_err());
    }

    fn event(id: u64, kind: &'static str, data: Value) -> TaskEvent {
        TaskEvent::new(id, kind, &data)
    }

    #[test]
    fn the_reader_relays_text_marks_text_after_tools_and_ends() {
        let mut r = RunReader::default();
        let pieces: Vec<Option<Piece>> = [
            event(1, "init", json!({})),
            event(2, "tool_use", json!({"id": "t0"})),
            event(3, "text", json!({"text": "a"})),
            event(4, "text", json!({"text": ""})),
            event(5, "text", json!({"text": "b"})),
            event(6, "tool_use", json!({"id": "t"})),
            event(7, "tool_result", json!({"tool_use_id": "t"})),
            event(8, "text", json!({"text": "c"})),
            event(
                9,
                "error",
                json!({"code": "max_turns_exceeded", "error": "x"}),
            ),
        ]
        .iter()
        .map(|e| r.take(e))
        .collect();
        let text = |t: &str, after_tool| {
            Some(Piece::Text {
                text: t.into(),
                after_tool,
            })
        };
        assert_eq!(
            pieces,
            [
                None,
                None,
                text("a", false),
                None,
                text("b", false),
                None,
                None,
                text("c", true),
                Some(Piece::Failed(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"code": "max_turns_exceeded", "error": "x"})
                )),
            ]
        );
        assert!(cut_short_body(&json!({"code": "budget_exceeded"})));
        assert!(!cut_short_body(&json!({"code": "cli_api_error"})));
        assert!(!cut_short_body(&json!({})));
        let done = r.take(&event(
            10,
            "result",
            json!({"usage": {"input_tokens": 3, "output_tokens": 4}}),
        ));
        let Some(Piece::Done(native)) = done else {
            panic!("done: {done:?}")
        };
        assert_eq!(usage_of(&native).output_tokens, 4);
        assert_eq!(usage_of(&json!({})), Usage::default());
    }
}
