//! The int8 precision's quantisation, shared by its kernels. Weights: symmetric per output
//! channel, once at load (`q = round(w / s_j)`, `s_j = max|W[j]| / 127`). Activations: per row
//! (per token) as they are packed, *asymmetric* unsigned 8-bit over the row's own `[min, max]`
//! (`q = round(x / s_i) + z_i`, `s_i = (max − min) / 255`). A one-sided row — GELU outputs,
//! LayerNorm outputs with a large offset channel — then uses all 256 levels where a symmetric
//! code wastes half of them; on trained weights this took ColBERT's worst row cosine from 0.994
//! to 0.997. The zero point costs one correction per output: `Σ q_a·q_w = acc − z_i·Σ_k q_w[j]`.

/// A row's activation code: `x ≈ (q − zp) · scale`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowQ {
    pub scale: f32,
    /// `1 / scale` (0 for an all-zero row).
    pub inv: f32,
    pub zp: i32,
}

impl RowQ {
    /// The code for a row whose values lie in `[min, max]`; the range is widened to hold 0, so
    /// zero (padding) is exact.
    pub fn new(min: f32, max: f32) -> RowQ {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let range = hi - lo;
        if !(range > 0.0 && range.is_finite()) {
            return RowQ::default();
        }
        let inv = 255.0 / range;
        let zp = (-lo * inv).round_ties_even().clamp(0.0, 255.0) as i32;
        RowQ { scale: range / 255.0, inv, zp }
    }

    /// `x`'s code (rounding to nearest even, then saturating), as the vector packers compute it
    /// for the values of the row the code was made for.
    #[inline(always)]
    pub fn quantize(self, x: f32) -> u8 {
        ((x * self.inv).round_ties_even() as i32 + self.zp).clamp(0, 255) as u8
    }
}

/// A weight row's scale, `max|w| / 127` (0 for a zero row).
pub fn channel_scale(row: &[f32]) -> f32 {
    row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0
}

/// `w`'s code in a channel of scale `s` (`w / s`, as documented: `w · (1/s)` may round otherwise).
#[inline(always)]
pub fn quantize_weight(w: f32, s: f32) -> i8 {
    if s > 0.0 {
        (w / s).round_ties_even().clamp(-127.0, 127.0) as i8
    } else {
        0
    }
}

super::ops::simd! {
    /// `row`'s codes at scale `s` ([`quantize_weight`] on each), compiled for the CPU's vectors:
    /// the baseline build calls libm's `rintf` per weight (a seventh of an int8 model's load
    /// time in `perf`), AVX2's rounding instruction vectorises. The same codes.
    pub fn quantize_weight_row(row: &[f32], s: f32, q: &mut [i8]) {
        q.iter_mut().zip(row).for_each(|(q, &x)| *q = quantize_weight(x, s));
    }
}

/// A weight `[n × k]` quantised per output channel: row-major codes, the scales, each row's
/// code sum (the zero points' correction) and, when smoothed (`smooth.rs`), `1 / f_k` per input
/// feature by which the activations are multiplied as they are quantised.
pub struct QuantizedRows {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
    pub colsum: Vec<i32>,
    /// Empty when not smoothed.
    pub smooth: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl QuantizedRows {
    /// Quantises row-major `w` (`[n × k]`), rows in parallel on the current pool. With
    /// `factors` (`f_k` per input feature) it quantises `W·diag(f)`.
    pub fn new(n: usize, k: usize, w: &[f32], factors: Option<&[f32]>) -> QuantizedRows {
        use rayon::prelude::*;
        assert!(w.len() >= n * k, "quantize source");
        assert!(factors.is_none_or(|f| f.len() == k), "one factor per input feature");
        let mut q = vec![0i8; n * k];
        let (mut scale, mut colsum) = (vec![0f32; n], vec![0i32; n]);
        let rows = q.par_chunks_mut(k.max(1)).zip(&mut scale).zip(&mut colsum);
        rows.enumerate().for_each(|(j, ((q, s), sum))| {
            let src = &w[j * k..(j + 1) * k];
            let row: Vec<f32> = match factors {
                Some(f) => src.iter().zip(f).map(|(x, f)| x * f).collect(),
                None => src.to_vec(),
            };
            *s = channel_scale(&row);
            quantize_weight_row(&row, *s, q);
            *sum = q.iter().map(|&x| x as i32).sum();
        });
        // A held-out feature (factor 0) is zero in both operands: its weight column is zero
        // above, and its activations are multiplied by 0 as they are quantised.
        let inv = |f: &f32| if *f > 0.0 { 1.0 / f } else { 0.0 };
        let smooth = factors.map_or(Vec::new(), |f| f.iter().map(inv).collect());
        QuantizedRows { q, scale, colsum, smooth, n, k }
    }
}

/// The input features a smoothed layer holds out of its int8 product (factor 0, `smooth.rs`),
/// multiplied in f32 and added after the int8 GEMM: the few features whose activations dwarf
/// the rest no longer set every token's code step (after LLM.int8(), Dettmers et al. 2022).
#[derive(Default)]
pub struct HeldOut {
    /// The features, ascending.
    cols: Vec<usize>,
    /// `W[j][cols[h]]`, unsmoothed, by blocks of 64 columns ([`blocked`]).
    w: Vec<f32>,
    n: usize,
}

impl HeldOut {
    /// The features of row-major `w` (`[n × k]`) whose factor is 0 (none without factors).
    pub fn new(n: usize, k: usize, w: &[f32], factors: Option<&[f32]>) -> HeldOut {
        let cols: Vec<usize> =
            factors.map_or(Vec::new(), |f| (0..k).filter(|&kk| f[kk] == 0.0).collect());
        let by_feature: Vec<f32> =
            cols.iter().flat_map(|&kk| (0..n).map(move |j| w[j * k + kk])).collect();
        HeldOut { w: blocked(&by_feature, cols.len(), n), cols, n }
    }

    /// The features held out.
    pub fn features(&self) -> &[usize] {
        &self.cols
    }

    /// The number of features held out, and the weights of the 64 columns from `64·b`
    /// (`[features × 64]`, zero past `n`): what a kernel adds to a tile of panel `b` itself,
    /// each output's products in feature order after its int8 sum, skipping zero activations.
    pub fn block(&self, b: usize) -> (usize, &[f32]) {
        let held = self.cols.len();
        (held, &self.w[b * 64 * held..(b + 1) * 64 * held])
    }

    /// The held-out features of rows `0..m` of `a` (`[m × k]`), `[m × features]`: what
    /// [`HeldOut::add_tile`] multiplies, gathered once (read from `a` per tile, they came
    /// from memory once per 64 output columns).
    pub fn gather(&self, m: usize, a: &[f32], k: usize) -> Vec<f32> {
        assert!(a.len() >= m * k && self.cols.iter().all(|&kk| kk < k), "held-out operands");
        (0..m).flat_map(|i| self.cols.iter().map(move |&kk| a[i * k + kk])).collect()
    }

    /// `c[i][j] += Σ_h a[i][cols[h]] · W[j][cols[h]]` for rows `r0..r0 + rows` and `cols` of
    /// `c`, on this thread, the activations from [`HeldOut::gather`]; each sum in the order of
    /// the features, skipping zero activations, so every int8 kernel (and CPU) gets the same
    /// bits. Called on an int8 kernel's tile, just written and still in cache (a pass over the
    /// whole output read it back from memory: 8 % of an int8 run's time on a Zen 4 EPYC).
    ///
    /// # Safety
    /// `c` must be valid for those rows and columns at stride `ldc`, must not alias `a`, and
    /// nothing else may touch them meanwhile.
    /// (Not inlined: one call per tile, kept out of the kernels' loops.)
    #[inline(never)]
    pub unsafe fn add_tile(
        &self,
        xs: &[f32],
        r0: usize,
        rows: usize,
        cols: std::ops::Range<usize>,
        c: *mut f32,
        ldc: usize,
    ) {
        if self.cols.is_empty() || rows == 0 || cols.is_empty() {
            return;
        }
        assert!(xs.len() >= (r0 + rows) * self.cols.len() && cols.end <= self.n, "held-out tile");
        let (w, held) = (&self.w[..], self.cols.len());
        let x = |r: usize, h: usize| xs[(r0 + r) * held + h];
        // SAFETY: the caller's promises (c then points at row r0); each variant runs only at an
        // isa level with its features.
        unsafe {
            let c = c.add(r0 * ldc);
            #[cfg(target_arch = "x86_64")]
            {
                use super::isa::{isa, Isa};
                let level = isa();
                if level >= Isa::Avx512 {
                    return add_rows_avx512(c, ldc, rows, cols, held, w, x);
                }
                if level >= Isa::Avx2 {
                    return add_rows_avx2(c, ldc, rows, cols, held, w, x);
                }
            }
            add_rows(c, ldc, rows, cols, held, w, x)
        }
    }
}

/// `w` (`[held × n]`, a feature's weights per row) by blocks of 64 columns: block `b` holds
/// each feature's 64 weights in turn, zero past `n` — the weights a tile adds, one run.
fn blocked(w: &[f32], held: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n.next_multiple_of(64) * held];
    for (h, row) in w.chunks_exact(n.max(1)).take(held).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[((j / 64) * held + h) * 64 + j % 64] = v;
        }
    }
    out
}

/// `c[r·ldc + j] += x(r, h) · W[j][h]` for rows `r < rows`, columns `j` in `cols` and every
/// `h < held` whose `x(r, h)` is not zero, in order of `h`: 64 columns of a row at a time, held
/// in registers over all `h` (the same operations per output, whatever the blocking).
///
/// # Safety
/// `c` is valid for `rows` rows at stride `ldc`, columns `cols`; `w` is [`blocked`] from
/// `held` features' weights over at least `cols.end` columns; `cols` starts at a block.
#[inline(always)]
unsafe fn add_rows(
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: std::ops::Range<usize>,
    held: usize,
    w: &[f32],
    x: impl Fn(usize, usize) -> f32,
) {
    assert!(cols.start.is_multiple_of(64) && w.len() >= cols.end.next_multiple_of(64) * held);
    for b in cols.clone().step_by(64) {
        let len = 64.min(cols.end - b);
        let w = &w[b * held..(b + 64) * held];
        for r in 0..rows {
            // SAFETY: row r's columns b..b + len lie in c (caller).
            let ys = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc + b), len) };
            if let Ok(ys) = <&mut [f32; 64]>::try_from(&mut *ys) {
                // A whole block: a fixed length, so the sums stay in registers.
                let mut acc = *ys;
                for (h, w) in w.chunks_exact(64).enumerate() {
                    let x = x(r, h);
                    if x != 0.0 {
                        let w: &[f32; 64] = w.try_into().expect("64 columns");
                        acc.iter_mut().zip(w).for_each(|(y, w)| *y += x * w);
                    }
                }
                *ys = acc;
            } else {
                for (h, w) in w.chunks_exact(64).enumerate() {
                    let x = x(r, h);
                    if x != 0.0 {
                        ys.iter_mut().zip(&w[..len]).for_each(|(y, w)| *y += x * w);
                    }
                }
            }
        }
    }
}

/// [`add_rows`] compiled for an instruction set's vectors (Rust never fuses the multiply and
/// add, so the same bits).
macro_rules! add_rows_on {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            c: *mut f32,
            ldc: usize,
            rows: usize,
            cols: std::ops::Range<usize>,
            held: usize,
            w: &[f32],
            x: impl Fn(usize, usize) -> f32,
        ) {
            // SAFETY: as add_rows (caller).
            unsafe { add_rows(c, ldc, rows, cols, held, w, x) }
        }
    };
}
add_rows_on!(add_rows_avx2, "avx2");
add_rows_on!(add_rows_avx512, "avx512f");

/// Quantises one row (times `smooth`, when not empty) into `q[..row.len()]` and returns its
/// code, with the same f32 operations as `kernel_amx_int8::pack_a`.
#[inline(always)]
pub fn quantize_row<Q: From<u8>>(row: &[f32], smooth: &[f32], q: &mut [Q]) -> RowQ {
    let x = |kk: usize| if smooth.is_empty() { row[kk] } else { row[kk] * smooth[kk] };
    let (lo, hi) = (0..row.len()).fold((0f32, 0f32), |(l, h), kk| (l.min(x(kk)), h.max(x(kk))));
    let code = RowQ::new(lo, hi);
    q[..row.len()].iter_mut().enumerate().for_each(|(kk, q)| *q = code.quantize(x(kk)).into());
    code
}

/// `row`'s code and codes as [`quantize_row`] gives them (times `smooth` when it is not empty),
/// vectorised 64 features at a time: run `c`'s 64 codes go to `out(c)`, zeros past the row.
/// Min and max are exact either way; the MXCSR default rounds to nearest even, the zero point
/// is added in integers, then clamped to `0..=255`. Each run is smoothed in registers straight
/// from the row (a copied run cost twice the quantising on AVX512-VNNI).
///
/// # Safety
/// AVX-512F/BW are available; `out(c)` is valid for 64 bytes for each `c < runs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_runs(
    row: &[f32],
    smooth: &[f32],
    runs: usize,
    out: impl Fn(usize) -> *mut u8,
) -> RowQ {
    assert!(64 * runs >= row.len(), "quantize_runs: runs for the row");
    assert!(smooth.is_empty() || smooth.len() >= row.len(), "quantize_runs: smoothing");
    let (lo, hi) = (0..runs).fold((0f32, 0f32), |(lo, hi), c| {
        // SAFETY: smooth asserted above.
        let (l, h) = min_max4(unsafe { smoothed_run(row, smooth, c) });
        (lo.min(l), hi.max(h))
    });
    let code = RowQ::new(lo, hi);
    for c in 0..runs {
        // SAFETY: AVX-512F/BW (this function's features); 64 bytes at out(c) (caller); smooth
        // asserted above.
        unsafe { quantize4(smoothed_run(row, smooth, c), code, out(c)) };
    }
    code
}

/// One held-out feature's products `x · w[v]` added to the sums `y[v]` in registers, as
/// [`HeldOut::add_tile`] adds them (multiply, then add; a zero `x` adds nothing, not even a
/// `−0 + 0`): what the VNNI and AMX-INT8 kernels do before their stores, so the same bits.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub fn add_held<const V: usize>(
    y: &mut [std::arch::x86_64::__m512; V],
    x: f32,
    w: &[std::arch::x86_64::__m512; V],
) {
    use std::arch::x86_64::*;
    let keep: __mmask16 = if x != 0.0 { !0 } else { 0 };
    let x = _mm512_set1_ps(x);
    for (y, &w) in y.iter_mut().zip(w) {
        *y = _mm512_mask_add_ps(*y, keep, *y, _mm512_mul_ps(x, w));
    }
}

/// Features `64·c..64·c + 64` of `row`, times `smooth`'s when it is not empty, zero past the
/// row: the same products as a copied run.
///
/// # Safety
/// `smooth` is empty or at least as long as `row` ([`quantize_runs`] asserts it).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn smoothed_run(row: &[f32], smooth: &[f32], c: usize) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::*;
    let n = row.len();
    std::array::from_fn(|v| {
        let at = 64 * c + 16 * v;
        let lanes = n.saturating_sub(at).min(16);
        let mask = ((1u32 << lanes) - 1) as __mmask16;
        // SAFETY: the mask keeps lanes below n (of row, and of smooth when not empty).
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, row.as_ptr().wrapping_add(at));
            if smooth.is_empty() {
                x
            } else {
                _mm512_mul_ps(x, _mm512_maskz_loadu_ps(mask, smooth.as_ptr().wrapping_add(at)))
            }
        }
    })
}

/// Minimum and maximum of 64 values in four registers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn min_max4(v: [std::arch::x86_64::__m512; 4]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let lo = _mm512_min_ps(_mm512_min_ps(v[0], v[1]), _mm512_min_ps(v[2], v[3]));
    let hi = _mm512_max_ps(_mm512_max_ps(v[0], v[1]), _mm512_max_ps(v[2], v[3]));
    (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi))
}

/// 64 values' codes (in four registers) into `out`.
///
/// # Safety
/// The CPU has AVX-512F and BW; `out` is valid for 64 bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize4(v: [std::arch::x86_64::__m512; 4], q: RowQ, out: *mut u8) {
    use std::arch::x86_64::*;
    let (inv, zp) = (_mm512_set1_ps(q.inv), _mm512_set1_epi32(q.zp));
    let (lo, hi) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
    let out = out as *mut __m128i;
    for (h, &v) in v.iter().enumerate() {
        let x = _mm512_mul_ps(v, inv);
        let c = _mm512_add_epi32(_mm512_cvtps_epi32(x), zp);
        let c = _mm512_min_epi32(_mm512_max_epi32(c, lo), hi);
        // SAFETY: 4 × 16 bytes out (caller).
        unsafe { _mm_storeu_si128(out.add(h), _mm512_cvtepi32_epi8(c)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised row of weight codes against the scalar code: ties to even, both signs,
    /// clamped values, NaN and infinities, a zero scale, ragged lengths.
    #[test]
    fn weight_rows_equal_the_scalar_codes() {
        let mut row: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.25).collect();
        row.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e30, -1e30]);
        for s in [0.5, 1.0, 0.3, 0.0] {
            for len in [0, 1, 7, 33, row.len()] {
                let mut q = vec![99i8; len];
                quantize_weight_row(&row[..len], s, &mut q);
                let want: Vec<i8> = row[..len].iter().map(|&x| quantize_weight(x, s)).collect();
                assert_eq!(q, want, "scale {s}, {len} weights");
            }
        }
    }

    #[test]
    fn row_codes_cover_the_range_and_keep_zero_exact() {
        let q = RowQ::new(-0.17, 3.0);
        assert_eq!(q.quantize(0.0) as i32, q.zp);
        assert_eq!(q.quantize(3.0), 255);
        assert_eq!(q.quantize(-0.17), 0);
        assert_eq!(q.quantize(4.0), 255, "saturates");
        assert_eq!(q.quantize(-1.0), 0, "saturates");
        for x in [-0.17f32, -0.05, 0.3, 1.234, 2.9] {
            let back = (q.quantize(x) as i32 - q.zp) as f32 * q.scale;
            assert!((back - x).abs() <= 0.5 * q.scale * 1.001, "{x} → {back}");
        }
        // One-sided rows use the whole code; symmetric ones put zero in the middle.
        assert_eq!(RowQ::new(0.5, 2.0).zp, 0);
        assert_eq!(RowQ::new(-1.0, 1.0).zp, 128);
        assert_eq!(RowQ::new(0.0, 0.0), RowQ::default());
        assert_eq!(RowQ::new(f32::NAN, 1.0).scale, 1.0 / 255.0);
    }

    /// A held-out feature (factor 0) leaves the int8 operands as zeros and its exact f32
    /// product is what `HeldOut::add_tile` puts back.
    #[test]
    fn held_out_features_leave_the_int8_operands_and_come_back_exact() {
        let (n, k, m) = (5, 7, 3);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
        let f = [1.0, 0.0, 2.0, 0.5, 0.0, 1.0, 3.0];
        let q = QuantizedRows::new(n, k, &w, Some(&f));
        for j in 0..n {
            assert_eq!((q.q[j * k + 1], q.q[j * k + 4]), (0, 0), "held-out weight columns");
        }
        assert_eq!((q.smooth[1], q.smooth[4], q.smooth[3]), (0.0, 0.0, 2.0));
        let held = HeldOut::new(n, k, &w, Some(&f));
        assert_eq!(held.cols, [1, 4]);
        assert!(HeldOut::new(n, k, &w, None).cols.is_empty());
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 - 9.0) * 100.0).collect();
        let ldc = n + 2;
        let mut c = vec![0.5f32; m * ldc];
        // SAFETY: c is [m × ldc], ldc ≥ n.
        unsafe { held.add_tile(&held.gather(m, &a, k), 0, m, 0..n, c.as_mut_ptr(), ldc) };
        for i in 0..m {
            for j in 0..ldc {
                let want = if j < n {
                    0.5 + [1, 4].iter().map(|&kk| a[i * k + kk] * w[j * k + kk]).sum::<f32>()
                } else {
                    0.5
                };
                assert_eq!(c[i * ldc + j], want, "({i}, {j})");
            }
        }
    }

    /// The held-out sums, blocked and (on AVX2) vectorised, are each row's products added in
    /// feature order, skipping zero activations: the same bits on every CPU.
    #[test]
    fn held_out_rows_add_in_feature_order_on_every_path() {
        // Two 64-column blocks, a ragged one, vector tails; 11 rows at stride 153 (a full
        // block of 8 rows and a partial one), each with a zero feature somewhere.
        let (n, ldc, m) = (150, 153, 11);
        let w: Vec<f32> = (0..3 * n).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 77.0).collect();
        let wb = blocked(&w, 3, n);
        let x = |r: usize, h: usize| [1.3f32, 0.0, -2.7][(h + r) % 3] * (r as f32 + 0.5);
        let start: Vec<f32> = (0..m * ldc).map(|j| (j as f32).sin()).collect();
        let mut want = start.clone();
        for r in 0..m {
            for j in 0..n {
                for h in 0..3 {
                    if x(r, h) != 0.0 {
                        want[r * ldc + j] += x(r, h) * w[h * n + j];
                    }
                }
            }
        }
        let bits = |v: &[f32]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
        // Blocks of 8 rows over all columns and 6 × 64 tiles (the int8 kernels').
        let check = |name: &str, add: &dyn Fn(*mut f32, usize, usize, std::ops::Range<usize>)| {
            for (rows_per, cols_per) in [(8, n), (6, 64)] {
                let mut got = start.clone();
                for i0 in (0..m).step_by(rows_per) {
                    for j0 in (0..n).step_by(cols_per) {
                        let (rows, cols) = ((m - i0).min(rows_per), j0..(j0 + cols_per).min(n));
                        add(got[i0 * ldc..].as_mut_ptr(), i0, rows, cols);
                    }
                }
                assert_eq!(bits(&got), bits(&want), "{name}, {rows_per} × {cols_per}");
            }
        };
        // SAFETY (all three): the blocks lie in `got`; each variant's features are checked.
        check("portable", &|c, i0, rows, cols| unsafe {
            add_rows(c, ldc, rows, cols, 3, &wb, |r, h| x(i0 + r, h))
        });
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                check("avx2", &|c, i0, rows, cols| unsafe {
                    add_rows_avx2(c, ldc, rows, cols, 3, &wb, |r, h| x(i0 + r, h))
                });
            } else {
                println!("AVX2 variant skipped: this CPU has no AVX2");
            }
            if is_x86_feature_detected!("avx512f") {
                check("avx512", &|c, i0, rows, cols| unsafe {
                    add_rows_avx512(c, ldc, rows, cols, 3, &wb, |r, h| x(i0 + r, h))
                });
            } else {
                println!("AVX-512 variant skipped: this CPU has no AVX-512F");
            }
        }
    }

    /// The vector codes (and row codes) against the scalar ones, plain and smoothed, on ragged
    /// rows: partial runs, zeros past the row, one-sided rows, a zero row, an empty row.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_codes_equal_the_scalar_ones() {
        if !is_x86_feature_detected!("avx512bw") {
            println!("skipped: this CPU has no AVX-512BW");
            return;
        }
        let base: Vec<f32> = (0..300).map(|i| ((i * 37 % 61) as f32 - 20.0) / 7.0).collect();
        let smooth: Vec<f32> = (0..300).map(|i| [0.5, 1.25, 0.0, 3.0][i % 4]).collect();
        for len in [0, 1, 17, 64, 65, 130, 300] {
            let rows = [base[..len].to_vec(), base[..len].iter().map(|x| x.abs()).collect()];
            for (row, s) in
                rows.iter().chain([&vec![0.0; len]]).flat_map(|r| [(r, &[][..]), (r, &smooth[..])])
            {
                let runs = len.div_ceil(64) + 1;
                let mut got = vec![7u8; 64 * runs];
                let p = got.as_mut_ptr();
                // SAFETY: AVX-512BW checked; 64 bytes per run in `got`.
                let code = unsafe { quantize_runs(row, s, runs, |c| p.wrapping_add(64 * c)) };
                // Past the row: zeros, whose code is the zero point (a factor of 1 is exact).
                let pad = |v: &[f32], x: f32| -> Vec<f32> {
                    v.iter().copied().chain(std::iter::repeat(x)).take(64 * runs).collect()
                };
                let padded = (pad(row, 0.0), pad(s, 1.0));
                let mut want = vec![0u8; 64 * runs];
                let want_code = quantize_row(&padded.0, &padded.1, &mut want);
                assert_eq!(code, want_code, "{len} features, smoothed {}", !s.is_empty());
                assert_eq!(got, want, "{len} features, smoothed {}", !s.is_empty());
            }
        }
    }
}
