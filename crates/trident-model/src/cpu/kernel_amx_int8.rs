//! The int8 GEMM on AMX-INT8: `C = A·Wᵀ` with `W` quantised once at load per output channel
//! (symmetric: `q = round(w / s_j)`, `s_j = max|W[j]| / 127`) and `A` per row, i.e. per token,
//! as it is packed (`s_i = max|A[i]| / 127`). `TDPBSSD` sums the int8 products exactly in i32;
//! each 32 × 32 block is then scaled back, `C[i][j] = acc · s_i · s_j`. Per-token activation
//! scales follow each token's own range, where ONNX Runtime's dynamic quantisation takes one
//! scale for the whole tensor.
//!
//! Tiles as in `kernel_amx.rs` (16 rows × 64 bytes, same configuration), but an `A` tile row
//! holds 64 int8 features and a `B` tile row holds 16 column *quads* (row `r`, column `c`:
//! `W[j][4r..4r + 4]`).

use super::kernel_amx::{tile_block, Line, Strided, TM, TN};

/// Input features per tile row (64 bytes of int8).
pub const TK: usize = 64;

/// Whether this process may run the int8 path: everything [`super::kernel_amx::available`]
/// needs (its attention stays on AMX-BF16) and AMX-INT8.
pub fn available() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID.(7,0).EDX bit 25: AMX-INT8.
    super::kernel_amx::available() && __cpuid_count(7, 0).edx & (1 << 25) != 0
}

impl Line {
    fn bytes_mut(&mut self) -> &mut [i8; 64] {
        // SAFETY: 64 bytes either way; i8 has no alignment or validity requirement.
        unsafe { &mut *(self.0.as_mut_ptr() as *mut [i8; 64]) }
    }
}

/// `W` (`[n × k]`) quantised per row to int8 in tile order (16-column panels, `k/64` tiles each,
/// `n` padded to 32 columns and `k` to 64 features with zeros), and its per-row scales.
#[derive(Default)]
pub struct AmxI8Weight {
    tiles: Vec<Line>,
    /// `s_j` per output column, zero past `n` (padded to the panels).
    scale: Vec<f32>,
    pub n: usize,
    pub k: usize,
    kt: usize,
}

impl AmxI8Weight {
    /// Quantises row-major `w` (`[n × k]`), panels in parallel.
    pub fn quantize(n: usize, k: usize, w: &[f32]) -> AmxI8Weight {
        use rayon::prelude::*;
        assert!(w.len() >= n * k, "quantize source");
        let (kt, panels) = (k.div_ceil(TK), n.div_ceil(2 * TN) * 2);
        let mut scale = vec![0f32; panels * TN];
        scale[..n].par_iter_mut().enumerate().for_each(|(j, s)| {
            *s = w[j * k..(j + 1) * k].iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        });
        let mut tiles = vec![Line::default(); panels * kt * TM];
        tiles.par_chunks_mut(kt * TM).enumerate().for_each(|(p, panel)| {
            for (t, tile) in panel.chunks_exact_mut(TM).enumerate() {
                for (r, line) in tile.iter_mut().enumerate() {
                    let bytes = line.bytes_mut();
                    for c in 0..TN {
                        let j = p * TN + c;
                        for e in 0..4 {
                            let kk = t * TK + 4 * r + e;
                            bytes[4 * c + e] = if j < n && kk < k && scale[j] > 0.0 {
                                (w[j * k + kk] / scale[j]).round_ties_even().clamp(-127.0, 127.0)
                                    as i8
                            } else {
                                0
                            };
                        }
                    }
                }
            }
        });
        AmxI8Weight { tiles, scale, n, k, kt }
    }

    /// Tile `t` (of 64 input features) of panel `p`.
    fn tile(&self, p: usize, t: usize) -> *const Line {
        self.tiles[(p * self.kt + t) * TM..].as_ptr()
    }

    /// Tiles of 64 input features.
    pub fn k_tiles(&self) -> usize {
        self.kt
    }
}

/// Lines [`pack_a`] writes for `rows` rows of `k` features.
pub fn a_lines(rows: usize, k: usize) -> usize {
    rows.div_ceil(2 * TM) * 2 * TM * k.div_ceil(TK)
}

/// Quantises rows `0..rows`, columns `0..k` of `src` per row into int8 `A` tiles (`dst[g][t]`:
/// row group `g` of 16 rows, feature tile `t` of 64) and their scales into `scales[i]`. Rows
/// past `rows` (up to an even number of groups) and features past `k` are zero.
pub fn pack_a(src: Strided, rows: usize, k: usize, dst: &mut [Line], scales: &mut [f32]) {
    assert!(rows == 0 || k == 0 || src.fits(rows, k), "pack_a source");
    assert!(dst.len() >= a_lines(rows, k), "pack_a destination");
    assert!(scales.len() >= rows.div_ceil(2 * TM) * 2 * TM, "pack_a scales");
    // SAFETY: available() checked AVX-512 (this runs only on the AMX path).
    unsafe { pack_a_avx512(src, rows, k, dst, scales) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn pack_a_avx512(src: Strided, rows: usize, k: usize, dst: &mut [Line], scales: &mut [f32]) {
    use std::arch::x86_64::*;
    let (groups, kt) = (rows.div_ceil(2 * TM) * 2, k.div_ceil(TK));
    for (i, scale) in scales.iter_mut().enumerate().take(groups * TM) {
        let amax = if i < rows {
            (0..kt).fold(0f32, |m, t| {
                let run = src.run::<64>(i, t * TK, rows, k);
                // SAFETY: 64 floats, four unaligned loads.
                m.max(unsafe {
                    let p = run.as_ptr();
                    let a = _mm512_max_ps(
                        _mm512_abs_ps(_mm512_loadu_ps(p)),
                        _mm512_abs_ps(_mm512_loadu_ps(p.add(16))),
                    );
                    let b = _mm512_max_ps(
                        _mm512_abs_ps(_mm512_loadu_ps(p.add(32))),
                        _mm512_abs_ps(_mm512_loadu_ps(p.add(48))),
                    );
                    _mm512_reduce_max_ps(_mm512_max_ps(a, b))
                })
            })
        } else {
            0.0
        };
        *scale = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let (g, r) = (i / TM, i % TM);
        for t in 0..kt {
            let run = src.run::<64>(i, t * TK, rows, k);
            let line = &mut dst[(g * kt + t) * TM + r];
            // SAFETY: 64 floats in, 4 × 16 bytes out; |x · inv| ≤ 127 (plus rounding), and the
            // conversion saturates anyway. Rounding is the MXCSR default, to nearest even.
            unsafe {
                let s = _mm512_set1_ps(inv);
                let out = line.bytes_mut().as_mut_ptr() as *mut __m128i;
                for q in 0..4 {
                    let x = _mm512_mul_ps(_mm512_loadu_ps(run.as_ptr().add(16 * q)), s);
                    _mm_storeu_si128(out.add(q), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(x)));
                }
            }
        }
    }
}

/// 32 × 32 i32 sums, as the tiles store them.
#[repr(C, align(64))]
struct Acc([[i32; 2 * TN]; 2 * TM]);

/// One 32 × 32 block of `C` over `kt` feature tiles: `A` tiles of two row groups (`a0`, `a1`),
/// `B` tiles of panels `p`, `p + 1` of `w`; `sa` holds the 32 rows' scales. Overwrites `rows`
/// × `cols` (≤ 32 each) of `C` with the scaled sums.
///
/// # Safety
/// `kernel_amx::configure` ran on this thread; `c` is valid for `rows` rows of `cols` values at
/// stride `ldc`; the tiles exist; `sa` has 32 values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block(
    kt: usize,
    (a0, a1): (*const Line, *const Line),
    (w, p): (&AmxI8Weight, usize),
    sa: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = std::mem::MaybeUninit::<Acc>::uninit();
    let cp = acc.as_mut_ptr() as *mut i32;
    let stride = 2 * TN * 4;
    // SAFETY: configured tiles; cp points at 32 rows of 32 i32 at `stride` bytes.
    unsafe {
        tile_block!("tdpbssd", kt, (a0, a1), (w.tile(p, 0), w.tile(p + 1, 0)), cp, stride);
        let acc = acc.assume_init_ref();
        dequantize(acc, sa, &w.scale[p * TN..p * TN + 2 * TN], c, ldc, rows, cols);
    }
}

/// `C[i][j] = acc[i][j] · sa[i] · sw[j]` for the block's `rows × cols`.
#[target_feature(enable = "avx512f")]
unsafe fn dequantize(
    acc: &Acc,
    sa: &[f32],
    sw: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: sw has 32 values; c is valid for rows × cols at stride ldc (caller); the masks
    // keep the stores inside cols.
    unsafe {
        let sw = [_mm512_loadu_ps(sw.as_ptr()), _mm512_loadu_ps(sw.as_ptr().add(TN))];
        for (i, row) in acc.0.iter().enumerate().take(rows) {
            let s = _mm512_set1_ps(sa[i]);
            for (h, sw) in sw.iter().enumerate() {
                let n = cols.saturating_sub(h * TN).min(TN);
                if n == 0 {
                    break;
                }
                let v = _mm512_cvtepi32_ps(_mm512_loadu_si512(row.as_ptr().add(h * TN) as _));
                let v = _mm512_mul_ps(_mm512_mul_ps(v, *sw), s);
                _mm512_mask_storeu_ps(c.add(i * ldc + h * TN), ((1u32 << n) - 1) as u16, v);
            }
        }
    }
}
