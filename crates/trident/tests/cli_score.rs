//! `trident score` end to end on the tiny fixture: every pair and weight set of
//! `expected.json` against the reference's `compute_score_per_pair`, and its error records.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const TRIDENT: &str = env!("CARGO_BIN_EXE_trident");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tiny() -> PathBuf {
    repo().join("tests/fixtures/tiny-m3")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(tiny().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn score(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(TRIDENT)
        .arg("score")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A run that fails early (bad flags, missing model) may exit before reading its input.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing stdin: {e}");
    }
    child.wait_with_output().unwrap()
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
