//! Re-embedding a corpus: Parquet files in (a file, a directory or a glob), Parquet parts out,
//! resumable from a manifest, sharded deterministically (`--shard I/N`), and incremental
//! (`--previous DIR` reuses the rows whose text did not change).

pub mod columns;
mod input;
pub mod job;
pub mod manifest;
mod spec;
pub mod units;
mod writer;

pub use job::run;
pub use spec::{CorpusJob, Summary};
pub use units::{is_parquet_input, Shard};
