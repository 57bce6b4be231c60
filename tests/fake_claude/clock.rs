//! Simulated delays (scaled by `FAKE_CLAUDE_TIME_SCALE`) and timestamps.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};

fn scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("FAKE_CLAUDE_TIME_SCALE")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .map_or(1.0, |v| v.max(0.0))
    })
}

/// Sleeps for a simulated `ms` (times the scale) and returns the milliseconds really slept,
/// which is what `duration_api_ms` reports.
pub fn simulate(ms: u64) -> u64 {
    let scaled = (ms as f64 * scale()).round();
    let scaled = if scaled.is_finite() && scaled > 0.0 {
        scaled as u64
    } else {
        0
    };
    if scaled > 0 {
        std::thread::sleep(Duration::from_millis(scaled));
    }
    scaled
}

/// `2026-11-23T23:24:37.945Z`, the form the real CLI uses.
pub fn now_iso() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
