//! `trident embed`: JSON Lines in (file or stdin), one JSON object per line out (file or stdout),
//! in input order, through the same pipeline as `trident node` (coordinator → batcher →
//! workers) with an in-memory content cache.
//!
//! Input lines are numbered from 1. A line starting with `{` must be an object with a string
//! `"text"` (and an optional `"id"`, string or number; default: the line number); any other line
//! is the text itself, with its line number as id. A bad line yields `{"id": .., "error": ..}`
//! in its place and the exit code is 1. Exit code 2 means the run itself failed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use trident_core::{ColbertEncoding, DenseEncoding, Encoding, Format, Modes};
use trident_engine::flight::FlightLimits;
use trident_engine::model::LoadedModel;
use trident_engine::{Cache, Metrics, Pipeline, PipelineConfig, WorkerSpec};
use trident_files::embed_file::{embed_file, EmbedFileOptions};

use crate::root::layered::ConfigFile;
use crate::root::placement::{build_workers, PlacementArgs};

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Model directory (Hugging Face layout: config.json, weights, heads, tokenizer.json), or
    /// a hub id such as `BAAI/bge-m3` (optionally `@revision`), downloaded into the hub cache.
    #[arg(long, env = "TRIDENT_MODEL")]
    pub model: PathBuf,
    /// Input: a JSON Lines file or `-` for stdin; or Parquet — a `.parquet` file, a directory
    /// of them, or a glob (`'corpus/*.parquet'`) — which makes this a resumable re-embedding job
    /// writing Parquet parts into the `--output` directory.
    #[arg(long, default_value = "-")]
    pub input: String,
    /// Output file, or `-` for stdout; for Parquet input, the output directory.
    #[arg(long, default_value = "-")]
    pub output: String,
    /// Parquet input: the id column (string or integer).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Parquet input: the text column.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Parquet input: columns copied through to the output, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub keep_columns: Vec<String>,
    /// Parquet input: this run's share of the input's row groups, `I/N` (0 ≤ I < N): N runs
    /// with I = 0..N-1 (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX) split the corpus.
    #[arg(long, default_value = "0/1")]
    pub shard: trident_files::corpus::Shard,
    /// Parquet input: finish an interrupted job in `--output` (units already written are kept;
    /// refused when the settings or the model differ).
    #[arg(long)]
    pub resume: bool,
    /// Parquet input: an earlier output (same model and settings) whose rows are reused where
    /// the id and the text are unchanged.
    #[arg(long)]
    pub previous: Option<PathBuf>,
    /// Compute the dense vector (no mode flag = all three).
    #[arg(long)]
    pub dense: bool,
    /// Compute the sparse lexical weights.
    #[arg(long)]
    pub sparse: bool,
    /// Compute the ColBERT vectors.
    #[arg(long)]
    pub colbert: bool,
    /// Truncate documents to this many tokens (specials included).
    #[arg(long, default_value_t = 8192)]
    pub max_length: usize,
    /// Token budget of one batch.
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Longest wait (ms) for a partial batch to fill.
    #[arg(long, default_value_t = 20)]
    pub max_wait_ms: u64,
    /// Longest input line in bytes; longer lines are error records.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_record_bytes: usize,
    /// Output format: `json` (trident's JSON Lines), `msgpack` (compact binary values,
    /// concatenated), or a vector store's feed as JSON Lines: `milvus` rows, `qdrant` points,
    /// `vespa` put operations (schemas in deploy/).
    #[arg(long, default_value = "json", env = "TRIDENT_FORMAT")]
    pub format: Format,
    /// Number type of the written dense vector: f32, f16 or bf16.
    #[arg(long, default_value = "f32", env = "TRIDENT_DENSE_ENCODING")]
    pub dense_encoding: DenseEncoding,
    /// Number type of the written ColBERT rows: f32, f16, or binary (one sign bit per
    /// dimension, 1024 dims → 128 bytes a token).
    #[arg(long, default_value = "f32", env = "TRIDENT_COLBERT_ENCODING")]
    pub colbert_encoding: ColbertEncoding,
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub config: ConfigFile,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    crate::root::check_max_length("--max-length", args.max_length)?;
    anyhow::ensure!(args.batch_tokens > 0, "--batch-tokens must be positive");
    if trident_files::corpus::is_parquet_input(&args.input) {
        return run_corpus(args);
    }
    let t0 = std::time::Instant::now();
    let input: Box<dyn BufRead + Send> = if args.input == "-" {
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
    } else {
        let f = std::fs::File::open(&args.input)
            .with_context(|| format!("opening input {}", args.input))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, f))
    };
    anyhow::ensure!(
        !(args.format.is_binary() && args.output == "-" && std::io::stdout().is_terminal()),
        "--format {} writes binary values: give --output FILE or pipe the output",
        args.format
    );
    let output: Box<dyn Write + Send> = if args.output == "-" {
        Box::new(std::io::stdout())
    } else {
        let f = std::fs::File::create(&args.output)
            .with_context(|| format!("creating output {}", args.output))?;
        Box::new(f)
    };
    let (model, workers) = build_workers(&args.model, &args.placement)?;
    let modes = Modes::from_flags(args.dense, args.sparse, args.colbert);
    let rt = crate::root::runtime()?;
    let summary = rt.block_on(async {
        let pipeline = start_pipeline(&args, model, workers).await?;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos} docs  {per_sec}  {elapsed}",
                )
                .expect("valid template"),
            );
            b
        });
        let progress = bar
            .clone()
            .map(|b| Arc::new(move |n: u64| b.set_position(n)) as Arc<dyn Fn(u64) + Send + Sync>);
        let opts = EmbedFileOptions {
            modes,
            max_length: args.max_length,
            max_record_bytes: args.max_record_bytes,
            limits: args.flight_limits(),
            progress,
            input_name: if args.input == "-" { "stdin".into() } else { args.input.clone() },
            format: args.format,
            encoding: Encoding { dense: args.dense_encoding, colbert: args.colbert_encoding },
        };
        let r = embed_file(&pipeline, input, output, opts).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        pipeline.stop().await;
        r
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "{}",
        serde_json::json!({
            "rows": summary.records, "failed": summary.failed, "tokens": summary.tokens,
            "seconds": seconds, "tokens_per_second": summary.tokens as f64 / seconds.max(1e-9),
            "format_seconds": summary.format_seconds,
        })
    );
    if summary.failed > 0 {
        eprintln!(
            "trident embed: {} of {} records failed (see their \"error\" fields)",
            summary.failed, summary.records
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

impl EmbedArgs {
    /// Memory bound: at most this many records / tokens between reading and writing (records
    /// are lines read under `max_record_bytes` or Parquet rows; the records bound covers them).
    fn flight_limits(&self) -> FlightLimits {
        FlightLimits {
            high_tokens: 4 * self.batch_tokens * self.placement.workers.max(1),
            low_tokens: 2 * self.batch_tokens * self.placement.workers.max(1),
            max_records: 8192,
            max_bytes: usize::MAX,
        }
    }
}

/// The pipeline of `trident embed`: the workers, an in-memory content cache.
async fn start_pipeline(
    args: &EmbedArgs,
    model: LoadedModel,
    workers: Vec<WorkerSpec>,
) -> Result<Pipeline, trident_engine::EngineError> {
    let cfg = PipelineConfig {
        policy: crate::root::batch_policy(args.batch_tokens, args.max_wait_ms),
        key_prefix: "trident".into(),
        model_fingerprint: model.fingerprint.clone(),
    };
    Pipeline::start(cfg, model.tokenizer, workers, Some(Cache::memory(100_000)), Metrics::new())
        .await
}

/// Parquet in, Parquet parts out (`trident_files::corpus`); prints the summary as JSON.
fn run_corpus(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    use trident_files::corpus::{run, CorpusJob};
    anyhow::ensure!(
        args.output != "-",
        "--input {} is Parquet: give --output DIR for the Parquet parts and the manifest",
        args.input
    );
    anyhow::ensure!(
        args.format == Format::Json,
        "--format {} is for JSON Lines output; Parquet input writes Parquet parts",
        args.format
    );
    let (model, workers) = build_workers(&args.model, &args.placement)?;
    let modes = Modes::from_flags(args.dense, args.sparse, args.colbert);
    let hidden = model.checkpoint.config.hidden_size;
    let fingerprint = model.fingerprint.clone();
    let rt = crate::root::runtime()?;
    let summary = rt.block_on(async {
        let pipeline = start_pipeline(&args, model, workers).await?;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} rows  {per_sec}  eta {eta}  {elapsed}",
                )
                .expect("valid template"),
            );
            b
        });
        let progress = bar.clone().map(|b| {
            Arc::new(move |done: u64, total: u64| {
                b.set_length(total);
                b.set_position(done);
            }) as Arc<dyn Fn(u64, u64) + Send + Sync>
        });
        let job = CorpusJob {
            input: args.input.clone(),
            output: PathBuf::from(&args.output),
            id_column: args.id_column.clone(),
            text_column: args.text_column.clone(),
            keep_columns: args.keep_columns.clone(),
            modes,
            max_length: args.max_length,
            encoding: Encoding { dense: args.dense_encoding, colbert: args.colbert_encoding },
            shard: args.shard,
            resume: args.resume,
            previous: args.previous.clone(),
            model_fingerprint: fingerprint,
            dense_dim: hidden,
            colbert_dim: hidden,
            limits: args.flight_limits(),
            progress,
        };
        let r = run(&pipeline, job).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        pipeline.stop().await;
        r
    })?;
    eprintln!("{}", serde_json::to_string(&summary)?);
    if summary.failed > 0 {
        eprintln!(
            "trident embed: {} of {} rows failed (see their \"error\" column)",
            summary.failed, summary.rows
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
