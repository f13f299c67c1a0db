//! `trident node`: a cluster node, Kafka in, Kafka (and optionally Redis) out. Every flag can
//! also come from a `TRIDENT_*` environment variable or the `--config` TOML file
//! (flag > env > file > default); see `trident_cluster::config` for the keys.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use trident_cluster::node::run_node;
use trident_engine::{Cache, Metrics, Pipeline, PipelineConfig};

use crate::root::placement::{build_workers, PlacementArgs};

#[derive(clap::Args, Serialize)]
pub struct NodeArgs {
    /// TOML file with any of the settings below (and extra librdkafka properties).
    #[arg(long, env = "TRIDENT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Model directory, or a hub id such as `BAAI/bge-m3` (optionally `@revision`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Kafka bootstrap servers HOST:PORT[,..] (default 127.0.0.1:9092).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// Consumer group (default trident).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_topic: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
    /// Dead-letter topic for bad records.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlq_topic: Option<String>,
    /// Redis URL (redis://HOST:PORT) for --cache and --store.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Content cache in Redis (best effort).
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub cache: bool,
    /// Result store in Redis by document id (offsets wait for it).
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub store: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub dense: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub sparse: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub colbert: bool,
    /// Truncate documents to this many tokens (default 8192).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Token budget of one batch (default 16384).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_tokens: Option<usize>,
    /// Longest wait for a partial batch, ms (default 20).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    /// Workers (default 1): CPU workers, or workers per CUDA device.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// CPU threads per worker (default 0 = all cores).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Precision of the linear layers: f32 (CPU default), bf16 (CUDA default; AMX on CPUs
    /// that have it) or int8 (CPU only; fast on AMX-INT8 and AVX512-VNNI).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Cap the CPU kernels at this instruction set: generic, avx2, avx512 or amx.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_isa: Option<String>,
    /// CUDA bf16 attention kernel: tensor-core (default) or generic.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_attention: Option<String>,
    /// `cpu` or `cuda:N` (default cpu).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// CUDA device ordinals, `--workers` workers each: `--devices 0,1`.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<usize>>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Output message format: json (default), msgpack, milvus, qdrant or vespa.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// Number type of published and stored dense vectors: f32 (default), f16, bf16.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_encoding: Option<String>,
    /// Number type of published and stored ColBERT rows: f32 (default), f16, binary.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colbert_encoding: Option<String>,
    /// Where ColBERT rows go: auto (default: in the message when it fits, else the store, else
    /// left out and marked), topic, store, topic:NAME (their own topic), none.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colbert_placement: Option<String>,
    /// On SIGTERM, how long to finish in-flight work before committing (default 10000 ms).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_deadline_ms: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    crate::root::init_logging();
    let cfg = crate::root::layered::node_config(args.config.as_deref(), &args)?;
    let model_dir = cfg.model.clone().expect("validated");
    let setting = |name: &'static str| move |e: String| anyhow::anyhow!("{name}: {e}");
    let placement = PlacementArgs {
        device: cfg.device.clone(),
        devices: cfg.devices.clone(),
        workers: cfg.workers,
        threads: cfg.threads,
        precision: cfg
            .precision
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(setting("precision"))?,
        cpu_isa: cfg.cpu_isa.as_deref().map(str::parse).transpose().map_err(setting("cpu_isa"))?,
        cuda_attention: cfg.cuda_attention.clone(),
    };
    let (model, workers) = build_workers(&model_dir, &placement)?;
    let rt = crate::root::runtime()?;
    let report = rt.block_on(async {
        let metrics = Metrics::new();
        if let Some(addr) = &cfg.metrics_addr {
            metrics.serve(addr).await?;
            tracing::info!("metrics on http://{addr}/metrics");
        }
        let cache = if cfg.cache {
            Some(Cache::redis(
                cfg.redis.as_deref().expect("validated"),
                cfg.cache_ttl_secs,
                metrics.clone(),
            )?)
        } else {
            None
        };
        let pcfg = PipelineConfig {
            policy: crate::root::batch_policy(cfg.batch_tokens, cfg.max_wait_ms),
            key_prefix: cfg.key_prefix.clone(),
            model_fingerprint: model.fingerprint.clone(),
        };
        let pipeline = Pipeline::start(pcfg, model.tokenizer, workers, cache, metrics).await?;
        let report = run_node(cfg.clone(), pipeline.clone(), crate::root::shutdown_signal()).await;
        pipeline.stop().await;
        report.context("node failed")
    })?;
    tracing::info!(
        "node stopped: {} records taken, {} unfinished",
        report.records_in,
        report.unfinished
    );
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(ExitCode::SUCCESS)
}
