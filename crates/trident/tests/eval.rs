//! `trident eval`: the metrics against pytrec_eval (trec_eval) on synthetic runs with ties,
//! missing judgements, graded and negative judgements; the retrieval of every run against
//! brute force in numpy on a synthetic corpus; the README example (tests/fixtures/eval with the
//! tiny model) in under a minute; embeddings saved and reused.
//!
//! The Python checks live in tests/eval/; their packages (numpy, pytrec-eval-terrier) come from
//! `bash scripts/test.sh`; without them these tests fail, saying so (never a silent skip).
//! `PYTHON` selects the interpreter (default `python3`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{python, repo, tiny, TRIDENT};
use serde_json::{json, Value};
use trident_core::eval::{evaluate, Metric, Qrels};

/// Runs tests/eval/<script>; a missing interpreter or package fails with the way to get them.
fn python_check(script: &str, args: &[&str]) -> Value {
    let py = python();
    let out = Command::new(&py)
        .arg(repo().join("tests/eval").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {py} ({e}): the eval tests need Python 3 with numpy and \
                 pytrec-eval-terrier, which `bash scripts/test.sh` installs (or set PYTHON)"
            )
        });
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(
        code, 3,
        "{script}: Python packages missing for {py}; run `bash scripts/test.sh`, which installs \
         the pinned versions.\n{stderr}"
    );
    assert_eq!(code, 0, "{script} {args:?} failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or("{}");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{script}: summary {line:?}: {e}"))
}

fn eval(args: &[&str]) -> Output {
    Command::new(TRIDENT).arg("eval").args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "trident eval failed ({:?}):\n{stderr}", out.status);
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// splitmix64: a small seeded generator for the synthetic runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn metrics_match_pytrec_eval_with_ties_missing_and_graded_judgements() {
    let mut rng = Rng(42);
    let metrics: Vec<Metric> = [
        "ndcg@1",
        "ndcg@3",
        "ndcg@5",
        "ndcg@10",
        "ndcg@100",
        "recall@1",
        "recall@5",
        "recall@10",
        "recall@20",
        "recall@100",
        "recall@1000",
        "mrr@1",
        "mrr@3",
        "mrr@10",
    ]
    .iter()
    .map(|m| m.parse().unwrap())
    .collect();
    let mut qrels = Qrels::default();
    let mut runs: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    for q in 0..60 {
        let qid = format!("q{q}");
        let judged: HashMap<String, i64> = (0..rng.below(12) + 1)
            .map(|_| {
                let d = format!("d{}", rng.below(40));
                // Grades -1..=3; every 7th query has no relevant document at all.
                let g = if q % 7 == 0 { -(rng.below(2) as i64) } else { rng.below(5) as i64 - 1 };
                (d, g)
            })
            .collect();
        qrels.queries.insert(qid.clone(), judged);
        // Every 11th query retrieved nothing; scores from a few values (ties) or continuous.
        let n = if q % 11 == 3 { 0 } else { rng.below(40) + 1 };
        let tied = q % 2 == 0;
        let mut run: BTreeMap<String, f64> = BTreeMap::new();
        for _ in 0..n {
            let d = format!("d{}", rng.below(60)); // d40..d59 are never judged
            let s = if tied { rng.below(4) as f64 * 0.25 } else { rng.below(1 << 20) as f64 / 7.0 };
            run.insert(d, s);
        }
        runs.insert(qid, run.into_iter().collect());
    }
    // A run for a query without judgements is ignored (pytrec_eval leaves it out too).
    runs.insert("unjudged".into(), vec![("d1".into(), 1.0)]);
    let ev = evaluate(&runs, &qrels, &metrics);
    assert_eq!(ev.per_query.len(), 60);
    let ours: serde_json::Map<String, Value> = ev
        .per_query
        .iter()
        .map(|(q, vals)| {
            let m: serde_json::Map<String, Value> =
                metrics.iter().zip(vals).map(|(m, v)| (m.key(), json!(v))).collect();
            (q.clone(), Value::Object(m))
        })
        .collect();
    let runs_json: serde_json::Map<String, Value> = runs
        .iter()
        .map(|(q, r)| {
            (q.clone(), Value::Object(r.iter().map(|(d, s)| (d.clone(), json!(s))).collect()))
        })
        .collect();
    let case = json!({"qrels": qrels.queries, "runs": runs_json, "ours": ours});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.json");
    std::fs::write(&path, case.to_string()).unwrap();
    let summary = python_check("check_metrics.py", &[path.to_str().unwrap()]);
    assert_eq!(summary["values"], 60 * metrics.len());
}

#[test]
fn every_run_equals_numpy_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = d.to_str().unwrap();
    python_check("brute_force.py", &["gen", ds]);
    let runs = d.join("runs");
    for (i, extra) in [
        // The MIRACL preset (dense@1000, sparse@1000, colbert@200, 1,0.3,0 @1000,
        // 1,0.3,1 @200) and weightings at a depth that cuts into 400 passages.
        vec![
            "--preset",
            "miracl",
            "--weights",
            "0.5,1,0.25",
            "--weights",
            "1,-0.5,2",
            "--depth",
            "30",
        ],
        vec!["--preset", "mldr", "--weights", "0,1,1", "--depth", "7"],
    ]
    .into_iter()
    .enumerate()
    {
        let json_path = d.join(format!("eval{i}.json"));
        let run_dir = runs.join(i.to_string());
        let mut args = vec![
            "--corpus-embeddings".to_string(),
            d.join("corpus.jsonl").display().to_string(),
            "--query-embeddings".into(),
            d.join("queries.jsonl").display().to_string(),
            "--qrels".into(),
            d.join("qrels.tsv").display().to_string(),
            "--json".into(),
            json_path.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&eval(&refs));
        let ev: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let n_runs = ev["runs"].as_array().unwrap().len();
        assert_eq!(n_runs, if i == 0 { 7 } else { 6 });
        let summary = python_check(
            "brute_force.py",
            &["check", ds, run_dir.to_str().unwrap(), json_path.to_str().unwrap()],
        );
        assert_eq!(summary["rankings"], n_runs * 30, "{summary}");
        assert_eq!(summary["means_checked_with_pytrec_eval"], true, "{summary}");
    }
}

fn fixture(name: &str) -> String {
    repo().join("tests/fixtures/eval").join(name).display().to_string()
}

#[test]
fn readme_example_prints_the_table_within_a_minute_and_embeddings_are_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("emb");
    let (j1, j2) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let t0 = Instant::now();
    let out = eval(&[
        "--model",
        &tiny().display().to_string(),
        "--corpus",
        &fixture("corpus.jsonl"),
        "--queries",
        &fixture("queries.jsonl"),
        "--qrels",
        &fixture("qrels/test.tsv"),
        "--threads",
        "2",
        "--json",
        j1.to_str().unwrap(),
        "--save-embeddings",
        saved.to_str().unwrap(),
    ]);
    let table = ok(&out);
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
    assert!(table.starts_with("300 passages, 40 queries, 200 judgements"), "{table}");
    for row in ["dense ", "sparse ", "colbert ", "dense+sparse ", "all ", "random (expected) "] {
        assert!(table.lines().any(|l| l.starts_with(row)), "no row {row:?}:\n{table}");
    }
    assert!(table.contains("nDCG@10") && table.contains("R@1000") && table.contains("MRR@10"));
    // The saved embeddings give the same figures without the model.
    let out = eval(&[
        "--corpus-embeddings",
        saved.join("corpus.jsonl").to_str().unwrap(),
        "--query-embeddings",
        saved.join("queries.jsonl").to_str().unwrap(),
        "--qrels",
        &fixture("qrels/test.tsv"),
        "--json",
        j2.to_str().unwrap(),
    ]);
    assert_eq!(ok(&out), table);
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    assert_eq!(read(&j1)["runs"][0]["metrics"], read(&j2)["runs"][0]["metrics"]);
    let r = read(&j1);
    assert_eq!(r["random_expected"]["recall@1000"], 1.0);
    assert_eq!(r["runs"][3]["weights"], json!([1.0, 0.3, 0.0]));
}

#[test]
fn trident_embed_output_is_read_as_embeddings() {
    // `trident embed` output, ids given, reused as both sides.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: String = std::fs::read_to_string(fixture("corpus.jsonl"))
        .unwrap()
        .lines()
        .take(50)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            json!({"id": v["_id"], "text": v["text"]}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let emb = dir.path().join("emb.jsonl");
    let st = Command::new(TRIDENT)
        .args(["embed", "--model"])
        .arg(tiny())
        .args(["--colbert-encoding", "f16", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&emb)
        .status()
        .unwrap();
    assert!(st.success());
    let qrels = dir.path().join("qrels.tsv");
    std::fs::write(&qrels, "query-id\tcorpus-id\tscore\np001\tp001\t1\np002\tp002\t1\n").unwrap();
    let e = emb.to_str().unwrap();
    let out = eval(&[
        "--corpus-embeddings",
        e,
        "--query-embeddings",
        e,
        "--qrels",
        qrels.to_str().unwrap(),
        "--runs",
        "dense,colbert",
    ]);
    let table = ok(&out);
    // A passage is its own nearest neighbour.
    let dense = table.lines().find(|l| l.starts_with("dense ")).unwrap();
    assert!(dense.trim_end().ends_with("1.0000"), "{table}");
    assert!(table.starts_with("50 passages, 2 queries"), "{table}");
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let q = fixture("qrels/test.tsv");
    let (c, qs) = (fixture("corpus.jsonl"), fixture("queries.jsonl"));
    let err = |out: Output| -> String {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(eval(&["--corpus", &c, "--queries", &qs, "--qrels", &q]));
    assert!(e.contains("--model is needed"), "{e}");
    let e = err(eval(&["--corpus", &c, "--queries", &qs, "--qrels", &q, "--runs", "nope"]));
    assert!(e.contains("no such run"), "{e}");
    let e = err(eval(&["--corpus", &c, "--queries", &qs, "--qrels", &q, "--depth", "5"]));
    assert!(e.contains("--weights"), "{e}");
    let e = err(eval(&["--corpus", &c, "--queries", &qs, "--qrels", &c]));
    assert!(e.contains("qrels line 1"), "{e}");
}

#[test]
fn mcls_changes_only_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], name: &str| -> Value {
        let j = dir.path().join(name);
        let mut args = vec![
            "--model".to_string(),
            tiny().display().to_string(),
            "--corpus".into(),
            fixture("corpus.jsonl"),
            "--queries".into(),
            fixture("queries.jsonl"),
            "--qrels".into(),
            fixture("qrels/test.tsv"),
            "--runs".into(),
            "dense,sparse".into(),
            "--json".into(),
            j.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&eval(&refs));
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap()
    };
    let plain = run(&[], "plain.json");
    let mcls = run(&["--mcls-every", "4"], "mcls.json");
    // Passages of the fixture have ~20-40 tokens: every 4 inserts several CLS tokens, which
    // moves the dense vectors; a huge interval inserts none.
    assert_ne!(plain["runs"][0]["metrics"], mcls["runs"][0]["metrics"]);
    let none = run(&["--mcls-every", "100000"], "none.json");
    assert_eq!(plain["runs"][0]["metrics"], none["runs"][0]["metrics"]);
    assert_eq!(plain["runs"][1]["metrics"], none["runs"][1]["metrics"]);
    let out = eval(&[
        "--qrels",
        &fixture("qrels/test.tsv"),
        "--corpus",
        &fixture("corpus.jsonl"),
        "--queries",
        &fixture("queries.jsonl"),
        "--model",
        &tiny().display().to_string(),
        "--mcls-every",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn parquet_parts_of_trident_embed_are_read_as_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows: Vec<Value> = std::fs::read_to_string(fixture("corpus.jsonl"))
        .unwrap()
        .lines()
        .take(60)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let jsonl: String = rows
        .iter()
        .map(|v| json!({"id": v["_id"], "text": v["text"]}).to_string() + "\n")
        .collect();
    std::fs::write(d.join("in.jsonl"), &jsonl).unwrap();
    let py = format!(
        "import json, pyarrow as pa, pyarrow.parquet as pq\n\
         rows = [json.loads(l) for l in open({in_:?})]\n\
         pq.write_table(pa.table({{'id': [r['id'] for r in rows], 'text': [r['text'] for r in rows]}}), {out:?})\n",
        in_ = d.join("in.jsonl").display().to_string(),
        out = d.join("in.parquet").display().to_string()
    );
    let st = Command::new(python()).args(["-c", &py]).status().expect("python3 with pyarrow");
    assert!(st.success(), "writing Parquet with pyarrow (bash scripts/test.sh installs it)");
    let tiny = tiny();
    let embed = |input: &str, output: &Path, enc: [&str; 2]| {
        let st = Command::new(TRIDENT)
            .arg("embed")
            .arg("--model")
            .arg(&tiny)
            .args(["--input", input, "--output", output.to_str().unwrap()])
            .args(["--dense-encoding", enc[0], "--colbert-encoding", enc[1]])
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    };
    embed(d.join("in.jsonl").to_str().unwrap(), &d.join("emb.jsonl"), ["f32", "f32"]);
    embed(d.join("in.parquet").to_str().unwrap(), &d.join("pq"), ["f32", "f32"]);
    embed(d.join("in.parquet").to_str().unwrap(), &d.join("pq_small"), ["bf16", "binary"]);
    let qrels = d.join("qrels.tsv");
    let judged: String = rows
        .iter()
        .take(10)
        .map(|v| format!("{}\t{}\t1\n", v["_id"].as_str().unwrap(), v["_id"].as_str().unwrap()))
        .collect();
    std::fs::write(&qrels, format!("query-id\tcorpus-id\tscore\n{judged}")).unwrap();
    let figures = |corpus: &Path| -> Value {
        let j = corpus.with_extension("eval.json");
        ok(&eval(&[
            "--corpus-embeddings",
            corpus.to_str().unwrap(),
            "--query-embeddings",
            d.join("emb.jsonl").to_str().unwrap(),
            "--qrels",
            qrels.to_str().unwrap(),
            "--json",
            j.to_str().unwrap(),
        ]));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        assert_eq!(v["passages"], 60);
        v["runs"].clone()
    };
    let from_jsonl = figures(&d.join("emb.jsonl"));
    let from_parquet = figures(&d.join("pq"));
    for (a, b) in from_jsonl.as_array().unwrap().iter().zip(from_parquet.as_array().unwrap()) {
        assert_eq!(a["metrics"], b["metrics"], "{}", a["name"]);
    }
    // bf16 dense, binary ColBERT: read, and a passage still finds itself.
    let small = figures(&d.join("pq_small"));
    assert_eq!(small[0]["metrics"]["recall@20"], 1.0, "{small}");
}
