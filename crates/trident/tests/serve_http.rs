//! `trident serve` on the tiny fixture model, driven by a real HTTP client over loopback:
//! every endpoint, every error path, auth, the in-flight limit, lookups from a real
//! `redis-server`, and concurrent requests sharing encoder batches (seen in /metrics).
//!
//! Each test starts its own server process on a free port (nextest runs tests in separate
//! processes) and kills it when done.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

const TRIDENT: &str = env!("CARGO_BIN_EXE_trident");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tiny_model() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-m3")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(tiny_model().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `trident serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(TRIDENT)
            .arg("serve")
            .arg("--model")
            .arg(tiny_model())
            .args(["--port", &port.to_string(), "--threads", "1"])
            .args(extra)
            .env("TRIDENT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn trident serve");
        let server = Server {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = server.http.get(server.url("/health")).send().await {
                if r.status() == StatusCode::OK {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "trident serve did not become healthy within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The status and the body's raw text.
    async fn post_text(&self, path: &str, body: &Value) -> (StatusCode, String) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an unlabelled metric (or the first sample whose line starts with `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn assert_vec_close(actual: &Value, expected: &Value, tol: f64, what: &str) {
    let (a, e) = (actual.as_array().unwrap(), expected.as_array().unwrap());
    assert_eq!(a.len(), e.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => assert!(close(x, y, tol), "{what}[{i}]: {x} vs {y}"),
            _ => assert_vec_close(x, y, tol, &format!("{what}[{i}]")),
        }
    }
}

fn assert_sparse_close(actual: &Value, expected: &Value, tol: f64, what: &str) {
    let (a, e) = (actual.as_object().unwrap(), expected.as_object().unwrap());
    let mut ka: Vec<_> = a.keys().collect();
    let mut ke: Vec<_> = e.keys().collect();
    ka.sort();
    ke.sort();
    assert_eq!(ka, ke, "{what}: token ids");
    for (k, v) in e {
        assert!(close(a[k].as_f64().unwrap(), v.as_f64().unwrap(), tol), "{what}[{k}]");
    }
}

fn error_field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_else(|| panic!("no error.field in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn embed_matches_trident_embed_and_the_reference() {
    let exp = expected();
    let texts: Vec<String> =
        exp["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let server = Server::start(&[]).await;

    // `trident embed` on the same texts, as JSON Lines with ids 0..n.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for (i, t) in texts.iter().enumerate() {
        writeln!(f, "{}", json!({"id": i, "text": t})).unwrap();
    }
    drop(f);
    let out = Command::new(TRIDENT)
        .args(["embed", "--threads", "1", "--model"])
        .arg(tiny_model())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "trident embed failed: {}", String::from_utf8_lossy(&out.stderr));
    let cli: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cli.len(), texts.len());

    // The same texts in one request (texts 38 and 39 are over 8192 tokens: truncate).
    let (status, body) = server.post("/embed", &json!({"inputs": texts, "truncate": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let http = body.as_array().unwrap();
    assert_eq!(http.len(), texts.len());
    let tol = exp["tolerance"]["short"].as_f64().unwrap();
    for (i, (h, c)) in http.iter().zip(&cli).enumerate() {
        assert_eq!(h["id"], i, "ids are input indices");
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(h), keys(c), "text {i}: same fields as trident embed");
        assert_eq!(h["tokens"], c["tokens"], "text {i}");
        assert_eq!(h["truncated"], c["truncated"], "text {i}");
        // Same pipeline, possibly other batch mates: equal within float32 noise.
        assert_vec_close(&h["dense"], &c["dense"], 1e-6, &format!("text {i} dense"));
        assert_vec_close(&h["colbert"], &c["colbert"], 1e-6, &format!("text {i} colbert"));
        assert_sparse_close(&h["sparse"], &c["sparse"], 1e-6, &format!("text {i} sparse"));
    }
    // And against the reference's outputs.
    for item in exp["encode"]["8192"].as_array().unwrap() {
        let i = item["text_index"].as_u64().unwrap() as usize;
        let h = &http[i];
        let tol = if item["input_ids"].as_array().unwrap().len() > 512 {
            exp["tolerance"]["long"].as_f64().unwrap()
        } else {
            tol
        };
        assert_eq!(
            h["tokens"].as_u64().unwrap() as usize,
            item["input_ids"].as_array().unwrap().len(),
            "text {i}"
        );
        assert_vec_close(
            &h["dense"],
            &item["dense_vecs"],
            tol,
            &format!("text {i} dense vs reference"),
        );
        assert_vec_close(
            &h["colbert"],
            &item["colbert_vecs"],
            tol,
            &format!("text {i} colbert vs reference"),
        );
        assert_sparse_close(
            &h["sparse"],
            &item["lexical_weights"],
            tol,
            &format!("text {i} sparse vs reference"),
        );
    }

    // One string in, modes picked, max_length: only the requested fields, truncated as asked.
    let item16 =
        exp["encode"]["16"].as_array().unwrap().iter().find(|it| it["text_index"] == 4).unwrap();
    let (status, body) = server
        .post(
            "/embed",
            &json!({"inputs": texts[4], "dense": true, "max_length": 16, "truncate": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let one = &body.as_array().unwrap()[0];
    assert!(one.get("sparse").is_none() && one.get("colbert").is_none(), "{one}");
    assert_eq!(one["truncated"], true);
    assert_eq!(one["tokens"], 16);
    assert_vec_close(&one["dense"], &item16["dense_vecs"], tol, "max_length 16 dense");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_embeddings_score_and_tokenize() {
    let exp = expected();
    let server = Server::start(&["--model-name", "bge-m3-tiny"]).await;
    let texts = [exp["texts"][3].as_str().unwrap(), exp["texts"][12].as_str().unwrap()];

    // /v1/embeddings: dense vectors equal /embed's, usage counts tokens, base64 decodes to them.
    let (status, v1) =
        server.post("/v1/embeddings", &json!({"input": texts, "model": "whatever"})).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["object"], "list");
    assert_eq!(v1["model"], "whatever");
    let (_, native) = server.post("/embed", &json!({"inputs": texts, "dense": true})).await;
    let tokens: u64 =
        native.as_array().unwrap().iter().map(|e| e["tokens"].as_u64().unwrap()).sum();
    assert_eq!(v1["usage"]["prompt_tokens"], tokens);
    assert_eq!(v1["usage"]["total_tokens"], tokens);
    for (i, d) in v1["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_vec_close(&d["embedding"], &native[i]["dense"], 1e-6, "v1 dense");
    }
    let (status, b64) = server
        .post("/v1/embeddings", &json!({"input": texts[0], "encoding_format": "base64"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{b64}");
    assert_eq!(b64["model"], "bge-m3-tiny");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let listed: Vec<f32> = v1["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, listed, "base64 carries the same f32 values");

    // /score: the five scores of the reference, per pair, for each weight set.
    let pairs = exp["pairs"].clone();
    for s in exp["scores"]["compute_score_per_pair"].as_array().unwrap() {
        let (status, body) =
            server.post("/score", &json!({"pairs": pairs, "weights": s["weights"]})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let got = body.as_array().unwrap();
        assert_eq!(got.len(), pairs.as_array().unwrap().len());
        for key in ["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"] {
            for (k, g) in got.iter().enumerate() {
                let (a, e) = (g[key].as_f64().unwrap(), s[key][k].as_f64().unwrap());
                assert!(
                    close(a, e, 2e-5),
                    "pair {k} {key} with weights {}: {a} vs {e}",
                    s["weights"]
                );
            }
        }
    }

    // /tokenize: the reference's input ids, with pieces.
    let items = exp["encode"]["8192"].as_array().unwrap();
    let (status, body) = server.post("/tokenize", &json!({"inputs": [texts[0]]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let want = items.iter().find(|it| it["text_index"] == 3).unwrap();
    assert_eq!(body[0]["ids"], want["input_ids"]);
    assert_eq!(body[0]["pieces"][0], "<s>");
    assert_eq!(
        body[0]["pieces"].as_array().unwrap().len(),
        want["input_ids"].as_array().unwrap().len()
    );

    // /info, /health, /openapi.json.
    let (status, info) = server.get("/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["model"], "bge-m3-tiny");
    assert_eq!(info["dense_dim"], exp["model"]["hidden_size"]);
    assert_eq!(info["colbert_dim"], exp["model"]["hidden_size"]);
    assert_eq!(info["max_length"], 8192);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["devices"], json!(["cpu-0"]));
    assert!(info["backend"].as_str().unwrap().starts_with("cpu"), "{info}");
    assert_eq!(server.get("/health").await, (StatusCode::OK, json!({"status": "ok"})));
    let (status, doc) = server.get("/openapi.json").await;
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
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"trident_http_requests_total{route="/embed",status="200"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_path_is_a_clear_json_error() {
    let server = Server::start(&["--max-inputs", "4", "--max-body-bytes", "4096"]).await;
    let long = "word ".repeat(40);

    // 400: not JSON.
    let (status, body) = server.post_raw("/embed", b"{\"inputs\": [".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{body}");

    // 413: body over --max-body-bytes.
    let big = json!({"inputs": ["x".repeat(5000)]});
    let (status, body) = server.post("/embed", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["type"], "payload_too_large");

    // 422 naming the field: wrong types, unknown fields, limits, out-of-range values.
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/embed", json!({"inputs": ["a", 5]}), "inputs[1]"),
        ("/embed", json!({"inputs": 5}), "inputs"),
        ("/embed", json!({"inputs": ["a"], "dense": "yes"}), "dense"),
        ("/embed", json!({"inputs": ["a"], "max_length": -1}), "max_length"),
        ("/embed", json!({"inputs": ["a"], "max_length": 9000}), "max_length"),
        ("/embed", json!({"inputs": ["a"], "dense_vecs": true}), "dense_vecs"),
        ("/embed", json!({"texts": ["a"]}), "texts"),
        ("/embed", json!({"truncate": true}), "body"),
        ("/embed", json!({"inputs": []}), "inputs"),
        ("/embed", json!({"inputs": ["a", "b", "c", "d", "e"]}), "inputs"),
        (
            "/embed",
            json!({"inputs": ["a"], "dense": false, "sparse": false, "colbert": false}),
            "dense",
        ),
        ("/embed", json!({"inputs": ["short", long], "max_length": 16}), "inputs[1]"),
        ("/tokenize", json!({"inputs": [long], "max_length": 8}), "inputs[0]"),
        ("/score", json!({"pairs": [["q", "p", "x"]]}), "pairs[0]"),
        ("/score", json!({"pairs": [["q", "p"]], "weights": [1, 2]}), "weights"),
        ("/score", json!({"pairs": [["q", "p"]], "weights": [0, 0, 1]}), "weights"),
        ("/score", json!({"pairs": [["q", long]], "max_length": 16}), "pairs[0][1]"),
        ("/score", json!({"pairs": [["a", "b"], ["c", "d"], ["e", "f"]]}), "pairs"),
        ("/lookup", json!({"ids": "x"}), "ids"),
    ];
    for (path, req, field) in cases {
        let (status, body) = server.post(path, &req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {req}: {body}");
        assert_eq!(body["error"]["type"], "validation_error", "{body}");
        assert_eq!(error_field(&body), field, "{path} {req}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(field), "{body}");
    }
    // A missing field is named in the message.
    let (_, body) = server.post("/embed", &json!({"truncate": true})).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("missing field `inputs`"),
        "{body}"
    );
    // With truncate the long input is cut instead.
    let (status, body) =
        server.post("/embed", &json!({"inputs": [long], "max_length": 16, "truncate": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["truncated"], true);

    // OpenAI shape: `dimensions` is a 400 naming the param; bad encoding_format a 422.
    let (status, body) =
        server.post("/v1/embeddings", &json!({"input": "a", "dimensions": 256})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "dimensions");
    assert!(body["error"]["message"].as_str().unwrap().contains("not supported"), "{body}");
    let (status, body) =
        server.post("/v1/embeddings", &json!({"input": "a", "encoding_format": "int8"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "encoding_format");
    let (status, body) = server.post("/v1/embeddings", &json!({"input": [[1, 2, 3]]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "input[0]");

    // 404: unknown route; lookups without a store are 503.
    let (status, body) = server.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["type"], "not_found_error");
    let (status, body) = server.get("/lookup/doc-1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--redis"), "{body}");

    // Every error was counted by status.
    let m = server.metrics().await;
    assert!(m.contains(r#"trident_http_requests_total{route="/embed",status="422"}"#), "{m}");
    assert!(m.contains(r#"trident_http_requests_total{route="/embed",status="413"} 1"#), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_auth() {
    let server = Server::start(&["--api-key", "s3cret"]).await;
    let req = json!({"inputs": "hello"});
    let send = |auth: Option<&'static str>| {
        let mut r = server.http.post(server.url("/embed")).json(&req);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(send(Some("Bearer wrong")).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("s3cret")).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("Bearer s3cret")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(server.get("/info").await.0, StatusCode::UNAUTHORIZED);
    // Probes, scrapers and schema readers need no token.
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert_eq!(server.get("/openapi.json").await.0, StatusCode::OK);
    assert_eq!(
        server.http.get(server.url("/metrics")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_in_flight_is_429_with_retry_after() {
    // One request at a time, and a batch waits 3 s to fill: the second request finds no slot.
    let server = Server::start(&["--max-in-flight", "1", "--max-wait-ms", "3000"]).await;
    let first = {
        let http = server.http.clone();
        let url = server.url("/embed");
        tokio::spawn(async move {
            http.post(url).json(&json!({"inputs": "slow"})).send().await.unwrap().status()
        })
    };
    // Wait until the first request is being processed (the /metrics request counts itself too).
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server.metrics().await, "trident_http_requests_in_flight") < 2.0 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = server
        .http
        .post(server.url("/embed"))
        .json(&json!({"inputs": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded");
    let r = server
        .http
        .post(server.url("/v1/embeddings"))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 429, "OpenAI error shape on /v1: {body}");
    // Health stays answerable while the slot is taken.
    assert_eq!(server.get("/health").await.0, StatusCode::OK);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(server.post("/embed", &json!({"inputs": "after"})).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_encoder_batches() {
    // Batches wait up to 300 ms to fill, so 16 requests sent together land in few batches.
    let server = Server::start(&["--max-wait-ms", "300"]).await;
    let before = server.metrics().await;
    let batches0 = metric(&before, "trident_batches_total");
    let n = 16;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let http = server.http.clone();
            let url = server.url("/embed");
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .json(&json!({"inputs": [format!("concurrent request number {i}")]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.json::<Value>().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        let body = t.await.unwrap();
        assert_eq!(body.as_array().unwrap().len(), 1);
    }
    let after = server.metrics().await;
    let batches = metric(&after, "trident_batches_total") - batches0;
    assert!(
        batches >= 1.0 && batches < n as f64 / 2.0,
        "{n} concurrent requests ran in {batches} batches"
    );
    // The records-per-batch histogram saw a batch of more than one record.
    let single = metric(&after, r#"trident_batch_records_bucket{le="1"}"#);
    let all = metric(&after, "trident_batch_records_count");
    assert!(all > single, "no batch held more than one record:\n{after}");
    assert_eq!(
        metric(&after, r#"trident_http_requests_total{route="/embed",status="200"}"#),
        n as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_read_the_redis_result_store() {
    let Some(redis) = RedisServer::start() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is required in CI (scripts/test-services.sh)"
        );
        eprintln!("SKIP: redis-server not found; install it with scripts/test-services.sh");
        return;
    };
    let server = Server::start(&["--redis", &redis.url()]).await;

    // Store two results the way a node does (trident-cluster's key layout and value format).
    let (_, embedded) =
        server.post("/embed", &json!({"inputs": ["stored one", "stored two"]})).await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut want = HashMap::new();
    for (id, item) in [
        (trident_core::DocId::from("doc-1"), &embedded[0]),
        (trident_core::DocId::from(42u64), &embedded[1]),
    ] {
        let e = embedding_from_json(item);
        let value = trident_cluster::codec::encode_value(Some(&id), &e);
        let _: () = ::redis::cmd("SET")
            .arg(trident_cluster::codec::store_key("trident", &id))
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        want.insert(id.as_key(), e.to_json_value(&id));
    }

    let (status, body) = server.get("/lookup/doc-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, want["doc-1"]);
    let (status, body) = server.get("/lookup/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = server.post("/lookup", &json!({"ids": ["doc-1", "missing", 42]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([want["doc-1"], null, want["42"]]));
    assert_eq!(body[2]["id"], 42, "numeric ids come back as numbers");

    // Redis gone: lookups are 503, embedding goes on.
    drop(redis);
    let (status, body) = server.get("/lookup/doc-1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(server.post("/embed", &json!({"inputs": "still works"})).await.0, StatusCode::OK);
}

#[test]
fn a_model_that_does_not_load_exits_2() {
    let out = Command::new(TRIDENT)
        .args(["serve", "--model", "/nonexistent/model", "--port", &free_port().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

// HTTP server limits (issue 12, item 6): slow clients, idle connections, the connection cap,
// the shutdown deadline and the response-size cap, each with test-short settings.

/// A client that sends an `/embed` head announcing a 100-byte body, then one byte every 500 ms.
/// Resolves to whatever the server answered once it closes the connection.
fn slow_uploader(port: u16) -> tokio::task::JoinHandle<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let head = "POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                    content-length: 100\r\n\r\n{";
        w.write_all(head.as_bytes()).await.unwrap();
        let drip = tokio::spawn(async move {
            while w.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
        drip.abort();
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// True when the server has closed `s` (EOF or reset), false if it is still open after `wait`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn wait_for_metric(server: &Server, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server.metrics().await, name) < at_least {
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_uploaders_hold_no_in_flight_permits_and_get_408() {
    // Before: the permit was taken before the body was read, and all 8 got 429.
    let server = Server::start(&["--max-in-flight", "4", "--body-timeout-secs", "5"]).await;
    let slow: Vec<_> = (0..64).map(|_| slow_uploader(server.port)).collect();
    // All 64 are reading their bodies (the /metrics request counts itself too).
    wait_for_metric(&server, "trident_http_requests_in_flight", 65.0).await;
    for i in 0..8 {
        let (status, body) = server.post("/embed", &json!({"inputs": format!("legit {i}")})).await;
        assert_eq!(status, StatusCode::OK, "legit request {i} with 64 slow uploaders: {body}");
    }
    assert!(slow.iter().all(|t| !t.is_finished()), "slow uploaders answered too early");
    for t in slow {
        let answer = tokio::time::timeout(Duration::from_secs(20), t).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("--body-timeout-secs"), "{answer}");
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, r#"trident_http_requests_total{route="/embed",status="408"}"#), 64.0);
    assert_eq!(metric(&m, r#"trident_http_requests_total{route="/embed",status="200"}"#), 8.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_half_sent_and_idle_connections_are_closed_after_their_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--header-timeout-secs", "1", "--idle-timeout-secs", "3"]).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", server.port));
    let opened = Instant::now();
    // Silent new connections and half-sent heads: the header timeout.
    let mut heads = Vec::new();
    for _ in 0..20 {
        heads.push(connect().await.unwrap());
        let mut s = connect().await.unwrap();
        s.write_all(b"POST /embed HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        heads.push(s);
    }
    // Keep-alive connections idle after one answered request: the idle timeout.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = connect().await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        idle.push(s);
    }

    tokio::time::sleep(Duration::from_secs(2).saturating_sub(opened.elapsed())).await;
    for s in &mut heads {
        assert!(closed_by_server(s, ms(200)).await, "a connection without a head open after 2 s");
    }
    assert!(opened.elapsed() < Duration::from_millis(2800), "too slow to tell idle from header");
    // A short look each, so all are seen before their 3 s are up.
    for s in &mut idle {
        assert!(!closed_by_server(s, ms(20)).await, "an idle connection closed before its 3 s");
    }
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(opened.elapsed())).await;
    for s in &mut idle {
        assert!(closed_by_server(s, ms(200)).await, "an idle connection still open after 4.5 s");
    }
    let m = server.metrics().await;
    assert!(metric(&m, r#"trident_http_connections_timed_out_total{phase="header"}"#) >= 40.0);
    assert!(metric(&m, r#"trident_http_connections_timed_out_total{phase="idle"}"#) >= 10.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_past_the_request_timeout_are_503() {
    // Batches wait 3 s to fill; the request gives up after 1 s.
    let server = Server::start(&["--request-timeout-secs", "1", "--max-wait-ms", "3000"]).await;
    let started = Instant::now();
    let (status, body) = server.post("/embed", &json!({"inputs": "slow"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["type"], "timeout");
    assert!(body["error"]["message"].as_str().unwrap().contains("--request-timeout-secs"));
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_open_requests_and_exits_within_the_deadline() {
    // Batches wait 800 ms to fill, so a request is in flight when SIGTERM comes.
    let mut server = Server::start(&["--shutdown-timeout-secs", "2", "--max-wait-ms", "800"]).await;
    let slow: Vec<_> = (0..5).map(|_| slow_uploader(server.port)).collect();
    let answered = {
        let (http, url) = (server.http.clone(), server.url("/embed"));
        tokio::spawn(async move { http.post(url).json(&json!({"inputs": "x"})).send().await })
    };
    wait_for_metric(&server, "trident_http_requests_in_flight", 7.0).await;
    let term = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
    assert!(kill.unwrap().success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(term.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = term.elapsed();
    eprintln!("SIGTERM to exit with 5 slow uploaders: {took:?}");
    assert!(status.success(), "{status}");
    // Deadline 2 s, plus at most a second for the workers and one for the runtime.
    assert!(took < Duration::from_millis(4500), "exit took {took:?}");
    assert_eq!(answered.await.unwrap().unwrap().status(), StatusCode::OK);
    for t in slow {
        tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_over_max_response_bytes_are_refused_before_encoding() {
    let server = Server::start(&["--max-response-bytes", "20000"]).await;
    let long = "word ".repeat(100);
    let batches = metric(&server.metrics().await, "trident_batches_total");
    let (status, body) = server.post("/embed", &json!({"inputs": long})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_field(&body), "inputs");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-response-bytes"), "{body}");
    let (status, body) = server.post("/v1/embeddings", &json!({"input": vec!["x"; 40]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["param"], "input", "OpenAI error shape: {body}");
    let (status, body) = server.post("/tokenize", &json!({"inputs": "word ".repeat(2000)})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(metric(&server.metrics().await, "trident_batches_total"), batches, "encoded");
    // Smaller answers pass, and are within the limit.
    for (path, req) in [
        ("/embed", json!({"inputs": long, "dense": true})),
        ("/embed", json!({"inputs": "word ".repeat(10)})),
        ("/v1/embeddings", json!({"input": vec!["x"; 10]})),
    ] {
        let r = server.http.post(server.url(path)).json(&req).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} {req}");
        let len = r.bytes().await.unwrap().len();
        assert!(len <= 20000, "{path}: {len} bytes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_max_connections_are_refused_and_counted() {
    let server = Server::start(&["--max-connections", "4"]).await;
    // The client's pooled keep-alive connections count too; fill the rest with idle ones.
    let open = metric(&server.metrics().await, "trident_http_connections_open") as usize;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", server.port));
    let mut held = Vec::new();
    for _ in open..4 {
        held.push(connect().await.unwrap());
    }
    let mut over = connect().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut over, &mut answer);
    tokio::time::timeout(Duration::from_secs(2), read).await.expect("not closed").ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections"), "{answer}");
    // Closing the held ones frees their slots (a fresh client: the pooled one may be refused
    // while they are being released).
    drop(held);
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fresh.get(server.url("/metrics")).send().await {
            Ok(r) if r.status() == StatusCode::OK => {
                let rejected =
                    metric(&r.text().await.unwrap(), "trident_http_connections_rejected_total");
                assert!(rejected >= 1.0, "{rejected}");
                break;
            }
            _ => assert!(Instant::now() < deadline, "slots not released"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rebuilds an `Embedding` from `/embed` output (shortest-roundtrip floats parse back exactly).
fn embedding_from_json(v: &Value) -> trident_core::Embedding {
    let floats = |v: &Value| {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<f32>>()
    };
    let colbert_rows: Vec<Vec<f32>> = v["colbert"].as_array().unwrap().iter().map(floats).collect();
    trident_core::Embedding {
        tokens: v["tokens"].as_u64().unwrap() as usize,
        truncated: v["truncated"].as_bool().unwrap(),
        dense: Some(floats(&v["dense"])),
        sparse: Some(
            v["sparse"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, w)| (k.parse().unwrap(), w.as_f64().unwrap() as f32))
                .collect(),
        ),
        colbert_dim: colbert_rows[0].len(),
        colbert: Some(colbert_rows.concat()),
    }
}

/// A `redis-server` on a free loopback port, shut down on drop.
struct RedisServer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let bin = std::env::var_os("TRIDENT_REDIS_SERVER").map(PathBuf::from).or_else(|| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join("redis-server"))
                .find(|p| p.is_file())
        })?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer { port, child, _dir: dir })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 1 − 2·Hamming/dim MaxSim of the sign bits of two f32 ColBERT matrices (JSON rows).
fn hamming_maxsim(q: &Value, p: &Value) -> f64 {
    let bits = |m: &Value| -> Vec<Vec<bool>> {
        m.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() > 0.0).collect())
            .collect()
    };
    let (q, p) = (bits(q), bits(p));
    let dim = q[0].len() as f64;
    let best = |qr: &Vec<bool>| {
        p.iter()
            .map(|pr| 1.0 - 2.0 * qr.iter().zip(pr).filter(|(a, b)| a != b).count() as f64 / dim)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    q.iter().map(best).sum::<f64>() / q.len() as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn embed_encodings_and_score_of_stored_embeddings() {
    use trident_core::output::read_json;
    use trident_core::{ColbertEncoding, DenseEncoding, DocId, Encoding, Format, Record};

    let exp = expected();
    let pairs = exp["pairs"].as_array().unwrap();
    let queries: Vec<&str> = pairs.iter().map(|p| p[0].as_str().unwrap()).collect();
    let passages: Vec<&str> = pairs.iter().map(|p| p[1].as_str().unwrap()).collect();
    let server = Server::start(&[]).await;

    // /embed: default responses are unchanged (explicit f32 is the same bytes, no "encoding").
    let (status, plain) = server.post_text("/embed", &json!({"inputs": passages})).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    let explicit = json!({"inputs": passages, "dense_encoding": "f32", "colbert_encoding": "f32"});
    assert_eq!(server.post_text("/embed", &explicit).await, (StatusCode::OK, plain.clone()));
    let pf: Vec<Value> = serde_json::from_str::<Value>(&plain).unwrap().as_array().unwrap().clone();
    assert!(pf.iter().all(|o| o.get("encoding").is_none() && o.get("colbert_dim").is_none()));
    let (_, qf) = server.post("/embed", &json!({"inputs": queries})).await;
    let qf = qf.as_array().unwrap().clone();

    // Each encoding: exactly what `Record::write(Format::Json)` writes for the same result.
    let mut stored = HashMap::new();
    for (dense, colbert) in [("f16", "binary"), ("bf16", "f16"), ("f32", "binary"), ("F16", "f32")]
    {
        let req = json!({"inputs": passages, "dense_encoding": dense, "colbert_encoding": colbert});
        let (status, text) = server.post_text("/embed", &req).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let enc = Encoding {
            dense: dense.parse::<DenseEncoding>().unwrap(),
            colbert: colbert.parse::<ColbertEncoding>().unwrap(),
        };
        let records: Vec<String> = pf
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut e = read_json(o).unwrap().e;
                enc.apply(&mut e);
                let id = DocId::from(i as u64);
                let r = Record { id: &id, e: &e, enc, note: None, version: None };
                String::from_utf8(r.write(Format::Json)).unwrap()
            })
            .collect();
        // (As values: `read_json` does not keep the sparse weights' order.)
        let body: Value = serde_json::from_str(&text).unwrap();
        let want: Value = serde_json::from_str(&format!("[{}]", records.join(","))).unwrap();
        assert_eq!(body, want, "{dense}/{colbert}");
        let first = &body[0];
        assert_eq!(first["encoding"], json!({"dense": enc.dense.name(), "colbert": colbert}));
        if colbert == "binary" {
            assert_eq!(first["colbert_dim"], 32);
            assert_eq!(first["colbert"][0].as_str().unwrap().len(), 8, "32 bits in hex");
            assert!(text.contains("\"colbert_dim\":32,\"encoding\":{"), "field order");
        }
        stored.insert((dense, colbert), body.as_array().unwrap().clone());
    }
    let pb = &stored[&("f32", "binary")];
    let ph = &stored[&("bf16", "f16")];

    // /score: array pairs and object pairs in one request; stored sides scored as stored.
    let mut req_pairs = Vec::new();
    for i in 0..pairs.len() {
        req_pairs.push(json!([queries[i], passages[i]]));
        req_pairs.push(json!({"query": queries[i], "passage_embedding": pf[i]}));
        req_pairs.push(json!({"query_embedding": qf[i], "passage": passages[i]}));
        req_pairs.push(json!({"query": queries[i], "passage_embedding": ph[i]}));
        req_pairs.push(json!({"query_embedding": qf[i], "passage_embedding": pb[i]}));
        req_pairs.push(json!({"query": queries[i], "passage_embedding": pb[i]}));
    }
    let (status, body) = server.post("/score", &json!({"pairs": req_pairs})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = body.as_array().unwrap();
    assert_eq!(got.len(), req_pairs.len());
    let keys = ["dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"];
    for (k, six) in got.chunks(6).enumerate() {
        let v = |line: &Value, key: &str| line[key].as_f64().unwrap();
        for line in &six[1..3] {
            for key in keys {
                let (a, e) = (v(line, key), v(&six[0], key));
                assert!((a - e).abs() <= 1e-5, "pair {k} {key}: stored {a}, texts {e}");
            }
        }
        let (a, e) = (v(&six[3], "colbert"), v(&six[0], "colbert"));
        assert!((a - e).abs() <= 1e-3, "pair {k}: f16 colbert {a} vs {e}");
        let want = hamming_maxsim(&qf[k]["colbert"], &pf[k]["colbert"]);
        for line in &six[4..] {
            let c = v(line, "colbert");
            assert!((c - want).abs() <= 1e-6, "pair {k}: binary colbert {c}, hamming {want}");
            assert!((v(line, "dense") - v(&six[0], "dense")).abs() <= 1e-5, "pair {k}");
        }
    }

    // Errors: 422 naming the field.
    let mut short_dense = pf[0].clone();
    short_dense["dense"] = Value::Array(pf[0]["dense"].as_array().unwrap()[..16].to_vec());
    let mut not_hex = pb[0].clone();
    not_hex["colbert"][0] = "zz".repeat(4).into();
    let long = "word ".repeat(40);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/score",
            json!({"pairs": [["a", "b"], {"query": "a", "passage_embedding": short_dense}]}),
            "pairs[1].passage_embedding",
            "dense has 16 values",
        ),
        (
            "/score",
            json!({"pairs": [{"query": "a", "passage_embedding": not_hex}]}),
            "pairs[0].passage_embedding",
            "not hex",
        ),
        (
            "/score",
            json!({"pairs": [{"query_embedding": {"id": 1, "error": "boom"}, "passage": "b"}]}),
            "pairs[0].query_embedding",
            "error record",
        ),
        (
            "/score",
            json!({"pairs": [{"query": "a", "passage": "b", "passage_embedding": pf[0]}]}),
            "pairs[0]",
            "not both",
        ),
        ("/score", json!({"pairs": [{"query": "a"}]}), "pairs[0]", "no passage"),
        ("/score", json!({"pairs": [["a", 5]]}), "pairs[0][1]", "expected a string"),
        (
            "/score",
            json!({"pairs": [{"query": "a", "passage": long}], "max_length": 16}),
            "pairs[0].passage",
            "longer than max_length",
        ),
        (
            "/score",
            json!({"pairs": [["a", "b"], {"query": "a", "passage": "b", "passages": "c"}]}),
            "pairs[1]",
            "passages",
        ),
        (
            "/embed",
            json!({"inputs": ["a"], "colbert_encoding": "int8"}),
            "colbert_encoding",
            "f32, f16 or binary",
        ),
        (
            "/embed",
            json!({"inputs": ["a"], "dense_encoding": "binary"}),
            "dense_encoding",
            "f32, f16 or bf16",
        ),
        ("/embed", json!({"inputs": ["a"], "dense_encoding": 16}), "dense_encoding", "string"),
    ];
    for (path, req, field, needle) in cases {
        let (status, body) = server.post(path, &req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {req}: {body}");
        assert_eq!(body["error"]["type"], "validation_error", "{body}");
        assert!(error_field(&body).starts_with(field), "{path} {req}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(field) && msg.contains(needle), "{path}: {msg:?} lacks {needle:?}");
    }

    // The schema documents the new fields.
    let (_, doc) = server.get("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let embed_req = &schemas["EmbedRequest"]["properties"];
    assert!(
        embed_req.get("dense_encoding").is_some() && embed_req.get("colbert_encoding").is_some()
    );
    assert_eq!(schemas["ColbertEncoding"]["enum"], json!(["f32", "f16", "binary"]), "{schemas}");
    let pair = serde_json::to_string(&schemas["ScorePair"]).unwrap();
    assert!(pair.contains("passage_embedding") && pair.contains("query_embedding"), "{pair}");
    assert!(serde_json::to_string(&schemas["EmbeddingObject"]).unwrap().contains("colbert_dim"));
}
