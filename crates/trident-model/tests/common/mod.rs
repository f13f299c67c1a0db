//! Shared helpers: the tiny BGE-M3 fixture and the tolerance rule of its expected.json.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;
use trident_core::Embedding;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tiny() -> PathBuf {
    fixtures().join("tiny-m3")
}

pub fn expected() -> &'static Value {
    static E: OnceLock<Value> = OnceLock::new();
    E.get_or_init(|| {
        let text = std::fs::read_to_string(tiny().join("expected.json")).expect("expected.json");
        serde_json::from_str(&text).expect("expected.json parses")
    })
}

pub fn texts() -> Vec<String> {
    expected()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// (text index, expected item) for one max length.
pub fn items(max_length: usize) -> Vec<(usize, &'static Value)> {
    expected()["encode"][max_length.to_string()]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| (it["text_index"].as_u64().unwrap() as usize, it))
        .collect()
}

pub fn ids(item: &Value) -> Vec<u32> {
    item["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn tol(tokens: usize) -> f64 {
    let t = &expected()["tolerance"];
    if tokens as u64 >= t["long_if_at_least_tokens"].as_u64().unwrap() {
        t["long"].as_f64().unwrap()
    } else {
        t["short"].as_f64().unwrap()
    }
}

fn close(what: &str, a: f32, e: f64, tol: f64) -> Result<(), String> {
    if (a as f64 - e).abs() <= tol * (1.0 + e.abs()) {
        Ok(())
    } else {
        Err(format!("{what}: got {a}, expected {e} (tol {tol})"))
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Compares one embedding with an expected item of expected.json: ids count, dense, lexical
/// weights (same key set, values) and ColBERT rows, with the file's tolerance rule.
pub fn check(label: &str, got: &Embedding, item: &Value) -> Result<(), String> {
    let n = ids(item).len();
    if got.tokens != n {
        return Err(format!("{label}: {} tokens, expected {n}", got.tokens));
    }
    let tol = tol(n);
    let dense = got.dense.as_ref().ok_or(format!("{label}: no dense"))?;
    let want = floats(&item["dense_vecs"]);
    if dense.len() != want.len() {
        return Err(format!("{label}: dense has {} values, expected {}", dense.len(), want.len()));
    }
    for (i, (a, e)) in dense.iter().zip(&want).enumerate() {
        close(&format!("{label}: dense[{i}]"), *a, *e, tol)?;
    }
    let sparse = got.sparse.as_ref().ok_or(format!("{label}: no sparse"))?;
    let want = item["lexical_weights"].as_object().unwrap();
    let got_keys: Vec<String> = sparse.iter().map(|(k, _)| k.to_string()).collect();
    let want_keys: Vec<String> = want.keys().cloned().collect();
    let (mut gs, mut ws) = (got_keys.clone(), want_keys.clone());
    gs.sort();
    ws.sort();
    if gs != ws {
        return Err(format!("{label}: lexical keys {got_keys:?}, expected {want_keys:?}"));
    }
    for (k, w) in sparse {
        close(&format!("{label}: lexical[{k}]"), *w, want[&k.to_string()].as_f64().unwrap(), tol)?;
    }
    let colbert = got.colbert.as_ref().ok_or(format!("{label}: no colbert"))?;
    let want = item["colbert_vecs"].as_array().unwrap();
    let rows: Vec<&[f32]> = got.colbert_rows().collect();
    if rows.len() != want.len() || colbert.len() != rows.len() * got.colbert_dim {
        return Err(format!("{label}: {} ColBERT rows, expected {}", rows.len(), want.len()));
    }
    for (r, (row, w)) in rows.iter().zip(want).enumerate() {
        let w = floats(w);
        if row.len() != w.len() {
            return Err(format!(
                "{label}: ColBERT row {r} has {} values, expected {}",
                row.len(),
                w.len()
            ));
        }
        for (c, (a, e)) in row.iter().zip(&w).enumerate() {
            close(&format!("{label}: colbert[{r}][{c}]"), *a, *e, tol)?;
        }
    }
    Ok(())
}

/// Copies the fixture into a temp dir, leaving out the named files.
pub fn copy_without(skip: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if skip.contains(&name.as_str()) || name == "expected.json" {
            continue;
        }
        std::fs::copy(entry.path(), dir.path().join(&name)).unwrap();
    }
    dir
}
