//! Percentiles of one measurement and medians across repeats.

use std::time::Duration;

/// The `q`-quantile (0 < q ≤ 1) of `samples` by the nearest-rank method: the smallest sample
/// such that at least `q · n` samples are ≤ it. `None` when there are no samples.
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// The median of `values` (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// Latencies of one loop, in milliseconds, and its wall time.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub ms: Vec<f64>,
    pub wall: Duration,
}

impl Latencies {
    pub fn new(samples: &[Duration], wall: Duration) -> Latencies {
        Latencies {
            ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
            wall,
        }
    }

    pub fn p50(&self) -> f64 {
        percentile(&self.ms, 0.50).unwrap_or(f64::NAN)
    }

    pub fn p99(&self) -> f64 {
        percentile(&self.ms, 0.99).unwrap_or(f64::NAN)
    }

    /// Completed operations per second of wall time.
    pub fn rate(&self) -> f64 {
        self.ms.len() as f64 / self.wall.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.50), Some(50.0));
        assert_eq!(percentile(&xs, 0.99), Some(99.0));
        assert_eq!(percentile(&xs, 1.0), Some(100.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        // Order of the input does not matter.
        let rev: Vec<f64> = xs.iter().rev().copied().collect();
        assert_eq!(percentile(&rev, 0.99), Some(99.0));
        // Few samples: p99 of 10 is the largest.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 0.99), Some(10.0));
        assert_eq!(percentile(&ten, 0.5), Some(5.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn latencies_in_ms_and_rate() {
        let samples: Vec<Duration> = (1..=4).map(Duration::from_millis).collect();
        let l = Latencies::new(&samples, Duration::from_secs(2));
        assert_eq!(l.p50(), 2.0);
        assert_eq!(l.p99(), 4.0);
        assert_eq!(l.rate(), 2.0);
    }
}
