//! The bf16 precision's linear layers on AVX512-BF16 where AMX is absent (or capped by
//! `--cpu-isa avx512`): `VDPBF16PS` multiplies two bf16 pairs per 32-bit lane and adds them to
//! an f32 sum — the AMX-BF16 kernel's arithmetic (bf16 operands, rounded to nearest even, f32
//! sums), twice the f32 FMA's products per instruction. Tiles and packing: `panel.rs`.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::kernel_amx::bf16_bits;
use super::panel::{self, by_rows, Dot, NR};

/// Whether this CPU runs the kernel (AVX-512 F/BW and BF16).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// `W` (`[n × k]`) rounded to bf16, in panel order.
pub struct Bf16Panels {
    data: Vec<u16>,
    pub n: usize,
    pub k: usize,
}

impl Bf16Panels {
    /// Packs row-major `w` (`[n × k]`), panels in parallel on the current rayon pool.
    pub fn pack(n: usize, k: usize, w: &[f32]) -> Bf16Panels {
        assert!(w.len() >= n * k, "Bf16Panels::pack operand size");
        Bf16Panels { data: panel::pack::<u16, 2>(n, k, |j, kk| bf16_bits(w[j * k + kk])), n, k }
    }
}

struct Bf16Pairs;

impl Dot for Bf16Pairs {
    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX512-BF16 is enabled in the caller (trait contract); the casts only
        // reinterpret 512 bits.
        unsafe {
            let (a, b): (__m512bh, __m512bh) = (std::mem::transmute(a), std::mem::transmute(b));
            _mm512_castps_si512(_mm512_dpbf16_ps(_mm512_castsi512_ps(acc), a, b))
        }
    }
}

struct Out(*mut f32);
// SAFETY: tiles write disjoint blocks of `C`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `c[m × w.n] = bf16(a[m × w.k]) · wᵀ` (f32 sums) on the current rayon pool.
///
/// # Safety
/// `c` must be valid for `m` rows of `w.n` values at stride `ldc` and must not alias `a`;
/// [`available`] returned true.
pub unsafe fn matmul(m: usize, a: &[f32], w: &Bf16Panels, c: *mut f32, ldc: usize) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_bf16 operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    let lda = k.div_ceil(2) * 2;
    let mut ha = vec![0u16; m * lda];
    ha.par_chunks_mut(lda).enumerate().for_each(|(i, h)| {
        h.iter_mut().zip(&a[i * k..(i + 1) * k]).for_each(|(h, &x)| *h = bf16_bits(x));
    });
    let out = Out(c);
    let (out, ha) = (&out, &ha[..]);
    panel::for_each_tile(m, n, |r0, rows, p| {
        // SAFETY: AVX512-BF16 is available (caller); the tile's rows and the panel's columns
        // below n lie in c and belong to this tile only.
        unsafe { by_rows!(rows, tile, ha, lda, w, p, out.0, ldc, r0) }
    });
}

/// Rows `r0..r0 + R` against panel `p`.
///
/// # Safety
/// AVX512-BF16 is available; `c` is valid for rows `r0..r0 + R` and the panel's columns below
/// `n` at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const R: usize>(
    ha: &[u16],
    lda: usize,
    w: &Bf16Panels,
    p: usize,
    c: *mut f32,
    ldc: usize,
    r0: usize,
) {
    let groups = lda / 2;
    let panel = &w.data[p * groups * NR * 2..(p + 1) * groups * NR * 2];
    assert!(ha.len() >= (r0 + R) * lda);
    // SAFETY: ha holds rows r0..r0 + R of lda values, panel one panel; the caller covers c.
    unsafe {
        let acc = panel::accumulate::<R, Bf16Pairs>(
            groups,
            ha.as_ptr().add(r0 * lda) as *const u8,
            2 * lda,
            panel.as_ptr() as *const u8,
        );
        for (r, acc) in acc.iter().enumerate() {
            let row = c.add((r0 + r) * ldc);
            for (v, &sum) in acc.iter().enumerate() {
                let j = p * NR + 16 * v;
                if j >= w.n {
                    break;
                }
                panel::store(row, j, w.n, _mm512_castsi512_ps(sum));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 sums of the bf16-rounded operands, on ragged shapes.
    #[test]
    fn matches_f64_of_bf16_operands_on_ragged_shapes() {
        if !available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let widen = |b: u16| f32::from_bits((b as u32) << 16) as f64;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for &(m, n, k) in &[(1, 1, 1), (7, 65, 37), (13, 130, 302), (100, 64, 1031), (3, 200, 2)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 41.0).collect();
            let packed = Bf16Panels::pack(n, k, &w);
            let ldc = n + 3;
            let mut c = vec![9.0f32; m * ldc];
            // SAFETY: c is [m × ldc], ldc ≥ n; AVX512-BF16 is available.
            pool.install(|| unsafe { matmul(m, &a, &packed, c.as_mut_ptr(), ldc) });
            for i in 0..m {
                for j in 0..n {
                    let (want, abs): (f64, f64) = (0..k)
                        .map(|kk| {
                            let p =
                                widen(bf16_bits(a[i * k + kk])) * widen(bf16_bits(w[j * k + kk]));
                            (p, p.abs())
                        })
                        .fold((0.0, 0.0), |(s, t), (p, q)| (s + p, t + q));
                    let got = c[i * ldc + j] as f64;
                    // f32 sums of exact products: k roundings of at most 2^-24 of the running sum.
                    let bound = abs * k as f64 * f32::EPSILON as f64 + 1e-30;
                    assert!(
                        (got - want).abs() <= bound,
                        "{m}x{n}x{k} ({i},{j}): {got} vs {want} (bound {bound})"
                    );
                }
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 9.0), "overrun");
            }
        }
    }
}
