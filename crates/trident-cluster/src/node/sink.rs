//! The node's sink actor: publishes results (output topic, result store), dead-letters what
//! cannot be published, acknowledges every record within bounded time and stores the offsets
//! acknowledgements allow.
//!
//! Every record ends in exactly one of: published (output, and store when on), superseded by a
//! newer version of its id, dead-lettered, dropped and counted (no dead-letter topic, or the dead
//! letter itself failed), or discarded because its partition was revoked.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use trident_core::{DocId, Embedding};

use super::table::Shared;
use super::NodeConsumer;
use crate::codec::{encode_versioned, store_key};
use crate::coordinator::SinkMsg;
use crate::dead_letter::{self, Source};
use crate::deliver::{deliver, Message, RateLimited};
use crate::key_order::Verdict;
use crate::store::StoreWrite;

/// Room left in a message for the record's framing and headers.
const MESSAGE_OVERHEAD: usize = 512;

static NO_DLQ_WARN: RateLimited = RateLimited::new(Duration::from_secs(5));

pub(crate) struct KafkaSink;

pub(crate) struct SinkState {
    pub shared: Arc<Shared>,
    pub consumer: Arc<NodeConsumer>,
    pub producer: FutureProducer,
    pub output_topic: String,
    pub dlq_topic: Option<String>,
    pub store: Option<(mpsc::UnboundedSender<StoreWrite>, String)>,
    /// The producer's `message.max.bytes`.
    pub max_message: usize,
    pub dlq_value_bytes: usize,
    pub retry_budget: Duration,
}

/// What a ready result leads to.
enum Next {
    Nothing,
    Finish(Vec<u64>),
    Publish(u64, DocId, Embedding),
    DeadLetter(u64, DocId, String),
}

impl KafkaSink {
    /// A result is ready: publish it, park it behind its id's publication in progress, or
    /// drop it as superseded or revoked.
    fn ready(st: &SinkState, ticket: u64, id: DocId, e: Embedding) -> Next {
        let mut t = st.shared.table.lock().unwrap();
        let Some(m) = t.metas.get(&ticket) else { return Next::Nothing };
        if !t.owned(m) {
            st.shared.metrics.records_revoked.inc();
            return Next::Finish(vec![ticket]);
        }
        let (epoch, offset) = (m.epoch, m.offset);
        let key = m.id_key.clone().unwrap_or_else(|| id.as_key());
        let (verdict, replaced) = t.order.ready(epoch, &key, offset, ticket);
        let mut finish = Vec::new();
        if let Some(old) = replaced {
            t.parked.remove(&old);
            st.shared.metrics.records_superseded.inc();
            finish.push(old);
        }
        match verdict {
            Verdict::Superseded => {
                st.shared.metrics.records_superseded.inc();
                finish.push(ticket);
                Next::Finish(finish)
            }
            Verdict::Park => {
                t.parked.insert(ticket, (id, e));
                Next::Finish(finish)
            }
            Verdict::Publish => {
                drop(t);
                for old in finish {
                    Self::finish(st, old, None);
                }
                Next::Publish(ticket, id, e)
            }
        }
    }

    fn run(me: &ActorRef<SinkMsg>, st: &SinkState, next: Next) {
        match next {
            Next::Nothing => {}
            Next::Finish(tickets) => {
                tickets.into_iter().for_each(|t| Self::finish(st, t, Some(me)))
            }
            Next::Publish(ticket, id, e) => Self::publish(me, st, ticket, id, e),
            Next::DeadLetter(ticket, id, reason) => {
                Self::dead_letter(me, st, ticket, &id, &reason, true)
            }
        }
    }

    /// Output topic (whole, or without ColBERT rows when only the store can hold them, or a
    /// dead letter when nothing fits) and result store.
    fn publish(me: &ActorRef<SinkMsg>, st: &SinkState, ticket: u64, id: DocId, e: Embedding) {
        let (partition, offset) = {
            let mut t = st.shared.table.lock().unwrap();
            let Some(m) = t.metas.get_mut(&ticket) else { return };
            m.publishing = true;
            m.pending = 1 + st.store.is_some() as u8;
            (m.partition, m.offset)
        };
        let key = id.as_key();
        let fits = |n: usize| n + key.len() + MESSAGE_OVERHEAD <= st.max_message;
        let mut json = e.to_json(&id);
        let full = json.len();
        if !fits(full) && st.store.is_some() && e.colbert.is_some() {
            let slim = Embedding {
                tokens: e.tokens,
                truncated: e.truncated,
                dense: e.dense.clone(),
                sparse: e.sparse.clone(),
                colbert: None,
                colbert_dim: e.colbert_dim,
            };
            let mut v = slim.to_json_value(&id);
            v["colbert_in_store"] = serde_json::Value::Bool(true);
            json = v.to_string();
            if fits(json.len()) {
                st.shared.metrics.outputs_slimmed.inc();
            }
        }
        if let Some((tx, prefix)) = &st.store {
            let me2 = me.clone();
            let _ = tx.send(StoreWrite {
                key: store_key(prefix, &id),
                value: encode_versioned(Some(&id), &e, Some((partition, offset))),
                done: Box::new(move || {
                    let _ = me2.send_message(SinkMsg::Delivered { ticket, ok: true });
                }),
            });
        }
        drop(e);
        if !fits(json.len()) {
            let reason = format!(
                "output_too_large: the result is {full} bytes as JSON, over the producer's \
                 message.max.bytes of {}{}",
                st.max_message,
                if st.store.is_some() { " (stored in full in the result store)" } else { "" }
            );
            return Self::dead_letter(me, st, ticket, &id, &reason, false);
        }
        let (producer, topic, budget) =
            (st.producer.clone(), st.output_topic.clone(), st.retry_budget);
        let (me, metrics) = (me.clone(), st.shared.metrics.clone());
        tokio::spawn(async move {
            let msg = Message {
                topic: &topic,
                key: Some(key.as_bytes()),
                value: json.as_bytes(),
                headers: &[],
            };
            match deliver(&producer, &msg, budget, &metrics).await {
                Ok(()) => {
                    metrics.records_out.inc();
                    let _ = me.send_message(SinkMsg::Delivered { ticket, ok: true });
                }
                Err(e) => {
                    let reason = format!("output not produced to {topic}: {e}");
                    let _ = me.send_message(SinkMsg::Undeliverable { ticket, id, reason });
                }
            }
        });
    }

    /// Send the record to the dead-letter topic (small, with its reason); without one, or when
    /// the dead letter itself fails, count it as dropped. Either way it is acknowledged.
    /// `reset` makes the dead letter the record's only pending sink.
    fn dead_letter(
        me: &ActorRef<SinkMsg>,
        st: &SinkState,
        ticket: u64,
        id: &DocId,
        reason: &str,
        reset: bool,
    ) {
        let metrics = st.shared.metrics.clone();
        metrics.records_failed.inc();
        let mut t = st.shared.table.lock().unwrap();
        let Some(m) = t.metas.get_mut(&ticket) else { return };
        if reset {
            m.pending = 1;
        }
        let (p, o) = (m.partition, m.offset);
        let Some(dlq) = st.dlq_topic.clone() else {
            drop(t);
            metrics.records_dropped.with_label_values(&["no_dead_letter_topic"]).inc();
            NO_DLQ_WARN.warn(&format!(
                "record {}/{p}/{o} (id {}) skipped, no dead-letter topic: {reason}",
                st.shared.topic,
                dead_letter::cut_str(&id.as_key(), 128)
            ));
            return Self::finish(st, ticket, Some(me));
        };
        let src = Source { topic: &st.shared.topic, partition: p, offset: o };
        let dl =
            dead_letter::build(&src, id, reason, m.key.as_deref(), &m.value, st.dlq_value_bytes);
        m.value = Arc::from(&[][..]); // no later use: let its memory go
        drop(t);
        let (producer, budget, me) = (st.producer.clone(), st.retry_budget, me.clone());
        let source = st.shared.topic.clone();
        tokio::spawn(async move {
            let msg = Message {
                topic: &dlq,
                key: dl.key.as_deref(),
                value: &dl.value,
                headers: &dl.headers,
            };
            match deliver(&producer, &msg, budget, &metrics).await {
                Ok(()) => metrics.records_dead_lettered.inc(),
                Err(e) => {
                    metrics.records_dropped.with_label_values(&["dead_letter_failed"]).inc();
                    tracing::error!(
                        "record {source}/{p}/{o} dropped: its dead letter to {dlq} failed ({e}); \
                         it was dead-lettered because: {}",
                        dead_letter::cut_str(&dl.headers[0].1, 256)
                    );
                }
            }
            let _ = me.send_message(SinkMsg::Delivered { ticket, ok: true });
        });
    }

    /// One sink confirmed `ticket`; when all have, release it, store the offset it allows, and
    /// publish the result of its id that waited for it. `me` is needed for that last step.
    fn finish(st: &SinkState, ticket: u64, me: Option<&ActorRef<SinkMsg>>) {
        let mut t = st.shared.table.lock().unwrap();
        let Some(m) = t.metas.get_mut(&ticket) else { return };
        m.pending = m.pending.saturating_sub(1);
        if m.pending > 0 {
            return;
        }
        let m = t.metas.remove(&ticket).expect("present");
        st.shared.flight.release(1, m.tokens, m.bytes);
        let next = match (&m.id_key, m.publishing) {
            (Some(k), true) => t.order.published(m.epoch, k),
            _ => None,
        };
        let parked = next.and_then(|n| t.parked.remove(&n).map(|(id, e)| (n, id, e)));
        let store = if t.owned(&m) {
            let part = t.parts.get_mut(&m.partition).expect("owned");
            part.tracker.ack(m.offset)
        } else {
            None
        };
        drop(t);
        if let Some(next) = store {
            Self::store_offset(st, m.partition, next);
        }
        if let (Some((n, id, e)), Some(me)) = (parked, me) {
            Self::publish(me, st, n, id, e);
        }
    }

    fn store_offset(st: &SinkState, partition: i32, next: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(&st.shared.topic, partition, Offset::Offset(next)).is_err() {
            return;
        }
        match st.consumer.store_offsets(&tpl) {
            Ok(()) => st
                .shared
                .metrics
                .stored_offset
                .with_label_values(&[partition.to_string().as_str()])
                .set(next),
            Err(e) => tracing::debug!("storing offset {next} of partition {partition}: {e}"),
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
        let next = match msg {
            SinkMsg::Decoded(ids) => {
                let mut t = st.shared.table.lock().unwrap();
                for (ticket, key) in ids {
                    let Some(m) = t.metas.get_mut(&ticket) else { continue };
                    m.id_key = Some(key.clone());
                    let (epoch, offset) = (m.epoch, m.offset);
                    t.order.decoded(epoch, &key, offset);
                }
                Next::Nothing
            }
            SinkMsg::Done { ticket, id, outcome, tokens } => {
                let owned = {
                    let mut t = st.shared.table.lock().unwrap();
                    let Some(m) = t.metas.get_mut(&ticket) else { return Ok(()) };
                    m.tokens = tokens;
                    let (epoch, offset, key) = (m.epoch, m.offset, m.id_key.clone());
                    let owned = t.metas.get(&ticket).is_some_and(|m| t.owned(m));
                    if let (true, Err(_), Some(k)) = (owned, &outcome, key) {
                        t.order.failed(epoch, &k, offset);
                    }
                    owned
                };
                match outcome {
                    _ if !owned => {
                        st.shared.metrics.records_revoked.inc();
                        Next::Finish(vec![ticket])
                    }
                    Ok(e) => Self::ready(st, ticket, id, e),
                    Err(reason) => Next::DeadLetter(ticket, id, reason),
                }
            }
            SinkMsg::Bad { ticket, id, reason } => Next::DeadLetter(ticket, id, reason),
            SinkMsg::Undeliverable { ticket, id, reason } => {
                Self::dead_letter(&me, st, ticket, &id, &reason, false);
                Next::Nothing
            }
            SinkMsg::Delivered { ticket, .. } => Next::Finish(vec![ticket]),
            SinkMsg::End { reply, .. } => {
                let _ = reply.send(Ok(()));
                Next::Nothing
            }
        };
        Self::run(&me, st, next);
        Ok(())
    }
}
