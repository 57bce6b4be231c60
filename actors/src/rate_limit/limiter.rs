//! The per-key GCRA state of one instance: a [`DashMap`] from key to TAT, owned by the
//! [`RateLimitActor`](super::actor::RateLimitActor) and read by the hot check directly.
//!
//! Why the hot check reads the map rather than asking the actor: a check is a hash lookup and
//! a few integer operations under one of the map's shard locks (well under a microsecond). A
//! message to the actor and its answer cost microseconds and put every request of the server
//! through the actor's one thread (measured in [`super::actor`]). The actor keeps what is not
//! per request: sweeping, reacting to reloads, the Redis sharing.
//!
//! Memory stays bounded: a key whose bucket is full again is indistinguishable from a key never
//! seen (see [`super::gcra`]), so [`Table::sweep`] drops it. The actor sweeps every
//! [`SWEEP_EVERY`], and sooner when [`SWEEP_AFTER_NEW_KEYS`] keys were added since the last
//! sweep (the check that adds the one past that number says so, [`Checked::sweep_due`]), so the
//! map holds about the keys active within the last window.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::gcra::{self, Decision, Policy, Tat};

/// How often the actor sweeps idle keys.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Keys added since the last sweep that make the next one due at once.
pub const SWEEP_AFTER_NEW_KEYS: usize = 16_384;

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

/// One check's answer, and whether it made a sweep due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub decision: Decision,
    /// This check added the key that passed [`SWEEP_AFTER_NEW_KEYS`]: ask the actor to sweep
    /// (once: later checks do not say so again until the sweep).
    pub sweep_due: bool,
}

/// The per-key state.
pub struct Table {
    keys: DashMap<String, Tat>,
    clock: Arc<dyn Clock>,
    /// Keys added since the last sweep.
    added: AtomicUsize,
}

impl Default for Table {
    fn default() -> Self {
        Table::new(Arc::new(MonotonicClock::default()))
    }
}

impl Table {
    pub fn new(clock: Arc<dyn Clock>) -> Table {
        Table {
            keys: DashMap::new(),
            clock,
            added: AtomicUsize::new(0),
        }
    }

    /// Count one request of `key` under `policy` and say whether it may pass.
    pub fn check(&self, key: &str, policy: Policy) -> Checked {
        let now = self.clock.now();
        let decide = |tat: &mut Tat| {
            let (decision, next) = gcra::check(Some(*tat), policy, now);
            *tat = next.unwrap_or(*tat);
            decision
        };
        // A known key: no allocation.
        if let Some(mut tat) = self.keys.get_mut(key) {
            return Checked {
                decision: decide(&mut tat),
                sweep_due: false,
            };
        }
        match self.keys.entry(key.to_owned()) {
            // Added by another check meanwhile.
            Entry::Occupied(mut e) => Checked {
                decision: decide(e.get_mut()),
                sweep_due: false,
            },
            Entry::Vacant(e) => {
                let (decision, next) = gcra::check(None, policy, now);
                let mut sweep_due = false;
                if let Some(tat) = next {
                    e.insert(tat);
                    sweep_due =
                        self.added.fetch_add(1, Ordering::Relaxed) + 1 == SWEEP_AFTER_NEW_KEYS;
                }
                Checked {
                    decision,
                    sweep_due,
                }
            }
        }
    }

    /// Drop the keys whose bucket is full again; returns how many.
    pub fn sweep(&self) -> usize {
        self.added.store(0, Ordering::Relaxed);
        let now = self.clock.now();
        let before = self.keys.len();
        self.keys.retain(|_, tat| !tat.is_idle(now));
        before.saturating_sub(self.keys.len())
    }

    /// Forget every key (rate limiting was turned off).
    pub fn clear(&self) {
        self.keys.clear();
        self.added.store(0, Ordering::Relaxed);
    }

    /// Keys currently tracked (idle ones not yet swept included).
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Default)]
    pub(crate) struct FakeClock(AtomicU64);

    impl FakeClock {
        pub(crate) fn advance(&self, d: Duration) {
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
        let t = Table::new(clock.clone());
        let p = Policy::new(2, Duration::from_secs(10));
        let allowed = |key| t.check(key, p).decision.allowed;
        assert!(allowed("key:a"));
        assert!(allowed("key:a"));
        assert!(!allowed("key:a"));
        assert!(allowed("key:b"));
        clock.advance(Duration::from_secs(5));
        assert!(allowed("key:a"));
        assert!(!allowed("key:a"));
    }

    #[test]
    fn a_sweep_drops_idle_keys_only_and_changes_no_answer() {
        let clock = Arc::new(FakeClock::default());
        let t = Table::new(clock.clone());
        let p = Policy::new(10, Duration::from_secs(1));
        for i in 0..100 {
            t.check(&format!("ip:{i}"), p);
        }
        clock.advance(Duration::from_secs(1));
        t.check("ip:busy", p);
        assert_eq!(t.sweep(), 100);
        assert_eq!(
            t.tracked_keys(),
            1,
            "the key active within the window stays"
        );
        // A swept key starts with a full bucket, as it would have.
        assert_eq!(t.check("ip:0", p).decision.remaining, 9);
    }

    #[test]
    fn the_check_that_passes_the_new_key_threshold_says_a_sweep_is_due_once() {
        let t = Table::default();
        let p = Policy::new(1, Duration::from_secs(60));
        let due: Vec<usize> = (0..SWEEP_AFTER_NEW_KEYS * 2)
            .filter(|i| t.check(&format!("ip:{i}"), p).sweep_due)
            .collect();
        assert_eq!(due, [SWEEP_AFTER_NEW_KEYS - 1]);
        // Known keys never count; after a sweep the count starts again.
        assert!(!t.check("ip:0", p).sweep_due);
        t.sweep();
        let due = (0..SWEEP_AFTER_NEW_KEYS)
            .filter(|i| t.check(&format!("new:{i}"), p).sweep_due)
            .count();
        assert_eq!(due, 1);
    }
}
