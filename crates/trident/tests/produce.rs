//! `trident produce` against the real broker (`tansu`) and `trident node`: a Parquet corpus (two
//! files, string and integer ids, several row groups) and the same rows as JSON Lines are loaded
//! into topics, a node embeds them, and every output equals `trident embed`'s for the same text.
//! Bad rows are skipped or failed with their place named, shards split the rows, and brokers
//! that cannot be reached end the run with exit code 2.
//!
//! The Parquet files are written with pyarrow (`scripts/test.sh` installs it).

mod cluster_support;
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cluster_support::*;
use common::stderr;

const PARTS: i32 = 4;

/// One Parquet file to write: ids (strings, integers or nulls) and texts (or nulls).
struct PqFile {
    path: PathBuf,
    ids: Vec<serde_json::Value>,
    texts: Vec<Option<String>>,
    int_ids: bool,
    row_group_size: usize,
}

/// Write the files with pyarrow (with an extra column that `trident produce` must not read).
fn write_parquet(dir: &Path, files: &[PqFile]) {
    let spec: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            serde_json::json!({
                "path": f.path, "ids": f.ids, "texts": f.texts,
                "id_type": if f.int_ids { "int64" } else { "string" },
                "row_group_size": f.row_group_size,
            })
        })
        .collect();
    let spec_path = dir.join("parquet-spec.json");
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let script = r#"
import json, sys
try:
    import pyarrow as pa, pyarrow.parquet as pq
except ImportError:
    sys.exit(3)
for f in json.load(open(sys.argv[1])):
    n = len(f["ids"])
    t = pa.table({
        "lang": pa.array(["xx"] * n, pa.string()),
        "id": pa.array(f["ids"], getattr(pa, f["id_type"])()),
        "text": pa.array(f["texts"], pa.string()),
    })
    pq.write_table(t, f["path"], row_group_size=f["row_group_size"])
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&spec_path).output();
    let out = out.expect("python3 must be installed for this test (bash scripts/test.sh)");
    assert!(
        out.status.code() != Some(3),
        "pyarrow is missing: run `bash scripts/test.sh` (it installs pyarrow==26.0.1)"
    );
    assert!(out.status.success(), "writing Parquet: {}", String::from_utf8_lossy(&out.stderr));
}

fn produce(env: &Env, topic: &str, input: &Path, extra: &[&str]) -> Output {
    produce_to(&env.broker.addr, topic, input.to_str().unwrap(), extra)
}

fn produce_to(brokers: &str, topic: &str, input: &str, extra: &[&str]) -> Output {
    Command::new(TRIDENT)
        .args(["produce", "--brokers", brokers, "--topic", topic, "--input", input])
        .args(extra)
        .output()
        .expect("run trident produce")
}

/// The JSON summary (the last `{…}` line of stderr).
fn summary(o: &Output) -> serde_json::Value {
    let err = stderr(o);
    let line = err.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!("no JSON summary on stderr:\n{err}");
    });
    serde_json::from_str(line).unwrap()
}

fn counts(o: &Output) -> (u64, u64, u64) {
    let s = summary(o);
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("summary {s}: no {k}"));
    assert!(s["seconds"].as_f64().is_some() && s["rows_per_second"].as_f64().is_some(), "{s}");
    (n("rows"), n("skipped"), n("failed"))
}

/// The JSON id of a document: integer-id rows are numbers (their key is the decimal text).
fn json_id(id: &str, int_ids: &HashSet<String>) -> serde_json::Value {
    if int_ids.contains(id) {
        serde_json::Value::from(id.parse::<i64>().unwrap())
    } else {
        serde_json::Value::String(id.to_string())
    }
}

/// The records of an input topic are exactly `docs`: key = id text, value = {"id", "text"}.
fn check_input_topic(env: &Env, topic: &str, docs: &[(String, String)], int_ids: &HashSet<String>) {
    let recs = env.read_now(topic, PARTS);
    assert_eq!(recs.len(), docs.len(), "{topic}: one record per row");
    let by_key: HashMap<String, &Out> = recs.iter().map(|r| (r.key_str(), r)).collect();
    assert_eq!(by_key.len(), docs.len(), "{topic}: ids are distinct keys");
    for (id, text) in docs {
        let r = by_key.get(id).unwrap_or_else(|| panic!("{topic}: no record keyed {id}"));
        let want = serde_json::json!({"id": json_id(id, int_ids), "text": text});
        assert_eq!(r.json(), want, "{topic}: record {id}");
    }
}

/// Run a node on `topics` until every id of `docs` is published; check each output against
/// `trident embed`'s.
fn embed_and_check(
    env: &Env,
    name: &str,
    topics: &Topics,
    docs: &[(String, String)],
    int_ids: &HashSet<String>,
) {
    let want = reference(env.dir.path(), docs);
    let mut node = env.node(name, &format!("g-{name}"), topics, &[], &[]);
    let t0 = Instant::now();
    let outs = env.read_topic(&topics.output, 1, Duration::from_secs(180), |o| {
        let ids: HashSet<String> = o.iter().map(|o| o.key_str()).collect();
        docs.iter().all(|(id, _)| ids.contains(id))
    });
    let mut seen = HashSet::new();
    for o in &outs {
        let id = o.key_str();
        let mut w = want.get(&id).unwrap_or_else(|| panic!("unexpected output id {id}")).clone();
        w["id"] = json_id(&id, int_ids);
        assert_same_output(&o.json(), &w, &id);
        assert!(seen.insert(id.clone()), "{name}: {id} published twice");
    }
    let dlq = env.read_now(&topics.dlq, 1);
    assert!(dlq.is_empty(), "{name}: {} dead letters", dlq.len());
    eprintln!("{name}: {} outputs equal to trident embed in {:?}", outs.len(), t0.elapsed());
    node.signal("TERM");
    let (status, _) = node.wait_exit(Duration::from_secs(30)).expect("node exits after SIGTERM");
    assert!(status.success(), "node log:\n{}", node.log_text());
}

/// 300 documents as Parquet (a directory of two files: string ids in 3 row groups, integer ids
/// in 3) and as JSON Lines: both produced, the topics hold exactly the rows, and a node's
/// outputs equal `trident embed`'s.
#[test]
fn p1_parquet_and_jsonl_through_a_node_match_embed() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let dir = env.dir.path();
    let mut docs = corpus("p1", 300, 0, 1, 1 << 20).good;
    // The second file's ids are integers.
    let int_ids: HashSet<String> = (150..300).map(|i| (10_000 + i).to_string()).collect();
    for (i, d) in docs.iter_mut().enumerate().skip(150) {
        d.0 = (10_000 + i).to_string();
    }
    let pq_dir = dir.join("corpus");
    std::fs::create_dir_all(&pq_dir).unwrap();
    let file = |name: &str, rows: &[(String, String)], int: bool, rg: usize| PqFile {
        path: pq_dir.join(name),
        ids: rows.iter().map(|(id, _)| json_id(id, &int_ids)).collect(),
        texts: rows.iter().map(|(_, t)| Some(t.clone())).collect(),
        int_ids: int,
        row_group_size: rg,
    };
    write_parquet(
        dir,
        &[file("a.parquet", &docs[..150], false, 50), file("b.parquet", &docs[150..], true, 64)],
    );
    let jsonl = dir.join("corpus.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, text)| {
            serde_json::json!({"id": json_id(id, &int_ids), "text": text}).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();

    let pq_topics = Topics::new(&env, "p1pq", PARTS);
    let js_topics = Topics::new(&env, "p1js", PARTS);
    for (topics, input) in [(&pq_topics, &pq_dir), (&js_topics, &jsonl)] {
        let o = produce(&env, &topics.input, input, &[]);
        assert_eq!(o.status.code(), Some(0), "{}: {}", input.display(), stderr(&o));
        assert_eq!(counts(&o), (300, 0, 0), "{}", stderr(&o));
        check_input_topic(&env, &topics.input, &docs, &int_ids);
    }
    embed_and_check(&env, "p1pq", &pq_topics, &docs, &int_ids);
    embed_and_check(&env, "p1js", &js_topics, &docs, &int_ids);
}

/// Rows a node cannot take are skipped with their place named (null id, null text, blank
/// text, an invalid JSON Lines line); a message over the producer's message.max.bytes fails
/// with its id named and holds nothing back; exit code 1; the topic holds the good rows only.
/// Shards 0/2 and 1/2 together produce every row once.
#[test]
fn p2_bad_rows_are_reported_and_shards_split_the_rows() {
    let _g = serial();
    let Some(env) = Env::start(false) else { return };
    let dir = env.dir.path();
    let big = "y ".repeat(40_000); // an 80 kB text: over a 64 KiB message.max.bytes
    let rows: Vec<(Option<&str>, Option<&str>)> = vec![
        (Some("q-0"), Some("first document")),
        (None, Some("no id")),
        (Some("q-nulltext"), None),
        (Some("q-blank"), Some("   ")),
        (Some("q-big"), Some(&big)),
        (Some("q-5"), Some("after the big one")),
        (Some("q-6"), Some("sixth")),
        (Some("q-7"), Some("seventh")),
    ];
    let good: Vec<(String, String)> = [0, 5, 6, 7]
        .iter()
        .map(|&i| (rows[i].0.unwrap().to_string(), rows[i].1.unwrap().to_string()))
        .collect();
    let path = dir.join("bad.parquet");
    write_parquet(
        dir,
        &[PqFile {
            path: path.clone(),
            ids: rows.iter().map(|r| r.0.map_or(serde_json::Value::Null, |s| s.into())).collect(),
            texts: rows.iter().map(|r| r.1.map(str::to_string)).collect(),
            int_ids: false,
            row_group_size: 3,
        }],
    );
    let none = HashSet::new();
    let limit = ["--kafka", "message.max.bytes=65536"];

    env.create_topics(&[("p2pq", PARTS), ("p2js", PARTS), ("p2sh", PARTS), ("p2shj", PARTS)]);
    let o = produce(&env, "p2pq", &path, &limit);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(counts(&o), (4, 3, 1), "{err}");
    assert!(err.contains("bad.parquet#0 row 1: null id in column \"id\"; skipped"), "{err}");
    assert!(
        err.contains("bad.parquet#0 row 2 (id q-nulltext): null text in column \"text\""),
        "{err}"
    );
    assert!(err.contains("bad.parquet#1 row 0 (id q-blank): blank text"), "{err}");
    assert!(
        err.contains("id q-big: message of") && err.contains("message.max.bytes is 65536"),
        "{err}"
    );
    check_input_topic(&env, "p2pq", &good, &none);

    // The same rows as JSON Lines, with an invalid line and a plain-text line (id = line number).
    let mut lines: Vec<String> = Vec::new();
    for (id, text) in &rows {
        match (id, text) {
            (Some(id), Some(text)) => {
                lines.push(serde_json::json!({"id": id, "text": text}).to_string())
            }
            (Some(id), None) => lines.push(serde_json::json!({"id": id, "text": null}).to_string()),
            (None, _) => lines.push("{\"id\": \"q-x\", \"text\": ".into()),
        }
    }
    lines.push("a plain line".into());
    let jsonl = dir.join("bad.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let o = produce(&env, "p2js", &jsonl, &limit);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(counts(&o), (5, 3, 1), "{err}");
    assert!(err.contains("bad.jsonl line 2: starts with '{' but is not valid JSON"), "{err}");
    assert!(err.contains("bad.jsonl line 3: \"text\" must be a string, not null"), "{err}");
    assert!(err.contains("line 4 (id q-blank): blank text"), "{err}");
    assert!(err.contains("id q-big: message of"), "{err}");
    let mut js_good = good.clone();
    js_good.push(("9".into(), "a plain line".into()));
    let nine: HashSet<String> = ["9".to_string()].into();
    check_input_topic(&env, "p2js", &js_good, &nine);

    // Shards: 0/2 and 1/2 of the Parquet row groups (3 rows each) and of the lines.
    for (topic, input, want, ints) in
        [("p2sh", &path, &good, &none), ("p2shj", &jsonl, &js_good, &nine)]
    {
        let mut total = (0, 0, 0);
        for shard in ["0/2", "1/2"] {
            let o = produce(&env, topic, input, &[&limit[..], &["--shard", shard]].concat());
            let (r, s, f) = counts(&o);
            assert!(r < want.len() as u64, "{topic} {shard}: a shard has only part of the rows");
            total = (total.0 + r, total.1 + s, total.2 + f);
        }
        assert_eq!(total.0, want.len() as u64, "{topic}: shards together produce every row");
        check_input_topic(&env, topic, want, ints);
    }
}

/// Brokers that cannot be reached: exit code 2 within the retry budget, saying so.
#[test]
fn p3_unreachable_brokers_fail_the_run() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("one.jsonl");
    std::fs::write(&input, "{\"id\": \"a\", \"text\": \"hello\"}\n").unwrap();
    let brokers = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let o = produce_to(&brokers, "nowhere", input.to_str().unwrap(), &["--retry-ms", "2000"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unreachable") && err.contains(&brokers), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}
