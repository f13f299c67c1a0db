//! Test doubles for the engine and every endpoint built on it (compiled for this crate's tests
//! and, with the `testing` feature, for other crates' tests; never in a release binary):
//! [`Stub`], a deterministic embedder, and [`Faulty`], a wrapper that makes any embedder fail
//! on purpose — fault injection lives here, not in the production types.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use trident_core::{Embedding, Modes, TokenizedDoc};
use trident_model::{Embedder, ModelError};

use crate::job::{EmbedderFactory, WorkerSpec};

/// A deterministic stand-in for the encoder: dense = [tokens, last id], sparse = each id once
/// with weight 1, ColBERT = one 1-wide row per token after the first (its id).
#[derive(Clone, Copy, Default)]
pub struct Stub;

impl Embedder for Stub {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        Ok(docs
            .iter()
            .map(|d| Embedding {
                tokens: d.ids.len(),
                truncated: d.truncated,
                dense: modes
                    .dense
                    .then(|| vec![d.ids.len() as f32, d.ids.last().copied().unwrap_or(0) as f32]),
                sparse: modes.sparse.then(|| d.ids.iter().map(|&i| (i, 1.0)).collect()),
                colbert: modes.colbert.then(|| d.ids.iter().skip(1).map(|&i| i as f32).collect()),
                colbert_dim: 1,
            })
            .collect())
    }

    fn describe(&self) -> String {
        "stub".into()
    }

    fn hidden_size(&self) -> usize {
        2
    }
}

/// One `encode` call seen by a [`Faulty`] wrapper: which worker, how many records, whether it
/// failed.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub worker: usize,
    pub size: usize,
    pub ok: bool,
}

/// The calls of every wrapper sharing it, in order.
pub type CallLog = Arc<Mutex<Vec<Call>>>;

/// What a [`Faulty`] wrapper fails. Counters are shared through `Arc`s, so they survive the
/// worker restarts the failures cause.
#[derive(Clone, Default)]
pub struct Faults {
    /// Fail every batch holding a document of this many tokens (a poison record).
    pub poison_len: Option<usize>,
    /// Fail every batch holding a document whose ids contain this run (a poison marker).
    pub poison_ids: Option<Vec<u32>>,
    /// Fail the next N batches, whatever they hold (a flaky device), counting down.
    pub flaky: Option<Arc<AtomicUsize>>,
    /// Panic instead of returning an error (a crashed kernel).
    pub panic: bool,
}

/// Wraps an embedder and fails the batches its [`Faults`] name, logging every call.
pub struct Faulty {
    pub inner: Box<dyn Embedder>,
    pub faults: Faults,
    pub worker: usize,
    pub log: CallLog,
}

impl Faulty {
    fn fails(&self, docs: &[TokenizedDoc]) -> bool {
        let flaky = self.faults.flaky.as_ref();
        let transient =
            flaky.is_some_and(|f| f.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok());
        let marked = |d: &TokenizedDoc| {
            let run = self.faults.poison_ids.as_deref().unwrap_or_default();
            !run.is_empty() && d.ids.windows(run.len()).any(|w| w == run)
        };
        transient || docs.iter().any(|d| Some(d.ids.len()) == self.faults.poison_len || marked(d))
    }
}

impl Embedder for Faulty {
    fn encode(&self, docs: &[TokenizedDoc], modes: Modes) -> Result<Vec<Embedding>, ModelError> {
        let ok = !self.fails(docs);
        self.log.lock().unwrap().push(Call { worker: self.worker, size: docs.len(), ok });
        match (ok, self.faults.panic) {
            (true, _) => self.inner.encode(docs, modes),
            (false, false) => Err(ModelError::Tokenize("injected failure".into())),
            (false, true) => panic!("injected panic"),
        }
    }

    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }
}

/// The worker `spec` with its embedders behind a [`Faulty`] wrapper (each restart wraps the
/// new one; the fault counters carry over).
pub fn wrap(spec: WorkerSpec, worker: usize, faults: Faults, log: CallLog) -> WorkerSpec {
    let inner_factory = spec.factory;
    let factory: EmbedderFactory = Arc::new(move || {
        let inner = inner_factory()?;
        let (faults, log) = (faults.clone(), log.clone());
        Ok(Box::new(Faulty { inner, faults, worker, log }) as Box<dyn Embedder>)
    });
    WorkerSpec { name: spec.name, factory }
}

/// A worker of [`Stub`] embedders behind a [`Faulty`] wrapper.
pub fn stub_worker(worker: usize, faults: Faults, log: CallLog) -> WorkerSpec {
    let factory: EmbedderFactory = Arc::new(|| Ok(Box::new(Stub) as Box<dyn Embedder>));
    wrap(WorkerSpec { name: format!("stub-{worker}"), factory }, worker, faults, log)
}
