//! The WebhookActor: an actix actor on the actor system's long-lived arbiter that turns final
//! task records into stored deliveries, and makes each delivery as a future of its own.
//!
//! * Final records arrive from [`crate::queue::Queue::subscribe_finished`], an unbounded
//!   channel the actor reads as a stream (`add_stream`): records never wait for mailbox room, so
//!   the queue is never held up, and the run's queue slot was freed before the record arrived.
//!   When `webhook.enabled` and the task has a `webhook_url` (or there is a
//!   `webhook.defaultUrl`), the delivery is stored in the outbox first, then started.
//! * Nothing slow runs in a handler: store operations and deliveries are futures spawned on the
//!   actor's context (`ctx.spawn`), so a slow or dead receiver delays nothing else, and the actor
//!   keeps answering its messages meanwhile. A delivery's id is marked in flight before its first
//!   store operation, so the sweep below never starts a delivery twice.
//! * Deliveries go out through awc ([`Deliverer`], made on the arbiter: awc is `!Send`), with
//!   the SSRF policy applied to every address connected to (see [`super::deliver`]).
//! * Each attempt reads the live config (timeout, retries, backoff, secret, private targets),
//!   so a reload applies to the next attempt. Every attempt is recorded; the outbox record is
//!   updated after a failure (attempt count, when the next one is due) and deleted after a
//!   success or the last retry.
//! * At start the outbox is loaded and every delivery resumes where it stopped.
//! * On [`Shutdown`], final records still queued for the actor are stored (not sent), running
//!   deliveries are stopped; all of them resume after the next start.
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

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::deliver::{system_lookup, AttemptOutcome, AttemptSettings, Deliverer, Lookup};
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
/// was the last one (`gave_up`). Called on the actor's arbiter; it must not block.
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
    /// How webhook host names are resolved (`None`: the system's resolver). Every answer still
    /// passes the SSRF policy; tests answer with addresses of their own.
    pub lookup: Option<Lookup>,
    /// Deliveries made during runs (`task.approval_requested`), from
    /// [`ApprovalHub::webhook_jobs`](crate::approval::bus::ApprovalHub::webhook_jobs); taken
    /// by the actor when it starts (shared only so that the options stay `Clone`).
    pub jobs: Option<JobFeed>,
}

/// See [`WebhookOptions::jobs`].
pub type JobFeed = Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<WebhookJob>>>>;

/// Store the deliveries of the records still queued for the actor, stop every delivery in
/// flight (they stay in the outbox), release this instance's claims, then stop the actor.
/// Answered once all of that is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Stop at once, without the draining of [`Shutdown`] (the handle was dropped).
#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

/// Start the deliveries the outbox holds; answered once they are started.
#[derive(Message)]
#[rtype(result = "()")]
struct ResumeOutbox;

/// The running actor. Dropping it stops the actor too (like a shutdown without the draining).
pub struct WebhookHandle {
    addr: Option<Addr<WebhookActor>>,
}

impl WebhookHandle {
    /// [`Shutdown`], and wait until it is done. Call it after the queue has shut down, so that
    /// every final record has been handed over.
    pub async fn shutdown(mut self) {
        if let Some(addr) = self.addr.take() {
            if addr.send(Shutdown).await.is_err() {
                log::error!("the webhook actor was gone before its shutdown");
            }
        }
    }
}

impl Drop for WebhookHandle {
    fn drop(&mut self) {
        if let Some(addr) = self.addr.take() {
            addr.do_send(Stop);
        }
    }
}

/// What a delivery's future needs from the actor.
#[derive(Clone)]
struct Delivery {
    store: Arc<dyn Store>,
    config: ConfigSource,
    observer: Option<DeliveryObserver>,
    http: Rc<Deliverer>,
}

pub struct WebhookActor {
    delivery: Delivery,
    claim_as: Option<Arc<str>>,
    /// The final records not handled yet: read as the actor's stream, drained at shutdown.
    finished: Rc<RefCell<mpsc::UnboundedReceiver<Arc<Task>>>>,
    /// The deliveries this instance is making, by webhook id, with their running future once
    /// started (`None` while being stored or claimed), so a sweep does not start one twice.
    in_flight: HashMap<String, Option<SpawnHandle>>,
    /// Store operations in flight (saves, claims, outbox reads): waited for at shutdown.
    ops: TaskTracker,
    sweeping: bool,
    stopping: bool,
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Only a cluster has deliveries of other instances to take over.
        if self.claim_as.is_some() {
            ctx.run_interval(SWEEP_EVERY, |act, ctx| {
                if !act.sweeping && !act.stopping {
                    act.sweeping = true;
                    ctx.spawn(act.resume(false).map(|(), act, _| act.sweeping = false));
                }
            });
        }
    }
}

impl WebhookActor {
    /// Start the actor on `arbiter`, resume the outbox and listen to `finished` (from
    /// `Queue::subscribe_finished`, taken before any task can end so none is missed). Returns
    /// once the stored deliveries have been started.
    pub async fn start(
        arbiter: &ArbiterHandle,
        store: Arc<dyn Store>,
        finished: mpsc::UnboundedReceiver<Arc<Task>>,
        config: ConfigSource,
        options: WebhookOptions,
    ) -> WebhookHandle {
        let addr = WebhookActor::start_in_arbiter(arbiter, move |ctx| {
            let finished = Rc::new(RefCell::new(finished));
            let records = finished.clone();
            ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
                records.borrow_mut().poll_recv(cx)
            }));
            let taken = options.jobs.as_ref().and_then(|j| {
                j.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
            });
            if let Some(jobs) = taken {
                let jobs = RefCell::new(jobs);
                ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
                    jobs.borrow_mut().poll_recv(cx)
                }));
            }
            let lookup = options.lookup.unwrap_or_else(system_lookup);
            WebhookActor {
                delivery: Delivery {
                    store,
                    config,
                    observer: options.observer,
                    // awc's client is made here, on the arbiter it is used on.
                    http: Rc::new(Deliverer::new(lookup)),
                },
                claim_as: options.claim_as.map(Arc::from),
                finished,
                in_flight: HashMap::new(),
                ops: TaskTracker::new(),
                sweeping: false,
                stopping: false,
            }
        });
        if addr.send(ResumeOutbox).await.is_err() {
            log::error!("the webhook actor did not start");
        }
        WebhookHandle { addr: Some(addr) }
    }

    fn store(&self) -> Arc<dyn Store> {
        self.delivery.store.clone()
    }

    /// A final record: store the delivery it calls for, if any, then (claimed, with a cluster)
    /// make it.
    fn enqueue(&mut self, task: &Task, ctx: &mut Context<Self>) {
        let config = (self.delivery.config)();
        let Some(job) = new_job(task, &config.webhook, Utc::now()) else {
            return;
        };
        self.enqueue_job(job, ctx);
    }

    /// Store `job`, then (claimed, with a cluster) make it.
    fn enqueue_job(&mut self, job: WebhookJob, ctx: &mut Context<Self>) {
        self.in_flight.insert(job.webhook_id.clone(), None);
        let store = self.store();
        let owner = self.claim_as.clone();
        let saved = self.ops.track_future(async move {
            let stored = save(&store, &job).await;
            // Not stored: no other instance can see it, so no claim is needed.
            let go = match (&owner, stored) {
                (Some(owner), true) => claim_new(&store, &job, owner).await,
                _ => true,
            };
            (job, stored, go)
        });
        ctx.spawn(saved.into_actor(self).map(|(job, stored, go), act, ctx| {
            if !go {
                act.in_flight.remove(&job.webhook_id);
            } else if !act.stopping {
                act.deliver(job, stored, ctx);
            }
            // Stopping: stored, and released with the other claims by `Shutdown`.
        }));
    }

    /// Store the delivery a final record calls for, without making it (stopping).
    fn store_only(&mut self, task: &Task, ctx: &mut Context<Self>) {
        let config = (self.delivery.config)();
        if let Some(job) = new_job(task, &config.webhook, Utc::now()) {
            let store = self.store();
            let saved = self.ops.track_future(async move {
                save(&store, &job).await;
            });
            ctx.spawn(saved.into_actor(self));
        }
    }

    /// Start the deliveries of the outbox this instance may make: every one without a
    /// cluster (at start), the ones nobody holds with one (at start and every sweep).
    fn resume(&mut self, at_start: bool) -> impl ActorFuture<Self, Output = ()> + 'static {
        let store = self.store();
        let listed = self
            .ops
            .track_future(async move { store.pending_webhook_jobs().await });
        listed
            .into_actor(self)
            .then(move |listed, act, _| {
                let jobs = match listed {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        if at_start {
                            log::error!(error:% = e; "cannot read the webhook outbox; stored deliveries are not resumed now");
                        } else {
                            log::debug!(error:% = e; "cannot read the webhook outbox; trying again at the next sweep");
                        }
                        Vec::new()
                    }
                };
                let fresh: Vec<WebhookJob> = jobs
                    .into_iter()
                    .filter(|job| !act.in_flight.contains_key(&job.webhook_id))
                    .collect();
                for job in &fresh {
                    act.in_flight.insert(job.webhook_id.clone(), None);
                }
                act.ops
                    .track_future(claim_all(act.store(), act.claim_as.clone(), fresh))
                    .into_actor(act)
            })
            .map(|(claimed, skipped), act, ctx| {
                for webhook_id in skipped {
                    act.in_flight.remove(&webhook_id);
                }
                if act.stopping {
                    return; // released with the other claims by `Shutdown`
                }
                if !claimed.is_empty() {
                    log::info!(count = claimed.len(); "resuming webhook deliveries");
                }
                for job in claimed {
                    act.deliver(job, true, ctx);
                }
            })
    }

    /// Make a delivery (its id is in flight already): under this instance's claim when
    /// `claimed` and there is a cluster.
    fn deliver(&mut self, job: WebhookJob, claimed: bool, ctx: &mut Context<Self>) {
        let owner = if claimed { self.claim_as.clone() } else { None };
        let webhook_id = job.webhook_id.clone();
        let done = webhook_id.clone();
        let run = run_claimed(job, self.delivery.clone(), owner);
        let handle = ctx.spawn(run.into_actor(self).map(move |(), act, _| {
            act.in_flight.remove(&done);
        }));
        self.in_flight.insert(webhook_id, Some(handle));
    }
}

impl StreamHandler<Arc<Task>> for WebhookActor {
    fn handle(&mut self, task: Arc<Task>, ctx: &mut Context<Self>) {
        if self.stopping {
            // Only records the drain of `Shutdown` missed: stored, sent after the restart.
            self.store_only(&task, ctx);
        } else {
            self.enqueue(&task, ctx);
        }
    }

    /// The queue has stopped; deliveries in flight go on until [`Shutdown`].
    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// Deliveries made during a run (`task.approval_requested`), from the approval hub.
impl StreamHandler<WebhookJob> for WebhookActor {
    fn handle(&mut self, job: WebhookJob, ctx: &mut Context<Self>) {
        if self.stopping {
            let store = self.store();
            let saved = self.ops.track_future(async move {
                save(&store, &job).await;
            });
            ctx.spawn(saved.into_actor(self));
        } else {
            self.enqueue_job(job, ctx);
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<ResumeOutbox> for WebhookActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: ResumeOutbox, _: &mut Context<Self>) -> Self::Result {
        self.sweeping = true;
        Box::pin(self.resume(true).map(|(), act, _| act.sweeping = false))
    }
}

impl Handler<Shutdown> for WebhookActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        // Records the queue handed over before stopping: stored now, sent after the restart
        // (or by another instance, which finds them unclaimed).
        let config = (self.delivery.config)();
        let mut queued = Vec::new();
        {
            let mut finished = self.finished.borrow_mut();
            while let Ok(task) = finished.try_recv() {
                queued.extend(new_job(&task, &config.webhook, Utc::now()));
            }
        }
        // Running deliveries stop here; they stay in the outbox.
        for handle in self.in_flight.values().flatten() {
            ctx.cancel_future(*handle);
        }
        self.ops.close();
        let ops = self.ops.clone();
        let store = self.store();
        let drained = async move {
            for job in queued {
                save(&store, &job).await;
            }
            ops.wait().await;
        };
        Box::pin(
            drained
                .into_actor(self)
                .then(|(), act, _| {
                    // Handed over at once rather than when the claims expire.
                    let store = act.store();
                    let owner = act.claim_as.clone();
                    let held: Vec<String> = act.in_flight.keys().cloned().collect();
                    async move {
                        let Some(owner) = owner else { return };
                        for webhook_id in held {
                            release(&store, &webhook_id, &owner).await;
                        }
                    }
                    .into_actor(act)
                })
                .map(|(), _, ctx| ctx.stop()),
        )
    }
}

impl Handler<Stop> for WebhookActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Store a delivery; whether it was stored.
async fn save(store: &Arc<dyn Store>, job: &WebhookJob) -> bool {
    match store.save_webhook_job(job).await {
        Ok(()) => true,
        Err(e) => {
            // Still attempted now; only a restart before it succeeds would lose it.
            log::error!(task_id:% = job.task_id, webhook_id:% = job.webhook_id, error:% = e; "cannot store the webhook delivery");
            false
        }
    }
}

/// Claim a new delivery (just stored) for `owner`; whether to make it.
async fn claim_new(store: &Arc<dyn Store>, job: &WebhookJob, owner: &str) -> bool {
    match store
        .claim_webhook_job(&job.webhook_id, owner, CLAIM_TTL)
        .await
    {
        Ok(Some(_)) => true,
        // Another instance's sweep claimed it between the save and here: it is theirs.
        Ok(None) => false,
        // Redis failed just now: deliver; the renewals claim it when Redis is back, unless
        // another instance has by then (then this one stops).
        Err(e) => {
            log::debug!(webhook_id:% = job.webhook_id, error:% = e; "cannot claim the new webhook delivery yet");
            true
        }
    }
}

/// The outbox's deliveries this instance may make, as stored now, and the ids of the others.
/// Without an `owner` (no cluster) every one.
async fn claim_all(
    store: Arc<dyn Store>,
    owner: Option<Arc<str>>,
    jobs: Vec<WebhookJob>,
) -> (Vec<WebhookJob>, Vec<String>) {
    let Some(owner) = owner else {
        return (jobs, Vec::new());
    };
    let mut claimed = Vec::new();
    let mut skipped = Vec::new();
    let mut jobs = jobs.into_iter();
    for job in jobs.by_ref() {
        match store
            .claim_webhook_job(&job.webhook_id, &owner, CLAIM_TTL)
            .await
        {
            // As stored now (another instance may have made attempts since the list was read).
            Ok(Some(current)) => claimed.push(current),
            Ok(None) => skipped.push(job.webhook_id),
            Err(e) => {
                log::debug!(error:% = e; "cannot claim webhook deliveries now");
                skipped.push(job.webhook_id);
                break;
            }
        }
    }
    skipped.extend(jobs.map(|job| job.webhook_id));
    (claimed, skipped)
}

async fn release(store: &Arc<dyn Store>, webhook_id: &str, owner: &str) {
    if let Err(e) = store.release_webhook_job(webhook_id, owner).await {
        log::debug!(webhook_id = webhook_id, error:% = e; "cannot release the webhook delivery; its claim will expire");
    }
}

/// Make a delivery; with an `owner`, only while its claim is this instance's: renewed every
/// [`RENEW_EVERY`], released when done.
async fn run_claimed(job: WebhookJob, delivery: Delivery, owner: Option<Arc<str>>) {
    let Some(owner) = owner else {
        run_delivery(job, &delivery).await;
        return;
    };
    let webhook_id = job.webhook_id.clone();
    let store = delivery.store.clone();
    tokio::select! {
        () = run_delivery(job, &delivery) => {}
        () = hold_claim(&store, &webhook_id, &owner) => {
            log::warn!(webhook_id = webhook_id; "the claim on this webhook delivery is lost (another instance holds it, or it left the outbox); stopping it here");
        }
    }
    release(&store, &webhook_id, &owner).await;
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

/// The delivery of `task.approval_requested` for `approval` of `task` under `config`, or
/// `None` (webhooks off, no URL).
pub fn approval_job(
    task: &Task,
    approval: &crate::approval::Approval,
    config: &WebhookConfig,
    now: DateTime<Utc>,
) -> Option<WebhookJob> {
    if !config.enabled {
        return None;
    }
    let url = task
        .webhook_url
        .clone()
        .or_else(|| config.default_url.clone())?;
    Some(WebhookJob {
        webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        task_id: task.id,
        event: payload::APPROVAL_REQUESTED.to_owned(),
        url,
        body: payload::approval_requested(approval).to_string(),
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
async fn run_delivery(mut job: WebhookJob, delivery: &Delivery) {
    let Delivery {
        store,
        config,
        observer,
        http,
    } = delivery;
    loop {
        let wait = (job.next_attempt_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;

        let config = config();
        let wh = &config.webhook;
        if !wh.enabled {
            log::info!(task_id:% = job.task_id, webhook_id:% = job.webhook_id; "webhooks are disabled; the delivery is dropped");
            forget(store, &job).await;
            return;
        }
        let number = job.attempts.saturating_add(1);
        let at = Utc::now();
        let clock = tokio::time::Instant::now();
        let outcome = match attempt_settings(wh) {
            Ok(settings) => http.attempt(&job, &settings, at.timestamp()).await,
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
            forget(store, &job).await;
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
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::config::load::{from_file_doc, Environment};
    use crate::model::{TaskId, TaskStatus};
    use crate::store::conformance::fixtures::{at, task};
    use crate::store::memory::MemoryStore;
    use crate::system::ActorSystem;
    use crate::webhook::testing::Receiver;

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

    // ---- the actor: final records in, deliveries and outbox state out

    /// A WebhookActor on an actor system of its own, over a memory store.
    struct Rig {
        store: Arc<MemoryStore>,
        records: mpsc::UnboundedSender<Arc<Task>>,
        seen: Arc<Mutex<Vec<(bool, bool)>>>,
        handle: Option<WebhookHandle>,
        system: Option<ActorSystem>,
    }

    impl Rig {
        async fn start(webhook: serde_json::Value, store: Arc<MemoryStore>) -> Rig {
            Rig::start_with(webhook, store, None).await
        }

        async fn start_with(
            webhook: serde_json::Value,
            store: Arc<MemoryStore>,
            lookup: Option<Lookup>,
        ) -> Rig {
            let doc = json!({ "webhook": webhook });
            let (config, _) = from_file_doc(&doc, &Environment::default()).expect("config");
            let config = Arc::new(config);
            let system = ActorSystem::start("webhook-test", 1).expect("actor system");
            let (records, finished) = mpsc::unbounded_channel();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let told = seen.clone();
            let options = WebhookOptions {
                observer: Some(Arc::new(move |delivered, gave_up| {
                    told.lock().expect("seen").push((delivered, gave_up))
                })),
                claim_as: None,
                lookup,
                jobs: None,
            };
            let handle = WebhookActor::start(
                system.arbiter(),
                store.clone(),
                finished,
                Arc::new(move || config.clone()),
                options,
            )
            .await;
            Rig {
                store,
                records,
                seen,
                handle: Some(handle),
                system: Some(system),
            }
        }

        fn finish(&self, url: &str) -> Arc<Task> {
            let task = Arc::new(done(Some(url)));
            self.records.send(task.clone()).expect("the actor listens");
            task
        }

        fn seen(&self) -> Vec<(bool, bool)> {
            self.seen.lock().expect("seen").clone()
        }

        async fn outbox(&self) -> Vec<WebhookJob> {
            self.store.pending_webhook_jobs().await.expect("outbox")
        }

        /// Wait (1 s at most) for the outbox to be empty.
        async fn outbox_empties(&self, why: &str) {
            for _ in 0..100 {
                if self.outbox().await.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{why}: {:?}", self.outbox().await);
        }

        /// Wait (10 s at most) until the task's recorded attempts pass `done`.
        async fn attempts_until(
            &self,
            task_id: TaskId,
            done: impl Fn(&[WebhookAttempt]) -> bool,
        ) -> Vec<WebhookAttempt> {
            for _ in 0..1000 {
                let list = self
                    .store
                    .webhook_attempts(task_id)
                    .await
                    .expect("attempts");
                if done(&list) {
                    return list;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the attempts of {task_id} did not arrive");
        }

        async fn shutdown(&mut self) {
            if let Some(handle) = self.handle.take() {
                handle.shutdown().await;
            }
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            drop(self.handle.take());
            if let Some(system) = self.system.take() {
                system.stop();
            }
        }
    }

    fn delivering(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"enabled": true, "allowPrivateTargets": true, "backoffMs": 10});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[tokio::test]
    async fn a_final_record_is_stored_delivered_recorded_and_forgotten() {
        let receiver = Receiver::start().await;
        let rig = Rig::start(delivering(json!({})), Arc::default()).await;
        let task = rig.finish(&receiver.url());
        let hits = receiver.wait_for_hits(1).await;
        let list = rig.attempts_until(task.id, |l| !l.is_empty()).await;
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].attempt, list[0].status_code), (1, Some(200)));
        assert_eq!(hits[0].header("webhook-id"), list[0].webhook_id);
        let body: serde_json::Value = serde_json::from_str(&hits[0].body).expect("json");
        assert_eq!(body["event"], "task.completed");
        assert_eq!(body["data"]["task_id"], json!(task.id));
        rig.outbox_empties("a delivered webhook leaves the outbox")
            .await;
        assert_eq!(rig.seen(), vec![(true, false)]);
    }

    /// A failing receiver is tried again with the same webhook id, every attempt recorded and
    /// observed, until it answers 2xx or the retries are spent; either way the delivery then
    /// leaves the outbox.
    #[tokio::test]
    async fn failed_attempts_are_retried_until_success_or_the_last_retry() {
        type Case = (
            &'static [u16],
            u32,
            &'static [Option<u16>],
            &'static [(bool, bool)],
        );
        let cases: [Case; 2] = [
            (
                &[500, 503],
                2,
                &[Some(500), Some(503), Some(200)],
                &[(false, false), (false, false), (true, false)],
            ),
            (
                &[500, 500],
                1,
                &[Some(500), Some(500)],
                &[(false, false), (false, true)],
            ),
        ];
        for (script, retries, codes, seen) in cases {
            let receiver = Receiver::start().await;
            receiver.script(script);
            let rig = Rig::start(delivering(json!({"retries": retries})), Arc::default()).await;
            let task = rig.finish(&receiver.url());
            let list = rig
                .attempts_until(task.id, |l| l.len() == codes.len())
                .await;
            let got: Vec<_> = list.iter().map(|a| a.status_code).collect();
            assert_eq!(got, codes);
            let hits = receiver.wait_for_hits(codes.len()).await;
            let id = &list[0].webhook_id;
            assert!(list.iter().all(|a| &a.webhook_id == id));
            assert!(hits.iter().all(|h| h.header("webhook-id") == id));
            assert_eq!(rig.seen(), seen);
            rig.outbox_empties("a finished delivery leaves the outbox")
                .await;
        }
    }

    /// Deliveries are futures of their own: a receiver that never answers holds up none of the
    /// others, and the actor keeps taking records.
    #[tokio::test]
    async fn deliveries_run_side_by_side() {
        let receiver = Receiver::start().await;
        receiver.hang();
        let rig = Rig::start(delivering(json!({"timeout": 30000})), Arc::default()).await;
        for _ in 0..20 {
            rig.finish(&receiver.url());
        }
        receiver.wait_for_hits(20).await;
        assert_eq!(rig.outbox().await.len(), 20);
    }

    /// Shutdown stores the records still queued, stops the deliveries in flight (they stay in
    /// the outbox, their attempts not recorded) and is quick about it.
    #[tokio::test]
    async fn shutdown_stores_queued_records_and_stops_running_deliveries() {
        let receiver = Receiver::start().await;
        receiver.hang();
        let mut rig = Rig::start(delivering(json!({"timeout": 30000})), Arc::default()).await;
        let first = rig.finish(&receiver.url());
        receiver.wait_for_hits(1).await;
        let queued = [rig.finish(&receiver.url()), rig.finish(&receiver.url())];
        let stopping = std::time::Instant::now();
        rig.shutdown().await;
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "{:?}",
            stopping.elapsed()
        );
        let outbox = rig.outbox().await;
        let mut tasks: Vec<_> = outbox.iter().map(|j| j.task_id).collect();
        tasks.sort();
        let mut want = vec![first.id, queued[0].id, queued[1].id];
        want.sort();
        assert_eq!(tasks, want, "{outbox:?}");
        assert!(outbox.iter().all(|j| j.attempts == 0));
        assert!(rig
            .store
            .webhook_attempts(first.id)
            .await
            .expect("attempts")
            .is_empty());
    }

    /// What the outbox holds at start is made, continuing its attempt count.
    #[tokio::test]
    async fn the_outbox_is_resumed_at_start() {
        let receiver = Receiver::start().await;
        let store = Arc::new(MemoryStore::new());
        let config = config(true, None);
        let mut job = new_job(&done(Some(&receiver.url())), &config, Utc::now()).expect("job");
        job.attempts = 2;
        store.save_webhook_job(&job).await.expect("save");
        let rig = Rig::start(delivering(json!({"retries": 5})), store).await;
        let hits = receiver.wait_for_hits(1).await;
        assert_eq!(hits[0].header("webhook-id"), job.webhook_id);
        let list = rig.attempts_until(job.task_id, |l| !l.is_empty()).await;
        assert_eq!((list[0].attempt, list[0].status_code), (3, Some(200)));
    }

    /// SSRF at delivery: a name whose answer is a loopback address is refused, recorded as a
    /// failed attempt naming the rule, and the address is never dialled.
    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_and_never_dialled() {
        let receiver = Receiver::start().await;
        let local = receiver.addr;
        let lookup: Lookup = Arc::new(move |_host, _port| {
            Box::pin(async move { Ok::<Vec<SocketAddr>, std::io::Error>(vec![local]) })
        });
        let webhook = json!({"enabled": true, "retries": 0});
        let rig = Rig::start_with(webhook, Arc::default(), Some(lookup)).await;
        let task = rig.finish(&format!("http://hooks.test:{}/hook", local.port()));
        let list = rig.attempts_until(task.id, |l| !l.is_empty()).await;
        assert_eq!(list[0].status_code, None);
        let error = list[0].error.as_deref().unwrap_or_default();
        assert!(
            error.contains("loopback") && error.contains("allowPrivateTargets"),
            "{error}"
        );
        assert!(
            receiver.hits().is_empty(),
            "the blocked address was dialled"
        );
        assert_eq!(rig.seen(), [(false, true)]);
    }
}
