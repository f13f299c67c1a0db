//! `POST /embed` (BGE-M3's three outputs, as `trident embed` writes them, in the encodings
//! the request asks for) and `POST /tokenize`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use trident_core::{ColbertEncoding, DenseEncoding, DocId, Encoding, Format, Record};
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
    /// Number type of the returned dense vectors (default `f32`); as `trident embed
    /// --dense-encoding`.
    #[schema(value_type = Option<super::openapi_types::DenseEncodingSchema>)]
    pub dense_encoding: Option<String>,
    /// Number type of the returned ColBERT rows (default `f32`); as `trident embed
    /// --colbert-encoding`. `binary` rows are hex strings of the packed sign bits.
    #[schema(value_type = Option<super::openapi_types::ColbertEncodingSchema>)]
    pub colbert_encoding: Option<String>,
}

impl EmbedRequest {
    /// The requested encodings; a name that is not one is a 422 naming its field.
    fn encoding(&self) -> Result<Encoding, ApiError> {
        fn parse<T: std::str::FromStr<Err = String> + Default>(
            field: &str,
            name: &Option<String>,
        ) -> Result<T, ApiError> {
            name.as_deref().map_or(Ok(T::default()), |n| {
                n.parse().map_err(|e: String| ApiError::field(field, e))
            })
        }
        Ok(Encoding {
            dense: parse::<DenseEncoding>("dense_encoding", &self.dense_encoding)?,
            colbert: parse::<ColbertEncoding>("colbert_encoding", &self.colbert_encoding)?,
        })
    }
}

/// The encodings of a result not in f32, as the response writes them.
#[derive(Serialize, ToSchema)]
pub struct EncodingObject {
    #[schema(value_type = super::openapi_types::DenseEncodingSchema)]
    pub dense: String,
    #[schema(value_type = super::openapi_types::ColbertEncodingSchema)]
    pub colbert: String,
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
    /// One vector per token after `<s>` (the final `</s>` included); hex strings when
    /// `colbert_encoding` is `binary`.
    #[schema(value_type = Option<super::openapi_types::ColbertRowsSchema>)]
    pub colbert: Option<Vec<Vec<f32>>>,
    /// Dimensions of each binary ColBERT row (with `colbert_encoding` `binary` only).
    pub colbert_dim: Option<usize>,
    /// Present when an encoding is not f32: the encodings the values were rounded to.
    pub encoding: Option<EncodingObject>,
}

#[utoipa::path(post, path = "/embed", request_body = EmbedRequest, tag = "embeddings",
    responses(
        (status = 200, description = "One object per input, in order", body = [EmbeddingObject]),
        (status = 400, description = "Body is not JSON"),
        (status = 401, description = "Missing or wrong bearer token"),
        (status = 408, description = "Body not received within --body-timeout-secs"),
        (status = 413, description = "Body too large"),
        (status = 422, description = "A field is wrong (named in `error.field`: e.g. an unknown dense_encoding or colbert_encoding), too many inputs, an input longer than max_length without truncate, or a response that would pass --max-response-bytes"),
        (status = 429, description = "Too many requests in flight; see Retry-After"),
        (status = 503, description = "Model loading, or not answered within --request-timeout-secs"),
    ))]
pub async fn embed(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let req: EmbedRequest = read_json(body, state.config.max_body_bytes).await?;
    let model = state.model()?;
    let modes = input::modes(req.dense, req.sparse, req.colbert)?;
    let enc = req.encoding()?;
    let max_length = input::max_length(&state, model, req.max_length)?;
    input::check_count(&state, "inputs", req.inputs.0.len())?;
    let size = ResponseSize::embed(&model.info, modes, state.config.max_response_bytes);
    let texts = req.inputs.0;
    let out =
        pipeline::embed(&model.pipeline, "inputs", texts, modes, max_length, req.truncate, &size)
            .await?;
    // The objects `trident embed` writes in these encodings (f32: `Embedding::to_json`).
    let mut json = Vec::with_capacity(out.len() * 64);
    json.push(b'[');
    for (i, mut e) in out.into_iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        enc.apply(&mut e);
        let id = DocId::from(i as u64);
        let record = Record { id: &id, e: &e, enc, note: None, version: None };
        json.extend_from_slice(&record.write(Format::Json));
    }
    json.push(b']');
    Ok(json_response(String::from_utf8(json).expect("JSON records are UTF-8")))
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
