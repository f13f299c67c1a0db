//! trident's vector-store feeds loaded by the stores' own Python clients (tests/stores/):
//! `--format milvus` rows into milvus-lite through pymilvus, `--format qdrant` points into
//! qdrant-client's local mode, each searched back with every document's own text (embedded in
//! another order, so in other batches) and required first; `--format vespa` puts validated
//! against deploy/vespa/schemas/trident.sd (no Vespa engine runs here).
//!
//! The Python packages come from `bash scripts/test.sh`; without them these tests fail, saying
//! so (never a silent skip). `PYTHON` selects the interpreter (default `python3`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{hidden_size, python, repo, tiny, TRIDENT};
use serde_json::{json, Value};

/// Distinct short texts on different topics, some not English; integer and text ids (the
/// Qdrant point id rule differs for them: 42 and "7" stay integers, the others become UUIDs).
fn corpus() -> Vec<Value> {
    let texts: [(Value, &str); 20] = [
        (
            json!("photosynthesis"),
            "Plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
        ),
        (json!("volcano"), "Magma rising through the crust erupts as lava from a volcano."),
        (
            json!("chess"),
            "The queen's gambit is one of the oldest chess openings still played today.",
        ),
        (
            json!("sourdough"),
            "Sourdough bread rises slowly thanks to wild yeast and lactic acid bacteria.",
        ),
        (json!("tcp"), "TCP retransmits lost segments and uses a sliding window for flow control."),
        (
            json!("marathon"),
            "A marathon covers forty-two kilometres and one hundred ninety-five metres.",
        ),
        (
            json!("jupiter"),
            "Jupiter is the largest planet and its Great Red Spot is a giant storm.",
        ),
        (json!("mozart"), "Mozart wrote his first symphony when he was only eight years old."),
        (json!("tides"), "Ocean tides are caused mainly by the gravitational pull of the Moon."),
        (json!("rust"), "Rust's borrow checker prevents data races at compile time."),
        (json!("coffee"), "Espresso is brewed by forcing hot water through finely ground coffee."),
        (json!("glaciers"), "Glaciers carve U-shaped valleys as they slowly slide downhill."),
        (json!("fr"), "La tour Eiffel a été construite pour l'Exposition universelle de 1889."),
        (json!("de"), "Der Rhein fließt von den Alpen bis zur Nordsee."),
        (json!("es"), "El flamenco combina cante, toque y baile en Andalucía."),
        (json!("ja"), "富士山は日本で一番高い山です。"),
        (json!("zh"), "长城是中国古代修建的军事防御工程。"),
        (json!("ru"), "Байкал — самое глубокое озеро в мире."),
        (json!(42), "Honeybees communicate the direction of flowers with a waggle dance."),
        (json!("7"), "Penguins cannot fly but are excellent swimmers in cold southern seas."),
    ];
    texts.into_iter().map(|(id, text)| json!({ "id": id, "text": text })).collect()
}

/// The corpus as JSON Lines: as documents, and reversed (the queries: same texts and ids,
/// other batches).
fn write_corpus(dir: &Path) -> (PathBuf, PathBuf) {
    let lines: Vec<String> = corpus().iter().map(|d| d.to_string() + "\n").collect();
    let (fwd, rev) = (dir.join("corpus.jsonl"), dir.join("queries.jsonl"));
    std::fs::write(&fwd, lines.concat()).unwrap();
    std::fs::write(&rev, lines.iter().rev().cloned().collect::<String>()).unwrap();
    (fwd, rev)
}

/// `trident embed` of `input` with extra flags into `dir/name`; one output line per document.
fn embed(dir: &Path, input: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let run = Command::new(TRIDENT)
        .arg("embed")
        .arg("--model")
        .arg(tiny())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .args(flags)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "trident embed {flags:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), corpus().len(), "{name}: one line per document");
    out
}

/// Runs tests/stores/<script> with args; returns (exit code, stdout, stderr). A missing
/// interpreter or package fails the test with the way to install them.
fn python_check(script: &str, args: &[&Path], extra: &[&str]) -> (i32, String, String) {
    let py = python();
    let out = Command::new(&py)
        .arg(repo().join("tests/stores").join(script))
        .args(args)
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {py} ({e}): the vector-store tests need Python 3 with the packages \
                 that `bash scripts/test.sh` installs (or set PYTHON)"
            )
        });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(
        code, 3,
        "{script}: Python packages missing for {py}; run `bash scripts/test.sh`, which installs \
         the pinned versions.\n{stderr}"
    );
    (code, stdout, stderr)
}

/// A check that must pass: its one-line JSON summary.
fn passes(script: &str, args: &[&Path], extra: &[&str]) -> Value {
    let (code, stdout, stderr) = python_check(script, args, extra);
    assert_eq!(code, 0, "{script} {args:?} {extra:?} failed:\n{stderr}\n{stdout}");
    let line = stdout.lines().last().unwrap_or_else(|| panic!("{script}: no summary\n{stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{script}: summary {line:?}: {e}"))
}

#[test]
fn milvus_rows_insert_and_hybrid_search_finds_each_text_first() {
    let dir = tempfile::tempdir().unwrap();
    let (docs, queries) = write_corpus(dir.path());
    let n = corpus().len() as u64;
    for (tag, flags) in [("f32", &[][..]), ("f16", &["--dense-encoding", "f16"][..])] {
        let fmt = ["--format", "milvus"];
        let flags: Vec<&str> = fmt.iter().chain(flags).copied().collect();
        let d = embed(dir.path(), &docs, &format!("milvus-{tag}.jsonl"), &flags);
        let q = embed(dir.path(), &queries, &format!("milvus-{tag}-q.jsonl"), &flags);
        let s = passes("check_milvus.py", &[&d, &q], &[]);
        assert_eq!(s["docs"], n, "{tag}: {s}");
        assert_eq!(s["top1"], n, "{tag}: {s}");
        assert_eq!(s["dense_dim"], hidden_size(), "{tag}: {s}");
    }
}

#[test]
fn qdrant_points_upsert_and_hybrid_queries_find_each_text_first() {
    let dir = tempfile::tempdir().unwrap();
    let (docs, queries) = write_corpus(dir.path());
    let n = corpus().len() as u64;
    for enc in ["f16", "binary"] {
        let flags = ["--format", "qdrant", "--colbert-encoding", enc];
        let d = embed(dir.path(), &docs, &format!("qdrant-{enc}.jsonl"), &flags);
        let q = embed(dir.path(), &queries, &format!("qdrant-{enc}-q.jsonl"), &flags);
        let s = passes("check_qdrant.py", &[&d, &q], &[]);
        assert_eq!(s["docs"], n, "{enc}: {s}");
        assert_eq!(s["top1_rescore"], n, "{enc}: {s}");
        assert_eq!(s["top1_fusion"], n, "{enc}: {s}");
        assert_eq!(s["colbert_dim"], hidden_size(), "{enc}: {s}");
    }
}

#[test]
fn vespa_feed_matches_the_schema_and_packs_colbert_signs_in_unpack_bits_order() {
    let dir = tempfile::tempdir().unwrap();
    let (docs, _) = write_corpus(dir.path());
    let feed = embed(
        dir.path(),
        &docs,
        "vespa.jsonl",
        &["--format", "vespa", "--colbert-encoding", "binary"],
    );
    // trident's default JSON (f32 ColBERT) of the same documents: the signs to compare with.
    let reference = embed(dir.path(), &docs, "reference.jsonl", &[]);
    let schema = repo().join("deploy/vespa/schemas/trident.sd");
    let (dim, bytes) = (hidden_size().to_string(), (hidden_size() / 8).to_string());
    let ref_arg = reference.to_str().unwrap();
    let s = passes(
        "check_vespa.py",
        &[&schema, &feed],
        &["--dense-dim", &dim, "--colbert-bytes", &bytes, "--reference", ref_arg],
    );
    assert_eq!(s["puts"], corpus().len() as u64, "{s}");
    assert_eq!(s["colbert_rows_bit_checked"], s["colbert_blocks"], "{s}");
    for profile in ["dense", "sparse", "colbert", "dense_sparse", "m3", "m3_default"] {
        assert!(
            s["rank_profiles"].as_array().unwrap().iter().any(|p| p == profile),
            "rank profile {profile} missing: {s}"
        );
    }
}

#[test]
fn vespa_check_rejects_float_colbert_for_the_binary_schema_and_the_model_size_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (docs, _) = write_corpus(dir.path());
    let schema = repo().join("deploy/vespa/schemas/trident.sd");
    let (dim, bytes) = (hidden_size().to_string(), (hidden_size() / 8).to_string());
    // f32 ColBERT blocks hold `dim` floats: not the int8 x[bytes] the schema declares.
    let feed = embed(dir.path(), &docs, "vespa-f32.jsonl", &["--format", "vespa"]);
    let (code, _, stderr) = python_check(
        "check_vespa.py",
        &[&schema, &feed],
        &["--dense-dim", &dim, "--colbert-bytes", &bytes],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("field colbert"), "{stderr}");
    // Without the size override the tiny model's 32 dimensions are not bge-m3's 1024.
    let feed = embed(
        dir.path(),
        &docs,
        "vespa-binary.jsonl",
        &["--format", "vespa", "--colbert-encoding", "binary"],
    );
    let (code, _, stderr) = python_check("check_vespa.py", &[&schema, &feed], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("needs 1024"), "{stderr}");
}
