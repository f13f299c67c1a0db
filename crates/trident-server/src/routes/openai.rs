//! `POST /v1/embeddings`: OpenAI's embeddings API over the dense vectors, so OpenAI clients
//! (and the tools built on them) work unchanged. Errors use OpenAI's error shape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use trident_core::Modes;
use utoipa::ToSchema;

use super::input::{self, Texts};
use super::json_response;
use crate::error::{ApiError, Kind};
use crate::extract::read_json;
use crate::pipeline;
use crate::size::ResponseSize;
use crate::AppState;

/// Unknown fields (`user`, ...) are accepted and ignored, as OpenAI-compatible servers do.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// One text or a list of texts (token-id arrays are not accepted).
    #[schema(value_type = super::openapi_types::TextsSchema)]
    pub input: Texts,
    /// Echoed back; any value is accepted (the server serves one model).
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32 bytes).
    pub encoding_format: Option<String>,
    /// Not supported: BGE-M3's dense vectors have one size (400 when set).
    #[schema(value_type = Option<u32>)]
    pub dimensions: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    /// A list of floats, or a base64 string of little-endian f32 with `encoding_format: base64`.
    pub embedding: Vector,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsRequest, tag = "openai",
    responses(
        (status = 200, description = "Dense embeddings, OpenAI format", body = EmbeddingsResponse),
        (status = 400, description = "`dimensions` given, or the body is not JSON"),
        (status = 422, description = "A field is wrong; `error.param` names it (also: a response that would pass --max-response-bytes)"),
    ))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    handle(&state, body).await.map_err(ApiError::openai)
}

async fn handle(state: &AppState, body: Body) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = read_json(body, state.config.max_body_bytes).await?;
    if req.dimensions.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(ApiError::field(
            "dimensions",
            "not supported: BGE-M3 dense vectors have a fixed size (see /info dense_dim); omit `dimensions`",
        )
        .with_kind(Kind::BadRequest));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::field(
                "encoding_format",
                format!("{other:?} is not one of \"float\", \"base64\""),
            ))
        }
    };
    let model = state.model()?;
    let max_length = input::max_length(state, model, None)?;
    input::check_count(state, "input", req.input.0.len())?;
    let dense_only = Modes { dense: true, sparse: false, colbert: false };
    let name = req.model.unwrap_or_else(|| state.config.model_name.clone());
    let size = ResponseSize::openai(&model.info, base64, &name, state.config.max_response_bytes);
    let texts = req.input.0;
    let out =
        pipeline::embed(&model.pipeline, "input", texts, dense_only, max_length, false, &size)
            .await?;
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    let data = out
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let v = e.dense.expect("dense was requested");
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(v)
            };
            EmbeddingData { object: "embedding", index, embedding }
        })
        .collect();
    let resp = EmbeddingsResponse {
        object: "list",
        data,
        model: name,
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    };
    Ok(json_response(serde_json::to_string(&resp).expect("response serialises")))
}
