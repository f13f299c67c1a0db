//! `POST /score`: BGE-M3's five similarity scores per (query, passage) pair, under the
//! reference's names (`dense`, `sparse`, `colbert`, `sparse+dense`, `colbert+sparse+dense`).
//!
//! A pair is `[query, passage]` (two texts), or an object whose sides are each a text
//! (`"query"`, `"passage"`) or a stored result (`"query_embedding"`, `"passage_embedding"`: the
//! object `/embed` and `trident embed` return, in any encoding), scored as it was stored, as
//! `trident score` scores it.

use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use trident_core::score::{read_stored, score_encoded, PairScores, Weights};
use trident_core::{Embedding, Encoding, Modes};
use utoipa::ToSchema;

use super::input;
use super::json_response;
use crate::error::ApiError;
use crate::extract::read_json;
use crate::pipeline;
use crate::size::ResponseSize;
use crate::{AppState, ModelInfo};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// `[[query, passage], ...]`; a pair may instead be an object giving either side as a
    /// stored result: `{"query": "...", "passage_embedding": {...}}` (also `query_embedding`).
    #[schema(value_type = Vec<super::openapi_types::ScorePairSchema>)]
    pub pairs: Vec<Pair>,
    /// `[w_dense, w_sparse, w_colbert]` for the hybrid scores (default `[0.4, 0.2, 0.4]`).
    pub weights: Option<Vec<f32>>,
    /// Tokens per text, specials included (default and maximum: the server's `--max-length`).
    pub max_length: Option<usize>,
    #[serde(default)]
    pub truncate: bool,
}

/// One pair of the request.
#[derive(Debug)]
pub enum Pair {
    /// `[query, passage]`.
    Texts(Vec<String>),
    /// `{"query" | "query_embedding", "passage" | "passage_embedding"}`.
    Sides(PairObject),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairObject {
    query: Option<String>,
    passage: Option<String>,
    query_embedding: Option<Value>,
    passage_embedding: Option<Value>,
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pair;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "[query, passage] or an object {\"query\" | \"query_embedding\", \
                     \"passage\" | \"passage_embedding\"}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pair, A::Error> {
                let mut out = Vec::with_capacity(2);
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Pair::Texts(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Pair, A::Error> {
                PairObject::deserialize(de::value::MapAccessDeserializer::new(map)).map(Pair::Sides)
            }
        }
        d.deserialize_any(V)
    }
}

/// One side of a pair: a text (its index among the request's texts) or a stored result.
enum Side {
    Text(usize),
    Stored(Embedding, Encoding),
}

impl Side {
    /// The embedding and its encoding (`out`: the texts' embeddings, f32).
    fn resolve<'a>(&'a self, out: &'a [Embedding]) -> (&'a Embedding, Encoding) {
        match self {
            Side::Text(k) => (&out[*k], Encoding::default()),
            Side::Stored(e, enc) => (e, *enc),
        }
    }
}

/// The pairs' sides, and the texts to encode with the request field each came from.
struct Plan {
    sides: Vec<[Side; 2]>,
    texts: Vec<String>,
    fields: Vec<String>,
}

impl Plan {
    fn new(pairs: Vec<Pair>, info: &ModelInfo) -> Result<Plan, ApiError> {
        let mut plan = Plan { sides: Vec::new(), texts: Vec::new(), fields: Vec::new() };
        for (i, pair) in pairs.into_iter().enumerate() {
            let sides = match pair {
                Pair::Texts(t) => {
                    let [q, p]: [String; 2] = t.try_into().expect("checked: two texts");
                    [plan.text(q, format!("pairs[{i}][0]")), plan.text(p, format!("pairs[{i}][1]"))]
                }
                Pair::Sides(o) => [
                    plan.side(i, "query", o.query, o.query_embedding, info)?,
                    plan.side(i, "passage", o.passage, o.passage_embedding, info)?,
                ],
            };
            plan.sides.push(sides);
        }
        Ok(plan)
    }

    fn text(&mut self, text: String, field: String) -> Side {
        self.texts.push(text);
        self.fields.push(field);
        Side::Text(self.texts.len() - 1)
    }

    fn side(
        &mut self,
        i: usize,
        name: &str,
        text: Option<String>,
        stored: Option<Value>,
        info: &ModelInfo,
    ) -> Result<Side, ApiError> {
        match (text, stored) {
            (Some(t), None) => Ok(self.text(t, format!("pairs[{i}].{name}"))),
            (None, Some(v)) => match read_stored(&v, info.dense_dim, info.colbert_dim) {
                Ok((e, enc)) => Ok(Side::Stored(e, enc)),
                Err(why) => Err(ApiError::field(format!("pairs[{i}].{name}_embedding"), why)),
            },
            (Some(_), Some(_)) => Err(ApiError::field(
                format!("pairs[{i}]"),
                format!(
                    "give \"{name}\" (a text) or \"{name}_embedding\" (a stored result), not both"
                ),
            )),
            (None, None) => Err(ApiError::field(
                format!("pairs[{i}]"),
                format!(
                    "no {name}: expected \"{name}\" (a text) or \"{name}_embedding\" (a stored \
                     result)"
                ),
            )),
        }
    }
}

#[utoipa::path(post, path = "/score", request_body = ScoreRequest, tag = "scores",
    responses(
        (status = 200, description = "Per pair: dense, sparse, colbert, sparse+dense, colbert+sparse+dense",
         body = [Object]),
        (status = 422, description = "A field is wrong (e.g. weights that do not have 3 values, or a stored embedding of other dims than the model's)"),
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
    let plan = Plan::new(req.pairs, &model.info)?;
    // Every text (queries and passages) in one engine call, batched together.
    // Five floats per pair, whatever the lengths: no response-size bound needed.
    let unbounded = ResponseSize::UNLIMITED;
    let out = if plan.texts.is_empty() {
        Vec::new()
    } else {
        pipeline::embed(
            &model.pipeline,
            "pairs",
            plan.texts,
            Modes::ALL,
            max_length,
            req.truncate,
            &unbounded,
        )
        .await
        .map_err(|e| text_field(e, &plan.fields))?
    };
    let scores = plan
        .sides
        .iter()
        .enumerate()
        .map(|(i, [q, p])| {
            let ((qe, qenc), (pe, penc)) = (q.resolve(&out), p.resolve(&out));
            score_encoded(qe, qenc, pe, penc, &weights).map_err(|e| {
                if matches!((q, p), (Side::Text(_), Side::Text(_))) {
                    ApiError::internal(format!("pairs[{i}]: {e}"))
                } else {
                    ApiError::field(format!("pairs[{i}]"), e)
                }
            })
        })
        .collect::<Result<Vec<PairScores>, _>>()?;
    Ok(json_response(serde_json::to_string(&scores).expect("scores serialise")))
}

/// Each `[query, passage]` holds two texts, and the input limit counts two inputs a pair.
fn check_pairs(state: &AppState, pairs: &[Pair]) -> Result<(), ApiError> {
    let texts = |p: &Pair| match p {
        Pair::Texts(t) => t.len(),
        Pair::Sides(_) => 2,
    };
    if let Some(i) = pairs.iter().position(|p| texts(p) != 2) {
        let n = texts(&pairs[i]);
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

/// The pipeline names a failing text `pairs[k]` (its index among the texts): name the
/// request field it came from instead (`pairs[i][0|1]`, `pairs[i].query`).
fn text_field(mut e: ApiError, fields: &[String]) -> ApiError {
    let index = e
        .field
        .as_deref()
        .and_then(|f| f.strip_prefix("pairs[")?.strip_suffix(']')?.parse::<usize>().ok());
    if let Some(field) = index.and_then(|k| fields.get(k)) {
        e.message = e.message.replacen(e.field.as_deref().unwrap_or_default(), field, 1);
        e.field = Some(field.clone());
    }
    e
}
