//! The int8 precision where AMX-INT8 is absent (or capped by `--cpu-isa`): the same codes as
//! `kernel_amx_int8.rs` (`quant.rs`: per-channel weights, per-token u8 activations with a zero
//! point, optional smoothing). On AVX512-VNNI they are multiplied by `kernel_vnni.rs`, on AVX2 by
//! `kernel_madd.rs`; elsewhere (or capped by `--cpu-isa generic`) in plain Rust, whose gain is
//! memory (int8 weights are a quarter of f32), not speed. The sums are exact and the scaling
//! back is the same f32 arithmetic in the same order, so all int8 kernels' linear layers give
//! the same results bit for bit.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::isa::{isa, Isa};
use super::quant::{quantize_row, HeldOut, QuantizedRows, RowQ};

/// Rows quantised and multiplied together: each weight row is read once per block.
const ROWS: usize = 8;
/// Output columns per work item.
const COLS: usize = 64;

struct Out(*mut f32);
// SAFETY: work items write disjoint blocks of `C`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// An int8 linear layer's weights as the kernel chosen at load wants them.
pub enum Int8Weight {
    /// Row-major, for the portable kernel.
    Rows(QuantizedRows),
    /// Panels for AVX512-VNNI.
    #[cfg(target_arch = "x86_64")]
    Vnni(super::panel::Int8Panels),
    /// Panels for AVX2.
    #[cfg(target_arch = "x86_64")]
    Madd(super::panel::Int8Panels),
}

impl Int8Weight {
    /// Packs `q` for AVX512-VNNI, else AVX2, where the CPU (and the `--cpu-isa` cap) allows it.
    pub fn new(q: QuantizedRows) -> Int8Weight {
        #[cfg(target_arch = "x86_64")]
        if vnni() {
            return Int8Weight::Vnni(super::kernel_vnni::pack(&q));
        }
        #[cfg(target_arch = "x86_64")]
        if madd() {
            return Int8Weight::Madd(super::kernel_madd::pack(&q));
        }
        Int8Weight::Rows(q)
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        match self {
            Int8Weight::Rows(q) => q.n,
            #[cfg(target_arch = "x86_64")]
            Int8Weight::Vnni(w) => w.n,
            #[cfg(target_arch = "x86_64")]
            Int8Weight::Madd(w) => w.n,
        }
    }
}

/// Whether int8 weights loaded now are packed for AVX512-VNNI.
fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa() >= Isa::Avx512 && super::kernel_vnni::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether int8 weights loaded now (without VNNI) are packed for AVX2.
fn madd() -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa() >= Isa::Avx2 && super::kernel_madd::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The int8 kernel for weights loaded now (below AMX), for `/info` and `bench`.
pub fn name() -> &'static str {
    if vnni() {
        "avx512 vnni int8 6x64"
    } else if madd() {
        "avx2 int8 6x16 (vpmaddwd)"
    } else {
        "portable int8 (memory, not speed)"
    }
}

/// `c[m × w.n] = a[m × w.k] · wᵀ` on the current rayon pool, on the kernel `w` was packed for,
/// with `held`'s f32 products added to each tile as it is written (`HeldOut::add_tile`).
///
/// # Safety
/// `c` must be valid for `m` rows of `w.n` values at stride `ldc` and must not alias `a`;
/// `held` is `w`'s (its `n` is `w.n`, or it is empty).
pub unsafe fn matmul_int8(
    m: usize,
    a: &[f32],
    w: &Int8Weight,
    held: &HeldOut,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the caller's promises; Vnni and Madd weights exist only where their kernels run.
    unsafe {
        match w {
            Int8Weight::Rows(q) => matmul_rows(m, a, q, held, c, ldc),
            #[cfg(target_arch = "x86_64")]
            Int8Weight::Vnni(v) => super::kernel_vnni::matmul(m, a, v, held, c, ldc),
            #[cfg(target_arch = "x86_64")]
            Int8Weight::Madd(v) => super::kernel_madd::matmul(m, a, v, held, c, ldc),
        }
    }
}

/// The portable kernel.
///
/// # Safety
/// As [`matmul_int8`].
pub unsafe fn matmul_rows(
    m: usize,
    a: &[f32],
    w: &QuantizedRows,
    held: &HeldOut,
    c: *mut f32,
    ldc: usize,
) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_int8 operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    // Quantise every row once.
    let mut qa = vec![0u8; m * k];
    let mut codes = vec![RowQ::default(); m];
    qa.par_chunks_mut(k.max(1)).zip(&mut codes).enumerate().for_each(|(i, (q, code))| {
        *code = quantize_row(&a[i * k..(i + 1) * k], &w.smooth, q);
    });
    let xs = &held.gather(m, a, k)[..];
    let out = Out(c);
    let out = &out;
    let (blocks, chunks) = (m.div_ceil(ROWS), n.div_ceil(COLS));
    (0..blocks * chunks).into_par_iter().for_each(|item| {
        let (b, ch) = (item / chunks, item % chunks);
        let rows = b * ROWS..(b * ROWS + ROWS).min(m);
        let cols = ch * COLS..(ch * COLS + COLS).min(n);
        // SAFETY: this item writes rows × cols of c only (caller: c is valid there).
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if isa() >= Isa::Avx2 {
                block_avx2(&qa, &codes, w, rows.clone(), cols.clone(), out.0, ldc);
            } else {
                block(&qa, &codes, w, rows.clone(), cols.clone(), out.0, ldc);
            }
            #[cfg(not(target_arch = "x86_64"))]
            block(&qa, &codes, w, rows.clone(), cols.clone(), out.0, ldc);
            held.add_tile(xs, rows.start, rows.len(), cols, out.0, ldc);
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    qa: &[u8],
    codes: &[RowQ],
    w: &QuantizedRows,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: as block's (caller).
    unsafe { block(qa, codes, w, rows, cols, c, ldc) }
}

/// `C[i][j] = (Σ q_a·q_w − z_i·colsum[j]) · s_j · s_i` (the AMX path's order) for the block.
///
/// # Safety
/// `c` is valid for `rows × cols` at stride `ldc`.
#[inline(always)]
unsafe fn block(
    qa: &[u8],
    codes: &[RowQ],
    w: &QuantizedRows,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
) {
    let k = w.k;
    for j in cols {
        let wq = &w.q[j * k..(j + 1) * k];
        for i in rows.clone() {
            let dot: i32 =
                qa[i * k..(i + 1) * k].iter().zip(wq).map(|(&a, &b)| a as i32 * b as i32).sum();
            let v = (dot - codes[i].zp * w.colsum[j]) as f32 * w.scale[j] * codes[i].scale;
            // SAFETY: (i, j) lies in the block (caller).
            unsafe { *c.add(i * ldc + j) = v };
        }
    }
}

/// Ragged int8 test operands: `a` (`[m × k]`, rows of three magnitudes), `w` (`[n × k]`, its
/// first row zero) and smoothing factors `f` (`k`).
#[cfg(test)]
pub fn test_operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 30.0) / 50.0 * (1 + i / k % 3) as f32);
    let mut w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
    w[..k].iter_mut().for_each(|v| *v = 0.0);
    let f = (0..k).map(|kk| 0.25 + (kk * 7 % 13) as f32).collect();
    (a.collect(), w, f)
}

/// Asserts that `kernel` (its weights packed by `wrap`) gives the portable kernel's outputs
/// (whose sums are checked against exact i64 ones below) bit for bit, plain and smoothed, on
/// ragged shapes: k not a whole group, partial panels and tiles, rows past a 96-row block.
#[cfg(test)]
pub fn assert_equals_portable(kernel: &str, wrap: impl Fn(&QuantizedRows) -> Int8Weight + Sync) {
    // SAFETY: `wrap` packs only for a kernel that runs; c is [m × ldc] (as below).
    assert_product_equals_portable(kernel, |m, a, q, held, c, ldc| unsafe {
        matmul_int8(m, a, &wrap(q), held, c, ldc)
    });
}

/// As [`assert_equals_portable`] for any int8 product `mul(m, a, q, held, c, ldc)` of `a`
/// (`[m × k]`) and `q`'s weights plus `held`'s products into `c` (`[m × ldc]`), on a pool of
/// three threads.
#[cfg(test)]
pub fn assert_product_equals_portable(
    kernel: &str,
    mul: impl Fn(usize, &[f32], &QuantizedRows, &HeldOut, *mut f32, usize) + Sync,
) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let shapes = [(1, 1, 1), (7, 65, 37), (13, 130, 302), (100, 64, 1030), (3, 200, 4), (5, 21, 3)];
    for &(m, n, k) in &shapes {
        // Plain, smoothed, and smoothed with features held out (factor 0: every third).
        for variant in ["plain", "smoothed", "held out"] {
            let (a, w, mut f) = test_operands(m, n, k);
            if variant == "held out" {
                f.iter_mut().step_by(3).for_each(|f| *f = 0.0);
            }
            let factors = (variant != "plain").then_some(&f[..]);
            let q = QuantizedRows::new(n, k, &w, factors);
            let held = HeldOut::new(n, k, &w, factors);
            let ldc = n + 3;
            let mut want = vec![9.0f32; m * ldc];
            let (mut got, mut apart) = (want.clone(), want.clone());
            // SAFETY: all are [m × ldc], ldc ≥ n.
            pool.install(|| unsafe {
                matmul_rows(m, &a, &q, &held, want.as_mut_ptr(), ldc);
                mul(m, &a, &q, &held, got.as_mut_ptr(), ldc);
                // The held-out products added in a pass of their own: the same bits.
                matmul_rows(m, &a, &q, &HeldOut::default(), apart.as_mut_ptr(), ldc);
                held.add_tile(&held.gather(m, &a, k), 0, m, 0..n, apart.as_mut_ptr(), ldc);
            });
            for (i, ((g, w), p)) in got.iter().zip(&want).zip(&apart).enumerate() {
                let at = (i / ldc, i % ldc);
                assert_eq!(g.to_bits(), w.to_bits(), "{kernel} {m}x{n}x{k} {variant} {at:?}");
                assert_eq!(p.to_bits(), w.to_bits(), "apart {m}x{n}x{k} {variant} {at:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::quant::{channel_scale, quantize_weight};

    /// Against exact i64 sums of the documented codes, plain and smoothed, on ragged shapes.
    #[test]
    fn matches_the_exact_sums_of_its_quantised_operands() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for &(m, n, k) in &[(1, 1, 1), (9, 65, 37), (20, 130, 300), (3, 7, 1030)] {
            for smoothed in [false, true] {
                let (a, w, f) = test_operands(m, n, k);
                let q = QuantizedRows::new(n, k, &w, smoothed.then_some(&f[..]));
                let ldc = n + 2;
                let mut c = vec![9.0f32; m * ldc];
                // SAFETY: c is [m × ldc], ldc ≥ n.
                let none = HeldOut::default();
                pool.install(|| unsafe { matmul_rows(m, &a, &q, &none, c.as_mut_ptr(), ldc) });
                for i in 0..m {
                    let ra: Vec<f32> =
                        (0..k)
                            .map(|kk| {
                                if smoothed {
                                    a[i * k + kk] * (1.0 / f[kk])
                                } else {
                                    a[i * k + kk]
                                }
                            })
                            .collect();
                    let (lo, hi) = ra.iter().fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
                    let qa = RowQ::new(lo, hi);
                    for j in 0..n {
                        let rw: Vec<f32> = (0..k)
                            .map(|kk| if smoothed { w[j * k + kk] * f[kk] } else { w[j * k + kk] })
                            .collect();
                        let sw = channel_scale(&rw);
                        let dot: i64 = (0..k)
                            .map(|kk| {
                                (qa.quantize(ra[kk]) as i64 - qa.zp as i64)
                                    * quantize_weight(rw[kk], sw) as i64
                            })
                            .sum();
                        let want = dot as f64 * qa.scale as f64 * sw as f64;
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                            "{m}x{n}x{k} smoothed {smoothed} ({i},{j}): {got} vs {want}"
                        );
                        let exact: f64 =
                            (0..k).map(|kk| a[i * k + kk] as f64 * w[j * k + kk] as f64).sum();
                        let amax = |r: &[f32]| r.iter().fold(0f64, |x, v| x.max(v.abs() as f64));
                        let bound = 0.02 * amax(&ra) * amax(&rw) * (k as f64).sqrt() + 1e-12;
                        assert!(
                            (got - exact).abs() <= bound,
                            "({i},{j}) far off: {got} vs {exact}"
                        );
                    }
                    assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 9.0), "overrun");
                }
            }
        }
    }
}
