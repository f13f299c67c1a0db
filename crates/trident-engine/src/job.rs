//! What flows through the engine: a [`Job`] (one tokenized record and whom to tell), its
//! [`Outcome`], and the [`WorkerSpec`]s the batcher starts workers from. Every other module of
//! the engine depends on this one and it depends on none of them, so the pipeline, the batcher
//! and the workers form a chain, not a cycle.

use std::sync::Arc;

use trident_core::batch::Priority;
use trident_core::{Embedding, Modes, TokenizedDoc};
use trident_model::{Embedder, ModelError};

/// Why a record has no embedding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The tokenizer rejected the text (the record's fault).
    #[error("{0}")]
    Tokenizer(String),
    /// The encoder failed on this record alone, on every worker it was tried on.
    #[error(
        "encoder failed on this record after {attempts} attempts (alone on {workers}): {reason}"
    )]
    Poison { attempts: u32, workers: String, reason: String },
    /// The pipeline stopped before the record was encoded.
    #[error("the pipeline shut down before this record was encoded")]
    Shutdown,
}

/// What a job ends with: the embedding, or why there is none.
pub type Outcome = Result<Embedding, JobError>;

/// Builds a fresh embedder for a worker: at start and after every worker failure (a model
/// load, a device that cannot start: the model's typed error, backends' errors included).
pub type EmbedderFactory = Arc<dyn Fn() -> Result<Box<dyn Embedder>, ModelError> + Send + Sync>;

/// One worker: a name for logs and the factory of its embedder (one per device, or N CPU
/// workers sharing the cores).
#[derive(Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub factory: EmbedderFactory,
}

/// The retry bookkeeping a job carries through the batcher and the workers (see
/// `batcher::retry` for what is done with it).
#[derive(Clone, Debug, Default)]
pub struct RetryState {
    /// Failed attempts of the batches this job was in.
    pub attempts: u32,
    /// Slots whose worker failed this job's batch since the batch was last split (a record
    /// alone in its batch: the workers it failed alone on). Retries avoid them.
    pub failed_on: Vec<usize>,
    /// The batch came from a split (a poison record is suspected): one more failure splits it.
    pub split: bool,
}

/// One tokenized record on its way through the batcher and a worker. `done` is called exactly
/// once with the outcome, or never when the pipeline stops first (a stream's record then stays
/// uncommitted and is read again; an in-process caller sees its channel close).
pub struct Job {
    pub doc: TokenizedDoc,
    pub modes: Modes,
    pub priority: Priority,
    pub retry: RetryState,
    done: Box<dyn FnOnce(Outcome) + Send>,
}

impl Job {
    pub fn new(
        doc: TokenizedDoc,
        modes: Modes,
        priority: Priority,
        done: impl FnOnce(Outcome) + Send + 'static,
    ) -> Job {
        Job { doc, modes, priority, retry: RetryState::default(), done: Box::new(done) }
    }

    /// Report the outcome.
    pub fn finish(self, outcome: Outcome) {
        (self.done)(outcome)
    }
}
