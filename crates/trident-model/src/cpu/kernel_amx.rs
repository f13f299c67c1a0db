//! The bf16 GEMM on AMX (Intel Sapphire Rapids and later): `C = A·Wᵀ` with `A` rounded to bf16
//! as it is packed, `W` packed to bf16 once at load, products summed in f32 by the tile unit.
//!
//! Tile shapes: every tile register is 16 rows × 64 bytes. A `C` tile is 16 × 16 f32; an `A`
//! tile is 16 rows × 32 bf16 (32 input features); a `B` tile is 16 rows of 16 column *pairs*
//! ("VNNI" order: row `r`, column `j` holds `W[j][2r]`, `W[j][2r+1]`). A block of `C` is 2 × 2
//! tiles (32 × 32), so each step loads two `A` and two `B` tiles for four `TDPBF16PS`.
//!
//! The tile unit itself — permission, configuration, block loop, software model — is
//! `amx_unit.rs`; [`available`] says whether this process uses it.

use std::sync::OnceLock;

use super::amx_unit::{emulated, emulated_block, hardware, tile_block, Line, TileOp, TM, TN};
use super::tile_check;

/// Input features per tile row (64 bytes of bf16).
pub const TK: usize = 32;

/// A window of a row-major f32 matrix: element `(r, c)` is `data[(r0 + r)·ld + c0 + c]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub r0: usize,
    pub c0: usize,
}

impl Strided<'_> {
    pub(super) fn fits(&self, rows: usize, cols: usize) -> bool {
        self.data.len() >= (self.r0 + rows - 1) * self.ld + self.c0 + cols
    }

    /// `N` values of row `r` from column `c`, zero outside `rows × cols`. (A scalar bf16
    /// conversion of the edges instead would, in a function with AVX512-BF16, become a libcall
    /// the Rust runtime lacks, `__truncsfbf2`; so edges are padded in f32 and converted whole.)
    #[inline(always)]
    pub(super) fn run<const N: usize>(
        &self,
        r: usize,
        c: usize,
        rows: usize,
        cols: usize,
    ) -> [f32; N] {
        let at = (self.r0 + r) * self.ld + self.c0 + c;
        if r < rows && c + N <= cols {
            self.data[at..at + N].try_into().expect("N")
        } else {
            std::array::from_fn(|e| if r < rows && c + e < cols { self.data[at + e] } else { 0.0 })
        }
    }
}

/// Whether this process may run AMX-BF16: `amx_unit::hardware`, and the tile unit's products
/// agree with their definition (`tile_check.rs`); or the products are emulated. Asked once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    // SAFETY: hardware() holds and the products are not emulated.
    *OK.get_or_init(|| {
        emulated() || hardware() && unsafe { tile_check::hardware_agrees(TileOp::Bf16) }
    })
}

/// f32 → bf16, rounding to nearest even; NaN stays NaN. Branch-free, so loops vectorise.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// A `B = Wᵀ` operand, `W` being `[n × k]` (a linear layer's weight, or attention's keys), in
/// tile order: for each 16-column panel, its `k/32` tiles one after the other. `n` is padded to
/// 32 columns and `k` to 32 features, with zeros.
#[derive(Default)]
pub struct AmxWeight {
    tiles: Vec<Line>,
    pub n: usize,
    pub k: usize,
    kt: usize,
}

impl AmxWeight {
    /// Packs `W` (`get(j, kk)` gives `W[j][kk]` as bf16 bits), panels in parallel.
    pub fn pack(n: usize, k: usize, get: impl Fn(usize, usize) -> u16 + Sync) -> AmxWeight {
        use rayon::prelude::*;
        let mut w = AmxWeight::default();
        let len = w.shape(n, k);
        w.tiles.resize(len, Line::default());
        w.tiles
            .par_chunks_mut(w.kt * TM)
            .enumerate()
            .for_each(|(p, panel)| fill(p, panel, n, k, &get));
        w
    }

    /// As [`AmxWeight::pack`] on this thread, reusing this buffer (grown, never shrunk), for
    /// `W[j][kk] = src(j, kk)` (attention's keys) or, `transposed`, `src(kk, j)` (its values).
    pub fn repack(&mut self, n: usize, k: usize, src: Strided, transposed: bool) {
        let (rows, cols) = if transposed { (k, n) } else { (n, k) };
        assert!(rows == 0 || cols == 0 || src.fits(rows, cols), "repack source");
        let len = self.shape(n, k);
        if self.tiles.len() < len {
            self.tiles.resize(len, Line::default());
        }
        // SAFETY: available() checked AVX512-BF16 (this runs only on the AMX path).
        unsafe {
            if transposed {
                self.repack_cols(n, k, src)
            } else {
                self.repack_rows(n, k, src)
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn repack_rows(&mut self, n: usize, k: usize, src: Strided) {
        let kt = self.kt;
        for (p, panel) in
            self.tiles.chunks_exact_mut(kt * TM).take(n.div_ceil(2 * TN) * 2).enumerate()
        {
            for t in 0..kt {
                let tile = &mut panel[t * TM..(t + 1) * TM];
                for c in 0..TN {
                    // Row j's 32 features of tile t: pair r goes to line r, column c.
                    let v = cvt32(&src.run::<32>(p * TN + c, t * TK, n, k), 1.0);
                    for (r, line) in tile.iter_mut().enumerate() {
                        line.0[2 * c] = v[2 * r];
                        line.0[2 * c + 1] = v[2 * r + 1];
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn repack_cols(&mut self, n: usize, k: usize, src: Strided) {
        let kt = self.kt;
        for (p, panel) in
            self.tiles.chunks_exact_mut(kt * TM).take(n.div_ceil(2 * TN) * 2).enumerate()
        {
            for (i, line) in panel.iter_mut().enumerate() {
                // Line r of tile t interleaves features 2r', 2r'+1 (r' = 16t + r) of 16 columns.
                let a = cvt16(&src.run::<16>(2 * i, p * TN, k, n));
                let b = cvt16(&src.run::<16>(2 * i + 1, p * TN, k, n));
                for c in 0..TN {
                    line.0[2 * c] = a[c];
                    line.0[2 * c + 1] = b[c];
                }
            }
        }
    }

    /// Sets the shape; returns the number of lines it needs.
    fn shape(&mut self, n: usize, k: usize) -> usize {
        (self.n, self.k, self.kt) = (n, k, k.div_ceil(TK));
        n.div_ceil(2 * TN) * 2 * self.kt * TM
    }

    /// Tile `t` (of 32 input features) of panel `p`.
    fn tile(&self, p: usize, t: usize) -> *const Line {
        self.tiles[(p * self.kt + t) * TM..].as_ptr()
    }
}

/// Panel `p` of an [`AmxWeight`]: row `r` of tile `t`, column `c` holds `W[j][2r']`,
/// `W[j][2r'+1]` for `j = 16p + c`, `r' = 16t + r`.
#[inline(always)]
fn fill(p: usize, panel: &mut [Line], n: usize, k: usize, get: &impl Fn(usize, usize) -> u16) {
    for (t, tile) in panel.chunks_exact_mut(TM).enumerate() {
        for (r, line) in tile.iter_mut().enumerate() {
            for c in 0..TN {
                let j = p * TN + c;
                for e in 0..2 {
                    let kk = t * TK + 2 * r + e;
                    line.0[2 * c + e] = if j < n && kk < k { get(j, kk) } else { 0 };
                }
            }
        }
    }
}

/// Lines [`pack_a`] writes for `rows` rows of `k` features.
pub fn a_lines(rows: usize, k: usize) -> usize {
    rows.div_ceil(2 * TM) * 2 * TM * k.div_ceil(TK)
}

/// Packs `scale ·` rows `0..rows`, columns `0..k` of `src` as bf16 `A` tiles: `dst[g][t]` is the
/// tile of row group `g` (16 rows) and feature tile `t` (32 features). Rows past `rows` (up to
/// an even number of groups) and features past `k` are zero.
pub fn pack_a(src: Strided, rows: usize, k: usize, scale: f32, dst: &mut [Line]) {
    assert!(rows == 0 || k == 0 || src.fits(rows, k), "pack_a source");
    assert!(dst.len() >= a_lines(rows, k), "pack_a destination");
    // SAFETY: available() checked AVX512-BF16 (this runs only on the AMX path).
    unsafe { pack_a_avx512(src, rows, k, scale, dst) }
}

#[target_feature(enable = "avx512f,avx512bf16")]
fn pack_a_avx512(src: Strided, rows: usize, k: usize, scale: f32, dst: &mut [Line]) {
    let (groups, kt) = (rows.div_ceil(2 * TM) * 2, k.div_ceil(TK));
    for g in 0..groups {
        for i in 0..TM {
            for t in 0..kt {
                let run = src.run::<32>(g * TM + i, t * TK, rows, k);
                dst[(g * kt + t) * TM + i].0 = cvt32(&run, scale);
            }
        }
    }
}

/// `scale · src` as bf16, rounded to nearest even by the CPU's own conversion (which, unlike
/// [`bf16_bits`], flushes subnormals to zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn cvt32(src: &[f32; 32], scale: f32) -> [u16; 32] {
    use std::arch::x86_64::*;
    // SAFETY: 32 floats in, 64 bytes out (unaligned loads and stores).
    unsafe {
        let s = _mm512_set1_ps(scale);
        let lo = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr()), s);
        let hi = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(16)), s);
        std::mem::transmute::<__m512bh, [u16; 32]>(_mm512_cvtne2ps_pbh(hi, lo))
    }
}

/// 16 floats as bf16 (as [`cvt32`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
fn cvt16(src: &[f32; 16]) -> [u16; 16] {
    use std::arch::x86_64::*;
    // SAFETY: 16 floats in, 32 bytes out.
    unsafe {
        std::mem::transmute::<__m256bh, [u16; 16]>(_mm512_cvtneps_pbh(_mm512_loadu_ps(
            src.as_ptr(),
        )))
    }
}

/// One 32 × 32 block of `C` over `kt` feature tiles: `A` tiles of two row groups (`a0`, `a1`:
/// `kt` consecutive tiles each), `B` tiles of panels `p`, `p + 1` of `w`. Overwrites `rows` ×
/// `cols` (≤ 32 each) of `C`.
///
/// # Safety
/// `amx_unit::configure` ran on this thread; `c` is valid for `rows` rows of `cols` values at
/// stride `ldc`; the tiles exist.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block(
    kt: usize,
    (a0, a1): (*const Line, *const Line),
    (w, p): (&AmxWeight, usize),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let full = rows == 2 * TM && cols == 2 * TN;
    // Clipped blocks go through a scratch block (only they: zeroing 4 KiB per block would cost
    // ~5 %).
    let mut scratch = if full { None } else { Some([[0f32; 2 * TN]; 2 * TM]) };
    let (cp, stride) = match &mut scratch {
        None => (c, ldc * 4),
        Some(scratch) => (scratch.as_mut_ptr() as *mut f32, 2 * TN * 4),
    };
    // SAFETY: configured tiles; cp points at 32 rows of 32 floats at `stride` bytes.
    unsafe {
        let b = (w.tile(p, 0), w.tile(p + 1, 0));
        if emulated() {
            emulated_block(TileOp::Bf16, kt, (a0, a1), b, cp as *mut u8, stride);
        } else {
            tile_block!("tdpbf16ps", kt, (a0, a1), (b.0, b.1), cp, stride);
        }
        if let Some(scratch) = &scratch {
            for (i, row) in scratch.iter().enumerate().take(rows) {
                std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * ldc), cols);
            }
        }
    }
}
