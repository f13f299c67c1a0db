//! Overload: requests over `--max-in-flight` and past `--request-timeout-secs`, with an encoder
//! held at a gate so nothing depends on timing.

use super::*;

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
