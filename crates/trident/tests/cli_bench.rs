//! `trident bench`: its one JSON line counts the corpus correctly, on a checkpoint directory
//! and on `--random xlmr-large` with the bundled real tokenizer.

mod common;

use std::process::{Command, Output};

use common::{expected, repo, TRIDENT};
use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    Command::new(TRIDENT).arg("bench").args(args).current_dir(repo()).output().unwrap()
}

fn report(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line: {text}");
    serde_json::from_str(lines[0]).unwrap()
}

fn check_rates(r: &Value) {
    let secs = r["seconds"].as_f64().unwrap();
    assert!(secs > 0.0);
    let tps = r["tokens_per_s"].as_f64().unwrap();
    let expect = r["tokens"].as_f64().unwrap() / secs;
    assert!((tps - expect).abs() <= 1e-9 * expect, "{r}");
    let dps = r["docs_per_s"].as_f64().unwrap();
    assert!((dps - r["docs"].as_f64().unwrap() / secs).abs() <= 1e-9 * dps, "{r}");
    let share = r["tokenize_share"].as_f64().unwrap();
    assert!(share > 0.0 && share <= 1.0, "{r}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(r["time_to_first_embedding_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn tiny_model_counts_the_fixture_corpus() {
    let exp = expected();
    // Every text up to 512 tokens, as JSON Lines; token counts from the reference's input_ids.
    let dir = tempfile::tempdir().unwrap();
    let mut corpus = String::new();
    let (mut docs, mut tokens) = (0, 0);
    for item in exp["encode"]["8192"].as_array().unwrap() {
        let n = item["input_ids"].as_array().unwrap().len();
        if n > 512 {
            continue;
        }
        let text = &exp["texts"][item["text_index"].as_u64().unwrap() as usize];
        corpus += &(serde_json::json!({"id": docs, "text": text}).to_string() + "\n");
        docs += 1;
        tokens += n;
    }
    let path = dir.path().join("corpus.jsonl");
    std::fs::write(&path, corpus).unwrap();
    let r = report(&bench(&[
        "--model",
        "tests/fixtures/tiny-m3",
        "--corpus",
        path.to_str().unwrap(),
        "--repeat",
        "2",
        "--batch-tokens",
        "256",
        "--threads",
        "1",
    ]));
    assert_eq!(r["docs"], docs, "{r}");
    assert_eq!(r["tokens"], tokens, "{r}");
    assert_eq!(r["threads"], 1);
    assert_eq!(r["all_seconds"].as_array().unwrap().len(), 2);
    assert!(r["batches"].as_u64().unwrap() > 1, "256-token budget needs several batches: {r}");
    assert_eq!(r["modes"], serde_json::json!(["dense", "sparse", "colbert"]));
    check_rates(&r);
}

#[test]
fn random_xlmr_large_uses_the_real_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.jsonl");
    // "Hello world" is [0, 35378, 8999, 2] with the real XLM-R tokenizer: 4 tokens a line.
    std::fs::write(&path, "Hello world\n{\"id\": 2, \"text\": \"Hello world\"}\nHello world\n")
        .unwrap();
    let r = report(&bench(&[
        "--random",
        "xlmr-large",
        "--layers",
        "1",
        "--corpus",
        path.to_str().unwrap(),
        "--repeat",
        "1",
        "--modes",
        "dense",
    ]));
    assert_eq!(r["docs"], 3, "{r}");
    assert_eq!(r["tokens"], 12, "{r}");
    assert_eq!(r["modes"], serde_json::json!(["dense"]));
    let model = r["model"].as_str().unwrap();
    assert!(model.contains("xlmr-large") && model.contains("layers=1"), "{model}");
    assert!(r["backend"].as_str().unwrap().contains("1024"), "{r}");
    check_rates(&r);
}

#[test]
fn bench_usage_errors() {
    let out = bench(&["--corpus", "x.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "needs --model or --random");
    let out = bench(&["--model", "tests/fixtures/tiny-m3", "--corpus", "/no/such/corpus.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/corpus.jsonl"));
    let out = bench(&[
        "--model",
        "tests/fixtures/tiny-m3",
        "--corpus",
        "examples/docs.jsonl",
        "--modes",
        "dense,lexical",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lexical"));
    let out = bench(&["--model", "tests/fixtures/tiny-m3", "--corpus", "x.jsonl", "--layers", "2"]);
    assert_eq!(out.status.code(), Some(2), "--layers is for --random only");
}
