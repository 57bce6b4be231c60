//! GCRA, the generic cell rate algorithm: "at most `limit` requests per `window`", with the
//! whole `limit` available as a burst, refilled smoothly (one request every `window/limit`).
//!
//! One number per key, the theoretical arrival time (TAT): the time at which the key's bucket
//! would be full again. A request at `now` is allowed when `max(TAT, now) + T - now ≤ window`
//! (`T = window/limit`), and then moves TAT to `max(TAT, now) + T`. Compared with a fixed
//! window there is no boundary where 2×limit requests pass; compared with a sliding log it
//! keeps one number instead of a timestamp per request. A key whose TAT is in the past is in
//! exactly the state of a key never seen, so idle keys can be dropped without changing any
//! answer (see [`super::limiter`]).
//!
//! Exact arithmetic: times are kept in units of `1/limit` ns, in which `T` is exactly `window`
//! ns, so `limit` requests fit into `window` whatever the numbers (no rounding of `T`). The
//! state remembers its unit; a policy change rescales it (rounding up, in the caller's
//! disfavour by at most 1 ns).

use std::time::Duration;

/// A limit: `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    pub limit: u64,
    pub window: Duration,
}

impl Policy {
    /// A policy with both numbers at least 1 (0 would mean "never" or "divide by zero").
    pub fn new(limit: u64, window: Duration) -> Policy {
        Policy {
            limit: limit.max(1),
            window: window.max(Duration::from_millis(1)),
        }
    }

    fn window_ns(&self) -> u128 {
        self.window.as_nanos()
    }

    /// `RateLimit-Policy`: `<limit>;w=<window seconds>` (IETF ratelimit-headers draft). A
    /// window that is not a whole number of seconds is rounded up.
    pub fn header(&self) -> String {
        format!("{};w={}", self.limit, ceil_secs(self.window))
    }
}

/// One key's state: its TAT, in units of `1/scale` ns since the limiter's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tat {
    scaled: u128,
    scale: u64,
}

impl Tat {
    /// The TAT in ns since the epoch (rounded up).
    pub fn as_nanos(&self) -> u128 {
        self.scaled.div_ceil(u128::from(self.scale))
    }

    fn rescaled(&self, scale: u64) -> u128 {
        if scale == self.scale {
            self.scaled
        } else {
            self.as_nanos() * u128::from(scale)
        }
    }

    /// True when the bucket is full again at `now`: the key behaves as if never seen.
    pub fn is_idle(&self, now: Duration) -> bool {
        self.as_nanos() <= now.as_nanos()
    }
}

/// The answer for one request, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    /// Requests still allowed right now after this one.
    pub remaining: u64,
    /// Time until the bucket is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// When refused: time until one request will be allowed (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// `RateLimit-Reset` in whole seconds (rounded up).
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }

    /// `Retry-After` in whole seconds: rounded up, at least 1 (0 would invite a retry storm).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_secs(d).max(1))
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let ns = d.as_nanos();
    u64::try_from(ns.div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
}

/// Decide one request at `now` (time since the limiter's epoch) for a key in state `tat`
/// (`None`: never seen or idle). Returns the decision and the key's new state.
pub fn check(tat: Option<Tat>, policy: Policy, now: Duration) -> (Decision, Option<Tat>) {
    let scale = policy.limit;
    let s = u128::from(scale);
    let now_s = now.as_nanos() * s;
    let start = tat.map_or(now_s, |x| x.rescaled(scale).max(now_s));
    let grid = Grid {
        interval: policy.window_ns(), // the emission interval, in scaled units
        window: policy.window_ns() * s,
        limit: policy.limit,
        nanos_per_unit: 1,
        units_per_nano: s,
    };
    let decision = grid.decide(start - now_s);
    let next = decision.allowed.then_some(Tat {
        scaled: start + grid.interval,
        scale,
    });
    (decision, next.or(tat))
}

/// The GCRA maths in units of the caller's choosing, from the one number that matters: the
/// key's backlog, how far its TAT lies ahead of now (0 for an idle key). The local limiter
/// uses `1/limit` ns; the shared one (Redis, [`super::shared`]) µs split finely enough that the
/// interval is a whole number. Both decide and render headers here, so they answer alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// `T`, the emission interval (window / limit), in units.
    pub interval: u128,
    /// The window, in units.
    pub window: u128,
    pub limit: u64,
    /// One unit is `nanos_per_unit / units_per_nano` ns.
    pub nanos_per_unit: u128,
    pub units_per_nano: u128,
}

impl Grid {
    /// The answer for a request that finds `backlog` units ahead. It is allowed when the
    /// backlog plus one interval still fits in the window; the key's TAT then moves one
    /// interval (to `now + backlog + interval`); a refused request changes nothing.
    pub fn decide(&self, backlog: u128) -> Decision {
        let next = backlog + self.interval;
        if next <= self.window {
            Decision {
                allowed: true,
                limit: self.limit,
                remaining: u64::try_from((self.window - next) / self.interval).unwrap_or(u64::MAX),
                reset: self.duration(next),
                retry_after: None,
            }
        } else {
            // Allowed again once `backlog + interval - elapsed ≤ window`.
            Decision {
                allowed: false,
                limit: self.limit,
                remaining: 0,
                reset: self.duration(backlog),
                retry_after: Some(self.duration(next - self.window)),
            }
        }
    }

    /// `units` as a duration, rounded up to the ns.
    fn duration(&self, units: u128) -> Duration {
        let ns = (units * self.nanos_per_unit).div_ceil(self.units_per_nano.max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Run requests at the given times (seconds) through one key; return the decisions.
    fn run(policy: Policy, times_ms: &[u64]) -> Vec<Decision> {
        let mut tat = None;
        times_ms
            .iter()
            .map(|ms| {
                let (d, next) = check(tat, policy, Duration::from_millis(*ms));
                tat = next;
                d
            })
            .collect()
    }

    #[test]
    fn the_whole_limit_is_a_burst_then_one_per_interval() {
        let p = Policy::new(3, 60 * SEC);
        let d = run(p, &[0, 0, 0, 0]);
        assert_eq!(
            d.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(
            d.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert_eq!(
            d.iter().map(|d| d.reset_secs()).collect::<Vec<_>>(),
            [20, 40, 60, 60]
        );
        assert_eq!(d[3].retry_after_secs(), Some(20));
        assert_eq!(d[0].retry_after, None);
    }

    #[test]
    fn refused_requests_do_not_consume_and_the_bucket_refills() {
        let p = Policy::new(3, 60 * SEC);
        // Burst at 0; refused at 19.999 s; one more at 20 s; full again at 80 s.
        let d = run(p, &[0, 0, 0, 19_999, 20_000, 20_000, 80_000]);
        let allowed: Vec<_> = d.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false, true, false, true]);
        assert_eq!(d[3].retry_after, Some(Duration::from_millis(1)));
        assert_eq!(d[3].retry_after_secs(), Some(1));
        assert_eq!(d[6].remaining, 2);
    }

    #[test]
    fn uneven_divisions_are_exact() {
        // 7 per second: T is not a whole number of ns, yet exactly 7 pass and the 8th not.
        let p = Policy::new(7, SEC);
        let d = run(p, &[0; 8]);
        assert_eq!(d.iter().filter(|d| d.allowed).count(), 7);
        assert_eq!(d[6].remaining, 0);
        assert_eq!(d[6].reset, SEC);
        // A limit larger than the window in ns still lets the whole limit through.
        let p = Policy::new(5_000_000, Duration::from_millis(1));
        let mut tat = None;
        for _ in 0..5_000_000u32 / 1000 {
            let (d, n) = check(tat, p, Duration::ZERO);
            assert!(d.allowed);
            tat = n;
        }
    }

    #[test]
    fn idle_keys_are_like_new_ones() {
        let p = Policy::new(2, 10 * SEC);
        let (_, tat) = check(None, p, Duration::ZERO);
        let tat = tat.expect("state");
        assert!(!tat.is_idle(Duration::from_secs(4)));
        assert!(tat.is_idle(Duration::from_secs(5)));
        let later = Duration::from_secs(5);
        assert_eq!(check(Some(tat), p, later).0, check(None, p, later).0);
    }

    #[test]
    fn a_new_policy_applies_to_the_next_request() {
        let strict = Policy::new(1, 60 * SEC);
        let loose = Policy::new(100, 60 * SEC);
        let (d, tat) = check(None, strict, Duration::ZERO);
        assert!(d.allowed);
        assert!(!check(tat, strict, Duration::ZERO).0.allowed);
        // Raised: the spent minute counts against the new limit (60 of 60 s used = 100 of 100).
        let (d, _) = check(tat, loose, Duration::ZERO);
        assert!(!d.allowed);
        let (d, _) = check(tat, loose, Duration::from_millis(600));
        assert!(d.allowed, "{d:?}");
    }

    #[test]
    fn zero_values_are_clamped_and_headers_are_rendered() {
        let p = Policy::new(0, Duration::ZERO);
        assert_eq!(p.limit, 1);
        assert_eq!(Policy::new(100, 60 * SEC).header(), "100;w=60");
        assert_eq!(
            Policy::new(5, Duration::from_millis(1500)).header(),
            "5;w=2"
        );
    }
}
