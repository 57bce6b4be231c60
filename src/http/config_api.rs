//! `GET /api/config`: the effective config, secrets redacted. `PATCH /api/config`: a JSON merge
//! patch (RFC 7396) over the config file, validated, written and applied like a hot reload.

use actix_web::web::Json;
use serde_json::{json, Value};

use actors::error::ErrorCode;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::reload::{patch_config, PatchError};
use crate::state::AppState;

fn require_admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("{what} the config needs an admin key."),
    ))
}

#[utoipa::path(get, path = "/api/config", tag = "operations", operation_id = "getConfig",
    summary = "Read the effective config",
    description = "Admins only.",
    responses((status = 200, description = "The effective config, secrets redacted", body = crate::http::schema::ConfigAnswer), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_config(state: AppState, caller: Caller) -> Result<Json<Value>, ApiError> {
    require_admin(&caller, "Reading")?;
    Ok(Json(json!({
        "success": true,
        "config": state.config().redacted(),
        "config_path": state.config_path,
    })))
}

/// The answer names the keys that wait for a restart and shows the effective config, redacted:
/// a secret sent in the patch never comes back.
#[utoipa::path(patch, path = "/api/config", tag = "operations", operation_id = "patchConfig",
    summary = "Change the config with a JSON merge patch",
    description = "Admins only. The patch is validated, written to the config file atomically and applied like a hot reload. The answer names the keys that wait for a restart and shows the effective config, redacted: a secret sent in the patch never comes back.",
    request_body(content = Object, description = "A JSON merge patch (RFC 7396) over the config file", content_type = "application/merge-patch+json"),
    responses((status = 200, description = "The new effective config, secrets redacted, and the keys that need a restart", body = crate::http::schema::ConfigPatched), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn patch(
    state: AppState,
    caller: Caller,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&caller, "Changing")?;
    match patch_config(&state, &patch).await {
        Ok(change) => {
            log::info!(key = caller.key_name.as_deref().unwrap_or("-"), keys:% = change.changed.join(", "); "config changed through the API");
            Ok(Json(json!({
                "success": true,
                "config": change.config.redacted(),
                "restart_required": change.restart_required,
            })))
        }
        Err(PatchError::Invalid(e)) => Err(ApiError::new(
            ErrorCode::ValidationError,
            format!("The config is refused: {e}."),
        )
        .with_details(json!({"field": e.key, "rule": e.message}))),
        Err(PatchError::Write(e)) => {
            log::error!(path:% = state.config_path.display(), error:% = e; "cannot write the config file");
            Err(ApiError::new(
                ErrorCode::InternalError,
                "The config file could not be written; nothing was changed.",
            ))
        }
    }
}
