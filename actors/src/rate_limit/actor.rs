//! The RateLimitActor: an actix actor on the [`ActorSystem`](crate::system::ActorSystem)'s
//! arbiter that owns this instance's rate-limit state, and [`Limiter`], the handle the HTTP
//! layer calls on every request.
//!
//! What the actor owns:
//!
//! * the per-key state, a [`Table`] (a `DashMap`), which it sweeps of idle keys every
//!   [`SWEEP_EVERY`] (`run_interval`) and on [`Sweep`] (sent by a check that added many keys);
//! * the reaction to config reloads (its input is the live config's watch, a stream): rate
//!   limiting turned off drops every key's state; with Redis, a policy too fine to count there
//!   is reported once. Which policy applies to a request is still read from that request's
//!   config snapshot ([`super::policy_for`]), so a new limit applies to the very next request
//!   without waiting for the actor to see the reload;
//! * the mode, chosen once at start (an enum, `Sharing`): this instance alone, or shared
//!   through Redis ([`super::shared`]) with the table as the fallback while Redis is away.
//!
//! The hot path: [`Limiter::check`] runs on the caller's task and sends the actor no message.
//! Without Redis it reads and updates the table directly (a hash lookup and a few integer
//! operations under one shard lock); with Redis it runs the script through the actor's
//! [`SharedLimiter`] and falls back to the table. The only message on that path is a
//! fire-and-forget [`Sweep`] (`do_send`) from the check that made one due. Measured with
//! `measure_the_hot_path` (ignored; release build, 2 cores shared with other builds, load
//! 3 to 4, so ranges over runs), against the alternative of a message per check (`send()`
//! from a tokio runtime, the actor answering from its table or from Redis in a task of its
//! own):
//!
//! | check | one caller | 64 callers at once |
//! |---|---|---|
//! | table, on the caller | 0.2–0.5 µs | 2.1–4.5 M checks/s |
//! | table, a message per check | 4.6–9.2 µs | 0.43–1.6 M checks/s |
//! | Redis, on the caller | 20–29 µs | 48–120 k checks/s |
//! | Redis, a message per check | 33–62 µs | 42–85 k checks/s |
//!
//! A message costs ten to forty times the check itself and funnels every request through the
//! actor's one thread; with Redis it adds 5 to 30 µs to every call and takes nothing off it
//! (the connection is one multiplexed connection either way). So the actor does what is not
//! per request, and owns the state the requests read.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::sync::watch;

use super::gcra::{Decision, Policy};
use super::limiter::{Clock, MonotonicClock, Table, SWEEP_EVERY};
use super::policy::policy_for;
use super::shared::{micro_grid, SharedLimiter};
use crate::cluster::Cluster;
use crate::config::Config;

/// Where limits are counted, chosen once at start.
#[derive(Clone)]
enum Sharing {
    /// This instance alone: the table.
    Local,
    /// Every instance on one Redis; the table while Redis is away.
    Redis(Arc<SharedLimiter>),
}

pub struct RateLimitActor {
    table: Arc<Table>,
    sharing: Sharing,
    /// The live config, until `started` turns it into the actor's stream of reloads.
    config: Option<watch::Receiver<Arc<Config>>>,
    /// Policies already reported as too fine for Redis.
    too_fine: HashSet<Policy>,
}

/// Drop the idle keys now; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Sweep;

/// The handle: cheap to clone, what `AppState` holds. It checks in the actor's table, or in
/// Redis through the actor's [`SharedLimiter`], on the caller's task.
#[derive(Clone)]
pub struct Limiter {
    table: Arc<Table>,
    sharing: Sharing,
    actor: Addr<RateLimitActor>,
}

impl RateLimitActor {
    /// Start the actor on `arbiter`: limits of this instance, or shared through `cluster`.
    pub fn start(
        arbiter: &ArbiterHandle,
        config: watch::Receiver<Arc<Config>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Limiter {
        Self::start_with_clock(
            arbiter,
            config,
            cluster,
            Arc::new(MonotonicClock::default()),
        )
    }

    /// [`RateLimitActor::start`], reading the time from `clock`.
    pub fn start_with_clock(
        arbiter: &ArbiterHandle,
        config: watch::Receiver<Arc<Config>>,
        cluster: Option<Arc<Cluster>>,
        clock: Arc<dyn Clock>,
    ) -> Limiter {
        let table = Arc::new(Table::new(clock));
        let sharing = match cluster {
            Some(cluster) => Sharing::Redis(Arc::new(SharedLimiter::new(cluster))),
            None => Sharing::Local,
        };
        let (owned, mode) = (table.clone(), sharing.clone());
        let actor = RateLimitActor::start_in_arbiter(arbiter, move |_| RateLimitActor {
            table: owned,
            sharing: mode,
            config: Some(config),
            too_fine: HashSet::new(),
        });
        Limiter {
            table,
            sharing,
            actor,
        }
    }

    /// A new config is in force.
    fn reconfigure(&mut self, config: &Config) {
        if !config.rate_limit.enabled {
            // Turned on again later, every key starts with a full bucket.
            self.table.clear();
            return;
        }
        if let Sharing::Redis(_) = self.sharing {
            let names = config.auth.api_keys.iter().map(|k| Some(k.name.as_str()));
            for name in names.chain([None]) {
                let Some(policy) = policy_for(config, name) else {
                    continue;
                };
                if micro_grid(policy).is_none() && self.too_fine.insert(policy) {
                    log::warn!(key = name.unwrap_or("(anonymous)"), limit = policy.limit, window_ms = policy.window.as_millis() as u64; "this rate limit is too fine to count exactly in Redis; it is counted per instance");
                }
            }
        }
    }
}

impl Actor for RateLimitActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            act.table.sweep();
        });
        if let Some(mut config) = self.config.take() {
            let current = config.borrow_and_update().clone();
            self.reconfigure(&current);
            ctx.add_stream(futures_util::stream::unfold(config, |mut rx| async move {
                rx.changed().await.ok()?;
                let next = rx.borrow_and_update().clone();
                Some((next, rx))
            }));
        }
    }
}

/// Config reloads.
impl StreamHandler<Arc<Config>> for RateLimitActor {
    fn handle(&mut self, config: Arc<Config>, _: &mut Context<Self>) {
        self.reconfigure(&config);
    }

    /// The config's sender is gone (shutdown): keep limiting under the last one.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Sweep> for RateLimitActor {
    type Result = usize;

    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> usize {
        self.table.sweep()
    }
}

impl Limiter {
    /// Count one request of `key` under `policy` and say whether it may pass: in Redis with a
    /// cluster, in the table otherwise and when Redis cannot decide.
    pub async fn check(&self, key: &str, policy: Policy) -> Decision {
        if let Sharing::Redis(redis) = &self.sharing {
            if let Some(d) = redis.check(key, policy).await {
                return d;
            }
        }
        let checked = self.table.check(key, policy);
        if checked.sweep_due {
            // Fire and forget: the request does not wait for the sweep.
            self.actor.do_send(Sweep);
        }
        checked.decision
    }

    /// Keys tracked by this instance (idle ones not yet swept included).
    pub fn tracked_keys(&self) -> usize {
        self.table.tracked_keys()
    }

    /// Sweep idle keys now; how many were dropped (`None`: the actor is gone).
    pub async fn sweep(&self) -> Option<usize> {
        self.actor.send(Sweep).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::rate_limit::limiter::tests::FakeClock;
    use crate::rate_limit::limiter::SWEEP_AFTER_NEW_KEYS;
    use crate::system::ActorSystem;

    const SEC: Duration = Duration::from_secs(1);

    fn config(rate_limit: serde_json::Value) -> Arc<Config> {
        let mut doc: serde_json::Value =
            serde_json::from_str(crate::config::DEFAULT_JSON).expect("defaults");
        crate::config::merge::merge_patch(&mut doc, &serde_json::json!({"rateLimit": rate_limit}));
        Arc::new(Config::from_merged(doc).expect("config"))
    }

    fn live() -> (watch::Sender<Arc<Config>>, watch::Receiver<Arc<Config>>) {
        watch::channel(config(serde_json::json!({"enabled": true})))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A limiter of this instance alone, on a system of its own and a clock the test moves.
    fn local_on_fake_clock() -> (
        ActorSystem,
        Arc<FakeClock>,
        watch::Sender<Arc<Config>>,
        Limiter,
    ) {
        let system = ActorSystem::start("test-rate-limit", 1).expect("system");
        let clock = Arc::new(FakeClock::default());
        let (config, rx) = live();
        let limiter = RateLimitActor::start_with_clock(system.arbiter(), rx, None, clock.clone());
        (system, clock, config, limiter)
    }

    #[tokio::test]
    async fn checks_are_answered_from_the_table_and_sweeps_drop_idle_keys() {
        let (system, clock, _config, limiter) = local_on_fake_clock();
        let p = Policy::new(2, 10 * SEC);
        let mut allowed = Vec::new();
        for key in ["key:a", "key:a", "key:a", "key:b"] {
            allowed.push(limiter.check(key, p).await.allowed);
        }
        assert_eq!(allowed, [true, true, false, true]);
        assert_eq!(limiter.tracked_keys(), 2);
        // Nothing is idle yet; 10 s later both buckets are full again and dropped.
        assert_eq!(limiter.sweep().await, Some(0));
        clock.advance(10 * SEC);
        assert_eq!(limiter.sweep().await, Some(2));
        assert_eq!(limiter.tracked_keys(), 0);
        // A dropped key starts as it would have: with a full bucket.
        assert_eq!(limiter.check("key:a", p).await.remaining, 1);
        system.stop();
    }

    /// Many one-off callers (say, anonymous addresses): the check that adds one key too many
    /// asks the actor for a sweep at once, so the table holds about the keys of the last
    /// window whatever the rate of new keys.
    #[tokio::test]
    async fn many_new_keys_make_the_actor_sweep_so_memory_stays_bounded() {
        let (system, clock, _config, limiter) = local_on_fake_clock();
        let p = Policy::new(10, SEC);
        for i in 1..SWEEP_AFTER_NEW_KEYS {
            limiter.check(&format!("ip:{i}"), p).await;
        }
        clock.advance(SEC);
        assert_eq!(limiter.tracked_keys(), SWEEP_AFTER_NEW_KEYS - 1);
        limiter.check("ip:last", p).await;
        until("the sweep", || limiter.tracked_keys() == 1).await;
        // Sweeping changes no answer.
        assert_eq!(limiter.check("ip:1", p).await.remaining, 9);
        system.stop();
    }

    #[tokio::test]
    async fn turning_rate_limiting_off_drops_every_key() {
        let system = ActorSystem::start("test-rate-limit", 1).expect("system");
        let (live, rx) = live();
        let limiter = RateLimitActor::start(system.arbiter(), rx, None);
        let p = Policy::new(1, 60 * SEC);
        assert!(limiter.check("key:a", p).await.allowed);
        assert!(!limiter.check("key:a", p).await.allowed);
        live.send_replace(config(serde_json::json!({"enabled": false})));
        until("the table dropped", || limiter.tracked_keys() == 0).await;
        // On again: the key starts afresh.
        live.send_replace(config(serde_json::json!({"enabled": true})));
        assert!(limiter.check("key:a", p).await.allowed);
        system.stop();
    }

    // ---- shared limits (Redis)

    async fn cluster_on(url: &str, ns: &str) -> Arc<Cluster> {
        let store = crate::store::redis::RedisStore::connect(url, ns)
            .await
            .expect("connect");
        Cluster::join(url, Arc::new(store)).expect("join")
    }

    async fn shared(system: &ActorSystem, url: &str, ns: &str) -> Limiter {
        let (config, rx) = live();
        // The config's sender may go: the actor keeps the last config.
        drop(config);
        RateLimitActor::start(system.arbiter(), rx, Some(cluster_on(url, ns).await))
    }

    /// Two instances on one namespace of the shared test server.
    struct Pair {
        system: ActorSystem,
        a: Limiter,
        b: Limiter,
        url: String,
        ns: String,
    }

    impl Pair {
        async fn start() -> Pair {
            let url =
                crate::store::redis::test_server::shared_url().unwrap_or_else(|e| panic!("{e}"));
            let ns = crate::store::redis::test_server::test_namespace();
            let system = ActorSystem::start("test-rate-limit", 1).expect("system");
            let a = shared(&system, &url, &ns).await;
            let b = shared(&system, &url, &ns).await;
            Pair {
                system,
                a,
                b,
                url,
                ns,
            }
        }
    }

    #[tokio::test]
    async fn instances_on_one_redis_share_one_limit() {
        let Pair {
            system,
            a,
            b,
            url,
            ns,
        } = Pair::start().await;
        let p = Policy::new(3, 60 * SEC);
        let answers = [
            a.check("key:x", p).await,
            b.check("key:x", p).await,
            a.check("key:x", p).await,
            b.check("key:x", p).await,
        ];
        let allowed: Vec<_> = answers.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false]);
        assert_eq!(
            answers.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        // The same headers the local limiter gives for a burst at one instant (give or take
        // the few ms between the calls).
        assert_eq!(answers[3].reset_secs(), 60);
        assert!(matches!(answers[3].retry_after_secs(), Some(19 | 20)));
        // Nothing was counted locally, another key is apart, another namespace too.
        assert_eq!(a.tracked_keys(), 0);
        assert!(b.check("key:y", p).await.allowed);
        let other = shared(&system, &url, &format!("{ns}-o")).await;
        assert!(other.check("key:x", p).await.allowed);

        // A new policy applies to the next request, whatever units the state was written in:
        // 7 per minute (µs in sevenths) spent, then 100 per minute (whole µs) finds the minute
        // spent too.
        let sevenths = Policy::new(7, 60 * SEC);
        for _ in 0..7 {
            assert!(a.check("key:z", sevenths).await.allowed);
        }
        let loose = Policy::new(100, 60 * SEC);
        let d = b.check("key:z", loose).await;
        assert!(!d.allowed, "{d:?}");
        assert_eq!(d.reset_secs(), 60);
        system.stop();
    }

    #[tokio::test]
    async fn many_concurrent_requests_never_pass_more_than_the_limit() {
        let Pair { system, a, b, .. } = Pair::start().await;
        let p = Policy::new(7, 3600 * SEC);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move { l.check("key:burst", p).await.allowed });
        }
        let mut passed = 0;
        while let Some(r) = tasks.join_next().await {
            passed += usize::from(r.expect("join"));
        }
        assert_eq!(passed, 7);
        system.stop();
    }

    #[tokio::test]
    async fn without_redis_each_instance_limits_on_its_own() {
        let mut server = crate::store::redis::test_server::RedisServer::start()
            .unwrap_or_else(|e| panic!("{e}"));
        let system = ActorSystem::start("test-rate-limit", 1).expect("system");
        let limiter = shared(&system, &server.url(), "rl").await;
        let p = Policy::new(2, 60 * SEC);
        assert!(limiter.check("key:k", p).await.allowed);
        server.kill();
        // Decided locally, from a full bucket: the limit still holds, per instance.
        assert!(limiter.check("key:k", p).await.allowed);
        assert!(limiter.check("key:k", p).await.allowed);
        assert!(!limiter.check("key:k", p).await.allowed);
        assert_eq!(limiter.tracked_keys(), 1);
        system.stop();
    }

    // ---- measurement (no assertion on timings: run by hand, in release)

    /// The alternative not taken: every check as a message to the actor (which answers from
    /// its table, or starts the Redis call in a task of its own and answers when it is done).
    #[derive(Message)]
    #[rtype(result = "Decision")]
    struct HopCheck(String, Policy);

    impl Handler<HopCheck> for RateLimitActor {
        type Result = ResponseFuture<Decision>;
        fn handle(&mut self, msg: HopCheck, _: &mut Context<Self>) -> Self::Result {
            let table = self.table.clone();
            let sharing = self.sharing.clone();
            Box::pin(async move {
                if let Sharing::Redis(redis) = sharing {
                    if let Some(d) = redis.check(&msg.0, msg.1).await {
                        return d;
                    }
                }
                table.check(&msg.0, msg.1).decision
            })
        }
    }

    /// `n` checks by each of `tasks` tasks on this (2-thread) runtime; per second overall, and
    /// the mean time of one check when one task runs.
    async fn rate<F, Fut>(tasks: usize, n: usize, check: F) -> f64
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Decision> + Send,
    {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let check = check.clone();
            set.spawn(async move {
                for i in 0..n {
                    check(t * n + i).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
        (tasks * n) as f64 / start.elapsed().as_secs_f64()
    }

    fn report(what: &str, sequential: f64, concurrent: f64) {
        println!(
            "{what:<34} one caller: {:>8.2} µs/check   64 callers: {:>12.0} checks/s",
            1e6 / sequential,
            concurrent
        );
    }

    /// Each way, one caller at a time and 64 at once.
    async fn measure(what: &str, limiter: &Limiter, keys: &Arc<Vec<String>>, n: usize) {
        let p = Policy::new(1_000_000, SEC);
        let (l, k) = (limiter.clone(), keys.clone());
        let direct = move |i: usize| {
            let (l, k) = (l.clone(), k.clone());
            async move { l.check(&k[i % k.len()], p).await }
        };
        let seq = rate(1, n, direct.clone()).await;
        let conc = rate(64, n / 10, direct).await;
        report(&format!("{what}, on the caller"), seq, conc);

        let (a, k) = (limiter.actor.clone(), keys.clone());
        let hop = move |i: usize| {
            let (a, k) = (a.clone(), k.clone());
            async move {
                a.send(HopCheck(k[i % k.len()].clone(), p))
                    .await
                    .expect("answer")
            }
        };
        let seq = rate(1, n / 10, hop.clone()).await;
        let conc = rate(64, n / 100, hop).await;
        report(&format!("{what}, a message per check"), seq, conc);
    }

    /// `cargo test --release -p actors --lib measure_the_hot_path -- --ignored --nocapture`
    /// (with redis-server on the PATH for the Redis rows).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test: run by hand"]
    async fn measure_the_hot_path() {
        let system = ActorSystem::start("measure", 1).expect("system");
        let keys: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("key:{i}")).collect());
        let (_live, rx) = live();
        let local = RateLimitActor::start(system.arbiter(), rx, None);
        measure("table", &local, &keys, 200_000).await;

        let Ok(url) = crate::store::redis::test_server::shared_url() else {
            println!("no redis-server: Redis rows skipped");
            return;
        };
        let ns = crate::store::redis::test_server::test_namespace();
        let (_live, rx) = live();
        let shared = RateLimitActor::start(system.arbiter(), rx, Some(cluster_on(&url, &ns).await));
        measure("Redis", &shared, &keys, 5_000).await;
        system.stop();
    }
}
