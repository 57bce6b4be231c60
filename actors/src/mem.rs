//! Giving freed heap back to the operating system.
//!
//! glibc keeps freed memory on its free lists (one arena per thread that allocated), so a
//! burst of work leaves RSS high long after the data is gone. `malloc_trim(0)` returns the
//! free pages of every arena. Called when the process goes quiet (the SQLite writer after
//! [`crate::store::sqlite::IDLE_AFTER`] without writes), never on a hot path: it takes each
//! arena's lock while it walks it.

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
