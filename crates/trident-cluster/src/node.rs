//! `trident node`: Kafka → coordinator → batcher → workers → Kafka output (+ Redis store),
//! at least once.
//!
//! - Every record taken from a partition is entered in the in-flight table and the partition's
//!   [`PartitionTracker`]; it is acknowledged when every enabled sink has it (output or
//!   dead-letter topic delivered, result stored), and the partition's offset is stored
//!   (`enable.auto.offset.store=false`) only over the contiguous acknowledged prefix. librdkafka's
//!   auto-commit commits stored offsets; revokes and shutdown commit synchronously.
//! - Rebalance: on revoke the node waits up to `revoke_drain_ms` for the partitions' in-flight
//!   records, commits, and forgets them (later acks of the old assignment are ignored).
//! - Backpressure: above the high-water mark of tokens (or records) in flight the assigned
//!   partitions are paused; below the low-water mark they resume.
//! - Dead letters: the original key and value, with headers `trident.reason`,
//!   `trident.source.topic`, `trident.source.partition`, `trident.source.offset`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use trident_core::types::error_json;
use trident_core::{DocId, Modes};

use crate::codec::{encode_value, store_key};
use crate::config::{kafka_value, NodeConfig};
use crate::coordinator::{Coordinator, CoordinatorArgs, CoordinatorMsg, RawRecord, SinkMsg};
use crate::flight::{FlightLimits, InFlight};
use crate::offsets::PartitionTracker;
use crate::store::{start_writer, StoreWrite};
use crate::{ClusterError, Metrics, Pipeline};

struct Meta {
    partition: i32,
    offset: i64,
    epoch: u64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// Sinks that still have to confirm.
    pending: u8,
    tokens: usize,
}

struct PartState {
    epoch: u64,
    tracker: PartitionTracker,
}

#[derive(Default)]
struct Table {
    next_ticket: u64,
    next_epoch: u64,
    metas: HashMap<u64, Meta>,
    parts: HashMap<i32, PartState>,
}

struct Shared {
    table: Mutex<Table>,
    flight: Arc<InFlight>,
    metrics: Metrics,
    topic: String,
    revoke_drain: Duration,
    /// Set at shutdown, after the drain: the final revoke commits without waiting again.
    closing: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn part_in_flight(&self, partitions: &[i32]) -> usize {
        let t = self.table.lock().unwrap();
        partitions.iter().filter_map(|p| t.parts.get(p)).map(|s| s.tracker.in_flight()).sum()
    }
}

/// The consumer's context: rebalance handling.
struct NodeContext {
    shared: Arc<Shared>,
}

impl ClientContext for NodeContext {}

impl ConsumerContext for NodeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        tracing::info!("partitions {parts:?} revoked; draining in-flight records");
        let closing = self.shared.closing.load(std::sync::atomic::Ordering::SeqCst);
        let drain = if closing { Duration::ZERO } else { self.shared.revoke_drain };
        let deadline = std::time::Instant::now() + drain;
        while self.shared.part_in_flight(&parts) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.shared.part_in_flight(&parts);
        if left > 0 {
            tracing::warn!(
                "{left} records of revoked partitions unfinished; their new owner redoes them"
            );
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!("commit on revoke: {e}");
        }
        let mut t = self.shared.table.lock().unwrap();
        for p in parts {
            t.parts.remove(&p);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut t = self.shared.table.lock().unwrap();
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!("partitions {parts:?} assigned");
            for p in parts {
                t.next_epoch += 1;
                let epoch = t.next_epoch;
                t.parts.insert(p, PartState { epoch, tracker: PartitionTracker::default() });
            }
        }
    }
}

type NodeConsumer = StreamConsumer<NodeContext>;

/// The Kafka sink: output or dead-letter topic, result store, acknowledgements, offset store.
struct KafkaSink;

struct SinkState {
    shared: Arc<Shared>,
    consumer: Arc<NodeConsumer>,
    producer: FutureProducer,
    output_topic: String,
    dlq_topic: Option<String>,
    store: Option<(mpsc::UnboundedSender<StoreWrite>, String)>,
}

enum Payload {
    Output { key: String, value: String },
    Dead { key: Option<Vec<u8>>, value: Vec<u8>, headers: OwnedHeaders },
}

impl KafkaSink {
    /// Produce in the background, retrying until delivered, then acknowledge.
    fn produce(
        me: &ActorRef<SinkMsg>,
        st: &SinkState,
        ticket: u64,
        topic: String,
        payload: Payload,
    ) {
        let producer = st.producer.clone();
        let me = me.clone();
        let metrics = st.shared.metrics.clone();
        tokio::spawn(async move {
            loop {
                let result = match &payload {
                    Payload::Output { key, value } => {
                        producer
                            .send(
                                FutureRecord::to(&topic).key(key).payload(value),
                                Duration::from_secs(5),
                            )
                            .await
                    }
                    Payload::Dead { key, value, headers } => {
                        let mut r = FutureRecord::<Vec<u8>, Vec<u8>>::to(&topic)
                            .payload(value)
                            .headers(headers.clone());
                        if let Some(k) = key {
                            r = r.key(k);
                        }
                        producer.send(r, Duration::from_secs(5)).await
                    }
                };
                match result {
                    Ok(_) => break,
                    Err((e, _)) => {
                        tracing::warn!("producing to {topic} failed: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            match payload {
                Payload::Output { .. } => metrics.records_out.inc(),
                Payload::Dead { .. } => metrics.records_dead_lettered.inc(),
            }
            let _ = me.send_message(SinkMsg::Delivered { ticket, ok: true });
        });
    }

    fn dead_letter(
        me: &ActorRef<SinkMsg>,
        st: &mut SinkState,
        ticket: u64,
        id: &DocId,
        reason: &str,
    ) {
        st.shared.metrics.records_failed.inc();
        let mut t = st.shared.table.lock().unwrap();
        let Some(meta) = t.metas.get_mut(&ticket) else { return };
        let Some(dlq) = st.dlq_topic.clone() else {
            tracing::warn!(
                "bad record {} (partition {}, offset {}): {reason}",
                id.as_key(),
                meta.partition,
                meta.offset
            );
            drop(t);
            Self::acked(st, ticket);
            return;
        };
        meta.pending = 1;
        let headers = OwnedHeaders::new()
            .insert(Header { key: "trident.reason", value: Some(reason) })
            .insert(Header { key: "trident.source.topic", value: Some(&st.shared.topic) })
            .insert(Header {
                key: "trident.source.partition",
                value: Some(&meta.partition.to_string()),
            })
            .insert(Header { key: "trident.source.offset", value: Some(&meta.offset.to_string()) })
            .insert(Header { key: "trident.error", value: Some(&error_json(id, reason)) });
        let payload = Payload::Dead {
            key: meta.key.clone(),
            value: std::mem::take(&mut meta.value),
            headers,
        };
        drop(t);
        Self::produce(me, st, ticket, dlq, payload);
    }

    /// One sink confirmed `ticket`; when all have, release it and store the offset it allows.
    fn acked(st: &mut SinkState, ticket: u64) {
        let mut t = st.shared.table.lock().unwrap();
        let Some(meta) = t.metas.get_mut(&ticket) else { return };
        meta.pending = meta.pending.saturating_sub(1);
        if meta.pending > 0 {
            return;
        }
        let meta = t.metas.remove(&ticket).expect("present");
        st.shared.flight.release(1, meta.tokens);
        let Some(part) = t.parts.get_mut(&meta.partition).filter(|p| p.epoch == meta.epoch) else {
            return;
        };
        if let Some(next) = part.tracker.ack(meta.offset) {
            drop(t);
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&st.shared.topic, meta.partition, Offset::Offset(next))
                .is_ok()
            {
                match st.consumer.store_offsets(&tpl) {
                    Ok(()) => st
                        .shared
                        .metrics
                        .stored_offset
                        .with_label_values(&[meta.partition.to_string().as_str()])
                        .set(next),
                    Err(e) => tracing::debug!(
                        "storing offset {next} of partition {}: {e}",
                        meta.partition
                    ),
                }
            }
        }
    }
}

impl Actor for KafkaSink {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkState;

    async fn pre_start(
        &self,
        _me: ActorRef<SinkMsg>,
        st: SinkState,
    ) -> Result<SinkState, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<SinkMsg>,
        msg: SinkMsg,
        st: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Done { ticket, id, outcome: Ok(e), tokens } => {
                {
                    let mut t = st.shared.table.lock().unwrap();
                    let Some(meta) = t.metas.get_mut(&ticket) else { return Ok(()) };
                    meta.tokens = tokens;
                    meta.pending = 1 + st.store.is_some() as u8;
                    meta.value = Vec::new(); // no dead letter for a good record
                }
                if let Some((tx, prefix)) = &st.store {
                    let me2 = me.clone();
                    let w = StoreWrite {
                        key: store_key(prefix, &id),
                        value: encode_value(Some(&id), &e),
                        done: Box::new(move || {
                            let _ = me2.send_message(SinkMsg::Delivered { ticket, ok: true });
                        }),
                    };
                    let _ = tx.send(w);
                }
                let payload = Payload::Output { key: id.as_key(), value: e.to_json(&id) };
                Self::produce(&me, st, ticket, st.output_topic.clone(), payload);
            }
            SinkMsg::Done { ticket, id, outcome: Err(reason), tokens } => {
                if let Some(m) = st.shared.table.lock().unwrap().metas.get_mut(&ticket) {
                    m.tokens = tokens;
                }
                Self::dead_letter(&me, st, ticket, &id, &reason);
            }
            SinkMsg::Bad { ticket, id, reason } => Self::dead_letter(&me, st, ticket, &id, &reason),
            SinkMsg::Delivered { ticket, .. } => Self::acked(st, ticket),
            SinkMsg::End { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
        }
        Ok(())
    }
}

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
    let flight = Arc::new(InFlight::default());
    let shared = Arc::new(Shared {
        table: Mutex::new(Table::default()),
        flight: flight.clone(),
        metrics: metrics.clone(),
        topic: topic.clone(),
        revoke_drain: Duration::from_millis(cfg.revoke_drain_ms),
        closing: std::sync::atomic::AtomicBool::new(false),
    });

    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("queued.max.messages.kbytes", "8192");
    for (k, v) in cfg.kafka.iter().chain(&cfg.kafka_consumer) {
        cc.set(k, kafka_value(v));
    }
    let consumer: Arc<NodeConsumer> = Arc::new(
        cc.create_with_context(NodeContext { shared: shared.clone() })
            .map_err(|e| ClusterError::kafka("creating the consumer", e))?,
    );
    let mut pc = client_config(&cfg, &cfg.kafka_producer);
    if !cfg.kafka.contains_key("linger.ms") && !cfg.kafka_producer.contains_key("linger.ms") {
        pc.set("linger.ms", "5");
    }
    let producer: FutureProducer =
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
    };
    let actor_err = |e: ractor::SpawnErr| ClusterError::Actor(e.to_string());
    let (sink, sink_join) = Actor::spawn(None, KafkaSink, sink_state).await.map_err(actor_err)?;
    let coord_args = CoordinatorArgs {
        pipeline: pipeline.clone(),
        sink: sink.clone(),
        modes: Modes::from_flags(cfg.dense, cfg.sparse, cfg.colbert),
        max_length: cfg.max_length,
        max_record_bytes: cfg.max_record_bytes,
        flight: flight.clone(),
    };
    let (coord, coord_join) =
        Actor::spawn(None, Coordinator, coord_args).await.map_err(actor_err)?;

    // Gauges follow the in-flight counters.
    let gauges = {
        let (flight, metrics) = (flight.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let (r, t) = flight.get();
                metrics.records_in_flight.set(r as i64);
                metrics.tokens_in_flight.set(t as i64);
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
    };
    tracing::info!(
        "node consuming {topic} as group {} (pause above {} tokens / {} records in flight)",
        cfg.group,
        limits.high_tokens,
        limits.max_records
    );
    let mut report = NodeReport::default();
    let mut paused = false;
    let mut last_pause = std::time::Instant::now();
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    const CHUNK: usize = 256;
    'consume: loop {
        // Backpressure.
        if !paused && flight.above_high(&limits) {
            paused = true;
            metrics.pauses.inc();
            metrics.partitions_paused.set(1);
            tracing::info!("pausing input: {:?} (records, tokens) in flight", flight.get());
        } else if paused && flight.below_low(&limits) {
            paused = false;
            metrics.resumes.inc();
            metrics.partitions_paused.set(0);
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.resume(&a);
            }
            tracing::info!("resuming input");
        }
        if paused && last_pause.elapsed() > Duration::from_millis(100) {
            // Re-applied so partitions assigned while paused are paused too.
            if let Ok(a) = consumer.assignment() {
                let _ = consumer.pause(&a);
            }
            last_pause = std::time::Instant::now();
        }
        let mut chunk = Vec::new();
        let first = tokio::select! {
            _ = &mut shutdown => break 'consume,
            m = tokio::time::timeout(Duration::from_millis(if paused { 20 } else { 200 }), consumer.recv()) => m,
        };
        let mut next = first;
        loop {
            match next {
                Err(_) => break, // timeout
                Ok(Err(e)) => {
                    tracing::warn!("consumer: {e}");
                    break;
                }
                Ok(Ok(m)) => {
                    let (p, o) = (m.partition(), m.offset());
                    let key = m.key().map(|k| k.to_vec());
                    let value = m.payload().unwrap_or_default().to_vec();
                    let fallback = match key.as_deref().map(std::str::from_utf8) {
                        Some(Ok(k)) => DocId::Str(k.to_string()),
                        _ => DocId::Str(format!("{}/{p}/{o}", m.topic())),
                    };
                    let ticket = {
                        let mut t = shared.table.lock().unwrap();
                        t.next_ticket += 1;
                        let ticket = t.next_ticket;
                        if !t.parts.contains_key(&p) {
                            t.next_epoch += 1;
                            let epoch = t.next_epoch;
                            t.parts.insert(
                                p,
                                PartState { epoch, tracker: PartitionTracker::default() },
                            );
                        }
                        let part = t.parts.get_mut(&p).expect("inserted");
                        part.tracker.begin(o);
                        let epoch = part.epoch;
                        let value_copy = value.clone();
                        t.metas.insert(
                            ticket,
                            Meta {
                                partition: p,
                                offset: o,
                                epoch,
                                key,
                                value: value_copy,
                                pending: 1,
                                tokens: 0,
                            },
                        );
                        ticket
                    };
                    flight.add_records(1);
                    report.records_in += 1;
                    chunk.push(RawRecord { ticket, bytes: value, fallback_id: fallback });
                }
            }
            if chunk.len() >= CHUNK {
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
    tracing::info!("shutting down: finishing {} records in flight", flight.get().0);
    let _ = coord.send_message(CoordinatorMsg::Flush);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.shutdown_deadline_ms);
    let drained = flight.drain(deadline).await;
    report.unfinished = flight.get().0;
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
