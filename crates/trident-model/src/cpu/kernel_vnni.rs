//! The int8 GEMM on AVX512-VNNI: `VPDPBUSD` multiplies four u8 activations by four i8 weights
//! and adds the four products into one i32 lane, exactly. The codes are `quant.rs`'s (the AMX and
//! portable int8 kernels' codes); the sums are exact and the scaling back is the same f32
//! arithmetic in the same order, so its outputs equal theirs bit for bit.
//!
//! Weights are packed once at load in panels of 64 output columns: for each group of four input
//! features, 64 columns × 4 bytes (one 512-bit load per 16 columns). A 6 × 64 tile keeps 24 i32
//! accumulators in registers; each step broadcasts four bytes of a row against four weight loads.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::kernel_int8::quantize_row;
use super::quant::{QuantizedRows, RowQ};

/// Output columns per panel (four vectors of 16 i32 lanes).
const NR: usize = 64;
/// Rows per register tile.
const MR: usize = 6;
/// Rows per work item: a panel is read once for this many rows.
const MB: usize = 16 * MR;

/// Whether this CPU runs the kernel (AVX-512 F/BW and VNNI).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// `W` (`[n × k]`, quantised per output channel) in panel order, `n` padded to 64 columns and
/// `k` to 4 features with zeros.
pub struct VnniWeight {
    data: Vec<i8>,
    /// `s_j` per output column, zero past `n`.
    scale: Vec<f32>,
    /// `Σ_k q[j][k]` per output column, zero past `n`.
    colsum: Vec<i32>,
    /// `1 / f_k` per input feature when smoothed, empty otherwise (as in [`QuantizedRows`]).
    smooth: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl VnniWeight {
    pub fn pack(src: &QuantizedRows) -> VnniWeight {
        let (n, k) = (src.n, src.k);
        let (k4, panels) = (k.div_ceil(4), n.div_ceil(NR));
        let (mut scale, mut colsum) = (src.scale.clone(), src.colsum.clone());
        scale.resize(panels * NR, 0.0);
        colsum.resize(panels * NR, 0);
        let mut data = vec![0i8; panels * k4 * NR * 4];
        data.par_chunks_mut(k4 * NR * 4).enumerate().for_each(|(p, panel)| {
            for (g, group) in panel.chunks_exact_mut(NR * 4).enumerate() {
                for c in 0..NR.min(n - p * NR) {
                    let row = &src.q[(p * NR + c) * k..(p * NR + c + 1) * k];
                    for e in 0..4.min(k - 4 * g) {
                        group[c * 4 + e] = row[4 * g + e];
                    }
                }
            }
        });
        VnniWeight { data, scale, colsum, smooth: src.smooth.clone(), n, k }
    }

    fn k4(&self) -> usize {
        self.k.div_ceil(4)
    }
}

struct Out(*mut f32);
// SAFETY: work items write disjoint blocks of `C`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `c[m × w.n] = a[m × w.k] · wᵀ` on the current rayon pool.
///
/// # Safety
/// `c` must be valid for `m` rows of `w.n` values at stride `ldc` and must not alias `a`;
/// [`available`] returned true.
pub unsafe fn matmul(m: usize, a: &[f32], w: &VnniWeight, c: *mut f32, ldc: usize) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_vnni operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    let lda = w.k4() * 4;
    let mut qa = vec![0u8; m * lda];
    let mut codes = vec![RowQ::default(); m];
    qa.par_chunks_mut(lda).zip(&mut codes).enumerate().for_each(|(i, (q, code))| {
        *code = quantize_row(&a[i * k..(i + 1) * k], &w.smooth, &mut q[..k]);
    });
    let out = Out(c);
    let out = &out;
    let (blocks, panels) = (m.div_ceil(MB), n.div_ceil(NR));
    // Panel-major: a thread's consecutive items reuse one panel from its cache.
    (0..blocks * panels).into_par_iter().for_each(|item| {
        let (p, b) = (item / blocks, item % blocks);
        for r0 in (b * MB..(b * MB + MB).min(m)).step_by(MR) {
            let rows = MR.min(m - r0);
            // SAFETY: VNNI is available (caller); rows r0..r0+rows and panel p's columns below
            // n lie in c and belong to this item only.
            unsafe {
                let t = Tile { qa: &qa[r0 * lda..], lda, codes: &codes[r0..], w, p };
                match rows {
                    6 => t.run::<6>(out.0, ldc, r0),
                    5 => t.run::<5>(out.0, ldc, r0),
                    4 => t.run::<4>(out.0, ldc, r0),
                    3 => t.run::<3>(out.0, ldc, r0),
                    2 => t.run::<2>(out.0, ldc, r0),
                    _ => t.run::<1>(out.0, ldc, r0),
                }
            }
        }
    });
}

/// Up to [`MR`] quantised rows against panel `p`.
struct Tile<'a> {
    qa: &'a [u8],
    lda: usize,
    codes: &'a [RowQ],
    w: &'a VnniWeight,
    p: usize,
}

impl Tile<'_> {
    /// `C[i][j] = (Σ q_a·q_w − z_i·colsum[j]) · s_j · s_i` for `R` rows from `r0`.
    ///
    /// # Safety
    /// AVX512-VNNI is available; `c` is valid for rows `r0..r0 + R` and the panel's columns
    /// below `n` at stride `ldc`; `qa` holds `R` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const R: usize>(&self, c: *mut f32, ldc: usize, r0: usize) {
        let k4 = self.w.k4();
        assert!(self.qa.len() >= (R - 1) * self.lda + 4 * k4 && self.codes.len() >= R);
        let b = self.w.data[self.p * k4 * NR * 4..(self.p + 1) * k4 * NR * 4].as_ptr();
        let a = self.qa.as_ptr();
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        for g in 0..k4 {
            // SAFETY: g < k4: the panel holds k4 groups of NR × 4 bytes; each row holds 4·k4.
            unsafe {
                let bg = b.add(g * NR * 4);
                let w: [__m512i; 4] =
                    std::array::from_fn(|v| _mm512_loadu_si512(bg.add(v * 64) as *const _));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(
                        (a.add(r * self.lda + 4 * g) as *const i32).read_unaligned(),
                    );
                    for v in 0..4 {
                        acc[v] = _mm512_dpbusd_epi32(acc[v], x, w[v]);
                    }
                }
            }
        }
        let j0 = self.p * NR;
        for (r, acc) in acc.iter().enumerate() {
            let code = self.codes[r];
            let (zp, si) = (_mm512_set1_epi32(code.zp), _mm512_set1_ps(code.scale));
            for (v, &sum) in acc.iter().enumerate() {
                let j = j0 + 16 * v;
                if j >= self.w.n {
                    break;
                }
                let mask: __mmask16 =
                    if self.w.n - j >= 16 { !0 } else { (1 << (self.w.n - j)) - 1 };
                // SAFETY: j + 16 ≤ the padded scale/colsum; the mask keeps stores below n.
                unsafe {
                    let colsum = _mm512_loadu_si512(self.w.colsum.as_ptr().add(j) as *const _);
                    let sj = _mm512_loadu_ps(self.w.scale.as_ptr().add(j));
                    let exact = _mm512_sub_epi32(sum, _mm512_mullo_epi32(zp, colsum));
                    let y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(exact), sj), si);
                    _mm512_mask_storeu_ps(c.add((r0 + r) * ldc + j), mask, y);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit for bit the portable kernel's outputs (whose sums are checked against exact i64
    /// ones in `kernel_int8.rs`), plain and smoothed, on ragged shapes.
    #[test]
    fn equals_the_portable_int8_kernel_bit_for_bit() {
        if !available() {
            println!("skipped: this CPU has no AVX512-VNNI");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for &(m, n, k) in &[(1, 1, 1), (7, 65, 37), (13, 130, 302), (100, 64, 1030), (3, 200, 4)] {
            for smoothed in [false, true] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 30.0) / 50.0 * (1 + i / k % 3) as f32)
                    .collect();
                let mut w: Vec<f32> =
                    (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
                w[..k].iter_mut().for_each(|v| *v = 0.0);
                let f: Vec<f32> = (0..k).map(|kk| 0.25 + (kk * 7 % 13) as f32).collect();
                let q = QuantizedRows::new(n, k, &w, smoothed.then_some(&f[..]));
                let packed = VnniWeight::pack(&q);
                let ldc = n + 3;
                let (mut want, mut got) = (vec![9.0f32; m * ldc], vec![9.0f32; m * ldc]);
                // SAFETY: both are [m × ldc], ldc ≥ n; VNNI is available.
                pool.install(|| unsafe {
                    super::super::kernel_int8::matmul_rows(m, &a, &q, want.as_mut_ptr(), ldc);
                    matmul(m, &a, &packed, got.as_mut_ptr(), ldc);
                });
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{m}x{n}x{k} smoothed {smoothed} at ({}, {}): {g} vs {w}",
                        i / ldc,
                        i % ldc
                    );
                }
            }
        }
    }
}
