//! `GET /api/config`: the effective config, secrets redacted.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn get_config(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "success": true,
        "config": state.config().redacted(),
        "config_path": state.config_path,
    }))
}
