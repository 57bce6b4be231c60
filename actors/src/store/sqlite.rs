//! [`SqliteStore`]: the embedded, durable backend (the default).
//!
//! # Writes: one thread, group commit
//! One dedicated thread (`sqlite-writer`) owns the only read-write connection. Every write is a
//! command sent to it over a channel with a oneshot reply. The thread takes the first queued
//! command, drains whatever else is queued (up to [`MAX_BATCH`]), and runs them all in ONE
//! `BEGIN IMMEDIATE … COMMIT` transaction, each inside its own savepoint (so a command that
//! fails, e.g. a duplicate id, is rolled back alone and answered with its own error). Only after
//! `COMMIT` returns does it send the replies: a reply means the write is on disk. With
//! `journal_mode=WAL` and `synchronous=FULL` a commit costs one fsync of the WAL, and all
//! commands that queued up while the previous fsync ran share the next one. If `COMMIT` fails,
//! every command of the batch is answered `Unavailable`.
//!
//! When the store is dropped the channel closes; the thread finishes the batch in hand,
//! checkpoints the WAL into the database file and exits, and `Drop` joins it.
//!
//! # Which writes wait for the disk
//! A 201/202 means what it names is on disk (a `kill -9` or a power cut right after it loses
//! nothing), so every write such an answer depends on is *durable*: its reply waits for the
//! commit's fsync. Some writes are *lazy* ([`Store::insert_session_lazily`],
//! [`Store::update_session_lazily`], [`Store::insert_task_lazily`], [`Store::start_task`],
//! [`Store::finish_task_lazily`]): their batch commits with `synchronous=NORMAL`, which in WAL
//! mode writes the WAL (so a killed process loses nothing: the data is in the OS) but does not
//! fsync it; the reply comes at once. The WAL is one file written in order, so the next durable
//! commit's fsync makes every earlier lazy write durable too: the session a new task belongs to
//! is inserted lazily and the task's own durable insert makes both durable before the 201/202.
//! When no durable commit comes within [`LAZY_SYNC_WITHIN`] of a lazy one, the writer makes a
//! small durable write of its own (a batch due for it is committed with the fsync instead), so
//! a lazy write is on disk at most that long after its reply. What a lazy write risks is only a
//! power cut or kernel crash within that window, and why each is safe:
//! * a new session's insert: always followed by its task's durable insert before any answer
//!   names it (if that insert fails, no answer promised the session);
//! * `start_task` (`pending` → `processing`): lost, the task is found `pending` after the
//!   machine comes back and runs again — instead of ending `interrupted`. After a power cut
//!   no process of the run survives either; a daemon that merely died (kill -9, OOM) finds
//!   the start on disk as before and marks the task `interrupted`;
//! * a run's session accounting after its final record (`messages_count`, cost): the final
//!   record itself is durable; the accounting is durable with the next durable write;
//! * a sync run's records (its task insert, start and final record): its answer (200) carries
//!   the result itself, so the answer waits for the WAL, not the fsync (which costs 4 ms on
//!   this project's benchmark VM, twice the whole overhead budget of a sync run). A power cut
//!   in the window can lose the record of a run whose caller has its answer, or leave the run
//!   `pending`/`processing` on disk: at start-up the queue ends both `interrupted` (a pending
//!   sync run's caller was connected to the previous process), so it never runs twice.
//!
//! A sync run on a new session so waits for no fsync at all, instead of five.
//!
//! # In-memory figures
//! * Per-status task counts and the total cost ([`Store::task_counts`], behind every
//!   `/api/tasks/queue/status`) are loaded once at open and then kept by the writer: each
//!   command records how it changed them, the changes of a command rolled back to its
//!   savepoint are dropped, and the batch's changes are applied after `COMMIT` succeeds and
//!   before the replies — so the figures are always those of the committed data, in O(1).
//!   Cost is summed in whole nano-dollars (exact, no drift from adding and removing floats).
//! * Health ([`Store::ping`]) is a flag the writer keeps: the last batch committed or not, the
//!   thread alive, no batch stuck for [`WEDGED_AFTER`]. It answers without queueing behind
//!   writes. After a failed commit the writer probes the disk with a small durable write every
//!   [`PROBE_INTERVAL`] while no other write comes, so the flag recovers with the disk.
//!
//! # Giving memory back
//! After [`IDLE_AFTER`] without writes (the queue has gone quiet), the writer drops the page
//! caches of its own and the idle read connections (`PRAGMA shrink_memory`), closes the idle
//! read connections but one, and returns free heap to the OS (`malloc_trim`, glibc only), so
//! RSS after a burst falls back near idle.
//!
//! # Reads: a small pool of read-only connections
//! Reads run on `tokio::task::spawn_blocking` over at most [`MAX_READERS`] read-only
//! connections. In WAL mode they never wait for the writer, and since a write
//! is answered only after its commit, a read that starts after a write's reply sees it.
//! The pool is bounded by a semaphore: a burst of reads waits for one of the connections
//! instead of opening more. A read of one row by its key (a task, a session) runs on the
//! calling thread instead when a connection is idle: it takes microseconds, less than the
//! hand-offs to and from a blocking thread.
//!
//! # Measured (`bench_concurrent_inserts`, release, 2 shared cores, ext4 on a VM disk, fsync
//! ≈ 0.25 ms)
//! * 10,000 concurrent async inserts: ≈ 34,000 inserts/s (0.29 s); a single insert alone
//!   0.2–0.3 ms (one fsync). Debug build: ≈ 13,500 inserts/s.
//! * One `get_task` while 8 writers keep the writer busy: pool p50 0.018 ms / p99 0.2 ms;
//!   through the writer thread p50 0.5 ms / p99 2.9 ms (a read waits for the batch in hand and
//!   its fsync, worse on slower disks). A burst of 2,000 concurrent reads is faster through the
//!   writer (≈ 200k/s, they batch) than the pool (≈ 42k/s), but single-read latency and keeping
//!   the writer free for writes matter more here: reads use the pool.
//! * Pending page of 50 out of 10,000+: 0.4 ms. `task_counts` was 0.7 ms as a query over every
//!   task; it is now read from memory (below).
//!
//! # Schema
//! Versioned with `PRAGMA user_version` ([`MIGRATIONS`]): each entry moves the schema one version
//! up, in a transaction together with the new version number. A database newer than this build
//! is refused. Records are stored whole as JSON (`doc`); the other columns are copies of the
//! fields that queries filter or sort on. Times are integer milliseconds since the epoch.
//! `seq` continues from the highest ever handed out (`meta.last_seq`, written once per batch,
//! or `max(seq)` if larger) at open, so it keeps increasing across restarts, even when the
//! newest tasks were deleted meanwhile.
//!
//! Also kept identical across backends (see `rules`): times are truncated to milliseconds on
//! write; `limit = 0` means no limit; `finish_task` keeps the store-owned `seq`, `attempts` and
//! (when the caller's copy lacks it) `started_at`; a duplicate id on insert is refused with
//! `Corrupt` (a caller bug, not an outage).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, Semaphore};

use super::rules;
use super::{SessionChange, SessionFilter, Store, StoreError, StoreResult, TaskCounts, TaskFilter};
use crate::approval::{
    apply_decision, Approval, ApprovalFilter, ApprovalId, ApprovalState, Decided,
};
use crate::model::{Priority, Session, SessionId, Task, TaskId, TaskStatus};
use crate::webhook::{WebhookAttempt, WebhookJob};

/// Most commands committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// Read-only connections (and so reads running at once).
pub const MAX_READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Without a write for this long, the writer gives memory back (see the module docs).
pub const IDLE_AFTER: Duration = crate::mem::QUIET_AFTER;
/// A lazy write is made durable against a power cut at most this long after its commit: by the
/// next durable commit if one comes, else by a small durable write of the writer's own. The
/// bound on what a power cut can take from lazy writes (a crash of the process takes nothing).
pub const LAZY_SYNC_WITHIN: Duration = Duration::from_millis(100);
/// While the last commit failed, the writer probes the disk this often.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A batch running longer than this makes the store unhealthy (a hung disk). Far above any
/// real batch (4,096 inserts take about 0.1 s) and above the busy timeout.
pub const WEDGED_AFTER: Duration = Duration::from_secs(30);

/// Schema migrations: entry `i` moves the database from `user_version = i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "
    CREATE TABLE tasks (
        id           TEXT PRIMARY KEY,
        seq          INTEGER NOT NULL UNIQUE,
        status       TEXT NOT NULL,
        priority     INTEGER NOT NULL,
        session_id   TEXT,
        owner        TEXT,
        created_at   INTEGER NOT NULL,
        completed_at INTEGER,
        cost_usd     REAL,
        doc          TEXT NOT NULL
    );
    CREATE INDEX tasks_run_order ON tasks (status, priority DESC, seq);
    CREATE INDEX tasks_status_seq ON tasks (status, seq, cost_usd);
    CREATE INDEX tasks_session ON tasks (session_id, seq);
    CREATE INDEX tasks_owner ON tasks (owner, seq);
    CREATE INDEX tasks_completed_at ON tasks (completed_at);

    CREATE TABLE sessions (
        id           TEXT PRIMARY KEY,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        status       TEXT NOT NULL,
        project_path TEXT NOT NULL,
        owner        TEXT,
        search       TEXT NOT NULL,
        doc          TEXT NOT NULL
    );
    CREATE INDEX sessions_created ON sessions (created_at, id);
    CREATE INDEX sessions_updated ON sessions (updated_at);
    CREATE INDEX sessions_status ON sessions (status, created_at, id);
    CREATE INDEX sessions_project ON sessions (project_path, created_at, id);
    CREATE INDEX sessions_owner ON sessions (owner, created_at, id);

    CREATE TABLE stats_days (
        day TEXT PRIMARY KEY,
        doc TEXT NOT NULL
    );

    -- last_seq: the highest seq ever handed out, so seq never repeats even when the newest
    -- tasks have been deleted.
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('last_seq', 0);
    ",
    // 1 -> 2
    "
    CREATE TABLE idempotency (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX idempotency_expires ON idempotency (expires_at);
    ",
    // 2 -> 3: webhooks. The outbox holds deliveries not yet finished (a row per webhook id);
    // attempts are a history, in recording order (`id`).
    "
    CREATE TABLE webhook_jobs (
        webhook_id TEXT PRIMARY KEY,
        task_id    TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        doc        TEXT NOT NULL
    );
    CREATE INDEX webhook_jobs_created ON webhook_jobs (created_at, webhook_id);

    CREATE TABLE webhook_attempts (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        at      INTEGER NOT NULL,
        doc     TEXT NOT NULL
    );
    CREATE INDEX webhook_attempts_task ON webhook_attempts (task_id, id);
    CREATE INDEX webhook_attempts_at ON webhook_attempts (at);
    ",
    // 3 -> 4: approvals, a task's permission requests (deleted with their task).
    "
    CREATE TABLE approvals (
        task_id      TEXT NOT NULL,
        id           TEXT NOT NULL,
        owner        TEXT,
        status       TEXT NOT NULL,
        requested_at INTEGER NOT NULL,
        doc          TEXT NOT NULL,
        PRIMARY KEY (task_id, id)
    );
    CREATE INDEX approvals_status ON approvals (status, requested_at);
    ",
];

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// The SQLite backend. Cheap to share behind an `Arc`; dropping it flushes and stops the writer.
pub struct SqliteStore {
    tx: Option<mpsc::Sender<Box<dyn Command>>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReadPool>,
    reads_on_writer: bool,
    /// Task counts and cost of the committed data, kept by the writer.
    tally: Arc<Mutex<Tally>>,
    health: Arc<Health>,
}

impl SqliteStore {
    /// Open (or create) the database at `path`: creates the parent directories, the schema (or
    /// migrates it), and starts the writer thread.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, false)
    }

    fn open_with(path: &Path, reads_on_writer: bool) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{} cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(db_err)?;
        migrate(&mut conn)?;
        let last_seq: i64 = conn
            .query_row(
                "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM tasks),
                            (SELECT COALESCE(MAX(value), 0) FROM meta WHERE key = 'last_seq'))",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let last_seq = u64::try_from(last_seq)
            .map_err(|_| StoreError::Corrupt(format!("negative seq {last_seq}")))?;

        // Readers find the file by an absolute path, whatever the working directory becomes.
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let readers = Arc::new(ReadPool {
            path: abs,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX_READERS)),
        });
        let probe = readers.take()?;
        readers.give(probe);
        let tally = Arc::new(Mutex::new(load_tally(&conn)?));
        let health = Arc::new(Health::new());

        let (tx, rx) = mpsc::channel::<Box<dyn Command>>();
        let writer = Writer {
            conn,
            last_seq,
            saved_seq: last_seq,
            synchronous_full: true,
            unsynced_since: None,
            cmd_delta: Tally::default(),
            batch_delta: Tally::default(),
            tally: Arc::clone(&tally),
            health: Arc::clone(&health),
            readers: Arc::clone(&readers),
        };
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_main(writer, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            tx: Some(tx),
            writer: Some(writer),
            readers,
            reads_on_writer,
            tally,
            health,
        })
    }

    /// Run `f` on the writer thread, inside the current batch's transaction; answer once the
    /// batch is committed and on disk (fsync'd).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> StoreResult<T> + Send + 'static,
    {
        self.submit(f, true).await
    }

    /// Like [`SqliteStore::write`], but the reply may come before the fsync: the write is
    /// committed (it survives the process), and on disk with the next durable commit (module
    /// docs: which writes may do this).
    async fn write_lazily<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> StoreResult<T> + Send + 'static,
    {
        self.submit(f, false).await
    }

    /// A final record over a live one (`finish_task`), waiting for the fsync or not.
    async fn write_final(&self, task: &Task, durable: bool) -> StoreResult<bool> {
        if !task.status.is_final() {
            log::warn!(task:% = task.id, status = task.status.as_str(); "finish_task called with a live status; nothing written");
            return Ok(false);
        }
        let task = task.clone();
        self.submit(move |w| w_finish_task(w, task), durable).await
    }

    async fn submit<T, F>(&self, f: F, durable: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let cmd: Box<dyn Command> = Box::new(Job {
            f: Some(f),
            result: None,
            reply,
            durable,
        });
        let stopped = || StoreError::Unavailable("the storage writer has stopped".into());
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(cmd)
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Run `f` on a read-only connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.reads_on_writer {
            return self.write(move |w| f(&w.conn)).await;
        }
        let pool = Arc::clone(&self.readers);
        // Wait for one of the connections rather than open more: opening costs more than a read.
        let permit = Arc::clone(&pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the storage readers are closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let r = f(&conn);
            if r.is_ok() {
                pool.give(conn);
            }
            drop(permit);
            r
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage read failed: {e}")))?
    }

    /// A read of one row by its key, run on the calling thread when a connection is idle
    /// (else as [`SqliteStore::read`]). It takes microseconds — the pages are in SQLite's
    /// or the OS's cache, and WAL readers never wait for the writer — which is less than
    /// the two thread hand-offs of `spawn_blocking` around it: `GET /api/tasks/:id` went
    /// from about 60 to about 40 µs of CPU per request (twice the requests/s).
    async fn read_point<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.reads_on_writer {
            return self.read(f).await;
        }
        let Ok(permit) = Arc::clone(&self.readers.permits).try_acquire_owned() else {
            return self.read(f).await;
        };
        let conn = self.readers.take()?;
        let r = f(&conn);
        if r.is_ok() {
            self.readers.give(conn);
        }
        drop(permit);
        r
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish its batch, checkpoint and exit.
        drop(self.tx.take());
        if let Some(h) = self.writer.take() {
            if h.join().is_err() {
                log::error!("the SQLite writer thread panicked");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// errors and encoding

fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match e {
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn decode_task(doc: &str) -> StoreResult<Task> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("stored task: {e}")))
}

fn decode_session(doc: &str) -> StoreResult<Session> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("stored session: {e}")))
}

fn decode_doc<T: serde::de::DeserializeOwned>(what: &str, doc: &str) -> StoreResult<T> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(format!("stored {what}: {e}")))
}

fn seq_i64(seq: u64) -> StoreResult<i64> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("seq {seq} out of range")))
}

fn day_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// `LIMIT` for SQLite: 0 means no limit (-1).
fn sql_limit(limit: u32) -> i64 {
    if limit == 0 {
        -1
    } else {
        i64::from(limit)
    }
}

fn owner_cond(
    owner: &Option<Option<String>>,
    conds: &mut Vec<&'static str>,
    args: &mut Vec<Value>,
) {
    match owner {
        None => {}
        Some(None) => conds.push("owner IS NULL"),
        Some(Some(o)) => {
            conds.push("owner = ?");
            args.push(Value::Text(o.clone()));
        }
    }
}

fn where_clause(conds: &[&str]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

// ---------------------------------------------------------------------------------------------
// the writer thread

/// What the writer thread owns.
struct Writer {
    conn: Connection,
    /// The last seq handed out.
    last_seq: u64,
    /// The last seq recorded in `meta` (committed).
    saved_seq: u64,
    /// The connection's `synchronous` setting: FULL (fsync at commit) or NORMAL.
    synchronous_full: bool,
    /// When the oldest commit not yet fsync'd was made ([`LAZY_SYNC_WITHIN`]).
    unsynced_since: Option<Instant>,
    /// How the command being run changed the task counts (dropped if it is rolled back).
    cmd_delta: Tally,
    /// The changes of the batch's successful commands, applied to `tally` after `COMMIT`.
    batch_delta: Tally,
    tally: Arc<Mutex<Tally>>,
    health: Arc<Health>,
    /// To shrink the idle read connections' caches when the store goes quiet.
    readers: Arc<ReadPool>,
}

impl Writer {
    /// Record that a stored task went from `old` (`None`: inserted) to `new` (`None`: deleted).
    fn tally_change(&mut self, old: Option<(TaskStatus, Option<f64>)>, new: Option<&Task>) {
        if let Some((status, cost)) = old {
            self.cmd_delta.add(status, cost, -1);
        }
        if let Some(t) = new {
            self.cmd_delta.add(t.status, t.cost_usd, 1);
        }
    }
}

/// Per-status task counts and the total cost in nano-dollars.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    by_status: [i64; TaskStatus::ALL.len()],
    cost_nanos: i128,
}

impl Tally {
    fn index(s: TaskStatus) -> usize {
        match s {
            TaskStatus::Pending => 0,
            TaskStatus::Processing => 1,
            TaskStatus::Completed => 2,
            TaskStatus::Failed => 3,
            TaskStatus::Cancelled => 4,
            TaskStatus::Timeout => 5,
        }
    }

    fn add(&mut self, status: TaskStatus, cost: Option<f64>, sign: i64) {
        self.by_status[Self::index(status)] += sign;
        self.cost_nanos += i128::from(sign) * cost_nanos(cost);
    }

    fn merge(&mut self, other: &Tally) {
        for (a, b) in self.by_status.iter_mut().zip(other.by_status) {
            *a += b;
        }
        self.cost_nanos += other.cost_nanos;
    }

    /// Like the `GROUP BY status` it replaces: only statuses that have tasks.
    fn counts(&self) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for s in TaskStatus::ALL {
            let n = self.by_status[Self::index(s)];
            if n > 0 {
                counts.by_status.insert(s, u64::try_from(n).unwrap_or(0));
            }
        }
        counts.total_cost_usd = self.cost_nanos as f64 / 1e9;
        counts
    }
}

/// A cost in whole nano-dollars (0 for none or a non-finite value, which the JSON documents
/// cannot hold anyway).
fn cost_nanos(cost: Option<f64>) -> i128 {
    match cost {
        // `as` saturates; no stored cost comes near 1.7e29 dollars.
        Some(c) if c.is_finite() => (c * 1e9).round() as i128,
        _ => 0,
    }
}

/// The counts of the stored tasks, read once at open. Summed in SQL per status; the cost is
/// rounded to nano-dollars per task, as the writer does when it adds one.
fn load_tally(conn: &Connection) -> StoreResult<Tally> {
    let mut st = conn
        .prepare(
            "SELECT status, COUNT(*), TOTAL(ROUND(COALESCE(cost_usd, 0) * 1e9))
             FROM tasks GROUP BY status",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, f64>(2)?,
            ))
        })
        .map_err(db_err)?;
    let mut tally = Tally::default();
    for row in rows {
        let (status, n, nanos) = row.map_err(db_err)?;
        let status = TaskStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown task status {status:?}")))?;
        tally.by_status[Tally::index(status)] += n;
        // TOTAL is a float: exact below 2^53 nano-dollars (about nine million dollars).
        tally.cost_nanos += nanos as i128;
    }
    Ok(tally)
}

/// The writer's health, read by [`Store::ping`] without queueing behind writes.
struct Health {
    /// Why the last batch did not commit; `None` while the last commit succeeded.
    failure: Mutex<Option<String>>,
    /// When the batch in hand started (ms since `epoch`), 0 when idle.
    busy_since_ms: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
    /// Commits made with the fsync since open (tests watch lazy writes become durable).
    durable_commits: std::sync::atomic::AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            failure: Mutex::new(None),
            busy_since_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            durable_commits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 means idle.
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    fn set_busy(&self, busy: bool) {
        let v = if busy { self.now_ms() } else { 0 };
        self.busy_since_ms
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_outcome(&self, failure: Option<&StoreError>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) =
            failure.map(|e| e.to_string());
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn check(&self) -> StoreResult<()> {
        if let Some(f) = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return Err(StoreError::Unavailable(format!(
                "the last write did not commit: {f}"
            )));
        }
        let since = self
            .busy_since_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if since != 0 && self.now_ms().saturating_sub(since) > WEDGED_AFTER.as_millis() as u64 {
            return Err(StoreError::Unavailable(format!(
                "a write has been running for over {} s",
                WEDGED_AFTER.as_secs()
            )));
        }
        Ok(())
    }
}

/// One queued write: run inside the batch, answered after the batch's commit.
trait Command: Send {
    /// Whether the reply must wait for the fsync (see the module docs).
    fn durable(&self) -> bool;
    /// Run; `false` when the command failed (its savepoint is then rolled back).
    fn run(&mut self, w: &mut Writer) -> bool;
    /// Reply: with the command's own result, or `failure` when the batch did not commit.
    fn complete(self: Box<Self>, failure: Option<StoreError>);
}

struct Job<T, F> {
    f: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    durable: bool,
}

impl<T, F> Command for Job<T, F>
where
    T: Send,
    F: FnOnce(&mut Writer) -> StoreResult<T> + Send,
{
    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, w: &mut Writer) -> bool {
        match self.f.take() {
            Some(f) => {
                let r = f(w);
                let ok = r.is_ok();
                self.result = Some(r);
                ok
            }
            None => false,
        }
    }

    fn complete(self: Box<Self>, failure: Option<StoreError>) {
        let out = match (self.result, failure) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(f)) => Err(f),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Unavailable("the write was not run".into())),
        };
        // The caller may have gone away (request cancelled): nothing to tell then.
        let _ = self.reply.send(out);
    }
}

fn writer_main(mut w: Writer, rx: mpsc::Receiver<Box<dyn Command>>) {
    // Whether anything was written since memory was last given back.
    let mut written = false;
    loop {
        let next = if w.health.failed() {
            rx.recv_timeout(PROBE_INTERVAL)
        } else if let Some(since) = w.unsynced_since {
            rx.recv_timeout(LAZY_SYNC_WITHIN.saturating_sub(since.elapsed()))
        } else if written {
            rx.recv_timeout(IDLE_AFTER)
        } else {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        let first = match next {
            Ok(c) => c,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if w.health.failed() || w.unsynced_since.is_some() {
                    durable_touch(&mut w);
                } else {
                    release_memory(&w);
                    written = false;
                }
                continue;
            }
        };
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        run_batch(&mut w, batch);
        written = true;
    }
    // Every sender is gone and every reply sent: fold the WAL back into the database file.
    if let Err(e) = w
        .conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    {
        log::warn!(error:% = e; "WAL checkpoint at shutdown failed");
    }
}

/// A small durable write: to learn whether the disk takes writes again after a failed commit,
/// and to fsync lazy writes no durable commit followed ([`LAZY_SYNC_WITHIN`]).
fn durable_touch(w: &mut Writer) {
    let (reply, _rx) = oneshot::channel::<StoreResult<()>>();
    let job = Job {
        f: Some(|w: &mut Writer| {
            w.conn
                .prepare_cached("UPDATE meta SET value = value WHERE key = 'last_seq'")
                .and_then(|mut st| st.execute([]))
                .map(|_| ())
                .map_err(db_err)
        }),
        result: None,
        reply,
        durable: true,
    };
    run_batch(w, vec![Box::new(job)]);
}

/// Give memory back after a burst: SQLite's page caches (the writer's and the idle readers')
/// and the allocator's free lists. Pages dropped from a cache are read again from the OS page
/// cache when needed, which costs microseconds.
fn release_memory(w: &Writer) {
    if let Err(e) = w.conn.execute_batch("PRAGMA shrink_memory") {
        log::debug!(error:% = e; "shrink_memory on the writer failed");
    }
    let extra = {
        let mut idle = w
            .readers
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for c in idle.iter() {
            if let Err(e) = c.execute_batch("PRAGMA shrink_memory") {
                log::debug!(error:% = e; "shrink_memory on a reader failed");
            }
        }
        // A burst opens up to MAX_READERS connections, each holding about 100 KiB (lookaside,
        // schema, page cache) even when shrunk: one stays open for the next read, the others
        // close and are opened again when reads come at once.
        let keep = idle.len().min(1);
        idle.split_off(keep)
    };
    drop(extra);
    crate::mem::trim_heap();
}

fn run_batch(w: &mut Writer, mut batch: Vec<Box<dyn Command>>) {
    w.health.set_busy(true);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute_batch(w, &mut batch)
    }));
    w.health.set_busy(false);
    let failure = match run {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => {
            rollback(&w.conn);
            Some(StoreError::Unavailable("the storage writer failed".into()))
        }
    };
    w.health.set_outcome(failure.as_ref());
    if let Some(e) = &failure {
        log::error!(error:% = e, commands = batch.len(); "storage batch not committed");
    }
    for c in batch {
        c.complete(failure.clone());
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            log::warn!(error:% = e; "rollback failed");
        }
    }
}

fn execute_batch(w: &mut Writer, batch: &mut [Box<dyn Command>]) -> StoreResult<()> {
    let fail = |w: &Writer, e: rusqlite::Error| {
        rollback(&w.conn);
        StoreError::Unavailable(e.to_string())
    };
    // A batch of lazy writes only commits without the fsync; one durable write makes the whole
    // batch wait for it, and so does an earlier lazy write due for its fsync (a steady stream
    // of lazy writes never lets the writer's own timer fire). Set outside the transaction,
    // where SQLite reads it at commit.
    let overdue = w
        .unsynced_since
        .is_some_and(|since| since.elapsed() >= LAZY_SYNC_WITHIN);
    let full = overdue || batch.iter().any(|c| c.durable());
    if full != w.synchronous_full {
        let sql = if full {
            "PRAGMA synchronous=FULL"
        } else {
            "PRAGMA synchronous=NORMAL"
        };
        w.conn.execute_batch(sql).map_err(db_err)?;
        w.synchronous_full = full;
    }
    w.batch_delta = Tally::default();
    w.conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
    for c in batch.iter_mut() {
        w.conn
            .execute_batch("SAVEPOINT cmd")
            .map_err(|e| fail(w, e))?;
        w.cmd_delta = Tally::default();
        let ok = c.run(w);
        if w.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (disk full, I/O error, ...).
            return Err(StoreError::Unavailable(
                "the storage transaction was aborted".into(),
            ));
        }
        let end = if ok {
            "RELEASE cmd"
        } else {
            "ROLLBACK TO cmd; RELEASE cmd"
        };
        w.conn.execute_batch(end).map_err(|e| fail(w, e))?;
        if ok {
            let delta = std::mem::take(&mut w.cmd_delta);
            w.batch_delta.merge(&delta);
        }
    }
    if w.last_seq > w.saved_seq {
        w.conn
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'last_seq'")
            .and_then(|mut st| st.execute([seq_i64(w.last_seq).unwrap_or(i64::MAX)]))
            .map_err(|e| fail(w, e))?;
    }
    w.conn.execute_batch("COMMIT").map_err(|e| fail(w, e))?;
    w.saved_seq = w.last_seq;
    if full {
        w.unsynced_since = None;
        w.health
            .durable_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else if w.unsynced_since.is_none() {
        w.unsynced_since = Some(Instant::now());
    }
    // Before any reply: a caller that reads the counts after its write sees it counted.
    let delta = std::mem::take(&mut w.batch_delta);
    w.tally
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .merge(&delta);
    Ok(())
}

// ---- write commands (run on the writer thread)

const TASK_INSERT: &str = "INSERT INTO tasks
    (id, seq, status, priority, session_id, owner, created_at, completed_at, cost_usd, doc)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (id) DO NOTHING";
const TASK_UPDATE_LIVE: &str = "UPDATE tasks SET
    status = ?3, priority = ?4, session_id = ?5, owner = ?6, created_at = ?7,
    completed_at = ?8, cost_usd = ?9, doc = ?10
    WHERE id = ?1 AND seq = ?2 AND status IN ('pending', 'processing')";

/// Write `t` with `sql` (one of the two above); returns the number of rows changed.
fn put_task(conn: &Connection, sql: &str, t: &Task) -> StoreResult<usize> {
    let doc = encode("task", t)?;
    let mut st = conn.prepare_cached(sql).map_err(db_err)?;
    st.execute(params![
        t.id.to_string(),
        seq_i64(t.seq)?,
        t.status.as_str(),
        i64::from(t.priority.get()),
        t.session_id.map(|s| s.to_string()),
        t.owner,
        rules::ms(&t.created_at),
        rules::finished_at(t).map(|f| rules::ms(&f)),
        t.cost_usd,
        doc,
    ])
    .map_err(db_err)
}

/// The stored task `id` if its status is one of `live` (a subset of pending/processing).
fn get_live(conn: &Connection, id: TaskId, pending_only: bool) -> StoreResult<Option<Task>> {
    let sql = if pending_only {
        "SELECT doc FROM tasks WHERE id = ?1 AND status = 'pending'"
    } else {
        "SELECT doc FROM tasks WHERE id = ?1 AND status IN ('pending', 'processing')"
    };
    let doc: Option<String> = conn
        .prepare_cached(sql)
        .map_err(db_err)?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    doc.as_deref().map(decode_task).transpose()
}

fn w_insert_task(w: &mut Writer, mut task: Task) -> StoreResult<Task> {
    rules::normalize_task(&mut task);
    task.seq = w.last_seq + 1;
    if put_task(&w.conn, TASK_INSERT, &task)? == 0 {
        return Err(StoreError::Corrupt(format!(
            "task {} already exists",
            task.id
        )));
    }
    w.last_seq = task.seq;
    w.tally_change(None, Some(&task));
    Ok(task)
}

fn w_start_task(w: &mut Writer, id: TaskId, at: DateTime<Utc>) -> StoreResult<Option<Task>> {
    let Some(mut t) = get_live(&w.conn, id, true)? else {
        return Ok(None);
    };
    let old = (t.status, t.cost_usd);
    t.status = TaskStatus::Processing;
    t.started_at = Some(rules::trunc(at));
    t.attempts += 1;
    if put_task(&w.conn, TASK_UPDATE_LIVE, &t)? != 1 {
        return Ok(None);
    }
    w.tally_change(Some(old), Some(&t));
    Ok(Some(t))
}

fn w_finish_task(w: &mut Writer, task: Task) -> StoreResult<bool> {
    let Some(stored) = get_live(&w.conn, task.id, false)? else {
        return Ok(false);
    };
    let merged = rules::merge_final(&stored, &task);
    if put_task(&w.conn, TASK_UPDATE_LIVE, &merged)? != 1 {
        return Ok(false);
    }
    w.tally_change(Some((stored.status, stored.cost_usd)), Some(&merged));
    Ok(true)
}

fn w_set_priority(w: &mut Writer, id: TaskId, priority: Priority) -> StoreResult<bool> {
    let Some(mut t) = get_live(&w.conn, id, true)? else {
        return Ok(false);
    };
    t.priority = priority;
    Ok(put_task(&w.conn, TASK_UPDATE_LIVE, &t)? == 1)
}

fn w_interrupt_processing(w: &mut Writer, at: DateTime<Utc>) -> StoreResult<Vec<TaskId>> {
    let docs: Vec<String> = {
        let mut st = w
            .conn
            .prepare_cached("SELECT doc FROM tasks WHERE status = 'processing' ORDER BY seq")
            .map_err(db_err)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let mut ids = Vec::with_capacity(docs.len());
    for doc in docs {
        let mut t = decode_task(&doc)?;
        let old = (t.status, t.cost_usd);
        rules::interrupt(&mut t, at);
        if put_task(&w.conn, TASK_UPDATE_LIVE, &t)? == 1 {
            w.tally_change(Some(old), Some(&t));
            ids.push(t.id);
        }
    }
    Ok(ids)
}

const SESSION_INSERT: &str = "INSERT INTO sessions
    (id, created_at, updated_at, status, project_path, owner, search, doc)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING";
const SESSION_UPDATE: &str = "UPDATE sessions SET
    created_at = ?2, updated_at = ?3, status = ?4, project_path = ?5, owner = ?6, search = ?7,
    doc = ?8 WHERE id = ?1";

fn w_insert_session(w: &mut Writer, s: &Session) -> StoreResult<()> {
    if put_session(&w.conn, SESSION_INSERT, s)? == 0 {
        return Err(StoreError::Corrupt(format!(
            "session {} already exists",
            s.id
        )));
    }
    Ok(())
}

fn put_session(conn: &Connection, sql: &str, s: &Session) -> StoreResult<usize> {
    let mut s = s.clone();
    rules::normalize_session(&mut s);
    let s = &s;
    let doc = encode("session", s)?;
    let mut st = conn.prepare_cached(sql).map_err(db_err)?;
    st.execute(params![
        s.id.to_string(),
        rules::ms(&s.created_at),
        rules::ms(&s.updated_at),
        rules::session_status_str(s.status),
        s.project_path.to_string_lossy(),
        s.owner,
        rules::session_search_text(s),
        doc,
    ])
    .map_err(db_err)
}

// ---- read queries (run on a reader connection)

fn query_docs(conn: &Connection, sql: &str, args: &[Value]) -> StoreResult<Vec<String>> {
    let mut st = conn.prepare_cached(sql).map_err(db_err)?;
    let rows = st
        .query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

fn query_count(conn: &Connection, sql: &str, args: &[Value]) -> StoreResult<u64> {
    let n: i64 = conn
        .prepare_cached(sql)
        .map_err(db_err)?
        .query_row(params_from_iter(args.iter()), |r| r.get(0))
        .map_err(db_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A page of `table` rows matching `conds`, in `order`, and the number matching; read in one
/// snapshot.
fn page_docs(
    conn: &Connection,
    table: &str,
    conds: &[&str],
    args: Vec<Value>,
    order: &str,
    limit: u32,
    offset: u32,
) -> StoreResult<(Vec<String>, u64)> {
    let wh = where_clause(conds);
    // One read transaction for both statements (unless already inside the writer's).
    let tx = if conn.is_autocommit() {
        Some(conn.unchecked_transaction().map_err(db_err)?)
    } else {
        None
    };
    let mut page_args = args.clone();
    page_args.push(Value::Integer(sql_limit(limit)));
    page_args.push(Value::Integer(i64::from(offset)));
    let docs = query_docs(
        conn,
        &format!("SELECT doc FROM {table}{wh} ORDER BY {order} LIMIT ? OFFSET ?"),
        &page_args,
    )?;
    let total = if offset == 0 && (limit == 0 || docs.len() < limit as usize) {
        docs.len() as u64
    } else {
        query_count(conn, &format!("SELECT COUNT(*) FROM {table}{wh}"), &args)?
    };
    if let Some(tx) = tx {
        tx.finish().map_err(db_err)?;
    }
    Ok((docs, total))
}

fn r_list_tasks(conn: &Connection, f: &TaskFilter) -> StoreResult<(Vec<Task>, u64)> {
    let mut conds = Vec::new();
    let mut args = Vec::new();
    if let Some(s) = f.status {
        conds.push("status = ?");
        args.push(Value::Text(s.as_str().to_owned()));
    }
    if let Some(s) = f.session_id {
        conds.push("session_id = ?");
        args.push(Value::Text(s.to_string()));
    }
    owner_cond(&f.owner, &mut conds, &mut args);
    let order = if f.status == Some(TaskStatus::Pending) {
        "priority DESC, seq ASC"
    } else {
        "seq DESC"
    };
    let (docs, total) = page_docs(conn, "tasks", &conds, args, order, f.limit, f.offset)?;
    let tasks = docs
        .iter()
        .map(|d| decode_task(d))
        .collect::<StoreResult<_>>()?;
    Ok((tasks, total))
}

fn r_get_session(conn: &Connection, id: SessionId) -> StoreResult<Option<Session>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM sessions WHERE id = ?1")
        .map_err(db_err)?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    doc.as_deref().map(decode_session).transpose()
}

fn r_list_sessions(conn: &Connection, f: &SessionFilter) -> StoreResult<(Vec<Session>, u64)> {
    let mut conds = Vec::new();
    let mut args = Vec::new();
    if let Some(s) = f.status {
        conds.push("status = ?");
        args.push(Value::Text(rules::session_status_str(s).to_owned()));
    }
    if let Some(p) = &f.project_path {
        conds.push("project_path = ?");
        args.push(Value::Text(p.clone()));
    }
    owner_cond(&f.owner, &mut conds, &mut args);
    if let Some(q) = &f.query {
        conds.push("instr(search, ?) > 0");
        args.push(Value::Text(rules::query_needle(q)));
    }
    let (docs, total) = page_docs(
        conn,
        "sessions",
        &conds,
        args,
        "created_at DESC, id DESC",
        f.limit,
        f.offset,
    )?;
    let sessions = docs
        .iter()
        .map(|d| decode_session(d))
        .collect::<StoreResult<_>>()?;
    Ok((sessions, total))
}

// ---------------------------------------------------------------------------------------------
// readers

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One per connection: at most [`MAX_READERS`] reads at once.
    permits: Arc<Semaphore>,
}

impl ReadPool {
    fn take(&self) -> StoreResult<Connection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(c) => Ok(c),
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(db_err)?;
                c.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
                Ok(c)
            }
        }
    }

    fn give(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_READERS {
            idle.push(c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// schema

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    let target = schema_version();
    if version > target {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {version}, newer than this build's {target}"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        // The writer's flag, not a command: a health check must not queue behind writes.
        let stopped = self.tx.is_none() || self.writer.as_ref().map_or(true, |h| h.is_finished());
        if stopped {
            return Err(StoreError::Unavailable(
                "the storage writer has stopped".into(),
            ));
        }
        self.health.check()
    }

    async fn insert_task(&self, task: Task) -> StoreResult<Task> {
        self.write(move |w| w_insert_task(w, task)).await
    }

    async fn insert_task_lazily(&self, task: Task) -> StoreResult<Task> {
        self.write_lazily(move |w| w_insert_task(w, task)).await
    }

    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>> {
        self.read_point(move |c| {
            let doc: Option<String> = c
                .prepare_cached("SELECT doc FROM tasks WHERE id = ?1")
                .map_err(db_err)?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            doc.as_deref().map(decode_task).transpose()
        })
        .await
    }

    async fn start_task(&self, id: TaskId, at: DateTime<Utc>) -> StoreResult<Option<Task>> {
        // Lazy: losing it to a power cut only means the task runs again (module docs).
        self.write_lazily(move |w| w_start_task(w, id, at)).await
    }

    async fn finish_task(&self, task: &Task) -> StoreResult<bool> {
        self.write_final(task, true).await
    }

    async fn finish_task_lazily(&self, task: &Task) -> StoreResult<bool> {
        // Lazy: a sync run's answer carries its result (module docs).
        self.write_final(task, false).await
    }

    async fn set_priority(&self, id: TaskId, priority: Priority) -> StoreResult<bool> {
        self.write(move |w| w_set_priority(w, id, priority)).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<(Vec<Task>, u64)> {
        let filter = filter.clone();
        self.read(move |c| r_list_tasks(c, &filter)).await
    }

    async fn pending_tasks(&self) -> StoreResult<Vec<Task>> {
        self.read(|c| {
            query_docs(
                c,
                "SELECT doc FROM tasks WHERE status = 'pending' ORDER BY priority DESC, seq ASC",
                &[],
            )?
            .iter()
            .map(|d| decode_task(d))
            .collect()
        })
        .await
    }

    async fn interrupt_processing(&self, at: DateTime<Utc>) -> StoreResult<Vec<TaskId>> {
        self.write(move |w| w_interrupt_processing(w, at)).await
    }

    async fn task_counts(&self) -> StoreResult<TaskCounts> {
        Ok(self
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counts())
    }

    async fn delete_tasks_finished_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let cut = rules::ms(&before);
        self.write(move |w| {
            let gone: Vec<(String, Option<f64>, String)> = {
                let mut st = w
                    .conn
                    .prepare_cached(
                        "DELETE FROM tasks WHERE completed_at < ?1
                         AND status NOT IN ('pending', 'processing')
                         RETURNING status, cost_usd, id",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map([cut], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?))
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<(String, Option<f64>, String)>, _>>()
                    .map_err(db_err)?
            };
            {
                let mut st = w
                    .conn
                    .prepare_cached("DELETE FROM approvals WHERE task_id = ?1")
                    .map_err(db_err)?;
                for (_, _, id) in &gone {
                    st.execute([id]).map_err(db_err)?;
                }
            }
            for (status, cost, _) in &gone {
                let status = TaskStatus::parse(status).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown task status {status:?}"))
                })?;
                w.tally_change(Some((status, *cost)), None);
            }
            Ok(gone.len() as u64)
        })
        .await
    }

    async fn insert_approval(&self, approval: &Approval) -> StoreResult<()> {
        let a = approval.clone();
        let doc = encode("approval", &a)?;
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO approvals (task_id, id, owner, status, requested_at, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (task_id, id) DO UPDATE SET
                        owner = excluded.owner, status = excluded.status,
                        requested_at = excluded.requested_at, doc = excluded.doc",
                )
                .map_err(db_err)?
                .execute(params![
                    a.task_id.to_string(),
                    a.id.to_string(),
                    a.owner,
                    a.status().as_str(),
                    rules::ms(&a.requested_at),
                    doc
                ])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn task_approvals(&self, task: TaskId) -> StoreResult<Vec<Approval>> {
        self.read(move |c| {
            query_docs(
                c,
                "SELECT doc FROM approvals WHERE task_id = ? ORDER BY requested_at, id",
                &[Value::Text(task.to_string())],
            )?
            .iter()
            .map(|d| decode_doc("approval", d))
            .collect()
        })
        .await
    }

    async fn list_approvals(&self, filter: &ApprovalFilter) -> StoreResult<Vec<Approval>> {
        let f = filter.clone();
        self.read(move |c| {
            let mut conds: Vec<&str> = Vec::new();
            let mut args: Vec<Value> = Vec::new();
            if let Some(s) = f.status {
                conds.push("status = ?");
                args.push(Value::Text(s.as_str().to_string()));
            }
            match &f.owner {
                Some(Some(o)) => {
                    conds.push("owner = ?");
                    args.push(Value::Text(o.clone()));
                }
                Some(None) => conds.push("owner IS NULL"),
                None => {}
            }
            args.push(Value::Integer(sql_limit(f.limit)));
            let sql = format!(
                "SELECT doc FROM approvals{} ORDER BY requested_at, id LIMIT ?",
                where_clause(&conds)
            );
            query_docs(c, &sql, &args)?
                .iter()
                .map(|d| decode_doc("approval", d))
                .collect()
        })
        .await
    }

    async fn decide_approval(
        &self,
        task: TaskId,
        id: ApprovalId,
        state: ApprovalState,
    ) -> StoreResult<Decided> {
        self.write(move |w| {
            let docs = query_docs(
                &w.conn,
                "SELECT doc FROM approvals WHERE task_id = ?1 AND id = ?2",
                &[Value::Text(task.to_string()), Value::Text(id.to_string())],
            )?;
            let Some(doc) = docs.first() else {
                return Ok(Decided::Missing);
            };
            let mut a: Approval = decode_doc("approval", doc)?;
            if !apply_decision(&mut a, state) {
                return Ok(Decided::Already(a));
            }
            let doc = encode("approval", &a)?;
            w.conn
                .prepare_cached(
                    "UPDATE approvals SET status = ?3, doc = ?4 WHERE task_id = ?1 AND id = ?2",
                )
                .map_err(db_err)?
                .execute(params![
                    task.to_string(),
                    id.to_string(),
                    a.status().as_str(),
                    doc
                ])
                .map_err(db_err)?;
            Ok(Decided::Now(a))
        })
        .await
    }

    async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        let s = session.clone();
        self.write(move |w| w_insert_session(w, &s)).await
    }

    async fn insert_session_lazily(&self, session: &Session) -> StoreResult<()> {
        let s = session.clone();
        self.write_lazily(move |w| w_insert_session(w, &s)).await
    }

    async fn get_session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        self.read_point(move |c| r_get_session(c, id)).await
    }

    async fn update_session(&self, session: &Session) -> StoreResult<bool> {
        let s = session.clone();
        self.write(move |w| Ok(put_session(&w.conn, SESSION_UPDATE, &s)? == 1))
            .await
    }

    async fn update_session_lazily(&self, session: &Session) -> StoreResult<bool> {
        let s = session.clone();
        self.write_lazily(move |w| Ok(put_session(&w.conn, SESSION_UPDATE, &s)? == 1))
            .await
    }

    async fn modify_session(
        &self,
        id: SessionId,
        lazily: bool,
        change: SessionChange,
    ) -> StoreResult<Option<Session>> {
        let modify = move |w: &mut Writer| {
            let Some(mut session) = r_get_session(&w.conn, id)? else {
                return Ok(None);
            };
            change(&mut session);
            let written = put_session(&w.conn, SESSION_UPDATE, &session)? == 1;
            Ok(written.then_some(session))
        };
        if lazily {
            self.write_lazily(modify).await
        } else {
            self.write(modify).await
        }
    }

    async fn delete_session(&self, id: SessionId) -> StoreResult<bool> {
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM sessions WHERE id = ?1")
                .map_err(db_err)?
                .execute([id.to_string()])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> StoreResult<(Vec<Session>, u64)> {
        let filter = filter.clone();
        self.read(move |c| r_list_sessions(c, &filter)).await
    }

    async fn delete_sessions_idle_since(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let cut = rules::ms(&before);
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM sessions WHERE updated_at < ?1")
                .map_err(db_err)?
                .execute([cut])
                .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<serde_json::Value>> {
        let key = key.to_string();
        let doc = encode("idempotency claim", value)?;
        let (now_ms, until_ms) = (now.timestamp_millis(), expires_at.timestamp_millis());
        // One writer command: the check and the claim cannot interleave with another claim.
        self.write(move |w| {
            let existing: Option<(String, i64)> = w
                .conn
                .prepare_cached("SELECT value, expires_at FROM idempotency WHERE key = ?1")
                .map_err(db_err)?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(db_err)?;
            if let Some((text, until)) = existing {
                if until > now_ms {
                    let v = serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("idempotency claim: {e}")))?;
                    return Ok(Some(v));
                }
            }
            w.conn
                .prepare_cached("DELETE FROM idempotency WHERE expires_at <= ?1")
                .map_err(db_err)?
                .execute(params![now_ms])
                .map_err(db_err)?;
            w.conn
                .prepare_cached(
                    "INSERT INTO idempotency (key, value, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                )
                .map_err(db_err)?
                .execute(params![key, doc, until_ms])
                .map_err(db_err)?;
            Ok(None)
        })
        .await
    }

    async fn release_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<bool> {
        let key = key.to_string();
        // The stored text is this encoding of the value (serde_json writes a value's keys in
        // one order), so comparing the text compares the values.
        let doc = encode("idempotency claim", value)?;
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM idempotency WHERE key = ?1 AND value = ?2")
                .map_err(db_err)?
                .execute(params![key, doc])
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn save_stats_day(&self, day: NaiveDate, doc: &serde_json::Value) -> StoreResult<()> {
        let doc = encode("statistics", doc)?;
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO stats_days (day, doc) VALUES (?1, ?2)
                     ON CONFLICT (day) DO UPDATE SET doc = excluded.doc",
                )
                .map_err(db_err)?
                .execute(params![day_text(day), doc])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn load_stats_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<(NaiveDate, serde_json::Value)>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT day, doc FROM stats_days WHERE day >= ?1 AND day <= ?2 ORDER BY day",
                )
                .map_err(db_err)?;
            let rows = st
                .query_map([day_text(from), day_text(to)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (day, doc) = row.map_err(db_err)?;
                let day = NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                    .map_err(|e| StoreError::Corrupt(format!("stored day {day:?}: {e}")))?;
                let doc = serde_json::from_str(&doc)
                    .map_err(|e| StoreError::Corrupt(format!("stored statistics: {e}")))?;
                out.push((day, doc));
            }
            Ok(out)
        })
        .await
    }

    async fn prune_stats_before(&self, day: NaiveDate) -> StoreResult<u64> {
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM stats_days WHERE day < ?1")
                .map_err(db_err)?
                .execute([day_text(day)])
                .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn save_webhook_job(&self, job: &WebhookJob) -> StoreResult<()> {
        let mut job = job.clone();
        rules::normalize_webhook_job(&mut job);
        let doc = encode("webhook delivery", &job)?;
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO webhook_jobs (webhook_id, task_id, created_at, doc)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (webhook_id) DO UPDATE SET
                        task_id = excluded.task_id, created_at = excluded.created_at,
                        doc = excluded.doc",
                )
                .map_err(db_err)?
                .execute(params![
                    job.webhook_id,
                    job.task_id.to_string(),
                    rules::ms(&job.created_at),
                    doc
                ])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_webhook_job(&self, webhook_id: &str) -> StoreResult<bool> {
        let id = webhook_id.to_owned();
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM webhook_jobs WHERE webhook_id = ?1")
                .map_err(db_err)?
                .execute([id])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn pending_webhook_jobs(&self) -> StoreResult<Vec<WebhookJob>> {
        self.read(|c| {
            query_docs(
                c,
                "SELECT doc FROM webhook_jobs ORDER BY created_at, webhook_id",
                &[],
            )?
            .iter()
            .map(|d| decode_doc("webhook delivery", d))
            .collect()
        })
        .await
    }

    async fn claim_webhook_job(
        &self,
        webhook_id: &str,
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> StoreResult<Option<WebhookJob>> {
        // One process owns the database file: nobody else could hold a claim.
        let id = webhook_id.to_string();
        self.read(move |c| {
            query_docs(
                c,
                "SELECT doc FROM webhook_jobs WHERE webhook_id = ?1",
                &[Value::from(id)],
            )?
            .first()
            .map(|d| decode_doc("webhook delivery", d))
            .transpose()
        })
        .await
    }

    async fn release_webhook_job(&self, _webhook_id: &str, _owner: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> StoreResult<()> {
        let mut attempt = attempt.clone();
        rules::normalize_webhook_attempt(&mut attempt);
        let doc = encode("webhook attempt", &attempt)?;
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO webhook_attempts (task_id, at, doc) VALUES (?1, ?2, ?3)",
                )
                .map_err(db_err)?
                .execute(params![
                    attempt.task_id.to_string(),
                    rules::ms(&attempt.at),
                    doc
                ])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn webhook_attempts(&self, task_id: TaskId) -> StoreResult<Vec<WebhookAttempt>> {
        self.read(move |c| {
            query_docs(
                c,
                "SELECT doc FROM webhook_attempts WHERE task_id = ? ORDER BY id",
                &[Value::Text(task_id.to_string())],
            )?
            .iter()
            .map(|d| decode_doc("webhook attempt", d))
            .collect()
        })
        .await
    }

    async fn prune_webhook_attempts_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let cut = rules::ms(&before);
        self.write(move |w| {
            let n = w
                .conn
                .prepare_cached("DELETE FROM webhook_attempts WHERE at < ?1")
                .map_err(db_err)?
                .execute([cut])
                .map_err(db_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::store::conformance::fixtures::{at, finished, prio, session, task};

    fn raw(path: &Path) -> Connection {
        Connection::open(path).expect("raw connection")
    }

    #[tokio::test]
    async fn data_survives_reopening_and_seq_continues() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.db");
        let (a, b, c, s1, max_seq);
        {
            let store = SqliteStore::open(&path).expect("open");
            a = store.insert_task(task(3)).await.expect("insert");
            b = store.insert_task(task(8)).await.expect("insert");
            c = store.insert_task(task(5)).await.expect("insert");
            store.start_task(c.id, at(5)).await.expect("start");
            let done = finished(&a, TaskStatus::Cancelled, 0.5, 9);
            assert!(store.finish_task(&done).await.expect("finish"));
            // The newest task is deleted, so max(seq) must not come from a count.
            let d = store.insert_task(task(1)).await.expect("insert");
            let gone = finished(&d, TaskStatus::Cancelled, 0.0, 1);
            store.finish_task(&gone).await.expect("finish");
            max_seq = d.seq;
            assert_eq!(
                store
                    .delete_tasks_finished_before(at(2))
                    .await
                    .expect("delete"),
                1
            );
            s1 = session(0);
            store.insert_session(&s1).await.expect("session");
            store
                .save_stats_day(
                    NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
                    &serde_json::json!({"runs": 1}),
                )
                .await
                .expect("stats");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            store.get_task(a.id).await.expect("get").map(|t| t.status),
            Some(TaskStatus::Cancelled)
        );
        assert_eq!(store.get_task(b.id).await.expect("get"), Some(b.clone()));
        let pending = store.pending_tasks().await.expect("pending");
        assert_eq!(pending.iter().map(|t| t.id).collect::<Vec<_>>(), vec![b.id]);
        assert_eq!(
            store.interrupt_processing(at(10)).await.expect("interrupt"),
            vec![c.id]
        );
        assert_eq!(store.get_session(s1.id).await.expect("get"), Some(s1));
        assert_eq!(
            store
                .load_stats_days(
                    NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
                    NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")
                )
                .await
                .expect("stats")
                .len(),
            1
        );
        let e = store.insert_task(task(5)).await.expect("insert");
        assert!(e.seq > max_seq, "seq {} after {max_seq}", e.seq);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_all_land_with_distinct_seqs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let mut handles = Vec::new();
        for i in 0..50 {
            let store = Arc::clone(&store);
            handles.push(tokio::spawn(async move {
                store.insert_task(task(1 + i % 10)).await
            }));
        }
        let mut seqs = std::collections::HashSet::new();
        let mut ids = Vec::new();
        for h in handles {
            let t = h.await.expect("join").expect("insert");
            assert!(seqs.insert(t.seq), "duplicate seq {}", t.seq);
            ids.push(t.id);
        }
        let counts = store.task_counts().await.expect("counts");
        assert_eq!(counts.get(TaskStatus::Pending), 50);
        for id in ids {
            let got = store.get_task(id).await.expect("get").expect("present");
            assert!(seqs.contains(&got.seq));
        }
    }

    #[tokio::test]
    async fn going_quiet_closes_the_idle_readers_but_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        // As after a burst of reads: several connections open and idle.
        let conns: Vec<Connection> = (0..MAX_READERS)
            .map(|_| store.readers.take().expect("reader"))
            .collect();
        for c in conns {
            store.readers.give(c);
        }
        let idle = || store.readers.idle.lock().map(|v| v.len()).unwrap_or(0);
        assert_eq!(idle(), MAX_READERS);
        let t = store.insert_task(task(5)).await.expect("insert");
        let deadline = Instant::now() + IDLE_AFTER * 20;
        while idle() > 1 {
            assert!(Instant::now() < deadline, "{} idle readers left", idle());
            tokio::time::sleep(IDLE_AFTER / 10).await;
        }
        assert_eq!(idle(), 1, "one reader stays open");
        assert_eq!(store.get_task(t.id).await.expect("get"), Some(t));
    }

    #[tokio::test]
    async fn an_answered_insert_is_visible_to_a_fresh_connection() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).expect("open");
        for _ in 0..5 {
            let t = store.insert_task(task(5)).await.expect("insert");
            let conn = raw(&path);
            let doc: String = conn
                .query_row(
                    "SELECT doc FROM tasks WHERE id = ?1",
                    [t.id.to_string()],
                    |r| r.get(0),
                )
                .expect("row is on disk");
            assert_eq!(decode_task(&doc).expect("decode"), t);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_command_does_not_sink_its_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        let dup = store.insert_task(task(5)).await.expect("insert");
        let mut handles = Vec::new();
        for i in 0..40 {
            let store = Arc::clone(&store);
            let t = if i % 4 == 0 { dup.clone() } else { task(5) };
            handles.push(tokio::spawn(async move { store.insert_task(t).await }));
        }
        let mut ok = 0;
        for h in handles {
            match h.await.expect("join") {
                Ok(_) => ok += 1,
                Err(e) => assert!(matches!(e, StoreError::Corrupt(_)), "{e}"),
            }
        }
        assert_eq!(ok, 30);
        assert_eq!(store.task_counts().await.expect("counts").total(), 31);
        assert_eq!(store.get_task(dup.id).await.expect("get"), Some(dup));
    }

    /// The writer's counts against the table itself, after every kind of change (and a
    /// command rolled back alone, and a reopen).
    #[tokio::test]
    async fn kept_counts_match_the_table_after_every_kind_of_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let check = |store: &SqliteStore, path: &Path, what: &str| {
            let kept = store.tally.lock().expect("tally").counts();
            let counted = load_tally(&raw(path)).expect("count").counts();
            assert_eq!(kept.by_status, counted.by_status, "{what}");
            assert!(
                (kept.total_cost_usd - counted.total_cost_usd).abs() < 1e-9,
                "{what}: kept {} counted {}",
                kept.total_cost_usd,
                counted.total_cost_usd
            );
        };
        {
            let store = SqliteStore::open(&path).expect("open");
            let mut ids = Vec::new();
            for _ in 0..8 {
                ids.push(store.insert_task(task(5)).await.expect("insert"));
            }
            check(&store, &path, "inserted");
            // A duplicate insert fails alone: it must not be counted.
            assert!(store.insert_task(ids[0].clone()).await.is_err());
            check(&store, &path, "duplicate refused");
            for t in &ids[..6] {
                store.start_task(t.id, at(1)).await.expect("start");
            }
            check(&store, &path, "started");
            let costs = [0.1, 0.2, 0.000255, 1.0 / 3.0];
            for (i, t) in ids[..4].iter().enumerate() {
                let status = if i % 2 == 0 {
                    TaskStatus::Completed
                } else {
                    TaskStatus::Failed
                };
                assert!(store
                    .finish_task(&finished(t, status, costs[i], 10 + i as i64))
                    .await
                    .expect("finish"));
            }
            // A second final write loses and changes nothing.
            assert!(!store
                .finish_task(&finished(&ids[0], TaskStatus::Cancelled, 9.0, 50))
                .await
                .expect("finish again"));
            check(&store, &path, "finished");
            // Cancel a pending one.
            assert!(store
                .finish_task(&finished(&ids[7], TaskStatus::Cancelled, 0.0, 60))
                .await
                .expect("cancel"));
            store.interrupt_processing(at(70)).await.expect("interrupt");
            check(&store, &path, "interrupted");
            assert_eq!(
                store
                    .delete_tasks_finished_before(at(12))
                    .await
                    .expect("delete"),
                2
            );
            check(&store, &path, "deleted");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        check(&store, &path, "reopened");
        let c = store.task_counts().await.expect("counts");
        assert_eq!(c.total(), 6);
        assert_eq!(c.get(TaskStatus::Pending), 1);
    }

    #[tokio::test]
    async fn lazy_writes_are_fsynced_soon_with_or_without_later_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        let fsyncs = || {
            store
                .health
                .durable_commits
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let wait_for_fsync = |before: u64| async move {
            let deadline = Instant::now() + LAZY_SYNC_WITHIN * 50;
            while fsyncs() <= before {
                assert!(Instant::now() < deadline, "a lazy write was never fsync'd");
                tokio::time::sleep(LAZY_SYNC_WITHIN / 10).await;
            }
        };
        // A lazy write, then nothing: the writer's own timer makes it durable.
        let before = fsyncs();
        store
            .insert_session_lazily(&session(1))
            .await
            .expect("insert");
        assert_eq!(fsyncs(), before, "the lazy write waited for an fsync");
        wait_for_fsync(before).await;
        // A steady stream of lazy writes is fsync'd too, not only once it stops.
        let before = fsyncs();
        let start = Instant::now();
        let mut n = 2;
        while fsyncs() <= before {
            assert!(
                start.elapsed() < LAZY_SYNC_WITHIN * 50,
                "a stream of lazy writes was never fsync'd"
            );
            store
                .insert_session_lazily(&session(n))
                .await
                .expect("insert");
            n += 1;
        }
    }

    #[tokio::test]
    async fn lazy_writes_skip_the_fsync_and_durable_ones_do_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).expect("open");
        let synchronous = |w: &mut Writer| -> StoreResult<i64> {
            w.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .map_err(db_err)
        };
        // 1 = NORMAL (WAL written, no fsync at commit), 2 = FULL.
        assert_eq!(store.write_lazily(synchronous).await.expect("lazy"), 1);
        assert_eq!(store.write(synchronous).await.expect("durable"), 2);
        // A lazy write is committed when answered: a fresh connection sees it.
        let s = session(1);
        store.insert_session_lazily(&s).await.expect("insert");
        let n: i64 = raw(&path)
            .query_row(
                "SELECT COUNT(*) FROM sessions WHERE id = ?1",
                [s.id.to_string()],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 1);
        let mut changed = s.clone();
        changed.messages_count = 3;
        assert!(store.update_session_lazily(&changed).await.expect("update"));
        assert_eq!(
            store.get_session(s.id).await.expect("get"),
            Some({
                let mut c = changed.clone();
                rules::normalize_session(&mut c);
                c
            })
        );
        // A sync run's lazily inserted task is committed and gets its seq like any other.
        let first = store.insert_task(task(5)).await.expect("insert");
        let lazy = store.insert_task_lazily(task(5)).await.expect("insert");
        assert!(lazy.seq > first.seq);
        let n: i64 = raw(&path)
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE id = ?1",
                [lazy.id.to_string()],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn ping_reports_a_failed_commit_at_once_and_recovers_with_the_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("open");
        store.ping().await.expect("healthy at start");
        // A command that ends the transaction under the writer: the batch cannot commit.
        let r = store
            .write(|w| w.conn.execute_batch("ROLLBACK").map_err(db_err))
            .await;
        assert!(r.is_err(), "the aborted batch was answered as committed");
        let e = store
            .ping()
            .await
            .expect_err("unhealthy after a failed commit");
        assert!(e.to_string().contains("did not commit"), "{e}");
        // The writer probes while idle; the disk is fine, so health comes back by itself.
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.ping().await.is_err() {
            assert!(Instant::now() < deadline, "ping never recovered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.insert_task(task(5)).await.expect("writes work again");
    }

    #[tokio::test]
    async fn ping_does_not_wait_for_queued_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("open"));
        // Hold the writer in a command until the ping has answered.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let blocked = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .write(move |_| {
                        let _ = entered_tx.send(());
                        let _ = release_rx.recv_timeout(Duration::from_secs(30));
                        Ok(())
                    })
                    .await
            })
        };
        entered_rx
            .await
            .expect("the writer runs the blocking command");
        tokio::time::timeout(Duration::from_secs(5), store.ping())
            .await
            .expect("ping waited for the writer")
            .expect("healthy");
        release_tx.send(()).expect("release");
        blocked.await.expect("join").expect("write");
    }

    #[tokio::test]
    async fn schema_is_versioned_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path).expect("open"));
        let v: i64 = raw(&path)
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, schema_version());
        let mode: String = raw(&path)
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        drop(SqliteStore::open(&path).expect("reopen at the same version"));
        raw(&path)
            .pragma_update(None, "user_version", schema_version() + 1)
            .expect("bump");
        assert!(matches!(
            SqliteStore::open(&path).err(),
            Some(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn unreadable_records_are_corrupt_not_panics() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).expect("open");
        let t = store.insert_task(task(5)).await.expect("insert");
        let s = session(0);
        store.insert_session(&s).await.expect("insert");
        let conn = raw(&path);
        conn.execute(
            "UPDATE tasks SET doc = '{\"id\": 1' WHERE id = ?1",
            [t.id.to_string()],
        )
        .expect("break task");
        conn.execute("UPDATE sessions SET doc = 'null'", [])
            .expect("break session");
        conn.execute(
            "INSERT INTO stats_days (day, doc) VALUES ('2026-13-45', '{}')",
            [],
        )
        .expect("break stats");
        drop(conn);
        assert!(matches!(
            store.get_task(t.id).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.pending_tasks().await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.start_task(t.id, at(1)).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            store.get_session(s.id).await,
            Err(StoreError::Corrupt(_))
        ));
        let d = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date");
        let far = NaiveDate::from_ymd_opt(9999, 1, 1).expect("date");
        assert!(matches!(
            store.load_stats_days(d, far).await,
            Err(StoreError::Corrupt(_))
        ));
        // The store keeps serving everything else.
        let other = store.insert_task(task(5)).await.expect("insert");
        assert!(store.get_task(other.id).await.expect("get").is_some());
        store.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn reads_through_the_writer_work_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_with(&dir.path().join("s.db"), true).expect("open");
        let t = store.insert_task(task(5)).await.expect("insert");
        assert!(store.set_priority(t.id, prio(9)).await.expect("set"));
        let (list, total) = store
            .list_tasks(&crate::store::TaskFilter::default())
            .await
            .expect("list");
        assert_eq!((list.len(), total), (1, 1));
    }

    #[test]
    fn list_queries_use_indexes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.db");
        drop(SqliteStore::open(&path).expect("open"));
        let conn = raw(&path);
        for q in [
            "SELECT status, COUNT(*), TOTAL(cost_usd) FROM tasks GROUP BY status",
            "SELECT doc FROM tasks WHERE status = ? ORDER BY priority DESC, seq ASC LIMIT ? OFFSET ?",
            "SELECT doc FROM tasks WHERE status = 'pending' ORDER BY priority DESC, seq ASC",
            "SELECT doc FROM tasks WHERE status = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM tasks ORDER BY seq DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM tasks WHERE session_id = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM tasks WHERE owner = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM tasks WHERE owner IS NULL ORDER BY seq DESC LIMIT ? OFFSET ?",
            "SELECT COUNT(*) FROM tasks WHERE status = ?",
            "DELETE FROM tasks WHERE completed_at < ?1 AND status NOT IN ('pending', 'processing')",
            "SELECT doc FROM sessions ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM sessions WHERE status = ? ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM sessions WHERE project_path = ? ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            "SELECT doc FROM sessions WHERE owner = ? ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            "DELETE FROM sessions WHERE updated_at < ?1",
            "SELECT doc FROM webhook_jobs ORDER BY created_at, webhook_id",
            "SELECT doc FROM webhook_attempts WHERE task_id = ? ORDER BY id",
            "DELETE FROM webhook_attempts WHERE at < ?1",
        ] {
            let mut st = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
                .expect("prepare");
            let n = st.parameter_count();
            let plan: Vec<String> = st
                .query_map(params_from_iter(vec![Value::Null; n]), |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("rows");
            let plan = plan.join(" | ");
            assert!(plan.contains("INDEX"), "{q}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{q}: {plan}");
        }
    }

    /// Throughput of the write path and latency of the read paths, on the machine at hand:
    /// `cargo test -p actors --release store::sqlite::tests::bench -- --ignored --nocapture`.
    /// Figures taken are in the module documentation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn bench_concurrent_inserts() {
        const N: usize = 10_000;
        for reads_on_writer in [false, true] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(
                SqliteStore::open_with(&dir.path().join("b.db"), reads_on_writer).expect("open"),
            );

            let t0 = Instant::now();
            let mut handles = Vec::with_capacity(N);
            for i in 0..N {
                let store = Arc::clone(&store);
                handles.push(tokio::spawn(async move {
                    store.insert_task(task(1 + (i % 10) as i64)).await
                }));
            }
            let mut ids = Vec::with_capacity(N);
            for h in handles {
                ids.push(h.await.expect("join").expect("insert").id);
            }
            let insert_secs = t0.elapsed().as_secs_f64();

            let t0 = Instant::now();
            for _ in 0..20 {
                store.insert_task(task(5)).await.expect("insert");
            }
            let serial_ms = t0.elapsed().as_secs_f64() * 1000.0 / 20.0;

            // Reads while a stream of writes (8 writers) keeps the writer thread busy.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut load = Vec::new();
            for _ in 0..8 {
                let store = Arc::clone(&store);
                let stop = Arc::clone(&stop);
                load.push(tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = store.insert_task(task(5)).await;
                    }
                }));
            }
            let t0 = Instant::now();
            let mut reads = Vec::new();
            for id in ids.iter().take(2_000) {
                let store = Arc::clone(&store);
                let id = *id;
                reads.push(tokio::spawn(async move { store.get_task(id).await }));
            }
            for r in reads {
                r.await.expect("join").expect("get").expect("present");
            }
            let read_secs = t0.elapsed().as_secs_f64();
            let mut lat = Vec::new();
            for id in ids.iter().take(500) {
                let t0 = Instant::now();
                store.get_task(*id).await.expect("get").expect("present");
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(f64::total_cmp);
            let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for l in load {
                l.await.expect("join");
            }

            let t0 = Instant::now();
            let f = crate::store::TaskFilter {
                status: Some(TaskStatus::Pending),
                limit: 50,
                offset: 0,
                ..Default::default()
            };
            for _ in 0..20 {
                store.list_tasks(&f).await.expect("list");
            }
            let page_ms = t0.elapsed().as_secs_f64() * 1000.0 / 20.0;
            let t0 = Instant::now();
            store.task_counts().await.expect("counts");
            let counts_ms = t0.elapsed().as_secs_f64() * 1000.0;

            println!(
                "reads_on_writer={reads_on_writer}: {N} concurrent inserts in {insert_secs:.2}s = \
                 {:.0} inserts/s; one insert alone {serial_ms:.2} ms; \
                 under write load: 2000 concurrent get_task {:.0} reads/s, \
                 one get_task p50 {p50:.3} ms p99 {p99:.3} ms; \
                 pending page of 50 (of {N}+) {page_ms:.2} ms; task_counts {counts_ms:.2} ms",
                N as f64 / insert_secs,
                2000.0 / read_secs,
            );
        }
    }
}
