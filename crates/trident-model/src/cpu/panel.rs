//! The tiling of AVX-512 dot-product kernels (`kernel_vnni.rs`: `VPDPBUSD`, u8 × i8 quads into
//! i32; `kernel_bf16.rs`: `VDPBF16PS`, bf16 pairs into f32): each 32-bit lane of a step takes
//! one group of 4 bytes of a row and of a weight column. Weights are packed once at load in
//! panels of 64 output columns — per group, 64 columns × 4 bytes, four 512-bit loads — and a
//! 6 × 64 tile keeps 24 accumulators in registers, broadcasting each row's group against the
//! four loads.
//! AVX2's int8 kernel (`kernel_madd.rs`) walks the same 6-row × 64-column work in four
//! 16-column panels (it has 16 registers, not 32).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::quant::{QuantizedRows, RowQ};

/// Output columns per panel (four vectors of 16 lanes).
pub const NR: usize = 64;
/// Rows per register tile.
pub const MR: usize = 6;
/// Rows per work item: a panel is read once for this many rows.
const MB: usize = 16 * MR;

/// `W` (`[n × k]` elements of `T`) in panels of `W` columns, `G` elements of a column per
/// 32-bit lane's group, `n` padded to `W` and `k` to `G` with zeros: `get(j, kk)` gives `W[j][kk]`.
pub fn pack_panels<T: Copy + Default + Send + Sync, const G: usize, const W: usize>(
    n: usize,
    k: usize,
    get: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    let groups = k.div_ceil(G);
    let mut data = vec![T::default(); n.div_ceil(W) * groups * W * G];
    data.par_chunks_mut(groups * W * G).enumerate().for_each(|(p, panel)| {
        for (g, group) in panel.chunks_exact_mut(W * G).enumerate() {
            for c in 0..W.min(n - p * W) {
                for e in 0..G.min(k - G * g) {
                    group[c * G + e] = get(p * W + c, G * g + e);
                }
            }
        }
    });
    data
}

/// An int8 weight (`quant.rs`'s codes) in panels of `W` columns of `G`-code groups
/// (`kernel_vnni.rs`: 64 × 4, `kernel_madd.rs`: 16 × 2) with its per-column factors.
pub struct Int8Panels {
    pub data: Vec<i8>,
    /// `s_j` per output column, zero past `n` (padded to whole 64-column panels).
    pub scale: Vec<f32>,
    /// `Σ_k q[j][k]` per output column, zero past `n`.
    pub colsum: Vec<i32>,
    /// `1 / f_k` per input feature when smoothed, empty otherwise (as in [`QuantizedRows`]).
    pub smooth: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl Int8Panels {
    pub fn pack<const G: usize, const W: usize>(src: &QuantizedRows) -> Int8Panels {
        let (n, k) = (src.n, src.k);
        let padded = n.div_ceil(NR) * NR;
        let (mut scale, mut colsum) = (src.scale.clone(), src.colsum.clone());
        scale.resize(padded, 0.0);
        colsum.resize(padded, 0);
        let data = pack_panels::<i8, G, W>(n, k, |j, kk| src.q[j * k + kk]);
        Int8Panels { data, scale, colsum, smooth: src.smooth.clone(), n, k }
    }
}

/// Each row of `a` (`[m × k]`) quantised by `quantize` into a row of `lda ≥ k` codes (zero
/// past `k`, where the weights' padding is zero too), in parallel, with the rows' codes.
pub fn quantize_rows<Q: Copy + Default + Send + Sync>(
    m: usize,
    k: usize,
    lda: usize,
    a: &[f32],
    quantize: impl Fn(&[f32], &mut [Q]) -> RowQ + Sync,
) -> (Vec<Q>, Vec<RowQ>) {
    let mut qa = vec![Q::default(); m * lda];
    let mut codes = vec![RowQ::default(); m];
    qa.par_chunks_mut(lda).zip(&mut codes).enumerate().for_each(|(i, (q, code))| {
        *code = quantize(&a[i * k..(i + 1) * k], q);
    });
    (qa, codes)
}

/// `C`, written by tiles in parallel.
pub struct Out(pub *mut f32);
// SAFETY: tiles write disjoint blocks of `C`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Calls `tile(r0, rows, p)` for every tile of at most [`MR`] rows of an `m`-row product and
/// every 64-column panel of `n` columns, in parallel on the current rayon pool; `rows` picks
/// the kernel's monomorphised row count. Panel-major, so a thread's consecutive tiles reuse one
/// panel from its cache.
pub fn for_each_tile(m: usize, n: usize, tile: impl Fn(usize, usize, usize) + Sync) {
    let (blocks, panels) = (m.div_ceil(MB), n.div_ceil(NR));
    (0..blocks * panels).into_par_iter().for_each(|item| {
        let (p, b) = (item / blocks, item % blocks);
        for r0 in (b * MB..(b * MB + MB).min(m)).step_by(MR) {
            tile(r0, MR.min(m - r0), p);
        }
    });
}

/// Stores `y` (16 values) at `c[j..]`, only the columns below `n`.
///
/// # Safety
/// `c` is valid for the columns of `j..n` that the mask keeps.
#[inline(always)]
pub unsafe fn store(c: *mut f32, j: usize, n: usize, y: __m512) {
    let mask: __mmask16 = if n - j >= 16 { !0 } else { (1 << (n - j)) - 1 };
    // SAFETY: the caller's contract.
    unsafe { _mm512_mask_storeu_ps(c.add(j), mask, y) }
}

/// Stores a tile's `R` rows (`y[r][v]`: columns `p·NR + 16v..`) at rows `r0..r0 + R` of `c`,
/// only the columns below `n`.
///
/// # Safety
/// `c` is valid for those rows' columns of panel `p` below `n`, at stride `ldc`.
#[inline(always)]
pub unsafe fn store_tile<const R: usize>(
    c: *mut f32,
    ldc: usize,
    r0: usize,
    p: usize,
    n: usize,
    y: &[[__m512; 4]; R],
) {
    for (r, y) in y.iter().enumerate() {
        for (v, &y) in y.iter().enumerate().take_while(|&(v, _)| p * NR + 16 * v < n) {
            // SAFETY: the caller's contract; store keeps the columns below n.
            unsafe { store(c.add((r0 + r) * ldc), p * NR + 16 * v, n, y) };
        }
    }
}

/// Dispatches `$run::<R>($args)` for `$rows` in 1..=6 (the tile's monomorphised row count).
macro_rules! by_rows {
    ($rows:expr, $run:ident, $($arg:expr),*) => {
        match $rows {
            6 => $run::<6>($($arg),*),
            5 => $run::<5>($($arg),*),
            4 => $run::<4>($($arg),*),
            3 => $run::<3>($($arg),*),
            2 => $run::<2>($($arg),*),
            _ => $run::<1>($($arg),*),
        }
    };
}
pub(super) use by_rows;
