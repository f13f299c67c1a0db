//! A worker actor: owns one `Embedder` (one device, or a share of the CPU) and encodes one batch
//! at a time on a blocking thread, so the tokio reactor never runs model code. A restarted worker
//! builds its embedder after spawning (`post_start`, seconds for a model load) and then reports
//! `Ready`, so its supervisor (the batcher) is not blocked meanwhile. A failed batch (encoder
//! error or panic) goes back to the batcher and the worker stops with an error; the batcher
//! starts a fresh one from the factory. A worker reports through a [`Reporter`] and knows
//! nothing of the batcher's own messages.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use trident_core::batch::Batch;
use trident_core::{Embedding, Modes};
use trident_model::Embedder;

use crate::job::{Job, WorkerSpec};
use crate::Metrics;

/// What a worker tells its supervisor; `generation` tells a restarted worker from its
/// predecessor.
pub enum WorkerReport {
    /// The worker has its embedder and takes batches.
    Ready { index: usize, generation: u64 },
    /// The batch it ran is done.
    Done { index: usize, generation: u64 },
    /// The batch failed; the worker stops after this report.
    Failed { index: usize, generation: u64, batch: Batch<Job>, reason: String },
}

/// Delivers a report; `false` when the supervisor is gone (the pipeline stopped).
pub type Reporter = Arc<dyn Fn(WorkerReport) -> bool + Send + Sync>;

pub struct Worker;

pub struct WorkerArgs {
    pub index: usize,
    pub generation: u64,
    pub spec: WorkerSpec,
    /// Built by the caller (first start), or `None` to build it from `spec` after spawning.
    pub embedder: Option<Box<dyn Embedder>>,
    pub report: Reporter,
    pub metrics: Metrics,
}

pub struct WorkerState {
    index: usize,
    generation: u64,
    spec: WorkerSpec,
    embedder: Option<Box<dyn Embedder>>,
    report: Reporter,
    metrics: Metrics,
}

pub enum WorkerMsg {
    Run(Batch<Job>),
}

/// Drop the outputs a record did not ask for (a batch computes the union of its records' modes).
fn keep_modes(mut e: Embedding, m: Modes) -> Embedding {
    if !m.dense {
        e.dense = None;
    }
    if !m.sparse {
        e.sparse = None;
    }
    if !m.colbert {
        e.colbert = None;
    }
    e
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
}

/// Run a worker's factory on a blocking thread (a model load).
pub(crate) async fn build_embedder(spec: &WorkerSpec) -> Result<Box<dyn Embedder>, String> {
    let factory = spec.factory.clone();
    tokio::task::spawn_blocking(move || factory())
        .await
        .map_err(|e| format!("worker {}: factory panicked: {}", spec.name, panic_message(e)))?
        .map_err(|e| format!("worker {}: {e}", spec.name))
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            index: args.index,
            generation: args.generation,
            spec: args.spec,
            embedder: args.embedder,
            report: args.report,
            metrics: args.metrics,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<WorkerMsg>,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        if st.embedder.is_none() {
            st.embedder = Some(build_embedder(&st.spec).await?);
        }
        let ready = WorkerReport::Ready { index: st.index, generation: st.generation };
        if !(st.report)(ready) {
            me.stop(None); // the pipeline shut down while the model loaded
        }
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Run(batch) = msg;
        let docs: Vec<_> = batch.items.iter().map(|j| j.doc.clone()).collect();
        let modes = batch.items.iter().fold(Modes::NONE, |m, j| m.union(j.modes));
        let embedder = st.embedder.take().ok_or("worker has no embedder")?;
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let r = embedder.encode(&docs, modes);
            (embedder, r)
        })
        .await;
        let failure = match joined {
            Ok((embedder, Ok(out))) if out.len() == batch.items.len() => {
                st.embedder = Some(embedder);
                let m = &st.metrics;
                m.encode_seconds.observe(started.elapsed().as_secs_f64());
                m.batches.inc();
                m.tokens.inc_by(batch.tokens as u64);
                m.batch_fill_ratio.observe(batch.fill_ratio());
                m.batch_size.observe(batch.items.len() as f64);
                for (job, e) in batch.items.into_iter().zip(out) {
                    let modes = job.modes;
                    job.finish(Ok(keep_modes(e, modes)));
                }
                (st.report)(WorkerReport::Done { index: st.index, generation: st.generation });
                return Ok(());
            }
            Ok((_, Ok(out))) => {
                format!("encoder returned {} results for {} records", out.len(), batch.items.len())
            }
            Ok((_, Err(e))) => e.to_string(),
            Err(e) => format!("worker panicked: {}", panic_message(e)),
        };
        tracing::warn!(
            worker = st.index,
            "batch of {} records failed: {failure}",
            batch.items.len()
        );
        let reason = failure.clone();
        (st.report)(WorkerReport::Failed {
            index: st.index,
            generation: st.generation,
            batch,
            reason,
        });
        Err(failure.into())
    }
}
