//! Linear-layer weights packed once, at load, into the `B` micro-panels of `kernel.rs`, and the
//! GEMM on them: [`super::gemm::matmul_wt`] without its packing pass over the whole weight on
//! every call, which costs as much as the arithmetic on a batch of a few dozen tokens. In f32 the
//! arithmetic, and so every output bit, is the same; in bf16 (below AMX, where `kernel_bf16.rs`
//! is not preferred) the panels keep bf16, which the kernels widen as they load it — f32
//! arithmetic on the rounded weights, as before, at half the memory and without a widened copy
//! per call.

use rayon::prelude::*;

use super::gemm::{gemm_blocks, pack_weight_block, with_scratch, B_PACK, KC};
use super::kernel::{Aligned, Element, NR};

/// A `[n × k]` weight as `B` micro-panels of `T` (f32 or bf16): for each block of `KC` input
/// features (the last one shorter), its `⌈n / NR⌉` panels of `[kc][NR]` one after another.
pub struct Packed<T = f32> {
    pub n: usize,
    pub k: usize,
    data: Aligned<T>,
}

/// f32 weights packed at load.
pub type PackedF32 = Packed<f32>;

impl<T: Element> Packed<T> {
    /// Packs `w` (`[n × k]`, row-major, as PyTorch stores a linear layer), each value rounded
    /// to `T`, on the current pool.
    pub fn pack(n: usize, k: usize, w: &[f32]) -> Self {
        assert!(w.len() >= n * k, "Packed::pack: weight has {} of {n}×{k}", w.len());
        let panels = n.div_ceil(NR);
        let mut data = Aligned::default();
        let all = data.get(panels * NR * k);
        let mut pc = 0;
        for blk in all.chunks_mut(panels * NR * KC) {
            let kc = KC.min(k - pc);
            pack_weight_block(w, n, k, pc, kc, blk, T::from_f32);
            pc += kc;
        }
        Self { n, k, data }
    }

    /// The panels of the input block starting at feature `pc`.
    fn block(&self, pc: usize) -> &[T] {
        let panels = self.n.div_ceil(NR);
        &self.data.slice()[panels * NR * pc..][..panels * NR * KC.min(self.k - pc)]
    }
}

/// `c[m × w.n] = a[m × w.k] · wᵀ`, row stride `ldc`, on the current rayon pool.
///
/// # Safety
/// `c` must be valid for `m` rows of `w.n` elements at stride `ldc` and must not alias `a`.
pub unsafe fn matmul_packed<T: Element>(
    m: usize,
    a: &[f32],
    w: &Packed<T>,
    c: *mut f32,
    ldc: usize,
) {
    if T::BF16 && m >= WIDEN_ROWS {
        // SAFETY: as below, on f32 copies of the same panels.
        return with_scratch(&B_PACK, |buf| unsafe {
            gemm_blocks(m, w.n, w.k, a, c, ldc, |pc, _, run| {
                let src = w.block(pc);
                let dst = buf.get(src.len());
                dst.par_chunks_mut(1 << 14)
                    .zip(src.par_chunks(1 << 14))
                    .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32()));
                run(dst)
            })
        });
    }
    // SAFETY: the caller's contract; the panels are w's, of its shape.
    unsafe { gemm_blocks(m, w.n, w.k, a, c, ldc, |pc, _, run| run(w.block(pc))) }
}

/// From this many rows a bf16 GEMM widens each block of panels to f32 once for all rows rather
/// than in the kernel's every load (two more vector instructions per 24 FMAs on AVX-512).
const WIDEN_ROWS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit for bit the same as packing on every call, on ragged shapes (a short last input
    /// block, a lone last panel, rows not a multiple of the tile).
    #[test]
    fn packed_weights_give_the_same_bits_as_per_call_packing_f32_and_bf16() {
        // (300 rows: bf16 widened once per block rather than in the kernel.)
        for (m, n, k) in [(1, 1, 1), (13, 40, 700), (130, 72, 1100), (25, 33, 512), (300, 40, 600)]
        {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let (mut x, mut y) = (vec![0f32; m * n], vec![1f32; m * n]);
            let p = PackedF32::pack(n, k, &w);
            // SAFETY: x and y are [m × n].
            unsafe {
                super::super::gemm::matmul_wt(m, n, k, &a, &w, x.as_mut_ptr(), n);
                matmul_packed(m, &a, &p, y.as_mut_ptr(), n);
            }
            assert_eq!(x, y, "{m}×{n}×{k}");
            let want: f64 = (0..k).map(|kk| a[kk] as f64 * w[(n - 1) * k + kk] as f64).sum();
            assert!((y[n - 1] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "{m}×{n}×{k}");
            // bf16 panels, widened by the kernels: the bits of per-call widening.
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let pb = Packed::<half::bf16>::pack(n, k, &w);
            // SAFETY: x and y are [m × n].
            unsafe {
                super::super::gemm::matmul_wt(m, n, k, &a, &wb, x.as_mut_ptr(), n);
                matmul_packed(m, &a, &pb, y.as_mut_ptr(), n);
            }
            assert_eq!(x, y, "bf16 {m}×{n}×{k}");
            let want: f64 = (0..k).map(|kk| a[kk] as f64 * wb[(n - 1) * k + kk].to_f64()).sum();
            assert!((y[n - 1] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "{m}×{n}×{k}");
        }
    }
}
