//! `Application`: the daemon assembled — config, storage, queue, HTTP — bound to its port.
//! Tests build one on port 0 and drive it over HTTP; `serve` builds one and runs it until a
//! signal.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use actors::cluster::Cluster;
use actors::config::load::{load, Environment};
use actors::config::{Config, StorageType};
use actors::events::EventHub;
use actors::metrics::MetricsActor;
use actors::queue::Queue;
use actors::rate_limit::RateLimitActor;
use actors::session::SessionHandle;
use actors::stats::StatsActor;
use actors::store::memory::MemoryStore;
use actors::store::redis::RedisStore;
use actors::store::sqlite::SqliteStore;
use actors::store::Store;
use actors::system::ActorSystem;
use actors::webhook::{DeliveryObserver, WebhookActor, WebhookHandle, WebhookOptions};

use crate::reload::{ConfigWatcher, WatcherHandle};

use crate::state::AppState;

/// How to build the application.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config_path: PathBuf,
    /// `--host`: wins over `HOST` and the file.
    pub host: Option<String>,
    /// `--port`: wins over `PORT` and the file.
    pub port: Option<u16>,
    /// The environment to read `HOME`, `PORT`, `HOST`, `PATH` from (`None`: the process's).
    pub env: Option<Environment>,
}

pub struct Application {
    /// The arbiters the actors run on; stopped last, once nothing sends them messages.
    actor_system: ActorSystem,
    listener: TcpListener,
    state: AppState,
    port: u16,
    webhooks: WebhookHandle,
    watcher: Option<WatcherHandle>,
}

impl Application {
    pub async fn build(opts: Options) -> anyhow::Result<Application> {
        let env = opts.env.clone().unwrap_or_else(Environment::from_process);
        let loaded = load(&opts.config_path, &env)?;
        if loaded.created {
            log::info!(path:% = opts.config_path.display(); "wrote the default config file");
        }
        for w in &loaded.warnings {
            log::warn!("{w}");
        }
        let mut config = loaded.config;
        if let Some(h) = opts.host.clone() {
            config.host = h;
        }
        if let Some(p) = opts.port {
            config.port = p;
        }
        config.validate()?;
        check_bind_policy(&config)?;
        let config = Arc::new(config);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let actor_system =
            ActorSystem::start("actors", cores).context("cannot start the actor system")?;

        let (store, cluster) = open_store(&config).await?;
        let mut events = EventHub::new(Arc::new(crate::http::events::final_event));
        if let Some(cluster) = &cluster {
            // Runs' events are copied to Redis, so any instance can stream any run.
            events = events.with_cluster(cluster.clone());
        }
        let events = Arc::new(events);
        // Runs hand their `task.approval_requested` deliveries to the webhook actor.
        let approval_webhooks = Arc::new(std::sync::Mutex::new(Some(
            events.approvals().webhook_jobs(),
        )));
        // The single writer of session records: the HTTP handlers' writes and the workers'
        // turn accounting.
        let sessions = SessionHandle::start(actor_system.arbiter(), store.clone());
        let queue = Queue::start(
            store.clone(),
            config.clone(),
            events,
            cluster.clone(),
            sessions,
            &actor_system,
        )
        .await
        .context("cannot recover the task queue from storage")?;
        let (config_tx, config_rx) = tokio::sync::watch::channel(config.clone());
        // With a cluster, statistics and budgets count the runs of every instance.
        let stats = StatsActor::start(
            actor_system.arbiter(),
            store.clone(),
            queue.subscribe_finished(),
            config_rx,
            cluster.clone(),
        )
        .await
        .context("cannot load the statistics from storage")?;
        // Subscribed before anything else can happen, so no final record is missed.
        let finished = queue.subscribe_finished();
        let metrics_finished = queue.subscribe_finished();
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        // With a cluster, one limit per key across every instance.
        let rate_limiter = RateLimitActor::start(
            actor_system.arbiter(),
            config_tx.subscribe(),
            cluster.clone(),
        );
        let state = AppState::new(
            config_tx,
            queue,
            store,
            cluster,
            stats,
            rate_limiter,
            opts.config_path.clone(),
        );
        state
            .reload
            .init(loaded.file_doc, env, opts.host, opts.port)
            .await;
        MetricsActor::start(
            actor_system.arbiter(),
            state.metrics.clone(),
            metrics_finished,
        );
        let live = state.clone();
        let counted = state.metrics.clone();
        let observer: DeliveryObserver =
            Arc::new(move |delivered, gave_up| counted.webhook_attempt(delivered, gave_up));
        let webhooks = WebhookActor::start(
            actor_system.arbiter(),
            state.store.clone(),
            finished,
            Arc::new(move || live.config()),
            WebhookOptions {
                observer: Some(observer),
                // With a cluster each delivery is made by the one instance holding its claim.
                claim_as: state.cluster.as_ref().map(|c| c.instance().to_string()),
                lookup: None,
                jobs: Some(approval_webhooks),
            },
        )
        .await;
        let watcher = ConfigWatcher::start(state.clone());
        // Every listener has subscribed: now the runs a crash interrupted are counted and
        // announced (webhook `task.failed`, statistics, metrics) like any other end.
        if let Err(e) = state.queue.announce_interrupted().await {
            log::warn!(error:% = e; "cannot announce the interrupted tasks");
        }
        // Approvals whose run did not survive the restart must not stay pending.
        match actors::approval::expire_orphans(state.store.as_ref()).await {
            Ok(0) => {}
            Ok(n) => {
                log::info!(count = n; "expired the approvals of runs that did not survive the restart")
            }
            Err(e) => log::warn!(error:% = e; "cannot expire the approvals of interrupted runs"),
        }

        let live = state.clone();
        actors::retention::start(state.store.clone(), Arc::new(move || live.config()));

        // Beside start-up, so the port answers at once.
        crate::cli_check::spawn(&state, &config);
        Ok(Application {
            actor_system,
            listener,
            state,
            port,
            webhooks,
            watcher,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` resolves; then stop taking runs, give running ones
    /// `shutdownGraceMs` before killing them, finish in-flight responses and return.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            actor_system,
            listener,
            state,
            port,
            webhooks,
            watcher,
        } = self;
        let config = state.config();
        let pid_file = PathBuf::from(&config.pid_file);
        write_pid_file(&pid_file);
        log::info!(host:% = config.host, port = port, storage = state.store.kind(); "listening");

        let listener = listener.into_std()?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let app_state = state.clone();
        let server = actix_web::HttpServer::new(move || crate::http::app(app_state.clone()))
            // A client's EOF ends its connection at once, dropping a pending handler: a client
            // that goes away takes its run with it (issue 17; actix-web >= 4.12).
            .h1_allow_half_closed(false)
            // Signals are ours (src/daemon.rs): the shutdown order below needs the queue first.
            .disable_signals()
            .shutdown_timeout(5)
            .workers(workers)
            .listen(listener)?
            .run();
        let http = server.handle();
        let server = tokio::spawn(server);
        // The OpenAPI document is built once, off the start-up path: it takes milliseconds,
        // which `/health` need not wait for; a request for it meanwhile waits for this build.
        drop(tokio::task::spawn_blocking(
            crate::http::openapi::document_json,
        ));

        shutdown.await;
        // No config change while shutting down.
        if let Some(watcher) = watcher {
            watcher.shutdown().await;
        }
        let grace = Duration::from_millis(state.config().shutdown_grace_ms);
        log::info!(
            grace_ms = grace.as_millis() as u64;
            "shutting down: no new runs; waiting for running ones"
        );
        state.queue.shutdown(grace).await;
        // After the queue: the runs it just ended are counted too.
        if let Err(e) = state.stats.flush().await {
            log::error!(error:% = e; "statistics could not be saved");
        }
        // After the queue: every final record has reached the webhook actor, which stores what
        // it has not sent yet (sent after the restart).
        webhooks.shutdown().await;
        // Graceful: answers in flight are finished (a stream that never ends does not hold us).
        let stopped = http.stop(true);
        // Responses of finished runs are flushed; a stream that never ends does not hold us.
        match tokio::time::timeout(Duration::from_secs(5), async {
            stopped.await;
            server.await
        })
        .await
        {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => log::error!(error:% = e; "HTTP server error"),
            Ok(Err(e)) => log::error!(error:% = e; "HTTP server task failed"),
            Err(_) => log::warn!("open connections did not close within 5 s; exiting anyway"),
        }
        // Last: the HTTP workers, which send the actors messages, have stopped.
        // Joining its threads blocks: not on this runtime's thread.
        let _ = tokio::task::spawn_blocking(move || actor_system.stop()).await;
        remove_pid_file(&pid_file);
        log::info!("stopped");
        Ok(())
    }
}

/// With no API keys the server may listen on loopback only, unless `auth.allowAnonymous`.
pub(crate) fn check_bind_policy(config: &Config) -> anyhow::Result<()> {
    if !config.auth.api_keys.is_empty() || config.auth.allow_anonymous || is_loopback(&config.host)
    {
        return Ok(());
    }
    bail!(
        "refusing to listen on {} without API keys: anyone who can reach the port could run Claude \
         with your credentials. Add a key under auth.apiKeys in the config, listen on 127.0.0.1, \
         or set auth.allowAnonymous to true if a proxy in front authenticates callers.",
        config.host
    )
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    host.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// The store, and with Redis storage this instance's place in the cluster sharing it.
async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<Cluster>>)> {
    Ok(match config.storage_type {
        StorageType::Memory => (Arc::new(MemoryStore::new()), None),
        StorageType::Sqlite => {
            let path = Path::new(&config.data_dir).join("claude-code-server.db");
            let store = SqliteStore::open(&path)
                .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
            (Arc::new(store), None)
        }
        StorageType::Redis => {
            // `validate` makes redisUrl required for this storage type.
            let url = config.redis_url.as_deref().unwrap_or_default();
            let store = RedisStore::connect(url, &config.redis_namespace)
                .await
                .with_context(|| {
                    format!(
                        "cannot open Redis storage (namespace {:?})",
                        config.redis_namespace
                    )
                })?;
            let store = Arc::new(store);
            let cluster = Cluster::join(url, store.clone()).map_err(anyhow::Error::msg)?;
            (store, Some(cluster))
        }
    })
}

fn write_pid_file(path: &Path) {
    let result = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|_| std::fs::write(path, format!("{}\n", std::process::id())));
    if let Err(e) = result {
        log::warn!(path:% = path.display(), error:% = e; "cannot write the pid file");
    }
}

fn remove_pid_file(path: &Path) {
    // Only our own pid file: another instance may have taken the path since.
    let ours = std::fs::read_to_string(path)
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0"));
        assert!(!is_loopback("192.168.1.4"));
    }
}
