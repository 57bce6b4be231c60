//! Portable sessions: the CLI keeps a session's transcript on the disk of the instance that ran
//! the turn (`$CLAUDE_CONFIG_DIR/projects/<encoded cwd>/<id>.jsonl`, see
//! [`transcript`](crate::claude::transcript)); this module makes it travel through Redis so
//! that the next turn can run on any instance.
//!
//! * After every turn of a session (whatever its outcome, as long as the file exists) the
//!   file is stored in the hash `<ns>:tr:<session id>`: `data` (the bytes), `sha` (SHA-256 of
//!   the whole file, hex), `len` (bytes), `by` (the instance that stored it) and `at` (ms). The
//!   worker stores it in the script that writes the turn's final record
//!   ([`TurnTranscript::to_store`], `RedisStore::finish_leased`), so the next turn, which that
//!   record lets in, finds it; [`TurnTranscript::after_turn`] stores it alone otherwise.
//! * Before a turn that creates, resumes or forks a session, the local file (the source's, for
//!   a fork) is compared with the stored copy ([`freshness`]) and replaced, atomically, when it
//!   is missing or stale.
//! * `GET /api/sessions/:id/messages` reads the fresher of the two ([`read`]).
//! * The stored copy goes with its session: the Redis store's `DELETE_SESSION` and
//!   `DELETE_IDLE_SESSIONS` scripts delete `tr:<id>` together with `s:<id>`, and a save is
//!   refused once the session record is gone, so a late save cannot bring it back.
//!
//! A transcript over [`MAX_TRANSCRIPT_BYTES`] is stored without `data` (its `sha` and `len`
//! only): the instance holding it goes on, and a turn elsewhere fails with a message that
//! says so rather than run without the history.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::redis::RedisError;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Cluster;
use crate::claude::{transcript, StopReason};
use crate::config::Config;
use crate::error::ErrorCode;
use crate::model::{RunOutcome, RunSpec, SessionId, SessionMode, TaskError, TaskStatus};
use crate::store::redis::TranscriptWrite;
use crate::store::StoreError;

/// The largest transcript that travels through Redis. Every turn uploads the whole file, and a
/// Redis value is held in the server's memory, so the bound keeps one session from costing
/// Redis (and each turn) without limit; 64 MiB is far beyond an ordinary conversation.
pub const MAX_TRANSCRIPT_BYTES: usize = 64 * 1024 * 1024;

/// How long a restore waits for an unreachable Redis before it fails the turn.
const RESTORE_PATIENCE: Duration = Duration::from_secs(10);
/// How long a save waits for an unreachable Redis. As long as the task's own final write
/// waits: with Redis storage that write needs the same server, so waiting here delays nothing,
/// and a save that gives up leaves the other instances an older copy.
const SAVE_PATIENCE: Duration = Duration::from_secs(300);
/// Attempts for an error that is not an outage (Redis refused the command), or once the run
/// is being stopped.
const FEW_TRIES: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Reads before a restore gives up on a stored copy that keeps changing under it (only a turn
/// running elsewhere at the same time could do that; turns of a session are serialised).
const READ_TRIES: u32 = 3;

/// What Redis holds of a transcript, without the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// SHA-256 of the whole file, lowercase hex.
    pub sha: String,
    pub len: u64,
    /// False when the file was over [`MAX_TRANSCRIPT_BYTES`]: only `sha` and `len` are stored.
    pub has_data: bool,
    /// The instance that stored it.
    pub by: String,
}

/// How the local transcript compares with the stored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Redis has nothing (a first turn, or a session from before transcripts travelled): the
    /// local file, if any, is all there is.
    NothingStored,
    /// The local file is the stored copy.
    UpToDate,
    /// The local file is the stored copy plus more records. Kept: the CLI only appends, so this
    /// is a turn of this instance whose save did not reach Redis (an outage, a save refused),
    /// and replacing it would throw that turn away. The save after this turn uploads it.
    LocalNewer,
    /// No local file: restore.
    Missing,
    /// The local file is older than the stored copy, or has diverged from it (turns ran on
    /// other instances since): restore, Redis holds the session's history of record.
    Stale,
}

impl Freshness {
    pub fn needs_restore(self) -> bool {
        matches!(self, Freshness::Missing | Freshness::Stale)
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Compare the local file's content (`None`: no file) with the stored copy. A local file is
/// newer only when it starts with exactly the stored bytes (same hash over the stored length):
/// anything else that differs is stale.
pub fn freshness(local: Option<&[u8]>, stored: Option<&Stored>) -> Freshness {
    let Some(stored) = stored else {
        return Freshness::NothingStored;
    };
    let Some(local) = local else {
        return Freshness::Missing;
    };
    let Ok(stored_len) = usize::try_from(stored.len) else {
        return Freshness::Stale;
    };
    if local.len() == stored_len && sha256_hex(local) == stored.sha {
        Freshness::UpToDate
    } else if local.len() > stored_len && sha256_hex(&local[..stored_len]) == stored.sha {
        Freshness::LocalNewer
    } else {
        Freshness::Stale
    }
}

/// What a turn's restore found, for its save: the worker calls [`before_turn`], runs the CLI
/// unless [`TurnTranscript::failure`] says not to, then [`TurnTranscript::after_turn`].
pub struct TurnTranscript<'a> {
    state: State<'a>,
}

enum State<'a> {
    /// Not a session turn, or not on Redis storage: nothing travels.
    Off,
    Ready {
        cluster: &'a Cluster,
        /// The session this turn writes (the new one, for a fork).
        id: SessionId,
        file: PathBuf,
        /// The stored `sha` of `id` when the turn started ('' = nothing stored): the save
        /// replaces only that version.
        base: String,
    },
    /// The history could not be put in place: the turn must not run.
    Failed(TaskError),
}

/// Put the session's transcript in place before a turn: `id`'s own for a create or resume,
/// the source's for a fork. Call it before the session mode is resolved, which looks for the
/// local file. A Redis outage is waited out for [`RESTORE_PATIENCE`], then fails the turn: a
/// resume without its history would silently lose the conversation's context.
pub async fn before_turn<'a>(
    cluster: Option<&'a Cluster>,
    spec: &RunSpec,
    config: &Config,
    stop: &watch::Receiver<Option<StopReason>>,
) -> TurnTranscript<'a> {
    let off = TurnTranscript::off();
    let Some(cluster) = cluster else {
        return off;
    };
    let (source, id) = match &spec.session {
        SessionMode::None => return off,
        SessionMode::Create { id } | SessionMode::Resume { id } => (*id, *id),
        SessionMode::Fork { from, id } => (*from, *id),
    };
    let Some(dir) = transcript::config_dir(&config.claude_env) else {
        log::warn!(session_id:% = id; "no CLI config directory (CLAUDE_CONFIG_DIR or HOME): the session's transcript cannot travel");
        return off;
    };
    let source_file = transcript::path(&dir, &spec.project_path, &source.to_string());
    let file = transcript::path(&dir, &spec.project_path, &id.to_string());
    let prepared = async {
        let stored = patiently("restore", stop, RESTORE_PATIENCE, || {
            restore(cluster, source, &source_file)
        })
        .await?;
        let base = if source == id {
            stored
        } else {
            patiently("restore", stop, RESTORE_PATIENCE, || read_meta(cluster, id))
                .await?
                .map(|m| m.sha)
        };
        Ok::<_, RestoreError>(base.unwrap_or_default())
    };
    let state = match prepared.await {
        Ok(base) => State::Ready {
            cluster,
            id,
            file,
            base,
        },
        Err(e) => {
            log::error!(session_id:% = source, error:% = e.message(source); "the session's transcript cannot be restored; the turn does not run");
            State::Failed(e.task_error(source))
        }
    };
    TurnTranscript { state }
}

impl TurnTranscript<'_> {
    /// A turn whose transcript does not travel (no session, or not on Redis storage).
    pub fn off() -> Self {
        TurnTranscript { state: State::Off }
    }

    /// The outcome of a turn that must not run, if this is one.
    pub fn failure(&self) -> Option<RunOutcome> {
        match &self.state {
            State::Failed(error) => Some(RunOutcome {
                status: TaskStatus::Failed,
                report: None,
                error: Some(error.clone()),
                cost_usd: 0.0,
                duration_ms: 0,
            }),
            _ => None,
        }
    }

    /// What to store of the transcript the turn left (`None`: nothing, e.g. no session, no
    /// file, or unchanged), for a caller that stores it with the turn's final record
    /// (`RedisStore::finish_leased`) and then reports the answer with [`Self::stored`].
    pub async fn to_store(&self) -> Option<TranscriptWrite> {
        let State::Ready {
            cluster,
            id,
            file,
            base,
        } = &self.state
        else {
            return None;
        };
        to_store(cluster, *id, file, base).await
    }

    /// Log what a save answered (see [`TranscriptWrite::invocation`]).
    pub fn stored(&self, answer: &str) {
        if let State::Ready { id, .. } = &self.state {
            report_save(*id, answer);
        }
    }

    /// Store the transcript the turn left, if any. Never fails the turn (it has run): errors
    /// are retried (an outage for [`SAVE_PATIENCE`]), then logged.
    pub async fn after_turn(self, stop: &watch::Receiver<Option<StopReason>>) {
        let State::Ready {
            cluster,
            id,
            file,
            base,
        } = self.state
        else {
            return;
        };
        let saved = patiently("save", stop, SAVE_PATIENCE, || {
            save(cluster, id, &file, &base)
        })
        .await;
        if let Err(e) = saved {
            log::error!(
                session_id:% = id,
                error:% = e;
                "the session's transcript was not stored in Redis: a turn on another instance would miss this one"
            );
        }
    }
}

/// The transcript of session `id` in `cwd` as `GET /api/sessions/:id/messages` shows it: the
/// local file, or the stored copy when the local one is missing or stale (an instance that
/// never ran the session, or not its last turn). Reading never writes the local file.
pub async fn read(
    cluster: Option<&Cluster>,
    config: &Config,
    cwd: &Path,
    id: SessionId,
) -> Result<String, StoreError> {
    let file = transcript::config_dir(&config.claude_env)
        .map(|dir| transcript::path(&dir, cwd, &id.to_string()));
    let local = match &file {
        Some(f) => read_local(f).await,
        None => None,
    };
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    let Some(cluster) = cluster else {
        return Ok(local.map(text).unwrap_or_default());
    };
    let unavailable = |e: RedisError| StoreError::Unavailable(e.to_string());
    let meta = read_meta(cluster, id).await.map_err(unavailable)?;
    if !freshness(local.as_deref(), meta.as_ref()).needs_restore() {
        return Ok(local.map(text).unwrap_or_default());
    }
    match read_data(cluster, id).await.map_err(unavailable)? {
        Some((_, data)) => Ok(text(data)),
        // Too large to travel, or deleted meanwhile: what this instance has is all there is.
        None => Ok(local.map(text).unwrap_or_default()),
    }
}

// ---------------------------------------------------------------------------------------------
// restore and save

#[derive(Debug)]
enum RestoreError {
    Redis(RedisError),
    /// The stored copy has no content (over the limit); only instance `by` has the file.
    TooLarge {
        len: u64,
        by: String,
    },
    /// The stored copy kept changing while it was read.
    Unsettled,
    /// The local file could not be written.
    Local(std::io::Error, PathBuf),
}

impl RestoreError {
    fn message(&self, id: SessionId) -> String {
        match self {
            RestoreError::Redis(e) => format!(
                "Cannot restore the transcript of session {id} from Redis ({e}); the turn did not run, so that it does not run without the conversation's history."
            ),
            RestoreError::TooLarge { len, by } => format!(
                "The transcript of session {id} is {len} bytes, over the {MAX_TRANSCRIPT_BYTES}-byte limit for sessions shared through Redis, so only instance {by} has it; continue the session there."
            ),
            RestoreError::Unsettled => format!(
                "The stored transcript of session {id} kept changing while it was read; try the turn again."
            ),
            RestoreError::Local(e, path) => format!(
                "Cannot write the transcript of session {id} to {}: {e}",
                path.display()
            ),
        }
    }

    fn task_error(&self, id: SessionId) -> TaskError {
        let code = match self {
            RestoreError::Redis(_) => ErrorCode::StorageUnavailable,
            RestoreError::TooLarge { .. } | RestoreError::Unsettled => ErrorCode::InvalidState,
            RestoreError::Local(..) => ErrorCode::InternalError,
        };
        TaskError::new(code, self.message(id))
    }
}

impl From<RedisError> for RestoreError {
    fn from(e: RedisError) -> Self {
        RestoreError::Redis(e)
    }
}

/// Make `file` hold the stored transcript of `id` unless it is as fresh already. Returns the
/// stored `sha` (`None`: nothing stored).
async fn restore(
    cluster: &Cluster,
    id: SessionId,
    file: &Path,
) -> Result<Option<String>, RestoreError> {
    for _ in 0..READ_TRIES {
        let Some(meta) = read_meta(cluster, id).await? else {
            return Ok(None);
        };
        let local = read_local(file).await;
        let fresh = freshness(local.as_deref(), Some(&meta));
        if !fresh.needs_restore() {
            return Ok(Some(meta.sha));
        }
        if !meta.has_data {
            return Err(RestoreError::TooLarge {
                len: meta.len,
                by: meta.by,
            });
        }
        // The content is read apart from the metadata (which most turns need alone), so it is
        // checked against its own hash and read again if a save came in between.
        let Some((sha, data)) = read_data(cluster, id).await? else {
            continue;
        };
        if sha != sha256_hex(&data) {
            continue;
        }
        write_atomically(file, &data)
            .await
            .map_err(|e| RestoreError::Local(e, file.to_path_buf()))?;
        log::info!(
            session_id:% = id,
            bytes = data.len(),
            from_instance:% = meta.by,
            replaced_stale = fresh == Freshness::Stale;
            "restored the session's transcript from Redis"
        );
        return Ok(Some(sha));
    }
    Err(RestoreError::Unsettled)
}

/// Store `file` as the transcript of `id`, replacing the version `base` only.
async fn save(cluster: &Cluster, id: SessionId, file: &Path, base: &str) -> Result<(), RedisError> {
    let Some(write) = to_store(cluster, id, file, base).await else {
        return Ok(());
    };
    let answer: String = write
        .invocation(cluster.prefix())
        .invoke_async(&mut cluster.conn())
        .await?;
    report_save(id, &answer);
    Ok(())
}

/// What storing `file` as the transcript of `id` over version `base` writes; `None` when
/// there is nothing to store.
async fn to_store(
    cluster: &Cluster,
    id: SessionId,
    file: &Path,
    base: &str,
) -> Option<TranscriptWrite> {
    let Some(data) = read_local(file).await else {
        // The CLI failed before writing anything (e.g. it could not start).
        log::debug!(session_id:% = id; "no transcript after the turn; nothing to store");
        return None;
    };
    let sha = sha256_hex(&data);
    if sha == base {
        return None;
    }
    let fits = data.len() <= MAX_TRANSCRIPT_BYTES;
    if !fits {
        log::error!(
            session_id:% = id,
            bytes = data.len(),
            limit = MAX_TRANSCRIPT_BYTES;
            "the session's transcript is over the limit for sessions shared through Redis: only its hash is stored, and its next turns can run on this instance only"
        );
    }
    Some(TranscriptWrite {
        session: id,
        base: base.to_string(),
        sha,
        len: data.len() as u64,
        by: cluster.instance().as_str().to_string(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        data: fits.then_some(data),
    })
}

/// Log what a save of the transcript of `id` answered.
fn report_save(id: SessionId, answer: &str) {
    match answer {
        "saved" | "same" => {}
        "deleted" => {
            log::info!(session_id:% = id; "the session was deleted during its turn; its transcript is not stored")
        }
        _ => log::warn!(
            session_id:% = id;
            "the stored transcript changed during this turn (a turn of the session ran on another instance meanwhile); the stored one is kept"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Redis and the disk

fn key(cluster: &Cluster, id: SessionId) -> String {
    cluster.key(&format!("tr:{id}"))
}

/// `sha`, `len` and `by` of `tr:<id>`, as `HMGET` gives them.
type StoredFields = (Option<String>, Option<u64>, Option<String>);

/// The stored copy's metadata (`None`: nothing stored).
async fn read_meta(cluster: &Cluster, id: SessionId) -> Result<Option<Stored>, RedisError> {
    let key = key(cluster, id);
    let (fields, data_len): (StoredFields, u64) = ::redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(&key)
        .arg("sha")
        .arg("len")
        .arg("by")
        .cmd("HSTRLEN")
        .arg(&key)
        .arg("data")
        .query_async(&mut cluster.conn())
        .await?;
    let (sha, len, by) = fields;
    Ok(match (sha, len) {
        (Some(sha), Some(len)) => Some(Stored {
            sha,
            len,
            // An empty transcript stores an empty `data`, which Redis cannot tell from none.
            has_data: data_len > 0 || len == 0,
            by: by.unwrap_or_default(),
        }),
        _ => None,
    })
}

/// The stored content with the hash stored beside it.
async fn read_data(
    cluster: &Cluster,
    id: SessionId,
) -> Result<Option<(String, Vec<u8>)>, RedisError> {
    let (sha, data): (Option<String>, Option<Vec<u8>>) = ::redis::cmd("HMGET")
        .arg(key(cluster, id))
        .arg("sha")
        .arg("data")
        .query_async(&mut cluster.conn())
        .await?;
    Ok(match (sha, data) {
        (Some(sha), Some(data)) => Some((sha, data)),
        (Some(sha), None) if sha == sha256_hex(b"") => Some((sha, Vec::new())),
        _ => None,
    })
}

async fn read_local(file: &Path) -> Option<Vec<u8>> {
    match tokio::fs::read(file).await {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!(path:% = file.display(), error:% = e; "cannot read a local transcript; treating it as missing");
            }
            None
        }
    }
}

/// Write `data` to `file` so that a reader (the CLI of a later turn, the messages endpoint)
/// sees the old file or the new one, never a part: a temp file in the same directory, synced,
/// then renamed over it. The directory is the CLI's own layout, created when missing.
async fn write_atomically(file: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let file = file.to_path_buf();
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || {
        let dir = file.parent().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no parent directory")
        })?;
        std::fs::create_dir_all(dir)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.restore", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            // Conversations are private: readable by the service's user only.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Errors that retrying can cure, and the Redis error behind them.
trait Retryable {
    fn redis(&self) -> Option<&RedisError>;
}

impl Retryable for RestoreError {
    fn redis(&self) -> Option<&RedisError> {
        match self {
            RestoreError::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl Retryable for RedisError {
    fn redis(&self) -> Option<&RedisError> {
        Some(self)
    }
}

/// Whether Redis could not be reached (worth waiting for), as opposed to a refusal.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Call `op` until it succeeds; a Redis error is retried with backoff: an outage for up to
/// `patience`, any other error (or any error once the run is being stopped) [`FEW_TRIES`]
/// times. Errors that are not Redis's are returned at once.
async fn patiently<T, E, F, Fut>(
    what: &str,
    stop: &watch::Receiver<Option<StopReason>>,
    patience: Duration,
    mut op: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = BACKOFF_MIN;
    let mut tries = 0;
    loop {
        let e = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(redis) = e.redis() else {
            return Err(e);
        };
        tries += 1;
        let patient = is_outage(redis) && stop.borrow().is_none();
        let give_up = if patient {
            tokio::time::Instant::now() + delay > deadline
        } else {
            tries >= FEW_TRIES
        };
        if give_up {
            return Err(e);
        }
        log::warn!(error:% = redis; "Redis failed to {what} a session transcript; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests;
