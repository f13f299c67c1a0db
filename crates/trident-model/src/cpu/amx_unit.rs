//! The AMX tile unit itself, shared by the bf16 (`kernel_amx.rs`) and int8
//! (`kernel_amx_int8.rs`) kernels: whether this process may use it (CPU features, Linux's
//! permission for the tile state), its configuration, the 2 × 2-tile block loop both kernels
//! run, and its products' software model (`TRIDENT_AMX_EMULATE=1`), which `tile_check.rs`
//! holds the hardware to before the kernels are trusted.

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of a tile.
pub const TM: usize = 16;
/// Columns of a `C` tile.
pub const TN: usize = 16;

/// 64 bytes: one tile row, cache-line aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Line(pub [u16; 32]);

/// Whether the CPU reports AMX-TILE, AMX-BF16 and AVX512-BF16 (its conversions pack the
/// operands) and Linux granted the tile data state. Asked once.
pub(super) fn hardware() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        cpu_has_amx_bf16()
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && request_tile_permission()
    })
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

/// Other systems: AMX is left alone (their permission models are not handled here).
#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// Linux hands out the tile registers' 8 KiB of state only on request; a refusal (old kernel,
/// a hypervisor hiding the state) leaves the other kernels in charge.
#[cfg(target_os = "linux")]
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

/// The 2 × 2-tile block loop of both AMX kernels (`$op`: `tdpbf16ps` or `tdpbusd`): zero the C
/// tiles (tmm0 rows 0–15 × cols 0–15, tmm1 × cols 16–31, tmm2/tmm3 rows 16–31), then `kt`
/// steps of two `A` tile loads (row groups `a0`, `a1`), two `B` tile loads (panels `b0`, `b1`)
/// and four products, then store the C tiles at `cp`, `stride` bytes a row. Each operand is a
/// pointer to `kt` consecutive tiles (`Line`s, 16 a tile). Expands to unsafe operations: the
/// caller has configured the tiles and owns the memory.
macro_rules! tile_block {
    ($op:literal, $kt:expr, ($a0:expr, $a1:expr), ($b0:expr, $b1:expr), $cp:expr, $stride:expr) => {{
        ::std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let (mut a0, mut a1, mut b0, mut b1) = ($a0, $a1, $b0, $b1);
        for _ in 0..$kt {
            ::std::arch::asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                concat!($op, " tmm0, tmm4, tmm6"),
                "tileloadd tmm7, [{b1} + {s}*1]",
                concat!($op, " tmm2, tmm5, tmm6"),
                concat!($op, " tmm1, tmm4, tmm7"),
                concat!($op, " tmm3, tmm5, tmm7"),
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
        let (cp, stride): (*mut u8, usize) = ($cp as *mut u8, $stride);
        ::std::arch::asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c = in(reg) cp,
            c1 = in(reg) cp.add(TN * 4),
            c2 = in(reg) cp.add(TM * stride),
            c3 = in(reg) cp.add(TM * stride + TN * 4),
            s = in(reg) stride,
            options(nostack),
        );
    }};
}
pub(super) use tile_block;

/// Whether the tile products run in software ([`emulated_block`]): `TRIDENT_AMX_EMULATE=1` on a
/// CPU with the AVX-512 (F, BW, BF16) the packers use. For tests of everything around the tile
/// unit — packing, block loops, zero points, scaling — on machines without AMX (scripts/test.sh
/// runs the model tests once more so); far slower than the hardware, never for serving.
pub fn emulated() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("TRIDENT_AMX_EMULATE").is_ok_and(|v| v == "1")
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
    })
}

/// The tile product an [`emulated_block`] computes.
#[derive(Clone, Copy)]
pub(super) enum TileOp {
    /// `TDPBF16PS`: f32 `C` += pairs of bf16 products, added in order.
    Bf16,
    /// `TDPBUSD`: i32 `C` += quads of u8 (`A`) × i8 (`B`) products (wrapping).
    U8I8,
}

/// [`tile_block!`] in software, element by element as the instructions define them (bf16
/// products are exact in f32; denormals are not flushed, which the hardware does).
///
/// # Safety
/// As [`tile_block!`]: `kt` tiles at each operand, 32 rows at `cp`, `stride` bytes apart.
pub(super) unsafe fn emulated_block(
    op: TileOp,
    kt: usize,
    a: (*const Line, *const Line),
    b: (*const Line, *const Line),
    cp: *mut u8,
    stride: usize,
) {
    // The tiles' elements, widened once per tile pair.
    fn elements<T: Copy + Default, const N: usize>(
        tile: &[Line; TM],
        f: impl Fn(&Line, usize) -> T,
    ) -> [[T; N]; TM] {
        std::array::from_fn(|r| std::array::from_fn(|i| f(&tile[r], i)))
    }
    let bf16 = |l: &Line, i: usize| f32::from_bits((l.0[i] as u32) << 16);
    let byte = |l: &Line, i: usize| (l.0[i / 2] >> (8 * (i % 2))) as u8;
    // tmm0 = A0·B0, tmm1 = A0·B1, tmm2 = A1·B0, tmm3 = A1·B1, as tile_block! orders them.
    let mut acc = [[[0u32; TN]; TM]; 4];
    for t in 0..kt {
        for (q, acc) in acc.iter_mut().enumerate() {
            // SAFETY: each operand holds kt tiles of TM lines (caller).
            let (at, bt) = unsafe {
                let tile = |p: *const Line| &*(p.add(t * TM) as *const [Line; TM]);
                (tile(if q < 2 { a.0 } else { a.1 }), tile(if q % 2 == 0 { b.0 } else { b.1 }))
            };
            match op {
                TileOp::Bf16 => {
                    let (x, y) = (elements::<f32, 32>(at, bf16), elements::<f32, 32>(bt, bf16));
                    for (row, x) in acc.iter_mut().zip(&x) {
                        for (n, c) in row.iter_mut().enumerate() {
                            let mut v = f32::from_bits(*c);
                            for (k, y) in y.iter().enumerate() {
                                v += x[2 * k] * y[2 * n];
                                v += x[2 * k + 1] * y[2 * n + 1];
                            }
                            *c = v.to_bits();
                        }
                    }
                }
                TileOp::U8I8 => {
                    let x = elements::<i32, 64>(at, |l, i| byte(l, i) as i32);
                    let y = elements::<i32, 64>(bt, |l, i| byte(l, i) as i8 as i32);
                    for (row, x) in acc.iter_mut().zip(&x) {
                        for (n, c) in row.iter_mut().enumerate() {
                            let mut v = *c as i32;
                            for (k, y) in y.iter().enumerate() {
                                for e in 0..4 {
                                    v = v.wrapping_add(x[4 * k + e] * y[4 * n + e]);
                                }
                            }
                            *c = v as u32;
                        }
                    }
                }
            }
        }
    }
    for (q, acc) in acc.iter().enumerate() {
        for (m, row) in acc.iter().enumerate() {
            let at = (q / 2 * TM + m) * stride + q % 2 * TN * 4;
            // SAFETY: 32 rows of 32 four-byte values at `stride` (caller).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr() as *const u8, cp.add(at), TN * 4) };
        }
    }
}

/// Loads the tile configuration on this thread; pair with [`release`].
///
/// # Safety
/// [`hardware`] holds, or the products are [`emulated`].
pub unsafe fn configure() {
    if emulated() {
        return;
    }
    // SAFETY: the CPU has AMX and the process holds the tile permission (caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
}

/// Returns the tile state to its initial state (so context switches stop saving it).
///
/// # Safety
/// [`hardware`] holds, or the products are [`emulated`].
pub unsafe fn release() {
    if emulated() {
        return;
    }
    // SAFETY: as configure.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
