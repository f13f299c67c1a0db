//! trident-files: the file endpoint of the engine — `trident embed`. JSON Lines (a file or
//! stdin) in, one record per line out in input order (`embed_file`); or a Parquet corpus in and
//! Parquet parts out, as a resumable, shardable re-embedding job (`corpus`). `cpu_clock`
//! measures what the file formats cost.

pub mod corpus;
pub mod cpu_clock;
pub mod embed_file;
