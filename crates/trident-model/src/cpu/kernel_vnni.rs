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
/// tile as it is written.
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
    let quantize = |row: &[f32], q: &mut [u8]| unsafe { quantize_row(row, &w.smooth, q) };
    let (qa, codes) = panel::quantize_rows(m, k, lda, a, quantize);
    let xs = &held.gather(m, a, k)[..];
    let out = Out(c);
    let (out, qa, codes) = (&out, &qa[..], &codes[..]);
    panel::for_each_tile(m, n, |r0, rows, p| {
        // SAFETY: VNNI is available (caller); the tile's rows and the panel's columns below n
        // lie in c and belong to this tile only.
        unsafe {
            by_rows!(rows, tile, qa, lda, codes, w, p, out.0, ldc, r0);
            held.add_tile(xs, r0, rows, p * NR..(p * NR + NR).min(n), out.0, ldc);
        }
    });
}

/// `quant::quantize_row` 64 features at a time (the same codes: `quant.rs` checks the
/// vector codes against the scalar ones; min and max are exact either way).
///
/// # Safety
/// AVX-512F/BW are available; `q.len()` is a multiple of 64 and at least `row.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row(row: &[f32], smooth: &[f32], q: &mut [u8]) -> RowQ {
    let run = |c: usize| {
        let mut run = [0f32; 64];
        let (lo, hi) = (64 * c, row.len().min(64 * c + 64));
        if lo < hi {
            run[..hi - lo].copy_from_slice(&row[lo..hi]);
            if !smooth.is_empty() {
                run.iter_mut().zip(&smooth[lo..hi]).for_each(|(x, f)| *x *= f);
            }
        }
        run
    };
    let runs = q.len() / 64;
    let (lo, hi) = (0..runs).fold((0f32, 0f32), |(lo, hi), c| {
        // SAFETY: AVX-512F (this function's features).
        let (l, h) = unsafe { quant::min_max64(&run(c)) };
        (lo.min(l), hi.max(h))
    });
    let code = RowQ::new(lo, hi);
    for c in 0..runs {
        // SAFETY: AVX-512F/BW; q holds 64 bytes from 64·c.
        unsafe { quant::quantize64(&run(c), code, q.as_mut_ptr().add(64 * c)) };
    }
    code
}

/// `C[i][j] = (Σ q_a·q_w − z_i·colsum[j]) · s_j · s_i` for `R` rows from `r0` and panel `p`.
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
    p: usize,
    c: *mut f32,
    ldc: usize,
    r0: usize,
) {
    let groups = w.k.div_ceil(4);
    let panel = &w.data[p * groups * NR * 4..(p + 1) * groups * NR * 4];
    assert!(qa.len() >= (r0 + R) * lda && codes.len() >= r0 + R);
    // SAFETY: qa holds rows r0..r0 + R of lda bytes, panel one panel; the caller covers c.
    unsafe {
        let acc =
            accumulate::<R>(groups, qa.as_ptr().add(r0 * lda), lda, panel.as_ptr() as *const u8);
        for (r, acc) in acc.iter().enumerate() {
            let code = codes[r0 + r];
            let (zp, si) = (_mm512_set1_epi32(code.zp), _mm512_set1_ps(code.scale));
            let row = c.add((r0 + r) * ldc);
            for (v, &sum) in acc.iter().enumerate() {
                let j = p * NR + 16 * v;
                if j >= w.n {
                    break;
                }
                let colsum = _mm512_loadu_si512(w.colsum.as_ptr().add(j) as *const _);
                let sj = _mm512_loadu_ps(w.scale.as_ptr().add(j));
                let exact = _mm512_sub_epi32(sum, _mm512_mullo_epi32(zp, colsum));
                let y = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(exact), sj), si);
                panel::store(row, j, w.n, y);
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
            println!("skipped: this CPU has no AVX512-VNNI");
            return;
        }
        assert_equals_portable("AVX512-VNNI", |q| Int8Weight::Vnni(pack(q)));
    }
}
