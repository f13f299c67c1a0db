//! Kafka clients to feed a test's topics and read them back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::env::Env;

impl Env {
    /// Produce records to explicit partitions; returns each record's (partition, offset).
    pub fn produce(&self, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
        use std::sync::Arc;
        struct Ctx(Arc<Mutex<HashMap<usize, (i32, i64)>>>);
        impl rdkafka::ClientContext for Ctx {}
        impl rdkafka::producer::ProducerContext for Ctx {
            type DeliveryOpaque = Box<usize>;
            fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, i: Box<usize>) {
                let m = r.as_ref().expect("delivered");
                self.0.lock().unwrap().insert(*i, (m.partition(), m.offset()));
            }
        }
        let map = Arc::new(Mutex::new(HashMap::new()));
        let p: BaseProducer<Ctx> = self
            .client()
            .set("linger.ms", "5")
            .set("message.max.bytes", "4000000") // hostile-record tests send 1 MB+ values
            .create_with_context(Ctx(map.clone()))
            .unwrap();
        for (i, r) in records.iter().enumerate() {
            let mut rec = BaseRecord::with_opaque_to(topic, Box::new(i))
                .payload(&r.value)
                .partition(r.partition);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            let mut rec = Some(rec);
            while let Some(x) = rec.take() {
                if let Err((e, back)) = p.send(x) {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "{e}"
                    );
                    p.poll(Duration::from_millis(10));
                    rec = Some(back);
                }
            }
            p.poll(Duration::ZERO);
        }
        p.flush(Duration::from_secs(30)).expect("flush");
        let m = map.lock().unwrap();
        (0..records.len()).map(|i| m[&i]).collect()
    }

    /// Produce a tombstone (null value) with `key` to `partition`; returns its offset.
    pub fn produce_tombstone(&self, topic: &str, key: &str, partition: i32) -> i64 {
        use rdkafka::producer::FutureRecord;
        let p: rdkafka::producer::FutureProducer = self.client().create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let rec = FutureRecord::<str, [u8]>::to(topic).key(key).partition(partition);
        let d = rt.block_on(p.send(rec, Duration::from_secs(30))).map_err(|(e, _)| e).unwrap();
        d.offset
    }

    /// Read every record of `topic` (all partitions, from the start) until `done(records)` or
    /// the time limit. Panics at the limit with `what`.
    pub fn read_topic(
        &self,
        topic: &str,
        partitions: i32,
        limit: Duration,
        done: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", "trident-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let t0 = Instant::now();
        loop {
            if done(&out) {
                return out;
            }
            assert!(
                t0.elapsed() < limit,
                "reading {topic}: only {} records after {limit:?}",
                out.len()
            );
            while let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.expect("consume");
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or(&[])).to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Out {
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                if out.len() % 512 == 0 {
                    break;
                }
            }
        }
    }

    /// Everything in `topic` now: reads until the broker has had nothing more for a second.
    pub fn read_now(&self, topic: &str, partitions: i32) -> Vec<Out> {
        use std::cell::Cell;
        let quiet_since = Cell::new(Instant::now());
        let last_len = Cell::new(usize::MAX);
        self.read_topic(topic, partitions, Duration::from_secs(60), |o| {
            if o.len() != last_len.get() {
                last_len.set(o.len());
                quiet_since.set(Instant::now());
            }
            quiet_since.get().elapsed() > Duration::from_secs(1)
        })
    }

    /// Committed offsets of a group for a topic's partitions (-1: none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let c: BaseConsumer = self.client().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }
}

/// An input record.
#[derive(Clone, Debug)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub partition: i32,
}

/// A record read back.
#[derive(Clone, Debug)]
pub struct Out {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Out {
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or(&[])).to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("output value is JSON")
    }
}
