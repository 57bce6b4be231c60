//! One delivery attempt over awc, actix's HTTP client: check, resolve, connect to a checked
//! address, POST, read the status.
//!
//! # How the SSRF policy pins the connection
//! awc's TCP connector takes a resolver of ours ([`PolicyResolver`], an actix-tls [`Resolve`]):
//! for every connection it resolves the host once, checks each address against
//! [`policy::check_addr`] and hands the connector only the allowed ones, which are then the
//! addresses dialled. The check and the connection use the same answer, so a DNS answer that
//! changes in between (rebinding) cannot swap a private address in. An IPv4 literal never
//! reaches the resolver (actix-tls dials it as it is), so [`Deliverer::attempt`] checks every
//! literal before the request is made (the resolver checks the bracketed IPv6 form it is handed
//! again). Redirects are not followed (one could point anywhere, 169.254.169.254
//! included) and no proxy is used (awc reads none from the environment; a proxy would resolve the
//! name itself, out of reach of the check).
//!
//! awc's `Client` is `!Send`: a [`Deliverer`] lives on the WebhookActor's arbiter, made there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_tls::connect::{Connector as TcpConnector, Resolve, Resolver};
use awc::error::{ConnectError, SendRequestError};
use awc::http::header::{CONTENT_TYPE, USER_AGENT};
use futures_util::future::{BoxFuture, LocalBoxFuture};

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

/// Name resolution: the addresses a host name stands for, with `port`. The system's by default
/// ([`system_lookup`]); tests answer with addresses of their own.
pub type Lookup =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The system's resolver (`getaddrinfo`, off the event loop).
pub fn system_lookup() -> Lookup {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// The TLS settings of every outgoing https connection (webhooks, and the daemon's own client):
/// rustls with the ring provider, the webpki roots, HTTP/2 or HTTP/1.1 by ALPN. No OpenSSL, and
/// no process-wide default provider needed.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// awc's resolver for webhook connections: resolves once, keeps only the addresses the policy
/// allows (an error naming the rule when none is left).
pub struct PolicyResolver {
    allow_private: bool,
    lookup: Lookup,
}

impl PolicyResolver {
    pub fn new(allow_private: bool, lookup: Lookup) -> PolicyResolver {
        PolicyResolver {
            allow_private,
            lookup,
        }
    }
}

impl Resolve for PolicyResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> {
        Box::pin(async move {
            resolve_checked(host, port, self.allow_private, &self.lookup)
                .await
                .map_err(Into::into)
        })
    }
}

/// The addresses `host` resolves to that the policy allows; an error if there are none. An IP
/// literal (awc hands IPv6 ones over in brackets) is checked as it is.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
    lookup: &Lookup,
) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        policy::check_addr(ip, allow_private).map_err(|e| e.to_string())?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = lookup(host.to_owned(), port)
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
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

/// The HTTP side of the deliveries: awc clients sharing one TLS config, one per policy
/// (`allowPrivateTargets`) and timeout, made on first use. A client's connection pool only ever
/// holds connections its own policy allowed. `!Send`: it lives on the actor's arbiter.
pub struct Deliverer {
    tls: Arc<rustls::ClientConfig>,
    lookup: Lookup,
    clients: RefCell<HashMap<(bool, Duration), awc::Client>>,
}

impl Deliverer {
    /// Resolving names with `lookup` ([`system_lookup`] in the daemon).
    pub fn new(lookup: Lookup) -> Deliverer {
        Deliverer {
            tls: tls_config(),
            lookup,
            clients: RefCell::new(HashMap::new()),
        }
    }

    /// The client for these settings. A new timeout (a reload) replaces the old clients.
    fn client(&self, settings: &AttemptSettings) -> awc::Client {
        let mut clients = self.clients.borrow_mut();
        clients.retain(|(_, timeout), _| *timeout == settings.timeout);
        clients
            .entry((settings.allow_private, settings.timeout))
            .or_insert_with(|| self.build(settings.allow_private, settings.timeout))
            .clone()
    }

    fn build(&self, allow_private: bool, timeout: Duration) -> awc::Client {
        let resolver = PolicyResolver::new(allow_private, self.lookup.clone());
        let tcp = TcpConnector::new(Resolver::custom(resolver)).service();
        let connector = awc::Connector::new()
            .connector(tcp)
            .rustls_0_23(self.tls.clone())
            .timeout(timeout)
            .handshake_timeout(timeout);
        awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            // The whole attempt is timed by `attempt`, body included.
            .disable_timeout()
            .add_default_header((
                USER_AGENT,
                concat!("claude-code-server/", env!("CARGO_PKG_VERSION")),
            ))
            .finish()
    }

    /// POST `job.body` to `job.url`, signed for `timestamp` (unix seconds). Never panics and
    /// never takes longer than `settings.timeout`.
    pub async fn attempt(
        &self,
        job: &WebhookJob,
        settings: &AttemptSettings,
        timestamp: i64,
    ) -> AttemptOutcome {
        match tokio::time::timeout(settings.timeout, self.send(job, settings, timestamp)).await {
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

    async fn send(
        &self,
        job: &WebhookJob,
        settings: &AttemptSettings,
        timestamp: i64,
    ) -> Result<u16, String> {
        let url = policy::parse(&job.url).map_err(|e| format!("the URL {e}"))?;
        // A literal is dialled as it is, without asking the resolver: checked here.
        if let Some(ip) = policy::literal_ip(&url) {
            policy::check_addr(ip, settings.allow_private).map_err(|e| e.to_string())?;
        }
        let mut request = self
            .client(settings)
            // The parsed form: the host checked is the host dialled.
            .post(url.as_str())
            // One attempt, one connection: nothing is kept for the next attempt.
            .force_close()
            .insert_header((CONTENT_TYPE, "application/json"))
            .insert_header(("webhook-id", job.webhook_id.as_str()))
            .insert_header(("webhook-timestamp", timestamp.to_string()));
        if let Some(key) = &settings.key {
            request = request.insert_header((
                "webhook-signature",
                sign(key, &job.webhook_id, timestamp, job.body.as_bytes()),
            ));
        }
        let response = request
            .send_body(job.body.clone())
            .await
            .map_err(|e| describe(&e))?;
        Ok(response.status().as_u16())
    }
}

/// A client error as one line, without the URL (it is recorded beside the error already).
fn describe(e: &SendRequestError) -> String {
    match e {
        // Phrased by `resolve_checked`: a refusal by the policy, or a name that does not resolve.
        SendRequestError::Connect(ConnectError::Resolver(e)) => e.to_string(),
        SendRequestError::Connect(ConnectError::Timeout) => "connection failed: timed out".into(),
        SendRequestError::Connect(e) => format!("connection failed: {e}"),
        SendRequestError::Timeout => "timed out".into(),
        e => format!("request failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::conformance::fixtures::at;
    use crate::webhook::testing::Receiver;

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

    /// A resolver that answers `answers` in turn (the last one again once they run out) and
    /// counts the questions.
    fn fake_dns(answers: Vec<Vec<SocketAddr>>) -> (Lookup, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        let lookup: Lookup = Arc::new(move |_host, _port| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let answer = answers
                .get(n)
                .or(answers.last())
                .cloned()
                .unwrap_or_default();
            Box::pin(async move { Ok(answer) })
        });
        (lookup, asked)
    }

    // These never open a connection: the policy refuses before any socket is made.
    #[actix_rt::test]
    async fn blocked_literals_and_names_are_refused_before_connecting() {
        let http = Deliverer::new(system_lookup());
        for url in [
            "http://169.254.169.254/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://localhost:9/",
        ] {
            let out = http.attempt(&job(url), &settings(false), 0).await;
            assert_eq!(out.status_code, None, "{url}");
            let err = out.error.unwrap_or_default();
            assert!(err.contains("allowPrivateTargets"), "{url}: {err}");
        }
    }

    #[actix_rt::test]
    async fn a_closed_local_port_is_a_connection_error() {
        // Bind then drop: the port is (almost certainly) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let http = Deliverer::new(system_lookup());
        let url = format!("http://127.0.0.1:{port}/");
        let out = http.attempt(&job(&url), &settings(true), 0).await;
        assert_eq!(out.status_code, None);
        assert!(out.error.unwrap_or_default().contains("connection"));
    }

    #[actix_rt::test]
    async fn a_delivery_carries_the_headers_and_the_exact_body() {
        let receiver = Receiver::start().await;
        let http = Deliverer::new(system_lookup());
        let mut s = settings(true);
        s.key = Some(SigningKey::from_secret("plain").expect("key"));
        let mut j = job(&receiver.url());
        j.body = r#"{"type":"task.completed"}"#.into();
        let out = http.attempt(&j, &s, 1_700_000_000).await;
        assert_eq!(
            out,
            AttemptOutcome {
                status_code: Some(200),
                error: None
            }
        );
        let hits = receiver.hits();
        assert_eq!(hits.len(), 1);
        let hit = &hits[0];
        assert_eq!(hit.method, "POST");
        assert_eq!(hit.body, j.body);
        assert_eq!(hit.header("content-type"), "application/json");
        assert_eq!(hit.header("webhook-id"), "msg_test");
        assert_eq!(hit.header("webhook-timestamp"), "1700000000");
        assert!(hit.header("user-agent").starts_with("claude-code-server/"));
        let key = SigningKey::from_secret("plain").expect("key");
        assert!(crate::webhook::sign::verify(
            &key,
            "msg_test",
            1_700_000_000,
            j.body.as_bytes(),
            hit.header("webhook-signature")
        ));
    }

    /// A name is resolved once per connection; the addresses the policy refuses are dropped from
    /// that answer and the connection goes to what is left, so a DNS answer that changes after
    /// the check (rebinding) is never asked for.
    #[actix_rt::test]
    async fn the_connection_is_pinned_to_the_checked_answer() {
        let receiver = Receiver::start().await;
        let local = receiver.addr;
        let url = format!("http://hooks.test:{}/hook", local.port());

        // The answer names the receiver on loopback: refused, and it is never contacted.
        let (lookup, asked) = fake_dns(vec![vec![local]]);
        let out = Deliverer::new(lookup)
            .attempt(&job(&url), &settings(false), 0)
            .await;
        let err = out.error.unwrap_or_default();
        assert!(
            err.contains("hooks.test")
                && err.contains("loopback")
                && err.contains("allowPrivateTargets"),
            "{err}"
        );
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one question per connection"
        );
        assert!(
            receiver.hits().is_empty(),
            "the refused address was dialled"
        );

        // Rebinding: the first answer is public, every later one loopback. The connection goes
        // to the public address (which does not answer here) and DNS is not asked again, so the
        // loopback receiver is never reached.
        let public: SocketAddr = SocketAddr::new([192, 0, 2, 1].into(), local.port());
        let (lookup, asked) = fake_dns(vec![vec![public], vec![local]]);
        let mut quick = settings(false);
        quick.timeout = Duration::from_millis(500);
        let out = Deliverer::new(lookup).attempt(&job(&url), &quick, 0).await;
        assert_eq!(out.status_code, None, "{out:?}");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(
            receiver.hits().is_empty(),
            "the rebound address was dialled"
        );

        // With private targets allowed, the same answer is dialled: the connection goes to the
        // resolver's address (hooks.test exists nowhere else).
        let (lookup, _) = fake_dns(vec![vec![local]]);
        let out = Deliverer::new(lookup)
            .attempt(&job(&url), &settings(true), 0)
            .await;
        assert_eq!(out.status_code, Some(200), "{out:?}");
        assert_eq!(receiver.hits().len(), 1);
    }

    #[actix_rt::test]
    async fn refused_addresses_are_dropped_from_a_mixed_answer() {
        let public: SocketAddr = "203.0.113.7:443".parse().expect("addr");
        let (lookup, _) = fake_dns(vec![vec![
            "127.0.0.1:443".parse().expect("addr"),
            public,
            "[::ffff:169.254.169.254]:443".parse().expect("addr"),
        ]]);
        let got = resolve_checked("mixed.test", 443, false, &lookup).await;
        assert_eq!(got, Ok(vec![public]));
        let all = resolve_checked("mixed.test", 443, true, &lookup).await;
        assert_eq!(all.map(|a| a.len()), Ok(3));
        // Literals in the form awc hands over, checked without a lookup.
        let err = resolve_checked("[::1]", 80, false, &lookup)
            .await
            .expect_err("refused");
        assert!(err.contains("loopback"), "{err}");
        assert!(resolve_checked("[2606:4700::1111]", 80, false, &lookup)
            .await
            .is_ok());
        let (empty, _) = fake_dns(vec![vec![]]);
        let err = resolve_checked("none.test", 80, false, &empty)
            .await
            .expect_err("no address");
        assert!(err.contains("no address"), "{err}");
    }

    #[actix_rt::test]
    async fn redirects_are_not_followed() {
        let elsewhere = Receiver::start().await;
        let receiver = Receiver::start().await;
        receiver.redirect_to(&elsewhere.url());
        let http = Deliverer::new(system_lookup());
        let out = http
            .attempt(&job(&receiver.url()), &settings(true), 0)
            .await;
        assert_eq!(out.status_code, Some(307));
        assert_eq!(out.error.as_deref(), Some("the receiver answered HTTP 307"));
        assert_eq!(receiver.hits().len(), 1);
        assert!(elsewhere.hits().is_empty(), "the redirect was followed");
    }

    #[actix_rt::test]
    async fn a_hanging_receiver_is_cut_at_the_timeout() {
        let receiver = Receiver::start().await;
        receiver.hang();
        let http = Deliverer::new(system_lookup());
        let mut s = settings(true);
        s.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let out = http.attempt(&job(&receiver.url()), &s, 0).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.status_code, None);
        assert!(out.error.unwrap_or_default().contains("timed out"));
    }

    #[test]
    fn long_errors_are_cut() {
        let out = AttemptOutcome::failed("x".repeat(1000));
        assert!(out
            .error
            .is_some_and(|e| e.chars().count() == MAX_ERROR_CHARS + 1));
    }
}
