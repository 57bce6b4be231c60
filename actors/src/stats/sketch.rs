//! A duration sketch: p50/p95 without keeping every value.
//!
//! Fixed logarithmic buckets (the DDSketch idea): bucket `i ≥ 0` holds the values in
//! `(γ^(i-1), γ^i]` with `γ = (1+α)/(1-α)`, and a quantile is answered with the bucket's
//! representative `2γ^i/(γ+1)`, which is within a relative error `α` of every value in the
//! bucket. With `α = 1 %` a run of a day (8.6e7 ms) lands in bucket ~920, so an index fits in a
//! `u16` and a sketch holds at most a few hundred non-empty buckets however many runs it counts.
//! Sketches merge by adding counts, which is what per-day, per-model and per-key rollups need.
//!
//! The exact minimum and maximum are kept too: estimates are clamped to them, so a sketch of one
//! value answers that value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Relative accuracy of every quantile estimate (before rounding to whole milliseconds).
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Indexes above this are folded into it (≈ 2^48 ms ≈ 9000 years: never in practice).
const MAX_INDEX: u16 = 16_000;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// Counts of durations (milliseconds) in log-scale buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurationSketch {
    /// How many values were exactly 0 ms (the log buckets start at 1 ms).
    #[serde(default)]
    zeros: u64,
    /// Bucket index → count; only non-empty buckets are stored.
    #[serde(default)]
    buckets: BTreeMap<u16, u64>,
    #[serde(default)]
    count: u64,
    #[serde(default)]
    min: u64,
    #[serde(default)]
    max: u64,
}

impl DurationSketch {
    pub fn new() -> DurationSketch {
        DurationSketch::default()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn add(&mut self, ms: u64) {
        if self.count == 0 {
            self.min = ms;
            self.max = ms;
        } else {
            self.min = self.min.min(ms);
            self.max = self.max.max(ms);
        }
        self.count += 1;
        if ms == 0 {
            self.zeros += 1;
        } else {
            *self.buckets.entry(index_of(ms)).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, other: &DurationSketch) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.zeros += other.zeros;
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_insert(0) += n;
        }
    }

    /// What the sketch is made of, for storage as separate counters (shared statistics, see
    /// [`super::counters`]): the zero count, the non-empty buckets, and the extremes (`None`
    /// when empty).
    pub fn parts(&self) -> (u64, &BTreeMap<u16, u64>, Option<(u64, u64)>) {
        let extremes = (self.count > 0).then_some((self.min, self.max));
        (self.zeros, &self.buckets, extremes)
    }

    /// The sketch [`DurationSketch::parts`] describe. The count is the sum of the counts, so
    /// parts summed separately (merged) give the merged sketch.
    pub fn from_parts(
        zeros: u64,
        buckets: BTreeMap<u16, u64>,
        extremes: Option<(u64, u64)>,
    ) -> DurationSketch {
        let buckets: BTreeMap<u16, u64> = buckets.into_iter().filter(|(_, n)| *n > 0).collect();
        let count = zeros.saturating_add(buckets.values().fold(0u64, |a, n| a.saturating_add(*n)));
        let (min, max) = match extremes {
            _ if count == 0 => (0, 0),
            Some(x) => x,
            // Counts without extremes (a partial record): clamp nothing rather than to 0.
            None => (0, u64::MAX),
        };
        DurationSketch {
            zeros,
            buckets,
            count,
            min,
            max,
        }
    }

    /// The `q`-quantile (0 < q ≤ 1) by nearest rank: the value with rank `ceil(q·n)`, within
    /// [`RELATIVE_ACCURACY`] (then rounded to whole ms). `None` for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_finite() {
            q.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank <= self.zeros {
            return Some(0);
        }
        let mut seen = self.zeros;
        for (i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let estimate = representative(*i).round();
                // Clamping to the exact extremes only moves the estimate closer to the truth.
                let estimate = (estimate as u64).clamp(self.min, self.max);
                return Some(estimate);
            }
        }
        Some(self.max)
    }
}

/// The bucket of a value ≥ 1: the smallest `i` with `v ≤ γ^i`.
fn index_of(ms: u64) -> u16 {
    let i = ((ms as f64).ln() / gamma().ln()).ceil();
    if i <= 0.0 {
        0
    } else if i >= f64::from(MAX_INDEX) {
        MAX_INDEX
    } else {
        i as u16
    }
}

/// The value that represents bucket `i`: within `α` of both `γ^(i-1)` and `γ^i`.
fn representative(i: u16) -> f64 {
    let g = gamma();
    2.0 * g.powi(i32::from(i)) / (g + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact nearest-rank quantile of a sorted slice.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// A small deterministic generator (xorshift), so the test needs no crate and never flakes.
    fn values(n: usize, seed: u64, spread: f64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x % 1_000_000) as f64 / 1_000_000.0;
                // Log-uniform over [1, e^spread] ms: run durations span orders of magnitude.
                (u * spread).exp().round() as u64
            })
            .collect()
    }

    fn assert_close(estimate: u64, truth: u64) {
        // α relative, plus half a millisecond of rounding, plus float slack at bucket edges.
        let bound = truth as f64 * RELATIVE_ACCURACY * 1.0001 + 0.5;
        assert!(
            (estimate as f64 - truth as f64).abs() <= bound,
            "estimate {estimate} vs exact {truth} (bound {bound})"
        );
    }

    #[test]
    fn quantiles_are_within_the_relative_accuracy() {
        for (seed, spread) in [(1u64, 5.0), (7, 10.0), (99, 18.0)] {
            let mut v = values(20_000, seed, spread);
            let mut s = DurationSketch::new();
            for x in &v {
                s.add(*x);
            }
            v.sort_unstable();
            for q in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
                let est = s.quantile(q).expect("non-empty");
                assert_close(est, exact(&v, q));
            }
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = DurationSketch::new();
        for x in values(100_000, 3, 18.0) {
            s.add(x);
        }
        // 1 ms .. 18 h (e^18 ms) at 1 % resolution: at most ln(e^18)/ln(γ) ≈ 900 buckets,
        // whatever the number of values.
        let bound = (18.0 / gamma().ln()).ceil() as usize + 1;
        assert!(s.buckets.len() <= bound, "{} buckets", s.buckets.len());
        assert_eq!(s.count(), 100_000);
    }

    #[test]
    fn small_and_edge_cases() {
        let s = DurationSketch::new();
        assert_eq!(s.quantile(0.5), None);

        let mut one = DurationSketch::new();
        one.add(812);
        assert_eq!(one.quantile(0.5), Some(812));
        assert_eq!(one.quantile(0.95), Some(812));

        let mut zeros = DurationSketch::new();
        zeros.add(0);
        zeros.add(0);
        zeros.add(1000);
        assert_eq!(zeros.quantile(0.5), Some(0));
        assert_eq!(zeros.quantile(1.0), Some(1000));

        let mut huge = DurationSketch::new();
        huge.add(u64::MAX);
        assert_eq!(huge.quantile(0.5), Some(u64::MAX));
    }

    #[test]
    fn merging_equals_adding_everything_to_one_sketch() {
        let a_vals = values(5_000, 11, 9.0);
        let b_vals = values(3_000, 12, 12.0);
        let (mut a, mut b, mut all) = (
            DurationSketch::new(),
            DurationSketch::new(),
            DurationSketch::new(),
        );
        for x in &a_vals {
            a.add(*x);
            all.add(*x);
        }
        for x in &b_vals {
            b.add(*x);
            all.add(*x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        a.merge(&DurationSketch::new());
        assert_eq!(a, all);
    }

    #[test]
    fn survives_a_json_round_trip() {
        let mut s = DurationSketch::new();
        for x in [0, 3, 30, 300, 3000] {
            s.add(x);
        }
        let text = serde_json::to_string(&s).expect("serialise");
        let back: DurationSketch = serde_json::from_str(&text).expect("deserialise");
        assert_eq!(back, s);
    }
}
