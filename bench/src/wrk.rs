//! Requests/s and latency percentiles from `wrk --latency`.

use std::process::Command;

use anyhow::{bail, Context};

#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// `wrk -t<threads> -c<connections> -d<seconds>s --latency <url>`.
pub fn run(
    wrk: &str,
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u32,
) -> anyhow::Result<WrkResult> {
    let out = Command::new(wrk)
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".to_string(),
            url.to_string(),
        ])
        .output()
        .with_context(|| {
            format!("cannot run {wrk} (is it installed? scripts/bench.sh installs it)")
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return None,
    })
}

pub fn parse(text: &str) -> anyhow::Result<WrkResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    match (rps, p50, p99) {
        (Some(requests_per_sec), Some(p50_ms), Some(p99_ms)) => Ok(WrkResult {
            requests_per_sec,
            p50_ms,
            p99_ms,
            non_2xx,
            socket_errors,
        }),
        _ => bail!("no Requests/sec or latency distribution"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 3s test @ http://127.0.0.1:3000/health
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms    1.10ms  24.96ms   91.12%
    Req/Sec    21.91k     2.01k   26.06k    70.00%
  Latency Distribution
     50%    1.26ms
     75%    1.71ms
     90%    2.42ms
     99%    5.78ms
  130826 requests in 3.00s, 58.14MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  43570.12
Transfer/sec:     19.36MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse(SAMPLE).expect("parses");
        assert_eq!(r.requests_per_sec, 43570.12);
        assert_eq!(r.p50_ms, 1.26);
        assert_eq!(r.p99_ms, 5.78);
        assert_eq!(r.non_2xx, 5);
        assert_eq!(r.socket_errors, 3);
        assert!(parse("garbage").is_err());
    }

    #[test]
    fn durations_in_ms() {
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("1.5m"), Some(90000.0));
        assert_eq!(duration_ms("12"), None);
    }
}
