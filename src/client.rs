//! A small HTTP client of the daemon, shared by `start`/`stop`/`status` and the TUI.
//!
//! It knows where the daemon listens and which API key to send ([`Target`], resolved from the
//! same config file `serve` reads), speaks JSON, and turns every failure into a [`ClientError`]
//! an operator can read: the daemon is down, the key is refused, or the server's own `error`
//! sentence for any other 4xx/5xx.
//!
//! Requests go through awc, actix's HTTP client, whose connections are `!Send`: a [`Client`]
//! (a target and a key, cheap to clone and `Send`) is used on an actix System — the control
//! commands run on one, and so does the TUI's worker thread — where one awc client per thread
//! keeps the connections to the daemon. https (a `--url`) goes through rustls, as webhooks do.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};
use awc::http::header::{HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use awc::http::{Method, StatusCode};
use serde_json::Value;

use actors::config::Config;

pub mod sse;

/// How long an ordinary request may take. A sync prompt can run for minutes, so
/// [`Client::post_json_long`] has its own, longer limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `POST /api/claude` waits for the run: as long as the server's own longest run may last.
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest answer read (a task list, a long result): far above any the daemon gives.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Where the daemon is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    pub api_key: Option<String>,
}

impl Target {
    /// The daemon described by `config`, unless `url` / `api_key` (flags or environment) say
    /// otherwise. A wildcard listen address is reached over loopback; the key is the first
    /// admin key (any key when none is admin: a non-admin key still sees its own tasks).
    pub fn resolve(config: &Config, url: Option<&str>, api_key: Option<&str>) -> Target {
        let base_url = match url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}:{}", connect_host(&config.host), config.port),
        };
        let api_key = api_key
            .map(str::to_string)
            .filter(|k| !k.is_empty())
            .or_else(|| {
                let keys = &config.auth.api_keys;
                keys.iter()
                    .find(|k| k.admin)
                    .or_else(|| keys.first())
                    .map(|k| k.key.clone())
            });
        Target { base_url, api_key }
    }
}

/// The host to dial for a listen address: wildcards become loopback, IPv6 gets brackets.
fn connect_host(listen: &str) -> String {
    let bare = listen.trim_matches(|c| c == '[' || c == ']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".into(),
        Ok(ip) if ip.is_unspecified() => "[::1]".into(),
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => bare.to_string(),
    }
}

/// Why a request did not give the answer asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the address (connection refused): the daemon is not running.
    #[error("the daemon is not running (nothing answers at {url})")]
    DaemonDown { url: String },
    #[error("the daemon at {url} did not answer in time")]
    Timeout { url: String },
    /// 401: no key, or the wrong one.
    #[error("the API key was refused (401): {message} Set --api-key / CCS_API_KEY or add an admin key under auth.apiKeys.")]
    Unauthorized { message: String },
    /// Any other 4xx/5xx, with the server's `error` sentence and `code`.
    #[error("{message} (HTTP {status}{})", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from the daemon: {0}")]
    BadResponse(String),
    #[error("cannot reach the daemon: {0}")]
    Transport(String),
}

impl ClientError {
    /// The route does not exist on this server (an older daemon): 404 `route_not_found`.
    pub fn is_route_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, code: Some(c), .. } if c == "route_not_found")
    }

    pub fn is_daemon_down(&self) -> bool {
        matches!(self, ClientError::DaemonDown { .. })
    }
}

/// The daemon's HTTP API. Its requests must run on an actix System (see the module docs).
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    /// `Bearer <key>`, checked when the client is made.
    auth: Option<HeaderValue>,
}

impl Client {
    pub fn new(target: Target) -> Result<Client, ClientError> {
        let auth = match &target.api_key {
            Some(key) => Some(
                HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    ClientError::Transport(
                        "the API key contains characters a header cannot hold".into(),
                    )
                })?,
            ),
            None => None,
        };
        Ok(Client { target, auth })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.base_url, path)
    }

    /// `GET /health`. A degraded daemon answers 503 with the same body: that is an answer too.
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.health_within(REQUEST_TIMEOUT).await
    }

    /// `GET /health` with a caller-chosen limit (the start-up poll uses a short one).
    pub async fn health_within(&self, timeout: Duration) -> Result<Value, ClientError> {
        self.within(timeout, async {
            let resp = self
                .request(Method::GET, "/health")
                .send()
                .await
                .map_err(|e| self.transport_error(e))?;
            let status = resp.status();
            let body = read_json(resp).await?;
            if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE {
                Ok(body)
            } else {
                Err(api_error(status, &body))
            }
        })
        .await
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None, REQUEST_TIMEOUT).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// A POST that waits for a Claude run (`POST /api/claude`).
    pub async fn post_json_long(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(Method::POST, path, Some(body), LONG_REQUEST_TIMEOUT)
            .await
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(Method::PATCH, path, Some(body), REQUEST_TIMEOUT)
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::DELETE, path, None, REQUEST_TIMEOUT).await
    }

    /// Open `GET /api/tasks/:id/events` (Server-Sent Events), resuming after `last_event_id`.
    pub async fn task_events(
        &self,
        task_id: &str,
        last_event_id: Option<&str>,
    ) -> Result<sse::EventStream, ClientError> {
        let path = format!("/api/tasks/{}/events", encode_segment(task_id));
        let mut req = self
            .request(Method::GET, &path)
            .insert_header((ACCEPT, "text/event-stream"));
        if let Some(id) = last_event_id {
            req = req.insert_header(("Last-Event-ID", id));
        }
        // No overall timeout: a stream lasts as long as the run; the server pings every 15 s.
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_json(resp).await.unwrap_or(Value::Null);
            return Err(api_error(status, &body));
        }
        Ok(sse::EventStream::new(resp))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.within(timeout, async {
            let req = self.request(method, path);
            let sent = match body {
                Some(b) => req.send_json(b).await,
                None => req.send().await,
            };
            let resp = sent.map_err(|e| self.transport_error(e))?;
            let status = resp.status();
            let body = read_json(resp).await?;
            if status.is_success() {
                Ok(body)
            } else {
                Err(api_error(status, &body))
            }
        })
        .await
    }

    fn request(&self, method: Method, path: &str) -> awc::ClientRequest {
        let req = http().request(method, self.url(path));
        match &self.auth {
            Some(auth) => req.insert_header((AUTHORIZATION, auth.clone())),
            None => req,
        }
    }

    /// `exchange`, the answer's body included, within `timeout`.
    async fn within(
        &self,
        timeout: Duration,
        exchange: impl std::future::Future<Output = Result<Value, ClientError>>,
    ) -> Result<Value, ClientError> {
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout {
                url: self.target.base_url.clone(),
            }),
        }
    }

    fn transport_error(&self, e: SendRequestError) -> ClientError {
        let url = self.target.base_url.clone();
        match e {
            SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
                ClientError::Timeout { url }
            }
            // Refused, no route, or a name that does not resolve: no daemon answers there.
            SendRequestError::Connect(_) => ClientError::DaemonDown { url },
            e => ClientError::Transport(e.to_string()),
        }
    }
}

thread_local! {
    /// This thread's awc client and the actix System it was made on: its connections belong to
    /// that System's runtime, so a thread that runs another System gets a new one.
    static HTTP: RefCell<Option<(usize, awc::Client)>> = const { RefCell::new(None) };
}

/// The awc client of this thread (made on first use).
fn http() -> awc::Client {
    let Some(system) = actix_rt::System::try_current().map(|s| s.id()) else {
        return build_http();
    };
    HTTP.with(|cell| {
        let mut cached = cell.borrow_mut();
        match cached.as_ref() {
            Some((id, client)) if *id == system => client.clone(),
            _ => {
                let client = build_http();
                *cached = Some((system, client.clone()));
                client
            }
        }
    })
}

fn build_http() -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(actors::webhook::deliver::tls_config())
        .timeout(CONNECT_TIMEOUT);
    awc::Client::builder()
        .connector(connector)
        // Each request has its own limit, body included (`Client::within`); the event stream
        // has none.
        .disable_timeout()
        .add_default_header((
            USER_AGENT,
            concat!("claude-code-server/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}

/// Escape an id typed by a user so it stays one path segment.
pub fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Escape a query-string value.
pub fn encode_query(s: &str) -> String {
    encode_segment(s)
}

async fn read_json(mut resp: awc::ClientResponse) -> Result<Value, ClientError> {
    let status = resp.status();
    let bytes = resp
        .body()
        .limit(MAX_BODY)
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    serde_json::from_str(&text).map_err(|_| {
        let snippet: String = text.chars().take(200).collect();
        if status.is_success() {
            ClientError::BadResponse(format!("not JSON: {snippet}"))
        } else {
            // An error page from something else on the port (a proxy, another server).
            ClientError::Api {
                status: status.as_u16(),
                code: None,
                message: format!("HTTP {status}: {snippet}"),
            }
        }
    })
}

fn api_error(status: StatusCode, body: &Value) -> ClientError {
    let message = body
        .get("error")
        .and_then(|e| {
            // Our shape is a string; OpenAI's shape nests `{"message"}`.
            e.as_str()
                .map(str::to_string)
                .or_else(|| e.get("message").and_then(Value::as_str).map(str::to_string))
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    if status == StatusCode::UNAUTHORIZED {
        return ClientError::Unauthorized { message };
    }
    ClientError::Api {
        status: status.as_u16(),
        code: body.get("code").and_then(Value::as_str).map(str::to_string),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(host: &str, keys: Value) -> Config {
        let doc =
            json!({"host": host, "port": 4100, "auth": {"apiKeys": keys, "allowAnonymous": true}});
        let env = actors::config::load::Environment::default();
        actors::config::load::from_file_doc(&doc, &env)
            .expect("valid")
            .0
    }

    #[test]
    fn wildcard_hosts_are_dialled_on_loopback() {
        let t = Target::resolve(&config("0.0.0.0", json!([])), None, None);
        assert_eq!(t.base_url, "http://127.0.0.1:4100");
        assert_eq!(t.api_key, None);
        let t = Target::resolve(&config("::", json!([])), None, None);
        assert_eq!(t.base_url, "http://[::1]:4100");
        let t = Target::resolve(&config("::1", json!([])), None, None);
        assert_eq!(t.base_url, "http://[::1]:4100");
        let t = Target::resolve(&config("localhost", json!([])), None, None);
        assert_eq!(t.base_url, "http://localhost:4100");
    }

    #[test]
    fn first_admin_key_unless_a_flag_says_otherwise() {
        let keys = json!([{"name": "a", "key": "key-user-0001"}, {"name": "b", "key": "key-admin-0001", "admin": true}]);
        let c = config("127.0.0.1", keys);
        assert_eq!(
            Target::resolve(&c, None, None).api_key.as_deref(),
            Some("key-admin-0001")
        );
        let t = Target::resolve(&c, Some("http://h:1/"), Some("flag"));
        assert_eq!(t.api_key.as_deref(), Some("flag"));
        assert_eq!(t.base_url, "http://h:1");
    }

    #[test]
    fn errors_read_well() {
        let e = api_error(
            StatusCode::CONFLICT,
            &json!({"success": false, "error": "Task already finished.", "code": "conflict"}),
        );
        assert_eq!(e.to_string(), "Task already finished. (HTTP 409, conflict)");
        let e = api_error(
            StatusCode::NOT_FOUND,
            &json!({"error": "No route.", "code": "route_not_found"}),
        );
        assert!(e.is_route_not_found());
        assert!(matches!(
            api_error(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "Missing API key."})
            ),
            ClientError::Unauthorized { .. }
        ));
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(encode_segment("a b/../c"), "a%20b%2F..%2Fc");
        assert_eq!(encode_query("x&y=1"), "x%26y%3D1");
    }
}
