//! `C = A·Wᵀ` for the linear layers, on the micro-kernel of `kernel.rs`: PyTorch's `[out × in]`
//! weights are packed block by block (`KC` input features at a time) into `B` micro-panels shared
//! by all threads, and each thread packs its own block of `MC` activation rows, so every packed
//! value feeds many tiles from cache.

use std::cell::RefCell;

use rayon::prelude::*;

use super::isa::{isa, Isa};
use super::kernel::{block, pack_a, pack_b_rows_panel, Aligned, Element, MR, NR};
#[cfg(target_arch = "x86_64")]
use super::{amx_unit, kernel_amx, kernel_amx_int8};

/// Input features per packed block. Each block reads and writes every tile of `C` once, so fewer,
/// longer blocks mean less `C` traffic; 512 (a 32 KiB `B` micro-panel) measured ~6 % faster than
/// 256 on Zen 3 (`examples/gemm_bench.rs`).
pub(super) const KC: usize = 512;
/// Activation rows per work item (a multiple of `2·MR`, the AVX-512 tile's height): the packed
/// `A` block (`MC × KC`, 240 KiB) stays in L2 while the item walks its columns.
const MC: usize = 120;

thread_local! {
    static A_PACK: RefCell<Aligned> = RefCell::default();
    pub(super) static B_PACK: RefCell<Aligned> = RefCell::default();
}

/// Runs `f` on this thread's buffer in `key` (a fresh one if it is in use further up the stack,
/// as when rayon runs another job on a thread that waits inside a parallel loop).
pub fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Aligned>>,
    f: impl FnOnce(&mut Aligned) -> R,
) -> R {
    let mut f = Some(f);
    let r =
        key.with(|cell| cell.try_borrow_mut().ok().map(|mut b| (f.take().expect("once"))(&mut b)));
    match r {
        Some(r) => r,
        None => (f.take().expect("not run"))(&mut Aligned::default()),
    }
}

struct Out(*mut f32);
// SAFETY: work items write disjoint tiles of `C`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// The work items of a linear-layer GEMM `C[m × n]`: blocks of `MC` rows times chunks of
/// `NR`-column panels, enough items for every thread even when there are few rows.
struct Split {
    row_blocks: usize,
    col_chunks: usize,
    chunk: usize,
    m: usize,
    panels: usize,
}

fn split(m: usize, n: usize) -> Split {
    let panels = n.div_ceil(NR);
    let row_blocks = m.div_ceil(MC);
    let threads = rayon::current_num_threads();
    let col_chunks = (2 * threads).div_ceil(row_blocks).min(panels).max(1);
    // With AVX-512, even: its pairs of panels then never straddle two items.
    let pair = if isa() >= Isa::Avx512 { 2 } else { 1 };
    let chunk = panels.div_ceil(col_chunks).next_multiple_of(pair);
    Split { row_blocks, col_chunks: panels.div_ceil(chunk), chunk, m, panels }
}

impl Split {
    fn items(&self) -> usize {
        self.row_blocks * self.col_chunks
    }

    /// Item `i`'s first row and row count, and its range of panels.
    fn item(&self, i: usize) -> ((usize, usize), (usize, usize)) {
        let (rb, cc) = (i / self.col_chunks, i % self.col_chunks);
        let r0 = rb * MC;
        ((r0, MC.min(self.m - r0)), (cc * self.chunk, ((cc + 1) * self.chunk).min(self.panels)))
    }
}

/// `c[m × n] = a[m × k] · wᵀ` where `w` is `[n × k]`; `c` has row stride `ldc` (so a layer of
/// several parts can write each part into its column slice). Runs on the current rayon pool.
///
/// # Safety
/// `c` must be valid for `m` rows of `n` elements at stride `ldc` and must not alias `a` or `w`.
pub unsafe fn matmul_wt<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    w: &[T],
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: the caller's contract.
    unsafe { matmul_wt_widening(m, n, k, a, w, T::to_f32, c, ldc) }
}

/// [`matmul_wt`] for weights of any stored type, each widened by `widen` as it is packed.
///
/// # Safety
/// As for [`matmul_wt`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_wt_widening<S: Copy + Sync>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    w: &[S],
    widen: impl Fn(S) -> f32 + Copy + Sync,
    c: *mut f32,
    ldc: usize,
) {
    assert!(w.len() >= n * k, "matmul_wt operand sizes");
    let panels = n.div_ceil(NR);
    with_scratch(&B_PACK, |bbuf| {
        // SAFETY: the caller's contract.
        unsafe {
            gemm_blocks(m, n, k, a, c, ldc, |pc, kc, run| {
                let bp = bbuf.get(panels * kc * NR);
                pack_weight_block(w, n, k, pc, kc, bp, widen);
                run(bp)
            })
        }
    });
}

/// Packs input features `pc..pc + kc` of the `[n × k]` weight `w` as the `⌈n / NR⌉` `B`
/// micro-panels `dst` (`[kc][NR]` each, each value converted by `conv`), in parallel on the
/// current pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_weight_block<S: Copy + Sync, D: Element>(
    w: &[S],
    n: usize,
    k: usize,
    pc: usize,
    kc: usize,
    dst: &mut [D],
    conv: impl Fn(S) -> D + Copy + Sync,
) {
    dst.par_chunks_mut(kc * NR).enumerate().for_each(|(p, panel)| {
        pack_b_rows_panel(w, k, p * NR, (n - p * NR).min(NR), pc, kc, panel, conv)
    });
}

/// The driver of the f32 linear-layer GEMMs: `c[m × n] = a[m × k] · Wᵀ`, one block of `KC`
/// input features at a time (outermost, so a block's `B` panels stay in the threads' caches
/// while all rows pass), each handed to `run` by `panels(pc, kc, run)` as the `⌈n / NR⌉`
/// micro-panels of features `pc..pc + kc` (f32, or bf16 the kernels widen as they load it).
///
/// # Safety
/// `c` must be valid for `m` rows of `n` elements at stride `ldc` and must not alias `a` or the
/// panels.
pub(super) unsafe fn gemm_blocks<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    c: *mut f32,
    ldc: usize,
    mut panels: impl FnMut(usize, usize, &mut dyn FnMut(&[T])),
) {
    assert!(a.len() >= m * k, "GEMM input has {} of {m}×{k}", a.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of c per the contract.
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
        return;
    }
    let s = split(m, n);
    let out = Out(c);
    let out = &out;
    let mut pc = 0;
    while pc < k {
        let kc = KC.min(k - pc);
        panels(pc, kc, &mut |bp: &[T]| {
            (0..s.items()).into_par_iter().for_each(|item| {
                let ((r0, rows), (p0, p1)) = s.item(item);
                let (j0, cols) = (p0 * NR, (n - p0 * NR).min((p1 - p0) * NR));
                with_scratch(&A_PACK, |abuf| {
                    let ap = abuf.get(rows.div_ceil(MR) * kc * MR);
                    pack_a(a, k, r0, rows, pc, kc, 1.0, ap);
                    // SAFETY: panels of the packed sizes; the block lies inside c.
                    unsafe {
                        block(
                            kc,
                            (ap.as_ptr(), kc * MR),
                            (bp[p0 * kc * NR..].as_ptr(), kc * NR),
                            out.0.add(r0 * ldc + j0),
                            ldc,
                            rows,
                            cols,
                            pc > 0,
                        )
                    }
                })
            })
        });
        pc += kc;
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static A_TILES: RefCell<Vec<amx_unit::Line>> = RefCell::default();
}

/// The AMX drivers' work split of `C[m × n]`: blocks of rows whose packed `A` (`row_bytes`
/// each) is about 1 MiB or less (so it stays in L2), times chunks of 32-column pairs so every
/// thread has work. Runs `item(r0, rows, pairs, a_tiles)` in parallel on the current pool, with
/// a tile buffer of the thread's own (grown, never shrunk: refilling a shrunk buffer would zero
/// it on every call; a fresh one when the thread's is in use further up the stack).
#[cfg(target_arch = "x86_64")]
fn amx_items(
    m: usize,
    n: usize,
    row_bytes: usize,
    item: impl Fn(usize, usize, std::ops::Range<usize>, &mut Vec<amx_unit::Line>) + Sync,
) {
    use amx_unit::{TM, TN};
    let mc = ((1 << 20) / row_bytes.max(1)).clamp(2 * TM, 256) / (2 * TM) * (2 * TM);
    let pairs = n.div_ceil(2 * TN);
    let row_blocks = m.div_ceil(mc);
    let threads = rayon::current_num_threads();
    let col_chunks = (2 * threads).div_ceil(row_blocks).min(pairs).max(1);
    let chunk = pairs.div_ceil(col_chunks);
    let col_chunks = pairs.div_ceil(chunk);
    (0..row_blocks * col_chunks).into_par_iter().for_each(|i| {
        let (rb, cc) = (i / col_chunks, i % col_chunks);
        let (r0, rows) = (rb * mc, mc.min(m - rb * mc));
        let q = cc * chunk..((cc + 1) * chunk).min(pairs);
        let done = A_TILES
            .with(|cell| cell.try_borrow_mut().ok().map(|mut b| item(r0, rows, q.clone(), &mut b)));
        if done.is_none() {
            item(r0, rows, q, &mut Vec::new());
        }
    });
}

/// Runs `block(a_tiles, panel, r, j, (rows, cols))` for every 32 × 32 block of a work item,
/// with the tiles configured: `a_tiles` are the packed `A` tiles of the block's two row groups
/// (`kt` each), `panel` its first `B` panel, `r` and `j` its first row (in the item) and column,
/// and the clipped size.
///
/// # Safety
/// The tile unit is available.
#[cfg(target_arch = "x86_64")]
unsafe fn for_blocks(
    rows: usize,
    n: usize,
    kt: usize,
    pairs: std::ops::Range<usize>,
    ap: &[amx_unit::Line],
    mut block: impl FnMut(
        (*const amx_unit::Line, *const amx_unit::Line),
        usize,
        usize,
        usize,
        (usize, usize),
    ),
) {
    use amx_unit::{TM, TN};
    // SAFETY: the caller's.
    unsafe { amx_unit::configure() };
    for q in pairs {
        let j = q * 2 * TN;
        for g in (0..rows.div_ceil(2 * TM) * 2).step_by(2) {
            let r = g * TM;
            let a = (ap[g * kt * TM..].as_ptr(), ap[(g + 1) * kt * TM..].as_ptr());
            block(a, 2 * q, r, j, ((rows - r).min(2 * TM), (n - j).min(2 * TN)));
        }
    }
    // SAFETY: as configure.
    unsafe { amx_unit::release() };
}

/// `c[m × w.n] = bf16(a[m × w.k]) · wᵀ` on AMX tiles (f32 sums), row stride `ldc`. Each work
/// item packs its rows of `a` for all input features once and keeps each 32 × 32 block of `C`
/// in tile registers over the whole reduction.
///
/// # Safety
/// As [`matmul_wt`]; and [`kernel_amx::available`] returned true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn matmul_amx(m: usize, a: &[f32], w: &kernel_amx::AmxWeight, c: *mut f32, ldc: usize) {
    use amx_unit::Line;
    use kernel_amx::{Strided, TK};
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_amx operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    let kt = k.div_ceil(TK);
    let out = Out(c);
    let out = &out;
    amx_items(m, n, kt * TK * 2, |r0, rows, pairs, ap| {
        let need = kernel_amx::a_lines(rows, k);
        if ap.len() < need {
            ap.resize(need, Line::default());
        }
        kernel_amx::pack_a(Strided { data: a, ld: k, r0, c0: 0 }, rows, k, 1.0, ap);
        // SAFETY: AMX is available (caller); blocks lie inside c (rows r0.., columns < n).
        unsafe {
            for_blocks(rows, n, kt, pairs, ap, |a, p, r, j, (h, wd)| {
                kernel_amx::block(kt, a, (w, p), out.0.add((r0 + r) * ldc + j), ldc, h, wd)
            })
        }
    });
}

/// `c[m × w.n] = a[m × w.k] · wᵀ` on AMX-INT8 tiles: `a` quantised per row as it is packed,
/// `w` per output channel at load, i32 sums scaled back to f32 (see `kernel_amx_int8.rs`), and
/// `held`'s f32 products added to each block before it is stored.
///
/// # Safety
/// As [`matmul_wt`]; and [`kernel_amx_int8::available`] returned true; `held` is `w`'s, or empty.
#[cfg(target_arch = "x86_64")]
pub unsafe fn matmul_amx_int8(
    m: usize,
    a: &[f32],
    w: &kernel_amx_int8::AmxI8Weight,
    held: &super::quant::HeldOut,
    c: *mut f32,
    ldc: usize,
) {
    use super::quant::RowQ;
    use amx_unit::{Line, TM};
    use kernel_amx::Strided;
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k, "matmul_amx_int8 operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    let kt = w.k_tiles();
    let (xs, features) = (held.gather(m, a, k), held.features().len());
    let out = Out(c);
    let (out, xs) = (&out, &xs[..]);
    amx_items(m, n, kt * kernel_amx_int8::TK, |r0, rows, pairs, ap| {
        let need = kernel_amx_int8::a_lines(rows, k);
        if ap.len() < need {
            ap.resize(need, Line::default());
        }
        // Row blocks hold at most 256 rows (amx_items).
        let mut codes = [RowQ::default(); 256];
        let src = Strided { data: a, ld: k, r0, c0: 0 };
        kernel_amx_int8::pack_a(src, rows, k, w.smooth(), ap, &mut codes);
        // SAFETY: AMX-INT8 is available (caller); blocks lie inside c (rows r0.., columns < n).
        unsafe {
            for_blocks(rows, n, kt, pairs, ap, |a, p, r, j, (h, wd)| {
                let (qa, c) = (&codes[r..r + 2 * TM], out.0.add((r0 + r) * ldc + j));
                let xs = (held, &xs[(r0 + r) * features..]);
                kernel_amx_int8::block(kt, a, (w, p), qa, xs, c, ldc, h, wd)
            })
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_on_ragged_shapes() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for &(m, n, k) in &[(1, 1, 1), (7, 17, 300), (125, 40, 513), (250, 3, 2)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let ldc = n + 3;
            let mut c = vec![9.0f32; m * ldc];
            // SAFETY: c is [m × ldc], ldc ≥ n.
            pool.install(|| unsafe { matmul_wt(m, n, k, &a, &w, c.as_mut_ptr(), ldc) });
            for i in 0..m {
                for j in 0..n {
                    let want: f64 =
                        (0..k).map(|kk| a[i * k + kk] as f64 * w[j * k + kk] as f64).sum();
                    let got = c[i * ldc + j] as f64;
                    assert!((got - want).abs() < 1e-3, "{m}x{n}x{k} ({i},{j}): {got} vs {want}");
                }
                // Columns past n are not touched.
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 9.0));
            }
        }
    }

    /// The int8 path against exact integer sums of the documented quantisation, on ragged shapes
    /// (zero rows, features not a multiple of 64, odd panels, several row items), plain and
    /// smoothed (weights times a factor per input feature, activations divided by it).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_int8_matches_the_exact_sums_of_its_quantised_operands() {
        use crate::cpu::kernel_amx_int8::{available, AmxI8Weight};
        if !available() {
            println!("skipped: no AMX-INT8 here (TRIDENT_AMX_EMULATE=1 runs it in software)");
            return;
        }
        // The reference quantises as documented (quant.rs: per row of `w` at load, symmetric;
        // per row of `a`, u8 with a zero point), sums the integer products exactly in i64 and
        // scales back in f64.
        use crate::cpu::quant::{channel_scale, quantize_weight, RowQ};
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let shapes = [(1, 1, 1), (16, 16, 64), (33, 17, 37), (300, 70, 1030), (5, 96, 129)];
        for (&(m, n, k), smoothed) in shapes.iter().flat_map(|s| [(s, false), (s, true)]) {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0 * (1 + i / k % 3) as f32)
                .collect();
            let mut w: Vec<f32> =
                (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            // A zero row of `w` and a zero row of `a` must give zeros, not NaN.
            w[..k].iter_mut().for_each(|v| *v = 0.0);
            let mut a = a;
            if m > 2 {
                a[k..2 * k].iter_mut().for_each(|v| *v = 0.0);
            }
            let f: Vec<f32> = (0..k).map(|kk| 0.25 + (kk * 7 % 13) as f32).collect();
            let q = AmxI8Weight::quantize(n, k, &w, smoothed.then_some(&f[..]));
            let ldc = n + 3;
            let mut c = vec![9.0f32; m * ldc];
            // SAFETY: c is [m × ldc], ldc ≥ n; AMX-INT8 is available.
            let none = crate::cpu::quant::HeldOut::default();
            pool.install(|| unsafe { matmul_amx_int8(m, &a, &q, &none, c.as_mut_ptr(), ldc) });
            // The operands the quantiser sees (the same f32 operations as the packing).
            let (a0, w0) = (a.clone(), w.clone());
            let (a, w) = if smoothed {
                let a: Vec<f32> = a.iter().enumerate().map(|(i, x)| x * (1.0 / f[i % k])).collect();
                (a, w.iter().enumerate().map(|(i, x)| x * f[i % k]).collect())
            } else {
                (a, w)
            };
            let amax = |r: &[f32]| r.iter().fold(0f32, |x, v| x.max(v.abs()));
            for i in 0..m {
                let ra = &a[i * k..(i + 1) * k];
                let (lo, hi) = ra.iter().fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
                let qa = RowQ::new(lo, hi);
                let ma = amax(ra);
                for j in 0..n {
                    let rw = &w[j * k..(j + 1) * k];
                    let sw = channel_scale(rw);
                    let dot: i64 = (0..k)
                        .map(|kk| {
                            let x = qa.quantize(ra[kk]) as i64 - qa.zp as i64;
                            x * quantize_weight(rw[kk], sw) as i64
                        })
                        .sum();
                    let want = dot as f64 * qa.scale as f64 * sw as f64;
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{m}x{n}x{k} ({i},{j}): {got} vs {want}"
                    );
                    // And the quantised product stays near the f32 one (a few % of its scale).
                    let exact: f64 =
                        (0..k).map(|kk| a0[i * k + kk] as f64 * w0[j * k + kk] as f64).sum();
                    let scale = (ma as f64) * amax(rw) as f64 * (k as f64).sqrt();
                    assert!((got - exact).abs() <= 0.02 * scale + 1e-12, "({i},{j}) far off");
                }
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 9.0), "row {i} overrun");
            }
        }
    }

    /// The AMX kernel against f64 sums of the bf16-rounded operands, on ragged shapes (clipped
    /// and full blocks, odd panels, features not a multiple of 32, several row items).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_matches_f64_of_bf16_operands_on_ragged_shapes() {
        use crate::cpu::kernel_amx::{available, bf16_bits, AmxWeight};
        if !available() {
            println!("skipped: no AMX-BF16 here (TRIDENT_AMX_EMULATE=1 runs it in software)");
            return;
        }
        let widen = |b: u16| f32::from_bits((b as u32) << 16) as f64;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for &(m, n, k) in &[(1, 1, 1), (16, 16, 32), (33, 17, 37), (300, 70, 1030), (5, 96, 64)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let packed = AmxWeight::pack(n, k, |j, kk| bf16_bits(w[j * k + kk]));
            let ldc = n + 3;
            let mut c = vec![9.0f32; m * ldc];
            // SAFETY: c is [m × ldc], ldc ≥ n; AMX is available.
            pool.install(|| unsafe { matmul_amx(m, &a, &packed, c.as_mut_ptr(), ldc) });
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| widen(bf16_bits(a[i * k + kk])) * widen(bf16_bits(w[j * k + kk])))
                        .sum();
                    let got = c[i * ldc + j] as f64;
                    let tol = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
                    assert!((got - want).abs() < tol, "{m}x{n}x{k} ({i},{j}): {got} vs {want}");
                }
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 9.0), "row {i} overrun");
            }
        }
    }
}
