//! The TUI's worker: every request to the daemon and every file read runs here, never on the
//! UI thread, and hands its result back through cursive's `cb_sink()`.
//!
//! Why a thread with its own actix System (a current-thread runtime) rather than blocking
//! calls: the same async [`Client`] serves the CLI commands, the TUI and the tests; the TUI
//! needs several things at once (the dashboard's refresh loop, a live SSE stream, a slow sync
//! prompt) and a runtime multiplexes them on one thread where blocking calls would need a
//! thread each; and a job is cancelled by simply dropping it (when the runtime goes, at exit).
//!
//! The client is awc, whose futures are `!Send`: a job cannot be made on the UI thread and
//! moved here. What crosses is the closure that makes it ([`Spawner::spawn`]), called on the
//! worker thread, where the job then runs to its end.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cursive::{CbSink, Cursive, View};
use futures_util::future::LocalBoxFuture;

use crate::client::Client;
use crate::daemon::Control;

/// Makes a job, on the worker thread.
type Job = Box<dyn FnOnce() -> LocalBoxFuture<'static, ()> + Send>;

/// The worker thread. Dropping it stops the thread and drops every job still running (a
/// refresh loop, a stream), whoever still holds a [`Spawner`].
pub struct Worker {
    spawner: Spawner,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Hands jobs to the worker thread; cheap to clone.
#[derive(Clone)]
pub struct Spawner {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl Worker {
    pub fn start() -> std::io::Result<Worker> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (shutdown_tx, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tui-worker".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    loop {
                        tokio::select! {
                            job = rx.recv() => match job {
                                Some(make) => { actix_rt::spawn(make()); }
                                None => break,
                            },
                            _ = &mut shutdown_rx => break,
                        }
                    }
                });
                // Dropping the System's runtime here cancels the jobs still running.
            })?;
        Ok(Worker {
            spawner: Spawner { jobs: tx },
            shutdown: Some(shutdown_tx),
        })
    }

    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Spawner {
    /// Run the job `make` makes on the worker thread.
    pub fn spawn<F, J>(&self, make: F)
    where
        F: FnOnce() -> J + Send + 'static,
        J: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move || Box::pin(make()));
        // Fails only when the worker thread is gone, i.e. while the TUI is closing.
        let _ = self.jobs.send(job);
    }
}

/// The way back to the UI thread.
#[derive(Clone)]
pub struct Ui {
    sink: CbSink,
}

impl Ui {
    pub fn new(sink: CbSink) -> Ui {
        Ui { sink }
    }

    /// Run `f` on the UI thread; false when the UI is gone.
    pub fn update(&self, f: impl FnOnce(&mut Cursive) + Send + 'static) -> bool {
        self.sink.send(Box::new(f)).is_ok()
    }

    /// Run `f` on the view called `name`; when that view is gone (its screen was closed),
    /// `live` is cleared so the loop feeding it stops.
    pub fn update_view<V: View>(
        &self,
        live: &Live,
        name: &str,
        f: impl FnOnce(&mut V) + Send + 'static,
    ) {
        let in_ui = live.clone();
        let name = name.to_string();
        let sent = self.update(move |siv| {
            if siv.call_on_name(&name, f).is_none() {
                in_ui.stop();
            }
        });
        if !sent {
            live.stop();
        }
    }
}

/// A flag a refresh loop checks: cleared when its screen closes.
#[derive(Clone, Debug)]
pub struct Live(Arc<AtomicBool>);

impl Live {
    pub fn new() -> Live {
        Live(Arc::new(AtomicBool::new(true)))
    }
    pub fn is_live(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub fn stop(&self) {
        self.0.store(false, Ordering::Relaxed)
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

/// A name no other open screen uses: a screen opened twice gets two views, and the loop of
/// the first one stops when its own view goes, not when the second one does.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}#{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What a job needs: the client, daemon control, and the way back to the UI.
#[derive(Clone)]
pub struct Ctx {
    pub ui: Ui,
    pub control: Arc<Control>,
    client: Arc<RwLock<Client>>,
    spawner: Spawner,
}

impl Ctx {
    pub fn new(ui: Ui, control: Arc<Control>, client: Client, spawner: Spawner) -> Ctx {
        Ctx {
            ui,
            control,
            client: Arc::new(RwLock::new(client)),
            spawner,
        }
    }

    /// Run the job `make` makes on the worker thread (see [`Spawner::spawn`]).
    pub fn spawn<F, J>(&self, make: F)
    where
        F: FnOnce() -> J + Send + 'static,
        J: Future<Output = ()> + 'static,
    {
        self.spawner.spawn(make)
    }

    /// The client as of now (it is replaced when the config's address changes).
    pub fn client(&self) -> Client {
        match self.client.read() {
            Ok(c) => c.clone(),
            // A panic while holding the lock cannot leave a Client half-written: use it.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_client(&self, client: Client) {
        match self.client.write() {
            Ok(mut c) => *c = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
    }

    /// Re-read the config (after a start, or a settings change) so the address is current.
    pub fn refresh_client(&self) {
        if let Ok(c) = self.control.client() {
            self.set_client(c);
        }
    }
}
