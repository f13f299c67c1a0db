//! Loading a model directory once: its tokenizer, the memory-mapped checkpoint every worker's
//! encoder shares, and the fingerprint that keys the content cache. (The binary's composition
//! root builds the workers over it.)

use std::path::Path;
use std::sync::Arc;

use trident_model::{Checkpoint, Tokenizer};

use crate::codec::model_fingerprint;
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
