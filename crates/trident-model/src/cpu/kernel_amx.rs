//! The bf16 GEMM on AMX (Intel Sapphire Rapids and later): `C = A·Wᵀ` with `A` rounded to bf16
//! as it is packed, `W` packed to bf16 once at load, products summed in f32 by the tile unit.
//!
//! Tile shapes: every tile register is 16 rows × 64 bytes. A `C` tile is 16 × 16 f32; an `A`
//! tile is 16 rows × 32 bf16 (32 input features); a `B` tile is 16 rows of 16 column *pairs*
//! ("VNNI" order: row `r`, column `j` holds `W[j][2r]`, `W[j][2r+1]`). A block of `C` is 2 × 2
//! tiles (32 × 32), so each step loads two `A` and two `B` tiles for four `TDPBF16PS`.
//!
//! Linux hands out the tile registers' 8 KiB of state only on request (`arch_prctl
//! ARCH_REQ_XCOMP_PERM`); [`available`] makes it once per process and a refusal (old kernel,
//! a hypervisor hiding the state) leaves the other kernels in charge.

use std::arch::asm;
use std::sync::OnceLock;

/// Input features per tile row (64 bytes of bf16).
pub const TK: usize = 32;
/// Rows of a tile.
pub const TM: usize = 16;
/// Columns of a `C` tile.
pub const TN: usize = 16;

/// 64 bytes: one tile row, cache-line aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Line(pub [u16; 32]);

/// Whether this process may run AMX-BF16: the CPU reports AMX-TILE and AMX-BF16 and Linux
/// granted the tile data state. Asked once.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx_bf16() && request_tile_permission())
}

fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::__cpuid_count;
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    // EDX bit 22: AMX-BF16, bit 24: AMX-TILE.
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!("AMX present but Linux refused the tile state ({e}); using AVX-512");
    }
    r == 0
}

/// f32 → bf16, rounding to nearest even; NaN stays NaN. Branch-free, so loops vectorise.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// A linear layer's weight `[n × k]` in tile order: for each 16-column panel, its `k/32` tiles
/// one after the other (so a block of input features of one panel is contiguous). `n` is padded
/// to 32 columns and `k` to 32 features, with zeros.
pub struct AmxWeight {
    tiles: Vec<Line>,
    pub n: usize,
    pub k: usize,
    kt: usize,
}

impl AmxWeight {
    /// Packs `w` (`[n × k]` row-major, values given as bf16 bits by `get`).
    pub fn pack(n: usize, k: usize, get: impl Fn(usize) -> u16 + Sync) -> AmxWeight {
        use rayon::prelude::*;
        let kt = k.div_ceil(TK);
        let panels = n.div_ceil(2 * TN) * 2;
        let mut tiles = vec![Line::default(); panels * kt * TM];
        tiles.par_chunks_mut(kt * TM).enumerate().for_each(|(p, panel)| {
            for (t, tile) in panel.chunks_exact_mut(TM).enumerate() {
                for (r, line) in tile.iter_mut().enumerate() {
                    for c in 0..TN {
                        let j = p * TN + c;
                        for e in 0..2 {
                            let kk = t * TK + 2 * r + e;
                            line.0[2 * c + e] = if j < n && kk < k { get(j * k + kk) } else { 0 };
                        }
                    }
                }
            }
        });
        AmxWeight { tiles, n, k, kt }
    }

    /// Tile `t` (of 32 input features) of panel `p`.
    fn tile(&self, p: usize, t: usize) -> *const Line {
        self.tiles[(p * self.kt + t) * TM..].as_ptr()
    }
}

/// Packs rows `r0..r0+rows` of `a` (`[· × k]` f32), features `t0·32..(t0+kt)·32`, as bf16 `A`
/// tiles: `dst[g][t]` is the tile of row group `g` (16 rows) and feature tile `t`. Rows past
/// `rows` (up to an even number of groups) and features past `k` are zero.
pub fn pack_a(a: &[f32], k: usize, r0: usize, rows: usize, t0: usize, kt: usize, dst: &mut [Line]) {
    assert!(a.len() >= (r0 + rows) * k && dst.len() >= rows.div_ceil(2 * TM) * 2 * TM * kt);
    // SAFETY: AMX CPUs have AVX-512F and BW (this runs only where `available()` held).
    unsafe { pack_a_avx512(a, k, r0, rows, t0, kt, dst) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn pack_a_avx512(
    a: &[f32],
    k: usize,
    r0: usize,
    rows: usize,
    t0: usize,
    kt: usize,
    dst: &mut [Line],
) {
    let groups = rows.div_ceil(2 * TM) * 2;
    for g in 0..groups {
        for i in 0..TM {
            let r = g * TM + i;
            let src = if r < rows { Some(&a[(r0 + r) * k..(r0 + r + 1) * k]) } else { None };
            for t in 0..kt {
                let line = &mut dst[(g * kt + t) * TM + i].0;
                let c0 = (t0 + t) * TK;
                match src {
                    Some(row) if c0 + TK <= k => {
                        let src: &[f32; 32] = row[c0..c0 + TK].try_into().expect("32");
                        for (d, &s) in line.iter_mut().zip(src) {
                            *d = bf16_bits(s);
                        }
                    }
                    Some(row) => {
                        for (c, d) in line.iter_mut().enumerate() {
                            *d = row.get(c0 + c).map_or(0, |&s| bf16_bits(s));
                        }
                    }
                    None => *line = [0; 32],
                }
            }
        }
    }
}

/// The tile configuration: palette 1, tiles 0–7 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = TM as u8; // rows
        t += 1;
    }
    TileConfig(c)
};

/// Loads the tile configuration on this thread; pair with [`release`].
///
/// # Safety
/// [`available`] must have returned true.
pub unsafe fn configure() {
    // SAFETY: the CPU has AMX and the process holds the tile permission (caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tile state to its initial state (so context switches stop saving it).
///
/// # Safety
/// [`available`] must have returned true.
pub unsafe fn release() {
    // SAFETY: as configure.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// One 32 × 32 block of `C` over `kt` feature tiles: `A` tiles of two row groups (`a0`, `a1`:
/// `kt` consecutive tiles each), `B` tiles of two panels of `w` from feature tile `t0`. Adds to
/// `C` when `accumulate`, else overwrites it. `rows` × `cols` (≤ 32 each) of `C` are written.
///
/// # Safety
/// [`configure`] ran on this thread; `c` is valid for `rows` rows of `cols` values at stride
/// `ldc`; the tiles exist.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block(
    kt: usize,
    (a0, a1): (*const Line, *const Line),
    (w, p, t0): (&AmxWeight, usize, usize),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let full = rows == 2 * TM && cols == 2 * TN;
    // Clipped blocks go through a zeroed scratch block (only they: zeroing 4 KiB per block
    // would cost ~5 %).
    let mut scratch = if full { None } else { Some([[0f32; 2 * TN]; 2 * TM]) };
    let (cp, stride) = match &mut scratch {
        None => (c, ldc * 4),
        Some(scratch) => {
            if accumulate {
                for (i, row) in scratch.iter_mut().enumerate().take(rows) {
                    // SAFETY: row i of the valid part of C.
                    unsafe {
                        std::ptr::copy_nonoverlapping(c.add(i * ldc), row.as_mut_ptr(), cols)
                    };
                }
            }
            (scratch.as_mut_ptr() as *mut f32, 2 * TN * 4)
        }
    };
    // C tiles: tmm0 rows 0–15 × cols 0–15, tmm1 × cols 16–31, tmm2/tmm3 rows 16–31.
    // SAFETY: configured tiles; cp points at 32 rows of 32 floats at `stride` bytes.
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c = in(reg) cp,
                c1 = in(reg) cp.add(TN),
                c2 = in(reg) (cp as *mut u8).add(TM * stride),
                c3 = in(reg) (cp as *mut u8).add(TM * stride + TN * 4),
                s = in(reg) stride,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        let (mut b0, mut b1) = (w.tile(p, t0), w.tile(p + 1, t0));
        let (mut a0, mut a1) = (a0, a1);
        for _ in 0..kt {
            asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
            a0 = a0.add(TM);
            a1 = a1.add(TM);
            b0 = b0.add(TM);
            b1 = b1.add(TM);
        }
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c = in(reg) cp,
            c1 = in(reg) cp.add(TN),
            c2 = in(reg) (cp as *mut u8).add(TM * stride),
            c3 = in(reg) (cp as *mut u8).add(TM * stride + TN * 4),
            s = in(reg) stride,
            options(nostack),
        );
        if let Some(scratch) = &scratch {
            for (i, row) in scratch.iter().enumerate().take(rows) {
                std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * ldc), cols);
            }
        }
    }
}
