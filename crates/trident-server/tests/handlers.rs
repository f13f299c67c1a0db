//! The HTTP handlers in process: `trident_server::router` driven with `tower::ServiceExt::oneshot`
//! over a real `trident_engine::Pipeline` whose workers run the deterministic stub embedder
//! (`trident_engine::testing`): no server, no socket, no model. The stub's outputs are known from
//! the token ids alone (dense = [tokens, last id], sparse = each id with weight 1, ColBERT one
//! 1-wide row per token after `<s>`), so every response can be checked exactly against the
//! fixture tokenizer.
//!
//! Status codes and messages follow what `crates/trident/tests/serve_http.rs` expects from the
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_set_then_200() {
    let config = ServerConfig::default();
    let metrics = trident_engine::Metrics::new();
    let state = state(config.clone(), &metrics);
    let router = trident_server::router(state.clone());

    let (status, _, body) = send(&router, get_req("/health", None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(&body), json!({"status": "loading"}));
    // Work and /info wait for the model too; /metrics does not.
    let (status, _, body) =
        send(&router, post_req("/embed", br#"{"inputs": "x"}"#.to_vec(), None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(&body);
    assert_eq!(body["error"]["type"], "unavailable", "{body}");
    assert!(error_message(&body).contains("still loading"), "{body}");
    assert_eq!(send(&router, get_req("/info", None)).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(send(&router, get_req("/metrics", None)).await.0, StatusCode::OK);

    state.set_model(
        model(&config, vec![stub_worker(0, Faults::default(), CallLog::default())], metrics).await,
    );
    let (status, _, body) = send(&router, get_req("/health", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body), json!({"status": "ok"}));
    let (status, _, body) =
        send(&router, post_req("/embed", br#"{"inputs": "x"}"#.to_vec(), None)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_returns_the_encoders_outputs_per_input_in_order() {
    let app = App::new(ServerConfig::default()).await;
    let texts = ["hello world", "a somewhat longer text, with punctuation.", "x"];
    let (status, body) = app.post("/embed", &json!({"inputs": texts})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), texts.len());
    for (i, (item, text)) in items.iter().zip(texts).enumerate() {
        let ids = ids(text, 8192);
        assert_eq!(item["id"], i, "ids are input indices");
        assert_eq!(item["tokens"], ids.len(), "text {i}");
        assert_eq!(item["truncated"], false);
        assert_eq!(item["dense"], stub_dense(&ids), "text {i}: dense = [tokens, last id]");
        let keys: BTreeSet<String> = item["sparse"].as_object().unwrap().keys().cloned().collect();
        let want: BTreeSet<String> = ids.iter().map(u32::to_string).collect();
        assert_eq!(keys, want, "text {i}: sparse keyed by token id");
        assert!(item["sparse"].as_object().unwrap().values().all(|w| w == 1.0), "{item}");
        let rows: Vec<Value> = ids[1..].iter().map(|&id| json!([id as f32])).collect();
        assert_eq!(item["colbert"], Value::Array(rows), "text {i}: one row per token after <s>");
    }
    // One string is one input.
    let (status, body) = app.post("/embed", &json!({"inputs": "hello world"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["dense"], stub_dense(&ids("hello world", 8192)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_returns_only_the_requested_outputs() {
    let app = App::new(ServerConfig::default()).await;
    let fields = |v: &Value| -> Vec<&'static str> {
        ["dense", "sparse", "colbert"].into_iter().filter(|k| v[0].get(*k).is_some()).collect()
    };
    for (flags, want) in [
        (json!({}), vec!["dense", "sparse", "colbert"]),
        (json!({"dense": true}), vec!["dense"]),
        (json!({"colbert": false}), vec!["dense", "sparse"]),
        (json!({"sparse": true, "colbert": true}), vec!["sparse", "colbert"]),
        (json!({"dense": false, "sparse": true}), vec!["sparse"]),
    ] {
        let mut req = flags.clone();
        req["inputs"] = json!(["modes"]);
        let (status, body) = app.post("/embed", &req).await;
        assert_eq!(status, StatusCode::OK, "{flags}: {body}");
        assert_eq!(fields(&body), want, "{flags}: {body}");
    }
    let req = json!({"inputs": ["a"], "dense": false, "sparse": false, "colbert": false});
    let (status, body) = app.post("/embed", &req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_field(&body), "dense");
    assert!(error_message(&body).contains("at least one of"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_longer_than_max_length_are_422_unless_truncate() {
    let app = App::new(ServerConfig::default()).await;
    let long = "word ".repeat(40);
    let (status, body) =
        app.post("/embed", &json!({"inputs": ["short", long], "max_length": 16})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["type"], "validation_error");
    assert_eq!(error_field(&body), "inputs[1]");
    let msg = error_message(&body);
    assert!(msg.starts_with("inputs[1]: longer than max_length = 16"), "{msg}");
    assert!(msg.contains("\"truncate\": true"), "{msg}");
    assert_eq!(app.encodes(), 0, "refused before encoding");

    // With truncate the input is cut to max_length, `</s>` kept last.
    let (status, body) =
        app.post("/embed", &json!({"inputs": [long], "max_length": 16, "truncate": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cut = ids(&long, 16);
    assert_eq!(cut.len(), 16);
    assert_eq!(body[0]["tokens"], 16);
    assert_eq!(body[0]["truncated"], true);
    assert_eq!(body[0]["dense"], stub_dense(&cut));

    // The other endpoints name their own fields.
    let (status, body) = app.post("/tokenize", &json!({"inputs": [long], "max_length": 8})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_field(&body), "inputs[0]");
    let (status, body) =
        app.post("/score", &json!({"pairs": [["q", long]], "max_length": 16})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_field(&body), "pairs[0][1]");
    assert!(error_message(&body).starts_with("pairs[0][1]: longer than max_length"), "{body}");
    // /v1/embeddings never truncates: the server's max_length applies.
    let app = App::new(ServerConfig { max_length: 16, ..ServerConfig::default() }).await;
    let (status, body) = app.post("/v1/embeddings", &json!({"input": ["a", long]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "input[1]", "OpenAI error shape: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_inputs_are_422_naming_the_limit() {
    let app = App::new(limits(4)).await;
    let cases = [
        ("/embed", json!({"inputs": ["a", "b", "c", "d", "e"]}), "inputs"),
        ("/tokenize", json!({"inputs": ["a", "b", "c", "d", "e"]}), "inputs"),
        ("/score", json!({"pairs": [["a", "b"], ["c", "d"], ["e", "f"]]}), "pairs"),
    ];
    for (path, req, field) in cases {
        let (status, body) = app.post(path, &req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert_eq!(error_field(&body), field, "{path}: {body}");
        let msg = error_message(&body);
        assert!(msg.starts_with(field) && msg.contains("--max-inputs"), "{path}: {msg}");
    }
    let (status, body) = app.post("/v1/embeddings", &json!({"input": vec!["x"; 5]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "input", "OpenAI error shape: {body}");
    assert_eq!(body["error"]["code"], 422);
    assert!(error_message(&body).contains("--max-inputs"), "{body}");
    assert_eq!(app.encodes(), 0, "refused before encoding");
    // Empty is refused too; the limit itself passes.
    let (status, body) = app.post("/embed", &json!({"inputs": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_message(&body), "inputs: must not be empty");
    let (status, body) = app.post("/embed", &json!({"inputs": ["a", "b", "c", "d"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_wrong_fields_422_naming_them() {
    let app = App::new(ServerConfig::default()).await;
    let (status, body) = app.post_raw("/embed", br#"{"inputs": ["#.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(error_message(&body).contains("not valid JSON"), "{body}");
    let (status, body) = app.post_raw("/embed", b"  ".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_message(&body).contains("empty"), "{body}");

    let cases: Vec<(&str, Value, &str)> = vec![
        ("/embed", json!({"inputs": ["a", 5]}), "inputs[1]"),
        ("/embed", json!({"inputs": 5}), "inputs"),
        ("/embed", json!({"inputs": ["a"], "dense": "yes"}), "dense"),
        ("/embed", json!({"inputs": ["a"], "max_length": -1}), "max_length"),
        ("/embed", json!({"inputs": ["a"], "max_length": 9000}), "max_length"),
        ("/embed", json!({"inputs": ["a"], "max_length": 1}), "max_length"),
        ("/embed", json!({"inputs": ["a"], "dense_vecs": true}), "dense_vecs"),
        ("/embed", json!({"texts": ["a"]}), "texts"),
        ("/embed", json!({"truncate": true}), "body"),
        ("/embed", json!({"inputs": ["a"], "dense_encoding": "binary"}), "dense_encoding"),
        ("/embed", json!({"inputs": ["a"], "colbert_encoding": "int8"}), "colbert_encoding"),
        ("/tokenize", json!({"inputs": ["a"], "truncate": "yes"}), "truncate"),
        ("/score", json!({"pairs": [["q", "p", "x"]]}), "pairs[0]"),
        ("/score", json!({"pairs": [["q", 5]]}), "pairs[0][1]"),
        ("/score", json!({"pairs": [["q", "p"]], "weights": [1, 2]}), "weights"),
        ("/score", json!({"pairs": [{"query": "a"}]}), "pairs[0]"),
    ];
    for (path, req, field) in cases {
        let (status, body) = app.post(path, &req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {req}: {body}");
        assert_eq!(body["error"]["type"], "validation_error", "{body}");
        assert!(error_field(&body).starts_with(field), "{path} {req}: {body}");
        assert!(error_message(&body).starts_with(field), "{path} {req}: {body}");
    }
    let (_, body) = app.post("/embed", &json!({"truncate": true})).await;
    assert!(error_message(&body).contains("missing field `inputs`"), "{body}");
    let (_, body) = app.post("/embed", &json!({"inputs": ["a"], "dense_vecs": true})).await;
    assert!(error_message(&body).contains("unknown field `dense_vecs`"), "{body}");
    assert_eq!(app.encodes(), 0, "no bad request reached the encoder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_are_413() {
    let app = App::new(ServerConfig { max_body_bytes: 4096, ..ServerConfig::default() }).await;
    let big = json!({"inputs": ["x".repeat(5000)]});
    let (status, body) = app.post("/embed", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["type"], "payload_too_large");
    assert!(error_message(&body).contains("4096 bytes (--max-body-bytes)"), "{body}");
    let (status, body) = app.post("/v1/embeddings", &json!({"input": "x".repeat(5000)})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], 413, "OpenAI error shape: {body}");
    // Just under the limit passes.
    let (status, body) = app.post("/embed", &json!({"inputs": ["x".repeat(4000)]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_max_response_bytes_are_refused_before_encoding() {
    // The stub's dims (dense 2, ColBERT 1): a 100-token input with every output is bounded at
    // ~4 KB; dense alone at ~110 bytes.
    let limit = 2000;
    let app = App::new(ServerConfig { max_response_bytes: limit, ..ServerConfig::default() }).await;
    let long = "word ".repeat(100);
    let (status, body) = app.post("/embed", &json!({"inputs": long})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_field(&body), "inputs");
    assert!(error_message(&body).contains("--max-response-bytes"), "{body}");
    // Ids and pieces take ~20 bytes a token.
    let (status, body) = app.post("/tokenize", &json!({"inputs": "word ".repeat(300)})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(error_message(&body).contains("--max-response-bytes"), "{body}");
    let (status, body) = app.post("/v1/embeddings", &json!({"input": vec!["x"; 40]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "input", "OpenAI error shape: {body}");
    assert_eq!(app.encodes(), 0, "refused before encoding");
    // Smaller answers pass, and are within the limit.
    for (path, req) in [
        ("/embed", json!({"inputs": long, "dense": true})),
        ("/embed", json!({"inputs": "word ".repeat(10)})),
        ("/v1/embeddings", json!({"input": vec!["x"; 10]})),
    ] {
        let (status, _, bytes) =
            app.send(post_req(path, serde_json::to_vec(&req).unwrap(), None)).await;
        assert_eq!(status, StatusCode::OK, "{path} {req}");
        assert!(bytes.len() <= limit, "{path}: {} bytes", bytes.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_except_on_probes() {
    let config = ServerConfig { api_key: Some("s3cret".into()), ..ServerConfig::default() };
    let app = App::new(config).await;
    let embed = |auth: Option<&str>| post_req("/embed", br#"{"inputs": "hello"}"#.to_vec(), auth);

    let (status, headers, body) = app.send(embed(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let body = json_of(&body);
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(error_message(&body).contains("missing bearer token"), "{body}");
    let (status, _, body) = app.send(embed(Some("Bearer wrong"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_message(&json_of(&body)), "invalid API key");
    assert_eq!(app.send(embed(Some("s3cret"))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.send(embed(Some("Bearer s3cre"))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.encodes(), 0, "no unauthorised request reached the encoder");
    let (status, _, body) = app.send(embed(Some("Bearer s3cret"))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));

    assert_eq!(app.send(get_req("/info", None)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.send(get_req("/info", Some("Bearer s3cret"))).await.0, StatusCode::OK);
    let v1 = post_req("/v1/embeddings", br#"{"input": "x"}"#.to_vec(), None);
    assert_eq!(app.send(v1).await.0, StatusCode::UNAUTHORIZED);
    // Probes, scrapers and schema readers need no token.
    for path in ["/health", "/metrics", "/openapi.json"] {
        assert_eq!(app.send(get_req(path, None)).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_embeddings_have_openais_shape_and_count_tokens() {
    let app = App::new(ServerConfig { model_name: "tiny".into(), ..ServerConfig::default() }).await;
    let texts = ["first text", "the second, longer text"];
    let (status, v1) = app
        .post("/v1/embeddings", &json!({"input": texts, "model": "whatever", "user": "u"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["object"], "list");
    assert_eq!(v1["model"], "whatever", "the requested model is echoed");
    let data = v1["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut tokens = 0;
    for (i, (d, t)) in data.iter().zip(texts).enumerate() {
        let ids = ids(t, 8192);
        tokens += ids.len();
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"], stub_dense(&ids), "text {i}: the dense vector");
    }
    assert_eq!(v1["usage"], json!({"prompt_tokens": tokens, "total_tokens": tokens}));

    // base64: little-endian f32 of the same vector; the server's name without `model`.
    let (status, b64) =
        app.post("/v1/embeddings", &json!({"input": texts[0], "encoding_format": "base64"})).await;
    assert_eq!(status, StatusCode::OK, "{b64}");
    assert_eq!(b64["model"], "tiny");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let ids0 = ids(texts[0], 8192);
    assert_eq!(floats, [ids0.len() as f32, *ids0.last().unwrap() as f32]);

    // Errors in OpenAI's shape: `param` and `code`.
    let (status, body) =
        app.post("/v1/embeddings", &json!({"input": "a", "dimensions": 256})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "dimensions");
    assert_eq!(body["error"]["code"], 400);
    assert!(error_message(&body).contains("not supported"), "{body}");
    let (status, body) =
        app.post("/v1/embeddings", &json!({"input": "a", "encoding_format": "int8"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "encoding_format");
    let (status, body) = app.post("/v1/embeddings", &json!({"input": [[1, 2, 3]]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "input[0]");
    assert!(body["error"].get("field").is_none(), "no native `field` on /v1: {body}");
}

/// The stub's five scores for a text pair under weights [1, 1, 1], from the token ids.
fn stub_scores(q: &str, p: &str) -> [f64; 5] {
    let (q, p) = (ids(q, 8192), ids(p, 8192));
    let dense = (q.len() * p.len()) as f64 + *q.last().unwrap() as f64 * *p.last().unwrap() as f64;
    // Each query id (occurrences counted) that the passage has, weight 1 × 1.
    let sparse = q.iter().filter(|id| p.contains(id)).count() as f64;
    // 1-wide rows of ids: each query row's best match is its id × the passage's largest.
    let best = *p[1..].iter().max().unwrap() as f64;
    let colbert = q[1..].iter().map(|&id| id as f64 * best).sum::<f64>() / (q.len() - 1) as f64;
    [dense, sparse, colbert, (dense + sparse) / 2.0, (dense + sparse + colbert) / 3.0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_gives_the_five_scores_of_each_pair() {
    let app = App::new(ServerConfig::default()).await;
    let (q, p) = ("what is a tiny model", "a tiny model is a model that is tiny");
    let (status, embedded) = app.post("/embed", &json!({"inputs": [p]})).await;
    assert_eq!(status, StatusCode::OK, "{embedded}");
    let pairs = json!([
        [q, p],
        {"query": q, "passage": p},
        {"query": q, "passage_embedding": embedded[0]},
        [p, q],
    ]);
    let (status, body) = app.post("/score", &json!({"pairs": pairs, "weights": [1, 1, 1]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = body.as_array().unwrap();
    assert_eq!(got.len(), 4);
    let keys = ["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"];
    for (k, line) in got.iter().enumerate() {
        let want = if k == 3 { stub_scores(p, q) } else { stub_scores(q, p) };
        for (key, w) in keys.iter().zip(want) {
            let a = line[key].as_f64().unwrap_or_else(|| panic!("pair {k}: no {key} in {line}"));
            assert!((a - w).abs() <= 1e-4 * (1.0 + w.abs()), "pair {k} {key}: {a}, want {w}");
        }
    }
    // A stored side must have the model's dims.
    let mut short = embedded[0].clone();
    short["dense"] = json!([1.0]);
    let req = json!({"pairs": [{"query": q, "passage_embedding": short}]});
    let (status, body) = app.post("/score", &req).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_field(&body), "pairs[0].passage_embedding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_returns_ids_and_pieces() {
    let app = App::new(ServerConfig::default()).await;
    let text = "Tokenize this sentence, please.";
    let (status, body) = app.post("/tokenize", &json!({"inputs": [text, "x"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2);
    let want = ids(text, 8192);
    assert_eq!(body[0]["ids"], json!(want));
    let all = tokenizer().pieces();
    let pieces: Vec<&str> = want.iter().map(|&id| all[id as usize].as_str()).collect();
    assert_eq!(body[0]["pieces"], json!(pieces));
    assert_eq!(body[0]["pieces"][0], "<s>");
    assert_eq!(body[0]["pieces"][want.len() - 1], "</s>");
    assert_eq!(body[0]["truncated"], false);
    let (status, body) =
        app.post("/tokenize", &json!({"inputs": text, "max_length": 4, "truncate": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["ids"], json!(ids(text, 4)));
    assert_eq!(body[0]["truncated"], true);
    assert_eq!(app.encodes(), 0, "tokenizing encodes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_failure_is_a_500_naming_the_input_and_the_server_keeps_working() {
    let poison = "poison ".repeat(30);
    let poison_len = ids(&poison, 8192).len();
    assert_ne!(ids("fine", 8192).len(), poison_len);
    let app = App::with_faults(
        ServerConfig::default(),
        Faults { poison_len: Some(poison_len), ..Faults::default() },
    )
    .await;

    let (status, body) = app.post("/embed", &json!({"inputs": ["fine", poison]})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["type"], "internal_error");
    assert_eq!(error_field(&body), "inputs[1]");
    let msg = error_message(&body);
    assert!(msg.starts_with("inputs[1]: encoder failed"), "{msg}");
    assert!(msg.contains("injected failure"), "{msg}");

    // /score names the side of the pair; /v1 in OpenAI's shape.
    let (status, body) =
        app.post("/score", &json!({"pairs": [["fine", "ok"], ["q", poison]]})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(error_field(&body), "pairs[1][1]");
    assert!(error_message(&body).starts_with("pairs[1][1]: encoder failed"), "{body}");
    let (status, body) = app.post("/v1/embeddings", &json!({"input": poison})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["param"], "input[0]");
    assert_eq!(body["error"]["code"], 500);

    // The worker was restarted; everything else still works.
    let (status, body) = app.post("/embed", &json!({"inputs": ["fine", "also fine"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[1]["dense"], stub_dense(&ids("also fine", 8192)));
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
    let m = app.metrics().await;
    assert!(metric(&m, "trident_worker_restarts_total") >= 1.0, "{m}");
    assert_eq!(metric(&m, r#"trident_http_requests_total{route="/embed",status="500"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_encoder_is_retried_and_a_persistent_failure_reported() {
    let flaky = Arc::new(AtomicUsize::new(1));
    let faults = Faults { flaky: Some(flaky.clone()), ..Faults::default() };
    let app = App::with_faults(ServerConfig::default(), faults).await;
    // One failure: the batch is retried (on the restarted worker) and the client never knows.
    let (status, body) = app.post("/embed", &json!({"inputs": "transient"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(flaky.load(SeqCst), 0);
    // Failing twice alone on the only worker: the input is reported failed.
    flaky.store(2, SeqCst);
    let (status, body) = app.post("/embed", &json!({"inputs": "unlucky"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(error_field(&body), "inputs[0]");
    assert!(error_message(&body).contains("after 2 attempts"), "{body}");
    // The device is fine again: so is the same request.
    let (status, body) = app.post("/embed", &json!({"inputs": "unlucky"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let calls = app.log.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|c| !c.ok).count(), 3, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status() {
    let app = App::new(ServerConfig::default()).await;
    for _ in 0..2 {
        assert_eq!(app.post("/embed", &json!({"inputs": "counted"})).await.0, StatusCode::OK);
    }
    let (status, _) = app.post("/embed", &json!({"inputs": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.get("/nope").await.0, StatusCode::NOT_FOUND);
    let m = app.metrics().await;
    assert_eq!(metric(&m, r#"trident_http_requests_total{route="/embed",status="200"}"#), 2.0);
    assert_eq!(metric(&m, r#"trident_http_requests_total{route="/embed",status="422"}"#), 1.0);
    assert_eq!(
        metric(&m, r#"trident_http_request_duration_seconds_count{route="/embed"}"#),
        3.0,
        "{m}"
    );
    // The engine's metrics are in the same exposition.
    assert!(metric(&m, "trident_batches_total") >= 1.0, "{m}");
    assert_eq!(metric(&m, "trident_tokens_total"), 2.0 * ids("counted", 8192).len() as f64);
    // Only the /metrics request itself is in flight.
    assert_eq!(metric(&m, "trident_http_requests_in_flight"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_describes_the_model_workers_and_limits() {
    let config = ServerConfig {
        model_name: "bge-m3-tiny".into(),
        max_inputs: 7,
        max_length: 512,
        ..ServerConfig::default()
    };
    let log = CallLog::default();
    let workers = (0..2).map(|w| stub_worker(w, Faults::default(), log.clone())).collect();
    let app = App::with_workers(config.clone(), workers, log).await;
    let (status, info) = app.get("/info").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["model"], "bge-m3-tiny");
    assert_eq!(info["model_dir"], tiny_model().to_str().unwrap());
    assert_eq!(info["dense_dim"], 2);
    assert_eq!(info["colbert_dim"], 1);
    assert_eq!(info["vocab_size"], tokenizer().vocab_size());
    assert_eq!(info["max_length"], 8192, "the model's");
    assert_eq!(info["backend"], "stub");
    assert_eq!(info["devices"], json!(["stub-0", "stub-1"]));
    assert_eq!(info["workers"], 2);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        info["limits"],
        json!({
            "max_inputs": 7,
            "max_body_bytes": config.max_body_bytes,
            "max_in_flight": config.max_in_flight,
            "max_length": 512,
            "max_response_bytes": config.max_response_bytes,
            "max_connections": config.max_connections,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_lookups_without_a_store_503_and_the_schema_lists_every_path() {
    let app = App::new(ServerConfig::default()).await;
    let (status, body) = app.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["type"], "not_found_error");
    assert!(error_message(&body).contains("/nope"), "{body}");
    let (status, body) = app.get("/lookup/doc-1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(error_message(&body).contains("--redis"), "{body}");
    let (status, body) = app.post("/lookup", &json!({"ids": ["doc-1"]})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/embed",
        "/v1/embeddings",
        "/score",
        "/lookup/{id}",
        "/lookup",
        "/tokenize",
        "/info",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from /openapi.json");
    }
}

/// A gate an encoder call waits at until it is opened (opened on drop, so a failing test never
/// leaves a blocked encoder thread behind).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, usize)>, Condvar)>);

impl Gate {
    fn pass(&self) {
        let (lock, cv) = &*self.0;
        let mut s = lock.lock().unwrap();
        s.1 += 1;
        while !s.0 {
            s = cv.wait(s).unwrap();
        }
    }

    fn waiting(&self) -> usize {
        self.0 .0.lock().unwrap().1
    }

    fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().0 = true;
        cv.notify_all();
    }

    /// Until an encoder call waits at the gate.
    async fn until_waiting(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.waiting() == 0 {
            assert!(Instant::now() < deadline, "no encoder call reached the gate");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// The stub, once past the gate.
struct Gated(Gate);

impl Embedder for Gated {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        self.0.pass();
        Stub.encode(docs, modes)
    }

    fn describe(&self) -> String {
        "gated stub".into()
    }

    fn hidden_size(&self) -> usize {
        Stub.hidden_size()
    }
}

async fn gated_app(config: ServerConfig) -> (App, Gate) {
    let gate = Gate::default();
    let g = gate.clone();
    let factory: trident_engine::EmbedderFactory =
        Arc::new(move || Ok(Box::new(Gated(g.clone())) as Box<dyn Embedder>));
    let worker = WorkerSpec { name: "gated-0".into(), factory };
    (App::with_workers(config, vec![worker], CallLog::default()).await, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_in_flight_are_429_with_retry_after() {
    let (app, gate) = gated_app(ServerConfig { max_in_flight: 1, ..ServerConfig::default() }).await;
    let _open = OpenOnDrop(gate.clone());
    let first = {
        let router = app.router.clone();
        let req = post_req("/embed", br#"{"inputs": "slow"}"#.to_vec(), None);
        tokio::spawn(async move { send(&router, req).await })
    };
    // Held at the encoder: the one permit is taken.
    gate.until_waiting().await;
    let (status, headers, body) =
        app.send(post_req("/embed", br#"{"inputs": "fast"}"#.to_vec(), None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let body = json_of(&body);
    assert_eq!(body["error"]["type"], "overloaded");
    assert!(error_message(&body).contains("--max-in-flight"), "{body}");
    let (status, _, body) =
        app.send(post_req("/v1/embeddings", br#"{"input": "x"}"#.to_vec(), None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_of(&body)["error"]["code"], 429, "OpenAI error shape on /v1");
    // Probes need no permit.
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
    assert_eq!(app.get("/info").await.0, StatusCode::OK);
    gate.open();
    let (status, _, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // The permit is back.
    assert_eq!(app.post("/embed", &json!({"inputs": "after"})).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_request_timeout_are_503() {
    let config =
        ServerConfig { request_timeout: Duration::from_millis(200), ..ServerConfig::default() };
    let (app, gate) = gated_app(config).await;
    let _open = OpenOnDrop(gate.clone());
    let started = Instant::now();
    let (status, body) = app.post("/embed", &json!({"inputs": "stuck"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["type"], "timeout");
    assert!(error_message(&body).contains("--request-timeout-secs"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    gate.until_waiting().await;
    assert_eq!(gate.waiting(), 1, "the timed-out request holds the encoder");
    let (status, body) = app.post("/v1/embeddings", &json!({"input": "stuck too"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], 503, "OpenAI error shape on /v1");
    // Once the encoder moves again, so do requests.
    gate.open();
    let (status, body) = app.post("/embed", &json!({"inputs": "unstuck"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
