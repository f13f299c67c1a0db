//! trident-core: the domain types shared by every crate (documents, options, embeddings),
//! BGE-M3 scoring, and the batching policy. Pure: no I/O, no threads.

pub mod batch;
pub mod score;
pub mod types;

pub use types::{DocId, Embedding, Modes, TokenizedDoc};
