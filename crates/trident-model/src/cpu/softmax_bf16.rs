//! Softmax's numerators for the reduced-precision attentions (AMX in `attention.rs`, AVX512-BF16
//! in `attention_bf16.rs`): exponentials written as bf16 straight into the `P·V` product's
//! operand, their f32 sum kept for a division after it, on the head's `d` outputs of each row
//! rather than its `L` probabilities.

use std::arch::x86_64::*;

/// Softmax's numerators: `bf16(exp(row − max row))`, 32 at a time into `chunk(c)` for
/// `c < chunks` (zero past the row); returns their sum (f32, of the unrounded exponentials).
///
/// # Safety
/// AVX512-BF16 is available; each `chunk(c)` is valid for 32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn exponentials(row: &[f32], chunks: usize, chunk: impl Fn(usize) -> *mut u16) -> f32 {
    assert!(32 * chunks >= row.len());
    let n = row.len();
    let mask = |at: usize| -> __mmask16 {
        let len = n.saturating_sub(at).min(16);
        if len == 16 {
            !0
        } else {
            (1u16 << len) - 1
        }
    };
    // SAFETY (both loads): the mask keeps elements below n.
    let load = |at: usize| unsafe { _mm512_maskz_loadu_ps(mask(at), row.as_ptr().add(at.min(n))) };
    let low = _mm512_set1_ps(f32::MIN);
    let (mut top0, mut top1) = (low, low);
    for at in (0..n).step_by(32) {
        top0 = _mm512_max_ps(top0, _mm512_mask_blend_ps(mask(at), low, load(at)));
        top1 = _mm512_max_ps(top1, _mm512_mask_blend_ps(mask(at + 16), low, load(at + 16)));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(top0, top1)));
    let mut sum = _mm512_setzero_ps();
    for c in 0..chunks {
        let exp =
            |at: usize| _mm512_maskz_mov_ps(mask(at), exp_nonpos(_mm512_sub_ps(load(at), max)));
        let (lo, hi) = (exp(32 * c), exp(32 * c + 16));
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
        let pair = _mm512_cvtne2ps_pbh(hi, lo);
        // SAFETY: chunk(c) holds 32 u16 (64 bytes; caller).
        unsafe {
            _mm512_storeu_si512(chunk(c) as *mut _, std::mem::transmute::<__m512bh, __m512i>(pair))
        };
    }
    _mm512_reduce_add_ps(sum)
}

/// Softmax's division, after `P·V`: row `r` of the `d` outputs at `out` (rows `ld` apart)
/// divided by `sums[r]`, its exponentials' sum.
///
/// # Safety
/// `out` is valid for `sums.len()` rows of `d` values at stride `ld`, and nothing else
/// touches them meanwhile.
pub unsafe fn divide(out: *mut f32, ld: usize, d: usize, sums: &[f32]) {
    for (r, sum) in sums.iter().enumerate() {
        // SAFETY: row r's d outputs (caller).
        let o = unsafe { std::slice::from_raw_parts_mut(out.add(r * ld), d) };
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `eˣ` for `x ≤ 0` (clamped at −87, whose exponential is still normal): `x = n·ln 2 + r`,
/// `|r| ≤ ln 2 / 2`, `eʳ` by its Taylor polynomial to degree 6 (relative error ~1e-7, far
/// below bf16's rounding of the result), times `2ⁿ` by `VSCALEFPS`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp_nonpos(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exponentials against f64's, on ragged rows (a partial 16-lane block, a partial
    /// 32-value row of bf16, a large spread of scores).
    #[test]
    fn exponentials_match_f64() {
        if !super::super::kernel_bf16::available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let widen = |b: u16| f32::from_bits((b as u32) << 16) as f64;
        for n in [1usize, 5, 16, 17, 33, 100] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 60.0) * 1.7).collect();
            let mut p = vec![7u16; n.next_multiple_of(32)];
            // SAFETY: AVX512-BF16 is available.
            let (chunks, at) = (p.len() / 32, p.as_mut_ptr());
            let sum = unsafe { exponentials(&row, chunks, |c| at.add(32 * c)) } as f64;
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            // Below −87 the exponential is clamped (e⁻⁸⁷ ≈ 1.6e-38 against the row's 1).
            let want: Vec<f64> = row.iter().map(|&x| (x as f64 - max).max(-87.0).exp()).collect();
            let total: f64 = want.iter().sum();
            assert!((sum - total).abs() <= 1e-6 * total, "n {n}: sum {sum} vs {total}");
            for (i, w) in want.iter().enumerate() {
                // bf16 rounding: half a unit in the 8th bit, plus the polynomial's error.
                let got = widen(p[i]);
                assert!((got - w).abs() <= w * (1.0 / 256.0 + 1e-6), "n {n} [{i}]: {got} vs {w}");
            }
            assert!(p[n..].iter().all(|&b| b == 0), "n {n}: padding not zero");
        }
        // eˣ itself, to f32 precision, down to the clamp.
        for i in 0..=8700 {
            let x = -(i as f32) / 100.0;
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F is available with AVX512-BF16.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp_nonpos(_mm512_set1_ps(x))) };
            let want = (x as f64).exp();
            assert!((out[0] as f64 - want).abs() <= want * 4e-7, "exp({x}): {} vs {want}", out[0]);
        }
    }
}
