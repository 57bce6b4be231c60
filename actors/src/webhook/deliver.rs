//! One delivery attempt: resolve, check, connect to the checked address, POST, read the status.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::redirect::Policy;

use super::policy;
use super::record::WebhookJob;
use super::sign::{sign, SigningKey};

/// Longest error text recorded for an attempt.
const MAX_ERROR_CHARS: usize = 300;

/// What one attempt needs from the (live) config.
#[derive(Debug, Clone)]
pub struct AttemptSettings {
    /// For the whole attempt: resolution, connection, request and response head.
    pub timeout: Duration,
    pub allow_private: bool,
    /// `None`: no `webhook-signature` header (no secret configured).
    pub key: Option<SigningKey>,
}

/// How an attempt ended: the receiver's status when it answered, and an error unless 2xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

impl AttemptOutcome {
    fn failed(error: impl Into<String>) -> AttemptOutcome {
        let mut error: String = error.into();
        if error.chars().count() > MAX_ERROR_CHARS {
            error = error.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
        }
        AttemptOutcome {
            status_code: None,
            error: Some(error),
        }
    }
}

/// POST `job.body` to `job.url`, signed for `timestamp` (unix seconds). Never panics and never
/// takes longer than `settings.timeout`.
pub async fn attempt(
    job: &WebhookJob,
    settings: &AttemptSettings,
    timestamp: i64,
) -> AttemptOutcome {
    match tokio::time::timeout(settings.timeout, send(job, settings, timestamp)).await {
        Err(_) => AttemptOutcome::failed(format!(
            "timed out after {} ms (webhook.timeout)",
            settings.timeout.as_millis()
        )),
        Ok(Err(e)) => AttemptOutcome::failed(e),
        Ok(Ok(code)) if (200..300).contains(&code) => AttemptOutcome {
            status_code: Some(code),
            error: None,
        },
        Ok(Ok(code)) => AttemptOutcome {
            status_code: Some(code),
            error: Some(format!("the receiver answered HTTP {code}")),
        },
    }
}

async fn send(job: &WebhookJob, settings: &AttemptSettings, timestamp: i64) -> Result<u16, String> {
    let url = policy::parse(&job.url).map_err(|e| format!("the URL {e}"))?;
    let mut builder = reqwest::Client::builder()
        // A proxy would resolve the name itself, out of reach of the address check; a redirect
        // could point anywhere (169.254.169.254 included). Neither is followed.
        .no_proxy()
        .redirect(Policy::none())
        .timeout(settings.timeout)
        .user_agent(concat!("claude-code-server/", env!("CARGO_PKG_VERSION")));
    match policy::literal_ip(&url) {
        Some(ip) => policy::check_addr(ip, settings.allow_private).map_err(|e| e.to_string())?,
        None => {
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(80);
            let addrs = resolve_checked(host, port, settings.allow_private).await?;
            // Pin the connection to the addresses just checked: the client must not ask DNS
            // again, or a rebinding answer could swap in a private address after the check.
            builder = builder.resolve_to_addrs(host, &addrs);
        }
    }
    let client = builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", describe(&e)))?;
    let mut request = client
        .post(url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("webhook-id", &job.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .body(job.body.clone());
    if let Some(key) = &settings.key {
        request = request.header(
            "webhook-signature",
            sign(key, &job.webhook_id, timestamp, job.body.as_bytes()),
        );
    }
    let response = request.send().await.map_err(|e| describe(&e))?;
    Ok(response.status().as_u16())
}

/// The addresses `host` resolves to that the policy allows; an error if there are none.
async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut allowed = Vec::with_capacity(found.len());
    let mut refused = None;
    for addr in found {
        match policy::check_addr(addr.ip(), allow_private) {
            Ok(()) => allowed.push(addr),
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some(e)) => Err(format!("refused: {host} {e}")),
        (true, None) => Err(format!("cannot resolve {host}: no address")),
    }
}

/// A client error as one line: the kind, then its causes (e.g. "connection refused"), without
/// the URL (it is recorded beside the error already).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connection failed".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::fixtures::at;

    fn job(url: &str) -> WebhookJob {
        WebhookJob {
            webhook_id: "msg_test".into(),
            task_id: uuid::Uuid::new_v4(),
            event: "task.completed".into(),
            url: url.into(),
            body: "{}".into(),
            attempts: 0,
            created_at: at(0),
            next_attempt_at: at(0),
        }
    }

    fn settings(allow_private: bool) -> AttemptSettings {
        AttemptSettings {
            timeout: Duration::from_secs(2),
            allow_private,
            key: None,
        }
    }

    // These never open a connection: the policy refuses before any socket is made.
    #[tokio::test]
    async fn blocked_literals_and_names_are_refused_before_connecting() {
        for url in [
            "http://169.254.169.254/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://localhost:9/",
        ] {
            let out = attempt(&job(url), &settings(false), 0).await;
            assert_eq!(out.status_code, None, "{url}");
            let err = out.error.unwrap_or_default();
            assert!(err.contains("allowPrivateTargets"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn a_closed_local_port_is_a_connection_error() {
        // Bind then drop: the port is (almost certainly) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let out = attempt(
            &job(&format!("http://127.0.0.1:{port}/")),
            &settings(true),
            0,
        )
        .await;
        assert_eq!(out.status_code, None);
        assert!(out.error.unwrap_or_default().contains("connection"));
    }

    #[test]
    fn long_errors_are_cut() {
        let out = AttemptOutcome::failed("x".repeat(1000));
        assert!(out
            .error
            .is_some_and(|e| e.chars().count() == MAX_ERROR_CHARS + 1));
    }
}
