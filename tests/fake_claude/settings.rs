//! The run's settings, taken from the parsed flags, with the checks the real CLI makes after
//! parsing (each failing with its real stderr text and exit 1).

use std::path::{Path, PathBuf};

use crate::args::{js_parse_float, js_parse_int, Parsed};
use crate::output::Mode;
use crate::session::is_uuid;

pub const DEFAULT_MODEL: &str = "claude-opus-5-5";
const DEFAULT_TOOLS: &[&str] = &[
    "Task",
    "Bash",
    "Edit",
    "Read",
    "Write",
    "WebFetch",
    "WebSearch",
];

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub stream_input: bool,
    pub partial: bool,
    pub replay: bool,
    pub model: String,
    /// Not an alias and not a `claude-*` id: the real CLI warns on stderr.
    pub model_unrecognized: bool,
    pub max_turns: Option<i64>,
    pub max_budget: Option<f64>,
    pub permission_mode: String,
    pub allowed_tools: Vec<String>,
    pub tools: Vec<String>,
    pub mcp_servers: Vec<(String, &'static str)>,
    pub session_id: Option<String>,
    /// `Some(None)`: `--resume` without a value.
    pub resume: Option<Option<String>>,
    pub continue_: bool,
    pub fork: bool,
    pub persist: bool,
    pub name: Option<String>,
    /// `--permission-prompt-tool=stdio` (with stream-json input): a tool call that needs
    /// permission is asked on stdout as a `can_use_tool` control request, answered on stdin.
    pub prompt_stdio: bool,
}

/// Splits tool lists the way the CLI accepts them: commas or spaces, but a space inside
/// parentheses belongs to a rule (`Bash(git log:*)`).
pub fn split_tools(values: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for value in values {
        let mut depth = 0usize;
        let mut current = String::new();
        for c in value.chars() {
            match c {
                '(' => {
                    depth += 1;
                    current.push(c);
                }
                ')' => {
                    depth = depth.saturating_sub(1);
                    current.push(c);
                }
                ',' => out.push(std::mem::take(&mut current)),
                c if c.is_whitespace() && depth == 0 => out.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        out.push(current);
    }
    out.retain(|t| !t.trim().is_empty());
    out
}

fn resolve_model(requested: Option<&str>) -> (String, bool) {
    let from_env = std::env::var("ANTHROPIC_MODEL")
        .ok()
        .filter(|m| !m.is_empty());
    let Some(name) = requested.map(str::to_string).or(from_env) else {
        return (DEFAULT_MODEL.to_string(), false);
    };
    match name.as_str() {
        "opus" | "default" => (DEFAULT_MODEL.to_string(), false),
        "sonnet" => ("claude-sonnet-5-5".to_string(), false),
        "haiku" => ("claude-haiku-5-5".to_string(), false),
        other => (other.to_string(), !other.starts_with("claude-")),
    }
}

fn absolute(cwd: &str, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(cwd).join(p)
    }
}

fn command_exists(cmd: &str, cwd: &str) -> bool {
    if cmd.contains('/') {
        return absolute(cwd, cmd).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
}

/// `--mcp-config`: each value is inline JSON or a file. A server whose command cannot be found
/// is listed as `failed` (it does not fail the run, as in the real CLI).
fn mcp_servers(values: &[String], cwd: &str) -> Result<Vec<(String, &'static str)>, String> {
    let mut servers = Vec::new();
    for value in values {
        let config: serde_json::Value = match serde_json::from_str(value) {
            Ok(v) => v,
            Err(_) => {
                let path = absolute(cwd, value);
                let text = std::fs::read_to_string(&path).map_err(|_| {
                    format!(
                        "Error: Invalid MCP configuration:\nMCP config file not found: {}",
                        path.display()
                    )
                })?;
                serde_json::from_str(&text).map_err(|_| {
                    format!(
                        "Error: Invalid MCP configuration:\nMCP config file is not valid JSON: {}",
                        path.display()
                    )
                })?
            }
        };
        if let Some(map) = config.get("mcpServers").and_then(|m| m.as_object()) {
            for (name, server) in map {
                let ok = match server.get("command").and_then(|c| c.as_str()) {
                    Some(cmd) => command_exists(cmd, cwd),
                    None => server.get("url").is_some(),
                };
                servers.push((name.clone(), if ok { "connected" } else { "failed" }));
            }
        }
    }
    Ok(servers)
}

/// `--settings`: inline JSON, or else a file that must exist and hold JSON.
fn check_settings(value: &str, cwd: &str) -> Result<(), String> {
    if serde_json::from_str::<serde_json::Value>(value).is_ok_and(|v| v.is_object()) {
        return Ok(());
    }
    let path = absolute(cwd, value);
    let valid = std::fs::read_to_string(&path)
        .ok()
        .is_some_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "Error: Settings file not found: {}",
            path.display()
        ))
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn resolve(p: &Parsed, cwd: &str) -> Result<Settings, String> {
    let mode = match (p.text("output-format").unwrap_or("text"), p.has("verbose")) {
        ("stream-json", true) => Mode::Stream,
        ("stream-json", false) => {
            return Err(
                "Error: When using --print, --output-format=stream-json requires --verbose".into(),
            )
        }
        ("json", true) => Mode::JsonVerbose,
        ("json", false) => Mode::Json,
        _ => Mode::Text,
    };
    let stream_input = p.text("input-format") == Some("stream-json");
    if stream_input && mode != Mode::Stream {
        return Err("Error: --input-format=stream-json requires output-format=stream-json.".into());
    }
    let session_id = p.text("session-id").map(str::to_string);
    if session_id.as_deref().is_some_and(|id| !is_uuid(id)) {
        return Err("Error: Invalid session ID. Must be a valid UUID.".into());
    }
    let mcp = mcp_servers(p.list("mcp-config").unwrap_or(&[]), cwd)?;
    if let Some(s) = p.text("settings") {
        check_settings(s, cwd)?;
    }

    let skip = p.has("dangerously-skip-permissions");
    let permission_mode = if skip {
        "bypassPermissions".to_string()
    } else {
        p.text("permission-mode").unwrap_or("default").to_string()
    };
    let root_check = std::env::var("FAKE_CLAUDE_ROOT_CHECK").map_or(true, |v| v != "0");
    let sandboxed = std::env::var("IS_SANDBOX").is_ok_and(|v| v == "1");
    if root_check && permission_mode == "bypassPermissions" && running_as_root() && !sandboxed {
        return Err(
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
                .into(),
        );
    }

    let (model, model_unrecognized) = resolve_model(p.text("model"));
    let disallowed = split_tools(p.list("disallowedTools").unwrap_or(&[]));
    let mut tools: Vec<String> = match p.list("tools") {
        Some(values) => {
            let listed = split_tools(values);
            if listed.iter().any(|t| t == "default") {
                DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect()
            } else {
                listed
            }
        }
        None => DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect(),
    };
    tools.retain(|t| !disallowed.contains(t));

    Ok(Settings {
        mode,
        stream_input,
        partial: p.has("include-partial-messages"),
        replay: p.has("replay-user-messages"),
        model,
        model_unrecognized,
        max_turns: p.text("max-turns").and_then(js_parse_int),
        max_budget: p.text("max-budget-usd").and_then(js_parse_float),
        permission_mode,
        allowed_tools: split_tools(p.list("allowedTools").unwrap_or(&[])),
        tools,
        mcp_servers: mcp,
        session_id,
        resume: p.flags.get("resume").map(|v| match v {
            crate::args::FlagValue::Text(t) => Some(t.clone()),
            _ => None,
        }),
        continue_: p.has("continue"),
        fork: p.has("fork-session"),
        persist: !p.has("no-session-persistence"),
        name: p.text("name").map(str::to_string),
        prompt_stdio: stream_input && p.text("permission-prompt-tool") == Some("stdio"),
    })
}
