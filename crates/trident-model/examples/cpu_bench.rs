//! Encoder throughput on the CPU backend for a JSONL corpus (`{"text": ...}` per line):
//! documents sorted by length and packed into batches of at most `--batch-tokens` tokens,
//! warm-up excluded, median of `--repeat` runs. One JSON line on stdout.
//!
//!     cargo run --release -p trident-model --example cpu_bench -- \
//!         --model DIR --corpus FILE [--threads 2] [--batch-tokens 16384] [--repeat 3]
//!         [--max-length 8192] [--precision f32|bf16|int8]
//!
//! `--random-layers N` replaces `--model`'s weights with random ones of the same config but N
//! layers (tokenizer still read from `--model`).

use std::path::PathBuf;
use std::time::Instant;

use trident_core::{Modes, TokenizedDoc};
use trident_model::{cpu::CpuBackend, Checkpoint, Encoder, ModelConfig, Tokenizer};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// User + system CPU seconds of this process, all threads (Linux; 0 elsewhere): with other
/// work on the machine, tokens per CPU-second is steadier than tokens per second.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/[pid]/stat (utime, stime), in clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set (VmHWM) in KiB (Linux; 0 elsewhere).
fn peak_rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(arg(&args, "--model").expect("--model DIR"));
    let corpus = arg(&args, "--corpus").expect("--corpus FILE");
    let threads: usize = arg(&args, "--threads").map_or(2, |s| s.parse().unwrap());
    let budget: usize = arg(&args, "--batch-tokens").map_or(16384, |s| s.parse().unwrap());
    let repeat: usize = arg(&args, "--repeat").map_or(3, |s| s.parse().unwrap());
    let max_length: usize = arg(&args, "--max-length").map_or(8192, |s| s.parse().unwrap());

    let t0 = Instant::now();
    let tok = Tokenizer::from_dir(&model).unwrap();
    let ckpt = match arg(&args, "--random-layers") {
        Some(n) => {
            let mut c = ModelConfig::from_file(&model.join("config.json")).unwrap();
            c.num_hidden_layers = n.parse().unwrap();
            Checkpoint::random(c, 1)
        }
        None => Checkpoint::open(&model).unwrap(),
    };
    let precision = arg(&args, "--precision").map_or(Default::default(), |s| s.parse().unwrap());
    let backend = CpuBackend::with_precision(threads, precision);
    eprintln!("{}", trident_model::Backend::describe(&backend));
    let enc = Encoder::new(&ckpt, backend).unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    let first = tok.encode("The first embedding after start-up.", max_length).unwrap();
    enc.encode(&[first], Modes::ALL).unwrap();
    let first_embedding_s = t0.elapsed().as_secs_f64();

    let texts: Vec<String> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let t1 = Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut docs = tok.encode_batch(&refs, max_length).unwrap();
    let tokenize_s = t1.elapsed().as_secs_f64();
    docs.sort_by_key(|d| std::cmp::Reverse(d.ids.len()));
    let tokens: usize = docs.iter().map(|d| d.ids.len()).sum();
    let mut batches: Vec<Vec<TokenizedDoc>> = Vec::new();
    let mut cur: Vec<TokenizedDoc> = Vec::new();
    let mut cur_tokens = 0;
    for d in docs {
        if !cur.is_empty() && cur_tokens + d.ids.len() > budget {
            batches.push(std::mem::take(&mut cur));
            cur_tokens = 0;
        }
        cur_tokens += d.ids.len();
        cur.push(d);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    // Warm-up: the smallest batch.
    enc.encode(batches.last().unwrap(), Modes::ALL).unwrap();
    let mut times = Vec::new();
    let cpu0 = cpu_seconds();
    for _ in 0..repeat {
        let t = Instant::now();
        for b in &batches {
            std::hint::black_box(enc.encode(b, Modes::ALL).unwrap());
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu_per_run = (cpu_seconds() - cpu0) / repeat as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let s = sorted[sorted.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "trident-model cpu_bench", "backend": enc.backend().threads(), "threads": threads,
            "docs": texts.len(), "tokens": tokens, "batches": batches.len(), "batch_tokens": budget,
            "seconds": s, "all_seconds": times, "tokens_per_s": tokens as f64 / s,
            "docs_per_s": texts.len() as f64 / s,
            "cpu_seconds_per_run": cpu_per_run, "first_embedding_seconds": first_embedding_s,
            "peak_rss_mib": peak_rss_kib() / 1024.0, "tokens_per_cpu_s": tokens as f64 / cpu_per_run, "load_seconds": load_s, "tokenize_seconds": tokenize_s,
        })
    );
}
