//! Loading a model directory once and building CPU workers from it (each worker gets its own
//! encoder over the shared, memory-mapped checkpoint; a restarted worker builds a new one).

use std::path::Path;
use std::sync::Arc;

use trident_model::cpu::CpuBackend;
use trident_model::{Checkpoint, Encoder, Tokenizer};

use crate::codec::model_fingerprint;
use crate::pipeline::WorkerSpec;
use crate::ClusterError;

pub struct LoadedModel {
    pub tokenizer: Tokenizer,
    pub checkpoint: Arc<Checkpoint>,
    /// Identifies the model in cache keys.
    pub fingerprint: String,
}

pub fn load_model(dir: &Path) -> Result<LoadedModel, ClusterError> {
    let tokenizer = Tokenizer::from_dir(dir)?;
    let checkpoint = Arc::new(Checkpoint::open(dir)?);
    let fingerprint = model_fingerprint(dir)
        .map_err(|e| ClusterError::Io { path: dir.display().to_string(), source: e })?;
    Ok(LoadedModel { tokenizer, checkpoint, fingerprint })
}

/// `workers` CPU workers of `threads` threads each (0 = all cores).
pub fn cpu_workers(m: &LoadedModel, workers: usize, threads: usize) -> Vec<WorkerSpec> {
    let special = m.tokenizer.special_ids();
    (0..workers.max(1))
        .map(|i| {
            let ckpt = m.checkpoint.clone();
            WorkerSpec {
                name: format!("cpu-{i}"),
                factory: Arc::new(move || {
                    let mut enc =
                        Encoder::new(&ckpt, CpuBackend::new(threads)).map_err(|e| e.to_string())?;
                    enc.set_special_ids(special);
                    Ok(Box::new(enc) as Box<dyn trident_model::Embedder>)
                }),
            }
        })
        .collect()
}
