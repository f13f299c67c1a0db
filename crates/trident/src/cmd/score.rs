//! `trident score`: dense, lexical, ColBERT and hybrid scores of (query, passage) pairs, with
//! the key names of the reference's `compute_score`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Deserialize;
use trident_core::score::{score_pair, Weights};
use trident_core::types::error_json;
use trident_core::{DocId, Modes, TokenizedDoc};
use trident_model::{Embedder, Tokenizer};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Model directory (config.json, weights, colbert_linear.pt, sparse_linear.pt, tokenizer.json)
    /// or a Hugging Face hub id such as BAAI/bge-m3.
    #[arg(long)]
    pub model: String,
    /// JSON Lines file of {"query": "...", "passage": "..."} objects; `-` reads stdin.
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
    query: String,
    passage: String,
}

/// One input line: a pair to score, or the reason it cannot be.
enum Line {
    Pair(TokenizedDoc, TokenizedDoc),
    Bad(String),
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    if args.max_length < 2 {
        anyhow::bail!(
            "--max-length {} cannot hold <s> and </s>; expected at least 2",
            args.max_length
        );
    }
    let input: Box<dyn Read> = if args.pairs.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(&args.pairs)
                .with_context(|| format!("opening --pairs {}", args.pairs.display()))?,
        )
    };
    let dir = crate::hub::resolve_model(&args.model)?;
    let (tokenizer, embedder) = trident_model::load_cpu(&dir, args.threads)
        .with_context(|| format!("loading model {}", dir.display()))?;

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
        let line = parse_line(&buf, &tokenizer, args.max_length);
        if let Line::Pair(q, p) = &line {
            pending_tokens += q.ids.len() + p.ids.len();
        }
        pending.push((lines, line));
        pairs += 1;
        if pending_tokens >= args.batch_tokens || pending.len() >= MAX_QUEUED_LINES {
            failed += flush(&mut pending, embedder.as_ref(), &args.weights, &mut out)?;
            pending_tokens = 0;
        }
    }
    failed += flush(&mut pending, embedder.as_ref(), &args.weights, &mut out)?;
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

fn parse_line(raw: &[u8], tokenizer: &Tokenizer, max_length: usize) -> Line {
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t.trim_end_matches(['\n', '\r']),
        Err(e) => return Line::Bad(format!("line is not valid UTF-8: {e}")),
    };
    let pair: Pair = match serde_json::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            return Line::Bad(format!(
                "expected an object {{\"query\": string, \"passage\": string}}: {e}"
            ))
        }
    };
    match (tokenizer.encode(&pair.query, max_length), tokenizer.encode(&pair.passage, max_length)) {
        (Ok(q), Ok(p)) => Line::Pair(q, p),
        (Err(e), _) => Line::Bad(format!("tokenizing the query: {e}")),
        (_, Err(e)) => Line::Bad(format!("tokenizing the passage: {e}")),
    }
}

/// Encodes the queued pairs in one pass, writes one line per input line in order, and
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
            Line::Pair(q, p) => Some([q.clone(), p.clone()]),
            Line::Bad(_) => None,
        })
        .flatten()
        .collect();
    let embs = if docs.is_empty() { Vec::new() } else { embedder.encode(&docs, Modes::ALL)? };
    let mut embs = embs.chunks_exact(2);
    let mut failed = 0;
    for (number, line) in pending.drain(..) {
        match line {
            Line::Pair(..) => {
                let qp = embs.next().context("encoder returned fewer embeddings than documents")?;
                let s = score_pair(&qp[0], &qp[1], weights)?;
                writeln!(out, "{}", s.to_json())?;
            }
            Line::Bad(reason) => {
                failed += 1;
                writeln!(out, "{}", error_json(&DocId::from(number as u64), &reason))?;
            }
        }
    }
    Ok(failed)
}
