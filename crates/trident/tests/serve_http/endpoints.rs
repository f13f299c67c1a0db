//! What each endpoint answers: `/embed` against `trident embed` and the reference, the OpenAI
//! shape, `/score`, `/tokenize`, `/info`, `/health`, `/openapi.json`, and batches shared by
//! concurrent requests.

use std::io::Write;
use std::process::Command;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{expected, tiny, TRIDENT};
use crate::server::{assert_sparse_close, assert_vec_close, close, metric, Server};

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
        .arg(tiny())
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
