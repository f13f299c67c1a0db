//! Error paths, each a clear JSON error; bearer-token auth; requests over the in-flight limit;
//! a model that does not load.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{free_port, TRIDENT};
use crate::server::{error_field, metric, Server};

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
