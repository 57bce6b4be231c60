//! `GET /api/config`: the effective config, secrets redacted.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use actors::error::ErrorCode;

use super::auth::Caller;
use super::error::ApiError;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/config", tag = "operations",
    responses((status = 200, description = "The effective config, secrets redacted", body = Object), crate::http::schema::CommonErrors),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_config(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    if !caller.admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "Reading the config needs an admin key.",
        ));
    }
    Ok(Json(json!({
        "success": true,
        "config": state.config().redacted(),
        "config_path": state.config_path,
    })))
}
