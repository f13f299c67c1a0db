//! How close two encoders' outputs point: shared by the CPU bf16 test (trident-model) and the
//! GPU bf16 fixture test (trident-cuda, included by path).

use std::collections::BTreeSet;

use trident_core::Embedding;

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// Smallest dense and ColBERT-row cosines, and the lexical keys with weight above 1e-2 found on
/// one side only (`differ`) out of those on either side (`total`).
pub struct Closeness {
    pub dense_min: f64,
    pub colbert_min: f64,
    pub differ: usize,
    pub total: usize,
}

pub fn closeness(a: &[Embedding], b: &[Embedding]) -> Closeness {
    let mut c = Closeness { dense_min: 1.0, colbert_min: 1.0, differ: 0, total: 0 };
    let keys = |e: &Embedding| -> BTreeSet<u32> {
        e.sparse.as_ref().unwrap().iter().filter(|(_, w)| *w > 1e-2).map(|(t, _)| *t).collect()
    };
    for (x, y) in a.iter().zip(b) {
        c.dense_min = c.dense_min.min(cosine(x.dense.as_ref().unwrap(), y.dense.as_ref().unwrap()));
        let d = x.colbert_dim;
        for (r, s) in
            x.colbert.as_ref().unwrap().chunks(d).zip(y.colbert.as_ref().unwrap().chunks(d))
        {
            c.colbert_min = c.colbert_min.min(cosine(r, s));
        }
        let (kx, ky) = (keys(x), keys(y));
        c.differ += kx.symmetric_difference(&ky).count();
        c.total += kx.union(&ky).count();
    }
    c
}
