//! The control protocol of `--input-format=stream-json --permission-prompt-tool=stdio`
//! (docs/claude-cli.md, "Permission prompts over stdin", observed on 2.1.197 and 2.1.332):
//! * `control_request` / `initialize` on stdin is answered with a `control_response` at once;
//! * a tool call that needs permission is written as a `control_request` / `can_use_tool` with a
//!   fresh `request_id`, and nothing else is written until stdin brings the `control_response`
//!   for that id: `behavior` `allow` (with `updatedInput`) runs the tool, `deny` (with
//!   `message`) makes that message the tool's error result and the run goes on.
//!
//! Where the observation says nothing, the fake chooses: other lines that arrive during the wait
//! (a further user turn) are kept for after the turn; a response with an unknown `request_id`
//! is ignored; stdin closing during the wait ends the run with exit 1 and a line on stderr.

use serde_json::Value;

use crate::json::J;
use crate::messages::new_uuid;
use crate::{calllog, output, stdin};

/// What the service answered to one `can_use_tool` request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Run the tool with this input (the request's own input when `updatedInput` is absent).
    Allow {
        input: Value,
    },
    Deny {
        message: String,
    },
}

/// Every answer received, for the call log (`permission_answers`).
static ANSWERS: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());

/// Answers a `control_request` line read between turns. Returns `false` when `line` is not one.
pub fn handle_request(line: &Value) -> bool {
    if line.get("type").and_then(Value::as_str) != Some("control_request") {
        return false;
    }
    let request_id = line.get("request_id").and_then(Value::as_str).unwrap_or("");
    let subtype = line
        .get("request")
        .and_then(|r| r.get("subtype"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let response = match subtype {
        "initialize" => obj! {
            "subtype" => "success",
            "request_id" => request_id,
            "response" => obj! {
                "commands" => J::Arr(vec![]),
                "output_style" => "default",
                "available_output_styles" => vec!["default".to_string()],
                "models" => J::Arr(vec![]),
                "account" => obj! {},
            },
        },
        other => obj! {
            "subtype" => "error",
            "request_id" => request_id,
            "error" => format!("Unsupported control request subtype: {other}"),
        },
    };
    output::emit(obj! {"type" => "control_response", "response" => response});
    true
}

/// Asks for permission to run `tool_name` with `input` and waits for the answer. `None`: stdin
/// closed before it came.
pub fn ask(tool_name: &str, input: &J, description: Option<&str>) -> Option<Answer> {
    let request_id = new_uuid();
    let mut request = obj! {
        "subtype" => "can_use_tool",
        "tool_name" => tool_name,
        "input" => input.clone(),
    };
    if let Some(d) = description {
        request.set("description", d);
    }
    request.set(
        "permission_suggestions",
        J::Arr(vec![obj! {
            "type" => "addRules",
            "rules" => J::Arr(vec![obj! {"toolName" => tool_name}]),
            "behavior" => "allow",
            "destination" => "session",
        }]),
    );
    output::emit(obj! {
        "type" => "control_request",
        "request_id" => request_id.as_str(),
        "request" => request,
    });
    calllog::event(
        "can_use_tool",
        serde_json::json!({"request_id": request_id}),
    );
    loop {
        let line = stdin::read_stdin_line()?;
        let value: Value = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(_) => {
                if !line.trim().is_empty() {
                    stdin::defer(line);
                }
                continue;
            }
        };
        if value.get("type").and_then(Value::as_str) != Some("control_response") {
            stdin::defer(line);
            continue;
        }
        let Some(response) = value.get("response") else {
            continue;
        };
        if response.get("request_id").and_then(Value::as_str) != Some(request_id.as_str()) {
            continue;
        }
        record(response);
        let body = response.get("response").cloned().unwrap_or(Value::Null);
        let answer = match body.get("behavior").and_then(Value::as_str) {
            Some("allow") => Answer::Allow {
                input: body
                    .get("updatedInput")
                    .cloned()
                    .unwrap_or_else(|| serde_json::to_value(input).unwrap_or(Value::Null)),
            },
            _ => Answer::Deny {
                message: body
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("Permission denied")
                    .to_string(),
            },
        };
        return Some(answer);
    }
}

fn record(response: &Value) {
    let mut all = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    all.push(response.clone());
    calllog::set("permission_answers", Value::Array(all.clone()));
}
