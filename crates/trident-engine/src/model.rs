//! Loading a model directory once and building CPU workers from it (each worker gets its own
//! encoder over the shared, memory-mapped checkpoint; a restarted worker builds a new one).

use std::path::Path;
use std::sync::Arc;

use trident_model::cpu::{CpuBackend, CpuPrecision};
use trident_model::{Checkpoint, Encoder, Tokenizer};

use crate::codec::model_fingerprint;
use crate::job::WorkerSpec;
use crate::EngineError;

pub struct LoadedModel {
    pub tokenizer: Tokenizer,
    pub checkpoint: Arc<Checkpoint>,
    /// Identifies the model in cache keys.
    pub fingerprint: String,
}

pub fn load_model(dir: &Path) -> Result<LoadedModel, EngineError> {
    let (tokenizer, checkpoint) = trident_model::open_dir(dir)?;
    let checkpoint = Arc::new(checkpoint);
    let fingerprint = model_fingerprint(dir)
        .map_err(|e| EngineError::Io { path: dir.display().to_string(), source: e })?;
    Ok(LoadedModel { tokenizer, checkpoint, fingerprint })
}

/// `workers` CPU workers of `threads` threads each (0 = all cores), weights at `precision`.
pub fn cpu_workers(
    m: &LoadedModel,
    workers: usize,
    threads: usize,
    precision: CpuPrecision,
) -> Vec<WorkerSpec> {
    let special = m.tokenizer.special_ids();
    (0..workers.max(1))
        .map(|i| {
            let ckpt = m.checkpoint.clone();
            WorkerSpec {
                name: format!("cpu-{i}"),
                factory: Arc::new(move || {
                    let backend = CpuBackend::with_precision(threads, precision);
                    let mut enc = Encoder::new(&ckpt, backend).map_err(|e| e.to_string())?;
                    enc.set_special_ids(special);
                    Ok(Box::new(enc) as Box<dyn trident_model::Embedder>)
                }),
            }
        })
        .collect()
}
