//! Turning the daemon's JSON into short text for the screens. Every reader tolerates missing
//! or mistyped fields (an older or newer daemon): it shows `-` instead of failing.

use serde_json::Value;

/// A string field, or `-`.
pub fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// An integer field, or 0.
pub fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A float field, or 0.
pub fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// The name a field has in `v`: `seed` (the seed's name, which the daemon sends beside its own)
/// when present, else `own` (all an older daemon sends).
pub fn either<'k>(v: &Value, seed: &'k str, own: &'k str) -> &'k str {
    if v.get(seed).is_some() {
        seed
    } else {
        own
    }
}

/// Dollars: `$0.0123`.
pub fn usd(x: f64) -> String {
    format!("${x:.4}")
}

/// `1234567` → `1,234,567`.
pub fn thousands(x: u64) -> String {
    let digits = x.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// RFC 3339 → `YYYY-MM-DD HH:MM:SS` (UTC, as sent); anything else unchanged.
pub fn time(v: &Value, key: &str) -> String {
    let raw = s(v, key);
    if raw.len() >= 19 && raw.as_bytes().get(10) == Some(&b'T') {
        format!("{} {}", &raw[..10], &raw[11..19])
    } else {
        raw
    }
}

/// The first 8 characters of an id, enough to tell rows apart.
pub fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Cut `text` to `width` characters, with `…` when cut; newlines become spaces.
pub fn clip(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= width {
        flat
    } else {
        let mut out: String = flat.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Milliseconds as `1.2 s` / `340 ms`.
pub fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerant_readers() {
        let v = json!({"a": "x", "b": 3, "c": null, "t": "2025-01-02T03:04:05.678Z"});
        assert_eq!(s(&v, "a"), "x");
        assert_eq!(s(&v, "b"), "3");
        assert_eq!(s(&v, "c"), "-");
        assert_eq!(s(&v, "zz"), "-");
        assert_eq!(n(&v, "a"), 0);
        assert_eq!(time(&v, "t"), "2025-01-02 03:04:05");
    }

    #[test]
    fn seed_names_first() {
        let v = json!({"count": 2, "requests": 2, "model": "m"});
        assert_eq!(either(&v, "count", "requests"), "count");
        assert_eq!(either(&v, "name", "model"), "model");
        assert_eq!(s(&v, either(&v, "name", "model")), "m");
    }

    #[test]
    fn numbers_and_text() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(100), "100");
        assert_eq!(usd(0.1), "$0.1000");
        assert_eq!(clip("a\nbcdef", 4), "a b…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(millis(1530.0), "1.5 s");
        assert_eq!(millis(12.0), "12 ms");
    }
}
