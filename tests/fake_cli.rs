//! Tests of the fake Claude CLI (tests/fake_claude/): its output is compared with the recorded
//! real runs in tests/fixtures/claude-cli/ and with docs/fake-claude.md. The service's tests
//! trust the fake, so the fake gets its own tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-claude");
/// The session id of the recorded session runs (s1, s2, s7…).
const RECORDED_SESSION: &str = "11111111-2222-4333-8444-555555555555";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/claude-cli/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn fixture_rc(name: &str) -> i32 {
    fixture(&format!("{name}.rc"))
        .trim()
        .parse()
        .expect("fixture rc is a number")
}

/// One test's world: a config dir (`CLAUDE_CONFIG_DIR`, also `HOME`), a project dir used as
/// the cwd, and a call log. The environment is cleared so that nothing from the developer's
/// shell (`IS_SANDBOX`, `FAKE_CLAUDE_*`, API keys) changes the fake's behaviour.
struct Sandbox {
    config: TempDir,
    project: TempDir,
    log: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let config = tempfile::tempdir().expect("config dir");
        let project = tempfile::tempdir().expect("project dir");
        let log = config.path().join("calls.jsonl");
        Sandbox {
            config,
            project,
            log,
        }
    }

    fn cwd(&self) -> PathBuf {
        self.project.path().canonicalize().expect("canonical cwd")
    }

    fn cmd_in(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(FAKE);
        cmd.args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.config.path())
            .env("CLAUDE_CONFIG_DIR", self.config.path())
            .env("FAKE_CLAUDE_LOG", &self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_in(&self.cwd(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run fake-claude")
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("call log line is JSON"))
            .collect()
    }

    fn record(&self, event: &str, pid: u32) -> Option<Value> {
        self.records()
            .into_iter()
            .find(|r| r["event"] == event && r["pid"] == pid)
    }

    /// Waits (polling, with a deadline) for the `hang` event of `pid`; returns the child pid.
    fn wait_for_hang(&self, pid: u32) -> i32 {
        let hang = poll(Duration::from_secs(10), || self.record("hang", pid))
            .expect("the fake reported its hang");
        hang["child_pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .expect("hang child pid")
    }

    fn project_dir(&self, cwd: &Path) -> PathBuf {
        let enc: String = cwd
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.config.path().join("projects").join(enc)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON value ({e}): {}", stdout(o)))
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

/// A compact name per stream line (`system/init`, `ev/content_block_delta`, `assistant/text`).
fn shape(line: &Value) -> String {
    let t = line["type"].as_str().unwrap_or("?");
    match t {
        "system" => format!("system/{}", line["subtype"].as_str().unwrap_or("?")),
        "stream_event" => format!("ev/{}", line["event"]["type"].as_str().unwrap_or("?")),
        "assistant" | "user" => format!(
            "{t}/{}",
            line["message"]["content"][0]["type"]
                .as_str()
                .unwrap_or("?")
        ),
        other => other.to_string(),
    }
}

fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    poll(limit, || child.try_wait().expect("try_wait"))
}

/// Gone, or a zombie nobody reaps yet (an orphan in a container whose init does not reap).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z"),
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: sends a signal to a process (or, with a negative pid, a group) this test started.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pid fits i32")
}

#[test]
fn variadic_option_swallows_the_prompt_like_the_real_cli() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "-p",
        "--allowedTools",
        "Bash",
        "hello prompt",
        "--output-format",
        "json",
    ]);
    assert_eq!(stderr(&out), fixture("g_variadic_swallow.stderr"));
    assert_eq!(out.status.code(), Some(fixture_rc("g_variadic_swallow")));
    assert!(out.stdout.is_empty());

    let out = sb.run(&[
        "-p",
        "--add-dir",
        "/var/tmp",
        "hello prompt",
        "--output-format",
        "json",
    ]);
    assert_eq!(stderr(&out), fixture("g_adddir_swallow.stderr"));
    assert_eq!(out.status.code(), Some(1));

    // The `=` form does not swallow (g_variadic_eq).
    let out = sb.run(&[
        "-p",
        "--allowedTools=Bash",
        "hello prompt",
        "--output-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["result"], "fake reply #1 to: hello prompt");
}

#[test]
fn stream_json_without_verbose_fails_like_the_real_cli() {
    let sb = Sandbox::new();
    let out = sb.run(&["-p", "hi", "--output-format", "stream-json"]);
    assert_eq!(stderr(&out), fixture("noauth_streamjson_noverbose.stderr"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_match_the_recorded_stderr() {
    let sb = Sandbox::new();
    let missing = "99999999-2222-4333-8444-555555555555";
    let cases: &[(&str, &[&str])] = &[
        ("e_unknown_flag", &["-p", "hi", "--no-such-flag"]),
        ("e_permmode_bad", &["-p", "hi", "--permission-mode", "yolo"]),
        ("m_maxturns_bad", &["-p", "hi", "--max-turns", "abc"]),
        ("m_budget_bad", &["-p", "hi", "--max-budget-usd", "abc"]),
        ("noauth_badformat", &["-p", "hi", "--output-format", "xml"]),
        (
            "t_streamin_jsonout",
            &[
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "json",
            ],
        ),
        (
            "s8_bad_uuid",
            &[
                "-p",
                "x",
                "--session-id",
                "not-a-uuid",
                "--output-format",
                "json",
            ],
        ),
        (
            "s9_resume_name",
            &[
                "-p",
                "x",
                "--resume",
                "some-name",
                "--output-format",
                "json",
            ],
        ),
        ("p_empty", &["-p", "", "--output-format", "json"]),
        (
            "p_dash_noescape",
            &["--output-format", "json", "-p", "-dash prompt"],
        ),
        (
            "e_mcp_missingfile",
            &[
                "-p",
                "hi",
                "--mcp-config",
                "/nonexistent/mcp.json",
                "--output-format",
                "json",
            ],
        ),
        (
            "s6_resume_missing",
            &["-p", "x", "--resume", missing, "--output-format", "json"],
        ),
        ("s6c_resume_missing_text", &["-p", "x", "--resume", missing]),
    ];
    for (name, args) in cases {
        let out = sb.run(args);
        assert_eq!(stderr(&out), fixture(&format!("{name}.stderr")), "{name}");
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(out.stdout.is_empty(), "{name}: {}", stdout(&out));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let out = sb.run(&["-p", "x", "--dangerously-skip-permissions"]);
        assert_eq!(stderr(&out), fixture("m_toolw_skip.stderr"));
        assert_eq!(out.status.code(), Some(1));
        let out = sb
            .cmd(&["-p", "x", "--permission-mode", "bypassPermissions"])
            .env("IS_SANDBOX", "1")
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "IS_SANDBOX=1 allows it: {}",
            stderr(&out)
        );
    }
}

#[test]
fn resume_of_an_unknown_session_in_stream_json_prints_a_result_line() {
    let sb = Sandbox::new();
    let id = "99999999-2222-4333-8444-555555555555";
    let out = sb.run(&[
        "-p",
        "x",
        "--resume",
        id,
        "--output-format",
        "stream-json",
        "--verbose",
    ]);
    assert_eq!(stderr(&out), fixture("s6b_resume_missing_stream.stderr"));
    assert_eq!(out.status.code(), Some(1));
    let ours = lines(&stdout(&out));
    let real = lines(&fixture("s6b_resume_missing_stream.stdout"));
    assert_eq!(ours.len(), 1);
    assert_eq!(keys(&ours[0]), keys(&real[0]));
    assert_eq!(ours[0]["subtype"], "error_during_execution");
    assert_eq!(ours[0]["session_id"], id);
}

#[test]
fn version_and_interactive_mode() {
    let sb = Sandbox::new();
    let out = sb.run(&["-v"]);
    assert_eq!(stdout(&out), "2.1.330 (Claude Code)\n");
    let out = sb
        .cmd(&["--version"])
        .env("FAKE_CLAUDE_VERSION", "2.1.197")
        .output()
        .expect("run");
    assert_eq!(stdout(&out), "2.1.197 (Claude Code)\n");
    let out = sb.run(&["hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "fake-claude: interactive mode not supported\n"
    );
}

#[test]
fn json_result_has_the_recorded_field_set() {
    let sb = Sandbox::new();
    let pairs: &[(&str, &str, &[&str])] = &[
        (
            "2.1.330",
            "mock_json.stdout",
            &["-p", "hi", "--output-format", "json"],
        ),
        (
            "2.1.197",
            "v2.1.197_json.stdout",
            &["-p", "hi", "--output-format", "json"],
        ),
        (
            "2.0.0",
            "v2.0.0_json.stdout",
            &["-p", "hi", "--output-format", "json"],
        ),
        (
            "2.1.330",
            "m_maxturns.stdout",
            &[
                "-p",
                "x [[fake:tool_loop]]",
                "--max-turns",
                "2",
                "--output-format",
                "json",
            ],
        ),
        (
            "2.1.330",
            "m_401_r1.stdout",
            &["-p", "x [[fake:api_error=401]]", "--output-format", "json"],
        ),
        (
            "2.1.330",
            "noauth_json.stdout",
            &["-p", "x [[fake:not_logged_in]]", "--output-format", "json"],
        ),
        (
            "2.1.112",
            "v2.1.112_err400.stdout",
            &["-p", "x [[fake:api_error=400]]", "--output-format", "json"],
        ),
    ];
    for (version, name, args) in pairs {
        let out = sb
            .cmd(args)
            .env("FAKE_CLAUDE_VERSION", version)
            .output()
            .expect("run");
        let ours = json(&out);
        let real: Value = serde_json::from_str(&fixture(name)).expect("fixture JSON");
        assert_eq!(keys(&ours), keys(&real), "{name}: result keys");
        assert_eq!(
            keys(&ours["usage"]),
            keys(&real["usage"]),
            "{name}: usage keys"
        );
        if let Some((_, real_model)) = real["modelUsage"].as_object().and_then(|m| m.iter().next())
        {
            let our_model = ours["modelUsage"]
                .as_object()
                .and_then(|m| m.values().next())
                .expect("modelUsage entry");
            assert_eq!(keys(our_model), keys(real_model), "{name}: modelUsage keys");
        }
        // `type` first, as the spec asks (2.1.330 itself puts it in the middle).
        assert!(stdout(&out).starts_with("{\"type\":\"result\""), "{name}");
    }

    // Deterministic usage: "hi" is 2 bytes, "fake reply #1 to: hi" 20 bytes.
    let r = json(&sb.run(&["-p", "hi", "--output-format", "json"]));
    assert_eq!(r["usage"]["input_tokens"], 11);
    assert_eq!(r["usage"]["output_tokens"], 5);
    let cost = r["total_cost_usd"].as_f64().expect("cost");
    assert!((cost - (11.0 * 4e-6 + 5.0 * 20e-6)).abs() < 1e-12, "{cost}");
}

#[test]
fn stream_json_lines_come_in_the_recorded_order() {
    let sb = Sandbox::new();
    let cases: &[(&str, &[&str])] = &[
        (
            "m_stream",
            &["-p", "hi", "--output-format", "stream-json", "--verbose"],
        ),
        (
            "m_stream_partial",
            &[
                "-p",
                "hi",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
            ],
        ),
        (
            "m_stream_tool_partial",
            &[
                "-p",
                "x [[fake:tool=Bash]]",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
            ],
        ),
        (
            "m_tool_allowed",
            &[
                "-p",
                "x [[fake:tool=Bash]]",
                "--output-format",
                "stream-json",
                "--verbose",
            ],
        ),
        (
            "m_toolw_denied",
            &[
                "-p",
                "x [[fake:tool=Bash]] [[fake:deny_tool]]",
                "--output-format",
                "stream-json",
                "--verbose",
            ],
        ),
        (
            "m_maxturns_stream",
            &[
                "-p",
                "x [[fake:tool_loop]]",
                "--max-turns",
                "1",
                "--output-format",
                "stream-json",
                "--verbose",
            ],
        ),
        (
            "m_budget",
            &[
                "-p",
                "x [[fake:tool_loop]] [[fake:in_tokens=200000]]",
                "--max-budget-usd",
                "0.5",
                "--output-format",
                "stream-json",
                "--verbose",
            ],
        ),
    ];
    for (name, args) in cases {
        let out = sb.run(args);
        let ours: Vec<String> = lines(&stdout(&out)).iter().map(shape).collect();
        let real: Vec<String> = lines(&fixture(&format!("{name}.stdout")))
            .iter()
            .map(shape)
            .collect();
        assert_eq!(ours, real, "{name}");
    }

    // K chunks → K deltas, which concatenate to the assistant text.
    let out = sb.run(&[
        "-p",
        "split me [[fake:chunks=3]]",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ]);
    let all = lines(&stdout(&out));
    let deltas: Vec<&str> = all
        .iter()
        .filter(|l| l["event"]["type"] == "content_block_delta")
        .map(|l| l["event"]["delta"]["text"].as_str().expect("delta text"))
        .collect();
    assert_eq!(deltas.len(), 3);
    assert_eq!(deltas.concat(), "fake reply #1 to: split me");
    let result = all.last().expect("result line");
    assert_eq!(result["type"], "result");
    assert_eq!(result["result"], "fake reply #1 to: split me");

    // The denied tool is listed in permission_denials.
    let out = sb.run(&[
        "-p",
        "x [[fake:tool=Bash]] [[fake:deny_tool]]",
        "--output-format",
        "json",
    ]);
    let r = json(&out);
    assert_eq!(r["permission_denials"][0]["tool_name"], "Bash");
    assert_eq!(r["num_turns"], 2);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn sessions_resume_fork_and_depend_on_the_cwd_by_version() {
    let sb = Sandbox::new();
    let a = sb.cwd();
    let elsewhere = tempfile::tempdir().expect("other cwd");
    let b = elsewhere.path().canonicalize().expect("canonical");
    let s = RECORDED_SESSION;
    let run_in = |cwd: &Path, args: &[&str], version: &str| {
        sb.cmd_in(cwd, args)
            .env("FAKE_CLAUDE_VERSION", version)
            .output()
            .expect("run")
    };

    let first = json(&run_in(
        &a,
        &["-p", "first", "--session-id", s, "--output-format", "json"],
        "2.1.330",
    ));
    assert_eq!(first["session_id"], s);
    assert_eq!(first["result"], "fake reply #1 to: first");
    let transcript = sb.project_dir(&a).join(format!("{s}.jsonl"));
    assert!(transcript.is_file(), "{}", transcript.display());

    let second = json(&run_in(
        &a,
        &["-p", "second", "--resume", s, "--output-format", "json"],
        "2.1.330",
    ));
    assert_eq!(second["session_id"], s);
    assert_eq!(second["result"], "fake reply #2 to: second");

    // ≤2.1.197: only the cwd's project directory is searched.
    let out = run_in(
        &b,
        &["-p", "third", "--resume", s, "--output-format", "json"],
        "2.1.197",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        format!("No conversation found with session ID: {s}\n")
    );

    // 2.1.330 finds it anywhere and appends to the original transcript.
    let third = json(&run_in(
        &b,
        &["-p", "third", "--resume", s, "--output-format", "json"],
        "2.1.330",
    ));
    assert_eq!(third["session_id"], s);
    assert_eq!(third["result"], "fake reply #3 to: third");
    assert!(!sb.project_dir(&b).join(format!("{s}.jsonl")).exists());

    let before = std::fs::read_to_string(&transcript).expect("transcript");
    let fork = json(&run_in(
        &a,
        &[
            "-p",
            "fork",
            "--resume",
            s,
            "--fork-session",
            "--output-format",
            "json",
        ],
        "2.1.330",
    ));
    let fork_id = fork["session_id"].as_str().expect("fork id");
    assert_ne!(fork_id, s);
    assert_eq!(fork["result"], "fake reply #4 to: fork");
    assert_eq!(
        std::fs::read_to_string(&transcript).expect("transcript"),
        before,
        "original untouched"
    );
    assert!(sb
        .project_dir(&a)
        .join(format!("{fork_id}.jsonl"))
        .is_file());

    // `--session-id` only creates.
    let out = run_in(
        &a,
        &["-p", "x", "--session-id", s, "--output-format", "json"],
        "2.1.330",
    );
    assert_eq!(stderr(&out), fixture("s7_sessionid_reuse.stderr"));
    assert_eq!(out.status.code(), Some(fixture_rc("s7_sessionid_reuse")));

    // `--no-session-persistence` reports an id but writes nothing.
    let out = run_in(
        &a,
        &[
            "-p",
            "x",
            "--no-session-persistence",
            "--output-format",
            "json",
        ],
        "2.1.330",
    );
    let id = json(&out)["session_id"].as_str().expect("id").to_string();
    assert!(!sb.project_dir(&a).join(format!("{id}.jsonl")).exists());
}

#[test]
fn cost_is_cumulative_in_2_1_330_and_per_run_before() {
    for (version, mode, cumulative) in [
        ("2.1.330", None, true),
        ("2.1.197", None, false),
        ("2.1.330", Some("per_run"), false),
        ("2.1.197", Some("cumulative"), true),
    ] {
        let sb = Sandbox::new();
        let run = |args: &[&str]| {
            let mut cmd = sb.cmd(args);
            cmd.env("FAKE_CLAUDE_VERSION", version);
            if let Some(m) = mode {
                cmd.env("FAKE_CLAUDE_COST_MODE", m);
            }
            json(&cmd.output().expect("run"))
        };
        let s = uuid::Uuid::new_v4().to_string();
        let first = run(&[
            "-p",
            "a [[fake:cost=0.25]]",
            "--session-id",
            &s,
            "--output-format",
            "json",
        ]);
        let second = run(&[
            "-p",
            "b [[fake:cost=0.5]]",
            "--resume",
            &s,
            "--output-format",
            "json",
        ]);
        assert_eq!(first["total_cost_usd"], 0.25);
        let expected = if cumulative { 0.75 } else { 0.5 };
        assert_eq!(second["total_cost_usd"], expected, "{version} {mode:?}");
        let model_cost = second["modelUsage"]["claude-opus-5-5"]["costUSD"].as_f64();
        assert_eq!(model_cost, Some(expected), "{version} {mode:?}");
        // `usage` is per run in every version.
        assert_eq!(second["usage"]["input_tokens"], 11);
    }
}

#[test]
fn max_turns_with_a_tool_loop() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "-p",
        "x [[fake:tool_loop]]",
        "--max-turns",
        "2",
        "--output-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["subtype"], "error_max_turns");
    assert_eq!(r["is_error"], true);
    assert_eq!(r["num_turns"], 3);
    assert_eq!(r["stop_reason"], "tool_use");
    assert_eq!(r["errors"][0], "Reached maximum number of turns (2)");
    assert_eq!(r["usage"]["input_tokens"], 2 * 11, "two model calls");
    assert!(r.get("result").is_none());

    let out = sb.run(&["-p", "x [[fake:tool_loop]]", "--max-turns", "1"]);
    assert_eq!(stdout(&out), fixture("m_maxturns_text.stdout"));
    assert_eq!(out.status.code(), Some(fixture_rc("m_maxturns_text")));

    // 2.0.0: not an error, num_turns N, exit 0.
    let out = sb
        .cmd(&[
            "-p",
            "x [[fake:tool_loop]]",
            "--max-turns",
            "1",
            "--output-format",
            "json",
        ])
        .env("FAKE_CLAUDE_VERSION", "2.0.0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let r = json(&out);
    assert_eq!(
        (r["is_error"].clone(), r["num_turns"].clone()),
        (Value::Bool(false), Value::from(1))
    );
}

#[test]
fn api_error_500_texts() {
    let sb = Sandbox::new();
    let out = sb.run(&["-p", "x [[fake:api_error=500]]"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "API Error: 500 Internal server error. This is a server-side issue, usually temporary — \
         try again in a moment. If it persists, check https://status.claude.com.\n"
    );

    // Through a gateway, as recorded in m_500_r1 (one retry).
    let out = sb
        .cmd(&[
            "-p",
            "x [[fake:api_error=500]] [[fake:retries=1]] [[fake:retry_ms=1]]",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .env("ANTHROPIC_BASE_URL", "http://127.0.0.1:18080")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let ours = lines(&stdout(&out));
    let real = lines(&fixture("m_500_r1.stdout"));
    assert_eq!(
        ours.iter().map(shape).collect::<Vec<_>>(),
        real.iter().map(shape).collect::<Vec<_>>()
    );
    let (r, rr) = (ours.last().expect("result"), real.last().expect("result"));
    assert_eq!(r["result"], rr["result"]);
    assert_eq!(r["api_error_status"], 500);
    assert_eq!(r["is_error"], true);
    assert_eq!(r["subtype"], "success");
    assert_eq!(ours[ours.len() - 2]["is_api_error_message"], true);
}

#[test]
fn big_reply_is_one_long_line() {
    let sb = Sandbox::new();
    let out = sb.run(&[
        "-p",
        "x [[fake:big=2000000]]",
        "--output-format",
        "stream-json",
        "--verbose",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let all = lines(&stdout(&out));
    let result = all.last().expect("result line");
    assert_eq!(result["result"].as_str().map(str::len), Some(2_000_000));
    let assistant = all
        .iter()
        .find(|l| l["type"] == "assistant")
        .expect("assistant line");
    assert_eq!(
        assistant["message"]["content"][0]["text"]
            .as_str()
            .map(str::len),
        Some(2_000_000)
    );

    let out = sb.run(&["-p", "x [[fake:big=2000000]]"]);
    assert_eq!(out.stdout.len(), 2_000_001);
}

#[test]
fn call_log_records_what_the_fake_received() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&[
            "-p",
            "--output-format=json",
            "--model=sonnet",
            "--allowedTools=Bash,Read",
        ])
        .env("ANTHROPIC_API_KEY", "sk-test-key")
        .env("IS_SANDBOX", "1")
        .env("UNRELATED_VAR", "x")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello from stdin")
        .expect("write stdin");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["result"], "fake reply #1 to: hello from stdin");

    let start = sb.record("start", pid).expect("start line");
    assert_eq!(start["argv"][0], "-p");
    let r = sb.record("exit", pid).expect("exit record");
    assert_eq!(
        r["argv"],
        serde_json::json!([
            "-p",
            "--output-format=json",
            "--model=sonnet",
            "--allowedTools=Bash,Read"
        ])
    );
    assert_eq!(r["cwd"], sb.cwd().to_string_lossy().as_ref());
    assert_eq!(r["env"]["ANTHROPIC_API_KEY"], "sk-test-key");
    assert_eq!(r["env"]["IS_SANDBOX"], "1");
    assert_eq!(
        r["env"]["CLAUDE_CONFIG_DIR"],
        sb.config.path().to_string_lossy().as_ref()
    );
    assert!(r["env"].get("UNRELATED_VAR").is_none());
    assert_eq!(r["stdin"], "hello from stdin");
    assert_eq!(r["stdin_closed"], true);
    assert_eq!(r["prompt"], "hello from stdin");
    assert_eq!(r["parsed_flags"]["output-format"], "json");
    assert_eq!(r["parsed_flags"]["model"], "sonnet");
    assert_eq!(
        r["parsed_flags"]["allowedTools"],
        serde_json::json!(["Bash,Read"])
    );
    assert_eq!(r["parsed_flags"]["print"], true);
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["concurrent_session"], false);
    // SAFETY: getpgid(0) queries this test process; the fake stays in our group.
    assert_eq!(r["pgid"], unsafe { libc::getpgid(0) });
    assert!(r["started_at"].is_string() && r["ended_at"].is_string());
    assert!(r["session_id"].is_string());
}

#[test]
fn stdin_left_open_costs_three_seconds_and_a_warning() {
    let sb = Sandbox::new();
    let started = Instant::now();
    let mut child = sb
        .cmd(&["-p", "hi", "--output-format", "json"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Keep our end of stdin open until the fake has exited.
    let stdin = child.stdin.take();
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    drop(stdin);
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stderr(&out), fixture("t_stdin_open.stderr"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["result"], "fake reply #1 to: hi");
    assert_eq!(
        sb.record("exit", pid).expect("record")["stdin_closed"],
        false
    );
}

#[test]
fn sigterm_ends_a_hanging_fake_with_143_and_kills_its_child() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&[
            "-p",
            "wait [[fake:hang]]",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .spawn()
        .expect("spawn");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut init = String::new();
    reader.read_line(&mut init).expect("init line");
    assert_eq!(
        serde_json::from_str::<Value>(&init).expect("json")["subtype"],
        "init"
    );
    let sleeper = sb.wait_for_hang(child.id());
    assert!(!process_gone(sleeper));

    let sent = Instant::now();
    signal(pid_of(&child), libc::SIGTERM);
    let status = wait_timeout(&mut child, Duration::from_secs(1)).expect("exited within a second");
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert!(poll(Duration::from_secs(1), || process_gone(sleeper)
        .then_some(()))
    .is_some());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).expect("rest of stdout");
    assert_eq!(rest, "", "nothing more after SIGTERM");
    let r = sb.record("exit", child.id()).expect("exit record");
    assert_eq!(
        (r["exit_code"].clone(), r["signal"].clone()),
        (Value::from(143), Value::from("SIGTERM"))
    );
}

#[test]
fn ignore_sigterm_needs_sigkill_for_the_whole_group() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&[
            "-p",
            "wait [[fake:hang]] [[fake:ignore_sigterm]]",
            "--output-format",
            "json",
        ])
        .process_group(0)
        .spawn()
        .expect("spawn");
    let group = pid_of(&child);
    let sleeper = sb.wait_for_hang(child.id());

    signal(-group, libc::SIGTERM);
    // Not a synchronisation sleep: the assertion is that nothing happens for a while.
    assert!(
        wait_timeout(&mut child, Duration::from_millis(300)).is_none(),
        "SIGTERM ignored"
    );
    assert!(!process_gone(sleeper), "the child ignores SIGTERM too");

    signal(-group, libc::SIGKILL);
    let status = wait_timeout(&mut child, Duration::from_secs(2)).expect("killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(poll(Duration::from_secs(2), || process_gone(sleeper)
        .then_some(()))
    .is_some());
}

#[test]
fn sigint_prints_an_interrupted_result_and_exits_0() {
    let sb = Sandbox::new();
    let mut child = sb
        .cmd(&["-p", "wait [[fake:hang]]", "--output-format", "json"])
        .spawn()
        .expect("spawn");
    sb.wait_for_hang(child.id());
    signal(pid_of(&child), libc::SIGINT);
    let status = wait_timeout(&mut child, Duration::from_secs(2)).expect("exited");
    assert_eq!(status.code(), Some(0));
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let r: Value = serde_json::from_str(&out).expect("result line");
    assert_eq!(r["subtype"], "error_during_execution");
    assert_eq!(r["terminal_reason"], "aborted_streaming");
    assert_eq!(
        keys(&r),
        keys(&serde_json::from_str(&fixture("k_SIGINT_json.stdout")).expect("fixture"))
    );
}

#[test]
fn a_second_invocation_on_a_locked_session_is_flagged() {
    let sb = Sandbox::new();
    let s = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        sb.run(&["-p", "one", "--session-id", &s]).status.code(),
        Some(0)
    );

    let mut holder = sb
        .cmd(&["-p", "two [[fake:hang]]", "--resume", &s])
        .spawn()
        .expect("spawn");
    sb.wait_for_hang(holder.id());
    let lock = sb.project_dir(&sb.cwd()).join(format!("{s}.lock"));
    assert!(lock.is_file());

    let second = sb
        .cmd(&["-p", "three", "--resume", &s])
        .spawn()
        .expect("spawn");
    let second_pid = second.id();
    assert_eq!(
        second.wait_with_output().expect("wait").status.code(),
        Some(0)
    );
    assert_eq!(
        sb.record("exit", second_pid).expect("record")["concurrent_session"],
        true
    );

    signal(pid_of(&holder), libc::SIGTERM);
    assert_eq!(
        wait_timeout(&mut holder, Duration::from_secs(2))
            .expect("exited")
            .code(),
        Some(143)
    );
    assert!(!lock.exists(), "the lock is removed on SIGTERM");

    // The interrupted turn still counts: its prompt was recorded before the hang.
    let third = sb
        .cmd(&["-p", "four", "--resume", &s])
        .spawn()
        .expect("spawn");
    let third_pid = third.id();
    let out = third.wait_with_output().expect("wait");
    assert_eq!(stdout(&out), "fake reply #4 to: four\n");
    assert_eq!(
        sb.record("exit", third_pid).expect("record")["concurrent_session"],
        false
    );
}

/// Reads a child's stdout lines on a thread, so that every wait has a deadline.
struct LineFeed(std::sync::mpsc::Receiver<String>);

impl LineFeed {
    fn new(child: &mut Child) -> LineFeed {
        use std::io::BufRead;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LineFeed(rx)
    }

    /// The next line matching `pred` (others are skipped), within 10 s.
    fn until(&self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .0
                .recv_timeout(left)
                .expect("a line before the deadline");
            let v: Value = serde_json::from_str(&line).expect("stream line is JSON");
            if pred(&v) {
                return v;
            }
        }
    }
}

/// One run of the stdin permission protocol: returns the `can_use_tool` request, the tool
/// result line and the result line, after answering the request with `answer`.
fn permission_round(sb: &Sandbox, answer: impl Fn(&str) -> Value) -> (Value, Value, Value) {
    use std::io::Write;
    let mut child = sb
        .cmd(&[
            "-p",
            "--output-format=stream-json",
            "--input-format=stream-json",
            "--verbose",
            "--permission-prompt-tool=stdio",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn fake");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = LineFeed::new(&mut child);
    writeln!(
        stdin,
        r#"{{"type":"control_request","request_id":"init-1","request":{{"subtype":"initialize"}}}}"#
    )
    .expect("write");
    let init = feed.until(|v| v["type"] == "control_response");
    assert_eq!(init["response"]["subtype"], "success");
    assert_eq!(init["response"]["request_id"], "init-1");
    writeln!(
        stdin,
        r#"{{"type":"user","message":{{"role":"user","content":"make it [[fake:tool=Bash]] [[fake:deny_tool]]"}},"parent_tool_use_id":null,"session_id":""}}"#
    )
    .expect("write");
    let request = feed.until(|v| v["type"] == "control_request");
    let request_id = request["request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    writeln!(stdin, "{}", answer(&request_id)).expect("write");
    let tool_result = feed.until(|v| v["type"] == "user");
    let result = feed.until(|v| v["type"] == "result");
    // Still running until stdin closes, as the real CLI.
    assert!(child.try_wait().expect("try_wait").is_none());
    drop(stdin);
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits after EOF");
    assert_eq!(status.code(), Some(0));
    (request, tool_result, result)
}

#[test]
fn permission_prompt_over_stdin_allow_runs_the_tool() {
    let sb = Sandbox::new();
    let (request, tool_result, result) = permission_round(&sb, |id| {
        serde_json::json!({"type":"control_response","response":{"subtype":"success","request_id":id,
            "response":{"behavior":"allow","updatedInput":{"command":"mkdir y && echo made"}}}})
    });
    assert_eq!(request["request"]["subtype"], "can_use_tool");
    assert_eq!(request["request"]["tool_name"], "Bash");
    assert_eq!(
        request["request"]["input"]["command"],
        "mkdir x && echo made"
    );
    assert_eq!(request["request"]["description"], "Make a dir");
    let block = &tool_result["message"]["content"][0];
    assert_eq!(block["is_error"], false);
    assert_eq!(block["content"], "made");
    // The updated input is what ran.
    assert!(sb.cwd().join("y").is_dir());
    assert!(!sb.cwd().join("x").exists());
    assert_eq!(result["is_error"], false);
    assert_eq!(result["permission_denials"], serde_json::json!([]));
}

#[test]
fn permission_prompt_over_stdin_deny_reaches_the_model() {
    let sb = Sandbox::new();
    let (_, tool_result, result) = permission_round(&sb, |id| {
        serde_json::json!({"type":"control_response","response":{"subtype":"success","request_id":id,
            "response":{"behavior":"deny","message":"not today"}}})
    });
    let block = &tool_result["message"]["content"][0];
    assert_eq!(block["is_error"], true);
    assert_eq!(block["content"], "not today");
    assert!(!sb.cwd().join("x").exists());
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["permission_denials"][0]["tool_name"], "Bash");
}
