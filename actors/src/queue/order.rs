//! The run order of pending tasks: priority descending, then first come first served.
//! Pure data structure; the supervisor owns one.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::model::{Priority, TaskId};

type Key = (Reverse<u8>, u64);

/// Pending task ids in run order, with O(log n) insert, remove, reprioritise and pop.
#[derive(Debug, Default)]
pub struct PendingOrder {
    order: BTreeSet<(Key, TaskId)>,
    keys: HashMap<TaskId, Key>,
}

impl PendingOrder {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, id: TaskId) -> bool {
        self.keys.contains_key(&id)
    }

    /// Add a task; `seq` is its FIFO position (from the store). Re-adding replaces.
    pub fn push(&mut self, id: TaskId, priority: Priority, seq: u64) {
        self.remove(id);
        let key = (Reverse(priority.get()), seq);
        self.order.insert((key, id));
        self.keys.insert(id, key);
    }

    pub fn remove(&mut self, id: TaskId) -> bool {
        match self.keys.remove(&id) {
            Some(key) => self.order.remove(&(key, id)),
            None => false,
        }
    }

    /// Move a task to its place for a new priority, keeping its FIFO position among equals.
    pub fn reprioritise(&mut self, id: TaskId, priority: Priority) -> bool {
        match self.keys.get(&id).copied() {
            Some((_, seq)) => {
                self.push(id, priority, seq);
                true
            }
            None => false,
        }
    }

    /// Give back the capacity a burst left behind once mostly empty (the set's nodes are
    /// freed as it empties).
    pub fn shrink_sparse(&mut self) {
        crate::mem::shrink_sparse(&mut self.keys);
    }

    /// Take the task that runs next.
    pub fn pop(&mut self) -> Option<TaskId> {
        let first = self.order.pop_first()?;
        self.keys.remove(&first.1);
        Some(first.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn p(n: i64) -> Priority {
        Priority::new(n).expect("valid priority")
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = PendingOrder::default();
        let ids: Vec<TaskId> = (0..5).map(|_| Uuid::new_v4()).collect();
        q.push(ids[0], p(5), 1);
        q.push(ids[1], p(5), 2);
        q.push(ids[2], p(9), 3);
        q.push(ids[3], p(1), 4);
        q.push(ids[4], p(9), 5);
        let order: Vec<TaskId> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![ids[2], ids[4], ids[0], ids[1], ids[3]]);
        assert!(q.is_empty());
    }

    #[test]
    fn reprioritise_moves_and_keeps_fifo_among_equals() {
        let mut q = PendingOrder::default();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        q.push(a, p(5), 1);
        q.push(b, p(5), 2);
        q.push(c, p(3), 3);
        assert!(q.reprioritise(c, p(5)));
        assert!(!q.reprioritise(Uuid::new_v4(), p(5)));
        assert_eq!(q.pop(), Some(a));
        assert_eq!(q.pop(), Some(b));
        assert_eq!(q.pop(), Some(c));
    }

    #[test]
    fn remove_takes_a_task_out() {
        let mut q = PendingOrder::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        q.push(a, p(5), 1);
        q.push(b, p(5), 2);
        assert!(q.remove(a));
        assert!(!q.remove(a));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some(b));
        assert_eq!(q.pop(), None);
    }
}
