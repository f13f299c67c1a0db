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
use std::time::Duration;

use anyhow::Context;
use trident_cluster::embed_file::{embed_file, EmbedFileOptions};
use trident_cluster::flight::FlightLimits;
use trident_cluster::model::{cpu_workers, load_model, LoadedModel};
use trident_cluster::{BatchPolicy, Cache, Metrics, Pipeline, PipelineConfig, WorkerSpec};
use trident_core::{ColbertEncoding, DenseEncoding, Encoding, Format, Modes};
use trident_model::cpu::CpuPrecision;

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Model directory (Hugging Face layout: config.json, weights, heads, tokenizer.json), or
    /// a hub id such as `BAAI/bge-m3` (optionally `@revision`), downloaded into the hub cache.
    #[arg(long)]
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
    pub shard: trident_cluster::corpus::Shard,
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
    /// CPU threads per worker (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CUDA device ordinals, one worker (or `--workers`) each: `--devices 0,1`.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Vec<usize>,
    /// Precision of the linear layers: f32 (the CPU's default), bf16 (the GPU's default; on a
    /// CPU with AMX the tile unit multiplies bf16 operands, elsewhere only the weights are
    /// rounded and the arithmetic stays f32), or int8 (CPU with AMX-INT8 only: per-channel
    /// weights, per-token activations).
    #[arg(long, env = "TRIDENT_PRECISION")]
    pub precision: Option<CpuPrecision>,
    /// Workers: CPU workers (each with `--threads` threads), or workers per CUDA device (each
    /// on its own stream, so one batch's copies and host work overlap another's kernels).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
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
}

/// Everything a pipeline needs from the command line, shared with `trident node`.
pub struct PipelineSpec<'a> {
    pub model: &'a std::path::Path,
    pub device: &'a str,
    /// `--devices`: CUDA ordinals (empty: `device` decides).
    pub devices: &'a [usize],
    pub workers: usize,
    pub threads: usize,
    /// Precision of the linear layers (None: the backend's default, f32 on CPU, bf16 on CUDA).
    pub precision: Option<CpuPrecision>,
}

/// Load the model and build the worker specs for `--device` / `--devices`.
pub fn build_workers(spec: &PipelineSpec) -> anyhow::Result<(LoadedModel, Vec<WorkerSpec>)> {
    // The placement is checked before the (slow) model load so a typo fails at once.
    let placement = Placement::parse(spec.device, spec.devices)?;
    anyhow::ensure!(spec.workers > 0, "--workers must be positive");
    // A hub id is downloaded (or found in the hub cache) after the placement check.
    let dir = crate::hub::resolve_model_path(spec.model)?;
    let model =
        load_model(&dir).with_context(|| format!("loading model {}", spec.model.display()))?;
    let workers = match placement {
        Placement::Cpu => {
            cpu_workers(&model, spec.workers, spec.threads, spec.precision.unwrap_or_default())
        }
        Placement::Cuda(devices) => cuda_workers(&model, &devices, spec.workers, spec.precision)?,
    };
    Ok((model, workers))
}

/// Where the encoder runs: the CPU, or a list of CUDA devices.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda(Vec<usize>),
}

impl Placement {
    /// `--device cpu|cuda:N`, or `--devices 0,1,…` (which wins over the default `cpu`).
    pub fn parse(device: &str, devices: &[usize]) -> anyhow::Result<Placement> {
        if !devices.is_empty() {
            anyhow::ensure!(
                device == "cpu",
                "give either --device {device} or --devices {devices:?}, not both"
            );
            let mut seen = std::collections::BTreeSet::new();
            if let Some(d) = devices.iter().find(|d| !seen.insert(**d)) {
                anyhow::bail!("--devices lists CUDA device {d} twice");
            }
            return Ok(Placement::Cuda(devices.to_vec()));
        }
        match device {
            "cpu" => Ok(Placement::Cpu),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(d)) => Ok(Placement::Cuda(vec![d])),
                _ => anyhow::bail!("--device {other}: expected `cpu` or `cuda:N`"),
            },
        }
    }
}

/// `per_device` workers on each CUDA device, each with its own backend (stream, weights,
/// buffers). Precision `bf16` (default: bf16 GEMM inputs, fp32 accumulation) or `f32` (parity
/// with the CPU backend).
fn cuda_workers(
    model: &LoadedModel,
    devices: &[usize],
    per_device: usize,
    precision: Option<CpuPrecision>,
) -> anyhow::Result<Vec<WorkerSpec>> {
    use trident_cuda::{cuda_available, CudaBackend, Precision};
    anyhow::ensure!(
        cuda_available(),
        "--devices {devices:?}: no CUDA driver or device found (use --device cpu)"
    );
    let precision = match precision {
        Some(CpuPrecision::F32) => Precision::F32,
        Some(CpuPrecision::Bf16) | None => Precision::Bf16,
        Some(CpuPrecision::Int8) => {
            anyhow::bail!("--precision int8 is a CPU mode; CUDA workers run f32 or bf16")
        }
    };
    let mut specs = Vec::new();
    for &device in devices {
        for i in 0..per_device {
            let ckpt = model.checkpoint.clone();
            let special = model.tokenizer.special_ids();
            let factory = move || -> Result<Box<dyn trident_model::Embedder>, String> {
                let backend = CudaBackend::new(device, precision).map_err(|e| e.to_string())?;
                let mut enc =
                    trident_model::Encoder::new(&ckpt, backend).map_err(|e| e.to_string())?;
                enc.set_special_ids(special);
                Ok(Box::new(enc))
            };
            let name = if per_device == 1 {
                format!("cuda:{device}")
            } else {
                format!("cuda:{device}/{i}")
            };
            specs.push(WorkerSpec { name, factory: Arc::new(factory) });
        }
    }
    Ok(specs)
}

pub fn policy(batch_tokens: usize, max_wait_ms: u64) -> BatchPolicy {
    BatchPolicy {
        batch_tokens,
        max_wait: Duration::from_millis(max_wait_ms),
        ..BatchPolicy::default()
    }
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    super::check_max_length("--max-length", args.max_length)?;
    anyhow::ensure!(args.batch_tokens > 0, "--batch-tokens must be positive");
    if trident_cluster::corpus::is_parquet_input(&args.input) {
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
    let (model, workers) = build_workers(&args.pipeline_spec())?;
    let modes = Modes::from_flags(args.dense, args.sparse, args.colbert);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
    fn pipeline_spec(&self) -> PipelineSpec<'_> {
        PipelineSpec {
            model: &self.model,
            device: &self.device,
            devices: &self.devices,
            workers: self.workers,
            threads: self.threads,
            precision: self.precision,
        }
    }

    /// Memory bound: at most this many records / tokens between reading and writing (records
    /// are lines read under `max_record_bytes` or Parquet rows; the records bound covers them).
    fn flight_limits(&self) -> FlightLimits {
        FlightLimits {
            high_tokens: 4 * self.batch_tokens * self.workers.max(1),
            low_tokens: 2 * self.batch_tokens * self.workers.max(1),
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
) -> Result<Pipeline, trident_cluster::ClusterError> {
    let cfg = PipelineConfig {
        policy: policy(args.batch_tokens, args.max_wait_ms),
        key_prefix: "trident".into(),
        model_fingerprint: model.fingerprint.clone(),
    };
    Pipeline::start(cfg, model.tokenizer, workers, Some(Cache::memory(100_000)), Metrics::new())
        .await
}

/// Parquet in, Parquet parts out (`trident_cluster::corpus`); prints the summary as JSON.
fn run_corpus(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    use trident_cluster::corpus::{run, CorpusJob};
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
    let (model, workers) = build_workers(&args.pipeline_spec())?;
    let modes = Modes::from_flags(args.dense, args.sparse, args.colbert);
    let hidden = model.checkpoint.config.hidden_size;
    let fingerprint = model.fingerprint.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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

#[cfg(test)]
mod tests {
    use super::Placement;

    #[test]
    fn placement_from_flags() {
        assert_eq!(Placement::parse("cpu", &[]).unwrap(), Placement::Cpu);
        assert_eq!(Placement::parse("cuda:3", &[]).unwrap(), Placement::Cuda(vec![3]));
        assert_eq!(Placement::parse("cpu", &[0, 1]).unwrap(), Placement::Cuda(vec![0, 1]));
        let e = Placement::parse("gpu", &[]).unwrap_err().to_string();
        assert!(e.contains("--device gpu"), "{e}");
        let e = Placement::parse("cuda:0", &[1]).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let e = Placement::parse("cpu", &[0, 1, 0]).unwrap_err().to_string();
        assert!(e.contains("device 0 twice"), "{e}");
    }
}
