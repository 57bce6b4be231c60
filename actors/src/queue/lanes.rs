//! The schedule: pending tasks in run order, with one lane per session so that a session's
//! turns run one at a time, in the order they were submitted.
//!
//! A task without a session is eligible at once. A session task is eligible only when no
//! earlier task of its session is pending or running; until then it waits in its session's
//! lane. Only eligible tasks are in the run order, so picking the next task stays O(log n).

use std::collections::{HashMap, VecDeque};

use super::order::PendingOrder;
use crate::mem;
use crate::model::{Priority, SessionId, TaskId};

#[derive(Debug, Default)]
struct Lane {
    /// The session's task that is eligible (in the run order) or running.
    active: Option<TaskId>,
    /// Later turns, in submission order.
    waiting: VecDeque<(TaskId, Priority, u64)>,
}

#[derive(Debug, Default)]
pub struct Schedule {
    order: PendingOrder,
    lanes: HashMap<SessionId, Lane>,
    session_of: HashMap<TaskId, SessionId>,
    waiting_count: usize,
}

impl Schedule {
    /// Pending tasks, eligible or waiting in a lane.
    pub fn pending_len(&self) -> usize {
        self.order.len() + self.waiting_count
    }

    /// Add a pending task. Tasks of one session must be pushed in submission order.
    pub fn push(&mut self, id: TaskId, priority: Priority, seq: u64, session: Option<SessionId>) {
        let Some(sid) = session else {
            self.order.push(id, priority, seq);
            return;
        };
        self.session_of.insert(id, sid);
        let lane = self.lanes.entry(sid).or_default();
        if lane.active.is_none() {
            lane.active = Some(id);
            self.order.push(id, priority, seq);
        } else {
            lane.waiting.push_back((id, priority, seq));
            self.waiting_count += 1;
        }
    }

    /// Take the next task to run. A session task stays its lane's active task until
    /// [`Schedule::finished`].
    pub fn pop(&mut self) -> Option<TaskId> {
        let id = self.order.pop();
        self.order.shrink_sparse();
        id
    }

    /// After a burst of 10,000 pending tasks the maps would keep room for 10,000: give most of
    /// it back as they empty.
    fn shrink_sparse(&mut self) {
        self.order.shrink_sparse();
        mem::shrink_sparse(&mut self.lanes);
        mem::shrink_sparse(&mut self.session_of);
    }

    /// Whether the task is pending here (eligible or waiting).
    pub fn is_pending(&self, id: TaskId) -> bool {
        self.order.contains(id) || self.waiting_position(id).is_some()
    }

    fn waiting_position(&self, id: TaskId) -> Option<(SessionId, usize)> {
        let sid = *self.session_of.get(&id)?;
        let pos = self
            .lanes
            .get(&sid)?
            .waiting
            .iter()
            .position(|(t, _, _)| *t == id)?;
        Some((sid, pos))
    }

    /// Drop a pending task (cancelled). Returns whether it was pending here.
    pub fn remove_pending(&mut self, id: TaskId) -> bool {
        if self.order.remove(id) {
            self.release(id);
            self.shrink_sparse();
            return true;
        }
        if let Some((sid, pos)) = self.waiting_position(id) {
            if let Some(lane) = self.lanes.get_mut(&sid) {
                lane.waiting.remove(pos);
                mem::shrink_sparse(&mut lane.waiting);
                self.waiting_count -= 1;
            }
            self.session_of.remove(&id);
            self.shrink_sparse();
            return true;
        }
        false
    }

    /// A running task ended: its session's next turn becomes eligible.
    pub fn finished(&mut self, id: TaskId) {
        self.release(id);
        self.shrink_sparse();
    }

    /// `id` leaves its lane's active place; promote the next waiting turn.
    fn release(&mut self, id: TaskId) {
        let Some(sid) = self.session_of.remove(&id) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&sid) else {
            return;
        };
        if lane.active != Some(id) {
            return;
        }
        match lane.waiting.pop_front() {
            Some((next, priority, seq)) => {
                mem::shrink_sparse(&mut lane.waiting);
                lane.active = Some(next);
                self.waiting_count -= 1;
                self.order.push(next, priority, seq);
            }
            None => {
                self.lanes.remove(&sid);
            }
        }
    }

    /// A pending task's new priority. Within a lane the order stays submission order.
    pub fn reprioritise(&mut self, id: TaskId, priority: Priority) -> bool {
        if self.order.reprioritise(id, priority) {
            return true;
        }
        if let Some((sid, pos)) = self.waiting_position(id) {
            if let Some(entry) = self
                .lanes
                .get_mut(&sid)
                .and_then(|l| l.waiting.get_mut(pos))
            {
                entry.1 = priority;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn p(n: i64) -> Priority {
        Priority::new(n).expect("valid")
    }

    #[test]
    fn a_session_runs_one_turn_at_a_time_in_order() {
        let mut s = Schedule::default();
        let sid = Uuid::new_v4();
        let (t1, t2, t3, other) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        s.push(t1, p(5), 1, Some(sid));
        s.push(t2, p(10), 2, Some(sid));
        s.push(t3, p(5), 3, Some(sid));
        s.push(other, p(1), 4, None);
        assert_eq!(s.pending_len(), 4);
        assert_eq!(s.pop(), Some(t1));
        // t2 has a higher priority but must wait for t1.
        assert_eq!(s.pop(), Some(other));
        assert_eq!(s.pop(), None);
        s.finished(t1);
        assert_eq!(s.pop(), Some(t2));
        assert_eq!(s.pop(), None);
        s.finished(t2);
        assert_eq!(s.pop(), Some(t3));
        s.finished(t3);
        assert_eq!(s.pending_len(), 0);
        assert!(s.lanes.is_empty());
    }

    #[test]
    fn a_drained_burst_gives_its_room_back() {
        let mut s = Schedule::default();
        for seq in 0..10_000 {
            s.push(Uuid::new_v4(), p(5), seq, Some(Uuid::new_v4()));
        }
        let full = s.lanes.capacity();
        while let Some(id) = s.pop() {
            s.finished(id);
        }
        assert_eq!(s.pending_len(), 0);
        assert!(
            s.lanes.capacity() < full / 10,
            "{} of {full}",
            s.lanes.capacity()
        );
        assert!(s.session_of.capacity() < full / 10);
    }

    #[test]
    fn cancelling_a_pending_turn_keeps_the_lane_moving() {
        let mut s = Schedule::default();
        let sid = Uuid::new_v4();
        let (t1, t2, t3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        s.push(t1, p(5), 1, Some(sid));
        s.push(t2, p(5), 2, Some(sid));
        s.push(t3, p(5), 3, Some(sid));
        // Cancel the waiting middle turn, then the eligible first one.
        assert!(s.remove_pending(t2));
        assert!(!s.is_pending(t2));
        assert!(s.remove_pending(t1));
        assert_eq!(s.pop(), Some(t3));
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn reprioritise_reaches_waiting_turns() {
        let mut s = Schedule::default();
        let sid = Uuid::new_v4();
        let (t1, t2, x) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        s.push(t1, p(5), 1, Some(sid));
        s.push(t2, p(1), 2, Some(sid));
        s.push(x, p(5), 3, None);
        assert!(s.reprioritise(t2, p(9)));
        assert_eq!(s.pop(), Some(t1));
        s.finished(t1);
        // t2 now outranks x.
        assert_eq!(s.pop(), Some(t2));
        assert_eq!(s.pop(), Some(x));
    }
}
