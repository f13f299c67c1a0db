//! `trident embed` Parquet re-embedding jobs end to end on the tiny fixture, with corpora
//! written and outputs read back by pyarrow (tests/corpus/):
//!
//! - a 100,000-row multilingual corpus in several files round-trips with the documented schema,
//!   every input row exactly once, equal to the JSON Lines output of the same rows;
//! - a job SIGKILLed half way and resumed equals an uninterrupted run; `--resume` with other
//!   settings and a second run without `--resume` are refused;
//! - `--shard I/N` runs into one directory split the units and together equal the unsharded run;
//! - `--previous` reuses every unchanged row and embeds only the changed ones, and the result
//!   equals a fresh run.
//!
//! The tests at the end reproduce bugs found in the job (a writer failure that hung it, reuse of
//! a row whose text became null, outputs of other shard counts or settings, a narrower input
//! on resume).
//!
//! The Python packages (pyarrow, numpy) come from `bash scripts/test.sh`; without them these
//! tests fail, saying so (never a silent skip). `PYTHON` selects the interpreter.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{hidden_size, python, repo, tiny, TRIDENT};
use serde_json::Value;

/// Short enough that some long texts are truncated (the `truncated` column is exercised).
const MAX_LENGTH: &str = "64";
const ROWS: u64 = 100_000;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs tests/corpus/<script> with `args`; it must succeed. Returns its last stdout line as
/// JSON. A missing interpreter or package fails the test with the way to install them.
fn py(script: &str, args: &[&str]) -> Value {
    let interp = python();
    let out = Command::new(&interp)
        .arg(repo().join("tests/corpus").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {interp} ({e}): the corpus tests need Python 3 with pyarrow and \
                 numpy; run `bash scripts/test.sh`, which installs the pinned versions (or set \
                 PYTHON)"
            )
        });
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(
        out.status.code(),
        Some(3),
        "{script}: pyarrow/numpy missing for {interp}; run `bash scripts/test.sh`, which \
         installs the pinned versions.\n{stderr}"
    );
    assert!(out.status.success(), "{script} {args:?} failed:\n{stderr}\n{stdout}");
    let line = stdout.lines().last().unwrap_or_else(|| panic!("{script}: no summary\n{stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{script}: summary {line:?}: {e}"))
}

/// `make_corpus.py DIR --rows ROWS --files 5 --row-group RG --seed SEED [extra]`.
fn make_corpus(dir: &Path, row_group: u64, seed: u64, extra: &[&str]) -> Value {
    let (rows, rg, seed) = (ROWS.to_string(), row_group.to_string(), seed.to_string());
    let mut args = vec![s(dir), "--rows", &rows, "--files", "5", "--row-group", &rg];
    args.extend(["--seed", &seed]);
    args.extend(extra);
    let c = py("make_corpus.py", &args);
    assert_eq!(c["rows"], ROWS, "{c}");
    assert!(c["null_texts"].as_u64().unwrap() > 0, "the corpus has failing rows: {c}");
    c
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// One `trident embed` run of a Parquet job.
struct Run {
    code: i32,
    stderr: String,
}

impl Run {
    /// The JSON summary line on stderr.
    fn summary(&self) -> Value {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON summary on stderr:\n{}", self.stderr));
        serde_json::from_str(line).unwrap()
    }

    /// A finished run: exit 0, or 1 exactly when some rows failed. Returns the summary.
    fn finished(&self) -> Value {
        assert!(self.code == 0 || self.code == 1, "exit {}:\n{}", self.code, self.stderr);
        let sum = self.summary();
        let failed = u(&sum["failed"]);
        assert_eq!(self.code, i32::from(failed > 0), "exit code vs failed rows: {sum}");
        for k in ["rows", "embedded", "reused", "failed", "tokens", "units", "units_skipped"] {
            assert!(sum[k].is_u64(), "summary field {k}: {sum}");
        }
        assert_eq!(u(&sum["rows"]), u(&sum["embedded"]) + u(&sum["reused"]) + failed, "{sum}");
        // The formats' CPU time is a part of the run (CPU time of several threads may exceed
        // the wall time only by the thread count; this job's reader and writer are two).
        let (fmt, secs) = (sum["format_seconds"].as_f64(), sum["seconds"].as_f64());
        let (fmt, secs) = (fmt.expect("format_seconds"), secs.expect("seconds"));
        assert!(fmt >= 0.0 && fmt <= 2.0 * secs + 0.01, "format_seconds vs seconds: {sum}");
        if u(&sum["rows"]) > 0 {
            assert!(fmt > 0.0, "rows were read and written in no CPU time: {sum}");
        }
        sum
    }

    /// A refused run: exit 2, the message naming `what`.
    fn refused(&self, what: &str) {
        assert_eq!(self.code, 2, "expected a refusal naming {what}:\n{}", self.stderr);
        assert!(self.stderr.contains(what), "the refusal should name {what}:\n{}", self.stderr);
    }
}

fn embed_cmd(input: &Path, out: &Path, flags: &[&str]) -> Command {
    let mut c = Command::new(TRIDENT);
    c.arg("embed")
        .arg("--model")
        .arg(tiny())
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(["--max-length", MAX_LENGTH, "--keep-columns", "lang,n"])
        .args(flags)
        .stdin(Stdio::null());
    c
}

fn embed(input: &Path, out: &Path, flags: &[&str]) -> Run {
    let o: Output = embed_cmd(input, out, flags).output().unwrap();
    Run { code: o.status.code().unwrap_or(-1), stderr: String::from_utf8_lossy(&o.stderr).into() }
}

/// Units done so far according to the (atomically replaced) manifest.
fn units_done(out: &Path, shard: &str) -> usize {
    let path = out.join("_trident").join(format!("manifest-{shard}.json"));
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let m: Value = serde_json::from_str(&text).expect("the manifest is whole JSON");
            m["units"].as_object().unwrap().len()
        }
        Err(_) => 0,
    }
}

/// check.py schema: the documented columns and types, kept columns `lang` and `n` last.
fn schema_is(out: &Path, dense: &str, colbert: &str) {
    let dim = hidden_size().to_string();
    let keep = "lang:string,n:int64";
    let args = ["schema", s(out), "--dim", &dim, "--dense", dense, "--colbert", colbert];
    py("check.py", &[&args[..], &["--keep", keep]].concat());
}

fn parts_in(out: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(out) else { return Vec::new() };
    let mut v: Vec<String> = dir
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "_trident")
        .collect();
    v.sort();
    v
}

#[test]
fn parquet_round_trip_has_the_documented_schema_and_equals_json_lines() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (corpus, out) = (dir.path().join("corpus"), dir.path().join("out"));
    let sample = dir.path().join("sample.jsonl");
    let c = make_corpus(&corpus, 4000, 7, &["--jsonl", s(&sample), "--jsonl-sample", "5000"]);

    let sum = embed(&corpus, &out, &[]).finished();
    assert_eq!(u(&sum["rows"]), ROWS, "{sum}");
    assert_eq!(sum["failed"], c["null_texts"], "null texts are the failed rows: {sum}");
    assert_eq!(sum["reused"], 0, "{sum}");
    assert_eq!(sum["units"], c["row_groups"], "one unit per input row group: {sum}");
    assert_eq!(sum["units_skipped"], 0, "{sum}");
    assert!(u(&sum["tokens"]) > ROWS * 2, "{sum}");
    let parts = parts_in(&out);
    assert_eq!(parts.len() as u64, u(&c["row_groups"]), "one part per row group: {parts:?}");
    assert!(parts.iter().all(|p| p.starts_with("part-") && p.ends_with(".parquet")), "{parts:?}");

    schema_is(&out, "f32", "f32");
    let cov = py("check.py", &["coverage", s(&out), s(&corpus), "--keep", "lang,n"]);
    assert_eq!(u(&cov["rows"]), ROWS, "{cov}");
    assert!(u(&cov["truncated"]) > 0, "some rows longer than {MAX_LENGTH} tokens: {cov}");
    let m = py("check.py", &["parts", s(&out)]);
    assert_eq!((u(&m["rows"]), &m["failed"]), (ROWS, &c["null_texts"]), "{m}");

    // The same rows through the JSON Lines path: equal values (batches differ: the sample is
    // every 20th row).
    let jl_out = dir.path().join("sample.out.jsonl");
    let o = Command::new(TRIDENT)
        .arg("embed")
        .arg("--model")
        .arg(tiny())
        .args(["--input", s(&sample), "--output", s(&jl_out), "--max-length", MAX_LENGTH])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let eq = py("check.py", &["jsonl", s(&out), s(&jl_out)]);
    assert_eq!(eq["compared"], c["jsonl_rows"], "{eq}");
    assert!(u(&eq["errors"]) > 0, "the sample holds null texts: {eq}");
    eprintln!("round trip: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn killed_job_resumes_to_the_uninterrupted_output_and_refuses_other_settings() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let (out, full) = (dir.path().join("out"), dir.path().join("full"));
    // Small row groups: about 100 units.
    let c = make_corpus(&corpus, 1000, 8, &[]);
    let units = u(&c["row_groups"]) as usize;
    assert!(units >= 100, "{c}");
    let enc = ["--dense-encoding", "f16", "--colbert-encoding", "f16"];

    // SIGKILL once about half of the units are in the manifest.
    let mut child = embed_cmd(&corpus, &out, &enc).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let killed_at = loop {
        let n = units_done(&out, "0-of-1");
        if n >= units / 2 {
            child.kill().unwrap(); // SIGKILL
            break n;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the job ended ({status}) before it could be killed, at {n} of {units}");
        }
        assert!(Instant::now() < deadline, "no progress: {n} of {units} units");
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status}");
    let done = units_done(&out, "0-of-1");
    assert!(done >= killed_at && done < units, "killed half way: {done} of {units}");

    // Refused: a second run without --resume, and --resume with other settings.
    embed(&corpus, &out, &enc).refused("--resume");
    let other = ["--dense-encoding", "f16", "--colbert-encoding", "binary"];
    embed(&corpus, &out, &[&other[..], &["--resume"]].concat()).refused("--colbert-encoding");
    embed(&corpus, &out, &[&enc[..], &["--resume", "--max-length", "32"]].concat())
        .refused("--max-length");
    assert_eq!(units_done(&out, "0-of-1"), done, "a refused run changes nothing");

    // Resume (with worker failures injected: retried batches must not duplicate rows).
    let o = embed_cmd(&corpus, &out, &[&enc[..], &["--resume"]].concat())
        .env("TRIDENT_FAULT_INJECT", "fail-batches=2")
        .output()
        .unwrap();
    let resumed = Run {
        code: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    };
    let sum = resumed.finished();
    assert_eq!(u(&sum["units_skipped"]) as usize, done, "{sum}");
    assert_eq!(u(&sum["units"]) as usize, units - done, "{sum}");
    let m = py("check.py", &["parts", s(&out)]);
    assert_eq!((u(&m["parts"]) as usize, u(&m["rows"])), (units, ROWS), "{m}");
    assert!(!parts_in(&out).iter().any(|p| p.ends_with(".tmp")), "temporary parts left");
    py("check.py", &["coverage", s(&out), s(&corpus), "--keep", "lang,n"]);

    // Equal to an uninterrupted run.
    let sum_full = embed(&corpus, &full, &enc).finished();
    assert_eq!(sum_full["units"], c["row_groups"], "{sum_full}");
    let eq = py("check.py", &["equal", s(&out), s(&full)]);
    assert_eq!(u(&eq["rows"]), ROWS, "{eq}");
    schema_is(&out, "f16", "f16");
    // A finished job resumed again has nothing left to do.
    let again = embed(&corpus, &out, &[&enc[..], &["--resume"]].concat()).finished();
    assert_eq!((u(&again["units"]), u(&again["rows"])), (0, 0), "{again}");
    assert_eq!(u(&again["units_skipped"]) as usize, units, "{again}");
    eprintln!("kill and resume: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn shards_split_the_units_and_together_equal_the_unsharded_output() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    let (out, whole) = (dir.path().join("sharded"), dir.path().join("whole"));
    let c = make_corpus(&corpus, 1000, 9, &[]);
    let units = u(&c["row_groups"]);
    let enc = ["--dense-encoding", "bf16", "--colbert-encoding", "binary"];

    let (mut rows, mut parts_seen, mut sum_units) = (0, std::collections::BTreeSet::new(), 0);
    for i in 0..4 {
        let shard = format!("{i}/4");
        let before = parts_in(&out).into_iter().collect::<std::collections::BTreeSet<_>>();
        let sum = embed(&corpus, &out, &[&enc[..], &["--shard", &shard]].concat()).finished();
        // Every 4th unit, starting at i.
        let mine = (0..units).filter(|k| k % 4 == i).count() as u64;
        assert_eq!(u(&sum["units"]), mine, "shard {shard}: {sum}");
        rows += u(&sum["rows"]);
        sum_units += u(&sum["units"]);
        let after: std::collections::BTreeSet<String> = parts_in(&out).into_iter().collect();
        let new: Vec<&String> = after.difference(&before).collect();
        assert_eq!(new.len() as u64, mine, "shard {shard} wrote its own parts only");
        for p in new {
            assert!(parts_seen.insert(p.clone()), "{p} written by two shards");
            let index: u64 = p["part-".len()..p.len() - ".parquet".len() - 9].parse().unwrap();
            assert_eq!(index % 4, i, "{p}: shard {shard} owns every 4th unit");
        }
        assert_eq!(units_done(&out, &format!("{i}-of-4")) as u64, mine);
    }
    assert_eq!((rows, sum_units), (ROWS, units));
    let m = py("check.py", &["parts", s(&out)]);
    assert_eq!((u(&m["manifests"]), u(&m["parts"]), u(&m["rows"])), (4, units, ROWS), "{m}");
    py("check.py", &["coverage", s(&out), s(&corpus), "--keep", "lang,n"]);
    schema_is(&out, "bf16", "binary");

    embed(&corpus, &whole, &enc).finished();
    assert_eq!(parts_in(&whole), parts_in(&out), "the same part names as the unsharded run");
    let eq = py("check.py", &["equal", s(&out), s(&whole)]);
    assert_eq!(u(&eq["rows"]), ROWS, "{eq}");
    eprintln!("shards: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn previous_output_reuses_unchanged_rows_and_equals_a_fresh_run() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (corpus, changed) = (dir.path().join("corpus"), dir.path().join("changed"));
    let (old, new, fresh) =
        (dir.path().join("old"), dir.path().join("new"), dir.path().join("fresh"));
    let c = make_corpus(&corpus, 2500, 10, &[]);
    let enc = ["--colbert-encoding", "f16"];
    let first = embed(&corpus, &old, &enc).finished();

    let ch = py("change.py", &[s(&corpus), s(&changed), "--fraction", "0.01"]);
    let n_changed = u(&ch["changed"]);
    assert!((ROWS / 200..ROWS / 50).contains(&n_changed), "about 1% changed: {ch}");
    let sum = embed(&changed, &new, &[&enc[..], &["--previous", s(&old)]].concat()).finished();
    // Changed rows always get a text; a changed row whose text was null no longer fails.
    let failed = u(&first["failed"]) - u(&ch["were_null"]);
    assert_eq!(u(&sum["failed"]), failed, "{sum} {ch}");
    assert_eq!(u(&sum["embedded"]), n_changed, "only the changed rows are embedded: {sum} {ch}");
    assert_eq!(u(&sum["reused"]), ROWS - n_changed - failed, "the rest is reused: {sum}");
    assert_eq!(sum["units"], c["row_groups"], "{sum}");
    assert!(u(&sum["tokens"]) < u(&first["tokens"]) / 20, "{sum} vs {first}");

    let fresh_sum = embed(&changed, &fresh, &enc).finished();
    assert_eq!(u(&fresh_sum["embedded"]), ROWS - failed, "{fresh_sum}");
    let eq = py("check.py", &["equal", s(&new), s(&fresh)]);
    assert_eq!(u(&eq["rows"]), ROWS, "{eq}");
    py("check.py", &["coverage", s(&new), s(&changed), "--keep", "lang,n"]);
    let m = py("check.py", &["parts", s(&new)]);
    assert_eq!(m["reused"], sum["reused"], "the manifest counts the reused rows: {m}");
    eprintln!("previous: {:.1}s", t0.elapsed().as_secs_f64());
}

// Bugs found writing the tests above: each test is the reproduction.

/// A small Parquet corpus written with pyarrow: (id, text) rows per file, `row_group` rows
/// per row group, and the `lang` and `n` columns `embed` keeps.
fn small_corpus(dir: &Path, files: &[&[(&str, Option<&str>)]], row_group: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let spec: Vec<Value> = files.iter().map(|rows| serde_json::json!(rows)).collect();
    let code = format!(
        "import json, sys, pyarrow as pa, pyarrow.parquet as pq\n\
         for i, rows in enumerate(json.loads(sys.argv[1])):\n\
         \x20   t = pa.table({{'id': [r[0] for r in rows],\n\
         \x20                  'text': pa.array([r[1] for r in rows], pa.string()),\n\
         \x20                  'lang': ['en'] * len(rows), 'n': list(range(len(rows)))}})\n\
         \x20   pq.write_table(t, f'{}/f{{i}}.parquet', row_group_size={row_group})\n",
        s(dir)
    );
    let o = Command::new(python())
        .args(["-c", &code, &serde_json::to_string(&spec).unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "writing a corpus with pyarrow (installed by `bash scripts/test.sh`): {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn previous_does_not_reuse_a_row_whose_text_became_null() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    let (o1, o2) = (dir.path().join("o1"), dir.path().join("o2"));
    small_corpus(&v1, &[&[("a", Some("")), ("b", Some("hello"))]], 10);
    small_corpus(&v2, &[&[("a", None), ("b", Some("hello"))]], 10);
    embed(&v1, &o1, &[]).finished();
    // A fresh run of v2 fails row a (null text); --previous must not make it succeed.
    let sum = embed(&v2, &o2, &["--previous", s(&o1)]).finished();
    assert_eq!((u(&sum["failed"]), u(&sum["reused"])), (1, 1), "{sum}");
}

#[test]
fn another_shard_count_or_settings_into_an_existing_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, out) = (dir.path().join("c"), dir.path().join("out"));
    let rows: Vec<(String, Option<String>)> =
        (0..10).map(|i| (format!("i{i}"), Some(format!("text {i}")))).collect();
    let rows: Vec<(&str, Option<&str>)> =
        rows.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    small_corpus(&corpus, &[&rows], 5);
    embed(&corpus, &out, &[]).finished();
    // Same units, other shard count and another ColBERT encoding: it overwrites part 0 with
    // binary ColBERT while manifest-0-of-1 still lists it as f32.
    let r = embed(&corpus, &out, &["--shard", "0/2", "--colbert-encoding", "binary"]);
    r.refused("--colbert-encoding");
    // Sibling shards of one output must agree on the settings too.
    let (sh, ok) = (dir.path().join("sh"), ["--shard", "0/2"]);
    embed(&corpus, &sh, &ok).finished();
    embed(&corpus, &sh, &["--shard", "1/2", "--colbert-encoding", "binary"])
        .refused("--colbert-encoding");
}

#[test]
fn a_writer_failure_ends_the_job_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, out) = (dir.path().join("c"), dir.path().join("out"));
    let c = py(
        "make_corpus.py",
        &[s(&corpus), "--rows", "20000", "--files", "2", "--row-group", "1000"],
    );
    assert_eq!(c["rows"], 20000);
    // The manifest's temporary name is taken by a directory: saving the manifest after the
    // first part fails, as on a full disk or a read-only volume.
    std::fs::create_dir_all(out.join("_trident/manifest-0-of-1.json.tmp")).unwrap();
    let mut child = embed_cmd(&corpus, &out, &[]).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the job hung after its writer failed (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("manifest-0-of-1.json.tmp"), "the error names the file: {err}");
}

#[test]
fn resume_with_a_narrower_input_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, out) = (dir.path().join("c"), dir.path().join("out"));
    let rows: Vec<(String, Option<String>)> =
        (0..6).map(|i| (format!("i{i}"), Some(format!("text {i}")))).collect();
    let rows: Vec<(&str, Option<&str>)> =
        rows.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    small_corpus(&corpus, &[&rows, &rows], 3);
    embed(&corpus, &out, &[]).finished();
    // The same job resumed on only one of its two files: `total_rows - done_rows` in
    // corpus::job::run underflows (a panic in debug builds, a wrapped progress total in
    // release). Refusing (the input is not the job's) or finishing at once are both fine.
    let r = embed(&corpus.join("f0*.parquet"), &out, &["--resume"]);
    assert!(r.code == 0 || r.code == 2, "exit {}:\n{}", r.code, r.stderr);
}
