//! Prometheus metrics of the HTTP layer, registered next to the pipeline's (batches, records per
//! batch, encode time, cache) so `/metrics` shows both.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route template and status code.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub connections_open: IntGauge,
    /// Connections closed at accept because `--max-connections` were open.
    pub connections_rejected: IntCounter,
    /// Connections closed by a deadline, by phase (`idle`, `header`, `request`).
    pub connections_timed_out: IntCounterVec,
}

impl Metrics {
    /// Registers the HTTP metrics in `registry` (a handle: clones share the same metrics).
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let http_requests = IntCounterVec::new(
            Opts::new("trident_http_requests_total", "HTTP requests answered, by route and status"),
            &["route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "trident_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["route"],
        )?;
        let http_in_flight =
            IntGauge::new("trident_http_requests_in_flight", "HTTP requests being processed")?;
        let connections_open =
            IntGauge::new("trident_http_connections_open", "Open HTTP connections")?;
        let connections_rejected = IntCounter::new(
            "trident_http_connections_rejected_total",
            "Connections closed on accept because --max-connections were open",
        )?;
        let connections_timed_out = IntCounterVec::new(
            Opts::new(
                "trident_http_connections_timed_out_total",
                "Connections closed by a deadline, by phase (idle, header, request)",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(http_in_flight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(connections_timed_out.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_duration,
            http_in_flight,
            connections_open,
            connections_rejected,
            connections_timed_out,
        })
    }

    /// The Prometheus text exposition of every metric in the registry.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
