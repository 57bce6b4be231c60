//! Reading the CLI's stdout: a line-bounded NDJSON reader and the stream-json parser.
//!
//! The parser is deliberately lenient: every field is optional, field order never matters,
//! and unknown types, subtypes and content blocks are dropped (the CLI adds new ones often).
//! No input makes it panic or fail the run; a line that is not JSON is reported as such so the
//! caller can count it, nothing more.

use std::fmt;
use std::io;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::CliEvent;
use crate::approval::PermissionRequest;
use crate::model::{RunReport, Usage};

// ------------------------------------------------------------------------------------------------
// The line reader

/// A line buffer above this capacity is released after its line, so one huge (but allowed)
/// line does not pin its memory for the rest of the run.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// Reads `\n`-terminated lines without ever holding more than `max_line_bytes` of one line.
///
/// * A longer line is dropped as it streams past (counted in [`skipped_lines`](Self::skipped_lines))
///   and reading resumes at the next newline.
/// * A trailing `\r` is removed (CRLF), and a final line without a newline is still returned.
/// * Blank lines are skipped.
///
/// [`next_line`](Self::next_line) is cancel-safe: its only await point is the buffered read,
/// and every piece of partial state lives in the struct, so it may be used in `select!`.
pub struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes until the next newline.
    skipping: bool,
    /// `line` holds a complete line that was handed out; cleared on the next call.
    ready: bool,
    eof: bool,
    skipped: u64,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        LineReader {
            inner: BufReader::new(inner),
            line: Vec::new(),
            max: max_line_bytes,
            skipping: false,
            ready: false,
            eof: false,
            skipped: 0,
        }
    }

    /// How many lines were longer than the limit and dropped.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped
    }

    /// The next non-blank line without its line ending, or `None` at end of input.
    pub async fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        if self.ready {
            self.ready = false;
            self.clear_line();
        }
        while !self.ready {
            if self.eof {
                return Ok(None);
            }
            self.read_step().await?;
        }
        Ok(Some(&self.line))
    }

    /// Consume one buffer's worth of input (up to and including a newline, if there is one).
    async fn read_step(&mut self) -> io::Result<()> {
        let avail = self.inner.fill_buf().await?;
        if avail.is_empty() {
            self.eof = true;
            if !self.skipping && !self.line.is_empty() {
                self.finish_line();
            }
            self.skipping = false;
            return Ok(());
        }
        let (take, consumed, complete) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, i + 1, true),
            None => (avail.len(), avail.len(), false),
        };
        if !self.skipping {
            // One extra byte of room for a `\r` that finish_line strips.
            if self.line.len() + take > self.max.saturating_add(1) {
                self.skipped += 1;
                self.skipping = true;
                self.line.clear();
            } else {
                reserve_bounded(&mut self.line, take, self.max.saturating_add(1));
                self.line.extend_from_slice(&avail[..take]);
            }
        }
        self.inner.consume(consumed);
        if complete {
            if self.skipping {
                // Resynchronised: the next byte starts a new line.
                self.skipping = false;
            } else {
                self.finish_line();
            }
        }
        Ok(())
    }

    /// A complete line is in `line`: strip `\r`, enforce the limit, hand it out if non-blank.
    fn finish_line(&mut self) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        if self.line.len() > self.max {
            self.skipped += 1;
            self.clear_line();
        } else if self.line.iter().all(u8::is_ascii_whitespace) {
            self.clear_line();
        } else {
            self.ready = true;
        }
    }

    fn clear_line(&mut self) {
        if self.line.capacity() > SHRINK_ABOVE {
            self.line = Vec::new();
        } else {
            self.line.clear();
        }
    }
}

/// Grow `buf` for `extra` more bytes without its capacity ever exceeding `cap` (plain `Vec`
/// growth doubles, which could hold twice the limit).
fn reserve_bounded(buf: &mut Vec<u8>, extra: usize, cap: usize) {
    let needed = buf.len() + extra;
    if needed > buf.capacity() {
        let target = needed
            .max(buf.capacity().saturating_mul(2))
            .min(cap.max(needed));
        buf.reserve_exact(target - buf.len());
    }
}

// ------------------------------------------------------------------------------------------------
// The parser

/// The line was not JSON at all (a stray log line, a truncated write). Ignorable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

/// One stdout line as the fields we use, all optional and loosely typed so that a surprising
/// value degrades to "absent" instead of failing the line.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLine {
    #[serde(rename = "type")]
    kind: Option<Value>,
    subtype: Option<Value>,
    session_id: Option<Value>,
    model: Option<Value>,
    claude_code_version: Option<Value>,
    message: Option<Value>,
    event: Option<Value>,
    result: Option<Value>,
    total_cost_usd: Option<Value>,
    usage: Option<Value>,
    num_turns: Option<Value>,
    duration_ms: Option<Value>,
    permission_denials: Option<Value>,
    is_error: Option<Value>,
    api_error_status: Option<Value>,
    errors: Option<Value>,
    /// `control_request` lines (`--permission-prompt-tool=stdio`).
    request_id: Option<Value>,
    request: Option<Value>,
    /// Only the first key matters (the main model), and its *order* is information that a
    /// `serde_json::Map` (sorted) would lose, hence a dedicated type.
    #[serde(rename = "modelUsage")]
    model_usage: FirstKey,
}

/// The first key of a JSON object, in document order; `None` for anything else.
#[derive(Default)]
struct FirstKey(Option<String>);

impl<'de> Deserialize<'de> for FirstKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FirstKeyVisitor)
    }
}

struct FirstKeyVisitor;

impl<'de> Visitor<'de> for FirstKeyVisitor {
    type Value = FirstKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FirstKey, A::Error> {
        let first = map.next_key::<String>()?;
        if first.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(FirstKey(first))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstKey, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FirstKey(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<FirstKey, E> {
        Ok(FirstKey(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<FirstKey, E> {
        Ok(FirstKey(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<FirstKey, E> {
        Ok(FirstKey(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<FirstKey, E> {
        Ok(FirstKey(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<FirstKey, E> {
        Ok(FirstKey(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<FirstKey, E> {
        Ok(FirstKey(None))
    }
}

/// Parse one line. `Ok(None)` for JSON that is not an event we use (unknown types and
/// subtypes, thinking blocks, `api_retry`, `status`, ...). An assistant or user line with
/// several content blocks yields its first event; see [`parse_events`] for all of them.
pub fn parse_line(line: &[u8]) -> Option<CliEvent> {
    parse_events(line).ok()?.into_iter().next()
}

/// Parse one line into every event it carries (in order; usually zero or one).
pub fn parse_events(line: &[u8]) -> Result<Vec<CliEvent>, NotJson> {
    match serde_json::from_slice::<RawLine>(line) {
        Ok(raw) => Ok(events_of(raw)),
        // Valid JSON of another shape (an array, a scalar, duplicate keys): not an event.
        Err(_) if serde_json::from_slice::<IgnoredAny>(line).is_ok() => Ok(Vec::new()),
        Err(_) => Err(NotJson),
    }
}

/// The `errors[]` strings of a result line (e.g. `No conversation found with session ID: …`
/// for `error_during_execution`); empty for anything else. `RunReport` has no field for them,
/// so the runner reads them here for the error message.
pub fn result_errors(line: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<RawLine>(line) {
        Ok(raw) if str_of(&raw.kind) == Some("result") => strings_of(raw.errors.as_ref()),
        _ => Vec::new(),
    }
}

/// The report in the output of `--output-format json`: a single result object, or (with
/// `--verbose`) an array of messages ending with it. Also accepts stream-json output (one
/// object per line), so every recorded run can be read the same way. The init message, when
/// present, fills the session id, model and CLI version the result lacks.
pub fn parse_json_output(stdout: &str) -> Option<RunReport> {
    let trimmed = stdout.trim();
    let raws: Vec<RawLine> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).ok()?
    } else if let Ok(one) = serde_json::from_str::<RawLine>(trimmed) {
        vec![one]
    } else {
        trimmed
            .lines()
            .filter_map(|l| serde_json::from_str::<RawLine>(l).ok())
            .collect()
    };
    let mut init = None;
    let mut report = None;
    for event in raws.into_iter().flat_map(events_of) {
        match event {
            CliEvent::Init { .. } => init = Some(event),
            CliEvent::Result(r) => report = Some(*r),
            _ => {}
        }
    }
    let mut report = report?;
    if let Some(init) = &init {
        fill_from_init(&mut report, init);
    }
    Some(report)
}

/// Complete a report with what only the init line says: the CLI version always, the session
/// id and model when the result line lacked them.
pub fn fill_from_init(report: &mut RunReport, init: &CliEvent) {
    if let CliEvent::Init {
        session_id,
        model,
        cli_version,
    } = init
    {
        if report.session_id.is_none() {
            report.session_id.clone_from(session_id);
        }
        if report.resolved_model.is_none() {
            report.resolved_model.clone_from(model);
        }
        if report.cli_version.is_none() {
            report.cli_version.clone_from(cli_version);
        }
    }
}

fn events_of(raw: RawLine) -> Vec<CliEvent> {
    match str_of(&raw.kind) {
        Some("system") if str_of(&raw.subtype) == Some("init") => vec![CliEvent::Init {
            session_id: string_of(&raw.session_id),
            model: string_of(&raw.model),
            cli_version: string_of(&raw.claude_code_version),
        }],
        Some("stream_event") => text_delta(raw.event.as_ref()).into_iter().collect(),
        Some("assistant") => assistant_events(raw.message.as_ref()),
        Some("user") => tool_results(raw.message.as_ref()),
        Some("result") => vec![CliEvent::Result(Box::new(report_of(raw)))],
        Some("control_request") => permission_request(&raw).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// A `control_request` of subtype `can_use_tool`: the CLI waits for its answer on stdin. Other
/// subtypes (none observed from the CLI's side) are dropped.
fn permission_request(raw: &RawLine) -> Option<CliEvent> {
    let request = raw.request.as_ref()?;
    if request.get("subtype")?.as_str()? != "can_use_tool" {
        return None;
    }
    Some(CliEvent::PermissionRequest(PermissionRequest {
        request_id: string_of(&raw.request_id)?,
        tool_name: request
            .get("tool_name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        input: request.get("input").cloned().unwrap_or(Value::Null),
        description: request
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
    }))
}

/// `content_block_delta` / `text_delta` only; every other raw API event is dropped.
fn text_delta(event: Option<&Value>) -> Option<CliEvent> {
    let event = event?;
    if event.get("type")?.as_str()? != "content_block_delta" {
        return None;
    }
    let delta = event.get("delta")?;
    if delta.get("type")?.as_str()? != "text_delta" {
        return None;
    }
    let text = delta.get("text")?.as_str()?.to_string();
    Some(CliEvent::TextDelta { text })
}

/// The content blocks of a message, whether an array of blocks or (older/replayed lines) a
/// bare string, which reads as one text block.
fn blocks(message: Option<&Value>) -> Vec<Value> {
    match message.and_then(|m| m.get("content")) {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => vec![serde_json::json!({"type": "text", "text": s})],
        _ => Vec::new(),
    }
}

fn assistant_events(message: Option<&Value>) -> Vec<CliEvent> {
    blocks(message)
        .into_iter()
        .filter_map(|b| match b.get("type").and_then(Value::as_str) {
            Some("text") => Some(CliEvent::AssistantText {
                text: b.get("text")?.as_str()?.to_string(),
            }),
            Some("tool_use") => Some(CliEvent::ToolUse {
                id: b.get("id")?.as_str()?.to_string(),
                name: b.get("name")?.as_str()?.to_string(),
                input: b.get("input").cloned().unwrap_or(Value::Null),
            }),
            // thinking, redacted_thinking, server tool blocks, ...: not for clients.
            _ => None,
        })
        .collect()
}

/// Tool results from a `user` line; the user's own text (replayed prompts) is not an event.
fn tool_results(message: Option<&Value>) -> Vec<CliEvent> {
    // A bare-string content is the user's prompt, never a tool result.
    if matches!(
        message.and_then(|m| m.get("content")),
        Some(Value::String(_))
    ) {
        return Vec::new();
    }
    blocks(message)
        .into_iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .filter_map(|b| {
            Some(CliEvent::ToolResult {
                tool_use_id: b.get("tool_use_id")?.as_str()?.to_string(),
                content: b.get("content").cloned().unwrap_or(Value::Null),
                is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect()
}

fn report_of(raw: RawLine) -> RunReport {
    RunReport {
        result: string_of(&raw.result),
        session_id: string_of(&raw.session_id),
        reported_cost_usd: cost_of(raw.total_cost_usd.as_ref()),
        usage: usage_of(raw.usage.as_ref()),
        num_turns: u64_of(raw.num_turns.as_ref()).map_or(0, saturate_u32),
        duration_ms: u64_of(raw.duration_ms.as_ref()).unwrap_or(0),
        permission_denials: match raw.permission_denials {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        resolved_model: raw.model_usage.0,
        subtype: string_of(&raw.subtype),
        is_error: raw
            .is_error
            .as_ref()
            .and_then(Value::as_bool)
            .unwrap_or(false),
        api_error_status: u64_of(raw.api_error_status.as_ref()).and_then(|s| u16::try_from(s).ok()),
        cli_version: None,
    }
}

/// A cost is a finite, non-negative number; anything else counts as zero rather than
/// corrupting the accounting.
fn cost_of(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0)
        .unwrap_or(0.0)
}

fn usage_of(v: Option<&Value>) -> Usage {
    let field = |name: &str| u64_of(v.and_then(|u| u.get(name))).unwrap_or(0);
    Usage {
        input_tokens: field("input_tokens"),
        output_tokens: field("output_tokens"),
        cache_creation_input_tokens: field("cache_creation_input_tokens"),
        cache_read_input_tokens: field("cache_read_input_tokens"),
    }
}

fn saturate_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A non-negative integer (also accepted when written as a whole float, e.g. `3.0`).
fn u64_of(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as u64)
    })
}

fn str_of(v: &Option<Value>) -> Option<&str> {
    v.as_ref().and_then(Value::as_str)
}

fn string_of(v: &Option<Value>) -> Option<String> {
    str_of(v).map(str::to_string)
}

fn strings_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
