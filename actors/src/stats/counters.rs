//! A day's statistics as flat, independently updatable counters: how the instances of a
//! cluster add their runs to one shared day in Redis (see [`super::shared`]).
//!
//! Every figure of a [`DayStats`] is a sum, except the extremes of a duration sketch (a min
//! and a max). So a day is a hash of named integers, and counting a run is adding the run's
//! own one-run [`DayStats`], flattened, to it: `HINCRBY` for sums, keep-the-smaller /
//! keep-the-larger for the extremes. Any number of instances can do that concurrently and the
//! result is the [`DayStats::merge`] of all their runs, which is what one instance counting
//! every run would hold. Costs are counted in nano-USD, so sums are exact integers (and read
//! back as the closest `f64`).
//!
//! Field names are JSON arrays, so key and model names (free text) need no escaping:
//! `["c",key,model,name]` a counter of a cell, `["b",key,model,i]` bucket `i` of its duration
//! sketch, `["s",key]` the key's spend. Fields this build does not know are ignored when read,
//! so an older build reads a newer one's day.

use std::collections::BTreeMap;

use serde_json::Value;

use super::aggregate::{Counters, DayStats};
use super::sketch::DurationSketch;

/// How a field takes in a new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add it (`HINCRBY`).
    Add,
    /// Keep the smaller of the stored value and it.
    Min,
    /// Keep the larger.
    Max,
}

impl Op {
    /// The letter the Lua script reads.
    pub fn code(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Min => "<",
            Op::Max => ">",
        }
    }
}

/// One USD in the unit costs are counted in.
const NANO: f64 = 1e9;

fn nano(usd: f64) -> i64 {
    if usd.is_finite() {
        // Clamped (to ±9.2e9 USD) rather than wrapped.
        (usd * NANO).round() as i64
    } else {
        0
    }
}

fn usd(nano: i64) -> f64 {
    nano as f64 / NANO
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn cell_field(key: &str, model: &str, name: &str) -> String {
    Value::from(vec![
        Value::from("c"),
        Value::from(key),
        Value::from(model),
        Value::from(name),
    ])
    .to_string()
}

/// The sums of a cell, by field name. The order is the field list of [`Counters`].
fn sums(c: &Counters) -> [(&'static str, i64); 14] {
    [
        ("requests", int(c.requests)),
        ("successful", int(c.successful)),
        ("failed", int(c.failed)),
        ("completed", int(c.by_status.completed)),
        ("st_failed", int(c.by_status.failed)),
        ("cancelled", int(c.by_status.cancelled)),
        ("timeout", int(c.by_status.timeout)),
        ("input_tokens", int(c.input_tokens)),
        ("output_tokens", int(c.output_tokens)),
        ("cache_read_tokens", int(c.cache_read_tokens)),
        ("cache_creation_tokens", int(c.cache_creation_tokens)),
        ("cost_nusd", nano(c.cost_usd)),
        ("failed_cost_nusd", nano(c.failed_cost_usd)),
        ("duration_sum_ms", int(c.duration_sum_ms)),
    ]
}

fn set_sum(c: &mut Counters, name: &str, v: i64) {
    let n = u64::try_from(v).unwrap_or(0);
    match name {
        "requests" => c.requests += n,
        "successful" => c.successful += n,
        "failed" => c.failed += n,
        "completed" => c.by_status.completed += n,
        "st_failed" => c.by_status.failed += n,
        "cancelled" => c.by_status.cancelled += n,
        "timeout" => c.by_status.timeout += n,
        "input_tokens" => c.input_tokens += n,
        "output_tokens" => c.output_tokens += n,
        "cache_read_tokens" => c.cache_read_tokens += n,
        "cache_creation_tokens" => c.cache_creation_tokens += n,
        "cost_nusd" => c.cost_usd += usd(v),
        "failed_cost_nusd" => c.failed_cost_usd += usd(v),
        "duration_sum_ms" => c.duration_sum_ms = c.duration_sum_ms.saturating_add(n),
        _ => {}
    }
}

/// The fields that add `day` to a stored day. Zero sums are left out (adding 0 changes
/// nothing), so a run touches about twenty fields.
pub fn flatten(day: &DayStats) -> Vec<(String, Op, i64)> {
    let mut out = Vec::new();
    for (key, models) in &day.cells {
        for (model, c) in models {
            for (name, v) in sums(c) {
                if v != 0 {
                    out.push((cell_field(key, model, name), Op::Add, v));
                }
            }
            let (zeros, buckets, extremes) = c.durations.parts();
            if zeros > 0 {
                out.push((cell_field(key, model, "zeros"), Op::Add, int(zeros)));
            }
            for (i, n) in buckets {
                let field = Value::from(vec![
                    Value::from("b"),
                    Value::from(key.as_str()),
                    Value::from(model.as_str()),
                    Value::from(*i),
                ]);
                out.push((field.to_string(), Op::Add, int(*n)));
            }
            if let Some((min, max)) = extremes {
                out.push((cell_field(key, model, "min_ms"), Op::Min, int(min)));
                out.push((cell_field(key, model, "max_ms"), Op::Max, int(max)));
            }
        }
    }
    for (key, spent) in &day.spend_usd {
        let v = nano(*spent);
        if v != 0 {
            let field = Value::from(vec![Value::from("s"), Value::from(key.as_str())]);
            out.push((field.to_string(), Op::Add, v));
        }
    }
    out
}

/// The field of `key`'s spend (`HGET` for a budget check).
pub fn spend_field(key: &str) -> String {
    Value::from(vec![Value::from("s"), Value::from(key)]).to_string()
}

/// A spend read back from its field.
pub fn spend_value(v: i64) -> f64 {
    usd(v)
}

#[derive(Default)]
struct SketchParts {
    zeros: u64,
    buckets: BTreeMap<u16, u64>,
    min: Option<u64>,
    max: Option<u64>,
}

/// The day a stored hash holds. Fields that cannot be read are skipped (and counted in the
/// second value, for a log line).
pub fn unflatten(fields: impl IntoIterator<Item = (String, i64)>) -> (DayStats, usize) {
    let mut day = DayStats::default();
    let mut sketches: BTreeMap<(String, String), SketchParts> = BTreeMap::new();
    let mut unreadable = 0;
    for (name, v) in fields {
        let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(&name) else {
            unreadable += 1;
            continue;
        };
        let text = |i: usize| parts.get(i).and_then(Value::as_str);
        match (text(0), text(1), text(2)) {
            (Some("s"), Some(key), _) => {
                *day.spend_usd.entry(key.to_string()).or_insert(0.0) += usd(v);
            }
            (Some("c"), Some(key), Some(model)) => {
                let Some(counter) = text(3) else {
                    unreadable += 1;
                    continue;
                };
                let sketch = || (key.to_string(), model.to_string());
                let n = u64::try_from(v).unwrap_or(0);
                match counter {
                    "zeros" => sketches.entry(sketch()).or_default().zeros += n,
                    "min_ms" => sketches.entry(sketch()).or_default().min = Some(n),
                    "max_ms" => sketches.entry(sketch()).or_default().max = Some(n),
                    name => set_sum(
                        day.cells
                            .entry(key.to_string())
                            .or_default()
                            .entry(model.to_string())
                            .or_default(),
                        name,
                        v,
                    ),
                }
            }
            (Some("b"), Some(key), Some(model)) => {
                let Some(i) = parts
                    .get(3)
                    .and_then(Value::as_u64)
                    .and_then(|i| u16::try_from(i).ok())
                else {
                    unreadable += 1;
                    continue;
                };
                let s = sketches
                    .entry((key.to_string(), model.to_string()))
                    .or_default();
                *s.buckets.entry(i).or_insert(0) += u64::try_from(v).unwrap_or(0);
            }
            // A kind of field from a newer build: not ours to read.
            (Some(_), _, _) => {}
            _ => unreadable += 1,
        }
    }
    for ((key, model), s) in sketches {
        let extremes = s.min.zip(s.max);
        let sketch = DurationSketch::from_parts(s.zeros, s.buckets, extremes);
        day.cells
            .entry(key)
            .or_default()
            .entry(model)
            .or_default()
            .durations = sketch;
    }
    (day, unreadable)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::Utc;

    use super::*;
    use crate::model::{Task, TaskStatus};

    /// The aggregate tests' task, completed now.
    fn task(owner: Option<&str>, model: &str, status: TaskStatus, cost: f64, ms: u64) -> Task {
        let mut t = crate::stats::aggregate::tests::task(owner, model, status, cost, ms);
        t.completed_at = Some(Utc::now());
        t
    }

    /// What Redis does with the fields: the script's three operations on a hash.
    fn apply(hash: &mut HashMap<String, i64>, fields: Vec<(String, Op, i64)>) {
        for (f, op, v) in fields {
            let slot = hash.entry(f);
            match op {
                Op::Add => *slot.or_insert(0) += v,
                Op::Min => {
                    let cur = slot.or_insert(v);
                    *cur = (*cur).min(v);
                }
                Op::Max => {
                    let cur = slot.or_insert(v);
                    *cur = (*cur).max(v);
                }
            }
        }
    }

    #[test]
    fn runs_added_as_counters_read_back_as_one_day_counting_them_all() {
        let runs = [
            task(Some("a"), "m1", TaskStatus::Completed, 0.5, 120),
            task(Some("a"), "m1", TaskStatus::Completed, 0.25, 0),
            task(Some("a"), "m1", TaskStatus::Completed, 0.125, 90_000),
            task(Some("a"), "m2", TaskStatus::Failed, 0.0625, 10),
            task(None, "m|\"odd\" name", TaskStatus::Timeout, 0.0, 5),
            task(Some("b:x"), "m1", TaskStatus::Cancelled, 0.0, 5),
        ];
        // One instance counting every run ...
        let mut whole = DayStats::default();
        // ... and instances adding their runs, each on its own, to one shared hash.
        let mut hash = HashMap::new();
        for run in &runs {
            whole.record(run, true);
            let mut one = DayStats::default();
            one.record(run, true);
            apply(&mut hash, flatten(&one));
        }
        let (shared, unreadable) = unflatten(hash);
        assert_eq!(unreadable, 0);
        assert_eq!(shared, whole);
        let c = &shared.cells["a"]["m1"];
        assert_eq!((c.p50_duration_ms(), c.durations.count()), (120, 3));
        assert_eq!(shared.spent(Some("a")), 0.9375);
    }

    #[test]
    fn costs_add_exactly() {
        let mut hash = HashMap::new();
        for _ in 0..10 {
            let mut one = DayStats::default();
            one.record(&task(Some("a"), "m", TaskStatus::Completed, 0.1, 1), true);
            apply(&mut hash, flatten(&one));
        }
        let (day, _) = unflatten(hash);
        // Ten times 0.1 is 1 here, where adding f64s gives 0.9999999999999999.
        assert_eq!(day.spent(Some("a")), 1.0);
        assert_eq!(day.cells["a"]["m"].cost_usd, 1.0);
    }

    #[test]
    fn disabled_statistics_add_only_the_spend() {
        let mut one = DayStats::default();
        one.record(&task(Some("a"), "m", TaskStatus::Completed, 0.5, 1), false);
        let fields = flatten(&one);
        assert_eq!(fields, [(spend_field("a"), Op::Add, 500_000_000)]);
        assert_eq!(spend_value(500_000_000), 0.5);
        assert!(flatten(&DayStats::default()).is_empty());
    }

    #[test]
    fn unknown_and_unreadable_fields_are_skipped() {
        let fields = vec![
            (r#"["c","a","m","requests"]"#.to_string(), 2),
            (r#"["z","from","a newer build"]"#.to_string(), 9),
            (r#"["c","a","m","newer_counter"]"#.to_string(), 9),
            ("not json".to_string(), 1),
            (r#"["b","a","m",70000]"#.to_string(), 1),
        ];
        let (day, unreadable) = unflatten(fields);
        assert_eq!(unreadable, 2);
        assert_eq!(day.cells["a"]["m"].requests, 2);
    }
}
