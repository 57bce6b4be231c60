//! Tests of the line reader and the parser, over synthetic input and every recorded run.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/claude-cli");

// ---------------------------------------------------------------------------------------------
// Helpers

/// Produces `data` at most `chunk` bytes per read, to exercise every buffer boundary.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// `len` bytes of `x` then `tail`, generated on the fly (never held in memory).
struct HugeLine {
    left: usize,
    tail: &'static [u8],
}

impl AsyncRead for HugeLine {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left > 0 {
            let n = self.left.min(buf.remaining());
            buf.put_slice(&vec![b'x'; n]);
            self.left -= n;
        } else {
            let n = self.tail.len().min(buf.remaining());
            let tail = self.tail;
            buf.put_slice(&tail[..n]);
            self.tail = &tail[n..];
        }
        Poll::Ready(Ok(()))
    }
}

async fn lines_of(data: &[u8], chunk: usize, max: usize) -> (Vec<String>, u64) {
    let mut r = LineReader::new(
        Trickle {
            data: data.to_vec(),
            pos: 0,
            chunk,
        },
        max,
    );
    let mut out = Vec::new();
    while let Some(l) = r.next_line().await.expect("read") {
        out.push(String::from_utf8_lossy(l).into_owned());
    }
    (out, r.skipped_lines())
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(format!("{name}.stdout"))).expect("fixture")
}

fn events(name: &str) -> Vec<CliEvent> {
    fixture(name)
        .lines()
        .flat_map(|l| parse_events(l.as_bytes()).unwrap_or_default())
        .collect()
}

fn only_result(evs: &[CliEvent]) -> Option<&RunReport> {
    let mut it = evs.iter().filter_map(|e| match e {
        CliEvent::Result(r) => Some(r.as_ref()),
        _ => None,
    });
    let first = it.next();
    assert!(it.next().is_none(), "more than one result");
    first
}

fn all_stdout_fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .expect("fixture dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "stdout"))
        .collect();
    files.sort();
    files
}

/// The first key of the last `"modelUsage":{...}` in `text`, read from the raw text so that the
/// check does not share the parser's approach.
fn first_model_usage_key(text: &str) -> Option<String> {
    let at = text.rfind("\"modelUsage\":")? + "\"modelUsage\":".len();
    let rest = text[at..].trim_start().strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// Check a parsed report against the result object's JSON.
fn check_report(name: &str, r: &RunReport, json: &Value, raw_text: &str) {
    let s = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_string);
    let u = |k: &str| json.get(k).and_then(Value::as_u64);
    assert_eq!(r.result, s("result"), "{name}: result");
    assert_eq!(r.session_id, s("session_id"), "{name}: session_id");
    assert_eq!(r.subtype, s("subtype"), "{name}: subtype");
    assert_eq!(
        r.is_error,
        json.get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        "{name}: is_error"
    );
    assert_eq!(
        r.reported_cost_usd,
        json.get("total_cost_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        "{name}: cost"
    );
    assert_eq!(
        u64::from(r.num_turns),
        u("num_turns").unwrap_or(0),
        "{name}"
    );
    assert_eq!(r.duration_ms, u("duration_ms").unwrap_or(0), "{name}");
    assert_eq!(
        r.api_error_status.map(u64::from),
        u("api_error_status"),
        "{name}: api_error_status"
    );
    let usage = json.get("usage").cloned().unwrap_or(Value::Null);
    let tok = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(r.usage.input_tokens, tok("input_tokens"), "{name}");
    assert_eq!(r.usage.output_tokens, tok("output_tokens"), "{name}");
    assert_eq!(
        r.usage.cache_creation_input_tokens,
        tok("cache_creation_input_tokens"),
        "{name}"
    );
    assert_eq!(
        r.usage.cache_read_input_tokens,
        tok("cache_read_input_tokens"),
        "{name}"
    );
    let denials = json
        .get("permission_denials")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert_eq!(r.permission_denials, denials, "{name}: denials");
    assert_eq!(
        r.resolved_model,
        first_model_usage_key(raw_text),
        "{name}: model"
    );
}

// ---------------------------------------------------------------------------------------------
// The line reader

#[tokio::test]
async fn reader_handles_crlf_blank_lines_and_a_final_line_without_newline() {
    for chunk in [1, 2, 3, 7, 4096] {
        let (lines, skipped) = lines_of(b"a\r\n\r\n\nbb\n  \nccc", chunk, 100).await;
        assert_eq!(lines, ["a", "bb", "ccc"], "chunk {chunk}");
        assert_eq!(skipped, 0);
    }
}

#[tokio::test]
async fn reader_skips_long_lines_and_resynchronises() {
    for chunk in [1, 3, 5, 4096] {
        let (lines, skipped) = lines_of(
            b"12345\n123456\n1234567890\nok\n12345\r\n123456\r\nlast",
            chunk,
            5,
        )
        .await;
        assert_eq!(lines, ["12345", "ok", "12345", "last"], "chunk {chunk}");
        assert_eq!(skipped, 3, "chunk {chunk}");
    }
}

#[tokio::test]
async fn reader_drops_an_over_long_final_line() {
    let (lines, skipped) = lines_of(b"ok\n0123456789", 4, 5).await;
    assert_eq!(lines, ["ok"]);
    assert_eq!(skipped, 1);
}

#[tokio::test]
async fn reader_never_buffers_more_than_the_limit() {
    // 50 MB of one line, then a real event: the buffer stays within the limit (+1 for `\r`).
    let max = 4096;
    let mut r = LineReader::new(
        HugeLine {
            left: 50 * 1024 * 1024,
            tail: b"\n{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}}\n",
        },
        max,
    );
    let line = r.next_line().await.expect("read").expect("a line").to_vec();
    assert!(r.line.capacity() <= max + 1, "{}", r.line.capacity());
    assert_eq!(r.skipped_lines(), 1);
    assert_eq!(
        parse_line(&line),
        Some(CliEvent::TextDelta { text: "hi".into() })
    );
    assert!(r.next_line().await.expect("read").is_none());
}

#[tokio::test]
async fn reader_is_cancel_safe_in_select() {
    // Drop the read future repeatedly mid-line: no byte may be lost.
    let (w, rd) = tokio::io::duplex(16);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut w = w;
        for i in 0..50 {
            let line = format!("line-{i}-{}\n", "y".repeat(i));
            for b in line.as_bytes() {
                w.write_all(&[*b]).await.expect("write");
                tokio::task::yield_now().await;
            }
        }
    });
    let mut r = LineReader::new(rd, 1024);
    let mut got = Vec::new();
    loop {
        tokio::select! {
            l = r.next_line() => match l.expect("read") {
                Some(l) => got.push(String::from_utf8_lossy(l).into_owned()),
                None => break,
            },
            _ = tokio::task::yield_now() => {}
        }
    }
    writer.await.expect("writer");
    let want: Vec<String> = (0..50)
        .map(|i| format!("line-{i}-{}", "y".repeat(i)))
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------
// The parser over synthetic lines

#[test]
fn non_json_and_odd_json_are_ignorable() {
    assert_eq!(parse_events(b"hello world"), Err(NotJson));
    assert_eq!(parse_events(b"{\"type\":\"result\""), Err(NotJson));
    assert_eq!(parse_events(b"\xff\xfe"), Err(NotJson));
    assert_eq!(parse_events(b"[1,2]"), Ok(vec![]));
    assert_eq!(parse_events(b"42"), Ok(vec![]));
    assert_eq!(parse_events(b"{}"), Ok(vec![]));
    assert_eq!(parse_events(b"{\"type\":7}"), Ok(vec![]));
    assert_eq!(
        parse_events(b"{\"type\":\"system\",\"subtype\":\"api_retry\"}"),
        Ok(vec![])
    );
    assert_eq!(
        parse_events(b"{\"type\":\"brand_new\",\"x\":1}"),
        Ok(vec![])
    );
    assert_eq!(parse_events(b"{\"type\":\"a\",\"type\":\"b\"}"), Ok(vec![]));
    assert_eq!(parse_line(b""), None);
}

#[test]
fn field_order_and_types_do_not_matter() {
    let a = parse_line(
        br#"{"subtype":"error_max_turns","num_turns":3.0,"is_error":"yes","modelUsage":{"z-model":{},"a-model":{}},"type":"result","total_cost_usd":-1,"api_error_status":99999,"usage":"n/a","result":null}"#,
    );
    let Some(CliEvent::Result(r)) = a else {
        panic!("no result: {a:?}")
    };
    assert_eq!(r.subtype.as_deref(), Some("error_max_turns"));
    assert_eq!(r.num_turns, 3);
    assert!(!r.is_error);
    assert_eq!(r.resolved_model.as_deref(), Some("z-model"));
    assert_eq!(r.reported_cost_usd, 0.0);
    assert_eq!(r.api_error_status, None);
    assert_eq!(r.usage, Usage::default());
    assert_eq!(r.result, None);
}

#[test]
fn thinking_blocks_and_other_deltas_are_dropped() {
    assert_eq!(
        parse_line(
            br#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hm"}]}}"#
        ),
        None
    );
    assert_eq!(
        parse_line(br#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{"}}}"#),
        None
    );
    assert_eq!(
        parse_line(br#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"thinking_delta","thinking":"x"}}}"#),
        None
    );
}

#[test]
fn multi_block_lines_yield_every_event_in_order() {
    let evs = parse_events(
        br#"{"type":"assistant","message":{"content":[{"type":"text","text":"a"},{"type":"thinking"},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]}}"#,
    )
    .expect("json");
    assert_eq!(
        evs,
        vec![
            CliEvent::AssistantText { text: "a".into() },
            CliEvent::ToolUse {
                id: "t1".into(),
                name: "Bash".into(),
                input: serde_json::json!({"command": "ls"}),
            },
        ]
    );
    let evs = parse_events(
        br#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"x"}],"is_error":true},{"type":"tool_result","tool_use_id":"t2"}]}}"#,
    )
    .expect("json");
    assert_eq!(evs.len(), 2);
    assert_eq!(
        evs[0],
        CliEvent::ToolResult {
            tool_use_id: "t1".into(),
            content: serde_json::json!([{"type": "text", "text": "x"}]),
            is_error: true,
        }
    );
    // A replayed user prompt is not a tool result.
    assert_eq!(
        parse_events(br#"{"type":"user","message":{"role":"user","content":"hi"}}"#),
        Ok(vec![])
    );
}

#[test]
fn result_errors_are_read_from_result_lines_only() {
    assert_eq!(
        result_errors(br#"{"errors":["a",1,"b"],"type":"result"}"#),
        ["a", "b"]
    );
    assert!(result_errors(br#"{"errors":["a"],"type":"system"}"#).is_empty());
    assert!(result_errors(b"garbage").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Every recorded run

#[test]
fn every_fixture_parses_and_every_result_matches_its_json() {
    let mut checked = 0;
    for path in all_stdout_fixtures() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let bytes = std::fs::read(&path).expect("read");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // Line by line (stream-json form): each result line must match its own JSON.
        for line in bytes.split(|&b| b == b'\n') {
            let evs = parse_events(line).unwrap_or_default();
            let json: Value = match serde_json::from_slice(line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if json.get("type").and_then(Value::as_str) == Some("result") {
                let r = only_result(&evs).expect("result event");
                check_report(&name, r, &json, &String::from_utf8_lossy(line));
                checked += 1;
            }
        }
        // Whole-output form (json and verbose-json arrays too).
        let report = parse_json_output(&text);
        let doc: Option<Value> = serde_json::from_str(text.trim()).ok();
        let result_json = match &doc {
            Some(Value::Array(items)) => items
                .iter()
                .rfind(|i| i.get("type").and_then(Value::as_str) == Some("result"))
                .cloned(),
            Some(v) if v.get("type").and_then(Value::as_str) == Some("result") => Some(v.clone()),
            _ => text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .rfind(|v| v.get("type").and_then(Value::as_str) == Some("result")),
        };
        match (&report, &result_json) {
            (Some(r), Some(j)) => {
                let mut r = r.clone();
                // parse_json_output falls back to the init line's model; compare the raw field.
                if first_model_usage_key(&text).is_none() {
                    r.resolved_model = None;
                }
                let raw = text
                    .lines()
                    .rfind(|l| l.contains("\"type\":\"result\""))
                    .unwrap_or(&text);
                check_report(&name, &r, j, if doc.is_some() { &text } else { raw });
                checked += 1;
            }
            (None, None) => {}
            _ => panic!("{name}: report {report:?} vs json {result_json:?}"),
        }
    }
    assert!(checked > 100, "only {checked} results checked");
}

#[test]
fn success_stream() {
    let evs = events("m_stream");
    assert!(matches!(
        &evs[0],
        CliEvent::Init { session_id: Some(s), model: Some(m), cli_version: Some(v) }
            if s == "06545c1b-3d03-461a-84ae-63285501a6fe" && m == "claude-opus-5-5" && v == "2.1.330"
    ));
    assert!(
        matches!(&evs[1], CliEvent::AssistantText { text } if text.starts_with("Hello from mock."))
    );
    let r = only_result(&evs).expect("result");
    assert!(!r.is_error);
    assert_eq!(r.subtype.as_deref(), Some("success"));
    assert!(r
        .result
        .as_deref()
        .is_some_and(|t| t.starts_with("Hello from mock.")));
    assert_eq!(r.resolved_model.as_deref(), Some("claude-opus-5-5"));
    assert!(r.reported_cost_usd > 0.0);
    assert!(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
    assert_eq!(evs.len(), 3);
}

#[test]
fn api_errors_are_is_error_with_subtype_success() {
    for (name, status) in [
        ("m_400", Some(400)),
        ("m_401_r1", Some(401)),
        ("m_529_r1", Some(529)),
        ("v1.0.128_err400", None),
        ("noauth_json", None),
    ] {
        let r = parse_json_output(&fixture(name)).expect(name);
        assert!(r.is_error, "{name}");
        assert_eq!(r.subtype.as_deref(), Some("success"), "{name}");
        assert_eq!(r.api_error_status, status, "{name}");
    }
    let evs = events("m_500_r1");
    let r = only_result(&evs).expect("result");
    assert!(r.is_error);
    assert_eq!(r.api_error_status, Some(500));
    assert!(r
        .result
        .as_deref()
        .is_some_and(|t| t.starts_with("API Error: 500")));
}

#[test]
fn max_turns_of_every_version() {
    for (name, is_error) in [
        ("m_maxturns", true),
        ("v2.1.197_maxturns", true),
        ("v2.1.112_maxturns", true),
        ("v2.0.0_maxturns", false),
        ("v1.0.128_maxturns", false),
    ] {
        let r = parse_json_output(&fixture(name)).expect(name);
        assert_eq!(r.subtype.as_deref(), Some("error_max_turns"), "{name}");
        assert_eq!(r.is_error, is_error, "{name}");
    }
    // modelUsage order matters: the main model is listed first, not alphabetically.
    let r = parse_json_output(&fixture("v1.0.128_maxturns")).expect("v1");
    assert_eq!(
        r.resolved_model.as_deref(),
        Some("claude-sonnet-4-20250514")
    );

    let evs = events("m_maxturns_stream");
    let r = only_result(&evs).expect("result");
    assert_eq!(r.subtype.as_deref(), Some("error_max_turns"));
    assert!(evs.iter().any(|e| matches!(e, CliEvent::ToolUse { .. })));
    assert!(evs.iter().any(|e| matches!(e, CliEvent::ToolResult { .. })));
}

#[test]
fn budget_exceeded() {
    let evs = events("m_budget");
    let r = only_result(&evs).expect("result");
    assert_eq!(r.subtype.as_deref(), Some("error_max_budget_usd"));
    assert!(r.is_error);
    assert!(
        r.reported_cost_usd > 0.5,
        "the cap is overshot: {}",
        r.reported_cost_usd
    );
}

#[test]
fn resume_missing_in_stream_mode() {
    let out = fixture("s6b_resume_missing_stream");
    let evs = events("s6b_resume_missing_stream");
    let r = only_result(&evs).expect("result");
    assert_eq!(r.subtype.as_deref(), Some("error_during_execution"));
    assert!(r.is_error);
    assert_eq!(r.result, None);
    let line = out.lines().next().expect("line");
    assert_eq!(
        result_errors(line.as_bytes()),
        ["No conversation found with session ID: 99999999-2222-4333-8444-555555555555"]
    );
    // json mode prints nothing on stdout for the same failure.
    assert_eq!(parse_json_output(&fixture("s6_resume_missing")), None);
}

#[test]
fn signal_runs() {
    for name in [
        "k_SIGTERM_stream-json",
        "k_SIGKILL_stream-json",
        "k_SIGINT_stream-json",
    ] {
        let evs = events(name);
        assert!(matches!(evs.first(), Some(CliEvent::Init { .. })), "{name}");
        assert!(only_result(&evs).is_none(), "{name}");
    }
    for name in [
        "k_SIGTERM_json",
        "k_SIGKILL_json",
        "k_SIGTERM_text",
        "k_SIGINT_text",
    ] {
        assert_eq!(parse_json_output(&fixture(name)), None, "{name}");
    }
    let r = parse_json_output(&fixture("k_SIGINT_json")).expect("SIGINT json");
    assert_eq!(r.subtype.as_deref(), Some("error_during_execution"));
    assert!(r.is_error);
}

#[test]
fn partial_messages_produce_text_deltas_in_order() {
    for name in ["m_stream_partial", "v2.1.197_stream_partial"] {
        let evs = events(name);
        let deltas: Vec<&str> = evs
            .iter()
            .filter_map(|e| match e {
                CliEvent::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas.len(), 2, "{name}");
        let full = evs
            .iter()
            .find_map(|e| match e {
                CliEvent::AssistantText { text } => Some(text.clone()),
                _ => None,
            })
            .expect("assistant text");
        assert_eq!(deltas.concat(), full, "{name}");
        // Deltas come before the complete block, which comes before the result.
        let pos = |f: &dyn Fn(&CliEvent) -> bool| evs.iter().position(f).expect("event");
        assert!(
            pos(&|e| matches!(e, CliEvent::TextDelta { .. }))
                < pos(&|e| matches!(e, CliEvent::AssistantText { .. }))
        );
        assert!(matches!(evs.last(), Some(CliEvent::Result(_))));
    }
    let deltas: Vec<String> = events("m_stream_tool_partial")
        .into_iter()
        .filter_map(|e| match e {
            CliEvent::TextDelta { text } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(
        deltas,
        [
            "I'll run ",
            "a command.",
            "The tool said: [to",
            "ol_result:tool-ran]"
        ]
    );
}

#[test]
fn tool_runs_produce_tool_use_then_tool_result() {
    for name in [
        "m_tool_allowed",
        "m_tool_denied",
        "m_stream_tool_partial",
        "v2.1.197_stream_tool",
        "m_toolw_denied",
    ] {
        let evs = events(name);
        let (use_at, id) = evs
            .iter()
            .enumerate()
            .find_map(|(i, e)| match e {
                CliEvent::ToolUse { id, name, input } => {
                    assert_eq!(name, "Bash");
                    assert!(input.get("command").is_some());
                    Some((i, id.clone()))
                }
                _ => None,
            })
            .expect(name);
        let result_at = evs
            .iter()
            .position(
                |e| matches!(e, CliEvent::ToolResult { tool_use_id, .. } if *tool_use_id == id),
            )
            .expect(name);
        assert!(use_at < result_at, "{name}");
    }
    let evs = events("m_tool_allowed");
    assert!(evs.iter().any(|e| matches!(
        e,
        CliEvent::ToolResult { content, is_error: false, .. } if content == "tool-ran"
    )));
    let r = parse_json_output(&fixture("m_toolw_denied")).expect("denied");
    assert!(!r.permission_denials.is_empty());
}

#[test]
fn verbose_json_array_and_init_fill() {
    let r = parse_json_output(&fixture("e_verbose_json")).expect("array");
    assert_eq!(r.subtype.as_deref(), Some("success"));
    assert_eq!(r.cli_version.as_deref(), Some("2.1.330"));
    assert_eq!(
        r.session_id.as_deref(),
        Some("16017861-d5c3-4378-aa14-41b8862e7746")
    );
    // Plain json mode has no init line, so no version.
    let r = parse_json_output(&fixture("mock_json")).expect("json");
    assert_eq!(r.cli_version, None);
    // Text mode output is not JSON.
    assert_eq!(parse_json_output(&fixture("m_text")), None);
    assert_eq!(parse_json_output(""), None);
}

#[test]
fn fill_from_init_only_fills_gaps() {
    let mut r = RunReport {
        session_id: Some("from-result".into()),
        ..Default::default()
    };
    fill_from_init(
        &mut r,
        &CliEvent::Init {
            session_id: Some("from-init".into()),
            model: Some("m".into()),
            cli_version: Some("2.1.197".into()),
        },
    );
    assert_eq!(r.session_id.as_deref(), Some("from-result"));
    assert_eq!(r.resolved_model.as_deref(), Some("m"));
    assert_eq!(r.cli_version.as_deref(), Some("2.1.197"));
}

#[test]
fn can_use_tool_control_requests_become_permission_requests() {
    let line = br#"{"type":"control_request","request_id":"r-1","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"mkdir x"},"description":"Make x","permission_suggestions":[]}}"#;
    let events = parse_events(line).expect("json");
    assert_eq!(
        events,
        vec![CliEvent::PermissionRequest(
            crate::approval::PermissionRequest {
                request_id: "r-1".into(),
                tool_name: "Bash".into(),
                input: serde_json::json!({"command": "mkdir x"}),
                description: Some("Make x".into()),
            }
        )]
    );
    // Other control traffic (the answer to our `initialize`) is not an event.
    let answer = br#"{"type":"control_response","response":{"subtype":"success","request_id":"init-1","response":{}}}"#;
    assert_eq!(parse_events(answer).expect("json"), vec![]);
    let other =
        br#"{"type":"control_request","request_id":"r-2","request":{"subtype":"interrupt"}}"#;
    assert_eq!(parse_events(other).expect("json"), vec![]);
}
