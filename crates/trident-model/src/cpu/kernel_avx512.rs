//! The AVX-512 f32 micro-kernel: a 12 × 32 tile of `C` in 24 zmm accumulators. It reads the
//! same packed panels as the AVX2 kernel — two `A` micro-panels (`[kc][6]` each, rows 0–5 and
//! 6–11) and two `B` micro-panels (`[kc][16]` each, columns 0–15 and 16–31; f32, or bf16 widened as
//! loaded) — so packing stays one scheme for every ISA. Per step it issues 24 FMAs for 2 vector loads and 12 broadcasts,
//! against 12 FMAs for 2 loads and 6 broadcasts in the AVX2 tile.

use std::arch::x86_64::*;

use super::tile::{load16, Element, MR, NR};

/// `C[rows × cols] (+)= A·B` for one 12 × 32 tile.
///
/// # Safety
/// The CPU must have AVX-512F. `a0`, `a1` must hold `kc·MR` floats, `b0`, `b1` `kc·NR` (pass
/// `a1 = a0` or `b1 = b0` when the tile has only one of them: the duplicate results are not
/// stored). `c` must be valid for `rows × cols` elements at stride `ldc`, with `rows ≤ 2·MR`,
/// `cols ≤ 2·NR`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_avx512<T: Element>(
    kc: usize,
    (a0, a1): (*const f32, *const f32),
    (b0, b1): (*const T, *const T),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let z = _mm512_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let (mut c60, mut c61, mut c70, mut c71, mut c80, mut c81) = (z, z, z, z, z, z);
    let (mut c90, mut c91, mut ca0, mut ca1, mut cb0, mut cb1) = (z, z, z, z, z, z);
    // SAFETY: the prefetches never fault; each pointer advances MR (A) or NR (B) floats per
    // step for kc steps, inside its panel.
    unsafe {
        // Fetch the tile of C now so its misses overlap the FMAs.
        for i in 0..rows {
            let p = c.wrapping_add(i * ldc) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(8 * NR - 1));
        }
        let (mut pa0, mut pa1, mut pb0, mut pb1) = (a0, a1, b0, b1);
        for _ in 0..kc {
            let lo = load16(pb0);
            let hi = load16(pb1);
            macro_rules! row {
                ($a:ident, $i:expr, $l:ident, $h:ident) => {
                    let x = _mm512_set1_ps(*$a.add($i));
                    $l = _mm512_fmadd_ps(x, lo, $l);
                    $h = _mm512_fmadd_ps(x, hi, $h);
                };
            }
            row!(pa0, 0, c00, c01);
            row!(pa0, 1, c10, c11);
            row!(pa0, 2, c20, c21);
            row!(pa0, 3, c30, c31);
            row!(pa0, 4, c40, c41);
            row!(pa0, 5, c50, c51);
            row!(pa1, 0, c60, c61);
            row!(pa1, 1, c70, c71);
            row!(pa1, 2, c80, c81);
            row!(pa1, 3, c90, c91);
            row!(pa1, 4, ca0, ca1);
            row!(pa1, 5, cb0, cb1);
            pa0 = pa0.add(MR);
            pa1 = pa1.add(MR);
            pb0 = pb0.add(NR);
            pb1 = pb1.add(NR);
        }
        let acc = [
            [c00, c01],
            [c10, c11],
            [c20, c21],
            [c30, c31],
            [c40, c41],
            [c50, c51],
            [c60, c61],
            [c70, c71],
            [c80, c81],
            [c90, c91],
            [ca0, ca1],
            [cb0, cb1],
        ];
        // Masked loads and stores clip ragged columns without a bounce buffer.
        let mask = |from: usize| -> __mmask16 {
            let w = cols.saturating_sub(from).min(NR);
            ((1u32 << w) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(NR));
        for (i, [v0, v1]) in acc.into_iter().enumerate().take(rows) {
            let p = c.add(i * ldc);
            for (v, m, p) in [(v0, m0, p), (v1, m1, p.wrapping_add(NR))] {
                if m == 0 {
                    continue;
                }
                let v = if accumulate { _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, p)) } else { v };
                _mm512_mask_storeu_ps(p, m, v);
            }
        }
    }
}
