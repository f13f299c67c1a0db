//! `trident serve`: the HTTP API (crate `trident-server`) over the same pipeline as `trident node`
//! (cache, tokenizer, batcher, workers), with online priority.
//!
//! The port is bound first and the model loaded after, so `/health` answers 503 (loading) until
//! the workers are up; a model that fails to load ends the process with exit code 2.
//!
//! On SIGTERM or SIGINT the server stops accepting, lets open requests finish for up to
//! `--shutdown-timeout-secs`, closes what is left and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use trident_engine::{Cache, Metrics, Pipeline, PipelineConfig};
use trident_server::lookup::RedisStore;
use trident_server::{AppState, LoadedModel, ModelInfo, ResultStore, ServerConfig};

use crate::root::layered::ConfigFile;
use crate::root::placement::{build_workers, PlacementArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model directory (Hugging Face layout: config.json, weights, heads, tokenizer.json), or
    /// a hub id such as `BAAI/bge-m3` (optionally `@revision`), downloaded into the hub cache.
    #[arg(long, env = "TRIDENT_MODEL")]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "TRIDENT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "TRIDENT_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (all endpoints but /health, /metrics, /openapi.json).
    #[arg(long, env = "TRIDENT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Redis URL of the nodes' result store, for /lookup.
    #[arg(long, env = "TRIDENT_REDIS")]
    pub redis: Option<String>,
    /// Also use the nodes' content cache in Redis (needs --redis).
    #[arg(long, env = "TRIDENT_CACHE")]
    pub cache: bool,
    /// Prefix of every Redis key (as the nodes use it).
    #[arg(long, env = "TRIDENT_KEY_PREFIX", default_value = "trident")]
    pub key_prefix: String,
    /// Content-cache entry lifetime in Redis (seconds).
    #[arg(long, env = "TRIDENT_CACHE_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub cache_ttl_secs: u64,
    /// Default and largest `max_length` of a request (tokens, specials included).
    #[arg(long, env = "TRIDENT_MAX_LENGTH", default_value_t = 8192)]
    pub max_length: usize,
    /// Token budget of one encoder batch.
    #[arg(long, env = "TRIDENT_BATCH_TOKENS", default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Longest a request's documents wait for their batch to fill (ms).
    #[arg(long, env = "TRIDENT_MAX_WAIT_MS", default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Most inputs (texts, pair texts, or ids) per request.
    #[arg(long, env = "TRIDENT_MAX_INPUTS", default_value_t = 256)]
    pub max_inputs: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "TRIDENT_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests processed at once (counted once a body is read); more get 429 and Retry-After.
    #[arg(long, env = "TRIDENT_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    /// Largest response a request may ask for, bounded from its token counts before encoding
    /// (422 past it; ColBERT vectors take ~16 bytes per float as JSON).
    #[arg(long, env = "TRIDENT_MAX_RESPONSE_BYTES", default_value_t = 64 << 20)]
    pub max_response_bytes: usize,
    /// Open connections; more are answered 503 and closed on accept.
    #[arg(long, env = "TRIDENT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds to receive a request head, from the connection's opening or the head's first byte.
    #[arg(long, env = "TRIDENT_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds to receive a request body, from the end of its head (408 past it).
    #[arg(long, env = "TRIDENT_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Seconds to answer a request, body included (503 past it).
    #[arg(long, env = "TRIDENT_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub request_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait for its next request (keep it above the idle
    /// timeout of any proxy in front, often 60 s).
    #[arg(long, env = "TRIDENT_IDLE_TIMEOUT_SECS", default_value_t = 75)]
    pub idle_timeout_secs: u64,
    /// Seconds SIGTERM waits for open requests before closing their connections and exiting.
    #[arg(long, env = "TRIDENT_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
    /// Model name reported by /info and /v1/embeddings (default: the directory name, or the
    /// hub id).
    #[arg(long, env = "TRIDENT_MODEL_NAME")]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub placement: PlacementArgs,
    #[command(flatten)]
    pub config: ConfigFile,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::root::init_logging();
    crate::root::check_max_length("--max-length", args.max_length)?;
    anyhow::ensure!(args.batch_tokens > 0, "--batch-tokens must be positive");
    anyhow::ensure!(
        args.max_inputs > 0 && args.max_in_flight > 0 && args.max_connections > 0,
        "--max-inputs, --max-in-flight and --max-connections must be positive"
    );
    for (flag, secs) in [
        ("--header-timeout-secs", args.header_timeout_secs),
        ("--body-timeout-secs", args.body_timeout_secs),
        ("--request-timeout-secs", args.request_timeout_secs),
        ("--idle-timeout-secs", args.idle_timeout_secs),
    ] {
        anyhow::ensure!(secs > 0, "{flag} must be positive");
    }
    anyhow::ensure!(!args.cache || args.redis.is_some(), "--cache needs --redis URL");
    let rt = crate::root::runtime()?;
    rt.block_on(serve(args))?;
    // Blocking tasks (an encoder batch) are not waited for past this.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let http_metrics = trident_server::Metrics::new((*metrics.registry).clone())
        .context("registering HTTP metrics")?;
    let store: Option<Arc<dyn ResultStore>> = match &args.redis {
        Some(url) => Some(Arc::new(RedisStore::new(url, &args.key_prefix)?)),
        None => None,
    };
    // Named as given: a directory by its last component, a hub id as the id.
    let model_name = args.model_name.clone().unwrap_or_else(|| {
        if args.model.is_dir() {
            args.model.file_name().map_or_else(
                || args.model.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        } else {
            args.model.display().to_string()
        }
    });
    let mut args = args;
    args.model = crate::root::hub::resolve_model_path(&args.model)?;
    let config = ServerConfig {
        model_name,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_bytes,
        max_inputs: args.max_inputs,
        max_in_flight: args.max_in_flight,
        max_length: args.max_length,
        max_response_bytes: args.max_response_bytes,
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        body_timeout: Duration::from_secs(args.body_timeout_secs),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_connections: args.max_connections,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
    };
    let state = AppState::new(config, Arc::new(http_metrics), store);

    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse().with_context(|| {
        format!("--host {} --port {}: not a socket address", args.host, args.port)
    })?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(trident_server::serve(listener, state.clone(), async move {
        let _ = stop_rx.await;
    }));

    let loaded = load(&args, metrics).await;
    let pipeline = match loaded {
        Ok(mut model) => {
            model.info.model = state.config.model_name.clone();
            let pipeline = model.pipeline.clone();
            tracing::info!(backend = %model.info.backend, "model loaded; ready");
            state.set_model(model);
            pipeline
        }
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = server.await;
            return Err(e);
        }
    };

    crate::root::shutdown_signal().await;
    let stop_by = tokio::time::Instant::now() + state.config.shutdown_timeout;
    let _ = stop_tx.send(());
    server.await.context("HTTP server task")?.context("HTTP server")?;
    // The workers get what is left of the deadline (at least a second) to finish their batch.
    let left = stop_by.saturating_duration_since(tokio::time::Instant::now());
    let unfinished = pipeline.drain(left.max(Duration::from_secs(1))).await;
    if unfinished > 0 {
        tracing::warn!("{unfinished} encoder jobs unfinished at the shutdown deadline; exiting");
    }
    Ok(())
}

/// Loads the model, starts the pipeline's workers and describes the result for `/info`.
async fn load(args: &ServeArgs, metrics: Metrics) -> anyhow::Result<LoadedModel> {
    let (placement, dir) = (args.placement.clone(), args.model.clone());
    let (threads, precision) = (placement.threads, placement.precision);
    let (model, specs) =
        tokio::task::spawn_blocking(move || build_workers(&dir, &placement)).await??;
    let pieces = model.tokenizer.pieces();
    let config = &model.checkpoint.config;
    let info = ModelInfo {
        model: String::new(),
        model_dir: args.model.clone(),
        dense_dim: config.hidden_size,
        colbert_dim: model.checkpoint.colbert_dim(),
        vocab_size: model.tokenizer.vocab_size(),
        max_length: config.max_sequence_length(),
        backend: match args.placement.device.as_str() {
            "cpu" if args.placement.devices.is_empty() => format!(
                "cpu ({} threads per worker, {}) · {} layers × {} hidden, {} heads",
                if threads == 0 { "all".to_string() } else { threads.to_string() },
                trident_model::cpu::kernels_for(precision.unwrap_or_default()),
                config.num_hidden_layers,
                config.hidden_size,
                config.num_attention_heads
            ),
            _ => format!("cuda ({} workers)", specs.len()),
        },
        devices: specs.iter().map(|w| w.name.clone()).collect(),
    };
    let cache = if args.cache {
        Some(Cache::redis(
            args.redis.as_deref().expect("checked"),
            args.cache_ttl_secs,
            metrics.clone(),
        )?)
    } else {
        None
    };
    let pcfg = PipelineConfig {
        // Every HTTP record is online: its wait is `online_max_wait`.
        policy: trident_engine::BatchPolicy {
            online_max_wait: Duration::from_millis(args.max_wait_ms),
            ..crate::root::batch_policy(args.batch_tokens, args.max_wait_ms)
        },
        key_prefix: args.key_prefix.clone(),
        model_fingerprint: model.fingerprint.clone(),
    };
    let workers = specs.len();
    let pipeline = Pipeline::start(pcfg, model.tokenizer, specs, cache, metrics).await?;
    let tokenizer = pipeline.tokenizer();
    Ok(LoadedModel { pipeline, tokenizer, info, workers, pieces })
}
