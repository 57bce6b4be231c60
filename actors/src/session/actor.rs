//! The SessionActor: the single writer of session records on this instance.
//!
//! A session record is written whole (read, change, write back), and storage is async: two
//! writers that interleave — a `PATCH status` while a turn's accounting is written — would
//! each write back what it read, and one change would be lost. So every write of a session
//! record goes through this actor, as a typed message: [`Create`], [`SetStatus`], [`Delete`],
//! [`ApplyTurn`]. The writes over an existing record ([`SetStatus`], [`ApplyTurn`],
//! [`Delete`]) are handled atomically, in order ([`AtomicResponse`]: the actor's mailbox waits
//! until the write is done), so two of them never interleave. [`Create`] writes a record nobody else knows of yet (a
//! new id, answered only once stored), so it does not hold up the mailbox.
//!
//! Storage:
//! * memory and SQLite: the actor writes everything, the turn accounting after each run too
//!   (the queue's workers send [`ApplyTurn`]).
//! * Redis: a turn's accounting normally goes with the run's final record, in the atomic
//!   FINISH_RUN script (`store::redis`), which writes it over the version the run read and is
//!   safe across instances; the actor writes the rest (and the accounting when the script
//!   could not take it). Across instances, a `PATCH status` racing a turn's accounting is
//!   guarded only on the accounting's side: the script does not write over a session changed
//!   since it was read, and the worker then applies the turn again here, over the fresh
//!   record; two `PATCH status` on two instances are last-writer-wins, as before.

use std::sync::Arc;

use actix::fut::wrap_future;
use actix::prelude::*;
use chrono::Utc;

use super::accounting::{apply_turn, CostMode};
use crate::model::{Session, SessionId, SessionStatus, Task};
use crate::store::{Store, StoreError, StoreResult};

/// See the module docs.
pub struct SessionActor {
    store: Arc<dyn Store>,
}

impl Actor for SessionActor {
    type Context = Context<Self>;
}

/// Store a new session. `lazily`: durable with the next durable write (a turn's task insert
/// follows at once), see [`Store::insert_session_lazily`].
#[derive(Message)]
#[rtype(result = "StoreResult<()>")]
pub struct Create {
    pub session: Session,
    pub lazily: bool,
}

/// Change a session's status. Answers the session as written (`None`: there is none).
#[derive(Message)]
#[rtype(result = "StoreResult<Option<Session>>")]
pub struct SetStatus {
    pub id: SessionId,
    pub status: SessionStatus,
}

/// Delete a session. Answers whether there was one.
#[derive(Message)]
#[rtype(result = "StoreResult<bool>")]
pub struct Delete {
    pub id: SessionId,
}

/// Record a finished turn on its session ([`apply_turn`]): its cost (`task.cost_usd`, what
/// this run added), the completed-turn count, the last task and the cost baseline (`reported`,
/// under `mode`). Written lazily, like the final record of a sync run. Answers the session as
/// written (`None`: it was deleted meanwhile), and hands the same to `then`.
#[derive(Message)]
#[rtype(result = "StoreResult<Option<Session>>")]
pub struct ApplyTurn {
    pub id: SessionId,
    pub task: Box<Task>,
    pub mode: CostMode,
    pub reported: f64,
    pub then: AfterTurn,
}

/// What follows a turn's accounting, run once it is written, here on the actor's thread: a
/// queue worker's report to the supervisor, which lives on this same thread — so the report
/// costs no thread hand-off, and nobody hears the run is over before its session shows it.
/// Run exactly once: with the write's result, or with an error if the message is dropped
/// unhandled (the actor stopped), so a report is never lost.
pub struct AfterTurn(Option<AfterTurnFn>);

type AfterTurnFn = Box<dyn FnOnce(&StoreResult<Option<Session>>) + Send>;

impl AfterTurn {
    /// Nothing follows (the caller awaits the answer instead).
    pub fn nothing() -> AfterTurn {
        AfterTurn(None)
    }

    pub fn new(then: impl FnOnce(&StoreResult<Option<Session>>) + Send + 'static) -> AfterTurn {
        AfterTurn(Some(Box::new(then)))
    }

    fn run(mut self, result: &StoreResult<Option<Session>>) {
        if let Some(then) = self.0.take() {
            then(result);
        }
    }
}

impl Drop for AfterTurn {
    fn drop(&mut self) {
        if let Some(then) = self.0.take() {
            then(&Err(gone(MailboxError::Closed)));
        }
    }
}

type Atomic<T> = AtomicResponse<SessionActor, StoreResult<T>>;

/// A read-modify-write of a session, run while the mailbox waits.
fn atomic<T: 'static>(
    fut: impl std::future::Future<Output = StoreResult<T>> + 'static,
) -> Atomic<T> {
    AtomicResponse::new(Box::pin(wrap_future::<_, SessionActor>(fut)))
}

impl Handler<Create> for SessionActor {
    type Result = ResponseFuture<StoreResult<()>>;

    fn handle(&mut self, msg: Create, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            if msg.lazily {
                store.insert_session_lazily(&msg.session).await
            } else {
                store.insert_session(&msg.session).await
            }
        })
    }
}

/// How a change is written back: durably, or lazily (with the next durable write).
#[derive(Clone, Copy)]
enum Write {
    Durable,
    Lazy,
}

impl SessionActor {
    /// Read session `id`, `change` it and write it back (run it while the mailbox waits:
    /// [`atomic`]). Answers the session as written (`None`: there is none).
    fn modify(
        &self,
        id: SessionId,
        write: Write,
        change: impl FnOnce(&mut Session) + Send + 'static,
    ) -> impl std::future::Future<Output = StoreResult<Option<Session>>> + 'static {
        let store = self.store.clone();
        let lazily = matches!(write, Write::Lazy);
        async move { store.modify_session(id, lazily, Box::new(change)).await }
    }
}

impl Handler<SetStatus> for SessionActor {
    type Result = Atomic<Option<Session>>;

    fn handle(&mut self, msg: SetStatus, _: &mut Context<Self>) -> Self::Result {
        atomic(self.modify(msg.id, Write::Durable, move |session| {
            session.status = msg.status;
            session.updated_at = Utc::now();
        }))
    }
}

impl Handler<Delete> for SessionActor {
    type Result = Atomic<bool>;

    fn handle(&mut self, msg: Delete, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        atomic(async move { store.delete_session(msg.id).await })
    }
}

impl Handler<ApplyTurn> for SessionActor {
    type Result = Atomic<Option<Session>>;

    fn handle(&mut self, msg: ApplyTurn, _: &mut Context<Self>) -> Self::Result {
        let ApplyTurn {
            id,
            task,
            mode,
            reported,
            then,
        } = msg;
        // Lazily: this bookkeeping rides on the next fsync (as a sync run's final record does).
        let write = self.modify(id, Write::Lazy, move |session| {
            let cost = task.cost_usd.unwrap_or(0.0);
            apply_turn(session, &task, mode, reported, cost, Utc::now());
        });
        atomic(async move {
            let written = write.await;
            then.run(&written);
            written
        })
    }
}

/// The SessionActor's address, as the HTTP handlers and the queue's workers use it. Cheap to
/// clone. A caller that goes away does not undo a write: a message sent is handled.
#[derive(Clone)]
pub struct SessionHandle(Addr<SessionActor>);

fn gone(_: MailboxError) -> StoreError {
    StoreError::Unavailable("the session actor has stopped".into())
}

impl SessionHandle {
    /// Start the SessionActor on `arbiter` (the actor system's, [`crate::system`]).
    pub fn start(arbiter: &ArbiterHandle, store: Arc<dyn Store>) -> SessionHandle {
        SessionHandle(SessionActor::start_in_arbiter(arbiter, move |_| {
            SessionActor { store }
        }))
    }

    /// See [`Create`].
    pub async fn create(&self, session: Session, lazily: bool) -> StoreResult<()> {
        self.0
            .send(Create { session, lazily })
            .await
            .map_err(gone)?
    }

    /// See [`SetStatus`].
    pub async fn set_status(
        &self,
        id: SessionId,
        status: SessionStatus,
    ) -> StoreResult<Option<Session>> {
        self.0.send(SetStatus { id, status }).await.map_err(gone)?
    }

    /// See [`Delete`].
    pub async fn delete(&self, id: SessionId) -> StoreResult<bool> {
        self.0.send(Delete { id }).await.map_err(gone)?
    }

    /// See [`ApplyTurn`].
    pub async fn apply_turn(
        &self,
        id: SessionId,
        task: Task,
        mode: CostMode,
        reported: f64,
    ) -> StoreResult<Option<Session>> {
        let msg = ApplyTurn {
            id,
            task: Box::new(task),
            mode,
            reported,
            then: AfterTurn::nothing(),
        };
        self.0.send(msg).await.map_err(gone)?
    }

    /// See [`ApplyTurn`]: without waiting; `then` runs once the turn is written (or could
    /// not be), on the actor's thread.
    pub fn apply_turn_then(
        &self,
        id: SessionId,
        task: Task,
        mode: CostMode,
        reported: f64,
        then: AfterTurn,
    ) {
        self.0.do_send(ApplyTurn {
            id,
            task: Box::new(task),
            mode,
            reported,
            then,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures;
    use crate::store::memory::MemoryStore;
    use crate::store::sqlite::SqliteStore;
    use crate::system::ActorSystem;

    fn session() -> Session {
        fixtures::session("/p", Utc::now())
    }

    fn turn(cost: f64) -> Task {
        let mut t = fixtures::completed_task();
        t.cost_usd = Some(cost);
        t
    }

    fn start(store: Arc<dyn Store>) -> (ActorSystem, SessionHandle) {
        let system = ActorSystem::start("session-test", 1).expect("actor system");
        let handle = SessionHandle::start(system.arbiter(), store);
        (system, handle)
    }

    /// A memory store, the actor over it, and a session it created.
    async fn with_a_session() -> (Arc<dyn Store>, ActorSystem, SessionHandle, Session) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (system, sessions) = start(store.clone());
        let s = session();
        sessions.create(s.clone(), false).await.expect("create");
        (store, system, sessions, s)
    }

    #[tokio::test]
    async fn messages_in_records_out() {
        let (store, system, sessions, s) = with_a_session().await;
        let stored = store.get_session(s.id).await.expect("get").expect("stored");
        assert_eq!((stored.status, stored.messages_count), (s.status, 0));

        let closed = sessions
            .set_status(s.id, SessionStatus::Closed)
            .await
            .expect("status")
            .expect("found");
        assert_eq!(closed.status, SessionStatus::Closed);
        let stored = store.get_session(s.id).await.expect("get").expect("stored");
        assert_eq!(stored.status, SessionStatus::Closed);

        let t = turn(0.25);
        let after = sessions
            .apply_turn(s.id, t.clone(), CostMode::PerRun, 0.25)
            .await
            .expect("turn")
            .expect("found");
        assert_eq!(after.messages_count, 1);
        assert_eq!(after.last_task_id, Some(t.id));
        let stored = store.get_session(s.id).await.expect("get").expect("stored");
        assert_eq!(stored.status, SessionStatus::Closed, "the status stays");
        assert!((stored.total_cost_usd - 0.25).abs() < 1e-12);

        assert!(sessions.delete(s.id).await.expect("delete"));
        assert_eq!(store.get_session(s.id).await.expect("get"), None);
        assert!(!sessions.delete(s.id).await.expect("delete again"));
        // Gone: neither a status nor a turn brings it back.
        let none = sessions.set_status(s.id, SessionStatus::Active).await;
        assert_eq!(none, Ok(None));
        let none = sessions.apply_turn(s.id, t, CostMode::PerRun, 0.0).await;
        assert_eq!(none, Ok(None));
        assert_eq!(store.get_session(s.id).await.expect("get"), None);

        system.stop();
        assert!(sessions.delete(s.id).await.is_err(), "stopped: unavailable");
    }

    /// `then` runs once the turn is written — what it wakes reads the turn on the session —
    /// and runs even when the actor has stopped (with an error): a worker's report to the
    /// queue, sent this way, is never lost.
    #[tokio::test]
    async fn what_follows_a_turn_sees_it_written_and_is_never_lost() {
        use futures_util::FutureExt;
        let (store, system, sessions, s) = with_a_session().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reader = store.clone();
        let then = AfterTurn::new(move |written| {
            // The memory store answers at once: read it right here, before anyone is told.
            let seen = reader
                .get_session(s.id)
                .now_or_never()
                .expect("memory reads at once");
            let _ = tx.send((written.clone(), seen));
        });
        sessions.apply_turn_then(s.id, turn(0.25), CostMode::PerRun, 0.25, then);
        let (written, seen) = rx.await.expect("then ran");
        assert_eq!(written.expect("written").expect("found").messages_count, 1);
        assert_eq!(seen.expect("read").expect("found").messages_count, 1);

        system.stop();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then = AfterTurn::new(move |written| {
            let _ = tx.send(written.clone());
        });
        sessions.apply_turn_then(s.id, turn(0.25), CostMode::PerRun, 0.25, then);
        let written = rx.await.expect("then ran although the actor had stopped");
        assert!(written.is_err(), "{written:?}");
    }

    /// A status change and a turn's accounting sent at the same moment, many times over, on
    /// SQLite (whose reads go to other threads, so unserialised writes would interleave):
    /// every change survives.
    #[tokio::test]
    async fn a_status_change_racing_a_turn_loses_neither() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("sqlite"));
        let (system, sessions) = start(store.clone());
        let s = session();
        sessions.create(s.clone(), false).await.expect("create");
        const ROUNDS: u64 = 40;
        let statuses = [SessionStatus::Archived, SessionStatus::Active];
        for round in 0..ROUNDS {
            let status = statuses[(round % 2) as usize];
            let (a, b) = tokio::join!(
                sessions.apply_turn(s.id, turn(0.5), CostMode::PerRun, 0.5),
                sessions.set_status(s.id, status),
            );
            a.expect("turn").expect("found");
            b.expect("status").expect("found");
            let stored = store.get_session(s.id).await.expect("get").expect("stored");
            assert_eq!(stored.status, status, "round {round}: the status survived");
            assert_eq!(
                stored.messages_count,
                round + 1,
                "round {round}: the turn survived"
            );
        }
        // And with many in flight at once.
        let mut writes = Vec::new();
        for _ in 0..ROUNDS {
            let (h1, h2) = (sessions.clone(), sessions.clone());
            writes.push(tokio::spawn(async move {
                h1.apply_turn(s.id, turn(0.5), CostMode::PerRun, 0.5).await
            }));
            writes.push(tokio::spawn(async move {
                h2.set_status(s.id, SessionStatus::Closed).await
            }));
        }
        for w in writes {
            w.await.expect("join").expect("write").expect("found");
        }
        let stored = store.get_session(s.id).await.expect("get").expect("stored");
        assert_eq!(stored.status, SessionStatus::Closed);
        assert_eq!(stored.messages_count, 2 * ROUNDS);
        assert!((stored.total_cost_usd - ROUNDS as f64).abs() < 1e-9);
        system.stop();
    }
}
