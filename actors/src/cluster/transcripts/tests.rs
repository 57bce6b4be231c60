use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use super::*;
use crate::config::load::{from_file_doc, Environment};
use crate::store::redis::test_server::{shared_url, test_namespace};
use crate::store::redis::RedisStore;
use crate::store::Store;

fn stored(content: &[u8]) -> Stored {
    Stored {
        sha: sha256_hex(content),
        len: content.len() as u64,
        has_data: true,
        by: "a".into(),
    }
}

// ---- the staleness decision

#[test]
fn nothing_stored_keeps_whatever_is_local() {
    assert_eq!(freshness(None, None), Freshness::NothingStored);
    assert_eq!(freshness(Some(b"x\n"), None), Freshness::NothingStored);
    assert!(!Freshness::NothingStored.needs_restore());
}

#[test]
fn a_missing_local_file_is_restored() {
    let s = stored(b"turn 1\n");
    assert_eq!(freshness(None, Some(&s)), Freshness::Missing);
    assert!(Freshness::Missing.needs_restore());
}

#[test]
fn the_same_content_is_up_to_date() {
    let s = stored(b"turn 1\nturn 2\n");
    assert_eq!(
        freshness(Some(b"turn 1\nturn 2\n"), Some(&s)),
        Freshness::UpToDate
    );
    assert!(!Freshness::UpToDate.needs_restore());
    // The empty transcript too.
    assert_eq!(
        freshness(Some(b""), Some(&stored(b""))),
        Freshness::UpToDate
    );
}

#[test]
fn a_local_extension_of_the_stored_content_is_newer_and_kept() {
    let s = stored(b"turn 1\n");
    assert_eq!(
        freshness(Some(b"turn 1\nturn 2\n"), Some(&s)),
        Freshness::LocalNewer
    );
    assert!(!Freshness::LocalNewer.needs_restore());
    assert_eq!(
        freshness(Some(b"anything"), Some(&stored(b""))),
        Freshness::LocalNewer
    );
}

#[test]
fn an_older_or_diverged_local_file_is_stale() {
    let s = stored(b"turn 1\nturn 2 on B\n");
    // Shorter: turns ran elsewhere since.
    assert_eq!(freshness(Some(b"turn 1\n"), Some(&s)), Freshness::Stale);
    // Same length, other content.
    assert_eq!(
        freshness(Some(b"turn 1\nturn 2 on A\n"), Some(&s)),
        Freshness::Stale
    );
    // Longer, but not starting with the stored bytes: diverged.
    assert_eq!(
        freshness(Some(b"turn 1\nturn 2 on A\nturn 3 on A\n"), Some(&s)),
        Freshness::Stale
    );
    assert_eq!(freshness(Some(b""), Some(&s)), Freshness::Stale);
    assert!(Freshness::Stale.needs_restore());
}

#[test]
fn a_stored_length_that_does_not_fit_memory_is_stale_not_a_panic() {
    let s = Stored {
        len: u64::MAX,
        ..stored(b"x")
    };
    assert_eq!(freshness(Some(b"x"), Some(&s)), Freshness::Stale);
}

// ---- through Redis: two "instances" (two CLI config dirs) on one namespace

struct Instance {
    _home: tempfile::TempDir,
    config: Config,
    config_dir: PathBuf,
}

fn instance() -> Instance {
    let home = tempfile::tempdir().expect("tempdir");
    let config_dir = home.path().join("claude-home");
    let doc =
        serde_json::json!({"claudeEnv": {"CLAUDE_CONFIG_DIR": config_dir.display().to_string()}});
    let config = from_file_doc(
        &doc,
        &Environment {
            cwd: "/".into(),
            ..Default::default()
        },
    )
    .expect("config")
    .0;
    Instance {
        _home: home,
        config,
        config_dir,
    }
}

impl Instance {
    fn file(&self, cwd: &Path, id: SessionId) -> PathBuf {
        transcript::path(&self.config_dir, cwd, &id.to_string())
    }
}

struct Fixture {
    store: Arc<RedisStore>,
    cluster: Arc<Cluster>,
    cwd: PathBuf,
}

async fn fixture() -> Fixture {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let store = RedisStore::connect(&url, &test_namespace())
        .await
        .expect("connect");
    let store = Arc::new(store);
    let cluster = Cluster::join(&url, store.clone()).expect("join");
    Fixture {
        store,
        cluster,
        cwd: PathBuf::from("/work/project"),
    }
}

impl Fixture {
    async fn session(&self) -> SessionId {
        let now = Utc::now();
        let s = crate::session::fixtures::session(self.cwd.clone(), now);
        self.store.insert_session(&s).await.expect("insert");
        s.id
    }

    fn spec(&self, session: SessionMode) -> RunSpec {
        RunSpec {
            session,
            ..RunSpec::new("p", &self.cwd, 1000)
        }
    }

    /// One turn on `on`: restore, "run" (append `line` to the transcript the CLI would write),
    /// save. Returns the turn's failure, if it did not run.
    async fn turn(&self, on: &Instance, mode: SessionMode, line: &str) -> Option<RunOutcome> {
        let (_tx, stop) = watch::channel(None);
        let spec = self.spec(mode.clone());
        let t = before_turn(Some(&self.cluster), &spec, &on.config, &stop).await;
        if let Some(failed) = t.failure() {
            return Some(failed);
        }
        let written = match mode {
            SessionMode::Create { id } | SessionMode::Resume { id } => id,
            SessionMode::Fork { from, id } => {
                let history = std::fs::read(on.file(&self.cwd, from)).expect("the source is here");
                write(&on.file(&self.cwd, id), &history);
                id
            }
            SessionMode::None => return None,
        };
        append(&on.file(&self.cwd, written), line);
        t.after_turn(&stop).await;
        None
    }

    async fn raw(&self, args: &[&str]) -> ::redis::Value {
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut self.cluster.conn())
            .await
            .expect("raw")
    }
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

fn append(path: &Path, line: &str) {
    let mut content = std::fs::read(path).unwrap_or_default();
    content.extend_from_slice(line.as_bytes());
    content.push(b'\n');
    write(path, &content);
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn a_session_alternating_between_instances_keeps_every_turn() {
    let f = fixture().await;
    let (a, b) = (instance(), instance());
    let id = f.session().await;
    assert!(f
        .turn(&a, SessionMode::Create { id }, "1 on A")
        .await
        .is_none());
    assert!(f
        .turn(&b, SessionMode::Resume { id }, "2 on B")
        .await
        .is_none());
    assert_eq!(read_text(&b.file(&f.cwd, id)), "1 on A\n2 on B\n");
    // A's own copy is stale now (it lacks B's turn): replaced before A's next turn.
    assert!(f
        .turn(&a, SessionMode::Resume { id }, "3 on A")
        .await
        .is_none());
    assert_eq!(read_text(&a.file(&f.cwd, id)), "1 on A\n2 on B\n3 on A\n");
    assert!(f
        .turn(&b, SessionMode::Resume { id }, "4 on B")
        .await
        .is_none());
    assert_eq!(
        read_text(&b.file(&f.cwd, id)),
        "1 on A\n2 on B\n3 on A\n4 on B\n"
    );
    // The messages endpoint's read: B's file on an instance that has none, without writing it.
    let c = instance();
    let text = read(Some(&f.cluster), &c.config, &f.cwd, id)
        .await
        .expect("read");
    assert_eq!(text, "1 on A\n2 on B\n3 on A\n4 on B\n");
    assert!(!c.file(&f.cwd, id).exists());
    // A stale local file is not what is shown either.
    let text = read(Some(&f.cluster), &a.config, &f.cwd, id)
        .await
        .expect("read");
    assert_eq!(text, "1 on A\n2 on B\n3 on A\n4 on B\n");
    // Without a cluster only the local file counts.
    let text = read(None, &a.config, &f.cwd, id).await.expect("read");
    assert_eq!(text, "1 on A\n2 on B\n3 on A\n");
}

#[tokio::test]
async fn a_restored_file_has_the_cli_layout_and_private_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture().await;
    let (a, b) = (instance(), instance());
    let id = f.session().await;
    assert!(f.turn(&a, SessionMode::Create { id }, "1").await.is_none());
    let (_tx, stop) = watch::channel(None);
    let t = before_turn(
        Some(&f.cluster),
        &f.spec(SessionMode::Resume { id }),
        &b.config,
        &stop,
    )
    .await;
    assert!(t.failure().is_none());
    let file = b
        .config_dir
        .join("projects")
        .join("-work-project")
        .join(format!("{id}.jsonl"));
    assert_eq!(read_text(&file), "1\n");
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // No temp file left beside it.
    let names: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn a_newer_local_file_is_never_overwritten_and_is_uploaded_after_the_turn() {
    let f = fixture().await;
    let a = instance();
    let id = f.session().await;
    assert!(f.turn(&a, SessionMode::Create { id }, "1").await.is_none());
    // A turn whose save never reached Redis: the local file is ahead of the stored copy.
    append(&a.file(&f.cwd, id), "2 unsaved");
    assert!(f.turn(&a, SessionMode::Resume { id }, "3").await.is_none());
    assert_eq!(read_text(&a.file(&f.cwd, id)), "1\n2 unsaved\n3\n");
    let b = instance();
    assert!(f.turn(&b, SessionMode::Resume { id }, "4").await.is_none());
    assert_eq!(read_text(&b.file(&f.cwd, id)), "1\n2 unsaved\n3\n4\n");
}

#[tokio::test]
async fn a_fork_restores_its_source_and_stores_the_new_session() {
    let f = fixture().await;
    let (a, b) = (instance(), instance());
    let parent = f.session().await;
    let child = f.session().await;
    assert!(f
        .turn(&a, SessionMode::Create { id: parent }, "root")
        .await
        .is_none());
    assert!(f
        .turn(
            &b,
            SessionMode::Fork {
                from: parent,
                id: child
            },
            "branch on B"
        )
        .await
        .is_none());
    assert!(f
        .turn(&a, SessionMode::Resume { id: child }, "child 2 on A")
        .await
        .is_none());
    assert_eq!(
        read_text(&a.file(&f.cwd, child)),
        "root\nbranch on B\nchild 2 on A\n"
    );
    // The parent did not get the child's turns.
    assert_eq!(read_text(&b.file(&f.cwd, parent)), "root\n");
}

#[tokio::test]
async fn a_save_replaces_only_the_version_its_turn_started_from() {
    let f = fixture().await;
    let (a, b) = (instance(), instance());
    let id = f.session().await;
    assert!(f.turn(&a, SessionMode::Create { id }, "1").await.is_none());
    // A's turn starts from "1"; meanwhile a turn on B is stored (e.g. A was presumed dead).
    let (_tx, stop) = watch::channel(None);
    let late = before_turn(
        Some(&f.cluster),
        &f.spec(SessionMode::Resume { id }),
        &a.config,
        &stop,
    )
    .await;
    assert!(f
        .turn(&b, SessionMode::Resume { id }, "2 on B")
        .await
        .is_none());
    append(&a.file(&f.cwd, id), "2 on A, late");
    late.after_turn(&stop).await;
    let c = instance();
    let text = read(Some(&f.cluster), &c.config, &f.cwd, id)
        .await
        .expect("read");
    assert_eq!(text, "1\n2 on B\n", "B's turn stays");
}

#[tokio::test]
async fn a_transcript_over_the_limit_stays_local_and_a_turn_elsewhere_fails_clearly() {
    let f = fixture().await;
    let (a, b) = (instance(), instance());
    let id = f.session().await;
    let big = vec![b'x'; MAX_TRANSCRIPT_BYTES];
    write(&a.file(&f.cwd, id), &big);
    assert!(f.turn(&a, SessionMode::Resume { id }, "").await.is_none());
    let key = f.cluster.key(&format!("tr:{id}"));
    assert_eq!(
        f.raw(&["HEXISTS", &key, "data"]).await,
        ::redis::Value::Int(0),
        "stored without its content"
    );
    // The instance that has it goes on.
    assert!(f
        .turn(&a, SessionMode::Resume { id }, "more")
        .await
        .is_none());
    // Another one refuses to run without the history.
    let failed = f
        .turn(&b, SessionMode::Resume { id }, "lost?")
        .await
        .expect("the turn fails");
    assert_eq!(failed.status, TaskStatus::Failed);
    let error = failed.error.expect("error");
    assert_eq!(error.code, ErrorCode::InvalidState);
    assert!(error.message.contains("over the"), "{}", error.message);
    assert!(
        error.message.contains(f.cluster.instance().as_str()),
        "{}",
        error.message
    );
    assert!(!b.file(&f.cwd, id).exists());
}

#[tokio::test]
async fn the_stored_copy_goes_with_its_session_and_is_not_brought_back() {
    let f = fixture().await;
    let a = instance();
    let id = f.session().await;
    assert!(f.turn(&a, SessionMode::Create { id }, "1").await.is_none());
    let key = f.cluster.key(&format!("tr:{id}"));
    assert_eq!(f.raw(&["EXISTS", &key]).await, ::redis::Value::Int(1));
    assert!(f.store.delete_session(id).await.expect("delete"));
    assert_eq!(f.raw(&["EXISTS", &key]).await, ::redis::Value::Int(0));
    // A turn that ends after its session was deleted stores nothing.
    append(&a.file(&f.cwd, id), "2");
    let (_tx, stop) = watch::channel(None);
    let t = TurnTranscript {
        state: State::Ready {
            cluster: &f.cluster,
            id,
            file: a.file(&f.cwd, id),
            base: sha256_hex(b"1\n"),
        },
    };
    t.after_turn(&stop).await;
    assert_eq!(f.raw(&["EXISTS", &key]).await, ::redis::Value::Int(0));

    // Retention deletes it too.
    let old = f.session().await;
    assert!(f
        .turn(&a, SessionMode::Create { id: old }, "1")
        .await
        .is_none());
    let key = f.cluster.key(&format!("tr:{old}"));
    assert_eq!(f.raw(&["EXISTS", &key]).await, ::redis::Value::Int(1));
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert!(
        f.store
            .delete_sessions_idle_since(later)
            .await
            .expect("sweep")
            >= 1
    );
    assert_eq!(f.raw(&["EXISTS", &key]).await, ::redis::Value::Int(0));
}

#[tokio::test]
async fn an_unreachable_redis_fails_the_restore_instead_of_running_without_history() {
    use crate::store::redis::test_server::RedisServer;
    let mut server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = RedisStore::connect(&server.url(), &test_namespace())
        .await
        .expect("connect");
    let store = Arc::new(store);
    let cluster = Cluster::join(&server.url(), store.clone()).expect("join");
    let a = instance();
    let spec = RunSpec {
        session: SessionMode::Resume {
            id: uuid::Uuid::new_v4(),
        },
        ..RunSpec::new("p", "/work/project", 1000)
    };
    server.kill();
    // A stopped run does not wait out the whole patience.
    let (_tx, stop) = watch::channel(Some(StopReason::Shutdown));
    let t = before_turn(Some(&cluster), &spec, &a.config, &stop).await;
    let failed = t.failure().expect("the turn does not run");
    let error = failed.error.expect("error");
    assert_eq!(error.code, ErrorCode::StorageUnavailable);
    assert!(
        error.message.contains("Cannot restore"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn without_a_cluster_or_a_session_nothing_travels() {
    let a = instance();
    let (_tx, stop) = watch::channel(None);
    let spec = RunSpec::new("p", "/work/project", 1000);
    let t = before_turn(None, &spec, &a.config, &stop).await;
    assert!(matches!(t.state, State::Off));
    let f = fixture().await;
    let t = before_turn(Some(&f.cluster), &spec, &a.config, &stop).await;
    assert!(matches!(t.state, State::Off));
}

/// What a turn pays for travelling transcripts: the save of a grown file and the restore on
/// another instance, by size. Run with
/// `cargo test -p actors --release cluster::transcripts::tests::bench -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn bench_save_and_restore_by_size() {
    let f = fixture().await;
    for size in [100 << 10, 1 << 20, 16 << 20] {
        let (a, b) = (instance(), instance());
        let id = f.session().await;
        let line = "x".repeat(1000);
        let mut content = String::new();
        while content.len() < size {
            content.push_str(&line);
            content.push('\n');
        }
        write(&a.file(&f.cwd, id), content.as_bytes());
        let (_tx, stop) = watch::channel(None);
        let spec = f.spec(SessionMode::Resume { id });
        let t0 = std::time::Instant::now();
        let t = before_turn(Some(&f.cluster), &spec, &a.config, &stop).await;
        let check = t0.elapsed();
        let t0 = std::time::Instant::now();
        t.after_turn(&stop).await;
        let save = t0.elapsed();
        let t0 = std::time::Instant::now();
        let t = before_turn(Some(&f.cluster), &spec, &b.config, &stop).await;
        let restore = t0.elapsed();
        assert!(t.failure().is_none());
        let t0 = std::time::Instant::now();
        let t = before_turn(Some(&f.cluster), &spec, &b.config, &stop).await;
        let up_to_date = t0.elapsed();
        assert!(t.failure().is_none());
        println!(
            "{:>6} KiB: check (nothing stored) {check:?}, save {save:?}, restore {restore:?}, check (up to date) {up_to_date:?}",
            size >> 10
        );
    }
}
