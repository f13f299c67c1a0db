//! The endpoints and how they are wired to middleware.

mod embed;
mod input;
mod lookup;
mod meta;
mod openai;
pub(crate) mod openapi_types;
mod score;

use std::sync::Arc;

use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub(crate) use embed::{
    __path_embed, __path_tokenize, EmbedRequest, EmbeddingObject, TokenizeRequest, Tokenized,
};
pub(crate) use lookup::{__path_get_one, __path_post_many, LookupRequest};
pub(crate) use meta::{__path_health, __path_info, __path_metrics, Info, Limits};
pub(crate) use openai::{
    __path_embeddings, EmbeddingData, EmbeddingsRequest, EmbeddingsResponse, Usage, Vector,
};
pub(crate) use score::{__path_score, ScoreRequest};

use crate::error::{ApiError, Kind};
use crate::{middleware, AppState};

pub fn router(state: Arc<AppState>) -> Router {
    // Work that uses the encoder or Redis: its body is read, then counted against the in-flight
    // limit.
    let work = Router::new()
        .route("/embed", post(embed::embed))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/score", post(score::score))
        .route("/tokenize", post(embed::tokenize))
        .route("/lookup", post(lookup::post_many))
        .route("/lookup/{id}", get(lookup::get_one))
        .route_layer(from_fn_with_state(state.clone(), middleware::limit_in_flight));
    let authed = work
        .route("/info", get(meta::info))
        .route_layer(from_fn_with_state(state.clone(), middleware::auth));
    // Probes, scrapers and API clients' code generators need no token.
    let open = Router::new()
        .route("/health", get(meta::health))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(meta::openapi));
    authed
        .merge(open)
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), middleware::request_timeout))
        .layer(from_fn_with_state(state.clone(), middleware::track))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(Kind::NotFound, format!("no endpoint at {}; see /openapi.json", uri.path()))
}

/// A 200 with a body that is already JSON text.
pub(crate) fn json_response(json: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}
