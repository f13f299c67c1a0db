//! The OpenAPI 3.1 document served at `/openapi.json`, derived from the handlers' annotations.

use utoipa::OpenApi;

use crate::routes::*;

#[derive(OpenApi)]
#[openapi(
    info(title = "trident", description = "BGE-M3 embeddings (dense, sparse, ColBERT) over HTTP"),
    paths(embed, embeddings, score, tokenize, get_one, post_many, info, health, metrics),
    components(schemas(
        EmbedRequest, EmbeddingObject, TokenizeRequest, Tokenized, EmbeddingsRequest, EmbeddingsResponse,
        EmbeddingData, Vector, Usage, ScoreRequest, LookupRequest, Info, Limits, crate::ModelInfo
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "embeddings", description = "BGE-M3 outputs"),
        (name = "openai", description = "OpenAI-compatible embeddings"),
        (name = "scores", description = "Query–passage similarity"),
        (name = "lookup", description = "Stored results by document id"),
        (name = "service", description = "Health, metrics, model information"),
    )
)]
struct ApiDoc;

/// Declares the optional bearer token (`--api-key`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON text.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().expect("OpenAPI document serialises")
}
