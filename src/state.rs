//! What every handler shares: the live config, the queue, the store, the session writer, the
//! statistics, the rate limiter, and facts about the CLI.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use actors::cluster::Cluster;
use actors::config::Config;
use actors::metrics::Metrics;
use actors::queue::Queue;
use actors::rate_limit::Limiter;
use actors::session::SessionHandle;
use actors::stats::StatsHandle;
use actors::store::Store;

/// What `claude --version` said for the CLI of the config in force ([`crate::cli_check`]).
#[derive(Debug, Clone, Default)]
pub struct ClaudeInfo {
    pub version: Option<String>,
    /// The check has run (until then `/health` reports the CLI as unknown, not missing).
    pub checked: bool,
    /// The number of the latest check begun: only its answer is kept.
    check: u64,
}

impl ClaudeInfo {
    /// A check begins: until it answers the CLI is unknown. Returns its number.
    fn begin(&mut self) -> u64 {
        self.check += 1;
        self.checked = false;
        self.version = None;
        self.check
    }

    /// Check `check` answered `version`: kept unless a newer check has begun since (then
    /// `false`).
    fn finish(&mut self, check: u64, version: Option<String>) -> bool {
        if self.check != check {
            return false;
        }
        self.version = version;
        self.checked = true;
        true
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    /// A watch, so actors (statistics) read the live config without holding the state.
    config: watch::Sender<Arc<Config>>,
    pub queue: Queue,
    pub store: Arc<dyn Store>,
    /// The SessionActor: every write of a session record goes through it.
    pub sessions: SessionHandle,
    /// With Redis storage: this instance among the others sharing it.
    pub cluster: Option<Arc<Cluster>>,
    pub stats: StatsHandle,
    /// The RateLimitActor's handle: shared by every instance with a cluster (in Redis), this
    /// instance's own otherwise.
    pub rate_limiter: Limiter,
    pub started: Instant,
    pub claude: RwLock<ClaudeInfo>,
    pub config_path: PathBuf,
    /// Counters for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Where the config came from and the last refused change (hot reload, PATCH).
    pub reload: crate::reload::ReloadState,
    /// The storage's answer to `/health`, asked at most every `HEALTH_MAX_AGE` (a Redis
    /// round trip per poll would cap `/health` at Redis's rate).
    pub storage_health: actors::recent::Recent<bool>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: watch::Sender<Arc<Config>>,
        queue: Queue,
        store: Arc<dyn Store>,
        cluster: Option<Arc<Cluster>>,
        stats: StatsHandle,
        rate_limiter: Limiter,
        config_path: PathBuf,
    ) -> AppState {
        // The queue's workers and the routes share one SessionActor.
        let sessions = queue.sessions().clone();
        AppState(Arc::new(Inner {
            config,
            queue,
            store,
            sessions,
            rate_limiter,
            cluster,
            stats,
            started: Instant::now(),
            claude: RwLock::new(ClaudeInfo::default()),
            config_path,
            metrics: Arc::new(Metrics::default()),
            reload: Default::default(),
            storage_health: actors::recent::Recent::new(actors::recent::HEALTH_MAX_AGE),
        }))
    }

    /// A snapshot of the current config; a reload swaps it for later requests.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    pub fn set_config(&self, config: Arc<Config>) {
        self.config.send_replace(config);
    }

    pub fn claude_info(&self) -> ClaudeInfo {
        match self.claude.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn claude_info_mut(&self) -> std::sync::RwLockWriteGuard<'_, ClaudeInfo> {
        self.claude
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A check of the CLI begins (see [`crate::cli_check`]). Returns its number.
    pub fn begin_cli_check(&self) -> u64 {
        self.claude_info_mut().begin()
    }

    /// Check `check` answered `version`: kept unless a newer check has begun since (then
    /// `false`).
    pub fn finish_cli_check(&self, check: u64, version: Option<String>) -> bool {
        self.claude_info_mut().finish(check, version)
    }
}

#[cfg(test)]
mod tests {
    use super::ClaudeInfo;

    #[test]
    fn only_the_latest_cli_check_is_kept() {
        let mut info = ClaudeInfo::default();
        let first = info.begin();
        assert!(info.finish(first, Some("2.1.197".into())));
        assert_eq!(info.version.as_deref(), Some("2.1.197"));
        assert!(info.checked);
        // A reload begins two checks; the older answers last and is dropped.
        let older = info.begin();
        assert!(!info.checked && info.version.is_none(), "unknown meanwhile");
        let newer = info.begin();
        assert!(info.finish(newer, None));
        assert!(!info.finish(older, Some("2.1.197".into())));
        assert!(info.checked);
        assert_eq!(info.version, None, "the newer check's answer stands");
    }
}
