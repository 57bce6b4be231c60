//! Tests of the runner with small shell-script fakes of the CLI.
//!
//! Every wait is a wait for an event (the run's end, an event from the CLI) or a poll with a
//! deadline; nothing sleeps to synchronise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::*;
use crate::error::ErrorCode;
use crate::model::{RunSpec, TaskStatus};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/claude-cli");

/// A temp dir holding the fake CLI (`claude`) and whatever files it writes.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new(script_body: &str) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("claude");
        std::fs::write(&path, format!("#!/bin/sh\n{script_body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Fake { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn settings(&self) -> RunnerSettings {
        let mut s = RunnerSettings::new(self.path().join("claude"));
        s.kill_grace = Duration::from_millis(500);
        s.env
            .insert("FAKE_DIR".into(), self.path().display().to_string());
        s
    }

    fn spec(&self) -> RunSpec {
        RunSpec::new("hello", self.path().to_path_buf(), 30_000)
    }

    /// A pid the script wrote to `$FAKE_DIR/<name>`.
    fn pid(&self, name: &str) -> i32 {
        let text = std::fs::read_to_string(self.path().join(name)).expect("pid file");
        text.trim().parse().expect("pid")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }
}

/// Run to the end, collecting the events.
async fn run_collect(spec: &RunSpec, settings: &RunnerSettings) -> (RunOutcome, Vec<CliEvent>) {
    let (_tx, rx) = watch::channel(None);
    let mut events = Vec::new();
    let outcome = run(spec, settings, rx, &mut |e| events.push(e)).await;
    (outcome, events)
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(format!("{name}.stdout"))
}

fn code(o: &RunOutcome) -> Option<ErrorCode> {
    o.error.as_ref().map(|e| e.code)
}

/// The script's own process group (its pid) and the grandchild it started are both gone.
fn assert_nothing_left(fake: &Fake) {
    let pid = fake.pid("pid");
    assert!(
        !group_has_live_members(pid),
        "group {pid} still has live members"
    );
    assert!(!process_is_live(pid), "the CLI {pid} survives");
    if fake.path().join("gc").exists() {
        let gc = fake.pid("gc");
        assert!(!process_is_live(gc), "the grandchild {gc} survives");
    }
}

/// Writes its pid and starts a grandchild that ignores SIGTERM and keeps stdout open.
const PID_AND_GRANDCHILD: &str = r#"echo $$ > "$FAKE_DIR/pid"
( trap '' TERM; exec sleep 1000 ) &
echo $! > "$FAKE_DIR/gc""#;

const INIT: &str = r#"echo '{"type":"system","subtype":"init","session_id":"sess-1","model":"m-1","claude_code_version":"9.9.9"}'"#;

#[tokio::test]
async fn success_parses_events_and_passes_env_args_and_cwd() {
    let fake = Fake::new(&format!(
        r#"cat > /dev/null
pwd > "$FAKE_DIR/cwd"
printf '%s\n' "$@" > "$FAKE_DIR/args"
echo "$CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC|$EXTRA|$PATH|${{IS_SANDBOX-unset}}" > "$FAKE_DIR/env"
cat "{}""#,
        fixture_path("m_stream_partial").display()
    ));
    let mut settings = fake.settings();
    settings.env.insert("EXTRA".into(), "x1".into());
    settings.path_prefix = Some(PathBuf::from("/opt/node/bin"));
    let mut spec = fake.spec();
    spec.model = Some("sonnet".into());
    spec.allowed_tools = vec!["Bash".into(), "Read".into()];
    let (outcome, events) = run_collect(&spec, &settings).await;

    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.error, None);
    let report = outcome.report.as_ref().expect("report");
    assert_eq!(report.subtype.as_deref(), Some("success"));
    assert_eq!(report.cli_version.as_deref(), Some("2.1.330"));
    assert_eq!(
        report.session_id.as_deref(),
        Some("8932bb89-0420-441b-bf74-e51294681f4a")
    );
    assert!(outcome.cost_usd > 0.0);
    assert_eq!(outcome.cost_usd, report.reported_cost_usd);

    // The same events, in the same order, as parsing the recorded run.
    let recorded = std::fs::read_to_string(fixture_path("m_stream_partial")).expect("fixture");
    let want: Vec<CliEvent> = recorded
        .lines()
        .flat_map(|l| parse_events(l.as_bytes()).unwrap_or_default())
        .map(|e| match e {
            CliEvent::Result(mut r) => {
                r.cli_version = Some("2.1.330".into());
                CliEvent::Result(r)
            }
            e => e,
        })
        .collect();
    assert_eq!(events, want);
    assert!(events
        .iter()
        .any(|e| matches!(e, CliEvent::TextDelta { .. })));

    let canonical = std::fs::canonicalize(fake.path()).expect("canonical");
    assert_eq!(fake.read("cwd").trim(), canonical.display().to_string());
    assert_eq!(
        fake.read("args").lines().collect::<Vec<_>>(),
        build_args(&spec)
    );
    let env = fake.read("env");
    let parts: Vec<&str> = env.trim().split('|').collect();
    assert_eq!(parts[0], "1");
    assert_eq!(parts[1], "x1");
    assert!(parts[2].starts_with("/opt/node/bin:"), "{}", parts[2]);
    // Never set by the runner, and not inherited from the daemon (this machine sets it).
    assert_eq!(
        parts[3], "unset",
        "IS_SANDBOX must come only from claudeEnv"
    );
}

#[tokio::test]
async fn a_one_mib_prompt_arrives_whole_while_stdout_fills() {
    // The fake writes ~1 MiB to stdout *before* reading stdin: with the prompt written
    // inline before reading, both sides would block on full pipes.
    let fake = Fake::new(
        r#"head -c 1200000 /dev/zero | tr '\0' 'x'
echo
n=$(wc -c | tr -d ' ')
echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"$n\"}""#,
    );
    let mut spec = fake.spec();
    spec.prompt = "p".repeat(1024 * 1024);
    let (outcome, _) = run_collect(&spec, &fake.settings()).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    let result = outcome.report.and_then(|r| r.result);
    assert_eq!(result.as_deref(), Some("1048576"));
}

#[tokio::test]
async fn timeout_kills_the_whole_group_including_a_grandchild() {
    let fake = Fake::new(&format!("{PID_AND_GRANDCHILD}\n{INIT}\nwait"));
    let mut spec = fake.spec();
    spec.timeout_ms = 300;
    let mut settings = fake.settings();
    settings.kill_grace = Duration::from_millis(300);
    let (outcome, events) = run_collect(&spec, &settings).await;
    assert_eq!(outcome.status, TaskStatus::Timeout, "{outcome:?}");
    assert_eq!(code(&outcome), Some(ErrorCode::Timeout));
    assert!(outcome.report.is_none());
    assert!(matches!(events.first(), Some(CliEvent::Init { .. })));
    assert!(outcome.duration_ms >= 300);
    assert_nothing_left(&fake);
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let fake = Fake::new(&format!(
        "echo $$ > \"$FAKE_DIR/pid\"\ntrap '' TERM\n{INIT}\nexec sleep 1000"
    ));
    let mut spec = fake.spec();
    spec.timeout_ms = 200;
    let mut settings = fake.settings();
    settings.kill_grace = Duration::from_millis(700);
    let (outcome, _) = run_collect(&spec, &settings).await;
    assert_eq!(outcome.status, TaskStatus::Timeout, "{outcome:?}");
    // It survived SIGTERM, so it ended by SIGKILL, after timeout + grace.
    let details = outcome.error.as_ref().and_then(|e| e.details.clone());
    assert_eq!(
        details
            .as_ref()
            .and_then(|d| d.get("signal"))
            .and_then(|s| s.as_str()),
        Some("SIGKILL"),
        "{details:?}"
    );
    assert!(outcome.duration_ms >= 900, "{}", outcome.duration_ms);
    assert_nothing_left(&fake);
}

#[tokio::test]
async fn the_stop_channel_cancels_a_running_run() {
    let fake = Fake::new(&format!("{PID_AND_GRANDCHILD}\n{INIT}\nwait"));
    let spec = fake.spec();
    let settings = fake.settings();
    let (stop_tx, stop_rx) = watch::channel(None);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let mut on_event = move |e: CliEvent| {
        let _ = seen_tx.send(e);
    };
    let (outcome, ()) = tokio::join!(run(&spec, &settings, stop_rx, &mut on_event), async {
        // Cancel once the CLI has shown it is running.
        while let Some(e) = seen_rx.recv().await {
            if matches!(e, CliEvent::Init { .. }) {
                let _ = stop_tx.send(Some(StopReason::Cancelled));
                break;
            }
        }
    });
    assert_eq!(outcome.status, TaskStatus::Cancelled, "{outcome:?}");
    assert_eq!(code(&outcome), Some(ErrorCode::Cancelled));
    assert_nothing_left(&fake);
}

#[tokio::test]
async fn shutdown_stop_is_interrupted() {
    let fake = Fake::new(&format!(
        "echo $$ > \"$FAKE_DIR/pid\"\n{INIT}\nexec sleep 1000"
    ));
    let spec = fake.spec();
    let settings = fake.settings();
    let (stop_tx, stop_rx) = watch::channel(None);
    let mut on_event = |e: CliEvent| {
        if matches!(e, CliEvent::Init { .. }) {
            let _ = stop_tx.send(Some(StopReason::Shutdown));
        }
    };
    let outcome = run(&spec, &settings, stop_rx, &mut on_event).await;
    assert_eq!(outcome.status, TaskStatus::Failed, "{outcome:?}");
    assert_eq!(code(&outcome), Some(ErrorCode::Interrupted));
    assert_nothing_left(&fake);
}

#[tokio::test]
async fn a_stop_before_the_start_never_spawns() {
    let fake = Fake::new(r#"touch "$FAKE_DIR/ran""#);
    let (_tx, rx) = watch::channel(Some(StopReason::Cancelled));
    let outcome = run(&fake.spec(), &fake.settings(), rx, &mut |_| {}).await;
    assert_eq!(outcome.status, TaskStatus::Cancelled);
    assert!(!fake.path().join("ran").exists());
}

#[tokio::test]
async fn a_dropped_stop_sender_changes_nothing() {
    let fake = Fake::new(&format!(
        "cat > /dev/null\ncat \"{}\"",
        fixture_path("m_stream").display()
    ));
    let (tx, rx) = watch::channel(None);
    drop(tx);
    let outcome = run(&fake.spec(), &fake.settings(), rx, &mut |_| {}).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
}

#[tokio::test]
async fn idle_timeout_stops_a_silent_run() {
    let fake = Fake::new(&format!("{PID_AND_GRANDCHILD}\n{INIT}\nwait"));
    let mut settings = fake.settings();
    settings.idle_timeout = Some(Duration::from_millis(300));
    let (outcome, _) = run_collect(&fake.spec(), &settings).await;
    assert_eq!(outcome.status, TaskStatus::Timeout, "{outcome:?}");
    assert_eq!(code(&outcome), Some(ErrorCode::IdleTimeout));
    assert_nothing_left(&fake);
}

#[tokio::test]
async fn output_keeps_an_idle_run_alive() {
    // 12 lines 150 ms apart (~1.8 s in all) against a 1 s idle limit: each line resets it.
    let fake = Fake::new(&format!(
        r#"{INIT}
i=0
while [ $i -lt 12 ]; do echo '{{"type":"system","subtype":"status"}}'; sleep 0.15; i=$((i+1)); done
echo '{{"type":"result","subtype":"success","is_error":false,"result":"done"}}'"#
    ));
    let mut settings = fake.settings();
    settings.idle_timeout = Some(Duration::from_millis(1000));
    let (outcome, _) = run_collect(&fake.spec(), &settings).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert!(outcome.duration_ms >= 1000);
}

#[tokio::test]
async fn stderr_output_also_counts_as_activity() {
    let fake = Fake::new(
        r#"i=0
while [ $i -lt 12 ]; do echo "working $i" >&2; sleep 0.15; i=$((i+1)); done
echo '{"type":"result","subtype":"success","is_error":false,"result":"done"}'"#,
    );
    let mut settings = fake.settings();
    settings.idle_timeout = Some(Duration::from_millis(1000));
    let (outcome, _) = run_collect(&fake.spec(), &settings).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
}

#[tokio::test]
async fn a_missing_or_unexecutable_cli_is_cli_unavailable() {
    let fake = Fake::new("true");
    let mut settings = fake.settings();
    settings.claude_path = fake.path().join("does-not-exist");
    let (outcome, events) = run_collect(&fake.spec(), &settings).await;
    assert_eq!(outcome.status, TaskStatus::Failed);
    assert_eq!(code(&outcome), Some(ErrorCode::CliUnavailable));
    assert!(events.is_empty());

    let plain = fake.path().join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write");
    settings.claude_path = plain;
    let (outcome, _) = run_collect(&fake.spec(), &settings).await;
    assert_eq!(code(&outcome), Some(ErrorCode::CliUnavailable));

    // A missing working directory is named as the cause.
    let mut spec = fake.spec();
    spec.project_path = fake.path().join("no-such-dir");
    let (outcome, _) = run_collect(&spec, &fake.settings()).await;
    assert_eq!(code(&outcome), Some(ErrorCode::CliUnavailable));
    let message = outcome.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("working directory"), "{message}");
}

#[tokio::test]
async fn an_over_long_stdout_line_is_skipped() {
    // 8 MB of one line against a 64 KiB limit, then a real result.
    let fake = Fake::new(&format!(
        r#"{INIT}
head -c 8000000 /dev/zero | tr '\0' 'x'
echo
echo '{{"type":"result","subtype":"success","is_error":false,"result":"after the flood"}}'"#
    ));
    let mut settings = fake.settings();
    settings.max_line_bytes = 64 * 1024;
    let (outcome, events) = run_collect(&fake.spec(), &settings).await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(
        outcome.report.as_ref().and_then(|r| r.result.as_deref()),
        Some("after the flood")
    );
    // The report is completed from the init line.
    assert_eq!(
        outcome
            .report
            .as_ref()
            .and_then(|r| r.session_id.as_deref()),
        Some("sess-1")
    );
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn a_grandchild_left_behind_by_a_successful_run_is_killed() {
    let fake = Fake::new(&format!(
        "{PID_AND_GRANDCHILD}\ncat > /dev/null\ncat \"{}\"\nexit 3",
        fixture_path("m_stream").display()
    ));
    let (outcome, _) = run_collect(&fake.spec(), &fake.settings()).await;
    // The result line decides: an odd exit code does not fail a successful run.
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_nothing_left(&fake);
}

#[tokio::test]
async fn a_usage_error_is_cli_error_with_the_stderr_line() {
    let fake = Fake::new("echo \"error: unknown option '--bogus'\" >&2\nexit 1");
    let (outcome, _) = run_collect(&fake.spec(), &fake.settings()).await;
    assert_eq!(code(&outcome), Some(ErrorCode::CliError));
    let e = outcome.error.expect("error");
    assert_eq!(e.message, "The Claude CLI failed: unknown option '--bogus'");
    assert_eq!(
        e.details,
        Some(serde_json::json!({"exit_code": 1, "stderr_tail": "error: unknown option '--bogus'"}))
    );
}

#[tokio::test]
async fn a_crash_without_result_is_cli_crashed() {
    let fake = Fake::new(&format!("{INIT}\nkill -SEGV $$"));
    let (outcome, _) = run_collect(&fake.spec(), &fake.settings()).await;
    assert_eq!(code(&outcome), Some(ErrorCode::CliCrashed), "{outcome:?}");
}

#[tokio::test]
async fn an_api_error_result_is_classified_from_the_result_line() {
    let fake = Fake::new(&format!(
        "cat > /dev/null\ncat \"{}\"\nexit 1",
        fixture_path("m_500_r1").display()
    ));
    let (outcome, _) = run_collect(&fake.spec(), &fake.settings()).await;
    assert_eq!(code(&outcome), Some(ErrorCode::CliApiError), "{outcome:?}");
    assert!(outcome.report.is_some());
}

#[tokio::test]
async fn stderr_tail_is_bounded_and_starts_at_a_line() {
    let fake = Fake::new(
        r#"i=0
while [ $i -lt 2000 ]; do echo "noise line $i" >&2; i=$((i+1)); done
echo "error: the real problem" >&2
exit 1"#,
    );
    let mut settings = fake.settings();
    settings.stderr_tail_bytes = 512;
    let (outcome, _) = run_collect(&fake.spec(), &settings).await;
    let e = outcome.error.expect("error");
    assert_eq!(e.code, ErrorCode::CliError);
    assert_eq!(e.message, "The Claude CLI failed: the real problem");
    let tail = e
        .details
        .as_ref()
        .and_then(|d| d.get("stderr_tail"))
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    assert!(tail.len() <= 512);
    assert!(tail.starts_with("noise line "), "{tail}");
}

#[test]
fn stderr_tail_keeps_the_last_bytes() {
    let mut t = StderrTail::new(10);
    t.push(b"abc\n");
    t.push(b"defgh\nij");
    assert_eq!(t.into_string(), "defgh\nij");
    let mut t = StderrTail::new(4);
    t.push(b"0123456789");
    assert_eq!(t.into_string(), "6789");
    let mut t = StderrTail::new(100);
    t.push(b"short");
    assert_eq!(t.into_string(), "short");
}

#[test]
fn path_prefix_goes_first() {
    assert_eq!(
        prefixed_path(Path::new("/a"), Some("/usr/bin:/bin".into())),
        OsString::from("/a:/usr/bin:/bin")
    );
    assert_eq!(prefixed_path(Path::new("/a"), None), OsString::from("/a"));
    assert_eq!(
        prefixed_path(Path::new("/a"), Some(OsString::new())),
        OsString::from("/a")
    );
}

#[test]
fn group_helpers_refuse_dangerous_ids() {
    assert!(!group_has_live_members(0));
    assert!(!group_has_live_members(1));
    assert!(!group_has_live_members(-5));
    // signal_group(0 | 1 | negative) must be a no-op: if it were not, this test process
    // (or every process) would receive SIGTERM.
    signal_group(0, libc::SIGTERM);
    signal_group(1, 0);
    signal_group(-1, libc::SIGTERM);
    assert!(process_is_live(std::process::id() as i32));
}

#[test]
fn versions_are_parsed_strictly() {
    assert_eq!(
        parse_version("2.1.197 (Claude Code)\n").as_deref(),
        Some("2.1.197")
    );
    assert_eq!(parse_version("\n1.0.128\n").as_deref(), Some("1.0.128"));
    assert_eq!(
        parse_version("2.1.0-beta.1 (Claude Code)").as_deref(),
        Some("2.1.0-beta.1")
    );
    assert_eq!(parse_version("Claude Code 2.1"), None);
    assert_eq!(parse_version(""), None);
    assert_eq!(parse_version("12 monkeys"), None);
}

#[tokio::test]
async fn cli_version_runs_the_cli() {
    let fake = Fake::new(r#"[ "$1" = "--version" ] && echo "2.1.197 (Claude Code)""#);
    assert_eq!(
        cli_version(&fake.settings()).await.as_deref(),
        Some("2.1.197")
    );

    let mut settings = fake.settings();
    settings.claude_path = fake.path().join("missing");
    assert_eq!(cli_version(&settings).await, None);

    let failing = Fake::new("echo 2.1.197; exit 1");
    assert_eq!(cli_version(&failing.settings()).await, None);

    let hanging = Fake::new("exec sleep 1000");
    let limit = Duration::from_millis(200);
    let started = Instant::now();
    assert_eq!(cli_version_within(&hanging.settings(), limit).await, None);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn events_arrive_while_the_run_is_going() {
    // The first event must reach the callback before the CLI finishes: the fake waits for a
    // file the callback creates.
    let fake = Fake::new(&format!(
        r#"{INIT}
i=0
while [ ! -e "$FAKE_DIR/go" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
[ -e "$FAKE_DIR/go" ] && echo '{{"type":"result","subtype":"success","is_error":false,"result":"streamed"}}'"#
    ));
    let go = fake.path().join("go");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let (_tx, rx) = watch::channel(None);
    let outcome = run(&fake.spec(), &fake.settings(), rx, &mut move |e| {
        if matches!(e, CliEvent::Init { .. }) {
            let _ = std::fs::write(&go, b"");
        }
        if let Ok(mut v) = seen2.lock() {
            v.push(e);
        }
    })
    .await;
    assert_eq!(outcome.status, TaskStatus::Completed, "{outcome:?}");
    assert_eq!(seen.lock().map(|v| v.len()).unwrap_or(0), 2);
}

#[test]
fn the_run_future_is_send() {
    // Workers spawn runs on the multi-threaded runtime.
    fn assert_send<T: Send>(_: &T) {}
    let fake = Fake::new("true");
    let (spec, settings) = (fake.spec(), fake.settings());
    let (_tx, rx) = watch::channel(None);
    let mut on_event = |_e: CliEvent| {};
    let fut = run(&spec, &settings, rx, &mut on_event);
    assert_send(&fut);
}

#[test]
fn the_server_api_key_is_not_inherited_but_claude_env_may_set_it() {
    let mut settings = RunnerSettings::new(PathBuf::from("/bin/true"));
    let mut cmd = Command::new("/bin/true");
    cmd.env(crate::config::load::API_KEY_ENV, "inherited-secret");
    apply_env(&mut cmd, &settings);
    let removed = cmd
        .as_std()
        .get_envs()
        .any(|(k, v)| k == crate::config::load::API_KEY_ENV && v.is_none());
    assert!(
        removed,
        "CCS_API_KEY is removed from the child's environment"
    );

    settings.env.insert(
        crate::config::load::API_KEY_ENV.into(),
        "from-claude-env".into(),
    );
    let mut cmd = Command::new("/bin/true");
    apply_env(&mut cmd, &settings);
    let set = cmd.as_std().get_envs().any(|(k, v)| {
        k == crate::config::load::API_KEY_ENV && v == Some(std::ffi::OsStr::new("from-claude-env"))
    });
    assert!(set, "claudeEnv still wins");
}
