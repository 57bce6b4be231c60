//! The dashboard: the live queue and today's requests, cost and tokens, refreshed every few
//! seconds while the screen is open.

use std::time::Duration;

use cursive::views::{OnEventView, TextView};
use cursive::Cursive;
use serde_json::Value;

use super::format::{either, f, millis, n, s, thousands, usd};
use super::widgets::{ctx, push_screen, text_area};
use super::worker::{unique_name, Ctx, Live};
use crate::client::ClientError;

pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let name = unique_name("dashboard.body");
    let live = Live::new();
    let refresh = {
        let (c, name, live) = (c.clone(), name.clone(), live.clone());
        move |_: &mut Cursive| spawn_once(&c, &name, &live)
    };
    let view = OnEventView::new(text_area(&name, "Loading…")).on_event('r', refresh);
    push_screen(
        siv,
        "Dashboard",
        view,
        &format!(
            "refreshes every {} s · r refresh now",
            REFRESH_EVERY.as_secs()
        ),
    );
    let c2 = c.clone();
    c.spawn(move || async move {
        // Until the screen closes (its view is gone) or the TUI quits.
        while live.is_live() {
            render(&c2, &name, &live).await;
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    });
}

fn spawn_once(c: &Ctx, name: &str, live: &Live) {
    let (c2, name, live) = (c.clone(), name.to_string(), live.clone());
    c.spawn(move || async move { render(&c2, &name, &live).await });
}

async fn render(c: &Ctx, name: &str, live: &Live) {
    let client = c.client();
    let (health, queue, today, summary) = tokio::join!(
        client.health(),
        client.get_json("/api/tasks/queue/status"),
        client.get_json("/api/statistics/daily?limit=1"),
        client.get_json("/api/statistics/summary"),
    );
    let text = dashboard_text(
        client.target().base_url.as_str(),
        health,
        queue,
        today,
        summary,
    );
    c.ui.update_view(live, name, move |v: &mut TextView| v.set_content(text));
}

/// The dashboard's text; pure, so the layout is tested without a daemon.
pub fn dashboard_text(
    url: &str,
    health: Result<Value, ClientError>,
    queue: Result<Value, ClientError>,
    today: Result<Value, ClientError>,
    summary: Result<Value, ClientError>,
) -> String {
    let mut out = Vec::new();
    let now = chrono::Utc::now();
    out.push(format!(
        "Daemon {url}   (updated {} UTC)",
        now.format("%H:%M:%S")
    ));
    match &health {
        Err(e) => {
            out.push(format!("  unreachable: {e}"));
            if e.is_daemon_down() {
                out.push("  Start it from the menu: [1] Start the daemon.".into());
            }
            return out.join("\n");
        }
        Ok(h) => {
            let claude = h.get("claude").cloned().unwrap_or(Value::Null);
            out.push(format!(
                "  status {}   version {}   uptime {}   storage {}   CLI {} {}",
                s(h, "status"),
                s(h, "version"),
                crate::daemon::format_duration(Duration::from_secs(f(h, "uptime") as u64)),
                h.get("storage").map(|st| s(st, "type")).unwrap_or_default(),
                s(&claude, "version"),
                if claude.get("ok").and_then(Value::as_bool) == Some(false) {
                    "(not working!)"
                } else {
                    ""
                },
            ));
        }
    }
    out.push(String::new());
    out.push("Queue".into());
    let live = health
        .as_ref()
        .ok()
        .and_then(|h| h.get("queue"))
        .cloned()
        .unwrap_or(Value::Null);
    match &queue {
        Ok(q) => {
            let q = q.get("queue").cloned().unwrap_or(Value::Null);
            out.push(format!(
                "  running {:>4}   pending {:>4}   concurrency {:>3}   {}",
                n(&live, "running"),
                n(&q, "pending"),
                n(&q, "concurrency"),
                if q.get("paused").and_then(Value::as_bool) == Some(true) {
                    "PAUSED (shutting down)"
                } else {
                    "accepting"
                }
            ));
            out.push(format!(
                "  all time: completed {}   failed {}   cancelled {}   timeout {}   total {}   cost {}",
                n(&q, "completed"),
                n(&q, "failed"),
                n(&q, "cancelled"),
                n(&q, "timeout"),
                n(&q, "total"),
                usd(f(&q, "total_cost_usd")),
            ));
        }
        Err(e) => out.push(format!("  {e}")),
    }
    out.push(String::new());
    let today_date = now.format("%Y-%m-%d").to_string();
    out.push(format!("Today ({today_date}, UTC)"));
    match &today {
        Ok(d) => {
            let day = d
                .get("daily")
                .and_then(Value::as_array)
                .and_then(|days| days.last())
                .filter(|day| s(day, "date") == today_date)
                .cloned();
            match day {
                Some(day) => {
                    out.push(format!(
                        "  requests {}   ok {}   failed {}   cost {}   avg {}",
                        n(&day, "total_requests"),
                        n(&day, "successful_requests"),
                        n(&day, "failed_requests"),
                        usd(f(&day, "total_cost_usd")),
                        millis(f(&day, "avg_duration_ms")),
                    ));
                    out.push(format!(
                        "  tokens in {}   out {}   cache read {}",
                        thousands(n(&day, "total_input_tokens")),
                        thousands(n(&day, "total_output_tokens")),
                        thousands(n(&day, "total_cache_read_tokens")),
                    ));
                }
                None => out.push("  requests 0   cost $0.0000   (nothing yet today)".into()),
            }
        }
        Err(e) => out.push(format!("  {e}")),
    }
    out.push(String::new());
    out.push("All time".into());
    match &summary {
        Ok(sm) => {
            let sm = sm
                .get(either(sm, "statistics", "summary"))
                .cloned()
                .unwrap_or(Value::Null);
            let req = sm.get("requests").cloned().unwrap_or(Value::Null);
            let tok = sm.get("tokens").cloned().unwrap_or(Value::Null);
            let cost = sm.get("costs").cloned().unwrap_or(Value::Null);
            out.push(format!(
                "  requests {}   success rate {:.0}%   cost {}   tokens {}",
                n(&req, "total"),
                f(&req, "success_rate") * 100.0,
                usd(f(&cost, "total_usd")),
                thousands(n(&tok, "total")),
            ));
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
    fn down_daemon_reads_well() {
        let down = || {
            Err(ClientError::DaemonDown {
                url: "http://127.0.0.1:1".into(),
            })
        };
        let t = dashboard_text("http://127.0.0.1:1", down(), down(), down(), down());
        assert!(t.contains("not running"), "{t}");
        assert!(t.contains("[1] Start"), "{t}");
    }

    #[test]
    fn figures_show() {
        let h = json!({"status": "ok", "version": "0.1.0", "uptime": 61.0, "queue": {"running": 2, "pending": 5, "concurrency": 3}});
        let q = json!({"queue": {"pending": 5, "concurrency": 3, "completed": 7, "total": 14, "total_cost_usd": 0.5}});
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let d = json!({"daily": [{"date": today, "total_requests": 9, "total_cost_usd": 0.25, "total_input_tokens": 1200}]});
        let sm = json!({"summary": {"requests": {"total": 40, "success_rate": 0.5}}});
        let t = dashboard_text("u", Ok(h), Ok(q), Ok(d), Ok(sm));
        assert!(t.contains("running    2"), "{t}");
        assert!(t.contains("pending    5"), "{t}");
        assert!(t.contains("requests 9"), "{t}");
        assert!(t.contains("in 1,200"), "{t}");
        assert!(t.contains("requests 40"), "{t}");
    }
}
