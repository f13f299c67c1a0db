//! The int8 GEMM on AMX-INT8: `C = A·Wᵀ` with `W` quantised once at load per output channel
//! and `A` per row, i.e. per token, as it is packed, unsigned with a zero point (`quant.rs`).
//! `TDPBUSD` sums the u8 × i8 products exactly in i32; each 32 × 32 block is then corrected for
//! the zero points and scaled back, `C[i][j] = (acc − z_i·Σq_w[j]) · s_i · s_j`. Per-token
//! activation codes follow each token's own range, where ONNX Runtime's dynamic quantisation
//! takes one scale for the whole tensor.
//!
//! Tiles as in `amx_unit.rs` (16 rows × 64 bytes, same configuration), but an `A` tile row
//! holds 64 u8 features and a `B` tile row holds 16 column *quads* (row `r`, column `c`:
//! `W[j][4r..4r + 4]`).

use super::amx_unit::{emulated, emulated_block, tile_block, Line, TileOp, TM, TN};
use super::kernel_amx::Strided;
use super::quant::{self, HeldOut, QuantizedRows, RowQ};
use super::tile_check;

/// Input features per tile row (64 bytes of int8).
pub const TK: usize = 64;

/// Whether this process may run the int8 path: everything [`super::kernel_amx::available`]
/// needs (its attention stays on AMX-BF16) and AMX-INT8, whose products agree with their
/// definition (`tile_check.rs`).
pub fn available() -> bool {
    super::kernel_amx::available()
        // SAFETY: AMX-BF16's hardware is available (not emulated) and has AMX-INT8.
        && (emulated() || has_amx_int8() && unsafe { tile_check::hardware_agrees(TileOp::U8I8) })
}

/// Whether the CPU reports AMX-INT8 (CPUID.(7,0).EDX bit 25).
pub(super) fn has_amx_int8() -> bool {
    std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0
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
    /// `Σ_k q[j][k]` per output column (the zero points' correction), zero past `n`.
    colsum: Vec<i32>,
    /// `1 / f_k` per input feature when the weights were smoothed (`smooth.rs`; padded to the
    /// tiles with zeros), empty otherwise: the activations are divided as they are packed.
    smooth: Vec<f32>,
    pub n: usize,
    pub k: usize,
    kt: usize,
}

impl AmxI8Weight {
    /// Quantises row-major `w` (`[n × k]`) as [`QuantizedRows`] does and packs it in tile order,
    /// panels in parallel.
    pub fn quantize(n: usize, k: usize, w: &[f32], factors: Option<&[f32]>) -> AmxI8Weight {
        Self::pack(&QuantizedRows::new(n, k, w, factors))
    }

    pub fn pack(src: &QuantizedRows) -> AmxI8Weight {
        use rayon::prelude::*;
        let (n, k) = (src.n, src.k);
        let (kt, panels) = (k.div_ceil(TK), n.div_ceil(2 * TN) * 2);
        let (mut scale, mut colsum) = (src.scale.clone(), src.colsum.clone());
        scale.resize(panels * TN, 0.0);
        colsum.resize(panels * TN, 0);
        let mut smooth = src.smooth.clone();
        if !smooth.is_empty() {
            smooth.resize(kt * TK, 0.0);
        }
        let mut tiles = vec![Line::default(); panels * kt * TM];
        tiles.par_chunks_mut(kt * TM).enumerate().for_each(|(p, panel)| {
            for (t, tile) in panel.chunks_exact_mut(TM).enumerate() {
                for (r, line) in tile.iter_mut().enumerate() {
                    let bytes = line.bytes_mut();
                    for c in 0..TN {
                        let j = p * TN + c;
                        for e in 0..4 {
                            let kk = t * TK + 4 * r + e;
                            bytes[4 * c + e] = if j < n && kk < k { src.q[j * k + kk] } else { 0 };
                        }
                    }
                }
            }
        });
        AmxI8Weight { tiles, scale, colsum, smooth, n, k, kt }
    }

    /// Tile `t` (of 64 input features) of panel `p`.
    fn tile(&self, p: usize, t: usize) -> *const Line {
        self.tiles[(p * self.kt + t) * TM..].as_ptr()
    }

    /// Tiles of 64 input features.
    pub fn k_tiles(&self) -> usize {
        self.kt
    }

    /// What the activations are multiplied by per input feature as they are packed (empty: 1).
    pub fn smooth(&self) -> &[f32] {
        &self.smooth
    }
}

/// Lines [`pack_a`] writes for `rows` rows of `k` features.
pub fn a_lines(rows: usize, k: usize) -> usize {
    rows.div_ceil(2 * TM) * 2 * TM * k.div_ceil(TK)
}

/// Quantises rows `0..rows`, columns `0..k` of `src` per row into u8 `A` tiles (`dst[g][t]`:
/// row group `g` of 16 rows, feature tile `t` of 64) and their codes into `codes[i]`. Rows
/// past `rows` (up to an even number of groups) are zero; features past `k` hold the row's
/// zero point (their weights are zero). A non-empty `smooth` (`kt · 64` factors) multiplies
/// each row by it first.
pub fn pack_a(
    src: Strided,
    rows: usize,
    k: usize,
    smooth: &[f32],
    dst: &mut [Line],
    codes: &mut [RowQ],
) {
    assert!(rows == 0 || k == 0 || src.fits(rows, k), "pack_a source");
    assert!(dst.len() >= a_lines(rows, k), "pack_a destination");
    assert!(codes.len() >= rows.div_ceil(2 * TM) * 2 * TM, "pack_a codes");
    assert!(smooth.is_empty() || smooth.len() >= k.div_ceil(TK) * TK, "pack_a smoothing");
    // SAFETY: available() checked AVX-512 (this runs only on the AMX path).
    unsafe { pack_a_avx512(src, rows, k, smooth, dst, codes) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn pack_a_avx512(
    src: Strided,
    rows: usize,
    k: usize,
    smooth: &[f32],
    dst: &mut [Line],
    codes: &mut [RowQ],
) {
    let (groups, kt) = (rows.div_ceil(2 * TM) * 2, k.div_ceil(TK));
    let lines = dst.as_mut_ptr();
    for (i, code) in codes.iter_mut().enumerate().take(groups * TM) {
        // Rows past `rows`: an empty row, all zero codes.
        let at = (src.r0 + i) * src.ld + src.c0;
        let row = if i < rows { &src.data[at..at + k] } else { &[] };
        let (g, r) = (i / TM, i % TM);
        // SAFETY: AVX-512F/BW (this function's features); run t of row i goes to its own line,
        // inside dst (asserted by pack_a).
        *code = unsafe {
            quant::quantize_runs(row, smooth, kt, |t| lines.add((g * kt + t) * TM + r) as *mut u8)
        };
    }
}

/// 32 × 32 i32 sums, as the tiles store them.
#[repr(C, align(64))]
struct Acc([[i32; 2 * TN]; 2 * TM]);

/// One 32 × 32 block of `C` over `kt` feature tiles: `A` tiles of two row groups (`a0`, `a1`),
/// `B` tiles of panels `p`, `p + 1` of `w`; `qa` holds the 32 rows' codes, `xs` their held-out
/// activations (`HeldOut::gather`). Overwrites `rows` × `cols` (≤ 32 each) of `C` with the
/// corrected, scaled sums plus the held-out products.
///
/// # Safety
/// `amx_unit::configure` ran on this thread; `c` is valid for `rows` rows of `cols` values at
/// stride `ldc`; the tiles exist; `qa` has 32 values; `held` is `w`'s, or empty.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block(
    kt: usize,
    (a0, a1): (*const Line, *const Line),
    (w, p): (&AmxI8Weight, usize),
    qa: &[RowQ],
    (held, xs): (&HeldOut, &[f32]),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = std::mem::MaybeUninit::<Acc>::uninit();
    let cp = acc.as_mut_ptr() as *mut i32;
    let stride = 2 * TN * 4;
    // The block's 32 columns are half of a 64-column block of held-out weights.
    let (features, hw) = held.block(p * TN / 64);
    let hw = &hw[(p * TN % 64).min(hw.len())..];
    assert!(
        xs.len() >= rows * features && (features == 0 || hw.len() >= (features - 1) * 64 + 2 * TN)
    );
    // SAFETY: configured tiles; cp points at 32 rows of 32 i32 at `stride` bytes.
    unsafe {
        let b = (w.tile(p, 0), w.tile(p + 1, 0));
        if emulated() {
            emulated_block(TileOp::U8I8, kt, (a0, a1), b, cp as *mut u8, stride);
        } else {
            tile_block!("tdpbusd", kt, (a0, a1), (b.0, b.1), cp, stride);
        }
        let acc = acc.assume_init_ref();
        let span = p * TN..p * TN + 2 * TN;
        let held = (features, hw, xs);
        dequantize(acc, qa, (&w.scale[span.clone()], &w.colsum[span]), held, c, ldc, rows, cols);
    }
}

/// `C[i][j] = (acc[i][j] − z_i·colsum[j]) · s_i · sw[j]` for the block's `rows × cols` (the
/// correction in i32: |acc| ≤ 255 · 127 · k stays far inside it), then `xs[i][h] · hw[h][j]`
/// added for each held-out feature `h` in order where `xs[i][h]` is not zero, in registers
/// before the store: a pass of its own over `C` read it back from memory (the same operations
/// as `HeldOut::add_tile`, so the same bits).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dequantize(
    acc: &Acc,
    qa: &[RowQ],
    (sw, colsum): (&[f32], &[i32]),
    (features, hw, xs): (usize, &[f32], &[f32]),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: sw and colsum have 32 values, hw a row of 64 per feature from the block's first
    // column (block asserts); c is valid for rows × cols at stride ldc (caller); the masks keep
    // the stores inside cols.
    unsafe {
        let sw = [_mm512_loadu_ps(sw.as_ptr()), _mm512_loadu_ps(sw.as_ptr().add(TN))];
        let cs = [
            _mm512_loadu_si512(colsum.as_ptr() as _),
            _mm512_loadu_si512(colsum.as_ptr().add(TN) as _),
        ];
        let mask = |h: usize| ((1u32 << cols.saturating_sub(h * TN).min(TN)) - 1) as __mmask16;
        for (i, row) in acc.0.iter().enumerate().take(rows) {
            let (s, z) = (_mm512_set1_ps(qa[i].scale), _mm512_set1_epi32(qa[i].zp));
            // Both halves whatever `cols` (the sums, scales and weights past it exist): `y`
            // stays in registers (a masked store to the stack and its reload stalled).
            let mut y: [__m512; 2] = std::array::from_fn(|h| {
                let v = _mm512_loadu_si512(row.as_ptr().add(h * TN) as _);
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_mullo_epi32(z, cs[h])));
                _mm512_mul_ps(_mm512_mul_ps(v, sw[h]), s)
            });
            for f in 0..features {
                let w = std::array::from_fn(|h| _mm512_loadu_ps(hw.as_ptr().add(f * 64 + h * TN)));
                quant::add_held(&mut y, *xs.get_unchecked(i * features + f), &w);
            }
            for (h, &y) in y.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(i * ldc + h * TN), mask(h), y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm::matmul_amx_int8;
    use super::super::kernel_int8::assert_product_equals_portable;
    use super::*;

    /// The same codes, exact sums and f32 scaling and held-out adds as the portable int8
    /// kernel: its outputs bit for bit (and so the VNNI and AVX2 kernels').
    #[test]
    fn equals_the_portable_int8_kernel_bit_for_bit() {
        if !available() {
            println!("skipped: no AMX-INT8 here (TRIDENT_AMX_EMULATE=1 runs it in software)");
            return;
        }
        assert_product_equals_portable("AMX-INT8", |m, a, q, held, c, ldc| {
            let w = AmxI8Weight::pack(q);
            // SAFETY: AMX-INT8 is available; c is [m × ldc] (the helper's).
            unsafe { matmul_amx_int8(m, a, &w, held, c, ldc) }
        });
    }
}
