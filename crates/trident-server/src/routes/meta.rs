//! `GET /info`, `GET /health`, `GET /metrics`, `GET /openapi.json`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::{AppState, ModelInfo};

#[derive(Serialize, ToSchema)]
pub struct Info {
    #[serde(flatten)]
    pub model: ModelInfo,
    /// Encoder workers (one per device).
    pub workers: usize,
    /// trident's version.
    pub version: &'static str,
    pub limits: Limits,
}

#[derive(Serialize, ToSchema)]
pub struct Limits {
    pub max_inputs: usize,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub max_length: usize,
    pub max_response_bytes: usize,
    pub max_connections: usize,
}

#[utoipa::path(get, path = "/info", tag = "service",
    responses((status = 200, description = "Model, dimensions, limits, backend, devices, version", body = Info),
              (status = 503, description = "Model loading")))]
pub async fn info(State(state): State<Arc<AppState>>) -> Result<Json<Info>, ApiError> {
    let m = state.model()?;
    let c = &state.config;
    Ok(Json(Info {
        model: m.info.clone(),
        workers: m.workers,
        version: env!("CARGO_PKG_VERSION"),
        limits: Limits {
            max_inputs: c.max_inputs,
            max_body_bytes: c.max_body_bytes,
            max_in_flight: c.max_in_flight,
            max_length: c.max_length.min(m.info.max_length),
            max_response_bytes: c.max_response_bytes,
            max_connections: c.max_connections,
        },
    }))
}

#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "Model loaded and every worker up: `{\"status\": \"ok\"}`"),
              (status = 503, description = "The model is loading: `{\"status\": \"loading\"}`")))]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.ready() {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "loading" })))
            .into_response()
    }
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document()).into_response()
}
