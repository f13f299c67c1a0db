//! Scores checked against the reference's recorded outputs
//! (`tests/fixtures/tiny-m3/expected.json`): `score_pair` on the recorded `encode` outputs, and
//! the hybrid formulas of `compute_score_per_pair`.

use std::collections::HashMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{score_pair, PairScores, Weights};
use crate::types::Embedding;

/// A JSON object read in file order (serde_json's own map sorts keys; lexical
/// accumulation order matters).
struct OrderedWeights(Vec<(u32, f32)>);

impl<'de> Deserialize<'de> for OrderedWeights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedWeights;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of token id -> weight")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, w)) = m.next_entry::<String, f32>()? {
                    v.push((k.parse().map_err(serde::de::Error::custom)?, w));
                }
                Ok(OrderedWeights(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct Item {
    text_index: usize,
    dense_vecs: Vec<f32>,
    lexical_weights: OrderedWeights,
    colbert_vecs: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct ScoreSet {
    weights: Vec<f32>,
    dense: Vec<f32>,
    sparse: Vec<f32>,
    colbert: Vec<f32>,
    #[serde(rename = "sparse+dense")]
    sparse_dense: Vec<f32>,
    #[serde(rename = "colbert+sparse+dense")]
    colbert_sparse_dense: Vec<f32>,
}

#[derive(Deserialize)]
struct FromEncode {
    dense: Vec<f32>,
    sparse: Vec<f32>,
    colbert: Vec<f32>,
}

#[derive(Deserialize)]
struct Scores {
    compute_score_per_pair: Vec<ScoreSet>,
    from_encode: FromEncode,
}

#[derive(Deserialize)]
struct Tolerance {
    scores: f32,
}

#[derive(Deserialize)]
struct Expected {
    texts: Vec<String>,
    encode: HashMap<String, Vec<Item>>,
    pairs: Vec<(String, String)>,
    scores: Scores,
    tolerance: Tolerance,
}

fn expected() -> Expected {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-m3/expected.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn close(actual: f32, expected: f32, tol: f32) -> bool {
    (actual - expected).abs() <= tol * (1.0 + expected.abs())
}

fn embedding(item: &Item) -> Embedding {
    let dim = item.colbert_vecs[0].len();
    Embedding {
        tokens: item.colbert_vecs.len() + 1,
        truncated: false,
        dense: Some(item.dense_vecs.clone()),
        sparse: Some(item.lexical_weights.0.clone()),
        colbert: Some(item.colbert_vecs.concat()),
        colbert_dim: dim,
    }
}

/// Scores recomputed from the recorded `encode` outputs match `from_encode` and
/// `compute_score_per_pair` for every pair whose two texts were encoded.
#[test]
fn scores_from_recorded_encode_outputs_match_reference() {
    let exp = expected();
    let tol = exp.tolerance.scores;
    let by_text: HashMap<&str, &Item> =
        exp.encode["8192"].iter().map(|it| (exp.texts[it.text_index].as_str(), it)).collect();
    let mut checked = 0;
    for (k, (q, p)) in exp.pairs.iter().enumerate() {
        let (Some(qi), Some(pi)) = (by_text.get(q.as_str()), by_text.get(p.as_str())) else {
            continue;
        };
        let (qe, pe) = (embedding(qi), embedding(pi));
        for set in &exp.scores.compute_score_per_pair {
            let w = Weights::from_slice(&set.weights).unwrap();
            let s = score_pair(&qe, &pe, &w).unwrap();
            let fe = &exp.scores.from_encode;
            for (name, got, want) in [
                ("dense/from_encode", s.dense, fe.dense[k]),
                ("sparse/from_encode", s.sparse, fe.sparse[k]),
                ("colbert/from_encode", s.colbert, fe.colbert[k]),
                ("dense", s.dense, set.dense[k]),
                ("sparse", s.sparse, set.sparse[k]),
                ("colbert", s.colbert, set.colbert[k]),
                ("sparse+dense", s.sparse_dense, set.sparse_dense[k]),
                ("colbert+sparse+dense", s.colbert_sparse_dense, set.colbert_sparse_dense[k]),
            ] {
                assert!(
                    close(got, want, tol),
                    "pair {k} weights {:?} {name}: got {got}, expected {want}",
                    set.weights
                );
            }
        }
        checked += 1;
    }
    // Pairs 0, 1, 12, 13, 14 and 15 have both texts among the encoded ones.
    assert!(checked >= 6, "only {checked} pairs had recorded encode outputs");
}

/// The hybrid formulas reproduce the reference's combined columns for all 16 pairs and
/// all three weight sets.
#[test]
fn hybrid_combination_matches_compute_score_per_pair() {
    let exp = expected();
    let tol = exp.tolerance.scores;
    assert_eq!(exp.scores.compute_score_per_pair.len(), 3);
    for set in &exp.scores.compute_score_per_pair {
        let w = Weights::from_slice(&set.weights).unwrap();
        assert_eq!(set.dense.len(), exp.pairs.len());
        for k in 0..exp.pairs.len() {
            let s = PairScores::combine(set.dense[k], set.sparse[k], set.colbert[k], &w);
            assert!(close(s.sparse_dense, set.sparse_dense[k], tol), "pair {k} {:?}", set.weights);
            assert!(
                close(s.colbert_sparse_dense, set.colbert_sparse_dense[k], tol),
                "pair {k} {:?}",
                set.weights
            );
        }
    }
}
