//! A minimal metric registry and the Prometheus text exposition format (version 0.0.4).
//!
//! Written by hand rather than with a client crate: the service needs counters and histograms
//! with a few labels and a handful of gauges read at scrape time from the queue, which is a
//! hundred lines; the official `prometheus-client` crate only encodes OpenMetrics (its own
//! content type and `# EOF` trailer), and the `prometheus` crate brings protobuf and a global
//! registry. Every family keeps its series in a `BTreeMap` under a mutex: updates are a few per
//! request or run, and the sorted map gives a stable output order.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Label values of one series, in the order of the family's label names.
type Series = Vec<String>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a counter half-written: keep counting.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A counter family: monotonically increasing values per label set.
#[derive(Debug)]
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Series, f64>>,
}

impl CounterVec {
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        CounterVec {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Add `v` (negative or non-finite amounts are ignored: a counter never goes down).
    pub fn inc_by(&self, label_values: &[&str], v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            return;
        }
        let key = series(self.labels, label_values);
        *lock(&self.values).entry(key).or_insert(0.0) += v;
    }

    pub fn inc(&self, label_values: &[&str]) {
        self.inc_by(label_values, 1.0);
    }

    /// The current value of one series (0 when never touched).
    pub fn get(&self, label_values: &[&str]) -> f64 {
        let key = series(self.labels, label_values);
        lock(&self.values).get(&key).copied().unwrap_or(0.0)
    }

    pub fn encode(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (values, v) in lock(&self.values).iter() {
            sample(out, self.name, self.labels, values, None, *v);
        }
    }
}

#[derive(Debug, Clone)]
struct HistogramData {
    /// Per bucket (not cumulative); the `+Inf` bucket is `count`.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// A histogram family with fixed upper bounds.
#[derive(Debug)]
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    values: Mutex<BTreeMap<Series, HistogramData>>,
}

impl HistogramVec {
    /// `bounds` must be sorted ascending (they are constants of this crate).
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        HistogramVec {
            name,
            help,
            labels,
            bounds,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, label_values: &[&str], v: f64) {
        if !v.is_finite() {
            return;
        }
        let key = series(self.labels, label_values);
        let mut map = lock(&self.values);
        let data = map.entry(key).or_insert_with(|| HistogramData {
            buckets: vec![0; self.bounds.len()],
            count: 0,
            sum: 0.0,
        });
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            data.buckets[i] += 1;
        }
        data.count += 1;
        data.sum += v;
    }

    /// Observations of one series.
    pub fn count(&self, label_values: &[&str]) -> u64 {
        let key = series(self.labels, label_values);
        lock(&self.values).get(&key).map(|d| d.count).unwrap_or(0)
    }

    pub fn encode(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let bucket_name = format!("{}_bucket", self.name);
        for (values, data) in lock(&self.values).iter() {
            let mut cumulative = 0;
            for (bound, n) in self.bounds.iter().zip(&data.buckets) {
                cumulative += n;
                let le = format_value(*bound);
                sample(
                    out,
                    &bucket_name,
                    self.labels,
                    values,
                    Some(&le),
                    cumulative as f64,
                );
            }
            sample(
                out,
                &bucket_name,
                self.labels,
                values,
                Some("+Inf"),
                data.count as f64,
            );
            sample(
                out,
                &format!("{}_sum", self.name),
                self.labels,
                values,
                None,
                data.sum,
            );
            sample(
                out,
                &format!("{}_count", self.name),
                self.labels,
                values,
                None,
                data.count as f64,
            );
        }
    }
}

/// A gauge read at scrape time (no state kept here).
pub fn encode_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[&str],
    series: &[(Vec<String>, f64)],
) {
    header(out, name, help, "gauge");
    for (values, v) in series {
        sample(out, name, labels, values, None, *v);
    }
}

/// Label values padded or cut to the family's label count, so a wrong call cannot produce a
/// malformed line.
fn series(labels: &[&str], values: &[&str]) -> Series {
    (0..labels.len())
        .map(|i| values.get(i).copied().unwrap_or("").to_owned())
        .collect()
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(
    out: &mut String,
    name: &str,
    labels: &[&str],
    values: &[String],
    le: Option<&str>,
    v: f64,
) {
    out.push_str(name);
    let mut pairs: Vec<(&str, &str)> = labels
        .iter()
        .copied()
        .zip(values.iter().map(String::as_str))
        .collect();
    if let Some(le) = le {
        pairs.push(("le", le));
    }
    if !pairs.is_empty() {
        out.push('{');
        for (i, (k, val)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(v));
}

/// Label values escape `\`, `"` and newlines (exposition format 0.0.4).
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Numbers as Prometheus parses them (Go's `ParseFloat`): integers without a fraction.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's shortest round-trip form: `3`, `0.25`, `1e-7`; all valid for Prometheus.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_with_labels_and_escaping() {
        let c = CounterVec::new("t_total", "Things.", &["route", "status"]);
        c.inc(&["/a", "200"]);
        c.inc_by(&["/a", "200"], 2.0);
        c.inc(&["/b\"x\\\n", "500"]);
        c.inc_by(&["/a", "200"], -5.0);
        c.inc_by(&["/a", "200"], f64::NAN);
        let mut out = String::new();
        c.encode(&mut out);
        assert_eq!(
            out,
            "# HELP t_total Things.\n# TYPE t_total counter\n\
             t_total{route=\"/a\",status=\"200\"} 3\n\
             t_total{route=\"/b\\\"x\\\\\\n\",status=\"500\"} 1\n"
        );
        assert_eq!(c.get(&["/a", "200"]), 3.0);
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = HistogramVec::new("d_seconds", "Durations.", &["status"], &[1.0, 10.0]);
        for v in [0.5, 2.0, 3.0, 100.0] {
            h.observe(&["completed"], v);
        }
        let mut out = String::new();
        h.encode(&mut out);
        let want = "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
            d_seconds_bucket{status=\"completed\",le=\"1\"} 1\n\
            d_seconds_bucket{status=\"completed\",le=\"10\"} 3\n\
            d_seconds_bucket{status=\"completed\",le=\"+Inf\"} 4\n\
            d_seconds_sum{status=\"completed\"} 105.5\n\
            d_seconds_count{status=\"completed\"} 4\n";
        assert_eq!(out, want);
        assert_eq!(h.count(&["completed"]), 4);
    }

    #[test]
    fn unlabelled_gauges_and_values() {
        let mut out = String::new();
        encode_gauge(&mut out, "g", "A gauge.", &[], &[(vec![], 2.0)]);
        assert_eq!(out, "# HELP g A gauge.\n# TYPE g gauge\ng 2\n");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }
}
