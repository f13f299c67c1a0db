//! The batcher actor driven directly (no tokenizer, no servers): jobs are hand-made documents
//! whose ids all equal a tag, so every batch a worker sees and every outcome can be traced back
//! to its job. Workers run a [`Probe`] embedder that logs each batch and fails, panics or blocks
//! on request.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;
use trident_core::batch::{BatchPolicy, Priority};
use trident_core::{Embedding, Modes, TokenizedDoc};
use trident_model::{Embedder, ModelError};

use super::{BatcherActor, BatcherArgs, BatcherMsg};
use crate::job::{EmbedderFactory, Job, JobError, Outcome, WorkerSpec};
use crate::testing::Stub;
use crate::Metrics;

/// One `encode` call: which worker, the tags and lengths of its documents, the modes asked.
#[derive(Clone, Debug)]
struct Call {
    worker: usize,
    tags: Vec<u32>,
    lens: Vec<usize>,
    modes: Modes,
    ok: bool,
}

#[derive(Clone, Default)]
struct Log {
    calls: Arc<Mutex<Vec<Call>>>,
    /// `encode` calls entered (a blocked call counts here before it is logged).
    entered: Arc<AtomicUsize>,
}

impl Log {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

/// A gate that blocks every `encode` call while closed.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

/// What a [`Probe`] fails on.
#[derive(Clone, Default)]
struct Rules {
    /// Fail every batch holding one of these tags.
    poison: Vec<u32>,
    /// Fail the next N batches, whatever they hold (shared across restarts and workers).
    flaky: Option<Arc<AtomicUsize>>,
    /// Panic instead of returning an error.
    panic: bool,
    /// Block until the gate opens.
    gate: Option<Arc<Gate>>,
}

struct Probe {
    worker: usize,
    rules: Rules,
    log: Log,
}

impl Embedder for Probe {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        self.log.entered.fetch_add(1, SeqCst);
        if let Some(g) = &self.rules.gate {
            g.wait();
        }
        let tags: Vec<u32> = docs.iter().map(|d| d.ids[0]).collect();
        let flaky = self.rules.flaky.as_ref();
        let transient =
            flaky.is_some_and(|f| f.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok());
        let ok = !transient && !tags.iter().any(|t| self.rules.poison.contains(t));
        let lens = docs.iter().map(|d| d.ids.len()).collect();
        let call = Call { worker: self.worker, tags, lens, modes, ok };
        self.log.calls.lock().unwrap().push(call);
        match (ok, self.rules.panic) {
            (true, _) => Stub.encode(docs, modes),
            (false, false) => Err(ModelError::Input("injected failure".into())),
            (false, true) => panic!("injected panic"),
        }
    }

    fn describe(&self) -> String {
        "probe".into()
    }

    fn hidden_size(&self) -> usize {
        2
    }
}

fn probe(worker: usize, rules: Rules, log: &Log) -> WorkerSpec {
    let log = log.clone();
    let factory: EmbedderFactory = Arc::new(move || {
        let p = Probe { worker, rules: rules.clone(), log: log.clone() };
        Ok(Box::new(p) as Box<dyn Embedder>)
    });
    WorkerSpec { name: format!("w{worker}"), factory }
}

fn policy(batch_tokens: usize, max_batch: usize) -> BatchPolicy {
    BatchPolicy {
        bucket_edges: vec![8, 16, 32],
        batch_tokens,
        max_batch,
        max_wait: Duration::from_millis(5),
        online_max_wait: Duration::from_millis(1),
        padded: false,
    }
}

async fn start(policy: BatchPolicy, workers: Vec<WorkerSpec>) -> (ActorRef<BatcherMsg>, Metrics) {
    let metrics = Metrics::new();
    let args = BatcherArgs { policy, workers, metrics: metrics.clone() };
    let (batcher, _) = Actor::spawn(None, BatcherActor, args).await.expect("batcher starts");
    (batcher, metrics)
}

async fn stop(batcher: ActorRef<BatcherMsg>) {
    batcher.stop_children(None);
    let _ = batcher.stop_and_wait(None, Some(Duration::from_secs(5))).await;
}

type Done = mpsc::UnboundedSender<(u32, Outcome)>;

/// A job of `len` ids all equal to `tag` (the Stub's dense output is then `[len, tag]`).
fn job(tag: u32, len: usize, priority: Priority, modes: Modes, done: &Done) -> Job {
    let done = done.clone();
    let doc = TokenizedDoc { ids: vec![tag; len], truncated: false };
    Job::new(doc, modes, priority, move |o| {
        let _ = done.send((tag, o));
    })
}

/// Receive `n` outcomes (each tag once), then check that nothing more arrives.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(u32, Outcome)>,
    n: usize,
) -> HashMap<u32, Outcome> {
    let mut out = HashMap::new();
    while out.len() < n {
        let (tag, o) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} jobs finished", out.len()))
            .expect("channel open");
        assert!(out.insert(tag, o).is_none(), "job {tag} finished twice");
    }
    let extra = tokio::time::timeout(Duration::from_millis(30), rx.recv()).await;
    assert!(extra.is_err(), "an outcome beyond the {n} jobs: {:?}", extra.unwrap().map(|x| x.0));
    out
}

fn ok(o: &Outcome) -> &Embedding {
    o.as_ref().unwrap_or_else(|e| panic!("expected an embedding, got {e}"))
}

/// Wait (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_the_budget_size_and_buckets_and_every_job_finishes_once() {
    for padded in [false, true] {
        let log = Log::default();
        let policy = BatchPolicy { padded, ..policy(64, 6) };
        let workers = vec![probe(0, Rules::default(), &log), probe(1, Rules::default(), &log)];
        let (b, metrics) = start(policy.clone(), workers).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let n = 240usize;
        let len = |i: usize| 1 + (i * 37 + i * i) % 40;
        let prio =
            |tag: u32| if tag.is_multiple_of(3) { Priority::Online } else { Priority::Stream };
        let tags: Vec<u32> = (1..=n as u32).collect();
        for chunk in tags.chunks(17) {
            let jobs = chunk.iter().map(|&t| job(t, len(t as usize), prio(t), Modes::ALL, &tx));
            b.send_message(BatcherMsg::Submit(jobs.collect())).unwrap();
        }
        let out = collect(&mut rx, n).await;
        for &t in &tags {
            let e = ok(&out[&t]);
            assert_eq!(e.tokens, len(t as usize), "job {t}");
            assert_eq!(e.dense.as_ref().unwrap()[1], t as f32, "job {t} got another's result");
        }
        let calls = log.calls();
        let encoded: Vec<u32> = calls.iter().flat_map(|c| c.tags.clone()).collect();
        assert_eq!(encoded.len(), n, "padded={padded}: a record was encoded twice or never");
        assert_eq!(encoded.iter().collect::<BTreeSet<_>>().len(), n);
        for c in &calls {
            let (longest, sum) = (*c.lens.iter().max().unwrap(), c.lens.iter().sum::<usize>());
            let cost = policy.cost(longest, sum, c.lens.len());
            assert!(c.lens.len() <= 6, "padded={padded}: {c:?} is over max_batch");
            assert!(c.lens.len() == 1 || cost <= 64, "padded={padded}: {c:?} costs {cost}");
            let buckets: BTreeSet<usize> = c.lens.iter().map(|&l| policy.bucket(l)).collect();
            assert_eq!(buckets.len(), 1, "padded={padded}: {c:?} mixes length buckets");
            let prios: BTreeSet<bool> =
                c.tags.iter().map(|&t| prio(t) == Priority::Online).collect();
            assert_eq!(prios.len(), 1, "padded={padded}: {c:?} mixes priorities");
        }
        assert!(calls.iter().any(|c| c.tags.len() > 1), "records were batched together");
        assert_eq!(metrics.batches.get() as usize, calls.len());
        assert_eq!(
            metrics.tokens.get() as usize,
            tags.iter().map(|&t| len(t as usize)).sum::<usize>()
        );
        stop(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_leaves_after_its_max_wait_online_sooner() {
    let log = Log::default();
    let policy = BatchPolicy {
        max_wait: Duration::from_millis(300),
        online_max_wait: Duration::from_millis(20),
        ..policy(1000, 100)
    };
    let (b, _) = start(policy, vec![probe(0, Rules::default(), &log)]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    b.send_message(BatcherMsg::Submit(vec![job(1, 4, Priority::Stream, Modes::ALL, &tx)])).unwrap();
    b.send_message(BatcherMsg::Submit(vec![job(2, 4, Priority::Online, Modes::ALL, &tx)])).unwrap();
    let (first, o) = rx.recv().await.unwrap();
    let online_at = t0.elapsed();
    assert_eq!(first, 2, "the online record leaves first");
    assert!(ok(&o).tokens == 4);
    assert!(online_at >= Duration::from_millis(20), "left before its max wait: {online_at:?}");
    assert!(online_at < Duration::from_millis(300), "waited for the stream wait: {online_at:?}");
    let (second, o) = rx.recv().await.unwrap();
    let stream_at = t0.elapsed();
    assert_eq!(second, 1);
    assert!(ok(&o).tokens == 4);
    assert!(stream_at >= Duration::from_millis(300), "left before its max wait: {stream_at:?}");
    assert!(stream_at < Duration::from_secs(3), "a partial batch was stranded: {stream_at:?}");
    // Each left alone: the two priorities never share a batch.
    assert_eq!(log.calls().iter().map(|c| c.tags.clone()).collect::<Vec<_>>(), [[2], [1]]);
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_sends_a_partial_batch_at_once() {
    let log = Log::default();
    let policy = BatchPolicy { max_wait: Duration::from_secs(30), ..policy(1000, 100) };
    let (b, _) = start(policy, vec![probe(0, Rules::default(), &log)]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let jobs = (1..=3).map(|t| job(t, 5, Priority::Stream, Modes::ALL, &tx)).collect();
    b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "a partial batch left before its wait or a flush");
    assert!(log.calls().is_empty());
    let t = Instant::now();
    b.send_message(BatcherMsg::Flush).unwrap();
    let out = collect(&mut rx, 3).await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(out.values().all(|o| ok(o).tokens == 5));
    let calls = log.calls();
    assert_eq!(calls.len(), 1, "the three records were one batch: {calls:?}");
    assert_eq!(calls[0].tags, [1, 2, 3], "in submission order");
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_batches_leave_before_stream_batches_that_waited_longer() {
    let log = Log::default();
    let gate = Arc::new(Gate::default());
    let rules = Rules { gate: Some(gate.clone()), ..Rules::default() };
    // Each record of 8 tokens fills a batch on its own.
    let (b, _) = start(policy(8, 100), vec![probe(0, rules, &log)]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let send = |jobs: Vec<Job>| b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    send(vec![job(100, 8, Priority::Stream, Modes::ALL, &tx)]);
    let entered = log.entered.clone();
    until("the worker to take the first batch", || entered.load(SeqCst) == 1).await;
    send((1..=3).map(|t| job(t, 8, Priority::Stream, Modes::ALL, &tx)).collect());
    send((11..=13).map(|t| job(t, 8, Priority::Online, Modes::ALL, &tx)).collect());
    send(vec![job(4, 8, Priority::Stream, Modes::ALL, &tx)]);
    gate.open();
    let out = collect(&mut rx, 8).await;
    assert!(out.values().all(|o| ok(o).tokens == 8));
    let order: Vec<u32> = log.calls().iter().flat_map(|c| c.tags.clone()).collect();
    assert_eq!(order, [100, 11, 12, 13, 1, 2, 3, 4]);
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_whole_on_the_other_worker() {
    let log = Log::default();
    // One failure, shared: whichever worker takes the batch first fails it.
    let flaky = Arc::new(AtomicUsize::new(1));
    let rules = Rules { flaky: Some(flaky.clone()), ..Rules::default() };
    let workers = vec![probe(0, rules.clone(), &log), probe(1, rules, &log)];
    let (b, metrics) = start(policy(64, 100), workers).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // 4 × 16 tokens: exactly one full batch.
    let jobs = (1..=4).map(|t| job(t, 16, Priority::Stream, Modes::ALL, &tx)).collect();
    b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    let out = collect(&mut rx, 4).await;
    for t in 1..=4 {
        assert_eq!(ok(&out[&t]).dense.as_ref().unwrap()[1], t as f32);
    }
    let calls = log.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let (failed, retried) = (&calls[0], &calls[1]);
    assert!(!failed.ok && retried.ok);
    assert_eq!(failed.tags, [1, 2, 3, 4]);
    assert_eq!(retried.tags, failed.tags, "retried whole, not split");
    assert_ne!(retried.worker, failed.worker, "retried on the other worker");
    assert_eq!(metrics.batch_retries.get(), 1);
    let restarts = metrics.worker_restarts.clone();
    until("the failed worker's restart", || restarts.get() == 1).await;
    assert_eq!(flaky.load(SeqCst), 0);
    stop(b).await;
}

/// Both workers fail every batch holding tag 3 or 6: the batch is split until each fails alone
/// on both workers; each is then failed with `JobError::Poison` and everything else succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_poison_records_in_one_batch_are_isolated_and_fail_alone() {
    let log = Log::default();
    let rules = Rules { poison: vec![3, 6], ..Rules::default() };
    let workers = vec![probe(0, rules.clone(), &log), probe(1, rules, &log)];
    let (b, metrics) = start(policy(64, 100), workers).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let jobs = (1..=8).map(|t| job(t, 8, Priority::Stream, Modes::ALL, &tx)).collect();
    b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    let out = collect(&mut rx, 8).await;
    let calls = log.calls();
    for t in 1..=8u32 {
        if t == 3 || t == 6 {
            let Err(JobError::Poison { attempts, workers, reason }) = &out[&t] else {
                panic!("job {t}: expected a poison error, got {:?}", out[&t]);
            };
            let mut names: Vec<&str> = workers.split(", ").collect();
            names.sort_unstable();
            assert_eq!(names, ["w0", "w1"], "job {t}: failed alone on both workers");
            assert!(*attempts >= 3, "job {t}: whole, split, alone: {attempts} attempts");
            assert!(reason.contains("injected failure"), "{reason}");
            let alone: BTreeSet<usize> = calls
                .iter()
                .filter(|c| c.tags == [t])
                .inspect(|c| assert!(!c.ok))
                .map(|c| c.worker)
                .collect();
            assert_eq!(alone, BTreeSet::from([0, 1]), "job {t}");
        } else {
            assert_eq!(ok(&out[&t]).dense.as_ref().unwrap()[1], t as f32);
            let good = calls.iter().filter(|c| c.ok && c.tags.contains(&t)).count();
            assert_eq!(good, 1, "job {t} was encoded successfully exactly once");
        }
    }
    assert!(calls.iter().filter(|c| c.ok).all(|c| !c.tags.contains(&3) && !c.tags.contains(&6)));
    assert!(metrics.batch_retries.get() >= 4);
    stop(b).await;
}

/// A record that crashes the encoder (a panic, not an error) on the only worker: it fails alone
/// twice there and is reported with the panic; the worker is restarted and the rest succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_record_on_the_only_worker_is_isolated() {
    let log = Log::default();
    let rules = Rules { poison: vec![5], panic: true, ..Rules::default() };
    let (b, metrics) = start(policy(64, 100), vec![probe(0, rules, &log)]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let jobs = (1..=6).map(|t| job(t, 10, Priority::Stream, Modes::ALL, &tx)).collect();
    b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    b.send_message(BatcherMsg::Flush).unwrap();
    let out = collect(&mut rx, 6).await;
    for t in 1..=6u32 {
        if t == 5 {
            let Err(JobError::Poison { workers, reason, .. }) = &out[&t] else {
                panic!("expected a poison error, got {:?}", out[&t]);
            };
            assert_eq!(workers, "w0, w0", "failed alone twice on the only worker");
            assert!(reason.contains("panicked") && reason.contains("injected panic"), "{reason}");
        } else {
            assert_eq!(ok(&out[&t]).tokens, 10);
        }
    }
    let alone = log.calls().iter().filter(|c| c.tags == [5]).count();
    assert_eq!(alone, 2);
    assert!(metrics.worker_restarts.get() >= 2, "a panicking worker is restarted");
    stop(b).await;
}

/// The only worker fails a batch, and its restart fails too (the factory errors once): it is
/// started again after the 1 s backoff — not in a hot loop — and the batch then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restart_is_retried_after_a_backoff_and_the_batch_survives() {
    let log = Log::default();
    let flaky = Arc::new(AtomicUsize::new(1));
    let builds = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let factory: EmbedderFactory = {
        let (log, builds, flaky) = (log.clone(), builds.clone(), flaky.clone());
        Arc::new(move || {
            let n = {
                let mut b = builds.lock().unwrap();
                b.push(Instant::now());
                b.len()
            };
            if n == 2 {
                return Err(
                    trident_model::BackendError::new("test", "starting", "device lost").into()
                );
            }
            let rules = Rules { flaky: Some(flaky.clone()), ..Rules::default() };
            Ok(Box::new(Probe { worker: 0, rules, log: log.clone() }) as Box<dyn Embedder>)
        })
    };
    let spec = WorkerSpec { name: "w0".into(), factory };
    let (b, metrics) = start(policy(64, 100), vec![spec]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    let jobs = (1..=4).map(|t| job(t, 16, Priority::Stream, Modes::ALL, &tx)).collect();
    b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    let out = collect(&mut rx, 4).await;
    let took = t0.elapsed();
    assert!(out.values().all(|o| ok(o).tokens == 16), "no record dead-lettered for a restart");
    let builds = builds.lock().unwrap().clone();
    assert_eq!(builds.len(), 3, "initial build, the failed restart, one retry");
    let gap = builds[2] - builds[1];
    assert!(gap >= Duration::from_millis(950), "restarted again after {gap:?}, not the backoff");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(5), "{took:?}");
    let calls = log.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(!calls[0].ok && calls[1].ok && calls[1].tags == calls[0].tags);
    assert_eq!(metrics.batch_retries.get(), 1);
    stop(b).await;
}

/// Worker 0 fails a batch and then cannot start again (every rebuild fails): worker 1 serves
/// everything meanwhile, and worker 0's starts are retried on the backoff schedule, not busily.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_restart_does_not_stall_the_other() {
    let log = Log::default();
    let flaky = Arc::new(AtomicUsize::new(1));
    let builds = Arc::new(AtomicUsize::new(0));
    let factory: EmbedderFactory = {
        let (log, builds, flaky) = (log.clone(), builds.clone(), flaky.clone());
        Arc::new(move || {
            if builds.fetch_add(1, SeqCst) > 0 {
                return Err(
                    trident_model::BackendError::new("test", "starting", "device lost").into()
                );
            }
            let rules = Rules { flaky: Some(flaky.clone()), ..Rules::default() };
            Ok(Box::new(Probe { worker: 0, rules, log: log.clone() }) as Box<dyn Embedder>)
        })
    };
    let w0 = WorkerSpec { name: "w0".into(), factory };
    let (b, metrics) = start(policy(32, 100), vec![w0, probe(1, Rules::default(), &log)]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tag = 0u32;
    let t0 = Instant::now();
    let mut rounds = 0;
    // Full batches of 2 × 16 tokens, one round after another, for 1.5 s.
    while t0.elapsed() < Duration::from_millis(1500) {
        let jobs: Vec<Job> = (0..2)
            .map(|_| {
                tag += 1;
                job(tag, 16, Priority::Online, Modes::ALL, &tx)
            })
            .collect();
        let started = Instant::now();
        b.send_message(BatcherMsg::Submit(jobs)).unwrap();
        for _ in 0..2 {
            let (_, o) = tokio::time::timeout(Duration::from_millis(500), rx.recv())
                .await
                .expect("a round stalled behind the failing worker")
                .unwrap();
            assert_eq!(ok(&o).tokens, 16);
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        rounds += 1;
    }
    assert!(rounds >= 10, "only {rounds} rounds in 1.5 s");
    let calls = log.calls();
    assert_eq!(calls.iter().filter(|c| !c.ok).count(), 1);
    assert!(calls.iter().filter(|c| c.ok).all(|c| c.worker == 1), "worker 0 never came back");
    // 1 initial build, the restart at the failure, one retry after 1 s (the next is due at 3 s).
    let n = builds.load(SeqCst);
    assert!((3..=4).contains(&n), "{n} builds in 1.5 s");
    assert_eq!(metrics.worker_restarts.get(), 1);
    stop(b).await;
}

/// Records asking for different outputs share a batch (encoded with the union of their modes)
/// and each gets only what it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sharing_a_batch_get_only_their_own_modes() {
    let log = Log::default();
    let (b, _) = start(policy(1000, 100), vec![probe(0, Rules::default(), &log)]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dense = Modes { dense: true, ..Modes::NONE };
    let sparse = Modes { sparse: true, ..Modes::NONE };
    let colbert = Modes { colbert: true, ..Modes::NONE };
    let jobs = vec![
        job(1, 6, Priority::Stream, dense, &tx),
        job(2, 6, Priority::Stream, sparse, &tx),
        job(3, 6, Priority::Stream, colbert, &tx),
    ];
    b.send_message(BatcherMsg::Submit(jobs)).unwrap();
    b.send_message(BatcherMsg::Flush).unwrap();
    let out = collect(&mut rx, 3).await;
    let calls = log.calls();
    assert_eq!(calls.len(), 1, "one shared batch: {calls:?}");
    assert_eq!(calls[0].modes, Modes::ALL);
    let has = |t: u32| {
        let e = ok(&out[&t]);
        (e.dense.is_some(), e.sparse.is_some(), e.colbert.is_some())
    };
    assert_eq!(has(1), (true, false, false));
    assert_eq!(has(2), (false, true, false));
    assert_eq!(has(3), (false, false, true));
    stop(b).await;
}

/// Stopping the pipeline drops the jobs still waiting in the batcher: an in-process caller gets
/// `JobError::Shutdown` for each (no hang, no result), and so does a later call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_pipeline_answers_waiting_callers_with_shutdown() {
    use crate::pipeline::{Pipeline, PipelineConfig};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3");
    let tokenizer = trident_model::Tokenizer::from_dir(&dir).unwrap();
    let log = Log::default();
    let policy = BatchPolicy { max_wait: Duration::from_secs(30), ..policy(100_000, 1000) };
    let cfg = PipelineConfig { policy, key_prefix: "t".into(), model_fingerprint: "f".into() };
    let workers = vec![probe(0, Rules::default(), &log)];
    let p = Pipeline::start(cfg, tokenizer, workers, None, Metrics::new()).await.unwrap();
    let texts = vec!["one".to_string(), "two words".to_string()];
    let waiting = {
        let (p, texts) = (p.clone(), texts.clone());
        tokio::spawn(async move { p.embed(texts, Modes::ALL, 64, Priority::Stream).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "stream records wait up to 30 s for their batch");
    p.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(out, vec![Err(JobError::Shutdown), Err(JobError::Shutdown)]);
    let later = tokio::time::timeout(
        Duration::from_secs(5),
        p.embed(texts, Modes::ALL, 64, Priority::Online),
    )
    .await
    .expect("a stopped pipeline answers at once");
    assert_eq!(later, vec![Err(JobError::Shutdown), Err(JobError::Shutdown)]);
    assert!(log.calls().is_empty(), "nothing was encoded");
}
