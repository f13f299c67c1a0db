//! Smoothing for the int8 precision (after SmoothQuant, Xiao et al. 2022): a trained encoder's
//! activations carry a few channels far larger than the rest, and a per-token int8 code sized
//! for those leaves the others a handful of levels. Each linear layer's input feature `k` is
//! divided by `f_k` and its weight column multiplied by it — the same product — with
//! `f_k = max|x_k|^α / max|W[·][k]|^(1−α)`, which moves part of the range from the activations
//! into the per-channel weight scales. `max|x_k|` comes from a calibration pass of the f32 model
//! over fixed multilingual sentences when the model loads (`crate::calibrate`).

use std::collections::HashMap;
use std::sync::Mutex;

/// The migration strength: 0.5 splits the range evenly (SmoothQuant's default for encoders;
/// on trained weights it took the hybrid-score Spearman's worst query from 0.9967 to 0.9987).
pub const ALPHA: f32 = 0.5;

/// Per linear layer (by name), the largest `|x_k|` each input feature reached in calibration.
#[derive(Debug, Default)]
pub struct Smoothing {
    act_max: HashMap<String, Vec<f32>>,
}

impl Smoothing {
    /// Layers calibrated.
    pub fn layers(&self) -> usize {
        self.act_max.len()
    }

    /// The factors `f_k` of layer `name`, whose weight parts (`[out_i × k]` each, one input)
    /// are `parts`; `None` for a layer calibration did not see.
    pub fn factors(&self, name: &str, parts: &[&[f32]], k: usize) -> Option<Vec<f32>> {
        let act = self.act_max.get(name).filter(|a| a.len() == k)?;
        let mut w_max = vec![0f32; k];
        for part in parts {
            for row in part.chunks_exact(k) {
                w_max.iter_mut().zip(row).for_each(|(m, x)| *m = m.max(x.abs()));
            }
        }
        // A feature calibration never saw move (or a zero weight column) keeps factor 1: a
        // tiny f_k would blow a live activation up past every other feature.
        let floor = act.iter().sum::<f32>() / k as f32 * 1e-2;
        Some(
            act.iter()
                .zip(&w_max)
                .map(|(&a, &w)| {
                    if a <= floor || w <= 0.0 || !a.is_finite() {
                        return 1.0;
                    }
                    (a.powf(ALPHA) / w.powf(1.0 - ALPHA)).clamp(1e-3, 1e3)
                })
                .collect(),
        )
    }
}

/// Collects [`Smoothing`] while an f32 backend runs the calibration sentences.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<HashMap<String, Vec<f32>>>);

impl Recorder {
    /// Folds a `[rows × k]` input of layer `name` into its per-feature maxima.
    pub fn record(&self, name: &str, x: &[f32], k: usize) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let max = map.entry(name.to_string()).or_insert_with(|| vec![0.0; k]);
        if max.len() != k {
            return;
        }
        for row in x.chunks_exact(k) {
            max.iter_mut().zip(row).for_each(|(m, v)| *m = m.max(v.abs()));
        }
    }

    /// The maxima recorded so far.
    pub fn finish(&self) -> Smoothing {
        Smoothing { act_max: self.0.lock().unwrap_or_else(|e| e.into_inner()).clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_balance_activation_and_weight_ranges() {
        let rec = Recorder::default();
        // Feature 0 is an outlier (100), feature 1 ordinary (1), feature 2 never moves.
        rec.record("l", &[100.0, -1.0, 0.0, -50.0, 0.5, 0.0], 3);
        let s = rec.finish();
        let w: &[f32] = &[0.5, 1.0, 2.0, -0.25, 4.0, 1.0];
        let f = s.factors("l", &[&w[..3], &w[3..]], 3).unwrap();
        assert!((f[0] - (100f32.sqrt() / 0.5f32.sqrt())).abs() < 1e-4, "{f:?}");
        assert!((f[1] - (1.0 / 4f32.sqrt())).abs() < 1e-6, "{f:?}");
        assert_eq!(f[2], 1.0, "an unseen feature keeps 1");
        // After smoothing, the two features' activation ranges are √(a·w) each: closer.
        assert!(100.0 / f[0] < 100.0 && 1.0 / f[1] > 1.0);
        assert!(s.factors("other", &[w], 3).is_none());
        assert!(s.factors("l", &[w], 2).is_none(), "a layer of another width is not smoothed");
    }
}
