//! Exact retrieval over BGE-M3 embeddings, for evaluation (`trident eval`): brute-force dense
//! search, a sparse inverted index, ColBERT MaxSim re-scoring of candidates, and weighted
//! hybrids of the three, as BGE-M3's paper evaluates them (§4, "Dense+Sparse" and "All").
//!
//! Everything is exact (no approximate index): every passage is scored. One query is searched
//! on one thread; callers run queries in parallel (the index is `Sync`).
//!
//! - dense: `q·p` for every passage (both unit vectors); the top `depth`.
//! - sparse: `Σ_{t ∈ q ∩ p} q_t·p_t` (as [`crate::score::lexical_score`]) for every passage that
//!   shares a token with the query, from posting lists; the top `depth`. Passages sharing no
//!   token are not retrieved.
//! - colbert: the dense top `depth`, re-ranked by ColBERT MaxSim alone (the paper's
//!   "Multi-vec": re-ranking dense candidates).
//! - hybrid `[w1, w2, w3]`: the union of the dense top `depth` and the sparse top `depth`; each
//!   candidate scored `w1·dense + w2·sparse + w3·colbert` with its exact scores (sparse 0 when
//!   it shares no token; ColBERT computed only when `w3 ≠ 0`); the top `depth` of the union.
//!   The sum is not divided by the weights' sum as `compute_score`'s hybrids are: a positive
//!   scale does not change a ranking.
//!
//! Rankings are in trec_eval's order ([`crate::eval::trec_cmp`]): score descending, ties by
//! passage id descending, so a cut at `depth` is deterministic.

use std::collections::HashMap;
use std::fmt;

use crate::eval::trec_cmp;
use crate::score::colbert_score;
use crate::types::Embedding;

/// How a run ranks passages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Dense,
    Sparse,
    /// Dense candidates re-ranked by ColBERT MaxSim.
    Colbert,
    /// `[dense, sparse, colbert]` weights over dense ∪ sparse candidates.
    Hybrid([f32; 3]),
}

impl Method {
    /// Which outputs the run reads: `(dense, sparse, colbert)`.
    pub fn needs(self) -> (bool, bool, bool) {
        match self {
            Method::Dense => (true, false, false),
            Method::Sparse => (false, true, false),
            Method::Colbert => (true, false, true),
            Method::Hybrid(w) => (true, true, w[2] != 0.0),
        }
    }
}

/// One run of an evaluation: a name (`dense`, `dense+sparse`, ...), its method and depth.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub method: Method,
    /// Candidates taken from each first-stage ranking, and the length of the run.
    pub depth: usize,
}

/// The paper's settings (BGE-M3, Table 1 and §4.2: MIRACL; Table 3: MLDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// dense@1000, sparse@1000, colbert@200, dense+sparse `1, 0.3, 0` @1000, all `1, 0.3, 1` @200.
    Miracl,
    /// Long documents: as MIRACL with dense+sparse `0.2, 0.8, 0` and all `0.15, 0.5, 0.35`.
    Mldr,
    /// No preset runs (only `--weights`).
    None,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Preset, String> {
        match s.to_ascii_lowercase().as_str() {
            "miracl" | "paper" => Ok(Preset::Miracl),
            "mldr" | "long" => Ok(Preset::Mldr),
            "none" => Ok(Preset::None),
            _ => Err(format!("preset {s:?}: expected miracl, mldr or none")),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Miracl => "miracl",
            Preset::Mldr => "mldr",
            Preset::None => "none",
        })
    }
}

impl Preset {
    pub fn runs(self) -> Vec<RunSpec> {
        let run = |name: &str, method, depth| RunSpec { name: name.into(), method, depth };
        let (ds, all) = match self {
            Preset::Miracl => ([1.0, 0.3, 0.0], [1.0, 0.3, 1.0]),
            Preset::Mldr => ([0.2, 0.8, 0.0], [0.15, 0.5, 0.35]),
            Preset::None => return vec![],
        };
        vec![
            run("dense", Method::Dense, 1000),
            run("sparse", Method::Sparse, 1000),
            run("colbert", Method::Colbert, 200),
            run("dense+sparse", Method::Hybrid(ds), 1000),
            run("all", Method::Hybrid(all), 200),
        ]
    }
}

/// The depth the paper uses for a weighting: 200 when ColBERT is in it, else 1000.
pub fn default_depth(w: [f32; 3]) -> usize {
    if w[2] != 0.0 {
        200
    } else {
        1000
    }
}

/// Why an index could not be built or searched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetrieveError {
    #[error("passage {id:?}: {what} has {got} dimensions; the first passage's have {want}")]
    Dim { id: String, what: &'static str, got: usize, want: usize },
    #[error("the passages lack the {what} output (some or all), which run {run:?} needs")]
    MissingPassage { what: &'static str, run: String },
    #[error("query {id:?} has no {what} output, which run {run:?} needs")]
    MissingQuery { id: String, what: &'static str, run: String },
    #[error("query {id:?}: {what} has {got} dimensions; the passages' have {want}")]
    QueryDim { id: String, what: &'static str, got: usize, want: usize },
    #[error("passage id {0:?} occurs twice")]
    DuplicateId(String),
}

/// Passages' embeddings laid out for search.
pub struct Index {
    ids: Vec<String>,
    dense_dim: usize,
    /// Row-major `n × dense_dim`; empty when the passages have no dense vector.
    dense: Vec<f32>,
    has_dense: bool,
    postings: HashMap<u32, Vec<(u32, f32)>>,
    has_sparse: bool,
    colbert: Vec<Vec<f32>>,
    colbert_dim: usize,
    has_colbert: bool,
}

impl Index {
    /// Builds the index. An output is available when every passage has it (else runs needing it
    /// fail with the first passage lacking it).
    pub fn build(passages: Vec<(String, Embedding)>) -> Result<Index, RetrieveError> {
        let n = passages.len();
        let first = passages.first().map(|p| &p.1);
        let has_dense = passages.iter().all(|p| p.1.dense.is_some());
        let has_sparse = passages.iter().all(|p| p.1.sparse.is_some());
        let has_colbert = passages.iter().all(|p| p.1.colbert.is_some());
        let dense_dim = first.and_then(|e| e.dense.as_ref()).map_or(0, Vec::len);
        let colbert_dim = first.map_or(0, |e| e.colbert_dim);
        let mut ids = Vec::with_capacity(n);
        let mut seen = std::collections::HashSet::with_capacity(n);
        let mut dense = Vec::with_capacity(if has_dense { n * dense_dim } else { 0 });
        let mut postings: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        let mut colbert = Vec::with_capacity(if has_colbert { n } else { 0 });
        for (i, (id, e)) in passages.into_iter().enumerate() {
            if !seen.insert(id.clone()) {
                return Err(RetrieveError::DuplicateId(id));
            }
            if has_dense {
                let d = e.dense.as_deref().unwrap_or_default();
                if d.len() != dense_dim {
                    let (got, want) = (d.len(), dense_dim);
                    return Err(RetrieveError::Dim { id, what: "dense", got, want });
                }
                dense.extend_from_slice(d);
            }
            if has_sparse {
                for &(t, w) in e.sparse.as_deref().unwrap_or_default() {
                    postings.entry(t).or_default().push((i as u32, w));
                }
            }
            if has_colbert {
                if e.colbert_dim != colbert_dim {
                    let (got, want) = (e.colbert_dim, colbert_dim);
                    return Err(RetrieveError::Dim { id, what: "colbert", got, want });
                }
                colbert.push(e.colbert.unwrap_or_default());
            }
            ids.push(id);
        }
        Ok(Index {
            ids,
            dense_dim,
            dense,
            has_dense,
            postings,
            has_sparse,
            colbert,
            colbert_dim,
            has_colbert,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Checks that the passages have what `run` needs (before searching many queries).
    pub fn check(&self, run: &RunSpec) -> Result<(), RetrieveError> {
        let (d, s, c) = run.method.needs();
        for (need, has, what) in [
            (d, self.has_dense, "dense"),
            (s, self.has_sparse, "sparse"),
            (c, self.has_colbert, "colbert"),
        ] {
            if need && !has && !self.ids.is_empty() {
                return Err(RetrieveError::MissingPassage { what, run: run.name.clone() });
            }
        }
        Ok(())
    }

    /// Dense scores of every passage, in passage order.
    pub fn dense_scores(&self, q: &[f32]) -> Vec<f32> {
        if self.dense_dim == 0 {
            return vec![0.0; self.ids.len()];
        }
        self.dense.chunks_exact(self.dense_dim).map(|p| dot(q, p)).collect()
    }

    /// Sparse scores of every passage (0 when no token is shared), and the passages that share
    /// a token, in first-touch order. Accumulated in f32 in the query's token order, as
    /// [`crate::score::lexical_score`] does.
    pub fn sparse_scores(&self, q: &[(u32, f32)]) -> (Vec<f32>, Vec<u32>) {
        let mut acc = vec![0f32; self.ids.len()];
        let mut touched = vec![false; self.ids.len()];
        let mut hit = Vec::new();
        for &(t, wq) in q {
            if let Some(list) = self.postings.get(&t) {
                for &(d, wp) in list {
                    acc[d as usize] += wq * wp;
                    if !touched[d as usize] {
                        touched[d as usize] = true;
                        hit.push(d);
                    }
                }
            }
        }
        (acc, hit)
    }

    /// ColBERT MaxSim of passage `doc` against the query's rows.
    pub fn colbert_score(&self, q_rows: &[f32], doc: u32) -> f32 {
        colbert_score(q_rows, &self.colbert[doc as usize], self.colbert_dim).unwrap_or(0.0)
    }

    /// The best `k` of `(passage, score)` pairs, in trec_eval's order.
    pub fn top_k(&self, mut scored: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
        let cmp = |a: &(u32, f32), b: &(u32, f32)| {
            trec_cmp((&self.ids[a.0 as usize], a.1 as f64), (&self.ids[b.0 as usize], b.1 as f64))
        };
        if k == 0 {
            return vec![];
        }
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, cmp);
            scored.truncate(k);
        }
        scored.sort_by(cmp);
        scored
    }

    /// Ranks the passages for one query: `(passage index, score)` in trec_eval's order, at most
    /// `run.depth` of them.
    pub fn search(
        &self,
        query_id: &str,
        q: &Embedding,
        run: &RunSpec,
    ) -> Result<Vec<(u32, f32)>, RetrieveError> {
        self.check(run)?;
        let (need_d, need_s, need_c) = run.method.needs();
        let missing = |what| RetrieveError::MissingQuery {
            id: query_id.to_string(),
            what,
            run: run.name.clone(),
        };
        let qd =
            if need_d { Some(q.dense.as_deref().ok_or_else(|| missing("dense"))?) } else { None };
        if let Some(d) = qd {
            if d.len() != self.dense_dim && !self.ids.is_empty() {
                return Err(RetrieveError::QueryDim {
                    id: query_id.to_string(),
                    what: "dense",
                    got: d.len(),
                    want: self.dense_dim,
                });
            }
        }
        let qs =
            if need_s { Some(q.sparse.as_deref().ok_or_else(|| missing("sparse"))?) } else { None };
        let qc = if need_c {
            let c = q.colbert.as_deref().ok_or_else(|| missing("colbert"))?;
            if q.colbert_dim != self.colbert_dim && !self.ids.is_empty() {
                return Err(RetrieveError::QueryDim {
                    id: query_id.to_string(),
                    what: "colbert",
                    got: q.colbert_dim,
                    want: self.colbert_dim,
                });
            }
            Some(c)
        } else {
            None
        };
        let depth = run.depth;
        let all = |scores: &[f32]| -> Vec<(u32, f32)> {
            scores.iter().enumerate().map(|(i, &s)| (i as u32, s)).collect()
        };
        Ok(match run.method {
            Method::Dense => self.top_k(all(&self.dense_scores(qd.unwrap_or_default())), depth),
            Method::Sparse => {
                let (acc, hit) = self.sparse_scores(qs.unwrap_or_default());
                self.top_k(hit.into_iter().map(|d| (d, acc[d as usize])).collect(), depth)
            }
            Method::Colbert => {
                let dense = self.top_k(all(&self.dense_scores(qd.unwrap_or_default())), depth);
                let qc = qc.unwrap_or_default();
                let rescored =
                    dense.into_iter().map(|(d, _)| (d, self.colbert_score(qc, d))).collect();
                self.top_k(rescored, depth)
            }
            Method::Hybrid(w) => {
                let dense = self.dense_scores(qd.unwrap_or_default());
                let (acc, hit) = self.sparse_scores(qs.unwrap_or_default());
                let mut cand: Vec<u32> =
                    self.top_k(all(&dense), depth).into_iter().map(|p| p.0).collect();
                let sparse_top =
                    self.top_k(hit.into_iter().map(|d| (d, acc[d as usize])).collect(), depth);
                let mut in_cand = std::collections::HashSet::with_capacity(cand.len() * 2);
                in_cand.extend(cand.iter().copied());
                cand.extend(sparse_top.into_iter().map(|p| p.0).filter(|d| in_cand.insert(*d)));
                let scored = cand
                    .into_iter()
                    .map(|d| {
                        let c = match qc {
                            Some(qc) if w[2] != 0.0 => self.colbert_score(qc, d),
                            _ => 0.0,
                        };
                        (d, w[0] * dense[d as usize] + w[1] * acc[d as usize] + w[2] * c)
                    })
                    .collect();
                self.top_k(scored, depth)
            }
        })
    }
}

/// `Σ a_i·b_i` in f32 with eight partial sums (vectorisable; within f32 rounding of a
/// sequential sum).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// A random ranking of `n` passages, `depth` long, reproducible from `seed` (splitmix64, Floyd's
/// sampling without replacement): the "knows nothing" baseline. Scores fall with the rank.
pub fn random_ranking(n: usize, depth: usize, seed: u64) -> Vec<(u32, f32)> {
    let k = depth.min(n);
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // Floyd: a uniform k-subset; then a Fisher–Yates shuffle of it for a uniform order.
    let mut chosen = std::collections::HashSet::with_capacity(k * 2);
    let mut picked = Vec::with_capacity(k);
    for j in (n - k)..n {
        let t = (next() % (j as u64 + 1)) as usize;
        let x = if chosen.contains(&t) { j } else { t };
        chosen.insert(x);
        picked.push(x as u32);
    }
    for i in (1..picked.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        picked.swap(i, j);
    }
    picked.into_iter().enumerate().map(|(r, d)| (d, 1.0 / (r + 1) as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::lexical_score;

    fn emb(dense: Vec<f32>, sparse: Vec<(u32, f32)>, colbert: Vec<f32>, dim: usize) -> Embedding {
        Embedding {
            tokens: 3,
            truncated: false,
            dense: Some(dense),
            sparse: Some(sparse),
            colbert: Some(colbert),
            colbert_dim: dim,
        }
    }

    fn toy() -> Index {
        let p = vec![
            ("a".to_string(), emb(vec![1.0, 0.0], vec![(5, 0.5), (7, 0.1)], vec![1.0, 0.0], 2)),
            ("b".to_string(), emb(vec![0.0, 1.0], vec![(7, 0.9)], vec![0.0, 1.0, 0.6, 0.8], 2)),
            ("c".to_string(), emb(vec![0.6, 0.8], vec![(9, 0.3)], vec![0.6, 0.8], 2)),
        ];
        Index::build(p).unwrap()
    }

    #[test]
    fn sparse_scores_equal_lexical_score() {
        let idx = toy();
        let q = [(7u32, 0.4f32), (5, 0.2)];
        let (acc, hit) = idx.sparse_scores(&q);
        assert_eq!(hit, vec![0, 1]);
        assert_eq!(acc[0], lexical_score(&q, &[(5, 0.5), (7, 0.1)]));
        assert_eq!(acc[2], 0.0);
    }

    #[test]
    fn every_method_ranks_as_defined() {
        let idx = toy();
        let q = emb(vec![0.0, 1.0], vec![(5, 1.0)], vec![1.0, 0.0], 2);
        let run = |method, depth| RunSpec { name: "t".into(), method, depth };
        let ids = |r: Vec<(u32, f32)>| {
            r.into_iter().map(|p| idx.ids()[p.0 as usize].clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(idx.search("q", &q, &run(Method::Dense, 3)).unwrap()), ["b", "c", "a"]);
        assert_eq!(ids(idx.search("q", &q, &run(Method::Sparse, 3)).unwrap()), ["a"]);
        // Dense top 2 = b, c; ColBERT: b 0.6, c 0.6 → tie, id descending.
        assert_eq!(ids(idx.search("q", &q, &run(Method::Colbert, 2)).unwrap()), ["c", "b"]);
        // dense top1 {b} ∪ sparse top1 {a}: a = 0 + 2·0.5 = 1, b = 1.
        let h = idx.search("q", &q, &run(Method::Hybrid([1.0, 2.0, 0.0]), 1)).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(ids(h), ["b"]);
    }

    #[test]
    fn random_ranking_is_a_seeded_sample() {
        let r = random_ranking(50, 20, 7);
        assert_eq!(r, random_ranking(50, 20, 7));
        assert_ne!(r, random_ranking(50, 20, 8));
        let set: std::collections::HashSet<u32> = r.iter().map(|p| p.0).collect();
        assert_eq!(set.len(), 20);
        assert!(set.iter().all(|&d| d < 50));
        assert_eq!(random_ranking(5, 20, 1).len(), 5);
    }

    #[test]
    fn presets_hold_the_papers_settings() {
        let m = Preset::Miracl.runs();
        assert_eq!(m[3].method, Method::Hybrid([1.0, 0.3, 0.0]));
        assert_eq!((m[4].method, m[4].depth), (Method::Hybrid([1.0, 0.3, 1.0]), 200));
        let l = Preset::Mldr.runs();
        assert_eq!(l[3].method, Method::Hybrid([0.2, 0.8, 0.0]));
        assert_eq!(l[4].method, Method::Hybrid([0.15, 0.5, 0.35]));
    }
}
