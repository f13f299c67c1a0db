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
use trident_model::cpu::CpuBackend;
use trident_model::{Embedder, Encoder, Tokenizer};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Model directory (config.json, weights, colbert_linear.pt, sparse_linear.pt, tokenizer.json)
    /// or a Hugging Face hub id such as BAAI/bge-m3.
    #[arg(long)]
    pub model: String,
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
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Token budget of one forward pass (queries and passages of several pairs are encoded together).
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
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
    super::check_max_length("--max-length", args.max_length)?;
    let input: Box<dyn Read> = if args.pairs.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(&args.pairs)
                .with_context(|| format!("opening --pairs {}", args.pairs.display()))?,
        )
    };
    let dir = crate::hub::resolve_model(&args.model)?;
    // `trident_model::load_cpu`, keeping the ColBERT head's width for checking stored sides.
    let (tokenizer, embedder) = (|| {
        let (tokenizer, ckpt) = trident_model::open_dir(&dir)?;
        let mut enc = Encoder::new(&ckpt, CpuBackend::new(args.threads))?;
        enc.set_special_ids(tokenizer.special_ids());
        anyhow::Ok((tokenizer, enc))
    })()
    .with_context(|| format!("loading model {}", dir.display()))?;
    let dims = Dims { dense: embedder.hidden_size(), colbert: embedder.colbert_dim() };

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
            failed += flush(&mut pending, &embedder, &args.weights, &mut out)?;
            pending_tokens = 0;
        }
    }
    failed += flush(&mut pending, &embedder, &args.weights, &mut out)?;
    out.flush()?;
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

/// Encodes the queued pairs' texts in one pass, writes one line per input line in order, and
/// returns how many were errors.
fn flush(
    pending: &mut Vec<(usize, Line)>,
    embedder: &dyn Embedder,
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
    let embs = if docs.is_empty() { Vec::new() } else { embedder.encode(&docs, Modes::ALL)? };
    anyhow::ensure!(
        embs.len() == docs.len(),
        "encoder returned {} embeddings for {} documents",
        embs.len(),
        docs.len()
    );
    let mut embs = embs.into_iter();
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
