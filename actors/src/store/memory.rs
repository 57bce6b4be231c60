//! [`MemoryStore`]: everything in one process, nothing survives a restart.
//!
//! One `std::sync::Mutex` guards the tables and their indexes; every operation is a few map
//! operations under it, so no call holds it long. Indexes keep the hot paths off full scans:
//!
//! * `pending`: `(Reverse(priority), seq, id)` of every pending task, i.e. run order, so listing
//!   pending tasks is `O(offset + limit)` and a priority change is two `O(log n)` set operations;
//! * `by_seq` (all tasks), `by_status` and `by_session` (seqs), for newest-first pages;
//! * `sessions_by_created` for newest-first session pages.
//!
//! Per-status counts are the sizes of `by_status`; the total cost is kept as a running sum and
//! recomputed only after a task with a cost is removed or replaced.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::rules;
use super::{SessionFilter, Store, StoreError, StoreResult, TaskCounts, TaskFilter};
use crate::approval::{
    apply_decision, Approval, ApprovalFilter, ApprovalId, ApprovalState, Decided,
};
use crate::model::{Priority, Session, SessionId, Task, TaskId, TaskStatus};
use crate::webhook::{WebhookAttempt, WebhookJob};

/// The in-memory backend.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The tables. A panic while holding the lock cannot leave them half-updated in a way that
    /// matters more than refusing service would, so a poisoned lock is recovered, not escalated.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type RunKey = (Reverse<Priority>, u64, TaskId);

#[derive(Default)]
struct Inner {
    tasks: HashMap<TaskId, Task>,
    by_seq: BTreeMap<u64, TaskId>,
    pending: BTreeSet<RunKey>,
    by_status: HashMap<TaskStatus, BTreeSet<u64>>,
    by_session: HashMap<SessionId, BTreeSet<u64>>,
    last_seq: u64,
    cost_sum: f64,
    cost_dirty: bool,

    sessions: HashMap<SessionId, Session>,
    sessions_by_created: BTreeSet<(DateTime<Utc>, SessionId)>,

    stats: BTreeMap<NaiveDate, serde_json::Value>,

    /// Idempotency claims: key → (value, expiry). Expired entries are replaced when claimed
    /// again and dropped by `sweep_idempotency` as the map grows.
    idempotency: HashMap<String, (serde_json::Value, DateTime<Utc>)>,

    webhook_jobs: HashMap<String, WebhookJob>,
    /// Per task, in recording order.
    webhook_attempts: HashMap<TaskId, Vec<WebhookAttempt>>,
    /// Per task, in request order.
    approvals: HashMap<TaskId, Vec<Approval>>,
}

fn run_key(t: &Task) -> RunKey {
    (Reverse(t.priority), t.seq, t.id)
}

fn cost(t: &Task) -> f64 {
    t.cost_usd.unwrap_or(0.0)
}

fn owner_matches(want: &Option<Option<String>>, t: &Task) -> bool {
    match want {
        None => true,
        Some(o) => *o == t.owner,
    }
}

impl Inner {
    fn index(&mut self, t: &Task) {
        self.by_seq.insert(t.seq, t.id);
        self.by_status.entry(t.status).or_default().insert(t.seq);
        if t.status == TaskStatus::Pending {
            self.pending.insert(run_key(t));
        }
        if let Some(s) = t.session_id {
            self.by_session.entry(s).or_default().insert(t.seq);
        }
        self.cost_sum += cost(t);
    }

    fn unindex(&mut self, t: &Task) {
        self.by_seq.remove(&t.seq);
        if let Some(set) = self.by_status.get_mut(&t.status) {
            set.remove(&t.seq);
        }
        self.pending.remove(&run_key(t));
        if let Some(s) = t.session_id {
            if let Some(set) = self.by_session.get_mut(&s) {
                set.remove(&t.seq);
                if set.is_empty() {
                    self.by_session.remove(&s);
                }
            }
        }
        if cost(t) != 0.0 {
            self.cost_dirty = true;
        }
    }

    /// Replace a stored task (same id and seq), keeping every index right.
    fn replace(&mut self, new: Task) {
        if let Some(old) = self.tasks.remove(&new.id) {
            self.unindex(&old);
        }
        self.index(&new);
        self.tasks.insert(new.id, new);
    }

    fn task_by_seq(&self, seq: u64) -> Option<&Task> {
        self.by_seq.get(&seq).and_then(|id| self.tasks.get(id))
    }

    fn remove_session(&mut self, id: SessionId) -> bool {
        match self.sessions.remove(&id) {
            Some(s) => {
                self.sessions_by_created.remove(&(s.created_at, s.id));
                true
            }
            None => false,
        }
    }

    fn put_session(&mut self, mut s: Session) {
        rules::normalize_session(&mut s);
        self.remove_session(s.id);
        self.sessions_by_created.insert((s.created_at, s.id));
        self.sessions.insert(s.id, s);
    }
}

/// One page of `items` (already in order, already filtered) and how many there were.
fn page<'a, T: Clone + 'a>(
    items: impl Iterator<Item = &'a T>,
    limit: u32,
    offset: u32,
) -> (Vec<T>, u64) {
    let limit = if limit == 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    for (i, it) in items.enumerate() {
        total += 1;
        if i >= offset as usize && out.len() < limit {
            out.push(it.clone());
        }
    }
    (out, total)
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn insert_task(&self, mut task: Task) -> StoreResult<Task> {
        let mut g = self.lock();
        if g.tasks.contains_key(&task.id) {
            return Err(StoreError::Corrupt(format!(
                "task {} already exists",
                task.id
            )));
        }
        rules::normalize_task(&mut task);
        g.last_seq += 1;
        task.seq = g.last_seq;
        g.index(&task);
        g.tasks.insert(task.id, task.clone());
        Ok(task)
    }

    async fn get_task(&self, id: TaskId) -> StoreResult<Option<Task>> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    async fn start_task(&self, id: TaskId, at: DateTime<Utc>) -> StoreResult<Option<Task>> {
        let mut g = self.lock();
        let Some(mut t) = g.tasks.get(&id).cloned() else {
            return Ok(None);
        };
        if t.status != TaskStatus::Pending {
            return Ok(None);
        }
        t.status = TaskStatus::Processing;
        t.started_at = Some(rules::trunc(at));
        t.attempts += 1;
        g.replace(t.clone());
        Ok(Some(t))
    }

    async fn finish_task(&self, task: &Task) -> StoreResult<bool> {
        if !task.status.is_final() {
            log::warn!(task:% = task.id, status = task.status.as_str(); "finish_task called with a live status; nothing written");
            return Ok(false);
        }
        let mut g = self.lock();
        let Some(stored) = g.tasks.get(&task.id) else {
            return Ok(false);
        };
        if stored.status.is_final() {
            return Ok(false);
        }
        let merged = rules::merge_final(stored, task);
        g.replace(merged);
        Ok(true)
    }

    async fn set_priority(&self, id: TaskId, priority: Priority) -> StoreResult<bool> {
        let mut g = self.lock();
        let Some(mut t) = g.tasks.get(&id).cloned() else {
            return Ok(false);
        };
        if t.status != TaskStatus::Pending {
            return Ok(false);
        }
        t.priority = priority;
        g.replace(t);
        Ok(true)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<(Vec<Task>, u64)> {
        let g = self.lock();
        let (limit, offset) = (filter.limit, filter.offset);
        let keep = |t: &&Task| {
            filter.status.is_none_or(|s| t.status == s)
                && filter.session_id.is_none_or(|s| t.session_id == Some(s))
                && owner_matches(&filter.owner, t)
        };
        if filter.status == Some(TaskStatus::Pending) {
            if filter.session_id.is_none() && filter.owner.is_none() {
                let total = g.pending.len() as u64;
                let lim = if limit == 0 {
                    usize::MAX
                } else {
                    limit as usize
                };
                let items = g
                    .pending
                    .iter()
                    .skip(offset as usize)
                    .take(lim)
                    .filter_map(|k| g.tasks.get(&k.2).cloned())
                    .collect();
                return Ok((items, total));
            }
            let it = g
                .pending
                .iter()
                .filter_map(|k| g.tasks.get(&k.2))
                .filter(keep);
            return Ok(page(it, limit, offset));
        }
        let empty = BTreeSet::new();
        let seqs: Box<dyn Iterator<Item = u64> + '_> = if let Some(s) = filter.session_id {
            Box::new(g.by_session.get(&s).unwrap_or(&empty).iter().rev().copied())
        } else if let Some(st) = filter.status {
            Box::new(g.by_status.get(&st).unwrap_or(&empty).iter().rev().copied())
        } else {
            Box::new(g.by_seq.keys().rev().copied())
        };
        let it = seqs.filter_map(|seq| g.task_by_seq(seq)).filter(keep);
        Ok(page(it, limit, offset))
    }

    async fn pending_tasks(&self) -> StoreResult<Vec<Task>> {
        let g = self.lock();
        Ok(g.pending
            .iter()
            .filter_map(|k| g.tasks.get(&k.2).cloned())
            .collect())
    }

    async fn interrupt_processing(&self, at: DateTime<Utc>) -> StoreResult<Vec<TaskId>> {
        let mut g = self.lock();
        let seqs: Vec<u64> = g
            .by_status
            .get(&TaskStatus::Processing)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let mut ids = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(mut t) = g.task_by_seq(seq).cloned() {
                rules::interrupt(&mut t, at);
                ids.push(t.id);
                g.replace(t);
            }
        }
        Ok(ids)
    }

    async fn task_counts(&self) -> StoreResult<TaskCounts> {
        let mut g = self.lock();
        if g.cost_dirty {
            g.cost_sum = g.tasks.values().map(cost).sum();
            g.cost_dirty = false;
        }
        let by_status = g
            .by_status
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(st, s)| (*st, s.len() as u64))
            .collect();
        Ok(TaskCounts {
            by_status,
            total_cost_usd: g.cost_sum,
        })
    }

    async fn delete_tasks_finished_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut g = self.lock();
        let cut = rules::ms(&before);
        let doomed: Vec<TaskId> = g
            .tasks
            .values()
            .filter(|t| rules::finished_at(t).is_some_and(|f| rules::ms(&f) < cut))
            .map(|t| t.id)
            .collect();
        for id in &doomed {
            if let Some(t) = g.tasks.remove(id) {
                g.unindex(&t);
            }
            g.approvals.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn insert_approval(&self, approval: &Approval) -> StoreResult<()> {
        let mut g = self.lock();
        let list = g.approvals.entry(approval.task_id).or_default();
        match list.iter_mut().find(|a| a.id == approval.id) {
            Some(a) => *a = approval.clone(),
            None => list.push(approval.clone()),
        }
        Ok(())
    }

    async fn task_approvals(&self, task: TaskId) -> StoreResult<Vec<Approval>> {
        let mut list = self
            .lock()
            .approvals
            .get(&task)
            .cloned()
            .unwrap_or_default();
        list.sort_by_key(|a| (a.requested_at, a.id));
        Ok(list)
    }

    async fn list_approvals(&self, filter: &ApprovalFilter) -> StoreResult<Vec<Approval>> {
        let g = self.lock();
        let mut all: Vec<Approval> = g
            .approvals
            .values()
            .flatten()
            .filter(|a| filter.matches(a))
            .cloned()
            .collect();
        all.sort_by_key(|a| (a.requested_at, a.id));
        if filter.limit > 0 {
            all.truncate(filter.limit as usize);
        }
        Ok(all)
    }

    async fn decide_approval(
        &self,
        task: TaskId,
        id: ApprovalId,
        state: ApprovalState,
    ) -> StoreResult<Decided> {
        let mut g = self.lock();
        let Some(a) = g
            .approvals
            .get_mut(&task)
            .and_then(|l| l.iter_mut().find(|a| a.id == id))
        else {
            return Ok(Decided::Missing);
        };
        Ok(if apply_decision(a, state) {
            Decided::Now(a.clone())
        } else {
            Decided::Already(a.clone())
        })
    }

    async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        let mut g = self.lock();
        if g.sessions.contains_key(&session.id) {
            return Err(StoreError::Corrupt(format!(
                "session {} already exists",
                session.id
            )));
        }
        g.put_session(session.clone());
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> StoreResult<Option<Session>> {
        Ok(self.lock().sessions.get(&id).cloned())
    }

    async fn update_session(&self, session: &Session) -> StoreResult<bool> {
        let mut g = self.lock();
        if !g.sessions.contains_key(&session.id) {
            return Ok(false);
        }
        g.put_session(session.clone());
        Ok(true)
    }

    async fn delete_session(&self, id: SessionId) -> StoreResult<bool> {
        Ok(self.lock().remove_session(id))
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> StoreResult<(Vec<Session>, u64)> {
        let g = self.lock();
        let needle = filter.query.as_deref().map(rules::query_needle);
        let it = g
            .sessions_by_created
            .iter()
            .rev()
            .filter_map(|(_, id)| g.sessions.get(id))
            .filter(|s| {
                filter.status.is_none_or(|st| s.status == st)
                    && filter
                        .project_path
                        .as_deref()
                        .is_none_or(|p| s.project_path.to_string_lossy() == p)
                    && filter.owner.as_ref().is_none_or(|o| *o == s.owner)
                    && needle
                        .as_deref()
                        .is_none_or(|n| rules::session_search_text(s).contains(n))
            });
        Ok(page(it, filter.limit, filter.offset))
    }

    async fn delete_sessions_idle_since(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut g = self.lock();
        let cut = rules::ms(&before);
        let doomed: Vec<SessionId> = g
            .sessions
            .values()
            .filter(|s| rules::ms(&s.updated_at) < cut)
            .map(|s| s.id)
            .collect();
        for id in &doomed {
            g.remove_session(*id);
        }
        Ok(doomed.len() as u64)
    }

    async fn claim_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<serde_json::Value>> {
        let mut inner = self.lock();
        if let Some((existing, until)) = inner.idempotency.get(key) {
            if *until > now {
                return Ok(Some(existing.clone()));
            }
        }
        // Keep the map bounded by the live claims: drop expired ones now and then.
        if inner.idempotency.len() >= 1024 && inner.idempotency.len().is_power_of_two() {
            inner.idempotency.retain(|_, (_, until)| *until > now);
        }
        inner
            .idempotency
            .insert(key.to_string(), (value.clone(), expires_at));
        Ok(None)
    }

    async fn release_idempotency_key(
        &self,
        key: &str,
        value: &serde_json::Value,
    ) -> StoreResult<bool> {
        let mut inner = self.lock();
        match inner.idempotency.get(key) {
            Some((existing, _)) if existing == value => {
                inner.idempotency.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn save_stats_day(&self, day: NaiveDate, doc: &serde_json::Value) -> StoreResult<()> {
        self.lock().stats.insert(day, doc.clone());
        Ok(())
    }

    async fn load_stats_days(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<(NaiveDate, serde_json::Value)>> {
        if from > to {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .stats
            .range(from..=to)
            .map(|(d, v)| (*d, v.clone()))
            .collect())
    }

    async fn prune_stats_before(&self, day: NaiveDate) -> StoreResult<u64> {
        let mut g = self.lock();
        let keep = g.stats.split_off(&day);
        let removed = g.stats.len() as u64;
        g.stats = keep;
        Ok(removed)
    }

    async fn save_webhook_job(&self, job: &WebhookJob) -> StoreResult<()> {
        let mut job = job.clone();
        rules::normalize_webhook_job(&mut job);
        self.lock().webhook_jobs.insert(job.webhook_id.clone(), job);
        Ok(())
    }

    async fn delete_webhook_job(&self, webhook_id: &str) -> StoreResult<bool> {
        Ok(self.lock().webhook_jobs.remove(webhook_id).is_some())
    }

    async fn pending_webhook_jobs(&self) -> StoreResult<Vec<WebhookJob>> {
        let mut jobs: Vec<WebhookJob> = self.lock().webhook_jobs.values().cloned().collect();
        jobs.sort_by(|a, b| (a.created_at, &a.webhook_id).cmp(&(b.created_at, &b.webhook_id)));
        Ok(jobs)
    }

    async fn claim_webhook_job(
        &self,
        webhook_id: &str,
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> StoreResult<Option<WebhookJob>> {
        // One process owns this store: nobody else could hold a claim.
        Ok(self.lock().webhook_jobs.get(webhook_id).cloned())
    }

    async fn release_webhook_job(&self, _webhook_id: &str, _owner: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn record_webhook_attempt(&self, attempt: &WebhookAttempt) -> StoreResult<()> {
        let mut attempt = attempt.clone();
        rules::normalize_webhook_attempt(&mut attempt);
        self.lock()
            .webhook_attempts
            .entry(attempt.task_id)
            .or_default()
            .push(attempt);
        Ok(())
    }

    async fn webhook_attempts(&self, task_id: TaskId) -> StoreResult<Vec<WebhookAttempt>> {
        Ok(self
            .lock()
            .webhook_attempts
            .get(&task_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn prune_webhook_attempts_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let cut = rules::ms(&before);
        let mut g = self.lock();
        let mut removed = 0u64;
        g.webhook_attempts.retain(|_, list| {
            let n = list.len();
            list.retain(|a| rules::ms(&a.at) >= cut);
            removed += (n - list.len()) as u64;
            !list.is_empty()
        });
        Ok(removed)
    }
}
