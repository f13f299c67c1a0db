//! Multi-head self-attention over packed variable-length sequences: no padding, no
//! cross-sequence work. Work items are (sequence, head, block of query rows), so the score
//! matrix held at once is `QBLOCK × L` per thread, never `L × L`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::{matmul, matmul_bt, View};
use super::ops::softmax;

/// Query rows per work item: bounds scratch to `QBLOCK × L` floats.
const QBLOCK: usize = 64;

struct SendPtr(*mut f32);
// SAFETY: every work item writes a disjoint block of the output (its rows × its head's columns).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

thread_local! {
    /// Per-thread score block, reused across work items and calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `qkv` is `[tokens × 3H]` (`[q | k | v]`); writes `[tokens × H]` into `out`.
pub fn attention(qkv: &[f32], out: &mut [f32], hidden: usize, heads: usize, cu_seqlens: &[u32]) {
    let ld = 3 * hidden;
    assert_eq!(qkv.len() / ld * hidden, out.len(), "attention output size");
    let out_ptr = SendPtr(out.as_mut_ptr());
    let mut items = Vec::new();
    for s in 0..cu_seqlens.len().saturating_sub(1) {
        let (start, end) = (cu_seqlens[s] as usize, cu_seqlens[s + 1] as usize);
        for h in 0..heads {
            let mut q0 = start;
            while q0 < end {
                let q1 = (q0 + QBLOCK).min(end);
                items.push((start, end, h, q0, q1));
                q0 = q1;
            }
        }
    }
    items.par_iter().for_each(|&(start, end, h, q0, q1)| {
        SCORES.with_borrow_mut(|scores| {
            block(qkv, &out_ptr, scores, hidden, heads, (start, end, h, q0, q1))
        })
    });
}

/// One work item: query rows `q0..q1` of head `h` against keys/values `start..end`.
fn block(
    qkv: &[f32],
    out_ptr: &SendPtr,
    scores: &mut Vec<f32>,
    hidden: usize,
    heads: usize,
    (start, end, h, q0, q1): (usize, usize, usize, usize, usize),
) {
    let d = hidden / heads;
    let ld = 3 * hidden;
    let scale = 1.0 / (d as f32).sqrt();
    let (len, rows) = (end - start, q1 - q0);
    scores.clear();
    scores.resize(rows * len, 0.0);
    let base = qkv.as_ptr();
    // SAFETY: all views lie inside `qkv` (rows start..end, columns of head h) and `scores`.
    unsafe {
        let q = View { ptr: base.add(q0 * ld + h * d), ld };
        let k = View { ptr: base.add(start * ld + hidden + h * d), ld };
        matmul_bt(rows, len, d, scores.as_mut_ptr(), len, q, k, scale, false, Parallelism::None);
    }
    for row in scores.chunks_exact_mut(len) {
        softmax(row);
    }
    // SAFETY: this item alone writes rows q0..q1, columns h·d..(h+1)·d of `out`.
    unsafe {
        let v = View { ptr: base.add(start * ld + 2 * hidden + h * d), ld };
        let p = View { ptr: scores.as_ptr(), ld: len };
        let dst = out_ptr.0.add(q0 * hidden + h * d);
        matmul(rows, d, len, dst, hidden, p, v, Parallelism::None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive f64 attention for one packed batch.
    fn naive(qkv: &[f32], hidden: usize, heads: usize, cu: &[u32]) -> Vec<f64> {
        let d = hidden / heads;
        let tokens = *cu.last().unwrap() as usize;
        let mut out = vec![0f64; tokens * hidden];
        for s in 0..cu.len() - 1 {
            let (a, b) = (cu[s] as usize, cu[s + 1] as usize);
            for h in 0..heads {
                for i in a..b {
                    let q = |c: usize| qkv[i * 3 * hidden + h * d + c] as f64;
                    let sc: Vec<f64> = (a..b)
                        .map(|j| {
                            (0..d)
                                .map(|c| q(c) * qkv[j * 3 * hidden + hidden + h * d + c] as f64)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        out[i * hidden + h * d + c] = (a..b)
                            .zip(&e)
                            .map(|(j, w)| {
                                w / z * qkv[j * 3 * hidden + 2 * hidden + h * d + c] as f64
                            })
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn packed_attention_matches_naive() {
        let (hidden, heads) = (16, 4);
        let cu = [0u32, 3, 4, 4 + 150];
        let tokens = 154;
        let qkv: Vec<f32> =
            (0..tokens * 3 * hidden).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let mut got = vec![0f32; tokens * hidden];
        attention(&qkv, &mut got, hidden, heads, &cu);
        let want = naive(&qkv, hidden, heads, &cu);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
