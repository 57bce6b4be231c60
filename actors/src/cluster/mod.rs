//! Several instances on one Redis behaving as one service (`storageType: "redis"`).
//!
//! Redis is the distributed engine; this module adds no consensus of its own. What instances
//! share, and how:
//!
//! * the data (tasks, sessions, statistics, ...): the [`RedisStore`](crate::store::redis), under
//!   one namespace;
//! * a control channel ([`Control`], Redis pub/sub on `<ns>:ctl`): "a task was queued", "cancel
//!   this task", "this task ended". Pub/sub is fire-and-forget, so every message is only a
//!   shortcut: each part that reacts to one also finds the same fact by polling Redis (claims,
//!   lease renewals, waiting on a task's final record), so a message lost in an outage only
//!   delays things.
//!
//! * live events ([`events`]): a copy of every run's events in a Redis Stream per task, which
//!   an instance that does not run the task replays and follows for its SSE clients.
//!
//! Each process has an [`InstanceId`], unique per start, that owns the leases of the tasks it
//! runs.

pub mod events;
pub mod transcripts;

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::TaskId;
use crate::store::redis::RedisStore;

/// Messages kept for a slow control listener before it starts missing some (it then polls).
const CONTROL_BACKLOG: usize = 1024;
/// Pause before re-subscribing after the control connection failed (doubles up to the max).
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

/// Names this process among the instances: `<host>-<pid>-<random>`, new at every start, so a
/// restarted instance never mistakes the leases of its previous life for its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn generate() -> InstanceId {
        let random = uuid::Uuid::new_v4().simple().to_string();
        InstanceId(format!(
            "{}-{}-{}",
            hostname(),
            std::process::id(),
            &random[..8]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` names an instance on this machine that is no longer running: same host,
    /// and its pid is dead or is ours (a container restarts its daemon with the same pid).
    /// Instances on other machines are never judged from here.
    pub fn is_dead_neighbour(&self, other: &str, pid_alive: impl Fn(i32) -> bool) -> bool {
        if other == self.0 {
            return false;
        }
        let (Some(mine), Some(theirs)) = (split_id(&self.0), split_id(other)) else {
            return false;
        };
        mine.0 == theirs.0 && (theirs.1 == mine.1 || !pid_alive(theirs.1))
    }
}

/// `<host>-<pid>-<random>` → (host, pid); the host may itself contain '-'.
fn split_id(id: &str) -> Option<(&str, i32)> {
    let mut parts = id.rsplitn(3, '-');
    let _random = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    Some((host, pid))
}

/// Whether a process with this pid exists (on this machine, in this pid namespace).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    // Keep it usable inside Redis member names and log lines.
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

/// What instances tell each other on the control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// A task was queued: instances with a free slot try to claim one.
    Enqueued,
    /// A task's final record is `cancelled`: the instance running it kills its process group.
    Cancel { task: TaskId },
    /// A task reached its final record: instances with a caller waiting for it read it.
    Finished { task: TaskId },
    /// An approval of a task was decided: the instance running it answers its CLI.
    Approval { task: TaskId },
}

/// A control message on the wire: the message, and the instance that published it, so that
/// an instance does not hear its own messages back. Whatever publishes one also tells this
/// instance's own parts directly (the queue's supervisor, the approval hub), so its copy
/// coming back through Redis would only cost a wake-up per message — one per run. A message
/// without `from` (an older instance's) is heard by everyone.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(flatten)]
    msg: Control,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
}

/// This instance's handle on the cluster: its id, the shared connection and the control
/// channel. Cheap to share behind an `Arc`.
pub struct Cluster {
    instance: InstanceId,
    conn: ConnectionManager,
    prefix: String,
    /// The shared queue's operations live on the store (they share its task scripts).
    store: Arc<RedisStore>,
    client: ::redis::Client,
    control: broadcast::Sender<Control>,
    /// The runtime the connections were opened on, where their driver tasks live.
    io: tokio::runtime::Handle,
}

impl Cluster {
    /// Join the cluster whose data `store` holds (same server, same namespace) and start
    /// listening on the control channel. `url` is the store's `redisUrl`; the control channel
    /// needs a connection of its own (a subscribed connection can do nothing else).
    ///
    /// Call it on the runtime `store` was connected on: that runtime becomes [`Cluster::io`].
    pub fn join(url: &str, store: Arc<RedisStore>) -> Result<Arc<Cluster>, String> {
        let client = ::redis::Client::open(url).map_err(|e| format!("invalid redisUrl: {e}"))?;
        let (tx, _) = broadcast::channel(CONTROL_BACKLOG);
        let cluster = Arc::new(Cluster {
            instance: InstanceId::generate(),
            conn: store.connection(),
            prefix: store.prefix().to_string(),
            store,
            client,
            control: tx,
            io: tokio::runtime::Handle::current(),
        });
        tokio::spawn(listen(Arc::downgrade(&cluster)));
        log::info!(instance:% = cluster.instance, namespace:% = cluster.prefix.trim_end_matches(':'); "joined the cluster");
        Ok(cluster)
    }

    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// The Redis store, for the shared queue's operations (claims, leases, reaping).
    pub fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    /// The runtime of the connections' driver tasks. Work that makes several Redis calls in a
    /// row goes on there: each answer then wakes the task on the thread that read it, not a
    /// thread of another runtime (a thread hand-off per call; from another runtime a shared
    /// run cost 20–25 % more server CPU, measured).
    pub fn io(&self) -> tokio::runtime::Handle {
        self.io.clone()
    }

    /// `"<namespace>:"`, the start of every key of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key `<namespace>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A handle on the shared, reconnecting connection (for non-blocking commands only: a
    /// blocking read would hold up everyone's commands behind it; use [`Cluster::client`]).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The client, to open a dedicated connection (blocking reads such as `XREAD BLOCK`).
    pub fn client(&self) -> &::redis::Client {
        &self.client
    }

    /// Tell every other instance about `msg` (this one does not hear it back: see
    /// [`Envelope`]). Best effort: a failure is logged, and the receivers find the fact by
    /// polling.
    pub async fn publish(&self, msg: &Control) {
        let envelope = Envelope {
            msg: msg.clone(),
            from: Some(self.instance.0.clone()),
        };
        let Ok(text) = serde_json::to_string(&envelope) else {
            return;
        };
        let result: Result<i64, _> = ::redis::cmd("PUBLISH")
            .arg(self.control_channel())
            .arg(text)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = result {
            log::debug!(error:% = e; "cannot publish on the control channel");
        }
    }

    /// Every control message from now on, but this instance's own.
    pub fn subscribe(&self) -> broadcast::Receiver<Control> {
        self.control.subscribe()
    }

    fn control_channel(&self) -> String {
        self.key("ctl")
    }
}

/// Forward the control channel to the local subscribers, re-subscribing after failures.
/// Holds the cluster weakly: it stops once the instance has dropped its handle.
async fn listen(weak: std::sync::Weak<Cluster>) {
    let mut pause = RESUBSCRIBE_MIN;
    loop {
        let Some(cluster) = weak.upgrade() else {
            return;
        };
        match cluster.client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(e) = pubsub.subscribe(cluster.control_channel()).await {
                    log::debug!(error:% = e; "cannot subscribe to the control channel");
                } else {
                    pause = RESUBSCRIBE_MIN;
                    // Something may have happened while we were not listening.
                    let _ = cluster.control.send(Control::Enqueued);
                    let mut messages = pubsub.into_on_message();
                    drop(cluster);
                    while let Some(m) = messages.next().await {
                        let Some(cluster) = weak.upgrade() else {
                            return;
                        };
                        let Ok(text) = m.get_payload::<String>() else {
                            continue;
                        };
                        match serde_json::from_str::<Envelope>(&text) {
                            Ok(e) if e.from.as_deref() == Some(cluster.instance.as_str()) => {}
                            Ok(e) => {
                                let _ = cluster.control.send(e.msg);
                            }
                            Err(e) => {
                                log::debug!(error:% = e; "unreadable control message")
                            }
                        }
                    }
                    log::debug!("the control channel closed; subscribing again");
                }
            }
            Err(e) => log::debug!(error:% = e; "cannot open the control channel"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RESUBSCRIBE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_new_at_every_start_and_safe_in_keys() {
        let a = InstanceId::generate();
        let b = InstanceId::generate();
        assert_ne!(a, b);
        assert!(a
            .as_str()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    }

    #[test]
    fn only_dead_instances_on_this_machine_are_judged_dead() {
        let me = InstanceId("web-1.local-4242-abcd1234".into());
        let alive = |pid: i32| pid == 4242 || pid == 77;
        // Myself, a live neighbour, and anything on another host: not dead.
        assert!(!me.is_dead_neighbour("web-1.local-4242-abcd1234", alive));
        assert!(!me.is_dead_neighbour("web-1.local-77-ffff0000", alive));
        assert!(!me.is_dead_neighbour("web-2-99-ffff0000", alive));
        assert!(!me.is_dead_neighbour("garbage", alive));
        // A neighbour whose pid is gone, or a previous life with my pid: dead.
        assert!(me.is_dead_neighbour("web-1.local-99-ffff0000", alive));
        assert!(me.is_dead_neighbour("web-1.local-4242-00000000", alive));
    }

    #[test]
    fn control_messages_read_back_as_written() {
        let id = uuid::Uuid::new_v4();
        for msg in [
            Control::Enqueued,
            Control::Cancel { task: id },
            Control::Finished { task: id },
        ] {
            let text = serde_json::to_string(&msg).expect("encode");
            assert_eq!(serde_json::from_str::<Control>(&text).expect("decode"), msg);
        }
        assert_eq!(
            serde_json::to_string(&Control::Enqueued).expect("encode"),
            r#"{"kind":"enqueued"}"#
        );
    }

    #[test]
    fn the_envelope_names_its_sender_and_older_messages_still_read() {
        let id = uuid::Uuid::new_v4();
        let sent = Envelope {
            msg: Control::Finished { task: id },
            from: Some("web-1-42-abcd1234".into()),
        };
        let text = serde_json::to_string(&sent).expect("encode");
        assert_eq!(
            text,
            format!(r#"{{"kind":"finished","task":"{id}","from":"web-1-42-abcd1234"}}"#)
        );
        let read: Envelope = serde_json::from_str(&text).expect("decode");
        assert_eq!(read.msg, sent.msg);
        assert_eq!(read.from, sent.from);
        // An instance of an older build publishes the bare message: heard by everyone.
        let old: Envelope = serde_json::from_str(r#"{"kind":"enqueued"}"#).expect("decode");
        assert_eq!(old.msg, Control::Enqueued);
        assert_eq!(old.from, None);
        // And an older build reads a new message (it ignores `from`).
        assert_eq!(
            serde_json::from_str::<Control>(&text).expect("decode"),
            Control::Finished { task: id }
        );
    }

    async fn joined(url: &str, ns: &str) -> Arc<Cluster> {
        let store = RedisStore::connect(url, ns).await.expect("connect");
        Cluster::join(url, Arc::new(store)).expect("join")
    }

    /// The next message `rx` hears (failing after a generous deadline).
    async fn next(rx: &mut broadcast::Receiver<Control>) -> Control {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a control message within 10 s")
            .expect("the control channel is open")
    }

    #[tokio::test]
    async fn an_instance_hears_the_others_messages_but_not_its_own() {
        let url = crate::store::redis::test_server::shared_url().expect("redis-server");
        let ns = crate::store::redis::test_server::test_namespace();
        // Subscribed at once, before the listener (started by `join`) can run.
        let a = joined(&url, &ns).await;
        let mut heard_a = a.subscribe();
        let b = joined(&url, &ns).await;
        let mut heard_b = b.subscribe();
        // Each listener announces itself with a local `Enqueued` once subscribed to Redis.
        assert_eq!(next(&mut heard_a).await, Control::Enqueued);
        assert_eq!(next(&mut heard_b).await, Control::Enqueued);
        let (x, y) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        a.publish(&Control::Finished { task: x }).await;
        b.publish(&Control::Finished { task: y }).await;
        // Redis delivers in publishing order: had `a` heard its own `x`, it would come first.
        assert_eq!(next(&mut heard_a).await, Control::Finished { task: y });
        assert_eq!(next(&mut heard_b).await, Control::Finished { task: x });
    }
}
