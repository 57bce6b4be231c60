//! Starting a run as a turn of a session. Every run that talks to the model goes through here:
//! `POST /api/claude` (a new session, or a turn of `session_id`), `POST
//! /api/sessions/:id/continue` and `POST /api/sessions/:id/fork`.
//!
//! A turn is pinned to its session: the session's project directory and model are used,
//! whatever the request says. The first turn creates the CLI session (`--session-id`), later
//! ones resume it (`--resume`), a fork copies it under a new id.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use actors::error::ErrorCode;
use actors::model::{Session, SessionId, SessionMode, SessionStatus, Task, TaskMode, TaskStatus};

use super::auth::Caller;
use super::claude::{async_answer, build_task, success_body, wait_submitted, CancelOnDrop};
use super::error::ApiError;
use super::idempotency::{self, Claim, IdempotencyKey, Kind};
use super::run_request::{resolve_project_path, ValidatedRun};
use super::sessions::visible_session;
use crate::state::AppState;

/// Which session a run belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A new session is created for the run.
    NewSession,
    /// A turn of an existing session.
    Continue(SessionId),
    /// A new session forked from an existing one.
    Fork(SessionId),
}

impl Target {
    /// A turn of `session` when the request names one, else the first turn of a new session.
    pub fn of(session: Option<SessionId>) -> Target {
        match session {
            Some(sid) => Target::Continue(sid),
            None => Target::NewSession,
        }
    }
}

/// What the uncancellable start of a run produced.
pub enum Admitted {
    /// A retry of an earlier request: its answer.
    Replay(idempotency::Replay),
    /// The run is stored and queued.
    Queued(Box<Queued>),
}

/// A run stored and queued by [`admit`].
pub struct Queued {
    pub submitted: actors::queue::Submitted,
    /// Cancels the run if the client goes away: armed for sync runs and streams (with
    /// `cancelOnDisconnect`), never for async ones.
    pub guard: CancelOnDrop,
    pub session_id: SessionId,
    pub forked_from: Option<SessionId>,
}

/// A turn ready to submit.
pub struct Prepared {
    pub task: Task,
    pub session_id: SessionId,
    /// Refuse instead of queueing when the session is busy (sync turns of existing sessions).
    pub exclusive: bool,
    pub forked_from: Option<SessionId>,
}

/// The one admission path of every run route: claim the request's `Idempotency-Key`, check
/// the budgets, create or check the session and submit the task — together on a task of their
/// own, so a client that goes away in between (the server drops the handler) cannot leave a
/// claim without its task, a task whose key was given back, or half of it done. What follows
/// (waiting, streaming) may be dropped: the guard then cancels the run.
///
/// `kind` is how a retry is answered; `finished_answer` builds that answer for the kinds that
/// answer with finished tasks in a shape of their own ([`Kind::Chat`]).
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    idem: &IdempotencyKey,
    run: ValidatedRun,
    target: Target,
    kind: Kind,
    finished_answer: fn(&[Task]) -> HttpResponse,
) -> Result<Admitted, ApiError> {
    let (state, caller, idem) = (state.clone(), caller.clone(), idem.clone());
    let admitted = tokio::spawn(async move {
        let what = format!("{:?}\u{1f}{}", run.session_id, run.spec.prompt);
        let ids = [run.task_id];
        let claim = idempotency::claim(&state, &caller, &idem, kind, &ids, &what, finished_answer);
        let key = match claim.await? {
            Claim::Replay(replay) => return Ok(Admitted::Replay(replay)),
            Claim::Proceed(key) => key,
        };
        let is_async = run.is_async;
        let waits = !is_async && !run.stream;
        let submit = async {
            let p = prepare(&state, &caller, run, target).await?;
            // An async turn of a busy session waits its turn; a sync one is refused.
            let exclusive = p.exclusive && !is_async;
            let submitted = state
                .queue
                .submit(p.task, waits, exclusive)
                .await
                .map_err(|e| ApiError::from(e).with_session(p.session_id))?;
            Ok((p.session_id, p.forked_from, submitted))
        };
        let (session_id, forked_from, submitted) = key.settle(submit.await).await?;
        let armed = !is_async && state.config().cancel_on_disconnect;
        let guard = CancelOnDrop::new(state.queue.clone(), submitted.task.id, armed);
        Ok(Admitted::Queued(Box::new(Queued {
            submitted,
            guard,
            session_id,
            forked_from,
        })))
    })
    .await
    .map_err(|_| ApiError::new(ErrorCode::InternalError, "The run could not be started."))?;
    // Back in the request's own task: its access line names the run.
    if let Ok(Admitted::Queued(q)) = &admitted {
        crate::logging::format::note_task(q.submitted.task.id);
    }
    admitted
}

/// Start a turn: 202 for async runs; for sync runs wait and answer with its result; with
/// `stream`, answer with the run's events.
pub async fn start(
    state: &AppState,
    caller: &Caller,
    run: ValidatedRun,
    target: Target,
    idem: &IdempotencyKey,
) -> Result<HttpResponse, ApiError> {
    let is_async = run.is_async;
    let stream = run.stream;
    // A stream's retry replays the answer, not the stream (the task id leads to its events).
    let kind = if is_async { Kind::Async } else { Kind::Sync };
    let unused = idempotency::no_finished_answer;
    let queued = match admit(state, caller, idem, run, target, kind, unused).await? {
        Admitted::Replay(replay) => return Ok(replay.into_response()),
        Admitted::Queued(q) => *q,
    };
    let Queued {
        submitted,
        guard,
        session_id,
        forked_from,
    } = queued;
    let forked = |mut body: serde_json::Value| {
        if let (Some(obj), Some(from)) = (body.as_object_mut(), forked_from) {
            obj.insert("forked_from".into(), json!(from));
        }
        body
    };
    if is_async {
        return Ok(
            HttpResponse::build(StatusCode::ACCEPTED).json(forked(async_answer(&submitted.task)))
        );
    }
    if stream {
        // The answer is the run's event stream (with Redis, wherever the run is claimed).
        let source = state
            .queue
            .events()
            .source(&submitted.task, state.queue.store());
        return Ok(super::events::stream_source(source, 0, Some(guard)));
    }
    let finished = wait_submitted(&state.queue, submitted, guard)
        .await
        .map_err(|e| e.with_session(session_id))?;
    if finished.status != TaskStatus::Completed {
        return Err(ApiError::from_task(&finished));
    }
    Ok(HttpResponse::build(StatusCode::OK).json(forked(success_body(&finished))))
}

/// Check the budgets, create or check the session, and build the turn's task (not yet
/// submitted). Callers that answer in their own shape (the OpenAI API) submit it themselves.
pub async fn prepare(
    state: &AppState,
    caller: &Caller,
    mut run: ValidatedRun,
    target: Target,
) -> Result<Prepared, ApiError> {
    // A key over its daily budget runs nothing more today.
    state
        .stats
        .check_budget(caller.key_name.as_deref(), &state.config())
        .await?;
    let now = Utc::now();
    let (session, mode, exclusive, forked_from) = match target {
        Target::NewSession => {
            let session = new_session(caller, &run, Uuid::new_v4(), json!({}), now);
            let mode = SessionMode::Create { id: session.id };
            // Lazily: the turn's task insert, next and durable, makes both durable before
            // any answer names the session (one fsync instead of two).
            state.sessions.create(session.clone(), true).await?;
            (session, mode, false, None)
        }
        Target::Continue(sid) => {
            let session = visible_session(state, caller, sid).await?;
            if session.status != SessionStatus::Active {
                return Err(ApiError::new(
                    ErrorCode::SessionClosed,
                    format!(
                        "The session is {}; it takes no more turns.",
                        status_name(session.status)
                    ),
                )
                .with_session(session.id));
            }
            pin_to_session(state, &mut run, &session)?;
            apply_session_budget(&mut run, &session)?;
            let mode = if session.messages_count == 0 {
                SessionMode::Create { id: session.id }
            } else {
                SessionMode::Resume { id: session.id }
            };
            (session, mode, true, None)
        }
        Target::Fork(parent_id) => {
            let parent = visible_session(state, caller, parent_id).await?;
            if parent.messages_count == 0 {
                // The CLI would fail with "No conversation found": say so before running.
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    "The session has no conversation to fork yet: send it a turn first.",
                )
                .with_session(parent.id));
            }
            pin_to_session(state, &mut run, &parent)?;
            let mut session = new_session(
                caller,
                &run,
                Uuid::new_v4(),
                json!({"forked_from": parent.id}),
                now,
            );
            // A cumulative-cost CLI starts the fork from the parent's total.
            session.last_reported_cost_usd = parent.last_reported_cost_usd;
            // Durable with the turn's task insert, as above.
            state.sessions.create(session.clone(), true).await?;
            let mode = SessionMode::Fork {
                from: parent.id,
                id: session.id,
            };
            (session, mode, false, Some(parent.id))
        }
    };
    let mode_of_run = if run.is_async {
        TaskMode::Async
    } else {
        TaskMode::Sync
    };
    let mut task = build_task(run, mode_of_run, caller);
    task.spec.session = mode;
    task.session_id = Some(session.id);
    Ok(Prepared {
        task,
        session_id: session.id,
        exclusive,
        forked_from,
    })
}

fn new_session(
    caller: &Caller,
    run: &ValidatedRun,
    id: Uuid,
    metadata: serde_json::Value,
    now: chrono::DateTime<Utc>,
) -> Session {
    Session {
        id,
        created_at: now,
        updated_at: now,
        status: SessionStatus::Active,
        model: run.spec.model.clone(),
        project_path: run.spec.project_path.clone(),
        messages_count: 0,
        total_cost_usd: 0.0,
        last_reported_cost_usd: 0.0,
        last_task_id: None,
        owner: caller.owner(),
        metadata,
    }
}

/// A turn runs in its session's directory (checked again against today's allowed roots) with
/// its session's model.
fn pin_to_session(
    state: &AppState,
    run: &mut ValidatedRun,
    session: &Session,
) -> Result<(), ApiError> {
    let config = state.config();
    let dir = session.project_path.to_string_lossy();
    run.spec.project_path = resolve_project_path(Some(&dir), &config)?;
    if session.model.is_some() {
        run.spec.model = session.model.clone();
    }
    Ok(())
}

/// A turn's `max_budget_usd` is a budget for the whole session: refused before the run once the
/// session has spent it, and otherwise what is left of it is the run's cap.
fn apply_session_budget(run: &mut ValidatedRun, session: &Session) -> Result<(), ApiError> {
    let Some(budget) = run.requested_budget else {
        return Ok(());
    };
    let left = budget - session.total_cost_usd;
    if left <= 0.0 {
        return Err(ApiError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "The session has spent ${:.4} of its ${budget:.4} budget (max_budget_usd).",
                session.total_cost_usd
            ),
        )
        .with_details(json!({"spent_usd": session.total_cost_usd, "max_budget_usd": budget}))
        .with_session(session.id));
    }
    run.spec.max_budget_usd = Some(left);
    Ok(())
}

pub fn status_name(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Active => "active",
        SessionStatus::Archived => "archived",
        SessionStatus::Closed => "closed",
    }
}
