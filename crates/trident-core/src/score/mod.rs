//! BGE-M3 similarity scores between a query and a passage embedding: dense dot product,
//! lexical matching, ColBERT max-sim, and the reference's weighted hybrids
//! (`compute_score_per_pair` of FlagEmbedding, SPEC §6).
//!
//! This module holds the maths and its error; the mode weights are in `weights`, reading a
//! stored result back for scoring in `stored`.

use std::collections::HashMap;

use serde::Serialize;

use crate::encoding::{binary_maxsim, pack_bits, packed_len, ColbertEncoding, Encoding};
use crate::types::Embedding;

mod stored;
mod weights;

#[cfg(test)]
mod reference_tests;

pub use stored::read_stored;
pub use weights::Weights;

/// Why a score could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("weights: expected 3 comma-separated numbers [dense, sparse, colbert], got {0:?}")]
    WeightCount(String),
    #[error("weights: {0:?} is not a number")]
    WeightNotNumber(String),
    #[error("weights: every weight must be finite, got {0:?}")]
    WeightNotFinite([f32; 3]),
    #[error(
        "weights {0:?}: the dense and sparse weights sum to 0, so \"sparse+dense\" \
         (divided by w_dense + w_sparse) is undefined"
    )]
    DenseSparseSumZero([f32; 3]),
    #[error(
        "weights {0:?}: the weights sum to 0, so \"colbert+sparse+dense\" \
         (divided by their sum) is undefined"
    )]
    SumZero([f32; 3]),
    #[error("{what}: query has {query} components but passage has {passage}")]
    DimMismatch { what: &'static str, query: usize, passage: usize },
    #[error("colbert: {side} has no vectors (every BGE-M3 sequence has at least the </s> row)")]
    EmptyColbert { side: &'static str },
    #[error("colbert: {side} has {len} values, not a multiple of the vector size {dim}")]
    RaggedColbert { side: &'static str, len: usize, dim: usize },
    #[error("{mode}: the {side} embedding lacks this output (it was not computed)")]
    MissingMode { mode: &'static str, side: &'static str },
}

/// Dot product of two dense vectors (both unit length, so this is their cosine).
pub fn dense_score(q: &[f32], p: &[f32]) -> Result<f32, ScoreError> {
    if q.len() != p.len() {
        return Err(ScoreError::DimMismatch { what: "dense", query: q.len(), passage: p.len() });
    }
    Ok(q.iter().zip(p).map(|(a, b)| a * b).sum())
}

/// `Σ_{t ∈ keys(q) ∩ keys(p)} q[t]·p[t]`, accumulated in f32 in the key order of `q` as
/// `compute_lexical_matching_score` does; 0 when no token is shared.
pub fn lexical_score(q: &[(u32, f32)], p: &[(u32, f32)]) -> f32 {
    let p: HashMap<u32, f32> = p.iter().copied().collect();
    q.iter().filter_map(|(t, wq)| p.get(t).map(|wp| wq * wp)).fold(0.0f32, |acc, x| acc + x)
}

/// ColBERT max-sim `(1/|q|) Σ_i max_j q_i·p_j` over row-major matrices of `dim` columns,
/// without padding rows (the clean per-pair formula of SPEC §6.1).
pub fn colbert_score(q: &[f32], p: &[f32], dim: usize) -> Result<f32, ScoreError> {
    for (side, m) in [("query", q), ("passage", p)] {
        if m.is_empty() || dim == 0 {
            return Err(ScoreError::EmptyColbert { side });
        }
        if m.len() % dim != 0 {
            return Err(ScoreError::RaggedColbert { side, len: m.len(), dim });
        }
    }
    let rows = q.len() / dim;
    let total: f32 = q
        .chunks_exact(dim)
        .map(|qi| {
            p.chunks_exact(dim)
                .map(|pj| qi.iter().zip(pj).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum();
    Ok(total / rows as f32)
}

/// The five numbers `compute_score` reports for one pair, with its key names.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairScores {
    pub dense: f32,
    pub sparse: f32,
    pub colbert: f32,
    #[serde(rename = "sparse+dense")]
    pub sparse_dense: f32,
    #[serde(rename = "colbert+sparse+dense")]
    pub colbert_sparse_dense: f32,
}

impl PairScores {
    /// Combines the three mode scores with `[w_dense, w_sparse, w_colbert]` as the reference does:
    /// `sparse+dense = (w1·sparse + w0·dense)/(w0+w1)`,
    /// `colbert+sparse+dense = (w0·dense + w1·sparse + w2·colbert)/(w0+w1+w2)`.
    pub fn combine(dense: f32, sparse: f32, colbert: f32, w: &Weights) -> PairScores {
        let [w0, w1, w2] = w.get();
        PairScores {
            dense,
            sparse,
            colbert,
            sparse_dense: (w1 * sparse + w0 * dense) / (w0 + w1),
            colbert_sparse_dense: (w2 * colbert + w1 * sparse + w0 * dense) / (w0 + w1 + w2),
        }
    }

    /// One JSON line: `{"dense","sparse","colbert","sparse+dense","colbert+sparse+dense"}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("scores serialise")
    }
}

/// All scores of a (query, passage) pair of embeddings; both need all three outputs.
pub fn score_pair(q: &Embedding, p: &Embedding, w: &Weights) -> Result<PairScores, ScoreError> {
    let m = Parts::of(q, p)?;
    let colbert = colbert_score(m.q_colbert, m.p_colbert, m.dim)?;
    Ok(PairScores::combine(m.dense, m.sparse, colbert, w))
}

/// The dense and sparse scores of a pair, and its ColBERT matrices (checked present, of one dim).
struct Parts<'a> {
    dense: f32,
    sparse: f32,
    q_colbert: &'a [f32],
    p_colbert: &'a [f32],
    dim: usize,
}

impl<'a> Parts<'a> {
    fn of(q: &'a Embedding, p: &'a Embedding) -> Result<Parts<'a>, ScoreError> {
        fn need<'a, T: ?Sized>(
            x: Option<&'a T>,
            mode: &'static str,
            side: &'static str,
        ) -> Result<&'a T, ScoreError> {
            x.ok_or(ScoreError::MissingMode { mode, side })
        }
        let dense = dense_score(
            need(q.dense.as_deref(), "dense", "query")?,
            need(p.dense.as_deref(), "dense", "passage")?,
        )?;
        let sparse = lexical_score(
            need(q.sparse.as_deref(), "sparse", "query")?,
            need(p.sparse.as_deref(), "sparse", "passage")?,
        );
        if q.colbert_dim != p.colbert_dim {
            return Err(ScoreError::DimMismatch {
                what: "colbert",
                query: q.colbert_dim,
                passage: p.colbert_dim,
            });
        }
        Ok(Parts {
            dense,
            sparse,
            q_colbert: need(q.colbert.as_deref(), "colbert", "query")?,
            p_colbert: need(p.colbert.as_deref(), "colbert", "passage")?,
            dim: q.colbert_dim,
        })
    }
}

/// ColBERT MaxSim of binarised rows (one sign bit per dimension, 1 iff x > 0, as
/// `Encoding::apply` binarises): the mean over query rows of the best ±1 dot product over dim,
/// 1 − 2·Hamming/dim, computed exactly on packed bits (Vespa's binarised MaxSim). Rows already
/// binarised (±1/√dim) keep their bits; float rows are binarised here.
pub fn binary_colbert_score(q: &[f32], p: &[f32], dim: usize) -> Result<f32, ScoreError> {
    for (side, m) in [("query", q), ("passage", p)] {
        if m.is_empty() || dim == 0 {
            return Err(ScoreError::EmptyColbert { side });
        }
        if m.len() % dim != 0 {
            return Err(ScoreError::RaggedColbert { side, len: m.len(), dim });
        }
    }
    let pack = |m: &[f32]| {
        let mut out = Vec::with_capacity(m.len() / dim * packed_len(dim));
        m.chunks_exact(dim).for_each(|r| pack_bits(r, &mut out));
        out
    };
    Ok(binary_maxsim(&pack(q), &pack(p), dim))
}

/// All scores of a pair whose sides were written in the given encodings: a stored result read
/// back by [`crate::output::read_json`] with its `enc`, or a text just encoded
/// (`Encoding::default()`).
///
/// Values rounded to f16 or bf16 are scored as they are, in f32 arithmetic (the f32 side is
/// not rounded). When either side's ColBERT rows are binary, the other side's rows are
/// binarised the same way and ColBERT is [`binary_colbert_score`]; dense, sparse and the
/// hybrids are computed as [`score_pair`] computes them. Two f32 sides score as `score_pair`.
pub fn score_encoded(
    q: &Embedding,
    q_enc: Encoding,
    p: &Embedding,
    p_enc: Encoding,
    w: &Weights,
) -> Result<PairScores, ScoreError> {
    let binary = [q_enc, p_enc].iter().any(|e| e.colbert == ColbertEncoding::Binary);
    if !binary {
        return score_pair(q, p, w);
    }
    let m = Parts::of(q, p)?;
    let colbert = binary_colbert_score(m.q_colbert, m.p_colbert, m.dim)?;
    Ok(PairScores::combine(m.dense, m.sparse, colbert, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_uses_shared_keys_only() {
        let q = [(5, 0.5), (7, 2.0), (9, 1.0)];
        let p = [(9, 3.0), (5, 0.25), (11, 4.0)];
        assert_eq!(lexical_score(&q, &p), 0.5 * 0.25 + 3.0);
        assert_eq!(lexical_score(&q, &[]), 0.0);
    }

    #[test]
    fn colbert_takes_max_per_query_row_and_averages() {
        // q rows: (1,0), (0,1); p rows: (0.6,0.8), (-1,0).
        let q = [1.0, 0.0, 0.0, 1.0];
        let p = [0.6, 0.8, -1.0, 0.0];
        assert!((colbert_score(&q, &p, 2).unwrap() - (0.6 + 0.8) / 2.0).abs() < 1e-7);
        // A negative maximum is kept (no implicit zero from padding).
        let q = [-1.0, 0.0];
        assert!((colbert_score(&q, &[1.0, 0.0], 2).unwrap() + 1.0).abs() < 1e-7);
        assert!(matches!(colbert_score(&[], &p, 2), Err(ScoreError::EmptyColbert { .. })));
        assert!(matches!(colbert_score(&q, &[1.0], 2), Err(ScoreError::RaggedColbert { .. })));
    }

    #[test]
    fn json_uses_reference_key_names() {
        let s = PairScores::combine(0.5, 0.25, 1.0, &Weights::new([1.0, 1.0, 2.0]).unwrap());
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["dense"], 0.5);
        assert_eq!(v["sparse+dense"], 0.375);
        assert_eq!(v["colbert+sparse+dense"], 0.6875);
        assert_eq!(v.as_object().unwrap().len(), 5);
    }

    #[test]
    fn missing_mode_is_an_error() {
        let e = Embedding {
            tokens: 2,
            truncated: false,
            dense: Some(vec![1.0]),
            sparse: None,
            colbert: Some(vec![1.0]),
            colbert_dim: 1,
        };
        assert_eq!(
            score_pair(&e, &e, &Weights::default()),
            Err(ScoreError::MissingMode { mode: "sparse", side: "query" })
        );
    }

    pub(super) fn pair(dim: usize) -> (Embedding, Embedding) {
        let row = |k: usize| -> Vec<f32> {
            (0..dim).map(|i| ((i * 7 + k * 5) % 13) as f32 / 6.0 - 1.0).collect()
        };
        let e = |k: usize, rows: usize| Embedding {
            tokens: rows + 1,
            truncated: false,
            dense: Some(row(k)),
            sparse: Some(vec![(5, 0.5), (9, 0.25 * k as f32)]),
            colbert: Some((0..rows).flat_map(|r| row(k + r)).collect()),
            colbert_dim: dim,
        };
        (e(1, 3), e(2, 5))
    }

    #[test]
    fn score_encoded_of_f32_sides_is_score_pair_and_binary_is_hamming() {
        use crate::encoding::{ColbertEncoding as C, DenseEncoding as D};
        let w = Weights::default();
        let (q, p) = pair(12);
        let f32e = Encoding::default();
        assert_eq!(score_encoded(&q, f32e, &p, f32e, &w), score_pair(&q, &p, &w));
        // f16 rows are scored as they are.
        let half = Encoding { dense: D::Bf16, colbert: C::F16 };
        let mut ph = p.clone();
        half.apply(&mut ph);
        assert_eq!(score_encoded(&q, f32e, &ph, half, &w), score_pair(&q, &ph, &w));
        // A binary side binarises the other: MaxSim of 1 − 2·Hamming/dim, either way round.
        let bin = Encoding { dense: D::F32, colbert: C::Binary };
        let mut pb = p.clone();
        bin.apply(&mut pb);
        let s = score_encoded(&q, f32e, &pb, bin, &w).unwrap();
        let sign = |x: f32| x > 0.0;
        let mut want = 0.0f64;
        for qr in q.colbert_rows() {
            let best = p
                .colbert_rows()
                .map(|pr| qr.iter().zip(pr).filter(|(a, b)| sign(**a) != sign(**b)).count())
                .min()
                .unwrap();
            want += 1.0 - 2.0 * best as f64 / 12.0;
        }
        want /= q.colbert_rows().count() as f64;
        assert!((s.colbert as f64 - want).abs() < 1e-7, "{} vs {want}", s.colbert);
        assert_eq!(s.dense, score_pair(&q, &p, &w).unwrap().dense);
        let mut qb = q.clone();
        bin.apply(&mut qb);
        assert_eq!(score_encoded(&qb, bin, &p, f32e, &w).unwrap().colbert, s.colbert);
        assert_eq!(score_encoded(&qb, bin, &pb, bin, &w).unwrap().colbert, s.colbert);
        let float = colbert_score(qb.colbert.as_ref().unwrap(), pb.colbert.as_ref().unwrap(), 12);
        assert!((float.unwrap() - s.colbert).abs() < 1e-5);
        assert!(matches!(
            binary_colbert_score(&[], &[1.0], 1),
            Err(ScoreError::EmptyColbert { .. })
        ));
    }
}
