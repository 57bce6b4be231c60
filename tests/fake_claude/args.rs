//! Command-line parsing that reproduces commander.js, the parser of the real CLI.
//!
//! The quirks matter more than elegance here: variadic options swallow the words after them,
//! optional-value options take the next word unless it starts with `-`, a required value is
//! taken even when it starts with `-`, `-dXYZ` is `-d` with the value `XYZ`, and errors use
//! commander's exact wording.

use std::collections::BTreeMap;

use crate::json::J;
use crate::version::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `--verbose`
    Bool,
    /// `--model <model>`: always takes the next word.
    Value,
    /// `--resume [value]`: takes the next word unless it looks like an option.
    Optional,
    /// `--allowedTools <tools...>`: takes every following word up to the next option.
    Variadic,
}

struct Spec {
    /// Canonical name, used as the key of [`Parsed::flags`] and in the call log.
    key: &'static str,
    /// Long spellings, each with its leading `--`.
    longs: &'static [&'static str],
    short: Option<char>,
    kind: Kind,
    /// Shown in commander errors: `option '--max-turns <turns>' …`.
    value_name: &'static str,
}

const fn spec(
    key: &'static str,
    longs: &'static [&'static str],
    short: Option<char>,
    kind: Kind,
    value_name: &'static str,
) -> Spec {
    Spec {
        key,
        longs,
        short,
        kind,
        value_name,
    }
}

use Kind::{Bool, Optional, Value, Variadic};

static SPECS: &[Spec] = &[
    spec("print", &["--print"], Some('p'), Bool, ""),
    spec("verbose", &["--verbose"], None, Bool, ""),
    spec(
        "include-partial-messages",
        &["--include-partial-messages"],
        None,
        Bool,
        "",
    ),
    spec(
        "replay-user-messages",
        &["--replay-user-messages"],
        None,
        Bool,
        "",
    ),
    spec("continue", &["--continue"], Some('c'), Bool, ""),
    spec("fork-session", &["--fork-session"], None, Bool, ""),
    spec(
        "no-session-persistence",
        &["--no-session-persistence"],
        None,
        Bool,
        "",
    ),
    spec(
        "strict-mcp-config",
        &["--strict-mcp-config"],
        None,
        Bool,
        "",
    ),
    spec(
        "dangerously-skip-permissions",
        &["--dangerously-skip-permissions"],
        None,
        Bool,
        "",
    ),
    spec(
        "allow-dangerously-skip-permissions",
        &["--allow-dangerously-skip-permissions"],
        None,
        Bool,
        "",
    ),
    spec("bare", &["--bare"], None, Bool, ""),
    spec("safe-mode", &["--safe-mode"], None, Bool, ""),
    spec("restricted", &["--restricted"], None, Bool, ""),
    spec(
        "include-hook-events",
        &["--include-hook-events"],
        None,
        Bool,
        "",
    ),
    spec(
        "exclude-dynamic-system-prompt-sections",
        &["--exclude-dynamic-system-prompt-sections"],
        None,
        Bool,
        "",
    ),
    spec(
        "disable-slash-commands",
        &["--disable-slash-commands"],
        None,
        Bool,
        "",
    ),
    spec("brief", &["--brief"], None, Bool, ""),
    spec("ide", &["--ide"], None, Bool, ""),
    spec("chrome", &["--chrome"], None, Bool, ""),
    spec("no-chrome", &["--no-chrome"], None, Bool, ""),
    spec("help", &["--help"], Some('h'), Bool, ""),
    spec("version", &["--version"], Some('v'), Bool, ""),
    spec(
        "output-format",
        &["--output-format"],
        None,
        Value,
        "<format>",
    ),
    spec("input-format", &["--input-format"], None, Value, "<format>"),
    spec("model", &["--model"], None, Value, "<model>"),
    spec(
        "fallback-model",
        &["--fallback-model"],
        None,
        Value,
        "<model>",
    ),
    spec(
        "system-prompt",
        &["--system-prompt"],
        None,
        Value,
        "<prompt>",
    ),
    spec(
        "system-prompt-file",
        &["--system-prompt-file"],
        None,
        Value,
        "<file>",
    ),
    spec(
        "append-system-prompt",
        &["--append-system-prompt"],
        None,
        Value,
        "<prompt>",
    ),
    spec(
        "append-system-prompt-file",
        &["--append-system-prompt-file"],
        None,
        Value,
        "<file>",
    ),
    spec("max-turns", &["--max-turns"], None, Value, "<turns>"),
    spec(
        "max-budget-usd",
        &["--max-budget-usd"],
        None,
        Value,
        "<amount>",
    ),
    spec(
        "permission-mode",
        &["--permission-mode"],
        None,
        Value,
        "<mode>",
    ),
    spec(
        "permission-prompt-tool",
        &["--permission-prompt-tool"],
        None,
        Value,
        "<tool>",
    ),
    spec(
        "permission-prompts",
        &["--permission-prompts"],
        None,
        Value,
        "<value>",
    ),
    spec("session-id", &["--session-id"], None, Value, "<uuid>"),
    spec("settings", &["--settings"], None, Value, "<file-or-json>"),
    spec(
        "setting-sources",
        &["--setting-sources"],
        None,
        Value,
        "<sources>",
    ),
    spec("json-schema", &["--json-schema"], None, Value, "<schema>"),
    spec("effort", &["--effort"], None, Value, "<level>"),
    spec("agent", &["--agent"], None, Value, "<agent>"),
    spec("agents", &["--agents"], None, Value, "<json>"),
    spec("debug-file", &["--debug-file"], None, Value, "<path>"),
    spec("name", &["--name"], Some('n'), Value, "<name>"),
    spec(
        "max-thinking-tokens",
        &["--max-thinking-tokens"],
        None,
        Value,
        "<tokens>",
    ),
    spec("thinking", &["--thinking"], None, Value, "<mode>"),
    spec("autocompact", &["--autocompact"], None, Value, "<value>"),
    spec("plugin-dir", &["--plugin-dir"], None, Value, "<paths>"),
    spec("resume", &["--resume"], Some('r'), Optional, "[value]"),
    spec("debug", &["--debug"], Some('d'), Optional, "[filter]"),
    spec(
        "prompt-suggestions",
        &["--prompt-suggestions"],
        None,
        Optional,
        "[value]",
    ),
    spec(
        "allowedTools",
        &["--allowedTools", "--allowed-tools"],
        None,
        Variadic,
        "<tools...>",
    ),
    spec(
        "disallowedTools",
        &["--disallowedTools", "--disallowed-tools"],
        None,
        Variadic,
        "<tools...>",
    ),
    spec(
        "add-dir",
        &["--add-dir"],
        None,
        Variadic,
        "<directories...>",
    ),
    spec(
        "mcp-config",
        &["--mcp-config"],
        None,
        Variadic,
        "<configs...>",
    ),
    spec("tools", &["--tools"], None, Variadic, "<tools...>"),
    spec("betas", &["--betas"], None, Variadic, "<betas...>"),
    spec("file", &["--file"], None, Variadic, "<specs...>"),
];

/// Value flags that may be given several times and keep every value.
const REPEATABLE: &[&str] = &["plugin-dir"];

/// What one flag ended up holding.
#[derive(Debug, Clone, PartialEq)]
pub enum FlagValue {
    Present,
    Text(String),
    /// An optional-value flag given without a value.
    NoValue,
    List(Vec<String>),
}

impl FlagValue {
    pub fn to_json(&self) -> J {
        match self {
            FlagValue::Present => J::Bool(true),
            FlagValue::Text(t) => J::from(t),
            FlagValue::NoValue => J::Null,
            FlagValue::List(items) => J::from(items.clone()),
        }
    }
}

/// A variadic option (space form) that consumed words: the real CLI blames it when the prompt
/// turns out to be missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Swallow {
    /// The option as the user spelled it (`--allowedTools`, `--add-dir`, …).
    pub flag: String,
    /// The last word it consumed.
    pub last_value: String,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub flags: BTreeMap<&'static str, FlagValue>,
    pub positionals: Vec<String>,
    pub swallow: Option<Swallow>,
}

impl Parsed {
    pub fn has(&self, key: &str) -> bool {
        self.flags.contains_key(key)
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        match self.flags.get(key) {
            Some(FlagValue::Text(t)) => Some(t),
            _ => None,
        }
    }

    pub fn list(&self, key: &str) -> Option<&[String]> {
        match self.flags.get(key) {
            Some(FlagValue::List(items)) => Some(items),
            _ => None,
        }
    }

    pub fn to_json(&self) -> J {
        J::Obj(
            self.flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_json()))
                .collect(),
        )
    }
}

/// How parsing ended when it did not produce a [`Parsed`].
#[derive(Debug, PartialEq)]
pub enum Exit {
    /// Print this on stdout and exit 0 (`--version`, `--help`).
    Info(String),
    /// Print this on stderr and exit 1.
    Usage(String),
}

fn find_long(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.longs.contains(&name))
}

fn find_short(c: char) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.short == Some(c))
}

/// commander's `maybeOption`: anything of two or more characters starting with `-`.
fn looks_like_option(arg: &str) -> bool {
    arg.len() > 1 && arg.starts_with('-')
}

/// `-p, --print` / `--output-format <format>`: how commander names an option in errors.
fn display_flags(spec: &Spec) -> String {
    let mut out = String::new();
    if let Some(c) = spec.short {
        out.push('-');
        out.push(c);
        out.push_str(", ");
    }
    out.push_str(&spec.longs.join(", "));
    if !spec.value_name.is_empty() {
        out.push(' ');
        out.push_str(spec.value_name);
    }
    out
}

fn invalid_argument(spec: &Spec, value: &str, why: &str) -> Exit {
    Exit::Usage(format!(
        "error: option '{}' argument '{}' is invalid. {}",
        display_flags(spec),
        value,
        why
    ))
}

fn choices(spec: &Spec, value: &str, allowed: &[&str], listed: &[&str]) -> Result<(), Exit> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid_argument(
            spec,
            value,
            &format!("Allowed choices are {}.", listed.join(", ")),
        ))
    }
}

/// JavaScript's `parseInt(value, 10)`: the leading integer, ignoring what follows.
pub fn js_parse_int(value: &str) -> Option<i64> {
    let t = value.trim_start();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    // Saturate rather than fail on absurd lengths: JavaScript would give a huge number too.
    let n: i64 = digits[..end].parse().unwrap_or(i64::MAX);
    Some(sign * n)
}

/// JavaScript's `parseFloat(value)`: the longest numeric prefix (`"0.5usd"` is 0.5).
pub fn js_parse_float(value: &str) -> Option<f64> {
    let t = value.trim_start();
    let b = t.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    if t[i..].starts_with("Infinity") {
        return Some(if t.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    let digits = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    let int_end = digits(i);
    let mut end = int_end;
    let mut mantissa_digits = int_end - i;
    if b.get(end) == Some(&b'.') {
        let frac_end = digits(end + 1);
        mantissa_digits += frac_end - (end + 1);
        end = frac_end;
    }
    if mantissa_digits == 0 {
        return None;
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_end = digits(j);
        if exp_end > j {
            end = exp_end;
        }
    }
    t[..end].parse().ok()
}

/// Per-option checks commander runs as it meets the option (choices and argument parsers).
fn check_value(spec: &Spec, value: &str, version: Version) -> Result<(), Exit> {
    match spec.key {
        "output-format" => {
            let c = ["text", "json", "stream-json"];
            choices(spec, value, &c, &c)
        }
        "input-format" => {
            let c = ["text", "stream-json"];
            choices(spec, value, &c, &c)
        }
        "permission-mode" => {
            let listed = version.permission_mode_choices();
            // `default` is accepted by every version even where the message omits it.
            let mut allowed: Vec<&str> = listed.to_vec();
            allowed.extend(["default", "auto", "manual"]);
            choices(spec, value, &allowed, listed)
        }
        "max-turns" => match js_parse_int(value) {
            Some(_) => Ok(()),
            None => Err(invalid_argument(spec, value, "must be a number")),
        },
        "max-budget-usd" => match js_parse_float(value) {
            Some(v) if v > 0.0 => Ok(()),
            _ => Err(invalid_argument(
                spec,
                value,
                "--max-budget-usd must be a number greater than 0",
            )),
        },
        _ => Ok(()),
    }
}

fn store_value(parsed: &mut Parsed, spec: &'static Spec, value: String) {
    match spec.kind {
        Variadic => match parsed.flags.get_mut(spec.key) {
            Some(FlagValue::List(items)) => items.push(value),
            _ => {
                parsed.flags.insert(spec.key, FlagValue::List(vec![value]));
            }
        },
        _ if REPEATABLE.contains(&spec.key) => match parsed.flags.get_mut(spec.key) {
            Some(FlagValue::List(items)) => items.push(value),
            _ => {
                parsed.flags.insert(spec.key, FlagValue::List(vec![value]));
            }
        },
        _ => {
            parsed.flags.insert(spec.key, FlagValue::Text(value));
        }
    }
}

/// State of the parse loop that outlives one argument.
struct Walker<'a> {
    args: std::collections::VecDeque<String>,
    parsed: Parsed,
    unknown: Vec<String>,
    /// The variadic option currently swallowing words, as spelled by the user.
    active_variadic: Option<(&'static Spec, String)>,
    version: Version,
    version_text: &'a str,
}

impl Walker<'_> {
    fn emit_flag(&mut self, spec: &'static Spec) -> Result<(), Exit> {
        if spec.key == "version" {
            return Err(Exit::Info(format!("{} (Claude Code)\n", self.version_text)));
        }
        self.parsed.flags.insert(spec.key, FlagValue::Present);
        Ok(())
    }

    fn emit_value(&mut self, spec: &'static Spec, value: String) -> Result<(), Exit> {
        check_value(spec, &value, self.version)?;
        store_value(&mut self.parsed, spec, value);
        Ok(())
    }

    /// A recognised option word (`--model`, `-p`): consumes its value per its kind.
    fn take_option(&mut self, spec: &'static Spec, spelled: &str) -> Result<(), Exit> {
        match spec.kind {
            Bool => self.emit_flag(spec)?,
            Value => match self.args.pop_front() {
                Some(value) => self.emit_value(spec, value)?,
                None => {
                    return Err(Exit::Usage(format!(
                        "error: option '{}' argument missing",
                        display_flags(spec)
                    )))
                }
            },
            Optional => {
                let next_is_value = self.args.front().is_some_and(|a| !looks_like_option(a));
                match next_is_value.then(|| self.args.pop_front()).flatten() {
                    Some(value) => self.emit_value(spec, value)?,
                    None => {
                        self.parsed
                            .flags
                            .entry(spec.key)
                            .or_insert(FlagValue::NoValue);
                    }
                }
            }
            Variadic => match self.args.pop_front() {
                // commander requires at least one value even when it starts with `-`.
                Some(value) => {
                    self.note_swallow(spelled, &value);
                    self.emit_value(spec, value)?;
                    self.active_variadic = Some((spec, spelled.to_string()));
                }
                None => {
                    return Err(Exit::Usage(format!(
                        "error: option '{}' argument missing",
                        display_flags(spec)
                    )))
                }
            },
        }
        Ok(())
    }

    fn note_swallow(&mut self, spelled: &str, value: &str) {
        self.parsed.swallow = Some(Swallow {
            flag: spelled.to_string(),
            last_value: value.to_string(),
        });
    }

    fn step(&mut self, arg: String) -> Result<bool, Exit> {
        if arg == "--" {
            self.parsed.positionals.extend(self.args.drain(..));
            return Ok(false);
        }
        if let Some((spec, spelled)) = self.active_variadic.clone() {
            if !looks_like_option(&arg) {
                self.note_swallow(&spelled, &arg);
                self.emit_value(spec, arg)?;
                return Ok(true);
            }
        }
        self.active_variadic = None;

        if looks_like_option(&arg) {
            let found = if arg.starts_with("--") {
                find_long(&arg)
            } else if arg.chars().count() == 2 {
                arg.chars().nth(1).and_then(find_short)
            } else {
                None
            };
            if let Some(spec) = found {
                self.take_option(spec, &arg)?;
                return Ok(true);
            }
        }

        // `-pc` / `-dfilter`: a known short option followed by more characters.
        let mut chars = arg.chars();
        if chars.next() == Some('-') {
            let second = chars.next();
            let rest: String = chars.collect();
            if let (Some(c), false) = (second, rest.is_empty()) {
                if c != '-' {
                    if let Some(spec) = find_short(c) {
                        match spec.kind {
                            Value | Optional | Variadic => self.emit_value(spec, rest)?,
                            Bool => {
                                self.emit_flag(spec)?;
                                self.args.push_front(format!("-{rest}"));
                            }
                        }
                        return Ok(true);
                    }
                }
            }
        }

        // `--model=x`: only options that take a value accept the `=` form.
        if arg.starts_with("--") {
            if let Some(eq) = arg.find('=') {
                if let Some(spec) = find_long(&arg[..eq]) {
                    if spec.kind != Bool {
                        // The `=` form never starts a variadic swallow.
                        self.emit_value(spec, arg[eq + 1..].to_string())?;
                        return Ok(true);
                    }
                }
            }
        }

        if looks_like_option(&arg) {
            self.unknown.push(arg);
        } else {
            self.parsed.positionals.push(arg);
        }
        Ok(true)
    }
}

/// Parses `args` (without the program name).
pub fn parse(args: &[String], version: Version, version_text: &str) -> Result<Parsed, Exit> {
    let mut walker = Walker {
        args: args.iter().cloned().collect(),
        parsed: Parsed::default(),
        unknown: Vec::new(),
        active_variadic: None,
        version,
        version_text,
    };
    while let Some(arg) = walker.args.pop_front() {
        if !walker.step(arg)? {
            break;
        }
    }
    let Walker {
        parsed, unknown, ..
    } = walker;
    if parsed.has("help") {
        return Err(Exit::Info(help_text()));
    }
    if let Some(first) = unknown.first() {
        return Err(Exit::Usage(format!("error: unknown option '{first}'")));
    }
    if parsed.positionals.len() > 1 {
        return Err(Exit::Usage(format!(
            "error: too many arguments. Expected 1 argument but got {}.",
            parsed.positionals.len()
        )));
    }
    Ok(parsed)
}

fn help_text() -> String {
    let mut out = String::from(
        "Usage: claude [options] [command] [prompt]\n\n\
         fake-claude: a test double of Claude Code (see docs/fake-claude.md)\n\n\
         Arguments:\n  prompt  Your prompt\n\nOptions:\n",
    );
    for spec in SPECS {
        out.push_str("  ");
        out.push_str(&display_flags(spec));
        out.push('\n');
    }
    out
}
