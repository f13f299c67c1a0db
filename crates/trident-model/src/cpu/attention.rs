//! Multi-head self-attention over packed variable-length sequences: no padding, no
//! cross-sequence work. A work item is one (sequence, head): its keys and values are packed
//! once into micro-kernel panels and reused by every block of `QBLOCK` query rows, so the score
//! block held at once is `QBLOCK × L` per thread, never `L × L`.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::with_scratch;
use super::kernel::{block, pack_a, pack_b_cols, pack_b_rows, Aligned, MR, NR};
use super::ops::softmax;
#[cfg(target_arch = "x86_64")]
use super::{amx_unit, kernel_amx, softmax_bf16};

/// Query rows per block (a multiple of `MR`): the score block `QBLOCK × L` stays within L2 for
/// a few thousand keys.
pub(super) const QBLOCK: usize = 24;
/// Keys per packed block of the `P·V` product.
const KBLOCK: usize = 256;

thread_local! {
    static KEYS: RefCell<Aligned> = RefCell::default();
    static VALUES: RefCell<Aligned> = RefCell::default();
    static QUERIES: RefCell<Aligned> = RefCell::default();
    static SCORES: RefCell<Aligned> = RefCell::default();
    static PROBS: RefCell<Aligned> = RefCell::default();
}

pub(super) struct SendPtr(pub *mut f32);
// SAFETY: every work item writes a disjoint block of the output (its rows × its head's columns).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `qkv` is `[tokens × 3H]` (`[q | k | v]`); writes `[tokens × H]` into `out`.
pub fn attention(qkv: &[f32], out: &mut [f32], hidden: usize, heads: usize, cu_seqlens: &[u32]) {
    let ld = 3 * hidden;
    assert_eq!(qkv.len() / ld * hidden, out.len(), "attention output size");
    let out_ptr = SendPtr(out.as_mut_ptr());
    let items = items(cu_seqlens, heads);
    items.par_iter().for_each(|&item| {
        with_scratch(&KEYS, |k| {
            with_scratch(&VALUES, |v| head(qkv, &out_ptr, k, v, hidden, heads, item))
        })
    });
}

/// The work items, (sequence start, end, head), longest sequence first so that a long
/// sequence's heads do not end up last on one thread.
pub(super) fn items(cu_seqlens: &[u32], heads: usize) -> Vec<(usize, usize, usize)> {
    let mut items = Vec::new();
    for s in 0..cu_seqlens.len().saturating_sub(1) {
        let (start, end) = (cu_seqlens[s] as usize, cu_seqlens[s + 1] as usize);
        if end > start {
            items.extend((0..heads).map(|h| (start, end, h)));
        }
    }
    items.sort_by_key(|&(s, e, _)| std::cmp::Reverse(e - s));
    items
}

/// One sequence `start..end`, one head `h`.
fn head(
    qkv: &[f32],
    out: &SendPtr,
    kbuf: &mut Aligned,
    vbuf: &mut Aligned,
    hidden: usize,
    heads: usize,
    (start, end, h): (usize, usize, usize),
) {
    let d = hidden / heads;
    let ld = 3 * hidden;
    let len = end - start;
    let scale = 1.0 / (d as f32).sqrt();
    // Kᵀ as B panels over keys ([⌈L/NR⌉][d][NR]) and V as B panels over the head's columns
    // ([⌈d/NR⌉][L][NR], so any run of keys is a contiguous slice of each panel).
    let kp = kbuf.get(len.div_ceil(NR) * d * NR);
    pack_b_rows(qkv, ld, start, len, hidden + h * d, d, kp);
    let vp = vbuf.get(d.div_ceil(NR) * len * NR);
    pack_b_cols(&qkv[2 * hidden + h * d..], ld, start, len, d, vp);
    let (kp, vp): (&[f32], &[f32]) = (kp, vp);
    let mut q0 = start;
    while q0 < end {
        let rows = QBLOCK.min(end - q0);
        let tiles = rows.div_ceil(MR);
        with_scratch(&QUERIES, |qbuf| {
            with_scratch(&SCORES, |sbuf| {
                with_scratch(&PROBS, |pbuf| {
                    // S = (scale·Q)·Kᵀ, [rows × L].
                    let qa = qbuf.get(tiles * d * MR);
                    pack_a(qkv, ld, q0, rows, h * d, d, scale, qa);
                    let scores = sbuf.get(rows * len);
                    // SAFETY: packed panels of the sizes above; the block is `scores`.
                    unsafe {
                        block(
                            d,
                            (qa.as_ptr(), d * MR),
                            (kp.as_ptr(), d * NR),
                            scores.as_mut_ptr(),
                            len,
                            rows,
                            len,
                            false,
                        )
                    }
                    for row in scores.chunks_exact_mut(len) {
                        softmax(row);
                    }
                    // O = P·V, accumulated over blocks of keys, straight into the output.
                    let mut k0 = 0;
                    while k0 < len {
                        let kc = KBLOCK.min(len - k0);
                        let pa = pbuf.get(tiles * kc * MR);
                        pack_a(scores, len, 0, rows, k0, kc, 1.0, pa);
                        // SAFETY: as above; this item alone writes rows q0..q0+rows,
                        // columns h·d..(h+1)·d of `out`.
                        unsafe {
                            block(
                                kc,
                                (pa.as_ptr(), kc * MR),
                                (vp[k0 * NR..].as_ptr(), len * NR),
                                out.0.add(q0 * hidden + h * d),
                                hidden,
                                rows,
                                d,
                                k0 > 0,
                            )
                        }
                        k0 += kc;
                    }
                })
            })
        });
        q0 += rows;
    }
}

/// This thread's buffers for [`attention_amx`].
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct AmxScratch {
    keys: kernel_amx::AmxWeight,
    values: kernel_amx::AmxWeight,
    queries: Vec<amx_unit::Line>,
    probs: Vec<amx_unit::Line>,
    scores: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static AMX: RefCell<AmxScratch> = RefCell::default();
}

/// As [`attention`] with `Q·Kᵀ` and `P·V` on AMX tiles (bf16 operands, f32 sums; scores, the
/// exponentials' sums and the division in f32, `softmax_bf16.rs`): the reduced precisions'
/// attention.
///
/// # Safety
/// [`kernel_amx::available`] returned true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn attention_amx(
    qkv: &[f32],
    out: &mut [f32],
    hidden: usize,
    heads: usize,
    cu_seqlens: &[u32],
) {
    let ld = 3 * hidden;
    assert_eq!(qkv.len() / ld * hidden, out.len(), "attention output size");
    let out_ptr = SendPtr(out.as_mut_ptr());
    let items = items(cu_seqlens, heads);
    items.par_iter().for_each(|&item| {
        let run = |s: &mut AmxScratch| {
            // SAFETY: AMX is available (caller).
            unsafe { head_amx(qkv, &out_ptr, s, hidden, heads, item) }
        };
        if AMX.with(|c| c.try_borrow_mut().ok().map(|mut s| run(&mut s))).is_none() {
            run(&mut AmxScratch::default());
        }
    });
}

/// One sequence, one head, in blocks of 32 queries.
#[cfg(target_arch = "x86_64")]
unsafe fn head_amx(
    qkv: &[f32],
    out: &SendPtr,
    s: &mut AmxScratch,
    hidden: usize,
    heads: usize,
    (start, end, h): (usize, usize, usize),
) {
    use amx_unit::{Line, TM};
    use kernel_amx::{a_lines, block, pack_a, Strided, TK};
    let (d, ld, len) = (hidden / heads, 3 * hidden, end - start);
    let scale = 1.0 / (d as f32).sqrt();
    // B operands: Kᵀ (keys as columns, the head's features as the reduction) and V (the head's
    // columns as columns, keys as the reduction).
    let (kc, vc) = (hidden + h * d, 2 * hidden + h * d);
    let at = |c0| Strided { data: qkv, ld, r0: start, c0 };
    s.keys.repack(len, d, at(kc), false);
    s.values.repack(d, len, at(vc), true);
    let grow = |v: &mut Vec<Line>, n: usize| {
        if v.len() < n {
            v.resize(n, Line::default());
        }
    };
    grow(&mut s.queries, a_lines(2 * TM, d));
    grow(&mut s.probs, a_lines(2 * TM, len));
    if s.scores.len() < 2 * TM * len {
        s.scores.resize(2 * TM * len, 0.0);
    }
    let (dt, lt) = (d.div_ceil(TK), len.div_ceil(TK));
    // SAFETY: AMX is available (caller); every block lies inside `scores` or inside this item's
    // rows × head columns of `out`.
    unsafe {
        amx_unit::configure();
        let mut q0 = start;
        while q0 < end {
            let rows = (2 * TM).min(end - q0);
            pack_a(Strided { data: qkv, ld, r0: q0, c0: h * d }, rows, d, scale, &mut s.queries);
            let qa = (s.queries.as_ptr(), s.queries[dt * TM..].as_ptr());
            let scores = &mut s.scores[..rows * len];
            for (q, j) in (0..len).step_by(2 * TM).enumerate() {
                let cols = (2 * TM).min(len - j);
                let c = scores.as_mut_ptr().add(j);
                block(dt, qa, (&s.keys, 2 * q), c, len, rows, cols);
            }
            // Softmax's numerators as bf16 straight into the A tiles' lines (row i, key tile t
            // at line (i / TM · lt + t) · TM + i % TM, as `pack_a` lays them; rows past `rows`
            // zero), its division after `P·V`, on the d outputs of each row.
            let mut sums = [0f32; 2 * TM];
            let lines = s.probs.as_mut_ptr();
            for (i, sum) in sums.iter_mut().enumerate() {
                let line = |t: usize| lines.add((i / TM * lt + t) * TM + i % TM);
                if i < rows {
                    let row = &scores[i * len..(i + 1) * len];
                    *sum = softmax_bf16::exponentials(row, lt, |t| (*line(t)).0.as_mut_ptr());
                } else {
                    (0..lt).for_each(|t| *line(t) = Line::default());
                }
            }
            let pa = (s.probs.as_ptr(), s.probs[lt * TM..].as_ptr());
            for (q, j) in (0..d).step_by(2 * TM).enumerate() {
                let cols = (2 * TM).min(d - j);
                let c = out.0.add(q0 * hidden + h * d + j);
                block(lt, pa, (&s.values, 2 * q), c, hidden, rows, cols);
            }
            softmax_bf16::divide(out.0.add(q0 * hidden + h * d), hidden, d, &sums[..rows]);
            q0 += rows;
        }
        amx_unit::release();
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
        // Three blocks of 256 keys in the longest sequence.
        let (hidden, heads) = (16, 4);
        let worst = worst(hidden, heads, |qkv, out, cu| attention(qkv, out, hidden, heads, cu));
        assert!(worst < 1e-5, "max error {worst}");
    }

    /// Test inputs: ragged lengths (one token, a partial query block, 600 keys) and the heads.
    fn ragged(hidden: usize) -> (Vec<f32>, [u32; 5]) {
        let cu = [0u32, 3, 4, 4 + 150, 154 + 600];
        let qkv = (0..754 * 3 * hidden).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        (qkv, cu)
    }

    /// Largest |got − f64 attention| over the ragged inputs at `hidden` / `heads`.
    fn worst(hidden: usize, heads: usize, run: impl Fn(&[f32], &mut [f32], &[u32])) -> f64 {
        let (qkv, cu) = ragged(hidden);
        let mut got = vec![0f32; 754 * hidden];
        run(&qkv, &mut got, &cu);
        let want = naive(&qkv, hidden, heads, &cu);
        got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max)
    }

    /// The AMX attention against f64 attention: the tolerance is bf16's, the shapes those of
    /// the f32 test plus head widths of 64 and 80 (partial feature and output tiles).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_attention_matches_naive_to_bf16_rounding() {
        if !kernel_amx::available() {
            println!("skipped: no AMX-BF16 here (TRIDENT_AMX_EMULATE=1 runs it in software)");
            return;
        }
        for (hidden, heads) in [(16, 4), (128, 2), (160, 2)] {
            // SAFETY: AMX is available.
            let worst = worst(hidden, heads, |qkv, out, cu| unsafe {
                attention_amx(qkv, out, hidden, heads, cu)
            });
            // Values are in [-1, 1]; bf16 keeps 8 bits, and scores of 64-wide heads reach ~10.
            assert!(worst < 1e-2, "{hidden}/{heads}: max error {worst}");
            println!("amx attention {hidden}/{heads}: max |error| {worst:.2e}");
        }
    }

    /// The AVX512-BF16 attention, to the same tolerance, with head widths of 4, 64 and 80
    /// (a partial 16-feature block and a second 64-column panel of values).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_dot_attention_matches_naive_to_bf16_rounding() {
        if !super::super::kernel_bf16::available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (hidden, heads) in [(16, 4), (128, 2), (160, 2)] {
            let worst = worst(hidden, heads, |qkv, out, cu| {
                // SAFETY: AVX512-BF16 is available.
                pool.install(|| unsafe {
                    super::super::attention_bf16::attention(qkv, out, hidden, heads, cu)
                })
            });
            assert!(worst < 1e-2, "{hidden}/{heads}: max error {worst}");
            println!("avx512 bf16 attention {hidden}/{heads}: max |error| {worst:.2e}");
        }
    }
}
