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
use trident_core::{ColbertNote, DocId, Embedding, Encoding, Format, Record};

use super::consumer::NodeConsumer;
use super::table::Shared;
use crate::config::ColbertPlacement;
use crate::dead_letter::{self, Source};
use crate::deliver::{deliver, Message, RateLimited};
use crate::key_order::Verdict;
use trident_engine::codec::store_key;
use trident_engine::coordinator::SinkMsg;
use trident_engine::store::StoreWrite;

#[cfg(test)]
mod ack_tests;

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
    pub format: Format,
    pub encoding: Encoding,
    pub placement: ColbertPlacement,
    pub qdrant_collection: String,
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

    /// The output message (with its ColBERT rows, without them and saying where they went,
    /// or a dead letter when nothing fits), the ColBERT message on its own topic, and the
    /// result store — each sized before it is produced.
    fn publish(me: &ActorRef<SinkMsg>, st: &SinkState, ticket: u64, id: DocId, mut e: Embedding) {
        let (partition, offset) = {
            let t = st.shared.table.lock().unwrap();
            let Some(m) = t.metas.get(&ticket) else { return };
            (m.partition, m.offset)
        };
        st.encoding.apply(&mut e);
        let key = id.as_key();
        let fits = |n: usize| n + key.len() + MESSAGE_OVERHEAD <= st.max_message;
        let record = |e: &Embedding, note: Option<&ColbertNote>, format: Format| {
            let r = Record { id: &id, e, enc: st.encoding, note, version: None };
            match format {
                Format::Qdrant => r.qdrant(Some(&st.qdrant_collection)).into_bytes(),
                _ => r.write(format),
            }
        };
        let placer = Placer {
            placement: &st.placement,
            format: st.format,
            store: st.store.is_some(),
            max_message: st.max_message,
        };
        let placed = placer.place(&e, &fits, &record);
        let m = &st.shared.metrics;
        match &placed.note {
            Some(ColbertNote::InStore) if st.placement != ColbertPlacement::Store => {
                m.outputs_slimmed.inc()
            }
            Some(ColbertNote::Omitted(_)) => m.outputs_colbert_omitted.inc(),
            Some(ColbertNote::Topic(_)) => m.outputs_colbert_topic.inc(),
            _ => {}
        }
        let (value, colbert_msg) = (placed.output, placed.colbert);
        let (full, value) = match value {
            Ok(v) => (0, v),
            Err(full) => (full, Vec::new()),
        };
        {
            let mut t = st.shared.table.lock().unwrap();
            let Some(m) = t.metas.get_mut(&ticket) else { return };
            m.publishing = true;
            m.pending = 1 + st.store.is_some() as u8 + colbert_msg.is_some() as u8;
        }
        if let Some((tx, prefix)) = &st.store {
            let me2 = me.clone();
            let stored = Record {
                id: &id,
                e: &e,
                enc: st.encoding,
                note: None,
                version: Some((partition, offset)),
            };
            let _ = tx.send(StoreWrite {
                key: store_key(prefix, &id),
                value: stored.write(Format::Msgpack),
                done: Box::new(move || {
                    let _ = me2.send_message(SinkMsg::Delivered { ticket, ok: true });
                }),
            });
        }
        drop(e);
        if let Some((topic, bytes)) = colbert_msg {
            Self::produce(me, st, ticket, &id, topic, bytes, false);
        }
        if full > 0 {
            let reason = format!(
                "output_too_large: the result is {full} bytes as {}, over the producer's \
                 message.max.bytes of {}{}",
                st.format,
                st.max_message,
                if st.store.is_some() { " (stored in full in the result store)" } else { "" }
            );
            return Self::dead_letter(me, st, ticket, &id, &reason, false);
        }
        Self::produce(me, st, ticket, &id, st.output_topic.clone(), value, true);
    }

    /// Produce one message of `ticket` (`output`: the output message, counted as published).
    fn produce(
        me: &ActorRef<SinkMsg>,
        st: &SinkState,
        ticket: u64,
        id: &DocId,
        topic: String,
        value: Vec<u8>,
        output: bool,
    ) {
        let (producer, budget) = (st.producer.clone(), st.retry_budget);
        let (me, metrics, id) = (me.clone(), st.shared.metrics.clone(), id.clone());
        tokio::spawn(async move {
            let key = id.as_key();
            let msg =
                Message { topic: &topic, key: Some(key.as_bytes()), value: &value, headers: &[] };
            match deliver(&producer, &msg, budget, &metrics).await {
                Ok(()) => {
                    if output {
                        metrics.records_out.inc();
                    }
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

/// Decides where a result's ColBERT rows go and builds the messages (pure: no I/O).
struct Placer<'a> {
    placement: &'a ColbertPlacement,
    format: Format,
    store: bool,
    max_message: usize,
}

/// The output message's bytes (`Err`: the size of an output that fits nowhere), the ColBERT
/// message for its own topic, and what the output says about the rows.
struct Placed {
    output: Result<Vec<u8>, usize>,
    colbert: Option<(String, Vec<u8>)>,
    note: Option<ColbertNote>,
}

type RecordFn<'a> = dyn Fn(&Embedding, Option<&ColbertNote>, Format) -> Vec<u8> + 'a;

impl Placer<'_> {
    fn place(&self, e: &Embedding, fits: &dyn Fn(usize) -> bool, record: &RecordFn) -> Placed {
        let slim = || e.clone_without_colbert();
        let checked = |bytes: Vec<u8>| if fits(bytes.len()) { Ok(bytes) } else { Err(bytes.len()) };
        let with_note = |note: ColbertNote, colbert: Option<(String, Vec<u8>)>| Placed {
            output: checked(record(&slim(), Some(&note), self.format)),
            colbert,
            note: Some(note),
        };
        let plain = |e: &Embedding| Placed {
            output: checked(record(e, None, self.format)),
            colbert: None,
            note: None,
        };
        // Over the limit with no store: left out, and the message says why.
        let omitted = |size: usize| {
            ColbertNote::Omitted(format!(
                "{size} bytes with ColBERT rows, over the producer's message.max.bytes of {} \
                 with no result store",
                self.max_message
            ))
        };
        if e.colbert.is_none() || !self.format.carries_colbert() {
            return if e.colbert.is_some() { plain(&slim()) } else { plain(e) };
        }
        match self.placement {
            ColbertPlacement::Topic => plain(e),
            ColbertPlacement::None => plain(&slim()),
            ColbertPlacement::Store => with_note(ColbertNote::InStore, None),
            ColbertPlacement::Auto => {
                let full = record(e, None, self.format);
                if fits(full.len()) {
                    return Placed { output: Ok(full), colbert: None, note: None };
                }
                let note = if self.store { ColbertNote::InStore } else { omitted(full.len()) };
                with_note(note, None)
            }
            ColbertPlacement::OwnTopic(topic) => {
                // The ColBERT message: the id, counts and rows, in the output's format
                // (JSON for the store feeds, which have no ColBERT-only shape).
                let cb_format =
                    if self.format.is_binary() { Format::Msgpack } else { Format::Json };
                let only = Embedding { dense: None, sparse: None, ..e.clone() };
                let cb = record(&only, None, cb_format);
                if fits(cb.len()) {
                    with_note(ColbertNote::Topic(topic.clone()), Some((topic.clone(), cb)))
                } else if self.store {
                    with_note(ColbertNote::InStore, None)
                } else {
                    with_note(omitted(cb.len()), None)
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
                    Err(reason) => Next::DeadLetter(ticket, id, reason.to_string()),
                }
            }
            SinkMsg::Bad { ticket, id, reason } => {
                // The coordinator already took this record's estimate back from the flight
                // count: it holds no tokens now.
                if let Some(m) = st.shared.table.lock().unwrap().metas.get_mut(&ticket) {
                    m.tokens = 0;
                }
                Next::DeadLetter(ticket, id, reason)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use trident_core::output::read_msgpack;
    use trident_core::Encoding;

    fn result(rows: usize) -> Embedding {
        Embedding {
            tokens: rows + 1,
            truncated: false,
            dense: Some(vec![0.5; 8]),
            sparse: Some(vec![(5, 0.25)]),
            colbert: Some(vec![0.125; rows * 8]),
            colbert_dim: 8,
        }
    }

    /// Every placement, with and without a store, for a result that fits and one that does not:
    /// no output over the limit unless the placement is `topic` (which then dead-letters).
    #[test]
    fn placements_never_exceed_the_limit() {
        let id = DocId::from("d");
        let enc = Encoding::default();
        let record = |e: &Embedding, note: Option<&ColbertNote>, f: Format| {
            Record { id: &id, e, enc, note, version: None }.write(f)
        };
        let limit = 2000;
        let fits = |n: usize| n <= limit;
        let cb = ColbertPlacement::OwnTopic("cb".into());
        let all = [
            ColbertPlacement::Auto,
            ColbertPlacement::Topic,
            ColbertPlacement::Store,
            cb.clone(),
            ColbertPlacement::None,
        ];
        for format in [Format::Json, Format::Msgpack, Format::Qdrant, Format::Milvus] {
            for placement in &all {
                for store in [false, true] {
                    for rows in [2, 400] {
                        let p = Placer { placement, format, store, max_message: limit };
                        let e = result(rows);
                        let out = p.place(&e, &fits, &record);
                        let what = format!("{format} {placement:?} store={store} rows={rows}");
                        let big = rows > 2;
                        match (&out.output, placement) {
                            (Err(_), ColbertPlacement::Topic)
                                if big && format.carries_colbert() => {}
                            (Err(n), _) => panic!("{what}: nothing fits ({n} bytes)"),
                            (Ok(v), _) => assert!(v.len() <= limit, "{what}"),
                        }
                        if let Some((t, v)) = &out.colbert {
                            assert_eq!(t, "cb");
                            assert!(v.len() <= limit, "{what}");
                        }
                        let expect = match (format.carries_colbert(), placement, store, big) {
                            (false, ..) => None,
                            (_, ColbertPlacement::Auto, _, false) => None,
                            (_, ColbertPlacement::Topic | ColbertPlacement::None, ..) => None,
                            (_, ColbertPlacement::Store, ..) => Some(ColbertNote::InStore),
                            (_, ColbertPlacement::OwnTopic(_), _, false) => {
                                Some(ColbertNote::Topic("cb".into()))
                            }
                            (_, _, true, true) => Some(ColbertNote::InStore),
                            (_, _, false, true) => out.note.clone().filter(
                                |n| matches!(n, ColbertNote::Omitted(w) if w.contains("2000")),
                            ),
                        };
                        assert_eq!(out.note, expect, "{what}");
                        if format == Format::Msgpack {
                            if let Ok(v) = &out.output {
                                let d = read_msgpack(v).unwrap();
                                assert_eq!(d.note, out.note, "{what}: the output says so");
                                let inline = out.note.is_none()
                                    && !matches!(placement, ColbertPlacement::None);
                                assert_eq!(d.e.colbert.is_some(), inline, "{what}");
                            }
                        }
                    }
                }
            }
        }
    }
}
