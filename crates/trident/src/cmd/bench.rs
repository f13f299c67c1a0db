//! `trident bench`: encoder throughput on a JSON Lines corpus, as one JSON line.
//!
//! Each timed repeat does what an ingestion run does: tokenize every document, sort by length,
//! pack batches up to `--batch-tokens` real tokens and encode them. A warm-up batch runs first
//! and is not timed; `seconds` is the median over `--repeat` runs.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use trident_core::batch::pack_by_length;
use trident_core::{Modes, TokenizedDoc};
use trident_model::{Checkpoint, Embedder, ModelConfig, Tokenizer};

use crate::root::layered::ConfigFile;
use crate::root::placement::{build_workers, first_embedder, workers, PlacementArgs};

/// Where `--random` looks for the real XLM-R tokenizer when `--tokenizer` is not given:
/// relative to the working directory, then to the source tree the binary was built from.
const BUNDLED_TOKENIZER: &str = "tests/fixtures/xlmr/tokenizer.json";

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RandomShape {
    /// XLM-RoBERTa large as BAAI/bge-m3 ships it: 24 layers × 1024 hidden, vocabulary 250002.
    XlmrLarge,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model directory (or hub id) to benchmark.
    #[arg(long, required_unless_present = "random", conflicts_with = "random")]
    pub model: Option<PathBuf>,
    /// Benchmark random weights of this shape, built in memory (no checkpoint needed).
    #[arg(long, value_enum)]
    pub random: Option<RandomShape>,
    /// tokenizer.json for --random [default: tests/fixtures/xlmr/tokenizer.json, the real
    /// 250,002-piece XLM-R tokenizer, looked up in the working directory, then in the source tree]
    #[arg(long, requires = "random")]
    pub tokenizer: Option<PathBuf>,
    /// Number of encoder layers for --random (default: the shape's own, 24).
    #[arg(long, requires = "random")]
    pub layers: Option<usize>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0, requires = "random")]
    pub seed: u64,
    /// JSON Lines corpus: {"id", "text"} per line (a line not starting with `{` is the text).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Use only the first N documents of the corpus.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Real (unpadded) tokens per forward pass.
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Outputs to compute, comma-separated.
    #[arg(long, default_value = "dense,sparse,colbert")]
    pub modes: String,
    /// Timed runs over the whole corpus; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Truncate documents to this many tokens (specials included).
    #[arg(long, default_value_t = 8192)]
    pub max_length: usize,
    /// `--threads` also sets the tokenizer's threads (0 = all cores); one worker is timed.
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub config: ConfigFile,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let modes = parse_modes(&args.modes)?;
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.batch_tokens == 0 {
        bail!("--batch-tokens must be at least 1");
    }
    crate::root::check_max_length("--max-length", args.max_length)?;
    let texts = read_corpus(&args.corpus, args.limit)?;
    let threads = match args.placement.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;

    let (tokenizer, embedder, model) = load(&args)?;
    let load_seconds = started.elapsed().as_secs_f64();

    // Cold start: from process start to the first document's embedding.
    let first = tokenizer.encode(&texts[0], args.max_length)?;
    embedder.encode(std::slice::from_ref(&first), modes)?;
    let time_to_first_embedding_s = started.elapsed().as_secs_f64();

    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let docs = pool.install(|| tokenizer.encode_batch(&refs, args.max_length))?;
    let tokens: usize = docs.iter().map(|d| d.ids.len()).sum();
    let batches = pack_by_length(&lens(&docs), args.batch_tokens);
    // Warm-up (not timed): the largest batch, so buffers reach their working size.
    let warm: Vec<TokenizedDoc> = batches[0].iter().map(|&i| docs[i].clone()).collect();
    embedder.encode(&warm, modes)?;

    let mut runs = Vec::with_capacity(args.repeat);
    let mut tokenize_runs = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let t0 = Instant::now();
        let docs = pool.install(|| tokenizer.encode_batch(&refs, args.max_length))?;
        tokenize_runs.push(t0.elapsed().as_secs_f64());
        let plan = pack_by_length(&lens(&docs), args.batch_tokens);
        let mut docs: Vec<Option<TokenizedDoc>> = docs.into_iter().map(Some).collect();
        let mut embedded = 0;
        for batch in plan {
            let group: Vec<TokenizedDoc> = batch
                .iter()
                .map(|&i| docs[i].take().expect("each document in one batch"))
                .collect();
            embedded += embedder.encode(&group, modes)?.len();
        }
        runs.push(t0.elapsed().as_secs_f64());
        if embedded != texts.len() {
            bail!("encoded {embedded} documents, expected {}", texts.len());
        }
    }
    let seconds = median(&runs);
    let tokenize_seconds = median(&tokenize_runs);
    let line = json!({
        "impl": concat!("trident ", env!("CARGO_PKG_VERSION")),
        "model": model,
        "backend": embedder.describe(),
        "threads": threads,
        "docs": texts.len(),
        "tokens": tokens,
        "seconds": seconds,
        "all_seconds": runs,
        "tokens_per_s": tokens as f64 / seconds,
        "docs_per_s": texts.len() as f64 / seconds,
        "tokenize_seconds": tokenize_seconds,
        "tokenize_share": tokenize_seconds / seconds,
        "batches": batches.len(),
        "batch_tokens": args.batch_tokens,
        "max_length": args.max_length,
        "modes": mode_names(modes),
        "repeat": args.repeat,
        "load_seconds": load_seconds,
        "time_to_first_embedding_s": time_to_first_embedding_s,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// The tokenizer, the first worker's encoder (the same factory as every command's) and a
/// description of the model.
fn load(args: &BenchArgs) -> anyhow::Result<(Tokenizer, Box<dyn Embedder>, String)> {
    if let Some(model) = &args.model {
        let (loaded, workers) = build_workers(model, &args.placement)?;
        let name = model.display().to_string();
        return Ok((loaded.tokenizer, first_embedder(&workers)?, name));
    }
    let placement = args.placement.check()?;
    let tok_path = match &args.tokenizer {
        Some(p) => p.clone(),
        None => bundled_tokenizer()?,
    };
    let tokenizer = Tokenizer::from_file(&tok_path)
        .with_context(|| format!("loading --tokenizer {}", tok_path.display()))?;
    let mut config = ModelConfig::xlmr_large();
    if let Some(n) = args.layers {
        if n == 0 {
            bail!("--layers must be at least 1");
        }
        config.num_hidden_layers = n;
    }
    let layers = config.num_hidden_layers;
    let ckpt = std::sync::Arc::new(Checkpoint::random(config, args.seed));
    let specs = workers(&placement, &args.placement, ckpt, &tokenizer)?;
    let model = format!("random xlmr-large (layers={layers}, seed={})", args.seed);
    Ok((tokenizer, first_embedder(&specs)?, model))
}

fn bundled_tokenizer() -> anyhow::Result<PathBuf> {
    let in_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(BUNDLED_TOKENIZER);
    [PathBuf::from(BUNDLED_TOKENIZER), in_source].into_iter().find(|p| p.is_file()).with_context(
        || {
            format!(
                "--random needs the XLM-R tokenizer: {BUNDLED_TOKENIZER} was not found in the \
                 working directory or the source tree; pass --tokenizer FILE"
            )
        },
    )
}

fn read_corpus(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("opening --corpus {}", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|n| texts.len() >= n) {
            break;
        }
        let line = line.with_context(|| format!("--corpus {} line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let text = if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("--corpus {} line {}", path.display(), i + 1))?;
            match v.get("text").and_then(|t| t.as_str()) {
                Some(t) => t.to_string(),
                None => bail!(
                    "--corpus {} line {}: expected an object with a string \"text\"",
                    path.display(),
                    i + 1
                ),
            }
        } else {
            line
        };
        texts.push(text);
    }
    if texts.is_empty() {
        bail!("--corpus {}: no documents", path.display());
    }
    Ok(texts)
}

fn parse_modes(s: &str) -> anyhow::Result<Modes> {
    let mut m = Modes::NONE;
    for part in s.split(',').map(str::trim) {
        match part {
            "dense" => m.dense = true,
            "sparse" => m.sparse = true,
            "colbert" => m.colbert = true,
            other => bail!("--modes: unknown mode {other:?}; expected dense, sparse or colbert"),
        }
    }
    Ok(m)
}

fn mode_names(m: Modes) -> Vec<&'static str> {
    [("dense", m.dense), ("sparse", m.sparse), ("colbert", m.colbert)]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
}

fn lens(docs: &[TokenizedDoc]) -> Vec<usize> {
    docs.iter().map(|d| d.ids.len()).collect()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size (`VmHWM` of /proc/self/status), when the platform has it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(
            parse_modes("dense,colbert").unwrap(),
            Modes { dense: true, sparse: false, colbert: true }
        );
        assert!(parse_modes("dense,lexical").is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
