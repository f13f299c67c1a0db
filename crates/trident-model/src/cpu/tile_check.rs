//! The tile unit checked against its software model ([`emulated_block`]) before the AMX kernels
//! are trusted, once per process and tile product. Everything around the products — packing,
//! block loops, zero points, scaling — is tested against f64 references with the products
//! emulated, on any CPU with AVX512-BF16; this ties those tests to the hardware. The operands
//! make every product and sum exact in either arithmetic, so hardware and model must agree bit
//! for bit, and the C block's row stride is wider than the block, so a stray store shows too.
//! A disagreement (a tile-configuration or operand-order bug, a hypervisor mangling the tile
//! state) is logged as an error and leaves AVX-512 in charge instead of serving wrong vectors.

use std::sync::OnceLock;

use super::amx_unit::{configure, emulated_block, release, Line, TileOp, TM, TN};

/// Feature tiles per block: more than one, so the operand pointers' steps are checked too.
const KT: usize = 3;
/// Row stride of the C block, in 4-byte values: wider than its 32 columns.
const LDC: usize = 2 * TN + 8;
/// What C holds before the block is written: the stride's padding must keep it.
const SENTINEL: u32 = 0x7fc0_dead;

/// Two operands' first tiles (row groups of `A`, panels of `B`).
type Tiles = (*const Line, *const Line);

/// A tile-block runner with [`emulated_block`]'s contract.
pub(super) type Runner = unsafe fn(TileOp, usize, Tiles, Tiles, *mut u8, usize);

/// Two `A` row groups and two `B` panels of [`KT`] tiles each.
pub(super) struct Operands {
    pub a: [Vec<Line>; 2],
    pub b: [Vec<Line>; 2],
}

/// Deterministic operands for `op`: at bf16, integers in −8..=8 (every product and every sum of
/// `KT`·32 of them exact in f32); at u8 × i8, bytes over their whole range (sums far inside i32),
/// so a misread sign shows.
pub(super) fn operands(op: TileOp) -> Operands {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut tiles = || -> Vec<Line> {
        (0..KT * TM)
            .map(|_| {
                Line(std::array::from_fn(|_| match op {
                    TileOp::Bf16 => ((((next() % 17) as f32) - 8.0).to_bits() >> 16) as u16,
                    TileOp::U8I8 => next() as u16,
                }))
            })
            .collect()
    };
    Operands { a: [tiles(), tiles()], b: [tiles(), tiles()] }
}

/// Runs one block of `op` over `ops` with `run`: C as `[32 × LDC]` raw values.
pub(super) fn block(op: TileOp, ops: &Operands, run: Runner) -> Vec<u32> {
    let mut c = vec![SENTINEL; 2 * TM * LDC];
    let (a, b) = ((ops.a[0].as_ptr(), ops.a[1].as_ptr()), (ops.b[0].as_ptr(), ops.b[1].as_ptr()));
    // SAFETY: KT tiles at each operand; c holds 32 rows of LDC ≥ 32 four-byte values.
    unsafe { run(op, KT, a, b, c.as_mut_ptr() as *mut u8, LDC * 4) };
    c
}

/// `Ok` when `run` computes what the software model does; else the first differing value.
pub(super) fn compare(op: TileOp, run: Runner) -> Result<(), String> {
    let ops = operands(op);
    let (got, want) = (block(op, &ops, run), block(op, &ops, emulated_block));
    match got.iter().zip(&want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "C[{}][{}] is {:#010x}, its definition gives {:#010x}",
            i / LDC,
            i % LDC,
            got[i],
            want[i]
        )),
    }
}

/// Whether the tile unit computes `op` as defined (checked once, then remembered).
///
/// # Safety
/// The CPU has AMX with `op`'s product and Linux granted the tile state; not emulated. The
/// first call releases this thread's tiles: it comes before any kernel configures them (the
/// kernels run only once `available` has said yes).
pub(super) unsafe fn hardware_agrees(op: TileOp) -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    static INT8: OnceLock<bool> = OnceLock::new();
    let (cell, name) = match op {
        TileOp::Bf16 => (&BF16, "AMX-BF16 (TDPBF16PS)"),
        TileOp::U8I8 => (&INT8, "AMX-INT8 (TDPBUSD)"),
    };
    *cell.get_or_init(|| {
        // SAFETY: as this function's.
        match unsafe { on_hardware(op) } {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    "{name} tile products disagree with their definition ({e}): not using them"
                );
                false
            }
        }
    })
}

/// [`compare`] for the tile unit's own block, the tiles configured around it.
///
/// # Safety
/// As [`hardware_agrees`].
unsafe fn on_hardware(op: TileOp) -> Result<(), String> {
    // SAFETY: AMX with op's product and its permission (caller).
    unsafe {
        configure();
        let r = compare(op, hardware);
        release();
        r
    }
}

/// The tile unit's own block.
///
/// # Safety
/// As [`emulated_block`], and the tiles are configured on this thread.
unsafe fn hardware(op: TileOp, kt: usize, a: Tiles, b: Tiles, cp: *mut u8, stride: usize) {
    use super::amx_unit::tile_block;
    // SAFETY: as the caller's.
    unsafe {
        match op {
            TileOp::Bf16 => tile_block!("tdpbf16ps", kt, (a.0, a.1), (b.0, b.1), cp, stride),
            TileOp::U8I8 => tile_block!("tdpbusd", kt, (a.0, a.1), (b.0, b.1), cp, stride),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element `i` of a tile line as the instruction reads it: bf16 or (u8 of `A`, i8 of `B`).
    fn element(op: TileOp, l: &Line, i: usize, is_b: bool) -> f64 {
        match op {
            TileOp::Bf16 => f32::from_bits((l.0[i] as u32) << 16) as f64,
            TileOp::U8I8 => {
                let byte = (l.0[i / 2] >> (8 * (i % 2))) as u8;
                if is_b {
                    byte as i8 as f64
                } else {
                    byte as f64
                }
            }
        }
    }

    /// `C[row][col] = Σ_k A[row][k]·W[col][k]` in f64 from the tile layouts' definitions:
    /// `A` tile line `m` of group `g` holds row `16g + m`, features `t·K .. (t+1)·K`; `B` line
    /// `r` of panel `p` holds, for column `16p + n`, features `t·K + g·r + e` at `g·n + e`,
    /// `g` being the features a product group takes (2 bf16, 4 bytes).
    fn reference(op: TileOp, ops: &Operands) -> Vec<f64> {
        let group = match op {
            TileOp::Bf16 => 2,
            TileOp::U8I8 => 4,
        };
        let per_line = 16 * group;
        let mut c = vec![0.0; 2 * TM * 2 * TN];
        for row in 0..2 * TM {
            for col in 0..2 * TN {
                let mut sum = 0.0;
                for t in 0..KT {
                    let a = &ops.a[row / TM][t * TM + row % TM];
                    for k in 0..per_line {
                        let b = &ops.b[col / TN][t * TM + k / group];
                        let x = element(op, a, k, false);
                        sum += x * element(op, b, col % TN * group + k % group, true);
                    }
                }
                c[row * 2 * TN + col] = sum;
            }
        }
        c
    }

    /// The software model computes the instructions' definitions (exactly, on these operands)
    /// and writes nothing outside the block.
    #[test]
    fn the_model_matches_the_instructions_definitions() {
        for op in [TileOp::Bf16, TileOp::U8I8] {
            let ops = operands(op);
            let (c, want) = (block(op, &ops, emulated_block), reference(op, &ops));
            for row in 0..2 * TM {
                for col in 0..LDC {
                    let v = c[row * LDC + col];
                    if col >= 2 * TN {
                        assert_eq!(v, SENTINEL, "padding at {row},{col} written");
                        continue;
                    }
                    let got = match op {
                        TileOp::Bf16 => f32::from_bits(v) as f64,
                        TileOp::U8I8 => v as i32 as f64,
                    };
                    assert_eq!(got, want[row * 2 * TN + col], "C[{row}][{col}]");
                }
            }
            // Not trivially satisfied: the sums are neither zero nor all alike.
            assert!(want.iter().filter(|&&v| v != want[0]).count() > 900);
        }
    }

    /// The check fails, naming the value, on a runner that swaps the row groups or corrupts one
    /// value or writes into the padding.
    #[test]
    fn a_wrong_tile_unit_is_caught() {
        unsafe fn swapped(op: TileOp, kt: usize, a: Tiles, b: Tiles, cp: *mut u8, stride: usize) {
            // SAFETY: as the caller's.
            unsafe { emulated_block(op, kt, (a.1, a.0), b, cp, stride) }
        }
        unsafe fn one_off(op: TileOp, kt: usize, a: Tiles, b: Tiles, cp: *mut u8, stride: usize) {
            // SAFETY: as the caller's; row 5, column 7 lies in the block.
            unsafe {
                emulated_block(op, kt, a, b, cp, stride);
                *(cp.add(5 * stride + 7 * 4) as *mut u32) ^= 1;
            }
        }
        unsafe fn stray(op: TileOp, kt: usize, a: Tiles, b: Tiles, cp: *mut u8, stride: usize) {
            // SAFETY: as the caller's; the value after row 0's block lies in its stride.
            unsafe {
                emulated_block(op, kt, a, b, cp, stride);
                *(cp.add(2 * TN * 4) as *mut u32) = 0;
            }
        }
        for op in [TileOp::Bf16, TileOp::U8I8] {
            assert_eq!(compare(op, emulated_block), Ok(()));
            assert!(compare(op, swapped).is_err());
            let e = compare(op, one_off).unwrap_err();
            assert!(e.starts_with("C[5][7] is "), "{e}");
            let e = compare(op, stray).unwrap_err();
            assert!(e.starts_with(&format!("C[0][{}] is ", 2 * TN)), "{e}");
        }
    }

    /// On a CPU with AMX: the tile unit agrees with the model (the check the AMX kernels pass
    /// before they are used), reported with the first differing value.
    #[test]
    fn the_tile_unit_agrees_with_its_model() {
        use super::super::{amx_unit, kernel_amx_int8};
        if amx_unit::emulated() || !amx_unit::hardware() {
            println!("skipped: no AMX-BF16 here (the tile unit's own products cannot run)");
            return;
        }
        for (op, name) in [(TileOp::Bf16, "AMX-BF16"), (TileOp::U8I8, "AMX-INT8")] {
            if matches!(op, TileOp::U8I8) && !kernel_amx_int8::has_amx_int8() {
                println!("AMX-INT8 part skipped: this CPU has no AMX-INT8");
                continue;
            }
            // SAFETY: AMX with op's product and its permission; not emulated.
            assert_eq!(unsafe { on_hardware(op) }, Ok(()), "{name}");
        }
    }
}
