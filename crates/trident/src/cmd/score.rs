//! `trident score`: dense, lexical, ColBERT and hybrid scores of (query, passage) pairs, with
//! the key names of the reference's `compute_score`.
//!
//! Each side of a pair is a text (`"query"`, `"passage"`), encoded here, or a stored result
//! (`"query_embedding"`, `"passage_embedding"`: trident's JSON object as `trident embed` writes
//! it, in any encoding), scored as it was stored: f16/bf16 values in f32 arithmetic, and a
//! binary ColBERT side makes the other side's rows binary too (MaxSim of 1 − 2·Hamming/dim).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use trident_core::score::{read_stored, score_encoded, Weights};
use trident_core::types::error_json;
use trident_core::{DocId, Embedding, Encoding, Modes, TokenizedDoc};
use trident_engine::pipeline::Prepared;
use trident_engine::{Metrics, Pipeline, PipelineConfig, Priority};
use trident_model::Tokenizer;

use crate::root::layered::ConfigFile;
use crate::root::placement::{build_workers, PlacementArgs};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Model directory (config.json, weights, colbert_linear.pt, sparse_linear.pt, tokenizer.json)
    /// or a Hugging Face hub id such as BAAI/bge-m3.
    #[arg(long, env = "TRIDENT_MODEL")]
    pub model: PathBuf,
    /// JSON Lines file of {"query": "...", "passage": "..."} objects; `-` reads stdin. Either
    /// side may instead be a stored result, `"query_embedding"` / `"passage_embedding"`: the
    /// JSON object `trident embed` writes, in any --dense-encoding / --colbert-encoding.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Mode weights [dense, sparse, colbert] for the hybrid scores.
    #[arg(long, default_value = "0.4,0.2,0.4")]
    pub weights: Weights,
    /// Longest token sequence per query or passage (specials included); longer ones are truncated.
    #[arg(long, default_value_t = 8192)]
    pub max_length: usize,
    /// Token budget of one forward pass (queries and passages of several pairs are encoded together).
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub config: ConfigFile,
}

/// Bounds the queue when a run of lines holds few tokens (or is all errors).
const MAX_QUEUED_LINES: usize = 1024;

#[derive(Deserialize)]
struct Pair {
    query: Option<String>,
    passage: Option<String>,
    query_embedding: Option<Value>,
    passage_embedding: Option<Value>,
}

/// One side of a pair: a text to encode, or a stored result with the encoding it was written in.
enum Side {
    Text(TokenizedDoc),
    Stored(Embedding, Encoding),
}

impl Side {
    fn text(&self) -> Option<&TokenizedDoc> {
        match self {
            Side::Text(d) => Some(d),
            Side::Stored(..) => None,
        }
    }

    /// Tokens to encode, or rows held: what a queued line costs before its flush.
    fn tokens(&self) -> usize {
        match self {
            Side::Text(d) => d.ids.len(),
            Side::Stored(e, _) => e.colbert_rows().count() + 1,
        }
    }
}

/// One input line: a pair to score, or the reason it cannot be.
enum Line {
    Pair(Side, Side),
    Bad(String),
}

/// What a stored side is checked against.
#[derive(Clone, Copy)]
struct Dims {
    dense: usize,
    colbert: usize,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    crate::root::check_max_length("--max-length", args.max_length)?;
    let input: Box<dyn Read> = if args.pairs.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(&args.pairs)
                .with_context(|| format!("opening --pairs {}", args.pairs.display()))?,
        )
    };
    // Texts go through the engine like `/score`'s: its batcher and workers, on any placement.
    let (model, workers) = build_workers(&args.model, &args.placement)?;
    let dims = Dims {
        dense: model.checkpoint.config.hidden_size,
        colbert: model.checkpoint.colbert_dim(),
    };
    let rt = crate::root::runtime()?;
    let cfg = PipelineConfig {
        policy: crate::root::batch_policy(args.batch_tokens, 1),
        key_prefix: "trident".into(),
        model_fingerprint: model.fingerprint.clone(),
    };
    let pipeline =
        rt.block_on(Pipeline::start(cfg, model.tokenizer, workers, None, Metrics::new()))?;
    let tokenizer = pipeline.tokenizer();
    let encoder = Texts { rt: &rt, pipeline: &pipeline };

    let mut out = BufWriter::new(io::stdout().lock());
    let mut reader = BufReader::new(input);
    // Queued lines with their 1-based line numbers (the id of an error record).
    let mut pending: Vec<(usize, Line)> = Vec::new();
    let mut pending_tokens = 0usize;
    let (mut lines, mut pairs, mut failed) = (0usize, 0usize, 0usize);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading --pairs {}", args.pairs.display()))?;
        if n == 0 {
            break;
        }
        lines += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue; // blank lines (e.g. a trailing one) are not pairs
        }
        let line = parse_line(&buf, &tokenizer, args.max_length, dims);
        if let Line::Pair(q, p) = &line {
            pending_tokens += q.tokens() + p.tokens();
        }
        pending.push((lines, line));
        pairs += 1;
        if pending_tokens >= args.batch_tokens || pending.len() >= MAX_QUEUED_LINES {
            failed += flush(&mut pending, &encoder, &args.weights, &mut out)?;
            pending_tokens = 0;
        }
    }
    failed += flush(&mut pending, &encoder, &args.weights, &mut out)?;
    out.flush()?;
    rt.block_on(pipeline.stop());
    if pairs == 0 {
        anyhow::bail!("--pairs {}: no pairs (the input is empty)", args.pairs.display());
    }
    if failed > 0 {
        eprintln!("trident score: {failed} of {pairs} lines were not valid pairs");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_line(raw: &[u8], tokenizer: &Tokenizer, max_length: usize, dims: Dims) -> Line {
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t.trim_end_matches(['\n', '\r']),
        Err(e) => return Line::Bad(format!("line is not valid UTF-8: {e}")),
    };
    let pair: Pair = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            return Line::Bad(format!(
                "expected an object {{\"query\" | \"query_embedding\", \"passage\" | \
                 \"passage_embedding\"}}: {e}"
            ))
        }
    };
    let side = |name: &str, text: Option<String>, stored: Option<Value>| match (text, stored) {
        (Some(_), Some(_)) => Err(format!(
            "give \"{name}\" (a text) or \"{name}_embedding\" (a stored result), not both"
        )),
        (None, None) => Err(format!(
            "no {name}: expected \"{name}\" (a text) or \"{name}_embedding\" (a stored result)"
        )),
        (Some(t), None) => tokenizer
            .encode(&t, max_length)
            .map(Side::Text)
            .map_err(|e| format!("tokenizing the {name}: {e}")),
        (None, Some(v)) => read_stored(&v, dims.dense, dims.colbert)
            .map(|(e, enc)| Side::Stored(e, enc))
            .map_err(|e| format!("{name}_embedding: {e}")),
    };
    let q = side("query", pair.query, pair.query_embedding);
    let p = side("passage", pair.passage, pair.passage_embedding);
    match (q, p) {
        (Ok(q), Ok(p)) => Line::Pair(q, p),
        (Err(e), _) | (_, Err(e)) => Line::Bad(e),
    }
}

/// The engine, for the texts of a flush.
struct Texts<'a> {
    rt: &'a tokio::runtime::Runtime,
    pipeline: &'a Pipeline,
}

impl Texts<'_> {
    /// All of `docs`' embeddings, in order; an encoder failure fails the run.
    fn encode(&self, docs: Vec<TokenizedDoc>) -> anyhow::Result<Vec<Embedding>> {
        let prepared =
            docs.into_iter().map(|doc| Prepared::Miss { doc, cache_key: None }).collect();
        let outcomes =
            self.rt.block_on(self.pipeline.encode_prepared(prepared, Modes::ALL, Priority::Online));
        outcomes.into_iter().map(|o| o.map_err(|e| anyhow::anyhow!("encoder: {e}"))).collect()
    }
}

/// Encodes the queued pairs' texts in one pass, writes one line per input line in order, and
/// returns how many were errors.
fn flush(
    pending: &mut Vec<(usize, Line)>,
    encoder: &Texts,
    weights: &Weights,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let docs: Vec<TokenizedDoc> = pending
        .iter()
        .filter_map(|(_, l)| match l {
            Line::Pair(q, p) => Some([q.text(), p.text()]),
            Line::Bad(_) => None,
        })
        .flatten()
        .flatten()
        .cloned()
        .collect();
    let mut embs = encoder.encode(docs)?.into_iter();
    let f32 = Encoding::default();
    let mut failed = 0;
    for (number, line) in pending.drain(..) {
        let mut side = |s: Side| match s {
            Side::Text(_) => (embs.next().expect("one embedding per text"), f32),
            Side::Stored(e, enc) => (e, enc),
        };
        let result = match line {
            Line::Pair(q, p) => {
                let ((q, qe), (p, pe)) = (side(q), side(p));
                score_encoded(&q, qe, &p, pe, weights).map_err(|e| e.to_string())
            }
            Line::Bad(reason) => Err(reason),
        };
        match result {
            Ok(s) => writeln!(out, "{}", s.to_json())?,
            Err(reason) => {
                failed += 1;
                writeln!(out, "{}", error_json(&DocId::from(number as u64), &reason))?;
            }
        }
    }
    Ok(failed)
}
