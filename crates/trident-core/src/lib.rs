//! trident-core: the domain types shared by every crate (documents, options, embeddings),
//! BGE-M3 scoring, and the batching policy. Pure: no I/O, no threads.

pub mod batch;
pub mod encoding;
pub mod eval;
pub mod output;
pub mod retrieve;
pub mod score;
pub mod types;

pub use encoding::{ColbertEncoding, DenseEncoding, Encoding};
pub use output::{ColbertNote, Format, Record};
pub use types::{DocId, Embedding, Modes, TokenizedDoc};
