//! The f32 GEMM micro-kernel and its packing routines, BLIS-style: a 6 × 16 tile of `C` held in
//! twelve AVX2 registers while `kc` steps stream a packed `A` micro-panel (`[kc][6]`) and a packed
//! `B` micro-panel (`[kc][16]`). Packing is what lets callers reuse panels: the attention packs
//! each head's keys and values once for all query blocks, and the linear layers pack each weight
//! block once per call for all row blocks. With AVX-512, [`block`] runs the same panels on the
//! 12 × 32 tile of `kernel_avx512.rs`, two panels of each operand at a time.

pub use super::tile::{Element, MR, NR};

use super::isa::{isa, Isa};
#[cfg(target_arch = "x86_64")]
use super::kernel_avx512::tile_avx512;
#[cfg(target_arch = "x86_64")]
use super::tile::load8;

/// A 64-byte aligned, reusable buffer (aligned so panel loads never split cache lines).
#[derive(Default)]
pub struct Aligned<T = f32> {
    raw: Vec<T>,
    off: usize,
}

impl<T: Copy + Default> Aligned<T> {
    /// A slice of `len` elements (contents unspecified), growing the buffer when needed.
    pub fn get(&mut self, len: usize) -> &mut [T] {
        let slack = 64 / size_of::<T>();
        if self.raw.len() < len + slack {
            self.raw = vec![T::default(); len + slack];
            self.off = self.raw.as_ptr().align_offset(64).min(slack - 1);
        }
        &mut self.raw[self.off..self.off + len]
    }

    /// Everything [`Aligned::get`] last gave out (and any slack after it).
    pub fn slice(&self) -> &[T] {
        self.raw.get(self.off..).unwrap_or_default()
    }
}

/// Packs rows `r0..r0+rows` (row stride `ld`), columns `c0..c0+kc` of `src` as `A` micro-panels:
/// `dst[p][kk][i] = scale · src[r0 + p·MR + i][c0 + kk]`, zero rows past `rows`.
#[allow(clippy::too_many_arguments)]
pub fn pack_a(
    src: &[f32],
    ld: usize,
    r0: usize,
    rows: usize,
    c0: usize,
    kc: usize,
    scale: f32,
    dst: &mut [f32],
) {
    let zeros = vec![0.0; if rows.is_multiple_of(MR) { 0 } else { kc }];
    for (p, panel) in dst.chunks_exact_mut(kc * MR).take(rows.div_ceil(MR)).enumerate() {
        let row = |i: usize| {
            let r = p * MR + i;
            if r < rows {
                &src[(r0 + r) * ld + c0..][..kc]
            } else {
                &zeros[..]
            }
        };
        let src_rows = [row(0), row(1), row(2), row(3), row(4), row(5)];
        // One output step gathers column kk of the six rows: sequential writes, six read streams.
        for (kk, out) in panel.chunks_exact_mut(MR).enumerate() {
            for i in 0..MR {
                out[i] = src_rows[i][kk] * scale;
            }
        }
    }
}

/// Packs a `B = Sᵀ` operand given as rows of `S` (PyTorch weights `[out × in]`, attention keys):
/// rows `j0..j0+cols` of `src` (stride `ld`), columns `c0..c0+kc`, as `dst[p][kk][j] =
/// src[j0 + p·NR + j][c0 + kk]`, zero columns past `cols`.
pub fn pack_b_rows<T: Element>(
    src: &[T],
    ld: usize,
    j0: usize,
    cols: usize,
    c0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    for (p, panel) in dst.chunks_exact_mut(kc * NR).take(cols.div_ceil(NR)).enumerate() {
        let cols = (cols - p * NR).min(NR);
        pack_b_rows_panel(src, ld, j0 + p * NR, cols, c0, kc, panel, T::to_f32);
    }
}

/// One `B` micro-panel of [`pack_b_rows`], each value converted by `conv` (widened to f32, or
/// rounded to the element a packed weight keeps).
#[allow(clippy::too_many_arguments)]
pub fn pack_b_rows_panel<S: Copy, D: Copy + Default>(
    src: &[S],
    ld: usize,
    j0: usize,
    cols: usize,
    c0: usize,
    kc: usize,
    panel: &mut [D],
    conv: impl Fn(S) -> D,
) {
    for j in 0..NR {
        if j < cols {
            let row = &src[(j0 + j) * ld + c0..][..kc];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * NR + j] = conv(v);
            }
        } else {
            for kk in 0..kc {
                panel[kk * NR + j] = D::default();
            }
        }
    }
}

/// Packs a row-major `B` (`[k × n]`, stride `ld`, attention values): rows `r0..r0+kc`, columns
/// `0..cols` as `dst[p][kk][j] = src[r0 + kk][p·NR + j]`, zero columns past `cols`.
pub fn pack_b_cols(src: &[f32], ld: usize, r0: usize, kc: usize, cols: usize, dst: &mut [f32]) {
    for (p, panel) in dst.chunks_exact_mut(kc * NR).take(cols.div_ceil(NR)).enumerate() {
        let (c0, w) = (p * NR, (cols - p * NR).min(NR));
        for kk in 0..kc {
            let out = &mut panel[kk * NR..(kk + 1) * NR];
            out[..w].copy_from_slice(&src[(r0 + kk) * ld + c0..][..w]);
            out[w..].fill(0.0);
        }
    }
}

/// `C[rows × cols] (+)= A·B` over whole packed operands, on the micro-kernel [`isa`] selects:
/// `A` micro-panel `t` (rows `t·MR..`) starts at `ap + t·sa`, `B` micro-panel `p` (columns
/// `p·NR..`) at `bp + p·sb`; `c` points at the block's first element with row stride `ldc`.
/// Panels of `B` are the outer loop, so each stays in cache while the `A` panels stream past.
///
/// # Safety
/// `ap + t·sa` must hold `kc·MR` floats for every `t < ⌈rows/MR⌉`, `bp + p·sb` `kc·NR` elements
/// for every `p < ⌈cols/NR⌉`; `c` must be valid for `rows × cols` elements at stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block<T: Element>(
    kc: usize,
    (ap, sa): (*const f32, usize),
    (bp, sb): (*const T, usize),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's contract; `isa` is one the CPU has.
    unsafe { block_on(isa(), kc, (ap, sa), (bp, sb), c, ldc, rows, cols, accumulate) }
}

/// [`block`] on the micro-kernel of `isa`.
///
/// # Safety
/// As [`block`], and the CPU must have `isa`'s instructions.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_on<T: Element>(
    isa: Isa,
    kc: usize,
    (ap, sa): (*const f32, usize),
    (bp, sb): (*const T, usize),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let (tiles, panels) = (rows.div_ceil(MR), cols.div_ceil(NR));
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // Tiles of two A and two B micro-panels; a lone last panel is passed twice.
        for p in (0..panels).step_by(2) {
            let b0 = bp.wrapping_add(p * sb);
            let b1 = if p + 1 < panels { b0.wrapping_add(sb) } else { b0 };
            for t in (0..tiles).step_by(2) {
                let a0 = ap.wrapping_add(t * sa);
                let a1 = if t + 1 < tiles { a0.wrapping_add(sa) } else { a0 };
                let (r, j) = (t * MR, p * NR);
                // SAFETY: the CPU has AVX-512F (`isa`); panels and tile per the contract.
                unsafe {
                    tile_avx512(
                        kc,
                        (a0, a1),
                        (b0, b1),
                        c.add(r * ldc + j),
                        ldc,
                        (rows - r).min(2 * MR),
                        (cols - j).min(2 * NR),
                        accumulate,
                    )
                }
            }
        }
        return;
    }
    let tile = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 | Isa::Amx => tile_avx2::<T>,
        _ => tile_generic::<T>,
    };
    for p in 0..panels {
        for t in 0..tiles {
            let (r, j) = (t * MR, p * NR);
            // SAFETY: panels and tile per the contract; the CPU has the tile's instructions.
            unsafe {
                tile(
                    kc,
                    ap.wrapping_add(t * sa),
                    bp.wrapping_add(p * sb),
                    c.add(r * ldc + j),
                    ldc,
                    (rows - r).min(MR),
                    (cols - j).min(NR),
                    accumulate,
                )
            }
        }
    }
}

/// Writes (or adds) a computed `[MR × NR]` tile into `c`, clipped to `rows × cols`.
#[inline(always)]
unsafe fn store(
    acc: &[[f32; NR]; MR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: the caller guarantees `c` covers `rows × cols` at stride `ldc`.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        if accumulate {
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        } else {
            dst.copy_from_slice(&row[..cols]);
        }
    }
}

/// `C[rows × cols] (+)= A·B` for one 6 × 16 tile: `ap` is an `A` micro-panel `[kc][MR]`, `bp` a
/// `B` micro-panel `[kc][NR]`, `c` points at the tile's first element with row stride `ldc`.
/// Portable (CPUs without AVX2+FMA).
///
/// # Safety
/// `ap`/`bp` must hold `kc·MR` / `kc·NR` elements; `c` must be valid for `rows × cols` elements
/// at stride `ldc`, with `rows ≤ MR`, `cols ≤ NR`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_generic<T: Element>(
    kc: usize,
    ap: *const f32,
    bp: *const T,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY: sizes per the caller's contract.
    let (a, b) = unsafe {
        (std::slice::from_raw_parts(ap, kc * MR), std::slice::from_raw_parts(bp, kc * NR))
    };
    let mut acc = [[0f32; NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = ak[i].mul_add(bk[j].to_f32(), acc[i][j]);
            }
        }
    }
    // SAFETY: as above.
    unsafe { store(&acc, c, ldc, rows, cols, accumulate) }
}

/// [`tile_generic`] on AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<T: Element>(
    kc: usize,
    ap: *const f32,
    bp: *const T,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let (mut a, mut b) = (ap, bp);
    // SAFETY: `a` advances MR and `b` NR floats per step, kc steps: inside the panels.
    unsafe {
        // The tile of C is read (or written) after the loop; start fetching it now so the
        // misses overlap the FMAs (prefetches never fault, the addresses need not be valid).
        for i in 0..rows {
            let p = c.wrapping_add(i * ldc) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(4 * NR - 1));
        }
        for _ in 0..kc {
            let b0 = load8(b);
            let b1 = load8(b.add(8));
            // Row i of the tile: broadcast A[i] against both halves of the B row.
            macro_rules! row {
                ($i:expr, $lo:ident, $hi:ident) => {
                    let x = _mm256_broadcast_ss(&*a.add($i));
                    $lo = _mm256_fmadd_ps(x, b0, $lo);
                    $hi = _mm256_fmadd_ps(x, b1, $hi);
                };
            }
            row!(0, c00, c01);
            row!(1, c10, c11);
            row!(2, c20, c21);
            row!(3, c30, c31);
            row!(4, c40, c41);
            row!(5, c50, c51);
            a = a.add(MR);
            b = b.add(NR);
        }
        let acc = [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]];
        if rows == MR && cols == NR {
            for (i, [v0, v1]) in acc.into_iter().enumerate() {
                let p = c.add(i * ldc);
                if accumulate {
                    _mm256_storeu_ps(p, _mm256_add_ps(v0, _mm256_loadu_ps(p)));
                    _mm256_storeu_ps(p.add(8), _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8))));
                } else {
                    _mm256_storeu_ps(p, v0);
                    _mm256_storeu_ps(p.add(8), v1);
                }
            }
        } else {
            let mut tmp = [[0f32; NR]; MR];
            for (i, [v0, v1]) in acc.into_iter().enumerate() {
                _mm256_storeu_ps(tmp[i].as_mut_ptr(), v0);
                _mm256_storeu_ps(tmp[i].as_mut_ptr().add(8), v1);
            }
            store(&tmp, c, ldc, rows, cols, accumulate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 2_654_435_761 % 1000) as f32 / 500.0) - 1.0).collect()
    }

    /// Each kernel the CPU has, on ragged shapes (tiles full and clipped, single and paired
    /// panels), written and accumulated, against f64; and every kernel gives the same bits.
    #[test]
    fn kernels_match_f64_on_ragged_shapes() {
        let all = [Isa::Generic, Isa::Avx2, Isa::Avx512];
        for isa in all.into_iter().filter(|&i| i > super::super::isa::detected()) {
            println!("skipped: this CPU lacks the instructions of {}", isa.kernel_name());
        }
        let shapes = [(1, 1, 1), (5, 13, 37), (6, 16, 8), (7, 17, 3), (12, 32, 64), (13, 33, 100)];
        let shapes = shapes.into_iter().chain([(29, 70, 257), (40, 100, 513), (2, 95, 1)]);
        for (m, n, k) in shapes {
            let a = rand(m * k, 1); // [m × k]
            let s = rand(n * k, 2); // B = Sᵀ, S is [n × k]
            let mut ap = vec![0.0; m.div_ceil(MR) * MR * k];
            let mut bp = vec![0.0; n.div_ceil(NR) * NR * k];
            pack_a(&a, k, 0, m, 0, k, 1.0, &mut ap);
            pack_b_rows(&s, k, 0, n, 0, k, &mut bp);
            let ldc = n + 5;
            let mut first: Option<Vec<f32>> = None;
            for isa in all.into_iter().filter(|&i| i <= super::super::isa::detected()) {
                for accumulate in [false, true] {
                    let mut c = vec![1.0f32; m * ldc];
                    // SAFETY: panels of the packed sizes, c is [m × ldc]; the CPU has `isa`.
                    unsafe {
                        block_on(
                            isa,
                            k,
                            (ap.as_ptr(), k * MR),
                            (bp.as_ptr(), k * NR),
                            c.as_mut_ptr(),
                            ldc,
                            m,
                            n,
                            accumulate,
                        )
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|kk| a[i * k + kk] as f64 * s[j * k + kk] as f64)
                                .sum::<f64>()
                                + if accumulate { 1.0 } else { 0.0 };
                            let got = c[i * ldc + j] as f64;
                            let name = isa.kernel_name();
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{name} {m}x{n}x{k} acc={accumulate} ({i},{j}): {got} vs {want}"
                            );
                        }
                        // Columns past n are not touched.
                        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 1.0));
                    }
                    if !accumulate {
                        match &first {
                            None => first = Some(c),
                            Some(f) => assert!(
                                f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{} differs from the generic kernel in {m}x{n}x{k}",
                                isa.kernel_name()
                            ),
                        }
                    }
                }
            }
        }
    }

    /// bf16 `B` panels, widened as each kernel loads them, give the bits of f32 panels of the
    /// widened values, on every kernel the CPU has (clipped tiles, a lone panel, k = 1).
    #[test]
    fn bf16_panels_give_the_bits_of_their_widened_values() {
        for (m, n, k) in [(1, 1, 1), (13, 33, 100), (29, 70, 257), (12, 32, 64)] {
            let a = rand(m * k, 4);
            let s: Vec<half::bf16> = rand(n * k, 5).into_iter().map(half::bf16::from_f32).collect();
            let mut ap = vec![0.0; m.div_ceil(MR) * MR * k];
            pack_a(&a, k, 0, m, 0, k, 1.0, &mut ap);
            let mut wide = vec![0.0; n.div_ceil(NR) * NR * k];
            pack_b_rows(&s, k, 0, n, 0, k, &mut wide);
            let mut narrow = vec![half::bf16::ZERO; wide.len()];
            for (p, panel) in narrow.chunks_exact_mut(k * NR).enumerate() {
                pack_b_rows_panel(&s, k, p * NR, (n - p * NR).min(NR), 0, k, panel, |v| v);
            }
            for isa in [Isa::Generic, Isa::Avx2, Isa::Avx512] {
                if isa > super::super::isa::detected() {
                    println!("skipped: this CPU lacks the instructions of {}", isa.kernel_name());
                    continue;
                }
                let (mut x, mut y) = (vec![0f32; m * n], vec![1f32; m * n]);
                // SAFETY: panels of the packed sizes, x and y are [m × n]; the CPU has `isa`.
                unsafe {
                    let a = (ap.as_ptr(), k * MR);
                    block_on(isa, k, a, (wide.as_ptr(), k * NR), x.as_mut_ptr(), n, m, n, false);
                    block_on(isa, k, a, (narrow.as_ptr(), k * NR), y.as_mut_ptr(), n, m, n, false);
                }
                let name = isa.kernel_name();
                assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}");
                let want: f64 = (0..k).map(|kk| a[kk] as f64 * s[(n - 1) * k + kk].to_f64()).sum();
                assert!((y[n - 1] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{name}");
            }
        }
    }

    #[test]
    fn column_packing_equals_row_packing_of_the_transpose() {
        let (k, n) = (9, 21);
        let b = rand(k * n, 3); // [k × n]
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // [n × k]
        let panels = n.div_ceil(NR);
        let (mut x, mut y) = (vec![7.0; panels * NR * k], vec![7.0; panels * NR * k]);
        pack_b_cols(&b, n, 0, k, n, &mut x);
        pack_b_rows(&bt, k, 0, n, 0, k, &mut y);
        assert_eq!(x, y);
    }
}
