//! HTTP server limits (issue 12, item 6): slow clients, idle connections, the connection cap,
//! the shutdown deadline and the response-size cap, each with test-short settings.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::server::{error_field, metric, Server};

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
