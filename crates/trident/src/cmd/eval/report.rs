//! `trident eval`'s report: run names and files, methods' JSON names, metric maps and the table.

use std::fmt::Write as _;

use serde_json::{json, Value};
use trident_core::eval::Metric;
use trident_core::retrieve::{Method, RunSpec};

/// A run's file name: its name with characters other than `[A-Za-z0-9+._@,-]` as `_`.
pub(super) fn run_file_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+._@,-".contains(c) { c } else { '_' })
        .collect();
    format!("{safe}.trec")
}

pub(super) fn weights_of(m: Method) -> Option<[f32; 3]> {
    match m {
        Method::Dense => Some([1.0, 0.0, 0.0]),
        Method::Sparse => Some([0.0, 1.0, 0.0]),
        Method::Colbert => Some([0.0, 0.0, 1.0]),
        Method::Hybrid(w) => Some(w),
    }
}

/// An f32 as the shortest decimal that reads back to it (0.3, not 0.30000001192092896).
pub(super) fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// The method's JSON name and what its candidates are.
pub(super) fn method_name(m: Method) -> (&'static str, &'static str) {
    match m {
        Method::Dense => ("dense", "all passages"),
        Method::Sparse => ("sparse", "passages sharing a token with the query"),
        Method::Colbert => ("colbert", "the dense top depth, re-ranked"),
        Method::Hybrid(_) => ("hybrid", "the dense top depth ∪ the sparse top depth"),
    }
}

pub(super) fn metric_map(metrics: &[Metric], values: &[f64]) -> Value {
    Value::Object(metrics.iter().zip(values).map(|(m, v)| (m.key(), json!(v))).collect())
}

pub(super) fn table(
    results: &[(RunSpec, Vec<f64>, usize, f64)],
    random: &[f64],
    metrics: &[Metric],
    passages: usize,
    queries: usize,
    judgements: usize,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{passages} passages, {queries} queries, {judgements} judgements (mean over queries)"
    );
    let name_w = results.iter().map(|r| r.0.name.chars().count()).max().unwrap_or(4).max(17);
    let _ = write!(s, "{:<name_w$}  {:<16}  {:>5}", "run", "weights d,s,c", "depth");
    for m in metrics {
        let _ = write!(s, "  {:>7}", m.heading());
    }
    s.push('\n');
    for (spec, mean, _, _) in results {
        let w = match spec.method {
            Method::Dense | Method::Sparse | Method::Colbert => "-".to_string(),
            Method::Hybrid(w) => format!("{},{},{}", w[0], w[1], w[2]),
        };
        let _ = write!(s, "{:<name_w$}  {:<16}  {:>5}", spec.name, w, spec.depth);
        for v in mean {
            let _ = write!(s, "  {v:>7.4}");
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<name_w$}  {:<16}  {:>5}", "random (expected)", "-", passages);
    for v in random {
        let _ = write!(s, "  {v:>7.4}");
    }
    s.push('\n');
    s
}
