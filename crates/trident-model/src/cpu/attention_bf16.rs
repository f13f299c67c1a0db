//! Attention of the reduced precisions below AMX, on AVX512-BF16 (`kernel_bf16.rs`'s 6 × 64
//! tiles): `Q·Kᵀ` and `P·V` with bf16 operands and f32 sums, scores and softmax in f32 — the
//! arithmetic of the AMX attention (`attention.rs`), on the CPUs where `VDPBF16PS` issues as
//! fast as an FMA, so at twice its products. Work items and blocking as in `attention.rs`.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::attention::{items, SendPtr, QBLOCK};
use super::kernel_bf16::{block, convert_row, PanelsRef};
use super::panel::NR;
use super::softmax_bf16::{divide, exponentials};

/// This thread's buffers: the head's packed keys and values, a block's queries, scores and
/// probabilities, and one converted row.
#[derive(Default)]
struct Scratch {
    keys: Vec<u16>,
    values: Vec<u16>,
    queries: Vec<u16>,
    scores: Vec<f32>,
    probs: Vec<u16>,
    row: Vec<u16>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// `qkv` is `[tokens × 3H]` (`[q | k | v]`); writes `[tokens × H]` into `out`.
///
/// # Safety
/// [`super::kernel_bf16::available`] returned true.
pub unsafe fn attention(qkv: &[f32], out: &mut [f32], hidden: usize, heads: usize, cu: &[u32]) {
    let ld = 3 * hidden;
    assert_eq!(qkv.len() / ld * hidden, out.len(), "attention output size");
    let out_ptr = SendPtr(out.as_mut_ptr());
    items(cu, heads).par_iter().for_each(|&item| {
        let run = |s: &mut Scratch| {
            // SAFETY: AVX512-BF16 is available (caller).
            unsafe { head(qkv, &out_ptr, s, hidden, heads, item) }
        };
        if SCRATCH.with(|c| c.try_borrow_mut().ok().map(|mut s| run(&mut s))).is_none() {
            run(&mut Scratch::default());
        }
    });
}

/// Tokens ahead of the one being read whose rows are prefetched: a head's rows lie 12 KiB
/// apart in `qkv` (BGE-M3), each on another page, beyond the hardware prefetchers' reach.
const AHEAD: usize = 8;

/// Asks for `row`'s cache lines.
#[inline]
fn prefetch(row: &[f32]) {
    for line in row.chunks(16) {
        // SAFETY: a prefetch of an address inside `row` (it never faults).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr() as *const i8) };
    }
}

/// `v` cleared and `n` zeros long (the panels' padding must be zero).
fn zeroed<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.clear();
    v.resize(n, T::default());
    v
}

/// `v`'s first `n` values, grown if need be (whatever they hold: written before they are read).
fn sized<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// One sequence `start..end`, one head `h`, in blocks of [`QBLOCK`] queries.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn head(
    qkv: &[f32],
    out: &SendPtr,
    s: &mut Scratch,
    hidden: usize,
    heads: usize,
    (start, end, h): (usize, usize, usize),
) {
    let (d, ld, len) = (hidden / heads, 3 * hidden, end - start);
    let scale = 1.0 / (d as f32).sqrt();
    // Rows of bf16 are padded to 32 values (zero past the row, as the panels past k).
    let (ldq, ldp) = (d.next_multiple_of(32), len.next_multiple_of(32));
    let at = |t: usize, c0: usize| &qkv[t * ld + c0..t * ld + c0 + d];
    // Kᵀ: the keys are the columns, the head's features (in pairs) the sums.
    let keys = zeroed(&mut s.keys, PanelsRef::len(len, d));
    let row = sized(&mut s.row, ldq);
    for j in 0..len {
        if j + AHEAD < len {
            prefetch(at(start + j + AHEAD, hidden + h * d));
        }
        // SAFETY: AVX512-BF16 (caller); row holds ldq values, a multiple of 32, ≥ d.
        unsafe { convert_row(at(start + j, hidden + h * d), 1.0, row) };
        let (p, c) = (j / NR, j % NR);
        for (g, pair) in row[..2 * d.div_ceil(2)].chunks_exact(2).enumerate() {
            let i = ((p * d.div_ceil(2) + g) * NR + c) * 2;
            keys[i..i + 2].copy_from_slice(pair);
        }
    }
    // V: the head's features are the columns, the keys (in pairs) the sums.
    let values = zeroed(&mut s.values, PanelsRef::len(d, len));
    // SAFETY: AVX512-BF16 (caller); values holds the panels of [d × len].
    unsafe { pack_values(qkv, ld, start, len, 2 * hidden + h * d, d, values) };
    let keys = PanelsRef::new(&s.keys, len, d);
    let values = PanelsRef::new(&s.values, d, len);
    let queries = sized(&mut s.queries, QBLOCK * ldq);
    let probs = sized(&mut s.probs, QBLOCK * ldp);
    let scores = sized(&mut s.scores, QBLOCK * len);
    for q0 in (start..end).step_by(QBLOCK) {
        let rows = QBLOCK.min(end - q0);
        for t in (q0 + rows..end).take(rows) {
            prefetch(at(t, h * d));
        }
        for (r, q) in queries.chunks_exact_mut(ldq).take(rows).enumerate() {
            // SAFETY: as above.
            unsafe { convert_row(at(q0 + r, h * d), scale, q) };
        }
        let mut sums = [0f32; QBLOCK];
        // SAFETY: AVX512-BF16 (caller); `scores` holds rows × len, and this item alone writes
        // rows q0..q0 + rows, columns h·d..(h + 1)·d of `out`.
        unsafe {
            block(rows, queries, ldq, keys, scores.as_mut_ptr(), len);
            let rows_of = scores.chunks_exact(len).zip(probs.chunks_exact_mut(ldp));
            for ((row, p), sum) in rows_of.zip(&mut sums).take(rows) {
                let p = p.as_mut_ptr();
                *sum = exponentials(row, ldp / 32, |c| p.add(32 * c));
            }
            block(rows, probs, ldp, values, out.0.add(q0 * hidden + h * d), hidden);
            // Softmax's division, on the d outputs of each row rather than its len numerators.
            divide(out.0.add(q0 * hidden + h * d), hidden, d, &sums[..rows]);
        }
    }
}

/// The `d` columns from `c0` of tokens `start..start + len` as the panels of `[d × len]`:
/// per pair of keys and 16 features, both rows converted by one `VCVTNE2PS2BF16` and
/// interleaved by one permute.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_values(
    qkv: &[f32],
    ld: usize,
    start: usize,
    len: usize,
    c0: usize,
    d: usize,
    values: &mut [u16],
) {
    assert!(values.len() >= PanelsRef::len(d, len) && c0 + d <= ld);
    assert!(qkv.len() >= (start + len) * ld, "pack_values: tokens past qkv");
    // Lane 2i takes feature i of the first key (low half), lane 2i + 1 that of the second.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let groups = len.div_ceil(2);
    for g in 0..groups {
        for key in [2 * g + AHEAD, 2 * g + AHEAD + 1].into_iter().filter(|&key| key < len) {
            let t = (start + key) * ld + c0;
            prefetch(&qkv[t..t + d]);
        }
        let load = |key: usize, f: usize, mask: __mmask16| {
            if key >= len {
                return _mm512_setzero_ps();
            }
            // SAFETY: the mask keeps features below d of a token inside qkv (asserts above).
            unsafe { _mm512_maskz_loadu_ps(mask, qkv.as_ptr().add((start + key) * ld + c0 + f)) }
        };
        for f in (0..d).step_by(16) {
            let mask: __mmask16 = if d - f >= 16 { !0 } else { (1 << (d - f)) - 1 };
            let both = _mm512_cvtne2ps_pbh(load(2 * g + 1, f, mask), load(2 * g, f, mask));
            // SAFETY: 32 bf16 as 32 16-bit lanes, the same 512 bits.
            let both = unsafe { std::mem::transmute::<__m512bh, __m512i>(both) };
            let pairs = _mm512_permutexvar_epi16(interleave, both);
            let (p, c) = (f / NR, f % NR);
            let at = ((p * groups + g) * NR + c) * 2;
            // SAFETY: 16 columns from c < 64 lie in the panel (asserted size).
            unsafe { _mm512_storeu_si512(values.as_mut_ptr().add(at) as *mut _, pairs) };
        }
    }
}
