//! trident-model: tokenizer, checkpoint loading, the XLM-R encoder graph written once against
//! the `Backend` trait, BGE-M3 head post-processing, and the CPU backend.

pub mod backend;
pub mod calibrate;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod encoder;
pub mod error;
pub mod special;
pub mod tokenizer;

use std::path::Path;

pub use backend::{
    Activation, Backend, BackendError, Elem, HeadOutput, HostTensor, LinearParts, PackedBatch,
};
pub use checkpoint::Checkpoint;
pub use config::ModelConfig;
pub use encoder::{Embedder, Encoder};
pub use error::ModelError;
pub use special::SpecialIds;
pub use tokenizer::Tokenizer;

/// A model directory's tokenizer and checkpoint, the tokenizer parsed on a second thread while
/// the checkpoint opens (both take a few hundred ms).
pub fn open_dir(dir: &Path) -> Result<(Tokenizer, Checkpoint), ModelError> {
    let (tokenizer, ckpt) = std::thread::scope(|s| {
        let tok = s.spawn(|| Tokenizer::from_dir(dir));
        let ckpt = Checkpoint::open(dir);
        (tok.join().expect("tokenizer thread"), ckpt)
    });
    Ok((tokenizer?, ckpt?))
}
