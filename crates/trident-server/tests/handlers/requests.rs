//! Requests the server takes or refuses: health, /embed and its limits, the API key, the
//! OpenAI-compatible route.

use super::*;

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
