//! A mock of the Anthropic Messages API, in-process on 127.0.0.1 port 0, to drive the REAL
//! `claude` CLI without the network (`ANTHROPIC_BASE_URL=mock.base_url()`).
//!
//! ```ignore
//! let mock = MockAnthropic::start().await;
//! // ... run the CLI with ANTHROPIC_BASE_URL = mock.base_url() ...
//! let seen = mock.message_requests();
//! assert_eq!(seen[0].turns(), 1);
//! assert_eq!(seen[0].first_user_text(), Some("hello"));
//! ```
//!
//! It answers `HEAD /` and `GET /` with 200, `POST /v1/messages` (any query, e.g. `?beta=true`)
//! with Anthropic's SSE events when `stream` is true and with one JSON message otherwise,
//! `POST /v1/messages/count_tokens` and `GET /v1/models` simply, anything else 404.
//!
//! The reply is chosen by markers (whole words) in the LAST user text of the conversation: the
//! text of the last user message that carries text, with `<system-reminder>` blocks removed
//! (tool_result-only messages do not count, so a marker keeps acting after a tool call):
//!
//! | marker | reply |
//! |---|---|
//! | (none) | text: `mock reply: turns=N first="<first user text>"` |
//! | `TOOL` | a Bash tool_use ([`TOOL_COMMAND`]); after its tool_result, text quoting the result |
//! | `TOOLW` | the same with a writing command ([`WRITE_COMMAND`], needs permission) |
//! | `TOOLSLEEP` | the same with a long command ([`SLEEP_COMMAND`], to have a tool subprocess) |
//! | `TOOLLOOP` | always a Bash tool_use (for `--max-turns`) |
//! | `ERR400` `ERR401` `ERR500` `ERR529` | that HTTP status with Anthropic's error JSON |
//! | `SLOW` | [`SLOW_CHUNK_DELAY`] between streamed events |
//! | `HANG` | accept and never answer, until the client drops the connection |
//! | `BIG` | huge usage ([`BIG_INPUT_TOKENS`], [`BIG_OUTPUT_TOKENS`]) so a budget trips |
//!
//! `N` counts the user messages that carry text (a session's turns); a resumed session shows
//! its history through it and through the first user text.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

/// Pause between streamed events with `SLOW`.
pub const SLOW_CHUNK_DELAY: Duration = Duration::from_millis(400);
/// Usage reported for an ordinary reply.
pub const INPUT_TOKENS: u64 = 25;
pub const OUTPUT_TOKENS: u64 = 12;
/// Usage reported with `BIG` (about 2 USD with any model).
pub const BIG_INPUT_TOKENS: u64 = 200_000;
pub const BIG_OUTPUT_TOKENS: u64 = 50_000;
/// The Bash commands of the tool markers.
pub const TOOL_COMMAND: &str = "echo tool-ran";
pub const WRITE_COMMAND: &str = "mkdir x";
pub const SLEEP_COMMAND: &str = "sleep 30";

/// One request the mock received.
#[derive(Clone, Debug, Default)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    /// The text of each user message that carries text, `<system-reminder>` blocks removed,
    /// trimmed, in conversation order (tool_result-only messages are left out).
    pub user_texts: Vec<String>,
    /// The text of every tool_result block, in order.
    pub tool_results: Vec<String>,
    /// The top-level `system` prompt (its text blocks joined), when there is one.
    pub system: Option<String>,
    pub api_key: Option<String>,
    /// What the mock answered: `text`, `tool_use`, `error 500`, `hang`, ...
    pub reply: String,
}

impl SeenRequest {
    /// User turns in the conversation (user messages that carry text).
    pub fn turns(&self) -> usize {
        self.user_texts.len()
    }

    pub fn first_user_text(&self) -> Option<&str> {
        self.user_texts.first().map(String::as_str)
    }

    pub fn last_user_text(&self) -> Option<&str> {
        self.user_texts.last().map(String::as_str)
    }

    /// A Messages API call (`POST /v1/messages`, not `count_tokens`).
    pub fn is_message(&self) -> bool {
        self.method == "POST"
            && (self.path == "/v1/messages" || self.path.starts_with("/v1/messages?"))
    }
}

struct Shared {
    seen: Mutex<Vec<SeenRequest>>,
    hanging: AtomicUsize,
    next_id: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Shared {
    fn record(&self, req: SeenRequest) {
        self.seen
            .lock()
            .expect("the mock's log lock is never poisoned")
            .push(req);
    }

    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}_mock_{n:016x}")
    }
}

/// The running mock; it stops when dropped.
pub struct MockAnthropic {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl MockAnthropic {
    pub async fn start() -> MockAnthropic {
        let (closing, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            hanging: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closing,
        });
        let router = Router::new()
            .route("/", get(root))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/models", get(models))
            .fallback(any(not_found))
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the mock binds 127.0.0.1:0");
        let addr = listener.local_addr().expect("the mock's address");
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("mock Anthropic API stopped: {e}");
            }
        });
        MockAnthropic {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order (probes included).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared
            .seen
            .lock()
            .expect("the mock's log lock is never poisoned")
            .clone()
    }

    /// The Messages API calls so far (`POST /v1/messages`), in arrival order.
    pub fn message_requests(&self) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(SeenRequest::is_message)
            .collect()
    }

    /// Requests held open by `HANG` right now (they end when the client drops them).
    pub fn hanging(&self) -> usize {
        self.shared.hanging.load(Ordering::SeqCst)
    }
}

impl Drop for MockAnthropic {
    fn drop(&mut self) {
        // Release the hanging requests, then stop accepting.
        self.shared.closing.send_replace(true);
        self.server.abort();
    }
}

async fn root(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> StatusCode {
    shared.record(SeenRequest {
        method: method.to_string(),
        path: uri.to_string(),
        reply: "ok".into(),
        ..SeenRequest::default()
    });
    StatusCode::OK
}

async fn models(State(shared): State<Arc<Shared>>, uri: Uri) -> Json<Value> {
    shared.record(SeenRequest {
        method: "GET".into(),
        path: uri.to_string(),
        reply: "models".into(),
        ..SeenRequest::default()
    });
    Json(json!({"data": [], "has_more": false, "first_id": null, "last_id": null}))
}

async fn count_tokens(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let mut seen = parse_request(&body, &headers);
    seen.method = "POST".into();
    seen.path = uri.to_string();
    seen.reply = "count_tokens".into();
    shared.record(seen);
    Json(json!({"input_tokens": INPUT_TOKENS}))
}

async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    shared.record(SeenRequest {
        method: method.to_string(),
        path: uri.to_string(),
        reply: "error 404".into(),
        ..SeenRequest::default()
    });
    api_error(&shared, 404)
}

/// `POST /v1/messages`.
async fn messages(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut seen = parse_request(&body, &headers);
    seen.method = "POST".into();
    seen.path = uri.to_string();
    let last_text = seen.last_user_text().unwrap_or("").to_string();
    let markers = markers_in(&last_text);
    let has = |m: &str| markers.contains(m);
    let after_tool = last_user_message_is_tool_result(&req);

    let error = ["ERR400", "ERR401", "ERR500", "ERR529"]
        .into_iter()
        .find(|m| has(m))
        .and_then(|m| m[3..].parse::<u16>().ok());
    if let Some(status) = error {
        seen.reply = format!("error {status}");
        shared.record(seen);
        return api_error(&shared, status);
    }
    if has("HANG") {
        seen.reply = "hang".into();
        shared.record(seen);
        return hang(&shared).await;
    }

    let tool_command = if has("TOOLLOOP") {
        Some(TOOL_COMMAND)
    } else if after_tool {
        None
    } else if has("TOOLW") {
        Some(WRITE_COMMAND)
    } else if has("TOOLSLEEP") {
        Some(SLEEP_COMMAND)
    } else if has("TOOL") {
        Some(TOOL_COMMAND)
    } else {
        None
    };
    let (blocks, stop_reason) = match tool_command {
        Some(command) => (
            vec![
                json!({"type": "text", "text": "I'll run a command."}),
                json!({"type": "tool_use", "id": shared.id("toolu"), "name": "Bash",
                       "input": {"command": command, "description": "Run a command"}}),
            ],
            "tool_use",
        ),
        None if after_tool => {
            let result = seen.tool_results.last().cloned().unwrap_or_default();
            (
                vec![json!({"type": "text", "text": format!("tool said: {result}")})],
                "end_turn",
            )
        }
        None => {
            let first = seen.first_user_text().unwrap_or("");
            let text = format!(
                "mock reply: turns={} first=\"{}\"",
                seen.turns(),
                clip(first, 100)
            );
            (vec![json!({"type": "text", "text": text})], "end_turn")
        }
    };
    seen.reply = if tool_command.is_some() {
        "tool_use".into()
    } else {
        "text".into()
    };
    let stream = seen.stream;
    let model = seen.model.clone().unwrap_or_else(|| "claude-mock".into());
    shared.record(seen);

    let big = has("BIG");
    let (input_tokens, output_tokens) = if big {
        (BIG_INPUT_TOKENS, BIG_OUTPUT_TOKENS)
    } else {
        (INPUT_TOKENS, OUTPUT_TOKENS)
    };
    let usage = |output: u64| {
        json!({"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 0, "output_tokens": output})
    };
    let msg_id = shared.id("msg");
    if !stream {
        let body = json!({"id": msg_id, "type": "message", "role": "assistant", "model": model,
                          "content": blocks, "stop_reason": stop_reason, "stop_sequence": null,
                          "usage": usage(output_tokens)});
        return ([("request-id", shared.id("req"))], Json(body)).into_response();
    }

    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": msg_id, "type": "message",
                   "role": "assistant", "model": model, "content": [], "stop_reason": null,
                   "stop_sequence": null, "usage": usage(1)}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for (index, block) in blocks.iter().enumerate() {
        if block["type"] == "text" {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "text", "text": ""}}),
            ));
            let text = block["text"].as_str().unwrap_or("");
            for part in halves(text) {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": part}}),
                ));
            }
        } else {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": block["id"],
                                         "name": block["name"], "input": {}}}),
            ));
            let input = block["input"].to_string();
            for part in halves(&input) {
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));

    let delay = if has("SLOW") {
        SLOW_CHUNK_DELAY
    } else {
        Duration::ZERO
    };
    let chunks = events
        .into_iter()
        .enumerate()
        .map(|(i, (name, data))| (i, Bytes::from(format!("event: {name}\ndata: {data}\n\n"))));
    let body = futures_util::stream::iter(chunks).then(move |(i, chunk)| async move {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(chunk)
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        [("request-id", shared.id("req"))],
        Body::from_stream(body),
    )
        .into_response()
}

/// Hold the request until the client goes away (hyper then drops this future) or the mock
/// stops; counted in [`MockAnthropic::hanging`] meanwhile.
async fn hang(shared: &Arc<Shared>) -> Response {
    struct Held<'a>(&'a AtomicUsize);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    shared.hanging.fetch_add(1, Ordering::SeqCst);
    let _held = Held(&shared.hanging);
    let mut closing = shared.closing.subscribe();
    let _ = closing.wait_for(|c| *c).await;
    api_error(shared, 529)
}

/// Anthropic's error answer for `status`.
fn api_error(shared: &Shared, status: u16) -> Response {
    let (kind, message) = match status {
        400 => ("invalid_request_error", "mock bad request"),
        401 => ("authentication_error", "invalid x-api-key"),
        404 => ("not_found_error", "mock: no such path"),
        529 => ("overloaded_error", "Overloaded"),
        _ => ("api_error", "Internal server error"),
    };
    let request_id = shared.id("req");
    let body = json!({"type": "error", "error": {"type": kind, "message": message},
                      "request_id": request_id});
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("request-id", request_id)], Json(body)).into_response()
}

/// What a request body says (method, path and reply are filled in by the caller).
fn parse_request(body: &[u8], headers: &HeaderMap) -> SeenRequest {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut seen = SeenRequest {
        model: req["model"].as_str().map(String::from),
        stream: req["stream"].as_bool().unwrap_or(false),
        api_key: headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        system: match &req["system"] {
            Value::Null => None,
            system => Some(texts_of(system).join("\n")),
        },
        ..SeenRequest::default()
    };
    for message in req["messages"].as_array().into_iter().flatten() {
        if message["role"] != "user" {
            continue;
        }
        let content = &message["content"];
        let text = texts_of(content)
            .iter()
            .map(|t| strip_reminders(t))
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if !text.is_empty() {
            seen.user_texts.push(text);
        }
        for block in content.as_array().into_iter().flatten() {
            if block["type"] == "tool_result" {
                seen.tool_results
                    .push(texts_of(&block["content"]).join("\n"));
            }
        }
    }
    seen
}

/// The texts of a content value: a string, or the `text` blocks of an array.
fn texts_of(content: &Value) -> Vec<String> {
    match content {
        Value::String(s) => vec![s.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// The text without its `<system-reminder>…</system-reminder>` blocks, trimmed.
pub fn strip_reminders(text: &str) -> String {
    const OPEN: &str = "<system-reminder>";
    const CLOSE: &str = "</system-reminder>";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        rest = match rest[start..].find(CLOSE) {
            Some(end) => &rest[start + end + CLOSE.len()..],
            None => "",
        };
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// The whole words of `text` (ASCII letters and digits), where markers are looked for.
fn markers_in(text: &str) -> HashSet<&str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether the conversation's last user message holds a tool_result (the tool was run).
fn last_user_message_is_tool_result(req: &Value) -> bool {
    req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

/// At most `max` characters of `s`, with `…` when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// `s` in two parts (split on a character boundary), as the API streams in pieces.
fn halves(s: &str) -> [&str; 2] {
    let mut mid = s.len() / 2;
    while !s.is_char_boundary(mid) {
        mid += 1;
    }
    [&s[..mid], &s[mid..]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: Value) -> Value {
        json!({"role": "user", "content": content})
    }

    async fn post(mock: &MockAnthropic, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/v1/messages?beta=true", mock.base_url()))
            .header("x-api-key", "sk-mock")
            .json(&body)
            .send()
            .await
            .expect("POST to the mock")
    }

    /// `(event name, data)` of each SSE event.
    fn events(sse: &str) -> Vec<(String, Value)> {
        sse.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let name = e
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .expect("an event line");
                let data = e
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("a data line");
                (
                    name.to_string(),
                    serde_json::from_str(data).expect("data is JSON"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn mock_probe_and_default_stream_count_turns_without_reminders_or_tool_results() {
        let mock = MockAnthropic::start().await;
        let client = reqwest::Client::new();
        let head = client.head(mock.base_url()).send().await.expect("HEAD /");
        assert_eq!(head.status(), 200);

        let body = json!({"model": "m1", "stream": true, "system": [{"type": "text", "text": "sys"}],
        "messages": [
            user(json!([{"type": "text", "text": "<system-reminder>\nctx\n</system-reminder>"},
                        {"type": "text", "text": "first ALPHA\n"}])),
            {"role": "system", "content": "not a user"},
            {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
            user(json!([{"type": "tool_result", "tool_use_id": "t", "content": "out"}])),
            {"role": "assistant", "content": "ok"},
            user(json!("second")),
        ]});
        let resp = post(&mock, body).await;
        assert_eq!(resp.status(), 200);
        let evs = events(&resp.text().await.expect("SSE body"));
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let text: String = evs
            .iter()
            .filter_map(|(_, d)| d["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "mock reply: turns=2 first=\"first ALPHA\"");
        assert_eq!(evs[6].1["delta"]["stop_reason"], "end_turn");

        let seen = mock.message_requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].path, "/v1/messages?beta=true");
        assert_eq!(seen[0].user_texts, ["first ALPHA", "second"]);
        assert_eq!(seen[0].tool_results, ["out"]);
        assert_eq!(seen[0].system.as_deref(), Some("sys"));
        assert_eq!(seen[0].api_key.as_deref(), Some("sk-mock"));
        assert_eq!(mock.requests()[0].method, "HEAD");
    }

    #[tokio::test]
    async fn mock_tool_then_quote_errors_and_non_streaming() {
        let mock = MockAnthropic::start().await;
        let resp = post(
            &mock,
            json!({"stream": false, "messages": [user(json!("run TOOL please"))]}),
        )
        .await;
        let msg: Value = resp.json().await.expect("JSON message");
        assert_eq!(msg["stop_reason"], "tool_use", "{msg}");
        assert_eq!(msg["content"][1]["input"]["command"], TOOL_COMMAND);

        let resp = post(
            &mock,
            json!({"stream": false, "messages": [
                user(json!("run TOOL please")),
                {"role": "assistant", "content": [msg["content"][1].clone()]},
                user(json!([{"type": "tool_result", "tool_use_id": "t",
                             "content": [{"type": "text", "text": "tool-ran"}]}])),
            ]}),
        )
        .await;
        let msg: Value = resp.json().await.expect("JSON message");
        assert_eq!(msg["content"][0]["text"], "tool said: tool-ran", "{msg}");

        // TOOLW is not TOOL: markers are whole words.
        let resp = post(
            &mock,
            json!({"stream": false, "messages": [user(json!("TOOLW"))]}),
        )
        .await;
        let msg: Value = resp.json().await.expect("JSON message");
        assert_eq!(msg["content"][1]["input"]["command"], WRITE_COMMAND);

        let resp = post(
            &mock,
            json!({"stream": true, "messages": [user(json!("x ERR529"))]}),
        )
        .await;
        assert_eq!(resp.status(), 529);
        let err: Value = resp.json().await.expect("error JSON");
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"]["type"], "overloaded_error");
        let replies: Vec<String> = mock.requests().into_iter().map(|r| r.reply).collect();
        assert_eq!(replies, ["tool_use", "text", "tool_use", "error 529"]);
    }
}
