//! Helpers shared by the integration test binaries (`mod common;` in each that uses them):
//! the `trident` binary, the repository and the tiny fixture model, the Python interpreter,
//! free loopback ports and server binaries on PATH.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};

use serde_json::Value;

pub const TRIDENT: &str = env!("CARGO_BIN_EXE_trident");

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The tiny fixture model (tests/fixtures/tiny-m3).
pub fn tiny() -> PathBuf {
    repo().join("tests/fixtures/tiny-m3")
}

/// The reference outputs of the tiny model (tests/fixtures/tiny-m3/expected.json).
pub fn expected() -> Value {
    let text = std::fs::read_to_string(tiny().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The tiny model's hidden size (its dense and ColBERT dimension).
pub fn hidden_size() -> u64 {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    cfg["hidden_size"].as_u64().unwrap()
}

/// The Python interpreter: `PYTHON`, default `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Writes `input` to the child's stdin, closes it and waits for the output. A run that fails
/// early (bad flags or config, missing model) may exit before reading its input: the broken
/// pipe that leaves is not the test's failure, the exit status and stderr are.
pub fn finish_with_stdin(mut child: Child, input: &[u8]) -> Output {
    if let Err(e) = child.stdin.take().expect("stdin is piped").write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing stdin: {e}");
    }
    child.wait_with_output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `name` in a directory of PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `redis-server`: `TRIDENT_REDIS_SERVER`, then PATH.
pub fn find_redis() -> Option<PathBuf> {
    std::env::var_os("TRIDENT_REDIS_SERVER").map(PathBuf::from).or_else(|| which("redis-server"))
}

/// 1 − 2·Hamming/dim MaxSim of the sign bits of two f32 ColBERT matrices (JSON rows, as
/// `trident embed` writes them).
pub fn hamming_maxsim(q: &Value, p: &Value) -> f64 {
    let f = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    let bits = |m: &Value| -> Vec<Vec<bool>> {
        m.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| f(x) > 0.0).collect())
            .collect()
    };
    let (q, p) = (bits(q), bits(p));
    let dim = q[0].len() as f64;
    let best = |qr: &Vec<bool>| {
        p.iter()
            .map(|pr| 1.0 - 2.0 * qr.iter().zip(pr).filter(|(a, b)| a != b).count() as f64 / dim)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    q.iter().map(best).sum::<f64>() / q.len() as f64
}
