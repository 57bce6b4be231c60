//! Giving freed heap back to the operating system.
//!
//! glibc keeps freed memory on its free lists (one arena per thread that allocated), so a
//! burst of work leaves RSS high long after the data is gone. `malloc_trim(0)` returns the
//! free pages of every arena. Called when the process goes quiet, never on a hot path (it
//! takes each arena's lock while it walks it): by the queue [`QUIET_AFTER`] after its last run
//! ended with nothing pending, whatever the storage, and by the SQLite writer after
//! [`QUIET_AFTER`] without writes, once it has dropped its page caches.
//!
//! Collections keep the capacity of their largest size: a map that held 10,000 pending tasks
//! for a moment holds their room until it is dropped. [`shrink_sparse`] gives most of it back
//! once the collection is mostly empty.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

/// How long without work before memory is given back: short enough to run between a burst
/// and the next look at RSS, long enough not to run between the runs or writes of a busy
/// queue.
pub const QUIET_AFTER: Duration = Duration::from_millis(500);

/// Below this capacity a collection is left alone (shrinking it would save little and churn).
const MIN_SHRINK_CAPACITY: usize = 64;

/// A collection that can give back spare capacity.
pub trait Shrink {
    fn len_and_capacity(&self) -> (usize, usize);
    /// Keep room for at least `min` elements.
    fn shrink_to(&mut self, min: usize);
}

impl<K: Eq + Hash, V, S: BuildHasher> Shrink for HashMap<K, V, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        HashMap::shrink_to(self, min);
    }
}

impl<T> Shrink for VecDeque<T> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        VecDeque::shrink_to(self, min);
    }
}

impl<T> Shrink for Vec<T> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to(&mut self, min: usize) {
        Vec::shrink_to(self, min);
    }
}

/// Call after removing from `c`: when it uses under a quarter of its capacity, shrink it to
/// twice its length. The headroom and the quarter keep a collection that shrinks and grows
/// again from reallocating on every change (amortised O(1), as growing is).
pub fn shrink_sparse(c: &mut impl Shrink) {
    let (len, capacity) = c.len_and_capacity();
    if capacity > MIN_SHRINK_CAPACITY && len < capacity / 4 {
        c.shrink_to(len.saturating_mul(2));
    }
}

/// Set up the allocator for a long-running daemon whose load comes in bursts; call once at
/// start-up, before other threads run.
///
/// glibc raises its trim threshold to twice the largest mmapped block freed so far (up to
/// 64 MiB): after a burst of 10,000 tasks freed a 1.7 MiB map, each thread's arena kept up to
/// 3.4 MiB of free space at its top, which `malloc_trim` does not release in arenas other than
/// the main one (measured: 2.4 MiB of RSS after such a drain). Setting the threshold, to the
/// initial 128 KiB, turns that adjustment off: free space at an arena's top beyond it goes back
/// to the OS when freed, and blocks of 128 KiB or more stay mmapped (unmapped when freed).
///
/// It also allows one arena per core instead of glibc's eight: the actor system adds threads
/// that allocate (arbiters, HTTP workers), and a thread takes an arena of its own while there
/// are fewer than the limit, so a record built on one thread and freed on another fragments
/// more heaps. No more threads than cores run at once, so more arenas buy little but
/// fragmentation (measured, `ccs-bench`, memory store, 10,000 tasks drained: 32.8 → 27.2 MiB
/// anonymous RSS after the drain; CPU per run and `/health` throughput level).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// glibc's own initial trim threshold.
        const TRIM_THRESHOLD: libc::c_int = 128 * 1024;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters; called before other threads start.
        // It cannot refuse a non-negative threshold or a positive arena count, and the
        // defaults would do if it did.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Return free heap pages to the OS where the allocator supports it (glibc); a no-op
/// elsewhere. Returns whether anything was released.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a byte count, touches only the allocator's own state and
        // is thread-safe (it locks each arena); 0 keeps no extra padding at the heap's top.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mostly_empty_collection_gives_its_room_back_and_a_full_one_keeps_it() {
        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = map.capacity();
        shrink_sparse(&mut map);
        assert_eq!(map.capacity(), full, "a full map keeps its capacity");
        map.retain(|k, _| *k < 100);
        shrink_sparse(&mut map);
        assert!(map.capacity() < full / 10, "capacity {}", map.capacity());
        assert!(map.capacity() >= 200, "room for twice the length");
        assert_eq!(map.len(), 100);

        let mut queue: VecDeque<u32> = (0..10_000).collect();
        queue.drain(..9_990);
        shrink_sparse(&mut queue);
        assert!(queue.capacity() < 100, "capacity {}", queue.capacity());
        assert_eq!(
            queue.iter().copied().collect::<Vec<_>>(),
            (9_990..10_000).collect::<Vec<_>>()
        );

        // Small collections are left alone.
        let mut small: Vec<u32> = Vec::with_capacity(MIN_SHRINK_CAPACITY);
        small.push(1);
        shrink_sparse(&mut small);
        assert_eq!(small.capacity(), MIN_SHRINK_CAPACITY);
    }

    #[test]
    fn trimming_after_freeing_a_burst_gives_memory_back() {
        // Many small blocks (below the mmap threshold, so they live on the heap), freed again:
        // glibc keeps them; the trim must release at least some of them.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 1000]).collect();
        assert_eq!(blocks.len(), 20_000);
        drop(blocks);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(super::trim_heap(), "malloc_trim released nothing");
        } else {
            assert!(!super::trim_heap());
        }
    }
}
