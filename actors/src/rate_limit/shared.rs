//! The limit shared by every instance on one Redis: one GCRA state per key in Redis, decided
//! and updated by one Lua script, so N instances behind a load balancer limit a key as one.
//!
//! * Atomic: the script reads the key's TAT, decides and writes the new TAT with nothing
//!   interleaved, so two instances racing on one key cannot both take its last request.
//! * One clock: the script reads Redis's `TIME`, so instance clocks that disagree change
//!   nothing.
//! * Same answers as the local limiter: the script only finds the key's backlog (how far its
//!   TAT lies ahead of now) and applies the admission rule `backlog + T ≤ window`; the
//!   decision and the `RateLimit-*` values come from [`Grid::decide`], the same code the local
//!   limiter uses. Redis keeps numbers as doubles (exact below 2^53), so the script works in µs
//!   split into `1/scale` parts where `scale = limit / gcd(limit, window in µs)`: the interval is
//!   then a whole number and `limit` requests fit the window exactly (7 per second: exactly 7).
//!   A policy whose window in those units passes 2^53 (a limit in the hundreds of thousands
//!   over a day) is counted per instance instead (the RateLimitActor warns when the config
//!   holds one).
//! * Bounded: the state `<ns>:rl:<key>` (`"<tat µs>:<remainder>:<scale>"`) expires with
//!   `PEXPIRE` when its bucket is full again, which is exactly when it stops mattering.
//! * Redis unavailable: that request is decided by this instance's local table (one warning
//!   when it starts, one line when Redis answers again). Refusing every request (503) would turn
//!   a storage outage into a full outage of endpoints that need no storage; letting everything
//!   through would drop the protection silently. Meanwhile each instance enforces the limit on
//!   its own, so a key can get up to N times its limit across N instances.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use redis::Script;

use super::gcra::{Decision, Grid, Policy};
use crate::cluster::Cluster;

/// Largest integer a Lua number (a double) holds exactly.
const EXACT_MAX: u128 = 1 << 53;

/// The units the script counts in for `policy`: µs split in `1/scale`, with the grid that
/// decides in them. `None` when the numbers would not stay exact in Redis.
pub fn micro_grid(policy: Policy) -> Option<(u64, Grid)> {
    let window_ns = policy.window.as_nanos();
    if !window_ns.is_multiple_of(1000) {
        return None;
    }
    let window_us = window_ns / 1000;
    let limit = u128::from(policy.limit);
    let g = gcd(limit, window_us);
    let scale = limit / g;
    let grid = Grid {
        interval: window_us / g,
        window: window_us.checked_mul(scale)?,
        limit: policy.limit,
        nanos_per_unit: 1000,
        units_per_nano: scale,
    };
    (grid.window + grid.interval < EXACT_MAX).then_some((u64::try_from(scale).ok()?, grid))
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// `KEYS[1]` the key's state; `ARGV` scale, interval, window (in `1/scale` µs). Returns
/// `{allowed, backlog}`. The backlog is found in this policy's units: a state written under
/// another scale (the policy changed) is rounded up to the µs first, in the caller's
/// disfavour, as the local limiter does.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local scale = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local backlog = 0
local v = redis.call('GET', KEYS[1])
if v then
  local tat, rem, s = string.match(v, '^(%d+):(%d+):(%d+)$')
  if tat then
    tat = tonumber(tat); rem = tonumber(rem)
    if tonumber(s) ~= scale then
      if rem > 0 then tat = tat + 1 end
      rem = 0
    end
    backlog = math.max(0, (tat - now) * scale + rem)
  end
end
local nxt = backlog + interval
if nxt > window then
  return {0, backlog}
end
-- The new TAT, now + nxt units, as whole µs and a remainder (all below 2^53: exact).
local q = math.floor(nxt / scale)
local r = nxt - q * scale
if r < 0 then q = q - 1; r = r + scale end
if r >= scale then q = q + 1; r = r - scale end
redis.call('SET', KEYS[1], string.format('%.0f:%.0f:%.0f', now + q, r, scale),
           'PX', string.format('%.0f', math.floor(q / 1000) + 2))
return {1, backlog}
"#,
    )
});

/// The limit of a cluster, decided in Redis. The RateLimitActor owns it and falls back to its
/// own table when [`SharedLimiter::check`] cannot decide.
pub struct SharedLimiter {
    cluster: Arc<Cluster>,
    /// Redis failed on the last request (so the next failure is not logged again). Checks run
    /// concurrently, each in its own task: an atomic, not actor state.
    degraded: AtomicBool,
}

impl SharedLimiter {
    pub fn new(cluster: Arc<Cluster>) -> SharedLimiter {
        SharedLimiter {
            cluster,
            degraded: AtomicBool::new(false),
        }
    }

    /// Count one request of `key`; `None` when it could not be decided in Redis (Redis
    /// unavailable, or a policy too fine for it).
    pub async fn check(&self, key: &str, policy: Policy) -> Option<Decision> {
        let (scale, grid) = micro_grid(policy)?;
        let mut inv = GCRA.prepare_invoke();
        inv.key(self.cluster.key(&format!("rl:{key}")))
            .arg(scale)
            .arg(grid.interval.to_string())
            .arg(grid.window.to_string());
        let answer: Result<(i64, u64), _> = inv.invoke_async(&mut self.cluster.conn()).await;
        match answer {
            Ok((allowed, backlog)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    log::info!("Redis answers again: rate limits are shared again");
                }
                let decision = grid.decide(u128::from(backlog));
                if decision.allowed != (allowed == 1) {
                    // Both apply the same rule to the same number; say so if they ever differ.
                    log::error!(key = key, backlog = backlog; "the shared rate limit script and the local rule disagree");
                }
                Some(decision)
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    log::warn!(error:% = e; "Redis is unavailable: rate limits are counted per instance until it answers");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rate_limit::gcra::check;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_units_make_the_interval_whole_and_stay_exact() {
        // 100 per minute: 600,000 µs apart, no split needed.
        let (scale, g) = micro_grid(Policy::new(100, 60 * SEC)).expect("grid");
        assert_eq!((scale, g.interval, g.window), (1, 600_000, 60_000_000));
        // 7 per second: 1e6/7 µs is not whole, so µs are split in sevenths.
        let (scale, g) = micro_grid(Policy::new(7, SEC)).expect("grid");
        assert_eq!((scale, g.interval, g.window), (7, 1_000_000, 7_000_000));
        // Too fine to stay below 2^53 in Redis.
        assert!(micro_grid(Policy::new(999_983, Duration::from_secs(86_400 * 365))).is_none());
    }

    /// The shared units give the local limiter's answers: same decisions, same headers.
    #[test]
    fn shared_units_decide_like_the_local_limiter() {
        for policy in [
            Policy::new(3, 60 * SEC),
            Policy::new(7, SEC),
            Policy::new(100, Duration::from_millis(1500)),
        ] {
            let (scale, grid) = micro_grid(policy).expect("grid");
            let mut tat = None;
            // The script's state: backlog in shared units, replayed at the same instants.
            let mut shared_tat: Option<u128> = None; // in 1/scale µs since the epoch
            for ms in [0u64, 0, 0, 1, 10, 19_999, 20_000, 20_000, 61_000, 61_001] {
                let now = Duration::from_millis(ms);
                let (local, next) = check(tat, policy, now);
                tat = next;
                let now_units = u128::from(ms) * 1000 * u128::from(scale);
                let backlog = shared_tat.map_or(0, |t| t.saturating_sub(now_units));
                let shared = grid.decide(backlog);
                if shared.allowed {
                    shared_tat = Some(now_units + backlog + grid.interval);
                }
                assert_eq!(shared, local, "{policy:?} at {ms} ms");
            }
        }
    }
}
