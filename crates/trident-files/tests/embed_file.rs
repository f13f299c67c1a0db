//! `embed_file` end to end in process: a JSON Lines input through the real coordinator, batcher
//! and workers (stub embedders, the tiny tokenizer) into the ordered sink.

use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use trident_core::batch::BatchPolicy;
use trident_core::{DocId, Embedding, Encoding, Format, Modes, TokenizedDoc};
use trident_engine::flight::FlightLimits;
use trident_engine::testing::Stub;
use trident_engine::{EmbedderFactory, EngineError, Metrics, Pipeline, PipelineConfig, WorkerSpec};
use trident_files::embed_file::{embed_file, output_record, EmbedFileOptions, EmbedSummary};
use trident_model::{Embedder, ModelError, Tokenizer};

const MAX_LENGTH: usize = 64;
const MAX_BYTES: usize = 1024;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3"))
        .unwrap()
}

/// The Stub's results; a batch holding a document of `slow_from` tokens or more takes 300 ms,
/// one holding a document of exactly `fail_len` tokens fails. Completed calls are logged (the
/// token lengths of their documents), in completion order.
struct Slow {
    slow_from: usize,
    fail_len: Option<usize>,
    done: Arc<Mutex<Vec<Vec<usize>>>>,
}

impl Embedder for Slow {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        let lens: Vec<usize> = docs.iter().map(|d| d.ids.len()).collect();
        if lens.iter().any(|&l| l >= self.slow_from) {
            std::thread::sleep(Duration::from_millis(300));
        }
        if lens.iter().any(|&l| Some(l) == self.fail_len) {
            return Err(ModelError::Input("injected failure".into()));
        }
        self.done.lock().unwrap().push(lens);
        Stub.encode(docs, modes)
    }

    fn describe(&self) -> String {
        "slow stub".into()
    }

    fn hidden_size(&self) -> usize {
        2
    }
}

type Done = Arc<Mutex<Vec<Vec<usize>>>>;

async fn pipeline(slow_from: usize, fail_len: Option<usize>, done: &Done) -> Pipeline {
    let workers = (0..2)
        .map(|w| {
            let done = done.clone();
            let factory: EmbedderFactory = Arc::new(move || {
                let e = Slow { slow_from, fail_len, done: done.clone() };
                Ok(Box::new(e) as Box<dyn Embedder>)
            });
            WorkerSpec { name: format!("w{w}"), factory }
        })
        .collect();
    let policy = BatchPolicy {
        batch_tokens: 64,
        max_wait: Duration::from_millis(2),
        ..BatchPolicy::default()
    };
    let cfg = PipelineConfig { policy, key_prefix: "t".into(), model_fingerprint: "f".into() };
    Pipeline::start(cfg, tokenizer(), workers, None, Metrics::new()).await.unwrap()
}

/// An output shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn options(
    limits: FlightLimits,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
) -> EmbedFileOptions {
    EmbedFileOptions {
        modes: Modes::ALL,
        max_length: MAX_LENGTH,
        max_record_bytes: MAX_BYTES,
        limits,
        progress,
        input_name: "input.jsonl".into(),
        format: Format::Json,
        encoding: Encoding::default(),
    }
}

const ROOMY: FlightLimits = FlightLimits {
    high_tokens: 1 << 20,
    low_tokens: 1 << 19,
    max_records: 1 << 20,
    max_bytes: 1 << 30,
};

async fn run(
    p: &Pipeline,
    input: String,
    opts: EmbedFileOptions,
) -> (Result<EmbedSummary, EngineError>, String) {
    let out = Sink::default();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        embed_file(p, Box::new(Cursor::new(input.into_bytes())), Box::new(out.clone()), opts),
    )
    .await
    .expect("embed_file finishes");
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    (r, text)
}

/// What the output line of a good input line must be: the Stub's result for its tokens.
fn expected_line(tok: &Tokenizer, id: DocId, text: &str) -> (String, usize) {
    let doc = tok.encode(text, MAX_LENGTH).unwrap();
    let e = Stub.encode(std::slice::from_ref(&doc), Modes::ALL).unwrap().remove(0);
    let line = output_record(Format::Json, Encoding::default(), &id, Ok(e));
    (String::from_utf8(line).unwrap(), doc.ids.len())
}

/// What [`mixed`] saw.
struct Mixed {
    summary: EmbedSummary,
    /// Tokens of the records that have an embedding.
    good_tokens: u64,
    /// Whether the slow first line finished after a later one.
    out_of_order: bool,
}

/// 41 lines, the first long and slow (everything after it finishes first), with a bad JSON
/// object at 10, a bad field at 20, an oversize line at 30, an empty last line and, when
/// `poison`, a record the encoder fails at 25. Checks every output line against its input.
async fn mixed(poison: bool) -> Mixed {
    let tok = tokenizer();
    let len = |t: &str| tok.encode(t, MAX_LENGTH).unwrap().ids.len();
    let slow = "a long first line that takes a while ".repeat(4);
    let mut lines: Vec<String> = (1..=40)
        .map(|i| match i {
            1 => slow.clone(),
            10 => r#"{"id":"x","text":"#.to_string(),
            20 => r#"{"id":"k","text":5}"#.to_string(),
            30 => "y".repeat(MAX_BYTES + 100),
            i if i % 4 == 0 => format!(r#"{{"id":"doc-{i}","text":"object line {i}"}}"#),
            i => format!("plain line {i} {}", "w ".repeat(i % 7)),
        })
        .collect();
    lines.push(String::new()); // an empty last line is still a record (the text "")
    let n = lines.len();
    let slow_from = len(&slow);
    let plain: Vec<usize> = (0..n).filter(|&i| ![0, 9, 19, 24, 29].contains(&i)).collect();
    let plain_lens: Vec<usize> = plain.iter().map(|&i| len(&lines[i])).collect();
    assert!(plain_lens.iter().all(|&l| l < slow_from), "only line 1 is slow");
    // The record the encoder fails: a length no other line has.
    let fail_len = if poison {
        let text =
            (1..).map(|k| "poison ".repeat(k)).find(|t| !plain_lens.contains(&len(t))).unwrap();
        let fail_len = len(&text);
        assert!(fail_len < slow_from);
        lines[24] = text;
        Some(fail_len)
    } else {
        None
    };
    let done = Done::default();
    let p = pipeline(slow_from, fail_len, &done).await;
    let (summary, out) = run(&p, lines.join("\n") + "\n", options(ROOMY, None)).await;
    let summary = summary.unwrap();

    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), n, "one output line per input line");
    let mut good_tokens = 0;
    for (i, (line, input)) in got.iter().zip(&lines).enumerate() {
        let no = i as u64 + 1;
        let v: Value = serde_json::from_str(line).unwrap();
        let error = v["error"].as_str().unwrap_or_default();
        match no {
            10 => {
                assert_eq!(v["id"], 10, "no id could be read: the line number");
                assert!(error.contains("not valid JSON"), "{line}");
            }
            20 => {
                assert_eq!(v["id"], "k");
                assert!(error.contains("\"text\" must be a string"), "{line}");
            }
            25 if poison => {
                assert_eq!(v["id"], 25);
                assert!(error.contains("encoder failed on this record"), "{line}");
                assert!(error.contains("w0") && error.contains("w1"), "{line}");
            }
            30 => {
                assert_eq!(v["id"], 30);
                assert!(error.contains("exceeds the limit"), "{line}");
            }
            _ => {
                let (id, text) = match serde_json::from_str::<Value>(input) {
                    Ok(o) => (
                        DocId::Str(o["id"].as_str().unwrap().into()),
                        o["text"].as_str().unwrap().to_string(),
                    ),
                    Err(_) => (DocId::from(no), input.clone()),
                };
                let (want, t) = expected_line(&tok, id, &text);
                assert_eq!(format!("{line}\n"), want, "line {no}");
                good_tokens += t as u64;
            }
        }
    }
    assert_eq!(summary.records, n as u64);
    assert_eq!(summary.failed, 3 + poison as u64);
    let done = done.lock().unwrap().clone();
    let slow_at = done.iter().position(|c| c.contains(&slow_from)).expect("line 1 encoded");
    p.stop().await;
    Mixed { summary, good_tokens, out_of_order: slow_at > 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_come_out_in_input_order_with_errors_in_place() {
    let m = mixed(true).await;
    assert!(m.out_of_order, "batches finished in input order: the test proves nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_records_failures_and_encoded_tokens() {
    let m = mixed(false).await;
    assert!(m.out_of_order, "batches finished in input order: the test proves nothing");
    assert_eq!(m.summary.tokens, m.good_tokens);
}

/// `EmbedSummary::tokens` counts tokens encoded: a record the encoder failed counts none (it
/// used to add what it held in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_encoder_failed_adds_no_tokens_to_the_summary() {
    let m = mixed(true).await;
    assert_eq!(m.summary.tokens, m.good_tokens);
}

/// With in-flight limits far below the input's size the reader keeps waiting for the sink to
/// release records; a leak in that accounting would stall it. Progress is reported in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_in_flight_limits_still_finish_every_line_in_order() {
    let done = Done::default();
    let p = pipeline(usize::MAX, None, &done).await;
    let n = 300u64;
    let input: String = (1..=n).map(|i| format!("record number {i}\n")).collect();
    let limits = FlightLimits { high_tokens: 40, low_tokens: 20, max_records: 4, max_bytes: 200 };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let progress: Arc<dyn Fn(u64) + Send + Sync> = {
        let seen = seen.clone();
        Arc::new(move |k| seen.lock().unwrap().push(k))
    };
    let (summary, out) = run(&p, input, options(limits, Some(progress))).await;
    let summary = summary.unwrap();
    assert_eq!((summary.records, summary.failed), (n, 0));
    let ids: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>());
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress went backwards");
    assert_eq!(seen.last(), Some(&n));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_input_is_an_error_and_writes_nothing() {
    let done = Done::default();
    let p = pipeline(usize::MAX, None, &done).await;
    let (r, out) = run(&p, String::new(), options(ROOMY, None)).await;
    match r {
        Err(EngineError::Input(msg)) => {
            assert!(msg.contains("input.jsonl") && msg.contains("empty"), "{msg}")
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    assert!(out.is_empty());
    p.stop().await;
}
