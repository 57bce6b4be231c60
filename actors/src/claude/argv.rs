//! The CLI's argument vector for one run.
//!
//! Two rules, both from observed failures of the real CLI (`docs/claude-cli.md`):
//! * **Every value flag is written `--flag=value`.** `--allowedTools`, `--disallowedTools`,
//!   `--mcp-config` and friends are variadic: in the space form they swallow the arguments that
//!   follow them, so a later flag (or the prompt) would silently become a tool name.
//! * **The prompt is never on argv.** It goes to stdin: one argv string over 128 KiB fails at
//!   exec (E2BIG), and a prompt starting with `-` would be parsed as options.

use crate::model::{RunSpec, SessionMode};

/// Everything after the program name for `spec`.
///
/// Policy (defaults, allowed modes, tool intersection) is decided before a [`RunSpec`] is
/// stored, so this only translates. Empty `model`, `permission_mode` and `agent` strings count
/// as unset (`--model=` would make the CLI fail for no useful reason); empty tool names are
/// dropped.
pub fn build_args(spec: &RunSpec) -> Vec<String> {
    let mut args: Vec<String> = [
        "-p",
        "--output-format=stream-json",
        // stream-json requires --verbose in print mode (exit 1 otherwise).
        "--verbose",
        // Text deltas for streaming clients.
        "--include-partial-messages",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    push_non_empty(&mut args, "--model", spec.model.as_deref());
    if let Some(turns) = spec.max_turns {
        args.push(format!("--max-turns={turns}"));
    }
    if let Some(budget) = spec.max_budget_usd {
        args.push(format!("--max-budget-usd={}", format_usd(budget)));
    }
    // System prompts are passed verbatim, even empty: an empty `system_prompt` is a request.
    if let Some(s) = &spec.system_prompt {
        args.push(format!("--system-prompt={s}"));
    }
    if let Some(s) = &spec.append_system_prompt {
        args.push(format!("--append-system-prompt={s}"));
    }
    push_non_empty(
        &mut args,
        "--permission-mode",
        spec.permission_mode.as_deref(),
    );
    push_tool_list(&mut args, "--allowedTools", &spec.allowed_tools);
    push_tool_list(&mut args, "--disallowedTools", &spec.disallowed_tools);
    push_non_empty(&mut args, "--agent", spec.agent.as_deref());
    if let Some(path) = &spec.mcp_config {
        args.push(format!("--mcp-config={}", path.display()));
        // Only the servers of this file: never the user's or the project's own MCP config.
        args.push("--strict-mcp-config".to_string());
    }
    push_session(&mut args, &spec.session);
    if spec.approvals {
        // The control protocol: prompts and permission answers go on stdin as stream-json, and
        // a tool that needs permission is asked on stdout instead of being denied.
        args.push("--input-format=stream-json".to_string());
        args.push("--permission-prompt-tool=stdio".to_string());
    }
    args
}

/// `--flag=value` when `value` is present and not empty.
fn push_non_empty(args: &mut Vec<String>, flag: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        args.push(format!("{flag}={v}"));
    }
}

/// One `--flag=A,B` argument (never one argument per tool: the flag is variadic).
fn push_tool_list(args: &mut Vec<String>, flag: &str, tools: &[String]) {
    let tools: Vec<&str> = tools
        .iter()
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    if !tools.is_empty() {
        args.push(format!("{flag}={}", tools.join(",")));
    }
}

/// Exactly one set of session flags per [`SessionMode`].
fn push_session(args: &mut Vec<String>, session: &SessionMode) {
    match session {
        SessionMode::None => {}
        SessionMode::Create { id } => args.push(format!("--session-id={id}")),
        SessionMode::Resume { id } => args.push(format!("--resume={id}")),
        SessionMode::Fork { from, id } => {
            args.push(format!("--resume={from}"));
            args.push("--fork-session".to_string());
            args.push(format!("--session-id={id}"));
        }
    }
}

/// A dollar amount as the CLI parses it. Rust's `Display` for `f64` never uses an exponent
/// (`1e-7` prints `0.0000001`) and prints the shortest form that round-trips, which is what the
/// CLI's `Number()` expects. A value that is not a positive finite number is passed through
/// unchanged (`NaN`, `-1`, `inf`): the CLI then refuses to start, so an invalid cap fails the
/// run rather than silently running it without a cap.
fn format_usd(x: f64) -> String {
    format!("{x}")
}

/// Make a prompt safe to send on stdin.
///
/// The CLI treats a prompt that *begins* with `/` as a slash command even on stdin (`/cost`
/// prints the session cost without calling the model; an unknown command answers "Unknown
/// command"). A leading space makes it plain text, as observed on the real CLI; nothing else
/// about the prompt changes. With `allow_slash` (the request asked for a slash command and the
/// config allows it) the prompt is passed unchanged. A leading `-` needs nothing: stdin is never
/// parsed as options.
pub fn neutralise_prompt(prompt: &str, allow_slash: bool) -> String {
    if !allow_slash && prompt.starts_with('/') {
        format!(" {prompt}")
    } else {
        prompt.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use uuid::Uuid;

    fn spec() -> RunSpec {
        RunSpec::new("hello", PathBuf::from("/tmp"), 1000)
    }

    const BASE: [&str; 4] = [
        "-p",
        "--output-format=stream-json",
        "--verbose",
        "--include-partial-messages",
    ];

    #[test]
    fn minimal_spec_has_only_the_fixed_flags() {
        assert_eq!(build_args(&spec()), BASE);
    }

    #[test]
    fn approvals_add_the_stdin_control_protocol() {
        let mut s = spec();
        s.approvals = true;
        let args = build_args(&s);
        assert_eq!(args[..4], BASE);
        assert_eq!(
            args[4..],
            [
                "--input-format=stream-json",
                "--permission-prompt-tool=stdio"
            ]
        );
    }

    #[test]
    fn prompt_is_never_on_argv() {
        let mut s = spec();
        s.prompt = "-dangerous --model=x /cost".into();
        let args = build_args(&s);
        assert!(args.iter().all(|a| !a.contains("dangerous")));
    }

    #[test]
    fn every_field_becomes_one_equals_argument() {
        let mut s = spec();
        s.model = Some("sonnet".into());
        s.max_turns = Some(3);
        s.max_budget_usd = Some(0.5);
        s.system_prompt = Some("You are X. --not-a-flag".into());
        s.permission_mode = Some("acceptEdits".into());
        s.allowed_tools = vec!["Bash(git log:*)".into(), "Read".into()];
        s.disallowed_tools = vec!["Write".into()];
        s.agent = Some("reviewer".into());
        s.mcp_config = Some(PathBuf::from("/etc/ccs/mcp.json"));
        let args = build_args(&s);
        let tail: Vec<&str> = args[BASE.len()..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--model=sonnet",
                "--max-turns=3",
                "--max-budget-usd=0.5",
                "--system-prompt=You are X. --not-a-flag",
                "--permission-mode=acceptEdits",
                "--allowedTools=Bash(git log:*),Read",
                "--disallowedTools=Write",
                "--agent=reviewer",
                "--mcp-config=/etc/ccs/mcp.json",
                "--strict-mcp-config",
            ]
        );
        // Every value flag carries its value in the same argument.
        for a in &tail {
            assert!(a.starts_with("--"), "{a}");
        }
    }

    #[test]
    fn append_system_prompt_and_empty_values() {
        let mut s = spec();
        s.append_system_prompt = Some("APPENDED".into());
        s.system_prompt = Some(String::new());
        s.model = Some(String::new());
        s.agent = Some(String::new());
        s.permission_mode = Some(String::new());
        s.allowed_tools = vec![String::new()];
        let args = build_args(&s);
        assert_eq!(
            &args[BASE.len()..],
            ["--system-prompt=", "--append-system-prompt=APPENDED"]
        );
    }

    #[test]
    fn budget_is_never_written_with_an_exponent() {
        for (x, want) in [
            (0.5, "0.5"),
            (1e-7, "0.0000001"),
            (2.0, "2"),
            (1e21, "1000000000000000000000"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            let mut s = spec();
            s.max_budget_usd = Some(x);
            let args = build_args(&s);
            assert_eq!(args[BASE.len()], format!("--max-budget-usd={want}"));
        }
    }

    #[test]
    fn session_modes_map_to_exactly_one_set_of_flags() {
        let id = Uuid::parse_str("11111111-2222-4333-8444-555555555555").expect("uuid");
        let cases = [
            (SessionMode::None, vec![]),
            (
                SessionMode::Create { id },
                vec!["--session-id=11111111-2222-4333-8444-555555555555"],
            ),
            (
                SessionMode::Resume { id },
                vec!["--resume=11111111-2222-4333-8444-555555555555"],
            ),
            (
                SessionMode::Fork {
                    from: id,
                    id: uuid::Uuid::from_u128(0x22222222_2222_4333_8444_555555555555),
                },
                vec![
                    "--resume=11111111-2222-4333-8444-555555555555",
                    "--fork-session",
                    "--session-id=22222222-2222-4333-8444-555555555555",
                ],
            ),
        ];
        for (mode, want) in cases {
            let mut s = spec();
            s.session = mode;
            assert_eq!(&build_args(&s)[BASE.len()..], want.as_slice());
        }
    }

    #[test]
    fn slash_prompts_are_neutralised_unless_allowed() {
        assert_eq!(neutralise_prompt("/cost", false), " /cost");
        assert_eq!(neutralise_prompt("/cost", true), "/cost");
        assert_eq!(neutralise_prompt("hi /cost", false), "hi /cost");
        assert_eq!(neutralise_prompt("-x", false), "-x");
        assert_eq!(neutralise_prompt("", false), "");
        assert_eq!(neutralise_prompt(" /already", false), " /already");
    }
}
