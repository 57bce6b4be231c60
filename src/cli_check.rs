//! Whether the Claude CLI answers: `claude --version`, run at start-up and again whenever a
//! config change alters how the CLI is found (`claudePath`, `nvmBin`, `claudeEnv`), so
//! `/health` and the log speak of the CLI that runs now, not of the one found at start.
//!
//! A check runs beside whatever started it (the port answers at once; a reload is not held
//! up by a slow CLI). Until it has answered, `/health` counts the CLI as unknown, not missing.
//! Checks are numbered: one that answers after a newer one began is dropped, so quick
//! successive reloads end with the answer for the last config.

use actors::claude::process::cli_version;
use actors::config::Config;
use actors::queue::worker::runner_settings;

use crate::state::AppState;

/// Top-level config keys that change which CLI runs, or how it starts.
const CLI_KEYS: &[&str] = &["claudePath", "nvmBin", "claudeEnv"];

/// Check the CLI of `config` in the background; its answer goes to the state (`/health`).
pub fn spawn(state: &AppState, config: &Config) {
    let settings = runner_settings(config);
    let check = state.begin_cli_check();
    let state = state.clone();
    tokio::spawn(async move {
        let version = cli_version(&settings).await;
        let path = settings.claude_path.display().to_string();
        if !state.finish_cli_check(check, version.clone()) {
            return;
        }
        match version {
            Some(v) => log::info!(version:% = v, path:% = path; "Claude CLI found"),
            None => {
                log::warn!(path:% = path; "Claude CLI did not answer `--version`; runs will fail")
            }
        }
    });
}

/// Whether a change of these dotted keys (as [`crate::reload`] reports them) alters the CLI.
pub fn affected_by(changed: &[String]) -> bool {
    changed.iter().any(|key| {
        let top = key.split('.').next().unwrap_or(key);
        CLI_KEYS.contains(&top)
    })
}

#[cfg(test)]
mod tests {
    use super::affected_by;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_keys_that_find_or_start_the_cli_call_for_a_check() {
        assert!(affected_by(&keys(&["claudePath"])));
        assert!(affected_by(&keys(&["logLevel", "nvmBin"])));
        assert!(affected_by(&keys(&["claudeEnv.PATH"])));
        assert!(!affected_by(&keys(&["taskQueue.concurrency", "logLevel"])));
        assert!(!affected_by(&keys(&["claudePathology"])));
        assert!(!affected_by(&[]));
    }
}
