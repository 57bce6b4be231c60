//! The JSON shapes of the statistics routes. The seed's names are kept (`requests`, `tokens`,
//! `costs`, `models`; per day `date`, `total_requests`, `successful_requests`,
//! `failed_requests`, `total_cost_usd`, `total_input_tokens`, `total_output_tokens`,
//! `avg_duration_ms`, `models`) and extended (status split, cache tokens, failed runs' cost,
//! p50/p95, per key).

use chrono::NaiveDate;
use serde_json::{json, Map, Value};

use actors::stats::{Counters, Rollup, ANONYMOUS_KEY};

/// Dollars without float noise (0.1 + 0.2 shows as 0.3).
fn usd(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// Milliseconds to two decimals.
fn ms(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The API's name for a key bucket: `null` for anonymous callers.
fn key_name(bucket: &str) -> Value {
    if bucket == ANONYMOUS_KEY {
        Value::Null
    } else {
        Value::from(bucket)
    }
}

/// One model's (or key's) figures, flat.
pub fn entry(c: &Counters) -> Map<String, Value> {
    let v = json!({
        "requests": c.requests,
        "successful": c.successful,
        "failed": c.failed,
        "by_status": c.by_status,
        "success_rate": c.success_rate(),
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "cache_read_tokens": c.cache_read_tokens,
        "cache_creation_tokens": c.cache_creation_tokens,
        "total_tokens": c.input_tokens + c.output_tokens,
        "cost_usd": usd(c.cost_usd),
        "failed_runs_cost_usd": usd(c.failed_cost_usd),
        "avg_duration_ms": ms(c.avg_duration_ms()),
        "p50_duration_ms": c.p50_duration_ms(),
        "p95_duration_ms": c.p95_duration_ms(),
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `models`: model name → figures.
fn models(r: &Rollup) -> Value {
    Value::Object(
        r.by_model
            .iter()
            .map(|(m, c)| (m.clone(), Value::Object(entry(c))))
            .collect(),
    )
}

/// `by_key`: one entry per key (`key_name` null for anonymous callers), most requests first.
fn by_key(r: &Rollup) -> Value {
    let mut keys: Vec<_> = r.by_key.iter().collect();
    keys.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
    Value::Array(
        keys.into_iter()
            .map(|(k, c)| {
                let mut e = entry(c);
                e.insert("key_name".into(), key_name(k));
                Value::Object(e)
            })
            .collect(),
    )
}

/// The summary of a set of days. `by_key` only for admins (others see one key: their own).
pub fn summary(r: &Rollup, days: &[NaiveDate], admin: bool) -> Value {
    let c = &r.total;
    let mut v = json!({
        "requests": {
            "total": c.requests,
            "successful": c.successful,
            "failed": c.failed,
            "success_rate": c.success_rate(),
            "by_status": c.by_status,
        },
        "tokens": {
            "input": c.input_tokens,
            "output": c.output_tokens,
            "cache_read": c.cache_read_tokens,
            "cache_creation": c.cache_creation_tokens,
            "total": c.input_tokens + c.output_tokens,
        },
        "costs": {
            "total_usd": usd(c.cost_usd),
            "average_per_request_usd": if c.requests == 0 { 0.0 } else { usd(c.cost_usd / c.requests as f64) },
            "failed_runs_usd": usd(c.failed_cost_usd),
        },
        "durations": {
            "avg_ms": ms(c.avg_duration_ms()),
            "p50_ms": c.p50_duration_ms(),
            "p95_ms": c.p95_duration_ms(),
        },
        "models": models(r),
        "period": {
            "first_day": days.first().map(|d| d.to_string()),
            "last_day": days.last().map(|d| d.to_string()),
            "days": days.len(),
        },
    });
    if admin {
        v["by_key"] = by_key(r);
    }
    v
}

/// One day of `daily[]`.
pub fn day(date: NaiveDate, r: &Rollup, admin: bool) -> Value {
    let c = &r.total;
    let mut v = json!({
        "date": date.to_string(),
        "total_requests": c.requests,
        "successful_requests": c.successful,
        "failed_requests": c.failed,
        "requests_by_status": c.by_status,
        "total_cost_usd": usd(c.cost_usd),
        "failed_runs_cost_usd": usd(c.failed_cost_usd),
        "total_input_tokens": c.input_tokens,
        "total_output_tokens": c.output_tokens,
        "total_cache_read_tokens": c.cache_read_tokens,
        "total_cache_creation_tokens": c.cache_creation_tokens,
        "avg_duration_ms": ms(c.avg_duration_ms()),
        "p50_duration_ms": c.p50_duration_ms(),
        "p95_duration_ms": c.p95_duration_ms(),
        "models": models(r),
    });
    if admin {
        v["by_key"] = by_key(r);
    }
    v
}

/// A model entry of `/models` and `top_models`.
pub fn model(name: &str, c: &Counters) -> Value {
    let mut e = entry(c);
    e.insert("model".into(), Value::from(name));
    Value::Object(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_keys_are_null_and_costs_have_no_float_noise() {
        let mut r = Rollup::default();
        r.by_key.insert(ANONYMOUS_KEY.into(), Counters::default());
        r.total.cost_usd = 0.1 + 0.2;
        let s = summary(&r, &[], true);
        assert_eq!(s["by_key"][0]["key_name"], Value::Null);
        assert_eq!(s["costs"]["total_usd"], json!(0.3));
        assert_eq!(s["period"]["days"], json!(0));
        assert!(summary(&r, &[], false).get("by_key").is_none());
    }
}
