//! The in-process pipeline handle shared by every endpoint (`trident embed`, `trident node`,
//! `trident serve`): the tokenizer, the optional content cache, and the batcher actor with its
//! supervised workers.
//!
//! ```no_run
//! # async fn f(p: trident_cluster::Pipeline) {
//! use trident_cluster::Priority;
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

use std::sync::Arc;

use ractor::{Actor, ActorRef};
use trident_core::batch::{BatchPolicy, Priority};
use trident_core::{Embedding, Modes, TokenizedDoc};
use trident_model::{Embedder, Tokenizer};

use crate::batcher::{BatcherActor, BatcherArgs, BatcherMsg, Job, Outcome};
use crate::codec::cache_key;
use crate::{Cache, ClusterError, Metrics};

/// Builds a fresh embedder for a worker: at start and after every worker failure.
pub type EmbedderFactory = Arc<dyn Fn() -> Result<Box<dyn Embedder>, String> + Send + Sync>;

/// One worker: a name for logs and the factory of its embedder (one per device, or N CPU
/// workers sharing the cores).
#[derive(Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub factory: EmbedderFactory,
}

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
    ) -> Result<Pipeline, ClusterError> {
        let args = BatcherArgs { policy: cfg.policy.clone(), workers, metrics: metrics.clone() };
        let (batcher, _) = Actor::spawn(None, BatcherActor, args)
            .await
            .map_err(|e| ClusterError::Actor(format!("starting the batcher: {e}")))?;
        Ok(Pipeline {
            inner: Arc::new(Inner { tokenizer: Arc::new(tokenizer), batcher, cache, cfg, metrics }),
        })
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
        let mut out: Vec<Option<Outcome>> = Vec::with_capacity(prepared.len());
        let mut waits = Vec::new();
        let mut jobs = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Prepared::Hit(e) => out.push(Some(Ok(e))),
                Prepared::Failed(r) => out.push(Some(Err(r))),
                Prepared::Miss { doc, cache_key } => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    out.push(None);
                    waits.push((i, rx));
                    jobs.push(self.job(doc, modes, priority, false, cache_key, move |o| {
                        let _ = tx.send(o);
                    }));
                }
            }
        }
        self.submit(jobs);
        for (i, rx) in waits {
            out[i] = Some(rx.await.unwrap_or_else(|_| {
                Err("the pipeline shut down before this record was encoded".into())
            }));
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
            let docs = tokio::task::spawn_blocking(move || tokenize_all(&tok, &texts))
                .await
                .unwrap_or_else(|e| vec![Err(format!("tokenizer panicked: {e}")); misses.len()]);
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
        poison: bool,
        cache_key: Option<String>,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) -> Job {
        let cache = self.inner.cache.clone();
        Job {
            doc,
            modes,
            priority,
            attempts: 0,
            poison,
            done: Box::new(move |o: Outcome| {
                if let (Some(cache), Some(key), Ok(e)) = (&cache, cache_key, &o) {
                    cache.put(key, e);
                }
                done(o)
            }),
        }
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

    /// Stop the batcher and its workers (jobs not yet encoded are dropped).
    pub async fn stop(&self) {
        self.inner.batcher.stop_children(None);
        let _ =
            self.inner.batcher.stop_and_wait(None, Some(std::time::Duration::from_secs(5))).await;
    }
}

/// Tokenize texts grouped by max length (one `encode_batch` per group), falling back to one at
/// a time when a batch call fails so one bad text does not fail the others.
fn tokenize_all(tok: &Tokenizer, texts: &[(String, usize)]) -> Vec<Result<TokenizedDoc, String>> {
    let mut out: Vec<Option<Result<TokenizedDoc, String>>> = vec![None; texts.len()];
    let mut lengths: Vec<usize> = texts.iter().map(|t| t.1).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths {
        let idx: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].1 == len).collect();
        let strs: Vec<&str> = idx.iter().map(|&i| texts[i].0.as_str()).collect();
        match tok.encode_batch(&strs, len) {
            Ok(docs) if docs.len() == idx.len() => {
                for (&i, d) in idx.iter().zip(docs) {
                    out[i] = Some(Ok(d));
                }
            }
            _ => {
                for &i in &idx {
                    out[i] = Some(tok.encode(&texts[i].0, len).map_err(|e| e.to_string()));
                }
            }
        }
    }
    out.into_iter().map(|o| o.expect("every text tokenized")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trident_core::Embedding;
    use trident_model::ModelError;

    /// A deterministic stand-in for the encoder: dense = [tokens, last id], sparse = each id once,
    /// ColBERT = one row per token after the first. Fails any batch holding a doc of `fail_len` tokens.
    struct Fake {
        fail_len: Option<usize>,
    }

    impl Embedder for Fake {
        fn encode(
            &self,
            docs: &[TokenizedDoc],
            modes: Modes,
        ) -> Result<Vec<Embedding>, ModelError> {
            if docs.iter().any(|d| Some(d.ids.len()) == self.fail_len) {
                return Err(ModelError::Tokenize("fake failure".into()));
            }
            Ok(docs
                .iter()
                .map(|d| Embedding {
                    tokens: d.ids.len(),
                    truncated: d.truncated,
                    dense: modes
                        .dense
                        .then(|| vec![d.ids.len() as f32, *d.ids.last().unwrap() as f32]),
                    sparse: modes.sparse.then(|| d.ids.iter().map(|&i| (i, 1.0)).collect()),
                    colbert: modes.colbert.then(|| d.ids[1..].iter().map(|&i| i as f32).collect()),
                    colbert_dim: 1,
                })
                .collect())
        }
        fn describe(&self) -> String {
            "fake".into()
        }
        fn hidden_size(&self) -> usize {
            2
        }
    }

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3"),
        )
        .unwrap()
    }

    async fn pipeline(fail_len: Option<usize>, workers: usize, cache: Option<Cache>) -> Pipeline {
        let specs = (0..workers)
            .map(|i| WorkerSpec {
                name: format!("fake-{i}"),
                factory: Arc::new(move || Ok(Box::new(Fake { fail_len }) as Box<dyn Embedder>)),
            })
            .collect();
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
        let tok = tokenizer();
        let mut texts = texts();
        texts.insert(17, "poison ".repeat(40)); // longer than any other text
        let lens: Vec<usize> =
            texts.iter().map(|t| tok.encode(t, 8192).unwrap().ids.len()).collect();
        let poison_len = lens[17];
        assert_eq!(lens.iter().filter(|&&l| l == poison_len).count(), 1);
        let p = pipeline(Some(poison_len), 1, None).await;
        let out = p.embed(texts, Modes::ALL, 8192, Priority::Stream).await;
        for (len, r) in lens.iter().zip(&out) {
            if *len == poison_len {
                assert!(r.as_ref().unwrap_err().contains("encoder failed on this record"), "{r:?}");
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
}
