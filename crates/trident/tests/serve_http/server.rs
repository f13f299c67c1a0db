//! A `trident serve` process for one test, and what the tests read from its answers.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{free_port, tiny, TRIDENT};

/// A running `trident serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(TRIDENT)
            .arg("serve")
            .arg("--model")
            .arg(tiny())
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
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
    pub async fn post_text(&self, path: &str, body: &Value) -> (StatusCode, String) {
        let r = self.http.post(self.url(path)).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
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
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
}

pub fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

pub fn assert_vec_close(actual: &Value, expected: &Value, tol: f64, what: &str) {
    let (a, e) = (actual.as_array().unwrap(), expected.as_array().unwrap());
    assert_eq!(a.len(), e.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => assert!(close(x, y, tol), "{what}[{i}]: {x} vs {y}"),
            _ => assert_vec_close(x, y, tol, &format!("{what}[{i}]")),
        }
    }
}

pub fn assert_sparse_close(actual: &Value, expected: &Value, tol: f64, what: &str) {
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

pub fn error_field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or_else(|| panic!("no error.field in {body}"))
}
