//! The HTTP handlers in process: `trident_server::router` driven with `tower::ServiceExt::oneshot`
//! over a real `trident_engine::Pipeline` whose workers run the deterministic stub embedder
//! (`trident_engine::testing`): no server, no socket, no model. The stub's outputs are known from
//! the token ids alone (dense = [tokens, last id], sparse = each id with weight 1, ColBERT one
//! 1-wide row per token after `<s>`), so every response can be checked exactly against the
//! fixture tokenizer.
//!
//! Status codes and messages follow what `crates/trident/tests/serve_http/` expects from the
//! spawned `trident serve`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use trident_core::{Embedding, Modes, TokenizedDoc};
use trident_engine::testing::{stub_worker, CallLog, Faults, Stub};
use trident_engine::{BatchPolicy, Pipeline, PipelineConfig, WorkerSpec};
use trident_model::{Embedder, ModelError, Tokenizer};
use trident_server::{AppState, LoadedModel, ModelInfo, ServerConfig};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&tiny_model()).expect("fixture tokenizer")
}

/// The ids the server's tokenizer gives `text` (specials included).
fn ids(text: &str, max_length: usize) -> Vec<u32> {
    tokenizer().encode(text, max_length).unwrap().ids
}

/// The stub's dense vector for `ids`.
fn stub_dense(ids: &[u32]) -> Value {
    json!([ids.len() as f32, *ids.last().unwrap() as f32])
}

/// A state with no model yet and its metrics registered as `trident serve` registers them
/// (beside the engine's, in one registry).
fn state(config: ServerConfig, engine: &trident_engine::Metrics) -> Arc<AppState> {
    let http = trident_server::Metrics::new((*engine.registry).clone()).unwrap();
    AppState::new(config, Arc::new(http), None)
}

/// The model as `trident serve`'s `load` builds it, over `workers` instead of the real encoder.
async fn model(
    config: &ServerConfig,
    workers: Vec<WorkerSpec>,
    metrics: trident_engine::Metrics,
) -> LoadedModel {
    let tokenizer = tokenizer();
    let pieces = tokenizer.pieces();
    let info = ModelInfo {
        model: config.model_name.clone(),
        model_dir: tiny_model(),
        dense_dim: Stub.hidden_size(),
        colbert_dim: 1,
        vocab_size: tokenizer.vocab_size(),
        max_length: 8192,
        backend: "stub".into(),
        devices: workers.iter().map(|w| w.name.clone()).collect(),
    };
    let cfg = PipelineConfig {
        policy: BatchPolicy::default(),
        key_prefix: "test".into(),
        model_fingerprint: "stub".into(),
    };
    let n = workers.len();
    let pipeline = Pipeline::start(cfg, tokenizer, workers, None, metrics).await.unwrap();
    let tokenizer = pipeline.tokenizer();
    LoadedModel { pipeline, tokenizer, info, workers: n, pieces }
}

/// The router over a loaded model, and the log of the encoder calls.
struct App {
    router: Router,
    log: CallLog,
}

impl App {
    /// One stub worker behind a fault injector with these faults.
    async fn with_faults(config: ServerConfig, faults: Faults) -> App {
        let log = CallLog::default();
        let worker = stub_worker(0, faults, log.clone());
        App::with_workers(config, vec![worker], log).await
    }

    async fn with_workers(config: ServerConfig, workers: Vec<WorkerSpec>, log: CallLog) -> App {
        let metrics = trident_engine::Metrics::new();
        let state = state(config.clone(), &metrics);
        state.set_model(model(&config, workers, metrics).await);
        App { router: trident_server::router(state), log }
    }

    async fn new(config: ServerConfig) -> App {
        App::with_faults(config, Faults::default()).await
    }

    /// Encoder calls so far.
    fn encodes(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        send(&self.router, req).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap()).await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let (status, _, bytes) = self.send(post_req(path, body, None)).await;
        (status, json_of(&bytes))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, bytes) = self.send(get_req(path, None)).await;
        (status, json_of(&bytes))
    }

    async fn metrics(&self) -> String {
        let (status, _, bytes) = self.send(get_req("/metrics", None)).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = router.clone().oneshot(req).await.expect("the router is infallible");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("response body").to_bytes();
    (parts.status, parts.headers, bytes)
}

fn post_req(path: &str, body: Vec<u8>, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    b.body(Body::from(body)).unwrap()
}

fn get_req(path: &str, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(Method::GET).uri(path);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    b.body(Body::empty()).unwrap()
}

/// The body as JSON, or `Null` when it is not JSON.
fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn error_field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_else(|| panic!("no error.field in {body}"))
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {body}"))
}

/// The value of the first sample whose line starts with `name` (exactly, then ` ` or `{`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
}

fn limits(max_inputs: usize) -> ServerConfig {
    ServerConfig { max_inputs, ..ServerConfig::default() }
}

mod answers;
mod overload;
mod requests;
