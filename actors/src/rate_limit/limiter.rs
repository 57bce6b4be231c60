//! The limiter the HTTP layer calls on every request: GCRA state per key in a sharded map.
//!
//! Why locks and not an actor: a check is a hash lookup and a few integer operations (well
//! under a microsecond). Sending it to an actor would cost two channel hand-offs and a task
//! wake-up per request, and would put every request of the server through one task. A
//! `std::sync::Mutex` per shard is held only for that lookup, never across an `.await`, and
//! 16 shards keep unrelated keys from contending.
//!
//! Memory stays bounded: a key whose bucket is full again is indistinguishable from a key never
//! seen (see [`super::gcra`]), so it is dropped. Each shard sweeps its idle keys every
//! [`SWEEP_EVERY`] checks and whenever it grows past its soft capacity, so the map holds about
//! the keys active within the last window.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::gcra::{self, Decision, Policy, Tat};

const SHARDS: usize = 16;
/// Checks between two sweeps of a shard.
pub const SWEEP_EVERY: u32 = 1024;
/// A shard larger than this is swept before it grows further.
const SOFT_CAPACITY: usize = 4096;

/// Where the limiter reads the time: the monotonic clock, or a fake one in tests.
pub trait Clock: Send + Sync + 'static {
    /// Time since an arbitrary fixed origin; never goes back.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

#[derive(Default)]
struct Shard {
    keys: HashMap<String, Tat>,
    since_sweep: u32,
}

impl Shard {
    fn sweep(&mut self, now: Duration) {
        self.keys.retain(|_, tat| !tat.is_idle(now));
        self.since_sweep = 0;
    }
}

pub struct RateLimiter {
    shards: Vec<Mutex<Shard>>,
    clock: Arc<dyn Clock>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(Arc::new(MonotonicClock::default()))
    }
}

impl RateLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> RateLimiter {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            clock,
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish() as usize) % self.shards.len();
        // A panic while holding a shard lock leaves plain data behind; keep using it.
        match self.shards[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Count one request of `key` under `policy` and say whether it may pass.
    pub fn check(&self, key: &str, policy: Policy) -> Decision {
        let now = self.clock.now();
        let mut shard = self.shard(key);
        shard.since_sweep += 1;
        if shard.since_sweep >= SWEEP_EVERY || shard.keys.len() >= SOFT_CAPACITY {
            shard.sweep(now);
        }
        let current = shard.keys.get(key).copied();
        let (decision, next) = gcra::check(current, policy, now);
        if let Some(tat) = next {
            if current.is_some() {
                if let Some(slot) = shard.keys.get_mut(key) {
                    *slot = tat;
                }
            } else {
                shard.keys.insert(key.to_string(), tat);
            }
        }
        decision
    }

    /// Keys currently tracked (idle ones not yet swept included).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(g) => g.keys.len(),
                Err(p) => p.into_inner().keys.len(),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct FakeClock(AtomicU64);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn keys_are_limited_separately() {
        let clock = Arc::new(FakeClock::default());
        let rl = RateLimiter::new(clock.clone());
        let p = Policy::new(2, Duration::from_secs(10));
        assert!(rl.check("key:a", p).allowed);
        assert!(rl.check("key:a", p).allowed);
        assert!(!rl.check("key:a", p).allowed);
        assert!(rl.check("key:b", p).allowed);
        clock.advance(Duration::from_secs(5));
        assert!(rl.check("key:a", p).allowed);
        assert!(!rl.check("key:a", p).allowed);
    }

    #[test]
    fn idle_keys_are_evicted_so_memory_stays_bounded() {
        let clock = Arc::new(FakeClock::default());
        let rl = RateLimiter::new(clock.clone());
        let p = Policy::new(10, Duration::from_secs(1));
        // Many one-off callers (say, anonymous IPs), one second apart in batches.
        for batch in 0..20u32 {
            for i in 0..5_000u32 {
                rl.check(&format!("ip:{batch}-{i}"), p);
            }
            clock.advance(Duration::from_secs(1));
        }
        // Never more than about one window's worth of keys (plus the sweep slack).
        let tracked = rl.tracked_keys();
        assert!(
            tracked <= 5_000 + SHARDS * SWEEP_EVERY as usize,
            "{tracked} keys tracked"
        );
        // Evicting changes no answer: a swept key starts with a full bucket, as it would have.
        let d = rl.check("ip:0-0", p);
        assert_eq!(d.remaining, 9);
    }
}
