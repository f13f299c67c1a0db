//! Request inputs shared by the endpoints: one text or a list of texts, checked against the
//! limits and tokenized.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use trident_core::{Modes, TokenizedDoc};

use crate::error::ApiError;
use crate::{AppState, LoadedModel};

/// `"text"` or `["text", ...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Texts(pub Vec<String>);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Texts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Texts, E> {
                Ok(Texts(vec![s.to_string()]))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Texts, E> {
                Ok(Texts(vec![s]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Texts(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Which outputs a request asks for: an absent flag defaults to true unless another flag is
/// explicitly true (`{"dense": true}` → dense only; `{"colbert": false}` → dense + sparse).
pub fn modes(
    dense: Option<bool>,
    sparse: Option<bool>,
    colbert: Option<bool>,
) -> Result<Modes, ApiError> {
    let any_true = [dense, sparse, colbert].contains(&Some(true));
    let pick = |f: Option<bool>| f.unwrap_or(!any_true);
    let m = Modes { dense: pick(dense), sparse: pick(sparse), colbert: pick(colbert) };
    if !m.any() {
        return Err(ApiError::field(
            "dense",
            "at least one of dense, sparse, colbert must be true",
        ));
    }
    Ok(m)
}

/// The request's `max_length`, within 2..=the server's limit.
pub fn max_length(
    state: &AppState,
    model: &LoadedModel,
    requested: Option<usize>,
) -> Result<usize, ApiError> {
    let limit = state.config.max_length.min(model.info.max_length);
    match requested {
        None => Ok(limit),
        Some(n) if (2..=limit).contains(&n) => Ok(n),
        Some(n) => {
            Err(ApiError::field("max_length", format!("{n} is out of range: expected 2..={limit}")))
        }
    }
}

/// Checks the count against `max_inputs` and tokenizes every text (on a blocking thread).
/// A text longer than `max_length` is a 422 naming it unless `truncate`.
pub async fn tokenize(
    state: &AppState,
    model: &LoadedModel,
    field: &'static str,
    texts: Vec<String>,
    max_length: usize,
    truncate: bool,
) -> Result<Vec<TokenizedDoc>, ApiError> {
    check_count(state, field, texts.len())?;
    let tokenizer = model.tokenizer.clone();
    let docs = tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                tokenizer
                    .encode(t, max_length)
                    .map_err(|e| ApiError::field(format!("{field}[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    if !truncate {
        if let Some(i) = docs.iter().position(|d| d.truncated) {
            return Err(ApiError::field(
                format!("{field}[{i}]"),
                format!("longer than max_length = {max_length} tokens; send \"truncate\": true to cut it"),
            ));
        }
    }
    Ok(docs)
}

/// 422 for an empty list or more than `max_inputs` items.
pub fn check_count(state: &AppState, field: &str, n: usize) -> Result<(), ApiError> {
    let max = state.config.max_inputs;
    if n == 0 {
        return Err(ApiError::field(field, "must not be empty"));
    }
    if n > max {
        return Err(ApiError::field(
            field,
            format!("{n} items exceed the limit of {max} per request (--max-inputs)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_accept_a_string_or_a_list() {
        let t: Texts = serde_json::from_str(r#""a""#).unwrap();
        assert_eq!(t.0, ["a"]);
        let t: Texts = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(t.0, ["a", "b"]);
        assert!(serde_json::from_str::<Texts>("5").is_err());
        assert!(serde_json::from_str::<Texts>(r#"["a", 5]"#).is_err());
    }

    #[test]
    fn absent_mode_flags_follow_the_explicit_ones() {
        assert_eq!(modes(None, None, None).unwrap(), Modes::ALL);
        assert_eq!(
            modes(Some(true), None, None).unwrap(),
            Modes { dense: true, sparse: false, colbert: false }
        );
        assert_eq!(
            modes(None, None, Some(false)).unwrap(),
            Modes { dense: true, sparse: true, colbert: false }
        );
        assert!(modes(Some(false), Some(false), Some(false)).is_err());
    }
}
