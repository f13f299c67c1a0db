//! Prometheus metrics of a node (or of `trident serve`, which shares the pipeline), served as
//! text on `--metrics-addr` at `/metrics`.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::EngineError;

/// Every metric of the pipeline; cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub records_dead_lettered: IntCounter,
    pub records_failed: IntCounter,
    pub tokens: IntCounter,
    pub batches: IntCounter,
    pub batch_fill_ratio: Histogram,
    pub batch_size: Histogram,
    pub encode_seconds: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_errors: IntCounter,
    pub store_errors: IntCounter,
    pub tokens_in_flight: IntGauge,
    pub records_in_flight: IntGauge,
    pub partitions_paused: IntGauge,
    pub pauses: IntCounter,
    pub resumes: IntCounter,
    pub worker_restarts: IntCounter,
    pub batch_retries: IntCounter,
    pub stored_offset: IntGaugeVec,
    pub records_dropped: IntCounterVec,
    pub records_superseded: IntCounter,
    pub records_revoked: IntCounter,
    pub tombstones: IntCounter,
    pub produce_retries: IntCounter,
    pub outputs_slimmed: IntCounter,
    pub outputs_colbert_omitted: IntCounter,
    pub outputs_colbert_topic: IntCounter,
    pub store_stale_skipped: IntCounter,
    pub bytes_in_flight: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let stored_offset = IntGaugeVec::new(
            Opts::new(
                "trident_partition_stored_offset",
                "Offset stored for commit, per input partition",
            ),
            &["partition"],
        )
        .expect("valid metric");
        r.register(Box::new(stored_offset.clone())).expect("unique metric");
        let records_dropped = IntCounterVec::new(
            Opts::new(
                "trident_records_dropped_total",
                "Records acknowledged without any output: no dead-letter topic, or the dead \
                 letter itself could not be written",
            ),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(records_dropped.clone())).expect("unique metric");
        Metrics {
            records_dropped,
            records_superseded: counter(
                &r,
                "trident_records_superseded_total",
                "Results not published because a newer version of the same id was taken",
            ),
            records_revoked: counter(
                &r,
                "trident_records_revoked_total",
                "Results discarded because their partition was revoked (the new owner redoes them)",
            ),
            tombstones: counter(
                &r,
                "trident_tombstones_total",
                "Null-value records (tombstones) acknowledged without embedding",
            ),
            produce_retries: counter(
                &r,
                "trident_produce_retries_total",
                "Transient producer failures retried",
            ),
            outputs_slimmed: counter(
                &r,
                "trident_outputs_colbert_in_store_total",
                "Results over the message limit published without ColBERT rows (rows in the store)",
            ),
            outputs_colbert_omitted: counter(
                &r,
                "trident_outputs_colbert_omitted_total",
                "Results published without ColBERT rows because they fit no message and there is no store",
            ),
            outputs_colbert_topic: counter(
                &r,
                "trident_outputs_colbert_topic_total",
                "ColBERT messages published to their own topic",
            ),
            store_stale_skipped: counter(
                &r,
                "trident_store_stale_writes_total",
                "Store writes skipped because a later offset of the id was already stored",
            ),
            bytes_in_flight: gauge(
                &r,
                "trident_bytes_in_flight",
                "Input bytes taken and not yet acknowledged",
            ),
            records_in: counter(&r, "trident_records_in_total", "Records taken from the source"),
            records_out: counter(
                &r,
                "trident_records_out_total",
                "Embeddings delivered to the output sink",
            ),
            records_dead_lettered: counter(
                &r,
                "trident_records_dead_lettered_total",
                "Records sent to the dead-letter sink",
            ),
            records_failed: counter(
                &r,
                "trident_records_failed_total",
                "Bad records and encoder failures",
            ),
            tokens: counter(&r, "trident_tokens_total", "Tokens encoded"),
            batches: counter(&r, "trident_batches_total", "Batches encoded"),
            batch_fill_ratio: histogram(
                &r,
                "trident_batch_fill_ratio",
                "Real tokens / padded tokens per batch",
                vec![0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0],
            ),
            batch_size: histogram(
                &r,
                "trident_batch_records",
                "Records per batch",
                prometheus::exponential_buckets(1.0, 2.0, 10).unwrap(),
            ),
            encode_seconds: histogram(
                &r,
                "trident_encode_seconds",
                "Encoder time per batch",
                prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap(),
            ),
            cache_hits: counter(&r, "trident_cache_hits_total", "Content-cache hits"),
            cache_misses: counter(
                &r,
                "trident_cache_misses_total",
                "Content-cache misses (including lookups that failed)",
            ),
            cache_errors: counter(
                &r,
                "trident_cache_errors_total",
                "Content-cache operations that failed (Redis down)",
            ),
            store_errors: counter(
                &r,
                "trident_store_errors_total",
                "Result-store writes that failed and were retried",
            ),
            tokens_in_flight: gauge(
                &r,
                "trident_tokens_in_flight",
                "Tokens taken and not yet acknowledged",
            ),
            records_in_flight: gauge(
                &r,
                "trident_records_in_flight",
                "Records taken and not yet acknowledged",
            ),
            partitions_paused: gauge(
                &r,
                "trident_partitions_paused",
                "1 while the input partitions are paused by backpressure",
            ),
            pauses: counter(
                &r,
                "trident_partition_pauses_total",
                "Times the input partitions were paused",
            ),
            resumes: counter(
                &r,
                "trident_partition_resumes_total",
                "Times the input partitions were resumed",
            ),
            worker_restarts: counter(
                &r,
                "trident_worker_restarts_total",
                "Workers restarted after a failure",
            ),
            batch_retries: counter(
                &r,
                "trident_batch_retries_total",
                "Batches retried or split after a failure",
            ),
            stored_offset,
            registry: Arc::new(r),
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }

    /// Serve `/metrics` on `addr` in the background. A connection must send its request head
    /// within 10 s of opening or of its last response (hyper restarts the timer then, so idle
    /// keep-alive connections close too) and lives at most 120 s; past 64 open connections new
    /// ones are closed at once. A stuck scraper or a port scan cannot pile up sockets.
    pub async fn serve(&self, addr: &str) -> Result<tokio::task::JoinHandle<()>, EngineError> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;
        use std::time::Duration;
        const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
        const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
        const MAX_CONNECTIONS: usize = 64;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| EngineError::Metrics { addr: addr.to_string(), msg: e.to_string() })?;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let me = me.clone();
                async move { me.render() }
            }),
        );
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        Ok(tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("metrics server: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let service = TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                    drop(slot);
                });
            }
        }))
    }
}
