//! HTTP requests through the shared pipeline (`trident_engine::Pipeline`): the same cache,
//! tokenizer, batcher and workers as the Kafka stream, at online priority.

use trident_core::{Embedding, Modes};
use trident_engine::pipeline::Prepared;
use trident_engine::{JobError, Pipeline, Priority};

use crate::error::ApiError;
use crate::size::ResponseSize;

/// Embeds `texts` (one request). A text longer than `max_length` is a 422 naming
/// `{field}[i]` unless `truncate`, and so is a request whose response would pass `size`; both
/// checks run after tokenization and before any encoding.
pub async fn embed(
    pipeline: &Pipeline,
    field: &str,
    texts: Vec<String>,
    modes: Modes,
    max_length: usize,
    truncate: bool,
    size: &ResponseSize,
) -> Result<Vec<Embedding>, ApiError> {
    let reqs: Vec<(String, Modes, usize)> =
        texts.into_iter().map(|t| (t, modes, max_length)).collect();
    let prepared = pipeline.prepare(&reqs).await;
    for (i, p) in prepared.iter().enumerate() {
        let too_long = match p {
            Prepared::Hit(e) => e.truncated,
            Prepared::Miss { doc, .. } => doc.truncated,
            Prepared::Failed(reason) => {
                return Err(ApiError::field(format!("{field}[{i}]"), reason))
            }
        };
        if too_long && !truncate {
            return Err(ApiError::field(
                format!("{field}[{i}]"),
                format!("longer than max_length = {max_length} tokens; send \"truncate\": true to cut it"),
            ));
        }
    }
    let tokens: Vec<usize> = prepared
        .iter()
        .map(|p| match p {
            Prepared::Hit(e) => e.tokens,
            Prepared::Miss { doc, .. } => doc.ids.len(),
            Prepared::Failed(_) => 0,
        })
        .collect();
    size.check(field, &tokens)?;
    let outcomes = pipeline.encode_prepared(prepared, modes, Priority::Online).await;
    let mut results = Vec::with_capacity(outcomes.len());
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(e) => results.push(e),
            Err(JobError::Shutdown) => {
                return Err(ApiError::unavailable("the encoder pipeline shut down"))
            }
            Err(reason) => {
                let field = format!("{field}[{i}]");
                return Err(ApiError {
                    field: Some(field.clone()),
                    ..ApiError::internal(format!("{field}: encoder failed: {reason}"))
                });
            }
        }
    }
    Ok(results)
}
