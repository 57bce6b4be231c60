//! The samples of every repeat, and the markdown table of their medians.

use std::collections::BTreeMap;

use crate::stats::median;

/// Every value measured, per metric and storage backend, one entry per repeat (or per sample).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: BTreeMap<(String, String), Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, metric: &str, backend: &str, value: f64) {
        self.values
            .entry((metric.to_string(), backend.to_string()))
            .or_default()
            .push(value);
    }

    /// The median over the repeats, `None` when nothing was measured.
    pub fn median(&self, metric: &str, backend: &str) -> Option<f64> {
        self.values
            .get(&(metric.to_string(), backend.to_string()))
            .and_then(|v| median(v))
    }

    /// The largest value over the repeats (for counts that must be zero in every repeat).
    pub fn max(&self, metric: &str, backend: &str) -> Option<f64> {
        self.all(metric, backend).iter().copied().reduce(f64::max)
    }

    /// All values of one metric (to show the spread between repeats).
    pub fn all(&self, metric: &str, backend: &str) -> &[f64] {
        self.values
            .get(&(metric.to_string(), backend.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// What a row is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// No target: reported only.
    Info,
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    pub fn judge(self, value: f64) -> Option<bool> {
        match self {
            Target::Info => None,
            _ if value.is_nan() => Some(false),
            Target::AtMost(t) => Some(value <= t),
            Target::AtLeast(t) => Some(value >= t),
        }
    }
}

/// One cell: the text shown and, for a row with a target, pass or miss.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    pub pass: Option<bool>,
}

impl Cell {
    pub fn info(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            pass: None,
        }
    }

    pub fn judged(text: impl Into<String>, pass: Option<bool>) -> Cell {
        Cell {
            text: text.into(),
            pass,
        }
    }

    fn render(&self) -> String {
        match self.pass {
            None => self.text.clone(),
            Some(true) => format!("{} pass", self.text),
            Some(false) => format!("**{} MISS**", self.text),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub target: String,
    pub cells: Vec<Cell>,
}

/// A markdown table: `measurement | target | <one column per backend>`. A `|` inside a cell
/// is escaped so that it cannot break the table.
pub fn render(backends: &[String], rows: &[Row]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    out.push_str("| measurement | target |");
    for b in backends {
        out.push_str(&format!(" {} |", esc(b)));
    }
    out.push('\n');
    out.push_str("|---|---|");
    for _ in backends {
        out.push_str("---|");
    }
    out.push('\n');
    for row in rows {
        out.push_str(&format!("| {} | {} |", esc(&row.label), esc(&row.target)));
        for i in 0..backends.len() {
            let cell = row.cells.get(i).map(Cell::render).unwrap_or_default();
            out.push_str(&format!(" {} |", esc(&cell)));
        }
        out.push('\n');
    }
    out
}

/// A number with a sensible number of digits: 3 significant ones below 100, none above.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        "n/a".to_string()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_markdown_table_with_verdicts() {
        let backends = vec!["memory".to_string(), "sqlite".to_string()];
        let rows = vec![
            Row {
                label: "GET /health req/s".into(),
                target: "≥ 30000".into(),
                cells: vec![
                    Cell::judged("41000", Target::AtLeast(30000.0).judge(41000.0)),
                    Cell::judged("29000", Target::AtLeast(30000.0).judge(29000.0)),
                ],
            },
            Row {
                label: "a | b".into(),
                target: "—".into(),
                cells: vec![Cell::info("1.00 ms")],
            },
        ];
        let t = render(&backends, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| measurement | target | memory | sqlite |");
        assert_eq!(lines[1], "|---|---|---|---|");
        assert_eq!(
            lines[2],
            "| GET /health req/s | ≥ 30000 | 41000 pass | **29000 MISS** |"
        );
        // Escaped pipe, and a missing cell is empty.
        assert_eq!(lines[3], "| a \\| b | — | 1.00 ms |  |");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn targets_judge_values() {
        assert_eq!(Target::AtMost(2.0).judge(1.5), Some(true));
        assert_eq!(Target::AtMost(2.0).judge(2.5), Some(false));
        assert_eq!(Target::AtLeast(0.9).judge(0.95), Some(true));
        assert_eq!(Target::AtLeast(0.9).judge(f64::NAN), Some(false));
        assert_eq!(Target::Info.judge(1.0), None);
    }

    #[test]
    fn samples_take_the_median_per_metric_and_backend() {
        let mut s = Samples::default();
        for v in [3.0, 1.0, 2.0] {
            s.add("x", "sqlite", v);
        }
        s.add("x", "memory", 9.0);
        assert_eq!(s.median("x", "sqlite"), Some(2.0));
        assert_eq!(s.median("x", "memory"), Some(9.0));
        assert_eq!(s.median("y", "memory"), None);
        assert_eq!(s.all("x", "sqlite"), &[3.0, 1.0, 2.0]);
        assert_eq!(s.max("x", "sqlite"), Some(3.0));
        assert_eq!(s.max("y", "sqlite"), None);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(num(0.4123), "0.412");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(31234.6), "31235");
        assert_eq!(num(f64::NAN), "n/a");
    }
}
