//! Request bodies carry their rules as `validator` derives (`#[derive(Validate)]`); this module
//! turns what `validator` reports into the API's one error shape, so every refusal keeps its
//! status, code, message and `details`.
//!
//! A rule fails with a [`ValidationError`] in one of two forms:
//! - a 400 `validation_error`: its `code` is `validation_error` (or one of validator's own,
//!   `range`, `length`…) and its `message` is the rule's wording ("must be an integer from 1 to
//!   10"); the answer is [`ApiError::field`] with the field `validator` names.
//! - any other code (403 `forbidden` for a refused model, 413 `payload_too_large`, 400
//!   `invalid_project_path`, 403 `forbidden_path`, 400 `invalid_webhook_url`): its `code` is the
//!   [`ErrorCode`], its `message` the whole message and its params the `details` — what
//!   `From<ApiError>` builds, so a rule may return an [`ApiError`] with `?`.
//!
//! `validator` reports every failing field in a map; the answer names the first of them in the
//! body type's [`Rules::FIELDS`], the order in which the API has always checked them.

use std::borrow::Cow;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use validator::{ValidationError, ValidationErrors, ValidationErrorsKind};

use actors::config::Config;
use actors::error::ErrorCode;

use super::error::ApiError;
use super::extract::{state_of, ApiJson};

/// A request body with `validator` rules.
pub trait Rules {
    /// Every field that has a rule, in the order they are reported: the first failing one is
    /// the answer.
    const FIELDS: &'static [&'static str];

    /// Run the derived rules; the live config is their context.
    fn rules(&self, config: &Config) -> Result<(), ValidationErrors>;
}

/// Check `body` against its rules and the live config.
pub fn check<T: Rules>(body: &T, config: &Config) -> Result<(), ApiError> {
    body.rules(config)
        .map_err(|errors| first_error(&errors, T::FIELDS))
}

/// The body as JSON ([`ApiJson`]) that passed its rules against the live config.
pub struct ValidatedJson<T>(pub T);

impl<T: DeserializeOwned + Rules + 'static> FromRequest for ValidatedJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let state = state_of(req);
        let body = ApiJson::<T>::from_request(req, payload);
        Box::pin(async move {
            let ApiJson(body) = body.await?;
            check(&body, &state?.config())?;
            Ok(ValidatedJson(body))
        })
    }
}

/// A 400 `validation_error`: "Field `<field>` <rule>.", the field being the one the rule is on.
pub fn rule(rule: impl Into<Cow<'static, str>>) -> ValidationError {
    ValidationError::new(ErrorCode::ValidationError.as_str()).with_message(rule.into())
}

impl From<ApiError> for ValidationError {
    fn from(e: ApiError) -> ValidationError {
        if e.code == ErrorCode::ValidationError {
            let rule_text = e
                .details
                .as_ref()
                .and_then(|d| d.get("rule"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(e.message);
            return rule(rule_text);
        }
        let mut err = ValidationError::new(e.code.as_str()).with_message(e.message.into());
        if let Some(Value::Object(details)) = e.details {
            for (k, v) in details {
                err.add_param(k.into(), &v);
            }
        }
        err
    }
}

/// The answer for the first field of `order` that failed (a field missing from `order` comes
/// after them, by name); within a field, its first rule that failed.
pub fn first_error(errors: &ValidationErrors, order: &[&str]) -> ApiError {
    let mut fields: Vec<(&str, &ValidationErrorsKind)> = errors
        .errors()
        .iter()
        .map(|(k, v)| (k.as_ref(), v))
        .collect();
    fields.sort_by_key(|(name, _)| {
        let rank = order.iter().position(|f| f == name).unwrap_or(order.len());
        (rank, *name)
    });
    fields
        .into_iter()
        .find_map(|(name, kind)| match kind {
            ValidationErrorsKind::Field(list) => list.first().map(|e| api_error(name, e)),
            // No body nests another with rules of its own.
            _ => None,
        })
        .unwrap_or_else(|| ApiError::field("(body)", "is invalid"))
}

fn api_error(field: &str, e: &ValidationError) -> ApiError {
    let code = serde_json::from_value::<ErrorCode>(Value::String(e.code.to_string()))
        .unwrap_or(ErrorCode::ValidationError);
    let message = e.message.as_deref().unwrap_or(&e.code).to_string();
    if code == ErrorCode::ValidationError {
        return ApiError::field(field, message);
    }
    // `validator` adds the checked value as `value`: not part of the answer.
    let details: Map<String, Value> = e
        .params
        .iter()
        .filter(|(k, _)| k.as_ref() != "value")
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let err = ApiError::new(code, message);
    if details.is_empty() {
        err
    } else {
        err.with_details(Value::Object(details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(list: &[(&'static str, ValidationError)]) -> ValidationErrors {
        let mut errors = ValidationErrors::new();
        for (field, e) in list {
            errors.add(field, e.clone());
        }
        errors
    }

    #[test]
    fn a_rule_is_a_field_named_400() {
        let e = first_error(
            &errors(&[("priority", rule("must be an integer from 1 to 10"))]),
            &["priority"],
        );
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(
            e.message,
            "Field `priority` must be an integer from 1 to 10."
        );
        assert_eq!(
            e.details,
            Some(json!({"field": "priority", "rule": "must be an integer from 1 to 10"}))
        );
    }

    #[test]
    fn another_code_is_carried_whole() {
        let refusal = ApiError::new(ErrorCode::Forbidden, "Model `x` is not allowed.")
            .with_details(json!({"field": "model", "allowed": ["a"]}));
        let mut carried = ValidationError::from(refusal.clone());
        carried.add_param("value".into(), &"x");
        let e = first_error(&errors(&[("model", carried)]), &["model"]);
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(e.message, refusal.message);
        assert_eq!(e.details, refusal.details);
        let bare = ApiError::new(ErrorCode::Forbidden, "Slash commands are disabled.");
        let e = first_error(&errors(&[("slash_command", bare.into())]), &[]);
        assert_eq!((e.code, e.details), (ErrorCode::Forbidden, None));
    }

    #[test]
    fn a_field_error_is_carried_as_its_rule() {
        let e = ApiError::field("mcp_config", "must be an absolute path");
        let e = first_error(&errors(&[("mcp_config", e.into())]), &["mcp_config"]);
        assert_eq!(e.message, "Field `mcp_config` must be an absolute path.");
    }

    #[test]
    fn the_first_field_in_order_wins_then_the_first_rule() {
        let list = [
            ("b", rule("b rule")),
            ("a", rule("a first")),
            ("a", rule("a second")),
            ("z", rule("unlisted")),
        ];
        let field = |order: &[&str]| {
            let e = first_error(&errors(&list), order);
            e.details.map(|d| (d["field"].clone(), d["rule"].clone()))
        };
        assert_eq!(field(&["a", "b"]), Some((json!("a"), json!("a first"))));
        assert_eq!(field(&["b", "a"]), Some((json!("b"), json!("b rule"))));
        assert_eq!(field(&["z"]), Some((json!("z"), json!("unlisted"))));
        // Unlisted fields come last, by name.
        assert_eq!(field(&[]), Some((json!("a"), json!("a first"))));
    }

    #[test]
    fn validators_own_codes_are_rules() {
        let mut range = ValidationError::new("range");
        range.message = Some("must be 1".into());
        let e = first_error(&errors(&[("n", range)]), &["n"]);
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(e.message, "Field `n` must be 1.");
    }
}
