//! The int8 GEMM on AVX2 (CPUs without AVX512-VNNI, e.g. AMD Zen 2/3): `VPMADDWD` multiplies
//! pairs of 16-bit values and adds each pair's two products into one i32 lane, exactly. The
//! activations' u8 codes are widened to 16 bits as they are quantised, the weights' i8 codes
//! as they are loaded (`VPMOVSXBW`, so they stay a quarter of f32 in memory); a u8 × i8 pair
//! sums to at most 64,770, so nothing saturates (`VPMADDUBSW` would). 16 products per
//! instruction against FMA's 8. The codes are `quant.rs`'s and the sums exact, and the scaling
//! back is the same f32 arithmetic in the same order, so its outputs equal the other int8
//! kernels' bit for bit. Tiles: 6 rows × 16 columns (12 accumulators in 16 registers), walked
//! four 16-column panels at a time over `panel.rs`'s 6 × 64 work.

use std::arch::x86_64::*;

use super::panel::{self, by_rows, Int8Panels, Out, NR};
use super::quant::{quantize_row, HeldOut, QuantizedRows, RowQ};

/// Output columns per panel (two vectors of 8 lanes).
const W: usize = 16;
/// Elements per 32-bit lane: one pair.
const G: usize = 2;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Packs `src` for this kernel.
pub fn pack(src: &QuantizedRows) -> Int8Panels {
    Int8Panels::pack::<G, W>(src)
}

/// `c[m × w.n] = a[m × w.k] · wᵀ` on the current rayon pool, `held`'s products added to each
/// tile as it is written.
///
/// # Safety
/// `c` must be valid for `m` rows of `w.n` values at stride `ldc` and must not alias `a`;
/// [`available`] returned true; `held` is `w`'s, or empty.
pub unsafe fn matmul(m: usize, a: &[f32], w: &Int8Panels, held: &HeldOut, c: *mut f32, ldc: usize) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_madd operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    // Rows padded to whole pairs (a zero code past k meets a zero weight).
    let lda = k.next_multiple_of(G);
    // SAFETY: AVX2 (caller: available()).
    let quantize = |row: &[f32], q: &mut [u16]| unsafe { quantize_avx2(row, &w.smooth, q) };
    let (qa, codes) = panel::quantize_rows(m, k, lda, a, quantize);
    let xs = &held.gather(m, a, k)[..];
    let out = Out(c);
    let (out, qa, codes) = (&out, &qa[..], &codes[..]);
    panel::for_each_tile(m, n, |r0, rows, p| {
        // SAFETY: AVX2 is available (caller); the tile's rows and the columns of its four
        // panels below n lie in c and belong to this tile only.
        unsafe {
            by_rows!(rows, tile, qa, lda, codes, w, p, out.0, ldc, r0);
            held.add_tile(xs, r0, rows, p * NR..(p * NR + NR).min(n), out.0, ldc);
        }
    });
}

/// [`quantize_row`] compiled for AVX2 (rounding and clamping vectorised; the same codes).
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_avx2(row: &[f32], smooth: &[f32], q: &mut [u16]) -> RowQ {
    quantize_row(row, smooth, q)
}

/// `C[i][j] = (Σ q_a·q_w − z_i·colsum[j]) · s_j · s_i` for `R` rows from `r0` and the four
/// 16-column panels of 64-column panel `p`.
///
/// # Safety
/// AVX2 is available; `c` is valid for rows `r0..r0 + R` and the panels' columns below `n` at
/// stride `ldc`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    qa: &[u16],
    lda: usize,
    codes: &[RowQ],
    w: &Int8Panels,
    p: usize,
    c: *mut f32,
    ldc: usize,
    r0: usize,
) {
    let pairs = w.k.div_ceil(G);
    let size = pairs * W * G;
    assert!(qa.len() >= (r0 + R) * lda && codes.len() >= r0 + R);
    for q in (p * NR / W..(p + 1) * NR / W).take_while(|q| q * W < w.n) {
        let panel = &w.data[q * size..(q + 1) * size];
        // SAFETY: qa holds rows r0..r0 + R of lda ≥ 2·pairs values, the panel pairs × 32
        // bytes; the caller covers c.
        unsafe {
            let a = qa.as_ptr().add(r0 * lda);
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for g in 0..pairs {
                let bg = panel.as_ptr().add(g * W * G) as *const __m128i;
                let b = [0, 1].map(|v| _mm256_cvtepi8_epi16(_mm_loadu_si128(bg.add(v))));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = (a.add(r * lda + G * g) as *const i32).read_unaligned();
                    let x = _mm256_set1_epi32(x);
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b[0]));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b[1]));
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let code = codes[r0 + r];
                let (zp, si) = (_mm256_set1_epi32(code.zp), _mm256_set1_ps(code.scale));
                let row = c.add((r0 + r) * ldc);
                for (v, &sum) in acc.iter().enumerate() {
                    let j = q * W + 8 * v;
                    if j >= w.n {
                        break;
                    }
                    let colsum = _mm256_loadu_si256(w.colsum.as_ptr().add(j) as *const _);
                    let sj = _mm256_loadu_ps(w.scale.as_ptr().add(j));
                    let exact = _mm256_sub_epi32(sum, _mm256_mullo_epi32(zp, colsum));
                    let y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), sj), si);
                    if w.n - j >= 8 {
                        _mm256_storeu_ps(row.add(j), y);
                    } else {
                        let mut part = [0f32; 8];
                        _mm256_storeu_ps(part.as_mut_ptr(), y);
                        std::ptr::copy_nonoverlapping(part.as_ptr(), row.add(j), w.n - j);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernel_int8::{assert_equals_portable, Int8Weight};
    use super::*;

    #[test]
    fn equals_the_portable_int8_kernel_bit_for_bit() {
        if !available() {
            println!("skipped: this CPU has no AVX2");
            return;
        }
        assert_equals_portable("AVX2", |q| Int8Weight::Madd(pack(q)));
    }
}
