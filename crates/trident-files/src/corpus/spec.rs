//! What a re-embedding job is asked to do ([`CorpusJob`]) and its final account ([`Summary`]).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use trident_core::{Encoding, Modes};
use trident_engine::flight::FlightLimits;

use super::units::Shard;

/// Rows read, submitted and written together.
pub(super) const BATCH_ROWS: usize = 2048;
/// A part's row group is flushed once its encoded size passes this.
pub(super) const ROW_GROUP_BYTES: usize = 64 << 20;

pub struct CorpusJob {
    pub input: String,
    pub output: PathBuf,
    pub id_column: String,
    pub text_column: String,
    pub keep_columns: Vec<String>,
    pub modes: Modes,
    pub max_length: usize,
    pub encoding: Encoding,
    pub shard: Shard,
    pub resume: bool,
    pub previous: Option<PathBuf>,
    pub model_fingerprint: String,
    pub dense_dim: usize,
    pub colbert_dim: usize,
    pub limits: FlightLimits,
    /// Called with (rows written, rows of the shard) as parts progress.
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

/// The final account of a run (printed as JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub rows: u64,
    pub embedded: u64,
    pub reused: u64,
    pub failed: u64,
    pub tokens: u64,
    pub units: u64,
    /// Units already done by an earlier run (`--resume`).
    pub units_skipped: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// CPU seconds spent on the file formats: reading and decoding Parquet input (and the
    /// `--previous` output), building the output's Arrow columns, encoding, compressing and
    /// writing the parts. Measured per thread, so the encoder sharing the cores is not counted.
    pub format_seconds: f64,
}
