//! `POST /score`: BGE-M3's five similarity scores per (query, passage) pair, under the
//! reference's names (`dense`, `sparse`, `colbert`, `sparse+dense`, `colbert+sparse+dense`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use trident_core::score::{score_pair, PairScores, Weights};
use trident_core::Modes;
use utoipa::ToSchema;

use super::input;
use super::json_response;
use crate::error::ApiError;
use crate::extract::read_json;
use crate::pipeline;
use crate::size::ResponseSize;
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// `[[query, passage], ...]`.
    #[schema(value_type = Vec<[String; 2]>)]
    pub pairs: Vec<Vec<String>>,
    /// `[w_dense, w_sparse, w_colbert]` for the hybrid scores (default `[0.4, 0.2, 0.4]`).
    pub weights: Option<Vec<f32>>,
    /// Tokens per text, specials included (default and maximum: the server's `--max-length`).
    pub max_length: Option<usize>,
    #[serde(default)]
    pub truncate: bool,
}

#[utoipa::path(post, path = "/score", request_body = ScoreRequest, tag = "scores",
    responses(
        (status = 200, description = "Per pair: dense, sparse, colbert, sparse+dense, colbert+sparse+dense",
         body = [Object]),
        (status = 422, description = "A field is wrong (e.g. weights that do not have 3 values)"),
    ))]
pub async fn score(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let req: ScoreRequest = read_json(body, state.config.max_body_bytes).await?;
    let weights = match &req.weights {
        None => Weights::default(),
        Some(w) => Weights::from_slice(w).map_err(|e| ApiError::field("weights", e))?,
    };
    let model = state.model()?;
    let max_length = input::max_length(&state, model, req.max_length)?;
    check_pairs(&state, &req.pairs)?;
    // Queries at even positions, passages at odd ones: one engine call, batched together.
    let texts: Vec<String> = req.pairs.into_iter().flatten().collect();
    // Five floats per pair, whatever the lengths: no response-size bound needed.
    let unbounded = ResponseSize::UNLIMITED;
    let out = pipeline::embed(
        &model.pipeline,
        "pairs",
        texts,
        Modes::ALL,
        max_length,
        req.truncate,
        &unbounded,
    )
    .await
    .map_err(pair_field)?;
    let scores = out
        .chunks_exact(2)
        .enumerate()
        .map(|(i, qp)| {
            score_pair(&qp[0], &qp[1], &weights)
                .map_err(|e| ApiError::internal(format!("pairs[{i}]: {e}")))
        })
        .collect::<Result<Vec<PairScores>, _>>()?;
    Ok(json_response(serde_json::to_string(&scores).expect("scores serialise")))
}

/// Each pair holds two texts, and the input limit counts texts.
fn check_pairs(state: &AppState, pairs: &[Vec<String>]) -> Result<(), ApiError> {
    if let Some(i) = pairs.iter().position(|p| p.len() != 2) {
        let n = pairs[i].len();
        return Err(ApiError::field(
            format!("pairs[{i}]"),
            format!("expected [query, passage], got {n} texts"),
        ));
    }
    let (n, max) = (pairs.len(), state.config.max_inputs);
    if n == 0 {
        return Err(ApiError::field("pairs", "must not be empty"));
    }
    if n * 2 > max {
        let msg = format!(
            "{n} pairs ({} texts) exceed the limit of {max} texts per request (--max-inputs)",
            n * 2
        );
        return Err(ApiError::field("pairs", msg));
    }
    Ok(())
}

/// Texts are flattened (query, passage, query, ...): name a failing text `pairs[i][0|1]`.
fn pair_field(mut e: ApiError) -> ApiError {
    let index = e
        .field
        .as_deref()
        .and_then(|f| f.strip_prefix("pairs[")?.strip_suffix(']')?.parse::<usize>().ok());
    if let Some(i) = index {
        let field = format!("pairs[{}][{}]", i / 2, i % 2);
        e.message = e.message.replacen(&format!("pairs[{i}]"), &field, 1);
        e.field = Some(field);
    }
    e
}
