//! The actix actor system the actors run on.
//!
//! The actors live on arbiters of their own — threads, each running an actix (tokio
//! current-thread) event loop — not on the threads of whoever builds the application: the HTTP
//! front runs on actix-web's workers, the application may be built from `#[tokio::main]` or a
//! `#[tokio::test]`, and none of that decides where an actor runs. Everything else reaches an
//! actor by its [`Addr`](actix::Addr), whose messages cross threads.
//!
//! * [`ActorSystem::arbiter`] — the arbiter of the long-lived actors that own shared state
//!   (queue supervisor, statistics, webhooks, rate limits, sessions). Each handles its
//!   messages one at a time, so each one's state needs no lock.
//! * [`ActorSystem::worker_arbiter`] — one of a pool of arbiters (one per core), handed out in
//!   turn, for the WorkerActors and their runs, so the runs use every core. (With Redis a run
//!   goes on the server's runtime instead, beside the storage connections: see
//!   `queue::worker`.)
//!
//! The system stops with [`ActorSystem::stop`] (or when dropped): every arbiter's loop ends and
//! its actors are stopped, after the application's own shutdown has ended their work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_rt::{Arbiter, ArbiterHandle, System};

/// A running actor system: its arbiters and the thread that hosts it.
pub struct ActorSystem {
    system: System,
    main: ArbiterHandle,
    workers: WorkerPool,
    thread: Option<JoinHandle<()>>,
}

/// The worker arbiters, handed out in turn. Cheap to clone (the queue supervisor holds one).
#[derive(Clone)]
pub struct WorkerPool {
    arbiters: Arc<[ArbiterHandle]>,
    next: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// The next worker arbiter, in turn.
    pub fn next(&self) -> &ArbiterHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        &self.arbiters[i]
    }

    /// How many worker arbiters there are.
    pub fn len(&self) -> usize {
        self.arbiters.len()
    }

    /// Never: a pool has at least one arbiter.
    pub fn is_empty(&self) -> bool {
        self.arbiters.is_empty()
    }
}

impl std::fmt::Debug for ActorSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorSystem")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl ActorSystem {
    /// Start the system on a thread of its own (`name`), with `workers` worker arbiters (at
    /// least one).
    pub fn start(name: &str, workers: usize) -> std::io::Result<ActorSystem> {
        let (tx, rx) = std::sync::mpsc::channel();
        let workers = workers.max(1);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runner = System::new();
                let pool: Vec<Arbiter> =
                    runner.block_on(async { (0..workers).map(|_| Arbiter::new()).collect() });
                let handles = pool.iter().map(Arbiter::handle).collect::<Vec<_>>();
                let main = runner.block_on(async { Arbiter::current() });
                let system = runner.block_on(async { System::current() });
                if tx.send((system, main, handles)).is_err() {
                    return;
                }
                // Until `System::stop`: then every arbiter's loop ends too.
                let _ = runner.run();
                for arbiter in pool {
                    let _ = arbiter.join();
                }
            })?;
        let (system, main, workers) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the actor system did not start"))?;
        Ok(ActorSystem {
            system,
            main,
            workers: WorkerPool {
                arbiters: workers.into(),
                next: Arc::new(AtomicUsize::new(0)),
            },
            thread: Some(thread),
        })
    }

    /// The arbiter of the long-lived actors.
    pub fn arbiter(&self) -> &ArbiterHandle {
        &self.main
    }

    /// The next worker arbiter, in turn.
    pub fn worker_arbiter(&self) -> &ArbiterHandle {
        self.workers.next()
    }

    /// The worker arbiters, to start workers from another actor.
    pub fn worker_pool(&self) -> WorkerPool {
        self.workers.clone()
    }

    /// Stop every arbiter and wait for the system's thread to end.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            // Never from the system's own thread (an actor dropping the last handle).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for ActorSystem {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Most items a [`Feed`] takes in one poll before it lets the actor's mailbox run.
const FEED_BUDGET: usize = 256;

/// An actor's input from a tokio channel (the queue's subscription of final records): an
/// [`ActorFuture`](actix::fut::ActorFuture) spawned in the actor's context (`ctx.spawn`) that
/// hands each item to `take` as it arrives. The receiver stays in the actor's state, so a
/// handler can take in what is already waiting ([`drain`]) before it answers: actix polls the
/// mailbox before spawned futures, so a query sent after an item could otherwise be answered
/// first. When the channel closes, `rx` is set to `None` and the future ends.
pub struct Feed<A: actix::Actor, T> {
    pub rx: fn(&mut A) -> &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>,
    pub take: fn(&mut A, T, &mut A::Context),
}

impl<A: actix::Actor, T> actix::fut::ActorFuture<A> for Feed<A, T> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut A,
        ctx: &mut A::Context,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        for _ in 0..FEED_BUDGET {
            let Some(rx) = (self.rx)(act).as_mut() else {
                return Poll::Ready(());
            };
            match rx.poll_recv(task) {
                Poll::Ready(Some(item)) => (self.take)(act, item, ctx),
                Poll::Ready(None) => {
                    *(self.rx)(act) = None;
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // More is waiting: come back after the mailbox had its turn.
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Everything already waiting in `rx` (nothing once it is closed).
pub fn drain<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Vec<T> {
    let mut out = Vec::new();
    if let Some(r) = rx.as_mut() {
        while let Ok(item) = r.try_recv() {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::prelude::*;

    /// Counts what it is told; answers with the total and the thread it runs on.
    struct Counter(u64);

    impl Actor for Counter {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "(u64, std::thread::ThreadId)")]
    struct Add(u64);

    impl Handler<Add> for Counter {
        type Result = MessageResult<Add>;
        fn handle(&mut self, msg: Add, _: &mut Context<Self>) -> Self::Result {
            self.0 += msg.0;
            MessageResult((self.0, std::thread::current().id()))
        }
    }

    /// Actors started on the system answer messages sent from a plain tokio runtime, each on
    /// its arbiter's thread; worker arbiters are handed out in turn, on distinct threads.
    #[tokio::test]
    async fn actors_run_on_their_arbiters_and_answer_from_any_runtime() {
        let system = ActorSystem::start("test-actors", 2).expect("start");
        let main = Counter::start_in_arbiter(system.arbiter(), |_| Counter(0));
        main.do_send(Add(2));
        let (total, main_thread) = main.send(Add(3)).await.expect("answer");
        assert_eq!(total, 5, "messages are handled in order");
        assert_ne!(main_thread, std::thread::current().id());

        let a = Counter::start_in_arbiter(system.worker_arbiter(), |_| Counter(0));
        let b = Counter::start_in_arbiter(system.worker_arbiter(), |_| Counter(0));
        let (_, ta) = a.send(Add(1)).await.expect("a");
        let (_, tb) = b.send(Add(1)).await.expect("b");
        assert_ne!(ta, tb, "two worker arbiters, two threads");
        assert!(ta != main_thread && tb != main_thread);

        system.stop();
        // Stopped: the actors are gone with their arbiters.
        assert!(main.send(Add(1)).await.is_err());
    }
}
