//! Row-wise element passes fused after a GEMM: bias (+GELU), bias + residual + LayerNorm,
//! softmax, L2 normalisation. Written as plain loops that LLVM vectorises; `simd!` compiles
//! each entry point a second time for AVX2+FMA and picks that copy at run time.

/// Defines `pub fn $name(args)` that runs `$body` compiled for AVX-512 or AVX2+FMA, the best the
/// CPU has within the kernel level of `isa.rs` (so `--cpu-isa avx2` slows these too).
/// Reductions are written over fixed lanes and nothing is contracted into FMAs, so every copy
/// gives the same bits.
macro_rules! simd {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn fast512($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($a: $t),*) $(-> $r)? { body($($a),*) }
                let isa = super::isa::isa();
                if isa >= super::isa::Isa::Avx512 && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the level implies AVX-512F (detected); FMA checked.
                    return unsafe { fast512($($a),*) };
                }
                if isa >= super::isa::Isa::Avx2 {
                    // SAFETY: the Avx2 level is only detected with AVX2 and FMA.
                    return unsafe { fast($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}
pub(super) use simd;

/// erf(z) ≈ z·P(z²)/Q(z²) on |z| ≤ 3.92 (beyond, erf is ±1 to f32 precision), evaluated in
/// f64. Coefficients fitted here (weighted least squares towards minimax over [0, 3.92]);
/// max abs error 4.4e-8, below f32 resolution near ±1, so GELU stays exact in f32 terms.
const ERF_P: [f64; 7] = [
    1.128_378_777_006_537_4,
    0.206_137_368_210_187_55,
    0.051_400_439_548_892_26,
    0.003_973_942_402_150_919,
    0.000_149_016_724_426_294_64,
    -1.994_507_047_613_919_3e-6,
    1.992_249_021_309_788_8e-8,
];
const ERF_Q: [f64; 5] = [
    1.0,
    0.516_013_244_978_487_8,
    0.117_574_222_084_087_38,
    0.014_891_276_395_341_541,
    0.001_024_394_680_371_991,
];

#[inline(always)]
fn erf64(z: f64) -> f64 {
    let z = z.clamp(-3.92, 3.92);
    let u = z * z;
    let mut p = ERF_P[6];
    for c in ERF_P[..6].iter().rev() {
        p = p * u + c;
    }
    let mut q = ERF_Q[4];
    for c in ERF_Q[..4].iter().rev() {
        q = q * u + c;
    }
    z * p / q
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf64(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

simd! {
    /// `row = GELU(row + bias)`.
    pub fn bias_gelu(row: &mut [f32], bias: &[f32]) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = gelu(*v + b);
        }
    }
}

/// GELU with erf's rational form evaluated in f32 (|error| ~1e-7, below the bf16 rounding the
/// next layer applies to it): the bf16 precision's activation, three times the f64 form's speed.
#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).clamp(-3.92, 3.92);
    let u = z * z;
    let mut p = ERF_P[6] as f32;
    for c in ERF_P[..6].iter().rev() {
        p = p * u + *c as f32;
    }
    let mut q = ERF_Q[4] as f32;
    for c in ERF_Q[..4].iter().rev() {
        q = q * u + *c as f32;
    }
    0.5 * x * (1.0 + z * p / q)
}

simd! {
    /// `row = GELU(row + bias)` in f32 arithmetic (the bf16 precision's).
    pub fn bias_gelu_f32(row: &mut [f32], bias: &[f32]) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = gelu_f32(*v + b);
        }
    }
}

simd! {
    /// `row += bias`.
    pub fn add_bias(row: &mut [f32], bias: &[f32]) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Sum in f64 over 8 independent lanes (vectorisable, and exact enough for LayerNorm).
#[inline(always)]
fn sum64(xs: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f(c[i] as f64);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f(v as f64)).sum::<f64>()
}

#[inline(always)]
fn layer_norm_body(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f64;
    let mean = sum64(row, |v| v) / n;
    let var = sum64(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    let (mean, inv) = (mean as f32, inv as f32);
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

simd! {
    /// `row = LN(row)` with biased variance; mean and variance accumulated in f64.
    pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        layer_norm_body(row, gamma, beta, eps)
    }
}

simd! {
    /// `row = LN(row + bias + residual)`: the post-LN residual block in one pass.
    pub fn bias_residual_layer_norm(row: &mut [f32], bias: &[f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        for ((v, b), r) in row.iter_mut().zip(bias).zip(residual) {
            *v += b + r;
        }
        layer_norm_body(row, gamma, beta, eps)
    }
}

/// e^x for x ≤ 0 (softmax inputs after subtracting the max): 2^n · e^r with |r| ≤ ln2/2 and a
/// degree-7 Taylor polynomial (relative error < 1e-8 before f32 rounding).
///
/// `n` is found by adding 1.5·2²³, which rounds to an integer kept in the low mantissa bits,
/// and 2^n is built from those bits: no float → int cast, whose saturating semantics keep
/// LLVM from vectorising the loop (it was a third of attention's time at reduced precision).
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // n ∈ [-126, 0]: the biased exponent n + 127 is a normal one.
    p * f32::from_bits(t.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127) << 23)
}

#[inline(always)]
fn lanes8(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    let mut r = acc.iter().copied().fold(init, &f);
    for &v in tail {
        r = f(r, v);
    }
    r
}

simd! {
    /// In-place softmax of one row.
    pub fn softmax(row: &mut [f32]) {
        let max = lanes8(row, f32::NEG_INFINITY, f32::max);
        for v in row.iter_mut() {
            *v = exp_nonpos(*v - max);
        }
        let inv = 1.0 / lanes8(row, 0.0, |a, b| a + b);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

simd! {
    /// `row / max(‖row‖₂, 1e-12)`.
    pub fn l2_normalize(row: &mut [f32]) {
        let norm = sum64(row, |v| v * v).sqrt() as f32;
        let inv = 1.0 / norm.max(1e-12);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

simd! {
    /// `a · b` accumulated over 8 lanes.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm_to_f32_resolution() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let z = i as f64 * 1e-4;
            worst = worst.max((erf64(z) - libm::erf(z)).abs());
        }
        assert!(worst < 6e-8, "max |erf error| {worst}");
    }

    /// Absolute error against f64 erf, relative to max(1, |x|): f32's own resolution (the tail
    /// x ≪ 0, where 1 + erf cancels, is where it is largest).
    #[test]
    fn f32_gelu_is_within_f32_resolution() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            worst = worst.max((gelu_f32(x) as f64 - want).abs() / (x.abs() as f64).max(1.0));
        }
        assert!(worst < 3e-7, "max GELU error {worst}");
    }

    #[test]
    fn gelu_is_exact_erf_form() {
        // Reference values of 0.5·x·(1+erf(x/√2)) computed in f64.
        for (x, want) in [
            (1.0f32, 0.841_344_746_068_542_9f64),
            (-0.5, -0.154_268_776_262_5),
            (3.0, 2.995_950_393_1),
        ] {
            assert!((gelu(x) as f64 - want).abs() < 1e-6, "{x}");
        }
        let mut row = [1.0f32, -0.5];
        bias_gelu(&mut row, &[0.0, 0.0]);
        assert_eq!(row, [gelu(1.0), gelu(-0.5)]);
    }

    #[test]
    fn exp_and_softmax_are_accurate() {
        for i in 0..=8700 {
            let x = -(i as f32) * 0.01;
            let (got, want) = (exp_nonpos(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 4e-7 * want + 1e-38, "exp({x}) = {got}, want {want}");
        }
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let want: Vec<f64> = {
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{g} vs {w}");
        }
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut r = [1.0f32, 2.0, 3.0, 4.0];
        layer_norm(&mut r, &[1.0; 4], &[0.0; 4], 1e-5);
        assert!((r.iter().sum::<f32>()).abs() < 1e-6);
        assert!((r[3] - 1.341_636).abs() < 1e-5);
        let mut a: Vec<f32> = (0..19).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut b = a.clone();
        let bias = vec![0.25f32; 19];
        let res: Vec<f32> = (0..19).map(|i| (i % 3) as f32).collect();
        bias_residual_layer_norm(&mut a, &bias, &res, &[1.0; 19], &[0.5; 19], 1e-5);
        for i in 0..19 {
            b[i] += bias[i] + res[i];
        }
        layer_norm(&mut b, &[1.0; 19], &[0.5; 19], 1e-5);
        assert_eq!(a, b);
    }

    #[test]
    fn dot_and_normalize() {
        let a: Vec<f32> = (0..21).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..21).map(|i| (i * i) as f32).sum::<f32>());
        let mut v = [3.0f32, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }
}
