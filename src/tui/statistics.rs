//! Statistics: the summary, the last days, and per model.

use cursive::views::{OnEventView, TextView};
use cursive::Cursive;
use serde_json::Value;

use super::format::{either, f, millis, n, s, thousands, usd};
use super::widgets::{ctx, push_screen, text_area};
use super::worker::{unique_name, Ctx, Live};
use crate::client::ClientError;

/// Days shown.
pub const DAYS: usize = 14;

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let name = unique_name("statistics.body");
    let live = Live::new();
    let reload = {
        let (c, name, live) = (c.clone(), name.clone(), live.clone());
        move |_: &mut Cursive| load(&c, &name, &live)
    };
    push_screen(
        siv,
        "Statistics",
        OnEventView::new(text_area(&name, "Loading…")).on_event('r', reload),
        "r refresh · ↑/↓ PgUp/PgDn scroll",
    );
    load(&c, &name, &live);
}

fn load(c: &Ctx, name: &str, live: &Live) {
    let (c2, name, live) = (c.clone(), name.to_string(), live.clone());
    c.spawn(move || async move {
        let client = c2.client();
        let daily_path = format!("/api/statistics/daily?limit={DAYS}");
        let (summary, daily, models) = tokio::join!(
            client.get_json("/api/statistics/summary"),
            client.get_json(&daily_path),
            client.get_json("/api/statistics/models"),
        );
        let text = statistics_text(summary, daily, models);
        c2.ui
            .update_view(&live, &name, move |v: &mut TextView| v.set_content(text));
    });
}

/// The screen's text; pure.
pub fn statistics_text(
    summary: Result<Value, ClientError>,
    daily: Result<Value, ClientError>,
    models: Result<Value, ClientError>,
) -> String {
    let mut out = Vec::new();
    out.push("Summary (all time)".to_string());
    match summary {
        Ok(b) => {
            let sm = b
                .get(either(&b, "statistics", "summary"))
                .cloned()
                .unwrap_or(Value::Null);
            let req = sm.get("requests").cloned().unwrap_or(Value::Null);
            let tok = sm.get("tokens").cloned().unwrap_or(Value::Null);
            let cost = sm.get("costs").cloned().unwrap_or(Value::Null);
            let dur = sm.get("durations").cloned().unwrap_or(Value::Null);
            out.push(format!(
                "  requests {}   successful {}   failed {}   success rate {:.1}%",
                n(&req, "total"),
                n(&req, "successful"),
                n(&req, "failed"),
                f(&req, "success_rate") * 100.0
            ));
            out.push(format!(
                "  cost {}   per request {}   failed runs {}",
                usd(f(&cost, "total_usd")),
                usd(f(&cost, "average_per_request_usd")),
                usd(f(&cost, "failed_runs_usd"))
            ));
            out.push(format!(
                "  tokens in {}   out {}   cache read {}   cache write {}",
                thousands(n(&tok, either(&tok, "total_input", "input"))),
                thousands(n(&tok, either(&tok, "total_output", "output"))),
                thousands(n(&tok, "cache_read")),
                thousands(n(&tok, "cache_creation"))
            ));
            out.push(format!(
                "  duration avg {}   p50 {}   p95 {}",
                millis(f(&dur, "avg_ms")),
                millis(f(&dur, "p50_ms")),
                millis(f(&dur, "p95_ms"))
            ));
        }
        Err(e) => out.push(format!("  {e}")),
    }
    out.push(String::new());
    out.push(format!("Last {DAYS} days"));
    match daily {
        Ok(b) => {
            let days = b
                .get("daily")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if days.is_empty() {
                out.push("  no requests yet".into());
            } else {
                out.push(format!(
                    "  {:<10} {:>8} {:>6} {:>6} {:>10} {:>12} {:>12} {:>9}",
                    "date", "requests", "ok", "failed", "cost", "tokens in", "tokens out", "avg"
                ));
                // Newest first, as people read a log.
                for d in days.iter().rev() {
                    out.push(format!(
                        "  {:<10} {:>8} {:>6} {:>6} {:>10} {:>12} {:>12} {:>9}",
                        s(d, "date"),
                        n(d, "total_requests"),
                        n(d, "successful_requests"),
                        n(d, "failed_requests"),
                        usd(f(d, "total_cost_usd")),
                        thousands(n(d, "total_input_tokens")),
                        thousands(n(d, "total_output_tokens")),
                        millis(f(d, "avg_duration_ms")),
                    ));
                }
            }
        }
        Err(e) => out.push(format!("  {e}")),
    }
    out.push(String::new());
    out.push("Models".into());
    match models {
        Ok(b) => {
            let models = b
                .get("models")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if models.is_empty() {
                out.push("  none used yet".into());
            } else {
                out.push(format!(
                    "  {:<28} {:>8} {:>8} {:>10} {:>12} {:>9}",
                    "model", "requests", "success", "cost", "tokens", "p95"
                ));
                for m in &models {
                    out.push(format!(
                        "  {:<28} {:>8} {:>7.0}% {:>10} {:>12} {:>9}",
                        s(m, either(m, "name", "model")),
                        n(m, either(m, "count", "requests")),
                        f(m, "success_rate") * 100.0,
                        usd(f(m, "cost_usd")),
                        thousands(n(m, "total_tokens")),
                        millis(f(m, "p95_duration_ms")),
                    ));
                }
            }
        }
        Err(e) => out.push(format!("  {e}")),
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_names_and_an_older_daemons_names_read_alike() {
        let seed = json!({"statistics": {"requests": {"total": 7}, "tokens": {"total_input": 1200, "total_output": 30}}});
        let older =
            json!({"summary": {"requests": {"total": 7}, "tokens": {"input": 1200, "output": 30}}});
        let models = json!({"models": [{"name": "m-one", "count": 4}]});
        let older_models = json!({"models": [{"model": "m-one", "requests": 4}]});
        let days = || Ok(json!({"daily": []}));
        let a = statistics_text(Ok(seed), days(), Ok(models));
        let b = statistics_text(Ok(older), days(), Ok(older_models));
        assert_eq!(a, b);
        assert!(a.contains("requests 7"), "{a}");
        assert!(a.contains("tokens in 1,200   out 30"), "{a}");
        assert!(a.contains("m-one") && a.contains("       4"), "{a}");
    }
}
