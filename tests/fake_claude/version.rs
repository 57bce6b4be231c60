//! `FAKE_CLAUDE_VERSION` and the behaviours that differ between real CLI versions
//! (docs/fake-claude.md §8).

use std::fmt;

/// The version the fake claims when `FAKE_CLAUDE_VERSION` is unset or unreadable.
pub const DEFAULT_VERSION: &str = "2.1.330";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

/// Which recorded family of output shapes to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// 1.0.x and 2.0.x: few result fields, `error_max_turns` is not an error.
    Legacy,
    /// 2.1.112 … 2.1.197: `type`-first results with `api_error_status` and `terminal_reason`.
    Mid,
    /// 2.1.330: the many-field result in the real CLI's own key order.
    Current,
}

const CURRENT: Version = Version(2, 1, 330);
const MID: Version = Version(2, 1, 0);

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// The version from the environment; an unreadable value falls back to the default, so a
    /// typo in a test still gets a working fake.
    pub fn from_env() -> Version {
        std::env::var("FAKE_CLAUDE_VERSION")
            .ok()
            .and_then(|v| Version::parse(&v))
            .or_else(|| Version::parse(DEFAULT_VERSION))
            .unwrap_or(CURRENT)
    }

    pub fn generation(self) -> Generation {
        if self >= CURRENT {
            Generation::Current
        } else if self >= MID {
            Generation::Mid
        } else {
            Generation::Legacy
        }
    }

    /// 2.1.330 finds a session in any project directory; older versions only in the cwd's.
    pub fn resume_any_cwd(self) -> bool {
        self >= CURRENT
    }

    /// 2.1.330 reports `total_cost_usd`/`modelUsage` summed over the whole session.
    pub fn cumulative_cost(self) -> bool {
        self >= CURRENT
    }

    /// 1.0.x/2.0.x report `error_max_turns` with `is_error:false`, `num_turns:N` and exit 0.
    pub fn legacy_max_turns(self) -> bool {
        self < MID
    }

    pub fn not_logged_in_text(self) -> &'static str {
        if self < MID {
            "Invalid API key · Please run /login"
        } else {
            "Not logged in · Please run /login"
        }
    }

    /// The choices listed in the `--permission-mode` error, in the real order.
    pub fn permission_mode_choices(self) -> &'static [&'static str] {
        if self >= CURRENT {
            &[
                "acceptEdits",
                "auto",
                "bypassPermissions",
                "manual",
                "dontAsk",
                "plan",
            ]
        } else {
            &[
                "acceptEdits",
                "bypassPermissions",
                "default",
                "dontAsk",
                "plan",
            ]
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}
