//! Row-wise element passes fused after a GEMM: bias (+GELU), bias + residual + LayerNorm,
//! softmax, L2 normalisation.

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `row = LN(row)` with biased variance; mean and variance accumulated in f64.
#[inline]
pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    let (mean, inv) = (mean as f32, inv as f32);
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// In-place softmax of one row.
#[inline]
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `row / max(‖row‖₂, 1e-12)`.
#[inline]
pub fn l2_normalize(row: &mut [f32]) {
    let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
    let inv = 1.0 / norm.max(1e-12);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut r = [1.0f32, 2.0, 3.0, 4.0];
        layer_norm(&mut r, &[1.0; 4], &[0.0; 4], 1e-5);
        assert!((r.iter().sum::<f32>()).abs() < 1e-6);
        assert!((r[3] - 1.341_635_9).abs() < 1e-5);
    }
}
