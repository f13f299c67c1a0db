//! The node's acknowledgement counting, driven through the real sink actor with no broker: the
//! consumer and producer point at a closed port, so nothing is ever delivered. A record is fed
//! as the source would (entered in the table and counted in flight) and then finished with the
//! messages the coordinator sends; the tests check which offsets become committable, what is
//! released from flight and how each ending is counted.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::config::ClientConfig;
use trident_engine::flight::{Counts, InFlight};
use trident_engine::{JobError, Metrics};

use super::super::table::Table;
use super::super::NodeContext;
use super::*;

/// Nothing listens here: connections are refused at once.
const NO_BROKER: &str = "127.0.0.1:1";

struct Rig {
    shared: Arc<Shared>,
    sink: ActorRef<SinkMsg>,
    /// The token estimate each ticket entered with.
    est: Mutex<std::collections::HashMap<u64, usize>>,
}

async fn rig(dlq: Option<&str>, budget: Duration) -> Rig {
    let shared = Arc::new(Shared {
        table: Mutex::new(Table::default()),
        flight: Arc::new(InFlight::default()),
        metrics: Metrics::new(),
        topic: "in".into(),
        revoke_drain: Duration::ZERO,
        closing: AtomicBool::new(false),
        assigned: AtomicBool::new(false),
    });
    let consumer: NodeConsumer = ClientConfig::new()
        .set("bootstrap.servers", NO_BROKER)
        .set("group.id", "ack-tests")
        .set("enable.auto.offset.store", "false")
        .set("log_level", "0")
        .create_with_context(NodeContext { shared: shared.clone() })
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", NO_BROKER)
        .set("message.timeout.ms", budget.as_millis().to_string())
        .set("log_level", "0")
        .create()
        .unwrap();
    let st = SinkState {
        shared: shared.clone(),
        consumer: Arc::new(consumer),
        producer,
        output_topic: "out".into(),
        dlq_topic: dlq.map(str::to_string),
        store: None,
        max_message: 1_000_000,
        dlq_value_bytes: 4096,
        retry_budget: budget,
        format: Format::Json,
        encoding: Encoding::default(),
        placement: ColbertPlacement::Auto,
        qdrant_collection: "c".into(),
    };
    let (sink, _) = Actor::spawn(None, KafkaSink, st).await.unwrap();
    Rig { shared, sink, est: Mutex::default() }
}

impl Rig {
    /// Take a record as the source does (counted in flight with an estimate of its tokens);
    /// returns its ticket.
    fn take(&self, partition: i32, offset: i64, est: usize) -> u64 {
        let value: Arc<[u8]> = Arc::from(format!("value at {offset}").as_bytes());
        let bytes = value.len();
        let ticket =
            self.shared.table.lock().unwrap().take(partition, offset, None, value, est, bytes);
        self.shared.flight.take(1, est, bytes);
        self.est.lock().unwrap().insert(ticket, est);
        ticket
    }

    /// The coordinator replaces a record's estimate by its real token count (0 for a bad one)
    /// before it tells the sink.
    fn correct(&self, ticket: u64, actual: usize) {
        let est = self.est.lock().unwrap()[&ticket];
        self.shared.flight.correct_tokens(est, actual);
    }

    fn send(&self, msg: SinkMsg) {
        self.sink.send_message(msg).unwrap();
    }

    fn decoded(&self, ids: &[(u64, &str)]) {
        self.send(SinkMsg::Decoded(ids.iter().map(|&(t, k)| (t, k.to_string())).collect()));
    }

    fn done(&self, ticket: u64, id: &str, outcome: Result<Embedding, JobError>, tokens: usize) {
        self.correct(ticket, tokens);
        self.send(SinkMsg::Done { ticket, id: DocId::from(id), outcome, tokens });
    }

    fn bad(&self, ticket: u64, reason: &str) {
        self.correct(ticket, 0);
        self.send(SinkMsg::Bad { ticket, id: DocId::from(ticket), reason: reason.into() });
    }

    fn tokens_in_flight(&self) -> usize {
        self.shared.flight.counts().tokens
    }

    fn finished(&self, ticket: u64) -> bool {
        !self.shared.table.lock().unwrap().metas.contains_key(&ticket)
    }

    /// Wait (bounded) until `tickets` are all acknowledged (gone from the table).
    async fn until_finished(&self, tickets: &[u64]) {
        let t = Instant::now();
        while !tickets.iter().all(|&k| self.finished(k)) {
            assert!(t.elapsed() < Duration::from_secs(10), "tickets {tickets:?} never finished");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The offset partition `p` may commit (the next one to consume).
    fn stored(&self, p: i32) -> Option<i64> {
        self.shared.table.lock().unwrap().parts.get(&p).and_then(|s| s.tracker.stored())
    }

    fn in_flight(&self, p: i32) -> usize {
        self.shared.part_in_flight(&[p])
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn dropped(&self, why: &str) -> u64 {
        self.metrics().records_dropped.with_label_values(&[why]).get()
    }
}

fn embedding() -> Embedding {
    Embedding {
        tokens: 3,
        truncated: false,
        dense: Some(vec![0.5, 0.5]),
        sparse: None,
        colbert: None,
        colbert_dim: 1,
    }
}

fn poison() -> JobError {
    JobError::Poison { attempts: 2, workers: "w0, w1".into(), reason: "boom".into() }
}

/// Records finish in any order; the committable offset only ever covers the contiguous prefix
/// of finished ones. Bad records, encoder failures and tombstones all count as finished (with
/// no dead-letter topic: dropped and counted), and everything they held in flight is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_endings_commit_only_the_finished_prefix() {
    let r = rig(None, Duration::from_millis(150)).await;
    // 101 is a tombstone: the source counts it with no tokens and acknowledges it itself.
    let tickets: Vec<u64> =
        (100..105).map(|o| r.take(0, o, if o == 101 { 0 } else { 10 })).collect();
    let other = r.take(1, 7, 4);
    assert_eq!(r.stored(0), Some(100), "consumption started at 100: nothing to commit yet");

    r.bad(tickets[2], "not valid JSON");
    r.until_finished(&[tickets[2]]).await;
    assert_eq!(r.stored(0), Some(100), "102 finished but 100 and 101 have not");
    assert_eq!(r.in_flight(0), 4);

    r.decoded(&[(tickets[0], "a")]);
    r.done(tickets[0], "a", Err(poison()), 6);
    r.until_finished(&[tickets[0]]).await;
    assert_eq!(r.stored(0), Some(101));

    r.send(SinkMsg::Delivered { ticket: tickets[1], ok: true });
    r.until_finished(&[tickets[1]]).await;
    assert_eq!(r.stored(0), Some(103), "101 and the already finished 102");

    r.bad(tickets[4], "oversize");
    r.until_finished(&[tickets[4]]).await;
    assert_eq!(r.stored(0), Some(103));
    r.bad(tickets[3], "oversize");
    r.until_finished(&[tickets[3]]).await;
    assert_eq!(r.stored(0), Some(105), "one past the last offset");
    assert_eq!(r.in_flight(0), 0);
    assert_eq!(r.stored(1), Some(7), "partition 1 is tracked on its own");
    assert_eq!(r.in_flight(1), 1);

    r.bad(other, "x");
    r.until_finished(&[other]).await;
    assert_eq!(r.stored(1), Some(8));
    assert_eq!(r.shared.flight.counts(), Counts::default(), "everything released");
    assert_eq!(r.metrics().records_failed.get(), 5, "4 bad records and 1 encoder failure");
    assert_eq!(r.dropped("no_dead_letter_topic"), 5);
    assert_eq!(r.metrics().records_out.get(), 0);
}

/// The tokens in flight are always those of the records not yet finished: what a finished
/// record releases is what it still counted. A bad record's estimate is taken back by the
/// coordinator (`correct_tokens(est, 0)`); the sink must not release it a second time (it
/// did: the count fell below the tokens really in flight and bad input weakened the token
/// backpressure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_record_releases_exactly_the_tokens_it_still_held() {
    let r = rig(None, Duration::from_millis(150)).await;
    let (failed, bad, waiting) = (r.take(0, 0, 10), r.take(0, 1, 10), r.take(0, 2, 10));
    r.decoded(&[(failed, "f")]);
    r.done(failed, "f", Err(poison()), 7);
    r.until_finished(&[failed]).await;
    assert_eq!(r.tokens_in_flight(), 20, "the encoder failure released its 7 real tokens");
    r.bad(bad, "not valid JSON");
    r.until_finished(&[bad]).await;
    assert_eq!(r.tokens_in_flight(), 10, "only the waiting record's tokens are left");
    r.bad(waiting, "x");
    r.until_finished(&[waiting]).await;
    assert_eq!(r.tokens_in_flight(), 0);
}

/// An old version of an id whose newer version is still coming is acknowledged without being
/// published; a failed newer version makes an older result stale all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_results_are_acknowledged_without_publishing() {
    let r = rig(None, Duration::from_millis(150)).await;
    let (old, new, older_b, newer_b) =
        (r.take(0, 10, 5), r.take(0, 11, 5), r.take(0, 12, 5), r.take(0, 13, 5));
    r.decoded(&[(old, "a"), (new, "a"), (older_b, "b"), (newer_b, "b")]);
    r.done(old, "a", Ok(embedding()), 5);
    r.until_finished(&[old]).await;
    assert_eq!(r.metrics().records_superseded.get(), 1);
    assert_eq!(r.metrics().records_failed.get(), 0, "superseded is not a failure");
    assert_eq!(r.stored(0), Some(11));

    r.done(newer_b, "b", Err(poison()), 5);
    r.until_finished(&[newer_b]).await;
    r.done(older_b, "b", Ok(embedding()), 5);
    r.until_finished(&[older_b]).await;
    assert_eq!(r.metrics().records_superseded.get(), 2, "b@12 is older than the failed b@13");
    assert_eq!(r.stored(0), Some(11), "11 is still in flight");

    r.done(new, "a", Err(poison()), 5);
    r.until_finished(&[new]).await;
    assert_eq!(r.stored(0), Some(14));
    assert_eq!(r.metrics().records_failed.get(), 2);
    assert_eq!(r.metrics().records_out.get(), 0);
    assert_eq!(r.shared.flight.counts(), Counts::default());
    assert_eq!(r.shared.table.lock().unwrap().order.tracked(), 0, "no per-id state left");
}

/// With the broker gone, a result that cannot be produced ends within the retry budget: it is
/// failed over to the dead letters (dropped and counted without a dead-letter topic, or when
/// the dead letter fails too) and still acknowledged, so its partition moves on. A newer result
/// of the same id waits for that publication and goes the same way after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_result_is_acknowledged_within_the_retry_budget() {
    for dlq in [None, Some("dead")] {
        let budget = Duration::from_millis(150);
        let r = rig(dlq, budget).await;
        let (first, second) = (r.take(3, 40, 8), r.take(3, 41, 8));
        r.decoded(&[(first, "k")]);
        let t0 = Instant::now();
        r.done(first, "k", Ok(embedding()), 8);
        // The first publication is in progress; a newer version of the id waits for it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!r.finished(first), "{dlq:?}: the publication takes up to the budget");
        r.decoded(&[(second, "k")]);
        r.done(second, "k", Ok(embedding()), 8);
        r.until_finished(&[first, second]).await;
        let took = t0.elapsed();
        let rounds = if dlq.is_some() { 4 } else { 2 }; // output (+ dead letter) for each
        assert!(took >= budget, "{dlq:?}: finished before any delivery could fail: {took:?}");
        assert!(
            took < budget * rounds + Duration::from_secs(2),
            "{dlq:?}: {took:?} for {rounds} rounds of a {budget:?} budget"
        );
        assert_eq!(r.stored(3), Some(42), "{dlq:?}");
        assert_eq!(r.metrics().records_failed.get(), 2, "{dlq:?}");
        let why = if dlq.is_some() { "dead_letter_failed" } else { "no_dead_letter_topic" };
        assert_eq!(r.dropped(why), 2, "{dlq:?}");
        assert_eq!(r.metrics().records_out.get(), 0);
        assert_eq!(r.metrics().records_dead_lettered.get(), 0);
        assert_eq!(r.metrics().records_superseded.get(), 0, "41 was parked, not superseded");
        assert_eq!(r.shared.flight.counts(), Counts::default());
    }
}

/// Results of a revoked partition are discarded and counted, never acknowledged against the
/// partition's new assignment; a result parked behind a publication is released by the revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_a_revoked_partition_are_discarded_not_acknowledged() {
    let r = rig(None, Duration::from_millis(600)).await;
    let (publishing, parked, plain) = (r.take(2, 50, 3), r.take(2, 51, 3), r.take(2, 52, 3));
    r.decoded(&[(publishing, "p"), (plain, "q")]);
    r.done(publishing, "p", Ok(embedding()), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.decoded(&[(parked, "p")]);
    r.done(parked, "p", Ok(embedding()), 3);
    let t = Instant::now();
    while !r.shared.table.lock().unwrap().parked.contains_key(&parked) {
        assert!(t.elapsed() < Duration::from_secs(5), "51 was never parked");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!r.finished(publishing), "the publication of 50 is still in progress");

    r.shared.revoke(&[2]);
    assert!(r.finished(parked), "the revoke released the parked result");
    assert_eq!(r.metrics().records_revoked.get(), 1);
    assert_eq!(r.stored(2), None, "the partition is no longer tracked");

    // The partition comes back (a new assignment) and 52 is consumed again.
    r.shared.table.lock().unwrap().assign(2);
    let again = r.take(2, 52, 3);
    assert_eq!(r.stored(2), Some(52));

    // The old assignment's results arrive: discarded, and they commit nothing.
    r.done(plain, "q", Ok(embedding()), 3);
    r.until_finished(&[plain, publishing]).await;
    assert_eq!(r.metrics().records_revoked.get(), 2);
    assert_eq!(r.stored(2), Some(52), "an old assignment's result committed nothing");
    assert_eq!(r.in_flight(2), 1);

    r.bad(again, "x");
    r.until_finished(&[again]).await;
    assert_eq!(r.stored(2), Some(53));
    assert_eq!(r.shared.flight.counts(), Counts::default(), "everything released once");
}
