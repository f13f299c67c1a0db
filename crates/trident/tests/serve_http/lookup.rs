//! Lookups from a real `redis-server` holding results the way a node stores them.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{find_redis, free_port};
use crate::server::Server;

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
        let value = trident_engine::codec::encode_value(Some(&id), &e);
        let _: () = ::redis::cmd("SET")
            .arg(trident_engine::codec::store_key("trident", &id))
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
        let bin = find_redis()?;
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
