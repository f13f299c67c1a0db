//! trident-model: tokenizer, checkpoint loading, the XLM-R encoder graph written once against
//! the `Backend` trait, BGE-M3 head post-processing, and the CPU backend.

pub mod backend;

pub use backend::{Activation, Backend, BackendError, HeadOutput, HostTensor, LinearParts, PackedBatch};
