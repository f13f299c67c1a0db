//! The coordinator actor in front of a real pipeline (the tiny tokenizer, stub workers) and a
//! recording sink actor: what reaches the sink, in which order, and what is counted in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use trident_core::batch::BatchPolicy;
use trident_core::{DocId, Embedding, Modes};
use trident_model::Tokenizer;

use super::{Coordinator, CoordinatorArgs, CoordinatorMsg, DocRecord, RawRecord, SinkMsg};
use crate::flight::{estimate_tokens, InFlight};
use crate::job::JobError;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::testing::{stub_worker, CallLog, Faults};
use crate::{Cache, Metrics};

/// A sink that forwards every message to the test.
struct Recorder;

impl Actor for Recorder {
    type Msg = SinkMsg;
    type State = mpsc::UnboundedSender<SinkMsg>;
    type Arguments = mpsc::UnboundedSender<SinkMsg>;

    async fn pre_start(
        &self,
        _me: ActorRef<SinkMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _me: ActorRef<SinkMsg>,
        msg: SinkMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}

fn tokenizer() -> Tokenizer {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3");
    Tokenizer::from_dir(&dir).unwrap()
}

const MAX_LENGTH: usize = 32;
const MAX_BYTES: usize = 256;

struct Rig {
    pipeline: Pipeline,
    coord: ActorRef<CoordinatorMsg>,
    rx: mpsc::UnboundedReceiver<SinkMsg>,
    flight: Arc<InFlight>,
}

async fn rig(reject_blank: bool, cache: Option<Cache>, modes: Modes) -> Rig {
    let policy = BatchPolicy {
        batch_tokens: 64,
        max_wait: Duration::from_millis(2),
        ..BatchPolicy::default()
    };
    let cfg = PipelineConfig { policy, key_prefix: "t".into(), model_fingerprint: "f".into() };
    let log = CallLog::default();
    let workers = (0..2).map(|w| stub_worker(w, Faults::default(), log.clone())).collect();
    let pipeline = Pipeline::start(cfg, tokenizer(), workers, cache, Metrics::new()).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (sink, _) = Actor::spawn(None, Recorder, tx).await.unwrap();
    let flight = Arc::new(InFlight::default());
    let args = CoordinatorArgs {
        pipeline: pipeline.clone(),
        sink,
        modes,
        max_length: MAX_LENGTH,
        max_record_bytes: MAX_BYTES,
        reject_blank,
        flight: flight.clone(),
    };
    let (coord, _) = Actor::spawn(None, Coordinator, args).await.unwrap();
    Rig { pipeline, coord, rx, flight }
}

/// Records as a source hands them over: counted in flight with their estimated tokens.
fn send(r: &Rig, records: &[(u64, &[u8])]) {
    let recs = records
        .iter()
        .map(|&(ticket, bytes)| {
            let est = estimate_tokens(bytes.len(), MAX_LENGTH);
            r.flight.take(1, est, bytes.len());
            RawRecord {
                ticket,
                bytes: Arc::from(bytes),
                fallback_id: DocId::from(ticket),
                est_tokens: est,
            }
        })
        .collect();
    r.coord.send_message(CoordinatorMsg::Records(recs)).unwrap();
    r.coord.send_message(CoordinatorMsg::Flush).unwrap();
}

/// What the sink got, by kind.
#[derive(Default)]
struct Seen {
    /// (ticket, id key) of every `Decoded`, with the index of the message it came in.
    decoded: Vec<(u64, String, usize)>,
    done: HashMap<u64, (DocId, Result<Embedding, JobError>, usize, usize)>,
    bad: HashMap<u64, (DocId, String)>,
}

/// Receive until every ticket in `tickets` has its `Done` or `Bad` (each exactly once).
async fn until_all(r: &mut Rig, tickets: &[u64], seen: &mut Seen) {
    let mut index = seen.decoded.len() + seen.done.len() + seen.bad.len();
    let open = |s: &Seen| tickets.iter().any(|t| !s.done.contains_key(t) && !s.bad.contains_key(t));
    while open(seen) {
        let msg = tokio::time::timeout(Duration::from_secs(10), r.rx.recv())
            .await
            .expect("every record reaches the sink")
            .unwrap();
        index += 1;
        match msg {
            SinkMsg::Decoded(ids) => {
                seen.decoded.extend(ids.into_iter().map(|(t, k)| (t, k, index)));
            }
            SinkMsg::Done { ticket, id, outcome, tokens } => {
                let dup = seen.done.insert(ticket, (id, outcome, tokens, index));
                assert!(dup.is_none() && !seen.bad.contains_key(&ticket), "{ticket} twice");
            }
            SinkMsg::Bad { ticket, id, reason } => {
                let dup = seen.bad.insert(ticket, (id, reason));
                assert!(dup.is_none() && !seen.done.contains_key(&ticket), "{ticket} twice");
            }
            _ => panic!("the coordinator sends only Decoded, Done and Bad"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_reach_the_sink_with_the_reason_and_good_ones_are_announced_first() {
    let mut r = rig(true, None, Modes::ALL).await;
    let oversize = vec![b'x'; MAX_BYTES + 44];
    let records: Vec<(u64, &[u8])> = vec![
        (1, br#"{"id":"a","text":"hello world"}"#),
        (2, b"{oops"),
        (3, br#"{"id":"b","text":"   "}"#),
        (4, &oversize),
        (5, b"plain text line"),
        (6, br#"{"id":7,"text":"seven"}"#),
        (7, br#"{"id":"c","text":5}"#),
        (8, b""),
    ];
    send(&r, &records);
    let tickets: Vec<u64> = records.iter().map(|r| r.0).collect();
    let mut seen = Seen::default();
    until_all(&mut r, &tickets, &mut seen).await;

    let bad = |t: u64| seen.bad.get(&t).unwrap_or_else(|| panic!("{t} is not bad"));
    assert_eq!(bad(2).0, DocId::from(2u64), "no id could be read: the fallback");
    assert!(bad(2).1.contains("not valid JSON"), "{}", bad(2).1);
    assert_eq!(bad(3).0, DocId::from("b"));
    assert!(bad(3).1.contains("empty text"), "{}", bad(3).1);
    assert!(bad(4).1.contains(&format!("exceeds the limit of {MAX_BYTES} bytes")), "{}", bad(4).1);
    assert_eq!(bad(7).0, DocId::from("c"));
    assert!(bad(7).1.contains("\"text\" must be a string"), "{}", bad(7).1);
    assert!(bad(8).1.contains("empty text"), "an empty line is blank: {}", bad(8).1);
    assert_eq!(seen.bad.len(), 5);

    let tok = tokenizer();
    for (t, id, text) in [(1, DocId::from("a"), "hello world"), (5, 5u64.into(), "plain text line")]
        .into_iter()
        .chain([(6, DocId::Num(7.into()), "seven")])
    {
        let (got_id, outcome, tokens, _) = &seen.done[&t];
        assert_eq!(got_id, &id);
        let want = tok.encode(text, MAX_LENGTH).unwrap().ids.len();
        assert_eq!(outcome.as_ref().unwrap().tokens, want, "ticket {t}");
        assert_eq!(*tokens, want, "ticket {t}: the tokens it counts in flight");
    }
    // Decoded: exactly the good records, keyed by their id as a string, each before its Done.
    let mut announced: Vec<(u64, &str)> =
        seen.decoded.iter().map(|(t, k, _)| (*t, k.as_str())).collect();
    announced.sort_unstable();
    assert_eq!(announced, [(1, "a"), (5, "5"), (6, "7")]);
    for (t, _, at) in &seen.decoded {
        assert!(*at < seen.done[t].3, "ticket {t}: Decoded after its Done");
    }
    r.pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_coordinator_embeds_blank_texts_instead_of_rejecting_them() {
    let mut r = rig(false, None, Modes::ALL).await;
    send(&r, &[(1, br#"{"id":"b","text":"   "}"#), (2, b"")]);
    let mut seen = Seen::default();
    until_all(&mut r, &[1, 2], &mut seen).await;
    assert!(seen.bad.is_empty());
    let tok = tokenizer();
    for (t, text) in [(1, "   "), (2, "")] {
        let want = tok.encode(text, MAX_LENGTH).unwrap().ids.len();
        assert_eq!(seen.done[&t].1.as_ref().unwrap().tokens, want, "ticket {t}");
        assert_eq!(seen.done[&t].2, want, "ticket {t}");
    }
    r.pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_are_done_with_zero_tokens_and_the_same_result() {
    let mut r = rig(true, Some(Cache::memory(100)), Modes::ALL).await;
    let texts: Vec<String> =
        (0..6).map(|i| format!("document number {i} ") + &"w ".repeat(i)).collect();
    let first: Vec<(u64, &[u8])> =
        texts.iter().enumerate().map(|(i, t)| (i as u64 + 1, t.as_bytes())).collect();
    send(&r, &first);
    let mut seen = Seen::default();
    until_all(&mut r, &[1, 2, 3, 4, 5, 6], &mut seen).await;
    let batches = r.pipeline.metrics().batches.get();
    assert!(batches > 0);
    for t in 1..=6 {
        assert!(seen.done[&t].2 > 0, "a miss counts its tokens");
    }
    let again: Vec<(u64, &[u8])> =
        texts.iter().enumerate().map(|(i, t)| (i as u64 + 11, t.as_bytes())).collect();
    send(&r, &again);
    until_all(&mut r, &[11, 12, 13, 14, 15, 16], &mut seen).await;
    for t in 1..=6u64 {
        let (_, hit, tokens, _) = &seen.done[&(t + 10)];
        assert_eq!(*tokens, 0, "ticket {}: a hit adds nothing in flight", t + 10);
        assert_eq!(hit.as_ref().unwrap(), seen.done[&t].1.as_ref().unwrap());
    }
    assert_eq!(r.pipeline.metrics().batches.get(), batches, "hits are not encoded");
    assert_eq!(r.pipeline.metrics().cache_hits.get(), 6);
    assert_eq!(r.flight.counts().tokens, (1..=6).map(|t| seen.done[&t].2).sum::<usize>());
    r.pipeline.stop().await;
}

/// The source counts each record with a token estimate; the coordinator replaces it by the real
/// count (0 for bad records and hits), so once the sink releases what each `Done` says, nothing
/// is left in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_return_to_zero_once_the_sink_releases_every_record() {
    let mut r = rig(true, None, Modes::ALL).await;
    let long = "w ".repeat(100); // under MAX_BYTES, truncated at MAX_LENGTH
    let texts: Vec<Vec<u8>> = vec![
        b"short".to_vec(),
        long.clone().into_bytes(),
        b"{broken".to_vec(),
        br#"{"text":" "}"#.to_vec(),
        b"another ordinary record".to_vec(),
    ];
    let records: Vec<(u64, &[u8])> =
        texts.iter().enumerate().map(|(i, t)| (i as u64 + 1, &t[..])).collect();
    let est: usize = texts.iter().map(|t| estimate_tokens(t.len(), MAX_LENGTH)).sum();
    send(&r, &records);
    let mut seen = Seen::default();
    until_all(&mut r, &[1, 2, 3, 4, 5], &mut seen).await;
    let real: usize = seen.done.values().map(|d| d.2).sum();
    assert_ne!(real, est, "the test needs estimates that differ from the real counts");
    let bytes: usize = texts.iter().map(Vec::len).sum();
    let c = r.flight.counts();
    assert_eq!((c.records, c.tokens, c.bytes), (5, real, bytes), "estimates corrected");
    assert_eq!(seen.done[&2].2, MAX_LENGTH, "a truncated record counts max_length tokens");
    assert!(seen.done[&2].1.as_ref().unwrap().truncated);
    for (t, bytes) in &records {
        let tokens = seen.done.get(t).map_or(0, |d| d.2);
        r.flight.release(1, tokens, bytes.len());
    }
    assert_eq!(r.flight.counts(), Default::default());
    r.pipeline.stop().await;
}

/// A record's own `modes` and `max_length` apply to it alone; `max_length` is capped at the
/// coordinator's. Decoded documents (`Docs`, a Parquet source) go the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_record_options_apply_and_max_length_is_capped() {
    let dense_sparse = Modes { colbert: false, ..Modes::ALL };
    let mut r = rig(true, None, dense_sparse).await;
    let words = "alpha beta gamma delta ".repeat(5);
    let own = format!(r#"{{"id":"own","text":"{words}","modes":["colbert"],"max_length":6}}"#);
    let big = format!(r#"{{"id":"big","text":"{words}","max_length":4096}}"#);
    let plain = format!(r#"{{"id":"plain","text":"{words}"}}"#);
    send(&r, &[(1, own.as_bytes()), (2, big.as_bytes()), (3, plain.as_bytes())]);
    let docs = vec![
        DocRecord { ticket: 4, id: DocId::from("doc"), text: "from parquet".into(), est_tokens: 0 },
        DocRecord { ticket: 5, id: DocId::from("blank"), text: " \n".into(), est_tokens: 0 },
    ];
    r.coord.send_message(CoordinatorMsg::Docs(docs)).unwrap();
    r.coord.send_message(CoordinatorMsg::Flush).unwrap();
    let mut seen = Seen::default();
    until_all(&mut r, &[1, 2, 3, 4, 5], &mut seen).await;
    let e = |t: u64| seen.done[&t].1.as_ref().unwrap().clone();
    let (own, big, plain) = (e(1), e(2), e(3));
    assert_eq!((own.tokens, own.truncated), (6, true));
    assert!(own.colbert.is_some() && own.dense.is_none() && own.sparse.is_none());
    assert_eq!((big.tokens, big.truncated), (MAX_LENGTH, true), "capped at the coordinator's");
    for x in [&big, &plain] {
        assert!(x.dense.is_some() && x.sparse.is_some() && x.colbert.is_none(), "defaults");
    }
    let want = tokenizer().encode("from parquet", MAX_LENGTH).unwrap().ids.len();
    assert_eq!(e(4).tokens, want);
    assert_eq!(seen.done[&4].0, DocId::from("doc"));
    assert_eq!(seen.bad[&5].0, DocId::from("blank"));
    r.pipeline.stop().await;
}
