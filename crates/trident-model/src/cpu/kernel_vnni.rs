//! The int8 GEMM on AVX512-VNNI: `VPDPBUSD` multiplies four u8 activations by four i8 weights
//! and adds the four products into one i32 lane, exactly (tiles and packing: `panel.rs`). The
//! codes are `quant.rs`'s (the AMX and portable int8 kernels' codes); the sums are exact and the
//! scaling back is the same f32 arithmetic in the same order, so its outputs equal theirs bit
//! for bit.

use std::arch::x86_64::*;

use super::panel::{self, by_rows, Int8Panels, Out, NR};
use super::quant::{self, HeldOut, QuantizedRows, RowQ};

/// Whether this CPU runs the kernel (AVX-512 F/BW and VNNI).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Packs `src` for this kernel.
pub fn pack(src: &QuantizedRows) -> Int8Panels {
    Int8Panels::pack::<4, NR>(src)
}

/// `R` rows of `a` (4 bytes per group, `groups` groups, row stride `lda` bytes) against the
/// panel at `b`: the i32 sums of columns `16v..16v + 16` of row `r` in `[r][v]`.
///
/// # Safety
/// AVX512-VNNI is enabled in the caller; `a` holds `R` rows of `4·groups` bytes, `b` one panel.
#[inline(always)]
unsafe fn accumulate<const R: usize>(
    groups: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
) -> [[__m512i; 4]; R] {
    // SAFETY: the caller's contract bounds every read.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        for g in 0..groups {
            let bg = b.add(g * NR * 4);
            let w: [__m512i; 4] =
                std::array::from_fn(|v| _mm512_loadu_si512(bg.add(v * 64) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((a.add(r * lda + 4 * g) as *const i32).read_unaligned());
                for v in 0..4 {
                    acc[v] = _mm512_dpbusd_epi32(acc[v], x, w[v]);
                }
            }
        }
        acc
    }
}

/// `c[m × w.n] = a[m × w.k] · wᵀ` on the current rayon pool, `held`'s products added to each
/// tile before it is written.
///
/// # Safety
/// `c` must be valid for `m` rows of `w.n` values at stride `ldc` and must not alias `a`;
/// [`available`] returned true; `held` is `w`'s, or empty.
pub unsafe fn matmul(m: usize, a: &[f32], w: &Int8Panels, held: &HeldOut, c: *mut f32, ldc: usize) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_vnni operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    // Rows padded to 64 features (zero codes past k meet zero weights).
    let lda = k.next_multiple_of(64);
    // SAFETY: AVX-512F/BW (caller: available()); each q holds lda ≥ k bytes, a multiple of 64.
    let quantize = |row: &[f32], q: &mut [u8]| unsafe {
        let at = q.as_mut_ptr();
        quant::quantize_runs(row, &w.smooth, lda / 64, |c| at.wrapping_add(64 * c))
    };
    let (qa, codes) = panel::quantize_rows(m, k, lda, a, quantize);
    let xs = &held.gather(m, a, k)[..];
    let out = Out(c);
    let (out, qa, codes) = (&out, &qa[..], &codes[..]);
    panel::for_each_tile(m, n, |r0, rows, p| {
        // SAFETY: VNNI is available (caller); the tile's rows and the panel's columns below n
        // lie in c and belong to this tile only.
        unsafe {
            by_rows!(rows, tile, qa, lda, codes, w, (held, xs), p, out.0, ldc, r0);
        }
    });
}

/// `C[i][j] = (Σ q_a·q_w − z_i·colsum[j]) · s_j · s_i` for `R` rows from `r0` and panel `p`,
/// plus the held-out products `Σ_h xs[i][h] · W[j][h]` (`HeldOut::block`) added in registers
/// before the store: the int8 kernels' pass over the tile just written (`HeldOut::add_tile`)
/// reloaded it and cost 5 % of an int8 run on a Zen 4 EPYC; the same operations, so the same
/// bits.
///
/// # Safety
/// AVX512-VNNI is available; `c` is valid for rows `r0..r0 + R` and the panel's columns below
/// `n` at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    qa: &[u8],
    lda: usize,
    codes: &[RowQ],
    w: &Int8Panels,
    (held, xs): (&HeldOut, &[f32]),
    p: usize,
    c: *mut f32,
    ldc: usize,
    r0: usize,
) {
    let groups = w.k.div_ceil(4);
    let panel = &w.data[p * groups * NR * 4..(p + 1) * groups * NR * 4];
    let (features, hw) = held.block(p);
    assert!(qa.len() >= (r0 + R) * lda && codes.len() >= r0 + R);
    assert!(xs.len() >= (r0 + R) * features && hw.len() >= features * NR);
    // SAFETY: qa holds rows r0..r0 + R of lda bytes, panel one panel, hw `features` rows of 64
    // weights; the caller covers c.
    unsafe {
        let acc =
            accumulate::<R>(groups, qa.as_ptr().add(r0 * lda), lda, panel.as_ptr() as *const u8);
        let mut y = [[_mm512_setzero_ps(); 4]; R];
        for (r, (acc, y)) in acc.iter().zip(&mut y).enumerate() {
            let code = codes[r0 + r];
            let (zp, si) = (_mm512_set1_epi32(code.zp), _mm512_set1_ps(code.scale));
            for (v, (&sum, y)) in acc.iter().zip(y).enumerate() {
                let j = p * NR + 16 * v;
                if j >= w.n {
                    break;
                }
                let colsum = _mm512_loadu_si512(w.colsum.as_ptr().add(j) as *const _);
                let sj = _mm512_loadu_ps(w.scale.as_ptr().add(j));
                let exact = _mm512_sub_epi32(sum, _mm512_mullo_epi32(zp, colsum));
                *y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(exact), sj), si);
            }
        }
        for h in 0..features {
            let wv: [__m512; 4] =
                std::array::from_fn(|v| _mm512_loadu_ps(hw.as_ptr().add(h * NR + 16 * v)));
            for (r, y) in y.iter_mut().enumerate() {
                quant::add_held(y, xs[(r0 + r) * features + h], &wv);
            }
        }
        panel::store_tile(c, ldc, r0, p, w.n, &y);
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernel_int8::{assert_equals_portable, Int8Weight};
    use super::*;

    #[test]
    fn equals_the_portable_int8_kernel_bit_for_bit() {
        if !available() {
            println!("skipped: this CPU has no AVX512-VNNI");
            return;
        }
        assert_equals_portable("AVX512-VNNI", |q| Int8Weight::Vnni(pack(q)));
    }
}
