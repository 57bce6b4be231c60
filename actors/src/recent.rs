//! [`Recent`]: a figure fetched at most once per interval, for what is polled far more often
//! than it changes and costs a network round trip to learn — `/health` and the queue status
//! on Redis (a `PING` and a `ZCARD`), which load balancers and dashboards poll. Without it,
//! 64 clients polling `/health` made 2 Redis round trips per request and capped `/health` at
//! the rate Redis answers them.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How old a polled figure may be: short enough that an outage shows at once to anyone
/// polling, long enough that a flood of polls costs a few round trips a second.
pub const HEALTH_MAX_AGE: Duration = Duration::from_millis(100);

/// The last value fetched and when. Callers that find it too old fetch again (several may
/// do so at once; each then stores its own answer, the newest wins).
pub struct Recent<T> {
    max_age: Duration,
    last: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Recent<T> {
    pub fn new(max_age: Duration) -> Recent<T> {
        Recent {
            max_age,
            last: Mutex::new(None),
        }
    }

    /// The stored value if it is younger than `max_age`, else what `fetch` returns (stored).
    pub async fn get<F, Fut>(&self, fetch: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        if let Some((at, v)) = &*self.lock() {
            if at.elapsed() < self.max_age {
                return v.clone();
            }
        }
        let v = fetch().await;
        *self.lock() = Some((Instant::now(), v.clone()));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, T)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn fetches_once_per_interval() {
        let recent = Recent::new(Duration::from_millis(100));
        let fetches = AtomicU32::new(0);
        let fetch = || async { fetches.fetch_add(1, Ordering::SeqCst) + 1 };
        assert_eq!(recent.get(fetch).await, 1);
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(
            recent.get(fetch).await,
            1,
            "fetched again within the interval"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(recent.get(fetch).await, 2, "an old value was kept");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
