//! `POST /embed` (BGE-M3's three outputs, as `trident embed` writes them) and `POST /tokenize`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use trident_core::DocId;
use utoipa::ToSchema;

use super::input::{self, Texts};
use super::json_response;
use crate::error::ApiError;
use crate::extract::read_json;
use crate::pipeline;
use crate::size::{check_bytes, ResponseSize};
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// One text or a list of texts.
    #[schema(value_type = super::openapi_types::TextsSchema)]
    pub inputs: Texts,
    /// Dense vector (L2-normalised CLS state). Absent flags default to true unless another flag
    /// is explicitly true.
    pub dense: Option<bool>,
    /// Lexical weights by token id.
    pub sparse: Option<bool>,
    /// ColBERT multi-vectors.
    pub colbert: Option<bool>,
    /// Tokens per input, specials included (default and maximum: the server's `--max-length`).
    pub max_length: Option<usize>,
    /// Cut inputs longer than `max_length` instead of rejecting them (422).
    #[serde(default)]
    pub truncate: bool,
}

/// One result of `/embed`: the same object `trident embed` writes, with `id` = input index.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingObject {
    pub id: u64,
    /// Tokens fed to the model, `<s>` and `</s>` included.
    pub tokens: usize,
    pub truncated: bool,
    pub dense: Option<Vec<f32>>,
    /// Token id (decimal string) → weight; only positive weights, specials excluded.
    pub sparse: Option<BTreeMap<String, f32>>,
    /// One vector per token after `<s>` (the final `</s>` included).
    pub colbert: Option<Vec<Vec<f32>>>,
}

#[utoipa::path(post, path = "/embed", request_body = EmbedRequest, tag = "embeddings",
    responses(
        (status = 200, description = "One object per input, in order", body = [EmbeddingObject]),
        (status = 400, description = "Body is not JSON"),
        (status = 401, description = "Missing or wrong bearer token"),
        (status = 408, description = "Body not received within --body-timeout-secs"),
        (status = 413, description = "Body too large"),
        (status = 422, description = "A field is wrong (named in `error.field`), too many inputs, an input longer than max_length without truncate, or a response that would pass --max-response-bytes"),
        (status = 429, description = "Too many requests in flight; see Retry-After"),
        (status = 503, description = "Model loading, or not answered within --request-timeout-secs"),
    ))]
pub async fn embed(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let req: EmbedRequest = read_json(body, state.config.max_body_bytes).await?;
    let model = state.model()?;
    let modes = input::modes(req.dense, req.sparse, req.colbert)?;
    let max_length = input::max_length(&state, model, req.max_length)?;
    input::check_count(&state, "inputs", req.inputs.0.len())?;
    let size = ResponseSize::embed(&model.info, modes, state.config.max_response_bytes);
    let texts = req.inputs.0;
    let out =
        pipeline::embed(&model.pipeline, "inputs", texts, modes, max_length, req.truncate, &size)
            .await?;
    let mut json = String::with_capacity(out.len() * 64);
    json.push('[');
    for (i, e) in out.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&e.to_json(&DocId::from(i as u64)));
    }
    json.push(']');
    Ok(json_response(json))
}

/// 422 when the ids and pieces of `docs` would pass `--max-response-bytes`.
fn tokenize_size(
    state: &AppState,
    model: &crate::LoadedModel,
    docs: &[trident_core::TokenizedDoc],
) -> Result<(), ApiError> {
    let ids = docs.iter().flat_map(|d| &d.ids);
    // Per token: `id,` (at most 11 bytes) and `"piece",` (escapes aside); per input, the keys.
    let piece = |id: u32| model.pieces.get(id as usize).map_or(0, String::len);
    let bytes = ids.clone().map(|&id| 14 + piece(id)).sum::<usize>() + 48 * docs.len();
    let limit = state.config.max_response_bytes;
    check_bytes("inputs", bytes, docs.len(), ids.count(), limit)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    #[schema(value_type = super::openapi_types::TextsSchema)]
    pub inputs: Texts,
    pub max_length: Option<usize>,
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Tokenized {
    /// Ids fed to the model: `<s> … </s>`.
    pub ids: Vec<u32>,
    /// The tokenizer's piece for each id.
    pub pieces: Vec<String>,
    pub truncated: bool,
}

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, tag = "embeddings",
    responses((status = 200, description = "Token ids and pieces per input", body = [Tokenized]),
              (status = 422, description = "A field is wrong")))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: TokenizeRequest = read_json(body, state.config.max_body_bytes).await?;
    let model = state.model()?;
    let max_length = input::max_length(&state, model, req.max_length)?;
    let docs =
        input::tokenize(&state, model, "inputs", req.inputs.0, max_length, req.truncate).await?;
    tokenize_size(&state, model, &docs)?;
    let out: Vec<Tokenized> = docs
        .into_iter()
        .map(|d| Tokenized {
            pieces: d
                .ids
                .iter()
                .map(|&id| model.pieces.get(id as usize).cloned().unwrap_or_default())
                .collect(),
            ids: d.ids,
            truncated: d.truncated,
        })
        .collect();
    Ok(json_response(serde_json::to_string(&out).expect("tokens serialise")))
}
