//! `GET /lookup/{id}` and `POST /lookup`: results stored by nodes in the Redis result store.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use trident_core::DocId;
use utoipa::ToSchema;

use super::json_response;
use crate::error::{ApiError, Kind};
use crate::extract::read_json;
use crate::{AppState, ResultStore};

fn store(state: &AppState) -> Result<&dyn ResultStore, ApiError> {
    state.store.as_deref().ok_or_else(|| {
        ApiError::unavailable("no result store configured: start `trident serve` with --redis URL")
    })
}

async fn fetch(state: &AppState, ids: Vec<DocId>) -> Result<Vec<Option<String>>, ApiError> {
    store(state)?
        .get_many(ids)
        .await
        .map_err(|e| ApiError::unavailable(format!("result store: {e}")))
}

#[utoipa::path(get, path = "/lookup/{id}", tag = "lookup",
    params(("id" = String, Path, description = "Document id as the node stored it")),
    responses(
        (status = 200, description = "The stored result (same object as `trident embed` writes)", body = Object),
        (status = 404, description = "No result stored under this id"),
        (status = 503, description = "No result store configured, or Redis unreachable"),
    ))]
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = fetch(&state, vec![DocId::Str(id.clone())]).await?.pop().flatten();
    match found {
        Some(json) => Ok(json_response(json)),
        None => Err(ApiError::new(Kind::NotFound, format!("no result stored for id {id:?}"))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    /// Document ids (strings or numbers).
    #[schema(value_type = Vec<Object>)]
    pub ids: Vec<DocId>,
}

#[utoipa::path(post, path = "/lookup", request_body = LookupRequest, tag = "lookup",
    responses(
        (status = 200, description = "Per id, in order: the stored result, or null when absent", body = [Object]),
        (status = 422, description = "A field is wrong, or too many ids"),
        (status = 503, description = "No result store configured, or Redis unreachable"),
    ))]
pub async fn post_many(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: LookupRequest = read_json(body, state.config.max_body_bytes).await?;
    super::input::check_count(&state, "ids", req.ids.len())?;
    let found = fetch(&state, req.ids).await?;
    let mut json = String::from("[");
    for (i, f) in found.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(f.as_deref().unwrap_or("null"));
    }
    json.push(']');
    Ok(json_response(json))
}
