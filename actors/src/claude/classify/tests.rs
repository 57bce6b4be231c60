//! Table-driven tests of the classification, synthetic and over the recorded runs.

use std::path::Path;

use super::*;
use crate::claude::stream::{parse_json_output, result_errors};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/claude-cli");

fn report(subtype: &str, is_error: bool, result: Option<&str>, status: Option<u16>) -> RunReport {
    RunReport {
        subtype: Some(subtype.to_string()),
        is_error,
        result: result.map(str::to_string),
        api_error_status: status,
        ..Default::default()
    }
}

fn run(
    report: Option<&RunReport>,
    errors: &[String],
    exit: Exit,
    stderr: &str,
    stopped: Stopped,
) -> (TaskStatus, Option<TaskError>) {
    classify(&Finished {
        report,
        result_errors: errors,
        exit: &exit,
        stderr_tail: stderr,
        stopped,
    })
}

fn code_of(v: &(TaskStatus, Option<TaskError>)) -> Option<ErrorCode> {
    v.1.as_ref().map(|e| e.code)
}

fn assert_sentence(e: &TaskError) {
    assert!(!e.message.is_empty());
    assert!(!e.message.contains('\n'), "{}", e.message);
    assert!(e.message.chars().count() <= 400, "{}", e.message);
}

#[test]
fn synthetic_table() {
    use ErrorCode as E;
    use TaskStatus as S;
    let ok = report("success", false, Some("hi"), None);
    let api500 = report("success", true, Some("API Error: 500 boom"), Some(500));
    let api400_old = report(
        "success",
        true,
        Some("API Error: 400 {\"type\":\"error\"}"),
        None,
    );
    let conn = report("success", true, Some("API Error: Connection refused"), None);
    let noauth = report(
        "success",
        true,
        Some("Not logged in · Please run /login"),
        None,
    );
    let badkey = report(
        "success",
        true,
        Some("Invalid API key · Fix external API key"),
        Some(401),
    );
    let weird = report("success", true, Some("Something odd"), None);
    let turns_old = report("error_max_turns", false, None, None);
    let turns = report("error_max_turns", true, None, None);
    let budget = report("error_max_budget_usd", true, None, None);
    let during = report("error_during_execution", true, None, None);
    let unknown_err = report("error_new_kind", false, None, None);
    let unknown_ok = report("success_v2", false, Some("x"), None);
    let t = Stopped::Timeout { after_ms: 100 };
    let idle = Stopped::IdleTimeout { after_ms: 50 };
    let no = Stopped::No;
    type Row<'a> = (
        Option<&'a RunReport>,
        Exit,
        &'a str,
        Stopped,
        TaskStatus,
        Option<ErrorCode>,
    );
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        // Our own stop wins, whatever the CLI printed.
        (None, Exit::Signal(15), "", t, S::Timeout, Some(E::Timeout)),
        (Some(&ok), Exit::Code(0), "", t, S::Timeout, Some(E::Timeout)),
        (None, Exit::Signal(9), "", idle, S::Timeout, Some(E::IdleTimeout)),
        (None, Exit::Code(143), "", Stopped::Cancelled, S::Cancelled, Some(E::Cancelled)),
        (Some(&during), Exit::Code(0), "", Stopped::Cancelled, S::Cancelled, Some(E::Cancelled)),
        (None, Exit::Signal(9), "", Stopped::Shutdown, S::Failed, Some(E::Interrupted)),
        // The result line decides, not the exit code.
        (Some(&ok), Exit::Code(0), "", no, S::Completed, None),
        (Some(&ok), Exit::Code(1), "", no, S::Completed, None),
        (Some(&ok), Exit::Signal(9), "", no, S::Completed, None),
        (Some(&unknown_ok), Exit::Code(0), "", no, S::Completed, None),
        (Some(&api500), Exit::Code(1), "", no, S::Failed, Some(E::CliApiError)),
        (Some(&api400_old), Exit::Code(1), "", no, S::Failed, Some(E::CliApiError)),
        (Some(&conn), Exit::Code(1), "", no, S::Failed, Some(E::CliApiError)),
        (Some(&noauth), Exit::Code(1), "", no, S::Failed, Some(E::CliNotAuthenticated)),
        (Some(&badkey), Exit::Code(1), "", no, S::Failed, Some(E::CliNotAuthenticated)),
        (Some(&weird), Exit::Code(1), "", no, S::Failed, Some(E::CliError)),
        (Some(&turns_old), Exit::Code(0), "", no, S::Failed, Some(E::MaxTurnsExceeded)),
        (Some(&turns), Exit::Code(1), "", no, S::Failed, Some(E::MaxTurnsExceeded)),
        (Some(&budget), Exit::Code(1), "", no, S::Failed, Some(E::BudgetExceeded)),
        (Some(&during), Exit::Code(1), "No conversation found with session ID: x", no, S::Failed, Some(E::CliError)),
        (Some(&unknown_err), Exit::Code(0), "", no, S::Failed, Some(E::CliError)),
        // No result line.
        (None, Exit::Code(1), "error: unknown option '--x'\n", no, S::Failed, Some(E::CliError)),
        (None, Exit::Code(1), "", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::Code(0), "", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::Code(143), "", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::Code(2), "boom", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::Signal(9), "", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::Signal(11), "Segmentation fault", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::Unknown, "", no, S::Failed, Some(E::CliCrashed)),
        (None, Exit::SpawnFailed("No such file or directory (os error 2)".into()), "", no, S::Failed, Some(E::CliUnavailable)),
        (None, Exit::SpawnFailed("Permission denied (os error 13)".into()), "", Stopped::Cancelled, S::Failed, Some(E::CliUnavailable)),
    ];
    for (i, (rep, exit, stderr, stopped, status, code)) in table.into_iter().enumerate() {
        let got = run(rep, &[], exit.clone(), stderr, stopped);
        assert_eq!(got.0, status, "row {i}: {exit:?} {stopped:?} -> {got:?}");
        assert_eq!(code_of(&got), code, "row {i}: {got:?}");
        if let Some(e) = &got.1 {
            assert_sentence(e);
            assert!(e.details.is_some(), "row {i}");
        }
    }
}

#[test]
fn messages_and_details() {
    let api = report(
        "success",
        true,
        Some("API Error: 529 Overloaded."),
        Some(529),
    );
    let (_, e) = run(Some(&api), &[], Exit::Code(1), "", Stopped::No);
    let e = e.expect("error");
    assert_eq!(
        e.message,
        "The model API returned an error: 529 Overloaded."
    );
    assert_eq!(
        e.details,
        Some(serde_json::json!({"exit_code": 1, "subtype": "success", "api_error_status": 529}))
    );

    // The status is recovered from the text for CLIs without api_error_status.
    let old = report(
        "success",
        true,
        Some("API Error: 400 {\"type\":\"error\"}"),
        None,
    );
    let (_, e) = run(Some(&old), &[], Exit::Code(1), "", Stopped::No);
    assert_eq!(
        e.and_then(|e| e.details)
            .and_then(|d| d.get("api_error_status").cloned()),
        Some(serde_json::json!(400))
    );

    let (_, e) = run(
        None,
        &[],
        Exit::Signal(9),
        "partial\nlast words\n",
        Stopped::No,
    );
    let e = e.expect("error");
    assert_eq!(
        e.message,
        "The Claude CLI was killed by SIGKILL before reporting a result: partial"
    );
    assert_eq!(
        e.details,
        Some(serde_json::json!({"signal": "SIGKILL", "stderr_tail": "partial\nlast words"}))
    );

    let (_, e) = run(None, &[], Exit::Code(143), "", Stopped::No);
    assert_eq!(
        e.map(|e| e.message).as_deref(),
        Some("The Claude CLI exited with code 143 (SIGTERM) before reporting a result.")
    );

    let errors = vec!["No conversation found with session ID: 9".to_string()];
    let during = report("error_during_execution", true, None, None);
    let (_, e) = run(Some(&during), &errors, Exit::Code(1), "", Stopped::No);
    assert_eq!(
        e.map(|e| e.message).as_deref(),
        Some("The Claude CLI failed during execution: No conversation found with session ID: 9")
    );

    let (_, e) = run(
        None,
        &[],
        Exit::Code(1),
        "",
        Stopped::Timeout { after_ms: 1500 },
    );
    assert_eq!(
        e.map(|e| e.message).as_deref(),
        Some("The run exceeded its time limit of 1500 ms and was stopped.")
    );
}

#[test]
fn long_and_multiline_texts_are_clipped() {
    let long = format!("API Error: 500 {}\nsecond line", "x".repeat(5000));
    let r = report("success", true, Some(&long), Some(500));
    let stderr = "y".repeat(10_000);
    let (_, e) = run(Some(&r), &[], Exit::Code(1), &stderr, Stopped::No);
    let e = e.expect("error");
    assert_sentence(&e);
    let tail = e
        .details
        .as_ref()
        .and_then(|d| d.get("stderr_tail"))
        .and_then(|t| t.as_str())
        .map(str::len);
    assert_eq!(tail, Some(MAX_DETAILS_STDERR));
    // A multi-byte character at the cut does not panic.
    let s = "é".repeat(3000);
    assert!(tail_of(&s, 2001).len() <= 2001);
    assert_eq!(clip(&"é".repeat(1000)).chars().count(), MAX_MESSAGE_CHARS);
}

#[test]
fn first_meaningful_line_picks_the_error() {
    let cases = [
        (
            "error: unknown option '--no-such-flag'\n",
            Some("unknown option '--no-such-flag'"),
        ),
        (
            "Error: Invalid MCP configuration:\nMCP config file not found: /x.json\n",
            Some("Invalid MCP configuration: MCP config file not found: /x.json"),
        ),
        (
            "\"p\" was read as a value of --allowedTools\nError: Input must be provided\n",
            Some("Input must be provided"),
        ),
        (
            "Warning: no stdin data received\nreal problem\n",
            Some("real problem"),
        ),
        ("[claude-code:x] {}\n", Some("[claude-code:x] {}")),
        ("\n \n", None),
        ("", None),
    ];
    for (stderr, want) in cases {
        assert_eq!(first_meaningful_line(stderr).as_deref(), want, "{stderr:?}");
    }
}

#[test]
fn status_in_text_is_strict() {
    assert_eq!(status_in_text("API Error: 400 mock"), Some(400));
    assert_eq!(status_in_text("API Error: 529"), Some(529));
    assert_eq!(status_in_text("API Error: Connection refused"), None);
    assert_eq!(status_in_text("API Error: 4000 x"), None);
    assert_eq!(status_in_text("API Error: 400x"), None);
    assert_eq!(status_in_text("Not logged in"), None);
}

// ---------------------------------------------------------------------------------------------
// Recorded runs

fn read(name: &str, ext: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(FIXTURES).join(format!("{name}.{ext}"))).ok()
}

/// Classify a recorded run as if we had not stopped it (or with `stopped`), with `exit`
/// (the recorded exit code when `None`).
fn fixture(name: &str, exit: Option<Exit>, stopped: Stopped) -> (TaskStatus, Option<TaskError>) {
    let stdout = read(name, "stdout").unwrap_or_default();
    let stderr = read(name, "stderr").unwrap_or_default();
    let report = parse_json_output(&stdout);
    let errors: Vec<String> = stdout
        .lines()
        .flat_map(|l| result_errors(l.as_bytes()))
        .collect();
    let exit = exit.unwrap_or_else(|| {
        let rc = read(name, "rc").unwrap_or_default();
        Exit::Code(rc.trim().parse().expect("fixture has an rc"))
    });
    run(report.as_ref(), &errors, exit, &stderr, stopped)
}

/// name, exit (the recorded rc when None), our stop, status, code, text the message contains.
type Case<'a> = (
    &'a str,
    Option<Exit>,
    Stopped,
    TaskStatus,
    Option<ErrorCode>,
    &'a str,
);

#[test]
fn recorded_runs_table() {
    use ErrorCode as E;
    use TaskStatus as S;
    let no = Stopped::No;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("m_stream", None, no, S::Completed, None, ""),
        ("t_model_custom", None, no, S::Completed, None, ""),
        ("p_slash", None, no, S::Completed, None, ""),
        ("m_tool_denied", None, no, S::Completed, None, ""),
        ("e_unknown_flag", None, no, S::Failed, Some(E::CliError), "unknown option '--no-such-flag'"),
        ("e_permmode_bad", None, no, S::Failed, Some(E::CliError), "argument 'yolo' is invalid"),
        ("e_mcp_missingfile", None, no, S::Failed, Some(E::CliError), "MCP config file not found: /nonexistent/mcp.json"),
        ("m_budget_bad", None, no, S::Failed, Some(E::CliError), "must be a number greater than 0"),
        ("m_toolw_skip", None, no, S::Failed, Some(E::CliError), "cannot be used with root"),
        ("s7_sessionid_reuse", None, no, S::Failed, Some(E::CliError), "is already in use"),
        ("s8_bad_uuid", None, no, S::Failed, Some(E::CliError), "Must be a valid UUID"),
        ("s6_resume_missing", None, no, S::Failed, Some(E::CliError), "No conversation found"),
        ("s6b_resume_missing_stream", None, no, S::Failed, Some(E::CliError), "No conversation found with session ID: 99999999"),
        ("v2.1.197_resume_othercwd", None, no, S::Failed, Some(E::CliError), "No conversation found"),
        ("noauth_json", Some(Exit::Code(1)), no, S::Failed, Some(E::CliNotAuthenticated), "Not logged in"),
        ("noauth_streamjson", Some(Exit::Code(1)), no, S::Failed, Some(E::CliNotAuthenticated), "Not logged in"),
        ("noauth_._json", Some(Exit::Code(1)), no, S::Failed, Some(E::CliNotAuthenticated), "Invalid API key"),
        ("noauth_streamjson_noverbose", Some(Exit::Code(1)), no, S::Failed, Some(E::CliError), "requires --verbose"),
        ("m_401_r1", None, no, S::Failed, Some(E::CliNotAuthenticated), "Invalid API key"),
        ("m_400", None, no, S::Failed, Some(E::CliApiError), "400 mock bad request"),
        ("v2.1.197_noauth_check", None, no, S::Failed, Some(E::CliApiError), "400"),
        ("v1.0.128_err400", None, no, S::Failed, Some(E::CliApiError), "400"),
        ("v2.0.0_err400", None, no, S::Failed, Some(E::CliApiError), "400"),
        ("m_500_r1", None, no, S::Failed, Some(E::CliApiError), "500 Internal server error"),
        ("m_529_r1", None, no, S::Failed, Some(E::CliApiError), "529 Overloaded"),
        ("m_connrefused_r2", None, no, S::Failed, Some(E::CliApiError), "Connection refused"),
        ("m_maxturns", None, no, S::Failed, Some(E::MaxTurnsExceeded), ""),
        ("m_maxturns_stream", None, no, S::Failed, Some(E::MaxTurnsExceeded), ""),
        ("v2.1.197_maxturns", None, no, S::Failed, Some(E::MaxTurnsExceeded), ""),
        ("v2.1.112_maxturns", None, no, S::Failed, Some(E::MaxTurnsExceeded), ""),
        // Old CLIs: is_error false and exit 0, still a failure.
        ("v2.0.0_maxturns", None, no, S::Failed, Some(E::MaxTurnsExceeded), ""),
        ("v1.0.128_maxturns", None, no, S::Failed, Some(E::MaxTurnsExceeded), ""),
        ("m_budget", None, no, S::Failed, Some(E::BudgetExceeded), ""),
        // Signals we did not send.
        ("k_SIGTERM_stream-json", Some(Exit::Code(143)), no, S::Failed, Some(E::CliCrashed), "143 (SIGTERM)"),
        ("k_SIGTERM_json", Some(Exit::Signal(15)), no, S::Failed, Some(E::CliCrashed), "SIGTERM"),
        ("k_SIGKILL_stream-json", Some(Exit::Signal(9)), no, S::Failed, Some(E::CliCrashed), "SIGKILL"),
        ("k_SIGINT_json", Some(Exit::Code(0)), no, S::Failed, Some(E::CliError), "failed during execution"),
        // Signals we sent: our reason wins.
        ("k_SIGTERM_stream-json", Some(Exit::Code(143)), Stopped::Timeout { after_ms: 10 }, S::Timeout, Some(E::Timeout), ""),
        ("k_SIGKILL_stream-json", Some(Exit::Signal(9)), Stopped::IdleTimeout { after_ms: 10 }, S::Timeout, Some(E::IdleTimeout), ""),
        ("k_SIGINT_json", Some(Exit::Code(0)), Stopped::Cancelled, S::Cancelled, Some(E::Cancelled), ""),
        ("k_SIGTERM_json", Some(Exit::Signal(15)), Stopped::Shutdown, S::Failed, Some(E::Interrupted), ""),
    ];
    for (name, exit, stopped, status, code, needle) in cases {
        let got = fixture(name, exit, stopped);
        assert_eq!(got.0, status, "{name}: {got:?}");
        assert_eq!(code_of(&got), code, "{name}: {got:?}");
        if let Some(e) = &got.1 {
            assert_sentence(e);
            assert!(
                e.message.contains(needle),
                "{name}: {:?} lacks {needle:?}",
                e.message
            );
        }
    }
}

#[test]
fn every_recorded_run_classifies_consistently() {
    let mut n = 0;
    for entry in std::fs::read_dir(FIXTURES).expect("dir").flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "stdout") {
            continue;
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for exit in [
            Exit::Code(0),
            Exit::Code(1),
            Exit::Code(143),
            Exit::Signal(9),
        ] {
            let got = fixture(&name, Some(exit), Stopped::No);
            let report = parse_json_output(&read(&name, "stdout").unwrap_or_default());
            let success = report
                .as_ref()
                .is_some_and(|r| !r.is_error && r.subtype.as_deref() == Some("success"));
            assert_eq!(got.0 == TaskStatus::Completed, success, "{name}: {got:?}");
            assert_eq!(got.1.is_none(), success, "{name}");
            if let Some(e) = &got.1 {
                assert_sentence(e);
            }
            n += 1;
        }
    }
    assert!(n > 400);
}
