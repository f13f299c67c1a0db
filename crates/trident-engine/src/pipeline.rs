//! The in-process pipeline handle shared by every endpoint (`trident embed`, `trident node`,
//! `trident serve`): the tokenizer, the optional content cache, and the batcher actor with its
//! supervised workers.
//!
//! ```no_run
//! # async fn f(p: trident_engine::Pipeline) {
//! use trident_engine::Priority;
//! use trident_core::Modes;
//! // An HTTP handler: online priority, so its records leave the batcher before stream records.
//! let results = p.embed(vec!["hello".into()], Modes::ALL, 8192, Priority::Online).await;
//! for r in results {
//!     match r {
//!         Ok(embedding) => { /* embedding.to_json(&id) is the `trident embed` output object */ }
//!         Err(reason) => { /* tokenizer or encoder failure for that text */ }
//!     }
//! }
//! # }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorRef};
use tokio::sync::Notify;
use trident_core::batch::{BatchPolicy, Priority};
use trident_core::{Embedding, Modes, TokenizedDoc};
use trident_model::Tokenizer;

use crate::batcher::{BatcherActor, BatcherArgs, BatcherMsg};
use crate::codec::cache_key;
use crate::job::{Job, JobError, Outcome, WorkerSpec};
use crate::{Cache, EngineError, Metrics};

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub policy: BatchPolicy,
    /// Key prefix of the content cache.
    pub key_prefix: String,
    /// Identifies the model in cache keys (`codec::model_fingerprint`).
    pub model_fingerprint: String,
}

/// A record after the cache lookup and tokenization.
pub enum Prepared {
    /// Found in the content cache.
    Hit(Embedding),
    /// To be encoded; its cache key, if a cache is on.
    Miss { doc: TokenizedDoc, cache_key: Option<String> },
    /// The tokenizer rejected it.
    Failed(String),
}

/// The pipeline handle: clone it freely (shared state).
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    /// Jobs made by [`Pipeline::job`] and not yet finished, and a wake-up when that reaches 0.
    outstanding: Arc<(AtomicUsize, Notify)>,
    tokenizer: Arc<Tokenizer>,
    batcher: ActorRef<BatcherMsg>,
    cache: Option<Cache>,
    cfg: PipelineConfig,
    metrics: Metrics,
}

impl Pipeline {
    /// Start the batcher and one worker per spec (each builds its embedder now).
    pub async fn start(
        cfg: PipelineConfig,
        tokenizer: Tokenizer,
        workers: Vec<WorkerSpec>,
        cache: Option<Cache>,
        metrics: Metrics,
    ) -> Result<Pipeline, EngineError> {
        let args = BatcherArgs { policy: cfg.policy.clone(), workers, metrics: metrics.clone() };
        let (batcher, _) = Actor::spawn(None, BatcherActor, args)
            .await
            .map_err(|e| EngineError::Actor(format!("starting the batcher: {e}")))?;
        Ok(Pipeline {
            inner: Arc::new(Inner {
                outstanding: Arc::default(),
                tokenizer: Arc::new(tokenizer),
                batcher,
                cache,
                cfg,
                metrics,
            }),
        })
    }

    /// The pipeline's tokenizer (one parse, shared with whoever else needs it).
    pub fn tokenizer(&self) -> Arc<Tokenizer> {
        self.inner.tokenizer.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    /// Embed texts with the given modes and max length; one outcome per text, in order.
    /// `Priority::Online` records leave the batcher before stream records and wait less for
    /// their batch to fill. Results come from the cache when it has them.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        modes: Modes,
        max_length: usize,
        priority: Priority,
    ) -> Vec<Outcome> {
        let reqs: Vec<(String, Modes, usize)> =
            texts.into_iter().map(|t| (t, modes, max_length)).collect();
        let prepared = self.prepare(&reqs).await;
        self.encode_prepared(prepared, modes, priority).await
    }

    /// Encode what [`Pipeline::prepare`] left to encode (cache hits and tokenizer failures
    /// pass through); one outcome per record, in order.
    pub async fn encode_prepared(
        &self,
        prepared: Vec<Prepared>,
        modes: Modes,
        priority: Priority,
    ) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = Vec::with_capacity(prepared.len());
        let mut waits = Vec::new();
        let mut jobs = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Prepared::Hit(e) => out.push(Some(Ok(e))),
                Prepared::Failed(r) => out.push(Some(Err(JobError::Tokenizer(r)))),
                Prepared::Miss { doc, cache_key } => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    out.push(None);
                    waits.push((i, rx));
                    jobs.push(self.job(doc, modes, priority, cache_key, move |o| {
                        let _ = tx.send(o);
                    }));
                }
            }
        }
        self.submit(jobs);
        for (i, rx) in waits {
            out[i] = Some(rx.await.unwrap_or(Err(JobError::Shutdown)));
        }
        out.into_iter().map(|o| o.expect("every slot filled")).collect()
    }

    /// Cache lookup, then tokenization (on a blocking thread) of the misses.
    pub async fn prepare(&self, reqs: &[(String, Modes, usize)]) -> Vec<Prepared> {
        let keys: Option<Vec<String>> = self.inner.cache.as_ref().map(|_| {
            let c = &self.inner.cfg;
            reqs.iter()
                .map(|(t, m, l)| cache_key(&c.key_prefix, &c.model_fingerprint, *m, *l, t))
                .collect()
        });
        let hits = match (&self.inner.cache, &keys) {
            (Some(cache), Some(keys)) => cache.get_many(keys).await,
            _ => vec![None; reqs.len()],
        };
        let mut out: Vec<Option<Prepared>> = Vec::with_capacity(reqs.len());
        let mut misses = Vec::new();
        for (i, hit) in hits.into_iter().enumerate() {
            match hit {
                Some(e) => {
                    self.inner.metrics.cache_hits.inc();
                    out.push(Some(Prepared::Hit(e)));
                }
                None => {
                    if self.inner.cache.is_some() {
                        self.inner.metrics.cache_misses.inc();
                    }
                    out.push(None);
                    misses.push(i);
                }
            }
        }
        if !misses.is_empty() {
            let tok = self.inner.tokenizer.clone();
            let texts: Vec<(String, usize)> =
                misses.iter().map(|&i| (reqs[i].0.clone(), reqs[i].2)).collect();
            let docs =
                tokio::task::spawn_blocking(move || crate::tokenize::tokenize_all(&tok, &texts))
                    .await
                    .unwrap_or_else(|e| {
                        vec![Err(format!("tokenizer panicked: {e}")); misses.len()]
                    });
            for (&i, d) in misses.iter().zip(docs) {
                out[i] = Some(match d {
                    Ok(doc) => {
                        Prepared::Miss { doc, cache_key: keys.as_ref().map(|k| k[i].clone()) }
                    }
                    Err(e) => Prepared::Failed(e),
                });
            }
        }
        out.into_iter().map(|p| p.expect("every record prepared")).collect()
    }

    /// A job whose result is cached (when a cache is on) and then handed to `done`.
    pub fn job(
        &self,
        doc: TokenizedDoc,
        modes: Modes,
        priority: Priority,
        cache_key: Option<String>,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) -> Job {
        let cache = self.inner.cache.clone();
        let outstanding = self.inner.outstanding.clone();
        outstanding.0.fetch_add(1, Ordering::SeqCst);
        Job::new(doc, modes, priority, move |o: Outcome| {
            if let (Some(cache), Some(key), Ok(e)) = (&cache, cache_key, &o) {
                cache.put(key, e);
            }
            done(o);
            if outstanding.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                outstanding.1.notify_waiters();
            }
        })
    }

    /// Hand jobs to the batcher.
    pub fn submit(&self, jobs: Vec<Job>) {
        if !jobs.is_empty() {
            // Only fails once the pipeline is stopped; the jobs' `done` then never runs.
            let _ = self.inner.batcher.send_message(BatcherMsg::Submit(jobs));
        }
    }

    /// Send partial batches now instead of waiting their max wait (end of input).
    pub fn flush(&self) {
        let _ = self.inner.batcher.send_message(BatcherMsg::Flush);
    }

    /// Jobs submitted and not yet finished.
    pub fn outstanding(&self) -> usize {
        self.inner.outstanding.0.load(Ordering::SeqCst)
    }

    /// Finish the queued work, then stop: partial batches leave now and the workers get up to
    /// `within` to encode everything submitted. Returns how many jobs were still unfinished
    /// (and dropped, as [`Pipeline::stop`] drops them).
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        self.flush();
        let (count, idle) = &*self.inner.outstanding;
        let finished = async {
            loop {
                let woken = idle.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if count.load(Ordering::SeqCst) == 0 {
                    break;
                }
                woken.await;
            }
        };
        let _ = tokio::time::timeout(within, finished).await;
        let left = self.outstanding();
        self.stop().await;
        left
    }

    /// Stop the batcher and its workers (jobs not yet encoded are dropped).
    pub async fn stop(&self) {
        self.inner.batcher.stop_children(None);
        let _ =
            self.inner.batcher.stop_and_wait(None, Some(std::time::Duration::from_secs(5))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::EmbedderFactory;
    use crate::testing::{stub_worker, CallLog, Faults};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3"),
        )
        .unwrap()
    }

    async fn pipeline(poison_len: Option<usize>, workers: usize, cache: Option<Cache>) -> Pipeline {
        let log = CallLog::default();
        let faults = Faults { poison_len, ..Faults::default() };
        start((0..workers).map(|w| stub_worker(w, faults.clone(), log.clone())).collect(), cache)
            .await
    }

    async fn start(specs: Vec<WorkerSpec>, cache: Option<Cache>) -> Pipeline {
        let policy = BatchPolicy {
            batch_tokens: 64,
            max_wait: std::time::Duration::from_millis(2),
            ..BatchPolicy::default()
        };
        let cfg =
            PipelineConfig { policy, key_prefix: "t".into(), model_fingerprint: "fake".into() };
        Pipeline::start(cfg, tokenizer(), specs, cache, Metrics::new()).await.unwrap()
    }

    fn texts() -> Vec<String> {
        (0..60).map(|i| "word ".repeat(1 + (i * 7) % 23) + &format!("n{i}")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_back_in_order_with_only_requested_modes() {
        let p = pipeline(None, 2, None).await;
        let tok = tokenizer();
        let dense = Modes::from_flags(true, false, false);
        let out = p.embed(texts(), dense, 16, Priority::Online).await;
        assert_eq!(out.len(), 60);
        for (t, r) in texts().iter().zip(&out) {
            let e = r.as_ref().unwrap();
            let want = tok.encode(t, 16).unwrap();
            assert_eq!(e.tokens, want.ids.len());
            assert_eq!(e.truncated, want.truncated);
            assert_eq!(e.dense.as_ref().unwrap()[0], want.ids.len() as f32);
            assert!(e.sparse.is_none() && e.colbert.is_none());
        }
        assert!(
            p.metrics().batches.get() > 1,
            "60 records over a 64-token budget need several batches"
        );
        p.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poison_record_is_isolated_and_the_rest_proceed() {
        let (texts, lens, poison_len) = with_poison();
        let p = pipeline(Some(poison_len), 1, None).await;
        let out = p.embed(texts, Modes::ALL, 8192, Priority::Stream).await;
        for (len, r) in lens.iter().zip(&out) {
            if *len == poison_len {
                assert!(
                    r.as_ref().unwrap_err().to_string().contains("encoder failed on this record"),
                    "{r:?}"
                );
            } else {
                assert_eq!(r.as_ref().unwrap().tokens, *len);
            }
        }
        assert!(p.metrics().worker_restarts.get() >= 2, "the failing worker is restarted");
        p.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_answers_repeats() {
        let p = pipeline(None, 1, Some(Cache::memory(100))).await;
        let first = p.embed(texts(), Modes::ALL, 8192, Priority::Online).await;
        let batches = p.metrics().batches.get();
        let second = p.embed(texts(), Modes::ALL, 8192, Priority::Online).await;
        assert_eq!(p.metrics().batches.get(), batches, "no encoding for cached texts");
        assert_eq!(p.metrics().cache_hits.get(), 60);
        assert_eq!(first, second);
        p.stop().await;
    }

    /// The poison test's texts: `texts()` plus one longer than any other, and every length.
    fn with_poison() -> (Vec<String>, Vec<usize>, usize) {
        let tok = tokenizer();
        let mut texts = texts();
        texts.insert(17, "poison ".repeat(40));
        let lens: Vec<usize> =
            texts.iter().map(|t| tok.encode(t, 8192).unwrap().ids.len()).collect();
        let poison_len = lens[17];
        assert_eq!(lens.iter().filter(|&&l| l == poison_len).count(), 1);
        (texts, lens, poison_len)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poison_record_is_isolated_with_two_workers_after_failing_alone_on_both() {
        let (texts, lens, poison_len) = with_poison();
        let log = CallLog::default();
        let faults = Faults { poison_len: Some(poison_len), ..Faults::default() };
        let p = start((0..2).map(|w| stub_worker(w, faults.clone(), log.clone())).collect(), None)
            .await;
        let out = p.embed(texts, Modes::ALL, 8192, Priority::Stream).await;
        for (len, r) in lens.iter().zip(&out) {
            if *len == poison_len {
                let e = r.as_ref().unwrap_err().to_string();
                assert!(e.contains("encoder failed on this record"), "{e}");
                assert!(e.contains("stub-0") && e.contains("stub-1"), "{e}");
            } else {
                assert_eq!(r.as_ref().unwrap().tokens, *len);
            }
        }
        let mut alone: Vec<usize> =
            log.lock().unwrap().iter().filter(|c| c.size == 1 && !c.ok).map(|c| c.worker).collect();
        alone.sort_unstable();
        assert_eq!(alone, [0, 1], "the poison record failed alone once on each worker");
        p.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flaky_worker_dead_letters_nothing_when_another_is_healthy() {
        let log = CallLog::default();
        let flaky = Arc::new(AtomicUsize::new(3));
        let w0 =
            stub_worker(0, Faults { flaky: Some(flaky.clone()), ..Faults::default() }, log.clone());
        let w1 = stub_worker(1, Faults::default(), log.clone());
        let p = start(vec![w0, w1], None).await;
        for _ in 0..4 {
            let out = p.embed(texts(), Modes::ALL, 8192, Priority::Stream).await;
            assert!(out.iter().all(|r| r.is_ok()), "{:?}", out.iter().find(|r| r.is_err()));
        }
        assert_eq!(flaky.load(SeqCst), 0, "worker 0 failed its first 3 batches");
        assert_eq!(p.metrics().worker_restarts.get(), 3);
        assert_eq!(p.metrics().batch_retries.get(), 3, "each retried once, whole, on worker 1");
        let calls = log.lock().unwrap().clone();
        assert_eq!(calls.iter().filter(|c| !c.ok).count(), 3);
        assert!(calls.iter().any(|c| c.worker == 0 && c.ok), "worker 0 works once restarted");
        p.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_restart_does_not_stall_the_other_worker() {
        let log = CallLog::default();
        let flaky = Arc::new(AtomicUsize::new(1));
        let w0 =
            stub_worker(0, Faults { flaky: Some(flaky.clone()), ..Faults::default() }, log.clone());
        let w1 = stub_worker(1, Faults::default(), log.clone());
        let (builds, rebuilt) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let slow: EmbedderFactory = {
            let (builds, rebuilt) = (builds.clone(), rebuilt.clone());
            Arc::new(move || {
                if builds.fetch_add(1, SeqCst) > 0 {
                    std::thread::sleep(Duration::from_millis(1500)); // a model load
                    rebuilt.store(true, SeqCst);
                }
                (w0.factory)()
            })
        };
        let p = start(vec![WorkerSpec { name: "stub-0".into(), factory: slow }, w1], None).await;
        let few: Vec<String> = texts().into_iter().take(4).collect();
        // Idle workers are picked in order, so worker 0 soon gets a batch, fails it (the batch
        // is retried on worker 1) and starts its slow restart.
        for _ in 0..100 {
            if flaky.load(SeqCst) == 0 {
                break;
            }
            assert!(p
                .embed(few.clone(), Modes::ALL, 8192, Priority::Online)
                .await
                .iter()
                .all(|r| r.is_ok()));
        }
        assert_eq!(flaky.load(SeqCst), 0);
        let t = Instant::now();
        let mut served = 0;
        while t.elapsed() < Duration::from_millis(800) {
            let out = p.embed(few.clone(), Modes::ALL, 8192, Priority::Online).await;
            assert!(out.iter().all(|r| r.is_ok()));
            served += 1;
        }
        assert!(!rebuilt.load(SeqCst), "worker 0 was still loading meanwhile");
        assert!(served >= 5, "worker 1 served only {served} requests during the restart");
        // Once loaded, worker 0 takes batches again.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(rebuilt.load(SeqCst));
        let before = log.lock().unwrap().len();
        assert!(p.embed(few, Modes::ALL, 8192, Priority::Online).await.iter().all(|r| r.is_ok()));
        assert!(log.lock().unwrap()[before..].iter().any(|c| c.worker == 0 && c.ok));
        p.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_finishes_queued_work_before_stopping() {
        // A long max wait: without the drain's flush these jobs would sit in a partial batch.
        let specs = vec![stub_worker(0, Faults::default(), CallLog::default())];
        let policy = BatchPolicy {
            batch_tokens: 1 << 20,
            max_wait: Duration::from_secs(60),
            ..BatchPolicy::default()
        };
        let cfg =
            PipelineConfig { policy, key_prefix: "t".into(), model_fingerprint: "fake".into() };
        let p = Pipeline::start(cfg, tokenizer(), specs, None, Metrics::new()).await.unwrap();
        let reqs: Vec<_> = texts().into_iter().map(|t| (t, Modes::ALL, 64)).collect();
        let mut rxs = Vec::new();
        let mut jobs = Vec::new();
        for prepared in p.prepare(&reqs).await {
            let Prepared::Miss { doc, .. } = prepared else { panic!("no cache, valid texts") };
            let (tx, rx) = tokio::sync::oneshot::channel();
            jobs.push(p.job(doc, Modes::ALL, Priority::Stream, None, move |o| {
                let _ = tx.send(o);
            }));
            rxs.push(rx);
        }
        p.submit(jobs);
        assert_eq!(p.outstanding(), reqs.len());
        let t = Instant::now();
        assert_eq!(p.drain(Duration::from_secs(20)).await, 0, "nothing left unfinished");
        assert!(t.elapsed() < Duration::from_secs(20), "the drain flushed the partial batch");
        for rx in rxs {
            assert!(rx.await.expect("every job answered").is_ok());
        }
    }
}
