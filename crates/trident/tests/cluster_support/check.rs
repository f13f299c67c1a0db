//! What the tests check outputs and nodes against: `trident embed`'s outputs, metrics.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::kafka::Out;
use crate::common::{tiny, TRIDENT};

/// `trident embed`'s output for each text (id removed), computed once per text for the whole
/// test binary: the corpora of all tests draw from the same text sequence.
pub fn reference(dir: &Path, docs: &[(String, String)]) -> HashMap<String, serde_json::Value> {
    static BY_TEXT: Mutex<Option<HashMap<String, serde_json::Value>>> = Mutex::new(None);
    let mut guard = BY_TEXT.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    let missing: Vec<&String> = {
        let mut seen = std::collections::HashSet::new();
        docs.iter().map(|d| &d.1).filter(|t| !cache.contains_key(*t) && seen.insert(*t)).collect()
    };
    if !missing.is_empty() {
        let input = dir.join("ref-in.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for (i, text) in missing.iter().enumerate() {
            writeln!(f, "{}", serde_json::json!({"id": i, "text": text})).unwrap();
        }
        drop(f);
        let out = Command::new(TRIDENT)
            .arg("embed")
            .arg("--model")
            .arg(tiny())
            .arg("--input")
            .arg(&input)
            .output()
            .expect("run trident embed");
        assert!(
            out.status.success(),
            "trident embed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(lines.len(), missing.len(), "one output line per input line");
        for (text, line) in missing.iter().zip(lines) {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("id");
            cache.insert((*text).clone(), v);
        }
    }
    docs.iter()
        .map(|(id, text)| {
            let mut v = cache[text].clone();
            v.as_object_mut().unwrap().insert("id".into(), serde_json::Value::String(id.clone()));
            (id.clone(), v)
        })
        .collect()
}

/// Compare two output objects: same keys, ids, token counts, sparse keys; floats within 1e-5.
pub fn assert_same_output(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    fn close(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
        use serde_json::Value::*;
        match (a, b) {
            (Number(x), Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5, "{path}: {x} vs {y}");
            }
            (Array(x), Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}: lengths differ");
                x.iter()
                    .zip(y)
                    .enumerate()
                    .for_each(|(i, (a, b))| close(a, b, &format!("{path}[{i}]")));
            }
            (Object(x), Object(y)) => {
                let kx: Vec<_> = x.keys().collect();
                let ky: Vec<_> = y.keys().collect();
                assert_eq!(kx, ky, "{path}: keys differ");
                x.iter().for_each(|(k, v)| close(v, &y[k], &format!("{path}.{k}")));
            }
            _ => assert_eq!(a, b, "{path}"),
        }
    }
    close(got, want, what);
}

/// Scrape `name` from a node's metrics endpoint (sum over label sets).
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let vals: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum())
}

/// Wait until `cond`, polling, or panic with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ids of the output records (by key), with how many times each appeared.
pub fn id_counts(outs: &[Out]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for o in outs {
        *m.entry(o.key_str()).or_insert(0) += 1;
    }
    m
}
