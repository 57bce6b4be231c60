//! The WorkerActor: one run of one task, from `pending` to its final record. It owns the run
//! (and so the CLI's child process, in its own process group): told [`Stop`], it has the run
//! end the group (SIGTERM, then SIGKILL after the grace); when the run is over — the group gone
//! and the final record written — it reports `Finished` to the supervisor and stops.
//!
//! Where it runs, by the supervisor's mode ([`RunMode`]): on local storage (memory, SQLite) the
//! worker lives on one of the worker arbiters and its run goes on there; on the shared queue
//! (Redis) the run goes on the runtime of the Redis connections ([`Cluster::io`]) and the
//! worker, which only holds it, lives on the supervisor's arbiter. Either way the report
//! leaves from the worker's thread, and when the session's accounting is still to be written
//! the SessionActor sends it after the write ([`Reporter::send`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message};
use chrono::Utc;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use super::supervisor::{Finished, SupervisorTx};
use super::Shared;
use crate::approval::desk::Desk;
use crate::approval::PermissionRequest;
use crate::claude::{process, transcript, CliEvent, RunnerSettings, StopReason};
use crate::cluster::{transcripts, Cluster};
use crate::config::Config;
use crate::events::{init_data, EventHub};
use crate::model::{Session, SessionId, SessionMode, Task, TaskId, TaskMode};
use crate::session::accounting::{apply_turn, cost_mode, run_cost, CostMode};
use crate::session::actor::AfterTurn;
use crate::session::SessionHandle;
use crate::store::redis::{Claimed, Leased, NextClaim, SessionTurn};
use crate::store::{Store, StoreError};

/// The runner settings a config gives. Read at each dispatch, so a reload applies to the next run.
pub fn runner_settings(config: &Config) -> RunnerSettings {
    let ms = Duration::from_millis;
    RunnerSettings {
        claude_path: PathBuf::from(config.claude_path.as_deref().unwrap_or("claude")),
        path_prefix: config.nvm_bin.as_deref().map(PathBuf::from),
        env: config.claude_env.clone(),
        kill_grace: ms(config.task_queue.kill_grace_ms),
        idle_timeout: (config.task_queue.idle_timeout > 0)
            .then(|| ms(config.task_queue.idle_timeout)),
        max_line_bytes: usize::try_from(config.limits.max_output_line_bytes).unwrap_or(usize::MAX),
        stderr_tail_bytes: usize::try_from(config.limits.stderr_tail_bytes).unwrap_or(usize::MAX),
        run_marker: None,
    }
}

/// How a run starts and writes its end, as the supervisor's mode has it (chosen once at
/// start-up; see `supervisor::mode`).
pub(crate) enum RunMode {
    /// On this instance's storage.
    Local,
    /// On a lease of the shared queue (Redis storage).
    Shared(Box<SharedRun>),
}

/// A run of the shared queue (Redis storage): the instances' cluster, the task as this
/// instance's claim read it, and the queue's figures (whether the freed slot may claim the
/// next task).
pub(crate) struct SharedRun {
    /// The run goes on [`Cluster::io`], beside the Redis connections' driver tasks.
    pub cluster: Arc<Cluster>,
    pub leased: Leased,
    pub queue: Arc<Shared>,
}

/// What a worker runs.
pub(crate) struct Run {
    pub id: TaskId,
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Where to report `Finished`.
    pub tx: SupervisorTx,
    pub events: Arc<EventHub>,
    pub mode: RunMode,
    /// The writer of session records: a turn's accounting when it did not go with the final
    /// record (always, on local storage).
    pub sessions: SessionHandle,
}

/// One run; see the module docs.
pub struct WorkerActor {
    /// What the run watches to end early.
    stop: watch::Sender<Option<StopReason>>,
}

/// End the run early (a cancel, a timeout elsewhere, a lost lease, the shutdown grace): its
/// process group is killed; `Finished` follows once it is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop(pub StopReason);

impl WorkerActor {
    /// Start a worker for `run` on `arbiter`.
    pub(crate) fn start(arbiter: &actix::prelude::ArbiterHandle, run: Run) -> Addr<WorkerActor> {
        WorkerActor::start_in_arbiter(arbiter, move |ctx| {
            let (stop, stop_rx) = watch::channel(None);
            let report = Reporter {
                id: run.id,
                tx: run.tx.clone(),
                sessions: run.sessions.clone(),
            };
            // `None`: the run panicked.
            let ran: BoxFuture<'static, Option<Ran>> = match &run.mode {
                // On the Redis connections' runtime (see `Cluster::io`).
                RunMode::Shared(s) => {
                    let io = s.cluster.io();
                    Box::pin(io.spawn(run_task(run, stop_rx)).map(Result::ok))
                }
                // Memory or SQLite storage ties a run to no runtime (SQLite's writer is a
                // thread of its own): the run goes on here, on this worker's arbiter, one
                // thread hand-off fewer at its start and at its end.
                RunMode::Local => Box::pin(
                    std::panic::AssertUnwindSafe(run_task(run, stop_rx))
                        .catch_unwind()
                        .map(Result::ok),
                ),
            };
            // Awaited off the mailbox, so `Stop` is handled while the run goes on; the report
            // leaves from this actor's thread.
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(ran).map(move |ran, _, ctx| {
                    report.send(ran);
                    ctx.stop();
                }),
            );
            WorkerActor { stop }
        })
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;
}

impl Handler<Stop> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Stop, _: &mut Context<Self>) {
        let _ = self.stop.send(Some(msg.0));
    }
}

/// What a finished run leaves to report: the supervisor's [`Finished`], and the session's
/// accounting if it did not go with the final record.
struct Ran {
    report: Finished,
    turn: Option<TurnLeft>,
}

/// Where a worker's report goes.
struct Reporter {
    id: TaskId,
    tx: SupervisorTx,
    sessions: SessionHandle,
}

impl Reporter {
    /// Report the run's end: only after its process group is gone (the run is over), so the
    /// slot is never freed while a process of the run lives; and only after the session shows
    /// the turn, so whoever the report wakes (a sync caller) reads it there. A run that
    /// panicked (`None`) is reported too, without a record, so its slot is freed.
    fn send(self, ran: Option<Ran>) {
        let Some(Ran { report, turn }) = ran else {
            log::error!(task_id:% = self.id; "a run ended without its report (it panicked)");
            let _ = self.tx.send(Finished {
                id: self.id,
                task: None,
                wrote: false,
                handover: None,
            });
            return;
        };
        let Some(turn) = turn else {
            let _ = self.tx.send(report);
            return;
        };
        // The SessionActor sends the report once the turn is written, from its own thread,
        // which the supervisor shares: one thread hand-off fewer than waiting for its answer.
        let sid = turn.session;
        let tx = self.tx;
        let then = AfterTurn::new(move |written| {
            if let Err(e) = written {
                log::error!(session_id:% = sid, error:% = e; "cannot record the turn on its session");
            }
            let _ = tx.send(report);
        });
        self.sessions
            .apply_turn_then(sid, turn.task, turn.mode, turn.reported, then);
    }
}

/// Run one task: start it, run the CLI, write its final record; what is left to report.
async fn run_task(run: Run, stop: watch::Receiver<Option<StopReason>>) -> Ran {
    let Run {
        id,
        store,
        config,
        events,
        mode,
        ..
    } = run;
    let (ended, handover, turn) = execute(id, &store, &config, stop, &events, mode).await;
    let (task, wrote) = match ended {
        Ended::Wrote(t) => (Some(Box::new(t)), true),
        Ended::Read(t) => (t.map(Box::new), false),
    };
    Ran {
        report: Finished {
            id,
            task,
            wrote,
            handover,
        },
        turn,
    }
}

/// A turn's accounting still to be written on its session, by the SessionActor.
struct TurnLeft {
    session: SessionId,
    /// The run's final record as stored.
    task: Task,
    mode: CostMode,
    reported: f64,
}

/// How a run ended, as far as the final record goes.
enum Ended {
    /// This worker wrote the final record.
    Wrote(Task),
    /// Someone else did (a cancel, a reaper), or the task never started; the record as read
    /// (`None`: unreadable).
    Read(Option<Task>),
}

/// Runs the task; on the shared queue also returns what its final write did with the lease
/// (see [`Finished`]), and the session's accounting if it did not go with the final record.
async fn execute(
    id: TaskId,
    store: &Arc<dyn Store>,
    config: &Config,
    stop: watch::Receiver<Option<StopReason>>,
    events: &EventHub,
    mode: RunMode,
) -> (Ended, Option<Claimed>, Option<TurnLeft>) {
    let read = || async { Ended::Read(store.get_task(id).await.ok().flatten()) };
    let Start {
        started,
        portable,
        session_before,
    } = mode.start(id, store, config, &stop).await;
    let Some(started) = started else {
        return (Ended::Read(None), None, None);
    };
    let Some((task, ending)) = started else {
        // Cancelled before it started: it never runs.
        return (read().await, None, None);
    };
    if stop.borrow().is_some() {
        // Cancelled between dispatch and start; the canceller wrote the final record.
        return (read().await, None, None);
    }
    log::info!(task_id:% = id; "run started");
    log::debug!(task_id:% = id, prompt:% = task.spec.prompt; "run prompt");
    let mut settings = runner_settings(config);
    settings.run_marker = Some(id.to_string());
    let mut spec = task.spec.clone();
    // Portable sessions: the transcript was restored before the mode is resolved (which looks
    // for it on disk), and is stored after the run whatever its outcome.
    spec.session = resolve_session_mode(&spec.session, &spec.project_path, config);
    let mut relay = EventRelay::new(&task, events);
    let mut outcome = match portable.failure() {
        Some(failed) => failed,
        None if spec.approvals => {
            // The desk serves the run's permission requests while it runs, and expires what
            // still waits once the run (and its process group) is over.
            let (requests, requests_rx) = mpsc::unbounded_channel();
            let (answers, answers_rx) = mpsc::unbounded_channel();
            relay.permissions = Some(requests);
            let desk = Desk {
                task: &task,
                store,
                hub: events.approvals(),
                events,
                config,
            };
            let run = async {
                let outcome = process::run_with_answers(
                    &spec,
                    &settings,
                    stop.clone(),
                    &mut |e| relay.relay(e),
                    Some(answers_rx),
                )
                .await;
                relay.permissions = None;
                outcome
            };
            tokio::join!(run, desk.serve(requests_rx, answers)).0
        }
        None => process::run(&spec, &settings, stop.clone(), &mut |e| relay.relay(e)).await,
    };
    log::info!(
        task_id:% = id,
        status = outcome.status.as_str(),
        duration_ms = outcome.duration_ms,
        cost_usd = outcome.cost_usd;
        "run ended"
    );
    let mut task = task;
    let session = match session_before {
        Some(s) => s,
        None => read_session(store, task.session_id).await,
    };
    // A session turn's cost is what this run added (a cumulative CLI reports the session's
    // total), computed against the session's baseline before the lane lets the next turn in.
    let reported = outcome
        .report
        .as_ref()
        .map(|r| r.reported_cost_usd)
        .unwrap_or(0.0);
    let mode = cost_mode(
        outcome
            .report
            .as_ref()
            .and_then(|r| r.cli_version.as_deref()),
    );
    if let Some(s) = &session {
        outcome.cost_usd = run_cost(mode, reported, s.last_reported_cost_usd);
    }
    task.finish(&outcome, Utc::now());
    let with_turn = |mut s: Session, t: &Task| {
        apply_turn(
            &mut s,
            t,
            mode,
            reported,
            t.cost_usd.unwrap_or(0.0),
            Utc::now(),
        );
        s
    };
    let sid = task.session_id;
    let Written {
        wrote,
        accounted,
        handover,
    } = ending
        .finish(
            store,
            config,
            &task,
            session.as_ref(),
            with_turn,
            portable,
            &stop,
        )
        .await;
    let ended = match wrote {
        Some(true) => Ended::Wrote(task),
        _ => read().await,
    };
    if accounted {
        return (ended, handover, None);
    }
    // The session's accounting did not go with the final record: the SessionActor writes it,
    // over the record as it is then (on the shared queue it changed during the run, or the
    // task was ended by someone else meanwhile), never interleaved with another write of it
    // from this instance (a `PATCH status`).
    let final_task = match &ended {
        Ended::Wrote(t) => Some(t),
        Ended::Read(t) => t.as_ref(),
    };
    let turn = match (sid, &session, final_task) {
        (Some(session), Some(_), Some(t)) => Some(TurnLeft {
            session,
            task: t.clone(),
            mode,
            reported,
        }),
        _ => None,
    };
    (ended, handover, turn)
}

async fn read_session(store: &Arc<dyn Store>, sid: Option<SessionId>) -> Option<Session> {
    match sid {
        Some(sid) => store.get_session(sid).await.ok().flatten(),
        None => None,
    }
}

/// What a run's start gave.
struct Start<'a> {
    /// The task as started and how its end is written. `None`: storage gave up; `Some(None)`:
    /// the task was no longer pending (cancelled before it started).
    started: Option<Option<(Task, Ending<'a>)>>,
    /// The session's transcript: restored before the turn (shared queue), or not travelling.
    portable: transcripts::TurnTranscript<'a>,
    /// Shared queue: the session as read before the run, because its accounting is written
    /// over that version only (see `finish_leased`). `None` elsewhere: it is read after the run.
    session_before: Option<Option<Session>>,
}

/// What a run's final record is written over, as its start left it.
enum Ending<'a> {
    /// The task's live record in this instance's storage.
    Local,
    /// The revision the start wrote, under this instance's lease.
    Leased {
        run: &'a SharedRun,
        started: Box<Leased>,
    },
}

/// What the final write did.
struct Written {
    /// `Some(true)`: this run wrote the final record; `Some(false)`: someone else had (a
    /// cancel); `None`: storage gave up.
    wrote: Option<bool>,
    /// The session's accounting went with it.
    accounted: bool,
    /// Shared queue: the lease was dropped and these tasks claimed for the freed slot.
    handover: Option<Claimed>,
}

impl RunMode {
    /// Start the task in storage, with what a turn needs before its run.
    async fn start<'a>(
        &'a self,
        id: TaskId,
        store: &Arc<dyn Store>,
        config: &Config,
        stop: &watch::Receiver<Option<StopReason>>,
    ) -> Start<'a> {
        match self {
            // Every wait on Redis holds the slot, so the start goes over the record the claim
            // read, and the session's transcript is restored and its record read at the same
            // time: one round trip for the three. (For a task cancelled meanwhile, the restore
            // only refreshes a local copy.)
            RunMode::Shared(s) => {
                let spec = &s.leased.task.spec;
                let (started, portable, session) = tokio::join!(
                    retry("start task", stop, || {
                        s.cluster.store().start_leased(&s.leased, Utc::now())
                    }),
                    transcripts::before_turn(Some(&s.cluster), spec, config, stop),
                    read_session(store, s.leased.task.session_id),
                );
                let started = started.map(|o| {
                    o.map(|l| {
                        let task = l.task.clone();
                        let started = Box::new(l);
                        (task, Ending::Leased { run: s, started })
                    })
                });
                Start {
                    started,
                    portable,
                    session_before: Some(session),
                }
            }
            // Transcripts travel only between the instances of a shared queue.
            RunMode::Local => {
                let started = retry("start task", stop, || store.start_task(id, Utc::now()))
                    .await
                    .map(|o| o.map(|t| (t, Ending::Local)));
                Start {
                    started,
                    portable: transcripts::TurnTranscript::off(),
                    session_before: None,
                }
            }
        }
    }
}

impl Ending<'_> {
    /// Write the run's final record (`task`), its transcript and, where it can go with it,
    /// the session's accounting (`session` as read, `with_turn` applying the turn). Whoever
    /// wrote a final status first (a cancel) wins.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        store: &Arc<dyn Store>,
        config: &Config,
        task: &Task,
        session: Option<&Session>,
        with_turn: impl Fn(Session, &Task) -> Session,
        portable: transcripts::TurnTranscript<'_>,
        stop: &watch::Receiver<Option<StopReason>>,
    ) -> Written {
        // The final write is retried even while the run is being stopped: it is the record.
        let (never_stop_tx, never_stop) = watch::channel(None);
        let mut written = Written {
            wrote: None,
            accounted: false,
            handover: None,
        };
        match self {
            Ending::Leased { run, started } => {
                // One script: the transcript, the final record over the start's revision, the
                // session's accounting, the lease dropped, and the next task for this slot.
                let transcript = portable.to_store().await;
                let updated = session.cloned().map(|s| with_turn(s, task));
                let turn = session
                    .zip(updated.as_ref())
                    .map(|(read, updated)| SessionTurn { read, updated });
                let next = run.next_claim(config, stop);
                let end = retry("finish task", &never_stop, || {
                    run.cluster.store().finish_leased(
                        run.cluster.instance().as_str(),
                        started,
                        task,
                        turn,
                        transcript.as_ref(),
                        next,
                    )
                })
                .await;
                match end {
                    Some(Some(end)) => {
                        if let Some(answer) = &end.transcript {
                            portable.stored(answer);
                        }
                        written.accounted = end.accounted;
                        written.handover = Some(end.claimed);
                        written.wrote = Some(true);
                    }
                    // Someone else ended the task since its start, and nothing was written:
                    // the usual way.
                    Some(None) => {
                        portable.after_turn(stop).await;
                        written.wrote =
                            retry("finish task", &never_stop, || write_final(store, task)).await;
                    }
                    None => {}
                }
            }
            Ending::Local => {
                portable.after_turn(stop).await;
                written.wrote =
                    retry("finish task", &never_stop, || write_final(store, task)).await;
            }
        }
        drop(never_stop_tx);
        written
    }
}

impl SharedRun {
    /// What the final write claims for the slot it frees: the next task, unless this instance
    /// is shutting down, the run was stopped for a shutdown, or a lowered `concurrency` wants
    /// the slot gone. The supervisor checks again on arrival (and releases a task it cannot
    /// run), so this only saves claims that would be released.
    fn next_claim(&self, config: &Config, stop: &watch::Receiver<Option<StopReason>>) -> NextClaim {
        let q = &self.queue;
        let keep_slot = q.accepting.load(Ordering::SeqCst)
            && q.running.load(Ordering::SeqCst) <= q.concurrency.load(Ordering::SeqCst)
            && *stop.borrow() != Some(StopReason::Shutdown);
        NextClaim {
            lease_ms: config.task_queue.lease_ms,
            cap: config.task_queue.global_concurrency.unwrap_or(0),
            want: usize::from(keep_slot),
        }
    }
}

/// The first turn of a session creates it (`--session-id`); if its transcript already exists
/// (an earlier turn ran, even one that failed), the CLI would refuse that id, so resume.
fn resolve_session_mode(mode: &SessionMode, cwd: &std::path::Path, config: &Config) -> SessionMode {
    match mode {
        SessionMode::Create { id } => {
            let exists = transcript::config_dir(&config.claude_env)
                .map(|dir| transcript::path(&dir, cwd, &id.to_string()).exists())
                .unwrap_or(false);
            if exists {
                SessionMode::Resume { id: *id }
            } else {
                mode.clone()
            }
        }
        other => other.clone(),
    }
}

/// Write a run's final record. A sync run's answer carries its result, so its record need not
/// wait for the disk's fsync (SQLite: `LAZY_SYNC_WITHIN`, module docs).
async fn write_final(store: &Arc<dyn Store>, task: &Task) -> Result<bool, StoreError> {
    if task.mode == TaskMode::Sync {
        store.finish_task_lazily(task).await
    } else {
        store.finish_task(task).await
    }
}

/// Retry a storage call with backoff while the storage is unavailable (up to about five
/// minutes), so a passing outage loses nothing. Gives up early when the run is being stopped.
async fn retry<T, F, Fut>(
    what: &str,
    stop: &watch::Receiver<Option<StopReason>>,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        match call().await {
            Ok(v) => return Some(v),
            Err(e) => {
                log::error!(error:% = e; "storage failed to {what}; retrying");
                if tokio::time::Instant::now() + delay > deadline || stop.borrow().is_some() {
                    log::error!("giving up: storage failed to {what}");
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Turns the CLI's events into the task's live events.
struct EventRelay<'a> {
    task: &'a Task,
    events: &'a EventHub,
    /// Text arrives as deltas (partial messages); whole text blocks are relayed only from a
    /// CLI that sent no deltas, so no text is shown twice.
    saw_delta: bool,
    /// With approvals: where permission requests go (the run's desk).
    permissions: Option<mpsc::UnboundedSender<PermissionRequest>>,
}

impl<'a> EventRelay<'a> {
    fn new(task: &'a Task, events: &'a EventHub) -> Self {
        EventRelay {
            task,
            events,
            saw_delta: false,
            permissions: None,
        }
    }

    fn relay(&mut self, event: CliEvent) {
        let id = self.task.id;
        match event {
            CliEvent::Init { model, cli_version, .. } => self.events.publish(
                id,
                "init",
                init_data(self.task, model.as_deref(), cli_version.as_deref()),
            ),
            CliEvent::TextDelta { text } => {
                self.saw_delta = true;
                self.events.publish(id, "text", serde_json::json!({ "text": text }));
            }
            CliEvent::AssistantText { text } if !self.saw_delta => {
                self.events.publish(id, "text", serde_json::json!({ "text": text }));
            }
            CliEvent::ToolUse { id: tool_id, name, input } => self.events.publish(
                id,
                "tool_use",
                serde_json::json!({"id": tool_id, "name": name, "input": input}),
            ),
            CliEvent::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => self.events.publish(
                id,
                "tool_result",
                serde_json::json!({"tool_use_id": tool_use_id, "content": content, "is_error": is_error}),
            ),
            CliEvent::PermissionRequest(request) => match &self.permissions {
                Some(tx) => {
                    let _ = tx.send(request);
                }
                None => log::warn!(task_id:% = id; "a permission request from a run without approvals"),
            },
            // The final event is the task's answer, published when its record is final.
            CliEvent::AssistantText { .. } | CliEvent::Result(_) => {}
        }
    }
}
