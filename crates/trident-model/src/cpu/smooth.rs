//! Smoothing for the int8 precision (after SmoothQuant, Xiao et al. 2022): a trained encoder's
//! activations carry a few channels far larger than the rest, and a per-token int8 code sized
//! for those leaves the others a handful of levels. Each linear layer's input feature `k` is
//! divided by `f_k` and its weight column multiplied by it — the same product — with
//! `f_k = max|x_k|^α / max|W[·][k]|^(1−α)`, which moves part of the range from the activations
//! into the per-channel weight scales. The [`HELD_OUT`] features still largest after that are
//! taken out of the int8 product altogether (factor 0) and multiplied in f32
//! (`quant::HeldOut`). `max|x_k|` comes from a calibration pass of the f32 model over fixed
//! multilingual sentences when the model loads (`crate::calibrate`).

use std::collections::HashMap;
use std::sync::Mutex;

/// The migration strength. 0.5 (SmoothQuant's default for encoders) took the hybrid-score
/// Spearman's worst query from 0.9967 to 0.9987 on trained weights; with features held out,
/// 0.4 did better than 0.3, 0.5 and 0.6 (scripts/int8-emulate.py).
pub const ALPHA: f32 = 0.4;

/// Input features per layer held out of the int8 product: with 8, the worst query's Spearman
/// went from 0.99781 to 0.99926 and the worst ColBERT row cosine from 0.99865 to 0.99941
/// (scripts/fidelity-cpu.sh; 1, 2, 4 and 16 did less in scripts/int8-emulate.py), for 8 f32
/// multiply-adds per output against 384 to 4,096 int8 ones.
pub const HELD_OUT: usize = 8;

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
    /// are `parts`, 0 for a feature held out; `None` for a layer calibration did not see.
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
        let mut f: Vec<f32> = act
            .iter()
            .zip(&w_max)
            .map(|(&a, &w)| {
                if a <= floor || w <= 0.0 || !a.is_finite() {
                    return 1.0;
                }
                (a.powf(ALPHA) / w.powf(1.0 - ALPHA)).clamp(1e-3, 1e3)
            })
            .collect();
        // Held out: the largest smoothed ranges (a narrow layer keeps most of its features).
        let mut by_range: Vec<usize> = (0..k).filter(|&kk| act[kk].is_finite()).collect();
        by_range.sort_by(|&x, &y| (act[y] / f[y]).total_cmp(&(act[x] / f[x])));
        by_range.iter().take(HELD_OUT.min(k / 32)).for_each(|&kk| f[kk] = 0.0);
        Some(f)
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
        let want = |a: f32, w: f32| a.powf(ALPHA) / w.powf(1.0 - ALPHA);
        assert!((f[0] - want(100.0, 0.5)).abs() < 1e-4, "{f:?}");
        assert!((f[1] - want(1.0, 4.0)).abs() < 1e-6, "{f:?}");
        assert_eq!(f[2], 1.0, "an unseen feature keeps 1");
        // After smoothing, the two features' activation ranges are √(a·w) each: closer.
        assert!(100.0 / f[0] < 100.0 && 1.0 / f[1] > 1.0);
        assert!(s.factors("other", &[w], 3).is_none());
        assert!(s.factors("l", &[w], 2).is_none(), "a layer of another width is not smoothed");
    }

    #[test]
    fn the_largest_smoothed_ranges_are_held_out() {
        let k = 64 * HELD_OUT;
        let rec = Recorder::default();
        // Every feature moves; features 3, 67, 131, ... (every 64th from 3) are outliers.
        let x: Vec<f32> = (0..k).map(|kk| if kk % 64 == 3 { 50.0 } else { 1.0 }).collect();
        rec.record("l", &x, k);
        let w = vec![0.5f32; 2 * k];
        let f = rec.finish().factors("l", &[&w], k).unwrap();
        let held: Vec<usize> = (0..k).filter(|&kk| f[kk] == 0.0).collect();
        assert_eq!(held, (0..HELD_OUT).map(|h| 64 * h + 3).collect::<Vec<_>>());
        // A narrow layer holds out at most k / 32.
        let rec = Recorder::default();
        rec.record("n", &[9.0, 1.0, 1.0, 1.0], 4);
        assert!(rec.finish().factors("n", &[&[1.0; 4][..]], 4).unwrap().iter().all(|&f| f > 0.0));
    }
}
