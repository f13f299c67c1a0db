//! The stream under real outputs and hostile input (issue 12), against real servers: `tansu`
//! as the Kafka broker, `redis-server`, and `trident node` processes with the tiny model.
//!
//! The node's producer runs with `message.max.bytes` = 64 KiB here, so that documents of a few
//! hundred tokens give outputs over the limit as a 1024-dim model's do at ~85 tokens under the
//! default 1 MB: the same code path, at the tiny model's scale.
//!
//! The tests are grouped by concern: `outputs` (outputs the output topic cannot take: dead
//! letters, the result store, the ColBERT topic, a broker that refuses them), `versions` (the
//! newest version of a document wins), `limits` (memory and duplicates bounded by the in-flight
//! limits); the helpers below are theirs.

#[path = "../cluster_support/mod.rs"]
mod cluster_support;
#[path = "../common/mod.rs"]
mod common;
mod limits;
mod outputs;
mod versions;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_support::*;

const PARTS: i32 = 4;
const LIMIT: usize = 64 * 1024;

/// A node config with the small producer limit and a short retry budget.
fn node_config(env: &Env, extra: &str) -> PathBuf {
    let path = env.dir.path().join("node.toml");
    let text = format!(
        "produce_retry_ms = 5000\n{extra}\n[kafka_producer]\n\"message.max.bytes\" = {LIMIT}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn json_rec(key: &str, value: serde_json::Value, partition: i32) -> Rec {
    Rec { key: Some(key.as_bytes().to_vec()), value: value.to_string().into_bytes(), partition }
}

/// Whether an output fits a message under `LIMIT` (as the node judges it).
fn fits(out: &serde_json::Value) -> bool {
    let id = out["id"].as_str().unwrap_or_default();
    out.to_string().len() + id.len() + 512 <= LIMIT
}

/// `n` documents long enough that their output is over `LIMIT` (checked against the reference).
fn long_docs(env: &Env, prefix: &str, n: usize) -> Vec<(String, String)> {
    let docs: Vec<(String, String)> = (0..n)
        .map(|i| {
            let words = ["stream", "kafka", "vector", "chat", "noir", "Straße", "数据", "🙂"];
            let text: Vec<&str> =
                (0..400 + 37 * i).map(|j| words[(j * 7 + i) % words.len()]).collect();
            (format!("{prefix}-long-{i}"), text.join(" "))
        })
        .collect();
    for (id, out) in reference(env.dir.path(), &docs) {
        assert!(
            !fits(&out),
            "{id}: output of {} bytes should be over {LIMIT}",
            out.to_string().len()
        );
    }
    docs
}

/// `trident lookup`'s result for each id (all must be stored).
fn lookup(url: &str, ids: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(TRIDENT)
        .args(["lookup", "--redis", url])
        .args(ids)
        .output()
        .unwrap();
    assert!(out.status.success(), "lookup: {}", String::from_utf8_lossy(&out.stdout));
    let lines = std::str::from_utf8(&out.stdout).unwrap().lines();
    let values: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(values.len(), ids.len());
    values
}

/// One past the last offset of each partition, from the produced positions.
fn ends(positions: &[(i32, i64)]) -> Vec<i64> {
    let mut ends = vec![0i64; PARTS as usize];
    for (p, o) in positions {
        ends[*p as usize] = ends[*p as usize].max(o + 1);
    }
    ends
}

/// Every record of every partition acknowledged: the group's committed offsets reach the ends.
fn wait_committed_to_end(env: &Env, group: &str, topic: &str, ends: &[i64], limit: Duration) {
    let mut last = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        last = env.committed(group, topic, PARTS);
        if last == ends {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("committed offsets {last:?} did not reach the partition ends {ends:?} in {limit:?}");
}
