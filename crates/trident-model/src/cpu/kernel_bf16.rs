//! The bf16 precision's linear layers, and the reduced precisions' attention
//! (`attention_bf16.rs`), on AVX512-BF16 below AMX: `VDPBF16PS` multiplies two bf16 pairs per
//! 32-bit lane and adds them to an f32 sum — the AMX-BF16 kernel's arithmetic (bf16 operands
//! rounded to nearest even, f32 sums) with twice the products of an f32 FMA per instruction.
//! Worth it only where the CPU issues it as fast as an FMA: AMD Zen 4 does (one 512-bit dot
//! per cycle per core, as many as FMAs); Intel cores without AMX issue one where they issue
//! two FMAs, and there the f32 kernel on bf16 weights is faster ([`preferred`]).
//! Tiles and packing: `panel.rs`.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::kernel_amx::bf16_bits;
use super::panel::{self, by_rows, Out, NR};

/// Whether this CPU runs the kernel (AVX-512 F/BW and BF16).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// Whether bf16 layers below AMX run here rather than as f32 arithmetic on bf16 weights: on
/// AMD's cores with AVX512-BF16 (`gemm_bench` on a Zen 4 EPYC: see README "CPU speed"); an
/// Emerald Rapids Xeon ran this kernel at 134–142 GFLOP/s against the f32 kernel's 165–216.
pub fn preferred() -> bool {
    available() && amd()
}

fn amd() -> bool {
    let id = __cpuid(0);
    (id.ebx, id.edx, id.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) // "AuthenticAMD"
}

/// `W` (`[n × k]`) rounded to bf16, in panels of 64 columns of bf16 pairs.
pub struct Bf16Panels {
    data: Vec<u16>,
    pub n: usize,
    pub k: usize,
}

impl Bf16Panels {
    /// Packs row-major `w` (`[n × k]`), panels in parallel on the current rayon pool.
    pub fn pack(n: usize, k: usize, w: &[f32]) -> Bf16Panels {
        assert!(w.len() >= n * k, "Bf16Panels::pack operand size");
        let data = panel::pack_panels::<u16, 2, NR>(n, k, |j, kk| bf16_bits(w[j * k + kk]));
        Bf16Panels { data, n, k }
    }

    pub fn view(&self) -> PanelsRef<'_> {
        PanelsRef { data: &self.data, n: self.n, k: self.k }
    }
}

/// A `[n × k]` bf16 operand in [`Bf16Panels`]' order, borrowed (attention packs its keys and
/// values into its own buffers).
#[derive(Clone, Copy)]
pub struct PanelsRef<'a> {
    data: &'a [u16],
    n: usize,
    k: usize,
}

impl<'a> PanelsRef<'a> {
    /// `data` holds `⌈n/64⌉` panels of `⌈k/2⌉` groups of 64 columns × 2 values.
    pub fn new(data: &'a [u16], n: usize, k: usize) -> Self {
        assert!(data.len() >= n.div_ceil(NR) * k.div_ceil(2) * NR * 2, "PanelsRef size");
        PanelsRef { data, n, k }
    }

    /// The `u16`s that [`PanelsRef::new`] needs for `[n × k]`.
    pub fn len(n: usize, k: usize) -> usize {
        n.div_ceil(NR) * k.div_ceil(2) * NR * 2
    }
}

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
    // Rows padded to 32 features (zero past k meets the weights' zero padding).
    let lda = k.next_multiple_of(32);
    let mut ha = vec![0u16; m * lda];
    ha.par_chunks_mut(lda).enumerate().for_each(|(i, h)| {
        // SAFETY: AVX512-BF16 (caller); h holds lda values, a multiple of 32, ≥ k.
        unsafe { convert_row(&a[i * k..(i + 1) * k], 1.0, h) }
    });
    let out = Out(c);
    let (out, ha, w) = (&out, &ha[..], w.view());
    panel::for_each_tile(m, n, |r0, rows, p| {
        // SAFETY: AVX512-BF16 is available (caller); the tile's rows and the panel's columns
        // below n lie in c and belong to this tile only.
        unsafe { by_rows!(rows, tile, ha, lda, w, p, out.0, ldc, r0) }
    });
}

/// `c[m × w.n] = a · wᵀ` on this thread, `a` being `m` rows of bf16 at stride `lda` (from
/// [`convert_row`]), panel by panel so that each panel is read from cache by all the rows.
///
/// # Safety
/// As [`matmul`]; `lda` is even and at least `w.k`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn block(m: usize, ha: &[u16], lda: usize, w: PanelsRef, c: *mut f32, ldc: usize) {
    assert!(lda.is_multiple_of(2) && lda >= w.k && ha.len() >= m * lda, "block operand sizes");
    for p in 0..w.n.div_ceil(NR) {
        for r0 in (0..m).step_by(panel::MR) {
            // SAFETY: the caller covers c; the asserts above cover ha.
            unsafe { by_rows!(panel::MR.min(m - r0), tile, ha, lda, w, p, c, ldc, r0) }
        }
    }
}

/// `scale · row` as bf16 into `h` (zero past the row), 32 features at a time, rounded to
/// nearest even by the CPU's conversion (as the AMX kernel's activations; subnormals flush to
/// zero).
///
/// # Safety
/// AVX512-BF16 is available; `h.len()` is a multiple of 32 and at least `row.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn convert_row(row: &[f32], scale: f32, h: &mut [u16]) {
    let scale = _mm512_set1_ps(scale);
    for (c, out) in h.chunks_exact_mut(32).enumerate() {
        let (lo, hi) = (32 * c, row.len().min(32 * c + 32));
        let load = |at: usize| {
            let len = hi.saturating_sub(at).min(16);
            let mask: __mmask16 = if len == 16 { !0 } else { (1u16 << len) - 1 };
            // SAFETY: the mask keeps only elements below row.len().
            _mm512_mul_ps(scale, unsafe {
                _mm512_maskz_loadu_ps(mask, row.as_ptr().add(at.min(row.len())))
            })
        };
        let pair = _mm512_cvtne2ps_pbh(load(lo + 16), load(lo));
        // SAFETY: out holds 32 u16 (64 bytes).
        unsafe {
            _mm512_storeu_si512(
                out.as_mut_ptr() as *mut _,
                std::mem::transmute::<__m512bh, __m512i>(pair),
            )
        };
    }
}

/// Rows `r0..r0 + R` against panel `p`.
///
/// # Safety
/// AVX512-BF16 is available; `c` is valid for rows `r0..r0 + R` and the panel's columns below
/// `n` at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    ha: &[u16],
    lda: usize,
    w: PanelsRef,
    p: usize,
    c: *mut f32,
    ldc: usize,
    r0: usize,
) {
    let groups = w.k.div_ceil(2);
    let panel = &w.data[p * groups * NR * 2..(p + 1) * groups * NR * 2];
    assert!(ha.len() >= (r0 + R) * lda);
    // SAFETY: ha holds rows r0..r0 + R of lda ≥ 2·groups values, panel one panel of groups ×
    // 64 columns × 2 values; the caller covers c.
    unsafe {
        let a = ha.as_ptr().add(r0 * lda);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for g in 0..groups {
            let bg = panel.as_ptr().add(g * NR * 2);
            let wv: [__m512bh; 4] = std::array::from_fn(|v| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    bg.add(v * 32) as *const _
                ))
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (a.add(r * lda + 2 * g) as *const i32).read_unaligned();
                let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for v in 0..4 {
                    acc[v] = _mm512_dpbf16_ps(acc[v], x, wv[v]);
                }
            }
        }
        panel::store_tile(c, ldc, r0, p, w.n, &acc);
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
