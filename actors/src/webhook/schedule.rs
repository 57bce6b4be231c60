//! When to try again: `webhook.retries` retries after the first attempt, the first one
//! `webhook.backoffMs` later, each following delay doubled, plus up to a quarter of jitter so
//! that deliveries failing together (a receiver outage) do not come back in lockstep.
//!
//! Jitter only adds: a retry never comes sooner than `backoffMs * 2^(n-1)`.

use std::time::Duration;

/// No single wait is longer than this, however many retries are configured.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Attempts a delivery gets in all: the first plus `retries`.
pub fn total_attempts(retries: u32) -> u32 {
    retries.saturating_add(1)
}

/// The delay before retry `retry` (1 = the first retry), before jitter.
pub fn base_delay(backoff_ms: u64, retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(63);
    let ms = backoff_ms.saturating_mul(1u64 << doublings);
    Duration::from_millis(ms).min(MAX_DELAY)
}

/// The delay before retry `retry`, with `unit` in `[0, 1)` choosing the jitter.
pub fn retry_delay(backoff_ms: u64, retry: u32, unit: f64) -> Duration {
    let base = base_delay(backoff_ms, retry);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (base + base.mul_f64(unit / 4.0)).min(MAX_DELAY)
}

/// A random number in `[0, 1)` for the jitter. Version-4 UUIDs are drawn from the OS random
/// source; their last 7 bytes are all random, so the low 53 bits make a uniform fraction (and
/// the crate needs no extra dependency for it).
pub fn jitter_unit() -> f64 {
    const BITS: u32 = 53;
    let r = uuid::Uuid::new_v4().as_u128() & ((1u128 << BITS) - 1);
    r as f64 / (1u64 << BITS) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn attempts_are_the_first_plus_the_retries() {
        assert_eq!(total_attempts(0), 1);
        assert_eq!(total_attempts(3), 4);
        assert_eq!(total_attempts(u32::MAX), u32::MAX);
    }

    #[test]
    fn delays_double_from_backoff_ms() {
        let got: Vec<Duration> = (1..=4).map(|n| base_delay(1000, n)).collect();
        assert_eq!(got, vec![ms(1000), ms(2000), ms(4000), ms(8000)]);
        assert_eq!(base_delay(50, 1), ms(50));
        assert_eq!(base_delay(0, 5), ms(0));
    }

    #[test]
    fn delays_are_capped_and_never_overflow() {
        assert_eq!(base_delay(1000, 40), MAX_DELAY);
        assert_eq!(base_delay(u64::MAX, u32::MAX), MAX_DELAY);
        assert_eq!(retry_delay(u64::MAX, 200, 0.99), MAX_DELAY);
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        assert_eq!(retry_delay(1000, 2, 0.0), ms(2000));
        assert_eq!(retry_delay(1000, 2, 0.5), ms(2250));
        assert!(retry_delay(1000, 2, 0.999_999) < ms(2500));
        // Out-of-range units cannot shorten or blow up the delay.
        assert_eq!(retry_delay(1000, 1, -3.0), ms(1000));
        assert_eq!(retry_delay(1000, 1, f64::NAN), ms(1000));
        assert_eq!(retry_delay(1000, 1, 7.0), ms(1250));
    }

    #[test]
    fn jitter_units_are_in_range_and_vary() {
        let units: Vec<f64> = (0..64).map(|_| jitter_unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        let first = units[0];
        assert!(units.iter().any(|u| *u != first));
    }
}
