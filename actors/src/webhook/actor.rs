//! The WebhookActor: one tokio task that turns final task records into stored deliveries, and
//! one tokio task per delivery that makes its attempts.
//!
//! * A final record arrives from [`crate::queue::Queue::subscribe_finished`]. When
//!   `webhook.enabled` and the task has a `webhook_url` (or there is a `webhook.defaultUrl`),
//!   the delivery is stored in the outbox first, then handed to its own task, so a slow or dead
//!   receiver delays nothing else; the run's queue slot was freed before the record arrived.
//! * Each attempt reads the live config (timeout, retries, backoff, secret, private targets),
//!   so a reload applies to the next attempt. Every attempt is recorded; the outbox record is
//!   updated after a failure (attempt count, when the next one is due) and deleted after a
//!   success or the last retry.
//! * At start the outbox is loaded and every delivery resumes where it stopped.
//! * On shutdown, final records still in the mailbox are stored (not sent), running deliveries
//!   are stopped; all of them resume after the next start.
//!
//! # Several instances on one outbox (Redis storage)
//! The outbox is shared, so every instance sees every delivery; each is made by the one
//! instance that holds its claim ([`Store::claim_webhook_job`], an atomic `SET NX PX`):
//! * a new delivery is stored, then claimed by the instance that ended the task, which renews
//!   the claim every [`RENEW_EVERY`] while the delivery lasts (retries and backoff included) and
//!   releases it when the delivery is done;
//! * every [`SWEEP_EVERY`] (and at start) each instance claims the deliveries of the outbox that
//!   nobody holds: those of an instance that died (its claims expire [`CLAIM_TTL`] after its last
//!   renewal) or stopped (it releases its claims on shutdown). A claim hands over the delivery
//!   as stored, with its attempt count and next attempt time;
//! * a delivery whose claim is lost (Redis answered that another instance holds it) stops.
//!
//! So one instance makes each delivery; the at-least-once caveat stays (an instance that dies
//! after the receiver answered but before the outbox was updated leaves the delivery to be
//! made again by another). Without a cluster there are no claims and no sweep: the process
//! owns the outbox alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::deliver::{self, AttemptOutcome, AttemptSettings};
use super::payload;
use super::record::{WebhookAttempt, WebhookJob};
use super::schedule::{jitter_unit, retry_delay, total_attempts};
use super::sign::{SecretError, SigningKey};
use crate::config::{Config, WebhookConfig};
use crate::model::Task;
use crate::store::Store;

/// Where the actor reads the current config: called for every delivery and attempt, so hot
/// reloads apply without telling the actor.
pub type ConfigSource = Arc<dyn Fn() -> Arc<Config> + Send + Sync>;

/// Told the outcome of every attempt (for metrics): `delivered`, and whether a failed attempt
/// was the last one (`gave_up`). Called from the delivery's task; it must not block.
pub type DeliveryObserver = Arc<dyn Fn(bool, bool) + Send + Sync>;

/// With a cluster: how long a delivery's claim lasts unless its instance renews it, i.e. how
/// long a dead instance's deliveries wait before another instance takes them over.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How often an instance renews the claims of the deliveries it is making (a third of the
/// TTL: two renewals can fail before the claim lapses).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often an instance looks for deliveries in the outbox that nobody holds.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How the actor runs besides its store, records and config.
#[derive(Clone, Default)]
pub struct WebhookOptions {
    pub observer: Option<DeliveryObserver>,
    /// With a cluster: the name this instance claims deliveries under (its instance id).
    /// `None`: the process owns the outbox alone (no claims, no sweep).
    pub claim_as: Option<String>,
}

/// Stops the actor. Dropping it stops the actor too (like a shutdown without the draining).
pub struct WebhookHandle {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl WebhookHandle {
    /// Store the deliveries of records still queued for the actor, stop every delivery in
    /// flight (they stay in the outbox) and wait until the actor is gone. Call it after the
    /// queue has shut down, so that every final record has been handed over.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.done).await {
            log::error!(error:% = e; "the webhook actor failed");
        }
    }
}

pub struct WebhookActor {
    store: Arc<dyn Store>,
    config: ConfigSource,
    finished: mpsc::UnboundedReceiver<Arc<Task>>,
    deliveries: JoinSet<()>,
    observer: Option<DeliveryObserver>,
    claim_as: Option<Arc<str>>,
    /// The deliveries this instance is making, by webhook id and by their task, so a sweep
    /// does not start one twice.
    in_flight: HashSet<String>,
    by_task: HashMap<tokio::task::Id, String>,
}

impl WebhookActor {
    /// Resume the outbox and start listening to `finished` (from `Queue::subscribe_finished`,
    /// taken before any task can end so none is missed).
    pub async fn start(
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: ConfigSource,
    ) -> WebhookHandle {
        Self::start_observed(store, finished, config, None).await
    }

    /// [`WebhookActor::start`], telling `observer` the outcome of every attempt.
    pub async fn start_observed(
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: ConfigSource,
        observer: Option<DeliveryObserver>,
    ) -> WebhookHandle {
        let options = WebhookOptions {
            observer,
            claim_as: None,
        };
        Self::start_with(store, finished, config, options).await
    }

    /// [`WebhookActor::start`] with every option.
    pub async fn start_with(
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: ConfigSource,
        options: WebhookOptions,
    ) -> WebhookHandle {
        let mut actor = WebhookActor {
            store,
            config,
            finished,
            deliveries: JoinSet::new(),
            observer: options.observer,
            claim_as: options.claim_as.map(Arc::from),
            in_flight: HashSet::new(),
            by_task: HashMap::new(),
        };
        actor.resume(true).await;
        let (stop_tx, stop_rx) = oneshot::channel();
        let done = tokio::spawn(actor.run(stop_rx));
        WebhookHandle {
            stop: Some(stop_tx),
            done,
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut listening = true;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.reset(); // the start-up pass was the first
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                msg = self.finished.recv(), if listening => match msg {
                    Some(task) => {
                        if let Some((job, stored)) = self.enqueue(&task).await {
                            self.start_delivery(job, stored).await;
                        }
                    }
                    // The queue has stopped; deliveries in flight go on until `shutdown`.
                    None => listening = false,
                },
                Some(joined) = self.deliveries.join_next_with_id(), if !self.deliveries.is_empty() => {
                    let id = match joined {
                        Ok((id, ())) => id,
                        Err(e) => {
                            if e.is_panic() {
                                log::error!("a webhook delivery task panicked");
                            }
                            e.id()
                        }
                    };
                    if let Some(webhook_id) = self.by_task.remove(&id) {
                        self.in_flight.remove(&webhook_id);
                    }
                }
                _ = sweep.tick(), if self.claim_as.is_some() => self.resume(false).await,
            }
        }
        // Records the queue handed over before stopping: stored now, sent after the restart
        // (or by another instance, which finds them unclaimed).
        while let Ok(task) = self.finished.try_recv() {
            self.enqueue(&task).await;
        }
        self.deliveries.shutdown().await;
        // Handed over at once rather than when the claims expire.
        if let Some(owner) = &self.claim_as {
            for webhook_id in &self.in_flight {
                if let Err(e) = self.store.release_webhook_job(webhook_id, owner).await {
                    log::debug!(webhook_id = webhook_id, error:% = e; "cannot release the webhook delivery; its claim will expire");
                }
            }
        }
    }

    /// Start the deliveries of the outbox this instance may make: every one without a
    /// cluster (at start), the ones nobody holds with one (at start and every sweep).
    async fn resume(&mut self, at_start: bool) {
        let jobs = match self.store.pending_webhook_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                if at_start {
                    log::error!(error:% = e; "cannot read the webhook outbox; stored deliveries are not resumed now");
                } else {
                    log::debug!(error:% = e; "cannot read the webhook outbox; trying again at the next sweep");
                }
                return;
            }
        };
        let mut resumed = 0usize;
        for job in jobs {
            if self.in_flight.contains(&job.webhook_id) {
                continue;
            }
            let job = match &self.claim_as {
                None => job,
                Some(owner) => {
                    match self
                        .store
                        .claim_webhook_job(&job.webhook_id, owner, CLAIM_TTL)
                        .await
                    {
                        // As stored now (another instance may have made attempts since the
                        // list was read).
                        Ok(Some(current)) => current,
                        Ok(None) => continue,
                        Err(e) => {
                            log::debug!(error:% = e; "cannot claim webhook deliveries now");
                            break;
                        }
                    }
                }
            };
            resumed += 1;
            self.spawn(job, true);
        }
        if resumed > 0 {
            log::info!(count = resumed; "resuming webhook deliveries");
        }
    }

    /// Store the delivery a final record calls for, if any, and return it with whether it
    /// was stored.
    async fn enqueue(&self, task: &Task) -> Option<(WebhookJob, bool)> {
        let config = (self.config)();
        let job = new_job(task, &config.webhook, Utc::now())?;
        let stored = match self.store.save_webhook_job(&job).await {
            Ok(()) => true,
            Err(e) => {
                // Still attempted now; only a restart before it succeeds would lose it.
                log::error!(task_id:% = task.id, webhook_id:% = job.webhook_id, error:% = e; "cannot store the webhook delivery");
                false
            }
        };
        Some((job, stored))
    }

    /// Make a new delivery: under its claim with a cluster, once it is stored.
    async fn start_delivery(&mut self, job: WebhookJob, stored: bool) {
        if let (Some(owner), true) = (&self.claim_as, stored) {
            match self
                .store
                .claim_webhook_job(&job.webhook_id, owner, CLAIM_TTL)
                .await
            {
                Ok(Some(_)) => {}
                // Another instance's sweep claimed it between the save and here: it is theirs.
                Ok(None) => return,
                // Redis failed just now: deliver; the renewals claim it when Redis is back,
                // unless another instance has by then (then this one stops).
                Err(e) => {
                    log::debug!(webhook_id:% = job.webhook_id, error:% = e; "cannot claim the new webhook delivery yet")
                }
            }
        }
        // Not stored: no other instance can see it, so no claim is needed.
        self.spawn(job, stored);
    }

    fn spawn(&mut self, job: WebhookJob, claimed: bool) {
        let owner = if claimed { self.claim_as.clone() } else { None };
        let webhook_id = job.webhook_id.clone();
        let handle = self.deliveries.spawn(run_claimed(
            job,
            self.store.clone(),
            self.config.clone(),
            self.observer.clone(),
            owner,
        ));
        self.by_task.insert(handle.id(), webhook_id.clone());
        self.in_flight.insert(webhook_id);
    }
}

/// Make a delivery; with an `owner`, only while its claim is this instance's: renewed every
/// [`RENEW_EVERY`], released when done.
async fn run_claimed(
    job: WebhookJob,
    store: Arc<dyn Store>,
    config: ConfigSource,
    observer: Option<DeliveryObserver>,
    owner: Option<Arc<str>>,
) {
    let Some(owner) = owner else {
        run_delivery(job, store, config, observer).await;
        return;
    };
    let webhook_id = job.webhook_id.clone();
    tokio::select! {
        () = run_delivery(job, store.clone(), config, observer) => {}
        () = hold_claim(&store, &webhook_id, &owner) => {
            log::warn!(webhook_id = webhook_id; "the claim on this webhook delivery is lost (another instance holds it, or it left the outbox); stopping it here");
        }
    }
    if let Err(e) = store.release_webhook_job(&webhook_id, &owner).await {
        log::debug!(webhook_id = webhook_id, error:% = e; "cannot release the webhook delivery; its claim will expire");
    }
}

/// Renew the claim until it is lost (returns then). A failed renewal (Redis away) is tried
/// again at the next interval: the delivery goes on meanwhile.
async fn hold_claim(store: &Arc<dyn Store>, webhook_id: &str, owner: &str) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match store.claim_webhook_job(webhook_id, owner, CLAIM_TTL).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                log::debug!(webhook_id = webhook_id, error:% = e; "cannot renew the claim on the webhook delivery")
            }
        }
    }
}

/// The delivery a final task record calls for under `config`, or `None` (webhooks off, no URL,
/// not a final record).
pub fn new_job(task: &Task, config: &WebhookConfig, now: DateTime<Utc>) -> Option<WebhookJob> {
    if !config.enabled {
        return None;
    }
    let url = task
        .webhook_url
        .clone()
        .or_else(|| config.default_url.clone())?;
    let (event, body) = payload::build(task, now)?;
    Some(WebhookJob {
        webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        task_id: task.id,
        event: event.to_owned(),
        url,
        body: body.to_string(),
        attempts: 0,
        created_at: now,
        next_attempt_at: now,
    })
}

/// The settings of the next attempt, from the live config.
fn attempt_settings(config: &WebhookConfig) -> Result<AttemptSettings, SecretError> {
    let key = match config.secret.as_deref() {
        Some(s) if !s.is_empty() => Some(SigningKey::from_secret(s)?),
        _ => None,
    };
    Ok(AttemptSettings {
        timeout: Duration::from_millis(config.timeout.max(1)),
        allow_private: config.allow_private_targets,
        key,
    })
}

/// Make the attempts of one delivery until it succeeds or its retries are spent.
async fn run_delivery(
    mut job: WebhookJob,
    store: Arc<dyn Store>,
    config: ConfigSource,
    observer: Option<DeliveryObserver>,
) {
    loop {
        let wait = (job.next_attempt_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;

        let config = config();
        let wh = &config.webhook;
        if !wh.enabled {
            log::info!(task_id:% = job.task_id, webhook_id:% = job.webhook_id; "webhooks are disabled; the delivery is dropped");
            forget(&store, &job).await;
            return;
        }
        let number = job.attempts.saturating_add(1);
        let at = Utc::now();
        let clock = tokio::time::Instant::now();
        let outcome = match attempt_settings(wh) {
            Ok(settings) => deliver::attempt(&job, &settings, at.timestamp()).await,
            Err(e) => AttemptOutcome {
                status_code: None,
                error: Some(format!("webhook.secret cannot be used: {e}")),
            },
        };
        let record = WebhookAttempt {
            webhook_id: job.webhook_id.clone(),
            task_id: job.task_id,
            event: job.event.clone(),
            url: job.url.clone(),
            attempt: number,
            status_code: outcome.status_code,
            error: outcome.error,
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            at,
        };
        let delivered = record.succeeded();
        let last = number >= total_attempts(wh.retries);
        // The URL may carry a token of the receiver's: the log names the delivery, not the URL.
        if delivered {
            log::info!(task_id:% = job.task_id, webhook_id:% = job.webhook_id, attempt = number, status:? = record.status_code; "webhook delivered");
        } else {
            log::warn!(task_id:% = job.task_id, webhook_id:% = job.webhook_id, attempt = number, status:? = record.status_code, error = record.error.as_deref().unwrap_or(""), gave_up = last; "webhook attempt failed");
        }
        if let Some(observe) = &observer {
            observe(delivered, !delivered && last);
        }
        if let Err(e) = store.record_webhook_attempt(&record).await {
            log::error!(webhook_id:% = job.webhook_id, error:% = e; "cannot record the webhook attempt");
        }
        if delivered || last {
            forget(&store, &job).await;
            return;
        }
        job.attempts = number;
        job.next_attempt_at = Utc::now() + retry_delay(wh.backoff_ms, number, jitter_unit());
        if let Err(e) = store.save_webhook_job(&job).await {
            log::error!(webhook_id:% = job.webhook_id, error:% = e; "cannot update the stored webhook delivery");
        }
    }
}

async fn forget(store: &Arc<dyn Store>, job: &WebhookJob) {
    if let Err(e) = store.delete_webhook_job(&job.webhook_id).await {
        log::error!(webhook_id:% = job.webhook_id, error:% = e; "cannot remove the finished webhook delivery from the outbox");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskStatus;
    use crate::store::conformance::fixtures::{at, task};

    fn config(enabled: bool, default_url: Option<&str>) -> WebhookConfig {
        WebhookConfig {
            enabled,
            default_url: default_url.map(String::from),
            timeout: 5000,
            retries: 3,
            secret: None,
            backoff_ms: 1000,
            allow_private_targets: false,
        }
    }

    fn done(url: Option<&str>) -> Task {
        let mut t = task(5);
        t.status = TaskStatus::Completed;
        t.webhook_url = url.map(String::from);
        t
    }

    #[test]
    fn a_job_needs_webhooks_on_a_url_and_a_final_record() {
        let c = config(true, None);
        assert!(new_job(&done(None), &c, at(0)).is_none());
        assert!(new_job(
            &done(Some("https://a.example/")),
            &config(false, None),
            at(0)
        )
        .is_none());
        assert!(
            new_job(&task(5), &c, at(0)).is_none(),
            "a live task has nothing to announce"
        );
        let job = new_job(&done(Some("https://a.example/")), &c, at(0)).expect("a job");
        assert_eq!(job.url, "https://a.example/");
        assert_eq!(job.event, "task.completed");
        assert_eq!(job.attempts, 0);
        assert_eq!(job.next_attempt_at, at(0));
        assert!(job.webhook_id.starts_with("msg_") && job.webhook_id.len() == 36);
        let body: serde_json::Value = serde_json::from_str(&job.body).expect("json body");
        assert_eq!(body["data"]["task_id"], serde_json::json!(job.task_id));
    }

    #[test]
    fn the_task_url_wins_over_the_default() {
        let c = config(true, Some("https://default.example/"));
        let own = new_job(&done(Some("https://own.example/")), &c, at(0)).expect("job");
        assert_eq!(own.url, "https://own.example/");
        let dflt = new_job(&done(None), &c, at(0)).expect("job");
        assert_eq!(dflt.url, "https://default.example/");
        let other = new_job(&done(None), &c, at(0)).expect("job");
        assert_ne!(dflt.webhook_id, other.webhook_id);
    }

    #[test]
    fn settings_follow_the_config() {
        let mut c = config(true, None);
        c.allow_private_targets = true;
        c.timeout = 250;
        let s = attempt_settings(&c).expect("settings");
        assert!(s.allow_private && s.key.is_none());
        assert_eq!(s.timeout, Duration::from_millis(250));
        c.secret = Some(String::new());
        assert!(attempt_settings(&c)
            .expect("empty secret = none")
            .key
            .is_none());
        c.secret = Some("whsec_***".into());
        assert_eq!(attempt_settings(&c).err(), Some(SecretError::BadBase64));
        c.secret = Some("plain".into());
        assert!(attempt_settings(&c).expect("settings").key.is_some());
    }
}
