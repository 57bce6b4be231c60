//! Operational metrics for `GET /metrics` (Prometheus text format).
//!
//! * [`registry`] — counter and histogram families and the text encoding (pure).
//! * [`actor`]    — the MetricsActor (actix, on the actor system's arbiter): counts every final
//!   task record from the queue.
//!
//! [`Metrics`] is shared (`Arc`) by the parts that count: the HTTP layer (requests, rate-limit
//! rejections, config reloads), the MetricsActor (runs, cost, tokens) and the WebhookActor's
//! observer (deliveries). Gauges (queue depth, running processes, concurrency) are read from
//! the queue when scraped, so they can never drift from the scheduler's own figures.

use std::time::Duration;

use crate::model::{Task, TaskStatus};
use crate::queue::LiveStatus;
use crate::store::TaskCounts;

pub mod actor;
pub mod registry;

pub use actor::{MetricsActor, Settle};
use registry::{encode_gauge, CounterVec, HistogramVec};

/// Run durations: from a quick answer to the default maximum timeout.
const RUN_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// HTTP handling time, sync runs included (hence the long tail).
const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub struct Metrics {
    http_requests: CounterVec,
    http_duration: HistogramVec,
    tasks_finished: CounterVec,
    run_duration: HistogramVec,
    cost: CounterVec,
    tokens: CounterVec,
    webhook_deliveries: CounterVec,
    webhook_attempts: CounterVec,
    rate_limited: CounterVec,
    config_reloads: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http_requests: CounterVec::new(
                "ccs_http_requests_total",
                "HTTP requests answered, by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_duration: HistogramVec::new(
                "ccs_http_request_duration_seconds",
                "Time to answer an HTTP request (a sync run included), by method and route template.",
                &["method", "route"],
                HTTP_BUCKETS,
            ),
            tasks_finished: CounterVec::new(
                "ccs_tasks_finished_total",
                "Tasks that reached a final status since the server started.",
                &["status"],
            ),
            run_duration: HistogramVec::new(
                "ccs_run_duration_seconds",
                "How long finished runs took, by final status.",
                &["status"],
                RUN_BUCKETS,
            ),
            cost: CounterVec::new(
                "ccs_cost_usd_total",
                "What runs cost, in US dollars, as the CLI reported it.",
                &[],
            ),
            tokens: CounterVec::new(
                "ccs_tokens_total",
                "Tokens used by runs, by kind.",
                &["kind"],
            ),
            webhook_deliveries: CounterVec::new(
                "ccs_webhook_deliveries_total",
                "Webhook deliveries that ended: delivered, or failed after their last retry.",
                &["result"],
            ),
            webhook_attempts: CounterVec::new(
                "ccs_webhook_attempts_total",
                "Webhook delivery attempts, by result.",
                &["result"],
            ),
            rate_limited: CounterVec::new(
                "ccs_rate_limited_total",
                "Requests refused with 429 rate_limited.",
                &[],
            ),
            config_reloads: CounterVec::new(
                "ccs_config_reloads_total",
                "Config changes from the file or PATCH /api/config, applied or refused.",
                &["result"],
            ),
        }
    }
}

impl Metrics {
    /// One answered HTTP request. `route` is the route template (`/api/tasks/{id}`), never the
    /// concrete path, so ids cannot blow up the number of series.
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .inc(&[method, route, status.to_string().as_str()]);
        self.http_duration
            .observe(&[method, route], elapsed.as_secs_f64());
    }

    /// A final task record (from the queue's subscription).
    pub fn task_finished(&self, task: &Task) {
        if !task.status.is_final() {
            return;
        }
        let status = task.status.as_str();
        self.tasks_finished.inc(&[status]);
        // A task cancelled while pending never ran: no duration to count.
        if task.started_at.is_some() || task.status != TaskStatus::Cancelled {
            if let Some(ms) = task.duration_ms {
                self.run_duration.observe(&[status], ms as f64 / 1000.0);
            }
        }
        if let Some(cost) = task.cost_usd {
            self.cost.inc_by(&[], cost);
        }
        if let Some(report) = &task.report {
            let u = report.usage;
            for (kind, n) in [
                ("input", u.input_tokens),
                ("output", u.output_tokens),
                ("cache_read", u.cache_read_input_tokens),
                ("cache_creation", u.cache_creation_input_tokens),
            ] {
                self.tokens.inc_by(&[kind], n as f64);
            }
        }
    }

    /// One webhook attempt; `gave_up`: it failed and was the last one.
    pub fn webhook_attempt(&self, delivered: bool, gave_up: bool) {
        self.webhook_attempts
            .inc(&[if delivered { "ok" } else { "error" }]);
        if delivered {
            self.webhook_deliveries.inc(&["delivered"]);
        } else if gave_up {
            self.webhook_deliveries.inc(&["failed"]);
        }
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc(&[]);
    }

    pub fn config_reload(&self, applied: bool) {
        self.config_reloads
            .inc(&[if applied { "applied" } else { "refused" }]);
    }

    /// Final tasks of `status` counted so far.
    pub fn tasks_finished_count(&self, status: TaskStatus) -> f64 {
        self.tasks_finished.get(&[status.as_str()])
    }

    /// Every metric in the Prometheus text format, with the queue's live figures and the
    /// stored tasks per status (`None` when storage did not answer: the gauge is left out).
    pub fn render(
        &self,
        live: LiveStatus,
        stored: Option<&TaskCounts>,
        uptime: Duration,
    ) -> String {
        let mut out = String::with_capacity(4096);
        self.http_requests.encode(&mut out);
        self.http_duration.encode(&mut out);
        self.tasks_finished.encode(&mut out);
        self.run_duration.encode(&mut out);
        self.cost.encode(&mut out);
        self.tokens.encode(&mut out);
        self.webhook_deliveries.encode(&mut out);
        self.webhook_attempts.encode(&mut out);
        self.rate_limited.encode(&mut out);
        self.config_reloads.encode(&mut out);
        let gauges: [(&str, &str, f64); 5] = [
            (
                "ccs_queue_pending",
                "Tasks waiting for a slot.",
                live.pending as f64,
            ),
            (
                "ccs_queue_running",
                "CLI processes running now.",
                live.running as f64,
            ),
            (
                "ccs_queue_concurrency",
                "The concurrency limit in force (taskQueue.concurrency).",
                live.concurrency as f64,
            ),
            (
                "ccs_queue_accepting",
                "1 while new runs are accepted, 0 during shutdown.",
                if live.accepting { 1.0 } else { 0.0 },
            ),
            (
                "ccs_uptime_seconds",
                "Seconds since the server started.",
                uptime.as_secs_f64(),
            ),
        ];
        for (name, help, v) in gauges {
            encode_gauge(&mut out, name, help, &[], &[(vec![], v)]);
        }
        if let Some(counts) = stored {
            let series: Vec<(Vec<String>, f64)> = TaskStatus::ALL
                .iter()
                .map(|s| (vec![s.as_str().to_owned()], counts.get(*s) as f64))
                .collect();
            encode_gauge(
                &mut out,
                "ccs_tasks",
                "Tasks in storage by status (finished ones until taskRetentionDays).",
                &["status"],
                &series,
            );
        }
        encode_gauge(
            &mut out,
            "ccs_build_info",
            "The server's version (always 1).",
            &["version"],
            &[(vec![env!("CARGO_PKG_VERSION").to_owned()], 1.0)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_family_typed() {
        let m = Metrics::default();
        m.http_request("GET", "/health", 200, Duration::from_millis(3));
        m.webhook_attempt(false, false);
        m.webhook_attempt(false, true);
        m.webhook_attempt(true, false);
        m.rate_limited();
        let live = LiveStatus {
            pending: 2,
            running: 1,
            concurrency: 3,
            accepting: true,
        };
        let mut counts = TaskCounts::default();
        counts.by_status.insert(TaskStatus::Completed, 4);
        let text = m.render(live, Some(&counts), Duration::from_secs(5));
        for line in [
            "# TYPE ccs_http_requests_total counter",
            "ccs_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1",
            "ccs_webhook_deliveries_total{result=\"delivered\"} 1",
            "ccs_webhook_deliveries_total{result=\"failed\"} 1",
            "ccs_webhook_attempts_total{result=\"error\"} 2",
            "ccs_rate_limited_total 1",
            "ccs_queue_pending 2",
            "ccs_queue_concurrency 3",
            "ccs_tasks{status=\"completed\"} 4",
            "ccs_tasks{status=\"pending\"} 0",
            "# TYPE ccs_run_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
