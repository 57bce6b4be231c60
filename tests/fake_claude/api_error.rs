//! API and authentication failures with the real CLI's texts and fields (docs §6).

use crate::directives::Directives;
use crate::version::Version;

/// An API or auth failure the directives ask for, with the real texts (docs §6).
pub struct ApiFailure {
    pub text: String,
    pub status: Option<u16>,
    pub error_type: Option<&'static str>,
    /// The assistant line's `error` field.
    pub assistant_error: &'static str,
    /// The `api_retry` line's `error` field.
    pub retry_error: &'static str,
    /// A refused connection: no status, `api_error:"connection_failed"`.
    pub connection: bool,
    /// Not logged in: the CLI fails before any API call, so there are no retries.
    pub auth: bool,
}

/// The 5xx texts name the status page, or the gateway when `ANTHROPIC_BASE_URL` points
/// elsewhere (as recorded with the local mock).
fn gateway_suffix() -> String {
    let base = std::env::var("ANTHROPIC_BASE_URL").unwrap_or_default();
    let authority = base
        .split_once("://")
        .map_or(base.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    if authority.is_empty() || authority == "api.anthropic.com" {
        " If it persists, check https://status.claude.com.".to_string()
    } else {
        format!(" If it persists, check your inference gateway ({authority}).")
    }
}

/// The failure this turn must report, if any: not logged in (by directive, or
/// `FAKE_CLAUDE_REQUIRE_AUTH=1` without credentials) or `api_error=STATUS`.
pub fn from_directives(d: &Directives, version: Version) -> Option<ApiFailure> {
    let has_credentials = [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    let require_auth = std::env::var("FAKE_CLAUDE_REQUIRE_AUTH").is_ok_and(|v| v == "1");
    if d.flag("not_logged_in") || (require_auth && !has_credentials) {
        return Some(ApiFailure {
            text: version.not_logged_in_text().to_string(),
            status: None,
            error_type: None,
            assistant_error: "authentication_failed",
            retry_error: "authentication_failed",
            connection: false,
            auth: true,
        });
    }
    let kind = d.text("api_error")?.trim().to_ascii_lowercase();
    let server = "This is a server-side issue, usually temporary — try again in a moment.";
    let failure =
        |text: String, status: u16, error_type, assistant_error, retry_error| ApiFailure {
            text,
            status: Some(status),
            error_type: Some(error_type),
            assistant_error,
            retry_error,
            connection: false,
            auth: false,
        };
    Some(match kind.as_str() {
        "400" => failure(
            "API Error: 400 fake bad request".into(),
            400,
            "invalid_request_error",
            "invalid_request",
            "invalid_request",
        ),
        "401" => failure(
            "Invalid API key · Fix external API key".into(),
            401,
            "authentication_error",
            "authentication_failed",
            "authentication_failed",
        ),
        "403" => failure(
            "API Error: 403 fake permission denied".into(),
            403,
            "permission_error",
            "authentication_failed",
            "authentication_failed",
        ),
        "429" => failure(
            "API Error: 429 fake rate limit exceeded".into(),
            429,
            "rate_limit_error",
            "rate_limit",
            "rate_limit",
        ),
        "529" => failure(
            format!("API Error: 529 Overloaded. {server}{}", gateway_suffix()),
            529,
            "overloaded_error",
            "server_error",
            "server_error",
        ),
        "conn" => ApiFailure {
            text: "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)"
                .into(),
            status: None,
            error_type: None,
            assistant_error: "server_error",
            retry_error: "unknown",
            connection: true,
            auth: false,
        },
        // 500 and anything unrecognised: the common server error.
        _ => failure(
            format!("API Error: 500 Internal server error. {server}{}", gateway_suffix()),
            500,
            "api_error",
            "server_error",
            "server_error",
        ),
    })
}
