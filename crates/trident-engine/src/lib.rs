//! trident-engine: the embedding pipeline every endpoint of trident shares.
//!
//! ```text
//! source ─▶ Coordinator ─▶ Batcher ─▶ Worker × N ─▶ sink ─▶ acks back to the source
//!           decode, validate,   length buckets,   one Embedder each,
//!           cache, tokenize     budget, max wait  on a blocking thread
//! ```
//!
//! Roles are ractor actors on tokio. The endpoints live elsewhere and only drive these parts:
//! the file/stdin path (`trident-files`), the Kafka node (`trident-cluster`) and the HTTP
//! server (`trident-server`, through [`Pipeline::embed`] at online priority). Module order, each
//! depending only on those before it: `job` → `worker` → `batcher` → `pipeline` →
//! `coordinator`; `cache`, `codec`, `store`, `record`, `flight`, `metrics` and `tokenize` are
//! leaves.

pub mod batcher;
pub mod cache;
pub mod codec;
pub mod coordinator;
pub mod error;
pub mod fault;
pub mod flight;
pub mod job;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod record;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenize;
pub mod worker;

pub use cache::Cache;
pub use error::EngineError;
pub use job::{EmbedderFactory, Job, JobError, Outcome, WorkerSpec};
pub use metrics::Metrics;
pub use pipeline::{Pipeline, PipelineConfig};
pub use trident_core::batch::{BatchPolicy, Priority};
