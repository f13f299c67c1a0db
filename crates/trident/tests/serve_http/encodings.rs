//! `/embed` in every encoding, and `/score` of stored embeddings as well as texts.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{expected, hamming_maxsim};
use crate::server::{error_field, Server};

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
