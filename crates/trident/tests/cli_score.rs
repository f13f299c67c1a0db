//! `trident score` end to end on the tiny fixture: every pair and weight set of
//! `expected.json` against the reference's `compute_score_per_pair`, and its error records.

mod common;

use std::process::{Command, Output, Stdio};

use common::{expected, finish_with_stdin, hamming_maxsim, tiny, TRIDENT};
use serde_json::Value;

fn score(args: &[&str], stdin: &str) -> Output {
    let child = Command::new(TRIDENT)
        .arg("score")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish_with_stdin(child, stdin.as_bytes())
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn all_fixture_pairs_and_weight_sets_match_compute_score_per_pair() {
    let exp = expected();
    let tol = f(&exp["tolerance"]["scores"]);
    let pairs = exp["pairs"].as_array().unwrap();
    let input: String = pairs
        .iter()
        .map(|p| serde_json::json!({"query": p[0], "passage": p[1]}).to_string() + "\n")
        .collect();
    let model = tiny();
    let sets = exp["scores"]["compute_score_per_pair"].as_array().unwrap();
    assert_eq!(sets.len(), 3);
    for set in sets {
        let w: Vec<String> =
            set["weights"].as_array().unwrap().iter().map(|x| f(x).to_string()).collect();
        let w = w.join(",");
        let out =
            score(&["--model", model.to_str().unwrap(), "--pairs", "-", "--weights", &w], &input);
        assert!(out.status.success(), "weights {w}: {}", String::from_utf8_lossy(&out.stderr));
        let got = lines(&out);
        assert_eq!(got.len(), pairs.len(), "one line per pair");
        for (k, line) in got.iter().enumerate() {
            assert_eq!(line.as_object().unwrap().len(), 5, "pair {k}: {line}");
            for key in ["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"] {
                let (a, e) = (f(&line[key]), f(&set[key][k]));
                assert!(
                    (a - e).abs() <= tol * (1.0 + e.abs()),
                    "weights {w} pair {k} {key}: got {a}, expected {e}"
                );
            }
        }
    }
}

#[test]
fn bad_lines_become_error_records_in_place() {
    let input = concat!(
        "{\"query\": \"apple banana\", \"passage\": \"apple apple apple banana\"}\n",
        "{\"query\": \"no passage\"}\n",
        "\n",
        "not json\n",
        "{\"query\": \"猫\", \"passage\": \"北京北京北京，上海上海，北京！\"}\n",
    );
    let model = tiny();
    let out = score(&["--model", model.to_str().unwrap(), "--pairs", "-"], input);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let got = lines(&out);
    assert_eq!(got.len(), 4, "blank line skipped, every other line answered");
    assert!(got[0]["dense"].is_number());
    assert_eq!(got[1]["id"], 2);
    assert!(got[1]["error"].as_str().unwrap().contains("passage"), "{}", got[1]);
    assert_eq!(got[2]["id"], 4);
    assert!(got[2]["error"].is_string());
    assert!(got[3]["colbert"].is_number());
}

#[test]
fn invalid_utf8_line_is_an_error_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let mut bytes =
        b"{\"query\": \"a\", \"passage\": \"b\"}\n{\"query\": \"\xff\xfe\", \"passage\": \"b\"}\n"
            .to_vec();
    bytes.extend_from_slice(b"{\"query\": \"c\", \"passage\": \"d\"}\n");
    std::fs::write(&path, bytes).unwrap();
    let model = tiny();
    let out = score(&["--model", model.to_str().unwrap(), "--pairs", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    let got = lines(&out);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1]["id"], 2);
    assert!(got[1]["error"].as_str().unwrap().contains("UTF-8"), "{}", got[1]);
    assert!(got[2]["dense"].is_number());
}

#[test]
fn usage_errors_name_the_setting() {
    let model = tiny();
    let m = model.to_str().unwrap();
    let pair = "{\"query\": \"a\", \"passage\": \"b\"}\n";
    for (weights, needle) in
        [("1,2", "3 comma-separated"), ("0,0,1", "sparse+dense"), ("1,1,-2", "sum to 0")]
    {
        let out = score(&["--model", m, "--pairs", "-", "--weights", weights], pair);
        assert_eq!(out.status.code(), Some(2), "weights {weights}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("weights") && err.contains(needle), "weights {weights}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = score(&["--model", m, "--pairs", "-"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    let out = score(&["--model", m, "--pairs", "/no/such/pairs.jsonl"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/pairs.jsonl"));

    let out = score(&["--model", "/no/such/model", "--pairs", "-"], pair);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model"));
}

#[test]
fn missing_head_file_is_an_error_not_random_weights() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "special_tokens_map.json",
        "sparse_linear.pt",
    ] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    let out = score(
        &["--model", dir.path().to_str().unwrap(), "--pairs", "-"],
        "{\"query\": \"a\", \"passage\": \"b\"}\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colbert_linear.pt"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `trident embed` of `texts` (ids 0..n) with `extra` flags: its JSON objects, in order.
fn embed(extra: &[&str], texts: &[&str]) -> Vec<Value> {
    let child = Command::new(TRIDENT)
        .args(["embed", "--threads", "1", "--model"])
        .arg(tiny())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "text": t}).to_string() + "\n")
        .collect();
    let out = finish_with_stdin(child, input.as_bytes());
    assert!(
        out.status.success(),
        "trident embed {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out);
    assert_eq!(got.len(), texts.len());
    got
}

/// The fixture's (query, passage) pairs.
fn fixture_pairs() -> (Vec<String>, Vec<String>) {
    let exp = expected();
    exp["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()))
        .unzip()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `trident score` of these JSON lines; all must succeed.
fn score_ok(input: &[Value]) -> Vec<Value> {
    let text: String = input.iter().map(|l| l.to_string() + "\n").collect();
    let model = tiny();
    let out = score(&["--model", model.to_str().unwrap(), "--pairs", "-"], &text);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = lines(&out);
    assert_eq!(got.len(), input.len());
    got
}

const KEYS: [&str; 5] = ["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"];

#[test]
fn stored_f32_embeddings_score_as_their_texts() {
    let (queries, passages) = fixture_pairs();
    let (qe, pe) = (embed(&[], &strs(&queries)), embed(&[], &strs(&passages)));
    let mut input = Vec::new();
    for (i, (q, p)) in queries.iter().zip(&passages).enumerate() {
        input.push(serde_json::json!({"query": q, "passage": p}));
        input.push(serde_json::json!({"query": q, "passage_embedding": pe[i]}));
        input.push(serde_json::json!({"query_embedding": qe[i], "passage": p}));
        input.push(serde_json::json!({"query_embedding": qe[i], "passage_embedding": pe[i]}));
    }
    let got = score_ok(&input);
    for (k, four) in got.chunks(4).enumerate() {
        assert_eq!(four[1].as_object().unwrap().len(), 5, "same keys: {}", four[1]);
        for line in &four[1..] {
            for key in KEYS {
                let (a, e) = (f(&line[key]), f(&four[0][key]));
                assert!((a - e).abs() <= 1e-5, "pair {k} {key}: stored {a}, texts {e}");
            }
        }
    }
}

#[test]
fn stored_f16_and_bf16_embeddings_score_close_to_f32() {
    let (queries, passages) = fixture_pairs();
    let pe = embed(&["--colbert-encoding", "f16", "--dense-encoding", "bf16"], &strs(&passages));
    assert_eq!(pe[0]["encoding"], serde_json::json!({"dense": "bf16", "colbert": "f16"}));
    let mut input = Vec::new();
    for (i, (q, p)) in queries.iter().zip(&passages).enumerate() {
        input.push(serde_json::json!({"query": q, "passage": p}));
        input.push(serde_json::json!({"query": q, "passage_embedding": pe[i]}));
    }
    let got = score_ok(&input);
    for (k, two) in got.chunks(2).enumerate() {
        let d = |key: &str| (f(&two[1][key]) - f(&two[0][key])).abs();
        assert!(
            d("colbert") <= 1e-3,
            "pair {k} colbert: {} vs {}",
            two[1]["colbert"],
            two[0]["colbert"]
        );
        assert!(d("dense") <= 1e-2, "pair {k} dense: {} vs {}", two[1]["dense"], two[0]["dense"]);
        assert!(d("sparse") <= 1e-5, "pair {k} sparse (weights stay f32)");
    }
}

#[test]
fn stored_binary_colbert_scores_by_hamming() {
    let (queries, passages) = fixture_pairs();
    let (qf, pf) = (embed(&[], &strs(&queries)), embed(&[], &strs(&passages)));
    let qb = embed(&["--colbert-encoding", "binary"], &strs(&queries));
    let pb = embed(&["--colbert-encoding", "binary"], &strs(&passages));
    assert!(pb[0]["colbert"][0].is_string(), "binary rows are hex: {}", pb[0]);
    assert_eq!(pb[0]["colbert_dim"], 32);
    let mut input = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        input.push(serde_json::json!({"query": q, "passage": passages[i]}));
        input.push(serde_json::json!({"query_embedding": qf[i], "passage_embedding": pb[i]}));
        input.push(serde_json::json!({"query": q, "passage_embedding": pb[i]}));
        input.push(serde_json::json!({"query_embedding": qb[i], "passage_embedding": pf[i]}));
        input.push(serde_json::json!({"query_embedding": qb[i], "passage_embedding": pb[i]}));
    }
    let got = score_ok(&input);
    for (k, five) in got.chunks(5).enumerate() {
        let want = hamming_maxsim(&qf[k]["colbert"], &pf[k]["colbert"]);
        for (j, line) in five[1..].iter().enumerate() {
            let c = f(&line["colbert"]);
            assert!((c - want).abs() <= 1e-6, "pair {k} line {j}: colbert {c}, hamming {want}");
            for key in ["dense", "sparse"] {
                let (a, e) = (f(&line[key]), f(&five[0][key]));
                assert!((a - e).abs() <= 1e-5, "pair {k} line {j} {key}: {a} vs {e}");
            }
            // The default weights [0.4, 0.2, 0.4] sum to 1.
            let hybrid = 0.4 * f(&line["dense"]) + 0.2 * f(&line["sparse"]) + 0.4 * c;
            assert!((f(&line["colbert+sparse+dense"]) - hybrid).abs() <= 1e-5, "pair {k}");
        }
    }
}

#[test]
fn bad_stored_embeddings_are_error_records_naming_the_field() {
    let texts = ["apple banana", "apple apple apple banana"];
    let f32s = embed(&[], &texts);
    let bin = embed(&["--colbert-encoding", "binary"], &texts);
    let slim = embed(&["--dense", "--sparse"], &texts);
    let p = &f32s[1];
    let mut short_dense = p.clone();
    short_dense["dense"] = Value::Array(p["dense"].as_array().unwrap()[..16].to_vec());
    let mut short_rows = f32s[0].clone();
    for r in short_rows["colbert"].as_array_mut().unwrap() {
        r.as_array_mut().unwrap().truncate(16);
    }
    let mut not_hex = bin[1].clone();
    not_hex["colbert"][0] = "zz".repeat(4).into();
    let mut wrong_bits = bin[1].clone();
    wrong_bits["colbert_dim"] = 64.into();
    let lines_in = [
        serde_json::json!({"query": "apple", "passage": "banana", "passage_embedding": p}),
        serde_json::json!({"query": "apple"}),
        serde_json::json!({"query": "apple", "passage_embedding": short_dense}),
        serde_json::json!({"query": "apple", "passage_embedding": not_hex}),
        serde_json::json!({"query": "apple", "passage": "banana"}),
        serde_json::json!({"query": "apple", "passage_embedding": wrong_bits}),
        serde_json::json!({"query": "apple", "passage_embedding": {"id": 3, "error": "too long"}}),
        serde_json::json!({"query": "apple", "passage_embedding": slim[1]}),
        serde_json::json!({"query_embedding": short_rows, "passage": "banana"}),
        serde_json::json!({"query": "apple", "passage_embedding": "apple banana"}),
        serde_json::json!({"query": "apple", "query_embedding": f32s[0], "passage": "x"}),
        serde_json::json!({"query": "apple", "passage_embedding": bin[1]}),
    ];
    let input: String = lines_in.iter().map(|l| l.to_string() + "\n").collect();
    let model = tiny();
    let out = score(&["--model", model.to_str().unwrap(), "--pairs", "-"], &input);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10 of 12 lines"));
    let got = lines(&out);
    assert_eq!(got.len(), 12);
    let expect = [
        (1, vec!["\"passage\"", "\"passage_embedding\"", "not both"]),
        (2, vec!["no passage", "\"passage_embedding\""]),
        (3, vec!["passage_embedding", "dense has 16 values", "32"]),
        (4, vec!["passage_embedding", "colbert row 0 is not hex"]),
        (6, vec!["passage_embedding", "colbert_dim is 64"]),
        (7, vec!["passage_embedding", "error record", "too long"]),
        (8, vec!["passage_embedding", "no \"colbert\""]),
        (9, vec!["query_embedding", "16 dimensions", "32"]),
        (10, vec!["passage_embedding", "JSON object"]),
        (11, vec!["\"query\"", "\"query_embedding\"", "not both"]),
    ];
    for (line, needles) in expect {
        let rec = &got[line - 1];
        assert_eq!(rec["id"], line, "{rec}");
        let err = rec["error"].as_str().unwrap_or_else(|| panic!("line {line}: {rec}"));
        for n in needles {
            assert!(err.contains(n), "line {line}: {err:?} lacks {n:?}");
        }
    }
    assert!(got[4]["colbert"].is_number() && got[11]["colbert"].is_number());
}
