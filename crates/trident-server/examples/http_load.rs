//! A bounded HTTP load generator for `/embed`: C concurrent clients on loopback send requests of
//! N inputs each until a request count or a time limit is reached; prints requests/s, inputs/s
//! and latency percentiles.
//!
//! ```sh
//! trident serve --model tests/fixtures/tiny-m3 --port 8080 &
//! cargo run --release -p trident-server --example http_load -- \
//!     --url http://127.0.0.1:8080 --concurrency 16 --inputs 32 --requests 4000 --seconds 30
//! ```
//! Texts come from `--texts FILE` (JSON Lines with a "text" field, or plain lines), cycled so
//! that consecutive requests differ.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    url: String,
    concurrency: usize,
    inputs: usize,
    requests: usize,
    seconds: f64,
    warmup: usize,
    texts: Option<String>,
}

fn parse() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        concurrency: 16,
        inputs: 1,
        requests: 2000,
        seconds: 30.0,
        warmup: 50,
        texts: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val(),
            "--concurrency" => a.concurrency = val().parse().expect("--concurrency N"),
            "--inputs" => a.inputs = val().parse().expect("--inputs N"),
            "--requests" => a.requests = val().parse().expect("--requests N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds S"),
            "--warmup" => a.warmup = val().parse().expect("--warmup N"),
            "--texts" => a.texts = Some(val()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn load_texts(path: Option<&str>) -> Vec<String> {
    let Some(path) = path else {
        return (0..512)
            .map(|i| {
                format!(
                    "query {i}: how do multilingual embedding models handle document {}",
                    i * 7 % 113
                )
            })
            .collect();
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v["text"].is_string() => v["text"].as_str().unwrap().to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// Request `k`'s inputs: `inputs` consecutive texts, cycling through the list.
fn body(texts: &[String], inputs: usize, k: usize) -> serde_json::Value {
    let batch: Vec<&str> =
        (0..inputs).map(|j| texts[(k * inputs + j) % texts.len()].as_str()).collect();
    serde_json::json!({ "inputs": batch })
}

/// Measured requests start past the warm-up ones (their texts differ).
const MEASURED: usize = 1 << 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args = parse();
    let texts = Arc::new(load_texts(args.texts.as_deref()));
    let url = format!("{}/embed", args.url.trim_end_matches('/'));
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    for k in 0..args.warmup {
        let r = http
            .post(&url)
            .json(&body(&texts, args.inputs, k))
            .send()
            .await
            .expect("warmup request");
        assert!(r.status().is_success(), "warmup: HTTP {}", r.status());
    }
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, url, next, texts) = (http.clone(), url.clone(), next.clone(), texts.clone());
            let (limit, inputs) = (args.requests, args.inputs);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= limit || Instant::now() >= deadline {
                        return lat;
                    }
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .json(&body(&texts, inputs, k + MEASURED))
                        .send()
                        .await
                        .expect("request");
                    let status = r.status();
                    let _ = r.bytes().await.expect("response body");
                    assert!(status.is_success(), "HTTP {status}");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    for c in clients {
        lat.extend(c.await.unwrap());
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = lat.len();
    println!(
        "concurrency {} · {} inputs/request · {} requests in {:.2} s: {:.1} requests/s, {:.1} inputs/s, \
         latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        args.concurrency,
        args.inputs,
        n,
        wall,
        n as f64 / wall,
        (n * args.inputs) as f64 / wall,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat[n - 1]
    );
}
