//! The MetricsActor: an actix actor on the [`ActorSystem`](crate::system::ActorSystem)'s
//! arbiter that folds every final task record into [`Metrics`].
//!
//! It listens to [`crate::queue::Queue::subscribe_finished`] rather than being called by the
//! handlers, so every run is counted once whichever way it ended (sync, async, batch, session
//! turn, cancel, timeout, shutdown) and a handler cannot forget it. The subscription is its
//! input, taken in as records arrive (a [`Feed`]); [`Settle`] is its one message: it answers
//! once every record already sent is counted. It stops by itself when the queue is gone (the
//! subscription closes) and nobody holds its address.
//!
//! The registry itself stays shared (`Arc<Metrics>`, one lock per family), not owned by the
//! actor: the HTTP layer counts every request (`http_request`, `rate_limited`) and renders
//! `GET /metrics` synchronously. Measured with `measure_the_request_counters` (ignored; release
//! build, 2 cores shared with other builds, load about 2, so ranges: four runs, the paced row
//! three), against the actor owning the registry with a `do_send` per count:
//!
//! | per counted request (CPU, every thread) | on the caller, shared registry | a message to the actor |
//! |---|---|---|
//! | a burst, one caller | 0.18–0.21 µs | 0.39–1.75 µs |
//! | a burst, 64 callers | 0.11–0.63 µs | 0.32–0.87 µs |
//! | paced, one every 100 µs (beyond the idle loop) | −0.4–1.3 µs (noise) | 3.8–12.4 µs |
//!
//! A burst keeps the actor's thread awake and still costs 1.4 to 9.5 times the count; requests
//! spaced out, the usual case, wake the arbiter's thread for every message: 4 to 12 µs of CPU
//! per request for a map update that takes a fifth of one. And the render would still need
//! the registry: either as a request message, which makes `/metrics` an `await` on the actor
//! (a change to its handler in `src/http`), or as a snapshot the actor republishes, which
//! puts a lock or a copy back on every write beside the message. So the actor owns what is
//! not per request: the subscription of final records, counted once each.

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::sync::mpsc;

use super::Metrics;
use crate::model::Task;
use crate::system::{drain, Feed};

pub struct MetricsActor {
    metrics: Arc<Metrics>,
    /// The queue's subscription; `None` once closed.
    finished: Option<mpsc::UnboundedReceiver<Arc<Task>>>,
    /// Records counted since the start.
    counted: u64,
}

/// Count every final record already sent; answers how many were counted since the start.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Settle;

impl MetricsActor {
    /// Start counting `finished` (subscribed before any task can end, so none is missed) on
    /// `arbiter`.
    pub fn start(
        arbiter: &ArbiterHandle,
        metrics: Arc<Metrics>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
    ) -> Addr<MetricsActor> {
        let finished = Some(finished);
        MetricsActor::start_in_arbiter(arbiter, move |_| MetricsActor {
            metrics,
            finished,
            counted: 0,
        })
    }

    fn count(&mut self, task: &Task) {
        self.metrics.task_finished(task);
        self.counted += 1;
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Feed {
            rx: |a: &mut MetricsActor| &mut a.finished,
            take: |a, task, _| a.count(&task),
        });
    }
}

impl Handler<Settle> for MetricsActor {
    type Result = MessageResult<Settle>;

    fn handle(&mut self, _: Settle, _: &mut Context<Self>) -> Self::Result {
        for task in drain(&mut self.finished) {
            self.count(&task);
        }
        MessageResult(self.counted)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{Priority, RunSpec, TaskMode, TaskStatus};
    use crate::system::ActorSystem;

    fn task(status: TaskStatus, cost: f64) -> Arc<Task> {
        let mut t = Task::new(
            RunSpec::new("p", PathBuf::from("/tmp"), 1000),
            Priority::ASYNC_DEFAULT,
            TaskMode::Sync,
        );
        t.status = status;
        t.cost_usd = Some(cost);
        t.duration_ms = Some(1500);
        Arc::new(t)
    }

    /// Records in, counted metrics out; `Settle` answers after everything already sent.
    #[tokio::test]
    async fn final_records_are_counted_once_each() {
        let system = ActorSystem::start("test-metrics", 1).expect("system");
        let metrics = Arc::new(Metrics::default());
        let (feed, finished) = mpsc::unbounded_channel();
        let actor = MetricsActor::start(system.arbiter(), metrics.clone(), finished);
        for status in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Completed,
        ] {
            feed.send(task(status, 0.25)).expect("feed");
        }
        // A record that is not final (never sent by the queue) changes nothing but the count.
        feed.send(task(TaskStatus::Processing, 1.0)).expect("feed");
        assert_eq!(actor.send(Settle).await.expect("settle"), 4);
        assert_eq!(metrics.tasks_finished_count(TaskStatus::Completed), 2.0);
        assert_eq!(metrics.tasks_finished_count(TaskStatus::Failed), 1.0);
        let live = crate::queue::LiveStatus {
            pending: 0,
            running: 0,
            concurrency: 1,
            accepting: true,
        };
        let text = metrics.render(live, None, Default::default());
        assert!(
            text.lines().any(|l| l == "ccs_cost_usd_total 0.75"),
            "{text}"
        );

        // The queue gone: the actor still answers while it has an address, with what it had.
        drop(feed);
        assert_eq!(actor.send(Settle).await.expect("settle"), 4);
        // And stops (dropping its share of the registry) once nobody holds one.
        drop(actor);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&metrics) > 1 {
            assert!(std::time::Instant::now() < deadline, "still running");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        system.stop();
    }
    // ---- measurement (no assertion on timings: run by hand, in release)

    /// The alternative not taken: the actor owns the registry, and each HTTP request is counted
    /// by a message to it, sent with `do_send` as a hot path must (owned labels: the message
    /// outlives the caller's borrowed route and method).
    #[derive(Message)]
    #[rtype(result = "()")]
    struct HopRequest {
        method: String,
        route: String,
        status: u16,
        elapsed: std::time::Duration,
    }

    impl Handler<HopRequest> for MetricsActor {
        type Result = ();
        fn handle(&mut self, msg: HopRequest, _: &mut Context<Self>) {
            self.metrics
                .http_request(&msg.method, &msg.route, msg.status, msg.elapsed);
        }
    }

    /// Counts of the paced run.
    const PACED: usize = 20_000;

    const ROUTES: [&str; 4] = [
        "/api/tasks/{id}",
        "/api/tasks",
        "/health",
        "/api/sessions/{id}",
    ];

    /// CPU time (user + system) of the whole process, every thread: the actor's included.
    fn cpu() -> std::time::Duration {
        // SAFETY: getrusage only writes the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_SELF is always valid.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let t = |v: libc::timeval| {
            std::time::Duration::from_secs(v.tv_sec as u64)
                + std::time::Duration::from_micros(v.tv_usec as u64)
        };
        t(u.ru_utime) + t(u.ru_stime)
    }

    /// `n` counts by each of `tasks` tasks on this (2-thread) runtime, then `settle` (which
    /// returns once every count is in the registry). Per count: wall time, time until the
    /// callers were done, and CPU time of the whole process.
    async fn rate<F, S, Fut>(tasks: usize, n: usize, count: F, settle: S) -> (f64, f64, f64)
    where
        F: Fn(usize) + Clone + Send + 'static,
        S: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (cpu0, start) = (cpu(), std::time::Instant::now());
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let count = count.clone();
            set.spawn(async move {
                for i in 0..n {
                    count(t * n + i);
                    // A request handler yields between requests.
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        let callers = start.elapsed();
        settle().await;
        let (wall, cpu) = (start.elapsed(), cpu() - cpu0);
        let total = (tasks * n) as f64;
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / total;
        (per(wall), per(callers), per(cpu))
    }

    /// `cargo test --release -p actors --lib measure_the_request_counters -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test: run by hand"]
    async fn measure_the_request_counters() {
        let system = ActorSystem::start("measure", 1).expect("system");
        let metrics = Arc::new(Metrics::default());
        let (_feed, finished) = mpsc::unbounded_channel();
        let actor = MetricsActor::start(system.arbiter(), metrics.clone(), finished);
        let took = std::time::Duration::from_micros(1500);
        for (tasks, n) in [(1, 200_000), (64, 5_000)] {
            let m = metrics.clone();
            let direct = move |i: usize| m.http_request("GET", ROUTES[i % 4], 200, took);
            let (wall, _, cpu) = rate(tasks, n, direct, || async {}).await;
            println!(
                "{tasks:>2} callers, on the caller (shared registry): {wall:>6.3} µs/count wall, {cpu:>6.3} µs/count CPU"
            );
            let a = actor.clone();
            let hop = move |i: usize| {
                a.do_send(HopRequest {
                    method: "GET".to_owned(),
                    route: ROUTES[i % 4].to_owned(),
                    status: 200,
                    elapsed: took,
                })
            };
            let a = actor.clone();
            let settle = || async move {
                a.send(Settle).await.expect("settled");
            };
            let (wall, callers, cpu) = rate(tasks, n, hop, settle).await;
            println!(
                "{tasks:>2} callers, a message per count (actor owns it): {wall:>6.3} µs/count wall ({callers:.3} until the callers were done), {cpu:>6.3} µs/count CPU"
            );
        }
        // Requests spaced out, as they mostly come: one every 100 µs from a thread of its own.
        // The idle loop's own cost (the sleeps) is measured first and taken off.
        let paced = |count: &(dyn Fn(usize) + Sync)| {
            let (cpu0, start) = (cpu(), std::time::Instant::now());
            for i in 0..PACED {
                count(i);
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            (
                (cpu() - cpu0).as_secs_f64() * 1e6 / PACED as f64,
                start.elapsed(),
            )
        };
        let (idle, _) =
            std::thread::scope(|s| s.spawn(|| paced(&|_| {})).join()).expect("idle loop");
        let m = metrics.clone();
        let (direct, _) = std::thread::scope(|s| {
            s.spawn(|| paced(&|i| m.http_request("GET", ROUTES[i % 4], 200, took)))
                .join()
        })
        .expect("direct loop");
        let a = actor.clone();
        let (hop, _) = std::thread::scope(|s| {
            s.spawn(|| {
                paced(&|i| {
                    a.do_send(HopRequest {
                        method: "GET".to_owned(),
                        route: ROUTES[i % 4].to_owned(),
                        status: 200,
                        elapsed: took,
                    })
                })
            })
            .join()
        })
        .expect("hop loop");
        actor.send(Settle).await.expect("settled");
        println!(
            "paced (1 per 100 µs), CPU per count beyond the idle loop ({idle:.2} µs): on the caller {:.2} µs, a message {:.2} µs",
            direct - idle,
            hop - idle
        );
        let total: f64 = ROUTES
            .iter()
            .map(|r| metrics.http_requests.get(&["GET", r, "200"]))
            .sum();
        let expected = 2.0 * (200_000.0 + 64.0 * 5_000.0 + PACED as f64);
        assert_eq!(total, expected, "every count landed");
        system.stop();
    }
}
