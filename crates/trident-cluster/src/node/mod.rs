//! `trident node`: Kafka → coordinator → batcher → workers → Kafka output (+ Redis store),
//! at least once, every record ending in a bounded, counted outcome.
//!
//! - Every record taken from a partition is entered in the in-flight table (`table`) and the
//!   partition's [`PartitionTracker`](crate::offsets::PartitionTracker); the sink (`sink`)
//!   acknowledges it when every enabled sink has it (output or dead-letter topic delivered,
//!   result stored), or when it was superseded, dropped and counted, and the partition's offset
//!   is stored (`enable.auto.offset.store=false`) only over the contiguous acknowledged prefix.
//!   librdkafka's auto-commit commits stored offsets; revokes and shutdown commit synchronously.
//! - Producer failures are bounded (`deliver`): permanent ones dead-letter at once, transient
//!   ones after `produce_retry_ms`; a dead letter that fails is dropped and counted.
//! - Outputs are sized before they are produced: over the producer's `message.max.bytes` a
//!   result goes out without its ColBERT rows when the store holds them, else to the dead letters
//!   as `output_too_large`. Dead letters are cut to fit (`dead_letter`).
//! - Newest wins: results of one id are published in offset order, older ones superseded
//!   (`key_order`); the store's write is a compare-and-set on the source offset (`store`).
//! - Tombstones (null values) are acknowledged and counted, not embedded.
//! - Rebalance: on revoke the node waits up to `revoke_drain_ms` for the partitions' in-flight
//!   records, commits, and forgets them; their later results are discarded, not published.
//! - Backpressure: each record counts its bytes and an estimate of its tokens the moment it is
//!   taken; above the high-water marks (tokens, records, bytes) — checked per message — the
//!   assigned partitions are paused; below the low-water marks they resume.

mod consumer;
mod sink;
mod table;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use trident_core::DocId;

use crate::config::{kafka_value, NodeConfig};
use crate::ClusterError;
use consumer::{NodeConsumer, NodeContext};
use sink::{KafkaSink, SinkState};
use table::{Shared, Table};
use trident_engine::coordinator::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, RawRecord, SinkMsg,
};
use trident_engine::flight::{estimate_tokens, FlightLimits, InFlight};
use trident_engine::store::start_writer;
use trident_engine::Pipeline;

/// A broker that is down makes the consumer report the same error at every poll.
static CONSUMER_WARN: crate::deliver::RateLimited =
    crate::deliver::RateLimited::new(Duration::from_secs(5));

fn client_config(
    cfg: &NodeConfig,
    extra: &std::collections::BTreeMap<String, serde_json::Value>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in cfg.kafka.iter().chain(extra) {
        c.set(k, kafka_value(v));
    }
    c
}

/// What a node did, reported when it stops.
#[derive(Debug, Default)]
pub struct NodeReport {
    pub records_in: u64,
    pub unfinished: usize,
}

/// Run a node until `shutdown` resolves, then finish in-flight work within the deadline,
/// commit and return.
pub async fn run_node(
    cfg: NodeConfig,
    pipeline: Pipeline,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<NodeReport, ClusterError> {
    let metrics = pipeline.metrics().clone();
    let topic = cfg.input_topic.clone().expect("validated");
    let output_topic = cfg.output_topic.clone().expect("validated");
    let max_message = cfg.message_max_bytes()?;
    let retry_budget = Duration::from_millis(cfg.produce_retry_ms.max(1));
    let flight = Arc::new(InFlight::default());
    let shared = Arc::new(Shared {
        table: std::sync::Mutex::new(Table::default()),
        flight: flight.clone(),
        metrics: metrics.clone(),
        topic: topic.clone(),
        revoke_drain: Duration::from_millis(cfg.revoke_drain_ms),
        closing: std::sync::atomic::AtomicBool::new(false),
        assigned: std::sync::atomic::AtomicBool::new(false),
    });

    // The client's prefetch scales with the bytes limit (an eighth queued, a quarter per fetch;
    // librdkafka's defaults allow 64 MiB and 50 MiB whatever the node's limits), so the in-flight
    // limits, not the client's buffers, decide the node's memory.
    let queued_kib = (cfg.max_bytes_in_flight / 8 / 1024).clamp(1024, 65536);
    let fetch_bytes = (cfg.max_bytes_in_flight / 4).clamp(1 << 20, 50 << 20);
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("queued.max.messages.kbytes", queued_kib.to_string())
        .set("fetch.max.bytes", fetch_bytes.to_string());
    for (k, v) in cfg.kafka.iter().chain(&cfg.kafka_consumer) {
        cc.set(k, kafka_value(v));
    }
    let consumer: Arc<NodeConsumer> = Arc::new(
        cc.create_with_context(NodeContext { shared: shared.clone() })
            .map_err(|e| ClusterError::kafka("creating the consumer", e))?,
    );
    let mut pc = client_config(&cfg, &cfg.kafka_producer);
    let user_set = |k: &str| cfg.kafka.contains_key(k) || cfg.kafka_producer.contains_key(k);
    if !user_set("linger.ms") {
        pc.set("linger.ms", "5");
    }
    // librdkafka's own delivery timeout (default 300 s) must not outlast the retry budget.
    if !user_set("message.timeout.ms") && !user_set("delivery.timeout.ms") {
        pc.set("message.timeout.ms", retry_budget.as_millis().to_string());
    }
    let producer: rdkafka::producer::FutureProducer =
        pc.create().map_err(|e| ClusterError::kafka("creating the producer", e))?;

    let store = if cfg.store {
        let url = cfg.redis.as_deref().expect("validated");
        Some((start_writer(url, metrics.clone())?, cfg.key_prefix.clone()))
    } else {
        None
    };
    let sink_state = SinkState {
        shared: shared.clone(),
        consumer: consumer.clone(),
        producer: producer.clone(),
        output_topic,
        dlq_topic: cfg.dlq_topic.clone(),
        store,
        max_message,
        dlq_value_bytes: cfg.dlq_value_bytes(),
        retry_budget,
        format: cfg.output_format,
        encoding: trident_core::Encoding {
            dense: cfg.dense_encoding,
            colbert: cfg.colbert_encoding,
        },
        placement: cfg.placement()?,
        qdrant_collection: cfg.qdrant_collection.clone(),
    };
    let actor_err =
        |e: ractor::SpawnErr| ClusterError::from(trident_engine::EngineError::Actor(e.to_string()));
    let (sink, sink_join) = Actor::spawn(None, KafkaSink, sink_state).await.map_err(actor_err)?;
    let coord_args = CoordinatorArgs {
        pipeline: pipeline.clone(),
        sink: sink.clone(),
        modes: cfg.modes().expect("validated"),
        max_length: cfg.max_length,
        max_record_bytes: cfg.max_record_bytes,
        reject_blank: true,
        flight: flight.clone(),
    };
    let (coord, coord_join) =
        Actor::spawn(None, Coordinator, coord_args).await.map_err(actor_err)?;

    // Gauges follow the in-flight counters.
    let gauges = {
        let (flight, metrics) = (flight.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let c = flight.counts();
                metrics.records_in_flight.set(c.records as i64);
                metrics.tokens_in_flight.set(c.tokens as i64);
                metrics.bytes_in_flight.set(c.bytes as i64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    consumer
        .subscribe(&[&topic])
        .map_err(|e| ClusterError::kafka(format!("subscribing to {topic}"), e))?;
    let limits = FlightLimits {
        high_tokens: cfg.high_water(),
        low_tokens: cfg.low_water(),
        max_records: cfg.max_records_in_flight,
        max_bytes: cfg.max_bytes_in_flight,
    };
    tracing::info!(
        "node consuming {topic} as group {} (pause above {} tokens / {} records / {} bytes in \
         flight; messages up to {max_message} bytes)",
        cfg.group,
        limits.high_tokens,
        limits.max_records,
        limits.max_bytes
    );
    let source = Source { shared: shared.clone(), sink: sink.clone(), max_length: cfg.max_length };
    let mut report = NodeReport::default();
    let mut paused = false;
    let mut last_pause = std::time::Instant::now();
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    const CHUNK: usize = 256;
    'consume: loop {
        // Backpressure: pause at once when over a mark (and again every 100 ms, so partitions
        // assigned while paused are paused too).
        if !paused && flight.above_high(&limits) {
            paused = true;
            metrics.pauses.inc();
            metrics.partitions_paused.set(1);
            tracing::info!("pausing input: {:?} in flight", flight.counts());
            last_pause = std::time::Instant::now() - Duration::from_secs(1);
        } else if paused && flight.below_low(&limits) {
            paused = false;
            metrics.resumes.inc();
            metrics.partitions_paused.set(0);
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.resume(&a);
            }
            tracing::info!("resuming input");
        }
        // librdkafka keeps a partition's pause across a rebalance: one paused before its revoke
        // comes back paused, and the resume that ran while nothing was assigned never reached
        // it — a stall. So newly assigned partitions are resumed whenever the node is not paused.
        if !paused && shared.assigned.swap(false, std::sync::atomic::Ordering::SeqCst) {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.resume(&a);
            }
        }
        if paused && last_pause.elapsed() > Duration::from_millis(100) {
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
            }
            last_pause = std::time::Instant::now();
        }
        let mut chunk = Vec::new();
        // Polled while paused too: rebalance callbacks run inside the poll.
        let first = tokio::select! {
            _ = &mut shutdown => break 'consume,
            m = tokio::time::timeout(Duration::from_millis(if paused { 20 } else { 200 }), consumer.recv()) => m,
        };
        let mut next = first;
        loop {
            match next {
                Err(_) => break, // timeout
                Ok(Err(e)) => {
                    CONSUMER_WARN.warn(&format!("consumer: {e}"));
                    break;
                }
                Ok(Ok(m)) => {
                    report.records_in += 1;
                    if let Some(rec) = source.take(&m) {
                        chunk.push(rec);
                    }
                }
            }
            if chunk.len() >= CHUNK || flight.above_high(&limits) {
                break;
            }
            next = match consumer.recv().now_or_never() {
                Some(r) => Ok(r),
                None => break,
            };
        }
        if chunk.is_empty() {
            let _ = coord.send_message(CoordinatorMsg::Flush);
        } else {
            let _ = coord.send_message(CoordinatorMsg::Records(chunk));
        }
    }

    // Graceful shutdown: stop consuming, finish what is in flight, commit.
    tracing::info!("shutting down: finishing {} records in flight", flight.counts().records);
    let _ = coord.send_message(CoordinatorMsg::Flush);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.shutdown_deadline_ms);
    let drained = flight.drain(deadline).await;
    report.unfinished = flight.counts().records;
    if !drained {
        tracing::warn!(
            "{} records unfinished at the deadline; they will be redone after restart",
            report.unfinished
        );
    }
    shared.closing.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!("final commit: {e}");
    }
    use rdkafka::producer::Producer;
    let _ = producer.flush(Duration::from_secs(5));
    gauges.abort();
    coord.stop(None);
    sink.stop(None);
    let _ = coord_join.await;
    let _ = sink_join.await;
    consumer.unsubscribe();
    drop(consumer);
    Ok(report)
}

/// Takes records off the consumer into the in-flight table.
struct Source {
    shared: Arc<Shared>,
    sink: ActorRef<SinkMsg>,
    max_length: usize,
}

impl Source {
    /// Enter one message: counted in flight (bytes, estimated tokens) the moment it is taken,
    /// its value copied once and shared with the coordinator. A tombstone is acknowledged at
    /// once and yields nothing.
    fn take(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<RawRecord> {
        let (p, o) = (m.partition(), m.offset());
        let key = m.key().map(|k| k.to_vec());
        let payload = m.payload();
        let value: Arc<[u8]> = Arc::from(payload.unwrap_or_default());
        let bytes = value.len() + key.as_ref().map_or(0, Vec::len);
        let est = if payload.is_some() { estimate_tokens(value.len(), self.max_length) } else { 0 };
        let fallback_id = match key.as_deref().map(std::str::from_utf8) {
            Some(Ok(k)) => DocId::Str(k.to_string()),
            _ => DocId::Str(format!("{}/{p}/{o}", m.topic())),
        };
        let ticket = self.shared.table.lock().unwrap().take(p, o, key, value.clone(), est, bytes);
        self.shared.flight.take(1, est, bytes);
        if payload.is_none() {
            self.shared.metrics.tombstones.inc();
            let _ = self.sink.send_message(SinkMsg::Delivered { ticket, ok: true });
            return None;
        }
        Some(RawRecord { ticket, bytes: value, fallback_id, est_tokens: est })
    }
}
