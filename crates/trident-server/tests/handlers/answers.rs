//! What the answers hold: scores, tokens, encoder failures, metrics, /info, unknown routes.

use super::*;

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
