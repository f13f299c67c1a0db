//! trident-server: the HTTP API of trident.
//!
//! `POST /embed`, `POST /v1/embeddings` (OpenAI-compatible), `POST /score`, `GET|POST /lookup`,
//! `POST /tokenize`, `GET /info`, `GET /health`, `GET /metrics`, `GET /openapi.json`.
//! Requests go through `trident_engine::Pipeline` — the cache, tokenizer, batcher and encoder
//! workers a node uses for its Kafka stream — at online priority, so concurrent requests are
//! batched together and share the devices with bulk ingestion.

mod conn;
pub mod error;
pub mod extract;
pub mod listen;
pub mod lookup;
pub mod metrics;
mod middleware;
pub mod openapi;
pub mod pipeline;
mod routes;
pub mod size;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use tokio::sync::Semaphore;
use trident_engine::Pipeline;
use trident_model::Tokenizer;

pub use conn::Deadlines;
pub use error::{ApiError, Kind};
pub use lookup::ResultStore;
pub use metrics::Metrics;

/// Limits and settings of the HTTP layer. `Default` is what `trident serve` uses without flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Name reported by `/info` and in OpenAI responses.
    pub model_name: String,
    /// Bearer token required on every endpoint but `/health`, `/metrics` and `/openapi.json`.
    pub api_key: Option<String>,
    /// Largest accepted request body (413 past it).
    pub max_body_bytes: usize,
    /// Most inputs (or pairs, or ids) in one request (422 past it).
    pub max_inputs: usize,
    /// Requests processed at once; more get 429 with `Retry-After`.
    pub max_in_flight: usize,
    /// Default and largest `max_length` (tokens per input, specials included).
    pub max_length: usize,
    /// Largest response a request may ask for, estimated from its token counts before encoding
    /// (422 past it).
    pub max_response_bytes: usize,
    /// Time to receive a request head, from the connection's opening or the head's first byte.
    pub header_timeout: Duration,
    /// Time to receive a request body, from the end of its head (408 past it).
    pub body_timeout: Duration,
    /// Time to answer a request, body read included (503 past it).
    pub request_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections; more are answered 503 and closed on accept.
    pub max_connections: usize,
    /// How long shutdown waits for open requests before closing their connections.
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "bge-m3".to_string(),
            api_key: None,
            max_body_bytes: 8 * 1024 * 1024,
            max_inputs: 256,
            max_in_flight: 64,
            max_length: 8192,
            max_response_bytes: 64 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            // Longer than the 60 s idle timeout of common proxies and load balancers, so they
            // never reuse a connection we are closing.
            idle_timeout: Duration::from_secs(75),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// The connection-level part of the limits.
    pub fn conn_limits(&self) -> listen::ConnLimits {
        listen::ConnLimits {
            deadlines: Deadlines {
                idle: self.idle_timeout,
                header: self.header_timeout,
                request: self.request_timeout,
            },
            max_connections: self.max_connections,
            shutdown_timeout: self.shutdown_timeout,
        }
    }
}

/// What `/info` reports about the loaded model and its workers.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// Model name (the directory name unless `--model-name` says otherwise).
    pub model: String,
    #[schema(value_type = String)]
    pub model_dir: PathBuf,
    /// Length of dense vectors (the hidden size).
    pub dense_dim: usize,
    /// Length of each ColBERT vector.
    pub colbert_dim: usize,
    /// Size of the vocabulary sparse weights are keyed by.
    pub vocab_size: usize,
    /// Longest input in tokens the model accepts (specials included).
    pub max_length: usize,
    /// Encoder backend, e.g. `cpu (16 threads) · 24 layers × 1024 hidden, 16 heads`.
    pub backend: String,
    pub devices: Vec<String>,
}

/// The model once loaded: the pipeline, a tokenizer for `/tokenize`, and its description.
pub struct LoadedModel {
    pub pipeline: Pipeline,
    pub tokenizer: Arc<Tokenizer>,
    pub info: ModelInfo,
    /// Encoder workers the pipeline runs.
    pub workers: usize,
    /// Piece of every token id (for `/tokenize`).
    pub pieces: Vec<String>,
}

/// Shared by every handler.
pub struct AppState {
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    model: OnceLock<LoadedModel>,
    store: Option<Arc<dyn ResultStore>>,
    in_flight: Arc<Semaphore>,
}

impl AppState {
    /// State with no model yet: `/health` answers 503 until [`AppState::set_model`].
    pub fn new(
        config: ServerConfig,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn ResultStore>>,
    ) -> Arc<AppState> {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Arc::new(AppState { config, metrics, model: OnceLock::new(), store, in_flight })
    }

    /// Makes the model available to requests (once; later calls are ignored).
    pub fn set_model(&self, model: LoadedModel) {
        let _ = self.model.set(model);
    }

    /// The loaded model, or 503 while it is loading.
    pub fn model(&self) -> Result<&LoadedModel, ApiError> {
        self.model.get().ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// True once the model is loaded and the pipeline's workers have built their encoders.
    pub fn ready(&self) -> bool {
        self.model.get().is_some()
    }
}

/// The router with every endpoint and middleware (auth, timeouts, in-flight limit, metrics).
pub fn router(state: Arc<AppState>) -> Router {
    routes::router(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then lets open requests
/// finish for up to `shutdown_timeout` and closes what is left.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.conn_limits();
    let metrics = state.metrics.clone();
    listen::serve(listener, router(state), limits, metrics, shutdown).await
}
